-- posthandshake_spec.lua: doc/reference.md "Verification modes": "once" and the post-handshake modes, "Connections"
-- verify_client_post_handshake() (TLS 1.3) and renegotiate() (TLS 1.2).
local helper = require "helper"

local pki = helper.pki

local function pin(v, t) return helper.merge({ min_version = v, max_version = v }, t) end

local CLIENT_SUBJECT = "CN=Test Client,O=sslctx"

-- A server callback that counts calls and keeps OpenSSL's verdict.
local function counter()
  local n = { calls = 0 }
  return function() n.calls = n.calls + 1 end, n
end

local function client_opts(version, cert, pha)
  local t = pin(version, { post_handshake_auth = pha or nil })
  if cert == "good" then
    t.certificate, t.key = pki("client-chain.pem"), pki("client.key")
  elseif cert == "untrusted" then
    t.certificate, t.key = pki("client-untrusted-chain.pem"), pki("client-untrusted.key")
  end
  return t
end

-- Drives both sides with reads (post-handshake messages travel with application data)
-- until neither has anything to send.  Returns the last read results of each side and
-- the data each side read on the way.
local function settle(c, s, rounds)
  local cr, sr, cdata, sdata = {}, {}, {}, {}
  for _ = 1, rounds or 10 do
    local moved = helper.transfer(s, c)
    cr = { c:read() }
    if cr[1] then cdata[#cdata + 1] = cr[1] end
    moved = moved + helper.transfer(c, s)
    sr = { s:read() }
    if sr[1] then sdata[#sdata + 1] = sr[1] end
    moved = moved + helper.transfer(s, c)
    if moved == 0 then break end
    if (cr[1] == nil and not helper.is_want(cr[3])) or (sr[1] == nil and not helper.is_want(sr[3])) then
      break
    end
  end
  return cr, sr, table.concat(cdata), table.concat(sdata)
end

describe("TLS 1.3 post-handshake authentication", function()
  local function setup(mode, cert, pha)
    local fn, n = counter()
    local cctx, sctx = helper.contexts{ client = client_opts("tls1.3", cert, pha),
                                        server = pin("tls1.3", { verify = mode }) }
    sctx:set_verification_mode("server", mode, fn)
    local c, s = helper.connected(cctx, sctx)
    return c, s, n
  end

  it("'post_handshake': no request in the handshake, the certificate comes on request", function()
    local c, s, n = setup("post_handshake", "good", true)
    assert.is_nil(s:peer_certificate())
    assert.equal(0, n.calls)
    assert.is_true(s:verify_client_post_handshake())
    assert.equal(5, s:write("hello"))
    local _, _, cdata = settle(c, s)
    assert.equal("hello", cdata)
    assert.equal("more", helper.exchange(c, s, "more"))
    assert.equal(CLIENT_SUBJECT, s:peer_certificate():subject())
    assert.is_true(n.calls >= 3)
    local code, _, verified = s:verify_result()
    assert.equal(0, code)
    assert.is_true(verified)
  end)

  it("the request can also go out with handshake()", function()
    local c, s = setup("post_handshake", "good", true)
    assert.is_true(s:verify_client_post_handshake())
    s:handshake()
    settle(c, s)
    assert.equal("after", helper.exchange(c, s, "after"))
    assert.equal(CLIENT_SUBJECT, s:peer_certificate():subject())
  end)

  it("'post_handshake': a client with no certificate is let in", function()
    local c, s = setup("post_handshake", "none", true)
    assert.is_true(s:verify_client_post_handshake())
    s:write("x")
    settle(c, s)
    assert.equal("still here", helper.exchange(c, s, "still here"))
    assert.is_nil(s:peer_certificate())
    local code, _, verified = s:verify_result()
    assert.equal(0, code)
    assert.is_false(verified)
  end)

  it("'require_post_handshake': a client with no certificate fails on the server's read", function()
    local c, s = setup("require_post_handshake", "none", true)
    assert.is_true(s:verify_client_post_handshake())
    s:write("x")
    local _, sr = settle(c, s)
    assert.is_nil(sr[1])
    assert.equal("verify", sr[3], sr[2])
  end)

  it("'post_handshake': an untrusted certificate fails on the server's read", function()
    local c, s = setup("post_handshake", "untrusted", true)
    assert.is_true(s:verify_client_post_handshake())
    s:write("x")
    local _, sr = settle(c, s)
    assert.is_nil(sr[1])
    assert.equal("verify", sr[3], sr[2])
    assert.is_false(select(3, s:verify_result()))
  end)

  it("a client that did not offer it: nil, message, 'ssl'", function()
    local _, s = setup("post_handshake", "good", false)
    local ok, msg, kind = s:verify_client_post_handshake()
    assert.is_nil(ok)
    assert.is_string(msg)
    assert.equal("ssl", kind)
  end)

  it("set_post_handshake_auth(true) on the client context offers it", function()
    local cctx, sctx = helper.contexts{ client = client_opts("tls1.3", "good", false),
                                        server = pin("tls1.3", { verify = "post_handshake" }) }
    cctx:set_post_handshake_auth(true)
    local c, s = helper.connected(cctx, sctx)
    assert.is_true(s:verify_client_post_handshake())
    s:write("x")
    settle(c, s)
    helper.exchange(c, s, "y")
    assert.equal(CLIENT_SUBJECT, s:peer_certificate():subject())
  end)

  it("'always' asks again and checks the certificate again", function()
    local c, s, n = setup("always", "good", true)
    local first = n.calls
    assert.is_true(first >= 3)
    assert.is_true(s:verify_client_post_handshake())
    s:write("x")
    settle(c, s)
    helper.exchange(c, s, "y")
    assert.is_true(n.calls > first)
  end)

  it("'once': after the handshake's request, another is refused (nil, message, 'ssl')", function()
    local _, s, n = setup("once", "good", true)
    assert.is_true(n.calls >= 3)
    local ok, msg, kind = s:verify_client_post_handshake()
    assert.is_nil(ok)
    assert.is_string(msg)
    assert.equal("ssl", kind)
    assert.equal(CLIENT_SUBJECT, s:peer_certificate():subject())
  end)

  it("on TLS 1.2: nil, message, 'ssl'", function()
    local cctx, sctx = helper.contexts{ client = client_opts("tls1.2", "good", true),
                                        server = pin("tls1.2", { verify = "post_handshake" }) }
    local _, s = helper.connected(cctx, sctx)
    -- TLS 1.2 ignores bit 8: the request was made in the handshake
    assert.equal(CLIENT_SUBJECT, s:peer_certificate():subject())
    local ok, msg, kind = s:verify_client_post_handshake()
    assert.is_nil(ok)
    assert.is_string(msg)
    assert.equal("ssl", kind)
  end)
end)

describe("TLS 1.2 renegotiation", function()
  local function setup(mode)
    local fn, n = counter()
    local cctx, sctx = helper.contexts{ client = client_opts("tls1.2", "good"),
                                        server = pin("tls1.2", { verify = mode }) }
    sctx:set_verification_mode("server", mode, fn)
    local c, s = helper.connected(cctx, sctx)
    return c, s, n
  end

  local function renegotiate_from_server(c, s)
    assert.is_true(s:renegotiate())
    s:handshake()
    settle(c, s, 12)
    assert.equal("after", helper.exchange(c, s, "after"))
    assert.equal("back", helper.exchange(s, c, "back"))
  end

  it("'always' checks the certificate again, with a full handshake", function()
    local c, s, n = setup("always")
    local first = n.calls
    assert.is_true(first >= 3)
    renegotiate_from_server(c, s)
    assert.is_true(n.calls >= 2 * first, "calls: " .. n.calls)
    assert.is_false(s:session_reused())
    assert.is_false(c:session_reused())
    assert.equal(CLIENT_SUBJECT, s:peer_certificate():subject())
  end)

  it("'once' does not check it again and keeps the first certificate", function()
    local c, s, n = setup("once")
    local first = n.calls
    assert.is_true(first >= 3)
    renegotiate_from_server(c, s)
    assert.equal(first, n.calls)
    assert.equal(CLIENT_SUBJECT, s:peer_certificate():subject())
    assert.is_false(s:session_reused())
  end)

  it("client-initiated renegotiation is refused by default", function()
    local c, s, n = setup("always")
    local first = n.calls
    local ok = c:renegotiate()
    local failed = ok == nil
    if ok then
      for _ = 1, 10 do
        local r, _, kind = c:handshake()
        helper.transfer(c, s)
        local sr, _, skind = s:read()
        helper.transfer(s, c)
        if r == nil and not helper.is_want(kind) then failed = true; break end
        if sr == nil and not helper.is_want(skind) then failed = true; break end
        if r == true then
          -- a completed client handshake must not have been a renegotiation
          break
        end
      end
    end
    assert.is_true(failed)
    assert.equal(first, n.calls)
  end)

  it("renegotiate() on TLS 1.3 returns nil, message, kind", function()
    local cctx, sctx = helper.contexts{ client = client_opts("tls1.3", "good"),
                                        server = pin("tls1.3", { verify = "always" }) }
    local c, s = helper.connected(cctx, sctx)
    local ok, msg, kind = s:renegotiate()
    assert.is_nil(ok)
    assert.is_string(msg)
    assert.is_string(kind)
    ok = c:renegotiate()
    assert.is_nil(ok)
  end)
end)
