/* core.c: the module entry point and what every object file shares: class registration,
 * the per-state object map, error reporting and keyword parsing. */
#define _GNU_SOURCE 1   /* dladdr, RTLD_NODELETE */
#include <string.h>
#include <ctype.h>
#include <dlfcn.h>
#include <openssl/crypto.h>
#include <openssl/rand.h>
#include <openssl/evp.h>
#include <stdarg.h>
#include "private.h"

int sx_ssl_ex_index = -1;
int sx_ctx_ex_index = -1;

/* ---- Lua 5.1 shims (declared in compat.h) ------------------------------- */

#if LUA_VERSION_NUM == 501 && !defined(LUAJIT_VERSION_NUM)
void sx_compat_setfuncs(lua_State *L, const luaL_Reg *l, int nup) {
  luaL_checkstack(L, nup + 1, "too many upvalues");
  for (; l->name != NULL; l++) {
    int i;
    for (i = 0; i < nup; i++) lua_pushvalue(L, -nup);
    lua_pushcclosure(L, l->func, nup);
    lua_setfield(L, -(nup + 2), l->name);
  }
  lua_pop(L, nup);
}

void *sx_compat_testudata(lua_State *L, int idx, const char *tname) {
  void *p = lua_touserdata(L, idx);
  if (p == NULL || !lua_getmetatable(L, idx)) return NULL;
  luaL_getmetatable(L, tname);
  if (!lua_rawequal(L, -1, -2)) p = NULL;
  lua_pop(L, 2);
  return p;
}
#endif

/* ---- classes and the object map ------------------------------------------ */

/* Methods and metamethods carry the metatable as upvalue 1: a check against it is one
 * comparison instead of a registry lookup (connection.c uses it on the hot path). */
void sx_register_class(lua_State *L, const char *name, const luaL_Reg *methods,
                       const luaL_Reg *metamethods) {
  luaL_newmetatable(L, name);
  lua_pushstring(L, name);
  lua_setfield(L, -2, "__name");
  if (metamethods != NULL) {
    lua_pushvalue(L, -1);
    luaL_setfuncs(L, metamethods, 1);
  }
  lua_newtable(L);
  lua_pushvalue(L, -2);
  luaL_setfuncs(L, methods, 1);
  lua_setfield(L, -2, "__index");
  lua_pushliteral(L, "sslctx: metatable is protected");
  lua_setfield(L, -2, "__metatable");
  lua_pop(L, 1);
}

/* A weak-valued table per Lua state maps C pointers back to their Lua objects, so that an
 * OpenSSL callback, which only has the SSL*, can reach the connection object. */
static const char sx_objects_key = 'o';

static void objects_push_table(lua_State *L) {
  lua_rawgetp(L, LUA_REGISTRYINDEX, &sx_objects_key);
}

static void objects_create(lua_State *L) {
  lua_newtable(L);
  lua_newtable(L);
  lua_pushliteral(L, "v");
  lua_setfield(L, -2, "__mode");
  lua_setmetatable(L, -2);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &sx_objects_key);
}

void sx_objects_set(lua_State *L, const void *p, int idx) {
  idx = lua_absindex(L, idx);
  objects_push_table(L);
  lua_pushvalue(L, idx);
  lua_rawsetp(L, -2, p);
  lua_pop(L, 1);
}

void sx_objects_push_all(lua_State *L) {
  objects_push_table(L);
}

int sx_objects_push(lua_State *L, const void *p) {
  objects_push_table(L);
  lua_rawgetp(L, -1, p);
  lua_remove(L, -2);
  return !lua_isnil(L, -1);
}

/* ---- errors ------------------------------------------------------------- */

void sx_add_errors(luaL_Buffer *b) {
  unsigned long e;
  const char *data;
  int flags, first = 1;
  char buf[256];
  while ((e = sx_err_get(&data, &flags)) != 0) {
    const char *reason = ERR_reason_error_string(e);
    if (!first) luaL_addstring(b, ", ");
    first = 0;
    if (reason != NULL) {
      luaL_addstring(b, reason);
    } else {
      ERR_error_string_n(e, buf, sizeof buf);
      luaL_addstring(b, buf);
    }
    if (data != NULL && *data != '\0' && (flags & ERR_TXT_STRING)) {
      luaL_addstring(b, " (");
      luaL_addstring(b, data);
      luaL_addchar(b, ')');
    }
  }
}

int sx_push_error(lua_State *L, const char *prefix, const char *kind) {
  luaL_Buffer b;
  size_t len;
  lua_pushnil(L);
  luaL_buffinit(L, &b);
  luaL_addstring(&b, prefix);
  luaL_addstring(&b, ": ");
  sx_add_errors(&b);
  luaL_pushresult(&b);
  /* Nothing queued: report the prefix alone rather than a dangling ": ". */
  lua_tolstring(L, -1, &len);
  if (len == strlen(prefix) + 2) {
    lua_pop(L, 1);
    lua_pushstring(L, prefix);
  }
  lua_pushstring(L, kind);
  return 3;
}

int sx_push_failure(lua_State *L, const char *kind, const char *fmt, ...) {
  va_list ap;
  lua_pushnil(L);
  va_start(ap, fmt);
  lua_pushvfstring(L, fmt, ap);
  va_end(ap);
  lua_pushstring(L, kind);
  return 3;
}

/* nil, "<what>[: <path>]: <OpenSSL's reasons>", kind. */
int sx_push_ssl_failure(lua_State *L, const char *what, const char *path, const char *kind) {
  if (path == NULL) return sx_push_error(L, what, kind);
  lua_pushfstring(L, "%s: %s", what, path);
  sx_push_error(L, lua_tostring(L, -1), kind);
  lua_remove(L, -4);
  return 3;
}

int sx_where_error(lua_State *L, sx_where w, const char *problem) {
  if (w.opt != NULL)
    return luaL_argerror(L, w.arg, lua_pushfstring(L, "option '%s': %s", w.opt, problem));
  return luaL_argerror(L, w.arg, problem);
}

int sx_where_typeerror(lua_State *L, sx_where w, int idx, const char *expected) {
  return sx_where_error(L, w, lua_pushfstring(L, "%s expected, got %s", expected,
                                              luaL_typename(L, idx)));
}

/* ---- keywords ----------------------------------------------------------- */

int sx_keyword_index(const char *s, const char *const names[]) {
  int i;
  for (i = 0; names[i] != NULL; i++) {
    const char *a = s, *n = names[i];
    while (*a != '\0' && (*a == *n || (*a == '-' && *n == '_'))) a++, n++;
    if (*a == '\0' && *n == '\0') return i;
  }
  return -1;
}

int sx_is_pem_text(const char *s, size_t len) {
  size_t i = 0;
  while (i < len && isspace((unsigned char)s[i])) i++;
  return len - i >= 10 && memcmp(s + i, "-----BEGIN", 10) == 0;
}

/* ---- module ------------------------------------------------------------- */

/* SSL_set_retry_verify arrived in 3.0.2: asked of the running library, not the headers. */
int sx_has_retry_verify(void) {
  return OpenSSL_version_num() >= 0x30000020L;
}

int sx_compat_is_ip_literal(const char *s) {
  ASN1_OCTET_STRING *ip;
  const char *q;
  /* A DNS name has a character no IPv4/IPv6 literal has: decide without allocating. */
  for (q = s; *q != '\0'; q++)
    if (!((*q >= '0' && *q <= '9') || *q == '.' || *q == ':' || (*q >= 'a' && *q <= 'f') ||
          (*q >= 'A' && *q <= 'F'))) return 0;
  ip = a2i_IPADDRESS(s);
  ASN1_OCTET_STRING_free(ip);
  ERR_clear_error();
  return ip != NULL;
}

static CRYPTO_ONCE ex_once = CRYPTO_ONCE_STATIC_INIT;

static void ex_indices_init(void) {
  sx_ssl_ex_index = SSL_get_ex_new_index(0, (void *)"sslctx.connection", NULL, NULL, NULL);
  sx_ctx_ex_index = SSL_CTX_get_ex_new_index(0, (void *)"sslctx.context", NULL, NULL, NULL);
}

static const struct {
  const char *name;
  int what;
} version_items[] = {
  {"version", OPENSSL_VERSION},
  {"built_on", OPENSSL_BUILT_ON},
  {"directory", OPENSSL_DIR},
  {"platform", OPENSSL_PLATFORM},
  {"cflags", OPENSSL_CFLAGS},
  {"engines_dir", OPENSSL_ENGINES_DIR},
#if SX_OPENSSL3
  {"full_version", OPENSSL_FULL_VERSION_STRING},
  {"modules_dir", OPENSSL_MODULES_DIR},
  {"cpu_info", OPENSSL_CPU_INFO},
#endif
  {NULL, 0}
};

/* sslctx.openssl_version([what]) -> string; "number" gives OpenSSL_version_num(). */
static int l_openssl_version(lua_State *L) {
  const char *what = luaL_optstring(L, 1, "version");
  int i;
  if (sx_keyword_index(what, (const char *const[]){"number", NULL}) == 0) {
    lua_pushinteger(L, (lua_Integer)OpenSSL_version_num());
    return 1;
  }
  for (i = 0; version_items[i].name != NULL; i++) {
    const char *one[2];
    one[0] = version_items[i].name;
    one[1] = NULL;
    if (sx_keyword_index(what, one) == 0) {
      lua_pushstring(L, OpenSSL_version(version_items[i].what));
      return 1;
    }
  }
  return luaL_argerror(L, 1, lua_pushfstring(L, "unknown item '%s'", what));
}

/* Under LuaJIT a cdata argument may be a pointer; only LuaJIT's ffi can tell what type it
 * is, so the core asks a checker written against the ffi, made when the module opens and
 * kept where no Lua code reaches it (a checker that Lua could replace would let any cdata
 * pass as a pointer).  Its text: a function pointer (the type reads "...)>") for callbacks,
 * a data pointer ("...*>", an SSL*) for borrow; nothing else. */
static const char cdata_checker_key = 'c';
static const char cdata_checker_src[] =
  "local ok, ffi = pcall(require, 'ffi')\n"
  "if not ok then return nil end\n"
  "local typeof, tostring = ffi.typeof, tostring\n"
  "return function(value, what)\n"
  "  local t = tostring(typeof(value))\n"
  "  local is_function = t:match('%)>$') ~= nil\n"
  "  if what == 'function' then return is_function end\n"
  "  return not is_function and t:match('%*>$') ~= nil\n"
  "end\n";

/* Only LuaJIT has cdata (its global 'jit' says so); without a checker every cdata is refused. */
static void cdata_checker_open(lua_State *L) {
  lua_getglobal(L, "jit");
  if (lua_isnil(L, -1) || luaL_loadstring(L, cdata_checker_src) != 0 || lua_pcall(L, 0, 1, 0) != 0) {
    lua_pop(L, 1);
    return;
  }
  if (lua_isfunction(L, -1)) lua_rawsetp(L, LUA_REGISTRYINDEX, &cdata_checker_key);
  else lua_pop(L, 1);
  lua_pop(L, 1);
}

int sx_cdata_is(lua_State *L, int idx, const char *what) {
  int ok;
  idx = lua_absindex(L, idx);
  lua_rawgetp(L, LUA_REGISTRYINDEX, &cdata_checker_key);
  if (lua_isnil(L, -1)) {
    lua_pop(L, 1);
    return 0;   /* no way to check the type: refuse rather than guess */
  }
  lua_pushvalue(L, idx);
  lua_pushstring(L, what);
  lua_call(L, 2, 1);
  ok = lua_toboolean(L, -1);
  lua_pop(L, 1);
  return ok;
}

int sx_context_new(lua_State *L);

/* Sentinels: unique light userdata, cheap to compare in a callback's hot path. */
static const char sx_retry_sentinel = 'R';
static const char sx_keep_sentinel = 'K';
const void *const sx_RETRY = &sx_retry_sentinel;
const void *const sx_KEEP = &sx_keep_sentinel;

static void check_runtime_version(lua_State *L) {
  unsigned long built = OPENSSL_VERSION_NUMBER, running = OpenSSL_version_num();
  if (SX_OPENSSL_MAJOR(built) != SX_OPENSSL_MAJOR(running))
    luaL_error(L, "sslctx: built against OpenSSL %d.x (%s) but the running libssl is %s; "
               "rebuild sslctx for this OpenSSL", (int)SX_OPENSSL_MAJOR(built),
               OPENSSL_VERSION_TEXT, OpenSSL_version(OPENSSL_VERSION));
}

/* Callbacks, BIO methods and ex_data free functions registered with OpenSSL point into this
 * library, and OpenSSL outlives any Lua state (nginx closes its VM on reload): the library
 * must never be unloaded. */
static void pin_module(void) {
  Dl_info info;
  if (dladdr((void *)&pin_module, &info) && info.dli_fname != NULL)
    dlopen(info.dli_fname, RTLD_NOW | RTLD_NODELETE);
}

int luaopen_sslctx_core(lua_State *L) {
  static const luaL_Reg funcs[] = {
    {"new", sx_context_new},
    {"session", sx_session_new},
    {"x509", sx_x509_new},
    {"pkey", sx_pkey_new},
    {"crl", sx_crl_new},
    {"openssl_version", l_openssl_version},
    {"borrow", sx_hook_borrow},
    {NULL, NULL}
  };
  check_runtime_version(L);
  pin_module();
  if (!OPENSSL_init_ssl(0, NULL)) luaL_error(L, "sslctx: OpenSSL failed to initialise");
  CRYPTO_THREAD_run_once(&ex_once, ex_indices_init);
  if (sx_ssl_ex_index < 0 || sx_ctx_ex_index < 0)
    luaL_error(L, "sslctx: no OpenSSL ex_data index available");
  objects_create(L);
  cdata_checker_open(L);
  sx_loaders_open(L);       /* holders and the password slot: before x509 and pkey */
  sx_x509_open(L);
  sx_pkey_open(L);
  sx_session_open(L);
  sx_context_open(L);
  sx_connection_open(L);
  sx_conninfo_open(L);      /* more connection methods, into its class */
  luaL_newlib(L, funcs);
  sx_verify_open(L);        /* adds c_callbacks, and the store class */
  lua_pushlightuserdata(L, (void *)sx_RETRY);
  lua_setfield(L, -2, "RETRY");
  lua_pushlightuserdata(L, (void *)sx_KEEP);
  lua_setfield(L, -2, "KEEP");
  lua_pushliteral(L, "sslctx 0.1.0");
  lua_setfield(L, -2, "_VERSION");
  return 1;
}

/* ---- the collector and OpenSSL's memory ---------------------------------- */

/* A collector step as if kb KB had been allocated: programs that drop objects without
 * close() then collect them at the pace of the memory they really hold.  A collector the
 * program stopped stays stopped (5.4's step would run it regardless). */
void sx_gc_native(lua_State *L, int kb) {
#if LUA_VERSION_NUM >= 502
  if (!lua_gc(L, LUA_GCISRUNNING, 0)) return;
#endif
  lua_gc(L, LUA_GCSTEP, kb);
}

/* ---- digests ------------------------------------------------------------ */

static EVP_MD *sha256_md = NULL;
static CRYPTO_ONCE sha256_once = CRYPTO_ONCE_STATIC_INIT;
static void sha256_init(void) {
#if SX_OPENSSL3
  sha256_md = EVP_MD_fetch(NULL, "SHA256", NULL);   /* fetched once, not per digest */
#endif
}

void sx_digest_init(sx_digest *d) {
  const EVP_MD *md = EVP_sha256();
  CRYPTO_THREAD_run_once(&sha256_once, sha256_init);
  if (sha256_md != NULL) md = sha256_md;
  d->md = EVP_MD_CTX_new();
  d->failed = d->md == NULL || !EVP_DigestInit_ex(d->md, md, NULL);
}

void sx_digest_update(sx_digest *d, const void *p, size_t n) {
  if (!d->failed && n > 0 && !EVP_DigestUpdate(d->md, p, n)) d->failed = 1;
}

/* Folds a labelled value into a running digest (trust and policy identities). */
void sx_digest_mix(unsigned char digest[32], const char *what, const void *p, size_t n) {
  sx_digest d;
  sx_digest_init(&d);
  sx_digest_update(&d, digest, 32);
  sx_digest_update(&d, what, strlen(what) + 1);
  sx_digest_update(&d, p, n);
  sx_digest_final(&d, digest);
}

int sx_digest_final(sx_digest *d, unsigned char out[32]) {
  unsigned int n = 0;
  int ok = !d->failed && EVP_DigestFinal_ex(d->md, out, &n) && n == 32;
  EVP_MD_CTX_free(d->md);
  d->md = NULL;
  /* A failed digest must never collide with another: fill with a value no policy produces. */
  if (!ok) memset(out, 0xff, 32), RAND_bytes(out, 16);
  ERR_clear_error();
  return ok;
}
