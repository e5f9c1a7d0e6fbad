-- fuzz/api_driver.lua: the embedded-Lua driver of fuzz_api (fuzz/fuzz_api.c).
--
-- The fuzz input is read as a program: a sequence of operations, each consuming bytes --
-- call a method of a live object (the class's methods are enumerated from the registry at
-- start-up, so methods added later are fuzzed too), call a module function, or pump the
-- handshake between two connections.  Arguments are nil, booleans, integers (any 64-bit
-- value), floats (any bit pattern), keywords of the API, PEM texts, strings from the input,
-- tables (lists, option tables with the API's option names), functions (returning a chosen
-- verdict, raising, returning RETRY, or re-entering the module from inside a callback), live
-- and closed objects, sslctx.KEEP and sslctx.RETRY.  Objects returned by calls join the pool.
--
-- Never generated, by design (trusted input per doc/reference.md, or outside this process):
--   * light userdata other than KEEP/RETRY (C function pointers, SSL pointers: borrow is not
--     called), and symbol names that resolve: every string taken from the input is prefixed
--     with "~x", so it names no symbol, no existing file and no keyword;
--   * the options fd and socket (real descriptors of the fuzzer process).
--
-- RUN(data) raises "INVARIANT: ..." when a call breaks the contract's shape: a raised
-- error that is not a string, or nil, message, kind with a non-string message or unknown kind.

-- The harness (fuzz/common.c) provides these globals; RUN is what it calls.
-- luacheck: globals sslctx CERT_PEM KEY_PEM CRL_PEM RUN

local REG = debug.getregistry()
local KINDS = { want_read = 1, want_write = 1, want_retry_verify = 1, verify = 1, callback = 1,
                closed = 1, eof = 1, ssl = 1, syscall = 1, file = 1, key = 1, timeout = 1 }
local CLASSES = { "sslctx.context", "sslctx.connection", "sslctx.x509", "sslctx.pkey",
                  "sslctx.session", "sslctx.crl", "sslctx.store" }

local function sorted(t)
  local k = {}
  for name, v in pairs(t) do if type(v) == "function" then k[#k + 1] = name end end
  table.sort(k)
  return k
end

local METHODS = {}
for _, class in ipairs(CLASSES) do METHODS[class] = sorted(REG[class].__index) end
local MODULE = {}
for _, name in ipairs(sorted(sslctx)) do
  if name ~= "borrow" then MODULE[#MODULE + 1] = name end
end

local KEYWORDS = {
  "server", "client", "both", "never", "always", "once", "require", "require_once",
  "post_handshake", "require_post_handshake", "verify_peer", "fail_if_no_peer_cert",
  "verify_client_once", "verify_post_handshake", "verify-peer", "tls1.2", "tls1.3", "auto",
  "DEFAULT", "ALL:@SECLEVEL=0", "TLS_AES_128_GCM_SHA256", "X25519:P-256", "localhost",
  "127.0.0.1", "::1", "h2", "http/1.1", "sha256", "sha1", "md5", "crl_check", "crl_check_all",
  "x509_strict", "partial_chain", "trusted_first", "no_check_time", "no_ticket", "all",
  "no_tlsv1_3", "cipher_server_preference", "sslserver", "sslclient", "version", "number",
  "01", "1000", "", "\0",
}
local OPTION_KEYS = {
  -- sslctx.new
  "side", "verify", "verify_callback", "verify_depth", "ca_file", "ca_path", "ca", "client_ca",
  "certificate", "key", "password", "min_version", "max_version", "security_level", "ciphers",
  "ciphersuites", "groups", "alpn", "options", "post_handshake_auth", "session_cache_size",
  "session_tickets", "dh", "verify_params",
  -- new_connection (not fd, socket)
  "close", "session", "buffer_limit", "hostname", "verify_hostname",
  -- set_verify_params, set_trust, set_password_callback
  "time", "flags", "purpose", "depth", "host", "ip", "callback", "client", "server",
  -- an unknown one
  "no_such_option",
}

local pool, closed_pool, data, pos, depth, calls

local function byte()
  local b = data:byte(pos) or 0
  pos = pos + 1
  return b
end

local function bytes(n)
  local s = data:sub(pos, pos + n - 1)
  pos = pos + n
  return s
end

-- A broken invariant is also remembered: inside a callback the error would be swallowed.
local broken
local function broke(msg)
  broken = broken or msg
  error(msg, 0)
end

local function check(what, ok, a, b, c)
  if not ok then
    if type(a) ~= "string" then broke("INVARIANT: " .. what .. " raised a " .. type(a)) end
    return false
  end
  if a == nil and b ~= nil and (type(b) ~= "string" or (c ~= nil and not KINDS[c])) then
    broke("INVARIANT: " .. what .. " returned nil, " .. tostring(b) .. ", " .. tostring(c))
  end
  return true
end

local function class_of(v)
  if type(v) ~= "userdata" then return nil end
  local ok, s = pcall(tostring, v)
  if not ok or type(s) ~= "string" then return nil end
  local class = s:match("^(sslctx%.[%w_]+)")
  if class and REG[class] and METHODS[class] then return class end
  return nil
end

local function add(v)
  if class_of(v) and #pool < 48 then pool[#pool + 1] = v end
end

local value

local call_random   -- forward

local function make_function()
  local kind = byte() % 8
  if kind == 0 then return function() return nil end end
  if kind == 1 then return function() return true end end
  if kind == 2 then return function() return false end end
  if kind == 3 then return function() error("fuzz callback error", 0) end end
  if kind == 4 then return function() return sslctx.RETRY end end
  if kind == 5 then
    local v = value()
    return function() return v end
  end
  if kind == 6 then
    -- re-enters the module from inside the callback: a call chosen now, made then
    local saved = pos
    return function()
      if depth > 2 then return nil end
      depth = depth + 1
      local p = pos
      pos = saved
      pcall(call_random)
      pos = p
      depth = depth - 1
      return nil
    end
  end
  return function() return KEYWORDS[(byte() % #KEYWORDS) + 1] end
end

local PEMS = { CERT_PEM, KEY_PEM, CRL_PEM, CERT_PEM .. CERT_PEM, "-----BEGIN CERTIFICATE-----\n" }

value = function(d)
  d = d or 0
  local t = byte() % 26
  if t == 0 then return nil end
  if t == 1 then return true end
  if t == 2 then return false end
  if t <= 4 then return byte() - 64 end
  if t == 5 then return (string.unpack("<i8", bytes(8) .. string.rep("\0", 8), 1)) end
  if t == 6 then return (string.unpack("<d", bytes(8) .. string.rep("\0", 8), 1)) end
  if t <= 10 then return KEYWORDS[(byte() % #KEYWORDS) + 1] end
  if t == 11 then return "~x" .. bytes(byte() % 32) end
  if t == 12 then return PEMS[(byte() % #PEMS) + 1] end
  if t == 13 and d < 2 then
    local n = byte() % 5
    local l = {}
    for i = 1, n do l[i] = value(d + 1) end
    return l
  end
  if t <= 15 and d < 2 then   -- an option table
    local n = byte() % 5
    local o = {}
    for _ = 1, n do
      local k = OPTION_KEYS[(byte() % #OPTION_KEYS) + 1]
      o[k] = value(d + 1)
    end
    return o
  end
  if t <= 17 then return make_function() end
  if t <= 21 and #pool > 0 then return pool[(byte() % #pool) + 1] end
  if t == 22 and #closed_pool > 0 then return closed_pool[(byte() % #closed_pool) + 1] end
  if t == 23 then return sslctx.KEEP end
  if t == 24 then return sslctx.RETRY end
  return nil
end

local function call_method()
  if #pool == 0 then return end
  local obj = pool[(byte() % #pool) + 1]
  local class = class_of(obj)
  if not class then return end
  local names = METHODS[class]
  local name = names[(byte() % #names) + 1]
  local n = byte() % 4
  local args = {}
  for i = 1, n do args[i] = value() end
  calls = calls + 1
  local r = table.pack(pcall(REG[class].__index[name], obj, table.unpack(args, 1, n)))
  check(class .. ":" .. name, table.unpack(r, 1, r.n))
  if r[1] then for i = 2, r.n do add(r[i]) end end
  if name == "close" then closed_pool[#closed_pool + 1] = obj end
end

local function call_module()
  local name = MODULE[(byte() % #MODULE) + 1]
  local n = byte() % 3
  local args = {}
  for i = 1, n do args[i] = value() end
  calls = calls + 1
  local r = table.pack(pcall(sslctx[name], table.unpack(args, 1, n)))
  check("sslctx." .. name, table.unpack(r, 1, r.n))
  if r[1] then for i = 2, r.n do add(r[i]) end end
end

local function connections()
  local l = {}
  for _, v in ipairs(pool) do if class_of(v) == "sslctx.connection" then l[#l + 1] = v end end
  return l
end

local function pump()
  local conns = connections()
  if #conns < 2 then return end
  local a = conns[(byte() % #conns) + 1]
  local b = conns[(byte() % #conns) + 1]
  for _ = 1, 8 do
    for _, pair in ipairs({ { a, b }, { b, a } }) do
      local from, to = pair[1], pair[2]
      local ok, out = pcall(from.drain, from)
      if ok and type(out) == "string" and #out > 0 then check("feed", pcall(to.feed, to, out)) end
      check("handshake", pcall(from.handshake, from))
    end
  end
end

call_random = function()
  local op = byte() % 8
  if op <= 3 then call_method()
  elseif op <= 5 then call_module()
  else pump() end
end

-- The starting pool is made from valid arguments: a module that cannot make it is broken (a
-- finding, reported as an INVARIANT), not an input that happened to go nowhere.
local function setup(what, f, ...)
  local ok, v, msg, kind = pcall(f, ...)
  if not ok then broke("INVARIANT: setup: " .. what .. " raised: " .. tostring(v)) end
  if v == nil then
    broke("INVARIANT: setup: " .. what .. " failed: " .. tostring(msg) .. " (" .. tostring(kind) .. ")")
  end
  return v
end

function RUN(input)
  data, pos, depth, calls, broken = input, 1, 0, 0, nil
  pool, closed_pool = {}, {}
  -- a starting pool: both kinds of context, connections over memory, certificate objects
  local sctx = setup("sslctx.new server", sslctx.new,
                     { side = "server", certificate = CERT_PEM, key = KEY_PEM, ca = CERT_PEM })
  local cctx = setup("sslctx.new client", sslctx.new, { side = "client", ca = CERT_PEM })
  add(sctx)
  add(cctx)
  add(setup("sslctx.new both", sslctx.new, { side = "both", ca = CERT_PEM }))
  add(setup("server new_connection", sctx.new_connection, sctx))
  add(setup("client new_connection", cctx.new_connection, cctx, { hostname = "localhost" }))
  add(setup("sslctx.x509", sslctx.x509, CERT_PEM))
  add(setup("sslctx.pkey", sslctx.pkey, KEY_PEM))
  add(setup("sslctx.crl", sslctx.crl, CRL_PEM))
  local ops = 0
  while pos <= #data and ops < 64 do
    ops = ops + 1
    call_random()
  end
  pool, closed_pool = nil, nil
  if broken then error(broken, 0) end
  return calls
end
