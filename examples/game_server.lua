-- game_server.lua: one non-blocking event loop over socket.select serving many TLS players
-- at once; each player is who its client certificate says (the CN), and a certificate the
-- server's CA did not issue is turned away.
--
--   lua5.4 examples/game_server.lua --self-test [--bots N] [--rounds R] [--deadline S]
--   lua5.4 examples/game_server.lua --port N --cert FILE --key FILE --cafile FILE
--          [--host 127.0.0.1] [--max-seconds S]
--
-- Run from the repository after `make` (it finds lua/ and build/<lua>/ from its own path).
--
-- Protocol, one line each way: the server greets "WELCOME <name>"; "MOVE x y" is broadcast
-- to every player as "POS <name> x y"; "QUIT" is answered "BYE" and the server closes.
--
-- --self-test makes a throwaway CA, a server certificate and one client certificate per bot
-- with the openssl CLI in a temporary directory, listens on 127.0.0.1 at a free port, and
-- runs N bots (default 8) in the same event loop: each joins with its own certificate, sends
-- R moves (default 5), waits until it has seen its own R positions come back, and quits.  An
-- intruder with a certificate from another CA must be refused.  It prints a summary and
-- exits 0 on success, 1 when something went wrong or the deadline (default 20 s) passed.
--
-- The loop: every connection is non-blocking (`ctx:new_connection{socket = tcp}`); a call
-- that returns want_read/want_write puts its socket in select's read/write set; plaintext
-- already decrypted inside OpenSSL (conn:pending_plaintext()) is drained before the loop
-- waits again, since select cannot see it.

local here = (arg and arg[0] or ""):match("^(.*)/[^/]*$") or "."
local root = here .. "/.."
local luaname = jit and "luajit" or ("lua" .. _VERSION:match("%d+%.%d+"))
package.path = root .. "/lua/?.lua;" .. root .. "/lua/?/init.lua;" .. package.path
package.cpath = root .. "/build/" .. luaname .. "/?.so;" .. package.cpath

local sslctx = require "sslctx"
local socket = require "socket"

local function log(...)
  io.stdout:write(table.concat({ ... }), "\n")
  io.stdout:flush()
end

local function usage(msg)
  if msg then io.stderr:write("game_server: ", msg, "\n") end
  io.stderr:write("usage: game_server.lua --self-test [--bots N] [--rounds R] [--deadline S]\n",
                  "       game_server.lua --port N --cert FILE --key FILE --cafile FILE ",
                  "[--host ADDR] [--max-seconds S]\n")
  os.exit(64)
end

-- ---------------------------------------------------------------------------
-- Endpoints: one TLS connection each, server or client side, driven without blocking.

local endpoints = {}     -- list of live endpoints

local function add_endpoint(tcp, conn, role)
  tcp:settimeout(0)
  local ep = { tcp = tcp, conn = conn, role = role, inbuf = "", outbuf = "",
               handshaken = false, want = "want_read", closing = false }
  endpoints[#endpoints + 1] = ep
  return ep
end

local function drop(ep, why)
  if ep.dead then return end
  ep.dead = true
  ep.why = why
  pcall(ep.conn.close, ep.conn)   -- close_notify after a clean handshake; closes the socket
  if ep.on_close then ep.on_close(ep, why) end
end

local function send_line(ep, line)
  ep.outbuf = ep.outbuf .. line .. "\n"
end

-- One step: finish the handshake, write what is queued, read everything that is ready.
-- Returns nothing; records in ep.want what the connection waits for.
local function step(ep)
  if ep.dead then return end
  local conn = ep.conn
  if not ep.handshaken then
    local ok, msg, kind = conn:handshake()
    if not ok then
      if kind == "want_read" or kind == "want_write" then ep.want = kind return end
      drop(ep, msg)
      return
    end
    ep.handshaken = true
    if ep.on_handshake then ep.on_handshake(ep) end
  end
  while #ep.outbuf > 0 do
    local n, msg, kind = conn:write(ep.outbuf)
    if not n then
      if kind == "want_read" or kind == "want_write" then ep.want = kind return end
      drop(ep, msg)
      return
    end
    ep.outbuf = ep.outbuf:sub(n + 1)
  end
  if ep.closing then
    drop(ep, "done")
    return
  end
  for _ = 1, 1000 do   -- read until OpenSSL has nothing decrypted and the socket nothing new
    local data, msg, kind = conn:read()
    if not data then
      if kind == "want_read" or kind == "want_write" then ep.want = kind break end
      drop(ep, kind == "closed" and "closed" or msg)
      return
    end
    ep.inbuf = ep.inbuf .. data
    while true do
      local line, rest = ep.inbuf:match("^([^\n]*)\n(.*)$")
      if not line then break end
      ep.inbuf = rest
      ep.on_line(ep, (line:gsub("\r$", "")))
      if ep.dead then return end
    end
  end
  -- queued by on_line: write it now (a want_write is remembered for select)
  if #ep.outbuf > 0 or ep.closing then return step(ep) end
end

-- ---------------------------------------------------------------------------
-- The game (server side)

local players = {}       -- name -> endpoint
local stats = { joined = 0, moves = 0, refused = 0, quit = 0 }

local function cn_of(conn)
  local cert = conn:peer_certificate()
  local subject = cert and cert:subject() or ""
  return subject:match("CN=([^,]+)") or subject
end

local function broadcast(line)
  for _, ep in pairs(players) do send_line(ep, line) end
end

local function server_endpoint(tcp, ctx)
  local ep = add_endpoint(tcp, ctx:new_connection({ socket = tcp }), "player")
  ep.on_handshake = function(e)
    e.name = cn_of(e.conn)
    players[e.name] = e
    stats.joined = stats.joined + 1
    log("joined: ", e.name, " (", e.conn:version(), ")")
    send_line(e, "WELCOME " .. e.name)
  end
  ep.on_line = function(e, line)
    local x, y = line:match("^MOVE (%-?%d+) (%-?%d+)$")
    if x then
      stats.moves = stats.moves + 1
      broadcast(("POS %s %s %s"):format(e.name, x, y))
    elseif line == "QUIT" then
      stats.quit = stats.quit + 1
      send_line(e, "BYE")
      e.closing = true
    else
      send_line(e, "ERROR unknown command")
    end
  end
  ep.on_close = function(e, why)
    if e.name then
      players[e.name] = nil
      log("left: ", e.name, " (", tostring(why), ")")
    else
      stats.refused = stats.refused + 1
      log("refused a connection: ", tostring(why))
    end
  end
  return ep
end

-- ---------------------------------------------------------------------------
-- The loop

-- Runs until done() is true or the deadline passes; returns true when done() became true.
local function run(listener, sctx, deadline, done)
  while socket.gettime() < deadline do
    -- the listener: accept everything that is waiting
    local rset, wset = { listener }, {}
    local dirty = false
    local live = {}
    for _, ep in ipairs(endpoints) do
      if not ep.dead then
        live[#live + 1] = ep
        if ep.conn:pending_plaintext() > 0 then dirty = true end
        if ep.want == "want_write" then wset[#wset + 1] = ep.tcp else rset[#rset + 1] = ep.tcp end
      end
    end
    endpoints = live
    if done() then return true end
    local left = deadline - socket.gettime()
    local r, w = socket.select(rset, wset, dirty and 0 or math.min(left, 0.5))
    for _ = 1, 100 do
      if not r[listener] then break end
      local tcp = listener:accept()
      if not tcp then break end
      server_endpoint(tcp, sctx)
      r[listener] = nil
    end
    for _, ep in ipairs(endpoints) do
      if not ep.dead and (r[ep.tcp] or w[ep.tcp] or not ep.handshaken or
                          ep.conn:pending_plaintext() > 0 or #ep.outbuf > 0) then
        step(ep)
      end
    end
  end
  return done()
end

-- ---------------------------------------------------------------------------
-- Self-test: a throwaway PKI, the server and N bots in this one loop.

local function shq(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end

local function sh(cmd)
  local r = os.execute(cmd)
  return r == true or r == 0
end

local function make_pki(dir, bots)
  local lines = {
    "set -e", "cd " .. shq(dir),
    "key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out \"$1\" 2>/dev/null; }",
    "key ca.key",
    "openssl req -x509 -new -key ca.key -subj '/CN=Game CA' -days 2 -out ca.pem " ..
      "-addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign",
    "key other.key",
    "openssl req -x509 -new -key other.key -subj '/CN=Other CA' -days 2 -out other.pem " ..
      "-addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign",
    "issue() { key \"$1.key\"; openssl req -new -key \"$1.key\" -subj \"/CN=$2\" -out \"$1.csr\";" ..
      " printf '%s\\n' \"$4\" > \"$1.ext\";" ..
      " openssl x509 -req -in \"$1.csr\" -CA \"$3.pem\" -CAkey \"$3.key\" -CAcreateserial" ..
      " -days 2 -extfile \"$1.ext\" -out \"$1.pem\" 2>/dev/null; }",
    "issue server localhost ca 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth'",
  }
  for i = 1, bots do
    lines[#lines + 1] = ("issue bot%d player%d ca 'extendedKeyUsage=clientAuth'"):format(i, i)
  end
  lines[#lines + 1] = "issue intruder intruder other 'extendedKeyUsage=clientAuth'"
  local script = dir .. "/make.sh"
  local f = assert(io.open(script, "w"))
  f:write(table.concat(lines, "\n"), "\n")
  f:close()
  return sh("sh " .. shq(script) .. " >/dev/null")
end

local function bot_endpoint(port, dir, name, rounds, report)
  local ctx = assert(sslctx.new({
    side = "client", ca_file = dir .. "/ca.pem",
    certificate = dir .. "/" .. name .. ".pem", key = dir .. "/" .. name .. ".key",
  }))
  local tcp = socket.tcp()
  tcp:settimeout(2)
  assert(tcp:connect("127.0.0.1", port))   -- loopback: completes from the backlog
  local ep = add_endpoint(tcp, ctx:new_connection({ socket = tcp, hostname = "localhost" }), "bot")
  ep.bot = { name = name, sent = 0, seen = 0, rounds = rounds }
  ep.on_line = function(e, line)
    local b = e.bot
    if line:match("^WELCOME ") then
      b.me = line:match("^WELCOME (.+)$")
      b.sent = 1
      send_line(e, ("MOVE %d %d"):format(1, b.sent))
    elseif line:match("^POS ") then
      local who = line:match("^POS (%S+)")
      if who == b.me then
        b.seen = b.seen + 1
        if b.sent < b.rounds then
          b.sent = b.sent + 1
          send_line(e, ("MOVE %d %d"):format(1, b.sent))
        elseif b.seen >= b.rounds and not b.quit then
          b.quit = true
          send_line(e, "QUIT")
        end
      end
    elseif line == "BYE" then
      b.bye = true
    end
  end
  ep.on_close = function(e, why) report(e, why) end
  return ep
end

local function self_test(o)
  local p = assert(io.popen("mktemp -d /tmp/game_server.XXXXXX"))
  local dir = p:read("*l")
  p:close()
  assert(dir and dir ~= "", "mktemp failed")
  local ok, err = pcall(function()
    assert(make_pki(dir, o.bots), "making the certificates failed (openssl CLI)")
    local sctx = assert(sslctx.new({
      side = "server", certificate = dir .. "/server.pem", key = dir .. "/server.key",
      ca_file = dir .. "/ca.pem", verify = "require",
    }))
    local listener = assert(socket.bind("127.0.0.1", 0))
    listener:settimeout(0)
    local _, port = listener:getsockname()
    log("self-test: server on 127.0.0.1:", tostring(port), ", ", tostring(o.bots), " bots, ",
        tostring(o.rounds), " rounds")
    local finished, good, intruder = 0, 0, nil
    local function report(e, why)
      finished = finished + 1
      if e.bot.name == "intruder" then
        intruder = why
      elseif e.bot.bye and e.bot.seen >= e.bot.rounds then
        good = good + 1
      else
        log("bot ", e.bot.name, " ended early: ", tostring(why))
      end
    end
    for i = 1, o.bots do bot_endpoint(port, dir, "bot" .. i, o.rounds, report) end
    bot_endpoint(port, dir, "intruder", o.rounds, report)
    local deadline = socket.gettime() + o.deadline
    local done = run(listener, sctx, deadline, function()
      return finished >= o.bots + 1 and next(players) == nil and stats.refused >= 1
    end)
    listener:close()
    for _, ep in ipairs(endpoints) do drop(ep, "shutdown") end
    log(("self-test: %d/%d bots played %d moves; %d joined, %d quit; intruder refused: %s"):format(
      good, o.bots, stats.moves, stats.joined, stats.quit, tostring(intruder)))
    local pass = done and good == o.bots and stats.moves == o.bots * o.rounds and
                 stats.refused >= 1 and intruder ~= nil
    log(pass and "self-test: OK" or "self-test: FAILED")
    return pass
  end)
  sh("rm -rf " .. shq(dir))
  if not ok then
    log("self-test: error: ", tostring(err))
    return false
  end
  return err
end

-- ---------------------------------------------------------------------------
-- command line

local o = { bots = 8, rounds = 5, deadline = 20, host = "127.0.0.1" }
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
  if a == "--self-test" then o.self_test = true
  elseif a == "--bots" then o.bots = number()
  elseif a == "--rounds" then o.rounds = number()
  elseif a == "--deadline" then o.deadline = number()
  elseif a == "--port" then o.port = number()
  elseif a == "--host" then o.host = value()
  elseif a == "--cert" then o.cert = value()
  elseif a == "--key" then o.key = value()
  elseif a == "--cafile" then o.cafile = value()
  elseif a == "--max-seconds" then o.max_seconds = number()
  elseif a == "-h" or a == "--help" then usage()
  else usage("unknown argument " .. a) end
  i = i + 1
end

if o.self_test then
  os.exit(self_test(o) and 0 or 1)
end

if not (o.port and o.cert and o.key and o.cafile) then usage("--port, --cert, --key and --cafile are needed") end
local sctx = assert(sslctx.new({ side = "server", certificate = o.cert, key = o.key,
                                 ca_file = o.cafile, verify = "require" }))
local listener = assert(socket.bind(o.host, o.port))
listener:settimeout(0)
local _, port = listener:getsockname()
log("listening on ", o.host, ":", tostring(port))
run(listener, sctx, socket.gettime() + (o.max_seconds or math.huge), function() return false end)
listener:close()
