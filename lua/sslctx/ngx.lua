--- sslctx.ngx: OpenResty integration (doc/reference.md, doc/openresty.md).
--
-- Client:  sngx.connect(sock, ctx [, opts]) -> stream | nil, message, kind
--          TLS over a connected ngx.socket.tcp cosocket, through the memory transport;
--          opts.session_dict shares client sessions among the workers.
--          sngx.remember_hosts() records the host each cosocket connects to (for the
--          default hostname); loading the module calls it.
-- Server:  sngx.set_policy(name)                          (ssl_client_hello_by_lua*)
--          sngx.set_verification_mode(mode [, cb [, opts]]) (ssl_certificate_by_lua*)
--          sngx.verdict() -> code, string, verified, peer_pem, policy, sni (request phases)
--          sngx.require_policy(name)   421 / 403 unless this policy verified the client
--
-- See doc/openresty.md for the rules (what runs where, what may not yield).
local sslctx = require "sslctx"
local stream = require "sslctx.stream"

local type, pairs, tostring, tonumber, error = type, pairs, tostring, tonumber, error
local setmetatable, rawget, rawset = setmetatable, rawget, rawset
local concat, format = table.concat, string.format
local min, ceil = math.min, math.ceil

local M = {}

-- Bounds on the loops that move bytes (each round also waits on the cosocket, which has its
-- own timeouts): a handshake or a read that needs more rounds than this is broken.
local MAX_ROUNDS = 100000
local RECEIVE_CHUNK = 16384     -- receiveany() size for ciphertext
local WRITE_CHUNK = 65536       -- plaintext handed to conn:write() at once
-- The whole client handshake, however the upstream spaces its bytes (opts.handshake_timeout).
M.HANDSHAKE_TIMEOUT = 30000     -- milliseconds

local function ngx_env()
  return rawget(_G, "ngx")
end

-- ---------------------------------------------------------------------------
-- The host a cosocket connected to.
--
-- A cosocket does not tell its peer's name, so remember_hosts() wraps the cosocket class's
-- `connect` (the method table resty.core also extends: registry.__tcp_cosocket_mt) and
-- `ngx.socket.connect`, and remembers the host each socket connected to (weakly).  Sockets
-- connected before it ran are not known: pass opts.hostname.

local REG_HOSTS = "sslctx.ngx.hosts"
local REG_PORTS = "sslctx.ngx.ports"
local REG_TIMEOUTS = "sslctx.ngx.timeouts"
local REG_PATCHED = "sslctx.ngx.connect_patched"

local function weak_table(key)
  local reg = debug.getregistry()
  local t = rawget(reg, key)
  if t == nil then
    t = setmetatable({}, { __mode = "k" })
    rawset(reg, key, t)
  end
  return t
end

local hosts = weak_table(REG_HOSTS)
local ports = weak_table(REG_PORTS)   -- the port each socket connected to (opts.session_dict)
-- The timeouts each socket was given ({connect, send, read} in ms; 0 is nginx's default),
-- so that the handshake can shorten the waits to its deadline and put them back.
local timeouts = weak_table(REG_TIMEOUTS)

local function remember(sock, host, port, ok, ...)
  if ok and type(host) == "string" and host:sub(1, 5) ~= "unix:" then
    hosts[sock] = host
    ports[sock] = tonumber(port)
  else
    hosts[sock] = nil
    ports[sock] = nil
  end
  return ok, ...
end

--- sngx.remember_hosts() -> true | nil, message: from now on, the host (and port) each
-- cosocket of this Lua VM connects to is recorded, for connect's default hostname and
-- opts.session_dict; the settimeout(s) the handshake deadline restores are recorded too.
-- Idempotent per VM (the mark is in the registry, which a reloaded VM starts without).
--
-- Loading this module calls it, and must: doc/reference.md fixes that connect's hostname
-- defaults to the host the socket connected to, and a cosocket tells no name afterwards, so
-- the wrapper has to be in place before the application's first connect, with nothing asked
-- of the application.  The function gives the patch a name: what installs it, and where
-- (loading the module in init_by_lua* has it before any request); calling it again is
-- harmless.
function M.remember_hosts()
  local ngx = ngx_env()
  local reg = debug.getregistry()
  if ngx == nil then return nil, "sslctx.ngx.remember_hosts: not running inside OpenResty (ngx_lua)" end
  if rawget(reg, REG_PATCHED) then return true end
  local mt = rawget(reg, "__tcp_cosocket_mt")
  if type(mt) == "table" and type(rawget(mt, "connect")) == "function" then
    local connect = rawget(mt, "connect")
    rawset(mt, "connect", function(self, host, port, ...)
      return remember(self, host, port, connect(self, host, port, ...))
    end)
  end
  if type(mt) == "table" and type(rawget(mt, "settimeout")) == "function" then
    local settimeout = rawget(mt, "settimeout")
    rawset(mt, "settimeout", function(self, ms, ...)
      local t = tonumber(ms) or 0
      timeouts[self] = { t, t, t }
      return settimeout(self, ms, ...)
    end)
  end
  if type(mt) == "table" and type(rawget(mt, "settimeouts")) == "function" then
    local settimeouts = rawget(mt, "settimeouts")
    rawset(mt, "settimeouts", function(self, c, s, r, ...)
      timeouts[self] = { tonumber(c) or 0, tonumber(s) or 0, tonumber(r) or 0 }
      return settimeouts(self, c, s, r, ...)
    end)
  end
  local socket = ngx.socket
  if type(socket) == "table" and type(socket.connect) == "function" then
    local connect = socket.connect
    socket.connect = function(host, port, ...)
      local sock, err = connect(host, port, ...)
      if sock then remember(sock, host, port, true) end
      return sock, err
    end
  end
  rawset(reg, REG_PATCHED, true)
  return true
end

M.remember_hosts()   -- at load time: see above (outside OpenResty it does nothing)

--- The host `sock` connected to (as given to connect), or nil when unknown.
function M.peer_host(sock)
  return hosts[sock]
end

-- ---------------------------------------------------------------------------
-- Client sessions shared among workers (opts.session_dict)
--
-- An entry is a session's DER under (connected host, port, SNI, client policy).  The policy
-- is the session's id context: the digest of the policy the connection that made it ran
-- under (doc/reference.md, "The verification policy").  A connection cannot tell its own
-- digest before its handshake, so each process remembers, per context and target, the digest
-- its last session there had, and looks that entry up; with nothing remembered (a fresh
-- worker) it takes the target's latest session.  Either way the core offers a session only
-- when its policy equals the connection's at handshake start: a wrong guess costs a full
-- handshake, never a session used under another policy.

local DICT_PREFIX = "sslctx.ngx|"
local digests = setmetatable({}, { __mode = "k" })   -- ctx -> { target = hex digest }

-- DER: the length at s[i] -> length, index of the first content byte (nil when malformed).
local function der_length(s, i)
  local b = s:byte(i)
  if b == nil then return nil end
  if b < 0x80 then return b, i + 1 end
  local n, len = b - 0x80, 0
  if n < 1 or n > 4 then return nil end
  for k = 1, n do
    local c = s:byte(i + k)
    if c == nil then return nil end
    len = len * 256 + c
  end
  return len, i + 1 + n
end

-- A session's id context, from its DER (an SSL_SESSION: a SEQUENCE whose field [4] holds an
-- OCTET STRING), as lowercase hex; nil when it has none.
local function session_policy(der)
  if der:byte(1) ~= 0x30 then return nil end
  local len, p = der_length(der, 2)
  if not len then return nil end
  local stop = p + len
  while p < stop do
    local tag = der:byte(p)
    local flen, fp = der_length(der, p + 1)
    if not flen then return nil end
    if tag == 0xA4 then
      local olen, op = der_length(der, fp + 1)
      if der:byte(fp) ~= 0x04 or not olen or olen == 0 then return nil end
      return (der:sub(op, op + olen - 1):gsub(".", function(c) return format("%02x", c:byte()) end))
    end
    p = fp + flen
  end
  return nil
end

local function dict_key(target, what)
  return DICT_PREFIX .. target .. "|" .. what
end

-- The session to offer for self.target, or nil.
local function dict_session(dict, ctx, target)
  local known = digests[ctx]
  local digest = known and known[target] or dict:get(dict_key(target, "latest"))
  if type(digest) ~= "string" then return nil end
  local der = dict:get(dict_key(target, digest))
  if type(der) ~= "string" then return nil end
  return sslctx.session(der)   -- (nil when it does not parse: a full handshake)
end

-- Stores the connection's session once it has one (TLS 1.3: after the read that took the
-- server's tickets), until it expires.
local function save_session(self)
  if not self.dict or self.saved or self.conn:side() ~= "client" then return end
  local session = self.conn:session()
  if not session then return end
  self.saved = true
  local der = session:der()
  local digest = session_policy(der)
  if not digest then return end
  local known = digests[self.ctx]
  if not known then
    known = {}
    digests[self.ctx] = known
  end
  known[self.target] = digest
  local ttl = session:time() + session:timeout() - ngx_env().time()
  if ttl <= 0 then return end
  local dict = self.dict
  dict:set(dict_key(self.target, digest), der, ttl)
  dict:set(dict_key(self.target, "latest"), digest, ttl)
end

-- ---------------------------------------------------------------------------
-- Client: the stream

local Stream = {}
Stream.__index = Stream
M.Stream = Stream

-- The handshake's deadline passed (opts.handshake_timeout).
local function deadline_message(self)
  return format("timeout: the handshake did not finish within %d ms", self.hs_ms)
end

local function deadline_passed(self)
  return nil, deadline_message(self), "timeout"
end

-- A cosocket failure -> message, kind.  The cosocket's "closed" on send means the cosocket
-- itself is closed (nginx closes one when the request that created it ends): the TLS
-- stream ended without close_notify, and the message says so; it is never "closed".
local function cosocket_error(self, err)
  if err == "timeout" then
    if self.deadline and ngx_env().now() >= self.deadline then
      return deadline_message(self), "timeout"
    end
    return "timeout", "timeout"
  end
  if err == "closed" then
    return "eof: the cosocket under the TLS stream is closed (nginx closes a cosocket when " ..
           "the request that created it ends; a stream cannot outlive it)", "eof"
  end
  return err, "syscall"
end

-- During the handshake every wait is cut to what is left of the deadline; afterwards the
-- socket's own timeouts are back.  -> true | nil, message, kind (the deadline passed)
local function shorten_waits(self)
  if not self.deadline then return true end
  local ngx = ngx_env()
  ngx.update_time()
  local left = ceil((self.deadline - ngx.now()) * 1000)
  if left <= 0 then return deadline_passed(self) end
  local t = self.timeouts
  local send_ms = t[2] > 0 and min(t[2], left) or left
  local read_ms = t[3] > 0 and min(t[3], left) or left
  self.sock:settimeouts(t[1], send_ms, read_ms)
  return true
end

-- Sends what the connection has for the network.
local function flush(self)
  local out = self.conn:drain()
  if out ~= "" then
    local ok, derr, dkind = shorten_waits(self)
    if not ok then return nil, derr, dkind end
    local n, err = self.sock:send(out)
    if not n then
      self.broken = err
      local msg, kind = cosocket_error(self, err)
      return nil, msg, kind
    end
  end
  return true
end

-- Moves what arrived from the network into the connection.
local function fill(self)
  if self.input_ended then
    return nil, "eof: the peer closed the connection without close_notify", "eof"
  end
  local ok, derr, dkind = shorten_waits(self)
  if not ok then return nil, derr, dkind end
  local data, err = self.sock:receiveany(RECEIVE_CHUNK)
  if not data then
    if err == "closed" then   -- the peer's FIN (or a closed cosocket): the core says eof
      self.input_ended = true
      self.conn:feed(nil)
      return true
    end
    local msg, kind = cosocket_error(self, err)
    return nil, msg, kind
  end
  self.conn:feed(data)
  return true
end

-- One connection call, repeated until it completes, moving bytes both ways.
local function drive(self, call, ...)
  local conn = self.conn
  for _ = 1, MAX_ROUNDS do
    if self.deadline and ngx_env().now() >= self.deadline then return deadline_passed(self) end
    local r, err, kind = call(conn, ...)
    if r then
      local ok, ferr, fkind = flush(self)
      if not ok then return nil, ferr, fkind end
      return r
    end
    if kind == "want_read" then
      local ok, ferr, fkind = flush(self)
      if not ok then return nil, ferr, fkind end
      ok, ferr, fkind = fill(self)
      if not ok then return nil, ferr, fkind end
    elseif kind == "want_write" then
      local ok, ferr, fkind = flush(self)
      if not ok then return nil, ferr, fkind end
    elseif kind == "want_retry_verify" then
      -- A verify callback returned sslctx.RETRY: it started some work of its own (a timer,
      -- a shared dict) and wants to be asked again.  This coroutine may sleep; OpenSSL's
      -- callback could not.
      local ok, ferr, fkind = flush(self)
      if not ok then return nil, ferr, fkind end
      self.retries = (self.retries or 0) + 1
      if self.retries > self.max_retries then
        return nil, "verify callback: still asking for RETRY after " .. self.max_retries ..
          " rounds", "timeout"
      end
      ngx_env().sleep(min(0.001 * self.retries, 0.05))
    else
      -- A failure: the alert (if any) still goes out, best effort.
      if not self.broken then pcall(flush, self) end
      return nil, err, kind
    end
  end
  return nil, "sslctx.ngx: no progress after " .. MAX_ROUNDS .. " rounds", "ssl"
end

-- The handshake, bounded as a whole by self.hs_ms (nil: no deadline) on top of the
-- socket's per-wait timeouts, which are restored afterwards.
local function handshake(self)
  local ngx = ngx_env()
  if not self.hs_ms or ngx == nil or type(self.sock.settimeouts) ~= "function" then
    return drive(self, self.conn.handshake)   -- (not a cosocket: no deadline to keep)
  end
  ngx.update_time()
  self.deadline = ngx.now() + self.hs_ms / 1000
  self.timeouts = timeouts[self.sock] or { 0, 0, 0 }
  local ok, err, kind = drive(self, self.conn.handshake)
  self.deadline = nil
  local t = self.timeouts
  pcall(self.sock.settimeouts, self.sock, t[1], t[2], t[3])
  return ok, err, kind
end

-- Reads what is decrypted and ready, after at most one wait for the network: appends it to
-- the receive buffer (stream.receive's `more`).
local function more(self)
  if self.read_error then
    return nil, self.read_error[1], self.read_error[2]
  end
  local data, err, kind = drive(self, self.conn.read)
  if self.dict and not self.saved then save_session(self) end
  if data then
    self.rbuf:push(data)
    return true
  end
  if kind ~= "timeout" then self.read_error = { err, kind } end   -- final: closed, eof, ssl...
  return nil, err, kind
end

-- A failure in the cosocket's shape: "closed" and "timeout" as the cosocket says them, any
-- other message as is; the kind follows.
local function failure(err, kind)
  if kind == "closed" then return "closed", kind end
  if kind == "timeout" then return "timeout", kind end
  return err, kind
end

local function check_open(self)
  if self.closed then return nil, "closed", "closed" end
  return true
end

local function flatten(data, out)
  local t = type(data)
  if t == "string" then
    out[#out + 1] = data
  elseif t == "number" then
    out[#out + 1] = tostring(data)
  elseif t == "boolean" then
    out[#out + 1] = data and "true" or "false"
  elseif data == nil then
    out[#out + 1] = "nil"
  elseif t == "table" then
    for i = 1, #data do flatten(data[i], out) end
  else
    error(format("bad argument #1 to 'send' (string, number, boolean, nil or array table " ..
                 "expected, got %s)", t), 3)
  end
  return out
end

-- One piece to the connection (stream.send's `write`), moving bytes until it is taken.
local function write_piece(data, from, to, self)
  return drive(self, self.conn.write, data, from, to)
end

--- stream:send(data) -> bytes | nil, err, kind  (data: as the cosocket's send)
function Stream:send(data)
  local ok, cerr, ckind = check_open(self)
  if not ok then return nil, cerr, ckind end
  if type(data) ~= "string" then data = concat(flatten(data, {})) end
  local len, err, _, kind = stream.send(data, 1, #data, WRITE_CHUNK, write_piece, self)
  if len then return len end
  local e, k = failure(err, kind)
  return nil, e, k
end

-- A pattern read (stream.receive), in the cosocket's shape.
local function receive(self, how, n)
  if how == "a" and self.read_error and self.rbuf.size == 0 then
    -- the end was already delivered
    local e, k = failure(self.read_error[1], self.read_error[2])
    return nil, e, "", k
  end
  local data, err, partial, kind = stream.receive(self.rbuf, how, n, MAX_ROUNDS, more, self)
  if data then return data end
  if how == "a" and kind == "closed" then return partial end   -- close_notify: the end of data
  local e, k = failure(err, kind)
  return nil, e, partial, k
end

--- stream:receive([pattern]) -> data | nil, err, partial, kind
-- pattern: "*l" / "l" (a line, CRs dropped; the default), "*a" / "a" (until the peer's
-- close_notify; a connection cut without one is an error "eof", never the end of data), or
-- a byte count.
function Stream:receive(pattern)
  local ok, cerr, ckind = check_open(self)
  if not ok then return nil, cerr, nil, ckind end
  if pattern == nil then pattern = "*l" end
  local how, n = stream.pattern(pattern, true)
  if how == "n" and n == 0 then return "" end
  return receive(self, how, n)
end

--- stream:receiveany(max) -> data | nil, err, kind: what is ready (at most max bytes),
-- after waiting for the network only if nothing is.
function Stream:receiveany(max)
  local n = tonumber(max)
  if n == nil or n < 1 or n % 1 ~= 0 then
    stream.argerror(1, "receiveany", "positive whole byte count expected, got " .. tostring(max))
  end
  local ok, cerr, ckind = check_open(self)
  if not ok then return nil, cerr, ckind end
  if self.rbuf.size == 0 then
    local got, err, kind = more(self)
    if not got then
      local e, k = failure(err, kind)
      return nil, e, k
    end
  end
  return self.rbuf:take(n)
end

--- stream:close() -> 1 | nil, err: close_notify (not waiting for the peer's), then the
-- cosocket is closed.
function Stream:close()
  if self.closed then return nil, "closed" end
  self.closed = true
  local conn = self.conn
  if self.dict and not self.saved then pcall(save_session, self) end
  if not self.broken then   -- (after a failure OpenSSL sends nothing: conn:close() knows)
    pcall(conn.shutdown, conn)
    pcall(flush, self)
  end
  conn:close()
  return self.sock:close()
end

--- The cosocket's timeouts (milliseconds).
function Stream:settimeouts(connect_ms, send_ms, read_ms)
  return self.sock:settimeouts(connect_ms, send_ms, read_ms)
end

function Stream:settimeout(ms)
  return self.sock:settimeout(ms)
end

function Stream:getreusedtimes()
  return self.sock:getreusedtimes()
end

function Stream:setoption(...)
  return self.sock:setoption(...)
end

--- A TLS stream cannot go back to the cosocket pool (its TLS state lives here): refused,
-- and the stream is closed.
function Stream:setkeepalive()
  self:close()
  return nil, "sslctx.ngx: a TLS stream cannot be kept alive in the connection pool; closed"
end

function Stream:sslhandshake()
  return nil, "sslctx.ngx: the stream is already TLS"
end

--- The underlying sslctx connection (peer certificate, verify result, session, ALPN).
function Stream:connection()
  return self.conn
end

--- The cosocket under the stream.
function Stream:socket()
  return self.sock
end

Stream.__tostring = function(self)
  return "sslctx.ngx stream (" .. tostring(self.conn) .. ")"
end

local function copy_opts(opts)
  local o = {}
  if opts ~= nil then
    if type(opts) ~= "table" then
      error("bad argument #3 to 'connect' (table expected, got " .. type(opts) .. ")", 3)
    end
    for k, v in pairs(opts) do o[k] = v end
  end
  return o
end

-- ctx:new_connection(o), with its argument errors told as connect's own option errors.
local function new_connection(ctx, o)
  local ok, conn = pcall(ctx.new_connection, ctx, o)
  if ok then return conn end
  local why = type(conn) == "string" and conn:match("^bad argument #%d+ to '[^']*' %((.*)%)$")
  if why then error("bad argument #3 to 'connect' (" .. why .. ")", 3) end
  error(conn, 3)
end

-- opts.session_dict -> the shared dict | nil.
local function session_dict(name)
  if name == nil then return nil end
  if type(name) ~= "string" then
    error("bad argument #3 to 'connect' (option 'session_dict': string expected, got " ..
          type(name) .. ")", 3)
  end
  local ngx = ngx_env()
  local dict = ngx and type(ngx.shared) == "table" and ngx.shared[name]
  if not dict then
    error("bad argument #3 to 'connect' (option 'session_dict': no lua_shared_dict '" ..
          name .. "')", 3)
  end
  return dict
end

--- sngx.connect(sock, ctx [, opts]) -> stream | nil, message, kind
-- sock: a connected ngx.socket.tcp; ctx: an sslctx context; opts: new_connection's (hostname
-- defaults to the host sock connected to) plus handshake_timeout (milliseconds for the whole
-- handshake, default M.HANDSHAKE_TIMEOUT; false: none) and session_dict (a lua_shared_dict's
-- name: client sessions shared by all workers, see above).  The handshake runs here, on the
-- calling coroutine (verify callbacks too: ngx.var and ngx.ctx work in them; yielding does
-- not).  On failure the cosocket is closed.
function M.connect(sock, ctx, opts)
  if type(sock) ~= "table" or type(sock.receiveany) ~= "function" or type(sock.send) ~= "function" then
    error("bad argument #1 to 'connect' (a connected ngx.socket.tcp expected, got " .. type(sock) .. ")", 2)
  end
  if (type(ctx) ~= "userdata" and type(ctx) ~= "table") or type(ctx.new_connection) ~= "function" then
    error("bad argument #2 to 'connect' (sslctx context expected, got " .. type(ctx) .. ")", 2)
  end
  local o = copy_opts(opts)
  if o.fd ~= nil or o.socket ~= nil then
    error("bad argument #3 to 'connect' (options 'fd' and 'socket' do not apply: the cosocket is the transport)", 2)
  end
  local hs_ms = o.handshake_timeout
  o.handshake_timeout = nil
  if hs_ms == nil then
    hs_ms = M.HANDSHAKE_TIMEOUT
  elseif hs_ms == false then
    hs_ms = nil
  elseif type(hs_ms) ~= "number" or hs_ms <= 0 or hs_ms ~= hs_ms then
    error("bad argument #3 to 'connect' (option 'handshake_timeout': positive number of " ..
          "milliseconds or false expected, got " .. tostring(hs_ms) .. ")", 2)
  end
  local dict = session_dict(o.session_dict)
  o.session_dict = nil
  local side = o.side
  if side == nil and ctx:side() == "both" then side = "client"; o.side = side end
  local client = (side or ctx:side()) == "client"
  if client and o.hostname == nil then o.hostname = hosts[sock] end
  -- (a socket connected before this module was loaded has no known port: no sharing)
  local target
  if dict and client and hosts[sock] and ports[sock] then
    target = hosts[sock] .. "|" .. ports[sock] .. "|" .. tostring(o.hostname)
    if o.session == nil then o.session = dict_session(dict, ctx, target) end
  else
    dict = nil
  end
  local conn = new_connection(ctx, o)
  local self = setmetatable({
    sock = sock, conn = conn, rbuf = stream.buffer(), max_retries = 300, hs_ms = hs_ms,
    dict = dict, ctx = ctx, target = target,
  }, Stream)
  local ok, err, kind = handshake(self)
  if not ok then
    self.closed = true
    conn:close()
    sock:close()
    return nil, err, kind
  end
  if dict then save_session(self) end   -- (TLS 1.2: the session is there now)
  return self
end

-- ---------------------------------------------------------------------------
-- Server hook

local SSL_PHASES = {
  set_policy = { ssl_client_hello = true },
  set_verification_mode = { ssl_cert = true },
  verdict = {
    set = true, rewrite = true, server_rewrite = true, access = true, content = true,
    header_filter = true, body_filter = true, log = true, balancer = true,
  },
  -- the phases that can end the request with a status
  require_policy = { rewrite = true, server_rewrite = true, access = true, content = true },
}

local function phase_check(fname)
  local ngx = ngx_env()
  if ngx == nil or type(ngx.get_phase) ~= "function" then
    return nil, "sslctx.ngx." .. fname .. ": not running inside OpenResty (ngx_lua)"
  end
  local phase = ngx.get_phase()
  if not SSL_PHASES[fname][phase] then
    local names = {}
    for k in pairs(SSL_PHASES[fname]) do names[#names + 1] = k end
    table.sort(names)
    return nil, format("sslctx.ngx.%s: not allowed in phase '%s' (only in %s)",
                       fname, tostring(phase), concat(names, ", "))
  end
  return true
end

-- The request's SSL* (nginx's downstream connection), version-tolerant: ngx.ssl's wrapper
-- when lua-resty-core has it (>= 0.1.29), otherwise the FFI function ngx_lua exports since
-- 0.10.23, declared with the signature of the running ngx_lua (an extra `char **err` from
-- 0.10.29 on: never the one-argument form there).
local get_pointer

local function make_pointer_getter()
  local ok, ngx_ssl = pcall(require, "ngx.ssl")
  if ok and type(ngx_ssl) == "table" and type(ngx_ssl.get_req_ssl_pointer) == "function" then
    local get = ngx_ssl.get_req_ssl_pointer
    return function()
      local p, err = get()
      if p == nil then return nil, err or "no SSL connection" end
      return p
    end
  end
  local ffi_ok, ffi = pcall(require, "ffi")
  local base_ok, base = pcall(require, "resty.core.base")
  if not ffi_ok or not base_ok then
    return nil, "sslctx.ngx: needs LuaJIT's ffi and lua-resty-core"
  end
  local version = tonumber(ngx_env().config.ngx_lua_version) or 0
  local C = ffi.C
  if version >= 10029 then
    pcall(ffi.cdef, "void *ngx_http_lua_ffi_get_req_ssl_pointer(void *r, const char **err);")
    local errp = ffi.new("const char *[1]")
    return function()
      local r = base.get_request()
      if r == nil then return nil, "no request found" end
      errp[0] = nil
      local p = C.ngx_http_lua_ffi_get_req_ssl_pointer(r, errp)
      if p == nil then
        return nil, errp[0] ~= nil and ffi.string(errp[0]) or "no SSL connection"
      end
      return p
    end
  elseif version >= 10023 then
    pcall(ffi.cdef, "void *ngx_http_lua_ffi_get_req_ssl_pointer(void *r);")
    return function()
      local r = base.get_request()
      if r == nil then return nil, "no request found" end
      local p = C.ngx_http_lua_ffi_get_req_ssl_pointer(r)
      if p == nil then return nil, "no SSL connection" end
      return p
    end
  end
  return nil, "sslctx.ngx: ngx_lua >= 0.10.23 is needed for the request's SSL pointer"
end

local function ssl_pointer()
  if get_pointer == nil then
    local fn, err = make_pointer_getter()
    if not fn then return nil, err end
    get_pointer = fn
  end
  return get_pointer()
end

--- The borrowed connection over this request's (or handshake's) SSL, for what the helpers
-- below do not cover.  -> conn | nil, message
function M.borrow()
  local p, err = ssl_pointer()
  if not p then return nil, err end
  local ok, conn = pcall(sslctx.borrow, p)
  if not ok then return nil, "sslctx.ngx: cannot borrow the connection: " .. tostring(conn) end
  return conn
end

-- Callback errors on a borrowed connection go to the error log (one function for all).
local function log_error(msg)
  local ngx = ngx_env()
  ngx.log(ngx.ERR, msg)
end
M.logger = log_error

-- Per downstream connection (keyed by its borrowed object, which lives exactly as long as
-- nginx's SSL: the hook anchors it until OpenSSL frees the SSL): the policy named in the
-- client-hello phase and the SNI the client sent there.  The connection itself keeps only a
-- hash of the name (its session id context).
local REG_POLICIES = "sslctx.ngx.policies"
local policies = weak_table(REG_POLICIES)

-- The server name of the ClientHello being handled, or nil (none sent, or no lua-resty-core).
local function client_hello_sni()
  local ok, ch = pcall(require, "ngx.ssl.clienthello")
  if not ok or type(ch) ~= "table" or type(ch.get_client_hello_server_name) ~= "function" then
    return nil
  end
  local got, name = pcall(ch.get_client_hello_server_name)
  if got and type(name) == "string" then return name end
  return nil
end

--- In ssl_client_hello_by_lua*: sessions of this connection resume only under policy `name`
-- (a session id context naming it), and verdict() reports `name` in the request phases.
-- -> true | nil, message
function M.set_policy(name)
  if type(name) ~= "string" then
    error("bad argument #1 to 'set_policy' (string expected, got " .. type(name) .. ")", 2)
  end
  if name == "" then error("bad argument #1 to 'set_policy' (non-empty string expected)", 2) end
  local ok, err = phase_check("set_policy")
  if not ok then return nil, err end
  local conn
  conn, err = M.borrow()
  if not conn then return nil, err end
  conn:set_policy(name)
  policies[conn] = { name = name, sni = client_hello_sni() }
  return true
end

local VERIFY_OPTS = { ca_file = true, ca = true, soft_fail = true, depth = true, params = true,
                      logger = true }

-- Argument checks on a context of this module's own, before the connection changes: an
-- argument error raises with nothing applied (a caller that catches it cannot go on under
-- half a policy).  ctx method errors number the arguments from the context (side #2, mode
-- #3, callback #4); set_verification_mode's are mode #1, callback #2, opts #3.
local scratch

local function check_arguments(mode, callback, opts)
  if scratch == nil then scratch = sslctx.new{ side = "server" } end
  local function try(what, fn, ...)
    local ok, err = pcall(fn, scratch, ...)
    if ok then return end
    local msg = tostring(err)
    local n, why = msg:match("bad argument #(%d+) to '[^']*' %((.*)%)$")
    if n and what then
      error(format("bad argument #3 to 'set_verification_mode' (option '%s': %s)", what, why), 4)
    elseif n then
      error(format("bad argument #%d to 'set_verification_mode' (%s)", tonumber(n) - 2, why), 4)
    end
    error(msg, 4)
  end
  try(nil, scratch.set_verification_mode, "server", mode, callback)
  scratch:set_verification_mode("server", "never")   -- (lets go of the callback)
  if opts.depth ~= nil then try("depth", scratch.set_verify_depth, opts.depth) end
  if opts.params ~= nil then try("params", scratch.set_verify_params, opts.params) end
end

local function apply_policy(conn, mode, callback, opts)
  -- the trust store first: when it cannot be loaded, nothing else has changed
  if opts.ca_file ~= nil or opts.ca ~= nil then
    local ok, err = conn:set_trust({ ca_file = opts.ca_file, ca = opts.ca })
    if not ok then return nil, err end
  end
  conn:set_logger(opts.logger or log_error)
  if opts.depth ~= nil then conn:set_verify_depth(opts.depth) end
  if opts.params ~= nil then conn:set_verify_params(opts.params) end
  if opts.soft_fail ~= nil then conn:set_soft_fail(opts.soft_fail and true or false) end
  conn:set_verification_mode("server", mode, callback)
  return true
end

--- In ssl_certificate_by_lua*: a server-side verification mode (doc/reference.md,
-- "Verification modes") and callback for nginx's downstream connection.  opts: ca_file / ca
-- (this connection's own trust store and CA names; default: the server block's), soft_fail,
-- depth, params (set_verify_params), logger (default: ngx.log at ERR).
-- -> true | nil, message.  Argument errors raise before anything is applied.  A failure
-- while the policy is being applied (the core raises when the change would make a resumed
-- session cross policies) refuses the handshake: the reason goes to the error log and the
-- hook ends with ngx.exit(ngx.ERROR), whatever the caller does with errors.
function M.set_verification_mode(mode, callback, opts)
  if opts ~= nil and type(opts) ~= "table" then
    error("bad argument #3 to 'set_verification_mode' (table expected, got " .. type(opts) .. ")", 2)
  end
  opts = opts or {}
  for k in pairs(opts) do
    if not VERIFY_OPTS[k] then
      error("bad argument #3 to 'set_verification_mode' (unknown option '" .. tostring(k) .. "')", 2)
    end
  end
  if opts.logger ~= nil and type(opts.logger) ~= "function" then
    error("bad argument #3 to 'set_verification_mode' (option 'logger': function expected)", 2)
  end
  -- nginx gives every SSL its own verify callback (ngx_ssl_verify_callback), which accepts
  -- everything and leaves the verdict for later.  SSL_set_verify with no callback keeps
  -- that one, so "no callback" is said explicitly: OpenSSL's own verdict (preverify).
  if callback == nil then callback = sslctx.c_callbacks.preverify end
  check_arguments(mode, callback, opts)
  local ok, err = phase_check("set_verification_mode")
  if not ok then return nil, err end
  local conn
  conn, err = M.borrow()
  if not conn then return nil, err end
  local done, applied, aerr = pcall(apply_policy, conn, mode, callback, opts)
  if not done then
    local ngx = ngx_env()
    ngx.log(ngx.ERR, "sslctx.ngx.set_verification_mode: ", tostring(applied),
            " (the handshake is refused)")
    return ngx.exit(ngx.ERROR)
  end
  return applied, aerr
end

local function verdict_of(conn)
  local code, str, verified = conn:verify_result()
  local cert = conn:peer_certificate()
  local rec = policies[conn]
  local sni
  if rec then sni = rec.sni else sni = conn:servername() end
  return code, str, verified, cert and cert:pem() or nil, rec and rec.name or nil, sni
end

--- In a request phase: the verdict on the client's certificate for this request's TLS
-- connection, the policy that judged it (set_policy's name, nil when none was named) and
-- the SNI the client sent (nil when none).
-- -> code, string, verified, peer_pem, policy, sni | nil, message
function M.verdict()
  local ok, err = phase_check("verdict")
  if not ok then return nil, err end
  local conn
  conn, err = M.borrow()
  if not conn then return nil, err end
  return verdict_of(conn)
end

--- In rewrite, access or content: the guard of a protected server block.  nginx picks the
-- block by Host, not by SNI, so a client can send SNI for one name (and pass its policy, or
-- none) and Host for another.  Ends the request with 421 (Misdirected Request) when the
-- connection was not judged by policy `name` (another policy, none, or no TLS), and with 403
-- when the client's certificate was not verified; otherwise returns the verdict's values.
function M.require_policy(name)
  if type(name) ~= "string" or name == "" then
    error("bad argument #1 to 'require_policy' (non-empty string expected, got " ..
          (type(name) == "string" and "''" or type(name)) .. ")", 2)
  end
  local ngx = ngx_env()
  local ok, err = phase_check("require_policy")
  if not ok then error(err, 2) end   -- a guard that cannot end the request must not pass
  local conn = M.borrow()
  if not conn then return ngx.exit(421) end
  local code, str, verified, pem, policy, sni = verdict_of(conn)
  if policy ~= name then return ngx.exit(421) end
  if not verified then return ngx.exit(403) end
  return code, str, verified, pem, policy, sni
end

return M
