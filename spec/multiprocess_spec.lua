-- multiprocess_spec.lua: sessions across processes (doc/reference.md, "Sessions across
-- processes"; doc/scaling.md), against examples/prefork_server.lua: worker processes on one
-- loopback port (SO_REUSEPORT), one client reconnecting through sslctx.socket, which offers
-- its last session each time.  Every server runs under `timeout` and --duration, and is
-- stopped by PID; every loop is bounded in count and time.
local helper = require "helper"
local peers = require "support.peers"
local socket = require "socket"
local sslsocket = require "sslctx.socket"

local q = helper.sh_quote

local RECONNECTS = 400
local WORKERS = 4

local function key_file(dir, name, bytes)
  local path = dir .. "/" .. name
  helper.write_file(path, bytes)
  return path
end

local function random_bytes(n)
  local out = helper.run("openssl rand -hex " .. n)
  local hex = assert(out:match("^(%x+)"), out)
  return (hex:gsub("%x%x", function(h) return string.char(tonumber(h, 16)) end))
end

-- Starts the example with `args`; waits until every worker listens.  -> proc (port, pid).
local function start(args, workers)
  local cmd = ("%s %s %s --workers %d --timeout 5 --duration 150 %s"):format(
    peers.lua_env(), peers.lua(), q(peers.root() .. "/examples/prefork_server.lua"),
    workers or WORKERS, args)
  local proc = peers.spawn(cmd, { name = "prefork", lifetime = 170 })
  local line, log = peers.wait_line(proc, "(listening on 127%.0%.0%.1:%d+ .-pid %d+%))", 20)
  assert(line, "prefork_server did not start:\n" .. tostring(log))
  proc.port = tonumber(line:match(":(%d+)"))
  proc.pid = tonumber(line:match("pid (%d+)%)$"))   -- the parent itself, not `timeout`
  assert.equal("loopback", peers.listening(proc.port))
  return proc
end

local function client_ctx(version, with_cert)
  local opts = { min_version = version, max_version = version }
  if with_cert then
    opts.certificate = helper.pki("client-chain.pem")
    opts.key = helper.pki("client.key")
  end
  return helper.client_ctx(opts)
end

-- One connection: reads the greeting, checks that both ends agree on resumption.
-- opts: session (offered instead of the adapter's cache), keep (return the stream open).
-- -> resumed (boolean), worker number, stream
local function visit(port, cctx, opts)
  opts = opts or {}
  local s = assert(sslsocket.connect("127.0.0.1", port, {
    ctx = cctx, hostname = "localhost", timeout = 5,
    session = opts.session, reuse_session = opts.session == nil }))
  local line = assert(s:receive("*l"))
  local worker, said = line:match("^hello from worker (%d+) resumed=(%a+)")
  assert(worker, line)
  local resumed = s:session_reused()
  assert.equal(said == "true", resumed)   -- the server saw what the client saw
  if opts.keep then return resumed, tonumber(worker), s end
  local sess = s:session()
  s:send("bye\n")
  s:close()
  return resumed, tonumber(worker), sess
end

-- RECONNECTS connections in a row (bounded in time).  -> resumed count, per-worker counts
local function reconnect(port, cctx)
  local resumed, per_worker = 0, {}
  local deadline = socket.gettime() + 120
  for n = 1, RECONNECTS do
    assert(socket.gettime() < deadline, "too slow: " .. n .. " connections in 120 s")
    local r, w = visit(port, cctx)
    if r then resumed = resumed + 1 end
    per_worker[w] = (per_worker[w] or 0) + 1
  end
  return resumed, per_worker
end

-- The kernel spread the connections over every worker (none got less than a tenth).
local function assert_spread(per_worker)
  for w = 1, WORKERS do
    assert((per_worker[w] or 0) >= RECONNECTS / 10,
           ("worker %d served %d of %d"):format(w, per_worker[w] or 0, RECONNECTS))
  end
end

describe("examples/prefork_server.lua: sessions across 4 worker processes", function()
  local dir, keyfile, storekey
  setup(function()
    dir = peers.tmpdir()
    keyfile = key_file(dir, "ticket.key", random_bytes(80))
    storekey = key_file(dir, "store.key", random_bytes(32))
  end)
  teardown(function() peers.cleanup() end)

  -- Each variant: the server's arguments with and without the shared secret.
  local VARIANTS = {
    { name = "TLS 1.3 tickets", version = "tls1.3",
      shared = function() return "--tls1.3 --ticket-key " .. q(keyfile) end,
      own = function() return "--tls1.3" end },
    { name = "TLS 1.2 session ids and the session store", version = "tls1.2",
      shared = function(store)
        return ("--tls1.2 --no-tickets --session-store %s --store-key %s"):format(q(store), q(storekey))
      end,
      own = function() return "--tls1.2 --no-tickets" end },
  }

  for _, v in ipairs(VARIANTS) do
    describe(v.name, function()
      it(("shared: >= 99 %% of %d reconnections resumed, whichever worker"):format(RECONNECTS), function()
        local store = peers.tmpdir()
        local proc = start(v.shared(store))
        finally(function() peers.stop(proc) end)
        local resumed, per_worker = reconnect(proc.port, client_ctx(v.version))
        assert_spread(per_worker)
        assert(resumed >= RECONNECTS * 0.99, ("%d of %d resumed"):format(resumed, RECONNECTS))
      end)

      it("not shared (the control): about one in four resumed", function()
        local proc = start(v.own())
        finally(function() peers.stop(proc) end)
        local resumed, per_worker = reconnect(proc.port, client_ctx(v.version))
        assert_spread(per_worker)
        assert(resumed >= RECONNECTS * 0.10 and resumed <= RECONNECTS * 0.50,
               ("%d of %d resumed, about a quarter expected"):format(resumed, RECONNECTS))
      end)
    end)
  end

  it("a store whose entries are replaced by junk or swapped: full handshakes, logged, and serving on", function()
    local store = peers.tmpdir()
    local proc = start(VARIANTS[2].shared(store))
    finally(function() peers.stop(proc) end)
    local cctx = client_ctx("tls1.2")
    local _, _, sess = visit(proc.port, cctx, {})
    local r2, _, sess2 = visit(proc.port, client_ctx("tls1.2"), {})   -- another client: another entry
    assert.is_false(r2)
    assert.is_true((visit(proc.port, cctx, { session = sess })))
    local files = {}
    for name in helper.run("ls " .. q(store)):gmatch("%S+") do files[#files + 1] = store .. "/" .. name end
    assert.equal(2, #files)
    -- swapped: each entry under the other's id (sealed with its id bound in: neither opens)
    local a, b = helper.read_file(files[1]), helper.read_file(files[2])
    helper.write_file(files[1], b)
    helper.write_file(files[2], a)
    assert.is_false((visit(proc.port, cctx, { session = sess })))
    assert.is_false((visit(proc.port, cctx, { session = sess2 })))
    -- junk under a far expiry, for every entry there is now
    for name in helper.run("ls " .. q(store)):gmatch("%S+") do
      helper.write_file(store .. "/" .. name, "4000000000\nSXS1" .. string.rep("\0", 96))
    end
    for _ = 1, 8 do
      assert.is_false((visit(proc.port, cctx, { session = sess })))
    end
    -- the workers still serve, and resume what they store from now on
    local _, _, fresh = visit(proc.port, cctx, {})
    for _ = 1, 8 do assert.is_true((visit(proc.port, cctx, { session = fresh }))) end
    local log = peers.log(proc)
    assert.truthy(log:find("session store get", 1, true), log)
    assert.is_nil(log:find(": error: ", 1, true), log)
  end)

  describe("policy binding across processes", function()
    -- lax: no client certificate asked; strict: one required.  Same keys, same store.
    local KINDS = {
      { "TLS 1.3 tickets", "tls1.3", function() return "--tls1.3 --ticket-key " .. q(keyfile) end },
      { "TLS 1.2 tickets", "tls1.2", function() return "--tls1.2 --ticket-key " .. q(keyfile) end },
      { "TLS 1.2 session store", "tls1.2", function(store)
          return ("--tls1.2 --no-tickets --session-store %s --store-key %s"):format(q(store), q(storekey))
        end },
    }
    for _, k in ipairs(KINDS) do
      it(k[1] .. ": equal policies resume each other's sessions, different ones never", function()
        local store = peers.tmpdir()
        local lax = start(k[3](store), 2)
        finally(function() peers.stop(lax) end)
        local lax2 = start(k[3](store), 2)
        finally(function() peers.stop(lax2) end)
        local strict = start(k[3](store) .. " --verify require", 2)
        finally(function() peers.stop(strict) end)
        local cctx = client_ctx(k[2], true)
        local _, _, from_lax = visit(lax.port, cctx, {})
        local _, _, from_strict = visit(strict.port, cctx, {})
        assert.is_not_nil(from_lax)
        assert.is_not_nil(from_strict)
        for _ = 1, 6 do
          assert.is_true((visit(lax2.port, cctx, { session = from_lax })))        -- equal policy
          assert.is_false((visit(strict.port, cctx, { session = from_lax })))     -- laxer session
          assert.is_false((visit(lax.port, cctx, { session = from_strict })))     -- stricter one
          assert.is_false((visit(lax2.port, cctx, { session = from_strict })))
          assert.is_true((visit(strict.port, cctx, { session = from_strict })))
        end
      end)
    end
  end)

  it("rotation while serving (SIGHUP): add the new key second, promote it, retire the old one", function()
    local first, second = dir .. "/first.key", dir .. "/second.key"
    local k_old, k_new, k_next = random_bytes(80), random_bytes(80), random_bytes(80)
    helper.write_file(first, k_old)
    helper.write_file(second, k_next)
    local proc = start(("--tls1.3 --ticket-key %s --ticket-key %s"):format(q(first), q(second)))
    finally(function() peers.stop(proc) end)
    local cctx = client_ctx("tls1.3")
    local _, _, old = visit(proc.port, cctx, {})
    local reloads = 0
    local function reload(a, b)
      helper.write_file(first, a)
      helper.write_file(second, b)
      os.execute("kill -HUP " .. proc.pid)
      reloads = reloads + 1
      local deadline = socket.gettime() + 10
      repeat
        local _, count = peers.log(proc):gsub("ticket keys reloaded %(2 keys%)", "")
        if count >= WORKERS * reloads then return end
        socket.sleep(0.05)
      until socket.gettime() > deadline
      error("the workers did not reload:\n" .. peers.log(proc))
    end
    reload(k_old, k_new)            -- 1. the new key, second: decrypts only
    for _ = 1, 8 do assert.is_true((visit(proc.port, cctx, { session = old }))) end
    reload(k_new, k_old)            -- 2. promoted: new tickets under it, the old key decrypts
    local r, _, renewed = visit(proc.port, cctx, { session = old })
    assert.is_true(r)
    reload(k_new, k_next)           -- 3. the old key retired
    for _ = 1, 8 do
      assert.is_false((visit(proc.port, cctx, { session = old })))
      assert.is_true((visit(proc.port, cctx, { session = renewed })))
    end
  end)

  it("refuses a ticket key file of the wrong size, without showing it", function()
    local bad = key_file(dir, "short.key", string.rep("S", 79))
    local out, code = peers.run(("%s %s %s --ticket-key %s"):format(peers.lua_env(), peers.lua(),
      q(peers.root() .. "/examples/prefork_server.lua"), q(bad)))
    assert.equal(64, code, out)
    assert.truthy(out:find("must be 80 bytes, has 79", 1, true), out)
    assert.truthy(out:find("openssl rand 80", 1, true), out)
    assert.is_nil(out:find("SSSS", 1, true), out)
  end)

  it("SIGTERM to the parent: a connection in progress ends normally, then every worker exits", function()
    local proc = start("--ticket-key " .. q(keyfile))
    finally(function() peers.stop(proc) end)
    local _, _, s = visit(proc.port, client_ctx("tls1.3"), { keep = true })
    os.execute("kill -TERM " .. proc.pid)
    assert(peers.wait_line(proc, "(stopping %(sigterm%))", 10), peers.log(proc))
    assert(s:send("after the signal\n"))
    assert.equal("after the signal", s:receive("*l"))
    s:send("bye\n")
    s:close()
    assert.is_true(peers.wait_exit(proc, 15), peers.log(proc))
    local log = peers.log(proc)
    for w = 1, WORKERS do
      assert.truthy(log:find(("worker %d: stopped after %%d+ connections"):format(w)), log)
    end
    assert.truthy(log:find("\nstopped\n", 1, true), log)
    assert.is_nil(peers.listening(proc.port))
  end)

  it("the parent killed outright: the workers notice and exit", function()
    local proc = start("")
    finally(function() peers.stop(proc) end)
    os.execute("kill -KILL " .. proc.pid)
    local deadline = socket.gettime() + 10
    while peers.listening(proc.port) and socket.gettime() < deadline do socket.sleep(0.05) end
    assert.is_nil(peers.listening(proc.port))
  end)
end)
