-- prefork_server.lua: N worker processes serving TLS on one port, sharing session ticket
-- keys (and, optionally, a session store), so that a client resumes its session whichever
-- worker its next connection reaches (doc/scaling.md).
--
--   lua5.4 examples/prefork_server.lua [--workers N] [--port N] [--host 127.0.0.1]
--          [--ticket-key FILE]... [--session-store DIR --store-key FILE]
--          [--cert FILE] [--key FILE] [--cafile FILE] [--verify MODE]
--          [--tls1.2 | --tls1.3] [--no-tickets] [--duration S] [--timeout S] [--verbose]
--
-- Run from the repository after `make` (it finds lua/ and build/<lua>/ from its own path;
-- the certificate defaults are the test PKI in build/pki, made by `make test` or
-- spec/certs/make-pki.sh).
--
-- How it works: the parent starts --workers (default 4) copies of this script with luv's
-- uv.spawn; each worker opens its own listening socket on the same address with
-- SO_REUSEPORT (LuaSocket 3.1's setoption "reuseport"; Linux 3.9 or later), and the kernel
-- spreads new connections over them.  --port 0 (the default) picks a free port: the parent
-- holds it (bound, not listening) until every worker listens.  The parent relays the
-- workers' lines ("worker I: ...") and prints "listening on HOST:PORT (N workers, ...,
-- pid PID)" once every worker listens.
--
-- Ticket keys: --ticket-key FILE, once per key, each file 80 random bytes in nginx's
-- ssl_session_ticket_key format (make one with `openssl rand 80 > ticket.key`; keep it
-- mode 0600: whoever reads it can decrypt recorded sessions and mint new ones).  The first
-- key encrypts new tickets, every one decrypts.  Without --ticket-key each worker makes
-- keys of its own, and a client resumes only when it reaches the worker it saw last.
-- SIGHUP to the parent makes every worker read the key files again (rotation: add the new
-- key second everywhere, then promote it to first; doc/scaling.md).
--
-- Session store (--session-store DIR --store-key FILE): server-side sessions as files in
-- DIR shared by the workers (ctx:set_session_store), sealed under the 32-byte store key
-- (`openssl rand 32 > store.key`).  It serves TLS 1.2 clients that offer no ticket, and with
-- --no-tickets every session.  Expired entries are removed when looked up.
--
-- Each worker serves its connections one after the other, each bounded by --timeout
-- (default 10 s): it sends "hello from worker I resumed=true|false VERSION", then echoes
-- lines until "bye" or the end of the stream.  --verbose logs every connection.
--
-- Stopping: SIGTERM or SIGINT to the parent (or --duration S elapsing) closes the workers'
-- control pipes; each worker finishes the connection it serves, closes its socket and
-- exits, and the parent exits once all are gone (after --timeout + 5 s it kills what is
-- left).  A worker also stops when its parent dies, whatever the signal.  A worker that
-- dies on its own is restarted, unless it lived less than a second (then everything stops
-- and the parent exits 1).  Usage errors exit 64.
--
-- Try it:
--   openssl rand 80 > /tmp/ticket.key
--   lua5.4 examples/prefork_server.lua --port 8443 --ticket-key /tmp/ticket.key --verbose &
--   for i in 1 2 3; do openssl s_client -connect 127.0.0.1:8443 -CAfile build/pki/ca.pem \
--       -sess_in /tmp/s -sess_out /tmp/s </dev/null 2>/dev/null | grep hello; done
--   (the first line of each: "hello from worker I resumed=...": the worker changes, the
--   session resumes from the second connection on)
--   kill %1

local here = (arg and arg[0] or ""):match("^(.*)/[^/]*$") or "."
local root = here .. "/.."
local luaname = jit and "luajit" or ("lua" .. _VERSION:match("%d+%.%d+"))
package.path = root .. "/lua/?.lua;" .. root .. "/lua/?/init.lua;" .. package.path
package.cpath = root .. "/build/" .. luaname .. "/?.so;" .. package.cpath

local socket = require "socket"

local function out(...)
  io.stdout:write(table.concat({ ... }), "\n")
  io.stdout:flush()
end

local function usage(msg)
  if msg then io.stderr:write("prefork_server: ", msg, "\n") end
  io.stderr:write("usage: prefork_server.lua [--workers N] [--port N] [--host ADDR] ",
                  "[--ticket-key FILE]... [--session-store DIR --store-key FILE] ",
                  "[--cert FILE] [--key FILE] [--cafile FILE] [--verify MODE] ",
                  "[--tls1.2 | --tls1.3] [--no-tickets] [--duration S] [--timeout S] [--verbose]\n")
  os.exit(64)
end

-- ---------------------------------------------------------------------------
-- command line (the parent's and, with --worker I appended, each worker's)

local pki = os.getenv("SSLCTX_PKI_DIR") or (root .. "/build/pki")
local o = {
  workers = 4, host = "127.0.0.1", port = 0, ticket_keys = {},
  cert = pki .. "/server-chain.pem", key = pki .. "/server.key", cafile = pki .. "/ca.pem",
  verify = "never", timeout = 10,
}
local args = arg or {}
local i = 1
while i <= #args do
  local a = args[i]
  local function value()
    i = i + 1
    if args[i] == nil then usage(a .. " needs a value") end
    return args[i]
  end
  local function number()
    local v = value()
    return tonumber(v) or usage(a .. " needs a number, got " .. v)
  end
  if a == "--workers" then o.workers = number()
  elseif a == "--port" then o.port = number()
  elseif a == "--host" then o.host = value()
  elseif a == "--ticket-key" then o.ticket_keys[#o.ticket_keys + 1] = value()
  elseif a == "--session-store" then o.store_dir = value()
  elseif a == "--store-key" then o.store_key = value()
  elseif a == "--cert" then o.cert = value()
  elseif a == "--key" then o.key = value()
  elseif a == "--cafile" then o.cafile = value()
  elseif a == "--verify" then o.verify = value()
  elseif a == "--tls1.2" then o.version = "tls1.2"
  elseif a == "--tls1.3" then o.version = "tls1.3"
  elseif a == "--no-tickets" then o.no_tickets = true
  elseif a == "--duration" then o.duration = number()
  elseif a == "--timeout" then o.timeout = number()
  elseif a == "--verbose" then o.verbose = true
  elseif a == "--worker" then o.worker = number()   -- internal: run as worker I
  elseif a == "-h" or a == "--help" then usage()
  else usage("unknown argument " .. a) end
  i = i + 1
end
if o.workers < 1 or o.workers > 64 or o.workers % 1 ~= 0 then usage("--workers: 1 to 64") end
if (o.store_dir == nil) ~= (o.store_key == nil) then
  usage("--session-store and --store-key go together")
end

local function read_file(path)
  local f, err = io.open(path, "rb")
  if not f then return nil, err end
  local s = f:read("*a")
  f:close()
  return s
end

-- A secret of `size` bytes from a file.  Messages name the file and sizes, never the bytes.
local function read_secret(path, size, what, make)
  local s, err = read_file(path)
  if not s then return nil, ("%s: %s"):format(what, tostring(err)) end
  if #s ~= size then
    return nil, ("%s %s: must be %d bytes, has %d (make one with `openssl rand %d > %s`)"):format(
      what, path, size, #s, size, make)
  end
  return s
end

local function ticket_keys()
  local keys = {}
  for n, path in ipairs(o.ticket_keys) do
    local k, err = read_secret(path, 80, "ticket key #" .. n, "ticket.key")
    if not k then return nil, err end
    keys[n] = k
  end
  return keys
end

-- ---------------------------------------------------------------------------
-- worker

-- The session store: one file per session id in `dir`, written whole then renamed into place
-- (a reader never sees half an entry): "<expires>\n<sealed blob>".  The blobs are sealed by
-- the module under the store key; the files never hold a session in the clear.
local function file_store(dir, key, tag)
  local function path(id)
    return dir .. "/" .. (id:gsub(".", function(c) return ("%02x"):format(c:byte()) end))
  end
  local serial = 0
  return {
    key = key,
    new = function(id, blob, expires)
      serial = serial + 1
      local p = path(id)
      local tmp = ("%s.%s.%d.tmp"):format(p, tag, serial)
      local f = assert(io.open(tmp, "wb"))
      f:write(("%d\n"):format(expires), blob)
      assert(f:close())
      assert(os.rename(tmp, p))
    end,
    get = function(id)
      local s = read_file(path(id))
      if not s then return nil end
      local expires, blob = s:match("^(%d+)\n(.*)$")
      if not expires or tonumber(expires) < os.time() then
        os.remove(path(id))
        return nil
      end
      return blob
    end,
    remove = function(id) os.remove(path(id)) end,
  }
end

local function run_worker(n)
  local sslctx = require "sslctx"
  local sslsocket = require "sslctx.socket"
  local prefix = ("worker %d: "):format(n)
  local function log(...) out(prefix, ...) end

  local keys = assert(ticket_keys())   -- the parent checked them
  local ctx = assert(sslctx.new({
    side = "server",
    certificate = o.cert,
    key = o.key,
    ca_file = o.verify ~= "never" and o.cafile or nil,
    verify = o.verify,
    min_version = o.version,
    max_version = o.version,
    session_tickets = not o.no_tickets,
  }))
  if #keys > 0 then ctx:set_ticket_keys(keys) end
  if o.store_dir then
    local key = assert(read_secret(o.store_key, 32, "store key", "store.key"))
    -- a tag unique among the processes sharing the directory: the worker and its pid
    local pid = (read_file("/proc/self/stat") or ""):match("^(%d+)") or tostring(os.time())
    ctx:set_session_store(file_store(o.store_dir, key, n .. "-" .. pid))
  end

  local server = assert(socket.tcp4())
  assert(server:setoption("reuseaddr", true))
  assert(server:setoption("reuseport", true))
  local ok, err = server:bind(o.host, o.port)
  if not ok then
    log("cannot bind ", o.host, ":", tostring(o.port), ": ", tostring(err))
    os.exit(1)
  end
  assert(server:listen(128))
  server:settimeout(0)
  log("ready")

  local served = 0
  local function serve(client)
    served = served + 1
    -- the handshake's last flight, the session tickets and the greeting are separate small
    -- writes: without this, Nagle's algorithm holds the later ones for the client's delayed ACK
    client:setoption("tcp-nodelay", true)
    local s = assert(sslsocket.wrap(client, ctx))
    s:settimeout(o.timeout, "t")   -- the whole connection is bounded
    local conn = s:connection()
    conn:set_logger(function(msg) log("connection ", served, ": ", msg) end)   -- store misses
    local hs, msg = s:dohandshake()
    if not hs then
      log("connection ", served, ": handshake failed: ", tostring(msg))
      s:close()
      return
    end
    local resumed = tostring(conn:session_reused())
    if o.verbose then log("connection ", served, ": ", conn:version(), " resumed=", resumed) end
    s:send(("hello from worker %d resumed=%s %s\n"):format(n, resumed, conn:version()))
    for _ = 1, 1000 do
      local line = s:receive("*l")
      if not line or line == "bye" then break end
      s:send(line .. "\n")
    end
    s:close()
  end

  -- Control: the parent holds the other end of stdin.  A line "reload" rereads the ticket
  -- keys; the end of the stream (the parent closed it, or died) stops the worker.
  local control = { getfd = function() return 0 end }
  local watch = { server, control }
  while true do
    local readable = socket.select(watch, nil, nil)
    if readable[control] then
      local line = io.stdin:read("*l")
      if line == nil then break end
      if line == "reload" then
        local new, why = ticket_keys()
        if new and #new > 0 then
          ctx:set_ticket_keys(new)
          log("ticket keys reloaded (", #new, " keys)")
        else
          log("ticket keys not reloaded: ", why or "no --ticket-key")
        end
      end
    end
    if readable[server] then
      local client = server:accept()
      if client then
        local okc, e = pcall(serve, client)
        if not okc then
          log("connection ", served, ": error: ", tostring(e))
          pcall(client.close, client)
        end
      end
    end
  end
  server:close()
  log("stopped after ", served, " connections")
  os.exit(0)
end

if o.worker then run_worker(o.worker) end

-- ---------------------------------------------------------------------------
-- parent

local uv = require "luv"

do   -- refuse bad key files before starting anything
  local keys, err = ticket_keys()
  if not keys then usage(err) end
  if o.store_key then
    local k, why = read_secret(o.store_key, 32, "store key", "store.key")
    if not k then usage(why) end
  end
  local ok, err2 = pcall(require, "sslctx")
  if not ok then usage(tostring(err2)) end
end

-- --port 0: a free port, held by a bound (not listening) socket until the workers listen.
local hold
if o.port == 0 then
  hold = assert(socket.tcp4())
  assert(hold:setoption("reuseaddr", true))
  assert(hold:setoption("reuseport", true))
  assert(hold:bind(o.host, 0))
  local _, port = hold:getsockname()
  o.port = tonumber(port)
end

local script = arg[0]
local workers, alive, ready, stopping, status = {}, 0, 0, false, 0
local signals, timers = {}, {}

local function worker_args(n)
  local a = { script }
  for k = 1, #args do a[#a + 1] = args[k] end
  for _, v in ipairs({ "--port", tostring(o.port), "--worker", tostring(n) }) do a[#a + 1] = v end
  return a
end

local spawn   -- forward

local function finish()
  for _, s in ipairs(signals) do if not s:is_closing() then s:close() end end
  for _, t in ipairs(timers) do if not t:is_closing() then t:close() end end
  if hold then hold:close(); hold = nil end
end

local function stop(why)
  if stopping then return end
  stopping = true
  out("stopping (", why, ")")
  for _, w in pairs(workers) do
    if w.stdin and not w.stdin:is_closing() then w.stdin:close() end
  end
  local kill = uv.new_timer()
  timers[#timers + 1] = kill
  kill:start(math.floor((o.timeout + 5) * 1000), 0, function()
    for _, w in pairs(workers) do
      if w.handle and not w.handle:is_closing() then w.handle:kill("sigkill") end
    end
  end)
  if alive == 0 then finish() end
end

local function on_line(n, line)
  out("worker ", n, ": ", line)
  if line == "ready" then
    ready = ready + 1
    if ready == o.workers then
      out(("listening on %s:%d (%d workers, ticket keys: %s, session store: %s, pid %d)"):format(
        o.host, o.port, o.workers, #o.ticket_keys > 0 and "shared" or "per worker",
        o.store_dir or "none", uv.os_getpid()))
      if hold then hold:close(); hold = nil end
    end
  end
end

spawn = function(n)
  local stdin, stdout = uv.new_pipe(false), uv.new_pipe(false)
  local w = { stdin = stdin, stdout = stdout, started = uv.now(), buf = "" }
  local handle, pid = uv.spawn(uv.exepath(), { args = worker_args(n), stdio = { stdin, stdout, 2 } },
    function(code, signal)
      alive = alive - 1
      w.handle:close()
      if not w.stdin:is_closing() then w.stdin:close() end
      if not stopping then
        out(("worker %d exited (status %d, signal %d)"):format(n, code, signal))
        if uv.now() - w.started < 1000 then
          status = 1
          stop("worker " .. n .. " failed at start")
        else
          spawn(n)
        end
      end
      if stopping and alive == 0 then finish() end
    end)
  if not handle then
    stdin:close()
    stdout:close()
    out("cannot start worker ", n, ": ", tostring(pid))
    status = 1
    stop("no worker")
    return
  end
  w.handle, w.pid = handle, pid
  workers[n] = w
  alive = alive + 1
  stdout:read_start(function(err, data)
    if err or not data then
      if w.buf ~= "" then out("worker ", n, ": ", w.buf) end
      stdout:close()
      return
    end
    w.buf = w.buf .. data
    while true do
      local line, rest = w.buf:match("^([^\n]*)\n(.*)$")
      if not line then break end
      w.buf = rest
      local own = line:match("^worker %d+: (.*)$")
      on_line(n, own or line)
    end
  end)
end

for _, name in ipairs({ "sigterm", "sigint", "sighup" }) do
  local s = uv.new_signal()
  signals[#signals + 1] = s
  s:start(name, function()
    if name == "sighup" then
      for _, w in pairs(workers) do
        if w.stdin and not w.stdin:is_closing() then w.stdin:write("reload\n") end
      end
    else
      stop(name)
    end
  end)
end
if o.duration then
  local t = uv.new_timer()
  timers[#timers + 1] = t
  t:start(math.floor(o.duration * 1000), 0, function() stop("duration") end)
end

for n = 1, o.workers do
  if not stopping then spawn(n) end
end
uv.run()
out("stopped")
os.exit(status)
