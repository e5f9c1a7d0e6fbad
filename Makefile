# sslctx — build, test and demo.
#
#   make                 build build/<lua>/sslctx/core.so for every installed Lua
#   make deps            install missing Debian packages (scripts/deps.sh, as root)
#   make test            deps, build, run the specs once under each Lua in LUAS
#   LUA=lua5.3 make test the same under one interpreter only
#   make demo            deps, build, run examples/mtls_demo.lua under lua5.4
#   make spec SPEC=spec/x_spec.lua [LUA=lua5.4]   one spec file under one interpreter
#   make scan            sslscan and testssl.sh against a default server (spec/scan_spec.lua)
#   make clean
#
# pkg-config is only called inside recipes, never at parse time: on a fresh
# machine it does not exist until `deps` has run.

# The recipes use bash for pipefail/PIPESTATUS (Debian always has bash).
SHELL := /bin/bash

CC ?= cc
CFLAGS_SX := -std=c99 -O2 -g -fPIC -Wall -Wextra -Werror
# Lua interpreters, each also its pkg-config name (Debian's naming; luajit too).
LUAS ?= lua5.1 lua5.2 lua5.3 lua5.4 luajit
DEMO_LUA ?= lua5.4
BUSTED ?= /usr/bin/busted

SRCS := src/core.c src/context.c src/connection.c src/verify.c src/x509.c \
        src/pkey.c src/session.c src/bio.c src/hook.c src/conninfo.c \
        src/policy.c src/trust.c src/tickets.c src/sessstore.c src/callback.c \
        src/ctx_callbacks.c src/conn_io.c src/conn_policy.c src/loaders.c src/options.c
HDRS := src/compat.h src/private.h

# Search paths for the specs: our Lua front and spec helpers, then the default.
export LUA_PATH := lua/?.lua;lua/?/init.lua;spec/?.lua;;
# Versioned variables would override the two above on 5.2+.
unexport LUA_PATH_5_2 LUA_PATH_5_3 LUA_PATH_5_4 LUA_CPATH_5_2 LUA_CPATH_5_3 LUA_CPATH_5_4
# The test PKI, made once per tree (make-pki.sh is idempotent).
PKI_DIR := $(CURDIR)/build/pki
export SSLCTX_PKI_DIR := $(PKI_DIR)

.PHONY: all deps test spec demo clean check check-asan check-valgrind check-gc fuzz bench lint rock scan FORCE

all:
	@set -e; luas="$(or $(LUA),$(LUAS))"; built=0; \
	for lua in $$luas; do \
	  if [ -z "$(LUA)" ] && ! pkg-config --exists "$$lua" 2>/dev/null; then \
	    echo "make: skipping $$lua (no pkg-config module; run 'make deps')"; continue; \
	  fi; \
	  $(MAKE) -s --no-print-directory "build/$$lua/sslctx/core.so"; built=$$((built + 1)); \
	done; \
	if [ "$$built" -eq 0 ]; then echo "make: no Lua development files found; run 'make deps'" >&2; exit 1; fi

# One module per interpreter: a 5.1 build must not be loaded by 5.4.
build/%/sslctx/core.so: $(SRCS) $(HDRS) Makefile
	@mkdir -p $(@D)
	@luacf=$$(pkg-config --cflags "$*") || { echo "make: pkg-config knows no '$*'" >&2; exit 1; }; \
	sslcf=$$(pkg-config --cflags openssl) && ssllibs=$$(pkg-config --libs openssl) || exit 1; \
	cmd="$(CC) $(CFLAGS_SX) -shared $$luacf $$sslcf $(CPPFLAGS) $(CFLAGS) -o $@ $(SRCS) $(LDFLAGS) $$ssllibs -ldl"; \
	echo "$$cmd"; $$cmd

# Without this a missing source shows up as "No rule to make target build/...".
$(SRCS) $(HDRS):
	@echo "make: missing source $@" >&2; exit 1

deps:
	@sh scripts/deps.sh

$(PKI_DIR)/.done: spec/certs/make-pki.sh FORCE
	@sh spec/certs/make-pki.sh $(PKI_DIR)

# Runs busted under each interpreter, then prints one closing line summing
# them all, read from busted's own summary line
# ("N successes / N failures / N errors / N pending").
test:
	@$(MAKE) -s --no-print-directory deps
	@$(MAKE) -s --no-print-directory $(PKI_DIR)/.done
	@luas="$(or $(LUA),$(LUAS))"; explicit="$(LUA)"; \
	passed=0; failed=0; pending=0; bad=""; skipped=""; ran=""; \
	mkdir -p build; \
	for lua in $$luas; do \
	  why=""; \
	  if ! command -v "$$lua" >/dev/null 2>&1; then why="interpreter not installed"; \
	  elif ! pkg-config --exists "$$lua" 2>/dev/null; then why="no development files (pkg-config $$lua)"; \
	  elif ! "$$lua" -e 'require "busted.runner"' >/dev/null 2>&1; then why="busted or its dependencies not installed for it"; \
	  fi; \
	  if [ -n "$$why" ]; then \
	    if [ -n "$$explicit" ]; then echo "make test: cannot run under $$lua: $$why" >&2; exit 1; fi; \
	    echo "=== skipping $$lua: $$why"; skipped="$$skipped $$lua"; continue; \
	  fi; \
	  if ! $(MAKE) -s --no-print-directory "build/$$lua/sslctx/core.so"; then \
	    echo "=== $$lua: build failed"; bad="$$bad $$lua"; failed=$$((failed + 1)); continue; \
	  fi; \
	  echo "=== $$lua: $$("$$lua" -v 2>&1 | head -n 1)"; \
	  log="build/test-$$lua.log"; \
	  once=run; [ -z "$$ran" ] || once=skip; \
	  SSLCTX_ONCE_PER_RUN=$$once LUA_CPATH="build/$$lua/?.so;;" "$$lua" $(BUSTED) </dev/null 2>&1 | tee "$$log"; \
	  rc=$${PIPESTATUS[0]}; ran="$$ran $$lua"; \
	  line=$$(LC_ALL=C sed 's/\x1b\[[0-9;]*m//g' "$$log" | grep -a -E '^[0-9]+ success(es)? / [0-9]+ failures? / [0-9]+ errors? / [0-9]+ pending' | tail -n 1); \
	  if [ -z "$$line" ]; then \
	    echo "=== $$lua: busted printed no summary (exit $$rc)"; bad="$$bad $$lua"; failed=$$((failed + 1)); continue; \
	  fi; \
	  set -- $$line; \
	  passed=$$((passed + $$1)); failed=$$((failed + $$4 + $$7)); pending=$$((pending + $${10})); \
	  if [ "$$rc" -ne 0 ] || [ "$$4" -ne 0 ] || [ "$$7" -ne 0 ]; then bad="$$bad $$lua"; \
	  elif [ "$$1" -eq 0 ]; then echo "=== $$lua: no test ran"; fi; \
	done; \
	echo; \
	echo "Interpreters run:$${ran:- none}"; \
	[ -z "$$skipped" ] || echo "Interpreters skipped:$$skipped"; \
	[ -z "$$bad" ] || echo "Interpreters failing:$$bad"; \
	echo "$$passed passed, $$failed failed, $$pending skipped"; \
	[ -z "$$bad" ] && [ -n "$$ran" ]

# One spec file (or several, space-separated) under one interpreter, for development.
spec:
	@[ -n "$(SPEC)" ] || { echo "make spec: give SPEC=spec/<name>_spec.lua" >&2; exit 2; }
	@$(MAKE) -s --no-print-directory deps
	@$(MAKE) -s --no-print-directory $(PKI_DIR)/.done
	@lua="$(or $(LUA),lua5.4)"; \
	$(MAKE) -s --no-print-directory "build/$$lua/sslctx/core.so" && \
	LUA_CPATH="build/$$lua/?.so;;" "$$lua" $(BUSTED) -o utfTerminal $(SPEC) </dev/null

demo:
	@$(MAKE) -s --no-print-directory deps
	@$(MAKE) -s --no-print-directory "build/$(DEMO_LUA)/sslctx/core.so"
	@LUA_CPATH="build/$(DEMO_LUA)/?.so;;" $(DEMO_LUA) examples/mtls_demo.lua

# Hardening (doc/hardening.md): sanitizers, valgrind, aggressive GC, fuzzing.
check-asan check-valgrind check-gc: deps $(PKI_DIR)/.done
	@$(MAKE) -s --no-print-directory "build/lua5.4/sslctx/core.so"
	@SRCS="$(SRCS)" bash scripts/$@.sh

FUZZ_SECONDS ?= 30
fuzz: deps
	@SRCS="$(SRCS)" FUZZ_SECONDS=$(FUZZ_SECONDS) bash scripts/fuzz.sh

# luacheck over lua/, spec/, examples/, bench/; luarocks lint + make into a local tree.
lint: deps
	@bash scripts/luacheck.sh

rock: deps
	@bash scripts/rock.sh

check: lint rock check-asan check-valgrind check-gc fuzz

# TLS scanners against a default server (spec/scan_spec.lua, doc/defaults.md): sslscan and
# openssl s_client as in `make test`, plus testssl.sh (several minutes).
scan: deps $(PKI_DIR)/.done
	@$(MAKE) -s --no-print-directory "build/$(DEMO_LUA)/sslctx/core.so"
	@SSLCTX_SCAN_TESTSSL=1 LUA_CPATH="build/$(DEMO_LUA)/?.so;;" $(DEMO_LUA) $(BUSTED) spec/scan_spec.lua </dev/null

# Benchmarks against a C reference (bench/RESULTS.md); never part of the tests.
bench: deps
	@$(MAKE) -s --no-print-directory "build/lua5.4/sslctx/core.so"
	@bash bench/bench.sh

# Also what an in-tree `luarocks make` leaves behind.
clean:
	rm -rf build
	rm -f src/*.o sslctx/core.so
	@rmdir sslctx 2>/dev/null || true

FORCE:
