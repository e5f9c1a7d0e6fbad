-- bench/reconnect_pool.lua — the reconnect workload against a pool of worker processes
-- (examples/prefork_server.lua: 4 workers on one loopback port, SO_REUSEPORT), once with
-- ticket keys shared by the workers and once with each worker's own keys, in the same run
-- (issue 18; doc/scaling.md).
--
--   lua5.4 bench/reconnect_pool.lua PKI_DIR N MAX_SECONDS    two lines, run.lua's format:
--     RESULT reconnect_pool shared n=.. wall=.. cpu=.. value=<conn/s> unit=conn/s reused=.. ...
--     RESULT reconnect_pool own    ...
--   lua5.4 bench/reconnect_pool.lua --report RESULTS_FILE   a Markdown table of the
--     "POOL rep=R RESULT ..." lines bench/bench.sh wrote (BENCH_WORKLOADS=reconnect_pool)
--
-- The client is sslctx.socket.connect (TLS 1.3, sessions reused by the adapter): it reads
-- the server's greeting line, sends "bye" and closes, N times after 10 warm-up connections,
-- bounded by MAX_SECONDS.  cpu = the client's plus the four workers' (their /proc stat,
-- sampled before and after the loop).  The servers are the example as it is in the tree
-- (its own lua/ and build/<lua>/), the client the module on LUA_PATH/LUA_CPATH.

local WARMUP, WORKERS = 10, 4

local function read_file(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("*a")
  f:close()
  return s
end

if arg[1] == "--report" then
  local text = assert(read_file(assert(arg[2], "--report needs RESULTS_FILE")), "cannot read " .. tostring(arg[2]))
  local reps, order = {}, {}
  for line in text:gmatch("[^\n]+") do
    local rep, impl, rest = line:match("^POOL rep=(%d+) RESULT reconnect_pool (%S+) (.*)$")
    if rep then
      local r = {}
      for k, v in rest:gmatch("([%w_]+)=(%S+)") do r[k] = tonumber(v) or v end
      if not reps[rep] then reps[rep] = {}; order[#order + 1] = rep end
      reps[rep][impl] = r
    end
  end
  local function median(xs)
    table.sort(xs)
    local n = #xs
    if n == 0 then return 0 end
    return n % 2 == 1 and xs[(n + 1) / 2] or (xs[n / 2] + xs[n / 2 + 1]) / 2
  end
  local cols = { shared = { rate = {}, cpu = {}, reused = {} }, own = { rate = {}, cpu = {}, reused = {} } }
  local ratios = {}
  print("## reconnect_pool (4 workers)")
  print()
  print("| rep | shared keys: conn/s | resumed | CPU ms/conn | own keys: conn/s | resumed | CPU ms/conn | shared/own |")
  print("|---|---|---|---|---|---|---|---|")
  for _, rep in ipairs(order) do
    local s, o = reps[rep].shared, reps[rep].own
    if s and o then
      for name, r in pairs({ shared = s, own = o }) do
        local c = cols[name]
        c.rate[#c.rate + 1] = r.value
        c.cpu[#c.cpu + 1] = r.cpu / r.n * 1000
        c.reused[#c.reused + 1] = r.reused / r.n * 100
      end
      ratios[#ratios + 1] = s.value / o.value
      print(("| %s | %.0f | %.1f %% | %.2f | %.0f | %.1f %% | %.2f | %.2f |"):format(rep,
        s.value, s.reused / s.n * 100, s.cpu / s.n * 1000, o.value, o.reused / o.n * 100,
        o.cpu / o.n * 1000, s.value / o.value))
    end
  end
  print(("| median | %.0f | %.1f %% | %.2f | %.0f | %.1f %% | %.2f | %.2f |"):format(
    median(cols.shared.rate), median(cols.shared.reused), median(cols.shared.cpu),
    median(cols.own.rate), median(cols.own.reused), median(cols.own.cpu), median(ratios)))
  os.exit(0)
end

local pki, n, max_seconds = arg[1], tonumber(arg[2]), tonumber(arg[3])
if not (pki and n and max_seconds) then
  io.stderr:write("usage: reconnect_pool.lua PKI_DIR N MAX_SECONDS | --report RESULTS_FILE\n")
  os.exit(2)
end

local socket = require "socket"
local sslctx = require "sslctx"
local sslsocket = require "sslctx.socket"
local gettime, clock = socket.gettime, os.clock

local here = arg[0]:match("^(.*)/[^/]*$") or "."
local example = here .. "/../examples/prefork_server.lua"
local interp = jit and "luajit" or ("lua" .. _VERSION:match("%d+%.%d+"))

local function check(v, msg, ...)
  if v == nil then error(tostring(msg), 2) end
  return v, msg, ...
end

local function q(s) return "'" .. s:gsub("'", "'\\''") .. "'" end

-- Starts the pool; -> the pipe of its output, its port, the parent's pid.
local function start_pool(extra)
  local cmd = ("exec timeout -k 5 %d %s %s --workers %d --cert %s --key %s --timeout 5 --duration %d %s 2>&1"):format(
    max_seconds * 2 + 60, interp, q(example), WORKERS, q(pki .. "/server-chain.pem"), q(pki .. "/server.key"),
    max_seconds * 2 + 30, extra)
  local p = assert(io.popen(cmd, "r"))
  for _ = 1, 100 do
    local line = p:read("*l")
    if not line then break end
    local port, pid = line:match("^listening on 127%.0%.0%.1:(%d+) .-pid (%d+)%)$")
    if port then return p, tonumber(port), tonumber(pid) end
  end
  error("the pool did not start")
end

-- utime + stime (seconds) of the children of `pid` (the workers).
local function workers_cpu(pid)
  local total = 0
  local p = assert(io.popen("pgrep -P " .. pid, "r"))
  for child in p:lines() do
    local stat = read_file("/proc/" .. child .. "/stat") or ""
    local after = stat:match("^%d+ %b() (.*)$")
    if after then
      local fields = {}
      for f in after:gmatch("%S+") do fields[#fields + 1] = f end
      total = total + (tonumber(fields[12]) + tonumber(fields[13])) / 100   -- fields 14, 15
    end
  end
  p:close()
  return total
end

local function run(label, extra)
  local p, port, pid = start_pool(extra)
  local cctx = assert(sslctx.new{ side = "client", ca_file = pki .. "/root.pem" })
  local opts = { ctx = cctx, hostname = "localhost", timeout = 5 }
  local t0, c0, s0, done, reused = 0, 0, 0, 0, 0
  for i = -WARMUP, n - 1 do
    if i == 0 then t0, c0, s0 = gettime(), clock(), workers_cpu(pid) end
    if i > 0 and gettime() - t0 > max_seconds then break end
    local s = check(sslsocket.connect("127.0.0.1", port, opts))
    check(s:receive("*l"))
    local r = s:session_reused()
    s:send("bye\n")
    s:close()
    if i >= 0 then
      done = done + 1
      if r then reused = reused + 1 end
    end
  end
  local wall, cpu, scpu = gettime() - t0, clock() - c0, workers_cpu(pid) - s0
  os.execute("kill -TERM " .. pid)
  p:read("*a")
  p:close()
  print(("RESULT reconnect_pool %s n=%d wall=%.6f cpu=%.6f value=%.3f unit=conn/s reused=%d "
         .. "client_cpu=%.6f server_cpu=%.6f"):format(label, done, wall, cpu + scpu, done / wall, reused, cpu, scpu))
end

local dir = check(io.popen("mktemp -d /tmp/sslctx-pool.XXXXXX", "r")):read("*l")
local keyfile = dir .. "/ticket.key"
assert(os.execute("openssl rand 80 > " .. q(keyfile)))
local ok, err = pcall(function()
  run("shared", "--ticket-key " .. q(keyfile))
  run("own", "")
end)
os.execute("rm -rf " .. q(dir))
if not ok then error(err, 0) end
