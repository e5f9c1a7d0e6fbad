# scripts/hardening-lib.sh: what the hardening scripts share (sourced, never run).
#   hl_root            cd to the repository root
#   hl_srcs            the module's C sources: $SRCS if set, else the Makefile's SRCS
#   hl_busted_summary  LOG -> "S F E P" from busted's summary line (empty if none)
#   hl_now             seconds since the epoch (with decimals)
#   hl_elapsed START   seconds since START, one decimal

hl_root() {
  cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1
}

# The Makefile is the one place the list lives: read it from make's database.
hl_make_var() {
  make --no-print-directory -pRrq -f Makefile 2>/dev/null | sed -n "s/^$1 := //p" | head -n 1
}

hl_srcs() {
  if [ -n "${SRCS:-}" ]; then echo "$SRCS"; else hl_make_var SRCS; fi
}

# busted's utfTerminal/plain summary: "N successes / N failures / N errors / N pending".
hl_busted_summary() {
  sed 's/\x1b\[[0-9;]*m//g' "$1" |
    grep -E '^[0-9]+ success(es)? / [0-9]+ failures? / [0-9]+ errors? / [0-9]+ pending' |
    tail -n 1 | awk '{print $1, $4, $7, $10}'
}

hl_now() { date +%s.%N; }
hl_elapsed() { awk -v s="$1" -v e="$(date +%s.%N)" 'BEGIN { printf "%.1f", e - s }'; }

# The same search paths as `make test`.
hl_lua_env() {
  export LUA_PATH='lua/?.lua;lua/?/init.lua;spec/?.lua;;'
  unset LUA_PATH_5_2 LUA_PATH_5_3 LUA_PATH_5_4 LUA_CPATH_5_2 LUA_CPATH_5_3 LUA_CPATH_5_4
  export SSLCTX_PKI_DIR="$PWD/build/pki"
}
