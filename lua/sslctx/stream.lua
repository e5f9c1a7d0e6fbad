--- sslctx.stream: the buffered-stream core the adapters share (internal: no user calls it).
--
-- What every stream adapter of lua/sslctx/ does the same way lives here, once:
--   argument checks     argerror (luaL_argerror's text), is_context, has_method, copy
--   receive patterns    pattern(p [, whole]) -> "l" | "a" | "n", count: LuaSocket's and the
--                       cosocket's "*l"/"l", "*a"/"a" and byte counts, one error text
--   the read buffer     buffer(): push, take, take_all, line, clear, size
--   receive             receive(buf, how, n, rounds, more, a, b): a pattern read off the
--                       buffer, asking the adapter's more(a, b) for bytes
--   write chunking      send(data, i, j, chunk, write, a, b): data[i..j] to the adapter's
--                       write(piece, a, b) in pieces
-- The adapter keeps what is its own: how it waits (socket.select, the cosocket, cqueues,
-- the loop), its timeouts and deadlines, its result shapes (LuaSocket's, the cosocket's) and
-- its messages.  doc/internals.md ("The Lua front") tells how an adapter uses this.

local type, pcall, error, pairs, tonumber, tostring, setmetatable =
      type, pcall, error, pairs, tonumber, tostring, setmetatable
local concat = table.concat
local floor, min = math.floor, math.min

local M = {}

-- ---------------------------------------------------------------------------
-- arguments

--- argerror(n, fname, msg [, level]): raises "bad argument #n to 'fname' (msg)"; `level`
-- counts as error()'s does from the function that calls argerror (2, the default, blames
-- that function's caller).  For a method, n does not count self (doc/reference.md,
-- "Conventions").
function M.argerror(n, fname, msg, level)
  error(("bad argument #%d to '%s' (%s)"):format(n, fname, msg), (level or 2) + 1)
end

local function get(x, name) return x[name] end

--- has_method(x, name) -> whether x is a userdata whose `name` is a function (a context's
-- new_connection, a luv handle's read_start), without raising on an object whose __index
-- does.
function M.has_method(x, name)
  if type(x) ~= "userdata" then return false end
  local ok, f = pcall(get, x, name)   -- (no closure per call)
  return ok and type(f) == "function"
end

--- is_context(x) -> whether x is an sslctx context.
function M.is_context(x)
  return M.has_method(x, "new_connection")
end

--- copy(t) -> a shallow copy of t ({} for nil).
function M.copy(t)
  local r = {}
  if t then for k, v in pairs(t) do r[k] = v end end
  return r
end

-- ---------------------------------------------------------------------------
-- receive patterns

--- pattern(p [, whole]) -> "l" | "a" | "n", count
-- p: "*l" or "l" (a line), "*a" or "a" (up to the end), or a byte count (a number or a
-- numeric string), rounded down; with `whole`, a count must be a whole number.  Anything
-- else raises as argument #1 of the caller's `receive`.
function M.pattern(p, whole)
  local n = (type(p) == "number" or type(p) == "string") and tonumber(p) or nil
  if n then
    if n >= 0 and not (whole and n % 1 ~= 0) then return "n", floor(n) end
  elseif p == "*l" or p == "l" then
    return "l"
  elseif p == "*a" or p == "a" then
    return "a"
  end
  local shown = type(p) == "string" and "'" .. p .. "'" or type(p) == "number" and tostring(p)
                or "(a " .. type(p) .. ")"
  M.argerror(1, "receive", "invalid receive pattern " .. shown ..
             " (\"*l\", \"*a\" or a byte count expected)", 3)
end

-- ---------------------------------------------------------------------------
-- the read buffer: plaintext read and not yet handed to the application

local Buffer = {}
Buffer.__index = Buffer

--- buffer() -> an empty buffer; buf.size is the bytes it holds.
function M.buffer()
  -- [1..n]: the pieces; clean: how many of the first pieces hold no "\n" (clean_size bytes)
  return setmetatable({ n = 0, size = 0, clean = 0, clean_size = 0 }, Buffer)
end

function Buffer:push(s)
  if s == "" then return end
  local n = self.n + 1
  self[n] = s
  self.n = n
  self.size = self.size + #s
end

function Buffer:clear()
  for i = 1, self.n do self[i] = nil end
  self.n, self.size, self.clean, self.clean_size = 0, 0, 0, 0
end

--- take(n) -> the first n bytes (all of them when fewer), removed.
function Buffer:take(n)
  local all = self.n == 1 and self[1] or concat(self, "", 1, self.n)
  self:clear()
  if n >= #all then return all end
  local rest = all:sub(n + 1)
  self[1], self.n, self.size = rest, 1, #rest
  return all:sub(1, n)
end

function Buffer:take_all()
  return self:take(self.size)
end

--- line() -> the first line, removed, without its "\n" and with every "\r" dropped (as
-- LuaSocket does); nil (nothing removed) while no whole line is buffered.
function Buffer:line()
  local before = self.clean_size
  for i = self.clean + 1, self.n do
    local nl = self[i]:find("\n", 1, true)
    if nl then
      return (self:take(before + nl):sub(1, -2):gsub("\r", ""))
    end
    before = before + #self[i]
    self.clean, self.clean_size = i, before
  end
  return nil
end

-- ---------------------------------------------------------------------------
-- receive

--- receive(buf, how, n, rounds, more, a, b) -> data | nil, err, partial, kind
-- Reads by a parsed pattern (`how`, `n` from pattern()) off buf.  When buf lacks what the
-- pattern needs, more(a, b) must append at least one byte to buf and return true, or
-- return nil, err, kind; its failure ends the read with what buf holds as partial (a line's
-- without "\r").  A count waits until buf holds n bytes and at least one (LuaSocket's
-- receive(0) waits for data too).  "a" ends only by a failure, at the peer's close_notify
-- with kind "closed": whether that is the data is the adapter's rule (LuaSocket's and the
-- cosocket's differ).  rounds (nil: no bound) caps the calls to more: past it, nil, "line
-- too long" (a line) or "too many rounds", partial, "ssl".
function M.receive(buf, how, n, rounds, more, a, b)
  local left = rounds or -1
  while left ~= 0 do
    left = left - 1
    if how == "l" then
      local line = buf:line()
      if line then return line end
    elseif how == "n" then
      if buf.size >= n and buf.size > 0 then return buf:take(n) end
    end
    local ok, err, kind = more(a, b)
    if not ok then
      local partial = buf:take_all()
      if how == "l" then partial = partial:gsub("\r", "") end
      return nil, err, partial, kind
    end
  end
  return nil, how == "l" and "line too long" or "too many rounds", buf:take_all(), "ssl"
end

-- ---------------------------------------------------------------------------
-- send

--- send(data, i, j, chunk, write, a, b) -> j | nil, err, index of the last byte taken, kind
-- Hands data[i..j] (1 <= i, j <= #data) to write(data, from, to, a, b) in ranges of at most
-- `chunk` bytes (conn:write takes a range: no piece is copied); write returns the bytes it
-- took (0: none yet, call again with the same range, after waiting as the adapter waits) or
-- nil, err, kind.
function M.send(data, i, j, chunk, write, a, b)
  local pos = i
  while pos <= j do
    local taken, err, kind = write(data, pos, min(j, pos + chunk - 1), a, b)
    if not taken then return nil, err, pos - 1, kind end
    pos = pos + taken
  end
  return pos - 1
end

return M
