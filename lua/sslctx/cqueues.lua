--- sslctx.cqueues: TLS streams for cqueues, over the fd transport, waiting with cqueues.poll.
--
--   local cqueues = require "cqueues"
--   local csocket = require "cqueues.socket"
--   local scq = require "sslctx.cqueues"
--
--   cq:wrap(function()
--     local sock = csocket.connect("127.0.0.1", 4000)
--     local s = scq.wrap(sock, ctx, { hostname = "localhost", timeout = 10 })
--     assert(s:handshake())
--     s:write("PING\n")
--     local data, msg, kind = s:read()
--     s:close()
--   end)
--
-- scq.wrap(sock, ctx [, opts]) -> stream.  sock: a connected cqueues socket (the stream keeps it
-- and closes it on close(); its own read/write buffers must not be used any more) or a
-- non-blocking descriptor (an integer; close() closes it unless opts.close = false).  opts:
-- new_connection's (hostname, side, session, verify_hostname), plus timeout (seconds for each
-- call; nil waits for ever).  Methods, each waiting through cqueues.poll (it yields inside a
-- cqueues coroutine, blocks outside one):
--   handshake()       true | nil, message, kind
--   read([n])         data | nil, message, kind ("closed" at close_notify, "eof" when cut)
--   write(data)       true (all of it) | nil, message, kind
--   shutdown()        true | nil, message, kind (close_notify out; the peer's is not awaited)
--   close(), connection(), pollfd(), events()
-- A deadline passed is nil, "timeout: <what> not done within <t> s", "timeout".

local cqueues = require "cqueues"
local stream = require "sslctx.stream"

local type, pairs, pcall, error, setmetatable, getmetatable =
      type, pairs, pcall, error, setmetatable, getmetatable
local monotime, poll = cqueues.monotime, cqueues.poll

local M = { _VERSION = "sslctx.cqueues 0.1" }

local Stream = {}
Stream.__index = Stream

local argerror, is_context = stream.argerror, stream.is_context

local function get_pollfd(x) return x.pollfd end

--- scq.wrap(sock, ctx [, opts]) -> stream
function M.wrap(sock, ctx, opts)
  local fd
  if type(sock) == "number" then
    fd = sock
  else
    local ok, f = pcall(get_pollfd, sock)
    if not ok or type(f) ~= "function" then
      argerror(1, "wrap", "cqueues socket or descriptor expected, got " .. type(sock))
    end
    fd = sock:pollfd()
  end
  if not is_context(ctx) then argerror(2, "wrap", "sslctx context expected, got " .. type(ctx)) end
  if opts ~= nil and type(opts) ~= "table" then argerror(3, "wrap", "table expected, got " .. type(opts)) end
  local copts = {}
  for k, v in pairs(opts or {}) do
    if k ~= "timeout" then copts[k] = v end
  end
  if copts.fd ~= nil or copts.socket ~= nil then
    argerror(3, "wrap", "options 'fd' and 'socket' are the stream's own")
  end
  local timeout = opts and opts.timeout
  if timeout ~= nil and (type(timeout) ~= "number" or timeout < 0) then
    argerror(3, "wrap", "option 'timeout': seconds expected")
  end
  copts.fd = fd
  if type(sock) ~= "number" then copts.close = false end   -- the socket object closes it
  local ok, conn = pcall(ctx.new_connection, ctx, copts)
  if not ok then
    error((tostring(conn):gsub("^bad argument #2 to '[^']*'", "bad argument #3 to 'wrap'")), 2)
  end
  return setmetatable({ sock = type(sock) ~= "number" and sock or nil, fd = fd, conn = conn,
                        timeout = timeout, ev = "r" }, Stream)
end

-- cqueues.poll's protocol: the object names its descriptor and the events it waits for.
function Stream:pollfd() return self.fd end
function Stream:events() return self.ev end

-- Runs step() until it answers something other than want_read/want_write.
local function drive(self, what, step)
  if self.closed then error(("sslctx.cqueues: '%s' on a closed stream"):format(what), 3) end
  local deadline = self.timeout and monotime() + self.timeout
  while true do
    local a, msg, kind = step()
    if a or (kind ~= "want_read" and kind ~= "want_write") then return a, msg, kind end
    self.ev = kind == "want_write" and "w" or "r"
    local left = deadline and deadline - monotime()
    if left and left <= 0 then
      return nil, ("timeout: %s not done within %g s"):format(what, self.timeout), "timeout"
    end
    poll(self, left)
  end
end

function Stream:handshake()
  local conn = self.conn
  return drive(self, "handshake", function() return conn:handshake() end)
end

function Stream:read(n)
  if n ~= nil and (type(n) ~= "number" or n < 1) then argerror(1, "read", "positive byte count expected") end
  local conn = self.conn
  return drive(self, "read", function() return conn:read(n) end)
end

function Stream:write(data)
  if type(data) ~= "string" then argerror(1, "write", "string expected, got " .. type(data)) end
  local conn, rest = self.conn, data
  local ok, msg, kind = drive(self, "write", function()
    while #rest > 0 do
      local n, m, k = conn:write(rest)
      if not n then return nil, m, k end
      rest = rest:sub(n + 1)
    end
    return true
  end)
  return ok, msg, kind
end

function Stream:shutdown()
  local conn = self.conn
  local ok, msg, kind = drive(self, "shutdown", function()
    local r, m, k = conn:shutdown()
    if r == false then return true end   -- ours is out; the peer's may come later
    return r, m, k
  end)
  return ok, msg, kind
end

function Stream:close()
  if self.closed then return true end
  self.closed = true
  cqueues.cancel(self.fd)   -- forget it in every controller before the descriptor goes
  self.conn:close()         -- closes a bare descriptor; a socket object closes its own
  if self.sock then self.sock:close() end
  return true
end

function Stream:connection() return self.conn end

M.Stream = Stream
M.is_stream = function(x) return getmetatable(x) == Stream end

return M
