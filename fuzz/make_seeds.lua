-- fuzz/make_seeds.lua OUTDIR [--public-only]: seed inputs for the fuzz targets, made with the
-- plain build of sslctx and the spec PKI (build/pki) at run time, in each target's input
-- format (see the target's header).  scripts/fuzz.sh runs it into build/fuzz/seeds; the
-- committed fuzz/corpus/ was made with --public-only (no private key, encrypted or not, is
-- ever written there: key-bearing seeds exist only under build/).
--
--   LUA_PATH='lua/?.lua;lua/?/init.lua;spec/?.lua;;' LUA_CPATH='build/lua5.4/?.so;;' \
--     lua5.4 fuzz/make_seeds.lua build/fuzz/seeds

local helper = require "helper"
local sslctx = require "sslctx"

local out = assert(arg[1], "usage: make_seeds.lua OUTDIR [--public-only]")
local public_only = arg[2] == "--public-only"
local count = 0

local function write(target, name, bytes)
  os.execute("mkdir -p " .. helper.sh_quote(out .. "/" .. target))
  local f = assert(io.open(out .. "/" .. target .. "/" .. name, "wb"))
  f:write(bytes)
  f:close()
  count = count + 1
end

local function u16(n) return string.char(math.floor(n / 256) % 256, n % 256) end
local function frames(flags, list)
  local parts = { string.char(flags) }
  for _, f in ipairs(list) do
    while #f > 0 do   -- frames of at most 65535 bytes
      local piece = f:sub(1, 65535)
      f = f:sub(65536)
      parts[#parts + 1] = u16(#piece) .. piece
    end
  end
  return table.concat(parts)
end

-- ---- handshakes: record what each side sends, flight by flight -------------------------

local function record(version, copts, sopts, client_cert)
  local cctx = helper.client_ctx({ max_version = version, alpn = { "h2", "http/1.1" },
                                   certificate = client_cert and helper.pki("client-chain.pem") or nil,
                                   key = client_cert and helper.pki("client.key") or nil })
  local sctx = helper.server_ctx(helper.merge({ max_version = version }, sopts))
  sctx:set_alpn_select({ "h2" })
  local c = cctx:new_connection(helper.merge({ hostname = "localhost" }, copts))
  local s = sctx:new_connection()
  local cflights, sflights = {}, {}
  for _ = 1, 10 do
    c:handshake()
    local cout = c:drain()
    if #cout > 0 then cflights[#cflights + 1] = cout; s:feed(cout) end
    s:handshake()
    local sout = s:drain()
    if #sout > 0 then sflights[#sflights + 1] = sout; c:feed(sout) end
  end
  -- application data both ways, so that the seeds reach read()
  c:write("ping")
  local cdata = c:drain()
  if #cdata > 0 then cflights[#cflights + 1] = cdata end
  s:write("pong")
  local sdata = s:drain()
  if #sdata > 0 then sflights[#sflights + 1] = sdata end
  c:close(); s:close()
  return cflights, sflights
end

local variants = {
  { "tls13", "tls1.3", {}, {}, false, 0 },
  { "tls12", "tls1.2", {}, {}, false, 8 },
  { "tls13-mtls", "tls1.3", {}, { verify = "require" }, true, 0 },
  { "tls12-mtls", "tls1.2", {}, { verify = "require" }, true, 8 },
  { "tls13-ip", "tls1.3", { hostname = "127.0.0.1" }, {}, false, 16 },
}
for _, v in ipairs(variants) do
  local name, version, copts, sopts, cert, flags = v[1], v[2], v[3], v[4], v[5], v[6]
  local cf, sf = record(version, copts, sopts, cert)
  write("handshake_server", name, frames(flags, cf))
  write("handshake_server", name .. "-hello-only", frames(flags, { cf[1] }))
  write("handshake_client", name, frames(flags, sf))
  write("handshake_client", name .. "-first-flight", frames(flags + 1, { sf[1] }))
end

-- ---- loading: [how][wrap][pwmode] + body (fuzz/fuzz_load.c) ----------------------------

local function load_seed(how, wrap, pw, body) return string.char(how, wrap, pw) .. body end
local cert_pem = helper.read("server.pem")
local crl_pem = helper.read("crl.pem")
local x = assert(sslctx.x509(cert_pem))
local crl = assert(sslctx.crl(crl_pem))
local pub = x:public_key()
write("load", "x509-der", load_seed(0, 0, 0, x:der()))
write("load", "x509-pem", load_seed(0, 0, 0, cert_pem))
write("load", "x509-chain-pem", load_seed(1, 0, 0, helper.read("server-chain.pem")))
write("load", "x509-der-wrapped", load_seed(0, 1, 0, x:der()))
write("load", "crl-der", load_seed(3, 0, 0, crl:der()))
write("load", "crl-pem", load_seed(3, 0, 0, crl_pem))
write("load", "crl-der-wrapped", load_seed(11, 1 + 4 * 2, 0, crl:der()))
write("load", "pubkey-der", load_seed(5, 0, 0, pub:der(true)))
write("load", "pubkey-pem", load_seed(5, 0, 0, pub:pem(true)))
write("load", "use-certificate", load_seed(9, 1, 0, x:der()))
write("load", "ca", load_seed(14, 1, 0, x:der()))
if not public_only then   -- a session carries its master secret: not committed
  local cctx, sctx = helper.contexts({ client = { max_version = "tls1.2" } })
  local c, s = helper.connected(cctx, sctx)
  local sess = c:session()
  if sess then write("load", "session-der", load_seed(8, 0, 0, sess:der())) end
  c:close(); s:close()
end
if not public_only then
  local key_pem = helper.read("server.key")
  local k = assert(sslctx.pkey(key_pem))
  write("load", "key-pem", load_seed(5, 0, 0, key_pem))
  write("load", "key-der", load_seed(6, 0, 0, k:der()))
  write("load", "key-der-wrapped", load_seed(12, 1 + 4 * 3, 0, k:der()))
  write("load", "key-encrypted-pem", load_seed(7, 0, 1, helper.read("server-enc.key")))
  write("load", "key-encrypted-fn", load_seed(7, 0, 2, helper.read("server-enc.key")))
end

-- ---- mode: [target][side form] + mode (fuzz/fuzz_mode.c) --------------------------------

write("mode", "int-always", string.char(0, 0, 1, 113))
write("mode", "int-huge", string.char(1, 2, 0) .. string.rep("\255", 8))
write("mode", "float-nan", string.char(0, 0, 2) .. "\0\0\0\0\0\0\248\127")
write("mode", "float-1e300", string.char(2, 0, 2) .. "\125\195\148\37\173\73\178\127")
write("mode", "preset", string.char(0, 0, 5, 3))
write("mode", "preset-client-once", string.char(1, 2, 5, 2))
write("mode", "table", string.char(0, 0, 6, 3, 0, 0, 1, 1, 2, 2, 0))
write("mode", "table-unknown", string.char(0, 0, 6, 2, 0, 9, 3, 5) .. "hello" .. string.char(0))
write("mode", "new-both", string.char(6, 0, 5, 1, 5, 3))

-- ---- api: a program (fuzz/api_driver.lua) ------------------------------------------------

-- op 0 (method) on object 3 (server conn), op 6 (pump) between conns, etc.
write("api", "pump", string.char(6, 0, 1, 6, 1, 0, 0, 3, 5, 0, 0, 6, 0, 1))
write("api", "calls", string.char(0, 0, 3, 2, 7, 10, 1, 1, 0, 2, 1, 9, 20, 4, 3, 2, 1, 0))
write("api", "module-new", string.char(4, 0, 1, 14, 4, 0, 7, 6, 5, 1, 17, 3))

print(("make_seeds: %d seeds in %s%s"):format(count, out, public_only and " (public only)" or ""))
