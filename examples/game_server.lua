-- game_server.lua: one Lua process, one libuv loop (luv), many mutual-TLS players.  Each
-- player is who its client certificate says (the CN); a certificate the CA in --cafile did
-- not issue, or none, is turned away.  doc/game-server.md walks through it.
--
--   lua5.4 examples/game_server.lua --port N --cert FILE --key FILE --cafile FILE
--          [--host 127.0.0.1] [--max-seconds S]
--
-- --port 0 picks a free port; once it can accept, it prints "listening on <host>:<port>".
-- With --max-seconds it closes everything after S seconds and exits 0.  Run from the
-- repository after `make` (it finds lua/ and build/<lua>/ from its own path); it needs luv
-- (Debian: lua-luv).  For thousands of players raise the descriptor limit first
-- (`ulimit -n 20000` holds 10,000).
--
-- Protocol, one "\n"-terminated line each way:
--   server: "WELCOME <CN>" once the handshake is done; a second connection with a CN already
--           playing replaces the first, which is closed
--   "MOVE x y" (integers)   -> "POS <CN> x y" to every welcomed player, the sender included
--   "QUIT"                  -> "BYE", then close_notify; closed once that is written
--   "PING"                  -> "PONG" (a keepalive; the load generator uses it)
--   anything else           -> "ERROR unknown command"
-- A line over 1 KiB, or a player whose unsent output passes 1 MiB, is dropped.

local here = (arg and arg[0] or ""):match("^(.*)/[^/]*$") or "."
local root = here .. "/.."
local luaname = jit and "luajit" or ("lua" .. _VERSION:match("%d+%.%d+"))
package.path = root .. "/lua/?.lua;" .. root .. "/lua/?/init.lua;" .. package.path
package.cpath = root .. "/build/" .. luaname .. "/?.so;" .. package.cpath

local sslctx = require "sslctx"
local uv = require "luv"
local tls = require "sslctx.luv"

local MAX_LINE = 1024              -- bytes, without the "\n"
local MAX_UNSENT = 1024 * 1024     -- bytes waiting for the kernel, per player

local function log(...)
  io.stdout:write(table.concat({ ... }), "\n")
  io.stdout:flush()
end

local function usage(msg)
  if msg then io.stderr:write("game_server: ", msg, "\n") end
  io.stderr:write("usage: game_server.lua --port N --cert FILE --key FILE --cafile FILE ",
                  "[--host ADDR] [--max-seconds S]\n")
  os.exit(64)
end

-- ---------------------------------------------------------------------------
-- command line

local o = { host = "127.0.0.1" }
local args = arg or {}
local i = 1
while i <= #args do
  local a = args[i]
  local function value()
    i = i + 1
    if args[i] == nil then usage(a .. " needs a value") end
    return args[i]
  end
  local function number() return tonumber(value()) or usage(a .. " needs a number") end
  if a == "--port" then o.port = number()
  elseif a == "--host" then o.host = value()
  elseif a == "--cert" then o.cert = value()
  elseif a == "--key" then o.key = value()
  elseif a == "--cafile" then o.cafile = value()
  elseif a == "--max-seconds" then o.max_seconds = number()
  elseif a == "-h" or a == "--help" then usage()
  else usage("unknown argument " .. a) end
  i = i + 1
end
if not (o.port and o.cert and o.key and o.cafile) then
  usage("--port, --cert, --key and --cafile are needed")
end

local ctx, msg = sslctx.new({ side = "server", certificate = o.cert, key = o.key,
                              ca_file = o.cafile, verify = "require" })
if not ctx then
  io.stderr:write("game_server: ", tostring(msg), "\n")
  os.exit(1)
end

-- ---------------------------------------------------------------------------
-- players: { stream = s, name = CN once welcomed, buf = partial line }

local players = {}       -- CN -> player (welcomed only)
local live = {}          -- player -> true (every open connection, handshaking ones too)

local function drop(p, why)
  if p.dead then return end
  p.dead = true
  live[p] = nil
  if p.name then
    if players[p.name] == p then players[p.name] = nil end
    log("left: ", p.name, " (", tostring(why), ")")
  else
    log("refused a connection: ", tostring(why))
  end
  p.stream:close()
end

local function send(p, line)
  local s = p.stream
  local ok, err = s:write(line)
  if not ok then return drop(p, err) end
  if s:get_write_queue_size() > MAX_UNSENT then drop(p, "unsent output over 1 MiB") end
end

local function broadcast(line)
  for _, p in pairs(players) do send(p, line) end   -- drop() may remove p: allowed in pairs
end

local function on_line(p, line)
  local x, y = line:match("^MOVE (%-?%d+) (%-?%d+)$")
  if x then
    broadcast(("POS %s %s %s\n"):format(p.name, x, y))
  elseif line == "PING" then
    send(p, "PONG\n")
  elseif line == "QUIT" then
    p.quitting = true
    players[p.name] = nil
    p.stream:read_stop()
    send(p, "BYE\n")
    if p.dead then return end
    -- close_notify goes after BYE, then the handle's FIN; close once both are written
    p.stream:shutdown(function() drop(p, "quit") end)
  else
    send(p, "ERROR unknown command\n")
  end
end

local function on_read(p, err, data)
  if p.dead or p.quitting then return end
  if err then return drop(p, err) end
  if data == nil then return drop(p, "closed") end
  local buf = p.buf and p.buf .. data or data
  local start = 1
  while true do
    local nl = buf:find("\n", start, true)
    if not nl then break end
    if nl - start > MAX_LINE then return drop(p, "line over 1 KiB") end
    on_line(p, (buf:sub(start, nl - 1):gsub("\r$", "")))
    if p.dead or p.quitting then return end
    start = nl + 1
  end
  if #buf - start + 1 > MAX_LINE then return drop(p, "line over 1 KiB") end
  p.buf = start <= #buf and buf:sub(start) or nil
end

local function cn_of(conn)
  local cert = conn:peer_certificate()
  local subject = cert and cert:subject() or ""
  return subject:match("CN=([^,]+)") or subject
end

local function welcome(p, err)
  if p.dead then return end
  if err then return drop(p, err) end
  local name = cn_of(p.stream:connection())
  local old = players[name]
  if old then drop(old, "replaced by a new connection") end
  p.name = name
  players[name] = p
  log("joined: ", name)
  send(p, "WELCOME " .. name .. "\n")
  if p.dead then return end
  p.stream:read_start(function(e, d) on_read(p, e, d) end)
end

-- ---------------------------------------------------------------------------
-- the listener and the loop

local server = uv.new_tcp()
local ok, err = server:bind(o.host, o.port)
if ok then ok, err = server:listen(4096, function(lerr)
  if lerr then return log("accept: ", lerr) end
  local tcp = uv.new_tcp()
  local aok = server:accept(tcp)
  if not aok then return tcp:close() end
  tcp:nodelay(true)
  local p = { stream = tls.wrap(tcp, ctx) }   -- server side: a 30 s handshake deadline
  live[p] = true
  p.stream:handshake(function(e) welcome(p, e) end)
end) end
if not ok then
  io.stderr:write("game_server: ", tostring(err), "\n")
  os.exit(1)
end
log("listening on ", o.host, ":", tostring(server:getsockname().port))

if o.max_seconds then
  local t = uv.new_timer()
  t:start(math.floor(o.max_seconds * 1000), 0, function()
    t:close()
    server:close()
    for p in pairs(live) do drop(p, "server stopping") end
  end)
end

uv.run()
os.exit(0)
