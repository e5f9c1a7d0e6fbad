#!/usr/bin/env bash
# bench/c10k.sh — the c10k workload (issue 17): 10,000 mutual-TLS 1.3 clients from
# bench/tlsload.c (C, epoll, OpenSSL) connect, finish the handshake, exchange one line each
# way (WELCOME <CN> from the server, then PING -> PONG) and stay connected, against
#   (a) examples/game_server.lua (sslctx.luv on one luv loop) and
#   (b) bench/c10k_server.c (one epoll loop doing the same OpenSSL work),
# in the same run, one after the other.  Then a bulk row: one client asks for BULK_MIB MiB
# from bench/luv_bulk.lua (sslctx.luv), then from bench/c10k_server.c, C10K_BULK_REPS times each
# after one warm-up request per server process.
#
#   bash bench/c10k.sh            (bench/bench.sh runs it when c10k is among its workloads)
#
# Prints one line per run: "C10K impl=luv|c clients= ok= rate= hs_p50_ms= hs_p99_ms=
# rss_base_kib= rss_kib= rss_per_conn_kib=" and "C10K_BULK impl= mib_s=", then a markdown
# summary.  RSS: the server's VmRSS once it listens, and again while the clients hold their
# connections after the ramp; per connection = the difference / connections held.  CPU: the
# server's user + system time over the ramp, per connection (the load generator shares the
# two CPUs, so the wall-clock rate also depends on how the scheduler splits them).
#
# Environment: BENCH_LUA [lua5.4], C10K_N clients [10000], C10K_CONCURRENCY handshakes in
# flight [100], C10K_SECONDS bound of one ramp [150], C10K_HOLD seconds held [3],
# C10K_BULK_MIB [512], C10K_BULK_REPS [3], BENCH_OUT [build/bench].
# Every process runs under `timeout`; everything is on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."

LUA=${BENCH_LUA:-lua5.4}
N=${C10K_N:-10000}
CONC=${C10K_CONCURRENCY:-100}
SECS=${C10K_SECONDS:-150}
HOLD=${C10K_HOLD:-3}
BULK_MIB=${C10K_BULK_MIB:-512}
BULK_REPS=${C10K_BULK_REPS:-3}
OUT=${BENCH_OUT:-build/bench}
PKI=build/bench-pki
CA=$OUT/c10k-ca
mkdir -p "$OUT" "$CA"

# One descriptor per connection on each side, plus the process's own.
need=$((N + 100))
hard=$(ulimit -Hn)
if [ "$hard" != unlimited ] && [ "$hard" -lt "$need" ]; then
  echo "c10k: the hard descriptor limit ($hard) is below $need; lower C10K_N" >&2
  exit 1
fi
ulimit -n "$need"

if [ -z "${LUA_CPATH:-}" ]; then   # standalone: the tree's own build
  make --no-print-directory "build/$LUA/sslctx/core.so" >/dev/null
  export LUA_PATH="lua/?.lua;lua/?/init.lua;;" LUA_CPATH="build/$LUA/?.so;;"
fi
# shellcheck disable=SC2046  # pkg-config's flags are meant to split
cc -std=c99 -O2 -g -Wall -Wextra -o "$OUT/tlsload" bench/tlsload.c $(pkg-config --cflags --libs openssl)
# shellcheck disable=SC2046
cc -std=c99 -O2 -g -Wall -Wextra -o "$OUT/c10k_server" bench/c10k_server.c $(pkg-config --cflags --libs openssl)
sh bench/pki.sh "$PKI"
# The players' CA: tlsload mints one certificate per client under it (CN player<i>).
if [ ! -f "$CA/ca.pem" ]; then
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$CA/ca.key" 2>/dev/null
  openssl req -x509 -new -key "$CA/ca.key" -subj "/CN=c10k players CA" -days 3650 \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign" \
    -out "$CA/ca.pem" 2>/dev/null
  chmod 600 "$CA/ca.key"
fi

server_pid=
cleanup() { [ -z "$server_pid" ] || kill "$server_pid" 2>/dev/null || true; }
trap cleanup EXIT

rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }
# CPU time (user + system) of a process, in clock ticks (the command name has no spaces here)
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
HZ=$(getconf CLK_TCK)

# start_server impl log -> sets server_pid and port
start_server() {
  local impl=$1 log=$2 i
  local args=(--port 0 --cert "$PKI/server-chain.pem" --key "$PKI/server.key" --cafile "$CA/ca.pem"
              --max-seconds $((SECS + HOLD + 60)))
  case $impl in
    luv) timeout -k 5 $((SECS + HOLD + 90)) "$LUA" examples/game_server.lua "${args[@]}" >"$log" 2>&1 & ;;
    luv_bulk) timeout -k 5 $((SECS + 90)) "$LUA" bench/luv_bulk.lua "${args[@]}" >"$log" 2>&1 & ;;
    c) timeout -k 5 $((SECS + HOLD + 90)) "$OUT/c10k_server" "${args[@]}" >"$log" 2>&1 & ;;
  esac
  server_pid=$!
  port=
  for i in $(seq 1 100); do
    port=$(sed -n 's/^listening on 127\.0\.0\.1:\([0-9]*\)$/\1/p' "$log")
    [ -n "$port" ] && break
    sleep 0.1
  done
  [ -n "$port" ] || { echo "c10k: $impl server did not start:" >&2; cat "$log" >&2; exit 1; }
  # the pid of the server itself (timeout's child)
  local child
  child=$(pgrep -P "$server_pid" | head -n1 || true)
  [ -z "$child" ] || server_pid=$child
}

stop_server() { kill "$server_pid" 2>/dev/null || true; wait 2>/dev/null || true; server_pid=; }

c10k_run() {
  local impl=$1 log=$OUT/c10k-$1.log load=$OUT/c10k-$1.load base line after cpu0 cpu1
  start_server "$impl" "$log"
  sleep 0.5
  base=$(rss_kib "$server_pid")
  cpu0=$(cpu_ticks "$server_pid")
  timeout -k 5 $((SECS + HOLD + 30)) "$OUT/tlsload" --port "$port" --cafile "$PKI/root.pem" \
    --issuer-cert "$CA/ca.pem" --issuer-key "$CA/ca.key" --clients "$N" --concurrency "$CONC" \
    --seconds "$SECS" --hold "$HOLD" >"$load" 2>&1 &
  local load_pid=$! i
  for i in $(seq 1 $(((SECS + 30) * 10))); do
    grep -q '^HOLDING' "$load" && break
    kill -0 "$load_pid" 2>/dev/null || break
    sleep 0.1
  done
  cpu1=$(cpu_ticks "$server_pid")
  sleep 1
  after=$(rss_kib "$server_pid")
  wait "$load_pid" || true
  line=$(grep '^RESULT' "$load" | sed 's/^RESULT //')
  [ -n "$line" ] || { echo "c10k: tlsload printed no result:" >&2; cat "$load" >&2; exit 1; }
  local ok
  ok=$(sed -n 's/.* ok=\([0-9]*\) .*/\1/p' <<<" $line ")
  stop_server
  echo "C10K impl=$impl $line rss_base_kib=$base rss_kib=$after rss_per_conn_kib=$(awk -v a="$after" -v b="$base" -v n="$ok" 'BEGIN { printf "%.2f", (n > 0 ? (a - b) / n : 0) }') cpu_ms_per_conn=$(awk -v a="$cpu1" -v b="$cpu0" -v n="$ok" -v hz="$HZ" 'BEGIN { printf "%.3f", (n > 0 ? (a - b) * 1000 / hz / n : 0) }')"
}

# bulk_run impl: one server process, BULK_REPS + 1 clients one after the other; the first is
# a warm-up (a fresh process's allocator and socket buffers), not reported.
bulk_run() {
  local impl=$1 log=$OUT/c10k-bulk-$1.log line rep
  start_server "$impl" "$log"
  for rep in $(seq 0 "$BULK_REPS"); do
    line=$(timeout -k 5 $((SECS + 30)) "$OUT/tlsload" --port "$port" --cafile "$PKI/root.pem" \
      --issuer-cert "$CA/ca.pem" --issuer-key "$CA/ca.key" --bulk "$BULK_MIB" --seconds "$SECS" | grep '^RESULT' || true)
    [ "$rep" = 0 ] && continue
    echo "C10K_BULK impl=${impl%_bulk} mib=$BULK_MIB rep=$rep $(grep -o 'mib_s=[0-9.]*' <<<"$line" || echo mib_s=0)"
  done
  stop_server
}

results=$OUT/c10k.txt
{
  echo "META c10k_command=C10K_N=$N C10K_CONCURRENCY=$CONC C10K_SECONDS=$SECS C10K_HOLD=$HOLD C10K_BULK_MIB=$BULK_MIB BENCH_LUA=$LUA bash bench/c10k.sh"
  echo "META c10k_started=$(date -u +%Y-%m-%dT%H:%M:%SZ) load=$(cut -d' ' -f1-3 /proc/loadavg) git=$(git rev-parse --short HEAD 2>/dev/null)"
  c10k_run luv
  c10k_run c
  bulk_run luv_bulk
  bulk_run c
  echo "META c10k_load_end=$(cut -d' ' -f1-3 /proc/loadavg)"
} | tee "$results"

# ---- summary ----------------------------------------------------------------------------------
"$LUA" - "$results" <<'EOF' | tee "$OUT/c10k.md"
local rows, bulk = {}, { luv = {}, c = {} }
for line in io.lines(arg[1]) do
  local impl, rest = line:match("^C10K impl=(%S+) (.*)$")
  if impl then
    local r = {}
    for k, v in rest:gmatch("([%w_]+)=(%S+)") do r[k] = tonumber(v) or v end
    rows[impl] = r
  end
  local bimpl, mib = line:match("^C10K_BULK impl=(%S+) .*mib_s=([%d.]+)")
  if bimpl then table.insert(bulk[bimpl], tonumber(mib)) end
end
local function median(t)
  table.sort(t)
  if #t == 0 then return 0 end
  return t[math.floor((#t + 1) / 2)]
end
local l, c = rows.luv, rows.c
if not (l and c) then print("c10k: missing rows") os.exit(1) end
local function ratio(a, b) return b ~= 0 and a / b or 0 end
print()
print("| c10k | luv (sslctx.luv) | C (epoll) | luv / C | target | verdict |")
print("|---|---|---|---|---|---|")
print(("| connections held | %d of %d | %d of %d | | all | %s |"):format(l.ok, l.clients, c.ok, c.clients,
  (l.ok == l.clients and c.ok == c.clients) and "met" or "missed"))
local rr = ratio(l.rate, c.rate)
print(("| accept+handshake rate (/s) | %.0f | %.0f | %.2f | ≥ 0.90 | %s |"):format(l.rate, c.rate, rr,
  rr >= 0.9 and "met" or "missed"))
print(("| server CPU per connection (ms) | %.2f | %.2f | %.2f | | |"):format(l.cpu_ms_per_conn,
  c.cpu_ms_per_conn, ratio(l.cpu_ms_per_conn, c.cpu_ms_per_conn)))
print(("| handshake p50 (ms) | %.1f | %.1f | %.2f | | |"):format(l.hs_p50_ms, c.hs_p50_ms, ratio(l.hs_p50_ms, c.hs_p50_ms)))
local pr = ratio(l.hs_p99_ms, c.hs_p99_ms)
print(("| handshake p99 (ms) | %.1f | %.1f | %.2f | ≤ 1.20 | %s |"):format(l.hs_p99_ms, c.hs_p99_ms, pr,
  pr <= 1.2 and "met" or "missed"))
local dr = l.rss_per_conn_kib - c.rss_per_conn_kib
print(("| RSS per connection (KiB) | %.1f | %.1f | %+.1f KiB | ≤ C + 2 KiB | %s |"):format(
  l.rss_per_conn_kib, c.rss_per_conn_kib, dr, dr <= 2 and "met" or "missed"))
local lb, cb = median(bulk.luv), median(bulk.c)
local br = ratio(lb, cb)
print(("| bulk, one stream (MiB/s, median of %d) | %.0f | %.0f | %.2f | ≥ 0.90 | %s |"):format(
  #bulk.luv, lb, cb, br, br >= 0.9 and "met" or "missed"))
EOF
