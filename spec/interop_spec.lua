-- spec/interop_spec.lua: the module against peers nobody on this project wrote, on 127.0.0.1
-- with free ports.  Every server is stopped by PID (finally/teardown), every client runs
-- under `timeout`, every wait is bounded.  Where the OpenSSL CLI pair can do the same thing,
-- the module's verdict is judged against it: same certificates, same flags, same outcome
-- (and the same X509 verify code where one is reported).
--
-- In TLS 1.3 a client learns that its certificate was rejected only when it reads (the
-- server's alert follows the handshake): such cases are judged after one round trip (the
-- client sends a line and expects the answer) and from the server side.

local helper = require "helper"
local peers = require "support.peers"
local socket = require "socket"
local sslsocket = require "sslctx.socket"

local MSG = "hello sslctx\n"
local REV = ("hello sslctx"):reverse()

local function need(bins)
  for _, b in ipairs(bins) do
    if not peers.have(b) then return b end
  end
end

-- A client context with an optional client certificate (PKI leaf name) and TLS version.
local function client_ctx(o)
  local opts = {}
  if o.cert then
    opts.certificate = helper.pki(o.cert .. "-chain.pem")
    opts.key = helper.pki(o.cert .. ".key")
  end
  if o.tls then
    opts.min_version = "tls" .. o.tls
    opts.max_version = "tls" .. o.tls
  end
  if o.cafile then opts.ca_file = helper.pki(o.cafile) end
  return helper.client_ctx(opts)
end

-- The module as a client: TCP connect, handshake, one line out and one line back.
-- Returns { handshake = bool, msg, kind, code (verify_result), reply, rerr, rkind, ok }.
local function module_client(port, o)
  o = o or {}
  local ctx = o.ctx or client_ctx(o)
  local tcp = socket.tcp()
  tcp:settimeout(5)
  assert(tcp:connect(o.host or "127.0.0.1", port))
  local s = sslsocket.wrap(tcp, ctx, { hostname = o.hostname or "localhost" })
  s:settimeout(5, "t")
  local ok, msg, kind = s:dohandshake()
  local r = { handshake = ok == true, msg = msg, kind = kind }
  r.code = s:connection():verify_result()
  if ok then
    local sent, err = s:send(o.send or MSG)
    if sent then
      local line, rerr, _, rkind = s:receive("*l")
      r.reply, r.rerr, r.rkind = line, rerr, rkind
    else
      r.rerr = err
    end
    r.reused = s:session_reused()
  end
  s:close()
  r.ok = r.reply ~= nil and r.reply == (o.expect or REV)
  return r
end

-- An HTTP GET with the module as the client: status, body, handshake result.
local function module_get(port, o)
  o = o or {}
  local s, msg, kind = sslsocket.connect("127.0.0.1", port, {
    ctx = client_ctx(o), hostname = "localhost", timeout = 5, reuse_session = false })
  if not s then return { handshake = false, msg = msg, kind = kind } end
  s:send("GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")
  local status, err, _, k = s:receive("*l")
  local r = { handshake = true, status = status, err = err, kind = k }
  if status then
    for _ = 1, 50 do
      local h = s:receive("*l")
      if not h or h == "" then break end
    end
    local body, berr, part = s:receive("*a")
    r.body = body or part
    r.berr = berr
  end
  s:close()
  r.code = status and tonumber(status:match("^HTTP/%d%.%d (%d+)"))
  return r
end

local function describe_peer(name, bins, fn)
  local missing = need(bins)
  if missing then
    describe(name, function()
      it("needs " .. missing, function() pending(missing .. " is not installed") end)
    end)
  else
    describe(name, fn)
  end
end

describe("interop on 127.0.0.1", function()
  teardown(function() peers.cleanup() end)

  -- -------------------------------------------------------------------------
  describe_peer("module client <-> openssl s_server", { "openssl" }, function()
    -- server certificate, verdict expected from both clients, verify code
    local cases = {
      { cert = "server", ok = true, code = 0 },
      { cert = "rsa-server", ok = true, code = 0 },
      { cert = "expired", ok = false, code = 10 },
      { cert = "wronghost", ok = false, code = 62 },
      { cert = "untrusted", ok = false },
      { cert = "selfsigned", ok = false, code = 18 },
    }
    for _, tls in ipairs({ "1.3", "1.2" }) do
      for _, case in ipairs(cases) do
        it(("server certificate %s, TLS %s: same verdict and code as s_client"):format(case.cert, tls), function()
          local proc = peers.s_server({ cert = case.cert, tls = tls })
          finally(function() peers.stop(proc) end)
          local cli_ok, out, _, vcode = peers.s_client({ port = proc.port })
          local m = module_client(proc.port, { tls = tls })
          assert.equal(case.ok, cli_ok, out)
          assert.equal(cli_ok, m.ok, m.msg)
          assert.equal(vcode, m.code)
          if case.code then assert.equal(case.code, m.code) end
          if not case.ok then
            assert.equal("verify", m.kind)
            assert.truthy(m.msg:find("certificate verify failed", 1, true), m.msg)
          end
        end)
      end
    end

    -- client certificates: requested (-verify 2) or required (-Verify 2), both with
    -- -verify_return_error; judged after one round trip, against s_client.
    local ccases = {
      { flag = "verify", cert = nil, ok = true },
      { flag = "verify", cert = "client", ok = true },
      { flag = "verify", cert = "client-untrusted", ok = false },
      { flag = "Verify", cert = nil, ok = false },
      { flag = "Verify", cert = "client", ok = true },
      { flag = "Verify", cert = "client-untrusted", ok = false },
    }
    for _, tls in ipairs({ "1.3", "1.2" }) do
      for _, case in ipairs(ccases) do
        it(("s_server -%s 2, client certificate %s, TLS %s"):format(
             case.flag, case.cert or "none", tls), function()
          local proc = peers.s_server({ [case.flag] = 2, tls = tls })
          finally(function() peers.stop(proc) end)
          local cli_ok, out = peers.s_client({ port = proc.port, cert = case.cert })
          local m = module_client(proc.port, { tls = tls, cert = case.cert })
          assert.equal(case.ok, cli_ok, out)
          assert.equal(cli_ok, m.ok, tostring(m.msg) .. " / " .. tostring(m.rerr))
          if not case.ok then
            if tls == "1.2" then
              -- TLS 1.2: the rejection ends the client's handshake
              assert.is_false(m.handshake)
              assert.equal("ssl", m.kind)
            else
              -- TLS 1.3: the handshake completed; the alert comes with the first read
              assert.is_true(m.handshake)
              assert.equal("ssl", m.rkind)
              assert.truthy(m.rerr:find("alert", 1, true), m.rerr)
            end
          end
        end)
      end
    end

    it("session reuse: a second connect resumes (TLS 1.2 and 1.3)", function()
      for _, tls in ipairs({ "1.2", "1.3" }) do
        local proc = peers.s_server({ tls = tls })
        finally(function() peers.stop(proc) end)
        local ctx = client_ctx({ tls = tls })
        local reused = {}
        for i = 1, 3 do
          local s, msg = sslsocket.connect("localhost", proc.port, { ctx = ctx, timeout = 5 })
          assert.truthy(s, msg)
          s:send(MSG)
          assert.equal(REV, s:receive("*l"))
          reused[i] = s:session_reused()
          s:close()
        end
        assert.same({ false, true, true }, reused)
        peers.stop(proc)
      end
    end)
  end)

  -- -------------------------------------------------------------------------
  describe_peer("openssl s_client <-> module server", { "openssl" }, function()
    -- The reference: s_server with the equivalent flags.
    local openssl_flags = {
      never = {},
      always = { verify = 2 },
      once = { verify = 2 },
      require = { Verify = 2 },
    }
    local expected = {
      never = { none = true, client = true, ["client-untrusted"] = true },
      always = { none = true, client = true, ["client-untrusted"] = false },
      once = { none = true, client = true, ["client-untrusted"] = false },
      require = { none = false, client = true, ["client-untrusted"] = false },
    }
    for _, tls in ipairs({ "1.3", "1.2" }) do
      for _, mode in ipairs({ "never", "always", "once", "require" }) do
        it(("module server '%s', TLS %s: s_client with and without -cert, as against s_server"):format(mode, tls), function()
          local certs = { "none", "client", "client-untrusted" }
          local ref = peers.s_server(helper.merge(openssl_flags[mode], { tls = tls }))
          finally(function() peers.stop(ref) end)
          local mod = peers.module_server({ verify = mode, max = #certs, tls = tls })
          finally(function() peers.stop(mod) end)
          for _, cert in ipairs(certs) do
            local c = cert ~= "none" and cert or nil
            local ref_ok, ref_out = peers.s_client({ port = ref.port, cert = c })
            local mod_ok, mod_out = peers.s_client({ port = mod.port, cert = c })
            assert.equal(expected[mode][cert], ref_ok, "s_server, " .. cert .. ":\n" .. ref_out)
            assert.equal(ref_ok, mod_ok, "module server, " .. cert .. ":\n" .. mod_out)
          end
          local results = peers.wait_results(mod, #certs)
          assert.equal(#certs, #results, peers.log(mod))
          for i, cert in ipairs(certs) do
            local r = results[i]
            assert.equal(expected[mode][cert] and "ok" or "fail", r.handshake, peers.log(mod))
            if cert == "client" and mode ~= "never" then
              assert.equal("CN=Test Client,O=sslctx", r.peer)
              assert.equal("true", r.verified)
            end
            if cert == "none" then assert.equal("", r.peer) end
            if not expected[mode][cert] then assert.equal("verify", r.kind) end
          end
        end)
      end
    end
  end)

  -- -------------------------------------------------------------------------
  describe_peer("gnutls", { "gnutls-serv", "gnutls-cli", "cc" }, function()
    for _, tls in ipairs({ "1.3", "1.2" }) do
      it("module client <-> gnutls-serv, TLS " .. tls .. ": good, wrong host, client certificates", function()
        local srv = peers.gnutls_serv({ tls = tls })   -- verifies a certificate if one is sent
        finally(function() peers.stop(srv) end)
        local m = module_client(srv.port, { tls = tls, expect = "hello sslctx" })
        assert.is_true(m.ok, tostring(m.msg) .. tostring(m.rerr))
        m = module_client(srv.port, { tls = tls, hostname = "wrong.example" })
        assert.is_false(m.handshake)
        assert.equal("verify", m.kind)
        assert.equal(62, m.code)
        m = module_client(srv.port, { tls = tls, cert = "client", expect = "hello sslctx" })
        assert.is_true(m.ok, tostring(m.msg) .. tostring(m.rerr))
        peers.stop(srv)

        local req = peers.gnutls_serv({ tls = tls, client = "require" })
        finally(function() peers.stop(req) end)
        m = module_client(req.port, { tls = tls, cert = "client", expect = "hello sslctx" })
        assert.is_true(m.ok, tostring(m.msg) .. tostring(m.rerr))
        m = module_client(req.port, { tls = tls, expect = "hello sslctx" })
        assert.is_false(m.ok)
        m = module_client(req.port, { tls = tls, cert = "client-untrusted", expect = "hello sslctx" })
        assert.is_false(m.ok)
      end)

      it("gnutls-cli <-> module server, TLS " .. tls, function()
        local mod = peers.module_server({ verify = "require", max = 3, tls = tls })
        finally(function() peers.stop(mod) end)
        local ok, out = peers.gnutls_cli({ port = mod.port, cert = "client", tls = tls, expect = REV })
        assert.is_true(ok, out)
        ok, out = peers.gnutls_cli({ port = mod.port, tls = tls, expect = REV })
        assert.is_false(ok, out)
        -- the client refuses a name the server certificate lacks
        ok, out = peers.gnutls_cli({ port = mod.port, cert = "client", tls = tls, expect = REV,
                                     verify_host = "wrong.example" })
        assert.is_false(ok, out)
        local results = peers.wait_results(mod, 3)
        assert.equal("ok", results[1].handshake)
        assert.equal("CN=Test Client,O=sslctx", results[1].peer)
        assert.equal("hello sslctx", results[1].data)
        assert.equal("fail", results[2].handshake)
        assert.equal("verify", results[2].kind)
        assert.equal("fail", results[3].handshake)
      end)
    end
  end)

  -- -------------------------------------------------------------------------
  describe_peer("nginx <-> module client, judged against curl", { "nginx", "curl" }, function()
    local cases = {
      { verify = "on", cert = "client", status = 200, body = "verify=SUCCESS subject=CN=Test Client,O=sslctx" },
      { verify = "on", cert = nil, status = 400 },
      { verify = "on", cert = "client-untrusted", status = 400 },
      { verify = "optional", cert = nil, status = 200, body = "verify=NONE" },
      { verify = "optional", cert = "client", status = 200, body = "verify=SUCCESS" },
      { verify = "optional", cert = "client-untrusted", status = 400 },
      { verify = "optional_no_ca", cert = "client-untrusted", status = 200, body = "verify=FAILED" },
      { verify = "optional_no_ca", cert = "client", status = 200, body = "verify=SUCCESS" },
    }
    for _, tls in ipairs({ "1.3", "1.2" }) do
      it("ssl_verify_client on | optional | optional_no_ca, TLS " .. tls, function()
        local servers = {}
        finally(function() for _, p in pairs(servers) do peers.stop(p) end end)
        for _, case in ipairs(cases) do
          local proc = servers[case.verify]
          if not proc then
            proc = peers.nginx({ verify_client = case.verify, tls = tls })
            servers[case.verify] = proc
          end
          local what = case.verify .. " / " .. tostring(case.cert)
          local cbody, cout = peers.curl({ port = proc.port, cert = case.cert, tls = tls })
          local m = module_get(proc.port, { cert = case.cert, tls = tls })
          assert.is_true(m.handshake, what .. ": " .. tostring(m.msg))
          assert.equal(case.status, m.code, what .. ": " .. tostring(m.status))
          assert.truthy(cout:find("< HTTP/1.1 " .. case.status, 1, true), what .. ":\n" .. cout)
          if case.body then
            assert.truthy(m.body:find(case.body, 1, true), what .. ": " .. tostring(m.body))
            assert.truthy(cbody and cbody:find(case.body, 1, true), what .. ": " .. tostring(cbody))
          end
        end
      end)
    end

    it("the module client refuses nginx under a wrong host name, as curl does", function()
      local proc = peers.nginx({ cert = "wronghost" })
      finally(function() peers.stop(proc) end)
      local _, cout, ccode = peers.curl({ port = proc.port })
      assert.equal(60, ccode, cout)
      local m = module_get(proc.port, {})
      assert.is_false(m.handshake)
      assert.equal("verify", m.kind)
    end)
  end)

  -- -------------------------------------------------------------------------
  describe_peer("curl <-> module HTTPS responder", { "curl" }, function()
    for _, transport in ipairs({ "socket", "fd" }) do
      it("transport " .. transport .. ": --cacert, --cert/--key, missing and untrusted", function()
        local mod = peers.module_server({ verify = "require", max = 4, behaviour = "http",
                                          transport = transport })
        finally(function() peers.stop(mod) end)
        local body, out, code = peers.curl({ port = mod.port, cert = "client" })
        assert.equal(0, code, out)
        assert.equal("hello CN=Test Client,O=sslctx verify=0\n", body)
        _, out, code = peers.curl({ port = mod.port })
        assert.are_not.equal(0, code, out)
        _, out, code = peers.curl({ port = mod.port, cert = "client-untrusted" })
        assert.are_not.equal(0, code, out)
        -- curl does not trust a CA that did not issue the server's certificate
        _, out, code = peers.curl({ port = mod.port, cert = "client", cacert = "other-ca.pem" })
        assert.equal(60, code, out)
        local r = peers.wait_results(mod, 4)
        assert.equal(4, #r, peers.log(mod))
        assert.same({ "ok", "fail", "fail", "fail" },
                    { r[1].handshake, r[2].handshake, r[3].handshake, r[4].handshake })
        assert.equal("GET / HTTP/1.1", r[1].data)
        assert.equal("verify", r[2].kind)
        assert.equal("verify", r[3].kind)
      end)
    end

    it("an anonymous client under 'never'", function()
      local mod = peers.module_server({ verify = "never", max = 1, behaviour = "http" })
      finally(function() peers.stop(mod) end)
      local body, out, code = peers.curl({ port = mod.port })
      assert.equal(0, code, out)
      assert.equal("hello anonymous verify=0\n", body)
    end)
  end)
end)
