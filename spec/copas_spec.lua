-- spec/copas_spec.lua: copas 4, unchanged, over sslctx.socket streams and over the LuaSec
-- facade (doc/reference.md, sslctx.socket): an echo server and many clients in one copas
-- loop with SNI, mutual TLS and a rejected certificate; handshakes under settimeout(0);
-- copas.http GETs against `openssl s_server -www` and nginx.
--
-- copas 4 and its helpers are not packaged by Debian 12: the specs load them from
-- ../shared/thirdparty beside the checkout (CI); where that is absent they are pending.

local helper = require "helper"
local peers = require "support.peers"
local socket = require "socket"
local sslsocket = require "sslctx.socket"

local THIRDPARTY = "../shared/thirdparty"
local LUA_VER = _VERSION:match("%d+%.%d+")

local function exists(path)
  local f = io.open(path, "r")
  if f then f:close() end
  return f ~= nil
end

-- Puts copas (and binaryheap, timerwheel; coxpcall from Debian, whose 5.3 file serves 5.4)
-- on package.path.  Returns copas, or nil and why not.
local function load_copas()
  if not exists(THIRDPARTY .. "/copas/copas.lua") then
    return nil, "copas 4 is not beside the checkout (" .. THIRDPARTY .. "): see doc/reference.md"
  end
  local extra = THIRDPARTY .. "/copas/?.lua;" .. THIRDPARTY .. "/binaryheap/?.lua;" ..
                THIRDPARTY .. "/timerwheel/?/init.lua;"
  if LUA_VER == "5.4" then extra = extra .. "/usr/share/lua/5.3/?.lua;" end
  package.path = extra .. package.path
  local ok, copas = pcall(require, "copas")
  if not ok then return nil, "copas does not load: " .. tostring(copas) end
  return copas
end

local copas, why_not = load_copas()
-- copas threads are coroutines: a pcall that may yield inside (Lua 5.1) is coxpcall's
local copcall = copas and require("coxpcall").pcall
local it_copas = copas and it or function(name) pending(name .. " (" .. why_not .. ")") end

-- Steps copas until done() or the deadline; bounded in time.
local function run_until(done, secs)
  local deadline = socket.gettime() + (secs or 20)
  while not done() and socket.gettime() < deadline do copas.step(0.05) end
  return done()
end

local function listener()
  local srv = assert(socket.bind("127.0.0.1", 0))
  return srv, select(2, srv:getsockname())
end

describe("copas 4 over sslctx.socket streams", function()
  local pki = helper.pki

  it_copas("an echo server and 24 clients in one loop: SNI, mutual TLS, a rejected certificate",
           function()
    local sctx = helper.server_ctx{ verify = "require" }
    local wrong = helper.server_ctx{ verify = "require", certificate = pki("wronghost-chain.pem"),
                                     key = pki("wronghost.key") }
    local client_ok = helper.client_ctx{ certificate = pki("client-chain.pem"), key = pki("client.key") }
    local client_two = helper.client_ctx{ certificate = pki("client2-chain.pem"), key = pki("client2.key") }
    local client_bad = helper.client_ctx{ certificate = pki("client-untrusted-chain.pem"),
                                          key = pki("client-untrusted.key") }
    local srv, port = listener()
    local served, server_errors = {}, {}
    copas.addserver(srv, function(skt)
      -- the handler's socket is copas-wrapped; the stream is wrapped again
      local s = copas.wrap(sslsocket.wrap(skt, sctx))
      assert(s:sni({ localhost = sctx, ["wrong.example"] = wrong }, true))
      local line, err = s:receive("*l")
      if not line then
        server_errors[#server_errors + 1] = err
      else
        local peer = s.socket:getpeercertificate()
        served[#served + 1] = peer and peer:subject()
        s:send("echo " .. line .. " " .. tostring(s.socket:getsniname()) .. "\n")
      end
      s:close()
    end)

    local N, finished, results = 24, 0, {}
    local kinds = {
      { "ok", client_ok, "localhost" },
      { "two", client_two, "localhost" },
      { "sni", client_ok, "wrong.example" },   -- verifies only against the map's certificate
      { "unknown", client_ok, "nobody.example" }, -- strict map, name not in it
      { "rejected", client_bad, "localhost" },  -- the server's CA did not issue it
      { "ok", client_ok, "localhost" },
    }
    for i = 1, N do
      local kind = kinds[(i - 1) % #kinds + 1]
      copas.addthread(function()
        local tcp = copas.wrap(socket.tcp())
        assert(tcp:connect("127.0.0.1", port))
        local s = copas.wrap(sslsocket.wrap(tcp, kind[2], { hostname = kind[3] }))
        local _, serr = s:send("hello " .. i .. "\n")
        local reply, err = s:receive("*l")
        results[i] = { kind = kind[1], reply = reply, err = err or serr }
        s:close()
        finished = finished + 1
      end)
    end
    assert.is_true(run_until(function() return finished == N end, 30), "clients did not finish")
    copas.removeserver(srv)
    run_until(function() return copas.finished() end, 5)

    local counts = {}
    for i = 1, N do
      local r = results[i]
      counts[r.kind] = (counts[r.kind] or 0) + 1
      if r.kind == "ok" or r.kind == "two" then
        assert.equal("echo hello " .. i .. " localhost", r.reply, r.err)
      elseif r.kind == "sni" then
        assert.equal("echo hello " .. i .. " wrong.example", r.reply, r.err)
      else
        assert.is_nil(r.reply)
        assert.truthy(r.err, "client " .. i .. " expected a failure")
      end
    end
    assert.equal(8, counts.rejected + counts.unknown)
    local subjects = {}
    for _, s in ipairs(served) do subjects[s] = (subjects[s] or 0) + 1 end
    assert.equal(12, subjects["CN=Test Client,O=sslctx"])
    assert.equal(4, subjects["CN=Second Client,O=sslctx"])
    assert.equal(16, #served)
    assert.equal(8, #server_errors)
  end)

  it_copas("copas' own dohandshake on a stream waits on wantread/wantwrite (settimeout(0))",
           function()
    local sctx, cctx = helper.server_ctx(), helper.client_ctx()
    local saved = package.loaded.ssl
    -- copas.dohandshake requires "ssl" before it looks at the socket: the facade serves
    package.loaded.ssl = require "sslctx.luasec"
    local srv, port = listener()
    local got, done, waits = nil, 0, {}
    copas.addserver(srv, function(skt)
      local s = copas.wrap(sslsocket.wrap(skt, sctx))
      assert(s:dohandshake())
      got = s:receive("*l")
      s:send("bye\n")
      s:close()
      done = done + 1
    end)
    local reply
    copas.addthread(function()
      local tcp = copas.wrap(socket.tcp())
      assert(tcp:connect("127.0.0.1", port))
      local stream = sslsocket.wrap(tcp, cctx, { hostname = "localhost" })
      stream:settimeout(0)
      local _, first = stream:dohandshake()   -- nothing has arrived yet
      waits[#waits + 1] = first
      local s = copas.wrap(stream)
      assert(s:dohandshake())
      s:send("over copas\n")
      reply = s:receive("*l")
      s:close()
      done = done + 1
    end)
    local ok = run_until(function() return done == 2 end, 20)
    copas.removeserver(srv)
    package.loaded.ssl = saved
    assert.is_true(ok, "did not finish")
    assert.equal("wantread", waits[1])
    assert.equal("over copas", got)
    assert.equal("bye", reply)
  end)

  it_copas("tostring starts with SSL, as copas tells a TLS socket by it", function()
    local srv, port = listener()
    local c = socket.tcp()
    c:settimeout(5)
    assert(c:connect("127.0.0.1", port))
    local s = sslsocket.wrap(c, helper.client_ctx(), { hostname = "localhost" })
    assert.equal("SSL", tostring(s):sub(1, 3))
    s:close()
    srv:close()
  end)
end)

describe("copas 4 with the LuaSec facade as its ssl module", function()
  local saved
  before_each(function()
    saved = package.loaded.ssl
    package.loaded.ssl = require "sslctx.luasec"
  end)
  after_each(function()
    package.loaded.ssl = saved
    peers.cleanup()
  end)

  it_copas("copas.addserver with LuaSec params, SNI map and mTLS; clients through copas.wrap params",
           function()
    local ssl = require "sslctx.luasec"
    local pki = helper.pki
    local base = assert(ssl.newcontext{ mode = "server", certificate = pki("server-chain.pem"),
                                         key = pki("server.key"), cafile = pki("ca.pem"),
                                         verify = { "peer", "fail_if_no_peer_cert" } })
    local other = assert(ssl.newcontext{ mode = "server", certificate = pki("wronghost-chain.pem"),
                                          key = pki("wronghost.key"), cafile = pki("ca.pem"),
                                          verify = { "peer", "fail_if_no_peer_cert" } })
    local srv, port = listener()
    local handler_errors, prev_handler = {}, copas.geterrorhandler()
    copas.seterrorhandler(function(msg) handler_errors[#handler_errors + 1] = tostring(msg) end, true)
    copas.addserver(srv, copas.handler(function(skt)
      local line = skt:receive("*l")
      if line then skt:send(line .. " via " .. tostring(skt.socket:getsniname()) .. "\n") end
      skt:close()
    end, { wrap = base, sni = { names = { ["wrong.example"] = other }, strict = false } }))
    local replies, n = {}, 0
    local function client(i, name, cert, key)
      copas.addthread(function()
        local params = { mode = "client", cafile = pki("ca.pem"), verify = "peer",
                         certificate = cert and pki(cert), key = key and pki(key) }
        local s = copas.wrap(socket.tcp(), { wrap = params, sni = { names = name } })
        local ok, err = copcall(s.connect, s, "127.0.0.1", port)   -- copas raises on failure
        if ok and err then
          s:send("hi " .. i .. "\n")
          replies[i] = s:receive("*l") or "no reply"
        else
          replies[i] = "failed: " .. tostring(err)
        end
        s:close()
        n = n + 1
      end)
    end
    for i = 1, 6 do client(i, "localhost", "client-chain.pem", "client.key") end
    for i = 7, 10 do client(i, "wrong.example", "client2-chain.pem", "client2.key") end
    client(11, "localhost", nil, nil)                  -- no certificate: refused
    local ok = run_until(function() return n == 11 end, 30)
    copas.removeserver(srv)
    copas.seterrorhandler(prev_handler, true)
    assert.is_true(ok, "clients did not finish")
    -- copas.handler raises when the handshake fails: the refused client's
    assert.equal(1, #handler_errors)
    assert.truthy(handler_errors[1]:find("peer did not return a certificate", 1, true),
                  handler_errors[1])
    for i = 1, 6 do assert.equal("hi " .. i .. " via localhost", replies[i]) end
    for i = 7, 10 do assert.equal("hi " .. i .. " via wrong.example", replies[i]) end
    assert.is_nil(replies[11]:find("^hi"), replies[11])
  end)

  -- The URLs name 127.0.0.1: where localhost resolves to ::1 first, copas' non-blocking
  -- connect gives up on the first address (the servers listen on 127.0.0.1 only).  The
  -- server certificate names 127.0.0.1, which the facade checks as an IP.
  it_copas("copas.http GETs from openssl s_server -www, verified and not", function()
    local proc = peers.s_server{ mode = "www" }
    local http = require "copas.http"
    local results = {}
    copas.addthread(function()
      local parts = {}
      local _, code = http.request{
        url = "https://127.0.0.1:" .. proc.port .. "/",
        sink = require("ltn12").sink.table(parts),
        sslparams = { wrap = { mode = "client", protocol = "any", verify = "peer",
                               cafile = helper.pki("ca.pem") } },
      }
      results.verified = { table.concat(parts), code }
      local body
      body, code = http.request("https://127.0.0.1:" .. proc.port .. "/")  -- copas' default: "none"
      results.default = { body, code }
      -- a failed handshake raises out of copas.dohandshake
      local ok, err = copcall(http.request, {
        url = "https://127.0.0.1:" .. proc.port .. "/",
        sslparams = { wrap = { mode = "client", protocol = "any", verify = "peer",
                               cafile = helper.pki("other-ca.pem") } },
      })
      results.untrusted = { ok, err }
    end)
    assert.is_true(run_until(function() return results.untrusted ~= nil end, 30))
    assert.equal(200, results.verified[2])
    assert.truthy(tostring(results.verified[1]):find("s_server", 1, true), results.verified[1])
    assert.equal(200, results.default[2])
    assert.is_false(results.untrusted[1])
    assert.truthy(tostring(results.untrusted[2]):find("certificate verify failed", 1, true),
                  tostring(results.untrusted[2]))
  end)

  it_copas("copas.http GETs from nginx with a client certificate (nginx verifies it)", function()
    local proc = peers.nginx{ verify_client = "optional" }
    local http = require "copas.http"
    local ltn12 = require "ltn12"
    local results = {}
    local function get(cert, key)
      local parts = {}
      local ok, code = http.request{
        url = "https://127.0.0.1:" .. proc.port .. "/",
        sink = ltn12.sink.table(parts),
        sslparams = { wrap = { mode = "client", protocol = "any", verify = "peer",
                               cafile = helper.pki("ca.pem"),
                               certificate = cert and helper.pki(cert), key = key and helper.pki(key) } },
      }
      return { ok, code, table.concat(parts) }
    end
    copas.addthread(function()
      results.mtls = get("client-chain.pem", "client.key")
      results.anonymous = get()
    end)
    assert.is_true(run_until(function() return results.anonymous ~= nil end, 30))
    assert.equal(200, results.mtls[2], tostring(results.mtls[2]))
    assert.equal("verify=SUCCESS subject=CN=Test Client,O=sslctx\n", results.mtls[3])
    assert.equal(200, results.anonymous[2])
    assert.equal("verify=NONE subject=\n", results.anonymous[3])
  end)
end)
