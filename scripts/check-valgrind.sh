#!/usr/bin/env bash
# scripts/check-valgrind.sh [spec files or busted options...]
#
# Runs a representative part of the spec suite (below) under valgrind memcheck, with the
# plain build (make LUA=lua5.4: -O2 -g), and fails unless:
#   * no memory error at all: invalid reads/writes/frees, uses of uninitialised values,
#     overlapping copies, bad syscall parameters (anywhere in the process: an OpenSSL error
#     caused by the module's misuse shows up inside libcrypto);
#   * 0 bytes "definitely lost" in records whose stack has a frame of the module
#     (sslctx/core.so); definite leaks elsewhere (the interpreter, LuaSocket, ...) are
#     printed but are not the module's;
#   * every spec passed.
# Prints busted's counts, the leak totals and the error counts.  The Lua state is closed at
# exit (busted ends with os.exit(code, true)), so every __gc has run: a leak is a real one.
#
# Why not the whole suite: valgrind costs 40-80x CPU; the whole suite (~50 s of CPU) would
# take most of CI's 90 minutes.  The default part (~6 s of CPU, ~6 minutes here) covers
# every source file: contexts, modes, handshakes over every transport the memory BIO offers,
# callbacks (Lua, C, RETRY, errors), post-handshake auth, renegotiation, resumption, SNI,
# x509/crl/pkey/session objects, the GC lifetime specs without the 10,000-object churn
# (#gc), the bad-input tables in their smallest mode (SSLCTX_BADINPUT_QUICK=2: every method
# and option, seven values each: a wrong type, -1, NaN, '', a 64 KiB string, a list holding a
# closed object, an object of another class) and every 8th x509-limbo case
# (SSLCTX_LIMBO_SAMPLE=8), the lifetime specs and the policy-bound sessions (15 rounds of the
# property spec).  Left out: specs whose time is spent in other processes (interop,
# nginx, luasec, socket, examples: valgrind does not trace children) and the #gc churn and
# #soak runs (10,000 objects or handshakes each: their code paths run in the part above, and
# both measure memory themselves).
# VALGRIND_SPECS overrides the list; arguments override everything.
#
# Environment: LUA (default lua5.4), VALGRIND_TIMEOUT (default 1200 s),
#              VALGRIND_SPECS, VALGRIND_OPTS (extra valgrind options).
set -uo pipefail
source "$(dirname "$0")/hardening-lib.sh"
hl_root
hl_lua_env

LUA=${LUA:-lua5.4}
TIMEOUT=${VALGRIND_TIMEOUT:-1200}
OUT=build/valgrind
mkdir -p "$OUT"
rm -f "$OUT/ours.txt" "$OUT/definite.txt"
start=$(hl_now)

command -v valgrind >/dev/null || { echo "check-valgrind: valgrind is not installed" >&2; exit 2; }
make --no-print-directory LUA="$LUA" >/dev/null || { echo "check-valgrind: make LUA=$LUA failed" >&2; exit 2; }
export LUA_CPATH="build/$LUA/?.so;;"

DEFAULT_SPECS="spec/context_spec.lua spec/mode_spec.lua spec/handshake_spec.lua
spec/callback_spec.lua spec/posthandshake_spec.lua spec/renegotiation_spec.lua
spec/resumption_spec.lua spec/servername_spec.lua spec/sni_spec.lua
spec/session_cache_spec.lua spec/transport_spec.lua spec/x509_spec.lua spec/gc_spec.lua
spec/badinput_spec.lua spec/limbo_spec.lua spec/lifetime_spec.lua spec/policy_binding_spec.lua
spec/policy_property_spec.lua spec/tickets_spec.lua"
specs=()
if [ $# -gt 0 ]; then
  specs=("$@")
else
  # A listed spec file that is missing (renamed, deleted) fails the check: skipping it would
  # silently shrink what runs under valgrind.
  for f in ${VALGRIND_SPECS:-$DEFAULT_SPECS}; do
    [ -f "$f" ] || { echo "check-valgrind: $f is missing (update the list)" >&2; exit 2; }
    specs+=("$f")
  done
fi

export SSLCTX_BADINPUT_QUICK=2
export SSLCTX_LIMBO_SAMPLE=${SSLCTX_LIMBO_SAMPLE:-8}
export SSLCTX_PROPERTY_ROUNDS=${SSLCTX_PROPERTY_ROUNDS:-15}

log=$OUT/busted.log
vlog=$OUT/valgrind.log
echo "check-valgrind: ${#specs[@]} spec files under valgrind (memcheck), $LUA"
# --trace-children=no: openssl, cc and friends run natively.
# shellcheck disable=SC2086
timeout -k 10 "$TIMEOUT" valgrind --tool=memcheck --leak-check=full --show-leak-kinds=definite \
  --errors-for-leak-kinds=definite --num-callers=40 \
  --track-origins=no --log-file="$vlog" ${VALGRIND_OPTS:-} \
  "$LUA" /usr/bin/busted -o utfTerminal --exclude-tags=gc,soak "${specs[@]}" \
  </dev/null >"$log" 2>&1
rc=$?

# ---- verdict ----------------------------------------------------------------------------
summary=$(hl_busted_summary "$log")
# Memory errors other than leaks, by kind.
error_re='^==[0-9]+== (Invalid (read|write|free)|Conditional jump|Use of uninitialised|Syscall param|Source and destination overlap|Mismatched free|Argument .* of function)'
errors=$(grep -cE "$error_re" "$vlog")
# Definite leak records: split into blocks, keep those with a frame in the module.
awk '
  /are definitely lost in loss record/ { inrec = 1; rec = $0 "\n"; next }
  inrec && /^==[0-9]+== *$/ { print rec "----"; inrec = 0; next }
  inrec { rec = rec $0 "\n" }
' "$vlog" > "$OUT/definite.txt"
ours_bytes=0; ours_records=0; other_bytes=0; other_records=0
while IFS= read -r -d '@' block; do
  [ -n "${block//[$'\n ']/}" ] || continue
  bytes=$(echo "$block" | grep -m 1 'definitely lost in loss record' | sed -E 's/^==[0-9]+== *([0-9,]+) (\([0-9,]+ direct, [0-9,]+ indirect\) )?bytes.*/\1/' | tr -d ,)
  [[ "$bytes" =~ ^[0-9]+$ ]] || bytes=0
  if echo "$block" | grep -qE 'sslctx/core\.so|\((core|context|connection|verify|x509|pkey|session|bio|hook|policy|trust|tickets|sessstore|callback|ctx_callbacks|conninfo)\.c:[0-9]+\)'; then
    ours_bytes=$((ours_bytes + bytes)); ours_records=$((ours_records + 1))
    echo "$block" >> "$OUT/ours.txt"
  else
    other_bytes=$((other_bytes + bytes)); other_records=$((other_records + 1))
  fi
done < <(sed 's/^----$/@/' "$OUT/definite.txt"; echo '@')
definite_total=$(grep -E 'definitely lost:' "$vlog" | tail -n 1 | sed -E 's/.*definitely lost: ([0-9,]+) bytes.*/\1/' | tr -d ,)

# The head of each of the first three error records (kind line and top frames, where the
# module's own frames are): CI shows only the end of this output, the log has the rest.
awk -v re="$error_re" '
  $0 ~ re { inrec = 1; n++; k = 0 }
  inrec && n <= 3 && k++ < 14 { print }
  inrec && /^==[0-9]+== *$/ { inrec = 0 }
' "$vlog"
[ "$ours_records" -gt 0 ] && { echo "check-valgrind: leaks with a module frame:"; head -n 80 "$OUT/ours.txt"; }
grep -E '^(not ok|.*(Failure|Error) → )' "$log" | head -n 20
[ -n "$summary" ] || { echo "check-valgrind: busted printed no summary (exit $rc); last lines:"; tail -n 20 "$log"; }
[ $rc -eq 124 ] && echo "check-valgrind: timed out after ${TIMEOUT}s"

set -- $summary
echo "check-valgrind: ${1:-?} successes / ${2:-?} failures / ${3:-?} errors / ${4:-?} pending;" \
     "memory errors: $errors; definitely lost: ${ours_bytes} bytes in ${ours_records} records" \
     "from the module's frames (${other_bytes} bytes in ${other_records} records elsewhere," \
     "total ${definite_total:-?}); $(hl_elapsed "$start")s"
# 0 successes (every spec pending, or none selected) proves nothing: a failure too.
if [ "$errors" -gt 0 ] || [ "$ours_records" -gt 0 ] || [ -z "$summary" ] ||
   [ "${1:-0}" -eq 0 ] || [ "${2:-1}" -ne 0 ] || [ "${3:-1}" -ne 0 ]; then
  echo "check-valgrind: FAIL (valgrind log: $vlog, busted log: $log)"
  exit 1
fi
echo "check-valgrind: OK"
