--- sslctx.luv: TLS streams over luv (libuv) stream handles, in luv's callback style.
--
--   local uv = require "luv"
--   local tls = require "sslctx.luv"
--
--   server:listen(128, function()
--     local tcp = uv.new_tcp()
--     server:accept(tcp)
--     local s = tls.wrap(tcp, ctx)              -- ctx: a server context
--     s:read_start(function(err, data)          -- starts the handshake, waits for it
--       if err or not data then return s:close() end
--       s:write(data)
--     end)
--   end)
--
-- The contract is doc/reference.md's "sslctx.luv" section; in short:
--
--   tls.wrap(handle, ctx [, opts]) -> stream     handle: a connected or accepted luv stream
--                                                (TCP or pipe) that is not reading; the
--                                                stream owns it from then on
--     opts: new_connection's (hostname, side, session, verify_hostname, buffer_limit) plus
--           preread (bytes already read from the handle) and handshake_timeout
--           (milliseconds from wrap; default 30000 on a server, none on a client)
--   stream:handshake(cb)          cb(err) once the handshake is done or failed
--   stream:read_start(cb) / read_stop()
--                                 cb(nil, data) per chunk, cb(nil, nil) at close_notify,
--                                 cb(err) on failure ("eof: ..." when the transport ended
--                                 without close_notify)
--   stream:write(data [, cb])     data: a string or a list of strings -> true | nil, err
--   stream:get_write_queue_size() bytes accepted but not yet taken by the kernel
--   stream:shutdown([cb])         close_notify, then the handle's shutdown (half-close)
--   stream:close([cb])            is_closing(), connection()
--
-- Errors are strings: "<kind>: <message>" with the core's kind ("verify: ...",
-- "ssl: ...", "timeout: ...", "eof: ..."), or the handle's own error as luv reports it
-- ("ECONNRESET: connection reset by peer").  No callback ever runs inside the call that
-- registers it: those answers wait for the loop.  After close(), read callbacks stop, the
-- write, shutdown and handshake callbacks still pending get "ECANCELED: operation canceled",
-- and close's own callback runs last.
--
-- Memory: the stream keeps the plaintext written before the handshake finished, at most one
-- chunk read from the handle that the connection could not take yet (then it stops reading
-- the handle: backpressure on the peer), and nothing else; ciphertext goes straight to the
-- handle's write queue, which get_write_queue_size() reports so that an application can stop
-- writing to a slow reader.  After the handshake the handle is read only while the
-- application reads.
--
-- A coroutine helper turns the callbacks into straight-line code:
--
--   tls.spawn(function()
--     local c = tls.coro(s)
--     assert(c:handshake())
--     local line = c:read()           -- next chunk; nil at close_notify; nil, err
--     assert(c:write("pong\n"))       -- returns once the handle took it
--     c:close()
--   end)

local uv = require "luv"
local stream = require "sslctx.stream"

local type, pairs, ipairs, pcall, error, tostring, setmetatable, select =
      type, pairs, ipairs, pcall, error, tostring, setmetatable, select
local concat = table.concat
local co_running, co_resume, co_yield, co_create, co_status =
      coroutine.running, coroutine.resume, coroutine.yield, coroutine.create, coroutine.status

local M = { _VERSION = "sslctx.luv 0.1" }

local Stream = {}
Stream.__index = Stream
M.Stream = Stream

local SERVER_HANDSHAKE_TIMEOUT = 30000
local PIECE = 65536                       -- plaintext handed to conn:write at a time
local ECANCELED = "ECANCELED: operation canceled"
local EPIPE = "EPIPE: broken pipe"

local argerror = stream.argerror

-- "<kind>: <message>", the core's messages sometimes being so already.
local function errstr(msg, kind)
  msg = tostring(msg)
  kind = kind or "ssl"
  if msg:sub(1, #kind + 2) == kind .. ": " then return msg end
  return kind .. ": " .. msg
end

-- luv hands callbacks the bare error name ("ECONNRESET"); its synchronous returns, and this
-- module's callbacks, carry libuv's message too ("ECONNRESET: connection reset by peer").
local UV_MESSAGES = {
  ECANCELED = "operation canceled", ECONNRESET = "connection reset by peer",
  EPIPE = "broken pipe", ETIMEDOUT = "connection timed out", ENOTCONN = "socket is not connected",
  EBADF = "bad file descriptor", ECONNREFUSED = "connection refused",
  ECONNABORTED = "software caused connection abort", EOF = "end of file",
  ENOBUFS = "no buffer space available", EINVAL = "invalid argument", ENOMEM = "not enough memory",
  EAGAIN = "resource temporarily unavailable", EHOSTUNREACH = "host is unreachable",
  ENETUNREACH = "network is unreachable", ENETDOWN = "network is down", EIO = "i/o error",
}
local function uverr(e)
  if e == nil or e:find(":", 1, true) then return e end
  return e .. ": " .. (UV_MESSAGES[e] or "libuv error")
end

-- Wraps a callback so that it gets luv's error in the long form.
local function uvcb(cb)
  if not cb then return nil end
  return function(e) cb(uverr(e)) end
end

-- The engine's steps (below), each a local function of the stream: nothing of it is reachable
-- from a stream object.
local flush, hand_over, send_data, want_handle, sync_handle, handle_read, feed, handshake_done, pump,
      deferred_pump, start, fail, do_shutdown

-- ---------------------------------------------------------------------------
-- Deferred callbacks: a callback due while one of the stream's methods runs (depth > 0), or
-- while earlier ones of the same stream still wait, is queued and run by one idle handle.

local depth = 0
local runq = {}          -- streams with queued callbacks, in order
local idle

local function run_deferred()
  local list = runq
  runq = {}
  for i = 1, #list do
    local s = list[i]
    -- Items queued while these run join the same list; the last one runs with the list
    -- gone, so that what it does may run at once (a read delivered in order).
    local q = s.later
    local j = 1
    while true do
      local item = q[j]
      q[j] = false
      if j == #q then s.later = nil end
      item[1](item[2], item[3], item[4])
      if s.later ~= q then break end
      j = j + 1
    end
  end
  if #runq == 0 then idle:stop() end
end

local function defer(self, fn, a, b, c)
  local q = self.later
  if not q then
    q = {}
    self.later = q
    runq[#runq + 1] = self
    if not idle then idle = uv.new_idle() end
    if #runq == 1 then idle:start(run_deferred) end
  end
  q[#q + 1] = { fn, a, b, c }
end

-- Calls fn(a, b, c) now when that is allowed, else after the current method returns.
local function emit(self, fn, a, b, c)
  if depth > 0 or self.later then return defer(self, fn, a, b, c) end
  fn(a, b, c)
end

-- ---------------------------------------------------------------------------
-- Handshake deadlines: one FIFO per timeout value (deadlines in it only grow), one timer for
-- all of them; unref'd, so that it never keeps a loop alive by itself.

local deadlines = {}     -- ms -> { first = i, last = j, [i] = stream }
local dtimer, ddue

local function arm(due)
  if not dtimer then
    dtimer = uv.new_timer()
    dtimer:unref()
  end
  local now = uv.now()
  if ddue and ddue <= due and dtimer:is_active() then return end
  ddue = due
  dtimer:stop()
  dtimer:start(due > now and due - now or 0, 0, function()
    ddue = nil
    local now2 = uv.now()
    local next_due
    for ms, q in pairs(deadlines) do
      while q.first <= q.last do
        local s = q[q.first]
        if s.deadline > now2 and not s.done_waiting and not s.closing and not s.err then
          break
        end
        q[q.first] = nil
        q.first = q.first + 1
        if not (s.done_waiting or s.closing or s.err) then
          depth = depth + 1   -- callbacks wait for the loop: they may wrap new streams
          fail(s, "timeout: handshake not finished within " .. ms .. " ms")
          depth = depth - 1
        end
      end
      if q.first > q.last then
        deadlines[ms] = nil
      else
        local d = q[q.first].deadline
        if not next_due or d < next_due then next_due = d end
      end
    end
    if next_due then arm(next_due) end
  end)
end

local function watch_deadline(self, ms)
  local q = deadlines[ms]
  if not q then
    q = { first = 1, last = 0 }
    deadlines[ms] = q
  end
  q.last = q.last + 1
  q[q.last] = self
  uv.update_time()   -- wrap may come long after the loop last ran: its clock would be old
  self.deadline = uv.now() + ms
  arm(self.deadline)
end

-- ---------------------------------------------------------------------------
-- wrap

local is_context = stream.is_context
local function is_stream_handle(x) return stream.has_method(x, "read_start") end

local OWN_KEYS = { preread = true, handshake_timeout = true }

--- tls.wrap(handle, ctx [, opts]) -> stream
function M.wrap(handle, ctx, opts)
  if not is_stream_handle(handle) then
    argerror(1, "wrap", "luv stream handle expected, got " .. type(handle))
  end
  if not is_context(ctx) then argerror(2, "wrap", "sslctx context expected, got " .. type(ctx)) end
  if opts ~= nil and type(opts) ~= "table" then
    argerror(3, "wrap", "table expected, got " .. type(opts))
  end
  local copts = {}
  for k, v in pairs(opts or {}) do
    if not OWN_KEYS[k] then copts[k] = v end
  end
  if copts.fd ~= nil or copts.socket ~= nil or copts.close ~= nil then
    argerror(3, "wrap", "options 'fd', 'socket' and 'close' are the stream's own")
  end
  local preread = opts and opts.preread
  if preread ~= nil and type(preread) ~= "string" then
    argerror(3, "wrap", "option 'preread': string expected, got " .. type(preread))
  end
  local timeout = opts and opts.handshake_timeout
  if timeout ~= nil and (type(timeout) ~= "number" or timeout <= 0 or timeout ~= timeout) then
    argerror(3, "wrap", "option 'handshake_timeout': positive number of milliseconds expected")
  end
  local ok, conn = pcall(ctx.new_connection, ctx, copts)
  if not ok then   -- the core names its own argument: say it is wrap's third
    error((tostring(conn):gsub("^bad argument #2 to '[^']*'", "bad argument #3 to 'wrap'")), 2)
  end
  local self = setmetatable({
    handle = handle, conn = conn,
    fd = handle:fileno() or false,   -- for conn:drain_to (false: always through the handle)
    hs = "new",             -- "new" | "running" | "done"
    -- hs_cbs: handshake callbacks waiting; rcb: the read callback; reading: the application
    -- reads; hreading: the handle reads; inbuf: input the connection has not taken; pre:
    -- writes made before the handshake ({data, cb, ...}); prebytes; shut: shutdown state;
    -- err: the failure, once failed; rdone: the read side ended
    prebytes = 0,
  }, Stream)
  if preread and #preread > 0 then self.inbuf = preread end
  if timeout == nil and conn:side() == "server" then timeout = SERVER_HANDSHAKE_TIMEOUT end
  if timeout then watch_deadline(self, timeout) end
  return self
end

-- ---------------------------------------------------------------------------
-- the engine

-- Hands the connection's pending ciphertext to the handle; cb (optional) gets the handle's
-- verdict (nil or luv's error string).
function flush(self, cb)
  hand_over(self, {}, 0, cb)
end

function hand_over(self, out, n, cb)
  local conn, handle = self.conn, self.handle
  if n == 0 and self.fd and handle:get_write_queue_size() == 0 then
    if not conn:drain_to(self.fd) then self.fd = false end   -- not a socket, or failing: luv tells
  end
  if conn:pending() > 0 then
    n = n + 1
    out[n] = conn:drain()
  end
  if n == 0 then
    -- all sent: an empty write keeps the callback in luv's order among the others
    if not cb then return end
    out[1], n = "", 1
  end
  local req, err = handle:write(n == 1 and out[1] or out, uvcb(cb))
  if not req and cb then emit(self, cb, uverr(err)) end
end

-- One piece to the connection (stream.send's `write`): bytes taken, 0 when a buffer_limit
-- made it wait (what waits is moved to `out`, then it goes on), or nil, err.
local function write_piece(data, from, to, conn, out)
  local taken, msg, kind = conn:write(data, from, to)
  if taken then return taken end
  if kind == "want_write" and conn:pending() > 0 then
    out[#out + 1] = conn:drain()
    return 0
  end
  return nil, errstr(msg, kind)
end

-- Encrypts data (a string) and queues the ciphertext; cb gets the handle's verdict on the
-- last piece.  Returns true, or nil, err when the connection failed.
function send_data(self, data, cb)
  local conn = self.conn
  local out = {}
  local sent, failure = stream.send(data, 1, #data, PIECE, write_piece, conn, out)
  if not sent then return nil, failure end
  hand_over(self, out, #out, cb)
  return true
end

-- Whether the handle should be read now: during the handshake, and afterwards while the
-- application reads; never while input waits that the connection cannot take.
function want_handle(self)
  if self.closing or self.err or self.eof or self.inbuf then return false end
  if self.hs ~= "done" then return self.hs == "running" end
  return self.reading and not self.rdone
end

function sync_handle(self)
  local want = want_handle(self)
  if want == (self.hreading or false) then return end
  self.hreading = want
  if want then
    local h = self.handle
    local on_read = self.on_read
    if not on_read then
      on_read = function(err, chunk) handle_read(self, err, chunk) end
      self.on_read = on_read
    end
    local ok, err = h:read_start(on_read)
    if not ok then
      self.hreading = false
      fail(self, uverr(err))
    end
  else
    self.handle:read_stop()
  end
end

function handle_read(self, err, chunk)
  if self.closing or self.err then return end
  if err then return fail(self, uverr(err)) end
  if chunk == nil then
    self.eof = true
  elseif self.inbuf then          -- cannot happen while reading is stopped; kept in order
    self.inbuf = self.inbuf .. chunk
  else
    self.inbuf = chunk
  end
  pump(self)
end

-- Feeds what waits; at the handle's end, marks the end of input once all of it is in.
function feed(self)
  local conn, inbuf = self.conn, self.inbuf
  if inbuf then
    local n = conn:feed(inbuf)
    if n >= #inbuf then
      self.inbuf = nil
    elseif n > 0 then
      self.inbuf = inbuf:sub(n + 1)
    end
  end
  if not self.inbuf and self.eof == true then
    conn:feed(nil)
    self.eof = "fed"
  end
end

local function deliver_read(self, err, data)
  local cb = self.rcb
  if cb and not self.closing then cb(err, data) end
end

local function run_cbs(list, err)
  for i = 1, #list do list[i](err) end
end

function handshake_done(self)
  self.hs = "done"
  self.done_waiting = true
  local pre = self.pre
  self.pre = nil
  self.prebytes = 0
  if pre then
    for i = 1, #pre, 2 do
      local ok, err = send_data(self, pre[i], pre[i + 1] or nil)
      if not ok then   -- this write and the rest hear the failure through fail
        local rest = {}
        for j = i, #pre do rest[#rest + 1] = pre[j] end
        self.pre = rest
        return fail(self, err)
      end
    end
  end
  if self.shut == "waiting" then do_shutdown(self) end
  -- last: a callback that closes the stream finds nothing half done
  local cbs = self.hs_cbs
  self.hs_cbs = nil
  if cbs and not self.err then emit(self, run_cbs, cbs, nil) end
end

-- Moves the stream as far as it goes: feed input, handshake, read, flush output.
function pump(self)
  if self.closing or self.err then return end
  local conn = self.conn
  for _ = 1, 64 do                     -- bounded: each round consumes input or stops
    feed(self)
    local before = self.inbuf and #self.inbuf or 0
    if self.hs ~= "done" then
      if self.hs == "new" then self.hs = "running" end
      local ok, msg, kind = conn:handshake()
      flush(self)
      if ok then
        handshake_done(self)
        if self.err or self.closing then return end
      elseif kind ~= "want_read" and kind ~= "want_write" then
        return fail(self, errstr(msg, kind))
      end
    end
    if self.hs == "done" and self.reading and not self.rdone then
      if depth > 0 or self.later then
        -- reads are delivered only from the loop, in order after what is queued
        if not self.pump_queued then
          self.pump_queued = true
          defer(self, deferred_pump, self)
        end
        break
      end
      while self.reading and not self.rdone and not self.closing and not self.err do
        local data, msg, kind = conn:read()
        if data then
          deliver_read(self, nil, data)
        elseif kind == "want_read" or kind == "want_write" then
          break
        elseif kind == "closed" then
          self.rdone = true
          deliver_read(self, nil, nil)
        else
          fail(self, errstr(msg, kind))
        end
      end
      if self.closing or self.err then return end
      flush(self)
    end
    feed(self)
    local after = self.inbuf and #self.inbuf or 0
    if after == 0 or after == before then break end
  end
  sync_handle(self)
end

function deferred_pump(self)
  self.pump_queued = false
  pump(self)
end

function start(self)
  if self.hs == "new" then pump(self) end
end

-- The stream failed: every waiting callback hears err once; the handle stops reading.
function fail(self, err)
  if self.err or self.closing then return end
  self.err = err
  self.done_waiting = true
  sync_handle(self)
  local cbs = self.hs_cbs
  self.hs_cbs = nil
  if cbs then emit(self, run_cbs, cbs, err) end
  if self.rcb and not self.rdone then
    self.rdone = true
    emit(self, deliver_read, self, err)
  end
  local pre = self.pre
  self.pre = nil
  self.prebytes = 0
  if pre then
    for i = 2, #pre, 2 do
      if pre[i] then emit(self, pre[i], err) end
    end
  end
  local scb = self.shut_cb
  if self.shut == "waiting" and scb then
    self.shut_cb = nil
    emit(self, scb, err)
  end
end

-- ---------------------------------------------------------------------------
-- methods

local function check_open(self, name)
  if getmetatable(self) ~= Stream then
    error(("bad self to '%s' (sslctx.luv stream expected)"):format(name), 3)
  end
  if self.closing then error(("sslctx.luv: '%s' on a closed stream"):format(name), 3) end
end

local function check_cb(cb, n, name, optional)
  if cb == nil and optional then return end
  if type(cb) ~= "function" then
    argerror(n, name, "function expected, got " .. type(cb), 2)
  end
end

local function enter() depth = depth + 1 end
local function leave(...) depth = depth - 1 return ... end

function Stream:handshake(cb)
  check_open(self, "handshake")
  check_cb(cb, 1, "handshake")
  enter()
  if self.err then
    emit(self, cb, self.err)
  elseif self.hs == "done" then
    emit(self, cb, nil)
  else
    local cbs = self.hs_cbs
    if not cbs then cbs = {}; self.hs_cbs = cbs end
    cbs[#cbs + 1] = cb
    start(self)
  end
  return leave(true)
end

function Stream:read_start(cb)
  check_open(self, "read_start")
  check_cb(cb, 1, "read_start")
  enter()
  self.rcb = cb
  self.reading = true
  if self.err then
    if not self.rdone then
      self.rdone = true
      emit(self, deliver_read, self, self.err)
    end
  elseif self.hs == "new" then
    start(self)
  elseif self.hs == "done" then
    pump(self)      -- defers the reads themselves
  end
  return leave(true)
end

function Stream:read_stop()
  self.reading = false
  if self.closing then return true end
  sync_handle(self)
  return true
end

function Stream:write(data, cb)
  check_open(self, "write")
  local tdata = type(data)
  if tdata == "table" then
    for i, v in ipairs(data) do
      if type(v) ~= "string" then argerror(1, "write", "list entry " .. i .. ": string expected, got " .. type(v)) end
    end
    data = concat(data)
  elseif tdata ~= "string" then
    argerror(1, "write", "string or list of strings expected, got " .. tdata)
  end
  check_cb(cb, 2, "write", true)
  if self.err then return nil, self.err end
  if self.shut then return nil, EPIPE end
  enter()
  if self.hs ~= "done" then
    local pre = self.pre
    if not pre then pre = {}; self.pre = pre end
    pre[#pre + 1] = data
    pre[#pre + 1] = cb or false
    self.prebytes = self.prebytes + #data
    start(self)
    return leave(true)
  end
  local ok, err = send_data(self, data, cb)
  if not ok then
    fail(self, err)
    return leave(nil, err)
  end
  return leave(true)
end

function Stream:get_write_queue_size()
  if self.closing then return 0 end
  return self.prebytes + self.handle:get_write_queue_size()
end

function do_shutdown(self)
  self.shut = "sent"
  local cb = self.shut_cb
  self.shut_cb = nil
  local conn = self.conn
  local ok, msg, kind = conn:shutdown()
  if ok == nil then
    fail(self, errstr(msg, kind))
    if cb then emit(self, cb, self.err) end
    return
  end
  flush(self)
  local req, err = self.handle:shutdown(uvcb(cb))
  if not req and cb then emit(self, cb, uverr(err)) end
end

function Stream:shutdown(cb)
  check_open(self, "shutdown")
  check_cb(cb, 1, "shutdown", true)
  enter()
  if self.err then
    if cb then emit(self, cb, self.err) end
  elseif self.shut then
    if cb then emit(self, cb, EPIPE) end
  else
    self.shut = "waiting"
    self.shut_cb = cb
    if self.hs == "done" then do_shutdown(self) else start(self) end
  end
  return leave(true)
end

local function cancel_all(self)
  local cbs = self.hs_cbs
  self.hs_cbs = nil
  if cbs then run_cbs(cbs, ECANCELED) end
  local pre = self.pre
  self.pre = nil
  self.prebytes = 0
  if pre then
    for i = 2, #pre, 2 do
      if pre[i] then pre[i](ECANCELED) end
    end
  end
  local scb = self.shut_cb
  self.shut_cb = nil
  if scb then scb(ECANCELED) end
  local ccbs = self.close_cbs
  self.close_cbs = nil
  if ccbs then run_cbs(ccbs, nil) end
end

function Stream:close(cb)
  if getmetatable(self) ~= Stream then error("bad self to 'close' (sslctx.luv stream expected)", 2) end
  check_cb(cb, 1, "close", true)
  local ccbs = self.close_cbs
  if self.closing then
    if cb then
      if ccbs then ccbs[#ccbs + 1] = cb else emit(self, cb) end
    end
    return
  end
  enter()
  self.closing = true
  self.done_waiting = true
  self.close_cbs = { cb }
  -- close_notify, best effort: only when it can go out now, in front of nothing
  local conn = self.conn
  if self.hs == "done" and not self.err and self.shut ~= "sent" then
    local ok = pcall(conn.shutdown, conn)
    if ok and conn:pending() > 0 then
      local out = conn:drain()
      if self.handle:get_write_queue_size() == 0 then pcall(uv.try_write, self.handle, out) end
    end
  end
  conn:close()
  self.inbuf = nil
  local handle = self.handle
  if handle:is_closing() then
    defer(self, cancel_all, self)
  else
    handle:close(function() emit(self, cancel_all, self) end)
  end
  return leave()
end

function Stream:is_closing()
  return self.closing or false
end

function Stream:connection()
  return self.conn
end

function Stream:handle_of()
  return self.handle
end

-- ---------------------------------------------------------------------------
-- coroutine helper

local Coro = {}
Coro.__index = Coro

--- tls.coro(stream) -> an object whose methods wait (yield) instead of taking callbacks;
-- use it from a coroutine the loop resumes (tls.spawn).
function M.coro(s)
  if getmetatable(s) ~= Stream then
    argerror(1, "coro", "sslctx.luv stream expected, got " .. type(s))
  end
  return setmetatable({ stream = s, chunks = {}, first = 1, last = 0 }, Coro)
end

-- Yields until cb-style completion: call(resume) starts it; returns what the callback got.
local function await(call)
  local co, main = co_running()
  if not co or main then error("sslctx.luv: a coro method needs a coroutine (tls.spawn)", 3) end
  local done, res = false, nil
  call(function(...)
    done, res = true, { n = select("#", ...), ... }
    if co_status(co) == "suspended" then
      local ok, err = co_resume(co)
      if not ok then error(err, 0) end
    end
  end)
  while not done do co_yield() end
  return (table.unpack or unpack)(res, 1, res.n)
end

function Coro:handshake()
  local err = await(function(k) self.stream:handshake(k) end)
  if err then return nil, err end
  return true
end

function Coro:write(data)
  local s = self.stream
  local err = await(function(k)
    local ok, e = s:write(data, k)
    if not ok then k(e) end
  end)
  if err then return nil, err end
  return true
end

--- c:read() -> the next chunk | nil (close_notify) | nil, err
function Coro:read()
  if self.first <= self.last then
    local chunk = self.chunks[self.first]
    self.chunks[self.first] = nil
    self.first = self.first + 1
    return chunk
  end
  if self.ended then return nil, self.ended ~= true and self.ended or nil end
  local s = self.stream
  local err, data = await(function(k)
    s:read_start(function(e, d)
      s:read_stop()          -- one chunk at a time: the rest waits in the kernel
      if e then self.ended = e elseif d == nil then self.ended = true end
      k(e, d)
    end)
  end)
  if err then return nil, err end
  return data
end

function Coro:shutdown()
  local err = await(function(k) self.stream:shutdown(k) end)
  if err then return nil, err end
  return true
end

function Coro:close()
  if self.stream:is_closing() then return true end
  await(function(k) self.stream:close(k) end)
  return true
end

--- tls.spawn(fn, ...) runs fn(...) in a new coroutine now; an error in it is raised.
function M.spawn(fn, ...)
  if type(fn) ~= "function" then argerror(1, "spawn", "function expected, got " .. type(fn)) end
  local co = co_create(fn)
  local ok, err = co_resume(co, ...)
  if not ok then error(err, 0) end
  return co
end

M.SERVER_HANDSHAKE_TIMEOUT = SERVER_HANDSHAKE_TIMEOUT

return M
