-- servername_spec.lua: doc/reference.md ctx:set_servername_callback, the session callback and session options.
local sslctx = require "sslctx"
local helper = require "helper"

local pki, read = helper.pki, helper.read

local function x509(name) return assert(sslctx.x509(read(name))) end

local function wronghost_ctx(extra)
  return helper.server_ctx(helper.merge({ certificate = pki("wronghost-chain.pem"),
                                          key = pki("wronghost.key") }, extra))
end

describe("set_servername_callback", function()
  it("gets the name the client sent; the returned context's certificate is used", function()
    local front, other = helper.server_ctx(), wronghost_ctx()
    local names = {}
    front:set_servername_callback(function(name)
      names[#names + 1] = name
      if name == "wrong.example" then return other end
    end)
    local cctx = helper.client_ctx()
    local c, s = helper.connected(cctx, front, { hostname = "wrong.example" })
    assert.same({ "wrong.example" }, names)
    assert.is_true(c:peer_certificate() == x509("wronghost.pem"))
    assert.equal("wrong.example", s:servername())
    -- nil keeps the current context
    local c2 = helper.connected(cctx, front, { hostname = "good.example" })
    assert.is_true(c2:peer_certificate() == x509("server.pem"))
    assert.same({ "wrong.example", "good.example" }, names)
  end)

  it("the switch applies the new context's mode", function()
    local front = helper.server_ctx({ verify = "never" })
    local strict = wronghost_ctx({ verify = "require" })
    front:set_servername_callback(function(name) if name == "wrong.example" then return strict end end)
    local cctx = helper.client_ctx()
    local _, s, _, _, _, sok, smsg, skind = helper.connect(cctx, front, { hostname = "wrong.example" })
    assert.is_nil(sok)
    assert.equal("verify", skind, smsg)
    assert.equal(3, select(2, s:get_verification_mode("server")))
    -- the front context is unchanged: without the switch a client without certificate is in
    local _, _, _, _, _, sok2, smsg2 = helper.connect(cctx, front, { hostname = "localhost" })
    assert.is_true(sok2, smsg2)
  end)

  it("the switch applies the new context's trust store and callback", function()
    local front = helper.server_ctx({ verify = "require" })              -- trusts ca.pem
    local calls = 0
    local other = wronghost_ctx({ verify = "require", ca_file = pki("other-ca.pem") })
    other:set_verification_mode("server", "require", function() calls = calls + 1 end)
    front:set_servername_callback(function(name) if name == "wrong.example" then return other end end)
    local cctx = helper.client_ctx({ certificate = pki("client-untrusted-chain.pem"),
                                     key = pki("client-untrusted.key") })
    -- through the front context: rejected (untrusted issuer)
    local _, _, _, _, _, sok, _, skind = helper.connect(cctx, front, { hostname = "localhost" })
    assert.is_nil(sok)
    assert.equal("verify", skind)
    -- switched: the other trust store accepts it, and the other callback runs
    local _, s2, cok2, cmsg2, _, sok2, smsg2 = helper.connect(cctx, front, { hostname = "wrong.example" })
    assert.is_true(sok2, smsg2)
    assert.is_true(cok2, cmsg2)
    assert.equal("CN=Untrusted Client,O=sslctx", s2:peer_certificate():subject())
    assert.is_true(calls >= 1)
  end)

  it("the switch applies the new context's depth", function()
    local front = helper.server_ctx({ verify = "require" })
    local shallow = wronghost_ctx({ verify = "require", verify_depth = 0 })
    front:set_servername_callback(function(name) if name == "wrong.example" then return shallow end end)
    local cctx = helper.client_ctx({ certificate = pki("client-chain.pem"), key = pki("client.key") })
    local _, _, _, _, _, sok, smsg = helper.connect(cctx, front, { hostname = "localhost" })
    assert.is_true(sok, smsg)
    local _, _, _, _, _, sok2, _, skind2 = helper.connect(cctx, front, { hostname = "wrong.example" })
    assert.is_nil(sok2)
    assert.equal("verify", skind2)
  end)

  it("the connection keeps the switched-to context alive", function()
    local front = helper.server_ctx()
    front:set_servername_callback(function() return wronghost_ctx() end)
    local cctx = helper.client_ctx({ verify = "never" })
    local c, s = helper.connected(cctx, front, { hostname = "wrong.example" })
    collectgarbage("collect")
    collectgarbage("collect")
    assert.equal("alive", helper.exchange(c, s, "alive"))
    assert.equal("and well", helper.exchange(s, c, "and well"))
    assert.is_true(c:peer_certificate() == x509("wronghost.pem"))
  end)

  it("an error fails the handshake with 'servername callback: <error>', kind 'callback'", function()
    local front = helper.server_ctx()
    front:set_servername_callback(function() error("no such site", 0) end)
    local _, _, cok, _, _, sok, smsg, skind = helper.connect(helper.client_ctx(), front)
    assert.is_nil(sok)
    assert.equal("callback", skind)
    assert.equal("servername callback: no such site", smsg)
    assert.is_not_true(cok)
  end)

  it("returning something that is not a context is a callback error", function()
    local front = helper.server_ctx()
    front:set_servername_callback(function() return "other" end)
    local _, _, _, _, _, sok, smsg, skind = helper.connect(helper.client_ctx(), front)
    assert.is_nil(sok)
    assert.equal("callback", skind)
    assert.equal(1, smsg:find("servername callback: ", 1, true), smsg)
  end)
end)

describe("set_session_callback", function()
  for _, version in ipairs({ "tls1.2", "tls1.3" }) do
    it(version .. ": called with the connection and a resumable session", function()
      local cctx, sctx = helper.contexts{ client = { min_version = version, max_version = version } }
      local got = {}
      cctx:set_session_callback(function(conn, session)
        got[#got + 1] = { conn = conn, session = session }
      end)
      local c = helper.connected(cctx, sctx)
      c:read()
      assert.is_true(#got >= 1)
      assert.is_true(rawequal(c, got[1].conn))
      local c2, s2 = helper.connected(cctx, sctx, { session = got[#got].session })
      assert.is_true(c2:session_reused())
      assert.is_true(s2:session_reused())
    end)
  end

  it("an error fails closed with 'session callback: <error>', kind 'callback'", function()
    local cctx, sctx = helper.contexts{ client = { min_version = "tls1.3" } }
    cctx:set_session_callback(function() error("disk full", 0) end)
    local c, s = helper.connected(cctx, sctx)
    local data, msg, kind = c:read()
    assert.is_nil(data)
    assert.equal("callback", kind)
    assert.equal("session callback: disk full", msg)
    assert.is_not_nil(s)
  end)
end)

describe("session options", function()
  it("session_tickets = false still resumes through the server's cache (TLS 1.2)", function()
    local cctx, sctx = helper.contexts{ client = { max_version = "tls1.2" },
                                        server = { session_tickets = false } }
    local c = helper.connected(cctx, sctx)
    local sess = c:session()
    assert.is_not_nil(sess)
    local c2, s2 = helper.connected(cctx, sctx, { session = sess })
    assert.is_true(c2:session_reused())
    assert.is_true(s2:session_reused())
  end)

  it("session_cache_size is accepted", function()
    local sctx = helper.server_ctx({ session_cache_size = 10 })
    helper.connected(helper.client_ctx(), sctx)
  end)

  it("an explicit set_session_id_context still lets a session resume", function()
    local cctx, sctx = helper.contexts{ client = { max_version = "tls1.2" } }
    sctx:set_session_id_context("my-app")
    local c = helper.connected(cctx, sctx)
    local c2, s2 = helper.connected(cctx, sctx, { session = c:session() })
    assert.is_true(c2:session_reused())
    assert.is_true(s2:session_reused())
  end)
end)
