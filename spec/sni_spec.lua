-- sni_spec.lua: server-side SNI (doc/reference.md ctx:set_servername_callback): the callback gets the
-- name the client sent, and a returned context's certificate, mode, callback, depth,
-- verification parameters, trust store and session id context apply to the connection;
-- nil keeps the current context.  Resumption across a switch follows the policy of the
-- context the connection ends on.
local sslctx = require "sslctx"
local helper = require "helper"
local support = require "support.callbacks"

local pki, read = helper.pki, helper.read

local VERSIONS = { "tls1.2", "tls1.3" }

local function pin(v, t)
  return helper.merge({ min_version = v, max_version = v }, t)
end

local function x509(name) return assert(sslctx.x509(read(name))) end

local CLIENT_CERT = { certificate = pki("client-chain.pem"), key = pki("client.key") }
local UNTRUSTED_CLIENT_CERT = { certificate = pki("client-untrusted-chain.pem"),
                                key = pki("client-untrusted.key") }

-- A front context A whose servername callback routes "b.example" to B (nil otherwise) and
-- records the names it was given.
local function front(a, b)
  local names = { n = 0 }
  a:set_servername_callback(function(name)
    names.n = names.n + 1
    names[names.n] = name
    if name == "b.example" then return b end
  end)
  return names
end

-- Client for the SNI name; good.example and b.example are not both in server.pem, so the
-- client checks no name here unless told (verify_hostname = false: identity is not what
-- these tests are about; the chain is still verified).
local function connect(cctx, sctx, name, extra)
  local copts = helper.merge({ hostname = name, verify_hostname = false }, extra)
  return helper.connect(cctx, sctx, copts)
end

describe("SNI: the servername callback", function()
  it("gets the name the client sent, once per handshake", function()
    local a = helper.server_ctx()
    local names = front(a, nil)
    local cctx = helper.client_ctx()
    local _, s, cok, cmsg = connect(cctx, a, "b.example")
    assert.is_true(cok, cmsg)
    assert.equal(1, names.n)
    assert.equal("b.example", names[1])
    assert.equal("b.example", s:servername())
    connect(cctx, a, "other.example")
    assert.equal(2, names.n)
    assert.equal("other.example", names[2])
  end)

  it("gets nil when the client sent no name (IP literal, or no hostname)", function()
    local a = helper.server_ctx()
    local names = front(a, nil)
    local cctx = helper.client_ctx()
    local _, _, cok, cmsg = helper.connect(cctx, a, { hostname = "127.0.0.1" })
    assert.is_true(cok, cmsg)
    assert.equal(1, names.n)
    assert.is_nil(names[1])
    local never = helper.client_ctx({ verify = "never" })
    local c = never:new_connection()
    local ok, msg = helper.pump(c, a:new_connection())
    assert.is_true(ok, msg)
    assert.equal(2, names.n)
    assert.is_nil(names[2])
  end)

  for _, version in ipairs(VERSIONS) do
    it(version .. " switching to a context with another certificate: the client sees it", function()
      local a = helper.server_ctx(pin(version))
      local b = helper.server_ctx(pin(version, { certificate = pki("rsa-server-chain.pem"),
                                                 key = pki("rsa-server.key") }))
      front(a, b)
      local cctx = helper.client_ctx(pin(version))
      local c, s, cok, cmsg, _, sok, smsg = connect(cctx, a, "b.example")
      assert.is_true(cok, cmsg)
      assert.is_true(sok, smsg)
      assert.is_true(c:peer_certificate() == x509("rsa-server.pem"))
      assert.is_true(c:peer_chain()[2] == x509("int.pem"))
      assert.equal("b.example", s:servername())
      assert.equal("via b", helper.exchange(c, s, "via b"))
    end)

    it(version .. " nil keeps the current context and its certificate", function()
      local a = helper.server_ctx(pin(version))
      local b = helper.server_ctx(pin(version, { certificate = pki("rsa-server-chain.pem"),
                                                 key = pki("rsa-server.key") }))
      local names = front(a, b)
      local c, _, cok, cmsg = connect(helper.client_ctx(pin(version)), a, "a.example")
      assert.is_true(cok, cmsg)
      assert.equal(1, names.n)
      assert.is_true(c:peer_certificate() == x509("server.pem"))
    end)
  end

  it("returning the current context itself changes nothing", function()
    local rec = support.recorder()
    local a = helper.server_ctx({ verify = "require", verify_callback = rec.fn })
    a:set_servername_callback(function() return a end)
    local _, s, _, _, _, sok, smsg = connect(helper.client_ctx(CLIENT_CERT), a, "a.example")
    assert.is_true(sok, smsg)
    assert.equal(3, #rec.calls)
    assert.is_true(s:peer_certificate() == x509("client.pem"))
  end)
end)

describe("SNI: the switch applies the new context's verification policy", function()
  for _, version in ipairs(VERSIONS) do
    describe(version, function()
      local a, b, reca
      before_each(function()
        reca = support.recorder()
        -- A requires a client certificate and checks it with a Lua callback; B asks for none
        a = helper.server_ctx(pin(version, { verify = "require", verify_callback = reca.fn }))
        b = helper.server_ctx(pin(version, { verify = "never" }))
        front(a, b)
      end)

      it("no client certificate: rejected on A, let in on B", function()
        local cctx = helper.client_ctx(pin(version))
        local _, sa, _, _, _, sok, smsg, skind = connect(cctx, a, "a.example")
        assert.is_nil(sok)
        assert.equal("verify", skind, smsg)
        assert.is_false((select(3, sa:verify_result())))
        local c, s, cok, cmsg, _, sok2, smsg2 = connect(cctx, a, "b.example")
        assert.is_true(cok, cmsg)
        assert.is_true(sok2, smsg2)
        assert.is_nil(s:peer_certificate())
        assert.equal("in", helper.exchange(c, s, "in"))
      end)

      it("with a client certificate: A's callback runs on A only; B requests nothing", function()
        local cctx = helper.client_ctx(pin(version, CLIENT_CERT))
        local _, sa, _, _, _, sok, smsg = connect(cctx, a, "a.example")
        assert.is_true(sok, smsg)
        assert.equal(3, #reca.calls)
        assert.is_true(sa:peer_certificate() == x509("client.pem"))
        local _, sb, _, _, _, sok2, smsg2 = connect(cctx, a, "b.example")
        assert.is_true(sok2, smsg2)
        assert.equal(3, #reca.calls)
        assert.is_nil(sb:peer_certificate())
      end)

      it("the connection reports B's mode and callback after the switch", function()
        local _, sb = connect(helper.client_ctx(pin(version)), a, "b.example")
        local _, n, preset, cb = sb:get_verification_mode("server")
        assert.equal(0, n)
        assert.equal("never", preset)
        assert.is_nil(cb)
        -- and A is unchanged
        local _, an, _, acb = a:get_verification_mode("server")
        assert.equal(3, an)
        assert.is_true(rawequal(reca.fn, acb))
      end)
    end)

    it(version .. " B requires a certificate without a callback: A's Lua callback is not used on B", function()
      local reca = support.recorder(function() return false end)   -- A would reject
      local a = helper.server_ctx(pin(version, { verify = "require", verify_callback = reca.fn }))
      local b = helper.server_ctx(pin(version, { verify = "require" }))
      front(a, b)
      local _, s, _, _, _, sok, smsg, skind = connect(helper.client_ctx(pin(version, CLIENT_CERT)), a, "b.example")
      assert.is_true(sok, tostring(smsg) .. " (" .. tostring(skind) .. ")")
      assert.equal(0, #reca.calls)
      assert.is_true(s:peer_certificate() == x509("client.pem"))
    end)

    it(version .. " B with its own Lua callback: B's runs, A's does not", function()
      local reca, recb = support.recorder(), support.recorder()
      local a = helper.server_ctx(pin(version, { verify = "require", verify_callback = reca.fn }))
      local b = helper.server_ctx(pin(version, { verify = "require", verify_callback = recb.fn }))
      front(a, b)
      local _, s, _, _, _, sok, smsg = connect(helper.client_ctx(pin(version, CLIENT_CERT)), a, "b.example")
      assert.is_true(sok, smsg)
      assert.equal(0, #reca.calls)
      assert.equal(3, #recb.calls)
      assert.is_true(rawequal(recb.fn, (select(4, s:get_verification_mode("server")))))
    end)

    it(version .. " B with a C callback (reject_all): rejected on B, accepted on A", function()
      local a = helper.server_ctx(pin(version, { verify = "require" }))
      local b = helper.server_ctx(pin(version, { verify = "require", verify_callback = sslctx.c_callbacks.reject_all }))
      front(a, b)
      local cctx = helper.client_ctx(pin(version, CLIENT_CERT))
      local _, _, _, _, _, sok, smsg = connect(cctx, a, "a.example")
      assert.is_true(sok, smsg)
      local _, sb, _, _, _, sok2, _, skind2 = connect(cctx, a, "b.example")
      assert.is_nil(sok2)
      assert.equal("verify", skind2)
      assert.equal(50, (sb:verify_result()))
    end)

    it(version .. " another trust store: a client certificate from other-ca passes on B only", function()
      local a = helper.server_ctx(pin(version, { verify = "require" }))                    -- trusts ca.pem
      local b = helper.server_ctx(pin(version, { verify = "require", ca_file = pki("other-ca.pem") }))
      front(a, b)
      local untrusted = helper.client_ctx(pin(version, UNTRUSTED_CLIENT_CERT))
      local _, _, _, _, _, sok, _, skind = connect(untrusted, a, "a.example")
      assert.is_nil(sok)
      assert.equal("verify", skind)
      local _, sb, _, _, _, sok2, smsg2 = connect(untrusted, a, "b.example")
      assert.is_true(sok2, smsg2)
      assert.equal("CN=Untrusted Client,O=sslctx", sb:peer_certificate():subject())
      -- and the certificate A trusts does not pass on B
      local good = helper.client_ctx(pin(version, CLIENT_CERT))
      local _, _, _, _, _, sok3, _, skind3 = connect(good, a, "b.example")
      assert.is_nil(sok3)
      assert.equal("verify", skind3)
    end)

    it(version .. " another depth: B's verify_depth 0 rejects the client chain, A accepts it", function()
      local a = helper.server_ctx(pin(version, { verify = "require" }))
      local b = helper.server_ctx(pin(version, { verify = "require", verify_depth = 0 }))
      front(a, b)
      local cctx = helper.client_ctx(pin(version, CLIENT_CERT))
      local _, _, _, _, _, sok, smsg = connect(cctx, a, "a.example")
      assert.is_true(sok, smsg)
      local expected = helper.openssl_verify{ cert = "client.pem", untrusted = "client-chain.pem",
                                              CAfile = "ca.pem", purpose = "sslclient", verify_depth = 0 }
      local _, sb, _, _, _, sok2, _, skind2 = connect(cctx, a, "b.example")
      assert.is_nil(sok2)
      assert.equal("verify", skind2)
      assert.equal(expected, (sb:verify_result()))
    end)

    it(version .. " other verification parameters: B's purpose 'sslserver' rejects a client certificate", function()
      local a = helper.server_ctx(pin(version, { verify = "require" }))
      local b = helper.server_ctx(pin(version, { verify = "require", verify_params = { purpose = "sslserver" } }))
      front(a, b)
      local cctx = helper.client_ctx(pin(version, CLIENT_CERT))
      local _, _, _, _, _, sok, smsg = connect(cctx, a, "a.example")
      assert.is_true(sok, smsg)
      local expected = helper.openssl_verify{ cert = "client.pem", untrusted = "client-chain.pem",
                                              CAfile = "ca.pem", purpose = "sslserver" }
      assert.is_true(expected ~= 0)
      local _, sb, _, _, _, sok2, _, skind2 = connect(cctx, a, "b.example")
      assert.is_nil(sok2)
      assert.equal("verify", skind2)
      assert.equal(expected, (sb:verify_result()))
    end)
  end
end)

describe("SNI: the switch applies the new context's client-CA list", function()
  -- The client-CA list is what the certificate request names; the API gives a client no way
  -- to read it, so `openssl s_client` (which prints it) connects over loopback TCP.
  local socket = require "socket"

  -- Runs one handshake of `sctx` against s_client sending `servername`; returns the server's
  -- handshake result and what s_client printed.
  local function s_client_sees(sctx, servername)
    local srv = assert(socket.bind("127.0.0.1", 0))
    local _, port = srv:getsockname()
    local out = os.tmpname()
    local cmd = "(echo | timeout 20 openssl s_client -connect 127.0.0.1:" .. port ..
                " -servername " .. servername .. " -tls1_3 > " .. helper.sh_quote(out) ..
                " 2>&1; echo S_CLIENT-DONE >> " .. helper.sh_quote(out) .. ") &"
    assert.is_true(helper.exec_ok(cmd))
    srv:settimeout(20)
    local sock = assert(srv:accept())
    srv:close()
    local conn = sctx:new_connection({ socket = sock })
    local r
    for _ = 1, 200 do
      r = support.pack(conn:handshake())
      if r[3] == "want_read" then socket.select({ sock }, nil, 5)
      elseif r[3] == "want_write" then socket.select(nil, { sock }, 5)
      else break end
    end
    conn:close()
    local text = ""
    for _ = 1, 200 do
      local f = io.open(out, "rb")
      text = f and f:read("*a") or ""
      if f then f:close() end
      if text:find("S_CLIENT-DONE", 1, true) then break end
      socket.sleep(0.05)
    end
    os.remove(out)
    -- the names s_client lists between its heading and the signature algorithms
    local names = text:match("Acceptable client certificate CA names\n(.-)\n[A-Z][%w ]-Signature Algorithms")
    return r, names, text
  end

  it("s_client sees A's CA names through A and B's through B", function()
    local a = helper.server_ctx({ verify = "always" })                                -- names ca.pem
    local b = helper.server_ctx({ verify = "always", ca_file = pki("other-ca.pem") })  -- names other-ca
    front(a, b)
    local ra, na, ta = s_client_sees(a, "a.example")
    assert.is_true(ra[1], tostring(ra[2]))
    assert.is_string(na, ta)
    assert.truthy(na:find("sslctx Test Root CA", 1, true), na)
    assert.falsy(na:find("sslctx Other CA", 1, true), na)
    local rb, nb, tb = s_client_sees(a, "b.example")
    assert.is_true(rb[1], tostring(rb[2]))
    assert.is_string(nb, tb)
    assert.truthy(nb:find("sslctx Other CA", 1, true), nb)
    assert.falsy(nb:find("sslctx Test Root CA", 1, true), nb)
  end)
end)

describe("SNI: the connection keeps the switched-to context alive", function()
  it("a context created in the callback lives as long as the connection", function()
    local weak = setmetatable({}, { __mode = "v" })
    local a = helper.server_ctx()
    a:set_servername_callback(function()
      local b = helper.server_ctx({ certificate = pki("rsa-server-chain.pem"), key = pki("rsa-server.key") })
      weak[1] = b
      return b
    end)
    local c, s, cok, cmsg = connect(helper.client_ctx(), a, "b.example")
    assert.is_true(cok, cmsg)
    collectgarbage(); collectgarbage()
    assert.is_not_nil(weak[1], "the switched-to context was collected while its connection lives")
    assert.is_true(c:peer_certificate() == x509("rsa-server.pem"))
    assert.equal("alive", helper.exchange(c, s, "alive"))
    assert.equal("back", helper.exchange(s, c, "back"))
    s:close(); c:close()
    s, c = nil, nil  -- luacheck: ignore 311 (dropped for the collector)
    collectgarbage(); collectgarbage(); collectgarbage()
    assert.is_nil(weak[1], "the switched-to context was not collected after its connection")
  end)
end)

describe("SNI and resumption", function()
  -- A and B differ only in their verification callback (so in their policy); both require
  -- a client certificate.  The client always uses the same name and the same client
  -- context, so its session is offered every time: what decides is the server's policy.
  for _, version in ipairs(VERSIONS) do
    describe(version, function()
      local a, b, reca, recb, route, cctx

      before_each(function()
        reca, recb = support.recorder(), support.recorder()
        a = helper.server_ctx(pin(version, { verify = "require", verify_callback = reca.fn }))
        b = helper.server_ctx(pin(version, { verify = "require", verify_callback = recb.fn }))
        route = "a"
        a:set_servername_callback(function() if route == "b" then return b end end)
        cctx = helper.client_ctx(pin(version, CLIENT_CERT))
      end)

      local function handshake(session)
        local c, s, cok, cmsg, _, sok, smsg = helper.connect(cctx, a, { hostname = "localhost", session = session })
        assert.is_true(cok, cmsg)
        assert.is_true(sok, smsg)
        return c, s
      end

      it("a session made on B is not resumed on A: a full handshake, A's callback runs", function()
        route = "b"
        local c1 = handshake()
        assert.equal(3, #recb.calls)
        local sess = support.session_of(c1)
        assert.is_not_nil(sess, "no resumable session after the first handshake")
        route = "a"
        local c2, s2 = handshake(sess)
        assert.is_false(s2:session_reused())
        assert.is_false(c2:session_reused())
        assert.equal(3, #reca.calls)
        assert.is_true(s2:peer_certificate() == x509("client.pem"))
      end)

      it("a session made on A is resumed on A: the callback does not run again", function()
        local c1 = handshake()
        assert.equal(3, #reca.calls)
        local sess = support.session_of(c1)
        assert.is_not_nil(sess)
        local c2, s2 = handshake(sess)
        assert.is_true(s2:session_reused())
        assert.is_true(c2:session_reused())
        -- OpenSSL does not verify a resumed session again: no callback
        assert.equal(3, #reca.calls)
        assert.equal(0, #recb.calls)
        assert.is_true(s2:peer_certificate() == x509("client.pem"))
      end)

      it("a session made on B is resumed on B", function()
        route = "b"
        local c1 = handshake()
        local sess = support.session_of(c1)
        assert.is_not_nil(sess)
        local c2, s2 = handshake(sess)
        assert.is_true(s2:session_reused())
        assert.is_true(c2:session_reused())
        assert.equal(3, #recb.calls)
        assert.equal(0, #reca.calls)
      end)

      it("a session made on A is not resumed on B", function()
        local c1 = handshake()
        local sess = support.session_of(c1)
        assert.is_not_nil(sess)
        route = "b"
        local c2, s2 = handshake(sess)
        assert.is_false(s2:session_reused())
        assert.is_false(c2:session_reused())
        assert.equal(3, #recb.calls)
      end)
    end)
  end
end)
