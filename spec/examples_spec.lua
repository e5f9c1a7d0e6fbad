-- spec/examples_spec.lua: every example runs as its header documents it, from the
-- repository root with the plain interpreter, against servers on 127.0.0.1 (free ports,
-- stopped by PID, bounded waits).

local helper = require "helper"
local peers = require "support.peers"
local socket = require "socket"
local sslsocket = require "sslctx.socket"

local q = helper.sh_quote

-- `<lua> examples/<name> <args>` with the PKI directory the specs use.
local function example(name, args, timeout)
  local cmd = ("env SSLCTX_PKI_DIR=%s %s examples/%s %s"):format(
    q(peers.pki(""):gsub("/$", "")), peers.lua(), name, args or "")
  return peers.run(cmd, { timeout = timeout or 20 })
end

local function client(port, cert, opts)
  opts = opts or {}
  local ctx = helper.client_ctx(cert and {
    certificate = helper.pki(cert .. "-chain.pem"), key = helper.pki(cert .. ".key") } or nil)
  local s, msg, kind = sslsocket.connect("127.0.0.1", port, {
    ctx = ctx, hostname = "localhost", timeout = opts.timeout or 5 })
  return s, msg, kind
end

describe("examples", function()
  teardown(function() peers.cleanup() end)

  describe("https_get.lua", function()
    it("fetches from openssl s_server -www, verifying the CA and the host name", function()
      local srv = peers.s_server({ mode = "www" })
      finally(function() peers.stop(srv) end)
      local url = ("https://localhost:%d/"):format(srv.port)
      local out, code = example("https_get.lua", q(url) .. " --cafile " .. q(helper.pki("ca.pem")))
      assert.equal(0, code, out)
      assert.truthy(out:find("verified for localhost", 1, true), out)
      assert.truthy(out:find("< HTTP/1.0 200 ok", 1, true), out)
      assert.truthy(out:find("<HTML>", 1, true), out)   -- the body, on stdout
      -- the same server under a name its certificate lacks
      out, code = example("https_get.lua", q(url) .. " --cafile " .. q(helper.pki("ca.pem")) ..
                                           " --hostname wrong.example")
      assert.equal(2, code, out)
      assert.truthy(out:find("hostname mismatch", 1, true), out)
      -- an IP literal is checked as an IP (the certificate has IP:127.0.0.1)
      out, code = example("https_get.lua", q(("https://127.0.0.1:%d/"):format(srv.port)) ..
                                           " --cafile " .. q(helper.pki("ca.pem")))
      assert.equal(0, code, out)
      -- without --cafile: the system's roots, which do not know the test CA
      out, code = example("https_get.lua", q(url))
      assert.equal(2, code, out)
      assert.truthy(out:find("(verify)", 1, true), out)
    end)

    it("presents a client certificate to a module server that requires one", function()
      local mod = peers.module_server({ verify = "require", max = 1, behaviour = "http" })
      finally(function() peers.stop(mod) end)
      local out, code = example("https_get.lua", q(("https://localhost:%d/x"):format(mod.port)) ..
        " --cafile " .. q(helper.pki("ca.pem")) .. " --cert " .. q(helper.pki("client-chain.pem")) ..
        " --key " .. q(helper.pki("client.key")))
      assert.equal(0, code, out)
      assert.truthy(out:find("hello CN=Test Client,O=sslctx verify=0", 1, true), out)
      assert.equal("GET /x HTTP/1.1", peers.wait_results(mod, 1)[1].data)
    end)

    it("prints its usage and exits 64 on a bad command line", function()
      local out, code = example("https_get.lua", "http://example.org/")
      assert.equal(64, code, out)
      assert.truthy(out:find("usage:", 1, true), out)
    end)

    it("--demo starts its own server, fetches, and is refused under a wrong name", function()
      local out, code = example("https_get.lua", "--demo", 30)
      assert.equal(0, code, out)
      assert.truthy(out:find("== demo: OK", 1, true), out)
      assert.truthy(out:find("hostname mismatch", 1, true), out)
    end)
  end)

  describe("mtls_server.lua", function()
    local function start(args)
      local cmd = ("env SSLCTX_PKI_DIR=%s %s %s %s"):format(q(peers.pki(""):gsub("/$", "")), peers.lua(),
        q(peers.root() .. "/examples/mtls_server.lua"), args)
      local proc = peers.spawn(cmd, { name = "mtls_server", lifetime = 60 })
      local port, log = peers.wait_line(proc, "listening on 127%.0%.0%.1:(%d+)", 10)
      assert(port, "mtls_server did not start:\n" .. tostring(log))
      proc.port = tonumber(port)
      assert.equal("loopback", peers.listening(proc.port))
      return proc
    end

    it("accepts a client certificate, logs each depth, rejects the revoked serial and no certificate", function()
      local proc = start("--max-connections 3 --timeout 5")
      finally(function() peers.stop(proc) end)
      local s = assert(client(proc.port, "client"))
      assert.equal("hello Test Client", s:receive("*l"))
      s:send("ping\n")
      assert.equal("ping", s:receive("*l"))
      s:send("bye\n")
      assert.equal("bye", s:receive("*l"))
      s:close()
      -- revoked-client: in TLS 1.3 the client's handshake completes; the alert comes with
      -- the first read.  Judged there and from the server's log.
      local r = assert(client(proc.port, "revoked-client"))
      local line, err, _, kind = r:receive("*l")
      assert.is_nil(line)
      assert.equal("ssl", kind)
      assert.truthy(err:find("certificate revoked", 1, true), err)
      r:close()
      local n = assert(client(proc.port, nil))
      line, err = n:receive("*l")
      assert.is_nil(line)
      assert.truthy(err:find("certificate required", 1, true), err)
      n:close()
      assert.is_true(peers.wait_exit(proc, 10))
      local log = peers.log(proc)
      assert.truthy(log:find("verify: depth=2 ok=true error=0 subject=CN=sslctx Test Root CA,O=sslctx", 1, true), log)
      assert.truthy(log:find("verify: depth=1 ok=true error=0 subject=CN=sslctx Test Intermediate CA,O=sslctx", 1, true), log)
      assert.truthy(log:find("verify: depth=0 ok=true error=0 subject=CN=Test Client,O=sslctx", 1, true), log)
      assert.truthy(log:find("accepted 1: CN=Test Client,O=sslctx", 1, true), log)
      assert.truthy(log:find("rejected 2: certificate verify failed: certificate revoked (verify code 23)", 1, true), log)
      assert.truthy(log:find("rejected 3: peer did not return a certificate", 1, true), log)
      local serial = helper.openssl({ "x509", "-in", helper.pki("revoked-client.pem"), "-noout", "-serial" })
      assert.truthy(log:find("revoked serial " .. serial:match("serial=(%x+)"), 1, true), log)
    end)

    it("takes the revoked serials from the command line", function()
      local serial = helper.openssl({ "x509", "-in", helper.pki("client2.pem"), "-noout", "-serial" })
                       :match("serial=(%x+)")
      local proc = start("--max-connections 2 --timeout 5 --revoked-serial " .. serial:lower())
      finally(function() peers.stop(proc) end)
      local s = assert(client(proc.port, "revoked-client"))   -- not on this list
      assert.equal("hello Revoked Client", s:receive("*l"))
      s:close()
      local r = assert(client(proc.port, "client2"))
      local line, err = r:receive("*l")
      assert.is_nil(line)
      assert.truthy(err:find("certificate revoked", 1, true), err)
      r:close()
      assert.is_true(peers.wait_exit(proc, 10))
      assert.truthy(peers.log(proc):find("rejected 2: certificate verify failed: certificate revoked", 1, true))
    end)

    it("answers openssl s_client like the module client", function()
      local proc = start("--max-connections 1 --timeout 5")
      finally(function() peers.stop(proc) end)
      local ok, out = peers.s_client({ port = proc.port, cert = "client", send = "ping\n",
                                       expect = "hello Test Client" })
      assert.is_true(ok, out)
      assert.truthy(out:find("\nping", 1, true), out)
    end)
  end)

  describe("game_server.lua", function()
    it("server mode: players named by their certificates see each other's moves", function()
      local cmd = ("%s %s --port 0 --cert %s --key %s --cafile %s --max-seconds 30"):format(
        peers.lua(), q(peers.root() .. "/examples/game_server.lua"),
        q(helper.pki("server-chain.pem")), q(helper.pki("server.key")), q(helper.pki("ca.pem")))
      local proc = peers.spawn(cmd, { name = "game_server", lifetime = 40 })
      finally(function() peers.stop(proc) end)
      local port = tonumber((peers.wait_line(proc, "listening on 127%.0%.0%.1:(%d+)", 10)))
      assert(port, peers.log(proc))
      local a = assert(client(port, "client"))
      local b = assert(client(port, "client2"))
      assert.equal("WELCOME Test Client", a:receive("*l"))
      assert.equal("WELCOME Second Client", b:receive("*l"))
      a:send("MOVE 3 4\n")
      assert.equal("POS Test Client 3 4", a:receive("*l"))
      assert.equal("POS Test Client 3 4", b:receive("*l"))
      b:send("QUIT\n")
      assert.equal("BYE", b:receive("*l"))
      local line, err = b:receive("*l")
      assert.same({ nil, "closed" }, { line, err })
      a:send("QUIT\n")
      assert.equal("BYE", a:receive("*l"))
      a:close()
      b:close()
      -- no certificate: refused
      local n = assert(client(port, nil))
      line, err = n:receive("*l")
      assert.is_nil(line, err)
      n:close()
      local ok = false
      for _ = 1, 100 do
        if peers.log(proc):find("refused a connection", 1, true) then ok = true break end
        socket.sleep(0.05)
      end
      assert.is_true(ok, peers.log(proc))
      assert.truthy(peers.log(proc):find("left: Second Client", 1, true))
    end)
  end)
end)
