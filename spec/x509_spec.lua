-- x509_spec.lua: doc/reference.md "Certificates", certificate objects, checked against the openssl CLI.
local sslctx = require "sslctx"
local helper = require "helper"

local pki, read = helper.pki, helper.read

local NAMES = { "server.pem", "client.pem", "ca.pem", "int.pem", "expired.pem", "selfsigned.pem",
                "wronghost.pem", "rsa-server.pem", "untrusted.pem" }

local function cli(name, ...)
  return helper.openssl({ "x509", "-in", pki(name), "-noout", ... })
end

local function cli_value(out, key)
  local v = out:match(key .. "%s*=%s*([^\n]*)")
  assert(v, "cannot find " .. key .. " in: " .. out)
  return (v:gsub("%s+$", ""))
end

-- The DER encoding, from the CLI (stderr discarded: it is binary output).
local function cli_der(name)
  local p = assert(io.popen("openssl x509 -in " .. helper.sh_quote(pki(name)) ..
                            " -outform DER 2>/dev/null", "r"))
  local der = p:read("*a")
  p:close()
  assert(#der > 0)
  return der
end

local MONTHS = { Jan = 1, Feb = 2, Mar = 3, Apr = 4, May = 5, Jun = 6,
                 Jul = 7, Aug = 8, Sep = 9, Oct = 10, Nov = 11, Dec = 12 }

-- days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm)
local function days_from_civil(y, m, d)
  if m <= 2 then y = y - 1 end
  local era = math.floor(y / 400)
  local yoe = y - era * 400
  local mp = (m + 9) % 12
  local doy = math.floor((153 * mp + 2) / 5) + d - 1
  local doe = yoe * 365 + math.floor(yoe / 4) - math.floor(yoe / 100) + doy
  return era * 146097 + doe - 719468
end

-- "Nov 27 21:39:00 2036 GMT" -> epoch seconds
local function parse_cli_date(s)
  local mon, d, H, M, S, y = s:match("^(%a+)%s+(%d+)%s+(%d+):(%d+):(%d+)%s+(%d+)%s+GMT$")
  assert(mon and MONTHS[mon], "cannot parse date: " .. s)
  return days_from_civil(tonumber(y), MONTHS[mon], tonumber(d)) * 86400 +
         tonumber(H) * 3600 + tonumber(M) * 60 + tonumber(S)
end

local function x509(name)
  local x, msg = sslctx.x509(read(name))
  assert(x, msg)
  return x
end

describe("sslctx.x509", function()
  it("the date helper of this spec is right", function()
    assert.equal(0, parse_cli_date("Jan  1 00:00:00 1970 GMT"))
    assert.equal(1577923200, parse_cli_date("Jan  2 00:00:00 2020 GMT"))
    assert.equal(951782400, parse_cli_date("Feb 29 00:00:00 2000 GMT"))
  end)

  it("parses PEM and DER", function()
    for _, name in ipairs(NAMES) do
      local a = x509(name)
      local b, msg = sslctx.x509(cli_der(name))
      assert.is_not_nil(b, msg)
      assert.is_true(a == b, name)
    end
  end)

  for _, name in ipairs(NAMES) do
    describe(name, function()
      local x
      before_each(function() x = x509(name) end)

      it("subject and issuer are the RFC 2253 forms of the CLI", function()
        assert.equal(helper.cli_subject(name), x:subject())
        local issuer = cli(name, "-issuer", "-nameopt", "RFC2253"):gsub("^issuer=%s*", ""):gsub("%s+$", "")
        assert.equal(issuer, x:issuer())
      end)

      it("serial is the CLI's uppercase hex", function()
        local serial = cli_value(cli(name, "-serial"), "serial")
        assert.equal(serial, x:serial())
        assert.is_nil(x:serial():find("[a-f]"))
      end)

      it("not_before and not_after are the CLI's dates as epoch seconds", function()
        local out = cli(name, "-dates")
        assert.equal(parse_cli_date(cli_value(out, "notBefore")), x:not_before())
        assert.equal(parse_cli_date(cli_value(out, "notAfter")), x:not_after())
      end)

      it("fingerprints are the CLI's, lowercase without separators", function()
        local s256 = cli_value(cli(name, "-fingerprint", "-sha256"), "Fingerprint"):gsub(":", ""):lower()
        local s1 = cli_value(cli(name, "-fingerprint", "-sha1"), "Fingerprint"):gsub(":", ""):lower()
        assert.equal(64, #s256)
        assert.equal(s256, x:fingerprint())
        assert.equal(s256, x:fingerprint("sha256"))
        assert.equal(s1, x:fingerprint("sha1"))
      end)

      it("pem() and der() round-trip and equal the CLI's encodings", function()
        local der = x:der()
        assert.is_true(der == cli_der(name))
        local pem = x:pem()
        assert.truthy(pem:find("^%-%-%-%-%-BEGIN CERTIFICATE%-%-%-%-%-"))
        assert.equal(helper.openssl({ "x509", "-in", pki(name) }), pem)
        assert.is_true(sslctx.x509(pem) == x)
        assert.is_true(sslctx.x509(der) == x)
        assert.is_true(sslctx.x509(der):der() == der)
      end)
    end)
  end

  it("the expired fixture ends on 2020-01-02", function()
    assert.equal(1577923200, x509("expired.pem"):not_after())
    assert.is_true(x509("server.pem"):not_after() > os.time())
    assert.is_true(x509("server.pem"):not_before() <= os.time())
  end)

  it("subject_alt_names of server.pem", function()
    assert.same({ dns = { "localhost", "good.example" }, ip = { "127.0.0.1", "::1" },
                  email = {}, uri = {} }, x509("server.pem"):subject_alt_names())
  end)

  it("subject_alt_names of other certificates", function()
    assert.same({ dns = { "wrong.example" }, ip = {}, email = {}, uri = {} },
                x509("wronghost.pem"):subject_alt_names())
    assert.same({ dns = { "localhost" }, ip = { "127.0.0.1" }, email = {}, uri = {} },
                x509("selfsigned.pem"):subject_alt_names())
    -- no SAN extension at all: four empty lists
    assert.same({ dns = {}, ip = {}, email = {}, uri = {} }, x509("client.pem"):subject_alt_names())
  end)

  it("check_host", function()
    local x = x509("server.pem")
    assert.is_true(x:check_host("localhost"))
    assert.is_true(x:check_host("good.example"))
    assert.is_false(x:check_host("wrong.example"))
    assert.is_false(x:check_host("example"))
    local w = x509("wronghost.pem")
    assert.is_true(w:check_host("wrong.example"))
    assert.is_false(w:check_host("localhost"))
  end)

  it("__eq: the same certificate from two parses is equal, different ones are not", function()
    local a, b = x509("server.pem"), x509("server.pem")
    assert.is_false(rawequal(a, b))
    assert.is_true(a == b)
    assert.is_false(a == x509("client.pem"))
    assert.is_true(a ~= x509("ca.pem"))
    -- same subject and key usage, different certificate
    assert.is_false(x509("server.pem") == x509("revoked.pem"))
  end)

  it("__tostring gives a string", function()
    local s = tostring(x509("server.pem"))
    assert.is_string(s)
    assert.is_true(#s > 0)
    -- Assumption (not fixed by the contract): the text depends on the certificate, not on
    -- the object's address, so two parses of the same certificate print alike, and two
    -- different certificates print differently.
    assert.equal(s, tostring(x509("server.pem")))
    assert.is_true(s ~= tostring(x509("client.pem")))
  end)

  it("bad input returns nil, message, kind", function()
    for _, bad in ipairs({ "garbage", "",
      "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n",
      cli_der("server.pem"):sub(1, 100) }) do
      local x, msg, kind = sslctx.x509(bad)
      assert.is_nil(x)
      assert.is_string(msg)
      assert.is_true(#msg > 0)
      assert.is_string(kind)
    end
  end)

  it("wrong types raise", function()
    assert.has_error(function() sslctx.x509() end)
    assert.has_error(function() sslctx.x509({}) end)
    assert.has_error(function() sslctx.x509(true) end)
    local x = x509("server.pem")
    assert.has_error(function() x:check_host() end)
    assert.has_error(function() x:check_host({}) end)
    -- Assumption: an unknown digest name is a caller's bug (unknown keyword) and raises.
    assert.has_error(function() x:fingerprint("no-such-digest") end)
  end)

  it("x509 objects from connections compare equal to parsed ones", function()
    local cctx, sctx = helper.contexts{}
    local c = helper.connected(cctx, sctx)
    local peer = c:peer_certificate()
    assert.is_true(peer == x509("server.pem"))
    assert.equal(x509("server.pem"):fingerprint(), peer:fingerprint())
    assert.same(x509("server.pem"):subject_alt_names(), peer:subject_alt_names())
  end)
end)
