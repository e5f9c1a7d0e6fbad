#!/usr/bin/env bash
# scripts/check-gc.sh [spec files or busted options...]
#
# The spec suite under an aggressively collecting Lua (default lua5.4), to shake out objects
# used after their finalizer ran, finalizers running in the middle of the module's C code,
# anchors missing from uservalues/registry, and error paths that depend on an object staying
# alive by luck.  Prints busted's counts and how many full collections were forced.
#
# How aggressive (a launcher, build/gc/busted.lua, sets this up before running busted; child
# processes are not affected):
#   * the incremental collector never rests: pause 0 (a new cycle starts as soon as one
#     ends) and, on 5.4, a step size of 1 byte (GC work on every allocation) with step
#     multiplier 1000.  Every allocation the module makes (userdata, strings, tables, pushed
#     errors) can run other objects' finalizers right there.  On 5.1-5.3 and LuaJIT
#     (LUA=...) setpause 0 / setstepmul 400: their step is coarser, and a larger multiplier
#     makes every allocation a full cycle (100x slower, no more coverage than the hook);
#   * a count hook runs a full collectgarbage() every SSLCTX_GC_EVERY (default 100) VM
#     instructions, in the main thread and in every coroutine (coroutine.create/wrap are
#     wrapped to install the hook: hooks are per thread).  The suite spends most of its time
#     in C (OpenSSL), so this amounts to a full collection between almost every two Lua-level
#     calls into the module (~190,000 full collections for the suite on 5.4).
# Excluded: the #soak run (10,000 handshakes; its own spec bounds its memory) and the #gc
# churn (10,000 contexts, which check wall-clock limits), and the #timing specs (an event
# loop's achievements within fixed waits); the bad-input tables run in quick mode
# (SSLCTX_BADINPUT_QUICK=1), and the spec files whose work happens in other processes
# (multiprocess, game_server, nginx, scan, interop, examples, rock).
#
# Environment: LUA (default lua5.4), SSLCTX_GC_EVERY (default 100), GC_TIMEOUT (default 1500),
#              GC_EXCLUDE_TAGS (default gc,soak,timing: #timing marks the specs whose
#              assertions are about what an event loop achieves within a fixed wait, which
#              a collection forced every 100 instructions stretches past any bound).
set -uo pipefail
source "$(dirname "$0")/hardening-lib.sh"
hl_root
hl_lua_env

LUA=${LUA:-lua5.4}
TIMEOUT=${GC_TIMEOUT:-1500}
EVERY=${SSLCTX_GC_EVERY:-100}
OUT=build/gc
mkdir -p "$OUT"
rm -f "$OUT/collections"
start=$(hl_now)

make --no-print-directory LUA="$LUA" >/dev/null || { echo "check-gc: make LUA=$LUA failed" >&2; exit 2; }
export LUA_CPATH="build/$LUA/?.so;;"
export SSLCTX_GC_EVERY=$EVERY
export SSLCTX_BADINPUT_QUICK=${SSLCTX_BADINPUT_QUICK:-1}

cat > "$OUT/busted.lua" <<'L'
-- Written by scripts/check-gc.sh: run busted under a collector that never rests.
local every = tonumber(os.getenv("SSLCTX_GC_EVERY") or "100")
local out = os.getenv("SSLCTX_GC_COUNT_FILE")
if _VERSION == "Lua 5.4" then
  collectgarbage("incremental", 0, 1000, 0)
else
  collectgarbage("setpause", 0)
  collectgarbage("setstepmul", 400)
end
collectgarbage("restart")
local forced = 0
local function hook()
  forced = forced + 1
  collectgarbage("collect")
end
debug.sethook(hook, "", every)
local create = coroutine.create
coroutine.create = function(f)
  local co = create(f)
  debug.sethook(co, hook, "", every)
  return co
end
local resume, unpack = coroutine.resume, table.unpack or unpack
-- r.n counts resume's results (trailing nils included), not the wrapper's arguments.
local function pack(...) return { n = select("#", ...), ... } end
coroutine.wrap = function(f)
  local co = coroutine.create(f)
  return function(...)
    local r = pack(resume(co, ...))
    if not r[1] then error(r[2], 0) end
    return unpack(r, 2, r.n)
  end
end
-- Specs may reset the collector's parameters (handshake_spec does, and restores them):
-- keep it aggressive whatever they set, and refuse to let it stop.
local cg = collectgarbage
collectgarbage = function(opt, ...)
  if opt == "stop" then return 0 end
  local r = { cg(opt, ...) }
  if opt == "setpause" or opt == "setstepmul" or opt == "incremental" or opt == "generational" then
    if _VERSION == "Lua 5.4" then cg("incremental", 0, 1000, 0)
    else cg("setpause", 0) cg("setstepmul", 400) end
  end
  return unpack(r)
end
-- Report the count when the state closes (busted exits with os.exit(code, true)).
local function report()
  if out then
    local f = io.open(out, "w")
    if f then f:write(forced, "\n") f:close() end
  end
end
if newproxy and _VERSION == "Lua 5.1" then
  local p = newproxy(true)
  getmetatable(p).__gc = report
  debug.getregistry()["sslctx.check-gc.sentinel"] = p
else
  debug.getregistry()["sslctx.check-gc.sentinel"] = setmetatable({}, { __gc = report })
end
arg[0] = "/usr/bin/busted"
dofile("/usr/bin/busted")
L

# By default every spec file but those whose work happens in other processes (servers,
# workers, scanners, nginx): the forced collections only reach this process.
if [ $# -eq 0 ]; then
  for f in spec/*_spec.lua; do
    case $f in
      spec/multiprocess_spec.lua|spec/game_server_spec.lua|spec/nginx_spec.lua|\
      spec/scan_spec.lua|spec/interop_spec.lua|spec/examples_spec.lua|spec/rock_spec.lua) ;;
      *) set -- "$@" "$f" ;;
    esac
  done
fi
export SSLCTX_GC_COUNT_FILE="$PWD/$OUT/collections"
log=$OUT/busted.log
echo "check-gc: specs under $LUA with the collector forced every $EVERY instructions ($*)"
timeout -k 10 "$TIMEOUT" "$LUA" "$OUT/busted.lua" -o utfTerminal \
  --exclude-tags="${GC_EXCLUDE_TAGS:-gc,soak,timing}" "$@" </dev/null >"$log" 2>&1
rc=$?

summary=$(hl_busted_summary "$log")
grep -E '^(not ok|.*(Failure|Error) → )' "$log" | head -n 40
if [ -z "$summary" ]; then
  echo "check-gc: busted printed no summary (exit $rc; a crash?); last lines:"
  tail -n 30 "$log"
  [ $rc -eq 124 ] && echo "check-gc: timed out after ${TIMEOUT}s"
fi
forced=$(cat "$OUT/collections" 2>/dev/null || echo "?")
set -- $summary
echo "check-gc: ${1:-?} successes / ${2:-?} failures / ${3:-?} errors / ${4:-?} pending;" \
     "$forced forced full collections; $(hl_elapsed "$start")s"
# 0 successes (every spec pending, or none selected) proves nothing: a failure too.
if [ -z "$summary" ] || [ "${1:-0}" -eq 0 ] || [ "${2:-1}" -ne 0 ] || [ "${3:-1}" -ne 0 ] ||
   [ $rc -gt 1 ]; then
  echo "check-gc: FAIL (log: $log)"
  exit 1
fi
echo "check-gc: OK"
