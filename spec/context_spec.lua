-- context_spec.lua: doc/reference.md "Contexts", sslctx.new and the context setters.
local sslctx = require "sslctx"
local helper = require "helper"

local pki, read = helper.pki, helper.read

-- Calls sslctx.new(opts) expecting a raise; returns the message.
local function new_err(opts)
  local ok, err = pcall(sslctx.new, opts)
  assert(not ok, "expected sslctx.new to raise")
  return tostring(err)
end

local function assert_raises_naming(opts, key)
  local msg = new_err(opts)
  assert(msg:find(key, 1, true), "expected the error to name '" .. key .. "', got: " .. msg)
end

-- sslctx.new(opts) expecting nil, message, kind.
local function new_fails(opts, kind)
  local ctx, msg, k = sslctx.new(opts)
  assert.is_nil(ctx)
  assert.is_string(msg)
  assert.is_true(#msg > 0)
  if kind then assert.equal(kind, k, "message: " .. tostring(msg)) end
  return msg, k
end

local function server_opts(extra)
  return helper.merge({
    side = "server", certificate = pki("server-chain.pem"), key = pki("server.key"),
    security_level = 1,
  }, extra)
end

-- A client that does not verify (so only the server's configuration is under test),
-- connecting to a server made from `sopts`.  Returns c, s after a successful handshake.
local function handshake_with(sopts, copts)
  local sctx = helper.new_ctx(sopts)
  local cctx = helper.client_ctx(helper.merge({ verify = "never" }, copts))
  return helper.connected(cctx, sctx)
end

local SERVER_SUBJECT = "CN=localhost"

describe("sslctx.new", function()
  describe("side and verify", function()
    it("defaults to a client context whose mode is 'always'", function()
      local ctx = sslctx.new()
      assert.is_not_nil(ctx)
      local flags, int, preset = ctx:get_verification_mode("client")
      assert.same({ "verify_peer" }, flags)
      assert.equal(1, int)
      assert.equal("always", preset)
    end)

    it("a server context defaults to 'never'", function()
      local ctx = helper.new_ctx({ side = "server" })
      local flags, int, preset = ctx:get_verification_mode("server")
      assert.same({}, flags)
      assert.equal(0, int)
      assert.equal("never", preset)
    end)

    it("a 'both' context has both defaults and takes {client=, server=}", function()
      local ctx = helper.new_ctx({ side = "both" })
      assert.equal("always", select(3, ctx:get_verification_mode("client")))
      assert.equal("never", select(3, ctx:get_verification_mode("server")))
      local ctx2 = helper.new_ctx({ side = "both", verify = { client = "never", server = "require" } })
      local _, ci, cp = ctx2:get_verification_mode("client")
      local _, si, sp = ctx2:get_verification_mode("server")
      assert.equal(0, ci); assert.equal("never", cp)
      assert.equal(3, si); assert.equal("require", sp)
    end)

    it("a 'both' context refuses any verify key but client and server", function()
      for _, v in ipairs({ { clinet = "never" }, { "verify_peer", "fail_if_no_peer_cert" },
                           { client = "never", [1] = "x" } }) do
        local ok, err = pcall(sslctx.new, { side = "both", verify = v })
        assert.is_false(ok)
        assert.truthy(tostring(err):find("option 'verify': a 'both' context takes", 1, true), err)
      end
    end)

    it("a 'both' context needs opts.side in new_connection and applies that side's mode", function()
      local ctx = helper.new_ctx(server_opts({ side = "both", ca_file = pki("ca.pem"),
        verify = { client = "never", server = "require" } }))
      assert.has_error(function() ctx:new_connection() end)
      assert.has_error(function() ctx:new_connection({}) end)
      local s = ctx:new_connection({ side = "server" })
      assert.equal(3, select(2, s:get_verification_mode("server")))
      local c = ctx:new_connection({ side = "client" })
      assert.equal(0, select(2, c:get_verification_mode("client")))
      -- the server side of a "both" context refuses a client without certificate
      local _, _, _, sok, _, skind = helper.pump(c, s)
      assert.is_nil(sok)
      assert.equal("verify", skind)
    end)

    -- Regression (found by reading): reading the options runs Lua code (here an __index
    -- metamethod) that may close the context; new_connection then used it as NULL.
    it("new_connection whose options close the context raises, naming the context", function()
      local VALUES = { side = "client", hostname = "localhost" }
      for _, key in ipairs({ "side", "fd" }) do
        local ctx = helper.new_ctx({ side = "both" })
        local opts = setmetatable({}, { __index = function(_, k)
          if k == key then ctx:close() end
          return VALUES[k]
        end })
        local msg = helper.raises(ctx.new_connection, ctx, opts)
        assert.truthy(msg:find("bad argument #1", 1, true) and msg:find("context was closed", 1, true),
                      key .. ": " .. msg)
      end
      -- the options read once the SSL exists: the connection already holds its own
      -- reference to the context and a snapshot of its trust
      for _, key in ipairs({ "verify_hostname", "hostname", "session" }) do
        local ctx = helper.new_ctx({ side = "both" })
        local opts = setmetatable({}, { __index = function(_, k)
          if k == key then ctx:close() end
          return VALUES[k]
        end })
        local c = ctx:new_connection(opts)
        assert.equal("sslctx.context (closed)", tostring(ctx))
        c:close()
      end
    end)

    -- The same for set_verify_params: the parameters were fetched before the table was read,
    -- and written after the object had freed them.
    it("set_verify_params / set_trust whose table closes the object raise instead of writing", function()
      local function closing(obj)
        return setmetatable({}, { __index = function(_, k)
          if k == "depth" then obj:close(); return 3 end
        end })
      end
      local ctx = helper.new_ctx({ side = "server" })
      local msg = helper.raises(ctx.set_verify_params, ctx, closing(ctx))
      assert.truthy(msg:find("closed while the parameters were read", 1, true), msg)
      local cctx = helper.client_ctx()
      local c = cctx:new_connection({ hostname = "localhost" })
      msg = helper.raises(c.set_verify_params, c, closing(c))
      assert.truthy(msg:find("closed while the parameters were read", 1, true), msg)
      assert.equal("sslctx.connection (closed)", tostring(c))
      -- and conn:set_trust, which handed a closed connection's NULL to OpenSSL
      local c2 = cctx:new_connection({ hostname = "localhost" })
      local trust = setmetatable({}, { __index = function(_, k)
        if k == "ca" then c2:close(); return helper.read("ca.pem") end
      end })
      msg = helper.raises(c2.set_trust, c2, trust)
      assert.truthy(msg:find("closed while the trust table was read", 1, true), msg)
    end)

    it("verify takes every mode form", function()
      assert.equal(3, select(2, helper.new_ctx({ side = "server", verify = "require" }):get_verification_mode("server")))
      assert.equal(5, select(2, helper.new_ctx({ side = "server", verify = 5 }):get_verification_mode("server")))
      assert.equal(9, select(2, helper.new_ctx({ side = "server",
        verify = { "verify_peer", "verify-post-handshake" } }):get_verification_mode("server")))
      assert.equal(0, select(2, helper.new_ctx({ side = "client", verify = "never" }):get_verification_mode("client")))
      assert.equal(0, select(2, helper.new_ctx({ side = "client", verify = {} }):get_verification_mode("client")))
    end)

    it("raises on a bad side or verify, naming the option", function()
      assert_raises_naming({ side = "sever" }, "side")
      assert_raises_naming({ side = 1 }, "side")
      assert_raises_naming({ verify = "sometimes" }, "verify")
      assert_raises_naming({ side = "client", verify = "once" }, "verify")
      assert_raises_naming({ side = "client", verify = { "verify_peer", "fail_if_no_peer_cert" } }, "verify")
      assert_raises_naming({ side = "server", verify = { "verify_pear" } }, "verify")
      assert_raises_naming({ side = "server", verify = 16 }, "verify")
    end)

    it("raises on a bad verify_depth, naming the option", function()
      assert_raises_naming({ verify_depth = "deep" }, "verify_depth")
    end)

    it("raises on an opts that is not a table", function()
      assert.has_error(function() sslctx.new("client") end)
      assert.has_error(function() sslctx.new(42) end)
    end)

    -- Assumption: an unknown option key is "an unknown keyword" (a caller's bug) and raises.
    it("raises on an unknown option key, naming it", function()
      assert_raises_naming({ verfy = "never" }, "verfy")
    end)
  end)

  describe("certificate and key", function()
    it("load from file paths", function()
      local c = handshake_with(server_opts())
      assert.equal(SERVER_SUBJECT, c:peer_certificate():subject())
      assert.equal(2, #c:peer_chain())
    end)

    it("load from PEM text, with the chain", function()
      local c = handshake_with(server_opts({
        certificate = read("server-chain.pem"), key = read("server.key") }))
      assert.equal(SERVER_SUBJECT, c:peer_certificate():subject())
      local chain = c:peer_chain()
      assert.equal(2, #chain)
      assert.equal(helper.cli_subject("int.pem"), chain[2]:subject())
    end)

    it("PEM text may start with blanks", function()
      local c = handshake_with(server_opts({
        certificate = "\n  \n" .. read("server.pem"), key = "\n" .. read("server.key") }))
      assert.equal(SERVER_SUBJECT, c:peer_certificate():subject())
    end)

    it("load from objects (sslctx.x509, sslctx.pkey)", function()
      local x = assert(sslctx.x509(read("server.pem")))
      local k = assert(sslctx.pkey(read("server.key")))
      local c = handshake_with(server_opts({ certificate = x, key = k }))
      assert.is_true(c:peer_certificate() == x)
    end)

    it("the setters use_certificate / use_private_key work after creation", function()
      local sctx = helper.new_ctx({ side = "server", security_level = 1 })
      sctx:use_certificate(pki("rsa-server-chain.pem"))
      sctx:use_private_key(read("rsa-server.key"))
      local cctx = helper.client_ctx()
      local c = helper.connected(cctx, sctx)
      assert.is_true(c:peer_certificate() == sslctx.x509(read("rsa-server.pem")))
    end)

    it("a missing certificate or key file returns nil, message, 'file'", function()
      new_fails(server_opts({ certificate = pki("no-such-file.pem") }), "file")
      new_fails(server_opts({ key = pki("no-such-file.key") }), "file")
    end)

    it("an unparsable certificate returns nil, message, kind", function()
      -- Assumption: PEM text that does not parse is reported like a file that does not
      -- parse ("file"); the contract only fixes nil, message, kind for it.
      local msg, kind = new_fails(server_opts({
        certificate = "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n" }))
      assert.is_true(kind == "file" or kind == "ssl", "kind " .. tostring(kind) .. ": " .. msg)
    end)

    it("a key that does not match the certificate returns nil, message, 'key'", function()
      new_fails(server_opts({ key = pki("client.key") }), "key")
      new_fails(server_opts({ key = read("other-ca.key") }), "key")
    end)

    it("an encrypted key: a wrong or missing password returns nil, message, 'key'", function()
      new_fails(server_opts({ key = pki("server-enc.key"), password = "wrong" }), "key")
      new_fails(server_opts({ key = read("server-enc.key"), password = "wrong" }), "key")
      new_fails(server_opts({ key = pki("server-enc.key") }), "key")
    end)

    it("an encrypted key with the right password string works", function()
      local c = handshake_with(server_opts({ key = pki("server-enc.key"), password = "secret" }))
      assert.equal(SERVER_SUBJECT, c:peer_certificate():subject())
    end)

    it("an encrypted key with a password function works, called with (max_len, rwflag)", function()
      local calls = {}
      local c = handshake_with(server_opts({ key = read("server-enc.key"),
        password = function(max_len, rwflag)
          calls[#calls + 1] = { max_len, rwflag }
          return "secret"
        end }))
      assert.equal(SERVER_SUBJECT, c:peer_certificate():subject())
      assert.is_true(#calls >= 1)
      assert.is_number(calls[1][1])
      assert.is_true(calls[1][1] > 0)
      assert.is_not_nil(calls[1][2])
    end)

    it("a password callback that raises returns nil, 'password callback: ...', 'callback'", function()
      local msg = new_fails(server_opts({ key = pki("server-enc.key"),
        password = function() error("no pass today", 0) end }), "callback")
      assert.equal(1, msg:find("password callback: ", 1, true), msg)
      assert.truthy(msg:find("no pass today", 1, true))
    end)

    it("a password callback returning something invalid is a callback error", function()
      new_fails(server_opts({ key = pki("server-enc.key"),
        password = function() return {} end }), "callback")
    end)

    -- Regression (found by reading): the callback is user code; a context it closed was then
    -- handed to OpenSSL as NULL (SIGSEGV).
    it("a password callback that closes its own context: use_private_key raises", function()
      local sctx = helper.new_ctx({ side = "server", security_level = 1 })
      local msg = helper.raises(sctx.use_private_key, sctx, pki("server-enc.key"),
                                function() sctx:close(); return "secret" end)
      assert.truthy(msg:find("context was closed while its key was loading", 1, true), msg)
      assert.equal("sslctx.context (closed)", tostring(sctx))
    end)

    it("set_password_callback then use_private_key", function()
      local sctx = helper.new_ctx({ side = "server", security_level = 1 })
      sctx:set_password_callback{ password = "secret" }
      sctx:use_certificate(pki("server-chain.pem"))
      sctx:use_private_key(pki("server-enc.key"))
      local c = helper.connected(helper.client_ctx(), sctx)
      assert.equal(SERVER_SUBJECT, c:peer_certificate():subject())
      local sctx2 = helper.new_ctx({ side = "server", security_level = 1 })
      sctx2:set_password_callback{ callback = function() return "secret" end }
      sctx2:use_certificate(pki("server-chain.pem"))
      sctx2:use_private_key(pki("server-enc.key"))
      helper.connected(helper.client_ctx(), sctx2)
    end)

    it("use_private_key takes a password argument", function()
      local sctx = helper.new_ctx({ side = "server", security_level = 1 })
      sctx:use_certificate(pki("server-chain.pem"))
      local ok, msg, kind = sctx:use_private_key(pki("server-enc.key"), "wrong")
      assert.is_nil(ok)
      assert.is_string(msg)
      assert.equal("key", kind)
      assert.truthy(sctx:use_private_key(pki("server-enc.key"), "secret"))
      helper.connected(helper.client_ctx(), sctx)
    end)

    it("raises on wrong types, naming the option", function()
      assert_raises_naming(server_opts({ certificate = 42 }), "certificate")
      assert_raises_naming(server_opts({ key = {} }), "key")
      assert_raises_naming(server_opts({ key = pki("server-enc.key"), password = {} }), "password")
    end)
  end)

  describe("trust anchors", function()
    local function verify_against_good(copts)
      local cctx = helper.new_ctx(helper.merge({ side = "client", security_level = 1 }, copts))
      local sctx = helper.server_ctx()
      return helper.connect(cctx, sctx)
    end

    it("ca_file", function()
      local _, _, cok, cmsg = verify_against_good({ ca_file = pki("ca.pem") })
      assert.is_true(cok, cmsg)
    end)

    it("ca_path (hashed directory)", function()
      local _, _, cok, cmsg = verify_against_good({ ca_path = pki("capath") })
      assert.is_true(cok, cmsg)
    end)

    it("a ca_path that is missing or not a directory is a 'file' failure, not a silent one", function()
      local missing = pki("no-such-dir")
      for _, dir in ipairs({ missing, pki("ca.pem"), pki("capath") .. ":" .. missing }) do
        local ctx, msg, kind = sslctx.new({ ca_path = dir })
        assert.is_nil(ctx)
        assert.equal("file", kind, msg)
        assert.truthy(msg:find("trust directory '", 1, true), msg)
        local good = helper.new_ctx({})
        local ok, msg2, kind2 = good:load_verify_locations(nil, dir)
        assert.is_nil(ok)
        assert.equal("file", kind2, msg2)
      end
      assert.truthy(select(2, sslctx.new({ ca_path = missing })):find("No such file", 1, true))
      assert.truthy(select(2, sslctx.new({ ca_path = pki("ca.pem") })):find("not a directory", 1, true))
      -- a list with an empty element is fine
      assert.is_truthy(sslctx.new({ ca_path = pki("capath") .. "::" }))
    end)

    it("ca (PEM text)", function()
      local _, _, cok, cmsg = verify_against_good({ ca = read("ca.pem") })
      assert.is_true(cok, cmsg)
    end)

    it("a wrong anchor fails verification", function()
      local c, _, cok, _, ckind = verify_against_good({ ca = read("other-ca.pem") })
      assert.is_nil(cok)
      assert.equal("verify", ckind)
      assert.equal(helper.openssl_verify{ cert = "server.pem", untrusted = "int.pem",
        CAfile = "other-ca.pem", host = "localhost" }, (c:verify_result()))
    end)

    it("a missing ca_file returns nil, message, 'file'", function()
      new_fails({ side = "client", ca_file = pki("no-such-ca.pem") }, "file")
    end)

    it("load_verify_locations after creation", function()
      local cctx = helper.new_ctx({ side = "client", security_level = 1, ca = read("other-ca.pem") })
      cctx:load_verify_locations(pki("ca.pem"))
      local _, _, cok, cmsg = helper.connect(cctx, helper.server_ctx())
      assert.is_true(cok, cmsg)
      local cctx2 = helper.new_ctx({ side = "client", security_level = 1, ca = read("other-ca.pem") })
      cctx2:load_verify_locations(nil, pki("capath"))
      local _, _, cok2, cmsg2 = helper.connect(cctx2, helper.server_ctx())
      assert.is_true(cok2, cmsg2)
    end)

    it("set_default_verify_paths is callable", function()
      local cctx = helper.new_ctx({ side = "client", ca_file = pki("ca.pem") })
      cctx:set_default_verify_paths()
      local _, _, cok = helper.connect(cctx, helper.server_ctx())
      assert.is_true(cok)
    end)
  end)

  describe("client_ca", function()
    -- The names are not observable through the API: these check acceptance and that
    -- the handshake still works with client certificates.
    it("accepts a list of files and PEM text, and false", function()
      for _, v in ipairs({ { pki("ca.pem") }, { read("ca.pem"), pki("int.pem") }, false }) do
        local sctx = helper.server_ctx({ verify = "require", client_ca = v })
        local cctx = helper.client_ctx({ certificate = pki("client-chain.pem"), key = pki("client.key") })
        local _, s = helper.connected(cctx, sctx)
        assert.equal("CN=Test Client,O=sslctx", s:peer_certificate():subject())
      end
    end)

    it("set_client_ca_list after creation", function()
      local sctx = helper.server_ctx({ verify = "require" })
      sctx:set_client_ca_list({ pki("ca.pem") })
      sctx:set_client_ca_list(false)
      local cctx = helper.client_ctx({ certificate = pki("client-chain.pem"), key = pki("client.key") })
      helper.connected(cctx, sctx)
    end)

    it("raises on a wrong type, naming the option", function()
      assert_raises_naming(server_opts({ client_ca = 42 }), "client_ca")
    end)

    it("a missing file returns nil, message, 'file'", function()
      new_fails(server_opts({ client_ca = { pki("no-such-ca.pem") } }), "file")
    end)
  end)

  describe("versions", function()
    it("max_version tls1.2 gives TLSv1.2, min_version tls1.3 gives TLSv1.3", function()
      local c, s = handshake_with(server_opts({ max_version = "tls1.2" }))
      assert.equal("TLSv1.2", c:version())
      assert.equal("TLSv1.2", s:version())
      c, s = handshake_with(server_opts({ min_version = "tls1.3" }))
      assert.equal("TLSv1.3", c:version())
      assert.equal("TLSv1.3", s:version())
      c = handshake_with(server_opts(), { max_version = "tls1.2" })
      assert.equal("TLSv1.2", c:version())
    end)

    it("disjoint versions fail the handshake", function()
      local sctx = helper.new_ctx(server_opts({ min_version = "tls1.3" }))
      local cctx = helper.client_ctx({ verify = "never", max_version = "tls1.2" })
      local _, _, cok, cmsg, ckind, sok = helper.connect(cctx, sctx)
      assert.is_nil(cok)
      assert.is_string(cmsg)
      assert.is_nil(sok)
      assert.is_true(ckind == "ssl", tostring(ckind))
    end)

    it("raises on a bad version, naming the option", function()
      assert_raises_naming({ min_version = "tls9" }, "min_version")
      assert_raises_naming({ max_version = "sslv2" }, "max_version")
      assert_raises_naming({ max_version = 1.2 }, "max_version")
    end)
  end)

  describe("security_level", function()
    it("accepts 0 to 5", function()
      for n = 0, 5 do assert.is_not_nil(sslctx.new({ security_level = n })) end
    end)

    it("raises on 6, -1 and non-numbers, naming the option", function()
      assert_raises_naming({ security_level = 6 }, "security_level")
      assert_raises_naming({ security_level = -1 }, "security_level")
      assert_raises_naming({ security_level = "high" }, "security_level")
    end)
  end)

  describe("ciphers, ciphersuites, groups", function()
    -- The contract does not fix how a bad string is reported: raise, or nil, message,
    -- kind.  Either is accepted, but there must be a message.
    local function bad_is_reported(opts)
      local ok, ctx, msg = pcall(sslctx.new, opts)
      if not ok then
        assert.is_true(#tostring(ctx) > 0)
      else
        assert.is_nil(ctx)
        assert.is_string(msg)
        assert.is_true(#msg > 0)
      end
    end

    it("a bad string is reported", function()
      bad_is_reported({ ciphers = "NO-SUCH-CIPHER" })
      bad_is_reported({ ciphersuites = "TLS_NO_SUCH_SUITE" })
      bad_is_reported({ groups = "no-such-group" })
    end)

    it("ciphers picks the TLS 1.2 suite", function()
      local c = handshake_with(server_opts({ max_version = "tls1.2", ciphers = "ECDHE-ECDSA-AES256-GCM-SHA384" }))
      assert.equal("ECDHE-ECDSA-AES256-GCM-SHA384", c:cipher())
      c = handshake_with(server_opts({ max_version = "tls1.2", ciphers = "ECDHE-ECDSA-CHACHA20-POLY1305" }))
      assert.equal("ECDHE-ECDSA-CHACHA20-POLY1305", c:cipher())
    end)

    it("ciphersuites picks the TLS 1.3 suite", function()
      local c, s = handshake_with(server_opts({ ciphersuites = "TLS_CHACHA20_POLY1305_SHA256" }),
                                  { ciphersuites = "TLS_CHACHA20_POLY1305_SHA256" })
      assert.equal("TLS_CHACHA20_POLY1305_SHA256", c:cipher())
      assert.equal("TLS_CHACHA20_POLY1305_SHA256", s:cipher())
    end)

    it("set_ciphers / set_ciphersuites after creation", function()
      local sctx = helper.new_ctx(server_opts({ max_version = "tls1.2" }))
      sctx:set_ciphers("ECDHE-ECDSA-AES128-GCM-SHA256")
      local c = helper.connected(helper.client_ctx({ verify = "never" }), sctx)
      assert.equal("ECDHE-ECDSA-AES128-GCM-SHA256", c:cipher())
      local sctx2 = helper.new_ctx(server_opts())
      sctx2:set_ciphersuites("TLS_AES_128_GCM_SHA256")
      local cctx2 = helper.client_ctx({ verify = "never" })
      cctx2:set_ciphersuites("TLS_AES_128_GCM_SHA256")
      local c2 = helper.connected(cctx2, sctx2)
      assert.equal("TLS_AES_128_GCM_SHA256", c2:cipher())
    end)

    it("groups restricts the key exchange", function()
      handshake_with(server_opts({ groups = "P-256" }), { groups = "P-256:X25519" })
      local sctx = helper.new_ctx(server_opts({ groups = "P-384" }))
      local cctx = helper.client_ctx({ verify = "never", groups = "X25519" })
      local _, _, cok, _, _, sok = helper.connect(cctx, sctx)
      assert.is_nil(cok)
      assert.is_nil(sok)
    end)
  end)

  describe("alpn", function()
    it("the alpn option is offered and selected", function()
      local sctx = helper.server_ctx()
      sctx:set_alpn_select({ "http/1.1" })
      local cctx = helper.client_ctx({ alpn = { "h2", "http/1.1" } })
      local c, s = helper.connected(cctx, sctx)
      assert.equal("http/1.1", c:alpn())
      assert.equal("http/1.1", s:alpn())
    end)

    -- Regression: the wire form was built with the name pushed above the luaL_Buffer when
    -- the length byte went in; when the buffer was full right then (four 256-byte entries
    -- fill 5.4's, 32 those of 5.1-5.3) that byte grew or flushed it under the wrong stack
    -- slot: a use after free on 5.4, a crash on 5.3, a garbled list on 5.1.  Lists of
    -- 255-byte names across those boundaries reach the server byte for byte.
    it("long protocol lists reach the server intact, in order", function()
      for _, count in ipairs({ 1, 4, 5, 6, 31, 32, 33, 40 }) do
        local offered = {}
        for i = 1, count do offered[i] = string.char(65 + i % 26):rep(255) end
        offered[#offered + 1] = "h2"
        local seen
        local sctx = helper.server_ctx()
        sctx:set_alpn_select(function(list) seen = list; return "h2" end)
        local cctx = helper.client_ctx({ alpn = offered })
        local c = helper.connected(cctx, sctx)
        assert.equal("h2", c:alpn(), count .. " names")
        assert.same(offered, seen, count .. " names")
        local sctx2 = helper.server_ctx()
        sctx2:set_alpn_select(offered)
        local c2 = helper.connected(helper.client_ctx({ alpn = { offered[count] } }), sctx2)
        assert.equal(offered[count], c2:alpn(), count .. " names, server list")
      end
    end)

    it("raises on a bad list, naming the option", function()
      assert_raises_naming({ alpn = 42 }, "alpn")
      assert_raises_naming({ alpn = { {} } }, "alpn")
      -- protocol names are 1..255 bytes (RFC 7301)
      assert_raises_naming({ alpn = { "" } }, "alpn")
      assert_raises_naming({ alpn = { string.rep("a", 256) } }, "alpn")
    end)
  end)

  describe("options", function()
    local function has(list, name)
      for _, v in ipairs(list) do if v == name then return true end end
      return false
    end

    it("set_options adds, clear_options removes, get_options lists keywords", function()
      local ctx = helper.new_ctx({ side = "server" })
      local before = ctx:get_options()
      assert.is_table(before)
      assert.is_false(has(before, "no_ticket"))
      ctx:set_options({ "no_ticket" })
      assert.is_true(has(ctx:get_options(), "no_ticket"))
      ctx:set_options({ "cipher_server_preference" })
      local now = ctx:get_options()
      assert.is_true(has(now, "no_ticket"))            -- adds, does not replace
      assert.is_true(has(now, "cipher_server_preference"))
      ctx:clear_options({ "no_ticket" })
      now = ctx:get_options()
      assert.is_false(has(now, "no_ticket"))
      assert.is_true(has(now, "cipher_server_preference"))
    end)

    it("the options key of sslctx.new sets them", function()
      local ctx = helper.new_ctx({ side = "server", options = { "no_ticket" } })
      assert.is_true(has(ctx:get_options(), "no_ticket"))
    end)

    it("raises on an unknown keyword", function()
      local ctx = helper.new_ctx({ side = "server" })
      assert.has_error(function() ctx:set_options({ "no_such_option" }) end)
      assert.has_error(function() ctx:clear_options({ "no_such_option" }) end)
      assert_raises_naming({ options = { "no_such_option" } }, "no_such_option")
    end)
  end)

  describe("set_dh", function()
    local function dhe_handshake(arg)
      local sctx = helper.new_ctx({ side = "server", certificate = pki("rsa-server-chain.pem"),
        key = pki("rsa-server.key"), max_version = "tls1.2", ciphers = "DHE-RSA-AES128-GCM-SHA256",
        security_level = 1 })
      sctx:set_dh(arg)
      local cctx = helper.client_ctx({ verify = "never", ciphers = "DHE-RSA-AES128-GCM-SHA256" })
      local c = helper.connected(cctx, sctx)
      assert.equal("DHE-RSA-AES128-GCM-SHA256", c:cipher())
    end

    it("'auto' enables DHE", function() dhe_handshake("auto") end)
    it("a file enables DHE", function() dhe_handshake(pki("dh2048.pem")) end)
    it("PEM text enables DHE", function() dhe_handshake(read("dh2048.pem")) end)

    it("a missing file returns nil, message, 'file'", function()
      local ctx = helper.new_ctx({ side = "server" })
      local ok, msg, kind = ctx:set_dh(pki("no-such-dh.pem"))
      assert.is_nil(ok)
      assert.is_string(msg)
      assert.equal("file", kind)
    end)

    it("raises on a wrong type", function()
      local ctx = helper.new_ctx({ side = "server" })
      assert.has_error(function() ctx:set_dh(2048) end)
      assert.has_error(function() ctx:set_dh() end)
    end)
  end)

  describe("set_session_id_context", function()
    it("accepts up to 32 bytes and raises above", function()
      local ctx = helper.new_ctx({ side = "server" })
      ctx:set_session_id_context("x")
      ctx:set_session_id_context(string.rep("a", 32))
      assert.has_error(function() ctx:set_session_id_context(string.rep("a", 33)) end)
      assert.has_error(function() ctx:set_session_id_context({}) end)
    end)
  end)

  describe("lifetime", function()
    it("close() is idempotent", function()
      local ctx = helper.new_ctx({ side = "server" })
      ctx:close()
      ctx:close()
    end)

    it("methods on a closed context raise", function()
      local ctx = helper.new_ctx({ side = "server" })
      ctx:close()
      assert.has_error(function() ctx:new_connection() end)
      assert.has_error(function() ctx:set_verification_mode("server", "never") end)
      assert.has_error(function() ctx:get_verification_mode("server") end)
      assert.has_error(function() ctx:set_verify_depth(1) end)
      assert.has_error(function() ctx:set_options({ "no_ticket" }) end)
      assert.has_error(function() ctx:use_certificate(pki("server.pem")) end)
    end)

    it("__gc: contexts are collected, with or without close()", function()
      for _ = 1, 50 do
        sslctx.new({ side = "server" })   -- dropped at once: only __gc releases it
        local b = sslctx.new({ side = "client" })
        b:close()
      end
      collectgarbage("collect")
      collectgarbage("collect")
      local mt = getmetatable(sslctx.new())
      -- __metatable may hide it; if not, it has __gc
      if type(mt) == "table" then assert.is_function(mt.__gc) end
    end)

    it("a connection keeps working after its context is unreferenced and collected", function()
      local c, s
      do
        local cctx, sctx = helper.contexts{}
        c = cctx:new_connection({ hostname = "localhost" })
        s = sctx:new_connection()
      end
      collectgarbage("collect")
      collectgarbage("collect")
      local cok, cmsg, _, sok, smsg = helper.pump(c, s)
      assert.is_true(cok, cmsg)
      assert.is_true(sok, smsg)
      assert.equal("ping", helper.exchange(c, s, "ping"))
    end)

    if helper.LUA54 then
      it("__close closes the context at the end of its scope (Lua 5.4)", function()
        local chunk = assert(load([[
          local sslctx = ...
          local kept
          do
            local ctx <close> = sslctx.new({ side = "server" })
            kept = ctx
            assert(ctx:get_verification_mode("server") ~= nil)
          end
          return kept
        ]]))
        local kept = chunk(sslctx)
        assert.has_error(function() kept:new_connection() end)
        kept:close() -- still idempotent
      end)
    end
  end)

  describe("sslctx.openssl_version", function()
    it("matches the library the openssl CLI reports", function()
      local v = sslctx.openssl_version()
      assert.is_string(v)
      assert.truthy(v:find("^OpenSSL %d"))
      assert.equal(v, sslctx.openssl_version("version"))
      local cli = helper.openssl("version"):gsub("%s+$", "")
      local lib = cli:match("%(Library: (.-)%)$") or cli
      assert.equal(lib, v)
    end)

    -- `what` names as in the reference : version, built_on, directory, platform, cflags.
    it("answers what = directory like openssl version -d", function()
      local d = sslctx.openssl_version("directory")
      assert.equal((helper.openssl("version -d"):gsub("%s+$", "")), d)
      for _, what in ipairs({ "built_on", "platform", "cflags" }) do
        assert.is_string(sslctx.openssl_version(what))
      end
    end)

    it("raises on an unknown what", function()
      assert.has_error(function() sslctx.openssl_version("colour") end)
    end)
  end)
end)
