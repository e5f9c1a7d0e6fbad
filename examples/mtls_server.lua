-- mtls_server.lua: a TLS server that requires client certificates, with a Lua verify
-- callback that logs every step of the chain check and rejects revoked serial numbers
-- (a revocation list kept in the program, no CRL).
--
--   lua5.4 examples/mtls_server.lua [--port N] [--host 127.0.0.1]
--          [--cert build/pki/server-chain.pem] [--key build/pki/server.key]
--          [--cafile build/pki/ca.pem] [--revoked-serial HEX]... [--revoked-cert FILE]...
--          [--max-connections N] [--timeout SECONDS]
--
-- Run from the repository after `make` (it finds lua/ and build/<lua>/ from its own path;
-- the defaults are the test PKI in build/pki, made by `make test` or spec/certs/make-pki.sh).
-- With neither --revoked-serial nor --revoked-cert, the serial of build/pki/revoked-client.pem
-- is the one revoked.  --port 0 (the default) picks a free port; the first line printed is
-- "listening on HOST:PORT".  It serves connections one after the other, each bounded by
-- --timeout (default 10 s), and exits after --max-connections (default: never).
--
-- Try it:
--   lua5.4 examples/mtls_server.lua --port 8443 &
--   openssl s_client -connect 127.0.0.1:8443 -CAfile build/pki/ca.pem \
--       -cert build/pki/client.pem -key build/pki/client.key -cert_chain build/pki/int.pem
--   (then type a line: it comes back; "bye" ends the session)
--   ... -cert build/pki/revoked-client.pem -key build/pki/revoked-client.key : rejected
--
-- Log lines (stdout, flushed): "verify: depth=D ok=true|false error=N subject=... serial=..."
-- for each callback call, then "accepted N: <subject>" or "rejected N: <message> (verify
-- code N)", then "closed N".

local here = (arg and arg[0] or ""):match("^(.*)/[^/]*$") or "."
local root = here .. "/.."
local luaname = jit and "luajit" or ("lua" .. _VERSION:match("%d+%.%d+"))
package.path = root .. "/lua/?.lua;" .. root .. "/lua/?/init.lua;" .. package.path
package.cpath = root .. "/build/" .. luaname .. "/?.so;" .. package.cpath

local sslctx = require "sslctx"
local sslsocket = require "sslctx.socket"
local socket = require "socket"

local X509_V_ERR_CERT_REVOKED = 23

local function log(...)
  io.stdout:write(table.concat({ ... }), "\n")
  io.stdout:flush()
end

local function usage(msg)
  if msg then io.stderr:write("mtls_server: ", msg, "\n") end
  io.stderr:write("usage: mtls_server.lua [--port N] [--host ADDR] [--cert FILE] [--key FILE] ",
                  "[--cafile FILE] [--revoked-serial HEX]... [--revoked-cert FILE]... ",
                  "[--max-connections N] [--timeout S]\n")
  os.exit(64)
end

local pki = os.getenv("SSLCTX_PKI_DIR") or (root .. "/build/pki")
local o = {
  host = "127.0.0.1", port = 0, cert = pki .. "/server-chain.pem", key = pki .. "/server.key",
  cafile = pki .. "/ca.pem", timeout = 10, serials = {}, certs = {},
}
local args = arg or {}
local i = 1
while i <= #args do
  local a = args[i]
  local function value()
    i = i + 1
    if args[i] == nil then usage(a .. " needs a value") end
    return args[i]
  end
  if a == "--port" then o.port = tonumber(value()) or usage("--port needs a number")
  elseif a == "--host" then o.host = value()
  elseif a == "--cert" then o.cert = value()
  elseif a == "--key" then o.key = value()
  elseif a == "--cafile" then o.cafile = value()
  elseif a == "--revoked-serial" then o.serials[#o.serials + 1] = value():upper()
  elseif a == "--revoked-cert" then o.certs[#o.certs + 1] = value()
  elseif a == "--max-connections" then o.max = tonumber(value()) or usage("--max-connections needs a number")
  elseif a == "--timeout" then o.timeout = tonumber(value()) or usage("--timeout needs a number")
  elseif a == "-h" or a == "--help" then usage()
  else usage("unknown argument " .. a) end
  i = i + 1
end

local function read_file(path)
  local f, err = io.open(path, "rb")
  if not f then return nil, err end
  local s = f:read("*a")
  f:close()
  return s
end

-- The revocation list: serial numbers as `openssl x509 -serial` prints them.
local revoked = {}
if #o.serials == 0 and #o.certs == 0 then o.certs[1] = pki .. "/revoked-client.pem" end
for _, s in ipairs(o.serials) do revoked[s] = true end
for _, path in ipairs(o.certs) do
  local pem, err = read_file(path)
  if not pem then usage("--revoked-cert: " .. tostring(err)) end
  revoked[sslctx.x509(pem):serial()] = true
end
for s in pairs(revoked) do log("revoked serial ", s) end

-- Called by OpenSSL for each certificate of the client's chain, root first, and once more
-- for each error.  nil keeps OpenSSL's verdict; false rejects this step.
local function verify(ok, store)
  local cert = store:cert()
  local depth = store:depth()
  log(("verify: depth=%d ok=%s error=%d subject=%s serial=%s"):format(
    depth, tostring(ok), store:error(), cert and cert:subject() or "?", cert and cert:serial() or "?"))
  if ok and depth == 0 and cert and revoked[cert:serial()] then
    store:set_error(X509_V_ERR_CERT_REVOKED)
    log("verify: serial ", cert:serial(), " is revoked")
    return false
  end
  return nil
end

local ctx = assert(sslctx.new({
  side = "server",
  certificate = o.cert,
  key = o.key,
  ca_file = o.cafile,
  verify = "require",            -- a certificate must be sent, and must verify
  verify_callback = verify,
}))

local server = assert(socket.bind(o.host, o.port))
local _, port = server:getsockname()
log("listening on ", o.host, ":", tostring(port))

local function serve(n, client)
  local s = sslsocket.wrap(client, ctx)
  s:settimeout(o.timeout, "t")   -- the whole session is bounded
  local ok, msg = s:dohandshake()
  local conn = s:connection()
  if not ok then
    local code = conn:verify_result()
    log(("rejected %d: %s (verify code %d)"):format(n, tostring(msg), code))
    s:close()
    return
  end
  local subject = conn:peer_certificate():subject()
  log(("accepted %d: %s (%s, resumed %s)"):format(n, subject, conn:version(), tostring(conn:session_reused())))
  s:send("hello " .. (subject:match("CN=([^,]+)") or subject) .. "\n")
  for _ = 1, 1000 do
    local line, err = s:receive("*l")
    if not line then
      if err ~= "closed" then log(("session %d: %s"):format(n, tostring(err))) end
      break
    end
    if line == "bye" then
      s:send("bye\n")
      break
    end
    s:send(line .. "\n")
  end
  s:close()
  log(("closed %d"):format(n))
end

local n = 0
while not o.max or n < o.max do
  local client = server:accept()
  if client then
    n = n + 1
    local okc, err = pcall(serve, n, client)
    if not okc then
      log(("error %d: %s"):format(n, tostring(err)))
      pcall(client.close, client)
    end
  end
end
server:close()
