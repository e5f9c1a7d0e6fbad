#!/usr/bin/env bash
# scripts/fuzz.sh [seconds] [target...]
#
# Builds the libFuzzer targets of fuzz/ (clang -fsanitize=fuzzer,address,undefined; the
# module's sources -- the Makefile's SRCS -- are compiled into each target with the same
# sanitizers, Lua 5.4 is linked statically) and runs every target for a bounded time:
# FUZZ_SECONDS (or the first argument; default 30) each.  Prints one line per target
# (executions, coverage, corpus) and fails if any target crashed, leaked, hit a sanitizer
# report, broke an invariant or timed out; the reproducer is kept in build/fuzz/artifacts/
# (replay it: build/fuzz/bin/<target> <file>).
#
# Targets (see each file's header):
#   mode              the verification-mode parser: integers, floats, presets, keyword tables
#   load              certificates, CRLs, keys, sessions from PEM and DER, and their methods
#   handshake_server  a server connection fed arbitrary bytes over the memory transport
#   handshake_client  a client connection fed arbitrary bytes as the server's flights
#   api               the Lua-facing API driven by random programs (fuzz/api_driver.lua)
#
# Corpora: the committed seeds fuzz/corpus/<target>/ (public data only), seeds made now by
# fuzz/make_seeds.lua with the spec PKI (build/fuzz/seeds/<target>/, key-bearing ones
# included), and the working corpus build/fuzz/corpus/<target>/ that grows across runs.
#
# Environment: FUZZ_SECONDS, FUZZ_JOBS (targets run in parallel, default 1), FUZZ_UBSAN
# (default 1), FUZZ_MAX_LEN (default 4096), SRCS, CC (default clang).
set -uo pipefail
source "$(dirname "$0")/hardening-lib.sh"
hl_root
hl_lua_env

SECONDS_EACH=${1:-${FUZZ_SECONDS:-30}}
[ $# -gt 0 ] && shift
ALL_TARGETS="mode load handshake_server handshake_client api"
TARGETS=${*:-$ALL_TARGETS}
CC=${CC:-clang}
case "$CC" in *clang*) ;; *) CC=clang ;; esac
OUT=build/fuzz
OBJ=$OUT/obj
BIN=$OUT/bin
MAXLEN=${FUZZ_MAX_LEN:-4096}
start=$(hl_now)
ROOT=$PWD
mkdir -p "$OBJ" "$BIN" "$OUT/artifacts" "$OUT/logs" "$OUT/work"

command -v "$CC" >/dev/null || { echo "fuzz: $CC not installed" >&2; exit 2; }
lua_a=$(pkg-config --variable=libdir lua5.4 2>/dev/null)/liblua5.4.a
[ -f "$lua_a" ] || lua_a=/usr/lib/x86_64-linux-gnu/liblua5.4.a
[ -f "$lua_a" ] || { echo "fuzz: no static liblua5.4.a (liblua5.4-dev)" >&2; exit 2; }
luacf=$(pkg-config --cflags lua5.4)
sslcf=$(pkg-config --cflags openssl)
ssllibs=$(pkg-config --libs openssl)
srcs=$(hl_srcs)
[ -n "$srcs" ] || { echo "fuzz: cannot read SRCS from the Makefile" >&2; exit 2; }

san="-fsanitize=address"
[ "${FUZZ_UBSAN:-1}" = 1 ] && san="-fsanitize=address,undefined -fno-sanitize-recover=undefined"
cflags="-g -O1 -fno-omit-frame-pointer $san $luacf $sslcf"

# ---- build ------------------------------------------------------------------------------
echo "fuzz: building the targets ($san)"
objs=()
for f in $srcs fuzz/common.c; do
  o=$OBJ/$(basename "${f%.c}").o
  if [ ! -f "$o" ] || [ "$f" -nt "$o" ] || [ src/private.h -nt "$o" ] || [ src/compat.h -nt "$o" ] ||
     [ fuzz/common.h -nt "$o" ] || [ "$0" -nt "$o" ]; then
    # shellcheck disable=SC2086
    "$CC" -std=c99 -D_GNU_SOURCE -fsanitize=fuzzer-no-link $cflags -c -o "$o" "$f" ||
      { echo "fuzz: compiling $f failed" >&2; exit 2; }
  fi
  objs+=("$o")
done
build_target() {   # name, source, extra defines
  local name=$1 src=$2; shift 2
  # shellcheck disable=SC2086
  "$CC" -std=c99 -D_GNU_SOURCE -fsanitize=fuzzer $cflags "$@" -o "$BIN/$name" "$src" "${objs[@]}" \
    "$lua_a" $ssllibs -ldl -lm -Wl,--export-dynamic ||
    { echo "fuzz: linking $name failed" >&2; exit 2; }
}
for t in $TARGETS; do
  case $t in
    mode) build_target mode fuzz/fuzz_mode.c ;;
    load) build_target load fuzz/fuzz_load.c ;;
    handshake_server) build_target handshake_server fuzz/fuzz_handshake.c -DFZ_SERVER=1 ;;
    handshake_client) build_target handshake_client fuzz/fuzz_handshake.c -DFZ_SERVER=0 ;;
    api) build_target api fuzz/fuzz_api.c -DFZ_DRIVER_PATH="\"$PWD/fuzz/api_driver.lua\"" ;;
    *) echo "fuzz: unknown target '$t' (targets: $ALL_TARGETS)" >&2; exit 2 ;;
  esac
done

# ---- seeds made now (key-bearing ones included; never committed) -------------------------
make --no-print-directory LUA=lua5.4 >/dev/null 2>&1 &&
  LUA_CPATH='build/lua5.4/?.so;;' lua5.4 fuzz/make_seeds.lua "$OUT/seeds" >/dev/null 2>&1 ||
  echo "fuzz: (could not make run-time seeds; using the committed corpus only)"

# ---- run ----------------------------------------------------------------------------------
run_target() {
  local t=$1 log=$ROOT/$OUT/logs/$t.log corpus=$ROOT/$OUT/corpus/$t
  mkdir -p "$corpus"
  local dirs=("$corpus")
  [ -d "fuzz/corpus/$t" ] && dirs+=("$ROOT/fuzz/corpus/$t")
  [ -d "$OUT/seeds/$t" ] && dirs+=("$ROOT/$OUT/seeds/$t")
  # Run from an empty directory: a string the module takes for a relative file name finds
  # nothing there.
  ( cd "$OUT/work" &&
    ASAN_OPTIONS="detect_leaks=1:allocator_may_return_null=1:detect_odr_violation=0" \
    UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1" \
    timeout -k 10 $((SECONDS_EACH + 120)) "$ROOT/$BIN/$t" \
      -max_total_time="$SECONDS_EACH" -max_len="$MAXLEN" -timeout=20 -rss_limit_mb=2560 \
      -print_final_stats=1 -artifact_prefix="$ROOT/$OUT/artifacts/$t-" "${dirs[@]}" ) >"$log" 2>&1
  echo $? > "$ROOT/$OUT/logs/$t.rc"
}
jobs_max=${FUZZ_JOBS:-1}
for t in $TARGETS; do
  rm -f "$OUT/artifacts/$t-"*
  run_target "$t" &
  while [ "$(jobs -rp | wc -l)" -ge "$jobs_max" ]; do sleep 1; done
done
wait

# ---- report -------------------------------------------------------------------------------
fail=0
printf '%-18s %10s %8s %8s %8s  %s\n' target execs exec/s cov corpus result
for t in $TARGETS; do
  log=$OUT/logs/$t.log
  rc=$(cat "$OUT/logs/$t.rc" 2>/dev/null || echo "?")
  execs=$(awk '/stat::number_of_executed_units:/ {print $2}' "$log" | tail -n 1)
  speed=$(awk '/stat::average_exec_per_sec:/ {print $2}' "$log" | tail -n 1)
  cov=$(grep -oE 'cov: [0-9]+' "$log" | tail -n 1 | awk '{print $2}')
  corpus=$(ls "$OUT/corpus/$t" 2>/dev/null | wc -l)
  artifacts=$(ls "$OUT/artifacts/$t-"* 2>/dev/null | wc -l)
  result=ok
  if [ "$rc" != 0 ] || [ "$artifacts" -gt 0 ]; then
    result="FAIL (exit $rc, $artifacts artifact(s))"
    fail=1
  fi
  printf '%-18s %10s %8s %8s %8s  %s\n' "$t" "${execs:-?}" "${speed:-?}" "${cov:-?}" "$corpus" "$result"
done
if [ $fail -ne 0 ]; then
  for t in $TARGETS; do
    rc=$(cat "$OUT/logs/$t.rc" 2>/dev/null || echo "?")
    [ "$rc" = 0 ] && continue
    echo "==== $t (log $OUT/logs/$t.log)"
    grep -E -A24 'ERROR: |runtime error|INVARIANT|deadly signal|Test unit written|==[0-9]+== ' "$OUT/logs/$t.log" |
      grep -v BuildId | head -n 50
  done
fi
echo "fuzz: ${SECONDS_EACH}s per target; $(hl_elapsed "$start")s in all"
[ $fail -eq 0 ] && echo "fuzz: OK" || { echo "fuzz: FAIL"; exit 1; }
