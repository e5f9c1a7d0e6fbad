/* fuzz/fuzz_mode.c: the verification-mode parser (doc/reference.md "Verification modes") in all its forms -- integers
 * (any 64-bit value), floats (NaN, infinities, huge, fractional), preset strings, keyword
 * tables (known and unknown keywords, hyphenated spellings, non-strings, holes, non-sequence
 * keys, nesting) -- through ctx:set_verification_mode / conn:set_verification_mode on both
 * sides and sslctx.new{verify = ...} (also a "both" context's {client =, server =}).
 *
 * Invariants checked beyond "no crash, no sanitizer report":
 *   - a failure raises a string in the luaL_argerror style ("bad argument #n to ...");
 *   - a success returns the stored flags, an integer in 0..15, and get_verification_mode on
 *     the same side then reports that integer;
 *   - an integer 0..15 is always accepted unchanged, on either side (the escape hatch). */
#include <stdio.h>
#include <string.h>
#include "common.h"

static const char *const keywords[] = {
  "verify_peer", "fail_if_no_peer_cert", "verify_client_once", "verify_post_handshake",
  "verify-peer", "fail-if-no-peer-cert", "verify-client-once", "verify-post-handshake",
  "VERIFY_PEER", "verify_pear", "", "verify_peer\0x"
};
static const char *const presets[] = {
  "never", "always", "once", "require", "require_once", "post_handshake",
  "require_post_handshake", "require-once", "post-handshake", "Always", "nevers", ""
};
#define NKW (sizeof keywords / sizeof keywords[0])
#define NPRE (sizeof presets / sizeof presets[0])

static void push_bytes(fz_reader *r, size_t max) {
  const uint8_t *p;
  size_t n = fz_take(r, fz_u8(r) % (max + 1), &p);
  lua_pushlstring(fz_L, (const char *)p, n);
}

static void push_double(fz_reader *r) {
  uint64_t bits = fz_u64(r);
  double d;
  memcpy(&d, &bits, sizeof d);
  lua_pushnumber(fz_L, d);
}

/* Pushes one mode value; *exact is set to the integer when it must be accepted as is. */
static void push_mode(fz_reader *r, int depth, long long *exact) {
  int form = fz_u8(r) % 9;
  *exact = -1;
  switch (form) {
  case 0: {
    lua_Integer v = (lua_Integer)fz_u64(r);
    lua_pushinteger(fz_L, v);
    if (v >= 0 && v <= 15) *exact = v;
    break;
  }
  case 1: {
    int v = fz_u8(r) - 112;   /* -112 .. 143: around the valid range */
    lua_pushinteger(fz_L, v);
    if (v >= 0 && v <= 15) *exact = v;
    break;
  }
  case 2: push_double(r); break;
  case 3: lua_pushnumber(fz_L, (double)(fz_u8(r) % 32) + (fz_u8(r) & 1 ? 0.5 : 0.0)); break;
  case 4: push_bytes(r, 40); break;
  case 5: {
    size_t i = fz_u8(r) % NPRE;
    lua_pushlstring(fz_L, presets[i], strlen(presets[i]));
    break;
  }
  case 6: case 7: {   /* a keyword table */
    int n = fz_u8(r) % 7, i;
    lua_createtable(fz_L, n, 0);
    for (i = 1; i <= n; i++) {
      int kind = fz_u8(r) % 8;
      long long ignored;
      switch (kind) {
      case 0: case 1: case 2: {
        size_t k = fz_u8(r) % NKW;
        lua_pushlstring(fz_L, keywords[k], k == NKW - 1 ? 13 : strlen(keywords[k]));
        break;
      }
      case 3: push_bytes(r, 24); break;
      case 4: lua_pushinteger(fz_L, (lua_Integer)(fz_u8(r) % 16)); break;
      case 5: push_double(r); break;
      case 6: lua_pushboolean(fz_L, fz_u8(r) & 1); break;
      default:
        if (depth < 2) push_mode(r, depth + 1, &ignored);
        else lua_pushnil(fz_L);
      }
      lua_rawseti(fz_L, -2, i);
    }
    switch (fz_u8(r) % 6) {   /* sometimes not a plain sequence */
    case 1: lua_pushinteger(fz_L, 1); lua_setfield(fz_L, -2, "verify_peer"); break;
    case 2: lua_pushstring(fz_L, "verify_peer"); lua_rawseti(fz_L, -2, n + 2); break;
    case 3: lua_pushstring(fz_L, "verify_peer"); lua_rawseti(fz_L, -2, 0); break;
    case 4: push_double(r); lua_pushstring(fz_L, "verify_peer");
            if (lua_tonumber(fz_L, -2) == lua_tonumber(fz_L, -2)) lua_rawset(fz_L, -3);
            else lua_pop(fz_L, 2);
            break;
    default: break;
    }
    break;
  }
  default:
    if (fz_u8(r) & 1) lua_pushboolean(fz_L, 1);
    else lua_pushnil(fz_L);
  }
}

static const char *const targets[] = {"SCTX", "CCTX", "BCTX", "SCONN", "CCONN"};

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc, (void)argv;
  fz_init();
  fz_dostring(
    "SCTX = assert(sslctx.new{side = 'server', certificate = CERT_PEM, key = KEY_PEM})\n"
    "CCTX = assert(sslctx.new{side = 'client', ca = CERT_PEM})\n"
    "BCTX = assert(sslctx.new{side = 'both', ca = CERT_PEM})\n"
    "SCONN = SCTX:new_connection()\n"
    "CCONN = CCTX:new_connection{hostname = 'localhost'}\n", "=mode-init");
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  fz_reader r = {data, size};
  int which = fz_u8(&r) % 7, side_form = fz_u8(&r) % 6, status, base;
  long long exact;
  const char *side_name = NULL;
  char what[160];
  lua_settop(fz_L, 0);
  if (which >= 5) {
    /* sslctx.new{side = s, verify = mode}; for "both": {client = m1, server = m2} */
    int both = which == 6;
    lua_getglobal(fz_L, "sslctx");
    lua_getfield(fz_L, -1, "new");
    lua_remove(fz_L, -2);
    base = lua_gettop(fz_L) - 1;
    lua_createtable(fz_L, 0, 2);
    lua_pushstring(fz_L, both ? "both" : (side_form & 1) ? "server" : "client");
    lua_setfield(fz_L, -2, "side");
    if (both) {
      lua_createtable(fz_L, 0, 2);
      push_mode(&r, 0, &exact);
      lua_setfield(fz_L, -2, "client");
      push_mode(&r, 0, &exact);
      lua_setfield(fz_L, -2, "server");
    } else {
      push_mode(&r, 0, &exact);
    }
    lua_setfield(fz_L, -2, "verify");
    status = lua_pcall(fz_L, 1, LUA_MULTRET, 0);
    if (fz_check_outcome(status, base, "sslctx.new{verify=}") == 0) {
      const char *e = lua_tostring(fz_L, -1);
      if (strstr(e, "bad argument #1 to") == NULL) fz_fail("sslctx.new{verify=} raised a non-argument error", e);
    } else if (!both && exact >= 0 && lua_isnil(fz_L, base + 1)) {
      fz_fail("sslctx.new refused an integer mode 0..15", lua_tostring(fz_L, base + 2));
    }
    fz_end_input();
    return 0;
  }
  lua_getglobal(fz_L, targets[which]);
  lua_getfield(fz_L, -1, "set_verification_mode");
  lua_insert(fz_L, -2);                   /* fn, self */
  base = lua_gettop(fz_L) - 2;
  switch (side_form) {
  case 0: case 1: side_name = "server"; lua_pushstring(fz_L, side_name); break;
  case 2: case 3: side_name = "client"; lua_pushstring(fz_L, side_name); break;
  case 4: push_bytes(&r, 12); break;
  default: lua_pushnil(fz_L);
  }
  push_mode(&r, 0, &exact);
  if (fz_u8(&r) & 1) lua_pushnil(fz_L);   /* an explicit nil callback, or none */
  status = lua_pcall(fz_L, lua_gettop(fz_L) - base - 1, LUA_MULTRET, 0);
  snprintf(what, sizeof what, "%s:set_verification_mode", targets[which]);
  if (!fz_check_outcome(status, base, what)) {
    const char *e = lua_tostring(fz_L, -1);
    if (strstr(e, "bad argument #") == NULL) fz_fail("set_verification_mode raised a non-argument error", e);
    /* integers are never side-checked: 0..15 with a valid side must be accepted ... unless
     * the side is wrong for a connection ("this is a server connection") */
    if (exact >= 0 && side_name != NULL && strstr(e, "this is a") == NULL)
      fz_fail("an integer mode 0..15 was refused", e);
  } else {
    lua_Integer got;
    if (!lua_isinteger(fz_L, base + 1)) fz_fail("set_verification_mode returned a non-integer", what);
    got = lua_tointeger(fz_L, base + 1);
    if (got < 0 || got > 15) fz_fail("set_verification_mode returned flags outside 0..15", what);
    if (exact >= 0 && got != exact) fz_fail("an integer mode was not stored unchanged", what);
    /* the getter agrees */
    lua_settop(fz_L, 0);
    lua_getglobal(fz_L, targets[which]);
    lua_getfield(fz_L, -1, "get_verification_mode");
    lua_insert(fz_L, -2);
    lua_pushstring(fz_L, side_name != NULL ? side_name : "server");
    if (side_name != NULL) {
      if (lua_pcall(fz_L, 2, 4, 0) != LUA_OK) fz_fail("get_verification_mode raised", lua_tostring(fz_L, -1));
      if (lua_tointeger(fz_L, 2) != got) fz_fail("get_verification_mode disagrees with the setter", what);
    }
  }
  fz_end_input();
  return 0;
}
