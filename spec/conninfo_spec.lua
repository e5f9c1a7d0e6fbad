-- spec/conninfo_spec.lua: what a connection tells beyond the basics (doc/reference.md,
-- Connections): cipher_info against `openssl ciphers -v`, exported keying material and the
-- Finished messages on both sides, DANE (set_dane/add_tlsa/dane_tlsa), and
-- x509:signature_name against `openssl x509 -text`.  Memory transport, real handshakes.

local helper = require "helper"
local pki = helper.pki

local function openssl(args)
  return helper.openssl(args)
end

local function pair(version, copts, cctx_opts, sctx_opts)
  local cctx = helper.client_ctx(helper.merge({ min_version = version, max_version = version },
                                              cctx_opts))
  local sctx = helper.server_ctx(sctx_opts)
  return helper.connect(cctx, sctx, copts)
end

local function connected(version)
  local c, s, cok, cmsg, _, sok, smsg = pair(version)
  assert(cok and sok, tostring(cmsg) .. " / " .. tostring(smsg))
  return c, s
end

describe("conn:cipher_info()", function()
  for _, v in ipairs({ "tls1.3", "tls1.2" }) do
    it("matches `openssl ciphers -v` for the negotiated cipher (" .. v .. ")", function()
      local c, s = connected(v)
      local ci = c:cipher_info()
      assert.equal(c:cipher(), ci.name)
      assert.same(ci, s:cipher_info())
      local line
      for l in openssl({ "ciphers", "-v" }):gmatch("[^\n]+") do
        if l:match("^%S+") == ci.name then line = l end
      end
      assert.truthy(line, "openssl does not list " .. ci.name)
      -- the same words, whatever the padding
      assert.equal(line:gsub("%s+", " "):gsub("^ ", ""):gsub(" $", ""),
                   (ci.description:gsub("%s+", " ")))
      assert.equal(line:match("Kx=(%S+)"), ci.kx)
      assert.equal(line:match("Au=(%S+)"), ci.auth)
      assert.equal(line:match("Enc=(%S+)"), ci.enc)
      assert.equal(line:match("Mac=(%S+)"), ci.mac)
      assert.equal(tonumber(ci.enc:match("%((%d+)%)")), ci.bits)
      assert.equal(ci.bits, ci.algbits)
      assert.equal(v == "tls1.3" and "TLSv1.3" or "TLSv1.2", ci.version)
      assert.truthy(ci.standard_name:match("^TLS_"))
    end)
  end

  it("is nil before a cipher is negotiated and raises on a closed connection", function()
    local c = helper.client_ctx():new_connection{ hostname = "localhost" }
    assert.is_nil(c:cipher_info())
    c:close()
    assert.truthy(helper.raises(c.cipher_info, c):find("connection is closed", 1, true))
  end)
end)

describe("conn:export_keying_material()", function()
  for _, v in ipairs({ "tls1.3", "tls1.2" }) do
    it("gives both sides the same bytes; label, context and length change them (" .. v .. ")",
       function()
      local c, s = connected(v)
      local a = c:export_keying_material("EXPORTER-test", 32, "ctx")
      assert.equal(32, #a)
      assert.equal(a, s:export_keying_material("EXPORTER-test", 32, "ctx"))
      assert.equal(a, c:export_keying_material("EXPORTER-test", 32, "ctx"))   -- stable
      assert.not_equal(a, c:export_keying_material("EXPORTER-other", 32, "ctx"))
      assert.not_equal(a, c:export_keying_material("EXPORTER-test", 32, "ctx2"))
      -- no context and an empty context: different inputs in TLS 1.2 (RFC 5705), the same
      -- in TLS 1.3 (RFC 8446 7.5)
      local none, empty = c:export_keying_material("EXPORTER-test", 32),
                          c:export_keying_material("EXPORTER-test", 32, "")
      if v == "tls1.2" then assert.not_equal(none, empty) else assert.equal(none, empty) end
      assert.equal(none, s:export_keying_material("EXPORTER-test", 32))
      assert.equal(empty, s:export_keying_material("EXPORTER-test", 32, ""))
      assert.equal(4096, #c:export_keying_material("EXPORTER-test", 4096))
      -- TLS 1.3's HKDF gives at most 255 hash lengths: past that, a runtime failure
      local big, msg, kind = c:export_keying_material("EXPORTER-test", 16384)
      if v == "tls1.2" then
        assert.equal(16384, #big)
      else
        assert.is_nil(big)
        assert.equal("ssl", kind, msg)
      end
      -- another connection, other keys
      local c2 = connected(v)
      assert.not_equal(a, c2:export_keying_material("EXPORTER-test", 32, "ctx"))
    end)
  end

  it("is nil, message, 'ssl' before the handshake; bad arguments raise", function()
    local c = helper.client_ctx():new_connection{ hostname = "localhost" }
    local v, msg, kind = c:export_keying_material("EXPORTER-test", 16)
    assert.is_nil(v)
    assert.truthy(msg:find("handshake is not complete", 1, true))
    assert.equal("ssl", kind)
    local cc = connected("tls1.3")
    for _, bad in ipairs({ 0, -1, 16385, 2 ^ 40 }) do
      assert.truthy(helper.raises(cc.export_keying_material, cc, "x", bad)
                      :find("length must be 1 to 16384", 1, true))
    end
    assert.truthy(helper.raises(cc.export_keying_material, cc, nil, 16):find("string expected", 1, true))
    assert.truthy(helper.raises(cc.export_keying_material, cc, "x", 16, {}):find("string expected", 1, true))
    cc:close()
    assert.truthy(helper.raises(cc.export_keying_material, cc, "x", 16):find("closed", 1, true))
  end)
end)

describe("conn:finished() and conn:peer_finished()", function()
  for _, t in ipairs({ { "tls1.3", 48 }, { "tls1.2", 12 } }) do
    it("each side's Finished is the other's peer Finished (" .. t[1] .. ")", function()
      local c, s = connected(t[1])
      assert.equal(t[2], #c:finished())   -- TLS 1.2: 12 bytes; TLS 1.3: the hash's (SHA-384)
      assert.equal(c:finished(), s:peer_finished())
      assert.equal(s:finished(), c:peer_finished())
      assert.not_equal(c:finished(), c:peer_finished())
    end)
  end

  it("are nil before the handshake", function()
    local c = helper.client_ctx():new_connection{ hostname = "localhost" }
    assert.is_nil(c:finished())
    assert.is_nil(c:peer_finished())
  end)
end)

-- ---------------------------------------------------------------------------
-- DANE

local function sha256_bin(cmd_in)
  local out = helper.run(cmd_in .. " | openssl dgst -sha256 -binary | od -An -v -tx1")
  local hex = out:gsub("%s", "")
  assert(#hex == 64, "no digest: " .. out)
  return (hex:gsub("%x%x", function(h) return string.char(tonumber(h, 16)) end))
end
local function spki_sha256(key)
  return sha256_bin("openssl pkey -in " .. helper.sh_quote(pki(key)) .. " -pubout -outform DER")
end
local function cert_sha256(cert)
  return sha256_bin("openssl x509 -in " .. helper.sh_quote(pki(cert)) .. " -outform DER")
end

-- A client trusting only other-ca.pem (which did not issue the server's certificate), with
-- DANE set up by setup(c) before the handshake.
local function dane_handshake(setup, cctx_opts)
  local cctx = helper.client_ctx(helper.merge({ ca_file = pki("other-ca.pem") }, cctx_opts))
  local sctx = helper.server_ctx()
  local c = cctx:new_connection{ hostname = "localhost" }
  setup(c)
  local s = sctx:new_connection()
  local cok, cmsg, ckind = helper.pump(c, s)
  return c, cok, cmsg, ckind, cctx
end

describe("DANE", function()
  it("DANE-EE(3) SPKI SHA-256: the server's key authenticates it without a trusted CA", function()
    local data = spki_sha256("server.key")
    local c, ok, msg = dane_handshake(function(c)
      assert.is_true(c:set_dane("localhost"))
      assert.is_true(c:add_tlsa(3, 1, 1, data))
    end)
    assert.is_true(ok, msg)
    assert.same({ 3, 1, 1, data, 0 }, { c:dane_tlsa() })
    assert.equal(0, (c:verify_result()))
  end)

  it("DANE-TA(2) full certificate digest of the intermediate: depth 1", function()
    local data = cert_sha256("int.pem")
    local c, ok, msg = dane_handshake(function(c)
      assert.is_true(c:set_dane("localhost"))
      assert.is_true(c:add_tlsa(2, 0, 1, data))
    end)
    assert.is_true(ok, msg)
    local usage, _, _, got, depth = c:dane_tlsa()
    assert.equal(2, usage)
    assert.equal(data, got)
    assert.equal(1, depth)
  end)

  it("a record for another key fails the handshake (kind verify), as does a wrong name for " ..
     "DANE-TA", function()
    local c, ok, msg, kind = dane_handshake(function(c)
      c:set_dane("localhost")
      c:add_tlsa(3, 1, 1, spki_sha256("client.key"))
    end)
    assert.is_nil(ok)
    assert.equal("verify", kind, msg)
    assert.is_nil(c:dane_tlsa())
    -- DANE-TA: the name is checked against the base domain
    local _, ok2, msg2, kind2 = dane_handshake(function(c2)
      c2:set_dane("wrong.example")
      c2:add_tlsa(2, 0, 1, cert_sha256("int.pem"))
    end)
    assert.is_nil(ok2)
    assert.equal("verify", kind2, msg2)
  end)

  it("no usable record and no trusted CA: refused; DANE on one connection leaves the " ..
     "context's others as they were", function()
    local _, ok, _, kind, cctx = dane_handshake(function(c)
      assert.is_true(c:set_dane("localhost"))
      local r, msg, k = c:add_tlsa(3, 1, 200, "x")   -- unknown matching type
      assert.is_nil(r)
      assert.truthy(msg:find("unusable TLSA record", 1, true))
      assert.equal("ssl", k)
    end)
    assert.is_nil(ok)
    assert.equal("verify", kind)
    -- the same context, without DANE: still refuses the untrusted chain
    local c2 = cctx:new_connection{ hostname = "localhost" }
    local s2 = helper.server_ctx():new_connection()
    local ok2, _, kind2 = helper.pump(c2, s2)
    assert.is_nil(ok2)
    assert.equal("verify", kind2)
  end)

  it("raises on bad arguments; nil, message once the handshake started; add_tlsa needs " ..
     "set_dane", function()
    local c = helper.client_ctx():new_connection{ hostname = "localhost" }
    local r, msg = c:add_tlsa(3, 1, 1, ("x"):rep(32))
    assert.is_nil(r)
    assert.truthy(msg)
    assert.truthy(helper.raises(c.set_dane, c, ""):find("non-empty name", 1, true))
    assert.truthy(helper.raises(c.set_dane, c, "a\0b"):find("without NUL", 1, true))
    assert.truthy(helper.raises(c.set_dane, c, "x", { "bogus" }):find("unknown DANE flag 'bogus'", 1, true))
    assert.truthy(helper.raises(c.set_dane, c, "x", { 1 }):find("string expected", 1, true))
    assert.truthy(helper.raises(c.add_tlsa, c, 256, 1, 1, "x"):find("0 to 255", 1, true))
    assert.truthy(helper.raises(c.add_tlsa, c, 3, -1, 1, "x"):find("0 to 255", 1, true))
    assert.truthy(helper.raises(c.add_tlsa, c, 3, 1, 1, nil):find("string expected", 1, true))
    assert.truthy(helper.raises(c.add_tlsa, c, 3, 1, 0, ("x"):rep(16385)):find("too long", 1, true))
    -- as a method call, Lua does not count self
    assert.truthy(select(2, pcall(function() local v = c:add_tlsa(3, 1, 999, "x"); return v end))
                    :find("bad argument #3 to 'add_tlsa'", 1, true))
    assert.is_true(c:set_dane("localhost", { "no_ee_namechecks" }))
    local again, amsg = c:set_dane("localhost")
    assert.is_nil(again)
    assert.truthy(amsg)
    local cc = connected("tls1.3")
    assert.same({ nil, "set_dane: the handshake has already started", "ssl" },
                { cc:set_dane("localhost") })
    assert.same({ nil, "add_tlsa: the handshake has already started", "ssl" },
                { cc:add_tlsa(3, 1, 1, "x") })
  end)
end)

describe("x509:signature_name()", function()
  it("names the algorithm as `openssl x509 -text` does", function()
    for _, name in ipairs({ "server.pem", "rsa-server.pem", "ca.pem", "client.pem" }) do
      local text = openssl({ "x509", "-in", pki(name), "-noout", "-text" })
      local want = text:match("Signature Algorithm: (%S+)")
      local x = require("sslctx").x509(helper.read(name))
      assert.equal(want, x:signature_name(), name)
    end
  end)
end)

-- Any allocation inside a method may run a finalizer, and a finalizer may close the very
-- connection whose method runs.  These methods copy what the SSL owns onto the C stack
-- before pushing anything: each finishes with what it read, and the connection is closed
-- after.  A chain of K finalizers puts the close at the K-th collection step; in a child
-- interpreter (under valgrind where there is one), so that a crash fails this spec only.
local CLOSE_IN_METHOD = [=[
  local helper = require "helper"
  local function busy_gc() helper.gc_pace("busy") end
  local function normal_gc() helper.gc_pace("normal") end   -- the setup of each round
  local garbage_with_finalizer = helper.garbage_with_finalizer
  local spki = io.popen("openssl pkey -in '" .. helper.pki("server.key") ..
                        "' -pubout -outform DER | openssl dgst -sha256 -binary"):read("*a")
  local CALLS = {
    cipher_info = function(c) return c:cipher_info() end,
    export_keying_material = function(c) return c:export_keying_material("EXPORTER-x", 4096) end,
    finished = function(c) return c:finished() end,
    peer_finished = function(c) return c:peer_finished() end,
    dane_tlsa = function(c) return c:dane_tlsa() end,
  }
  for name, call in pairs(CALLS) do
    for K = 1, 5 do
      normal_gc()
      local cctx = helper.client_ctx({ ca_file = helper.pki("other-ca.pem") })
      local c = cctx:new_connection{ hostname = "localhost" }
      assert(c:set_dane("localhost"))
      assert(c:add_tlsa(3, 1, 1, spki))
      local s = helper.server_ctx():new_connection()
      assert(helper.pump(c, s))
      collectgarbage("collect")
      collectgarbage("stop")
      local function link(k)
        garbage_with_finalizer(function()
          if k == K then c:close() return end
          link(k + 1)
          local pad = string.rep("x", 8192)
        end)
      end
      link(1)
      busy_gc()
      collectgarbage("restart")
      local ok, r = pcall(call, c)
      assert(ok and r ~= nil, name .. " K=" .. K .. ": " .. tostring(r))
      for _ = 1, K + 2 do collectgarbage("collect") end
      assert(tostring(c):find("closed"), name .. ": the close was lost")
      assert(not pcall(call, c), name .. ": a closed connection must raise")
    end
  end
  print("CHILD-DONE")
]=]

describe("a finalizer closes the connection during one of these methods", function()
  it("each method finishes; the connection is closed after (child process)", function()
    local out, rc = helper.valgrind_child(CLOSE_IN_METHOD, 240)
    if out == nil then out, rc = helper.run_child(CLOSE_IN_METHOD, 60) end
    assert.is_truthy(out:find("CHILD-DONE", 1, true) and rc == 0,
                     "the child crashed, valgrind found errors (exit 99) or an assertion failed:\n" .. out)
  end)
end)
