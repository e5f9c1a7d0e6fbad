-- resumption_spec.lua: resumption cannot bypass a verification policy (doc/reference.md "The
-- verification policy"; new_connection's opts.session and session_reused()).
--
-- OpenSSL does not verify a resumed session again: the chain check and the verify callback
-- are skipped, and the peer certificate is the one stored in the session.  What keeps a
-- policy from being bypassed is the session id context: the server's is derived from its
-- verification policy (side, mode, callback identity, trust and CRL set, depth, parameters),
-- the client's from its policy and the hostname, so a session made under one policy is
-- never resumed under another (a full handshake, with the callback, happens instead).
local sslctx = require "sslctx"
local helper = require "helper"
local support = require "support.callbacks"

local pki, read = helper.pki, helper.read

local function x509(name) return assert(sslctx.x509(read(name))) end

local CLIENT_CERT = { certificate = pki("client-chain.pem"), key = pki("client.key") }

-- Protocol variants: TLS 1.3 (tickets), TLS 1.2 with tickets, TLS 1.2 with the server's
-- session cache (session ids).
local VARIANTS = {
  { name = "tls1.3", opts = { min_version = "tls1.3", max_version = "tls1.3" } },
  { name = "tls1.2 tickets", opts = { min_version = "tls1.2", max_version = "tls1.2" } },
  { name = "tls1.2 session ids", opts = { min_version = "tls1.2", max_version = "tls1.2",
                                          session_tickets = false } },
}

for _, variant in ipairs(VARIANTS) do
  describe("resumption (" .. variant.name .. ")", function()
    local srec, crec, sctx, cctx

    before_each(function()
      srec, crec = support.recorder(), support.recorder()
      sctx = helper.server_ctx(helper.merge(variant.opts, { verify = "require", verify_callback = srec.fn }))
      cctx = helper.client_ctx(helper.merge(variant.opts, helper.merge(CLIENT_CERT, { verify_callback = crec.fn })))
    end)

    -- A complete handshake (both sides must succeed); returns c, s.
    local function handshake(session, copts, sopts)
      local c, s, cok, cmsg, ckind, sok, smsg, skind = helper.connect(cctx, sctx,
        helper.merge({ session = session }, copts), sopts)
      assert.is_true(cok, "client: " .. tostring(cmsg) .. " (" .. tostring(ckind) .. ")")
      assert.is_true(sok, "server: " .. tostring(smsg) .. " (" .. tostring(skind) .. ")")
      return c, s
    end

    -- First, full handshake: the session to offer later.
    local function first_session()
      local c1, s1 = handshake()
      assert.is_false(c1:session_reused())
      assert.is_false(s1:session_reused())
      assert.equal(3, #srec.calls)
      assert.equal(3, #crec.calls)
      local sess = support.session_of(c1)
      assert.is_not_nil(sess, "no resumable session after the first handshake")
      return sess
    end

    local function assert_resumed(c, s)
      assert.is_true(c:session_reused(), "the client did not resume")
      assert.is_true(s:session_reused(), "the server did not resume")
    end

    -- Not resumed: a full handshake on both sides, and the server's (new) callback ran.
    local function assert_full(c, s, server_calls_before, rec)
      assert.is_false(c:session_reused(), "the client resumed")
      assert.is_false(s:session_reused(), "the server resumed")
      rec = rec or srec
      assert.is_true(#rec.calls > (server_calls_before or 0), "no verification on the full handshake")
      assert.is_true(s:peer_certificate() == x509("client.pem"))
    end

    it("the same policy resumes, on both sides, and neither callback runs again", function()
      local sess = first_session()
      local c2, s2 = handshake(sess)
      assert_resumed(c2, s2)
      assert.equal(3, #srec.calls)   -- resumed sessions are not verified again (OpenSSL)
      assert.equal(3, #crec.calls)
      -- the stored peer certificates come with the session
      assert.is_true(s2:peer_certificate() == x509("client.pem"))
      assert.is_true(c2:peer_certificate() == x509("server.pem"))
      local code, _, verified = s2:verify_result()
      assert.equal(0, code)
      assert.is_true(verified)
      assert.equal("resumed", helper.exchange(c2, s2, "resumed"))
    end)

    it("setting the same policy again (the same function) still resumes", function()
      local sess = first_session()
      sctx:set_verification_mode("server", "require", srec.fn)
      cctx:set_verification_mode("client", "always", crec.fn)
      local c2, s2 = handshake(sess)
      assert_resumed(c2, s2)
      assert.equal(3, #srec.calls)
    end)

    it("a session serialised with der() and read back resumes", function()
      local sess = first_session()
      local copy = assert(sslctx.session(sess:der()))
      local c2, s2 = handshake(copy)
      assert_resumed(c2, s2)
    end)

    it("a different callback function on the server: not resumed, the new callback runs", function()
      local sess = first_session()
      local other = support.recorder()
      sctx:set_verification_mode("server", "require", other.fn)
      local c2, s2 = handshake(sess)
      assert_full(c2, s2, 0, other)
      assert.equal(3, #other.calls)
      assert.equal(3, #srec.calls)
    end)

    it("a different callback that behaves the same (another closure) is still another policy", function()
      local sess = first_session()
      local calls = 0
      sctx:set_verification_mode("server", "require", function() calls = calls + 1 end)
      local c2, s2 = handshake(sess)
      assert.is_false(s2:session_reused())
      assert.is_false(c2:session_reused())
      assert.equal(3, calls)
    end)

    it("a C callback instead of the Lua one: not resumed", function()
      local sess = first_session()
      sctx:set_verification_mode("server", "require", sslctx.c_callbacks.preverify)
      local c2, s2 = handshake(sess)
      assert.is_false(s2:session_reused())
      assert.is_false(c2:session_reused())
    end)

    it("no callback any more: not resumed", function()
      local sess = first_session()
      sctx:set_verification_mode("server", "require")
      local c2, s2 = handshake(sess)
      assert.is_false(s2:session_reused())
      assert.is_false(c2:session_reused())
    end)

    it("a different mode ('always' instead of 'require'): not resumed", function()
      local sess = first_session()
      sctx:set_verification_mode("server", "always", sslctx.KEEP)
      local c2, s2 = handshake(sess)
      assert_full(c2, s2, 3)
      assert.equal(6, #srec.calls)
    end)

    it("a different trust store (a CA added): not resumed", function()
      local sess = first_session()
      assert.is_true(sctx:load_verify_locations(pki("other-ca.pem")))
      local c2, s2 = handshake(sess)
      assert_full(c2, s2, 3)
    end)

    it("a CRL added: not resumed", function()
      local sess = first_session()
      assert.is_true(sctx:add_crl(pki("crl.pem")))
      local c2, s2 = handshake(sess)
      assert_full(c2, s2, 3)
    end)

    it("a different depth: not resumed", function()
      local sess = first_session()
      sctx:set_verify_depth(5)
      local c2, s2 = handshake(sess)
      assert_full(c2, s2, 3)
    end)

    it("different verification parameters: not resumed", function()
      local sess = first_session()
      sctx:set_verify_params({ purpose = "sslclient" })
      local c2, s2 = handshake(sess)
      assert_full(c2, s2, 3)
    end)

    it("a server connection's own policy override: not resumed", function()
      local sess = first_session()
      local other = support.recorder()
      local c2 = cctx:new_connection({ hostname = "localhost", session = sess })
      local s2 = sctx:new_connection()
      s2:set_verification_mode("server", "require", other.fn)
      local cok, cmsg, _, sok, smsg = helper.pump(c2, s2)
      assert.is_true(cok, cmsg)
      assert.is_true(sok, smsg)
      assert_full(c2, s2, 0, other)
      assert.equal(3, #srec.calls)
    end)

    it("a different client callback: the client ignores the session (a full handshake)", function()
      local sess = first_session()
      local other = support.recorder()
      cctx:set_verification_mode("client", "always", other.fn)
      local c2, s2 = handshake(sess)
      assert.is_false(c2:session_reused())
      assert.is_false(s2:session_reused())
      assert.equal(3, #other.calls)
      assert.equal(6, #srec.calls)
    end)

    it("a different client mode: the client ignores the session", function()
      local sess = first_session()
      cctx:set_verification_mode("client", "never", sslctx.KEEP)
      local c2, s2 = handshake(sess)
      assert.is_false(c2:session_reused())
      assert.is_false(s2:session_reused())
    end)

    it("another hostname: the client ignores the session", function()
      local sess = first_session()
      local c2, s2 = handshake(sess, { hostname = "good.example" })
      assert.is_false(c2:session_reused())
      assert.is_false(s2:session_reused())
    end)

    it("an explicit set_session_id_context overrides the derived one", function()
      sctx:set_session_id_context("app-defined")
      local sess = first_session()
      local other = support.recorder()
      sctx:set_verification_mode("server", "require", other.fn)
      local c2, s2 = handshake(sess)
      -- the application said which sessions belong together: this one resumes
      assert_resumed(c2, s2)
      assert.equal(0, #other.calls)
    end)
  end)
end
