-- bench/run.lua — the module side of the sslctx benchmark (bench/ref.c is the C side).
--
--   lua5.4 bench/run.lua WORKLOAD PKI_DIR N MAX_SECONDS
--
-- prints one line, in ref.c's format:
--
--   RESULT <workload> <impl> n=<done> wall=<s> cpu=<s> value=<metric> unit=<unit> [k=v ...]
--
-- Workloads (impl "module" unless said):
--   mem_hs, mem_hs_vcb, mem_hs_mtls, mem_hs_resume   N handshakes over memory buffers, each
--                                                    with a 32-byte echo
--   mem_bulk        N MiB in 16 KiB writes, one connection, memory buffers
--   mem_idle        N connections (client + server end) kept after handshake: RSS delta / N
--   sock_hs         N handshakes + echo over loopback, fd transport, against a Lua server
--                   process (this script's sock_server)
--   sock_bulk       N MiB over loopback, fd transport
--   reconnect       sslctx.socket.connect to a C echo server (ref sock_server), N times,
--                   sessions reused by the adapter
--   reconnect_luasec   the same with LuaSec (impl "luasec"; cannot resume)
--   mem_idle_luasec    mem_idle with LuaSec (impl "luasec") over loopback TCP pairs (2N
--                   descriptors: bench.sh raises the limit)
--   sock_server     (internal) the Lua server of sock_hs / sock_bulk
--
-- Each loop is bounded by N and by MAX_SECONDS; every wait by 5 s.
-- Environment: BENCH_REF (the C reference binary, for reconnect's server; default
-- build/bench/ref); BENCH_RELEASE_BUFFERS=0: every context made with release_buffers = false
-- (impl "module_keep"), to measure what the default SSL_MODE_RELEASE_BUFFERS costs.

local workload, pki, n, max_seconds, extra_arg = arg[1], arg[2], tonumber(arg[3]), tonumber(arg[4]), arg[5]
if not (workload and pki and n and max_seconds) then
  io.stderr:write("usage: run.lua WORKLOAD PKI_DIR N MAX_SECONDS\n")
  os.exit(2)
end

local socket = require "socket"
local gettime, clock = socket.gettime, os.clock

-- BENCH_GC=generational (or incremental): the collector mode of this process (Lua 5.4).
if os.getenv("BENCH_GC") and os.getenv("BENCH_GC") ~= "" then collectgarbage(os.getenv("BENCH_GC")) end

-- BENCH_RELEASE_BUFFERS=0: contexts keep their record buffers (option release_buffers = false).
local KEEP = os.getenv("BENCH_RELEASE_BUFFERS") == "0"
local IMPL = KEEP and "module_keep" or "module"

local WARMUP = 10
local ECHO = "sslctx bench echo 0123456789abcd"   -- 32 bytes, as ref.c's
local CHUNK = 16384
local CS = "TLS_AES_128_GCM_SHA256"
local WAIT = 5

local function P(f) return pki .. "/" .. f end

local function result(impl, done, wall, cpu, value, unit, extra)
  io.stdout:write(("RESULT %s %s n=%d wall=%.6f cpu=%.6f value=%.6f unit=%s%s\n"):format(
    (workload:gsub("_luasec$", "")), impl, done, wall, cpu, value, unit, extra and (" " .. extra) or ""))
  io.stdout:flush()
end

local function check(v, msg, kind, ...)
  if v == nil then error((msg or "?") .. " (" .. tostring(kind) .. ")", 2) end
  return v, msg, kind, ...
end

-- ---------------------------------------------------------------------------
-- contexts: the same settings as ref.c's

local sslctx

local function server_ctx(mtls)
  local o = {
    side = "server", certificate = P"server-chain.pem", key = P"server.key",
    min_version = "tls1.3", ciphersuites = CS, groups = "X25519",
  }
  if KEEP then o.release_buffers = false end
  if mtls then
    o.ca_file = P"root.pem"
    o.verify = "require"
  end
  return check(sslctx.new(o))
end

local function client_ctx(mtls, vcb)
  local o = {
    side = "client", ca_file = P"root.pem", verify = "always",
    min_version = "tls1.3", ciphersuites = CS, groups = "X25519",
  }
  if KEEP then o.release_buffers = false end
  if vcb then o.verify_callback = function(ok) return ok end end
  if mtls then
    o.certificate = P"client-chain.pem"
    o.key = P"client.key"
  end
  return check(sslctx.new(o))
end

-- ---------------------------------------------------------------------------
-- memory transport

local function xfer(a, b)
  local d = a:drain()
  if #d > 0 then b:feed(d) end
end

local function hs_step(conn, done)
  if done then return true end
  local ok, msg, kind = conn:handshake()
  if ok then return true end
  if kind ~= "want_read" then error("handshake: " .. tostring(msg)) end
  return false
end

local function mem_handshake(c, s)
  local cd, sd = false, false
  for _ = 1, 20 do
    cd = hs_step(c, cd)
    xfer(c, s)
    sd = hs_step(s, sd)
    xfer(s, c)
    if cd and sd then return end
  end
  error("handshake did not finish")
end

local function mem_echo(c, s)
  if c:write(ECHO) ~= #ECHO then error("write") end
  xfer(c, s)
  local d = check(s:read())
  if s:write(d) ~= #d then error("write") end
  xfer(s, c)
  if check(c:read()) ~= ECHO then error("echo") end
end

local function run_mem_hs(mtls, vcb, resume)
  local sctx, cctx = server_ctx(mtls), client_ctx(mtls, vcb)
  local sess
  if resume then
    local c, s = cctx:new_connection{ hostname = "localhost" }, sctx:new_connection()
    mem_handshake(c, s)
    mem_echo(c, s)   -- the client reads the tickets
    sess = c:session()
    if not sess then error("no resumable session") end
    c:close()
    s:close()
  end
  local t0, c0 = 0, 0
  local done, reused = 0, 0
  for i = -WARMUP, n - 1 do
    if i == 0 then t0, c0 = gettime(), clock() end
    if i > 0 and i % 16 == 0 and gettime() - t0 > max_seconds then break end
    local c = cctx:new_connection{ hostname = "localhost", session = sess }
    local s = sctx:new_connection()
    mem_handshake(c, s)
    mem_echo(c, s)
    if i >= 0 then
      done = done + 1
      if c:session_reused() then reused = reused + 1 end
    end
    c:close()
    s:close()
  end
  collectgarbage("collect")   -- the loop's garbage is the loop's cost
  local wall, cpu = gettime() - t0, clock() - c0
  if resume and reused ~= done then error(("only %d of %d handshakes resumed"):format(reused, done)) end
  if not resume and reused ~= 0 then error("unexpected resumption") end
  result(IMPL, done, wall, cpu, done / wall, "hs/s", "reused=" .. reused)
end

local function run_mem_bulk()
  local sctx, cctx = server_ctx(), client_ctx()
  local c, s = cctx:new_connection{ hostname = "localhost" }, sctx:new_connection()
  local chunk = string.rep("x", CHUNK)
  mem_handshake(c, s)
  mem_echo(c, s)
  local records, done = n * math.floor(1048576 / CHUNK), 0
  local t0, c0 = gettime(), clock()
  for i = 1, records do
    if i % 64 == 0 and gettime() - t0 > max_seconds then break end
    if c:write(chunk) ~= CHUNK then error("write") end
    xfer(c, s)
    local got = 0
    while got < CHUNK do got = got + #check(s:read()) end
    done = done + 1
  end
  collectgarbage("collect")   -- the loop's garbage is the loop's cost
  local wall, cpu = gettime() - t0, clock() - c0
  local mib = done * CHUNK / 1048576
  result(IMPL, mib, wall, cpu, mib / wall, "MiB/s", ("mib=%.2f"):format(mib))
  c:close()
  s:close()
end

local rss = assert(assert(loadfile("bench/soak.lua"))("--library").rss)   -- /proc/self/statm

local function run_mem_idle()
  local sctx, cctx = server_ctx(), client_ctx()
  local t0, c0 = gettime(), clock()
  for _ = 1, WARMUP do
    local c, s = cctx:new_connection{ hostname = "localhost" }, sctx:new_connection()
    mem_handshake(c, s)
    mem_echo(c, s)
    c:close()
    s:close()
  end
  local conns = {}
  for i = 1, 2 * n do conns[i] = false end   -- the array ref.c callocs
  collectgarbage("collect")
  collectgarbage("collect")
  local before, heap_before = rss(), collectgarbage("count")
  for i = 1, n do
    local c, s = cctx:new_connection{ hostname = "localhost" }, sctx:new_connection()
    mem_handshake(c, s)
    mem_echo(c, s)
    conns[2 * i - 1], conns[2 * i] = c, s
  end
  collectgarbage("collect")
  collectgarbage("collect")
  local after, heap_after = rss(), collectgarbage("count")
  result(IMPL, n, gettime() - t0, clock() - c0, (after - before) / n, "B/pair",
    ("rss_before=%d rss_after=%d lua_heap_per_conn=%.0f"):format(before, after,
      (heap_after - heap_before) * 1024 / n))
  for i = 1, 2 * n do conns[i]:close() end
end

-- mem_idle with LuaSec: it has no memory transport, so each pair is a client and a server
-- over a loopback TCP connection made in this process (2N descriptors), handshake and echo,
-- then kept.  The kernel's socket memory is not in the RSS; LuaSocket's and LuaSec's
-- per-object buffers are.
local function run_mem_idle_luasec()
  local ssl = require "ssl"
  local sctx = check(ssl.newcontext{
    mode = "server", protocol = "tlsv1_3", certificate = P"server-chain.pem", key = P"server.key",
    ciphersuites = CS, curveslist = "X25519",
  })
  local cctx = check(ssl.newcontext{
    mode = "client", protocol = "tlsv1_3", verify = "peer", cafile = P"root.pem",
    ciphersuites = CS, curveslist = "X25519",
  })
  local srv = check(socket.bind("127.0.0.1", 0))
  local _, port = srv:getsockname()
  srv:settimeout(WAIT)
  local function step(conn, done)
    if done then return true end
    local ok, err = conn:dohandshake()
    if ok then return true end
    if err ~= "wantread" and err ~= "wantwrite" then error("luasec handshake: " .. tostring(err)) end
    return false
  end
  local function pair()
    local t = socket.tcp()
    t:settimeout(WAIT)
    check(t:connect("127.0.0.1", port))
    local a = check(srv:accept())
    t:setoption("tcp-nodelay", true)   -- or Nagle and delayed ACKs hold the second flight 40 ms
    a:setoption("tcp-nodelay", true)
    local c, s = check(ssl.wrap(t, cctx)), check(ssl.wrap(a, sctx))
    c:sni("localhost")
    c:settimeout(0)
    s:settimeout(0)
    local cd, sd = false, false
    for _ = 1, 1000 do
      cd = step(c, cd)
      sd = step(s, sd)
      if cd and sd then break end
      socket.sleep(0.001)   -- loopback delivers at once: rarely reached (select cannot take fds >= 1024)
    end
    if not (cd and sd) then error("luasec handshake did not finish") end
    c:settimeout(WAIT)
    s:settimeout(WAIT)
    check(c:send(ECHO))
    local d = check(s:receive(#ECHO))
    check(s:send(d))
    if check(c:receive(#ECHO)) ~= ECHO then error("echo") end   -- the client reads the tickets
    return c, s
  end
  local t0, c0 = gettime(), clock()
  for _ = 1, WARMUP do
    local c, s = pair()
    c:close()
    s:close()
  end
  local conns = {}
  for i = 1, 2 * n do conns[i] = false end
  collectgarbage("collect")
  collectgarbage("collect")
  local before, heap_before = rss(), collectgarbage("count")
  for i = 1, n do conns[2 * i - 1], conns[2 * i] = pair() end
  collectgarbage("collect")
  collectgarbage("collect")
  local after, heap_after = rss(), collectgarbage("count")
  result("luasec", n, gettime() - t0, clock() - c0, (after - before) / n, "B/pair",
    ("rss_before=%d rss_after=%d lua_heap_per_conn=%.0f"):format(before, after,
      (heap_after - heap_before) * 1024 / n))
  for i = 1, 2 * n do conns[i]:close() end
  srv:close()
end

-- ---------------------------------------------------------------------------
-- sockets (LuaSocket for TCP; the module over the fd)

local function wait(set, kind)
  local err
  if kind == "want_read" then err = select(3, socket.select(set, nil, WAIT))
  elseif kind == "want_write" then err = select(3, socket.select(nil, set, WAIT))
  else error("unexpected " .. tostring(kind)) end
  if err then error("select: " .. err) end
end

local function sock_handshake(conn, set)
  for _ = 1, 1000 do
    local ok, msg, kind = conn:handshake()
    if ok then return end
    if kind ~= "want_read" and kind ~= "want_write" then error("handshake: " .. tostring(msg)) end
    wait(set, kind)
  end
  error("handshake: too many waits")
end

local function sock_write(conn, set, data)
  for _ = 1, 100000 do
    local k, msg, kind = conn:write(data)
    if k then
      if k == #data then return end
      data = data:sub(k + 1)
    elseif kind == "want_read" or kind == "want_write" then
      wait(set, kind)
    else
      error("write: " .. tostring(msg))
    end
  end
  error("write: too many waits")
end

local function sock_read(conn, set)
  for _ = 1, 100000 do
    local d, msg, kind = conn:read()
    if d and #d > 0 then return d end
    if d then kind = "want_read" end
    if kind == "want_read" or kind == "want_write" then wait(set, kind)
    else error("read: " .. tostring(msg)) end
  end
  error("read: too many waits")
end

local function tcp_connect(port)
  local t = socket.tcp()
  t:settimeout(WAIT)
  check(t:connect("127.0.0.1", port))
  t:setoption("tcp-nodelay", true)
  return t
end

-- The Lua server: count connections, one after the other; mode "echo" or a byte count.
local function run_sock_server()
  sslctx = require "sslctx"
  local sctx = server_ctx()
  local srv = check(socket.bind("127.0.0.1", 0))
  local _, port = srv:getsockname()
  srv:settimeout(WAIT)
  io.stdout:write("PORT ", port, "\n")
  io.stdout:flush()
  local bulk = tonumber(extra_arg)
  local t0, c0 = gettime(), clock()
  for i = 1, n do
    if gettime() - t0 > max_seconds + 30 then error("server: out of time") end
    if i == WARMUP + 1 then c0 = clock() end   -- the client's timed part starts here
    local t = check(srv:accept())
    t:setoption("tcp-nodelay", true)
    local set = { t }
    local conn = sctx:new_connection{ fd = t:getfd(), close = false }
    sock_handshake(conn, set)
    if bulk then
      c0 = clock()
      local got = 0
      while got < bulk do got = got + #sock_read(conn, set) end
      sock_write(conn, set, "k")
    else
      local d = ""
      while #d < #ECHO do d = d .. sock_read(conn, set) end
      sock_write(conn, set, d)
    end
    conn:close()
    t:close()
  end
  collectgarbage("collect")
  io.stdout:write(("SERVERCPU %.6f\n"):format(clock() - c0))
  srv:close()
end

local function script_path() return arg[0] end
local function interpreter()
  local i = -1
  while arg[i - 1] do i = i - 1 end
  return arg[i]
end

-- Waits for a server process to end; returns the CPU seconds it reports for the timed part.
local function finish(p)
  local rest = p:read("*a") or ""
  p:close()
  return tonumber(rest:match("SERVERCPU (%S+)"))
end

-- Starts a server process; returns its pipe and port.
local function spawn(cmd)
  local p = assert(io.popen("exec " .. cmd, "r"))
  local line = p:read("*l")
  local port = line and tonumber(line:match("^PORT (%d+)$"))
  if not port then
    p:close()
    error("server did not start: " .. tostring(line))
  end
  return p, port
end

local function lua_server(count, bulk)
  return spawn(("%s %s sock_server %s %d %s %s"):format(interpreter(), script_path(), pki, count,
    max_seconds, bulk or ""))
end

local function run_sock_hs()
  local cctx = client_ctx()
  local p, port = lua_server(n + WARMUP)
  local t0, c0, done = 0, 0, 0
  for i = -WARMUP, n - 1 do
    if i == 0 then t0, c0 = gettime(), clock() end
    if i > 0 and gettime() - t0 > max_seconds then break end
    local t = tcp_connect(port)
    local set = { t }
    local conn = cctx:new_connection{ fd = t:getfd(), close = false, hostname = "localhost" }
    sock_handshake(conn, set)
    sock_write(conn, set, ECHO)
    local d = ""
    while #d < #ECHO do d = d .. sock_read(conn, set) end
    if d ~= ECHO then error("echo") end
    if i >= 0 then done = done + 1 end
    conn:close()
    t:close()
  end
  collectgarbage("collect")   -- the loop's garbage is the loop's cost
  local wall, cpu = gettime() - t0, clock() - c0
  if done < n then   -- out of time: the server waits for connections that will not come
    for _ = done + 1, n do local t = tcp_connect(port); t:close() end
  end
  local scpu = finish(p) or 0
  result(IMPL, done, wall, cpu + scpu, done / wall, "hs/s",
    ("reused=0 client_cpu=%.6f server_cpu=%.6f"):format(cpu, scpu))
end

local function run_sock_bulk()
  local cctx = client_ctx()
  local bytes = n * 1048576
  local p, port = lua_server(1, bytes)
  local t = tcp_connect(port)
  local set = { t }
  local conn = cctx:new_connection{ fd = t:getfd(), close = false, hostname = "localhost" }
  local chunk = string.rep("x", CHUNK)
  sock_handshake(conn, set)
  local t0, c0 = gettime(), clock()
  local sent = 0
  while sent < bytes do
    sock_write(conn, set, chunk)
    sent = sent + CHUNK
  end
  if sock_read(conn, set) ~= "k" then error("bulk ack") end
  collectgarbage("collect")   -- the loop's garbage is the loop's cost
  local wall, cpu = gettime() - t0, clock() - c0
  conn:close()
  t:close()
  local scpu = finish(p) or 0
  result(IMPL, n, wall, cpu + scpu, n / wall, "MiB/s",
    ("client_cpu=%.6f server_cpu=%.6f"):format(cpu, scpu))
end

-- reconnect: one C echo server; sslctx.socket (sessions reused) or LuaSec (full handshakes).
local function c_server(count)
  local ref = os.getenv("BENCH_REF") or "build/bench/ref"
  return spawn(("%s sock_server %s %d %s"):format(ref, pki, count, max_seconds))
end

local function run_reconnect(luasec)
  local p, port = c_server(n + WARMUP)
  local connect_one
  if luasec then
    local ssl = require "ssl"
    local lctx = check(ssl.newcontext{
      mode = "client", protocol = "tlsv1_3", verify = "peer", cafile = P"root.pem",
      ciphersuites = CS, curveslist = "X25519",
    })
    connect_one = function()
      local t = socket.tcp()
      t:settimeout(WAIT)
      check(t:connect("127.0.0.1", port))
      local s = check(ssl.wrap(t, lctx))
      s:sni("localhost")
      s:settimeout(WAIT)
      check(s:dohandshake())
      check(s:send(ECHO))
      if check(s:receive(#ECHO)) ~= ECHO then error("echo") end
      s:close()
      return false
    end
  else
    local sslsocket = require "sslctx.socket"
    local cctx = client_ctx()
    local opts = { ctx = cctx, hostname = "localhost", timeout = WAIT }
    connect_one = function()
      local s = check(sslsocket.connect("127.0.0.1", port, opts))
      check(s:send(ECHO))
      if check(s:receive(#ECHO)) ~= ECHO then error("echo") end
      local reused = s:session_reused()
      s:close()
      return reused
    end
  end
  local t0, c0, done, reused = 0, 0, 0, 0
  for i = -WARMUP, n - 1 do
    if i == 0 then t0, c0 = gettime(), clock() end
    if i > 0 and gettime() - t0 > max_seconds then break end
    local r = connect_one()
    if i >= 0 then
      done = done + 1
      if r then reused = reused + 1 end
    end
  end
  collectgarbage("collect")   -- the loop's garbage is the loop's cost
  local wall, cpu = gettime() - t0, clock() - c0
  if done < n then
    for _ = done + 1, n do local t = tcp_connect(port); t:close() end
  end
  local scpu = finish(p) or 0
  -- the target is "with session reuse": every module connection must resume, LuaSec's none
  local want = luasec and 0 or done
  if reused ~= want then error(("%d of %d connections resumed, %d expected"):format(reused, done, want)) end
  result(luasec and "luasec" or IMPL, done, wall, cpu + scpu, done / wall, "conn/s",
    ("reused=%d client_cpu=%.6f server_cpu=%.6f"):format(reused, cpu, scpu))
end

-- ---------------------------------------------------------------------------

local runs = {
  mem_hs = function() run_mem_hs(false, false, false) end,
  mem_hs_vcb = function() run_mem_hs(false, true, false) end,
  mem_hs_mtls = function() run_mem_hs(true, false, false) end,
  mem_hs_resume = function() run_mem_hs(false, false, true) end,
  mem_bulk = run_mem_bulk,
  mem_idle = run_mem_idle,
  mem_idle_luasec = run_mem_idle_luasec,
  sock_hs = run_sock_hs,
  sock_bulk = run_sock_bulk,
  sock_server = run_sock_server,
  reconnect = function() run_reconnect(false) end,
  reconnect_luasec = function() run_reconnect(true) end,
}
local f = runs[workload]
if not f then
  io.stderr:write("run.lua: unknown workload '", workload, "'\n")
  os.exit(2)
end
if not workload:match("_luasec$") and workload ~= "sock_server" then sslctx = require "sslctx" end
f()
