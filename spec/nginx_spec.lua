-- spec/nginx_spec.lua: sslctx.ngx (doc/openresty.md) inside a real nginx with the lua module.
--
-- Runs under any interpreter: nginx runs the module's LuaJIT build, and this file drives it
-- from outside with curl and `openssl s_client`.  nginx listens on 127.0.0.1 ports picked
-- free, under a temporary prefix (spec/support/nginx.lua), with the test PKI plus one server
-- certificate for the SNI names made here.  Skipped (one visible pending) when nginx, its
-- lua module or the LuaJIT development files are missing, and under `make test`'s second and
-- later interpreters (what it tests does not depend on the one driving it).
local helper = require "helper"
local ng = require "support.nginx"

local q = helper.sh_quote
local has_socket, socket = pcall(require, "socket")

local available, why = ng.available()
if available and not helper.first_interpreter then
  available, why = false, "nginx runs its own LuaJIT: run once per make test, under its first interpreter"
end
if not available then
  describe("sslctx.ngx in nginx", function()
    pending("skipped: " .. why)
  end)
  return
end

local ROOT = helper.run("pwd"):match("[^\n]+")
local PORTS = { "HTTP_PORT", "GOOD_PORT", "EXPIRED_PORT", "WRONGHOST_PORT", "UNTRUSTED_PORT",
                "MTLS_PORT", "NOPOLICY_PORT", "HOOKN_PORT", "HOOKU_PORT" }
local CERTS = { "ca.pem", "int.pem", "other-ca.pem", "server-chain.pem", "server.key",
                "expired-chain.pem", "expired.key", "wronghost-chain.pem", "wronghost.key",
                "untrusted-chain.pem", "untrusted.key", "client.pem", "client2.pem" }

-- "key=value" lines -> table (later keys win; a line without "=" is kept under [i]).
local function parse(text)
  local t = { raw = text }
  for line in text:gmatch("[^\n]+") do
    local k, v = line:match("^([%w_]+)=(.*)$")
    if k then t[k] = v else t[#t + 1] = line end
  end
  return t
end

-- PKI paths, absolute (commands below run in other directories).
local function pki(name)
  local path = helper.pki(name)
  if path:sub(1, 1) ~= "/" then path = ROOT .. "/" .. path end
  return path
end

-- A server certificate <base>.pem/.key/-chain.pem for DNS names, signed by the test
-- intermediate CA.
local function make_server_cert(dir, base, names)
  local ext = dir .. "/" .. base .. ".ext"
  local f = assert(io.open(ext, "w"))
  f:write("subjectAltName=DNS:", table.concat(names, ",DNS:"), "\n",
          "extendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n")
  f:close()
  local out = helper.run("(" .. table.concat({
    "cd " .. q(dir),
    "openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout " .. base ..
      ".key -subj /CN=" .. base .. ".test -out " .. base .. ".csr",
    "openssl x509 -req -in " .. base .. ".csr -CA " .. q(pki("int.pem")) .. " -CAkey " ..
      q(pki("int.key")) .. " -set_serial 0x$(openssl rand -hex 8) -days 2 -extfile " .. base ..
      ".ext -out " .. base .. ".pem",
    "cat " .. base .. ".pem " .. q(pki("int.pem")) .. " > " .. base .. "-chain.pem",
    "echo CERT-OK",
  }, " && ") .. ") 2>&1")
  assert(out:find("CERT-OK", 1, true), "cannot make a server certificate:\n" .. out)
end

local function make_sni_cert(dir)
  make_server_cert(dir, "sni", { "a.test", "b.test", "c.test", "d.test", "e.test", "f.test",
                                 "g.test" })
end

-- The hook listeners: a server block per policy (spec/nginx/specsrv.lua, HOOK), on
-- HOOKN_PORT with the policy named in ssl_client_hello_by_lua and on HOOKU_PORT without.
-- "none" (the default server) has no certificate hook at all.
local HOOK_LABELS = { "none", "strict", "otherca", "cacc", "lacc", "soft", "never" }

local function hook_servers()
  local out = {}
  for _, named in ipairs({ true, false }) do
    for _, label in ipairs(HOOK_LABELS) do
      out[#out + 1] = table.concat({
        "    server {",
        "        listen 127.0.0.1:${" .. (named and "HOOKN_PORT" or "HOOKU_PORT") .. "} ssl;",
        "        server_name " .. label .. ".hook.test;",
        "        ssl_certificate certs/hook-chain.pem;",
        "        ssl_certificate_key certs/hook.key;",
        "        ssl_trusted_certificate certs/trust.pem;",
        named and '        ssl_client_hello_by_lua_block { require("specsrv").hook_hello() }' or "",
        label ~= "none" and
          ('        ssl_certificate_by_lua_block { require("specsrv").hook_cert("' .. label .. '") }')
          or "",
        '        location / { content_by_lua_block { require("specsrv").report() } }',
        "        location = /guarded {",
        '            access_by_lua_block { require("sslctx.ngx").require_policy("hook-' .. label .. '") }',
        '            content_by_lua_block { require("specsrv").report() }',
        "        }",
        "    }",
      }, "\n")
    end
  end
  return table.concat(out, "\n")
end

describe("sslctx.ngx in a real nginx", function()
  local srv, port, pki_ca

  local function http(path)
    return helper.run("curl -sS --max-time 10 " .. q("http://127.0.0.1:" .. port.HTTP_PORT .. path))
  end

  local function client(query)
    return parse(http("/client?" .. query))
  end

  -- curl to the per-SNI listener; cert: a PKI name ("client" -> client-chain.pem + key).
  local function curl_tls(name, cert, extra, listen_port)
    local p = listen_port or port.MTLS_PORT
    local args = { "curl -sS --max-time 10", "--cacert", q(pki_ca),
                   "--resolve", q(name .. ":" .. p .. ":127.0.0.1") }
    if cert then
      args[#args + 1] = "--cert " .. q(pki(cert .. "-chain.pem")) ..
                        " --key " .. q(pki(cert .. ".key"))
    end
    if extra then args[#args + 1] = extra end
    args[#args + 1] = q("https://" .. name .. ":" .. p .. "/")
    return parse(helper.run(table.concat(args, " ") .. " 2>&1; echo curl_rc=$?"))
  end

  -- openssl s_client with an HTTP/1.0 request (so that TLS 1.3 tickets arrive).
  local function s_client(name, opts)
    opts = opts or {}
    local args = { "openssl s_client -connect", "127.0.0.1:" .. (opts.port or port.MTLS_PORT),
                   "-servername", name, "-CAfile", q(pki_ca), "-ign_eof", opts.version or "" }
    if opts.cert then
      args[#args + 1] = "-cert " .. q(pki(opts.cert .. ".pem")) .. " -key " ..
                        q(pki(opts.cert .. ".key")) .. " -cert_chain " ..
                        q(opts.chain or pki("int.pem"))
    end
    if opts.sess_out then args[#args + 1] = "-sess_out " .. q(opts.sess_out) end
    if opts.sess_in then args[#args + 1] = "-sess_in " .. q(opts.sess_in) end
    local request = "GET " .. (opts.path or "/") .. " HTTP/1.0\\r\\nHost: " .. (opts.host or name) ..
                    "\\r\\n\\r\\n"
    local out = helper.run("printf " .. q(request) .. " | timeout 10 " .. table.concat(args, " "))
    local t = parse(out)
    t.resumed = out:match("\n(Reused),") ~= nil
    t.new = out:match("\n(New),") ~= nil
    t.alert = out:match("alert number (%d+)")
    t.status = tonumber(out:match("HTTP/1%.%d (%d%d%d) "))
    return t
  end

  -- A fronting request: SNI `sni` (nil: none sent) and Host `host`, to `path`; cert as in
  -- curl_tls.  -> the parsed report plus http_code.
  local function front(sni, host, path, cert)
    local p = port.MTLS_PORT
    local args = { "curl -sS --max-time 10", "-H", q("Host: " .. host),
                   "-w", q("\nhttp_code=%{http_code}\n") }
    if cert then
      args[#args + 1] = "--cert " .. q(pki(cert .. "-chain.pem")) .. " --key " .. q(pki(cert .. ".key"))
    end
    if sni then
      args[#args + 1] = "--cacert " .. q(pki_ca) .. " --resolve " .. q(sni .. ":" .. p .. ":127.0.0.1")
      args[#args + 1] = q("https://" .. sni .. ":" .. p .. path)
    else   -- an IP literal: curl sends no SNI (and the name cannot match: -k)
      args[#args + 1] = "-k " .. q("https://127.0.0.1:" .. p .. path)
    end
    return parse(helper.run(table.concat(args, " ") .. " 2>&1"))
  end

  local function log_count(pattern)
    local n = 0
    for _ in srv:log():gmatch(pattern) do n = n + 1 end
    return n
  end

  lazy_setup(function()
    local cpath = assert(ng.luajit_cpath(ROOT))
    local ports = ng.free_ports(#PORTS)
    local vars = { REPO = ROOT, CPATH = cpath, USER = ng.user_line(),
                   LOAD_MODULES = assert(ng.load_modules()) }
    port = {}
    for i, name in ipairs(PORTS) do vars[name], port[name] = ports[i], ports[i] end
    local certs = {}
    for _, name in ipairs(CERTS) do certs[name] = pki(name) end
    local template = assert(ng.read_file("spec/nginx/nginx.conf.in"))
    template = template:gsub("%${HOOK_SERVERS}", function() return hook_servers() end)
    pki_ca = pki("ca.pem")
    -- The SNI certificate is made before nginx starts, in a directory of its own.
    local tmp = helper.run("mktemp -d /tmp/sslctx-sni.XXXXXX"):match("[^\n]+")
    local ok, err = pcall(function()
      make_sni_cert(tmp)
      certs["sni-chain.pem"], certs["sni.key"] = tmp .. "/sni-chain.pem", tmp .. "/sni.key"
      local names = {}
      for i, label in ipairs(HOOK_LABELS) do names[i] = label .. ".hook.test" end
      make_server_cert(tmp, "hook", names)
      certs["hook-chain.pem"], certs["hook.key"] = tmp .. "/hook-chain.pem", tmp .. "/hook.key"
      -- session ticket keys of the upstreams: the same after a reload
      assert(helper.exec_ok("openssl rand -out " .. q(tmp .. "/ticket.key") .. " 80"))
      certs["ticket.key"] = tmp .. "/ticket.key"
      srv = ng.start{
        conf = ng.render(template, vars),
        certs = certs,
        files = { ["conf/certs/trust.pem"] = helper.read("ca.pem") .. helper.read("int.pem") },
        ports = ports,
      }
    end)
    helper.exec_ok("rm -rf " .. q(tmp))
    assert(ok, err)
  end)

  lazy_teardown(function()
    if srv then srv:stop() end
  end)

  it("loads into the worker sharing nginx's one libssl and libcrypto", function()
    local r = parse(http("/maps"))
    local ssl, crypto, core = 0, 0, 0
    for path in (r.paths or ""):gmatch("[^,]+") do
      if path:find("libssl", 1, true) then ssl = ssl + 1 end
      if path:find("libcrypto", 1, true) then crypto = crypto + 1 end
      if path:find("sslctx/core.so", 1, true) then core = core + 1 end
    end
    assert.equal(1, ssl, r.raw)
    assert.equal(1, crypto, r.raw)
    assert.equal(1, core, r.raw)
    assert.truthy(r.openssl and r.openssl:find("^OpenSSL "), r.raw)
  end)

  describe("client over a cosocket (sngx.connect)", function()
    -- What `openssl s_client` says of an upstream: its verify code and text.
    local function cli_verdict(upstream_port, host)
      local check = host:match("^%d") and ("-verify_ip " .. host) or ("-verify_hostname " .. host)
      local out = helper.run("timeout 10 openssl s_client -connect 127.0.0.1:" .. upstream_port ..
                             " -CAfile " .. q(pki_ca) .. " " .. check .. " </dev/null")
      local code, text = out:match("Verify return code: (%d+) %(([^)]*)%)")
      assert(code, "no verify code from s_client:\n" .. out)
      return tonumber(code), text
    end

    local upstreams = {
      { "good", "GOOD_PORT", "localhost" },
      { "expired", "EXPIRED_PORT", "localhost" },
      { "wrong host", "WRONGHOST_PORT", "localhost" },
      { "untrusted", "UNTRUSTED_PORT", "localhost" },
      { "wrong host (IP literal)", "WRONGHOST_PORT", "127.0.0.1" },
    }
    for _, u in ipairs(upstreams) do
      local label, pname, host = u[1], u[2], u[3]
      it("gives the OpenSSL CLI's verdict, upstream: " .. label, function()
        local code, text = cli_verdict(port[pname], host)
        local r = client("cb=record&port=" .. port[pname] .. "&host=" .. host)
        if code == 0 then
          assert.equal("true", r.ok, r.raw)
          assert.equal("HTTP/1.1 200 OK", r.status)
          assert.equal("upstream good", r.body)
          assert.equal("0 ok true", r.verify)
          assert.equal("CN=localhost", r.peer)
        else
          assert.equal("false", r.ok, r.raw)
          assert.equal("verify", r.kind, r.raw)
          assert.equal(tostring(code), r.cb_code, r.raw)
          assert.truthy(r.err:find(": " .. text, 1, true), r.err .. " / CLI: " .. text)
        end
      end)
    end

    it("under mode 'never' goes on and keeps the verdict", function()
      local r = client("mode=never&port=" .. port.EXPIRED_PORT)
      assert.equal("true", r.ok, r.raw)
      assert.equal("10 certificate has expired false", r.verify)
      assert.equal("upstream expired", r.body)
    end)

    it("reports kind 'ssl' for an upstream that does not speak TLS", function()
      local r = client("port=" .. port.HTTP_PORT)
      assert.equal("false", r.ok, r.raw)
      assert.equal("ssl", r.kind, r.raw)
    end)

    if has_socket then
      it("reports kind 'timeout' when the upstream never answers", function()
        -- a listener nobody accepts on: the kernel completes TCP, no byte comes back
        local l = assert(socket.bind("127.0.0.1", 0))
        local _, p = l:getsockname()
        local r = client("t=300&port=" .. p)
        l:close()
        assert.equal("false", r.ok, r.raw)
        assert.equal("timeout", r.kind, r.raw)
      end)
    else
      pending("kind 'timeout' (needs LuaSocket for a silent listener)")
    end

    if has_socket then
      -- An upstream played here, over LuaSocket: sends `data`, then ends with close_notify
      -- (clean) or by closing the socket (truncation).  -> what /read saw.
      local function played_upstream(pattern, data, clean)
        local sslctx = require "sslctx"
        local sctx = assert(sslctx.new{ side = "server", certificate = pki("server-chain.pem"),
                                        key = pki("server.key") })
        local server = assert(socket.bind("127.0.0.1", 0))
        server:settimeout(5)
        local _, p = server:getsockname()
        local proc = io.popen("curl -sS --max-time 10 " ..
                              q("http://127.0.0.1:" .. port.HTTP_PORT .. "/read?pattern=" .. pattern ..
                                "&port=" .. p) .. " 2>&1")
        local c = server:accept()
        server:close()
        assert(c, "nginx did not connect")
        c:settimeout(5)
        local conn = sctx:new_connection{ socket = c }
        local function wait(call, ...)
          for _ = 1, 200 do
            local r, msg, kind = call(conn, ...)
            if r then return r end
            if kind == "want_read" then socket.select({ c }, nil, 5)
            elseif kind == "want_write" then socket.select(nil, { c }, 5)
            else error("played upstream: " .. tostring(msg)) end
          end
          error("played upstream: no progress")
        end
        wait(conn.handshake)
        wait(conn.write, data)
        if clean then
          conn:shutdown()
          conn:close()
        else
          c:close()          -- the socket goes; no close_notify
          pcall(conn.close, conn)
        end
        local out = proc:read("*a")
        proc:close()
        return parse(out)
      end

      it("ends receive('*a') at close_notify", function()
        local r = played_upstream("a", "line1\nrest", true)
        assert.equal("line1\\nrest|nil|nil|nil", r.r1, r.raw)
        assert.equal("nil|closed||closed", r.r2, r.raw)   -- and then: closed
      end)

      it("never takes a cut without close_notify for the end of data (kind 'eof')", function()
        local a = played_upstream("a", "line1\nrest", false)
        assert.truthy(a.r1:find("^nil|eof: [^|]*|line1\\nrest|eof$"), a.raw)
        local l = played_upstream("l", "line1\nrest", false)
        assert.equal("line1|nil|nil|nil", l.r1, l.raw)
        assert.truthy(l.r2:find("^nil|eof: [^|]*|rest|eof$"), l.raw)
        local n = played_upstream("8", "line1\nrest", false)
        assert.equal("line1\\nre|nil|nil|nil", n.r1, n.raw)
        assert.truthy(n.r2:find("^nil|eof: [^|]*|st|eof$"), n.raw)
      end)
    end

    it("checks the host the cosocket connected to when opts.hostname is absent", function()
      local good = client("host=default&port=" .. port.GOOD_PORT)
      assert.equal("true", good.ok, good.raw)   -- 127.0.0.1 is an IP SAN of server.pem
      local bad = client("host=default&port=" .. port.WRONGHOST_PORT)
      assert.equal("false", bad.ok, bad.raw)
      assert.equal("verify", bad.kind)
      assert.truthy(bad.err:find("IP address mismatch", 1, true), bad.err)
    end)

    it("runs the verify callback on the request coroutine, root first", function()
      local r = client("cb=var&token=tok42&port=" .. port.GOOD_PORT)
      assert.equal("true", r.ok, r.raw)
      assert.equal("2:true,1:true,0:true", r.callbacks)
      assert.equal("tok42", r.var)         -- ngx.var works in the callback
      assert.equal("content", r.cb_phase)
      assert.equal("3", r.ctx_seen)        -- and ngx.ctx is the request's
    end)

    it("lets a callback answer later with sslctx.RETRY (the request coroutine waits)", function()
      local yes = client("cb=retry&port=" .. port.GOOD_PORT)
      assert.equal("true", yes.ok, yes.raw)
      assert.truthy(tonumber(yes.retries) >= 1, yes.raw)
      local no = client("cb=retry&answer=no&port=" .. port.GOOD_PORT)
      assert.equal("false", no.ok, no.raw)
      assert.equal("verify", no.kind, no.raw)
    end)

    it("rejects by fingerprint with a Lua callback", function()
      local pinned = helper.openssl("x509 -in " .. q(pki("server.pem")) ..
                                    " -noout -fingerprint -sha256")
      local fp = pinned:match("=([%x:]+)"):gsub(":", ""):lower()
      local ok = client("cb=pin&fp=" .. fp .. "&port=" .. port.GOOD_PORT)
      assert.equal("true", ok.ok, ok.raw)
      assert.equal(fp, ok.leaf)
      local bad = client("cb=pin&fp=" .. string.rep("0", 64) .. "&port=" .. port.GOOD_PORT)
      assert.equal("false", bad.ok, bad.raw)
      assert.equal("verify", bad.kind)
      assert.truthy(bad.err:find("application verification failure", 1, true), bad.err)
    end)

    it("fails closed on a callback error or an attempted yield (kind 'callback')", function()
      local err = client("cb=error&port=" .. port.GOOD_PORT)
      assert.equal("false", err.ok)
      assert.equal("callback", err.kind)
      assert.truthy(err.err:find("verify callback: .*client%-callback%-boom"), err.err)
      local y = client("cb=yield&port=" .. port.GOOD_PORT)
      assert.equal("callback", y.kind, y.raw)
      assert.truthy(y.err:find("yield", 1, true), y.err)
    end)

    it("takes C callbacks: light userdata and (LuaJIT) a cdata function pointer", function()
      local c = client("cb=creject&port=" .. port.GOOD_PORT)
      assert.equal("verify", c.kind, c.raw)
      local f = client("cb=ffi_reject&port=" .. port.GOOD_PORT)
      assert.equal("verify", f.kind, f.raw)
      assert.truthy(f.err:find("application verification failure", 1, true), f.err)
      local p = client("cb=ffi_preverify&port=" .. port.GOOD_PORT)
      assert.equal("true", p.ok, p.raw)
    end)

    it("negotiates ALPN from the context's list", function()
      local r = client("alpn=h2,http/1.1&port=" .. port.GOOD_PORT)
      assert.equal("true", r.ok, r.raw)
      assert.equal("http/1.1", r.alpn)
    end)

    for _, v in ipairs({ "tls1.2", "tls1.3" }) do
      it("resumes a session with opts.session (" .. v .. "), only for the same host", function()
        local r = client("session=1&v=" .. v .. "&port=" .. port.GOOD_PORT)
        assert.equal("true", r.ok, r.raw)
        assert.equal(v == "tls1.2" and "TLSv1.2" or "TLSv1.3", r.version)
        assert.equal("true", r.session)
        assert.equal("true", r.reused, r.raw)
        assert.equal("upstream good", r.second_body)
        assert.equal("false", r.other_host_reused)
      end)
    end

    if has_socket then
      it("cuts a trickling upstream at the handshake deadline (opts.handshake_timeout)", function()
        -- The upstream answers the ClientHello one byte every 20 ms: each read gets a byte
        -- well within the per-read timeout (3 s), so only the overall deadline ends it.
        local sslctx = require "sslctx"
        local sctx = assert(sslctx.new{ side = "server", certificate = pki("server-chain.pem"),
                                        key = pki("server.key") })
        local server = assert(socket.bind("127.0.0.1", 0))
        server:settimeout(5)
        local _, p = server:getsockname()
        local proc = io.popen("curl -sS --max-time 20 " ..
                              q("http://127.0.0.1:" .. port.HTTP_PORT .. "/client?t=3000&hs=500&port=" .. p) ..
                              " 2>&1")
        local c = server:accept()
        server:close()
        assert(c, "nginx did not connect")
        c:settimeout(0)
        local conn = sctx:new_connection()
        local out, sent, started = "", 0, ng.now()
        while ng.now() - started < 5 do
          local data, err, partial = c:receive(4096)
          data = data or partial
          if data and #data > 0 then
            conn:feed(data)
            conn:handshake()
            out = out .. conn:drain()
          end
          if err == "closed" then break end
          if #out > 0 then
            if not c:send(out:sub(1, 1)) then break end
            out, sent = out:sub(2), sent + 1
          end
          socket.sleep(0.02)
        end
        c:close()
        local r = parse(proc:read("*a"))
        proc:close()
        assert.equal("false", r.ok, r.raw)
        assert.equal("timeout", r.kind, r.raw)
        assert.truthy(r.err:find("within 500 ms", 1, true), r.err)
        local ms = tonumber(r.elapsed_ms)
        assert.truthy(ms >= 450 and ms < 2000, r.raw)
        assert.truthy(sent >= 10 and #out > 0, "the trickle did not run: " .. sent .. " bytes sent")
      end)
    else
      pending("handshake deadline (needs LuaSocket to play a trickling upstream)")
    end

    it("finishes a handshake under the default deadline and keeps the socket's timeouts", function()
      local r = client("t=3000&port=" .. port.GOOD_PORT)
      assert.equal("true", r.ok, r.raw)
      assert.equal("upstream good", r.body)
      local slow = client("t=3000&hs=60000&port=" .. port.GOOD_PORT)
      assert.equal("true", slow.ok, slow.raw)
    end)

    it("never says 'closed' for a stream whose cosocket nginx closed (used in a later request)", function()
      local one = parse(http("/keep?step=1&port=" .. port.GOOD_PORT))
      assert.equal("true", one.ok, one.raw)
      assert.equal("HTTP/1.1 200 OK", one.status, one.raw)
      local two = parse(http("/keep?step=2"))
      for _, what in ipairs({ "send", "receive", "receiveany" }) do
        local v = two[what]
        assert.truthy(v, two.raw)
        assert.falsy(v:find("|closed", 1, true), what .. ": " .. v)
        assert.truthy(v:find("^nil|eof: [^|]*|eof$"), what .. ": " .. v)
      end
      assert.truthy(two.send:find("cosocket", 1, true), two.send)
    end)

    it("names connect's own argument in option errors", function()
      local r = parse(http("/argerr"))
      assert.truthy(r.hostname_empty:find("bad argument #3 to 'connect' (option 'hostname'", 1, true),
                    r.hostname_empty)
      assert.falsy(r.hostname_empty:find("new_connection", 1, true), r.hostname_empty)
      assert.truthy(r.hostname_number:find("bad argument #3 to 'connect'", 1, true), r.hostname_number)
      assert.truthy(r.unknown_option:find("bad argument #3 to 'connect' (unknown option 'bogus')", 1, true),
                    r.unknown_option)
      assert.truthy(r.handshake_timeout:find("bad argument #3 to 'connect' (option 'handshake_timeout'", 1, true),
                    r.handshake_timeout)
      assert.truthy(r.require_policy_nil:find("bad argument #1 to 'require_policy'", 1, true),
                    r.require_policy_nil)
    end)

    it("has the cosocket's shapes: receive(n), receiveany, close", function()
      local r = parse(http("/shapes?port=" .. port.GOOD_PORT))
      assert.equal("HTTP", r.first4, r.raw)
      assert.equal("/1.", r.any3)
      assert.equal("true", r.rest_has_body)
      assert.equal("nil closed", r.after_close_notify)
      assert.equal("1", r.close)
      assert.equal("nil closed", r.after_close)
      assert.equal("nil closed", r.send_after_close)
    end)
  end)

  describe("server hook (per-SNI client certificates)", function()
    it("a.test: a good client certificate passes the Lua callback (curl)", function()
      local r = curl_tls("a.test", "client")
      assert.equal("a.test", r.sni, r.raw)
      assert.equal("0", r.code)
      assert.equal("true", r.verified)
      assert.equal("CN=Test Client,O=sslctx", r.subject)
      assert.equal("SUCCESS", r.client_verify)
    end)

    it("a.test: verifies against the server block's ssl_trusted_certificate (s_client)", function()
      -- (nginx sends CA names only for ssl_client_certificate with ssl_verify_client on;
      -- a request from ssl_trusted_certificate names none: clients send what they have)
      local r = s_client("a.test", { cert = "client" })
      assert.equal("a.test", r.sni, r.raw)
      assert.equal("true", r.verified, r.raw)
      assert.equal("CN=Test Client,O=sslctx", r.subject)
      local bad = s_client("a.test", { cert = "client-untrusted", chain = pki("other-ca.pem") })
      assert.is_nil(bad.sni, bad.raw)
      assert.equal("48", bad.alert, bad.raw)   -- unknown_ca
    end)

    it("a.test: refuses a valid certificate the callback does not allow, none, and an untrusted one", function()
      local other = curl_tls("a.test", "client2")
      assert.is_nil(other.sni, other.raw)
      assert.truthy(other.raw:find("alert", 1, true), other.raw)
      local none = curl_tls("a.test", nil)
      assert.is_nil(none.sni, none.raw)
      assert.truthy(none.raw:find("alert certificate required", 1, true), none.raw)
      local untrusted = curl_tls("a.test", "client-untrusted")
      assert.truthy(untrusted.raw:find("alert unknown ca", 1, true), untrusted.raw)
    end)

    it("a.test: the callback runs with no request (ngx.var, ngx.ctx, ngx.sleep refuse) on a borrowed object", function()
      curl_tls("a.test", "client")
      local line = srv:log():match("[^\n]*sslctx%-spec check_a[^\n]*")
      assert.truthy(line, "no callback log line")
      assert.truthy(line:find("var=ERR(no request found)", 1, true), line)
      assert.truthy(line:find("ctx=ERR(no request found)", 1, true), line)
      assert.truthy(line:find("sleep=ERR(no request found)", 1, true), line)
      assert.truthy(line:find("borrowed=true", 1, true), line)
      assert.truthy(line:find("handshake=ERR(", 1, true), line)
    end)

    it("b.test: no certificate asked (s_client and curl)", function()
      local r = s_client("b.test")
      assert.truthy(r.raw:find("No client certificate CA names sent", 1, true), r.raw)
      assert.equal("b.test", r.sni)
      local c = curl_tls("b.test", nil)
      assert.equal("NONE", c.client_verify, c.raw)
      assert.equal("false", c.verified)
    end)

    for _, version in ipairs({ "-tls1_2", "-tls1_3" }) do
      it("a session made on b.test does not resume on a.test (" .. version .. ")", function()
        local dir = helper.run("mktemp -d /tmp/sslctx-sess.XXXXXX"):match("[^\n]+")
        finally(function() helper.exec_ok("rm -rf " .. q(dir)) end)
        local b = dir .. "/b.sess"
        local made = s_client("b.test", { version = version, sess_out = b })
        assert.equal("b.test", made.sni, made.raw)
        -- b -> b resumes: the cache and tickets work
        local bb = s_client("b.test", { version = version, sess_in = b })
        assert.is_true(bb.resumed, bb.raw)
        -- b -> a: a full handshake, refused for want of a certificate
        local ba = s_client("a.test", { version = version, sess_in = b })
        assert.is_false(ba.resumed, ba.raw)
        assert.is_nil(ba.sni, ba.raw)
        assert.truthy(ba.alert, ba.raw)
        -- without the client-hello policy the same thing resumes and skips the check: the
        -- trap that set_policy closes
        local nb = dir .. "/nb.sess"
        s_client("b.test", { version = version, sess_out = nb, port = port.NOPOLICY_PORT })
        local trap = s_client("a.test", { version = version, sess_in = nb, port = port.NOPOLICY_PORT })
        assert.is_true(trap.resumed, trap.raw)
        -- a -> a with a certificate resumes, verdict included
        local a = dir .. "/a.sess"
        s_client("a.test", { version = version, sess_out = a, cert = "client" })
        local aa = s_client("a.test", { version = version, sess_in = a })
        assert.is_true(aa.resumed, aa.raw)
        assert.equal("true", aa.verified, aa.raw)
        assert.equal("CN=Test Client,O=sslctx", aa.subject)
      end)
    end

    it("c.test: soft fail lets the handshake finish and gives the verdict to the request", function()
      local cli = helper.openssl("verify -purpose sslclient -CAfile " .. q(pki("ca.pem")) ..
                                 " -untrusted " .. q(pki("client-untrusted-chain.pem")) ..
                                 " " .. q(pki("client-untrusted.pem")))
      local cli_code = tonumber(cli:match("error (%d+) at"))
      local u = curl_tls("c.test", "client-untrusted")
      assert.equal("c.test", u.sni, u.raw)
      assert.equal(tostring(cli_code), u.code)
      assert.equal("false", u.verified)
      assert.equal("CN=Untrusted Client,O=sslctx", u.subject)
      assert.truthy(u.client_verify:find("^FAILED:"), u.client_verify)
      local rejected = curl_tls("c.test", "client2")   -- the callback said no: recorded (50)
      assert.equal("50", rejected.code, rejected.raw)
      assert.equal("false", rejected.verified)
      local none = curl_tls("c.test", nil)             -- a missing certificate is not fatal
      assert.equal("0", none.code, none.raw)
      assert.equal("false", none.verified)
      assert.equal("-", none.subject)
      local good = curl_tls("c.test", "client")
      assert.equal("0", good.code, good.raw)
      assert.equal("true", good.verified)
    end)

    it("e.test: a C callback (light userdata) with its own trust (PEM) rejects", function()
      local r = s_client("e.test", { cert = "client" })
      assert.truthy(r.raw:find("Acceptable client certificate CA names", 1, true), r.raw)
      assert.is_nil(r.sni, r.raw)
      assert.truthy(r.alert, r.raw)
    end)

    it("f.test: opts.ca_file replaces the server block's trust", function()
      local cli = helper.openssl("verify -purpose sslclient -CAfile " .. q(pki("other-ca.pem")) ..
                                 " -untrusted " .. q(pki("int.pem")) .. " " .. q(pki("client.pem")))
      local cli_code = tonumber(cli:match("error (%d+) at"))
      local r = s_client("f.test", { cert = "client-untrusted", chain = pki("other-ca.pem") })
      assert.truthy(r.raw:find("sslctx Other CA", 1, true), r.raw)
      assert.equal("true", r.verified, r.raw)
      -- a good client of the server block's CA: refused here, as the CLI says
      assert.truthy(cli_code and cli_code ~= 0, cli)
      local bad = s_client("f.test", { cert = "client" })
      assert.is_nil(bad.sni, bad.raw)
      assert.equal("48", bad.alert, bad.raw)   -- unknown_ca
    end)

    it("d.test: a callback error fails that handshake, is logged, and the worker goes on", function()
      local pid = http("/pid"):match("%d+")
      local before = log_count("server%-callback%-boom")
      local r = curl_tls("d.test", "client")
      assert.is_nil(r.sni, r.raw)
      assert.truthy(r.raw:find("alert", 1, true), r.raw)
      assert.equal(before + 1, log_count("server%-callback%-boom"), "callback error not logged")
      local next_one = curl_tls("a.test", "client")
      assert.equal("true", next_one.verified, next_one.raw)
      assert.equal(pid, next_one.pid)
      assert.equal(pid, http("/pid"):match("%d+"))
      assert.equal(0, log_count("exited on signal"))
    end)

    it("refuses the hook functions outside their phases", function()
      local r = parse(http("/phase"))
      assert.truthy(r.set_policy:find("^nil .*not allowed in phase 'content'"), r.set_policy)
      assert.truthy(r.set_verification_mode:find("^nil .*not allowed in phase 'content'"), r.set_verification_mode)
      assert.truthy(r.verdict:find("^nil "), r.verdict)   -- plain HTTP: no TLS connection
    end)
  end)

  describe("fronting: SNI for one name, Host for another (sngx.require_policy)", function()
    -- nginx picks the server block by Host; the policy judged the handshake by SNI.  "/" of
    -- a.test has no guard (what it leaks is the attack), "/guarded" has require_policy.
    it("SNI b.test (open block) with Host a.test: the unguarded block leaks, the guard says 421", function()
      local leak = front("b.test", "a.test", "/")
      assert.equal("200", leak.http_code, leak.raw)
      assert.equal("a.test", leak.host)
      assert.equal("open", leak.policy)
      assert.equal("b.test", leak.sni_sent)
      assert.equal("false", leak.verified)
      local guarded = front("b.test", "a.test", "/guarded")
      assert.equal("421", guarded.http_code, guarded.raw)
      assert.is_nil(guarded.host, guarded.raw)
    end)

    it("no SNI with Host a.test (the default server's handshake): 421", function()
      local leak = front(nil, "a.test", "/")
      assert.equal("200", leak.http_code, leak.raw)
      assert.equal("open", leak.policy, leak.raw)
      assert.equal("nil", leak.sni_sent)
      local guarded = front(nil, "a.test", "/guarded", "client")
      assert.equal("421", guarded.http_code, guarded.raw)
    end)

    it("a certificate a.test refuses, verified under g.test's soft-fail policy: 421 on a.test, 200 on g.test", function()
      local refused = curl_tls("a.test", "client2")   -- a.test's callback says no in the handshake
      assert.is_nil(refused.sni, refused.raw)
      local leak = front("g.test", "a.test", "/", "client2")
      assert.equal("true", leak.verified, leak.raw)  -- what an access check on `verified` alone sees
      assert.equal("soft-g", leak.policy)
      assert.equal("a.test", leak.host)
      local guarded = front("g.test", "a.test", "/guarded", "client2")
      assert.equal("421", guarded.http_code, guarded.raw)
      local own = front("g.test", "g.test", "/guarded", "client2")
      assert.equal("200", own.http_code, own.raw)
      assert.equal("true", own.verified)
    end)

    it("SNI c.test (soft fail) with Host a.test: 421 for any certificate, even a verified one", function()
      for _, cert in ipairs({ "client", "client2", false }) do
        local r = front("c.test", "a.test", "/guarded", cert or nil)
        assert.equal("421", r.http_code, tostring(cert) .. ": " .. r.raw)
      end
      local other_way = front("a.test", "c.test", "/guarded", "client")
      assert.equal("421", other_way.http_code, other_way.raw)
    end)

    it("lets only the right client through: its own SNI, its own policy, verified", function()
      local a = front("a.test", "a.test", "/guarded", "client")
      assert.equal("200", a.http_code, a.raw)
      assert.equal("mtls-a", a.policy)
      assert.equal("a.test", a.sni_sent)
      assert.equal("true", a.verified)
      local c = front("c.test", "c.test", "/guarded", "client")
      assert.equal("200", c.http_code, c.raw)
      assert.equal("soft-c", c.policy)
      -- soft fail: the handshake passes, the guard refuses what was not verified
      local none = front("c.test", "c.test", "/guarded")
      assert.equal("403", none.http_code, none.raw)
      local rejected = front("c.test", "c.test", "/guarded", "client2")
      assert.equal("403", rejected.http_code, rejected.raw)
      local untrusted = front("c.test", "c.test", "/guarded", "client-untrusted")
      assert.equal("403", untrusted.http_code, untrusted.raw)
    end)

    it("refuses on a listener whose handshakes name no policy (421)", function()
      local r = s_client("a.test", { port = port.NOPOLICY_PORT, cert = "client", path = "/guarded" })
      assert.equal(421, r.status, r.raw)
    end)

    for _, version in ipairs({ "-tls1_2", "-tls1_3" }) do
      it("holds through resumed sessions (" .. version .. ")", function()
        local dir = helper.run("mktemp -d /tmp/sslctx-front.XXXXXX"):match("[^\n]+")
        finally(function() helper.exec_ok("rm -rf " .. q(dir)) end)
        local a, b, g = dir .. "/a.sess", dir .. "/b.sess", dir .. "/g.sess"
        local made_a = s_client("a.test", { version = version, cert = "client", sess_out = a,
                                            path = "/guarded" })
        assert.equal(200, made_a.status, made_a.raw)
        s_client("b.test", { version = version, sess_out = b })
        s_client("g.test", { version = version, cert = "client2", sess_out = g })
        -- a.test's session, resumed with no certificate sent: its verdict and policy hold
        local aa = s_client("a.test", { version = version, sess_in = a, path = "/guarded" })
        assert.is_true(aa.resumed, aa.raw)
        assert.equal(200, aa.status, aa.raw)
        assert.equal("mtls-a", aa.policy)
        -- b.test's session resumed, fronting a.test
        local ba = s_client("b.test", { version = version, sess_in = b, host = "a.test", path = "/guarded" })
        assert.is_true(ba.resumed, ba.raw)
        assert.equal(421, ba.status, ba.raw)
        -- g.test's verified session resumed, fronting a.test, then on its own name
        local ga = s_client("g.test", { version = version, sess_in = g, host = "a.test", path = "/guarded" })
        assert.is_true(ga.resumed, ga.raw)
        assert.equal(421, ga.status, ga.raw)
        local gg = s_client("g.test", { version = version, sess_in = g, path = "/guarded" })
        assert.is_true(gg.resumed, gg.raw)
        assert.equal(200, gg.status, gg.raw)
        assert.equal("true", gg.verified)
        -- a.test's session offered under SNI c.test: no resumption across policies, and 421
        local ac = s_client("c.test", { version = version, sess_in = a, host = "a.test", path = "/guarded" })
        assert.is_false(ac.resumed, ac.raw)
        assert.equal(421, ac.status, ac.raw)
      end)
    end
  end)

  describe("hook policies and resumption (set_verification_mode per connection)", function()
    -- What each lax policy lets in that the strict one (a.test's: client.pem only) refuses.
    local LAX = {
      { "otherca", "client-untrusted", pki("other-ca.pem") },   -- another CA
      { "cacc", "client2" },                                    -- a C callback accepting all
      { "lacc", "client2" },                                    -- a Lua callback accepting all
      { "soft", "client2" },                                    -- soft fail
      { "never" },                                              -- no certificate asked
    }

    local function tmpdir()
      local dir = helper.run("mktemp -d /tmp/sslctx-hook.XXXXXX"):match("[^\n]+")
      finally(function() helper.exec_ok("rm -rf " .. q(dir)) end)
      return dir
    end

    for _, version in ipairs({ "-tls1_2", "-tls1_3" }) do
      it("named policies: a lax session resumes under its own name, never into the strict one (" ..
         version .. ")", function()
        local dir = tmpdir()
        local p = port.HOOKN_PORT
        for _, lax in ipairs(LAX) do
          local label, cert, chain = lax[1], lax[2], lax[3]
          local sess = dir .. "/" .. label .. ".sess"
          local made = s_client(label .. ".hook.test", { port = p, version = version, cert = cert,
                                                          chain = chain, sess_out = sess })
          assert.equal(200, made.status, label .. ": " .. made.raw)
          assert.equal("hook-" .. label, made.policy)
          -- the cache and the tickets work: the same name resumes, with no certificate sent
          local again = s_client(label .. ".hook.test", { port = p, version = version, sess_in = sess })
          assert.is_true(again.resumed, label .. ": " .. again.raw)
          assert.equal(200, again.status, label .. ": " .. again.raw)
          -- offered to the strict block: a full handshake, refused for want of a certificate
          local cross = s_client("strict.hook.test", { port = p, version = version, sess_in = sess })
          assert.is_false(cross.resumed, label .. ": " .. cross.raw)
          assert.is_nil(cross.status, label .. ": " .. cross.raw)
          -- and fronting the strict block's guarded location on the lax name: 421
          local front_lax = s_client(label .. ".hook.test", { port = p, version = version, sess_in = sess,
                                                              host = "strict.hook.test", path = "/guarded" })
          assert.equal(421, front_lax.status, label .. ": " .. front_lax.raw)
        end
        -- the strict policy's own session resumes with its verdict; the hook does not run
        -- again on a resumed handshake (OpenSSL skips the certificate callback)
        local sess = dir .. "/strict.sess"
        local before = log_count("sslctx%-spec hook%-cert strict")
        local made = s_client("strict.hook.test", { port = p, version = version, cert = "client",
                                                    sess_out = sess, path = "/guarded" })
        assert.equal(200, made.status, made.raw)
        assert.equal(before + 1, log_count("sslctx%-spec hook%-cert strict"))
        local again = s_client("strict.hook.test", { port = p, version = version, sess_in = sess,
                                                     path = "/guarded" })
        assert.is_true(again.resumed, again.raw)
        assert.equal(200, again.status, again.raw)
        assert.equal("true", again.verified)
        assert.equal(before + 1, log_count("sslctx%-spec hook%-cert strict"))
      end)

      it("unnamed policies: hook sessions resume nowhere; a block without the hook is the trap (" ..
         version .. ")", function()
        local dir = tmpdir()
        local p = port.HOOKU_PORT
        for _, lax in ipairs(LAX) do
          local label, cert, chain = lax[1], lax[2], lax[3]
          local sess = dir .. "/" .. label .. ".sess"
          local made = s_client(label .. ".hook.test", { port = p, version = version, cert = cert,
                                                          chain = chain, sess_out = sess })
          assert.equal(200, made.status, label .. ": " .. made.raw)
          assert.equal("nil", made.policy)
          -- the session carries its policy's digest; the lookup uses nginx's own context
          local again = s_client(label .. ".hook.test", { port = p, version = version, sess_in = sess })
          assert.is_false(again.resumed, label .. ": " .. again.raw)
          local cross = s_client("strict.hook.test", { port = p, version = version, sess_in = sess })
          assert.is_false(cross.resumed, label .. ": " .. cross.raw)
          assert.is_nil(cross.status, label .. ": " .. cross.raw)
        end
        local strict = dir .. "/strict.sess"
        local made = s_client("strict.hook.test", { port = p, version = version, cert = "client",
                                                    sess_out = strict })
        assert.equal(200, made.status, made.raw)
        assert.equal("true", made.verified)
        assert.is_false(s_client("strict.hook.test", { port = p, version = version,
                                                       sess_in = strict }).resumed)
        -- a block with no certificate hook leaves its sessions under nginx's context: they
        -- resume on the strict block and skip its hook.  Only the request phase can see it.
        local none = dir .. "/none.sess"
        s_client("none.hook.test", { port = p, version = version, sess_out = none })
        local trap = s_client("strict.hook.test", { port = p, version = version, sess_in = none,
                                                    path = "/guarded" })
        assert.is_true(trap.resumed, trap.raw)
        assert.equal(421, trap.status, trap.raw)   -- no policy named: require_policy refuses
      end)
    end
  end)

  describe("client sessions shared by the workers (opts.session_dict)", function()
    for _, v in ipairs({ "tls1.2", "tls1.3" }) do
      it("resumes under an equal policy, in this worker and the next; never under another (" ..
         v .. ")", function()
        local function dict(policy, pname, host)
          return parse(http("/dict?policy=" .. policy .. "&v=" .. v .. "&port=" .. port[pname] ..
                            "&host=" .. (host or "localhost")))
        end
        local function twice(policy, pname, host)
          local first = dict(policy, pname, host)
          assert.equal("true", first.ok, policy .. ": " .. first.raw)
          local second = dict(policy, pname, host)
          assert.equal("true", second.ok, policy .. ": " .. second.raw)
          assert.equal("true", second.reused, policy .. ": " .. second.raw)
          return first, second
        end
        -- E: the expired upstream, which only the lax policy ("never") lets through
        local _, lax = twice("lax", "EXPIRED_PORT")
        assert.equal("10 certificate has expired", lax.verify, lax.raw)
        local ttl = tonumber(lax.ttl)
        assert.truthy(ttl and ttl > 0 and ttl <= 7200, lax.raw)   -- entries expire with the session
        -- the strict policy, offered the target's latest session (the lax one): refused by the
        -- core, a full handshake, and the expired certificate is seen
        local strict_e = dict("strict", "EXPIRED_PORT")
        assert.equal("false", strict_e.ok, strict_e.raw)
        assert.equal("verify", strict_e.kind, strict_e.raw)
        -- A: the good upstream by name.  Each policy resumes its own; a Lua callback's policy
        -- is not the strict default's
        twice("strict", "GOOD_PORT")
        local cb_first = dict("laxcb", "GOOD_PORT")
        assert.equal("true", cb_first.ok, cb_first.raw)
        assert.equal("false", cb_first.reused, cb_first.raw)
        assert.equal("true", dict("laxcb", "GOOD_PORT").reused)
        assert.equal("true", dict("strict", "GOOD_PORT").reused)   -- its own, by its policy
        twice("named", "GOOD_PORT")                                -- (latest on A: named)
        -- B: the good upstream by IP, another target; latest there: the Lua callback's
        twice("laxcb", "GOOD_PORT", "127.0.0.1")
        -- a reload: new worker processes, the same dict
        local pid = lax.pid
        srv:reload()
        -- equal policies without Lua callbacks resume across processes
        local lax2 = dict("lax", "EXPIRED_PORT")
        assert.truthy(lax2.pid ~= pid, lax2.raw)
        assert.equal("true", lax2.reused, lax2.raw)
        -- the strict policy still never takes the lax session
        local strict2 = dict("strict", "EXPIRED_PORT")
        assert.equal("false", strict2.ok, strict2.raw)
        assert.equal("verify", strict2.kind, strict2.raw)
        -- callbacks named by ctx:set_session_id_context: across processes
        assert.equal("true", dict("named", "GOOD_PORT").reused)
        -- a Lua callback counts per process: the old worker's session is not offered
        local cb2 = dict("laxcb", "GOOD_PORT", "127.0.0.1")
        assert.equal("true", cb2.ok, cb2.raw)
        assert.equal("false", cb2.reused, cb2.raw)
        assert.equal("true", dict("laxcb", "GOOD_PORT", "127.0.0.1").reused)
        assert.equal(0, log_count("exited on signal"))
      end)
    end

    it("names the option in its argument errors", function()
      local r = parse(http("/argerr"))
      assert.truthy(r.session_dict_missing:find("bad argument #3 to 'connect' (option 'session_dict': " ..
                                                "no lua_shared_dict 'nope')", 1, true), r.session_dict_missing)
      assert.truthy(r.session_dict_type:find("bad argument #3 to 'connect' (option 'session_dict': " ..
                                             "string expected", 1, true), r.session_dict_type)
      assert.truthy(r.mode_bad:find("bad argument #1 to 'set_verification_mode'", 1, true), r.mode_bad)
    end)
  end)

  describe("reloads", function()
    it("survives five HUP reloads under traffic with no worker crash", function()
      local dir = helper.run("mktemp -d /tmp/sslctx-traffic.XXXXXX"):match("[^\n]+")
      local pid
      finally(function()
        helper.exec_ok("touch " .. q(dir .. "/stop"))
        local deadline = ng.now() + 15
        while not helper.file_exists(dir .. "/done") and ng.now() < deadline do ng.sleep(0.05) end
        if pid and not helper.file_exists(dir .. "/done") then
          helper.exec_ok("kill " .. tonumber(pid) .. " 2>/dev/null")
        end
        helper.exec_ok("rm -rf " .. q(dir))
      end)
      local stop, out = dir .. "/stop", dir .. "/codes"
      -- Bounded background traffic: cosocket clients and mTLS handshakes, until told to stop.
      local loop = table.concat({
        "for i in $(seq 1 400); do",
        "  [ -e " .. q(stop) .. " ] && break;",
        "  curl -s -o /dev/null -w '%{http_code}\\n' --max-time 5 " ..
          q("http://127.0.0.1:" .. port.HTTP_PORT .. "/client?port=" .. port.GOOD_PORT) .. ";",
        "  curl -s -o /dev/null -w '%{http_code}\\n' --max-time 5 --cacert " .. q(pki_ca) ..
          " --resolve " .. q("a.test:" .. port.MTLS_PORT .. ":127.0.0.1") ..
          " --cert " .. q(pki("client-chain.pem")) .. " --key " .. q(pki("client.key")) ..
          " " .. q("https://a.test:" .. port.MTLS_PORT .. "/") .. ";",
        "done > " .. q(out) .. " 2>&1; touch " .. q(dir .. "/done"),
      }, " ")
      pid = helper.run("(" .. loop .. ") >/dev/null 2>&1 & echo $!"):match("%d+")
      assert.truthy(pid)
      ng.sleep(0.3)
      for _ = 1, 5 do
        srv:reload()
        local r = curl_tls("a.test", "client")
        assert.equal("true", r.verified, r.raw)
        ng.sleep(0.1)
      end
      helper.exec_ok("touch " .. q(stop))
      local deadline = ng.now() + 15
      while not helper.file_exists(dir .. "/done") and ng.now() < deadline do ng.sleep(0.05) end
      if not helper.file_exists(dir .. "/done") then helper.exec_ok("kill " .. tonumber(pid) .. " 2>/dev/null") end
      local codes = ng.read_file(out) or ""
      local total, good = 0, 0
      for c in codes:gmatch("%d+") do
        total = total + 1
        if c == "200" then good = good + 1 end
      end
      assert.truthy(total >= 4, "too little traffic: " .. codes)
      assert.equal(total, good, "failed requests during reloads:\n" .. codes)
      assert.equal(0, log_count("exited on signal"), srv:log())
      assert.equal(0, log_count("%[alert%]"), srv:log())
      assert.is_true(srv:alive())
      -- everything still works in the new workers
      local after = curl_tls("a.test", "client")
      assert.equal("true", after.verified, after.raw)
      local refused = curl_tls("a.test", "client2")
      assert.is_nil(refused.sni, refused.raw)
      local c = client("port=" .. port.GOOD_PORT)
      assert.equal("true", c.ok, c.raw)
    end)
  end)
end)

describe("examples/nginx/nginx.conf", function()
  local srv, tls_port, http_port

  local function curl(name, cert)
    local args = { "curl -sS --max-time 10 --cacert", q(pki("ca.pem")),
                   "--resolve", q(name .. ":" .. tls_port .. ":127.0.0.1") }
    if cert then
      args[#args + 1] = "--cert " .. q(pki(cert .. "-chain.pem")) .. " --key " .. q(pki(cert .. ".key"))
    end
    args[#args + 1] = "-w 'http_code=%{http_code}\\n'"
    args[#args + 1] = q("https://" .. name .. ":" .. tls_port .. "/")
    return helper.run(table.concat(args, " ") .. " 2>&1")
  end

  lazy_setup(function()
    local cpath = assert(ng.luajit_cpath(ROOT))
    local ports = ng.free_ports(2)
    tls_port, http_port = ports[1], ports[2]
    local conf = assert(ng.read_file("examples/nginx/nginx.conf"))
    -- this machine's module lines, the free ports, and a user for a root master
    conf = conf:gsub("load_module [^\n]*ndk_http_module%.so;\n", "")
               :gsub("load_module [^\n]*ngx_http_lua_module%.so;",
                     function() return assert(ng.load_modules()) end)
               :gsub("%f[%d]8443%f[%D]", tostring(tls_port))
               :gsub("%f[%d]8080%f[%D]", tostring(http_port))
               :gsub("\nworker_processes", "\n" .. ng.user_line() .. "\nworker_processes", 1)
    local tmp = helper.run("mktemp -d /tmp/sslctx-site.XXXXXX"):match("[^\n]+")
    local ok, err = pcall(function()
      make_server_cert(tmp, "site", { "public.example", "mtls.example", "soft.example" })
      srv = ng.start{
        conf = conf,
        certs = { ["ca.pem"] = pki("ca.pem"), ["site-chain.pem"] = tmp .. "/site-chain.pem",
                  ["site.key"] = tmp .. "/site.key" },
        files = { ["conf/policy.lua"] = assert(ng.read_file("examples/nginx/policy.lua")),
                  ["conf/certs/ca-bundle.pem"] = helper.read("ca.pem") .. helper.read("int.pem") },
        links = { lua = ROOT .. "/lua", lib = cpath },
        ports = ports,
      }
    end)
    helper.exec_ok("rm -rf " .. q(tmp))
    assert(ok, err)
  end)

  lazy_teardown(function()
    if srv then srv:stop() end
  end)

  it("public.example asks for no certificate", function()
    local out = curl("public.example")
    assert.truthy(out:find("client certificate: none", 1, true), out)
    assert.truthy(out:find("http_code=200", 1, true), out)
  end)

  it("mtls.example lets the allowed client in and no one else", function()
    local good = curl("mtls.example", "client")
    assert.truthy(good:find("CN=Test Client,O=sslctx", 1, true), good)
    assert.truthy(good:find("verified: true", 1, true), good)
    assert.truthy(curl("mtls.example"):find("alert certificate required", 1, true))
    local other = curl("mtls.example", "client2")
    assert.truthy(other:find("alert", 1, true), other)
    assert.falsy(other:find("http_code=200", 1, true), other)
  end)

  it("soft.example finishes every handshake and lets the access phase decide", function()
    local none = curl("soft.example")
    assert.truthy(none:find("http_code=403", 1, true), none)
    assert.truthy(none:find("client certificate: none", 1, true), none)
    local other = curl("soft.example", "client2")
    assert.truthy(other:find("http_code=403", 1, true), other)
    assert.truthy(other:find("application verification failure", 1, true), other)
    local good = curl("soft.example", "client")
    assert.truthy(good:find("http_code=200", 1, true), good)
  end)

  it("guards mtls.example and soft.example against fronting (SNI for one name, Host for another)", function()
    local function front(sni, host, cert)
      local args = { "curl -sS --max-time 10 --cacert", q(pki("ca.pem")),
                     "--resolve", q(sni .. ":" .. tls_port .. ":127.0.0.1"), "-H", q("Host: " .. host),
                     "-w 'http_code=%{http_code}\\n'" }
      if cert then
        args[#args + 1] = "--cert " .. q(pki(cert .. "-chain.pem")) .. " --key " .. q(pki(cert .. ".key"))
      end
      args[#args + 1] = q("https://" .. sni .. ":" .. tls_port .. "/")
      return helper.run(table.concat(args, " ") .. " 2>&1")
    end
    -- public.example's handshake (no certificate asked), Host of a protected block: 421
    for _, host in ipairs({ "mtls.example", "soft.example" }) do
      local out = front("public.example", host, "client")
      assert.truthy(out:find("http_code=421", 1, true), host .. ": " .. out)
      assert.falsy(out:find("client certificate:", 1, true), host .. ": " .. out)
    end
    -- a certificate verified under soft.example's policy, Host mtls.example: 421
    local soft_to_mtls = front("soft.example", "mtls.example", "client")
    assert.truthy(soft_to_mtls:find("http_code=421", 1, true), soft_to_mtls)
    -- and mtls.example's handshake, Host soft.example: 421 too
    local mtls_to_soft = front("mtls.example", "soft.example", "client")
    assert.truthy(mtls_to_soft:find("http_code=421", 1, true), mtls_to_soft)
    -- the right name on both: 200
    local own = front("mtls.example", "mtls.example", "client")
    assert.truthy(own:find("http_code=200", 1, true), own)
    assert.truthy(own:find("verified: true", 1, true), own)
  end)

  it("/fetch is a verified TLS client over a cosocket", function()
    local out = helper.run("curl -sS --max-time 10 http://127.0.0.1:" .. http_port .. "/fetch 2>&1")
    assert.truthy(out:find("upstream: CN=site.test via TLSv1.3, ALPN http/1.1, verify: ok", 1, true), out)
    assert.truthy(out:find("status: HTTP/1.1 200 OK", 1, true), out)
    assert.truthy(out:find("host: public.example", 1, true), out)
    assert.equal(0, select(2, srv:log():gsub("exited on signal", "")))
  end)
end)
