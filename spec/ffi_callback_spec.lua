-- spec/ffi_callback_spec.lua: under LuaJIT, a cdata function pointer is a C verify callback
-- (doc/reference.md "Verify callbacks": "under LuaJIT, also a cdata function pointer of that type"), and a pointer
-- cdata is an SSL pointer for sslctx.borrow (doc/reference.md sslctx.borrow: what ngx.ssl hands out).
-- Elsewhere this file is one visible pending test.
local helper = require "helper"

local has_ffi, ffi = pcall(require, "ffi")

if not has_ffi then
  describe("LuaJIT FFI callbacks", function()
    pending("skipped: " .. _VERSION .. " has no ffi (LuaJIT only)")
  end)
  return
end

local sslctx = require "sslctx"

local SIG = "int (*)(int, void *)"

-- The module's own shipped C callbacks, reached through the FFI (as a user's own C code
-- would be): ffi.load of the very core.so that `require` loaded.
local core_path = package.searchpath("sslctx.core", package.cpath)
pcall(ffi.cdef, [[
int sslctx_cb_reject_all(int, void *);
int sslctx_cb_preverify(int, void *);
int sslctx_cb_insecure_accept_all(int, void *);
]])

local function handshake_with(mode, cb, server_cert)
  local cctx, sctx = helper.contexts{
    server = server_cert and { certificate = helper.pki(server_cert .. "-chain.pem"),
                               key = helper.pki(server_cert .. ".key") } or nil,
  }
  cctx:set_verification_mode("client", mode, cb)
  local c, s, cok, cmsg, ckind = helper.connect(cctx, sctx)
  local code = c:verify_result()
  return cok, cmsg, ckind, code, c, s
end

describe("LuaJIT FFI callbacks", function()
  local lib

  lazy_setup(function()
    assert(core_path, "sslctx.core not found on package.cpath")
    lib = ffi.load(core_path)
  end)

  it("accepts a C function pointer cast from a C function (reject_all rejects)", function()
    local fp = ffi.cast(SIG, lib.sslctx_cb_reject_all)
    local ok, msg, kind, code = handshake_with("always", fp)
    assert.is_nil(ok)
    assert.equal("verify", kind)
    assert.equal(50, code)   -- X509_V_ERR_APPLICATION_VERIFICATION, set by reject_all
    assert.truthy(msg:find("certificate verify failed", 1, true))
  end)

  it("accepts a C function cdata as it comes from an FFI namespace (not cast)", function()
    local ok, _, kind = handshake_with("always", lib.sslctx_cb_reject_all)
    assert.is_nil(ok)
    assert.equal("verify", kind)
  end)

  it("takes a function from ffi.C (a library loaded into the global namespace)", function()
    ffi.load(core_path, true)
    local ok = handshake_with("always", ffi.cast(SIG, ffi.C.sslctx_cb_preverify))
    assert.is_true(ok)
    local bad = handshake_with("always", ffi.cast(SIG, ffi.C.sslctx_cb_preverify), "untrusted")
    assert.is_nil(bad)   -- preverify keeps OpenSSL's verdict
  end)

  it("installs the pointer directly: the C function decides (insecure_accept_all)", function()
    local ok, msg, _, code = handshake_with("always", ffi.cast(SIG, lib.sslctx_cb_insecure_accept_all),
                                            "untrusted")
    assert.is_true(ok, msg)
    assert.equal(0, code)
  end)

  it("runs an FFI callback made from a Lua function, once per certificate", function()
    local calls = {}
    local cb = ffi.cast(SIG, function(ok)
      calls[#calls + 1] = ok
      return ok
    end)
    local ok, msg = handshake_with("always", cb)
    assert.is_true(ok, msg)
    assert.same({ 1, 1, 1 }, calls)   -- root, intermediate, leaf
    local calls_bad = #calls
    local rejecting = ffi.cast(SIG, function() return 0 end)
    local bad, _, kind = handshake_with("always", rejecting)
    assert.is_nil(bad)
    assert.equal("verify", kind)
    cb:free()
    rejecting:free()
    assert.equal(3, calls_bad)
  end)

  it("reports the callback as given by get_verification_mode", function()
    local ctx = helper.client_ctx()
    local fp = ffi.cast(SIG, lib.sslctx_cb_preverify)
    ctx:set_verification_mode("client", "always", fp)
    local _, integer, preset, cb = ctx:get_verification_mode("client")
    assert.equal(1, integer)
    assert.equal("always", preset)
    assert.equal(fp, cb)
  end)

  it("refuses a NULL function pointer", function()
    local ctx = helper.client_ctx()
    local msg = helper.raises(ctx.set_verification_mode, ctx, "client", "always", ffi.cast(SIG, nil))
    assert.truthy(msg:find("NULL function pointer", 1, true), msg)
  end)

  it("works on a connection (SSL_set_verify) too", function()
    local cctx, sctx = helper.contexts{}
    local c = cctx:new_connection{ hostname = "localhost" }
    c:set_verification_mode("client", "always", ffi.cast(SIG, lib.sslctx_cb_reject_all))
    local s = sctx:new_connection()
    local cok, _, ckind = helper.pump(c, s)
    assert.is_nil(cok)
    assert.equal("verify", ckind)
  end)

  describe("sslctx.borrow", function()
    -- An SSL made through the FFI stands in for nginx's (a void* cdata, as ngx.ssl gives).
    local S
    lazy_setup(function()
      pcall(ffi.cdef, [[
typedef struct ssl_st SSL; typedef struct ssl_ctx_st SSL_CTX;
const void *TLS_server_method(void);
SSL_CTX *SSL_CTX_new(const void *); void SSL_CTX_free(SSL_CTX *);
SSL *SSL_new(SSL_CTX *); void SSL_free(SSL *);
int SSL_get_verify_mode(const SSL *);
]])
      S = ffi.load("ssl")
    end)

    it("takes a void* cdata and gives the same object for the same SSL", function()
      local sctx = S.SSL_CTX_new(S.TLS_server_method())
      local ssl = S.SSL_new(sctx)
      local p = ffi.cast("void *", ssl)
      local conn = sslctx.borrow(p)
      assert.is_true(conn:is_borrowed())
      assert.equal(conn, sslctx.borrow(ffi.cast("void *", ssl)))
      conn:set_verification_mode("server", "require")
      assert.equal(3, S.SSL_get_verify_mode(ssl))
      assert.truthy(helper.raises(conn.handshake, conn):find("borrowed", 1, true))
      S.SSL_free(ssl)   -- the owner frees it: the object reads as closed
      assert.truthy(helper.raises(conn.verify_result, conn):find("closed", 1, true))
      S.SSL_CTX_free(sctx)
    end)

    it("refuses a NULL pointer cdata", function()
      local msg = helper.raises(sslctx.borrow, ffi.cast("void *", nil))
      assert.truthy(msg:find("NULL", 1, true), msg)
    end)

    -- The type check is the core's own: no Lua code can loosen it (there once was a setter).
    it("refuses cdata that are not pointers, and offers no way to change that", function()
      for _, v in ipairs { ffi.new("int", 5), ffi.new("char[8]"), ffi.new("struct { int a; }") } do
        assert.truthy(helper.raises(sslctx.borrow, v))
      end
      for k in pairs(require "sslctx.core") do
        assert.is_nil(k:match("^_%l"), "sslctx.core." .. k)
      end
    end)
  end)
end)
