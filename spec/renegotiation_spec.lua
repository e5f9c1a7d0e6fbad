-- renegotiation_spec.lua: "once" made real on both protocol generations (doc/reference.md "Verification modes",
-- conn:renegotiate and conn:verify_client_post_handshake).
--   TLS 1.2: conn:renegotiate() is always a full handshake, so under "always" the client
--   certificate is checked (and the callback runs) again; under "once" it is not, and
--   peer_certificate() keeps the first handshake's certificate.
--   TLS 1.3: post-handshake authentication under "post_handshake", "always" and "once".
local sslctx = require "sslctx"
local helper = require "helper"
local support = require "support.callbacks"

local pki, read = helper.pki, helper.read
local pack = support.pack

local function x509(name) return assert(sslctx.x509(read(name))) end

local CLIENT_CERT = { certificate = pki("client-chain.pem"), key = pki("client.key") }

local function pin(v, t)
  return helper.merge({ min_version = v, max_version = v }, t)
end

-- After s:renegotiate() (or c:renegotiate()), drives both sides: the initiator's
-- handshake() sends the request, then both sides read until the renegotiation is over.
-- Returns the first non-want result of each side (or their last results).
local function drive_renegotiation(initiator, other, rounds)
  local ir = pack(initiator:handshake())
  local orr = pack(nil, "not run", "want_read")
  if not ir[1] and not helper.is_want(ir[3]) then return ir, orr end
  for _ = 1, rounds or 8 do
    helper.transfer(initiator, other)
    orr = pack(other:read())
    if not orr[1] and not helper.is_want(orr[3]) then break end
    helper.transfer(other, initiator)
    ir = pack(initiator:read())
    if not ir[1] and not helper.is_want(ir[3]) then break end
  end
  helper.transfer(initiator, other)
  helper.transfer(other, initiator)
  return ir, orr
end

-- ---------------------------------------------------------------------------

describe("TLS 1.2 renegotiation", function()
  local function setup(server_mode, srec, crec)
    local cctx = helper.client_ctx(pin("tls1.2", helper.merge(CLIENT_CERT,
      { verify_callback = crec and crec.fn or nil })))
    local sctx = helper.server_ctx(pin("tls1.2", { verify = server_mode,
      verify_callback = srec and srec.fn or nil }))
    local c, s = helper.connected(cctx, sctx)
    assert.equal("TLSv1.2", s:version())
    return c, s
  end

  it("'always': the server's callback runs again for the whole chain (a full handshake)", function()
    local srec = support.recorder()
    local c, s = setup("always", srec)
    assert.same({ 2, 1, 0 }, srec.depths())
    assert.is_true(s:renegotiate())
    local sr, cr = drive_renegotiation(s, c)
    assert.is_true(sr[1] ~= nil or helper.is_want(sr[3]), tostring(sr[2]))
    assert.is_true(cr[1] ~= nil or helper.is_want(cr[3]), tostring(cr[2]))
    assert.same({ 2, 1, 0, 2, 1, 0 }, srec.depths())
    assert.is_false(s:session_reused())
    assert.is_true(s:peer_certificate() == x509("client.pem"))
    local code, _, verified = s:verify_result()
    assert.equal(0, code)
    assert.is_true(verified)
    assert.equal("after", helper.exchange(c, s, "after"))
    assert.equal("reply", helper.exchange(s, c, "reply"))
  end)

  it("'always': the certificate is checked again (a callback that now rejects fails it)", function()
    local reject = false
    local srec = support.recorder(function() if reject then return false end end)
    local c, s = setup("always", srec)
    reject = true
    assert.is_true(s:renegotiate())
    local sr = drive_renegotiation(s, c)
    assert.is_nil(sr[1])
    assert.equal("verify", sr[3], sr[2])
    assert.equal(50, (s:verify_result()))
    assert.equal(4, #srec.calls)
  end)

  it("'always': checked again against a connection's new verification parameters", function()
    local c, s = setup("always")
    local when = 1577880000 + 43200   -- 2020-01-01 12:00: the client certificate is not yet valid
    local expected = helper.openssl_verify{ cert = "client.pem", untrusted = "client-chain.pem",
                                            CAfile = "ca.pem", purpose = "sslclient", attime = when }
    assert.is_true(expected ~= 0)
    s:set_verify_params({ time = when })
    assert.is_true(s:renegotiate())
    local sr = drive_renegotiation(s, c)
    assert.is_nil(sr[1])
    assert.equal("verify", sr[3], sr[2])
    assert.equal(expected, (s:verify_result()))
  end)

  it("'once': the callback does not run again and peer_certificate() keeps the first certificate", function()
    local reject = false
    local srec = support.recorder(function() if reject then return false end end)
    local c, s = setup("once", srec)
    assert.equal(3, #srec.calls)
    reject = true   -- would fail a second check: there must be none
    assert.is_true(s:renegotiate())
    local sr, cr = drive_renegotiation(s, c)
    assert.is_true(sr[1] ~= nil or helper.is_want(sr[3]), tostring(sr[2]))
    assert.is_true(cr[1] ~= nil or helper.is_want(cr[3]), tostring(cr[2]))
    assert.equal(3, #srec.calls)
    assert.is_true(s:peer_certificate() == x509("client.pem"))
    local code, _, verified = s:verify_result()
    assert.equal(0, code)
    assert.is_true(verified)
    assert.equal("after once", helper.exchange(c, s, "after once"))
  end)

  it("'once': the renegotiation really happened (the client's callback ran again)", function()
    local srec, crec = support.recorder(), support.recorder()
    local c, s = setup("once", srec, crec)
    assert.equal(3, #crec.calls)
    assert.is_true(s:renegotiate())
    drive_renegotiation(s, c)
    assert.equal(6, #crec.calls)   -- full handshake: the client verified the server again
    assert.equal(3, #srec.calls)
    assert.is_true(s:peer_certificate() == x509("client.pem"))
  end)

  it("the client's callback runs again on the coroutine that called read()", function()
    local crec = support.recorder()
    local c, s = setup("never", nil, crec)
    assert.is_true(s:renegotiate())
    s:handshake()
    local co = coroutine.create(function()
      for _ = 1, 8 do
        helper.transfer(s, c)
        local r = pack(c:read())
        helper.transfer(c, s)
        s:read()
        if not r[1] and not helper.is_want(r[3]) then return r end
      end
    end)
    local ok, err = coroutine.resume(co)
    assert.is_true(ok, tostring(err))
    assert.equal(6, #crec.calls)
    for i = 4, 6 do assert.is_true(crec.calls[i].thread == co) end
  end)

  it("a client callback raising during renegotiation: read() returns nil, 'verify callback: ...', 'callback'", function()
    local fail = false
    local crec = support.recorder(function() if fail then error("renegotiation says no", 0) end end)
    local c, s = setup("never", nil, crec)
    fail = true
    assert.is_true(s:renegotiate())
    local _, cr = drive_renegotiation(s, c)
    assert.equal(3, cr.n)
    assert.is_nil(cr[1])
    assert.equal("verify callback: renegotiation says no", cr[2])
    assert.equal("callback", cr[3])
  end)

  it("a server callback raising during renegotiation: read() returns nil, 'verify callback: ...', 'callback'", function()
    local fail = false
    local srec = support.recorder(function() if fail then error("second look says no", 0) end end)
    local c, s = setup("always", srec)
    fail = true
    assert.is_true(s:renegotiate())
    local sr = drive_renegotiation(s, c)
    assert.equal(3, sr.n)
    assert.is_nil(sr[1])
    assert.equal("verify callback: second look says no", sr[2])
    assert.equal("callback", sr[3])
  end)

  it("renegotiate() on a TLS 1.3 connection: nil, message, 'ssl'", function()
    local cctx, sctx = helper.contexts{ client = pin("tls1.3"), server = pin("tls1.3") }
    local c, s = helper.connected(cctx, sctx)
    for _, conn in ipairs({ s, c }) do
      local r = pack(conn:renegotiate())
      assert.is_nil(r[1])
      assert.is_string(r[2])
      assert.equal("ssl", r[3])
    end
  end)

  it("client-initiated renegotiation is refused by default: the server checks nothing again", function()
    local srec = support.recorder()
    local c, s = setup("always", srec)
    assert.is_true(c:renegotiate())
    drive_renegotiation(c, s)
    assert.equal(3, #srec.calls)
  end)
end)

describe("TLS 1.3 post-handshake authentication", function()
  local function setup(server_mode, srec, client_extra)
    local cctx = helper.client_ctx(pin("tls1.3", helper.merge(CLIENT_CERT,
      helper.merge({ post_handshake_auth = true }, client_extra))))
    local sctx = helper.server_ctx(pin("tls1.3", { verify = server_mode,
      verify_callback = srec and srec.fn or nil }))
    return helper.connected(cctx, sctx)
  end

  -- Sends the pending request with s:write (or s:handshake when via == "handshake"), lets
  -- the client answer, and returns the server's read() result after the answer arrived.
  local function round_trip(c, s, via)
    if via == "handshake" then
      local r = pack(s:handshake())
      assert.is_true(r[1] == true or helper.is_want(r[3]), tostring(r[2]))
    else
      assert.equal(7, s:write("request"))
    end
    helper.transfer(s, c)
    local cr = pack(c:read())
    assert.is_true(cr[1] ~= nil or helper.is_want(cr[3]), tostring(cr[2]))
    if via ~= "handshake" then assert.equal("request", cr[1]) end
    helper.transfer(c, s)
    local sr = pack(s:read())
    helper.transfer(s, c)
    return sr, cr
  end

  it("'post_handshake': no certificate after the handshake; on request it comes and is checked during read()", function()
    local srec = support.recorder()
    local c, s = setup("post_handshake", srec)
    assert.is_nil(s:peer_certificate())
    assert.equal(0, #srec.calls)
    local _, _, verified = s:verify_result()
    assert.is_false(verified)
    local r = pack(s:verify_client_post_handshake())
    assert.equal(1, r.n)
    assert.is_true(r[1])
    assert.equal(0, #srec.calls)   -- nothing happens before the request goes out
    assert.equal(7, s:write("request"))
    assert.equal(0, #srec.calls)
    helper.transfer(s, c)
    assert.equal("request", c:read())
    assert.equal(0, #srec.calls)   -- the answer is checked by the server's read
    helper.transfer(c, s)
    local co = coroutine.create(function() return s:read() end)
    local ok, data, msg, kind = coroutine.resume(co)
    assert.is_true(ok, tostring(data))
    assert.is_true(data ~= nil or helper.is_want(kind), tostring(msg))
    assert.same({ 2, 1, 0 }, srec.depths())
    for _, call in ipairs(srec.calls) do assert.is_true(call.thread == co) end
    assert.is_true(s:peer_certificate() == x509("client.pem"))
    local code, _, verified2 = s:verify_result()
    assert.equal(0, code)
    assert.is_true(verified2)
    assert.equal("more", helper.exchange(c, s, "more"))
  end)

  it("'post_handshake': the request can go out with handshake()", function()
    local srec = support.recorder()
    local c, s = setup("post_handshake", srec)
    assert.is_true(s:verify_client_post_handshake())
    round_trip(c, s, "handshake")
    assert.equal(3, #srec.calls)
    assert.is_true(s:peer_certificate() == x509("client.pem"))
  end)

  it("'post_handshake': a second request is allowed and checks again", function()
    local srec = support.recorder()
    local c, s = setup("post_handshake", srec)
    assert.is_true(s:verify_client_post_handshake())
    round_trip(c, s)
    assert.equal(3, #srec.calls)
    assert.is_true(s:verify_client_post_handshake())
    round_trip(c, s)
    assert.equal(6, #srec.calls)
  end)

  it("'post_handshake': a rejecting callback fails the server's read with kind 'verify'", function()
    local srec = support.recorder(function() return false end)
    local c, s = setup("post_handshake", srec)
    assert.is_true(s:verify_client_post_handshake())
    local sr = round_trip(c, s)
    assert.is_nil(sr[1])
    assert.equal("verify", sr[3], sr[2])
    assert.equal(50, (s:verify_result()))
    local learned, why = support.learns_rejection(c, true)
    assert.is_true(learned, why)
  end)

  it("'post_handshake': a raising callback: read() returns nil, 'verify callback: ...', 'callback'", function()
    local srec = support.recorder(function() error("pha boom", 0) end)
    local c, s = setup("post_handshake", srec)
    assert.is_true(s:verify_client_post_handshake())
    local sr = round_trip(c, s)
    assert.equal(3, sr.n)
    assert.is_nil(sr[1])
    assert.equal("verify callback: pha boom", sr[2])
    assert.equal("callback", sr[3])
  end)

  it("'always': the handshake's certificate, then a request checks it again", function()
    local srec = support.recorder()
    local c, s = setup("always", srec)
    assert.equal(3, #srec.calls)
    assert.is_true(s:peer_certificate() == x509("client.pem"))
    assert.is_true(s:verify_client_post_handshake())
    round_trip(c, s)
    assert.equal(6, #srec.calls)
    assert.is_true(s:peer_certificate() == x509("client.pem"))
  end)

  it("'once': a request after the handshake's is refused with nil, message, 'ssl'", function()
    local srec = support.recorder()
    local c, s = setup("once", srec)
    assert.equal(3, #srec.calls)
    local r = pack(s:verify_client_post_handshake())
    assert.is_nil(r[1])
    assert.is_string(r[2])
    assert.equal("ssl", r[3])
    assert.equal("still", helper.exchange(c, s, "still"))
    assert.equal(3, #srec.calls)
    assert.is_true(s:peer_certificate() == x509("client.pem"))
  end)

  it("'once' with post_handshake (13): one request, then refused", function()
    local srec = support.recorder()
    local c, s = setup({ "verify_peer", "verify_client_once", "verify_post_handshake" }, srec)
    assert.equal(0, #srec.calls)
    assert.is_true(s:verify_client_post_handshake())
    round_trip(c, s)
    assert.equal(3, #srec.calls)
    local r = pack(s:verify_client_post_handshake())
    assert.is_nil(r[1])
    assert.is_string(r[2])
    assert.equal("ssl", r[3])
    assert.is_true(s:peer_certificate() == x509("client.pem"))
  end)

  it("a client that did not offer it: nil, message, 'ssl'", function()
    local _, s = setup("post_handshake", nil, { post_handshake_auth = false })
    local r = pack(s:verify_client_post_handshake())
    assert.is_nil(r[1])
    assert.is_string(r[2])
    assert.equal("ssl", r[3])
  end)

  it("TLS 1.2: nil, message, 'ssl'", function()
    local cctx = helper.client_ctx(pin("tls1.2", helper.merge(CLIENT_CERT, { post_handshake_auth = true })))
    local sctx = helper.server_ctx(pin("tls1.2", { verify = "post_handshake" }))
    local _, s = helper.connected(cctx, sctx)
    -- on TLS 1.2 bit 8 is ignored: the certificate was asked for in the handshake
    assert.is_true(s:peer_certificate() == x509("client.pem"))
    local r = pack(s:verify_client_post_handshake())
    assert.is_nil(r[1])
    assert.is_string(r[2])
    assert.equal("ssl", r[3])
  end)
end)
