/* fuzz/fuzz_load.c: certificate, CRL, key (and session) loading from PEM and DER, through
 * sslctx.x509 / sslctx.crl / sslctx.pkey / sslctx.session and the context loaders
 * (use_certificate, add_crl, use_private_key, new{ca=}), then every method of what loaded.
 *
 * The input is either given raw (DER, or text with PEM blocks inside) or wrapped as a PEM
 * block under a chosen label (so that the fuzzer reaches the DER decoders through the PEM
 * path too).  Strings given to the context loaders always start with "-----BEGIN": a string
 * that does not is a file name there, and the fuzzer must not open files (/dev/zero).
 *
 * Invariants: no crash or sanitizer report; loaders return an object or nil, message,
 * kind (a known kind, a string message), or raise a string; every method of a loaded object
 * behaves the same way. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <openssl/evp.h>
#include "common.h"

static const char *const labels[] = {
  "CERTIFICATE", "TRUSTED CERTIFICATE", "X509 CRL", "PRIVATE KEY", "EC PRIVATE KEY",
  "RSA PRIVATE KEY", "ENCRYPTED PRIVATE KEY", "PUBLIC KEY", "DSA PRIVATE KEY", "SSL SESSION PARAMETERS"
};
#define NLABELS (sizeof labels / sizeof labels[0])

/* Pushes "-----BEGIN <label>-----\n<base64 of data, 64 columns>\n-----END <label>-----\n",
 * with optional encryption headers (Proc-Type/DEK-Info) for traditional keys. */
static void push_pem(const uint8_t *data, size_t n, const char *label, int headers) {
  luaL_Buffer b;
  size_t i;
  unsigned char line[128];
  luaL_buffinit(fz_L, &b);
  luaL_addstring(&b, "-----BEGIN ");
  luaL_addstring(&b, label);
  luaL_addstring(&b, "-----\n");
  if (headers) luaL_addstring(&b, "Proc-Type: 4,ENCRYPTED\nDEK-Info: AES-128-CBC,00112233445566778899AABBCCDDEEFF\n\n");
  for (i = 0; i < n; i += 48) {
    size_t k = n - i < 48 ? n - i : 48;
    int m = EVP_EncodeBlock(line, data + i, (int)k);
    luaL_addlstring(&b, (const char *)line, (size_t)m);
    luaL_addchar(&b, '\n');
  }
  luaL_addstring(&b, "-----END ");
  luaL_addstring(&b, label);
  luaL_addstring(&b, "-----\n");
  luaL_pushresult(&b);
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc, (void)argv;
  fz_init();
  fz_dostring(
    "local REG = debug.getregistry()\n"
    "local KINDS = {want_read=1, want_write=1, want_retry_verify=1, verify=1, callback=1,\n"
    "  closed=1, eof=1, ssl=1, syscall=1, file=1, key=1, timeout=1}\n"
    "local function check(what, ok, a, b, c)\n"
    "  if not ok then\n"
    "    if type(a) ~= 'string' then error('INVARIANT: ' .. what .. ' raised a ' .. type(a)) end\n"
    "    return\n"
    "  end\n"
    "  if a == nil and b ~= nil then\n"
    "    if type(b) ~= 'string' or (c ~= nil and not KINDS[c]) then\n"
    "      error('INVARIANT: ' .. what .. ' returned nil, ' .. tostring(b) .. ', ' .. tostring(c))\n"
    "    end\n"
    "  end\n"
    "end\n"
    "-- What each input needs besides the fuzzed value (a context, a certificate) must be\n"
    "-- made: a module that cannot make it is broken, a finding, not an uninteresting input.\n"
    "local function setup(what, ok, a, b, c)\n"
    "  if not ok then error('INVARIANT: setup: ' .. what .. ' raised: ' .. tostring(a)) end\n"
    "  if a == nil then\n"
    "    error('INVARIANT: setup: ' .. what .. ' failed: ' .. tostring(b) .. ' (' .. tostring(c) .. ')')\n"
    "  end\n"
    "  return a\n"
    "end\n"
    "local extra = {fingerprint = {'sha1'}, check_host = {'localhost'}, revoked = {'01'},\n"
    "  pem = {true}, der = {true}}\n"
    "function EXERCISE(obj)\n"
    "  local class = tostring(obj):match('^(sslctx%.[%w_]+)')\n"
    "  local mt = class and REG[class]\n"
    "  if not mt then error('INVARIANT: loader returned ' .. tostring(obj)) end\n"
    "  local names = {}\n"
    "  for k in pairs(mt.__index) do names[#names + 1] = k end\n"
    "  table.sort(names)\n"
    "  for _, name in ipairs(names) do\n"
    "    if name ~= 'close' then\n"
    "      check(name, pcall(mt.__index[name], obj))\n"
    "      if extra[name] then check(name, pcall(mt.__index[name], obj, table.unpack(extra[name]))) end\n"
    "    end\n"
    "  end\n"
    "  if mt.__index.issued_by then check('issued_by', pcall(obj.issued_by, obj, obj)) end\n"
    "  if mt.__index.revoked then\n"
    "    local cert = setup('sslctx.x509(CERT_PEM)', pcall(sslctx.x509, CERT_PEM))\n"
    "    check('revoked', pcall(obj.revoked, obj, cert))\n"
    "  end\n"
    "  check('tostring', pcall(tostring, obj))\n"
    "  check('eq', pcall(function() return obj == obj end))\n"
    "  mt.__gc(obj)\n"
    "  check('closed', pcall(tostring, obj))\n"
    "end\n"
    "function LOAD(how, s, pw)\n"
    "  local ok, a, b, c\n"
    "  if how == 'x509' or how == 'crl' or how == 'session' then\n"
    "    ok, a, b, c = pcall(sslctx[how], s)\n"
    "  elseif how == 'pkey' then\n"
    "    ok, a, b, c = pcall(sslctx.pkey, s, pw)\n"
    "  elseif how == 'use_certificate' then\n"
    "    local ctx = setup('sslctx.new', pcall(sslctx.new, {side = 'server'}))\n"
    "    ok, a, b, c = pcall(ctx.use_certificate, ctx, s)\n"
    "    check(how, ok, a, b, c)\n"
    "    if ok and a then ok, a, b, c = pcall(ctx.use_private_key, ctx, KEY_PEM) end\n"
    "    ctx:close()\n"
    "    return check(how, ok, a, b, c)\n"
    "  elseif how == 'use_private_key' then\n"
    "    local ctx = setup('sslctx.new', pcall(sslctx.new, {side = 'server', certificate = CERT_PEM}))\n"
    "    ok, a, b, c = pcall(ctx.use_private_key, ctx, s, pw)\n"
    "    ctx:close()\n"
    "    return check(how, ok, a, b, c)\n"
    "  elseif how == 'add_crl' then\n"
    "    local ctx = setup('sslctx.new', pcall(sslctx.new, {side = 'client', ca = CERT_PEM}))\n"
    "    ok, a, b, c = pcall(ctx.add_crl, ctx, s)\n"
    "    ctx:close()\n"
    "    return check(how, ok, a, b, c)\n"
    "  elseif how == 'ca' then\n"
    "    ok, a, b, c = pcall(sslctx.new, {side = 'server', ca = s, client_ca = {s}})\n"
    "    check(how, ok, a, b, c)\n"
    "    if ok and a then a:close() end\n"
    "    return\n"
    "  end\n"
    "  check(how, ok, a, b, c)\n"
    "  if ok and a ~= nil then EXERCISE(a) end\n"
    "end\n", "=load-init");
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  fz_reader r = {data, size};
  int how = fz_u8(&r) % 16, wrap = fz_u8(&r), pwmode = fz_u8(&r) % 4;
  const char *fn = NULL;
  const uint8_t *body;
  size_t n;
  int force_pem = 0;
  switch (how) {
  case 0: case 1: case 2: fn = "x509"; break;
  case 3: case 4: fn = "crl"; break;
  case 5: case 6: case 7: fn = "pkey"; break;
  case 8: fn = "session"; break;
  case 9: case 10: fn = "use_certificate"; force_pem = 1; break;
  case 11: fn = "add_crl"; force_pem = 1; break;
  case 12: case 13: fn = "use_private_key"; force_pem = 1; break;
  default: fn = "ca"; force_pem = 1; break;
  }
  n = fz_take(&r, r.n, &body);
  lua_settop(fz_L, 0);
  lua_getglobal(fz_L, "LOAD");
  lua_pushstring(fz_L, fn);
  if ((wrap & 3) != 0 || force_pem) {
    /* wrapped in a PEM block: label by the fuzzer's byte; sometimes with text around it */
    const char *label = labels[(wrap >> 2) % NLABELS];
    push_pem(body, n, label, (wrap & 0x80) != 0);
    if ((wrap & 3) == 2) {   /* two blocks, the second a real object */
      lua_pushstring(fz_L, strcmp(label, "X509 CRL") == 0 ? fz_crl_pem : fz_cert_pem);
      lua_concat(fz_L, 2);
    }
  } else {
    lua_pushlstring(fz_L, (const char *)body, n);   /* raw: DER or free text */
  }
  switch (pwmode) {
  case 0: lua_pushnil(fz_L); break;
  case 1: lua_pushstring(fz_L, "password"); break;
  case 2: fz_dostring("PWFN = function(max, rw) return 'password' end", "=pw"); lua_getglobal(fz_L, "PWFN"); break;
  default: fz_dostring("PWFN = function() error('nope') end", "=pw"); lua_getglobal(fz_L, "PWFN"); break;
  }
  if (lua_pcall(fz_L, 3, 0, 0) != LUA_OK) {
    const char *e = lua_tostring(fz_L, -1);
    if (e != NULL && strstr(e, "INVARIANT") != NULL) fz_fail("loader", e);
  }
  fz_end_input();
  return 0;
}
