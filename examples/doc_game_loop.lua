-- A game-server style event loop: one thread, non-blocking sockets, socket.select, and
-- sslctx connections over LuaSocket objects.  A server and three clients run in the same
-- loop over loopback; each client sends a burst of moves in one write and waits for the
-- server's answers.  See doc/game-server.md.
--
--   lua5.4 examples/doc_game_loop.lua        (from the repository, after `make`)

local here = (arg and arg[0] or ""):match("^(.*)/[^/]*$") or "."
local root = here .. "/.."
local luaname = jit and "luajit" or ("lua" .. _VERSION:match("%d+%.%d+"))
package.path = root .. "/lua/?.lua;" .. package.path
package.cpath = root .. "/build/" .. luaname .. "/?.so;" .. package.cpath

local socket = require "socket"
local sslctx = require "sslctx"

local pki = os.getenv("SSLCTX_PKI_DIR") or (root .. "/build/pki")
os.execute("sh " .. root .. "/spec/certs/make-pki.sh " .. pki)
local function file(name) return pki .. "/" .. name end

local server_ctx = assert(sslctx.new{ side = "server", verify = "require", ca_file = file("ca.pem"),
  certificate = file("server-chain.pem"), key = file("server.key") })
local client_ctx = assert(sslctx.new{ ca_file = file("ca.pem"),
  certificate = file("client-chain.pem"), key = file("client.key") })

----------------------------------------------------------------------------
-- One TLS endpoint in the loop: its socket, its sslctx connection, what it still has to
-- send, and what it waits for.
local peers = {}

local function add_peer(sock, conn, name, on_line)
  sock:settimeout(0)                       -- the loop never blocks on a socket
  local p = { sock = sock, conn = conn, name = name, out = "", inbuf = "", on_line = on_line,
              wants = "read", ready = false, fresh = true }   -- fresh: a client must speak first
  peers[#peers + 1] = p
  return p
end

local function send(p, data) p.out = p.out .. data end

local stats = { reads = 0, from_pending = 0, partial_writes = 0 }

local function fail(p, msg, kind)
  error(("%s: %s (%s)"):format(p.name, tostring(msg), tostring(kind)))
end

-- Does whatever the connection can do now without blocking.
local function progress(p)
  if not p.ready then
    local ok, msg, kind = p.conn:handshake()
    if not ok then
      if kind ~= "want_read" and kind ~= "want_write" then fail(p, msg, kind) end
      p.wants = kind == "want_write" and "write" or "read"
      return
    end
    p.ready = true
    if p.on_ready then p.on_ready(p) end
  end
  -- One read per wakeup, of at most 64 bytes: a burst of records is left inside OpenSSL,
  -- which is what pending_plaintext() tells the loop about.
  local data, msg, kind = p.conn:read(64)
  if data then
    stats.reads = stats.reads + 1
    p.inbuf = p.inbuf .. data
    for line in p.inbuf:gmatch("([^\n]*)\n") do p.on_line(p, line) end
    p.inbuf = p.inbuf:match("[^\n]*$")
  elseif kind == "closed" or kind == "eof" then
    p.closed = true
  elseif kind ~= "want_read" and kind ~= "want_write" then
    fail(p, msg, kind)
  end
  p.wants = kind == "want_write" and "write" or "read"
  -- Flush what we have to send; a partial write keeps the rest for the next round.
  if #p.out > 0 then
    local n, wmsg, wkind = p.conn:write(p.out)
    if n then
      if n < #p.out then stats.partial_writes = stats.partial_writes + 1 end
      p.out = p.out:sub(n + 1)
    elseif wkind == "want_write" or wkind == "want_read" then
      p.wants = wkind == "want_write" and "write" or "read"
    else
      fail(p, wmsg, wkind)
    end
  end
end

----------------------------------------------------------------------------
-- The server: accepts, answers each move.
local listener = assert(socket.bind("127.0.0.1", 0))
listener:settimeout(0)
local port = select(2, listener:getsockname())

local function server_line(p, line)
  send(p, ("ok %s (from %s)\n"):format(line, p.conn:peer_certificate():subject()))
end

-- The clients: each sends five moves in one write once its handshake is done.
local answers = {}
for i = 1, 3 do
  local tcp = assert(socket.connect("127.0.0.1", port))
  local conn = client_ctx:new_connection{ socket = tcp, hostname = "localhost" }
  local p = add_peer(tcp, conn, "client " .. i, function(p, line)
    answers[#answers + 1] = p.name .. " <- " .. line
    p.got = (p.got or 0) + 1
    if p.got == 5 then p.conn:shutdown() p.done = true end
  end)
  p.on_ready = function(self)
    local moves = {}
    for m = 1, 5 do moves[m] = ("move %d.%d"):format(i, m) end
    send(self, table.concat(moves, "\n") .. "\n")
  end
end

----------------------------------------------------------------------------
-- The loop.
local deadline = socket.gettime() + 20
while true do
  local done = 0
  for _, p in ipairs(peers) do if p.done then done = done + 1 end end
  if done == 3 then break end
  assert(socket.gettime() < deadline, "the loop made no progress")

  local tcp = listener:accept()
  if tcp then add_peer(tcp, server_ctx:new_connection{ socket = tcp }, "server", server_line) end

  -- 1. Decrypted data already inside OpenSSL: the socket will not signal it.  Serve it now.
  local busy = false
  for _, p in ipairs(peers) do
    if not p.closed and p.ready and p.conn:pending_plaintext() > 0 then
      stats.from_pending = stats.from_pending + 1
      progress(p)
      busy = true
    end
  end

  -- 2. Wait for the sockets, each the way its connection asked.
  local rset, wset, by_sock = { listener }, {}, {}
  for _, p in ipairs(peers) do
    if not p.closed then
      by_sock[p.sock] = p
      if p.wants == "write" or #p.out > 0 then wset[#wset + 1] = p.sock end
      rset[#rset + 1] = p.sock
    end
  end
  local readable, writable = socket.select(rset, wset, busy and 0 or 0.5)
  local ready = {}
  for _, p in ipairs(peers) do
    if p.fresh then ready[p], p.fresh = true, nil end
  end
  for _, s in ipairs(readable) do if by_sock[s] then ready[by_sock[s]] = true end end
  for _, s in ipairs(writable) do if by_sock[s] then ready[by_sock[s]] = true end end

  -- 3. Move every ready connection forward.
  for _, p in ipairs(peers) do
    if ready[p] and not p.closed then progress(p) end
  end
end

table.sort(answers)
for _, a in ipairs(answers) do print(a) end
print(("reads: %d, of which after pending_plaintext() > 0: %d"):format(stats.reads, stats.from_pending))
assert(#answers == 15, "expected 15 answers")
assert(stats.from_pending > 0, "expected some reads served from pending_plaintext")
for _, p in ipairs(peers) do p.conn:close() end
listener:close()
