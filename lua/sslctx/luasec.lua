--- sslctx.luasec: LuaSec's module shape (`ssl.newcontext`, `ssl.wrap`, `ssl.loadcertificate`)
-- over sslctx, so that a program written for LuaSec runs on sslctx by changing one require:
--
--   local ssl = require "sslctx.luasec"        -- was: require "ssl"
--
-- or, for code that requires "ssl" itself (ssl.https, copas):
--
--   package.loaded.ssl = require "sslctx.luasec"
--
-- What differs from LuaSec, on purpose (doc/migrating-from-luasec.md has the full list):
--   * A client verifies the server by default: "always", against the system's roots unless
--     cafile/capath are given, and checks the name given to conn:sni(name) or params.hostname.
--     Explicit params are honoured: verify = "none" turns verification off; verify = "peer"
--     without any name checks the chain only (what LuaSec's "peer" does).
--   * A verifying client with the default verification and no name to check fails its
--     handshake with a message saying so, instead of accepting any certificate.
--   * Extra params: hostname (client), verify_callback (a sslctx verify callback, see
--     doc/callbacks.md).
--   * A stream cut without close_notify is reported as "eof: ...", not as "closed".
--   * TLS 1.0 and 1.1 are refused (protocol = "tlsv1"/"tlsv1_1": nil, message).
--   * Whatever the facade cannot honour is refused, never dropped: psk, the OpenSSL
--     options sslctx does not offer (nil, message from newcontext).
--
-- Built on sslctx.socket (LuaSocket streams); see that module for the stream underneath.

local sslctx = require "sslctx"
local sslsocket = require "sslctx.socket"

local type, ipairs, pcall, tostring, tonumber, setmetatable, error =
      type, ipairs, pcall, tostring, tonumber, setmetatable, error
local concat = table.concat

local M = {
  _VERSION = "sslctx.luasec 0.1 (LuaSec 1.2 API)",
  _COPYRIGHT = "sslctx",
}

-- What a context was made from: facade-level facts that sslctx objects do not carry.
-- Weak keys: the entry goes with the context.
local meta_of = setmetatable({}, { __mode = "k" })

-- ---------------------------------------------------------------------------
-- helpers

local function strip_position(msg)
  msg = tostring(msg)
  -- "bad argument #1 to 'new' (option 'ciphers': invalid ...)" -> the part in parentheses
  local inner = msg:match("^bad argument #%d+ to '[^']*' %((.*)%)$")
  return inner or (msg:gsub("^[^:]+:%d+: ", ""))
end

-- Calls f(...) and turns a raised error into nil, message (LuaSec returns, not raises).
local function pass(ok, ...)
  if not ok then return nil, strip_position((...)) end
  return ...
end
local function protect(f, ...)
  return pass(pcall(f, ...))
end

local function as_list(v)
  if type(v) == "table" then return v end
  return { v }
end

-- ---------------------------------------------------------------------------
-- params -> sslctx options

local PROTOCOLS = {
  any = {},
  tlsv1_2 = { min = "tls1.2", max = "tls1.2" },
  tlsv1_3 = { min = "tls1.3", max = "tls1.3" },
}

-- LuaSec option names that sslctx honours by what it is: it never speaks DTLS, SSL 3, TLS
-- 1.0 or 1.1, so the options turning those off hold already.
local IGNORED_OPTIONS = {
  no_ssl_mask = true, no_dtls_mask = true, no_dtlsv1 = true, no_dtlsv1_2 = true,
}
-- LuaSec option names for OpenSSL behaviours sslctx does not offer: refused.
local UNSUPPORTED_OPTIONS = {
  cryptopro_tlsext_bug = true, cisco_anyconnect = true, allow_no_dhe_kex = true,
  disable_tlsext_ca_names = true,
}

-- LuaSec's verify words -> a sslctx mode for the side.  Returns mode, or nil, message.
local function parse_verify(v, side)
  local peer, fail, once = false, false, false
  for _, w in ipairs(as_list(v)) do
    if w == "peer" then peer = true
    elseif w == "fail_if_no_peer_cert" then fail = true
    elseif w == "client_once" then once = true
    elseif w ~= "none" then return nil, "invalid verify option (" .. tostring(w) .. ")" end
  end
  if side == "client" then
    -- OpenSSL's client verifies when any flag is set; the server-only flags mean nothing.
    return (peer or fail or once) and "always" or "never"
  end
  if not peer then return "never" end   -- OpenSSL ignores the others without "peer"
  local kw = { "verify_peer" }
  if fail then kw[#kw + 1] = "fail_if_no_peer_cert" end
  if once then kw[#kw + 1] = "verify_client_once" end
  return kw
end

-- verifyext words: lsec_continue (record verification errors, go on), lsec_ignore_purpose
-- (a certificate's unsuitable purpose is recorded but not fatal), crl_check,
-- crl_check_chain.
local function parse_verifyext(v)
  local r = { flags = {} }
  for _, w in ipairs(as_list(v)) do
    if w == "lsec_continue" then r.continue = true
    elseif w == "lsec_ignore_purpose" then r.ignore_purpose = true
    elseif w == "crl_check" then r.flags[#r.flags + 1] = "crl_check"
    elseif w == "crl_check_chain" then r.flags[#r.flags + 1] = "crl_check_all"
    else
      return nil, "invalid verifyext option (" .. tostring(w) .. ")"
    end
  end
  return r
end

local X509_V_ERR_INVALID_PURPOSE = 26

-- LuaSec's lsec_ignore_purpose as an sslctx verify callback: the purpose error passes (the
-- client's getpeerverification still reports it), anything else goes to the caller's
-- callback or keeps OpenSSL's verdict.
local function ignore_purpose(user)
  return function(ok, store)
    if not ok and store:error() == X509_V_ERR_INVALID_PURPOSE then return true end
    if user then return user(ok, store) end
    return nil
  end
end

-- params.dane: true, or LuaSec's list of flags ("no_ee_namechecks").
local function parse_dane(v)
  if v == true then return {} end
  if type(v) ~= "table" then return nil, "invalid DANE parameter" end
  for _, f in ipairs(v) do
    if f ~= "no_ee_namechecks" then return nil, "invalid DANE flag (" .. tostring(f) .. ")" end
  end
  return v
end

-- A server's ALPN choice from LuaSec's callback result (a name or a list, in preference
-- order), restricted to what the client offered.
local function pick_alpn(result, offered)
  local offer = {}
  for _, p in ipairs(offered) do offer[p] = true end
  for _, p in ipairs(as_list(result)) do
    if type(p) == "string" and offer[p] then return p end
  end
  return nil
end

--- newcontext(params) -> ctx | nil, message
-- params as LuaSec's (mode, protocol, key, certificate, certificates, password, cafile,
-- capath, verify, options, ciphers, ciphersuites, depth, alpn, dhparam, curve, curveslist,
-- verifyext) plus hostname and verify_callback.  The context is an sslctx context.
function M.newcontext(cfg)
  if type(cfg) ~= "table" then
    error("bad argument #1 to 'newcontext' (table expected, got " .. type(cfg) .. ")", 2)
  end
  local side = cfg.mode
  if side ~= "client" and side ~= "server" then
    return nil, "invalid mode (" .. tostring(side) .. ")"
  end
  if cfg.psk then return nil, "params.psk is not supported by sslctx.luasec" end
  local o = { side = side }
  local meta = { side = side, verify_explicit = cfg.verify ~= nil }
  if cfg.dane then
    local flags, msg = parse_dane(cfg.dane)
    if not flags then return nil, msg end
    meta.dane = flags
  end

  local proto = PROTOCOLS[cfg.protocol or "any"]
  if not proto then
    if cfg.protocol == "tlsv1" or cfg.protocol == "tlsv1_1" then
      return nil, "protocol " .. cfg.protocol .. " is not supported (sslctx speaks TLS 1.2 and 1.3)"
    end
    return nil, "invalid protocol (" .. tostring(cfg.protocol) .. ")"
  end
  o.min_version, o.max_version = proto.min, proto.max

  -- certificate and key: the first pair at creation, any others added afterwards
  local pairs_ = cfg.certificates or
                 { { certificate = cfg.certificate, key = cfg.key, password = cfg.password } }
  local first = pairs_[1] or {}
  if first.password ~= nil and type(first.password) ~= "string" and
     type(first.password) ~= "function" then
    return nil, "invalid password type"
  end
  o.certificate, o.key, o.password = first.certificate, first.key, first.password

  if cfg.cafile then o.ca_file = cfg.cafile end
  if cfg.capath then o.ca_path = cfg.capath end

  if cfg.verify ~= nil then
    local mode, msg = parse_verify(cfg.verify, side)
    if not mode then return nil, msg end
    o.verify = mode
  end
  local ext
  if cfg.verifyext ~= nil then
    local msg
    ext, msg = parse_verifyext(cfg.verifyext)
    if not ext then return nil, msg end
    if #ext.flags > 0 then o.verify_params = { flags = ext.flags } end
    if ext.continue then
      meta.continue = true
      -- a client goes on whatever the verdict (and records it); a server connection gets
      -- soft fail when it is wrapped
      if side == "client" then o.verify = "never" end
    end
  end
  if cfg.verify_callback ~= nil then o.verify_callback = cfg.verify_callback end
  if ext and ext.ignore_purpose then
    if o.verify_callback ~= nil and type(o.verify_callback) ~= "function" then
      return nil, "verifyext lsec_ignore_purpose needs a Lua verify_callback (or none)"
    end
    o.verify_callback = ignore_purpose(o.verify_callback)
  end
  if cfg.depth ~= nil then o.verify_depth = cfg.depth end

  if cfg.options ~= nil then
    local list = {}
    for _, name in ipairs(as_list(cfg.options)) do
      if UNSUPPORTED_OPTIONS[name] then
        return nil, "option " .. name .. " is not supported by sslctx.luasec"
      end
      if not IGNORED_OPTIONS[name] then list[#list + 1] = name end
    end
    o.options = list
  end
  if cfg.ciphers then o.ciphers = cfg.ciphers end
  if cfg.ciphersuites then o.ciphersuites = cfg.ciphersuites end
  local groups = cfg.curveslist or cfg.curve
  if groups then o.groups = groups end

  if cfg.dhparam ~= nil then
    if type(cfg.dhparam) == "function" then
      -- LuaSec calls it per handshake with (export, keylength); sslctx sets DH once.
      local ok, pem = pcall(cfg.dhparam, false, 2048)
      if not ok then return nil, "dhparam: " .. tostring(pem) end
      if type(pem) == "string" then o.dh = pem end
    elseif type(cfg.dhparam) == "string" then
      o.dh = cfg.dhparam   -- an extension: a file name or PEM text
    else
      return nil, "invalid DH parameter type"
    end
  end

  if side == "client" and cfg.alpn ~= nil then
    if type(cfg.alpn) ~= "string" and type(cfg.alpn) ~= "table" then
      return nil, "invalid ALPN parameter"
    end
    o.alpn = as_list(cfg.alpn)
  end

  if cfg.hostname ~= nil then
    if side ~= "client" then return nil, "params.hostname is for clients" end
    if type(cfg.hostname) ~= "string" or cfg.hostname == "" then
      return nil, "params.hostname must be a non-empty string"
    end
    meta.hostname = cfg.hostname
  end

  local ctx, msg = protect(sslctx.new, o)
  if not ctx then
    -- LuaSec's wording for the common case, so that callers matching on it still work
    local opt = tostring(msg):match("unknown option keyword '([^']*)'")
    if opt then return nil, "invalid option (" .. opt .. ")" end
    return nil, msg
  end

  for i = 2, #pairs_ do
    local p = pairs_[i]
    local ok, err
    if p.certificate then
      ok, err = protect(ctx.use_certificate, ctx, p.certificate)
      if not ok then return nil, err end
    end
    if p.key then
      ok, err = protect(ctx.use_private_key, ctx, p.key, p.password)
      if not ok then return nil, err end
    end
  end

  if side == "server" and cfg.alpn ~= nil then
    local a = cfg.alpn
    local ok, err
    if type(a) == "function" then
      ok, err = protect(ctx.set_alpn_select, ctx, function(offered)
        return pick_alpn(a(offered), offered)
      end)
    elseif type(a) == "table" or type(a) == "string" then
      ok, err = protect(ctx.set_alpn_select, ctx, as_list(a))
    else
      return nil, "invalid ALPN parameter"
    end
    if ok == nil and err then return nil, err end
  end

  local _, mode = ctx:get_verification_mode(side)
  meta.verifies = side == "client" and mode ~= 0
  meta_of[ctx] = meta
  return ctx
end

-- ---------------------------------------------------------------------------
-- certificates: LuaSec's x509 methods over sslctx.x509

local Cert = {}
Cert.__index = Cert

local function wrap_cert(x)
  if x == nil then return nil end
  return setmetatable({ x = x }, Cert)
end

local NAMES = {   -- RFC 2253 short name -> OID, LuaSec's (OpenSSL's long) name
  CN = { "2.5.4.3", "commonName" }, C = { "2.5.4.6", "countryName" },
  L = { "2.5.4.7", "localityName" }, ST = { "2.5.4.8", "stateOrProvinceName" },
  O = { "2.5.4.10", "organizationName" }, OU = { "2.5.4.11", "organizationalUnitName" },
  STREET = { "2.5.4.9", "streetAddress" }, serialNumber = { "2.5.4.5", "serialNumber" },
  title = { "2.5.4.12", "title" }, GN = { "2.5.4.42", "givenName" },
  SN = { "2.5.4.4", "surname" }, postalCode = { "2.5.4.17", "postalCode" },
  emailAddress = { "1.2.840.113549.1.9.1", "emailAddress" },
  DC = { "0.9.2342.19200300.100.1.25", "domainComponent" },
  UID = { "0.9.2342.19200300.100.1.1", "userId" },
  dnQualifier = { "2.5.4.46", "dnQualifier" }, pseudonym = { "2.5.4.65", "pseudonym" },
  businessCategory = { "2.5.4.15", "businessCategory" },
}

-- Splits an RFC 2253 name into LuaSec's list of {oid, name, value}, in the certificate's
-- order (RFC 2253 writes the last RDN first).
local function parse_dn(dn)
  local entries, cur, i, n = {}, {}, 1, #dn
  local function flush()
    local text = concat(cur)
    cur = {}
    local key, value = text:match("^([^=]+)=(.*)$")
    if key then
      local known = NAMES[key]
      entries[#entries + 1] = {
        oid = known and known[1] or key, name = known and known[2] or key, value = value,
      }
    end
  end
  while i <= n do
    local ch = dn:sub(i, i)
    if ch == "\\" and i < n then
      local hex = dn:sub(i + 1, i + 2)
      if hex:match("^%x%x$") then
        cur[#cur + 1] = string.char(tonumber(hex, 16))
        i = i + 3
      else
        cur[#cur + 1] = dn:sub(i + 1, i + 1)
        i = i + 2
      end
    elseif ch == "," or ch == "+" then
      flush()
      i = i + 1
    else
      cur[#cur + 1] = ch
      i = i + 1
    end
  end
  flush()
  local r = {}
  for k = #entries, 1, -1 do r[#r + 1] = entries[k] end
  return r
end

local MONTHS = { "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec" }

-- ASN1_TIME_print's format, as LuaSec returns it: "Nov  7 21:51:44 2036 GMT".
local function asn1_time(t)
  local d = os.date("!*t", t)
  return ("%s %2d %02d:%02d:%02d %d GMT"):format(MONTHS[d.month], d.day, d.hour, d.min, d.sec,
                                                 d.year)
end

function Cert:pem() return self.x:pem() end
function Cert:digest(alg) return self.x:fingerprint(alg or "sha1") end
function Cert:serial() return self.x:serial() end
function Cert:notbefore() return asn1_time(self.x:not_before()) end
function Cert:notafter() return asn1_time(self.x:not_after()) end
function Cert:subject() return parse_dn(self.x:subject()) end
function Cert:issuer() return parse_dn(self.x:issuer()) end
function Cert:validat(t)
  return self.x:not_before() <= t and t <= self.x:not_after()
end
function Cert:pubkey()
  local k = self.x:public_key()
  return k:pem(true), k:type(), k:bits()
end
-- LuaSec's issued(ca, ...) checks signatures; this checks names and key identifiers.
function Cert:issued(ca)
  local x = type(ca) == "table" and ca.x or ca
  return self.x:issued_by(x)
end
function Cert:checkhost(name) return self.x:check_host(name) end
function Cert:getsignaturename() return self.x:signature_name() end
function Cert:setencode() return true end
-- Only the subjectAltName extension, in LuaSec's layout.
function Cert:extensions()
  local san = self.x:subject_alt_names()
  local e = { name = "X509v3 Subject Alternative Name" }
  local any = false
  local function put(key, list)
    if #list > 0 then e[key] = list; any = true end
  end
  put("dNSName", san.dns)
  put("iPAddress", san.ip)
  put("rfc822Name", san.email)
  put("uniformResourceIdentifier", san.uri)
  if not any then return {} end
  return { ["2.5.29.17"] = e }
end
--- x509() -> the sslctx.x509 object underneath (extension)
function Cert:x509() return self.x end
Cert.__tostring = function(self) return "X509 certificate: " .. tostring(self.x) end
Cert.__eq = function(a, b) return a.x == b.x end

--- loadcertificate(pem) -> certificate | nil, message
function M.loadcertificate(pem)
  local x, msg = sslctx.x509(pem)
  if not x then return nil, msg end
  return wrap_cert(x)
end

-- ---------------------------------------------------------------------------
-- connections

local Conn = {}

-- LuaSec reports every would-block of a TLS socket as "wantread" / "wantwrite".
local function want_word(stream)
  return stream:want() == "write" and "wantwrite" or "wantread"
end

-- The sslctx.socket stream, made at first use so that sni() can still name the server.
local function stream_of(self)
  if self.stream then return self.stream end
  if self.failed then return nil, self.failed end
  local meta = self.meta
  local opts = {}
  if meta.side == "client" then
    local name = self.name or meta.hostname
    if name then
      opts.hostname = name
    elseif meta.verifies then
      if meta.verify_explicit then
        opts.verify_hostname = false   -- LuaSec's "peer": the chain only
      else
        self.failed = "sslctx.luasec: no server name to verify: call conn:sni(name) or set " ..
                      "params.hostname (or params.verify = \"none\")"
        return nil, self.failed
      end
    end
  end
  local stream, msg = protect(sslsocket.wrap, self.sock, self.ctx, opts)
  if not stream then
    self.failed = msg
    return nil, msg
  end
  for _, t in ipairs(self.timeouts) do stream:settimeout(t[1], t[2]) end
  if meta.side == "server" and meta.continue then
    stream:connection():set_soft_fail(true)
  end
  self.stream = stream
  return stream
end

--- dohandshake() -> true | false, message ("wantread"/"wantwrite" on a timeout), kind
function Conn:dohandshake()
  local s, msg = stream_of(self)
  if not s then return false, msg end
  local ok, kind
  ok, msg, kind = s:dohandshake()
  if ok then return true end
  if kind == "timeout" then return false, want_word(s) end
  self.hs_failed = true
  return false, msg, kind
end

--- send(data [, i [, j]]) -> last index | nil, err, last index sent
function Conn:send(data, i, j)
  local s, msg = stream_of(self)
  if not s then return nil, msg, (i or 1) - 1 end
  local n, err, last, kind = s:send(data, i, j)
  if n then return n end
  if kind == "timeout" then err = want_word(s) end
  return nil, err, last
end

--- receive([pattern [, prefix]]) -> data | nil, err, partial
function Conn:receive(pattern, prefix)
  local s, msg = stream_of(self)
  if not s then return nil, msg, prefix or "" end
  local data, err, partial, kind = s:receive(pattern, prefix)
  if data then return data end
  if kind == "timeout" then err = want_word(s) end
  return nil, err, partial
end

--- settimeout(t [, mode]) -> 1
function Conn:settimeout(t, mode)
  if self.stream then return self.stream:settimeout(t, mode) end
  self.timeouts[#self.timeouts + 1] = { t, mode }
  return 1
end

--- sni(name): the server name to send, and (unlike LuaSec) to verify (client).
--- sni(map [, strict]): {[name] = context} chosen by the name the client sends; strict
-- fails the handshake for a name not in the map (server).
function Conn:sni(name, strict)
  if self.meta.side == "server" then
    if type(name) ~= "table" then
      error("bad argument #1 to 'sni' (table of server names to contexts expected)", 2)
    end
    local s, msg = stream_of(self)
    if not s then return nil, msg end
    local ok, err = pcall(s.sni, s, name, strict)
    if not ok then error((tostring(err):gsub("^[^:]+:%d+: ", "")), 2) end
    return true
  end
  if type(name) == "table" then error("sni(map) is for server connections", 2) end
  if type(name) ~= "string" or name == "" then
    error("bad argument #1 to 'sni' (non-empty string expected)", 2)
  end
  if self.stream then return self.stream:sni(name) end
  self.name = name
  return true
end

function Conn:close()
  self.closed = true
  if self.stream then
    self.stream:close()
  else
    self.sock:close()
  end
end

function Conn:getfd()
  if self.stream then return self.stream:getfd() end
  if self.closed then return -1 end
  return self.sock:getfd()
end

function Conn:dirty()
  return self.stream ~= nil and self.stream:dirty()
end

function Conn:want()
  if not self.stream or self.hs_failed then return "nothing" end
  return self.stream:want()
end

function Conn:getpeercertificate(n)
  return self.stream and wrap_cert(self.stream:getpeercertificate(n)) or nil
end

function Conn:getpeerchain()
  local chain = self.stream and self.stream:getpeerchain()
  if not chain then return nil end
  local r = {}
  for k, x in ipairs(chain) do r[k] = wrap_cert(x) end
  return r
end

--- getpeerverification() -> true | false, reason: a string, or with verifyext =
-- "lsec_continue" LuaSec's table {[depth + 1] = {error strings}}
function Conn:getpeerverification()
  if not self.stream then return false, "closed" end
  local ok, errs = self.stream:getpeerverification()
  if ok then return true end
  if self.meta.continue then return false, errs end
  local code, str = self.stream:connection():verify_result()
  if code == 0 and type(errs) == "table" then
    -- an error a callback let pass (lsec_ignore_purpose): the deepest-first one recorded
    local depths = {}
    for d in pairs(errs) do depths[#depths + 1] = d end
    table.sort(depths)
    local first = errs[depths[1]]
    if first and first[1] then str = first[1] end
  end
  return false, str
end

local INFO_FIELDS = { "cipher", "protocol", "bits", "algbits", "key", "authentication",
                      "encryption", "mac", "export" }

--- info([field]) -> LuaSec's {cipher, protocol, bits, algbits, key, authentication,
-- encryption, mac, export} or one of them (compression: OpenSSL 3 has none, nil as LuaSec)
function Conn:info(field)
  local s = self.stream
  local i = s and s:info()
  if not i then return nil end
  local t = {}
  for _, k in ipairs(INFO_FIELDS) do t[k] = i[k] end
  if field ~= nil then return t[field] end
  return t
end

--- exportkeyingmaterial(label, n [, context]) -> string | nil, message
function Conn:exportkeyingmaterial(label, n, context)
  if not self.stream then return nil, "closed" end
  local v, msg = self.stream:exportkeyingmaterial(label, n, context)
  return v, msg
end

function Conn:getfinished() return self.stream and self.stream:getfinished() or nil end
function Conn:getpeerfinished() return self.stream and self.stream:getpeerfinished() or nil end

--- setdane(basedomain) -> true | false, message: DANE for this client connection, with
-- params.dane's flags; basedomain is also the name checked when sni() named none.
function Conn:setdane(base)
  if self.meta.side ~= "client" then return false, "DANE is for client connections" end
  if not self.name and not self.stream then self.name = base end
  local s, msg = stream_of(self)
  if not s then return false, msg end
  local ok, err = s:setdane(base, self.meta.dane and #self.meta.dane > 0 and self.meta.dane or nil)
  if not ok then return false, err end
  return true
end

--- settlsa(usage, selector, mtype, data) -> true | false, message
function Conn:settlsa(usage, selector, mtype, data)
  local s = self.stream
  if not s or not s.dane then return false, "DANE is not enabled: call setdane first" end
  local ok, err = s:settlsa(usage, selector, mtype, data)
  if not ok then return false, err end
  return true
end

function Conn:getalpn() return self.stream and self.stream:getalpn() or nil end
function Conn:getsniname() return self.stream and self.stream:getsniname() or nil end

--- connection() -> the sslctx connection underneath (extension), once created
function Conn:connection()
  local s = stream_of(self)
  return s and s:connection() or nil
end

-- LuaSocket passthroughs
for _, name in ipairs({ "getpeername", "getsockname", "setoption", "getoption", "getstats",
                        "setstats" }) do
  Conn[name] = function(self, ...)
    local f = self.sock[name]
    if not f then return nil, name .. " not supported by the wrapped socket" end
    return f(self.sock, ...)
  end
end

local ConnMT = {
  -- a plain method table: ssl.https copies it with pairs(getmetatable(conn).__index)
  __index = Conn,
  __tostring = function(self) return "SSL connection: " .. tostring(self.sock) end,
  __close = function(self) self:close() end,
}

--- wrap(sock, params | ctx) -> connection | nil, message
function M.wrap(sock, cfg)
  if type(sock) ~= "userdata" and type(sock) ~= "table" then
    error("bad argument #1 to 'wrap' (LuaSocket TCP object expected, got " .. type(sock) .. ")", 2)
  end
  local ctx = cfg
  if type(cfg) == "table" then
    local msg
    ctx, msg = M.newcontext(cfg)
    if not ctx then return nil, msg end
  end
  local ok, side = pcall(function() return ctx:side() end)
  if not ok then
    error("bad argument #2 to 'wrap' (params table or context expected, got " .. type(cfg) .. ")", 2)
  end
  local meta = meta_of[ctx]
  if not meta then   -- a context made with sslctx.new: read its facts from it
    local _, mode = ctx:get_verification_mode(side == "both" and "client" or nil)
    meta = { side = side, verifies = side ~= "server" and mode ~= 0, verify_explicit = true }
    if side == "both" then
      error("bad argument #2 to 'wrap' (a 'both' context: use sslctx.socket.wrap with opts.side)", 2)
    end
  end
  return setmetatable({ sock = sock, ctx = ctx, meta = meta, timeouts = {} }, ConnMT)
end

-- ---------------------------------------------------------------------------
-- what LuaSec's ssl.config says, for code that looks

M.config = {
  protocols = { tlsv1_2 = true, tlsv1_3 = true },
  algorithms = { ec = true },
  capabilities = { alpn = true, curves_list = true, dane = { no_ee_namechecks = true } },
}

M.Conn = Conn
M.Cert = Cert
return M
