/* compat.h: every Lua-version and OpenSSL-version shim of sslctx, in one place. */
#ifndef SSLCTX_COMPAT_H
#define SSLCTX_COMPAT_H

#include <limits.h>
#include <lua.h>
#include <lauxlib.h>
/* LuaJIT's luaconf.h (included by lua.h) defines LUA_LJDIR: only then is luajit.h, with
 * LUAJIT_VERSION_NUM, ours to include (cdata pointers are accepted only under LuaJIT). */
#ifdef LUA_LJDIR
#include <luajit.h>
#endif
#include <openssl/ssl.h>
#include <openssl/opensslv.h>

/* ---- Lua ---------------------------------------------------------------- */

#if LUA_VERSION_NUM == 501
#define LUA_OK 0
#define lua_rawlen(L, i) lua_objlen((L), (i))
#ifndef luaL_newlib   /* LuaJIT 2.1 has these */
#define luaL_newlibtable(L, l) lua_createtable((L), 0, sizeof(l) / sizeof((l)[0]) - 1)
#define luaL_newlib(L, l) (luaL_newlibtable((L), (l)), luaL_setfuncs((L), (l), 0))
#endif
/* LuaJIT 2.1 already has these two. */
#ifndef LUAJIT_VERSION_NUM
void sx_compat_setfuncs(lua_State *L, const luaL_Reg *l, int nup);
#define luaL_setfuncs sx_compat_setfuncs
void *sx_compat_testudata(lua_State *L, int idx, const char *tname);
#define luaL_testudata sx_compat_testudata
#endif
#define lua_rawgetp(L, idx, p) \
  (lua_pushlightuserdata((L), (void *)(p)), lua_rawget((L), ((idx) < 0 && (idx) > LUA_REGISTRYINDEX) ? (idx) - 1 : (idx)))
#define lua_rawsetp(L, idx, p) \
  (lua_pushlightuserdata((L), (void *)(p)), lua_insert((L), -2), \
   lua_rawset((L), ((idx) < 0 && (idx) > LUA_REGISTRYINDEX) ? (idx) - 1 : (idx)))
#endif

#if LUA_VERSION_NUM == 501
#define lua_absindex(L, i) \
  (((i) > 0 || (i) <= LUA_REGISTRYINDEX) ? (i) : lua_gettop(L) + (i) + 1)
#define luaL_setmetatable(L, tname) (luaL_getmetatable((L), (tname)), lua_setmetatable((L), -2))
#endif

/* A float with an integral value that lua_Integer holds (64 or, before 5.3 on 32-bit
 * machines, 32 bits).  The range test comes first: converting an out-of-range float to an
 * integer is undefined. */
#define SX_INTEGER_LIMIT \
  ((lua_Number)((lua_Integer)1 << (sizeof(lua_Integer) * CHAR_BIT - 2)) * 2)
static inline int sx_float_is_integral(lua_Number n) {
  return n >= -SX_INTEGER_LIMIT && n < SX_INTEGER_LIMIT && n == (lua_Number)(lua_Integer)n;
}

#if LUA_VERSION_NUM < 503
/* Before 5.3 every number is a float: an integer is one with an integral value. */
#define lua_isinteger(L, i) \
  (lua_type((L), (i)) == LUA_TNUMBER && sx_float_is_integral(lua_tonumber((L), (i))))
#endif

/* An integer, or a float with an integral value (LuaSocket's getfd gives 3.0 on 5.3+). */
static inline int sx_isintegral(lua_State *L, int idx) {
  if (lua_type(L, idx) != LUA_TNUMBER) return 0;
  return lua_isinteger(L, idx) || sx_float_is_integral(lua_tonumber(L, idx));
}

/* Objects other than connections have one Lua uservalue: a table holding the Lua values they
 * keep alive (parent, callbacks).  5.1 keeps it in the userdata's environment. */
#if LUA_VERSION_NUM == 501
#define sx_newuserdata(L, sz) lua_newuserdata((L), (sz))
#define sx_getuv(L, idx) lua_getfenv((L), (idx))
#define sx_setuv(L, idx) lua_setfenv((L), (idx))
#elif LUA_VERSION_NUM < 504
#define sx_newuserdata(L, sz) lua_newuserdata((L), (sz))
#define sx_getuv(L, idx) lua_getuservalue((L), (idx))
#define sx_setuv(L, idx) lua_setuservalue((L), (idx))
#else
#define sx_newuserdata(L, sz) lua_newuserdatauv((L), (sz), 1)
#define sx_getuv(L, idx) lua_getiuservalue((L), (idx), 1)
#define sx_setuv(L, idx) lua_setiuservalue((L), (idx), 1)
#endif

/* A connection keeps its Lua values (contexts, callback, socket, logger) in numbered slots:
 * user values on 5.4, which saves a table per connection; an array table before. */
#if LUA_VERSION_NUM >= 504
#define sx_newuserdata_slots(L, sz, n) lua_newuserdatauv((L), (sz), (n))
#define sx_getslot(L, idx, k) ((void)lua_getiuservalue((L), (idx), (k)))
#define sx_setslot(L, idx, k) ((void)lua_setiuservalue((L), (idx), (k)))
#else
static inline void *sx_newuserdata_slots(lua_State *L, size_t sz, int n) {
  void *p = lua_newuserdata(L, sz);
  lua_createtable(L, n, 0);
  sx_setuv(L, -2);
  return p;
}
static inline void sx_getslot(lua_State *L, int idx, int k) {   /* pushes slot k */
  sx_getuv(L, idx);
  lua_rawgeti(L, -1, k);
  lua_remove(L, -2);
}
static inline void sx_setslot(lua_State *L, int idx, int k) {   /* pops the value into slot k */
  idx = lua_absindex(L, idx);
  sx_getuv(L, idx);
  lua_insert(L, -2);
  lua_rawseti(L, -2, k);
  lua_pop(L, 1);
}
#endif

/* Calls f(ud) in protected mode; 0 on success, else the error value is left on the stack.
 * On 5.1 pushing a C function allocates (and may raise), so lua_cpcall does it for us. */
#if LUA_VERSION_NUM == 501
#define sx_cpcall(L, f, ud) lua_cpcall((L), (f), (ud))
#else
#define sx_cpcall(L, f, ud) \
  (lua_pushcfunction((L), (f)), lua_pushlightuserdata((L), (ud)), lua_pcall((L), 1, 0, 0))
#endif

/* ---- OpenSSL ------------------------------------------------------------ */

#if OPENSSL_VERSION_NUMBER < 0x10101000L
#error "sslctx needs OpenSSL 1.1.1 or later"
#endif

#if OPENSSL_VERSION_NUMBER >= 0x30000000L
#define SX_OPENSSL3 1
#define SX_OPENSSL_MAJOR(v) ((unsigned long)(v) >> 28)
#else
#define SX_OPENSSL3 0
#define SX_OPENSSL_MAJOR(v) ((unsigned long)(v) >> 28)
#endif

#ifndef SSL_R_UNEXPECTED_EOF_WHILE_READING
#define SSL_R_UNEXPECTED_EOF_WHILE_READING 294
#endif
#ifndef SSL_OP_ALLOW_CLIENT_RENEGOTIATION
#define SSL_OP_ALLOW_CLIENT_RENEGOTIATION 0
#endif
#ifndef SSL_OP_IGNORE_UNEXPECTED_EOF
#define SSL_OP_IGNORE_UNEXPECTED_EOF 0
#endif
#ifndef SSL_OP_CLEANSE_PLAINTEXT
#define SSL_OP_CLEANSE_PLAINTEXT 0
#endif
#ifndef SSL_OP_ENABLE_KTLS
#define SSL_OP_ENABLE_KTLS 0
#endif
#ifndef SSL_ERROR_WANT_RETRY_VERIFY
#define SSL_ERROR_WANT_RETRY_VERIFY 12
#endif

/* SSL_set_retry_verify (3.0.2+) is a macro over SSL_ctrl: an older 3.0 library answers 0. */
#ifndef SSL_CTRL_SET_RETRY_VERIFY
#define SSL_CTRL_SET_RETRY_VERIFY 136
#endif
#define sx_set_retry_verify(ssl) (SSL_ctrl((ssl), SSL_CTRL_SET_RETRY_VERIFY, 0, NULL) > 0)

#if SX_OPENSSL3
#define sx_err_get(data, flags) ERR_get_error_all(NULL, NULL, NULL, (data), (flags))
#else
#define sx_err_get(data, flags) ERR_get_error_line_data(NULL, NULL, (data), (flags))
#endif

/* a2i_ipadd is not in every version's public headers; a2i_IPADDRESS is. */
#define sx_is_ip_literal(s) sx_compat_is_ip_literal(s)
int sx_compat_is_ip_literal(const char *s);

#if SX_OPENSSL3
#define sx_get1_peer_certificate SSL_get1_peer_certificate
#else
#define sx_get1_peer_certificate SSL_get_peer_certificate
#endif

/* ---- added for pkey.c ---------------------------------------------------- */
/* EVP_PKEY_cmp is deprecated in 3.0 (EVP_PKEY_eq replaces it); a key type that only a 3.x
 * provider knows has no NID, only a name.  1.1.1 "encodes" an RSA public key as a private
 * one (the missing private fields are just left out), so there a public-only RSA key must
 * be recognised by its missing d (needs <openssl/rsa.h>); 3.x refuses the encoding. */
#if SX_OPENSSL3
#define sx_pkey_eq(a, b) EVP_PKEY_eq((a), (b))
#define sx_pkey_provider_type_name(k) EVP_PKEY_get0_type_name(k)
#define sx_pkey_is_public_rsa(k) 0
#else
#define sx_pkey_eq(a, b) EVP_PKEY_cmp((a), (b))
#define sx_pkey_provider_type_name(k) ((const char *)NULL)
#define sx_pkey_is_public_rsa(k)                                                   \
  ((EVP_PKEY_base_id(k) == EVP_PKEY_RSA || EVP_PKEY_base_id(k) == EVP_PKEY_RSA_PSS) && \
   RSA_get0_d(EVP_PKEY_get0_RSA(k)) == NULL)
#endif

#endif
