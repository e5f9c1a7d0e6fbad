-- callback_spec.lua: verify callbacks (doc/reference.md "Verify callbacks", "The verify callback's store", RETRY, foreign
-- callbacks, sslctx.KEEP), the copy a connection makes at creation, and the error rule
-- every Lua callback of the module follows (servername, ALPN select, password, session).
--
-- Expected call sequences come from OpenSSL itself: spec/support/verify_oracle.c runs
-- X509_verify_cert on the same chain the way libssl does and records its callback's calls.
local sslctx = require "sslctx"
local helper = require "helper"
local support = require "support.callbacks"

local pki, read = helper.pki, helper.read
local pack = support.pack

local VERSIONS = { "tls1.2", "tls1.3" }

local function pin(v, t)
  return helper.merge({ min_version = v, max_version = v }, t)
end

local function x509(name) return assert(sslctx.x509(read(name))) end

-- Servers the client verifies: chain file (leaf first) and key.
local SERVERS = {
  good = { chain = "server-chain.pem", key = "server.key", leaf = "server.pem" },
  expired = { chain = "expired-chain.pem", key = "expired.key", leaf = "expired.pem" },
  wronghost = { chain = "wronghost-chain.pem", key = "wronghost.key", leaf = "wronghost.pem" },
  untrusted = { chain = "untrusted-chain.pem", key = "untrusted.key", leaf = "untrusted.pem" },
  selfsigned = { chain = "selfsigned.pem", key = "selfsigned.key", leaf = "selfsigned.pem" },
}
local SERVER_ORDER = { "good", "expired", "wronghost", "untrusted", "selfsigned" }
local BAD_SERVERS = { "expired", "wronghost", "untrusted", "selfsigned" }

local function server_for(name, version, extra)
  local srv = SERVERS[name]
  return helper.server_ctx(helper.merge(pin(version or "tls1.3", {
    certificate = pki(srv.chain), key = pki(srv.key) }), extra))
end

-- A client context (trust ca.pem) with the given mode and callback.
local function client_with(version, mode, callback, extra)
  return helper.client_ctx(helper.merge(pin(version or "tls1.3", {
    verify = mode or "always", verify_callback = callback }), extra))
end

local CLIENT_CERT = { certificate = pki("client-chain.pem"), key = pki("client.key") }
local UNTRUSTED_CLIENT_CERT = { certificate = pki("client-untrusted-chain.pem"),
                                key = pki("client-untrusted.key") }

-- The code the client ends with against a server, per OpenSSL (oracle, "keep" policy).
local function oracle_result(name)
  local _, result = support.oracle{ purpose = "ssl_server", chain = SERVERS[name].chain,
                                    host = "localhost", policy = "keep" }
  return result
end

-- Asserts a driving call's complete result list is exactly nil, message, "callback" with
-- the message starting with prefix (and containing `contains`, when given).
local function assert_callback_failure(r, prefix, contains)
  assert.equal(3, r.n, "number of results")
  assert.is_nil(r[1])
  assert.equal("callback", r[3], r[2])
  assert.is_string(r[2])
  assert.equal(prefix, r[2]:sub(1, #prefix), r[2])
  if contains then
    assert.truthy(r[2]:find(contains, 1, true), "'" .. r[2] .. "' should contain '" .. contains .. "'")
  end
end

-- The module still works: a fresh verified handshake with a Lua callback.
local function assert_still_works()
  local rec = support.recorder()
  local c, s = helper.connected(client_with("tls1.3", "always", rec.fn), helper.server_ctx())
  assert.equal(3, #rec.calls)
  assert.equal("after", helper.exchange(c, s, "after"))
end

-- ---------------------------------------------------------------------------

describe("verify callback: calls and arguments, compared with OpenSSL's own", function()
  for _, version in ipairs(VERSIONS) do
    for _, name in ipairs(SERVER_ORDER) do
      for _, policy in ipairs({ "keep", "accept" }) do
        it(version .. " client against " .. name .. ", callback returning " ..
           (policy == "keep" and "nil" or "true"), function()
          local steps, result = support.oracle{ purpose = "ssl_server", chain = SERVERS[name].chain,
                                                host = "localhost", policy = policy }
          assert.is_true(#steps >= 1)
          local rec = support.recorder(function() if policy == "accept" then return true end end)
          local c, _, cok, cmsg, ckind, sok = helper.connect(client_with(version, "always", rec.fn),
                                                             server_for(name, version))
          assert.equal(#steps, #rec.calls, "number of callback calls")
          for i, step in ipairs(steps) do
            local call = rec.calls[i]
            local where = "call " .. i .. " (depth " .. step.depth .. ")"
            assert.equal("boolean", call.ok_type, where)
            assert.equal(step.depth, call.depth, where)
            assert.equal(step.ok, call.ok, where)
            assert.equal(step.chain_len, call.chain_len, where)
            assert.equal(step.fingerprint, call.fingerprint, where)
            if not step.ok then
              assert.equal(step.error, call.error, where)
              assert.is_string(call.error_string)
              assert.is_true(#call.error_string > 0 and call.error_string ~= "ok", where)
            end
          end
          if policy == "keep" then
            assert.equal(result, (c:verify_result()))
            if result == 0 then
              assert.is_true(cok, cmsg)
            else
              assert.is_nil(cok)
              assert.equal("verify", ckind, cmsg)
              -- the error string the callback saw last is the one the connection keeps
              local _, str = c:verify_result()
              assert.equal(str, rec.calls[#rec.calls].error_string)
            end
          else
            assert.is_true(cok, cmsg)
            assert.is_true(sok)
          end
        end)
      end
    end
  end

  it("a good chain: depth 2, 1, 0, all ok, error 0, chain of three, certs root first", function()
    local rec = support.recorder()
    helper.connected(client_with("tls1.3", "always", rec.fn), helper.server_ctx())
    assert.same({ 2, 1, 0 }, rec.depths())
    local subjects = { helper.cli_subject("ca.pem"), helper.cli_subject("int.pem"), "CN=localhost" }
    for i, call in ipairs(rec.calls) do
      assert.is_true(call.ok)
      assert.equal(0, call.error)
      assert.equal(3, call.chain_len)
      assert.equal(subjects[i], call.subject)
    end
    assert.equal("CN=sslctx Test Root CA,O=sslctx", rec.calls[1].subject)
  end)

  it("a hostname mismatch is reported at depth 0 before the root-first pass", function()
    local rec = support.recorder(function() return true end)
    local _, _, cok, cmsg = helper.connect(client_with("tls1.3", "always", rec.fn), server_for("wronghost"))
    assert.is_true(cok, cmsg)
    assert.same({ 0, 2, 1, 0 }, rec.depths())
    assert.is_false(rec.calls[1].ok)
    assert.equal(62, rec.calls[1].error)
    assert.is_true(rec.calls[2].ok and rec.calls[3].ok and rec.calls[4].ok)
  end)

  it("an untrusted chain: the failing step has ok = false and OpenSSL's code", function()
    local expected = helper.openssl_verify{ cert = "untrusted.pem", untrusted = "untrusted-chain.pem",
                                            CAfile = "ca.pem", host = "localhost" }
    local rec = support.recorder()
    local c, _, cok, _, ckind = helper.connect(client_with("tls1.3", "always", rec.fn), server_for("untrusted"))
    assert.is_nil(cok)
    assert.equal("verify", ckind)
    assert.equal(1, #rec.calls)
    assert.is_false(rec.calls[1].ok)
    assert.equal(expected, rec.calls[1].error)
    assert.equal(expected, (c:verify_result()))
  end)

  it("store:chain() is an array of x509, leaf first, as OpenSSL built it", function()
    local chains = {}
    local cb = function(_, store) chains[#chains + 1] = store:chain() end
    helper.connected(client_with("tls1.3", "always", cb), helper.server_ctx())
    assert.equal(3, #chains)
    for _, ch in ipairs(chains) do
      assert.equal(3, #ch)
      assert.is_true(ch[1] == x509("server.pem"))
      assert.is_true(ch[2] == x509("int.pem"))
      assert.is_true(ch[3] == x509("ca.pem"))
    end
  end)

  it("store:error_string() is 'ok' on good steps and OpenSSL's text on failing ones", function()
    local rec = support.recorder(function() return true end)
    helper.connected(client_with("tls1.3", "always", rec.fn), server_for("wronghost"))
    local c = client_with("tls1.3", "never"):new_connection({ hostname = "localhost" })
    helper.pump(c, server_for("wronghost"):new_connection())
    local _, str = c:verify_result()
    assert.equal(str, rec.calls[1].error_string)
    assert.equal("ok", rec.calls[2].error_string)
  end)

  it("the server's callback sees the client chain (ssl_client purpose), root first", function()
    local steps = support.oracle{ purpose = "ssl_client", chain = "client-chain.pem", policy = "keep" }
    local rec = support.recorder()
    local cctx = helper.client_ctx(CLIENT_CERT)
    local sctx = helper.server_ctx({ verify = "require", verify_callback = rec.fn })
    local _, s = helper.connected(cctx, sctx)
    assert.equal(#steps, #rec.calls)
    for i, step in ipairs(steps) do
      assert.equal(step.depth, rec.calls[i].depth)
      assert.equal(step.ok, rec.calls[i].ok)
      assert.equal(step.fingerprint, rec.calls[i].fingerprint)
    end
    assert.equal("CN=Test Client,O=sslctx", rec.calls[#rec.calls].subject)
    assert.is_true(s:peer_certificate() == x509("client.pem"))
  end)

  it("the server's callback on an untrusted client chain: ok = false, OpenSSL's code", function()
    local steps, result = support.oracle{ purpose = "ssl_client", chain = "client-untrusted-chain.pem",
                                          policy = "keep" }
    local rec = support.recorder()
    local cctx = helper.client_ctx(UNTRUSTED_CLIENT_CERT)
    local sctx = helper.server_ctx({ verify = "require", verify_callback = rec.fn })
    local _, s, _, _, _, sok, smsg, skind = helper.connect(cctx, sctx)
    assert.is_nil(sok)
    assert.equal("verify", skind, smsg)
    assert.equal(#steps, #rec.calls)
    assert.is_false(rec.calls[#rec.calls].ok)
    assert.equal(steps[#steps].error, rec.calls[#rec.calls].error)
    assert.equal(result, (s:verify_result()))
  end)

  it("store:connection() is the connection object itself, on both sides", function()
    local cseen, sseen = {}, {}
    local cctx = helper.client_ctx(helper.merge(CLIENT_CERT, {
      verify_callback = function(_, store) cseen[#cseen + 1] = store:connection() end }))
    local sctx = helper.server_ctx({ verify = "require",
      verify_callback = function(_, store) sseen[#sseen + 1] = store:connection() end })
    local c, s = helper.connected(cctx, sctx)
    assert.equal(3, #cseen)
    assert.equal(3, #sseen)
    for i = 1, 3 do
      assert.is_true(rawequal(c, cseen[i]))
      assert.is_true(rawequal(s, sseen[i]))
    end
  end)

  it("store:set_error(code) then false: verify_result() is that code", function()
    for _, depth in ipairs({ 0, 1 }) do
      local cb = function(_, store)
        if store:depth() == depth then
          store:set_error(28)   -- X509_V_ERR_CERT_REJECTED
          assert(store:error() == 28)
          return false
        end
      end
      local c, _, cok, cmsg, ckind, sok = helper.connect(client_with("tls1.3", "always", cb), helper.server_ctx())
      assert.is_nil(cok)
      assert.equal("verify", ckind, cmsg)
      assert.equal(28, (c:verify_result()))
      assert.is_nil(sok)
    end
  end)

  it("store:set_error with a bad argument raises inside the callback", function()
    local errs = {}
    local cb = function(_, store)
      errs[#errs + 1] = pcall(store.set_error, store, "x")
      errs[#errs + 1] = pcall(store.set_error, store)
    end
    helper.connected(client_with("tls1.3", "always", cb), helper.server_ctx())
    for _, ok in ipairs(errs) do assert.is_false(ok) end
  end)
end)

describe("verify callback: verdicts", function()
  for _, version in ipairs(VERSIONS) do
    for _, name in ipairs(BAD_SERVERS) do
      it(version .. " true on a failing chain (" .. name .. ") under 'always': the handshake completes", function()
        local calls = 0
        local cb = function() calls = calls + 1; return true end
        local c, s, cok, cmsg, _, sok, smsg = helper.connect(client_with(version, "always", cb),
                                                             server_for(name, version))
        assert.is_true(cok, cmsg)
        assert.is_true(sok, smsg)
        assert.is_true(calls >= 2)
        assert.equal("data", helper.exchange(c, s, "data"))
      end)

      it(version .. " nil on a failing chain (" .. name .. ") keeps OpenSSL's verdict", function()
        local calls = 0
        local cb = function() calls = calls + 1 end
        local c, _, cok, _, ckind, sok = helper.connect(client_with(version, "always", cb),
                                                        server_for(name, version))
        assert.is_true(calls >= 1)
        assert.is_nil(cok)
        assert.equal("verify", ckind)
        assert.equal(oracle_result(name), (c:verify_result()))
        assert.is_nil(sok)
      end)
    end

    it(version .. " false on a good chain: kind 'verify', verify_result() 50, the server gets an alert", function()
      local cb = function() return false end
      local c, _, cok, cmsg, ckind, sok, smsg, skind = helper.connect(client_with(version, "always", cb),
                                                                      helper.server_ctx(pin(version)))
      assert.is_nil(cok)
      assert.equal("verify", ckind, cmsg)
      assert.is_string(cmsg)
      local code, _, verified = c:verify_result()
      assert.equal(50, code)
      assert.is_false(verified)
      assert.is_nil(sok)
      assert.equal("ssl", skind, smsg)
    end)

    it(version .. " false at depth 0 only, on a good chain: rejected with 50", function()
      local cb = function(_, store) if store:depth() == 0 then return false end end
      local c, _, cok, _, ckind = helper.connect(client_with(version, "always", cb), helper.server_ctx(pin(version)))
      assert.is_nil(cok)
      assert.equal("verify", ckind)
      assert.equal(50, (c:verify_result()))
    end)

    it(version .. " nil on a good chain keeps it: verified", function()
      local c, _, cok, cmsg = helper.connect(client_with(version, "always", function() end),
                                             helper.server_ctx(pin(version)))
      assert.is_true(cok, cmsg)
      local code, _, verified = c:verify_result()
      assert.equal(0, code)
      assert.is_true(verified)
    end)

    it(version .. " client 'never': false is only recorded (50), the handshake completes", function()
      local calls = 0
      local cb = function() calls = calls + 1; return false end
      local c, s, cok, cmsg, _, sok = helper.connect(client_with(version, "never", cb), helper.server_ctx(pin(version)))
      assert.is_true(calls >= 1)
      assert.is_true(cok, cmsg)
      assert.is_true(sok)
      local code, _, verified = c:verify_result()
      assert.equal(50, code)
      assert.is_false(verified)
      assert.equal("x", helper.exchange(c, s, "x"))
    end)

    it(version .. " client 'never' with nil on an expired chain: completes, OpenSSL's code recorded", function()
      local c, _, cok, cmsg = helper.connect(client_with(version, "never", function() end),
                                             server_for("expired", version))
      assert.is_true(cok, cmsg)
      assert.equal(oracle_result("expired"), (c:verify_result()))
    end)

    it(version .. " server: false on a good client certificate fails the server's handshake with 50", function()
      local cctx = helper.client_ctx(pin(version, CLIENT_CERT))
      local sctx = helper.server_ctx(pin(version, { verify = "always", verify_callback = function() return false end }))
      local c, s, cok, cmsg, ckind, sok, smsg, skind = helper.connect(cctx, sctx)
      assert.is_nil(sok)
      assert.equal("verify", skind, smsg)
      assert.equal(50, (s:verify_result()))
      local learned, why = support.learns_rejection(c, cok, cmsg, ckind)
      assert.is_true(learned, why)
    end)

    it(version .. " server: true on an untrusted client certificate lets it in", function()
      local cctx = helper.client_ctx(pin(version, UNTRUSTED_CLIENT_CERT))
      local sctx = helper.server_ctx(pin(version, { verify = "require", verify_callback = function() return true end }))
      local c, s, cok, cmsg, _, sok, smsg = helper.connect(cctx, sctx)
      assert.is_true(cok, cmsg)
      assert.is_true(sok, smsg)
      assert.equal("CN=Untrusted Client,O=sslctx", s:peer_certificate():subject())
      assert.equal("in", helper.exchange(c, s, "in"))
    end)
  end
end)

describe("verify callback: errors are contained", function()
  -- Each case: the callback, what its message must contain, and whether it must run
  -- inside a coroutine.
  local CASES = {
    { name = "a string error", cb = function() error("boom from the callback", 0) end,
      exact = "verify callback: boom from the callback" },
    { name = "a string error with position", cb = function() error("positioned boom") end,
      contains = "positioned boom" },
    { name = "a table error", cb = function() error({ code = 42 }) end, contains = nil },
    { name = "a number error", cb = function() error(42, 0) end, exact = "verify callback: 42" },
    { name = "an attempted yield", cb = function() coroutine.yield("escaped") end,
      contains = "yield", coroutine = true },
    { name = "a number returned", cb = function() return 1 end },
    { name = "a string returned", cb = function() return "yes" end },
    { name = "a table returned", cb = function() return {} end },
    { name = "sslctx.KEEP returned", cb = function() return sslctx.KEEP end },
    { name = "a runtime error (nil index)", cb = function(_, store) return store.nope.x end,
      contains = "nope" },
  }

  local function run(fn, in_coroutine)
    if not in_coroutine then return fn() end
    local co = coroutine.create(fn)
    local res = pack(coroutine.resume(co))
    assert.is_true(res[1], tostring(res[2]))
    assert.equal("dead", coroutine.status(co), "the coroutine must not have been suspended")
    return helper.unpack(res, 2, res.n)
  end

  for _, version in ipairs(VERSIONS) do
    for _, mode in ipairs({ "always", "never" }) do
      for _, case in ipairs(CASES) do
        it(version .. " client '" .. mode .. "', " .. case.name .. ": nil, 'verify callback: ...', 'callback'", function()
          local calls = 0
          local cb = function(...) calls = calls + 1; return case.cb(...) end
          local c = client_with(version, mode, cb):new_connection({ hostname = "localhost" })
          local s = helper.server_ctx(pin(version)):new_connection()
          local _, _, _, sok, smsg, skind, chist = run(function() return support.drive(c, s) end, case.coroutine)
          assert.equal(1, calls, "the callback runs once: its failure ends verification")
          local last = chist[#chist]
          assert_callback_failure(last, "verify callback: ", case.contains)
          if case.exact then assert.equal(case.exact, last[2]) end
          if not case.contains and not case.exact then
            assert.is_true(#last[2] > #"verify callback: ", last[2])
          end
          -- fail closed, whatever the mode: the server's handshake fails too (an alert)
          assert.is_nil(sok)
          assert.equal("ssl", skind, smsg)
          assert_still_works()
        end)
      end
    end

    it(version .. " server-side callback raising: the server's handshake fails with kind 'callback'", function()
      local cctx = helper.client_ctx(pin(version, CLIENT_CERT))
      local sctx = helper.server_ctx(pin(version, { verify = "always",
        verify_callback = function() error("server side boom", 0) end }))
      local c, _, cok, cmsg, ckind, _, _, _, _, shist = (function()
        local cc = cctx:new_connection({ hostname = "localhost" })
        local ss = sctx:new_connection()
        return cc, ss, support.drive(cc, ss)
      end)()
      local last = shist[#shist]
      assert_callback_failure(last, "verify callback: ", "server side boom")
      assert.equal("verify callback: server side boom", last[2])
      local learned, why = support.learns_rejection(c, cok, cmsg, ckind)
      assert.is_true(learned, why)
    end)
  end

  it("a callback that fails on every call: the message is the first failure's", function()
    local n = 0
    local cb = function() n = n + 1; error("failure " .. n, 0) end
    local _, _, _, cmsg, ckind = helper.connect(client_with("tls1.3", "always", cb), helper.server_ctx())
    assert.equal("callback", ckind)
    assert.equal("verify callback: failure 1", cmsg)
  end)

  it("many failing handshakes in a row leave the process and the Lua stack sound", function()
    for i = 1, 300 do
      local cb = function() error("again " .. i, 0) end
      local _, _, _, cmsg, ckind = helper.connect(client_with("tls1.3", "never", cb), helper.server_ctx())
      assert.equal("callback", ckind)
      assert.equal("verify callback: again " .. i, cmsg)
    end
    assert_still_works()
  end)

  it("the failed connection stays failed: a later handshake() does not succeed", function()
    local c = client_with("tls1.3", "never", function() error("x", 0) end):new_connection({ hostname = "localhost" })
    local s = helper.server_ctx():new_connection()
    local _, _, ckind = helper.pump(c, s)
    assert.equal("callback", ckind)
    local ok, r = pcall(c.handshake, c)
    assert.is_true(not ok or r == nil, "handshake after a callback failure must not succeed")
  end)
end)

describe("verify callback: the driving coroutine", function()
  it("runs on the coroutine that called handshake()", function()
    local rec = support.recorder()
    local c = client_with("tls1.3", "always", rec.fn):new_connection({ hostname = "localhost" })
    local s = helper.server_ctx():new_connection()
    local co = coroutine.create(function() return helper.pump(c, s) end)
    local ok, cok, cmsg = coroutine.resume(co)
    assert.is_true(ok, tostring(cok))
    assert.is_true(cok, cmsg)
    assert.equal(3, #rec.calls)
    for _, call in ipairs(rec.calls) do
      assert.is_true(call.thread == co, "callback thread differs from the driving coroutine")
    end
  end)

  it("runs on the main thread when the main thread drives", function()
    local main = coroutine.running()   -- nil on 5.1, the main thread on 5.2+
    local rec = support.recorder()
    helper.connected(client_with("tls1.3", "always", rec.fn), helper.server_ctx())
    assert.equal(3, #rec.calls)
    for _, call in ipairs(rec.calls) do assert.is_true(call.thread == main) end
  end)

  it("each driving call records its own coroutine (client in one, server in another)", function()
    local crec, srec = support.recorder(), support.recorder()
    local c = client_with("tls1.3", "always", crec.fn, CLIENT_CERT):new_connection({ hostname = "localhost" })
    local s = helper.server_ctx({ verify = "require", verify_callback = srec.fn }):new_connection()
    local cco = coroutine.wrap(function() while true do coroutine.yield(c:handshake()) end end)
    local sco_thread
    local sco = coroutine.wrap(function()
      sco_thread = coroutine.running()
      while true do coroutine.yield(s:handshake()) end
    end)
    local cthread
    local cco2 = coroutine.create(function()
      cthread = coroutine.running()
      while true do coroutine.yield(c:handshake()) end
    end)
    -- first client call from cco, later ones from cco2: the callback must follow
    cco()
    helper.transfer(c, s)
    for _ = 1, 10 do
      sco()
      helper.transfer(s, c)
      coroutine.resume(cco2)
      helper.transfer(c, s)
    end
    assert.equal(3, #crec.calls)
    assert.equal(3, #srec.calls)
    for _, call in ipairs(crec.calls) do assert.is_true(call.thread == cthread) end
    for _, call in ipairs(srec.calls) do assert.is_true(call.thread == sco_thread) end
  end)
end)

describe("verify callback: the store object", function()
  local METHODS = {
    { "error" }, { "error_string" }, { "depth" }, { "cert" }, { "chain" },
    { "set_error", 0 }, { "connection" },
  }

  it("every method raises once the callback has returned", function()
    local kept
    local cb = function(_, store) kept = store end
    helper.connected(client_with("tls1.3", "always", cb), helper.server_ctx())
    assert.is_not_nil(kept)
    for _, m in ipairs(METHODS) do
      local name, arg = m[1], m[2]
      assert.is_function(kept[name], name)
      local ok = pcall(kept[name], kept, arg)
      assert.is_false(ok, "store:" .. name .. "() after the callback must raise")
    end
  end)

  it("a store kept from a failed (raising) callback also expires", function()
    local kept
    local cb = function(_, store) kept = store; error("bye", 0) end
    helper.connect(client_with("tls1.3", "always", cb), helper.server_ctx())
    assert.is_not_nil(kept)
    for _, m in ipairs(METHODS) do
      assert.is_false(pcall(kept[m[1]], kept, m[2]), m[1])
    end
  end)

  -- Regression (valgrind in CI: an 8-byte write into a freed block): the store object is
  -- unreachable once its callback returns, and building the "invalid return value" error
  -- allocates, so the GC could free it before the module expired it.  In a big heap (this
  -- process) the collector seldom finishes a cycle inside that window; in a small one (a
  -- child interpreter) it does every time, so the child runs under valgrind, which sees the
  -- write that the plain build survives.
  it("a store the GC frees as its callback fails is not written after (child under valgrind)", function()
    local out, rc = helper.valgrind_child([[
      local helper = require "helper"
      helper.with_busy_gc(function()
        for _ = 1, 10 do
          local cctx = helper.client_ctx({ verify_callback = function(_, store)
            assert(store:depth() >= 0)
            return 42
          end })
          local _, _, cok, cmsg = helper.connect(cctx, helper.server_ctx())
          assert(cok == nil and cmsg:find("invalid return value", 1, true), cmsg)
        end
      end)
      print("CHILD-DONE")
    ]], 120)
    if out == nil then return pending(rc) end
    assert.is_truthy(out:find("CHILD-DONE", 1, true) and rc == 0,
                     "valgrind found errors (exit 99) or the child failed:\n" .. out)
  end)

  -- The same in this process for every way out of a callback (the sanitizer runs, make
  -- check-asan and check-valgrind, would see a write after free).
  it("a store the GC takes as its callback ends, by any way out, is never written after", function()
    local ENDINGS = {
      function() return 42 end,
      function() return {} end,
      function() error("bye", 0) end,
      function() return nil end,
    }
    helper.with_busy_gc(function()
      for round = 1, 8 do
        for _, ending in ipairs(ENDINGS) do
          local cb = function(_, store) assert(store:depth() >= 0); return ending() end
          local c, s = client_with("tls1.3", "always", cb), helper.server_ctx()
          local _, _, cok, cmsg, ckind = helper.connect(c, s)
          if ending ~= ENDINGS[4] then
            assert(cok == nil and ckind == "callback", ("round %d: %s %s"):format(round, tostring(cok), tostring(cmsg)))
          else
            assert(cok == true, cmsg)
          end
        end
      end
    end)
    collectgarbage(); collectgarbage()
    assert_still_works()
  end)

  it("store:cert() kept after the callback is still usable", function()
    local certs = {}
    local cb = function(_, store) certs[store:depth()] = store:cert() end
    helper.connected(client_with("tls1.3", "always", cb), helper.server_ctx())
    collectgarbage(); collectgarbage()
    assert.equal("CN=localhost", certs[0]:subject())
    assert.is_true(certs[0] == x509("server.pem"))
    assert.is_true(certs[1] == x509("int.pem"))
    assert.is_true(certs[2] == x509("ca.pem"))
    assert.equal(read("server.pem"):gsub("%s+$", ""), certs[0]:pem():gsub("%s+$", ""))
  end)

  it("store:chain() entries kept after the callback are still usable", function()
    local chain
    helper.connected(client_with("tls1.3", "always", function(_, st) chain = st:chain() end), helper.server_ctx())
    collectgarbage(); collectgarbage()
    assert.equal("CN=localhost", chain[1]:subject())
  end)
end)

describe("verify callback: re-entry into the connection being verified", function()
  local DRIVING = {
    { "handshake" }, { "read" }, { "write", "x" }, { "shutdown" }, { "close" }, { "renegotiate" },
  }

  for _, m in ipairs(DRIVING) do
    local name, arg = m[1], m[2]

    it("conn:" .. name .. "() raises inside the client's callback (caught there: the handshake goes on)", function()
      local results = {}
      local cb = function(_, store)
        local conn = store:connection()
        results[#results + 1] = pcall(conn[name], conn, arg)
      end
      local c, s, cok, cmsg = helper.connect(client_with("tls1.3", "always", cb), helper.server_ctx())
      assert.equal(3, #results)
      for _, ok in ipairs(results) do assert.is_false(ok, name .. " did not raise") end
      assert.is_true(cok, cmsg)
      -- the connection was neither closed nor disturbed
      assert.equal("still", helper.exchange(c, s, "still"))
    end)

    it("conn:" .. name .. "() raising out of the client's callback: kind 'callback'", function()
      local c = client_with("tls1.3", "always", function() end):new_connection({ hostname = "localhost" })
      c:set_verification_mode("client", "always", function() return c[name](c, arg) end)
      local s = helper.server_ctx():new_connection()
      local _, _, _, sok, _, _, chist = support.drive(c, s)
      assert_callback_failure(chist[#chist], "verify callback: ")
      assert.is_nil(sok)
      assert_still_works()
    end)

    it("conn:" .. name .. "() raises inside the server's callback", function()
      local results = {}
      local cctx = helper.client_ctx(CLIENT_CERT)
      local sctx = helper.server_ctx({ verify = "require", verify_callback = function(_, store)
        local conn = store:connection()
        results[#results + 1] = pcall(conn[name], conn, arg)
      end })
      local c, s, cok, cmsg, _, sok, smsg = helper.connect(cctx, sctx)
      assert.equal(3, #results)
      for _, ok in ipairs(results) do assert.is_false(ok, name .. " did not raise") end
      assert.is_true(cok, cmsg)
      assert.is_true(sok, smsg)
      assert.equal("both", helper.exchange(s, c, "both"))
    end)
  end

  it("other connections can be driven from inside a callback", function()
    local other_ok
    local cb = function()
      if other_ok == nil then
        local c2, s2 = helper.connect(client_with("tls1.3", "always"), helper.server_ctx())
        other_ok = c2 ~= nil and s2 ~= nil
      end
    end
    local _, _, cok, cmsg = helper.connect(client_with("tls1.3", "always", cb), helper.server_ctx())
    assert.is_true(cok, cmsg)
    assert.is_true(other_ok)
  end)
end)

describe("foreign callbacks", function()
  local cc = sslctx.c_callbacks

  it("sslctx.c_callbacks has preverify, reject_all, insecure_accept_all as light userdata", function()
    assert.is_table(cc)
    for _, k in ipairs({ "preverify", "reject_all", "insecure_accept_all" }) do
      assert.equal("userdata", type(cc[k]), k)
      assert.is_nil(getmetatable(cc[k]), k)   -- light userdata: no per-object metatable
    end
    assert.is_false(rawequal(cc.preverify, cc.reject_all))
    assert.is_false(rawequal(cc.reject_all, cc.insecure_accept_all))
  end)

  for _, version in ipairs(VERSIONS) do
    it(version .. " preverify keeps OpenSSL's verdict", function()
      local _, _, cok, cmsg = helper.connect(client_with(version, "always", cc.preverify), helper.server_ctx(pin(version)))
      assert.is_true(cok, cmsg)
      for _, name in ipairs(BAD_SERVERS) do
        local c, _, bok, _, bkind = helper.connect(client_with(version, "always", cc.preverify), server_for(name, version))
        assert.is_nil(bok, name)
        assert.equal("verify", bkind, name)
        assert.equal(oracle_result(name), (c:verify_result()), name)
      end
    end)

    it(version .. " reject_all rejects a good chain (50) and bad ones", function()
      local c, _, cok, _, ckind, sok = helper.connect(client_with(version, "always", cc.reject_all), helper.server_ctx(pin(version)))
      assert.is_nil(cok)
      assert.equal("verify", ckind)
      assert.equal(50, (c:verify_result()))
      assert.is_nil(sok)
      for _, name in ipairs(BAD_SERVERS) do
        local _, _, bok, _, bkind = helper.connect(client_with(version, "always", cc.reject_all), server_for(name, version))
        assert.is_nil(bok, name)
        assert.equal("verify", bkind, name)
      end
    end)

    it(version .. " insecure_accept_all accepts good and bad chains", function()
      for _, name in ipairs(SERVER_ORDER) do
        local c, s, cok, cmsg = helper.connect(client_with(version, "always", cc.insecure_accept_all), server_for(name, version))
        assert.is_true(cok, name .. ": " .. tostring(cmsg))
        assert.equal("ok", helper.exchange(c, s, "ok"))
      end
    end)

    it(version .. " reject_all on the server side rejects a good client certificate", function()
      local cctx = helper.client_ctx(pin(version, CLIENT_CERT))
      local sctx = helper.server_ctx(pin(version, { verify = "always", verify_callback = cc.reject_all }))
      local _, s, _, _, _, sok, smsg, skind = helper.connect(cctx, sctx)
      assert.is_nil(sok)
      assert.equal("verify", skind, smsg)
      assert.equal(50, (s:verify_result()))
    end)
  end

  it("get_verification_mode returns the light userdata as given (context and connection)", function()
    for _, k in ipairs({ "preverify", "reject_all", "insecure_accept_all" }) do
      local ctx = client_with("tls1.3", "always", cc[k])
      local _, _, _, cb = ctx:get_verification_mode("client")
      assert.is_true(rawequal(cc[k], cb), k)
      local conn = ctx:new_connection({ hostname = "localhost" })
      local _, _, _, ccb = conn:get_verification_mode("client")
      assert.is_true(rawequal(cc[k], ccb), k)
    end
  end)

  it("a symbol name of the module's own export: 'sslctx_cb_reject_all'", function()
    local ctx = client_with("tls1.3", "always", "sslctx_cb_reject_all")
    local _, _, _, cb = ctx:get_verification_mode("client")
    assert.equal("sslctx_cb_reject_all", cb)
    local c, _, cok, _, ckind = helper.connect(ctx, helper.server_ctx())
    assert.is_nil(cok)
    assert.equal("verify", ckind)
    assert.equal(50, (c:verify_result()))
  end)

  it("a symbol name: 'sslctx_cb_insecure_accept_all' lets an expired server in", function()
    local ctx = client_with("tls1.3", "always", "sslctx_cb_insecure_accept_all")
    local _, _, cok, cmsg = helper.connect(ctx, server_for("expired"))
    assert.is_true(cok, cmsg)
  end)

  it("a symbol name set with set_verification_mode, on a context and on a connection", function()
    local ctx = client_with("tls1.3", "always")
    assert.equal(1, ctx:set_verification_mode("client", "always", "sslctx_cb_reject_all"))
    local _, _, cok = helper.connect(ctx, helper.server_ctx())
    assert.is_nil(cok)
    local ctx2 = client_with("tls1.3", "always")
    local c = ctx2:new_connection({ hostname = "localhost" })
    c:set_verification_mode("client", "always", "sslctx_cb_reject_all")
    local _, _, _, ccb = c:get_verification_mode("client")
    assert.equal("sslctx_cb_reject_all", ccb)
    local ok2 = helper.pump(c, helper.server_ctx():new_connection())
    assert.is_nil(ok2)
    assert.equal(50, (c:verify_result()))
  end)

  describe("'/absolute/path/lib.so:symbol' (a fixture compiled for this run)", function()
    local so

    before_each(function()
      so = support.fixture_so()   -- raises (fails the test) when cc fails
    end)

    it("the fixture's fixture_verify rejects depth 0 with code 28: client side", function()
      local spec = so .. ":fixture_verify"
      local ctx = client_with("tls1.3", "always", spec)
      local _, _, _, cb = ctx:get_verification_mode("client")
      assert.equal(spec, cb)
      local c, _, cok, cmsg, ckind, sok = helper.connect(ctx, helper.server_ctx())
      assert.is_nil(cok)
      assert.equal("verify", ckind, cmsg)
      assert.equal(28, (c:verify_result()))
      assert.is_nil(sok)
    end)

    it("the fixture's fixture_verify on the server side", function()
      local cctx = helper.client_ctx(CLIENT_CERT)
      local sctx = helper.server_ctx({ verify = "require", verify_callback = so .. ":fixture_verify" })
      local _, s, _, _, _, sok, smsg, skind = helper.connect(cctx, sctx)
      assert.is_nil(sok)
      assert.equal("verify", skind, smsg)
      assert.equal(28, (s:verify_result()))
    end)

    it("a second symbol of the same library: fixture_accept_count lets an expired server in", function()
      local ctx = client_with("tls1.3", "always", so .. ":fixture_accept_count")
      local _, _, cok, cmsg = helper.connect(ctx, server_for("expired"))
      assert.is_true(cok, cmsg)
    end)

    it("a symbol that is not in the library raises at set time", function()
      local ctx = client_with("tls1.3", "always")
      local msg = helper.raises(function() ctx:set_verification_mode("client", "always", so .. ":no_such_symbol") end)
      assert.truthy(msg:find("bad argument #3 to 'set_verification_mode'", 1, true), msg)
      assert.has_error(function() client_with("tls1.3", "always", so .. ":no_such_symbol") end)
    end)

    it("a library path that does not exist raises at set time", function()
      local ctx = client_with("tls1.3", "always")
      assert.has_error(function()
        ctx:set_verification_mode("client", "always", support.root() .. "/build/support/nonexistent.so:fixture_verify")
      end)
      assert.has_error(function() ctx:set_verification_mode("client", "always", so .. ":") end)
    end)
  end)

  it("an unresolvable symbol name raises at set time (context, new, connection)", function()
    local ctx = client_with("tls1.3", "always")
    local msg = helper.raises(function() ctx:set_verification_mode("client", "always", "sslctx_no_such_callback_xyz") end)
    assert.truthy(msg:find("bad argument #3 to 'set_verification_mode'", 1, true), msg)
    assert.has_error(function()
      sslctx.new({ side = "client", verify_callback = "sslctx_no_such_callback_xyz" })
    end)
    local c = ctx:new_connection({ hostname = "localhost" })
    assert.has_error(function() c:set_verification_mode("client", "always", "sslctx_no_such_callback_xyz") end)
    assert.has_error(function() ctx:set_verification_mode("client", "always", "") end)
  end)

  it("a failed set leaves the previous callback in place", function()
    local f = function() end
    local ctx = client_with("tls1.3", "always", f)
    assert.has_error(function() ctx:set_verification_mode("client", "never", "sslctx_no_such_callback_xyz") end)
    local _, n, _, cb = ctx:get_verification_mode("client")
    assert.equal(1, n)
    assert.is_true(rawequal(f, cb))
  end)

  it("other callback types raise", function()
    local ctx = client_with("tls1.3", "always")
    for _, bad in ipairs({ 42, true, {}, sslctx.RETRY, sslctx.new({ side = "client" }) }) do
      local ok = pcall(function() ctx:set_verification_mode("client", "always", bad) end)
      assert.is_false(ok, "a " .. type(bad) .. " callback must raise")
    end
  end)
end)

describe("sslctx.KEEP and removing the callback", function()
  it("KEEP keeps the current callback while the mode changes", function()
    local rec = support.recorder()
    local ctx = client_with("tls1.3", "always", rec.fn)
    assert.equal(0, ctx:set_verification_mode("client", "never", sslctx.KEEP))
    local flags, n, preset, cb = ctx:get_verification_mode("client")
    assert.same({}, flags)
    assert.equal(0, n)
    assert.equal("never", preset)
    assert.is_true(rawequal(rec.fn, cb))
    local _, _, cok, cmsg = helper.connect(ctx, server_for("expired"))
    assert.is_true(cok, cmsg)   -- "never" now
    assert.is_true(#rec.calls >= 1, "the kept callback still runs")
  end)

  it("omitting the callback removes it", function()
    local rec = support.recorder()
    local ctx = client_with("tls1.3", "always", rec.fn)
    ctx:set_verification_mode("client", "always")
    local _, _, _, cb = ctx:get_verification_mode("client")
    assert.is_nil(cb)
    helper.connected(ctx, helper.server_ctx())
    assert.equal(0, #rec.calls)
  end)

  it("passing nil removes it", function()
    local rec = support.recorder()
    local ctx = client_with("tls1.3", "always", rec.fn)
    ctx:set_verification_mode("client", "always", nil)
    local _, _, _, cb = ctx:get_verification_mode("client")
    assert.is_nil(cb)
    helper.connected(ctx, helper.server_ctx())
    assert.equal(0, #rec.calls)
  end)

  it("KEEP with no callback keeps none", function()
    local ctx = client_with("tls1.3", "always")
    ctx:set_verification_mode("client", "never", sslctx.KEEP)
    local _, _, _, cb = ctx:get_verification_mode("client")
    assert.is_nil(cb)
  end)

  it("KEEP keeps a foreign callback too", function()
    local ctx = client_with("tls1.3", "always", "sslctx_cb_reject_all")
    ctx:set_verification_mode("client", "always", sslctx.KEEP)
    local _, _, _, cb = ctx:get_verification_mode("client")
    assert.equal("sslctx_cb_reject_all", cb)
    local _, _, cok = helper.connect(ctx, helper.server_ctx())
    assert.is_nil(cok)
  end)

  it("KEEP on a connection keeps its own callback", function()
    local rec = support.recorder()
    local ctx = client_with("tls1.3", "always")
    local c = ctx:new_connection({ hostname = "localhost" })
    c:set_verification_mode("client", "always", rec.fn)
    assert.equal(0, c:set_verification_mode("client", "never", sslctx.KEEP))
    local _, n, _, cb = c:get_verification_mode("client")
    assert.equal(0, n)
    assert.is_true(rawequal(rec.fn, cb))
    local ok, msg = helper.pump(c, server_for("expired"):new_connection())
    assert.is_true(ok, msg)
    assert.is_true(#rec.calls >= 1)
  end)

  it("omitting the callback on a connection removes it (get_verification_mode gives nil)", function()
    local rec = support.recorder()
    local c = client_with("tls1.3", "always", rec.fn):new_connection({ hostname = "localhost" })
    assert.equal(1, c:set_verification_mode("client", "always"))
    local _, _, _, cb = c:get_verification_mode("client")
    assert.is_nil(cb)
    local ok, msg = helper.pump(c, helper.server_ctx():new_connection())
    assert.is_true(ok, msg)
    assert.equal(0, #rec.calls)
  end)

  it("passing nil on a connection removes it", function()
    local rec = support.recorder()
    local c = client_with("tls1.3", "always", rec.fn):new_connection({ hostname = "localhost" })
    c:set_verification_mode("client", "always", nil)
    local _, _, _, cb = c:get_verification_mode("client")
    assert.is_nil(cb)
    local ok, msg = helper.pump(c, helper.server_ctx():new_connection())
    assert.is_true(ok, msg)
    assert.equal(0, #rec.calls)
  end)

  it("the verify_callback option of sslctx.new installs the callback as given", function()
    local rec = support.recorder()
    local ctx = helper.client_ctx({ verify = "always", verify_callback = rec.fn })
    assert.is_true(rawequal(rec.fn, (select(4, ctx:get_verification_mode("client")))))
    helper.connected(ctx, helper.server_ctx())
    assert.equal(3, #rec.calls)
  end)

  it("get_verification_mode returns the very function given", function()
    local f = function() end
    local ctx = sslctx.new({ side = "server" })
    ctx:set_verification_mode("server", "require", f)
    local flags, n, preset, cb = ctx:get_verification_mode("server")
    assert.same({ "verify_peer", "fail_if_no_peer_cert" }, flags)
    assert.equal(3, n)
    assert.equal("require", preset)
    assert.is_true(rawequal(f, cb))
  end)
end)

describe("sslctx.RETRY", function()
  -- SSL_set_retry_verify exists from OpenSSL 3.0.2 on (the module detects it at run time);
  -- before that, RETRY is a callback error on a client too.
  local function has_retry_verify()
    local a, b, c = tostring(sslctx.openssl_version()):match("(%d+)%.(%d+)%.(%d+)")
    a, b, c = tonumber(a), tonumber(b), tonumber(c)
    assert(a, "cannot parse sslctx.openssl_version()")
    return a > 3 or (a == 3 and (b > 0 or c >= 2))
  end

  it("without SSL_set_retry_verify (OpenSSL < 3.0.2) a client's RETRY fails closed", function()
    if has_retry_verify() then
      pending("the running OpenSSL has SSL_set_retry_verify: RETRY itself is tested below")
    end
    local c = client_with("tls1.3", "always", function() return sslctx.RETRY end):new_connection({ hostname = "localhost" })
    local _, _, _, _, _, _, chist = support.drive(c, helper.server_ctx():new_connection())
    local last = chist[#chist]
    assert.equal("verify callback: RETRY unsupported here", last[2])
    assert.equal("callback", last[3])
  end)

  for _, version in ipairs(VERSIONS) do
    it(version .. " client: RETRY twice, then accept; asked again from the root each time", function()
      if not has_retry_verify() then pending("the running OpenSSL lacks SSL_set_retry_verify") end
      local lookups_done = 0
      local passes = {}
      local cb = function(ok, store)
        if store:depth() == 2 and ok then passes[#passes + 1] = {} end
        local p = passes[#passes]
        p[#p + 1] = store:depth()
        if lookups_done < 2 then return sslctx.RETRY end
        return true
      end
      local c = client_with(version, "always", cb):new_connection({ hostname = "localhost" })
      local s = helper.server_ctx(pin(version)):new_connection()
      local cok, cmsg, _, sok, smsg, _, chist = support.drive(c, s, {
        on_retry = function(side)
          assert.equal("client", side)
          lookups_done = lookups_done + 1   -- the "asynchronous lookup" finished
        end })
      assert.is_true(cok, cmsg)
      assert.is_true(sok, smsg)
      local retries = {}
      for _, r in ipairs(chist) do
        if r[3] == "want_retry_verify" then retries[#retries + 1] = r end
      end
      assert.equal(2, #retries)
      for _, r in ipairs(retries) do
        assert.equal(3, r.n)
        assert.is_nil(r[1])
        assert.equal("want_retry_verify", r[2])
        assert.equal("want_retry_verify", r[3])
      end
      assert.equal(3, #passes)
      assert.same({ 2 }, passes[1])
      assert.same({ 2 }, passes[2])
      assert.same({ 2, 1, 0 }, passes[3])
      assert.equal(0, (c:verify_result()))
      assert.equal("done", helper.exchange(c, s, "done"))
    end)

    it(version .. " client: RETRY, then reject: kind 'verify'", function()
      if not has_retry_verify() then pending("the running OpenSSL lacks SSL_set_retry_verify") end
      local retried = false
      local cb = function()
        if not retried then return sslctx.RETRY end
        return false
      end
      local c = client_with(version, "always", cb):new_connection({ hostname = "localhost" })
      local s = helper.server_ctx(pin(version)):new_connection()
      local cok, _, ckind, sok = support.drive(c, s, { on_retry = function() retried = true end })
      assert.is_true(retried)
      assert.is_nil(cok)
      assert.equal("verify", ckind)
      assert.equal(50, (c:verify_result()))
      assert.is_nil(sok)
    end)

    it(version .. " server: RETRY is a callback error ('RETRY unsupported here')", function()
      local cctx = helper.client_ctx(pin(version, CLIENT_CERT))
      local sctx = helper.server_ctx(pin(version, { verify = "require", verify_callback = function() return sslctx.RETRY end }))
      local c = cctx:new_connection({ hostname = "localhost" })
      local s = sctx:new_connection()
      local cok, cmsg, ckind, _, _, _, _, shist = support.drive(c, s)
      local last = shist[#shist]
      assert.equal(3, last.n)
      assert.is_nil(last[1])
      assert.equal("verify callback: RETRY unsupported here", last[2])
      assert.equal("callback", last[3])
      for _, r in ipairs(shist) do assert.is_not.equal("want_retry_verify", r[3]) end
      local learned, why = support.learns_rejection(c, cok, cmsg, ckind)
      assert.is_true(learned, why)
      assert.is_nil(s:peer_certificate() and (select(3, s:verify_result())) or nil)
    end)
  end

  it("the retried pass runs on the coroutine of the handshake() that retried", function()
    if not has_retry_verify() then pending("the running OpenSSL lacks SSL_set_retry_verify") end
    local threads = {}
    local retried = false
    local cb = function()
      threads[#threads + 1] = coroutine.running()
      if not retried then return sslctx.RETRY end
    end
    local c = client_with("tls1.3", "always", cb):new_connection({ hostname = "localhost" })
    local s = helper.server_ctx():new_connection()
    c:handshake()
    helper.transfer(c, s)
    s:handshake()
    helper.transfer(s, c)
    local co1 = coroutine.create(function() return c:handshake() end)
    local _, _, _, kind = coroutine.resume(co1)
    assert.equal("want_retry_verify", kind)
    retried = true
    local co2 = coroutine.create(function() return c:handshake() end)
    local ok, hok, hmsg = coroutine.resume(co2)
    assert.is_true(ok)
    assert.is_true(hok, hmsg)
    assert.equal(4, #threads)
    assert.is_true(threads[1] == co1)
    for i = 2, 4 do assert.is_true(threads[i] == co2) end
  end)
end)

describe("a connection copies its context's verification at creation", function()
  it("the callback", function()
    local r1, r2 = support.recorder(), support.recorder()
    local ctx = client_with("tls1.3", "always", r1.fn)
    local c1 = ctx:new_connection({ hostname = "localhost" })
    ctx:set_verification_mode("client", "always", r2.fn)
    local c2 = ctx:new_connection({ hostname = "localhost" })
    local _, _, _, cb1 = c1:get_verification_mode("client")
    assert.is_true(rawequal(r1.fn, cb1))
    local ok1, m1 = helper.pump(c1, helper.server_ctx():new_connection())
    assert.is_true(ok1, m1)
    assert.equal(3, #r1.calls)
    assert.equal(0, #r2.calls)
    local ok2, m2 = helper.pump(c2, helper.server_ctx():new_connection())
    assert.is_true(ok2, m2)
    assert.equal(3, #r1.calls)
    assert.equal(3, #r2.calls)
  end)

  it("the mode", function()
    local ctx = client_with("tls1.3", "always")
    local c1 = ctx:new_connection({ hostname = "localhost" })
    ctx:set_verification_mode("client", "never")
    local c2 = ctx:new_connection({ hostname = "localhost" })
    local ok1, _, k1 = helper.pump(c1, server_for("expired"):new_connection())
    assert.is_nil(ok1)
    assert.equal("verify", k1)
    local ok2, m2 = helper.pump(c2, server_for("expired"):new_connection())
    assert.is_true(ok2, m2)
    assert.equal(1, (select(2, c1:get_verification_mode("client"))))
    assert.equal(0, (select(2, c2:get_verification_mode("client"))))
  end)

  it("the depth", function()
    local expected = helper.openssl_verify{ cert = "server.pem", untrusted = "server-chain.pem",
                                            CAfile = "ca.pem", host = "localhost", verify_depth = 0 }
    assert.is_true(expected ~= 0)
    local ctx = client_with("tls1.3", "always")
    local c1 = ctx:new_connection({ hostname = "localhost" })
    ctx:set_verify_depth(0)
    local c2 = ctx:new_connection({ hostname = "localhost" })
    local ok1, m1 = helper.pump(c1, helper.server_ctx():new_connection())
    assert.is_true(ok1, m1)
    local ok2, _, k2 = helper.pump(c2, helper.server_ctx():new_connection())
    assert.is_nil(ok2)
    assert.equal("verify", k2)
    assert.equal(expected, (c2:verify_result()))
  end)

  it("the verification parameters", function()
    local when = 1577880000 + 43200   -- 2020-01-01 12:00 UTC: the server's certificate is not yet valid
    local expected = helper.openssl_verify{ cert = "server.pem", untrusted = "server-chain.pem",
                                            CAfile = "ca.pem", host = "localhost", attime = when }
    assert.is_true(expected ~= 0)
    local ctx = client_with("tls1.3", "always")
    local c1 = ctx:new_connection({ hostname = "localhost" })
    ctx:set_verify_params({ time = when })
    local c2 = ctx:new_connection({ hostname = "localhost" })
    local ok1, m1 = helper.pump(c1, helper.server_ctx():new_connection())
    assert.is_true(ok1, m1)
    local ok2, _, k2 = helper.pump(c2, helper.server_ctx():new_connection())
    assert.is_nil(ok2)
    assert.equal("verify", k2)
    assert.equal(expected, (c2:verify_result()))
  end)

  it("a server connection copies the server policy too", function()
    local r1, r2 = support.recorder(), support.recorder()
    local sctx = helper.server_ctx({ verify = "require", verify_callback = r1.fn })
    local s1 = sctx:new_connection()
    sctx:set_verification_mode("server", "never", r2.fn)
    local s2 = sctx:new_connection()
    local cctx = helper.client_ctx(CLIENT_CERT)
    local ok, _, _, sok, smsg = helper.pump(cctx:new_connection({ hostname = "localhost" }), s1)
    assert.is_true(ok)
    assert.is_true(sok, smsg)
    assert.equal(3, #r1.calls)
    assert.is_true(s1:peer_certificate() ~= nil)
    local _, _, _, sok2 = helper.pump(cctx:new_connection({ hostname = "localhost" }), s2)
    assert.is_true(sok2)
    assert.is_nil(s2:peer_certificate())   -- "never": no request
    assert.equal(3, #r1.calls)
    assert.equal(0, #r2.calls)
  end)

  it("a 'both' context: each connection copies the callback of its own side", function()
    local function both(cert, key)
      local r = { client = support.recorder(), server = support.recorder() }
      local ctx = helper.new_ctx({ side = "both", certificate = pki(cert), key = pki(key),
        ca_file = pki("ca.pem"), security_level = 1 })
      ctx:set_verification_mode("client", "always", r.client.fn)
      ctx:set_verification_mode("server", "require", r.server.fn)
      assert.is_true(rawequal(r.client.fn, (select(4, ctx:get_verification_mode("client")))))
      assert.is_true(rawequal(r.server.fn, (select(4, ctx:get_verification_mode("server")))))
      return ctx, r
    end
    local x, rx = both("client-chain.pem", "client.key")   -- acts as the client
    local y, ry = both("server-chain.pem", "server.key")   -- acts as the server
    local c = x:new_connection({ side = "client", hostname = "localhost" })
    local s = y:new_connection({ side = "server" })
    local cok, cmsg, _, sok, smsg = helper.pump(c, s)
    assert.is_true(cok, cmsg)
    assert.is_true(sok, smsg)
    assert.equal(3, #rx.client.calls)
    assert.equal(0, #rx.server.calls)
    assert.equal(3, #ry.server.calls)
    assert.equal(0, #ry.client.calls)
    assert.is_true(rawequal(rx.client.fn, (select(4, c:get_verification_mode("client")))))
    assert.is_true(rawequal(ry.server.fn, (select(4, s:get_verification_mode("server")))))
  end)

  it("a server under 'never' sends no request: its callback never runs", function()
    local rec = support.recorder()
    local sctx = helper.server_ctx({ verify = "never", verify_callback = rec.fn })
    local _, s = helper.connected(helper.client_ctx(CLIENT_CERT), sctx)
    assert.equal(0, #rec.calls)
    assert.is_nil(s:peer_certificate())
  end)

  it("per-connection overrides affect neither the context nor other connections", function()
    local f, g = support.recorder(), support.recorder()
    local ctx = client_with("tls1.3", "always", f.fn)
    local c1 = ctx:new_connection({ hostname = "localhost" })
    local c2 = ctx:new_connection({ hostname = "localhost" })
    assert.equal(0, c1:set_verification_mode("client", "never", g.fn))
    c1:set_verify_depth(0)
    local _, n, _, cb = ctx:get_verification_mode("client")
    assert.equal(1, n)
    assert.is_true(rawequal(f.fn, cb))
    assert.is_true(ctx:get_verify_depth() ~= 0)
    local _, n2, _, cb2 = c2:get_verification_mode("client")
    assert.equal(1, n2)
    assert.is_true(rawequal(f.fn, cb2))
    local ok1, m1 = helper.pump(c1, helper.server_ctx():new_connection())
    assert.is_true(ok1, m1)   -- "never" on c1, though depth 0 fails the chain
    assert.is_true(#g.calls >= 1)
    assert.equal(0, #f.calls)
    local ok2, m2 = helper.pump(c2, helper.server_ctx():new_connection())
    assert.is_true(ok2, m2)
    assert.equal(3, #f.calls)
    local c3 = ctx:new_connection({ hostname = "localhost" })
    local _, n3, _, cb3 = c3:get_verification_mode("client")
    assert.equal(1, n3)
    assert.is_true(rawequal(f.fn, cb3))
  end)

  it("a connection override with a callback where the context has none", function()
    local rec = support.recorder(function() return false end)
    local ctx = client_with("tls1.3", "always")
    local c = ctx:new_connection({ hostname = "localhost" })
    c:set_verification_mode("client", "always", rec.fn)
    local ok, _, kind = helper.pump(c, helper.server_ctx():new_connection())
    assert.is_nil(ok)
    assert.equal("verify", kind)
    assert.equal(50, (c:verify_result()))
    local _, _, _, cb = ctx:get_verification_mode("client")
    assert.is_nil(cb)
  end)
end)

describe("the other Lua callbacks follow the same rule", function()
  for _, version in ipairs(VERSIONS) do
    it(version .. " servername callback raising: nil, 'servername callback: ...', 'callback'", function()
      local sctx = helper.server_ctx(pin(version))
      sctx:set_servername_callback(function() error("no such virtual host", 0) end)
      local c = helper.client_ctx(pin(version)):new_connection({ hostname = "localhost" })
      local s = sctx:new_connection()
      local cok, _, ckind, _, _, _, _, shist = support.drive(c, s)
      local last = shist[#shist]
      assert_callback_failure(last, "servername callback: ", "no such virtual host")
      assert.equal("servername callback: no such virtual host", last[2])
      assert.is_nil(cok)
      assert.equal("ssl", ckind)
      assert_still_works()
    end)

    it(version .. " ALPN select function raising: nil, 'ALPN select callback: ...', 'callback'", function()
      local sctx = helper.server_ctx(pin(version))
      sctx:set_alpn_select(function() error("no protocol for you", 0) end)
      local c = helper.client_ctx(pin(version, { alpn = { "h2" } })):new_connection({ hostname = "localhost" })
      local s = sctx:new_connection()
      local cok, _, ckind, _, _, _, _, shist = support.drive(c, s)
      local last = shist[#shist]
      assert_callback_failure(last, "ALPN select callback: ", "no protocol for you")
      assert.equal("ALPN select callback: no protocol for you", last[2])
      assert.is_nil(cok)
      assert.equal("ssl", ckind)
    end)

    it(version .. " session callback raising: the driving call returns nil, 'session callback: ...', 'callback'", function()
      local cctx = helper.client_ctx(pin(version))
      cctx:set_session_callback(function() error("cannot store it", 0) end)
      local c = cctx:new_connection({ hostname = "localhost" })
      local s = helper.server_ctx(pin(version)):new_connection()
      local cok, _, _, _, _, _, chist = support.drive(c, s)
      local failure = chist[#chist]
      if cok then   -- TLS 1.3: the session arrives after the handshake, with the next read
        failure = pack(c:read())
      end
      assert_callback_failure(failure, "session callback: ", "cannot store it")
      assert.equal("session callback: cannot store it", failure[2])
    end)
  end

  it("servername callback returning something that is not a context: kind 'callback'", function()
    for _, bad in ipairs({ 42, "other", {}, true }) do
      local sctx = helper.server_ctx()
      sctx:set_servername_callback(function() return bad end)
      local c = helper.client_ctx():new_connection({ hostname = "localhost" })
      local s = sctx:new_connection()
      local _, _, _, _, _, _, _, shist = support.drive(c, s)
      assert_callback_failure(shist[#shist], "servername callback: ")
    end
  end)

  it("servername callback that yields inside a coroutine: kind 'callback'", function()
    local sctx = helper.server_ctx()
    sctx:set_servername_callback(function() coroutine.yield("out") end)
    local c = helper.client_ctx():new_connection({ hostname = "localhost" })
    local s = sctx:new_connection()
    local co = coroutine.create(function() return support.drive(c, s) end)
    local res = pack(coroutine.resume(co))
    assert.is_true(res[1], tostring(res[2]))
    assert.equal("dead", coroutine.status(co))
    local shist = res[9]
    assert_callback_failure(shist[#shist], "servername callback: ", "yield")
  end)

  it("ALPN select function returning a non-string: kind 'callback'", function()
    local sctx = helper.server_ctx()
    sctx:set_alpn_select(function() return 42 end)
    local c = helper.client_ctx({ alpn = { "h2" } }):new_connection({ hostname = "localhost" })
    local s = sctx:new_connection()
    local _, _, _, _, _, _, _, shist = support.drive(c, s)
    assert_callback_failure(shist[#shist], "ALPN select callback: ")
  end)

  it("ALPN select function: yields are contained", function()
    local sctx = helper.server_ctx()
    sctx:set_alpn_select(function() coroutine.yield() end)
    local c = helper.client_ctx({ alpn = { "h2" } }):new_connection({ hostname = "localhost" })
    local s = sctx:new_connection()
    local co = coroutine.create(function() return support.drive(c, s) end)
    local res = pack(coroutine.resume(co))
    assert.is_true(res[1], tostring(res[2]))
    assert.equal("dead", coroutine.status(co))
    assert_callback_failure(res[9][#res[9]], "ALPN select callback: ", "yield")
  end)

  describe("password callback", function()
    local function encrypted(password)
      return sslctx.new({ side = "server", certificate = pki("server-chain.pem"),
                          key = pki("server-enc.key"), password = password })
    end

    it("a function giving the right password works (and is called)", function()
      local calls = 0
      local ctx, msg = encrypted(function(max_len)
        calls = calls + 1
        assert(type(max_len) == "number" and max_len > 0)
        return "secret"
      end)
      assert.is_not_nil(ctx, msg)
      assert.equal(1, calls)
    end)

    it("raising: nil, 'password callback: ...', 'callback'", function()
      local r = pack(encrypted(function() error("no password today", 0) end))
      assert_callback_failure(r, "password callback: ", "no password today")
      assert.equal("password callback: no password today", r[2])
    end)

    it("returning a non-string: kind 'callback'", function()
      local r = pack(encrypted(function() return 1234 end))
      assert_callback_failure(r, "password callback: ")
      r = pack(encrypted(function() return nil end))
      assert_callback_failure(r, "password callback: ")
    end)

    it("yielding inside a coroutine: kind 'callback'", function()
      local co = coroutine.create(function() return encrypted(function() coroutine.yield() end) end)
      local res = pack(coroutine.resume(co))
      assert.is_true(res[1], tostring(res[2]))
      assert.equal("dead", coroutine.status(co))
      assert_callback_failure({ n = res.n - 1, res[2], res[3], res[4] }, "password callback: ", "yield")
    end)

    it("use_private_key with a raising function: kind 'callback'", function()
      local ctx = sslctx.new({ side = "server", certificate = pki("server-chain.pem") })
      local r = pack(ctx:use_private_key(pki("server-enc.key"), function() error("nope", 0) end))
      assert_callback_failure(r, "password callback: ", "nope")
    end)
  end)
end)
