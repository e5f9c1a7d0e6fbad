-- policy_binding_spec.lua: a session made under one verification policy never lets a
-- connection under another skip its checks (doc/reference.md, "The verification policy").
--
-- Each case is an attack: a session obtained under a relaxed policy (per connection, by
-- soft fail, by another trust store, through an SNI switch, or before the context changed) is
-- offered to a connection whose policy is strict.  The strict connection must make its own
-- checks: no resumption, and the peer its policy refuses is refused.
local sslctx = require "sslctx"
local helper = require "helper"
local support = require "support.callbacks"

local pki = helper.pki

local VERSIONS = {
  { name = "TLS 1.3", opts = { min_version = "tls1.3", max_version = "tls1.3" } },
  { name = "TLS 1.2", opts = { min_version = "tls1.2", max_version = "tls1.2" } },
  { name = "TLS 1.2 session ids", opts = { min_version = "tls1.2", max_version = "tls1.2",
                                            session_tickets = false } },
}

local function merge(a, b) return helper.merge(a, b) end

-- Pumps an already made pair; returns cok, cmsg, ckind, sok, smsg, skind.
local function pump(c, s) return helper.pump(c, s) end

-- The client learns a TLS 1.3 rejection of its certificate only on its first read: one
-- round trip judges the pair.  Returns true when both sides completed and a byte crossed.
local function both_accept(c, s, cok, sok)
  if not (cok and sok) then return false end
  local n = c:write("x")
  if not n then return false end
  helper.transfer(c, s)
  local data = s:read()
  if data ~= "x" then return false end
  helper.transfer(s, c)
  local _, _, kind = c:read()
  return kind == nil or helper.is_want(kind)
end

for _, v in ipairs(VERSIONS) do
  describe("policy-bound sessions (" .. v.name .. ")", function()

    -- 1. Client: a session made by a relaxed connection is never offered by a strict one.
    describe("client", function()
      local other_server, cctx

      before_each(function()
        other_server = helper.server_ctx(merge(v.opts, {
          certificate = pki("untrusted-chain.pem"), key = pki("untrusted.key") }))
        cctx = helper.client_ctx(v.opts)   -- trusts ca.pem only
      end)

      local RELAXATIONS = {
        { "set_trust to the other CA", function(c) assert(c:set_trust { ca_file = pki("other-ca.pem") }) end },
        { "an accepting Lua callback", function(c) c:set_verification_mode("client", "always", function() return true end) end },
        { "insecure_accept_all", function(c) c:set_verification_mode("client", "always", sslctx.c_callbacks.insecure_accept_all) end },
        { "soft fail", function(c) c:set_soft_fail(true) end },
        { "mode never", function(c) c:set_verification_mode("client", "never") end },
      }

      for _, relax in ipairs(RELAXATIONS) do
        it("a session made under " .. relax[1] .. " is not offered by a strict connection", function()
          local a = cctx:new_connection { hostname = "localhost" }
          relax[2](a)
          local sa = other_server:new_connection()
          local cok, cmsg = pump(a, sa)
          assert.is_true(cok, tostring(cmsg))
          local sess = support.session_of(a)
          assert.is_not_nil(sess)

          local b = cctx:new_connection { hostname = "localhost", session = sess }
          local sb = other_server:new_connection()
          local bok, _, bkind = pump(b, sb)
          assert.is_nil(bok)
          assert.equal("verify", bkind)
          assert.is_false(b:session_reused())
          local code, _, verified = b:verify_result()
          assert.is_not.equal(0, code)
          assert.is_false(verified)
        end)

        it("a session offered at creation is dropped when " .. relax[1] .. " is set after (and the reverse)", function()
          -- made by a strict connection against a trusted server
          local good_server = helper.server_ctx(v.opts)
          local a = cctx:new_connection { hostname = "localhost" }
          assert.is_true((pump(a, good_server:new_connection())))
          local sess = support.session_of(a)
          -- offered, then relaxed before the handshake: the policies differ, no resumption
          local b = cctx:new_connection { hostname = "localhost", session = sess }
          relax[2](b)
          local bok, bmsg = pump(b, good_server:new_connection())
          -- another trust store does not trust this server: a full handshake that fails
          if relax[1] ~= "set_trust to the other CA" then assert.is_true(bok, tostring(bmsg)) end
          assert.is_false(b:session_reused())
        end)
      end

      it("an equal policy resumes, even when set per connection", function()
        local good_server = helper.server_ctx(v.opts)
        local a = cctx:new_connection { hostname = "localhost" }
        assert(a:set_trust { ca_file = pki("ca.pem") })   -- the same trust as the context's
        assert.is_true((pump(a, good_server:new_connection())))
        local sess = support.session_of(a)
        local b = cctx:new_connection { hostname = "localhost", session = sess }
        assert.is_true((pump(b, good_server:new_connection())))
        assert.is_true(b:session_reused())
      end)

      it("DANE is part of the policy: a session made without it is not offered with it", function()
        local good_server = helper.server_ctx(v.opts)
        local a = cctx:new_connection { hostname = "localhost" }
        assert.is_true((pump(a, good_server:new_connection())))
        local sess = support.session_of(a)
        local b = cctx:new_connection { hostname = "localhost", session = sess }
        assert(b:set_dane("localhost"))
        assert(b:add_tlsa(3, 1, 1, string.rep("\0", 32)))   -- matches no key: DANE must refuse
        local bok, _, bkind = pump(b, good_server:new_connection())
        assert.is_false(b:session_reused())
        assert.is_nil(bok)
        assert.equal("verify", bkind)
      end)

      it("a session made for one hostname is not offered for another", function()
        local good_server = helper.server_ctx(v.opts)
        local a = cctx:new_connection { hostname = "localhost" }
        assert.is_true((pump(a, good_server:new_connection())))
        local sess = support.session_of(a)
        local b = cctx:new_connection { hostname = "127.0.0.1", session = sess, verify_hostname = false }
        pump(b, good_server:new_connection())
        assert.is_false(b:session_reused())
      end)

      it("a policy change in the middle of a handshake that offered a session raises", function()
        local good_server = helper.server_ctx(v.opts)
        local a = cctx:new_connection { hostname = "localhost" }
        assert.is_true((pump(a, good_server:new_connection())))
        local sess = support.session_of(a)
        local b = cctx:new_connection { hostname = "localhost", session = sess }
        local ok, _, kind = b:handshake()
        assert.is_nil(ok)
        assert.equal("want_read", kind)
        helper.raises(function() b:set_verification_mode("client", "never") end)
        local msg = select(2, pcall(b.set_soft_fail, b, true))
        assert.matches("offered a session", msg)
        -- a caller that catches the error cannot finish the handshake anyway
        local ok2, _, kind2 = b:handshake()
        assert.is_nil(ok2)
        assert.equal("verify", kind2)
      end)
    end)

    describe("server", function()
      local cctx_untrusted, cctx_none

      before_each(function()
        cctx_untrusted = helper.client_ctx(merge(v.opts, {
          certificate = pki("client-untrusted-chain.pem"), key = pki("client-untrusted.key") }))
        cctx_none = helper.client_ctx(v.opts)
      end)

      -- 2. Per-connection trust is part of the server's session id context.
      it("a client certificate accepted under one connection's trust does not resume under another's", function()
        local sctx = helper.server_ctx(merge(v.opts, { verify = "require" }))
        local c1 = cctx_untrusted:new_connection { hostname = "localhost" }
        local s1 = sctx:new_connection()
        assert(s1:set_trust { ca_file = pki("other-ca.pem") })
        local cok, cmsg, _, sok, smsg = pump(c1, s1)
        assert.is_true(cok, tostring(cmsg))
        assert.is_true(sok, tostring(smsg))
        local sess = support.session_of(c1)
        assert.is_not_nil(sess)

        local c2 = cctx_untrusted:new_connection { hostname = "localhost", session = sess }
        local s2 = sctx:new_connection()
        assert(s2:set_trust { ca_file = pki("ca.pem") })
        local _, _, _, sok2, _, skind2 = pump(c2, s2)
        assert.is_nil(sok2)
        assert.equal("verify", skind2)
        assert.is_false(s2:session_reused())
      end)

      -- 3. A soft-fail session never resumes on a strict connection.
      it("a certificate that failed under soft fail does not resume under 'require'", function()
        local sctx = helper.server_ctx(merge(v.opts, { verify = "require" }))
        local c1 = cctx_untrusted:new_connection { hostname = "localhost" }
        local s1 = sctx:new_connection()
        s1:set_soft_fail(true)
        local cok, _, _, sok = pump(c1, s1)
        assert.is_true(cok)
        assert.is_true(sok)
        assert.is_not.equal(0, (s1:verify_result()))
        local sess = support.session_of(c1)

        local c2 = cctx_untrusted:new_connection { hostname = "localhost", session = sess }
        local s2 = sctx:new_connection()
        local _, _, _, sok2, _, skind2 = pump(c2, s2)
        assert.is_nil(sok2)
        assert.equal("verify", skind2)
        assert.is_false(s2:session_reused())
      end)

      -- 4. The servername callback's switch gives the connection the new context's identity.
      for _, own in ipairs { "none", "set_verification_mode", "set_policy" } do
        it("a session from the lax context does not resume after a switch to 'require' (own policy: " .. own .. ")", function()
          local lax = helper.server_ctx(merge(v.opts, { verify = "never" }))
          local strict = helper.server_ctx(merge(v.opts, { verify = "require" }))
          local front = helper.server_ctx(v.opts)
          front:set_servername_callback(function(name)
            if name == "strict.test" then return strict end
            return lax
          end)
          -- a client that sends whatever it holds: its own policy named the same for both
          local cctx = helper.client_ctx(merge(v.opts, { verify = "never" }))
          local c1 = cctx:new_connection { hostname = "lax.test" }
          c1:set_policy("any server")
          local s1 = front:new_connection()
          local cok, _, _, sok = pump(c1, s1)
          assert.is_true(cok)
          assert.is_true(sok)
          local sess = support.session_of(c1)
          assert.is_not_nil(sess)

          local c2 = cctx:new_connection { hostname = "strict.test", session = sess }
          c2:set_policy("any server")
          local s2 = front:new_connection()
          if own == "set_verification_mode" then s2:set_verification_mode("server", "never")
          elseif own == "set_policy" then s2:set_policy("front") end
          local _, _, _, sok2, _, skind2 = pump(c2, s2)
          assert.is_false(s2:session_reused())
          assert.is_nil(sok2)
          assert.equal("verify", skind2)   -- "require": no certificate, no entry
        end)
      end

      it("a policy relaxed in the middle of a handshake labels its session with the relaxed policy", function()
        local sctx = helper.server_ctx(merge(v.opts, { verify = "require" }))
        local c1 = cctx_untrusted:new_connection { hostname = "localhost" }
        local s1 = sctx:new_connection()
        c1:handshake()
        helper.transfer(c1, s1)
        s1:handshake()          -- the ClientHello is read: the session exists now
        s1:set_soft_fail(true)  -- relaxed before the client's certificate is judged
        local cok, _, _, sok = pump(c1, s1)
        assert.is_true(cok)
        assert.is_true(sok)
        local sess = support.session_of(c1)
        local c2 = cctx_untrusted:new_connection { hostname = "localhost", session = sess }
        local s2 = sctx:new_connection()
        local _, _, _, sok2 = pump(c2, s2)
        assert.is_nil(sok2)
        assert.is_false(s2:session_reused())
      end)

      it("an equal policy set per connection resumes", function()
        local sctx = helper.server_ctx(merge(v.opts, { verify = "require" }))
        local cctx = helper.client_ctx(merge(v.opts, {
          certificate = pki("client-chain.pem"), key = pki("client.key") }))
        local c1 = cctx:new_connection { hostname = "localhost" }
        local s1 = sctx:new_connection()
        assert(s1:set_trust { ca_file = pki("other-ca.pem") })
        assert(s1:set_trust { ca_file = pki("ca.pem") })       -- back to the context's trust
        s1:set_verification_mode("server", "require")
        assert.is_true((pump(c1, s1)))
        local sess = support.session_of(c1)
        local c2 = cctx:new_connection { hostname = "localhost", session = sess }
        local s2 = sctx:new_connection()
        local cok, _, _, sok = pump(c2, s2)
        assert.is_true(cok)
        assert.is_true(sok)
        assert.is_true(s2:session_reused())
        assert.is_true(both_accept(c2, s2, cok, sok))
      end)

      it("a client without a certificate gets no session that resumes under 'require'", function()
        local open = helper.server_ctx(merge(v.opts, { verify = "never" }))
        local strict = helper.server_ctx(merge(v.opts, { verify = "require" }))
        local c1 = cctx_none:new_connection { hostname = "localhost" }
        assert.is_true((pump(c1, open:new_connection())))
        local sess = support.session_of(c1)
        local c2 = cctx_none:new_connection { hostname = "localhost", session = sess }
        local s2 = strict:new_connection()
        local _, _, _, sok2 = pump(c2, s2)
        assert.is_nil(sok2)
        assert.is_false(s2:session_reused())
      end)
    end)

    -- 5. A connection keeps the context as it was when it was made.
    describe("context changes after a connection was made", function()
      it("a client's trust added to the context later does not reach it", function()
        local other_server = helper.server_ctx(merge(v.opts, {
          certificate = pki("untrusted-chain.pem"), key = pki("untrusted.key") }))
        local cctx = helper.client_ctx(v.opts)
        local c = cctx:new_connection { hostname = "localhost" }
        assert(cctx:load_verify_locations(pki("other-ca.pem")))
        local cok, _, ckind = pump(c, other_server:new_connection())
        assert.is_nil(cok)
        assert.equal("verify", ckind)
        -- a connection made after the change trusts the other CA
        local c2 = cctx:new_connection { hostname = "localhost" }
        assert.is_true((pump(c2, other_server:new_connection())))
      end)

      it("a server's trust, CRLs and mode changed later do not reach it", function()
        local sctx = helper.server_ctx(merge(v.opts, { verify = "require" }))
        local cctx = helper.client_ctx(merge(v.opts, {
          certificate = pki("client-untrusted-chain.pem"), key = pki("client-untrusted.key") }))
        local s = sctx:new_connection()
        assert(sctx:load_verify_locations(pki("other-ca.pem")))
        sctx:set_verification_mode("server", "never")
        local _, _, _, sok, _, skind = pump(cctx:new_connection { hostname = "localhost" }, s)
        assert.is_nil(sok)
        assert.equal("verify", skind)
        local s2 = sctx:new_connection()
        local _, _, _, sok2 = pump(cctx:new_connection { hostname = "localhost" }, s2)
        assert.is_true(sok2)
      end)

      it("the context's trust changed from inside a running verification reaches only later connections", function()
        local other_server = helper.server_ctx(merge(v.opts, {
          certificate = pki("untrusted-chain.pem"), key = pki("untrusted.key") }))
        local cctx
        local changed = 0
        cctx = helper.client_ctx(merge(v.opts, { verify_callback = function(ok)
          if changed == 0 then
            changed = 1
            assert(cctx:load_verify_locations(pki("other-ca.pem")))
            collectgarbage()   -- the store this verification uses must not go
          end
          return ok
        end }))
        local c = cctx:new_connection { hostname = "localhost" }
        local cok, _, ckind = pump(c, other_server:new_connection())
        assert.equal(1, changed)
        assert.is_nil(cok)                 -- its own verification kept the trust it started with
        assert.equal("verify", ckind)
        local c2 = cctx:new_connection { hostname = "localhost" }
        assert.is_true((pump(c2, other_server:new_connection())))
      end)

      it("a CRL added to the context later does not reach a client made before", function()
        local revoked_server = helper.server_ctx(merge(v.opts, {
          certificate = pki("revoked-chain.pem"), key = pki("revoked.key") }))
        local cctx = helper.client_ctx(v.opts)
        local c = cctx:new_connection { hostname = "localhost" }
        assert(cctx:add_crl(pki("crl-int.pem")))
        local c2 = cctx:new_connection { hostname = "localhost" }
        assert.is_true((pump(c, revoked_server:new_connection())))
        local ok2, _, kind2 = pump(c2, revoked_server:new_connection())
        assert.is_nil(ok2)
        assert.equal("verify", kind2)
      end)
    end)
  end)
end

describe("policy argument checks", function()
  it("refuses a hostname with a NUL byte", function()
    local cctx = helper.client_ctx()
    local ok, err = pcall(function() local c = cctx:new_connection { hostname = "localhost\0.evil.example" }; return c end)
    assert.is_false(ok)
    assert.matches("bad argument #1 to 'new_connection'", err, 1, true)
    assert.matches("NUL", err, 1, true)
  end)

  it("accepts any verify depth from 0 to 2^31-1", function()
    local ctx = helper.client_ctx()
    ctx:set_verify_depth(255)
    assert.equal(255, ctx:get_verify_depth())
    ctx:set_verify_depth(2147483647)
    assert.equal(2147483647, ctx:get_verify_depth())
    ctx:set_verify_depth(0)
    assert.is_false(pcall(ctx.set_verify_depth, ctx, -1))
    assert.is_false(pcall(ctx.set_verify_depth, ctx, 2147483648))
    local c = ctx:new_connection { hostname = "localhost" }
    c:set_verify_depth(255)
    assert.equal(255, c:get_verify_depth())
    assert.is_false(pcall(c.set_verify_depth, c, 2147483648))
    local ctx2 = helper.client_ctx { verify_depth = 255, verify_params = { depth = 1000 } }
    assert.is_not_nil(ctx2)
  end)

  it("a one-sided context refuses a mode for the other side; 'both' keeps one per side", function()
    local server = helper.server_ctx()
    local ok, err = pcall(function() local r = server:set_verification_mode("client", "always"); return r end)
    assert.is_false(ok)
    assert.matches("bad argument #1 to 'set_verification_mode' (this is a server context)", err, 1, true)
    local client = helper.client_ctx()
    ok, err = pcall(client.set_verification_mode, client, "server", "require")
    assert.is_false(ok)
    assert.matches("this is a client context", err, 1, true)
    local both = helper.new_ctx { side = "both", ca_file = pki("ca.pem") }
    assert.equal(3, both:set_verification_mode("server", "require"))
    assert.equal(0, both:set_verification_mode("client", "never"))
    assert.equal(3, (select(2, both:get_verification_mode("server"))))
    assert.equal(0, (select(2, both:get_verification_mode("client"))))
  end)

  it("policy setters raise inside the connection's own callback", function()
    local sctx = helper.server_ctx()
    local errs = {}
    local cctx = helper.client_ctx {
      verify_callback = function(_, store)
        local conn = store:connection()
        for _, f in ipairs {
          function() conn:set_verification_mode("client", "never") end,
          function() conn:set_soft_fail(true) end,
          function() conn:set_verify_depth(3) end,
          function() conn:set_trust { ca_file = pki("other-ca.pem") } end,
        } do
          local ok, e = pcall(f)
          if not ok then errs[#errs + 1] = e end
        end
      end,
    }
    local _, _, cok = helper.connect(cctx, sctx)
    assert.is_true(cok)
    assert.is_true(#errs >= 4)
    for _, e in ipairs(errs) do assert.matches("own callback", e, 1, true) end
  end)
end)
