-- spec/support/scan_server.lua: a default server for TLS scanners (spec/scan_spec.lua, `make
-- scan`).
--
--   LUA_PATH=... LUA_CPATH=... lua5.4 spec/support/scan_server.lua key=value ...
--
-- The context is made with nothing but a certificate and its key, as an operator would:
-- sslctx.new{side = "server", certificate = ..., key = ...}.  Every other setting is the
-- module's default, which is what the scanners judge.
--
-- Keys: cert (PKI leaf name, default "server": <cert>-chain.pem and <cert>.key), port
-- (default 0: any free one), max (connections to accept, default 2000), seconds (lifetime,
-- default 300), idle (seconds a connection may stay, default 10), loose ("1": the scanners'
-- own check, a server loosened on purpose: OpenSSL's TLS 1.2 cipher list, the client's
-- order, client-initiated renegotiation allowed; never what the module does by default).
--
-- Listens on 127.0.0.1 only and prints "READY <port>".  Connections are driven together
-- over the fd transport with socket.select (scanners open a connection and may leave it
-- half-done while they open the next).  Each one: handshake, then read; once a request's
-- header (an empty line) or any line arrives, one HTTP/1.1 response and a close.  Every
-- wait is bounded; the process exits after `max` connections have ended or after
-- `seconds`, printing "DONE accepted=<n> handshakes=<n>".

local sslctx = require "sslctx"
local socket = require "socket"

local opt = {}
for _, a in ipairs(arg) do
  local k, v = a:match("^([%w_]+)=(.*)$")
  assert(k, "bad argument: " .. a)
  opt[k] = v
end

local pki_dir = os.getenv("SSLCTX_PKI_DIR") or "build/pki"
local cert = opt.cert or "server"
local max = tonumber(opt.max or "2000")
local idle = tonumber(opt.idle or "10")
local stop_at = socket.gettime() + tonumber(opt.seconds or "300")

local ctx = assert(sslctx.new{
  side = "server",
  certificate = pki_dir .. "/" .. cert .. "-chain.pem",
  key = pki_dir .. "/" .. cert .. ".key",
})
if opt.loose == "1" then
  ctx:set_ciphers("DEFAULT")
  ctx:clear_options{ "cipher_server_preference" }
  ctx:set_options{ "allow_client_renegotiation" }
end

local srv = assert(socket.bind("127.0.0.1", tonumber(opt.port or "0")))
srv:settimeout(0)
local _, port = srv:getsockname()
io.stdout:write("READY ", tostring(port), "\n")
io.stdout:flush()

local BODY = "sslctx default server\n"
local RESPONSE = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: " .. #BODY ..
                 "\r\nConnection: close\r\n\r\n" .. BODY

local live = {}            -- list of {sock, conn, state, want, deadline, buf, sent}
local accepted, handshakes = 0, 0

local function finish(c)
  pcall(c.conn.close, c.conn)
  pcall(c.sock.close, c.sock)
  c.done = true
end

-- One step of a connection; on want_read/want_write remembers what it waits for.
local function step(c)
  for _ = 1, 64 do
    if c.state == "handshake" then
      local ok, _, kind = c.conn:handshake()
      if ok then
        c.state, handshakes = "read", handshakes + 1
      elseif kind == "want_read" or kind == "want_write" then
        c.want = kind; return
      else
        return finish(c)
      end
    elseif c.state == "read" then
      local data, _, kind = c.conn:read()
      if data then
        c.buf = c.buf .. data
        if c.buf:find("\r?\n\r?\n") or #c.buf > 8192 or
           (c.buf:find("\n") and not c.buf:find("^%u+ ")) then
          c.state = "write"
        end
      elseif kind == "want_read" or kind == "want_write" then
        c.want = kind; return
      else
        return finish(c)
      end
    elseif c.state == "write" then
      local n, _, kind = c.conn:write(RESPONSE:sub(c.sent + 1))
      if n then
        c.sent = c.sent + n
        if c.sent >= #RESPONSE then
          c.conn:shutdown()
          return finish(c)
        end
      elseif kind == "want_read" or kind == "want_write" then
        c.want = kind; return
      else
        return finish(c)
      end
    end
  end
end

local ended = 0
for _ = 1, 10000000 do
  local now = socket.gettime()
  if now >= stop_at or (accepted >= max and #live == 0) then break end
  local rs, ws = {}, {}
  if accepted < max then rs[1] = srv end
  for _, c in ipairs(live) do
    if c.want == "want_write" then ws[#ws + 1] = c.sock else rs[#rs + 1] = c.sock end
  end
  local r, w = socket.select(rs, ws, math.min(0.5, stop_at - now))
  local ready = {}
  for _, s in ipairs(r) do ready[s] = true end
  for _, s in ipairs(w) do ready[s] = true end
  if ready[srv] then
    local sock = srv:accept()
    if sock then
      accepted = accepted + 1
      sock:settimeout(0)
      local c = { sock = sock, state = "handshake", buf = "", sent = 0,
                  deadline = socket.gettime() + idle }
      c.conn = ctx:new_connection{ fd = sock:getfd(), close = false }
      live[#live + 1] = c
      step(c)
    end
  end
  now = socket.gettime()
  local keep = {}
  for _, c in ipairs(live) do
    if not c.done and ready[c.sock] then step(c) end
    if not c.done and now >= c.deadline then finish(c) end
    if c.done then ended = ended + 1 else keep[#keep + 1] = c end
  end
  live = keep
end
for _, c in ipairs(live) do finish(c) end
srv:close()
io.stdout:write(("DONE accepted=%d handshakes=%d ended=%d\n"):format(accepted, handshakes, ended))
