-- spec/socket_deadline_spec.lua: sslctx.socket's overall handshake deadline
-- (opts.handshake_timeout, doc/reference.md) on both sides, against a peer that trickles its
-- handshake one byte every 20 ms, and "closed" only for a received close_notify.
--
-- The trickling peer is a child interpreter (the stream under test blocks in its own
-- process); it prints its port, or reads the port to connect to from its arguments.  Every
-- child is bounded by `timeout` and by its own loop limits.
local helper = require "helper"
local socket = require "socket"
local sslsocket = require "sslctx.socket"

local gettime = socket.gettime
local q = helper.sh_quote

local function interpreter()
  return (jit and "luajit") or ("lua" .. _VERSION:match("%d+%.%d+"))
end

local function abs_pki(name)
  local path = helper.pki(name)
  if path:sub(1, 1) ~= "/" then path = helper.run("pwd"):match("[^\n]+") .. "/" .. path end
  return path
end

-- Starts `script` (Lua source) in the background with `args`; -> the popen handle and the
-- script's file (removed by finish).
local function spawn(script, args)
  local f = os.tmpname()
  helper.write_file(f, script)
  local p = assert(io.popen("timeout 15 " .. interpreter() .. " " .. q(f) .. " " ..
                            table.concat(args or {}, " ") .. " 2>&1", "r"))
  return p, f
end

local function finish(p, f)
  local out = p:read("*a")
  p:close()
  os.remove(f)
  return out
end

-- The trickle: what `conn` (a memory connection) has to send goes out one byte every 20 ms,
-- while what arrives is fed in; stops when the peer closes, or after 6 s.
local TRICKLE = [[
local function trickle(conn, c)
  c:settimeout(0)
  conn:handshake()   -- a client's first flight (nothing for a server)
  local out, sent, start = conn:drain(), 0, socket.gettime()
  while socket.gettime() - start < 6 do
    local data, err, partial = c:receive(4096)
    data = data or partial
    if data and #data > 0 then
      conn:feed(data)
      conn:handshake()
      out = out .. conn:drain()
    end
    if err == "closed" then break end
    if #out > 0 then
      if not c:send(out:sub(1, 1)) then break end
      out, sent = out:sub(2), sent + 1
    end
    socket.sleep(0.02)
  end
  io.write("sent=", sent, " left=", #out, "\n")
  c:close()
end
]]

local TRICKLING_CLIENT = [[
local sslctx = require "sslctx"
local socket = require "socket"
]] .. TRICKLE .. [[
local ctx = assert(sslctx.new{ side = "client", ca_file = arg[2] })
local c = assert(socket.connect("127.0.0.1", tonumber(arg[1])))
trickle(ctx:new_connection{ hostname = "localhost" }, c)
]]

local TRICKLING_SERVER = [[
local sslctx = require "sslctx"
local socket = require "socket"
]] .. TRICKLE .. [[
local ctx = assert(sslctx.new{ side = "server", certificate = arg[1], key = arg[2] })
local l = assert(socket.bind("127.0.0.1", 0))
print("port=" .. select(2, l:getsockname()))
io.stdout:flush()
l:settimeout(10)
local c = assert(l:accept())
l:close()
trickle(ctx:new_connection(), c)
]]

describe("sslctx.socket handshake deadline", function()
  it("has a documented default of 30 s", function()
    assert.equal(30, sslsocket.HANDSHAKE_TIMEOUT)
  end)

  it("server side: a client trickling its handshake is cut at the deadline, for good", function()
    local l = assert(socket.bind("127.0.0.1", 0))
    local _, port = l:getsockname()
    local p, f = spawn(TRICKLING_CLIENT, { port, q(abs_pki("ca.pem")) })
    l:settimeout(10)
    local c = l:accept()
    l:close()
    assert(c, "the trickling client did not connect")
    local s = assert(sslsocket.wrap(c, helper.server_ctx(), { timeout = 2, handshake_timeout = 0.5 }))
    local t0 = gettime()
    local ok, msg, kind = s:dohandshake()
    local took = gettime() - t0
    assert.is_nil(ok)
    assert.equal("timeout", kind)
    assert.truthy(msg:find("within 0.5 s", 1, true), msg)
    assert.truthy(took >= 0.45 and took < 1.5, "took " .. took .. " s")
    -- final: asking again fails at once, the same way (an event loop cannot keep it alive)
    local t1 = gettime()
    local ok2, msg2, kind2 = s:dohandshake()
    assert.is_nil(ok2)
    assert.equal(msg, msg2)
    assert.equal("timeout", kind2)
    -- (under check-gc one forced collection of the suite's heap may take longer than 0.1 s;
    -- below the 0.5 s deadline it still tells "at once" from "waited again")
    assert.truthy(gettime() - t1 < (helper.forced_gc and 0.45 or 0.1), "took " .. (gettime() - t1) .. " s")
    local n, err, _, k = s:send("x")
    assert.is_nil(n)
    assert.equal(msg, err)
    assert.equal("timeout", k)
    s:close()
    local out = finish(p, f)
    local sent = tonumber(out:match("sent=(%d+)"))
    assert.truthy(sent and sent >= 10, "the trickle did not run: " .. out)
  end)

  it("server side under settimeout(0) (copas): would-block 'timeout's, then the final one", function()
    local l = assert(socket.bind("127.0.0.1", 0))
    local _, port = l:getsockname()
    local p, f = spawn(TRICKLING_CLIENT, { port, q(abs_pki("ca.pem")) })
    l:settimeout(10)
    local c = l:accept()
    l:close()
    assert(c, "the trickling client did not connect")
    local s = assert(sslsocket.wrap(c, helper.server_ctx(), { handshake_timeout = 0.4 }))
    s:settimeout(0)
    local t0, would_block, ok, msg, kind = gettime(), 0, nil, nil, nil
    while gettime() - t0 < 3 do
      ok, msg, kind = s:dohandshake()
      -- a would-block is LuaSec's "wantread"/"wantwrite" with kind "timeout" (copas' words)
      if ok or (msg ~= "wantread" and msg ~= "wantwrite") then break end
      would_block = would_block + 1
      socket.select({ s }, nil, 0.1)
    end
    assert.is_nil(ok)
    assert.truthy(would_block >= 2, "never waited: " .. would_block)
    assert.equal("timeout", kind)
    assert.truthy(msg:find("^timeout: the handshake did not finish within 0.4 s"), msg)
    assert.truthy(gettime() - t0 < 1.5)
    s:close()
    finish(p, f)
  end)

  it("client side: connect() gives up on a trickling server at the deadline", function()
    local p, f = spawn(TRICKLING_SERVER, { q(abs_pki("server-chain.pem")), q(abs_pki("server.key")) })
    local port = tonumber(p:read("*l"):match("port=(%d+)"))
    local t0 = gettime()
    local s, msg, kind = sslsocket.connect("127.0.0.1", port, {
      ctx = helper.client_ctx(), hostname = "localhost", timeout = 2, handshake_timeout = 0.5,
      reuse_session = false,
    })
    local took = gettime() - t0
    assert.is_nil(s)
    assert.equal("timeout", kind)
    assert.truthy(msg:find("within 0.5 s", 1, true), msg)
    assert.truthy(took >= 0.45 and took < 1.5, "took " .. took .. " s")
    local out = finish(p, f)
    assert.truthy(tonumber(out:match("sent=(%d+)")) >= 10, out)
  end)

  it("uses the module default when opts say nothing, and none with handshake_timeout = false", function()
    local saved = sslsocket.HANDSHAKE_TIMEOUT
    finally(function() sslsocket.HANDSHAKE_TIMEOUT = saved end)
    sslsocket.HANDSHAKE_TIMEOUT = 0.3
    -- a client that connects and never sends a byte
    local l = assert(socket.bind("127.0.0.1", 0))
    local _, port = l:getsockname()
    local silent = socket.tcp()
    silent:settimeout(5)
    assert(silent:connect("127.0.0.1", port))
    l:settimeout(5)
    local c = assert(l:accept())
    local s = assert(sslsocket.wrap(c, helper.server_ctx(), { timeout = 5 }))
    local t0 = gettime()
    local ok, msg, kind = s:dohandshake()
    assert.is_nil(ok)
    assert.equal("timeout", kind)
    assert.truthy(msg:find("within 0.3 s", 1, true), msg)
    assert.truthy(gettime() - t0 < 1.5)
    s:close()
    -- false: only the per-wait timeout, a would-block the caller may retry
    local silent2 = socket.tcp()
    silent2:settimeout(5)
    assert(silent2:connect("127.0.0.1", port))
    local c2 = assert(l:accept())
    l:close()
    local s2 = assert(sslsocket.wrap(c2, helper.server_ctx(), { timeout = 0.2, handshake_timeout = false }))
    for _ = 1, 3 do
      local ok2, msg2, kind2 = s2:dohandshake()
      assert.is_nil(ok2)
      assert.truthy(msg2 == "wantread" or msg2 == "wantwrite", msg2)
      assert.equal("timeout", kind2)
    end
    s2:close()
    silent:close()
    silent2:close()
  end)

  it("raises for a bad handshake_timeout, naming the caller's argument", function()
    local a = socket.tcp()
    for _, bad in ipairs({ 0, -1, "5", true }) do
      local msg = helper.raises(sslsocket.wrap, a, helper.server_ctx(), { handshake_timeout = bad })
      assert.truthy(msg:find("bad argument #3 to 'wrap' (option 'handshake_timeout'", 1, true), msg)
    end
    local msg = helper.raises(sslsocket.connect, "127.0.0.1", 1, { handshake_timeout = -1 })
    assert.truthy(msg:find("bad argument #3 to 'connect' (option 'handshake_timeout'", 1, true), msg)
    a:close()
  end)
end)

describe("sslctx.socket truncation", function()
  -- A handshaken pair over 127.0.0.1 (settimeout(0), pumped here; bounded).
  local function handshaken_pair()
    local l = assert(socket.bind("127.0.0.1", 0))
    local _, port = l:getsockname()
    local ctcp = socket.tcp()
    ctcp:settimeout(5)
    assert(ctcp:connect("127.0.0.1", port))
    l:settimeout(5)
    local stcp = assert(l:accept())
    l:close()
    local c = assert(sslsocket.wrap(ctcp, helper.client_ctx(), { hostname = "localhost" }))
    local s = assert(sslsocket.wrap(stcp, helper.server_ctx()))
    c:settimeout(0)
    s:settimeout(0)
    local cdone, sdone
    for _ = 1, 200 do
      cdone = cdone or c:dohandshake()
      sdone = sdone or s:dohandshake()
      if cdone and sdone then break end
      socket.select({ c, s }, nil, 0.05)
    end
    assert(cdone and sdone, "handshake did not finish")
    c:settimeout(2)
    return c, s, stcp
  end

  it("a peer that resets after the handshake is never 'closed' on send (Broken pipe) or receive", function()
    local c, s, stcp = handshaken_pair()
    -- FIN first (this side goes to CLOSE_WAIT), then RST: the kernel reports EPIPE
    -- ("Broken pipe") to the next send, which LuaSocket itself would call "closed"
    stcp:shutdown("send")
    socket.sleep(0.05)
    stcp:setoption("linger", { on = true, timeout = 0 })
    stcp:close()
    socket.sleep(0.05)
    local got
    for _ = 1, 50 do   -- the first sends may still be taken by the kernel
      local n, err, _, kind = c:send(("x"):rep(1000))
      if not n then got = { err, kind } break end
      socket.sleep(0.01)
    end
    assert.truthy(got, "send never failed")
    assert.equal("Broken pipe", got[1])
    assert.equal("syscall", got[2])
    assert.are_not.equal("closed", got[2])
    local d, rerr, _, rkind = c:receive("*a")
    assert.is_nil(d)
    assert.are_not.equal("closed", rerr)
    assert.are_not.equal("closed", rkind)
    c:close()
    s:close()
  end)

  it("a peer that closes without close_notify gives 'eof' to receive, 'closed' only after close_notify", function()
    local c, s, stcp = handshaken_pair()
    s:send("partial")
    stcp:close()   -- FIN, no close_notify
    local d, err, partial, kind = c:receive("*a")
    assert.is_nil(d)
    assert.equal("eof", kind)
    assert.truthy(err:find("^eof: "), err)
    assert.equal("partial", partial)
    c:close()
    -- and a clean close: "closed", the end of "*a"
    local c2, s2 = handshaken_pair()
    s2:send("all")
    s2:close()
    assert.equal("all", c2:receive("*a"))
    local _, err2, _, kind2 = c2:receive("*l")
    assert.equal("closed", err2)
    assert.equal("closed", kind2)
    c2:close()
  end)
end)
