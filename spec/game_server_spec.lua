-- spec/game_server_spec.lua: examples/game_server.lua (doc/game-server.md) as a process on
-- 127.0.0.1: 1,000 mutual-TLS players at once from bench/tlsload.c (a C load generator, not
-- the module), then the hostile players: an over-long line, a player who never reads, a
-- second connection under a CN already playing, a certificate from another CA.

local helper = require "helper"
local peers = require "support.peers"
local socket = require "socket"
local sslsocket = require "sslctx.socket"

local q = helper.sh_quote
local have_luv = pcall(require, "luv")
local describe_luv = have_luv and describe or pending

local function client(port, cert)
  local ctx = helper.client_ctx(cert and {
    certificate = helper.pki(cert .. "-chain.pem"), key = helper.pki(cert .. ".key") } or nil)
  return sslsocket.connect("127.0.0.1", port, { ctx = ctx, hostname = "localhost", timeout = 5 })
end

-- Starts the server (descriptor limit raised for the thousand); -> proc, port.
local function start(cafile, seconds)
  local cmd = ("sh -c %s"):format(q(("ulimit -n 4096 2>/dev/null; exec %s %s --port 0 --cert %s --key %s --cafile %s "
    .. "--max-seconds %d"):format(
    peers.lua(), q(peers.root() .. "/examples/game_server.lua"), q(peers.pki("server-chain.pem")),
    q(peers.pki("server.key")), q(cafile), seconds or 60)))
  local proc = peers.spawn(cmd, { name = "game_server", lifetime = (seconds or 60) + 20 })
  local port = tonumber((peers.wait_line(proc, "listening on 127%.0%.0%.1:(%d+)\n", 10)))
  assert(port, peers.log(proc))
  return proc, port
end

-- Waits (bounded) until the server's log contains `text`.
local function log_has(proc, text, secs)
  for _ = 1, (secs or 5) * 20 do
    if peers.log(proc):find(text, 1, true) then return true end
    socket.sleep(0.05)
  end
  return false
end

describe_luv("examples/game_server.lua", function()
  teardown(function() peers.cleanup() end)

  it("holds 1,000 mutual-TLS players at once, each welcomed by its own CN (bench/tlsload.c)", function()
    local dir = peers.tmpdir()
    local tlsload = dir .. "/tlsload"
    local out, code = peers.run(("cc -std=c99 -O2 -o %s %s $(pkg-config --cflags --libs openssl)"):format(
      q(tlsload), q(peers.root() .. "/bench/tlsload.c")), { timeout = 60 })
    assert.equal(0, code, out)
    -- the players' CA: tlsload mints one certificate per player under it
    out, code = peers.run(("sh -c %s"):format(q(("cd %s && openssl genpkey -algorithm EC " ..
      "-pkeyopt ec_paramgen_curve:P-256 -out ca.key 2>/dev/null && openssl req -x509 -new -key ca.key " ..
      "-subj /CN=players -days 2 -addext basicConstraints=critical,CA:TRUE " ..
      "-addext keyUsage=critical,keyCertSign -out ca.pem"):format(q(dir)))), { timeout = 30 })
    assert.equal(0, code, out)
    local proc, port = start(dir .. "/ca.pem", 90)
    finally(function() peers.stop(proc) end)
    out, code = peers.run(("sh -c %s"):format(q(("ulimit -n 4096 2>/dev/null; exec %s --port %d --cafile %s " ..
      "--issuer-cert %s --issuer-key %s --clients 1000 --concurrency 100 --seconds 60 --hold 1"):format(
      q(tlsload), port, q(peers.pki("ca.pem")), q(dir .. "/ca.pem"), q(dir .. "/ca.key")))), { timeout = 90 })
    assert.truthy(out:find("RESULT clients=1000 ok=1000 failed=0", 1, true), out)
    assert.equal(0, code, out)
    local log = peers.log(proc)
    local joined, names = 0, {}
    for name in log:gmatch("joined: (player%d+)\n") do
      joined = joined + 1
      names[name] = true
    end
    assert.equal(1000, joined)
    assert.is_true(names.player1 and names.player1000)
    assert.is_true(log_has(proc, "left: player1000 ("), log:sub(-2000))
    -- still serving after the thousand left; the test PKI's client is not from the players' CA
    out = peers.run(("%s --port %d --cafile %s --issuer-cert %s --issuer-key %s --clients 5 --seconds 20"):format(
      q(tlsload), port, q(peers.pki("ca.pem")), q(dir .. "/ca.pem"), q(dir .. "/ca.key")), { timeout = 30 })
    assert.truthy(out:find("RESULT clients=5 ok=5 failed=0", 1, true), out)
    local a = assert(client(port, "client"))
    local line, err = a:receive("*l")
    assert.is_nil(line)
    assert.truthy(err:find("unknown ca", 1, true), err)
    a:close()
  end)

  describe("hostile players", function()
    local proc, port
    setup(function() proc, port = start(peers.pki("ca.pem"), 60) end)
    teardown(function() peers.stop(proc) end)

    it("a line over 1 KiB drops the player", function()
      local a = assert(client(port, "client"))
      assert.equal("WELCOME Test Client", a:receive("*l"))
      a:send("MOVE 1 2\n")
      assert.equal("POS Test Client 1 2", a:receive("*l"))
      a:send(("M"):rep(1025))          -- no newline yet: already too long
      local line, err = a:receive("*l")
      assert.is_nil(line)
      assert.truthy(err == "closed" or err:find("eof", 1, true), err)
      assert.is_true(log_has(proc, "left: Test Client (line over 1 KiB)"), peers.log(proc))
      a:close()
      -- exactly 1 KiB is a line (an unknown command)
      local b = assert(client(port, "client"))
      assert.equal("WELCOME Test Client", b:receive("*l"))
      b:send(("x"):rep(1024) .. "\n")
      assert.equal("ERROR unknown command", b:receive("*l"))
      b:close()
    end)

    it("a second connection with a CN already playing replaces the first", function()
      local a = assert(client(port, "client"))
      assert.equal("WELCOME Test Client", a:receive("*l"))
      local b = assert(client(port, "client"))
      assert.equal("WELCOME Test Client", b:receive("*l"))
      local line, err = a:receive("*l")
      assert.is_nil(line)
      assert.equal("closed", err)       -- closed with close_notify
      assert.is_true(log_has(proc, "left: Test Client (replaced by a new connection)"))
      local c = assert(client(port, "client2"))
      assert.equal("WELCOME Second Client", c:receive("*l"))
      c:send("MOVE 5 -6\n")
      assert.equal("POS Second Client 5 -6", c:receive("*l"))
      assert.equal("POS Second Client 5 -6", b:receive("*l"))   -- one Test Client, the new one
      b:send("QUIT\n")
      assert.equal("BYE", b:receive("*l"))
      b:close()
      c:close()
      a:close()
    end)

    it("a player who never reads is dropped once its unsent output passes 1 MiB", function()
      local a = assert(client(port, "client"))
      assert.equal("WELCOME Test Client", a:receive("*l"))
      -- every MOVE comes back as a POS line to the sender: ~25 bytes queued per 9 sent
      local batch = ("MOVE 123456 654321\n"):rep(2000)
      local dropped = false
      for _ = 1, 400 do                 -- at most 800,000 moves (~20 MiB of POS)
        local ok = a:send(batch)
        if not ok or peers.log(proc):find("left: Test Client (unsent output over 1 MiB)", 1, true) then
          dropped = true
          break
        end
      end
      assert.is_true(dropped or log_has(proc, "left: Test Client (unsent output over 1 MiB)"), peers.log(proc))
      assert.truthy(peers.log(proc):find("left: Test Client (unsent output over 1 MiB)", 1, true))
      a:close()
      -- the server still serves
      local b = assert(client(port, "client2"))
      assert.equal("WELCOME Second Client", b:receive("*l"))
      b:close()
    end)

    it("a certificate from another CA, or none, gets no WELCOME", function()
      for _, cert in ipairs({ "client-untrusted", false }) do
        local a = assert(client(port, cert or nil))
        local line, err = a:receive("*l")
        assert.is_nil(line, cert)
        assert.truthy(err:find("alert", 1, true), err)
        a:close()
      end
      assert.is_true(log_has(proc, "refused a connection: verify: "), peers.log(proc))
    end)
  end)

  it("exits 0 by itself after --max-seconds", function()
    local out, code = peers.run(("%s %s --port 0 --cert %s --key %s --cafile %s --max-seconds 1"):format(
      peers.lua(), q(peers.root() .. "/examples/game_server.lua"), q(peers.pki("server-chain.pem")),
      q(peers.pki("server.key")), q(peers.pki("ca.pem"))), { timeout = 15 })
    assert.equal(0, code, out)
    assert.truthy(out:match("^listening on 127%.0%.0%.1:%d+\n"), out)
  end)
end)
