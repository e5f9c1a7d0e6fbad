-- A small program written for LuaSec: a TLS echo server and its client, over loopback.
--
--   lua5.4 examples/doc_luasec_program.lua server CASE PKI_DIR         (prints "PORT n" first)
--   lua5.4 examples/doc_luasec_program.lua client CASE PKI_DIR PORT
--
-- It uses only LuaSec's API: `require "ssl"`.  spec/luasec_spec.lua runs it twice, unchanged:
-- once with LuaSec, once with sslctx's facade standing in for it, which is the one-line change
-- a program makes to move:
--
--   package.loaded.ssl = require "sslctx.luasec"      -- or: local ssl = require "sslctx.luasec"
--
-- Each line printed is "<role> <what> <value...>"; the spec compares them.
-- See doc/migrating-from-luasec.md.

local socket = require "socket"
local ssl = require "ssl"

local role, case, pki, port = arg[1], arg[2], arg[3], tonumber(arg[4])
local function file(name) return pki .. "/" .. name end

-- Prints one line; numbers as integers (LuaSec gives floats on Lua 5.3+).
local function out(...)
  local t = { role }
  for i = 1, select("#", ...) do
    local v = select(i, ...)
    if type(v) == "number" and v == math.floor(v) then v = ("%d"):format(v) end
    t[#t + 1] = tostring(v)
  end
  print(table.concat(t, " "))
  io.stdout:flush()
end

-- The server's parameters per case.
local server_params = {
  mode = "server", protocol = "any",
  key = file("server.key"), certificate = file("server-chain.pem"),
  cafile = file("ca.pem"),
  verify = { "peer", "fail_if_no_peer_cert" },
  options = { "all", "no_sslv3", "cipher_server_preference" },
}
if case == "untrusted_none" or case == "untrusted_peer" or case == "continue" then
  server_params.key, server_params.certificate = file("untrusted.key"), file("untrusted-chain.pem")
  server_params.verify = "none"
elseif case == "alpn" then
  server_params.verify = "none"
  server_params.alpn = { "http/1.1", "echo/1" }
elseif case ~= "mtls" and case ~= "nocert" then
  server_params.verify = "none"
end

-- The client's parameters per case.
local client_params = {
  mode = "client", protocol = "any",
  cafile = file("ca.pem"),
  verify = "peer",
  options = { "all", "no_sslv3" },
}
if case == "mtls" then
  client_params.key, client_params.certificate = file("client.key"), file("client-chain.pem")
elseif case == "untrusted_none" then
  client_params.verify = "none"
elseif case == "continue" then
  client_params.verifyext = "lsec_continue"
elseif case == "alpn" then
  client_params.alpn = { "echo/1", "h2" }
elseif case == "tls12" then
  client_params.protocol = "tlsv1_2"
elseif case == "defaults" then
  -- no verify, no cafile: LuaSec does not verify; sslctx.luasec verifies against the
  -- system's roots (which do not know the test CA)
  client_params.verify, client_params.cafile = nil, nil
end

local function report_peer(conn)
  local cert = conn:getpeercertificate()
  out("peer", cert ~= nil)
  if cert then
    out("peer-sha256", cert:digest("sha256"))
    out("peer-sha1", cert:digest())
    out("peer-serial", cert:serial())
    out("peer-notafter", cert:notafter())
    for _, e in ipairs(cert:subject()) do out("peer-subject", e.oid, e.name, e.value) end
    for _, e in ipairs(cert:issuer()) do out("peer-issuer", e.oid, e.name, e.value) end
    local san = cert:extensions()["2.5.29.17"]
    out("peer-san-dns", san and table.concat(san.dNSName or {}, ",") or "-")
    local _, ktype, bits = cert:pubkey()
    out("peer-key", ktype, bits)
  end
  local chain = conn:getpeerchain()
  out("peer-chain", chain and #chain or 0)
  local ok, errs = conn:getpeerverification()
  out("verification", ok)
  if not ok and type(errs) == "table" then
    for depth, list in pairs(errs) do out("verification-error", depth, list[1]) end
  end
end

if role == "server" then
  local srv = assert(socket.bind("127.0.0.1", 0))
  srv:settimeout(20)
  local _, p = srv:getsockname()
  out("PORT", p)
  local tcp = assert(srv:accept())
  srv:close()
  tcp:settimeout(20)
  local conn = assert(ssl.wrap(tcp, server_params))
  local ok, err = conn:dohandshake()
  out("handshake", ok, ok and "" or err)
  if ok then
    out("sni", conn:getsniname())
    out("alpn", conn:getalpn())
    report_peer(conn)
    local line, rerr = conn:receive("*l")
    out("got", line or rerr)
    if line then
      conn:send("echo: " .. line .. "\n")
      conn:send("bye!\n")
    end
  end
  conn:close()
else
  local tcp = assert(socket.tcp())
  tcp:settimeout(20)
  assert(tcp:connect("127.0.0.1", port))
  local conn = assert(ssl.wrap(tcp, client_params))
  conn:sni(case == "wronghost" and "wrong.example" or "localhost")
  local ok, err
  if case == "nonblocking" then
    -- the classic LuaSec event-loop handshake: settimeout(0) and select on want
    conn:settimeout(0)
    local rounds = 0
    repeat
      ok, err = conn:dohandshake()
      rounds = rounds + 1
      if err == "wantread" then socket.select({ conn }, nil, 5)
      elseif err == "wantwrite" then socket.select(nil, { conn }, 5) end
    until ok or (err ~= "wantread" and err ~= "wantwrite") or rounds > 1000
    conn:settimeout(20)
  else
    ok, err = conn:dohandshake()
  end
  out("handshake", ok, ok and "" or err)
  if ok then
    local info = conn:info()
    out("protocol", info.protocol)
    out("cipher", conn:info("cipher"))
    out("alpn", conn:getalpn())
    report_peer(conn)
    local function recv(pattern)
      local data, rerr = conn:receive(pattern)
      return data or ("error: " .. tostring(rerr))
    end
    out("send", (conn:send("hello\n")))
    out("reply", recv("*l"))
    out("reply-bytes", recv(4))
    out("reply-rest", recv("*l"))
    out("reply-end", recv("*l"))
  else
    out("want", conn:want())
  end
  conn:close()
end
