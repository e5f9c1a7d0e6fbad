--- sslctx.socket: blocking-with-timeout TLS streams over LuaSocket, in LuaSec's shape.
--
--   local sslsocket = require "sslctx.socket"
--
--   -- a client: TCP connect + TLS handshake, hostname checked (defaults to `host`)
--   local s, msg, kind = sslsocket.connect("example.org", 443, { ctx = ctx, timeout = 10 })
--   s:send("GET / HTTP/1.0\r\nHost: example.org\r\n\r\n")
--   local line = s:receive("*l")
--   s:close()
--
--   -- any connected LuaSocket TCP object, either side
--   local s = sslsocket.wrap(tcp, ctx, { hostname = "example.org" })
--   local ok, msg, kind = s:dohandshake()
--
-- A stream is what LuaSec's `ssl.wrap` returns, for LuaSocket (and copas) programs:
--   dohandshake()                  true | nil, message, kind (under a timeout: nil,
--                                  "wantread" | "wantwrite", "timeout", as LuaSec says it)
--   send(data [, i [, j]])         last index sent | nil, err, last index sent, kind
--   receive([pattern [, prefix]])  data | nil, err, partial, kind
--                                  (patterns "*l"/"l", "*a"/"a", a byte count; the count
--                                  includes the prefix, as in LuaSocket 3)
--   settimeout(t [, mode])         LuaSocket's: mode "b" (each wait, the default) or "t"
--                                  (the whole call); nil or negative blocks
--   close(), getfd(), dirty(), want()
--   getpeercertificate([n]), getpeerchain(), getpeerverification(), info([field]),
--   getalpn(), getsniname(), sni(name) (client, before the handshake),
--   sni(map [, strict]) (server, before the handshake: {[name] = context})
--   exportkeyingmaterial(label, n [, context]), getfinished(), getpeerfinished(),
--   setdane(basedomain [, flags]), settlsa(usage, selector, mtype, data) (client, before
--   the handshake)
--   session(), session_reused(), connection() (the underlying sslctx connection)
--   getpeername(), getsockname(), setoption(...), getoption(...), getstats(), setstats(...)
--
-- Errors: err is LuaSocket's "timeout" when the deadline passed ("wantread" from send and
-- "wantwrite" from receive when the wait was the other way, a TLS record in the way) and
-- "closed" when the peer closed the TLS stream cleanly (close_notify); anything else is the
-- core's message (a truncated stream, an "eof: ..." message, or a broken pipe, is never
-- reported as "closed").  The handshake as a whole is bounded by opts.handshake_timeout
-- (seconds, default M.HANDSHAKE_TIMEOUT; false: none), counted from its first step, on both
-- sides: past it the handshake fails for good with a "timeout: ..." message (kind
-- "timeout"), which an event loop does not mistake for a would-block "timeout".  The extra
-- last value is the core's kind (doc/reference.md's table, plus "timeout").  The handshake
-- runs implicitly in the first send/receive when dohandshake was not called.
--
-- copas 4: a stream prints as "SSL ..." (copas tells TCP from UDP, and plain from TLS, by
-- the first three characters of tostring), and socket.select (and so copas) sees it
-- through getfd() and dirty() (true while decrypted data is buffered, so select reports it
-- readable at once).  Use
--   local s = copas.wrap(sslsocket.wrap(tcp, ctx, opts))
-- in a copas thread or in an addserver handler (whose copas-wrapped socket wrap() takes as
-- it is), then s:send/s:receive (they run the handshake), or s:dohandshake() where
-- require "ssl" works (copas loads it first).  Under settimeout(0) every would-block
-- returns at once with what copas waits on.
--
-- Client session reuse: connect() keeps, per context, the last resumable session for each
-- host:port (and hostname), taken after the handshake (TLS 1.2) or after reads and at close
-- (TLS 1.3 tickets), and offers it on the next connect() to the same place; the core uses it
-- only when the hostname and the verification policy match.  opts.reuse_session = false
-- turns this off; an explicit opts.session wins.

local sslctx = require "sslctx"
local socket = require "socket"
local stream = require "sslctx.stream"

local gettime = socket.gettime
local select_ = socket.select
local floor, min, max = math.floor, math.min, math.max
local type, tostring, tonumber, pcall, error, pairs, next, select, setmetatable =
      type, tostring, tonumber, pcall, error, pairs, next, select, setmetatable

local M = { _VERSION = "sslctx.socket 0.1" }

local Stream = {}
Stream.__index = Stream

local WRITE_CHUNK = 65536   -- plaintext handed to conn:write() at once
M.HANDSHAKE_TIMEOUT = 30   -- seconds, the whole handshake (opts.handshake_timeout)

-- ---------------------------------------------------------------------------
-- helpers

local is_context, copy, argerror = stream.is_context, stream.copy, stream.argerror

-- LuaSocket's timeout arithmetic (timeout.c: timeout_get): the time the next wait may take,
-- nil for "block".
local function time_left(self, start)
  local block, total = self.block, self.total
  if block < 0 and total < 0 then return nil end
  if block < 0 then return max(total - (gettime() - start), 0) end
  if total < 0 then return block end
  return min(block, max(total - (gettime() - start), 0))
end

-- Waits until the socket is readable ("r") or writable ("w"); false when the time is out.
-- `deadline` (absolute, optional) caps the wait.
local function wait(self, dir, start, deadline)
  local t = time_left(self, start)
  if deadline then
    local left = max(deadline - gettime(), 0)
    if t == nil or left < t then t = left end
  end
  if t == 0 then return false end
  local set = self.sockset   -- one table per stream, for select
  if not set then
    set = { self.sock }
    self.sockset = set
  end
  local err
  if dir == "r" then err = select(3, select_(set, nil, t))
  else err = select(3, select_(nil, set, t)) end
  if err == "timeout" then return false end
  if err then return false, err end
  return true
end

-- ---------------------------------------------------------------------------
-- session cache (client side, connect() only): weak per context

local caches = setmetatable({}, { __mode = "k" })

local function cache_of(ctx)
  local c = caches[ctx]
  if not c then
    c = {}
    caches[ctx] = c
  end
  return c
end

local function save_session(self)
  if not self.cache or self.session_saved or not self.conn or self.closed_conn then return end
  local ok, sess = pcall(self.conn.session, self.conn)
  if ok and sess then
    self.cache[self.cache_key] = sess
    self.session_saved = true
  end
end

-- ---------------------------------------------------------------------------
-- construction

-- A socket that copas wrapped (copas.wrap, the argument of an addserver handler) is a
-- table whose `socket` field is the LuaSocket object: the stream runs over that one (copas
-- itself unwraps it this way when it hands a socket to ssl.wrap).
local function unwrap_copas(sock)
  if type(sock) == "table" and getmetatable(sock) ~= Stream then
    local inner = rawget(sock, "socket")
    if type(inner) == "userdata" and tostring(sock):find("(copas wrapped)", 1, true) then
      return inner
    end
  end
  return sock
end

local ADAPTER_KEYS = { ctx = true, timeout = true, reuse_session = true, handshake_timeout = true }

-- A verify callback that records OpenSSL's errors by depth (LuaSec's getpeerverification
-- shape), then gives the verdict the context's Lua callback gives (none: OpenSSL's).
-- Client side only.  One recorder per context and callback, so that every connection of a
-- context has the same verification policy and resumes the others' sessions (a callback is
-- part of the policy's identity).  A native callback is left alone (nothing is recorded).
local recorders = setmetatable({}, { __mode = "k" })   -- ctx -> { cb = callback, fn = recorder }
local recorded = setmetatable({}, { __mode = "k" })    -- conn -> errors by depth

local function recorder_for(ctx, cb)
  local r = recorders[ctx]
  if r and r.cb == cb then return r.fn end
  local fn = function(pre, store)
    if not pre then
      local errs = recorded[store:connection()]
      if errs then
        local d = store:depth() + 1
        local list = errs[d]
        if not list then list = {}; errs[d] = list end
        list[#list + 1] = store:error_string()
      end
    end
    if cb then return cb(pre, store) end
    return nil
  end
  recorders[ctx] = { cb = cb, fn = fn }
  return fn
end

local function install_recorder(self)
  local conn = self.conn
  if self.side ~= "client" then return end
  local ok, _, int, _, cb = pcall(conn.get_verification_mode, conn, "client")
  if not ok or (cb ~= nil and type(cb) ~= "function") then return end
  local errs = {}
  self.verify_errors = errs
  recorded[conn] = errs
  pcall(conn.set_verification_mode, conn, "client", int, recorder_for(self.ctx, cb))
end

-- ctx:new_connection(o); its argument errors are told as errors of the caller's argument
-- `argn` of `fname` (the options table of wrap or connect), raised at `level`.
local function new_connection(ctx, o, fname, argn, level)
  if not fname then return ctx:new_connection(o) end
  local ok, conn = pcall(ctx.new_connection, ctx, o)
  if ok then return conn end
  local why = type(conn) == "string" and conn:match("^bad argument #%d+ to '[^']*' %((.*)%)$")
  if why then
    local sock_why = why:match("^option 'socket': (.*)$")   -- the stream's socket: argument #1
    if sock_why then argerror(1, fname, sock_why, level + 1) end
    argerror(argn, fname, why, level + 1)
  end
  error(conn, level + 1)
end

local function create_conn(self, fname, argn, level)
  local o = copy(self.copts)
  o.socket = self.sock
  o.close = false   -- the stream closes the socket itself (see close)
  self.conn = new_connection(self.ctx, o, fname, argn, (level or 1) + 1)
  self.side = self.conn:side()
  install_recorder(self)
  local dane = self.dane
  if dane then
    local conn = self.conn
    local ok, msg, kind = conn:set_dane(dane.base, dane.flags)
    if not ok then
      self.hs_error = { msg, kind }
    else
      for _, r in ipairs(dane.tlsa) do
        ok, msg, kind = conn:add_tlsa(r[1], r[2], r[3], r[4])
        if not ok then self.hs_error = { msg, kind }; break end
      end
    end
  end
  return self.conn
end

-- The stream's connection, made now when sni() or setdane() put it off.
local function conn_of(self)
  if self.conn then return self.conn end
  return create_conn(self)
end

-- opts.handshake_timeout -> seconds, or nil for no deadline (raises at `level` when invalid).
local function handshake_limit(opts, fname, argn, level)
  local hs = opts and opts.handshake_timeout
  if hs == nil then return M.HANDSHAKE_TIMEOUT end
  if hs == false then return nil end
  if type(hs) ~= "number" or hs ~= hs or hs <= 0 then
    argerror(argn, fname, "option 'handshake_timeout': positive number of seconds or false " ..
             "expected, got " .. tostring(hs), level + 1)
  end
  return hs
end

-- wrap's body; fname and argn name the caller's options argument in errors, raised at
-- `level` (1: the caller of wrap or connect).
local function wrap(sock, ctx, opts, fname, level)
  level = level + 1
  if getmetatable(sock) == Stream then argerror(1, fname, "already an sslctx.socket stream", level) end
  sock = unwrap_copas(sock)
  if type(sock) ~= "userdata" and type(sock) ~= "table" then
    argerror(1, fname, "LuaSocket TCP object expected, got " .. type(sock), level)
  end
  if type(ctx) == "table" and not is_context(ctx) then
    local msg, kind
    ctx, msg, kind = sslctx.new(ctx)
    if not ctx then return nil, msg, kind end
  elseif not is_context(ctx) then
    argerror(2, fname, "sslctx context or options table expected, got " .. type(ctx), level)
  end
  local argn = 3   -- opts, for wrap and for connect alike
  if opts ~= nil and type(opts) ~= "table" then
    argerror(argn, fname, "table expected, got " .. type(opts), level)
  end
  local copts = {}
  for k, v in pairs(opts or {}) do
    if not ADAPTER_KEYS[k] then copts[k] = v end
  end
  if copts.socket ~= nil or copts.fd ~= nil then
    argerror(argn, fname, "options 'socket' and 'fd' are the stream's own", level)
  end
  local hs = handshake_limit(opts, fname, argn, level)
  local self = setmetatable({
    sock = sock, ctx = ctx, copts = copts,
    block = -1, total = -1,
    rbuf = stream.buffer(),   -- plaintext read and not yet received
    handshaken = false, started = false,
    wants = "nothing",
    hs_limit = hs,
  }, Stream)
  if opts and opts.timeout ~= nil then self:settimeout(opts.timeout) end
  -- A verifying client without a hostname may still get one from sni() (LuaSec's order:
  -- wrap, sni, dohandshake): its connection is made at first use.
  local side = copts.side or ctx:side()
  if side == "client" and copts.hostname == nil and copts.verify_hostname == nil then
    self.side = "client"
  else
    create_conn(self, fname, argn, level)
  end
  return self
end

--- wrap(sock, ctx, opts) -> stream | nil, message, kind
-- sock: a connected LuaSocket TCP object (the stream keeps it and closes it on close());
-- ctx: an sslctx context, or a table of sslctx.new options; opts: new_connection's options
-- (hostname, side, session, verify_hostname) plus timeout (settimeout's) and
-- handshake_timeout (seconds for the whole handshake; default M.HANDSHAKE_TIMEOUT, false:
-- none).
function M.wrap(sock, ctx, opts)
  local s, msg, kind = wrap(sock, ctx, opts, "wrap", 2)   -- (no tail call: levels count frames)
  return s, msg, kind
end

--- The default client context: verify the server ("always") against the system's roots.
local default_ctx

function M.default_context()
  if not default_ctx then
    default_ctx = assert(sslctx.new({ side = "client" }))
  end
  return default_ctx
end

--- connect(host, port, opts) -> stream (handshake done) | nil, message, kind
-- opts: ctx (a context or sslctx.new options; default: M.default_context()), timeout (for the
-- TCP connect and the stream), reuse_session (default true), and new_connection's options;
-- hostname defaults to host.
function M.connect(host, port, opts)
  if type(host) ~= "string" then argerror(1, "connect", "string expected, got " .. type(host)) end
  if tonumber(port) == nil then argerror(2, "connect", "port number expected, got " .. type(port)) end
  if opts ~= nil and type(opts) ~= "table" then
    argerror(3, "connect", "table expected, got " .. type(opts))
  end
  local o = copy(opts)
  handshake_limit(o, "connect", 3, 2)
  local ctx = o.ctx
  if ctx == nil then
    ctx = M.default_context()
  elseif type(ctx) == "table" and not is_context(ctx) then
    local msg, kind
    ctx, msg, kind = sslctx.new(ctx)
    if not ctx then return nil, msg, kind end
  elseif not is_context(ctx) then
    argerror(3, "connect", "option 'ctx': sslctx context or options table expected")
  end
  if o.hostname == nil then o.hostname = host end
  local cache, key
  if o.reuse_session ~= false then
    cache = cache_of(ctx)
    key = host .. ":" .. tostring(port) .. "|" .. tostring(o.hostname)
    if o.session == nil then o.session = cache[key] end
  end
  local sock, err = socket.tcp()
  if not sock then return nil, err, "syscall" end
  sock:settimeout(o.timeout)
  local ok
  ok, err = sock:connect(host, tonumber(port))
  if not ok then
    sock:close()
    return nil, err, err == "timeout" and "timeout" or "syscall"
  end
  o.ctx = nil
  local okw, s, msg, kind = pcall(wrap, sock, ctx, o, "connect", 3)
  if not okw then
    sock:close()
    error(s, 0)   -- (raised at connect's caller already)
  end
  if not s then
    sock:close()
    return nil, msg, kind
  end
  s.cache, s.cache_key = cache, key
  ok, msg, kind = s:dohandshake()
  if not ok then
    -- a blocking call's would-block is LuaSocket's word; the deadline's message stays
    if kind == "timeout" and (msg == "wantread" or msg == "wantwrite") then msg = "timeout" end
    if cache then cache[key] = nil end
    s:close()
    return nil, msg, kind
  end
  return s
end

-- ---------------------------------------------------------------------------
-- server-side SNI maps (sni(map [, strict]))
--
-- A context's servername callback receives the name only; the stream whose handshake step
-- is running is the one whose map applies.  Handshake steps never yield, so one variable
-- says which stream drives (nil outside the streams' handshakes: the callback then keeps
-- the current context).

local driving = nil

local function sni_dispatch(name)
  local self = driving
  local map = self and self.sni_map
  if not map then return nil end
  self.sni_ran = true
  if name ~= nil then
    local ctx = map[name] or map[name:lower()]
    if ctx then return ctx end
  end
  if self.sni_strict then
    error(("no certificate for the server name %s (strict SNI)"):format(
      name and ("'" .. name .. "'") or "(none sent)"), 0)
  end
  return nil
end

-- One handshake step with `driving` set to this stream, restored whatever happens.
local function drive_handshake(self, conn)
  if not self.sni_map then return conn:handshake() end
  local prev = driving
  driving = self
  local ok, a, b, c = pcall(conn.handshake, conn)
  driving = prev
  if not ok then error(a, 0) end
  return a, b, c
end

-- ---------------------------------------------------------------------------
-- handshake

-- Past the handshake's deadline: a final failure, kind "timeout".
local function handshake_expired(self)
  local msg = ("timeout: the handshake did not finish within %g s"):format(self.hs_limit)
  self.hs_error = { msg, "timeout" }
  return nil, msg, "timeout"
end

local function handshake(self, start)
  if self.handshaken then return true end
  if self.hs_error then return nil, self.hs_error[1], self.hs_error[2] end
  if self.closed then return nil, "closed", "closed" end
  local conn = conn_of(self)
  self.started = true
  if self.hs_limit and not self.hs_deadline then self.hs_deadline = start + self.hs_limit end
  while true do
    if self.hs_deadline and gettime() >= self.hs_deadline then return handshake_expired(self) end
    local ok, msg, kind = drive_handshake(self, conn)
    if ok and self.sni_map and not self.sni_ran then
      -- the map was never consulted: the context's callback was replaced after sni(map)
      ok, msg, kind = nil, "sni(map): the context's servername callback was replaced; " ..
                           "the map was not applied", "callback"
    end
    if ok then
      self.handshaken = true
      self.wants = "nothing"
      save_session(self)
      return true
    end
    if kind == "want_read" or kind == "want_write" then
      self.wants = kind == "want_read" and "read" or "write"
      local w, werr = wait(self, kind == "want_read" and "r" or "w", start, self.hs_deadline)
      if not w then
        if werr then return nil, werr, "syscall" end
        if self.hs_deadline and gettime() >= self.hs_deadline then
          return handshake_expired(self)
        end
        return nil, "timeout", "timeout"
      end
    else
      self.hs_error = { msg, kind }
      return nil, msg, kind
    end
  end
end

-- The would-block message of a call that waits the other way than its name says (a
-- receive that must write, a send that must read, any handshake step): LuaSec's
-- "wantread"/"wantwrite", which copas waits on in the right direction.
local function want_message(self, natural)
  local w = self.wants
  if w == "read" and natural ~= "read" then return "wantread" end
  if w == "write" and natural ~= "write" then return "wantwrite" end
  return "timeout"
end

--- dohandshake() -> true | nil, message, kind ("timeout" when the deadline passed; then
-- want() tells which way the handshake waits).
function Stream:dohandshake()
  local ok, msg, kind = handshake(self, gettime())
  if not ok and kind == "timeout" and msg == "timeout" then msg = want_message(self, nil) end
  return ok, msg, kind
end

-- ---------------------------------------------------------------------------
-- receive

-- Reads more plaintext into rbuf: true, or nil, err, kind (stream.receive's `more`).
-- Decrypted data OpenSSL already holds is always taken before waiting on the socket.
local function fill(self, start)
  if self.rerror then return nil, self.rerror[1], self.rerror[2] end
  local conn = self.conn
  while true do
    local data, msg, kind = conn:read()
    if self.cache and not self.session_saved then save_session(self) end
    if data and #data > 0 then
      self.rbuf:push(data)
      self.wants = "nothing"
      return true
    end
    if data then kind = "want_read" end
    if kind == "want_read" or kind == "want_write" then
      self.wants = kind == "want_read" and "read" or "write"
      local w, werr = wait(self, kind == "want_read" and "r" or "w", start)
      if not w then
        if werr then return nil, werr, "syscall" end
        return nil, "timeout", "timeout"
      end
    elseif kind == "closed" then
      self.rerror = { "closed", "closed" }
      return nil, "closed", "closed"
    else
      if kind ~= "callback" then self.rerror = { msg, kind } end
      return nil, msg, kind
    end
  end
end

--- receive([pattern [, prefix]]) -> data | nil, err, partial, kind
function Stream:receive(pattern, prefix)
  if pattern == nil then pattern = "*l" end
  if prefix ~= nil and type(prefix) ~= "string" and type(prefix) ~= "number" then
    argerror(2, "receive", "string expected, got " .. type(prefix))
  end
  prefix = prefix and tostring(prefix) or ""
  local how, wanted = stream.pattern(pattern)
  if self.closed then return nil, "closed", prefix, "closed" end
  local start = gettime()
  if not self.handshaken then
    local ok, msg, kind = handshake(self, start)
    if not ok then
      if kind == "timeout" and msg == "timeout" then msg = want_message(self, "read") end
      return nil, msg, prefix, kind
    end
  end
  -- a count includes the prefix (LuaSocket 3): one that the prefix covers reads nothing
  if how == "n" and #prefix > 0 and wanted <= #prefix then return prefix end
  local data, err, partial, kind = stream.receive(self.rbuf, how,
    how == "n" and wanted - #prefix or nil, nil, fill, self, start)
  if data then return prefix .. data end
  -- "*a": the peer's close_notify ends the data; with nothing read, LuaSocket says "closed"
  if how == "a" and err == "closed" and #partial > 0 then return prefix .. partial end
  if kind == "timeout" and err == "timeout" then err = want_message(self, "read") end
  return nil, err, prefix .. partial, kind
end

-- ---------------------------------------------------------------------------
-- send

-- One piece to the connection (stream.send's `write`): bytes taken, 0 after a wait, or
-- nil, err, kind.
local function write_piece(data, from, to, self, start)
  local n, msg, kind = self.conn:write(data, from, to)
  if n then
    self.wants = "nothing"
    return n
  end
  if kind == "want_write" or kind == "want_read" then
    self.wants = kind == "want_read" and "read" or "write"
    local w, werr = wait(self, kind == "want_read" and "r" or "w", start)
    if not w then
      if werr then return nil, werr, "syscall" end
      return nil, want_message(self, "write"), "timeout"
    end
    return 0
  end
  -- "closed" only after the peer's close_notify; a reset or broken pipe is the core's
  -- message (kind "syscall" or "eof")
  if kind == "closed" then return nil, "closed", kind end
  return nil, msg, kind
end

--- send(data [, i [, j]]) -> index of the last byte sent | nil, err, last index sent, kind
function Stream:send(data, i, j)
  if type(data) == "number" then data = tostring(data) end
  if type(data) ~= "string" then argerror(1, "send", "string expected, got " .. type(data)) end
  local size = #data
  i = i == nil and 1 or tonumber(i)
  j = j == nil and -1 or tonumber(j)
  if not i then argerror(2, "send", "number expected") end
  if not j then argerror(3, "send", "number expected") end
  i = i >= 0 and floor(i) or -floor(-i)
  j = j >= 0 and floor(j) or -floor(-j)
  if i < 0 then i = size + i + 1 end
  if j < 0 then j = size + j + 1 end
  if i < 1 then i = 1 end
  if j > size then j = size end
  if self.closed then return nil, "closed", i - 1, "closed" end
  local start = gettime()
  if not self.handshaken then
    local ok, msg, kind = handshake(self, start)
    if not ok then
      if kind == "timeout" and msg == "timeout" then msg = want_message(self, "write") end
      return nil, msg, i - 1, kind
    end
  end
  local last, err, sent, kind = stream.send(data, i, j, WRITE_CHUNK, write_piece, self, start)
  if last then return last end
  return nil, err, sent, kind
end

-- ---------------------------------------------------------------------------
-- state, timeouts, closing

--- settimeout(t [, mode]) -> 1 (LuaSocket's: "b" each wait, "t"/"r" the whole call)
function Stream:settimeout(t, mode)
  if t ~= nil and type(t) ~= "number" then
    t = tonumber(t)
    if t == nil then argerror(1, "settimeout", "number expected") end
  end
  t = t or -1
  mode = mode or "b"
  local m = type(mode) == "string" and mode:sub(1, 1) or ""
  if m == "b" then self.block = t
  elseif m == "t" or m == "r" then self.total = t
  else argerror(2, "settimeout", "invalid timeout mode") end
  return 1
end

function Stream:gettimeout()
  return self.block, self.total
end

--- close() -> 1: close_notify (after a clean handshake), then the socket is closed.
function Stream:close()
  if self.closed then return 1 end
  self.closed = true
  local conn = self.conn
  if conn then
    if self.cache and self.handshaken and not self.hs_error and not self.rerror then
      -- TLS 1.3 tickets that arrived but were never read: one read that cannot block
      -- (LuaSocket sockets are non-blocking), then keep the newest session.
      self.session_saved = false
      pcall(conn.read, conn)
      save_session(self)
    end
    pcall(conn.close, conn)
    self.closed_conn = true
  end
  self.rbuf:clear()
  self.sock:close()
  return 1
end
Stream.__close = function(self) self:close() end

function Stream:getfd()
  if self.closed then return -1 end
  return self.sock:getfd()
end

--- dirty() -> true while decrypted data waits (in the stream or inside OpenSSL): an event
-- loop must read it before waiting on the socket (socket.select treats it as readable).
function Stream:dirty()
  if self.closed then return false end
  if self.rbuf.size > 0 then return true end
  local conn = self.conn
  if not conn then return false end
  local ok, n = pcall(conn.pending_plaintext, conn)
  return ok and n > 0 or false
end

--- want() -> "nothing" | "read" | "write": what the last would-block waited for.
function Stream:want()
  return self.wants
end

-- ---------------------------------------------------------------------------
-- peer, session, information

function Stream:connection()
  return conn_of(self)
end

local function live_conn(self)
  if self.closed or not self.conn then return nil end
  return self.conn
end

--- getpeercertificate([n]) -> x509 | nil: n = 1 (default) the leaf, n > 1 up the chain.
function Stream:getpeercertificate(n)
  local conn = live_conn(self)
  if not conn then return nil end
  n = n or 1
  if n == 1 then return conn:peer_certificate() end
  local chain = conn:peer_chain()
  return chain and chain[n] or nil
end

--- getpeerchain() -> {x509...} (leaf first) | nil
function Stream:getpeerchain()
  local conn = live_conn(self)
  if not conn then return nil end
  return conn:peer_chain()
end

--- getpeerverification() -> true | false, {[depth + 1] = {error strings}}   (LuaSec's shape)
-- A third value says whether a peer certificate was presented and verified.
function Stream:getpeerverification()
  local conn = live_conn(self)
  if not conn then return false, { { "no connection" } }, false end
  local code, str, verified = conn:verify_result()
  local errs = self.verify_errors
  local any = errs ~= nil and next(errs) ~= nil
  if code == 0 and not any then return true, nil, verified end
  if not any then errs = { { str } } end
  return false, errs, verified
end

-- Server: sni({[name] = context, ...} [, strict]) chooses the context by the name the client
-- sends (exact, then lowercased); strict fails the handshake for an unknown or absent name.
-- The stream's context gets a servername callback (replacing one set with
-- ctx:set_servername_callback) that applies each stream's own map.
local function sni_server(self, map, strict)
  if type(map) ~= "table" then argerror(1, "sni", "table of server names to contexts expected") end
  local copy_ = {}
  for k, v in pairs(map) do
    if type(k) ~= "string" or k == "" then
      argerror(1, "sni", "server names must be non-empty strings, got " .. type(k))
    end
    if not is_context(v) then
      argerror(1, "sni", "map['" .. k .. "']: sslctx context expected, got " .. type(v))
    end
    local ok, side = pcall(v.side, v)
    if not ok or side == "client" then
      argerror(1, "sni", "map['" .. k .. "']: a server context expected")
    end
    copy_[k] = v
  end
  if self.started then error("sni: the handshake has already started", 3) end
  self.sni_map, self.sni_strict = copy_, strict and true or false
  -- (again each time: a callback set in between must not make the map silently unused)
  local ctx = self.conn and self.conn:context() or self.ctx
  ctx:set_servername_callback(sni_dispatch)
  return true
end

--- sni(name): the server name to send and check (client, before the handshake starts).
--- sni(map [, strict]): the contexts to serve by name (server, before the handshake).
function Stream:sni(name, strict)
  if self.side == "server" then return sni_server(self, name, strict) end
  if type(name) ~= "string" or name == "" then
    argerror(1, "sni", "non-empty string expected")
  end
  if self.started then error("sni: the handshake has already started", 2) end
  self.copts.hostname = name
  if self.conn then
    pcall(self.conn.close, self.conn)   -- close = false: the socket stays open
    self.conn = nil
  end
  return true
end

-- Read-only accessors forwarded to the live connection: getsniname, getalpn, session give
-- nil without one, session_reused false.
local function forward(method, none)
  return function(self)
    local conn = live_conn(self)
    if not conn then return none end
    local v = conn[method](conn)
    if v == nil then return none end
    return v
  end
end
Stream.getsniname = forward("servername", nil)
Stream.getalpn = forward("alpn", nil)
Stream.session = forward("session", nil)
Stream.session_reused = forward("session_reused", false)

--- info([field]) -> LuaSec's fields {protocol, cipher, bits, algbits, key,
-- authentication, encryption, mac, export} plus {alpn, servername, session_reused,
-- verify}, or one field
function Stream:info(field)
  local conn = live_conn(self)
  if not conn or not self.handshaken then return nil end
  local code = conn:verify_result()
  local ci = conn:cipher_info() or {}
  local t = {
    protocol = conn:version(), cipher = conn:cipher(), alpn = conn:alpn(),
    servername = conn:servername(), session_reused = conn:session_reused(), verify = code,
    bits = ci.bits, algbits = ci.algbits, key = ci.kx, authentication = ci.auth,
    encryption = ci.enc, mac = ci.mac, export = false,   -- OpenSSL 3 has no export ciphers
  }
  if field ~= nil then return t[field] end
  return t
end

--- exportkeyingmaterial(label, n [, context]) -> string | nil, message (RFC 5705)
function Stream:exportkeyingmaterial(label, n, context)
  local conn = live_conn(self)
  if not conn then return nil, "closed" end
  return conn:export_keying_material(label, n, context)
end

--- getfinished(), getpeerfinished() -> the Finished message sent / received | nil
function Stream:getfinished()
  local conn = live_conn(self)
  return conn and conn:finished() or nil
end
function Stream:getpeerfinished()
  local conn = live_conn(self)
  return conn and conn:peer_finished() or nil
end

--- setdane(basedomain [, flags]) -> true | nil, message, kind: DANE for this client
-- connection (RFC 7671): the peer is authenticated by the TLSA records given with settlsa,
-- and basedomain is the name checked (and sent, unless sni() named one).  Before the
-- handshake.
function Stream:setdane(base, flags)
  if type(base) ~= "string" or base == "" then
    argerror(1, "setdane", "non-empty string expected")
  end
  if flags ~= nil and type(flags) ~= "table" then
    argerror(2, "setdane", "table of DANE flags expected, got " .. type(flags))
  end
  if self.side ~= "client" then argerror(1, "setdane", "DANE is for client streams") end
  if self.started then error("setdane: the handshake has already started", 2) end
  if self.dane then error("setdane: DANE is already enabled on this stream", 2) end
  self.dane = { base = base, flags = flags, tlsa = {} }
  if self.copts.hostname == nil then self.copts.hostname = base end
  local conn = self.conn
  if not conn then
    create_conn(self)   -- applies self.dane
    local e = self.hs_error
    if not e then return true end
    self.hs_error, self.dane = nil, nil
    pcall(self.conn.close, self.conn)   -- close = false: the socket stays open
    self.conn = nil
    return nil, e[1], e[2]
  end
  local ok, msg, kind = conn:set_dane(base, flags)
  if not ok then
    self.dane = nil
    return nil, msg, kind
  end
  return true
end

--- settlsa(usage, selector, mtype, data) -> true | nil, message, kind: a TLSA record (data
-- binary), after setdane and before the handshake.
function Stream:settlsa(usage, selector, mtype, data)
  if not self.dane then error("settlsa: call setdane first", 2) end
  if self.started then error("settlsa: the handshake has already started", 2) end
  local ok, msg, kind = conn_of(self):add_tlsa(usage, selector, mtype, data)
  if not ok then return nil, msg, kind end
  local list = self.dane.tlsa
  list[#list + 1] = { usage, selector, mtype, data }
  return true
end

-- LuaSocket passthroughs
for _, name in ipairs({ "getpeername", "getsockname", "setoption", "getoption",
                        "getstats", "setstats" }) do
  Stream[name] = function(self, ...)
    local f = self.sock[name]
    if not f then return nil, name .. " not supported by the wrapped socket" end
    return f(self.sock, ...)
  end
end

-- "SSL" first, as LuaSec's connections print: copas tells a TLS stream by it.
Stream.__tostring = function(self)
  return ("SSL stream (sslctx.socket{%s}): %s"):format(self.side or "?", tostring(self.sock))
end

M.Stream = Stream
return M
