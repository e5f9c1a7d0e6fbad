-- spec/support/tls_server.lua: the module as a TLS server, for the interop and socket specs.
--
--   LUA_PATH=... LUA_CPATH=... lua5.4 spec/support/tls_server.lua key=value ...
--
-- Keys: host (127.0.0.1 | ::1; default 127.0.0.1), port (default 0: any free one), cert (PKI
-- leaf name, default "server": <cert>-chain.pem and <cert>.key), verify (a server mode of
-- doc/reference.md "Verification modes", default "never"), max (connections to serve,
-- default 1), behaviour ("rev": reply each line reversed, like `openssl s_server -rev`;
-- "http": one HTTP/1.0 response; "hold": handshake, send "hi\n" and then wait for the peer
-- to close), transport ("socket": the sslctx.socket adapter; "fd": a raw fd connection
-- driven with socket.select), tls ("1.2" | "1.3"), timeout (seconds per connection,
-- default 5), accept_timeout (default 30).
--
-- Prints "READY <port>" once listening, then one line per connection:
--   RESULT n=[1] handshake=[ok|fail] kind=[..] msg=[..] code=[..] verified=[..] peer=[..]
--          reused=[..] version=[..] data=[..]
-- All waits are bounded; the process exits after `max` connections.

local sslctx = require "sslctx"
local socket = require "socket"
local sslsocket = require "sslctx.socket"

local opt = {}
for _, a in ipairs(arg) do
  local k, v = a:match("^([%w_]+)=(.*)$")
  assert(k, "bad argument: " .. a)
  opt[k] = v
end

local pki_dir = os.getenv("SSLCTX_PKI_DIR") or "build/pki"
local function pki(name) return pki_dir .. "/" .. name end

local host = opt.host or "127.0.0.1"
local cert = opt.cert or "server"
local timeout = tonumber(opt.timeout or "5")
local ctx_opts = {
  side = "server",
  certificate = pki(cert == "selfsigned" and "selfsigned.pem" or (cert .. "-chain.pem")),
  key = pki(cert .. ".key"),
  ca_file = pki("ca.pem"),
  verify = opt.verify or "never",
  security_level = 1,
}
if opt.tls then
  ctx_opts.min_version = "tls" .. opt.tls
  ctx_opts.max_version = "tls" .. opt.tls
end
local ctx = assert(sslctx.new(ctx_opts))

local srv = assert(socket.bind(host, tonumber(opt.port or "0")))
local _, port = srv:getsockname()
io.stdout:write("READY ", tostring(port), "\n")
io.stdout:flush()

local function field(v)
  return "[" .. tostring(v == nil and "" or v):gsub("[%[%]\n\r]", " ") .. "]"
end

local function report(t)
  local keys = { "n", "handshake", "kind", "msg", "code", "verified", "peer", "reused", "version", "data" }
  local out = {}
  for _, k in ipairs(keys) do out[#out + 1] = k .. "=" .. field(t[k]) end
  io.stdout:write("RESULT ", table.concat(out, " "), "\n")
  io.stdout:flush()
end

local function peer_info(conn, r)
  local okc, code, _, verified = pcall(conn.verify_result, conn)
  if okc then r.code, r.verified = code, verified end
  local okp, peer = pcall(conn.peer_certificate, conn)
  if okp and peer then r.peer = peer:subject() end
  local okr, reused = pcall(conn.session_reused, conn)
  if okr then r.reused = reused end
  local okv, version = pcall(conn.version, conn)
  if okv then r.version = version end
end

local function http_response(r)
  local body = ("hello %s verify=%s\n"):format(r.peer or "anonymous", tostring(r.code))
  return "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: " .. #body ..
         "\r\nConnection: close\r\n\r\n" .. body
end

-- The adapter: a blocking-with-timeout stream.
local function serve_socket(c, r)
  local s = sslsocket.wrap(c, ctx)
  s:settimeout(timeout, "t")
  local ok, msg, kind = s:dohandshake()
  local conn = s:connection()
  peer_info(conn, r)
  if not ok then
    r.handshake, r.msg, r.kind = "fail", msg, kind
    s:close()
    return
  end
  r.handshake = "ok"
  local behaviour = opt.behaviour or "rev"
  if behaviour == "rev" then
    local line, err, partial, k = s:receive("*l")
    if line then
      r.data = line
      s:send(line:reverse() .. "\n")
    else
      r.kind, r.msg, r.data = k, err, partial
    end
  elseif behaviour == "http" then
    local lines = {}
    for _ = 1, 100 do
      local line, err, _, k = s:receive("*l")
      if not line then r.kind, r.msg = k, err; break end
      if line == "" then break end
      lines[#lines + 1] = line
    end
    r.data = lines[1]
    if lines[1] then s:send(http_response(r)) end
  elseif behaviour == "hold" then
    s:send("hi\n")
    local data, err, partial, k = s:receive("*a")
    r.data = data or partial
    r.kind, r.msg = k, err
  end
  peer_info(conn, r)
  s:close()
end

-- The raw core over the fd: handshake/read/write with want_* waits on socket.select.
local function serve_fd(c, r)
  local conn = ctx:new_connection({ fd = c:getfd(), close = false })
  local deadline = socket.gettime() + timeout
  local function wait(kind)
    local left = deadline - socket.gettime()
    if left <= 0 then return false end
    local rs, ws = nil, nil
    if kind == "want_read" then rs = { c } else ws = { c } end
    local _, _, err = socket.select(rs, ws, left)
    return err ~= "timeout"
  end
  local function drive(fn, ...)
    for _ = 1, 100000 do
      local a, b, k = fn(conn, ...)
      if a then return a end
      if (k == "want_read" or k == "want_write") then
        if not wait(k) then return nil, "timeout", "timeout" end
      else
        return nil, b, k
      end
    end
    return nil, "too many rounds", "timeout"
  end
  local ok, msg, kind = drive(conn.handshake)
  peer_info(conn, r)
  if not ok then
    r.handshake, r.msg, r.kind = "fail", msg, kind
    conn:close()
    c:close()
    return
  end
  r.handshake = "ok"
  local buf = ""
  for _ = 1, 1000 do
    if buf:find("\r?\n\r?\n") or (opt.behaviour ~= "http" and buf:find("\n")) then break end
    local data, m, k = drive(conn.read)
    if not data then r.kind, r.msg = k, m; break end
    buf = buf .. data
  end
  r.data = buf:match("^([^\r\n]*)")
  local reply
  if opt.behaviour == "http" then reply = http_response(r)
  else reply = (r.data or ""):reverse() .. "\n" end
  local sent = 0
  while sent < #reply do
    local n, m, k = drive(conn.write, reply:sub(sent + 1))
    if not n then r.kind, r.msg = k, m; break end
    sent = sent + n
  end
  conn:close()
  c:close()
end

local max = tonumber(opt.max or "1")
srv:settimeout(tonumber(opt.accept_timeout or "30"))
for n = 1, max do
  local c, err = srv:accept()
  if not c then
    report({ n = n, handshake = "fail", kind = "timeout", msg = "accept: " .. tostring(err) })
    break
  end
  local r = { n = n }
  local okh, e = pcall(opt.transport == "fd" and serve_fd or serve_socket, c, r)
  if not okh then r.handshake, r.kind, r.msg = "fail", "error", tostring(e); pcall(c.close, c) end
  report(r)
end
srv:close()
