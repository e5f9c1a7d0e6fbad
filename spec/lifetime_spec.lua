-- lifetime_spec.lua: no Lua code can make the module free what it still uses, contexts keep
-- their live connections working, and the collector sees OpenSSL's memory (doc/reference.md,
-- "Lifetimes").
local sslctx = require "sslctx"
local helper = require "helper"
local support = require "support.callbacks"

local pki = helper.pki

-- The child's prologue: the module, the PKI, a pump, and close_through_close_meta(obj, co):
-- on 5.4 the real thing (a suspended coroutine whose <close> variable holds obj, closed with
-- coroutine.close); before 5.4 the same metamethod called directly.
local PROLOGUE = [=[
local sslctx = require "sslctx"
local PKI = os.getenv("SSLCTX_PKI_DIR") .. "/"
local function closed(x) return tostring(x):find("(closed)", 1, true) end
-- Drives the pair until both are done or one of them was closed under the handshake.
local function pump(c, s)
  local cr, sr
  for _ = 1, 30 do
    if closed(c) or closed(s) then break end
    if not (cr and (cr[1] or (cr[3] ~= "want_read" and cr[3] ~= "want_write"))) then cr = { c:handshake() } end
    if closed(c) then break end
    s:feed(c:drain())
    if not (sr and (sr[1] or (sr[3] ~= "want_read" and sr[3] ~= "want_write"))) then sr = { s:handshake() } end
    if closed(s) then break end
    c:feed(s:drain())
  end
  return cr or {}, sr or {}
end
local holder
local function hold(obj)
  if _VERSION == "Lua 5.4" then
    holder = coroutine.create(load("local obj = ...; local h <close> = obj; coroutine.yield()"))
    assert(coroutine.resume(holder, obj))
  else
    holder = obj
  end
end
local function close_holder()
  if _VERSION == "Lua 5.4" then
    assert(coroutine.close(holder))
  else
    debug.getmetatable(holder).__close(holder)
  end
end
]=]

local KINDS = {
  verify = [=[
    local sctx = assert(sslctx.new{ side = "server", certificate = PKI .. "server-chain.pem", key = PKI .. "server.key" })
    local cctx = assert(sslctx.new{ ca_file = PKI .. "ca.pem", verify_callback = function(ok, store)
      close_holder(); return nil end })
    local c = cctx:new_connection{ hostname = "localhost" }
    hold(c)
    local cr = pump(c, sctx:new_connection())
    OBJ, RESULT = c, cr
  ]=],
  servername = [=[
    local sctx = assert(sslctx.new{ side = "server", certificate = PKI .. "server-chain.pem", key = PKI .. "server.key" })
    sctx:set_servername_callback(function(name) close_holder(); return nil end)
    local cctx = assert(sslctx.new{ ca_file = PKI .. "ca.pem" })
    local s = sctx:new_connection()
    hold(s)
    local _, sr = pump(cctx:new_connection{ hostname = "localhost" }, s)
    OBJ, RESULT = s, sr
  ]=],
  alpn = [=[
    local sctx = assert(sslctx.new{ side = "server", certificate = PKI .. "server-chain.pem", key = PKI .. "server.key" })
    sctx:set_alpn_select(function(list) close_holder(); return list[1] end)
    local cctx = assert(sslctx.new{ ca_file = PKI .. "ca.pem", alpn = { "h2", "http/1.1" } })
    local s = sctx:new_connection()
    hold(s)
    local _, sr = pump(cctx:new_connection{ hostname = "localhost" }, s)
    OBJ, RESULT = s, sr
  ]=],
  session = [=[
    local sctx = assert(sslctx.new{ side = "server", certificate = PKI .. "server-chain.pem", key = PKI .. "server.key",
                                    max_version = "tls1.2" })
    local cctx = assert(sslctx.new{ ca_file = PKI .. "ca.pem" })
    cctx:set_session_callback(function(conn, sess) close_holder() end)
    local c = cctx:new_connection{ hostname = "localhost" }
    hold(c)
    local cr = pump(c, sctx:new_connection())
    OBJ, RESULT = c, cr
  ]=],
  password = [=[
    local ctx = assert(sslctx.new{ side = "server", certificate = PKI .. "server-chain.pem" })
    hold(ctx)
    local ok, err = pcall(ctx.use_private_key, ctx, PKI .. "server-enc.key", function()
      close_holder(); return "secret" end)
    OBJ, RESULT = ctx, { ok, err }
  ]=],
}

local EPILOGUE = [=[
assert(tostring(OBJ):find("(closed)", 1, true), "not closed: " .. tostring(OBJ))
print("RESULT", tostring(RESULT[1]), tostring(RESULT[2]))
collectgarbage(); collectgarbage()
print("CHILD-DONE")
]=]

describe("__close from inside the object's own callback", function()
  for _, kind in ipairs { "verify", "servername", "alpn", "session", "password" } do
    it("waits for the running call (" .. kind .. ", child interpreter)", function()
      local out, rc = helper.run_child(PROLOGUE .. KINDS[kind] .. EPILOGUE, 60)
      assert.is_truthy(out:find("CHILD-DONE", 1, true) and rc == 0,
                       "the child crashed (rc 139 = SIGSEGV) or an assertion failed:\n" .. out)
    end)
  end

  it("leaves nothing freed in use (verify and ALPN, child under valgrind)", function()
    for _, kind in ipairs { "verify", "alpn" } do
      local out, rc = helper.valgrind_child(PROLOGUE .. KINDS[kind] .. EPILOGUE, 240)
      if out == nil then return pending(rc) end
      assert.is_truthy(out:find("CHILD-DONE", 1, true) and rc == 0,
                       kind .. ": valgrind found errors (exit 99) or the child failed:\n" .. out)
    end
  end)

  it("a closed connection's methods raise once the running call returned", function()
    local sctx = helper.server_ctx()
    local conn
    local cctx = helper.client_ctx { verify_callback = function()
      debug.getmetatable(conn).__close(conn)
      return nil
    end }
    conn = cctx:new_connection { hostname = "localhost" }
    local s = sctx:new_connection()
    conn:handshake()
    helper.transfer(conn, s)
    s:handshake()
    helper.transfer(s, conn)
    local ok, _, kind = conn:handshake()   -- the callback closes it: this call finishes first
    assert.is_true(ok or kind ~= nil)
    assert.equal("sslctx.connection (closed)", tostring(conn))
    assert.matches("connection is closed", helper.raises(conn.handshake, conn), 1, true)
  end)
end)

describe("ctx:close() with connections in flight", function()
  local function in_flight(cctx, sctx, copts, before_close)
    local c = cctx:new_connection(helper.merge({ hostname = "localhost" }, copts))
    local s = sctx:new_connection()
    c:handshake()
    helper.transfer(c, s)
    if before_close then before_close(c, s) end
    sctx:close()
    cctx:close()
    collectgarbage()
    local cok, cmsg, _, sok, smsg = helper.pump(c, s)
    assert.is_true(cok, tostring(cmsg))
    assert.is_true(sok, tostring(smsg))
    return c, s
  end

  it("the servername callback still switches", function()
    local strict = helper.server_ctx { verify = "require" }
    local other = helper.server_ctx()
    local sctx = helper.server_ctx()
    sctx:set_servername_callback(function(name) if name == "other.test" then return other end end)
    local cctx = helper.client_ctx { verify = "never" }
    local _, s = in_flight(cctx, sctx, { hostname = "other.test" })
    assert.is_true(rawequal(s:context(), other))
    assert.is_not_nil(strict)
  end)

  it("the ALPN select list and function still choose", function()
    for _, sel in ipairs { { "http/1.1" }, function(list) return list[#list] end } do
      local sctx = helper.server_ctx()
      sctx:set_alpn_select(sel)
      local cctx = helper.client_ctx { alpn = { "h2", "http/1.1" } }
      local c, s = in_flight(cctx, sctx)
      assert.equal("http/1.1", s:alpn())
      assert.equal("http/1.1", c:alpn())
    end
  end)

  it("the client session callback still runs", function()
    local got = {}
    local sctx = helper.server_ctx { max_version = "tls1.2" }
    local cctx = helper.client_ctx()
    cctx:set_session_callback(function(_, sess) got[#got + 1] = sess end)
    in_flight(cctx, sctx)
    assert.is_true(#got >= 1)
  end)

  it("a certificate reload that closes the old context leaves its handshakes to finish", function()
    local sctx = helper.server_ctx { verify = "require" }
    local cctx = helper.client_ctx { certificate = pki("client-chain.pem"), key = pki("client.key") }
    local c, s = in_flight(cctx, sctx)
    assert.is_true((select(3, s:verify_result())))
    assert.equal("hi", helper.exchange(c, s, "hi"))
  end)
end)

describe("the collector sees OpenSSL's memory", function()
  it("50,000 client connections dropped without close() stay under 64 MiB peak RSS (child)", function()
    local out, rc = helper.run_child([=[
      local sslctx = require "sslctx"
      local ctx = assert(sslctx.new{ ca_file = os.getenv("SSLCTX_PKI_DIR") .. "/ca.pem" })
      for _ = 1, 50000 do
        local c = ctx:new_connection{ hostname = "localhost" }
        c:handshake()   -- a ClientHello waits in its output: OpenSSL's buffers are allocated
      end
      for line in io.lines("/proc/self/status") do
        local kb = line:match("^VmHWM:%s+(%d+)")
        if kb then print("PEAK-KB", kb) end
      end
    ]=], 300)
    local kb = tonumber(out:match("PEAK%-KB%s+(%d+)"))
    assert.is_truthy(kb and rc == 0, out)
    assert.is_true(kb < 64 * 1024, ("peak RSS %.1f MiB"):format(kb / 1024))
  end)

  -- 5.2+ only: 5.1 and LuaJIT cannot tell a stopped collector from a running one; and not
  -- under check-gc, which never lets the collector stop.
  local it_52 = (_VERSION == "Lua 5.1" or helper.forced_gc) and pending or it
  it_52("a stopped collector stays stopped", function()
    local ctx = helper.client_ctx()
    local seen = setmetatable({}, { __mode = "k" })   -- dropped connections, until collected
    collectgarbage("collect")
    collectgarbage("stop")
    for _ = 1, 200 do seen[ctx:new_connection { hostname = "localhost" }] = true end
    local alive = 0
    for _ in pairs(seen) do alive = alive + 1 end
    collectgarbage("restart")
    assert.equal(200, alive, "the collector ran while stopped")
    -- objects with a finalizer leave weak keys only at the cycle after their __gc ran
    collectgarbage("collect")
    collectgarbage("collect")
    alive = 0
    for _ in pairs(seen) do alive = alive + 1 end
    assert.equal(0, alive)
  end)
end)

describe("buffer_limit", function()
  it("feed takes at most the default limit, says why it took nothing, and loses nothing", function()
    local c, s = helper.connected(helper.client_ctx(), helper.server_ctx())
    local big = helper.payload(1024 * 1024)
    local wire, sent = {}, 0
    for _ = 1, 1000 do   -- the writer's own queue is bounded too: drain as it fills
      if sent >= #big then break end
      local n, _, kind = c:write(big:sub(sent + 1))
      if n then sent = sent + n else assert.equal("want_write", kind) end
      wire[#wire + 1] = c:drain()
    end
    assert.equal(#big, sent)
    wire = table.concat(wire)
    local n = s:feed(wire)
    assert.equal(256 * 1024, n)
    local none, why = s:feed(wire:sub(n + 1))
    assert.equal(0, none)
    assert.matches("input buffer full", why, 1, true)
    local got, rest = {}, wire:sub(n + 1)
    for _ = 1, 10000 do
      local data = s:read()
      if data then got[#got + 1] = data end
      if #rest > 0 then
        rest = rest:sub(s:feed(rest) + 1)
      elseif not data then
        break
      end
    end
    assert.equal(big, table.concat(got))
  end)

  it("write queues at most the default limit", function()
    local c = helper.connected(helper.client_ctx(), helper.server_ctx())
    local queued = 0
    for _ = 1, 100 do
      local n, _, kind = c:write(string.rep("y", 65536))
      if not n then assert.equal("want_write", kind); break end
      queued = queued + n
    end
    assert.is_true(c:pending() <= 256 * 1024 + 1024, tostring(c:pending()))
    assert.is_true(queued < 100 * 65536)
  end)

  it("false lifts it; bad values raise", function()
    local ctx = helper.client_ctx()
    local c = ctx:new_connection { hostname = "localhost", buffer_limit = false }
    assert.equal(300 * 1024, c:feed(string.rep("z", 300 * 1024)))
    assert.matches("positive integer or false", helper.raises(ctx.new_connection, ctx,
      { hostname = "localhost", buffer_limit = true }), 1, true)
    assert.matches("positive integer or false", helper.raises(ctx.new_connection, ctx,
      { hostname = "localhost", buffer_limit = 0 }), 1, true)
  end)
end)

-- Resident bytes per idle client/server pair in a child interpreter (each child measures its
-- own memory): 300 pairs kept after a handshake, `burst` bytes client to server and one byte
-- back, under release_buffers = `release`.
local function idle_pair_bytes(release, burst)
  local out, rc = helper.run_child(([=[
    local sslctx = require "sslctx"
    local P = os.getenv("SSLCTX_PKI_DIR") .. "/"
    local release, big = %s, string.rep("x", %d)
    local sctx = assert(sslctx.new{ side = "server", certificate = P .. "server-chain.pem",
                                    key = P .. "server.key", release_buffers = release })
    local cctx = assert(sslctx.new{ ca_file = P .. "ca.pem", release_buffers = release })
    local function rss()
      local f = io.open("/proc/self/statm"); local _, r = f:read("*n", "*n"); f:close()
      return r * 4096
    end
    local function pair()
      local c, s = cctx:new_connection{ hostname = "localhost" }, sctx:new_connection()
      for _ = 1, 10 do c:handshake(); s:feed(c:drain()); s:handshake(); c:feed(s:drain()) end
      local sent, got = 0, 0
      while sent < #big do sent = sent + assert(c:write(big, sent + 1)) end
      assert(s:feed(c:drain()) > 0)
      repeat got = got + #assert(s:read()) until got == #big
      assert(s:write("y")); c:feed(s:drain()); assert(c:read())
      return c, s
    end
    for _ = 1, 50 do pair() end
    collectgarbage(); collectgarbage()
    local keep, before = {}, rss()
    for _ = 1, 300 do keep[#keep + 1], keep[#keep + 2] = pair() end
    collectgarbage(); collectgarbage()
    print("PER-PAIR", (rss() - before) / 300)
  ]=]):format(tostring(release), burst), 120)
  local v = tonumber(out:match("PER%-PAIR%s+([%d%.]+)"))
  assert.is_truthy(v and rc == 0, out)
  return v
end

describe("release_buffers", function()
  it("is on by default and can be turned off", function()
    for _, release in ipairs { true, false } do
      local opts = {}
      if not release then opts.release_buffers = false end
      local c, s = helper.connected(helper.client_ctx(opts), helper.server_ctx(opts))
      assert.equal("ping", helper.exchange(c, s, "ping"))
      assert.equal("pong", helper.exchange(s, c, "pong"))
    end
    assert.matches("boolean expected", helper.raises(sslctx.new, { release_buffers = "yes" }), 1, true)
  end)

  -- What the mode is for: an idle connection gives its record buffers back.
  it("idle connections hold less with it than without (child interpreters)", function()
    local released, kept = idle_pair_bytes(true, 32), idle_pair_bytes(false, 32)
    assert.is_true(released + 8192 < kept,
                   ("idle pair: %.0f B with release_buffers, %.0f B without"):format(released, kept))
  end)
end)

describe("the memory transport's buffers", function()
  -- Both sides free their buffer once it is empty: an idle connection that once received a
  -- burst holds no more than one that never did (a BIO_s_mem would keep the burst's size).
  it("an idle pair keeps nothing of its largest burst (child interpreters)", function()
    local small, large = idle_pair_bytes(true, 32), idle_pair_bytes(true, 200000)
    assert.is_true(large < small + 4096,
                   ("idle pair: %.0f B after 32 B, %.0f B after a 200 kB burst"):format(small, large))
  end)
end)

-- support is used by the specs above through helper; keep luacheck quiet about it.
assert(support)
