-- callback_spec.lua: API.md §1, the verification callback (Lua functions, RETRY, C callbacks).
local sslctx = require "sslctx"
local helper = require "helper"

local pki, read = helper.pki, helper.read

local SERVERS = {
  good = { chain = "server-chain.pem", key = "server.key", leaf = "server.pem" },
  expired = { chain = "expired-chain.pem", key = "expired.key", leaf = "expired.pem" },
  wronghost = { chain = "wronghost-chain.pem", key = "wronghost.key", leaf = "wronghost.pem" },
  selfsigned = { chain = "selfsigned.pem", key = "selfsigned.key", leaf = "selfsigned.pem" },
  untrusted = { chain = "untrusted-chain.pem", key = "untrusted.key", leaf = "untrusted.pem" },
}

local function server_for(name, extra)
  local srv = SERVERS[name]
  return helper.server_ctx(helper.merge({ certificate = pki(srv.chain), key = pki(srv.key) }, extra))
end

local function expected_code(name)
  local srv = SERVERS[name]
  return helper.openssl_verify{ cert = srv.leaf, untrusted = srv.chain, CAfile = "ca.pem",
    host = "localhost" }
end

local function subject(name) return helper.cli_subject(name) end

-- A callback that records each call and returns `ret` (or ret(ok, store, n) if a function).
local function recorder(ret)
  local calls = {}
  local fn = function(ok, store)
    local cert = store:cert()
    calls[#calls + 1] = { ok = ok, depth = store:depth(), err = store:error(),
                          err_string = store:error_string(),
                          subject = cert and cert:subject(), chain = #store:chain() }
    if type(ret) == "function" then return ret(ok, store, #calls) end
    return ret
  end
  return fn, calls
end

-- client context with mode and callback against the named server
local function client_run(mode, fn, server, copts)
  local cctx = helper.client_ctx({ verify = mode })
  cctx:set_verification_mode("client", mode, fn)
  return helper.connect(cctx, server_for(server or "good"), copts)
end

local function ok_depths(calls)
  local t = {}
  for _, c in ipairs(calls) do if c.ok == true then t[#t + 1] = c.depth end end
  return t
end

local function failures(calls)
  local t = {}
  for _, c in ipairs(calls) do if c.ok == false then t[#t + 1] = c end end
  return t
end

local function openssl_at_least_3_0_2()
  local a, b, c = sslctx.openssl_version():match("OpenSSL (%d+)%.(%d+)%.(%d+)")
  a, b, c = tonumber(a), tonumber(b), tonumber(c)
  return a > 3 or (a == 3 and (b > 0 or c >= 2))
end

describe("verify callback calls", function()
  it("a good chain: once per certificate, root first, all ok", function()
    local fn, calls = recorder(nil)
    local _, _, cok, cmsg = client_run("always", fn)
    assert.is_true(cok, cmsg)
    assert.equal(3, #calls)
    assert.same({ 2, 1, 0 }, ok_depths(calls))
    assert.equal(subject("ca.pem"), calls[1].subject)
    assert.equal(subject("int.pem"), calls[2].subject)
    assert.equal(subject("server.pem"), calls[3].subject)
    for _, c in ipairs(calls) do
      assert.equal(0, c.err)
      assert.is_string(c.err_string)
      assert.equal(3, c.chain)
    end
  end)

  it("an expired leaf: one extra ok == false call at depth 0 with the error", function()
    local fn, calls = recorder(true)
    local c, _, cok, cmsg = client_run("always", fn, "expired")
    assert.is_true(cok, cmsg)       -- the callback accepted every step
    assert.same({ 2, 1, 0 }, ok_depths(calls))
    local f = failures(calls)
    assert.equal(1, #f)
    assert.equal(0, f[1].depth)
    assert.equal(expected_code("expired"), f[1].err)
    assert.equal(4, #calls)
    assert.is_not_nil(c:peer_certificate())
  end)

  it("a self-signed leaf: the error at depth 0, and one ok call for the one certificate", function()
    local fn, calls = recorder(true)
    local _, _, cok, cmsg = client_run("always", fn, "selfsigned")
    assert.is_true(cok, cmsg)
    assert.same({ 0 }, ok_depths(calls))
    local f = failures(calls)
    assert.equal(1, #f)
    assert.equal(0, f[1].depth)
    assert.equal(expected_code("selfsigned"), f[1].err)
  end)

  it("a hostname mismatch comes before the root-first pass", function()
    local fn, calls = recorder(true)
    local _, _, cok, cmsg = client_run("always", fn, "wronghost")
    assert.is_true(cok, cmsg)
    assert.equal(4, #calls)
    assert.is_false(calls[1].ok)
    assert.equal(62, calls[1].err)
    assert.equal(0, calls[1].depth)
    assert.same({ 2, 1, 0 }, ok_depths(calls))
  end)

  it("returning nil keeps ok: a failing chain is rejected under 'always'", function()
    local fn, calls = recorder(nil)
    local c, _, cok, _, ckind = client_run("always", fn, "untrusted")
    assert.is_nil(cok)
    assert.equal("verify", ckind)
    assert.is_true(#calls >= 1)
    assert.is_false(calls[#calls].ok)
    assert.equal(expected_code("untrusted"), (c:verify_result()))
  end)

  it("returning true accepts an untrusted chain under 'always'", function()
    local fn = recorder(true)
    local c, s, cok, cmsg = client_run("always", fn, "untrusted")
    assert.is_true(cok, cmsg)
    assert.equal("x", helper.exchange(s, c, "x"))
  end)

  it("returning false where OpenSSL saw no error records 50", function()
    local fn = recorder(function(_, _, n) if n == 3 then return false end end)
    local c, _, cok, _, ckind = client_run("always", fn, "good")
    assert.is_nil(cok)
    assert.equal("verify", ckind)
    assert.equal(50, (c:verify_result()))
    -- under "never" the verdict is only recorded
    local fn2 = recorder(function(_, _, n) if n == 1 then return false end end)
    local c2, _, cok2, cmsg2 = client_run("never", fn2, "good")
    assert.is_true(cok2, cmsg2)
    local code, _, verified = c2:verify_result()
    assert.equal(50, code)
    assert.is_false(verified)
  end)

  it("store:set_error records the code a rejection reports", function()
    local fn = function(ok, store)
      if store:depth() == 0 then store:set_error(28); return false end
    end
    local c, _, cok, _, ckind = client_run("always", fn, "good")
    assert.is_nil(cok)
    assert.equal("verify", ckind)
    assert.equal(28, (c:verify_result()))
  end)

  it("store:connection() is the connection object; store:cert() may be kept", function()
    local seen, kept
    local fn = function(ok, store)
      seen = store:connection()
      if store:depth() == 0 then kept = store:cert() end
    end
    local c, _, cok = client_run("always", fn)
    assert.is_true(cok)
    assert.is_true(rawequal(c, seen))
    collectgarbage("collect")
    assert.equal("CN=localhost", kept:subject())
    assert.is_true(kept == c:peer_certificate())
  end)

  it("the store is unusable after the call", function()
    local saved
    local _, _, cok = client_run("always", function(ok, store) saved = store end)
    assert.is_true(cok)
    assert.has_error(function() saved:depth() end)
    assert.has_error(function() saved:error() end)
    assert.has_error(function() saved:cert() end)
  end)

  it("runs on the coroutine that called handshake", function()
    local cctx, sctx = helper.contexts{}
    local where
    cctx:set_verification_mode("client", "always", function() where = coroutine.running() end)
    local c = cctx:new_connection({ hostname = "localhost" })
    local s = sctx:new_connection()
    local co = coroutine.create(function() return helper.pump(c, s) end)
    local ok, cok, cmsg = coroutine.resume(co)
    assert.is_true(ok, cok)
    assert.is_true(cok, cmsg)
    assert.is_true(where == co)
  end)

  it("a server-side callback sees the client's chain and the server connection", function()
    local fn, calls = recorder(nil)
    local conn
    local cctx, sctx = helper.contexts{
      client = { certificate = pki("client-chain.pem"), key = pki("client.key") },
      server = { verify = "require" } }
    sctx:set_verification_mode("server", "require", function(ok, store)
      conn = store:connection()
      return fn(ok, store)
    end)
    local _, s, cok, cmsg, _, sok, smsg = helper.connect(cctx, sctx)
    assert.is_true(cok, cmsg)
    assert.is_true(sok, smsg)
    assert.is_true(rawequal(s, conn))
    assert.same({ 2, 1, 0 }, ok_depths(calls))
    assert.equal(subject("client.pem"), calls[3].subject)
  end)

  it("the verify_callback option of sslctx.new installs it", function()
    local fn, calls = recorder(nil)
    local cctx = helper.client_ctx({ verify = "always", verify_callback = fn })
    assert.is_true(rawequal(fn, select(4, cctx:get_verification_mode("client"))))
    local _, _, cok = helper.connect(cctx, helper.server_ctx())
    assert.is_true(cok)
    assert.equal(3, #calls)
  end)
end)

describe("verify callback failures", function()
  for _, mode in ipairs({ "always", "never" }) do
    it("an error fails the handshake with 'verify callback: <error>' under '" .. mode .. "'", function()
      local _, _, cok, cmsg, ckind = client_run(mode, function() error("boom", 0) end)
      assert.is_nil(cok)
      assert.equal("callback", ckind)
      assert.equal("verify callback: boom", cmsg)
    end)

    it("an invalid return value is a callback error under '" .. mode .. "'", function()
      for _, bad in ipairs({ 42, "yes", {} }) do
        local _, _, cok, cmsg, ckind = client_run(mode, function() return bad end)
        assert.is_nil(cok)
        assert.equal("callback", ckind)
        assert.equal(1, cmsg:find("verify callback: ", 1, true), cmsg)
      end
    end)
  end

  it("an attempted yield is a callback error", function()
    local cctx, sctx = helper.contexts{}
    cctx:set_verification_mode("client", "always", function() coroutine.yield("nope") end)
    local c = cctx:new_connection({ hostname = "localhost" })
    local s = sctx:new_connection()
    local co = coroutine.create(function() return helper.pump(c, s) end)
    local ok, cok, cmsg, ckind = coroutine.resume(co)
    assert.is_true(ok, cok)
    assert.equal("dead", coroutine.status(co))
    assert.is_nil(cok)
    assert.equal("callback", ckind)
    assert.equal(1, cmsg:find("verify callback: ", 1, true), cmsg)
  end)

  it("a server-side callback error fails the server's handshake", function()
    local cctx, sctx = helper.contexts{
      client = { certificate = pki("client-chain.pem"), key = pki("client.key") } }
    sctx:set_verification_mode("server", "always", function() error("server says no", 0) end)
    local _, _, _, _, _, sok, smsg, skind = helper.connect(cctx, sctx)
    assert.is_nil(sok)
    assert.equal("callback", skind)
    assert.equal("verify callback: server says no", smsg)
  end)

  it("inside its own callback a connection's driving methods raise", function()
    local results = {}
    local fn = function(ok, store)
      if store:depth() ~= 0 then return end
      local conn = store:connection()
      results.close = pcall(function() conn:close() end)
      results.handshake = pcall(function() conn:handshake() end)
      results.read = pcall(function() conn:read() end)
      results.write = pcall(function() conn:write("x") end)
      results.shutdown = pcall(function() conn:shutdown() end)
      results.renegotiate = pcall(function() conn:renegotiate() end)
    end
    local c, s, cok, cmsg = client_run("always", fn)
    assert.is_true(cok, cmsg)
    for _, m in ipairs({ "close", "handshake", "read", "write", "shutdown", "renegotiate" }) do
      assert.is_false(results[m], m)
    end
    assert.equal("still open", helper.exchange(c, s, "still open"))
  end)
end)

describe("sslctx.RETRY", function()
  local function drive_with_retry(c, s)
    local retries, cok, cmsg, ckind = 0, nil, nil, nil
    local sok
    for _ = 1, 30 do
      if cok ~= true then
        cok, cmsg, ckind = c:handshake()
        if ckind == "want_retry_verify" then retries = retries + 1 end
      end
      helper.transfer(c, s)
      if sok ~= true then sok = s:handshake() end
      helper.transfer(s, c)
      if cok == true and sok == true then break end
      if cok == nil and not (helper.is_want(ckind) or ckind == "want_retry_verify") then break end
    end
    return retries, cok, cmsg, ckind, sok
  end

  it("on a client: want_retry_verify, then verification runs again from the root", function()
    if not openssl_at_least_3_0_2() then
      pending("the running OpenSSL lacks SSL_set_retry_verify")
    end
    local cctx, sctx = helper.contexts{}
    local calls, answered = {}, false
    cctx:set_verification_mode("client", "always", function(ok, store)
      calls[#calls + 1] = store:depth()
      if not answered then answered = true; return sslctx.RETRY end
    end)
    local c = cctx:new_connection({ hostname = "localhost" })
    local s = sctx:new_connection()
    local cok, cmsg, ckind
    -- the first call that reaches verification returns want_retry_verify
    for _ = 1, 5 do
      cok, cmsg, ckind = c:handshake()
      helper.transfer(c, s); s:handshake(); helper.transfer(s, c)
      if ckind == "want_retry_verify" then break end
    end
    assert.is_nil(cok)
    assert.equal("want_retry_verify", cmsg)
    assert.equal("want_retry_verify", ckind)
    local retries, cok2, cmsg2 = drive_with_retry(c, s)
    assert.equal(0, retries)
    assert.is_true(cok2, cmsg2)
    -- the first pass stopped at the root; the second ran from the root again
    assert.same({ 2, 2, 1, 0 }, calls)
  end)

  it("on a server RETRY is a callback error", function()
    local cctx, sctx = helper.contexts{
      client = { certificate = pki("client-chain.pem"), key = pki("client.key") } }
    sctx:set_verification_mode("server", "always", function() return sslctx.RETRY end)
    local _, _, _, _, _, sok, smsg, skind = helper.connect(cctx, sctx)
    assert.is_nil(sok)
    assert.equal("callback", skind)
    assert.equal("verify callback: RETRY unsupported here", smsg)
  end)
end)

describe("C callbacks", function()
  it("reject_all rejects a good chain", function()
    local _, _, cok, _, ckind = client_run("always", sslctx.c_callbacks.reject_all)
    assert.is_nil(cok)
    assert.equal("verify", ckind)
  end)

  it("insecure_accept_all accepts an untrusted chain", function()
    local _, _, cok, cmsg = client_run("always", sslctx.c_callbacks.insecure_accept_all, "untrusted")
    assert.is_true(cok, cmsg)
  end)

  it("preverify keeps OpenSSL's verdict", function()
    local _, _, cok = client_run("always", sslctx.c_callbacks.preverify, "good")
    assert.is_true(cok)
    local c, _, cok2, _, ckind2 = client_run("always", sslctx.c_callbacks.preverify, "untrusted")
    assert.is_nil(cok2)
    assert.equal("verify", ckind2)
    assert.equal(expected_code("untrusted"), (c:verify_result()))
  end)
end)

describe("callbacks and connections", function()
  it("a connection copies the context's callback at creation", function()
    local f1, calls1 = recorder(nil)
    local f2, calls2 = recorder(nil)
    local cctx, sctx = helper.contexts{}
    cctx:set_verification_mode("client", "always", f1)
    local c = cctx:new_connection({ hostname = "localhost" })
    cctx:set_verification_mode("client", "always", f2)
    assert.is_true(rawequal(f1, select(4, c:get_verification_mode("client"))))
    local cok = helper.pump(c, sctx:new_connection())
    assert.is_true(cok)
    assert.equal(3, #calls1)
    assert.equal(0, #calls2)
  end)

  it("a connection's own callback overrides the context's", function()
    local f1, calls1 = recorder(nil)
    local f2, calls2 = recorder(nil)
    local cctx, sctx = helper.contexts{}
    cctx:set_verification_mode("client", "always", f1)
    local c = cctx:new_connection({ hostname = "localhost" })
    c:set_verification_mode("client", "always", f2)
    local cok = helper.pump(c, sctx:new_connection())
    assert.is_true(cok)
    assert.equal(0, #calls1)
    assert.equal(3, #calls2)
  end)

  it("a resumed session skips the callback", function()
    local fn, calls = recorder(nil)
    local cctx, sctx = helper.contexts{
      client = { certificate = pki("client-chain.pem"), key = pki("client.key") } }
    sctx:set_verification_mode("server", "require", fn)
    local c1 = helper.connected(cctx, sctx)
    c1:read()
    local n = #calls
    assert.equal(3, n)
    local c2, s2 = helper.connected(cctx, sctx, { session = c1:session() })
    assert.is_true(s2:session_reused())
    assert.is_true(c2:session_reused())
    assert.equal(n, #calls)
  end)

  it("changing the server's callback changes the session id context (no resumption)", function()
    local cctx, sctx = helper.contexts{
      client = { certificate = pki("client-chain.pem"), key = pki("client.key") } }
    sctx:set_verification_mode("server", "require", function() end)
    local c1 = helper.connected(cctx, sctx)
    c1:read()
    local sess = c1:session()
    sctx:set_verification_mode("server", "require", function() end)
    local c2, s2 = helper.connected(cctx, sctx, { session = sess })
    assert.is_false(c2:session_reused())
    assert.is_false(s2:session_reused())
  end)
end)
