-- A LuaSec program (LuaSec 1.2's documented API only), one side of one case per run:
--   lua luasec_samples.lua server CASE PKI_DIR      prints "server PORT n", serves once
--   lua luasec_samples.lua client CASE PKI_DIR PORT
-- Each side prints "<role> <what> <value>" lines; spec/luasec_samples_spec.lua runs it
-- under LuaSec and under sslctx.luasec (package.loaded.ssl set first) and compares.
local socket = require "socket"
local ssl = require "ssl"

local role, case, pki, port = arg[1], arg[2], arg[3], tonumber(arg[4])
local function out(what, value) print(role .. " " .. what .. " " .. tostring(value)) end
local function file(name) return pki .. "/" .. name end

local function hex(s)
  if not s then return "nil" end
  return (s:gsub(".", function(c) return ("%02x"):format(c:byte()) end))
end

local function read_cmd(cmd)
  local p = assert(io.popen(cmd, "r"))
  local s = p:read("*a")
  p:close()
  return s
end

local function server_params(extra)
  local p = { mode = "server", protocol = "any", key = file("server.key"),
              certificate = file("server-chain.pem"), options = "all" }
  for k, v in pairs(extra or {}) do p[k] = v end
  return p
end

local function client_params(extra)
  local p = { mode = "client", protocol = "any", verify = "none", options = "all" }
  for k, v in pairs(extra or {}) do p[k] = v end
  return p
end

local INFO = { "protocol", "cipher", "key", "authentication", "encryption", "mac", "bits",
               "algbits", "export" }
local function print_info(conn)
  local t = conn:info() or {}
  for _, k in ipairs(INFO) do out("info-" .. k, t[k]) end
  out("info-field", conn:info("cipher") == t.cipher)
end

-- Runs the handshake; with settimeout(0) also waits with select and records LuaSec's
-- would-block words in order (each distinct word once).
local function handshake(conn, nonblocking)
  if not nonblocking then
    local ok, err = conn:dohandshake()
    out("handshake", ok and "true" or ("false " .. tostring(err)))
    return ok
  end
  local seen, words = {}, {}
  for _ = 1, 2000 do
    local ok, err = conn:dohandshake()
    if ok then
      out("handshake", "true")
      -- the server's first step may find the client's whole answer already there: only
      -- the client's first step surely waits
      if role == "client" then out("wants", table.concat(words, ",")) end
      return true
    end
    if err ~= "wantread" and err ~= "wantwrite" then
      out("handshake", "false " .. tostring(err))
      return false
    end
    if not seen[err] then seen[err] = true; words[#words + 1] = err end
    if err == "wantread" then socket.select({ conn }, nil, 1) else socket.select(nil, { conn }, 1) end
  end
  out("handshake", "false too many rounds")
  return false
end

-- Case definitions: server params, client params, and what each side does after.
local CASES = {}

CASES.oneshot = {
  server = server_params(),
  client = client_params(),
  after_client = function(conn)
    print_info(conn)
    local cert = conn:getpeercertificate()
    out("signature", cert and cert:getsignaturename())
    out("finished-len", #(conn:getfinished() or ""))
    local ekm = conn:exportkeyingmaterial("EXPORTER-sslctx-test", 32, "ctx")
    conn:send(hex(conn:getfinished()) .. " " .. hex(conn:getpeerfinished()) .. " " .. hex(ekm) .. "\n")
    out("reply", conn:receive("*l"))
  end,
  after_server = function(conn)
    print_info(conn)
    local line = conn:receive("*l") or ""
    local cf, sf, cekm = line:match("^(%x+) (%x+) (%x+)$")
    out("peer-finished-matches", cf == hex(conn:getpeerfinished()))
    out("finished-matches", sf == hex(conn:getfinished()))
    out("ekm-matches", cekm == hex(conn:exportkeyingmaterial("EXPORTER-sslctx-test", 32, "ctx")))
    out("ekm-no-context-differs",
        cekm ~= hex(conn:exportkeyingmaterial("EXPORTER-sslctx-test", 32)))
    conn:send("done\n")
  end,
}

CASES.tls12 = {
  server = server_params{ protocol = "tlsv1_2" },
  client = client_params{ protocol = "tlsv1_2" },
  after_client = function(conn)
    print_info(conn)
    out("finished-len", #(conn:getfinished() or ""))
  end,
}

CASES.want = {
  server = server_params(),
  client = client_params(),
  nonblocking = true,
  after_client = function(conn)
    local data, err = conn:receive("*l")     -- nothing sent yet: would block
    out("early-receive", tostring(data) .. " " .. tostring(err))
    conn:send("ping\n")
    for _ = 1, 200 do
      data, err = conn:receive("*l")
      if data or (err ~= "wantread" and err ~= "wantwrite") then break end
      socket.select({ conn }, nil, 1)
    end
    out("reply", data or err)
  end,
  after_server = function(conn)
    local data, err
    for _ = 1, 200 do
      data, err = conn:receive("*l")
      if data or (err ~= "wantread" and err ~= "wantwrite") then break end
      socket.select({ conn }, nil, 1)
    end
    out("got", data or err)
    conn:send("pong\n")
  end,
}

CASES.alpn = {
  server = server_params{ alpn = function(offered)
    out("offered", table.concat(offered, ","))
    return "http/1.1"
  end },
  client = client_params{ alpn = { "h2", "http/1.1" } },
  after_client = function(conn) out("alpn", conn:getalpn()) end,
  after_server = function(conn) out("alpn", conn:getalpn()) end,
}

-- sni: a server map; the client names the second certificate's host.
local function sni_case(name, strict)
  return {
    server = server_params(),
    sni_map = true, strict = strict,
    client = client_params(),
    client_sni = name,
    after_client = function(conn)
      local cert = conn:getpeercertificate()
      out("peer-cn", cert and cert:subject()[1].value)
    end,
    after_server = function(conn) out("sniname", conn:getsniname()) end,
  }
end
CASES.sni = sni_case("wrong.example", false)
CASES.sni_default = sni_case("other.example", false)
CASES.sni_strict = sni_case("other.example", true)

-- verify: a server certificate made for clients (purpose clientAuth only).
local function purpose_case(verifyext)
  return {
    server = server_params{ key = file("client.key"), certificate = file("client-chain.pem") },
    client = client_params{ verify = "peer", cafile = file("ca.pem"), verifyext = verifyext },
    after_client = function(conn)
      local ok, errs = conn:getpeerverification()
      out("verification", ok)
      if type(errs) == "table" then
        for depth, list in pairs(errs) do out("verification-error", depth .. " " .. table.concat(list, ";")) end
      elseif errs then
        out("verification-reason", errs)
      end
    end,
  }
end
CASES.purpose = purpose_case(nil)
CASES.ignore_purpose = purpose_case({ "lsec_ignore_purpose" })
CASES.ignore_purpose_continue = purpose_case({ "lsec_ignore_purpose", "lsec_continue" })

CASES.dhparam = {
  server = server_params{
    protocol = "tlsv1_2", key = file("rsa-server.key"), certificate = file("rsa-server-chain.pem"),
    ciphers = "DHE-RSA-AES128-GCM-SHA256",
    dhparam = function(export, keylength)
      out("dhparam-called", true)
      local f = assert(io.open(file("dh2048.pem")))
      local pem = f:read("*a")
      f:close()
      return pem, export, keylength
    end,
  },
  client = client_params{ protocol = "tlsv1_2", ciphers = "DHE-RSA-AES128-GCM-SHA256" },
  after_client = print_info,
}

-- DANE-EE(3) SPKI(1) SHA-256(1): the server is authenticated by its key alone (the CA is
-- not trusted); a record for another key fails the handshake.
local function spki_sha256(key)
  return read_cmd("openssl pkey -in '" .. key .. "' -pubout -outform DER 2>/dev/null | " ..
                  "openssl dgst -sha256 -binary")
end
local function dane_case(keyfile)
  return {
    server = server_params(),
    client = client_params{ verify = "peer", cafile = file("other-ca.pem"), dane = true },
    dane = function(conn)
      out("setdane", conn:setdane("localhost"))
      out("settlsa", conn:settlsa(3, 1, 1, spki_sha256(file(keyfile))))
    end,
  }
end
CASES.dane = dane_case("server.key")
CASES.dane_mismatch = dane_case("client.key")

-- ---------------------------------------------------------------------------

local c = CASES[case] or error("unknown case " .. tostring(case))

if role == "server" then
  local srv = assert(socket.bind("127.0.0.1", 0))
  srv:settimeout(20)
  print("server PORT " .. select(2, srv:getsockname()))
  io.stdout:flush()
  local ctx = assert(ssl.newcontext(c.server))
  local tcp = assert(srv:accept())
  tcp:settimeout(20)
  local conn = assert(ssl.wrap(tcp, ctx))
  if c.sni_map then
    local other = assert(ssl.newcontext(server_params{ key = file("wronghost.key"),
                                                       certificate = file("wronghost-chain.pem") }))
    conn:sni({ ["wrong.example"] = other }, c.strict)
  end
  if c.nonblocking then
    conn:settimeout(0)
    socket.sleep(0.2)   -- the client's first dohandshake surely finds nothing to read
  end
  if handshake(conn, c.nonblocking) and c.after_server then c.after_server(conn) end
  conn:close()
  srv:close()
else
  local tcp = socket.tcp()
  tcp:settimeout(20)
  assert(tcp:connect("127.0.0.1", port))
  local conn = assert(ssl.wrap(tcp, c.client))
  if c.client_sni then conn:sni(c.client_sni) end
  if c.dane then c.dane(conn) end
  if c.nonblocking then conn:settimeout(0) end
  if handshake(conn, c.nonblocking) and c.after_client then c.after_client(conn) end
  conn:close()
end
