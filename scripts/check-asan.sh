#!/usr/bin/env bash
# scripts/check-asan.sh [spec files or busted options...]
#
# Builds sslctx with AddressSanitizer + UndefinedBehaviorSanitizer (clang) into
# build/asan/sslctx/core.so and runs the spec suite (default: all of spec/) under lua5.4 with
# the ASan runtime preloaded.  Fails on any sanitizer report, in the Lua process or in any
# child it starts, and on any failing spec; prints busted's counts either way.
#
# Environment:
#   SRCS            the C sources (default: the Makefile's SRCS, read from make's database)
#   LUA             interpreter (default lua5.4); its pkg-config name is the same
#   CC              default clang
#   ASAN_TIMEOUT    seconds before the run is killed (default 1500)
#   ASAN_EXTRA_CFLAGS  appended to the compile line
#   ASAN_EXCLUDE_TAGS  busted tags left out (default gc,soak: the #gc churn and the #soak run
#                   measure resident memory and wall time, which ASan's allocator and
#                   quarantine change; their code paths run in the other specs, with leak
#                   checking)
#   SANITIZER_HALT  1 (default): stop at the first report, as CI wants; 0: report everything
#                   and still fail at the end (to see all findings in one run)
#
# How: the interpreter is not instrumented, only the module; LD_PRELOAD puts the ASan runtime
# first so the module's instrumentation finds it.  Only the Lua process that runs busted is
# instrumented: a small preloaded shim (built here) removes LD_PRELOAD from the environment
# at start-up, so that children (openssl, cc, nginx, curl, ps, child interpreters) run
# uninstrumented -- with the runtime preloaded some of them deadlock (procps' ps does) and the
# compiler's deliberate exit-time leaks would count as ours.  Child interpreters load the
# plain build (LUA_CPATH=build/<lua>, made here with `make`); the busted process itself gets
# build/asan first on package.cpath from a two-line launcher (build/asan/busted.lua).
# LeakSanitizer runs at exit, after busted's os.exit(code, true) has closed the Lua state and
# so run every __gc.  Reports go to files under build/asan/logs (log_path), printed at the
# end.
set -uo pipefail
source "$(dirname "$0")/hardening-lib.sh"
hl_root
hl_lua_env

LUA=${LUA:-lua5.4}
CC=${CC:-clang}
case "$CC" in *clang*) ;; *) CC=clang ;; esac
TIMEOUT=${ASAN_TIMEOUT:-1500}
OUT=build/asan
LOGDIR=$OUT/logs
SO=$OUT/sslctx/core.so
start=$(hl_now)

srcs=$(hl_srcs)
[ -n "$srcs" ] || { echo "check-asan: cannot read SRCS from the Makefile" >&2; exit 2; }
command -v "$CC" >/dev/null || { echo "check-asan: $CC not installed" >&2; exit 2; }
asan_rt=$("$CC" -print-file-name=libclang_rt.asan-x86_64.so)
[ -f "$asan_rt" ] || { echo "check-asan: no ASan runtime ($asan_rt); install libclang-rt-dev" >&2; exit 2; }

mkdir -p "$OUT/sslctx" "$LOGDIR"
rm -f "$LOGDIR"/*

# ---- build ------------------------------------------------------------------------------
luacf=$(pkg-config --cflags "$LUA") || { echo "check-asan: pkg-config knows no $LUA" >&2; exit 2; }
sslcf=$(pkg-config --cflags openssl) && ssllibs=$(pkg-config --libs openssl) || exit 2
# -fno-sanitize-recover is not used: UBSAN_OPTIONS=halt_on_error=1 stops at the first report
# while still printing it through the log file.
recover=""
[ "${SANITIZER_HALT:-1}" = 0 ] && recover="-fsanitize-recover=address"
cmd="$CC -std=c99 -g -O1 -fPIC -shared -fsanitize=address,undefined $recover -fno-omit-frame-pointer \
-Wall -Wextra $luacf $sslcf ${ASAN_EXTRA_CFLAGS:-} -o $SO.tmp $srcs $ssllibs -ldl"
echo "check-asan: $cmd"
# shellcheck disable=SC2086
$cmd || { echo "check-asan: build failed" >&2; exit 2; }
mv -f "$SO.tmp" "$SO"

# The shim: children start without the ASan runtime (see the header).  __asan_init first,
# so that the runtime is up before the environment changes.
cat > "$OUT/childenv.c" <<'C'
#include <stdlib.h>
extern void __asan_init(void) __attribute__((weak));
__attribute__((constructor)) static void sslctx_asan_child_env(void) {
  if (__asan_init) __asan_init();
  unsetenv("LD_PRELOAD");
}
C
"$CC" -shared -fPIC -O1 -o "$OUT/childenv.so" "$OUT/childenv.c" || exit 2

# LeakSanitizer suppressions: what is not the module's (none needed so far; add with a
# reason).  The file must exist for the option.
SUPP=$OUT/lsan.supp
cat > "$SUPP" <<'S'
# Format: leak:<function or library>.  Only for allocations that are not sslctx's.
# The interpreters and C modules busted loads (LuaSocket, lfs, term, system) are not ours:
leak:liblua5.4.so
leak:/usr/lib/x86_64-linux-gnu/lua/
S

HALT=${SANITIZER_HALT:-1}
export ASAN_OPTIONS="halt_on_error=$HALT:abort_on_error=0:allocator_may_return_null=1:\
detect_odr_violation=0:detect_leaks=1:${ASAN_EXTRA_OPTIONS:-}:log_path=$PWD/$LOGDIR/asan:strip_path_prefix=$PWD/"
export LSAN_OPTIONS="suppressions=$PWD/$SUPP:print_suppressions=0"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=$HALT:log_path=$PWD/$LOGDIR/ubsan"
# Children: the plain build.  The busted process: the instrumented one first.
make --no-print-directory LUA="$LUA" >/dev/null || { echo "check-asan: make LUA=$LUA failed" >&2; exit 2; }
export LUA_CPATH="build/$LUA/?.so;;"
# stdout unbuffered: when LeakSanitizer finds a leak at exit it ends the process with
# _exit, and a buffered busted summary would be lost.
cat > "$OUT/busted.lua" <<L
io.stdout:setvbuf("no")
package.cpath = "$OUT/?.so;" .. package.cpath
arg[0] = "/usr/bin/busted"
dofile("/usr/bin/busted")
L
# Compiled spec fixtures go beside the build, not into build/support of the plain build.
export SSLCTX_SUPPORT_DIR="$PWD/$OUT/support"

# ---- run --------------------------------------------------------------------------------
[ $# -gt 0 ] || set -- spec/
log=$OUT/busted.log
echo "check-asan: running the specs under $LUA with ASan+UBSan ($*)"
timeout -k 10 "$TIMEOUT" env LD_PRELOAD="$asan_rt $PWD/$OUT/childenv.so" \
  "$LUA" "$OUT/busted.lua" -o utfTerminal --exclude-tags="${ASAN_EXCLUDE_TAGS:-gc,soak}" "$@" \
  </dev/null >"$log" 2>&1
rc=$?

# ---- verdict ----------------------------------------------------------------------------
reports=$(ls "$LOGDIR" 2>/dev/null | wc -l)
grep -E '^(not ok|.*(Failure|Error) → )' "$log" | head -n 40
summary=$(hl_busted_summary "$log")
echo
if [ "$reports" -gt 0 ]; then
  echo "check-asan: $reports sanitizer report file(s):"
  # each report: its first lines (the error and the top frames)
  for f in "$LOGDIR"/*; do
    echo "==== $f"
    grep -E -A14 'ERROR: |runtime error:|SUMMARY:' "$f" | grep -v 'BuildId' | head -n 60
  done
fi
if [ -z "$summary" ]; then
  echo "check-asan: busted printed no summary (exit $rc); last lines:"
  tail -n 30 "$log"
  [ $rc -eq 124 ] && echo "check-asan: timed out after ${TIMEOUT}s"
fi
set -- $summary
echo "check-asan: ${1:-?} successes / ${2:-?} failures / ${3:-?} errors / ${4:-?} pending;" \
     "$reports sanitizer reports; $(hl_elapsed "$start")s"
# 0 successes (every spec pending, or none selected) proves nothing: a failure too.
if [ "$reports" -gt 0 ] || [ -z "$summary" ] || [ "${1:-0}" -eq 0 ] || [ "${2:-1}" -ne 0 ] ||
   [ "${3:-1}" -ne 0 ]; then
  echo "check-asan: FAIL (log: $log)"
  exit 1
fi
echo "check-asan: OK"
