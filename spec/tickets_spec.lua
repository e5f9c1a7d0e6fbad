-- tickets_spec.lua: session ticket keys (set_ticket_keys, rotation) and the external session
-- store (set_session_store), in one process (doc/reference.md, "Sessions across processes").
local sslctx = require "sslctx"
local helper = require "helper"
local support = require "support.callbacks"
local socket = require "socket"

local pki = helper.pki

local TLS13 = { min_version = "tls1.3", max_version = "tls1.3" }
local TLS12 = { min_version = "tls1.2", max_version = "tls1.2" }

local function key(byte) return string.rep(string.char(byte), 80) end

-- A fresh client connection to sctx offering sess; returns c, s (both handshakes succeed).
local function connect(cctx, sctx, sess)
  local c, s, cok, cmsg, _, sok, smsg = helper.connect(cctx, sctx, { session = sess })
  assert(cok and sok, tostring(cmsg) .. " / " .. tostring(smsg))
  return c, s
end

-- The client's newest session after one round trip (TLS 1.3 tickets, also those a
-- resumption renews, arrive after the handshake).
local function session_from(cctx, sctx, sess)
  local c, s = connect(cctx, sctx, sess)
  assert.equal("x", helper.exchange(s, c, "x"))
  local got = support.session_of(c)
  return got, c, s
end

describe("set_ticket_keys", function()
  it("refuses keys of the wrong size or type, and never shows them", function()
    local ctx = helper.server_ctx()
    local secret = string.rep("S", 79)
    local ok, err = pcall(function() local r = ctx:set_ticket_keys { secret }; return r end)
    assert.is_false(ok)
    assert.matches("bad argument #1 to 'set_ticket_keys'", err, 1, true)
    assert.matches("key #1: must be 80 bytes", err, 1, true)
    assert.is_nil(err:find(secret, 1, true))
    for _, bad in ipairs { {}, { 42 }, { key(1), false }, "x" } do
      assert.is_false(pcall(ctx.set_ticket_keys, ctx, bad))
    end
    assert.is_true(ctx:set_ticket_keys { key(1), key(2) })
    assert.is_nil(tostring(ctx):find(key(1), 1, true))
    local client = helper.client_ctx()
    assert.matches("server contexts", helper.raises(client.set_ticket_keys, client, { key(1) }), 1, true)
  end)

  for _, v in ipairs { { "TLS 1.3", TLS13 }, { "TLS 1.2", TLS12 } } do
    describe(v[1], function()
      it("contexts with equal keys and policies resume each other's tickets", function()
        local a, b = helper.server_ctx(v[2]), helper.server_ctx(v[2])
        a:set_ticket_keys { key(1) }
        b:set_ticket_keys { key(1) }
        local cctx = helper.client_ctx(v[2])
        local sess = session_from(cctx, a)
        local c, s = connect(cctx, b, sess)
        assert.is_true(c:session_reused())
        assert.is_true(s:session_reused())
      end)

      it("without shared keys, or under another policy, a full handshake", function()
        local a = helper.server_ctx(v[2])
        a:set_ticket_keys { key(1) }
        local cctx = helper.client_ctx(v[2])
        local sess = session_from(cctx, a)
        local other_keys = helper.server_ctx(v[2])
        other_keys:set_ticket_keys { key(2) }
        assert.is_false(connect(cctx, other_keys, sess):session_reused())
        local own_keys = helper.server_ctx(v[2])   -- keys of its own
        assert.is_false(connect(cctx, own_keys, sess):session_reused())
        local strict = helper.server_ctx(helper.merge(v[2], { verify = "always" }))
        strict:set_ticket_keys { key(1) }
        assert.is_false(connect(cctx, strict, sess):session_reused())
      end)

      it("rotation: a ticket under a later key resumes and is renewed under the first", function()
        local old = helper.server_ctx(v[2])
        old:set_ticket_keys { key(1) }
        local cctx = helper.client_ctx(v[2])
        local sess = session_from(cctx, old)
        local rotated = helper.server_ctx(v[2])
        rotated:set_ticket_keys { key(2), key(1) }
        local renewed, c = session_from(cctx, rotated, sess)
        assert.is_true(c:session_reused())
        assert.is_not_nil(renewed)
        local only_new = helper.server_ctx(v[2])
        only_new:set_ticket_keys { key(2) }
        assert.is_false(connect(cctx, only_new, sess):session_reused())   -- key 1 is gone
        assert.is_true(connect(cctx, only_new, renewed):session_reused())  -- renewed under 2
      end)
    end)
  end
end)

describe("set_session_id_context names the callbacks' share only", function()
  local function server(cb, name)
    local sctx = helper.server_ctx(helper.merge(TLS13, { verify = "always", verify_callback = cb }))
    sctx:set_ticket_keys { key(3) }
    if name then sctx:set_session_id_context(name) end
    return sctx
  end
  local cctx = helper.client_ctx(helper.merge(TLS13, { certificate = pki("client-chain.pem"),
                                                       key = pki("client.key") }))
  local function f1() return nil end
  local function f2() return nil end

  it("two functions under one name resume each other; unnamed, they do not", function()
    local sess = session_from(cctx, server(f1, "workers"))
    assert.is_true(connect(cctx, server(f2, "workers"), sess):session_reused())
    local sess2 = session_from(cctx, server(f1))
    assert.is_false(connect(cctx, server(f2), sess2):session_reused())
  end)

  it("the callback never drops out: named, a callback and none, or a Lua and a native one differ", function()
    local sess = session_from(cctx, server(f1, "workers"))
    assert.is_false(connect(cctx, server(nil, "workers"), sess):session_reused())
    assert.is_false(connect(cctx, server(sslctx.c_callbacks.preverify, "workers"), sess):session_reused())
    assert.is_true(connect(cctx, server(f2, "workers"), sess):session_reused())
  end)

  it("the rest of the policy still counts under a name", function()
    local sess = session_from(cctx, server(f1, "workers"))
    local other = helper.server_ctx(helper.merge(TLS13, { verify = "require", verify_callback = f2 }))
    other:set_ticket_keys { key(3) }
    other:set_session_id_context("workers")
    assert.is_false(connect(cctx, other, sess):session_reused())
  end)
end)

describe("made-here ticket keys rotate", function()
  local PERIOD = 0.25

  it("a ticket from before a rotation resumes; one older than seven periods does not", function()
    local sctx = helper.server_ctx(helper.merge(TLS13, { ticket_key_rotation = PERIOD }))
    local cctx = helper.client_ctx(TLS13)
    local sess = session_from(cctx, sctx)
    socket.sleep(PERIOD * 1.5)      -- a new key encrypts now; the old one still decrypts
    local fresh, c = session_from(cctx, sctx, sess)
    assert.is_true(c:session_reused())
    socket.sleep(PERIOD * 8.5)      -- the first key ended more than seven periods ago
    assert.is_false(connect(cctx, sctx, sess):session_reused())
    assert.is_not_nil(fresh)
  end)

  it("set_ticket_keys stops the rotation", function()
    local sctx = helper.server_ctx(helper.merge(TLS13, { ticket_key_rotation = 0.05 }))
    sctx:set_ticket_keys { key(7) }
    local cctx = helper.client_ctx(TLS13)
    local sess = session_from(cctx, sctx)
    socket.sleep(0.6)               -- twelve periods
    assert.is_true(connect(cctx, sctx, sess):session_reused())
  end)

  it("ticket_key_rotation takes seconds, on server contexts", function()
    assert.matches("ticket_key_rotation", helper.raises(sslctx.new, { side = "server", ticket_key_rotation = 0 }), 1, true)
    assert.matches("ticket_key_rotation", helper.raises(sslctx.new, { side = "server", ticket_key_rotation = "1d" }), 1, true)
    assert.matches("server contexts", helper.raises(sslctx.new, { ticket_key_rotation = 60 }), 1, true)
  end)
end)

describe("set_session_store", function()
  local STORE_KEY = string.rep("k", 32)

  -- A table-backed store; counts calls.
  local function table_store(k)
    local t = { data = {}, calls = { new = 0, get = 0, remove = 0 } }
    t.spec = {
      key = k or STORE_KEY,
      new = function(id, blob, expires)
        t.calls.new = t.calls.new + 1
        assert(type(expires) == "number" and expires > os.time() - 5)
        t.data[id] = blob
      end,
      get = function(id) t.calls.get = t.calls.get + 1; return t.data[id] end,
      remove = function(id) t.calls.remove = t.calls.remove + 1; t.data[id] = nil end,
    }
    return t
  end

  local VARIANTS = {
    { "TLS 1.2 session ids", helper.merge(TLS12, { session_tickets = false }) },
    { "TLS 1.3 stateful tickets", helper.merge(TLS13, { session_tickets = false }) },
  }

  for _, v in ipairs(VARIANTS) do
    describe(v[1], function()
      it("two contexts with the same store key and policy share sessions through it", function()
        local st = table_store()
        local a, b = helper.server_ctx(v[2]), helper.server_ctx(v[2])
        assert.is_true(a:set_session_store(st.spec))
        assert.is_true(b:set_session_store(st.spec))
        local cctx = helper.client_ctx(v[2])
        local sess = session_from(cctx, a)
        assert.is_true(st.calls.new >= 1)
        for _, blob in pairs(st.data) do
          assert.equal("SXS1", blob:sub(1, 4))   -- sealed, never the DER in the clear
          assert.is_nil(blob:find(sess:der():sub(-20), 1, true))
        end
        local c, s = connect(cctx, b, sess)
        assert.is_true(c:session_reused())
        assert.is_true(s:session_reused())
      end)

      it("a store under another key, a swapped entry or another policy is a miss", function()
        local st = table_store()
        local a = helper.server_ctx(v[2])
        a:set_session_store(st.spec)
        local cctx = helper.client_ctx(v[2])
        local sess = session_from(cctx, a)
        local other = helper.server_ctx(v[2])
        local st2 = table_store(string.rep("x", 32))
        st2.data = st.data
        other:set_session_store(st2.spec)
        assert.is_false(connect(cctx, other, sess):session_reused())
        -- every entry moved under another id: nothing opens
        local ids = {}
        for id in pairs(st.data) do ids[#ids + 1] = id end
        if #ids >= 2 then
          st.data[ids[1]], st.data[ids[2]] = st.data[ids[2]], st.data[ids[1]]
        end
        local strict = helper.server_ctx(helper.merge(v[2], { verify = "always" }))
        strict:set_session_store(st.spec)
        assert.is_false(connect(cctx, strict, sess):session_reused())
      end)

      it("get raising, yielding or returning junk is a miss, logged", function()
        local cctx = helper.client_ctx(v[2])
        local behaviours = {
          raise = function() error("store down") end,
          yield = function() coroutine.yield() end,
          junk = function() return "SXS1" .. string.rep("\0", 64) end,
          number = function() return 42 end,
        }
        for name, get in pairs(behaviours) do
          local st = table_store()
          local sctx = helper.server_ctx(v[2])
          sctx:set_session_store(st.spec)
          local sess = session_from(cctx, sctx)
          st.spec.get = get
          sctx:set_session_store(st.spec)
          local logged = {}
          local c = cctx:new_connection { hostname = "localhost", session = sess }
          local s = sctx:new_connection()
          s:set_logger(function(msg) logged[#logged + 1] = msg end)
          local co = coroutine.wrap(function() return helper.pump(c, s) end)
          local cok, _, _, sok = co()
          assert.is_true(cok, name)
          assert.is_true(sok, name)
          assert.is_false(s:session_reused(), name)
          assert.is_true(#logged >= 1, name .. ": nothing logged")
          assert.matches("session store get", logged[1], 1, true)
        end
      end)

      it("false removes the store: OpenSSL's own cache again", function()
        local st = table_store()
        local sctx = helper.server_ctx(v[2])
        sctx:set_session_store(st.spec)
        assert.is_true(sctx:set_session_store(false))
        local cctx = helper.client_ctx(v[2])
        local sess = session_from(cctx, sctx)
        assert.equal(0, st.calls.new)
        assert.is_true(connect(cctx, sctx, sess):session_reused())
      end)
    end)
  end

  it("TLS 1.2 with tickets: only clients that take no ticket go to the store", function()
    local st = table_store()
    local sctx = helper.server_ctx(TLS12)
    sctx:set_session_store(st.spec)
    local ticketed = helper.client_ctx(TLS12)
    local sess = session_from(ticketed, sctx)
    assert.equal(0, st.calls.new)                 -- it has a ticket
    assert.is_true(connect(ticketed, sctx, sess):session_reused())
    local no_tickets = helper.client_ctx(helper.merge(TLS12, { session_tickets = false }))
    local sess2 = session_from(no_tickets, sctx)
    assert.equal(1, st.calls.new)                 -- found by id, through the store
    assert.is_true(connect(no_tickets, sctx, sess2):session_reused())
    assert.is_true(st.calls.get >= 1)
  end)

  it("refuses bad stores and client contexts", function()
    local sctx = helper.server_ctx()
    local good = table_store().spec
    local function with(k, val)
      local t = {}
      for kk, vv in pairs(good) do t[kk] = vv end
      t[k] = val
      return t
    end
    assert.matches("32%-byte", helper.raises(sctx.set_session_store, sctx, with("key", "short")))
    assert.matches("'new' must be a function", helper.raises(sctx.set_session_store, sctx, with("new", 1)), 1, true)
    assert.matches("'get' must be a function", helper.raises(sctx.set_session_store, sctx, with("get", nil)), 1, true)
    assert.matches("unknown field 'put'", helper.raises(sctx.set_session_store, sctx, with("put", print)), 1, true)
    local client = helper.client_ctx()
    assert.matches("server contexts", helper.raises(client.set_session_store, client, good), 1, true)
    assert.is_nil(helper.raises(sctx.set_session_store, sctx, with("key", "short")):find(string.rep("k", 32), 1, true))
  end)
end)

describe("server defaults", function()
  it("TLS 1.2: forward-secret AEAD suites only, in the server's order", function()
    local sctx = helper.server_ctx(TLS12)
    local opts = {}
    for _, o in ipairs(sctx:get_options()) do opts[o] = true end
    assert.is_true(opts.cipher_server_preference)
    for _, cipher in ipairs { "ECDHE-ECDSA-AES128-SHA", "ECDHE-ECDSA-AES256-SHA384", "AES128-GCM-SHA256" } do
      local cctx = helper.client_ctx(helper.merge(TLS12, { ciphers = cipher }))
      local _, _, cok = helper.connect(cctx, sctx)
      assert.is_nil(cok, cipher .. " was accepted")
    end
    local c = helper.connected(helper.client_ctx(TLS12), sctx)
    assert.matches("GCM", c:cipher())
    -- a "both" context: its server connections get the same default, its clients do not
    local both = helper.new_ctx(helper.merge(TLS12, { side = "both", ca_file = pki("ca.pem"),
      certificate = pki("server-chain.pem"), key = pki("server.key") }))
    local cbc = helper.client_ctx(helper.merge(TLS12, { ciphers = "ECDHE-ECDSA-AES128-SHA" }))
    local _, _, bok = helper.connect(cbc, both, nil, { side = "server" })
    assert.is_nil(bok, "a 'both' context's server accepted CBC")
    local bc = both:new_connection { side = "client", hostname = "localhost" }
    local cbc_server = helper.server_ctx(helper.merge(TLS12, { ciphers = "ECDHE-ECDSA-AES128-SHA" }))
    local bcok = helper.pump(bc, cbc_server:new_connection())
    assert.is_true(bcok, "a 'both' context's client lost OpenSSL's list")
    -- an explicit list wins
    local loose = helper.server_ctx(helper.merge(TLS12, { ciphers = "ECDHE-ECDSA-AES128-SHA" }))
    local cctx = helper.client_ctx(helper.merge(TLS12, { ciphers = "ECDHE-ECDSA-AES128-SHA" }))
    local _, _, ok = helper.connect(cctx, loose)
    assert.is_true(ok)
  end)
end)

assert(pki)
