-- gc_spec.lua: lifetimes of callbacks (issue "Verify callbacks": callbacks live in uservalues
-- of the context/connection, not in global registry slots; a callback that closes over its
-- own context is still collectable; a connection keeps its context alive).
--
-- The churn tests are tagged #gc (busted --exclude-tags=gc skips them): they create and drop
-- 10,000 contexts and connections whose callbacks refer to their own objects, and check that
-- both the Lua heap (collectgarbage("count")) and the process's resident memory (RSS, where
-- OpenSSL's allocations show: they are invisible to the Lua count) return to their level.
local sslctx = require "sslctx"
local helper = require "helper"
local support = require "support.callbacks"

local pki = helper.pki

local function full_gc()
  -- finalizers run in one cycle; what they released goes in the next
  for _ = 1, 4 do collectgarbage("collect") end
end

local function weak() return setmetatable({}, { __mode = "v" }) end

local CLIENT_CERT = { certificate = pki("client-chain.pem"), key = pki("client.key") }

describe("gc: self-referencing callbacks are collectable", function()
  it("a context whose verify callback closes over the context", function()
    local w = weak()
    do
      local ctx = sslctx.new({ side = "server" })
      ctx:set_verification_mode("server", "require", function() return ctx ~= nil end)
      w[1] = ctx
    end
    full_gc()
    assert.is_nil(w[1])
  end)

  it("a context whose every callback closes over it (verify, servername, ALPN, session, password)", function()
    local w = weak()
    do
      local ctx
      ctx = sslctx.new({ side = "server", verify_callback = function() return ctx ~= nil end,
                         password = function() return tostring(ctx) end })
      ctx:set_servername_callback(function() return ctx end)
      ctx:set_alpn_select(function() return ctx and nil end)
      ctx:set_session_callback(function() return ctx end)
      w[1] = ctx
    end
    full_gc()
    assert.is_nil(w[1])
  end)

  it("a connection whose callback closes over the connection and its context", function()
    local w = weak()
    do
      local ctx = sslctx.new({ side = "client", ca_file = pki("ca.pem") })
      local conn = ctx:new_connection({ hostname = "localhost" })
      conn:set_verification_mode("client", "always", function() return conn ~= nil and ctx ~= nil end)
      w[1], w[2] = ctx, conn
    end
    full_gc()
    assert.is_nil(w[1])
    assert.is_nil(w[2])
  end)

  it("two contexts whose servername callbacks point at each other", function()
    local w = weak()
    do
      local a = sslctx.new({ side = "server" })
      local b = sslctx.new({ side = "server" })
      a:set_servername_callback(function() return b end)
      b:set_servername_callback(function() return a end)
      a:set_verification_mode("server", "always", function() return b ~= nil end)
      w[1], w[2] = a, b
    end
    full_gc()
    assert.is_nil(w[1])
    assert.is_nil(w[2])
  end)

  it("connections after a handshake whose callbacks kept the store's certificates and themselves", function()
    local w = weak()
    do
      local kept = {}
      local cctx = helper.client_ctx(CLIENT_CERT)
      local sctx = helper.server_ctx({ verify = "require" })
      local c = cctx:new_connection({ hostname = "localhost" })
      local s = sctx:new_connection()
      c:set_verification_mode("client", "always", function(_, store)
        kept[#kept + 1] = { store:cert(), store:chain(), store:connection(), c }
      end)
      s:set_verification_mode("server", "require", function(_, store)
        kept[#kept + 1] = { store:cert(), store:connection(), s, sctx }
      end)
      local cok, cmsg, _, sok, smsg = helper.pump(c, s)
      assert.is_true(cok, cmsg)
      assert.is_true(sok, smsg)
      assert.equal(6, #kept)
      w[1], w[2], w[3], w[4], w[5] = cctx, sctx, c, s, kept[1][1]
    end
    full_gc()
    for i = 1, 5 do assert.is_nil(w[i], "object " .. i .. " was not collected") end
  end)

  it("a connection keeps its context alive (and the callback it copied)", function()
    local w = weak()
    local calls = 0
    local c
    do
      local ctx = helper.client_ctx({ verify_callback = function() calls = calls + 1 end })
      c = ctx:new_connection({ hostname = "localhost" })
      w[1] = ctx
    end
    full_gc()
    assert.is_not_nil(w[1], "the context was collected while its connection lives")
    local ok, msg = helper.pump(c, helper.server_ctx():new_connection())
    assert.is_true(ok, msg)
    assert.equal(3, calls)
    c = nil  -- luacheck: ignore 311 (dropped for the collector)
    full_gc()
    assert.is_nil(w[1])
  end)
end)

-- Regression (found by reading): any allocation inside a method may run a finalizer, and a
-- finalizer may close the very connection whose method is running (a wrapper that closes
-- what it wraps).  drain() then consumed the outbox of a freed SSL (SIGSEGV on every
-- interpreter), read() looped on it, peer_chain() walked a freed chain, and alpn() or
-- servername() copied freed bytes on 5.1, 5.2 and LuaJIT (a collection step comes before
-- the copy there).  Now close() from there only asks, the object reads as closed at once,
-- and the method closes it on its way out.  A chain of K finalizers puts the close at the
-- K-th collection step; in a child interpreter, so that a crash fails this spec only.
-- The child's script: each spec puts its list of METHODS (connection methods) before it.
local CLOSE_IN_METHOD = [[
  -- A finalizer closes the connection while one of its methods runs.
  local helper = require "helper"
  local function busy_gc() helper.gc_pace("busy") end
  local function normal_gc() helper.gc_pace("normal") end   -- the setup of each round
  local garbage_with_finalizer = helper.garbage_with_finalizer
  for _, m in ipairs(METHODS) do
    for K = 1, 5 do
      normal_gc()
      local sctx = helper.server_ctx()
      sctx:set_alpn_select({ "h2" })
      local cctx = helper.client_ctx({ alpn = { "h2" } })
      local c, s = helper.connected(cctx, sctx)
      assert(s:write(("y"):rep(3000)))
      helper.transfer(s, c)
      if m == "drain" then assert(c:write("x")) end
      collectgarbage("collect")
      collectgarbage("stop")
      local function link(k)
        garbage_with_finalizer(function()
          if k == K then c:close() return end
          link(k + 1)
          local pad = string.rep("x", 8192)
        end)
      end
      link(1)
      busy_gc()
      collectgarbage("restart")
      local ok, r = pcall(c[m], c)
      assert(ok, m .. " raised: " .. tostring(r))
      for _ = 1, K + 2 do collectgarbage("collect") end   -- one link per cycle
      assert(tostring(c):find("closed"), m .. " K=" .. K .. ": the close was lost: " .. tostring(c))
      assert(not pcall(c[m], c), m .. ": a closed connection must raise")
    end
  end
  print("CHILD-DONE")
]]

-- Regression (found by reading): any allocation inside a method may run a finalizer, and a
-- finalizer may close the very connection whose method is running (a wrapper that closes
-- what it wraps).  drain() then consumed the outbox of a freed SSL (SIGSEGV on every
-- interpreter), read() looped on it, peer_chain() walked a freed chain, and alpn() and
-- servername() copied freed bytes on 5.1, 5.2 and LuaJIT (a collection step comes before
-- the copy there; session:hostname() had the same flaw, but OpenSSL 3.0 leaves that nil
-- here, see doc/reference.md).  Now close() from there only asks, the
-- object reads as closed at once, and the method closes it on its way out.  A chain of K
-- finalizers puts the close at the K-th collection step; in a child interpreter, so that a
-- crash fails this spec only.
describe("gc: a finalizer closes a connection in the middle of its own method", function()
  it("the method finishes, then the connection is closed (drain, chains, read, alpn, ...)", function()
    local out, rc = helper.run_child([[
      local METHODS = { "drain", "peer_chain", "verified_chain", "read", "alpn", "servername" }
    ]] .. CLOSE_IN_METHOD, 60)
    assert.is_truthy(out:find("CHILD-DONE", 1, true) and rc == 0,
                     "the child crashed (rc 139 = SIGSEGV) or an assertion failed:\n" .. out)
  end)

  -- Copying freed bytes does not crash: valgrind sees it.
  it("alpn and servername copy nothing freed (child under valgrind)", function()
    local out, rc = helper.valgrind_child([[
      local METHODS = { "alpn", "servername" }
    ]] .. CLOSE_IN_METHOD, 180)
    if out == nil then return pending(rc) end
    assert.is_truthy(out:find("CHILD-DONE", 1, true) and rc == 0,
                     "valgrind found errors (exit 99) or the child failed:\n" .. out)
  end)
end)

describe("#gc churn: memory returns to its level", function()
  local KiB, MiB = 1024, 1024 * 1024
  -- Lua heap tolerance, in KiB.  After full collections the heap is stable to within a few
  -- KiB; the weak map of live objects keeps the size its largest population gave it, which
  -- the warm-up (same batch size) already reached.  The smallest leak per iteration worth
  -- catching, one closure or one table (>= 32 bytes) in a registry slot, is >= 312 KiB
  -- over 10,000 iterations: three times the tolerance.
  local HEAP_TOLERANCE = 100
  -- RSS tolerance: 1 MiB.  An SSL_CTX is several KiB and an SSL object more than 5 KiB in
  -- OpenSSL 3.0 (1.1.1: a few KiB): leaking either on each of 10,000 iterations is >= 10 MiB.
  local RSS_TOLERANCE = MiB

  -- One iteration: a server and a client context and a connection of each, every callback
  -- closing over its own object.
  local function one()
    local sctx
    sctx = sslctx.new({ side = "server", password = function() return tostring(sctx) end })
    sctx:set_verification_mode("server", "require", function(ok) return sctx ~= nil and ok end)
    sctx:set_servername_callback(function() return sctx end)
    sctx:set_alpn_select(function() return sctx and nil end)
    sctx:set_session_callback(function() return sctx end)
    local s = sctx:new_connection()
    s:set_verification_mode("server", "always", function() return s ~= nil end)
    local cctx = sslctx.new({ side = "client", ca = helper.read("ca.pem") })
    cctx:set_verification_mode("client", "always", function() return cctx ~= nil end)
    local c = cctx:new_connection({ hostname = "localhost" })
    c:set_verification_mode("client", "always", function() return c ~= nil and cctx ~= nil end)
  end

  -- The Lua collector does not see OpenSSL's memory, so left alone it lets thousands of
  -- dropped contexts (tens of KiB each) pile up before a cycle, and how many depends on the
  -- cycle's timing: the allocator's high-water mark, and so the RSS, would follow that
  -- chance.  A full collection every BATCH iterations bounds the population; the warm-up
  -- runs the very loop that is measured, so the high-water mark is reached before the
  -- baseline is taken.
  local BATCH = 100
  local function churn(n)
    for i = 1, n do
      one()
      if i % BATCH == 0 then collectgarbage("collect") end
    end
  end

  local function measure()
    full_gc()
    return collectgarbage("count"), support.rss()
  end

  it("10,000 contexts and connections with self-referencing callbacks", function()
    local t0 = os.time()
    churn(10000)                      -- warm-up: caches, arenas, the weak object map
    local heap0, rss0 = measure()
    churn(10000)
    local heap1, rss1 = measure()
    assert.is_true(os.time() - t0 < 60, "took too long")
    assert.is_true(heap1 - heap0 < HEAP_TOLERANCE,
      string.format("Lua heap grew by %.1f KiB (from %.1f to %.1f KiB)", heap1 - heap0, heap0, heap1))
    assert.is_true(rss1 - rss0 < RSS_TOLERANCE,
      string.format("RSS grew by %.1f KiB (from %.1f to %.1f KiB)", (rss1 - rss0) / KiB, rss0 / KiB, rss1 / KiB))
  end)

  it("1,000 handshakes whose callbacks refer to their connection, half of them raising", function()
    local cctx = helper.client_ctx()
    local sctx = helper.server_ctx({ verify = "always" })
    local function handshakes(n)
      for i = 1, n do
        local c = cctx:new_connection({ hostname = "localhost" })
        local s = sctx:new_connection()
        local fail = i % 2 == 0
        c:set_verification_mode("client", "always", function(_, store)
          local keep = { c, store:cert(), store:chain() }
          if fail and store:depth() == 0 then error({ keep = keep }) end
        end)
        helper.pump(c, s)
        if i % 50 == 0 then collectgarbage("collect") end
      end
    end
    handshakes(1000)
    local heap0, rss0 = measure()
    handshakes(1000)
    local heap1, rss1 = measure()
    -- 1,000 iterations: a leaked table per iteration is >= 56 KiB; a leaked SSL >= 5 MiB
    assert.is_true(heap1 - heap0 < 40,
      string.format("Lua heap grew by %.1f KiB", heap1 - heap0))
    assert.is_true(rss1 - rss0 < RSS_TOLERANCE,
      string.format("RSS grew by %.1f KiB", (rss1 - rss0) / KiB))
  end)
end)
