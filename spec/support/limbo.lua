-- spec/support/limbo.lua: x509-limbo replay through sslctx handshakes, against `openssl verify`.
--
--   limbo.find()                 directory holding limbo.json, or nil, why
--   limbo.load(dir)              the decoded limbo.json (a table with .testcases)
--   limbo.json_decode(text)      a small JSON decoder (no dependency on a JSON rock)
--   limbo.epoch(iso8601)         "2024-01-01T00:00:00.999+00:00" -> 1704067200 (floored)
--   limbo.oracle(case, tmp, auth_level) -> "SUCCESS" | "FAILURE", code, output
--   limbo.replay(case, opts)     -> result table (see below)
--
-- Mapping of a case to inputs (SOURCE.md beside limbo.json):
--   SERVER case: the server presents peer_certificate + untrusted_intermediates with
--     peer_certificate_key; the client trusts trusted_certs only, checks expected_peer_name
--     (DNS name -> hostname, IP -> IP check), at validation_time, with crls (crl_check_all),
--     at max_chain_depth.  Oracle: openssl verify -purpose sslserver.
--   CLIENT case (the mirror): the client presents the chain; the server requires a client
--     certificate and verifies it with the same trust/time/CRLs/depth.  Oracle: -purpose
--     sslclient, no name check.
--   The presenting side runs at security level 0 (it is only a vehicle for the chain, as the
--     oracle's "permissive" s_server was); the verifying side keeps OpenSSL's configured level,
--     which is also the oracle's -auth_level.
--
-- Runs on Lua 5.1-5.4 and LuaJIT.

local helper = require "helper"

local limbo = {}
local q = helper.sh_quote

-- ---------------------------------------------------------------------------
-- JSON

local function json_error(s, i, what)
  error(("limbo.json_decode: %s at byte %d near %q"):format(what, i, s:sub(i, i + 20)), 0)
end

local escapes = { ['"'] = '"', ["\\"] = "\\", ["/"] = "/", b = "\b", f = "\f", n = "\n",
                  r = "\r", t = "\t" }

local function utf8_char(cp)
  if cp < 0x80 then return string.char(cp) end
  if cp < 0x800 then
    return string.char(0xC0 + math.floor(cp / 64), 0x80 + cp % 64)
  end
  if cp < 0x10000 then
    return string.char(0xE0 + math.floor(cp / 4096), 0x80 + math.floor(cp / 64) % 64,
                       0x80 + cp % 64)
  end
  return string.char(0xF0 + math.floor(cp / 262144), 0x80 + math.floor(cp / 4096) % 64,
                     0x80 + math.floor(cp / 64) % 64, 0x80 + cp % 64)
end

local decode_value

local function skip_ws(s, i)
  local _, e = s:find("^[ \t\r\n]*", i)
  return e + 1
end

local function decode_string(s, i)
  -- s:sub(i, i) == '"'
  local parts, j = {}, i + 1
  while true do
    local a, b = s:find('^[^"\\]+', j)
    if a then
      parts[#parts + 1] = s:sub(a, b)
      j = b + 1
    end
    local c = s:sub(j, j)
    if c == '"' then return table.concat(parts), j + 1 end
    if c == "" then json_error(s, j, "unterminated string") end
    -- backslash
    local e = s:sub(j + 1, j + 1)
    if escapes[e] then
      parts[#parts + 1] = escapes[e]
      j = j + 2
    elseif e == "u" then
      local hex = s:match("^%x%x%x%x", j + 2)
      if not hex then json_error(s, j, "bad \\u escape") end
      local cp = tonumber(hex, 16)
      j = j + 6
      if cp >= 0xD800 and cp <= 0xDBFF then
        local lo = s:match("^\\u(%x%x%x%x)", j)
        if lo then
          cp = 0x10000 + (cp - 0xD800) * 1024 + (tonumber(lo, 16) - 0xDC00)
          j = j + 6
        end
      end
      parts[#parts + 1] = utf8_char(cp)
    else
      json_error(s, j, "bad escape")
    end
  end
end

local function decode_array(s, i)
  local t, n = {}, 0
  i = skip_ws(s, i + 1)
  if s:sub(i, i) == "]" then return t, i + 1 end
  while true do
    local v
    v, i = decode_value(s, i)
    n = n + 1
    t[n] = v
    i = skip_ws(s, i)
    local c = s:sub(i, i)
    if c == "]" then return t, i + 1 end
    if c ~= "," then json_error(s, i, "expected ',' or ']'") end
    i = skip_ws(s, i + 1)
  end
end

local function decode_object(s, i)
  local t = {}
  i = skip_ws(s, i + 1)
  if s:sub(i, i) == "}" then return t, i + 1 end
  while true do
    if s:sub(i, i) ~= '"' then json_error(s, i, "expected a key") end
    local k
    k, i = decode_string(s, i)
    i = skip_ws(s, i)
    if s:sub(i, i) ~= ":" then json_error(s, i, "expected ':'") end
    local v
    v, i = decode_value(s, skip_ws(s, i + 1))
    t[k] = v
    i = skip_ws(s, i)
    local c = s:sub(i, i)
    if c == "}" then return t, i + 1 end
    if c ~= "," then json_error(s, i, "expected ',' or '}'") end
    i = skip_ws(s, i + 1)
  end
end

decode_value = function(s, i)
  i = skip_ws(s, i)
  local c = s:sub(i, i)
  if c == "{" then return decode_object(s, i) end
  if c == "[" then return decode_array(s, i) end
  if c == '"' then return decode_string(s, i) end
  if s:find("^true", i) then return true, i + 4 end
  if s:find("^false", i) then return false, i + 5 end
  if s:find("^null", i) then return nil, i + 4 end
  local num = s:match("^-?%d+%.?%d*[eE]?[-+]?%d*", i)
  if num and #num > 0 then return tonumber(num), i + #num end
  json_error(s, i, "unexpected character")
end

function limbo.json_decode(text)
  local v, i = decode_value(text, 1)
  i = skip_ws(text, i)
  if i <= #text then json_error(text, i, "trailing data") end
  return v
end

-- ---------------------------------------------------------------------------
-- Files and time

local read_file, write_file = helper.read_file, helper.write_file

-- ../shared/conformance/x509-limbo beside the checkout (the specs run from the repository
-- root); SSLCTX_LIMBO_DIR overrides.
function limbo.find()
  local candidates = {}
  if os.getenv("SSLCTX_LIMBO_DIR") then candidates[1] = os.getenv("SSLCTX_LIMBO_DIR") end
  candidates[#candidates + 1] = "../shared/conformance/x509-limbo"
  for _, dir in ipairs(candidates) do
    if helper.file_exists(dir .. "/limbo.json") then return dir end
  end
  return nil, "no x509-limbo data (looked for " .. table.concat(candidates, ", ") ..
              "/limbo.json; SSLCTX_LIMBO_DIR names another place)"
end

function limbo.load(dir)
  local text = assert(read_file(dir .. "/limbo.json"), "cannot read " .. dir .. "/limbo.json")
  local data = limbo.json_decode(text)
  assert(type(data) == "table" and type(data.testcases) == "table", "limbo.json: no testcases")
  return data
end

local function days_from_civil(y, m, d)
  if m <= 2 then y = y - 1 end
  local era = math.floor(y / 400)
  local yoe = y - era * 400
  local mp = (m > 2) and (m - 3) or (m + 9)
  local doy = math.floor((153 * mp + 2) / 5) + d - 1
  local doe = yoe * 365 + math.floor(yoe / 4) - math.floor(yoe / 100) + doy
  return era * 146097 + doe - 719468
end

-- ISO 8601 as limbo writes it; fractions of a second are dropped (floored), as -attime
-- takes whole seconds.
function limbo.epoch(s)
  local y, mo, d, h, mi, se, rest = s:match("^(%d+)-(%d+)-(%d+)T(%d+):(%d+):(%d+)(.*)$")
  assert(y, "limbo.epoch: cannot parse " .. tostring(s))
  rest = rest:gsub("^%.%d+", "")
  local off = 0
  if rest ~= "Z" and rest ~= "" then
    local sign, oh, om = rest:match("^([-+])(%d+):(%d+)$")
    assert(sign, "limbo.epoch: cannot parse the offset of " .. s)
    off = (tonumber(oh) * 3600 + tonumber(om) * 60) * (sign == "-" and -1 or 1)
  end
  local days = days_from_civil(tonumber(y), tonumber(mo), tonumber(d))
  return days * 86400 + tonumber(h) * 3600 + tonumber(mi) * 60 + tonumber(se) - off
end

-- A per-process scratch directory under build/ (removed by limbo.cleanup).
local scratch
function limbo.tmpdir()
  if scratch then return scratch end
  local p = assert(io.popen("mktemp -d " .. q((os.getenv("TMPDIR") or "/tmp") ..
                                              "/sslctx-limbo.XXXXXX"), "r"))
  scratch = p:read("*l")
  p:close()
  assert(scratch and scratch ~= "", "mktemp failed")
  return scratch
end

function limbo.cleanup()
  if scratch and scratch:match("sslctx%-limbo%.") then os.execute("rm -rf " .. q(scratch)) end
  scratch = nil
end

-- ---------------------------------------------------------------------------
-- The oracle: `openssl verify` on the same inputs (SOURCE.md's openssl_verify_tls_default)

local function case_files(case, dir)
  local safe = case.id:gsub("[^%w%-_.]", "_")
  local base = dir .. "/" .. safe
  local f = { trusted = base .. ".trusted.pem", leaf = base .. ".leaf.pem" }
  write_file(f.trusted, table.concat(case.trusted_certs, "\n"))
  write_file(f.leaf, case.peer_certificate)
  if #case.untrusted_intermediates > 0 then
    f.untrusted = base .. ".untrusted.pem"
    write_file(f.untrusted, table.concat(case.untrusted_intermediates, "\n"))
  end
  f.crls = {}
  for i, crl in ipairs(case.crls) do
    f.crls[i] = base .. ".crl" .. i .. ".pem"
    write_file(f.crls[i], crl)
  end
  return f
end

-- The depth both sides use: the module takes 0..100, and a chain of limbo's is far shorter
-- than 100, so 255 and 100 decide the same.
function limbo.depth(case)
  local d = case.max_chain_depth
  if d == nil then return nil end
  if d > 100 then return 100 end
  return d
end

function limbo.peer_name(case)
  local n = case.expected_peer_name
  if case.validation_kind ~= "SERVER" or type(n) ~= "table" then return nil end
  return n.kind, n.value
end

function limbo.oracle(case, dir, auth_level)
  local f = case_files(case, dir)
  local w = { "openssl", "verify", "-no-CApath", "-no-CAstore", "-CAfile", q(f.trusted) }
  local function add(...) for _, x in ipairs({ ... }) do w[#w + 1] = x end end
  if f.untrusted then add("-untrusted", q(f.untrusted)) end
  add("-purpose", case.validation_kind == "SERVER" and "sslserver" or "sslclient")
  add("-auth_level", tostring(auth_level))
  if case.validation_time then add("-attime", tostring(limbo.epoch(case.validation_time))) end
  local kind, value = limbo.peer_name(case)
  if kind == "DNS" then add("-verify_hostname", q(value))
  elseif kind == "IP" then add("-verify_ip", q(value)) end
  if #f.crls > 0 then
    add("-crl_check_all")
    for _, c in ipairs(f.crls) do add("-CRLfile", q(c)) end
  end
  if limbo.depth(case) then add("-verify_depth", tostring(limbo.depth(case))) end
  add(q(f.leaf))
  local out = helper.run(table.concat(w, " "))
  local code = out:match("error (%d+) at %-?%d+ depth lookup")
  if code then return "FAILURE", tonumber(code), out end
  if out:match(": OK%s*$") or out:match(": OK\n") then return "SUCCESS", 0, out end
  -- Anything else (a file openssl cannot read, a usage error) is a failure to verify.
  return "FAILURE", nil, out
end

-- ---------------------------------------------------------------------------
-- The replay through sslctx

local function sslctx() return require "sslctx" end

local function list(t)
  local r = {}
  for i, v in ipairs(t) do r[i] = v end
  return r
end

local function verify_params(case)
  local p = {}
  if case.validation_time then p.time = limbo.epoch(case.validation_time) end
  if #case.crls > 0 then p.flags = { "crl_check_all" } end
  return p
end

-- The side that verifies: trust, time, CRLs, depth.  Returns ctx or nil, msg.
local function verifier_ctx(case, side)
  local opts = {
    side = side,
    ca = list(case.trusted_certs),
    verify_params = verify_params(case),
    verify_depth = limbo.depth(case),
  }
  if side == "server" then
    opts.verify = "require"
    opts.certificate = helper.pki("server-chain.pem")
    opts.key = helper.pki("server.key")
  end
  local ctx, msg, kind = sslctx().new(opts)
  if not ctx then return nil, "verifier context: " .. tostring(msg) .. " (" .. tostring(kind) .. ")" end
  for _, crl in ipairs(case.crls) do
    local ok, err = ctx:add_crl(crl)
    if not ok then return nil, "add_crl: " .. tostring(err) end
  end
  return ctx
end

-- The side that presents the case's chain.
local function presenter_ctx(case, side, max_version)
  local chain = { case.peer_certificate }
  for _, c in ipairs(case.untrusted_intermediates) do chain[#chain + 1] = c end
  local opts = {
    side = side,
    certificate = chain,
    key = case.peer_certificate_key,
    security_level = 0,
    max_version = max_version,
  }
  if side == "server" then opts.dh = "auto" end   -- DHE suites (e.g. for a DSA leaf)
  if side == "client" then
    opts.verify = "never"
    opts.ca = helper.pki("ca.pem")
  end
  local ctx, msg, kind = sslctx().new(opts)
  if not ctx then return nil, "presenter context: " .. tostring(msg) .. " (" .. tostring(kind) .. ")" end
  -- Any cipher the presenter's key can sign with, whatever its strength.
  pcall(ctx.set_ciphers, ctx, "ALL:@SECLEVEL=0")
  return ctx
end

-- One handshake attempt.  Returns a result table:
--   verdict "SUCCESS" | "FAILURE" | nil (not replayable), code, message, kind, version
local function attempt(case, max_version)
  local server_kind = case.validation_kind == "SERVER"
  local vctx, pctx, err
  vctx, err = verifier_ctx(case, server_kind and "client" or "server")
  if not vctx then return { error = err } end
  if max_version then
    -- The TLS 1.2 retry widens the verifier's cipher list (not its security level, which is
    -- the oracle's -auth_level) so that e.g. a DSA leaf has a DHE-DSS suite to travel in.
    vctx:set_max_version(max_version)
    vctx:set_ciphers("ALL")
  end
  pctx, err = presenter_ctx(case, server_kind and "server" or "client", max_version)
  if not pctx then return { error = err, auth_level = vctx:get_security_level() } end
  local copts, cctx, sctx
  if server_kind then
    cctx, sctx = vctx, pctx
    copts = {}
    local kind, value = limbo.peer_name(case)
    if kind == "DNS" or kind == "IP" then copts.hostname = value
    else copts.verify_hostname = false end
  else
    cctx, sctx = pctx, vctx
    copts = {}
  end
  local okc, c = pcall(cctx.new_connection, cctx, copts)
  if not okc then
    return { error = "new_connection raised: " .. tostring(c), auth_level = vctx:get_security_level() }
  end
  local s = sctx:new_connection()
  local cok, cmsg, ckind, sok, smsg, skind = helper.pump(c, s, 40)
  local v = server_kind and c or s
  local vok, vmsg, vkind = cok, cmsg, ckind
  if not server_kind then vok, vmsg, vkind = sok, smsg, skind end
  local code, code_text = v:verify_result()
  local r = {
    auth_level = vctx:get_security_level(),
    code = code, code_text = code_text, message = vmsg, kind = vkind,
    version = v:version(),
    peer = { cok = cok, cmsg = cmsg, ckind = ckind, sok = sok, smsg = smsg, skind = skind },
  }
  if vok == true then
    -- The verifier accepted (a presenter failing afterwards is no verification verdict).
    r.verdict = "SUCCESS"
  elseif vkind == "verify" or (code ~= 0 and not helper.is_want(vkind)) then
    -- Rejected by verification.  The contract's kind for that is "verify"; anything else is
    -- recorded (r.kind_wrong) and reported by the spec as a module bug.
    r.verdict = "FAILURE"
    if vkind ~= "verify" then r.kind_wrong = true end
  else
    r.verdict = nil   -- the handshake failed before or beside verification
  end
  c:close()
  s:close()
  vctx:close()
  pctx:close()
  return r
end

-- Replays one case: TLS 1.3 first; when the handshake cannot carry the chain (no common
-- signature algorithm for the presenter's key), TLS 1.2.
function limbo.replay(case)
  local r = attempt(case, nil)
  if r.verdict == nil and not r.error then
    local r12 = attempt(case, "tls1.2")
    r12.first_try = r
    return r12
  end
  return r
end

return limbo
