/* verify.c: verification modes, parameters, the verify-callback trampoline and the `store`
 * object a Lua callback sees. */
#define _GNU_SOURCE 1   /* RTLD_DEFAULT */
#include <string.h>
#include <dlfcn.h>
#include "private.h"

/* ---- modes -------------------------------------------------------------- */

static const char *const mode_keywords[] = {
  "verify_peer", "fail_if_no_peer_cert", "verify_client_once", "verify_post_handshake", NULL
};
static const int mode_bits[] = {
  SSL_VERIFY_PEER, SSL_VERIFY_FAIL_IF_NO_PEER_CERT, SSL_VERIFY_CLIENT_ONCE,
  SSL_VERIFY_POST_HANDSHAKE
};
#define ALL_MODE_BITS 15

static const struct {
  const char *name;
  int mode;
  int server_only;
} presets[] = {
  {"never", 0, 0},
  {"always", SSL_VERIFY_PEER, 0},
  {"once", SSL_VERIFY_PEER | SSL_VERIFY_CLIENT_ONCE, 1},
  {"require", SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, 1},
  {"require_once", SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT | SSL_VERIFY_CLIENT_ONCE, 1},
  {"post_handshake", SSL_VERIFY_PEER | SSL_VERIFY_POST_HANDSHAKE, 1},
  {"require_post_handshake",
   SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT | SSL_VERIFY_POST_HANDSHAKE, 1},
  {NULL, 0, 0}
};

static int parse_integer_mode(lua_State *L, int idx, sx_where w) {
  lua_Integer v;
  if (!sx_isintegral(L, idx)) return sx_where_error(L, w, "mode number must be an integer");
  v = lua_tointeger(L, idx);
  if (v < 0 || (v & ~(lua_Integer)ALL_MODE_BITS) != 0)
    return sx_where_error(L, w, lua_pushfstring(L, "invalid verify flags %d (allowed bits: 1, 2, "
                                                   "4, 8)", (int)v));
  return (int)v;
}

static int parse_preset_mode(lua_State *L, int idx, int side, sx_where w) {
  const char *s = lua_tostring(L, idx);
  int i;
  for (i = 0; presets[i].name != NULL; i++) {
    const char *one[2];
    one[0] = presets[i].name;
    one[1] = NULL;
    if (sx_keyword_index(s, one) != 0) continue;
    if (presets[i].server_only && side == SX_CLIENT)
      return sx_where_error(L, w, lua_pushfstring(L, "mode '%s' is for the server side only", s));
    return presets[i].mode;
  }
  return sx_where_error(L, w, lua_pushfstring(L, "unknown mode keyword '%s'", s));
}

static int parse_keyword_mode(lua_State *L, int idx, int side, sx_where w) {
  int mode = 0, i, n = (int)lua_rawlen(L, idx);
  lua_pushnil(L);
  while (lua_next(L, idx)) {   /* every entry, so that non-sequence keys are caught too */
    lua_pop(L, 1);
    if (!sx_isintegral(L, -1) || lua_tointeger(L, -1) < 1 || lua_tointeger(L, -1) > n)
      return sx_where_error(L, w, "mode table must be a list of keywords");
  }
  for (i = 1; i <= n; i++) {
    int k;
    lua_rawgeti(L, idx, i);
    if (lua_type(L, -1) != LUA_TSTRING)
      return sx_where_error(L, w, lua_pushfstring(L, "mode keyword #%d is a %s, not a string", i,
                                                  luaL_typename(L, -1)));
    k = sx_keyword_index(lua_tostring(L, -1), mode_keywords);
    if (k < 0)
      return sx_where_error(L, w, lua_pushfstring(L, "unknown mode keyword '%s'",
                                                  lua_tostring(L, -1)));
    if (k > 0 && side == SX_CLIENT)
      return sx_where_error(L, w, lua_pushfstring(L, "mode keyword '%s' is for the server side "
                                                     "only", mode_keywords[k]));
    mode |= mode_bits[k];
    lua_pop(L, 1);
  }
  if ((mode & ~SSL_VERIFY_PEER) != 0 && !(mode & SSL_VERIFY_PEER)) {
    for (i = 1; !(mode & mode_bits[i]); i++) {}
    return sx_where_error(L, w, lua_pushfstring(L, "mode keyword '%s' needs 'verify_peer'",
                                                mode_keywords[i]));
  }
  return mode;
}

/* The side argument of set/get_verification_mode: "client" or "server". */
int sx_check_side(lua_State *L, int arg) {
  static const char *const sides[] = {"client", "server", NULL};
  int k = lua_type(L, arg) == LUA_TSTRING ? sx_keyword_index(lua_tostring(L, arg), sides) : -1;
  if (k >= 0) return k;
  if (lua_type(L, arg) == LUA_TSTRING)
    return luaL_argerror(L, arg, lua_pushfstring(L, "side must be 'server' or 'client', got '%s'",
                                                 lua_tostring(L, arg)));
  return luaL_argerror(L, arg, lua_pushfstring(L, "side must be 'server' or 'client', got %s",
                                               luaL_typename(L, arg)));
}

int sx_parse_mode(lua_State *L, int idx, int side, sx_where w) {
  idx = lua_absindex(L, idx);
  switch (lua_type(L, idx)) {
  case LUA_TNUMBER: return parse_integer_mode(L, idx, w);
  case LUA_TSTRING: return parse_preset_mode(L, idx, side, w);
  case LUA_TTABLE: return parse_keyword_mode(L, idx, side, w);
  default: return sx_where_typeerror(L, w, idx, "mode (integer, preset name or keyword table)");
  }
}

/* Pushes flags, integer and, when side >= 0, the preset name of that side or nil. */
int sx_push_mode(lua_State *L, int mode, int side) {
  int i, n = 0;
  lua_createtable(L, 4, 0);
  for (i = 0; mode_keywords[i] != NULL; i++) {
    if (mode & mode_bits[i]) {
      lua_pushstring(L, mode_keywords[i]);
      lua_rawseti(L, -2, ++n);
    }
  }
  lua_pushinteger(L, mode);
  if (side < 0) return 2;
  for (i = 0; presets[i].name != NULL; i++) {
    if (presets[i].mode == mode && !(presets[i].server_only && side == SX_CLIENT)) {
      lua_pushstring(L, presets[i].name);
      return 3;
    }
  }
  lua_pushnil(L);
  return 3;
}

/* ---- callbacks: parsing ------------------------------------------------- */

/* Lua cannot hold a function pointer portably; light userdata carries a data pointer, so the
 * conversion goes through memcpy (both are the same size on every platform OpenSSL supports). */
static sx_verify_fn fn_from_pointer(void *p) {
  sx_verify_fn fn;
  memcpy(&fn, &p, sizeof fn);
  return fn;
}

static void *module_handle(void) {
  static void *self = NULL;
  Dl_info info;
  if (self == NULL && dladdr((void *)&module_handle, &info) && info.dli_fname != NULL)
    self = dlopen(info.dli_fname, RTLD_NOW | RTLD_NOLOAD);
  return self;
}

/* "symbol" (global symbols, then this module's own) or "/absolute/lib.so:symbol".  Libraries
 * opened here are never closed: a callback pointer into them may live as long as the process. */
static sx_verify_fn resolve_symbol(lua_State *L, int idx, sx_where w) {
  const char *spec = lua_tostring(L, idx);
  const char *colon = strrchr(spec, ':');
  void *p = NULL;
  if (spec[0] == '/' && colon != NULL) {
    const char *path;
    void *lib;
    lua_pushlstring(L, spec, (size_t)(colon - spec));
    path = lua_tostring(L, -1);
    lib = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (lib == NULL)
      sx_where_error(L, w, lua_pushfstring(L, "cannot load '%s': %s", path, dlerror()));
    p = dlsym(lib, colon + 1);
    lua_pop(L, 1);
  } else if (spec[0] == '/') {
    sx_where_error(L, w, "a library path must be followed by ':symbol'");
  } else {
    void *self = module_handle();
    p = dlsym(RTLD_DEFAULT, spec);
    if (p == NULL && self != NULL) p = dlsym(self, spec);
  }
  if (p == NULL || *spec == '\0' || (colon != NULL && colon[1] == '\0'))
    sx_where_error(L, w, lua_pushfstring(L, "C symbol '%s' not found", spec));
  return fn_from_pointer(p);
}

#define LUA_TCDATA_JIT 10   /* LuaJIT's type tag for cdata */

void sx_parse_callback(lua_State *L, int idx, sx_where w, sx_callback *cb) {
  idx = lua_absindex(L, idx);
  memset(cb, 0, sizeof *cb);
  switch (lua_type(L, idx)) {
  case LUA_TNONE:
  case LUA_TNIL:
    return;
  case LUA_TFUNCTION:
    cb->kind = SX_CB_LUA;
    cb->wants_store = 1;
    sx_callback_identify(L, idx, NULL, cb);
#if LUA_VERSION_NUM >= 502
    {   /* fn(ok) never sees a store: none is made for it */
      lua_Debug ar;
      lua_pushvalue(L, idx);
      if (lua_getinfo(L, ">u", &ar) && !ar.isvararg && ar.nparams < 2) cb->wants_store = 0;
    }
#endif
    return;
  case LUA_TLIGHTUSERDATA:
    if (lua_touserdata(L, idx) == sx_RETRY || lua_touserdata(L, idx) == sx_KEEP)
      sx_where_error(L, w, "sslctx.RETRY and sslctx.KEEP are not callbacks");
    if (lua_touserdata(L, idx) == NULL) sx_where_error(L, w, "NULL function pointer");
    cb->kind = SX_CB_C;
    cb->fn = fn_from_pointer(lua_touserdata(L, idx));
    sx_callback_identify(L, idx, NULL, cb);
    return;
  case LUA_TSTRING:
    cb->kind = SX_CB_C;
    cb->fn = resolve_symbol(L, idx, w);
    sx_callback_name(lua_tostring(L, idx), cb);
    return;
  default:
#ifdef LUAJIT_VERSION_NUM
    if (lua_type(L, idx) == LUA_TCDATA_JIT) {  /* a pointer cdata's payload is the pointer */
      const void *const *payload;
      if (!sx_cdata_is(L, idx, "function"))
        sx_where_error(L, w, "cdata callback must be a C function pointer");
      payload = (const void *const *)lua_topointer(L, idx);
      if (payload == NULL || *payload == NULL) sx_where_error(L, w, "NULL function pointer");
      cb->kind = SX_CB_C;
      cb->fn = fn_from_pointer((void *)*payload);
      sx_callback_identify(L, idx, *payload, cb);   /* the same serial as the pointer's */
      return;
    }
#endif
    sx_where_typeerror(L, w, idx, "callback (function, C function pointer or symbol name)");
  }
}

int sslctx_cb_preverify(int ok, X509_STORE_CTX *store);

/* Soft fail lets every handshake finish with the verdict recorded: the trampoline wraps
 * whatever callback there is, and a missing certificate is not fatal.  "No callback" installs
 * one that returns OpenSSL's verdict: SSL_set_verify ignores a NULL callback and would keep
 * the previous one (on nginx's SSL, nginx's own, which accepts everything). */
void sx_apply_verify(SSL *ssl, const sx_policy *p) {
  sx_verify_fn fn = sslctx_cb_preverify;
  int mode = p->mode;
  if (p->soft_fail) {
    fn = sx_verify_trampoline;
    mode &= ~SSL_VERIFY_FAIL_IF_NO_PEER_CERT;
  } else if (p->cb.kind == SX_CB_LUA) {
    fn = sx_verify_trampoline;
  } else if (p->cb.kind == SX_CB_C) {
    fn = p->cb.fn;
  }
  SSL_set_verify(ssl, mode, fn);
}

/* ---- shipped C callbacks (trusted native code) ------------------------- */

int sslctx_cb_reject_all(int ok, X509_STORE_CTX *store);
int sslctx_cb_insecure_accept_all(int ok, X509_STORE_CTX *store);

int sslctx_cb_preverify(int ok, X509_STORE_CTX *store) {
  (void)store;
  return ok;
}

int sslctx_cb_reject_all(int ok, X509_STORE_CTX *store) {
  (void)ok;
  if (X509_STORE_CTX_get_error(store) == X509_V_OK)
    X509_STORE_CTX_set_error(store, X509_V_ERR_APPLICATION_VERIFICATION);
  return 0;
}

int sslctx_cb_insecure_accept_all(int ok, X509_STORE_CTX *store) {
  (void)ok;
  X509_STORE_CTX_set_error(store, X509_V_OK);
  return 1;
}

/* ---- the store object --------------------------------------------------- */

/* Valid only during its verify callback.  The object is unreachable from the moment the
 * callback returns (or raises), so the GC may take it before run_callback expires it: __gc
 * tells the call record that it is gone, and run_callback never writes into freed memory. */
typedef struct sx_store {
  X509_STORE_CTX *store;     /* NULL once its callback returned */
  sx_conn *conn;
  struct verify_call *call;  /* the running call, which expires it; NULL afterwards */
} sx_store;

static sx_store *store_check(lua_State *L) {
  sx_store *s = (sx_store *)luaL_checkudata(L, 1, SX_STORE_MT);
  if (s->store == NULL)
    luaL_error(L, "sslctx.store used outside its verify callback (it is valid only during the "
                  "call)");
  return s;
}

static int store_error(lua_State *L) {
  lua_pushinteger(L, X509_STORE_CTX_get_error(store_check(L)->store));
  return 1;
}

static int store_error_string(lua_State *L) {
  int e = X509_STORE_CTX_get_error(store_check(L)->store);
  lua_pushstring(L, X509_verify_cert_error_string(e));
  return 1;
}

static int store_depth(lua_State *L) {
  lua_pushinteger(L, X509_STORE_CTX_get_error_depth(store_check(L)->store));
  return 1;
}

static int store_cert(lua_State *L) {
  X509 *x = X509_STORE_CTX_get_current_cert(store_check(L)->store);
  if (x == NULL) lua_pushnil(L);
  else sx_x509_push(L, x);
  return 1;
}

static int store_chain(lua_State *L) {
  STACK_OF(X509) *chain = X509_STORE_CTX_get0_chain(store_check(L)->store);
  int i, n = chain != NULL ? sk_X509_num(chain) : 0;
  lua_createtable(L, n, 0);
  for (i = 0; i < n; i++) {
    sx_x509_push(L, sk_X509_value(chain, i));
    lua_rawseti(L, -2, i + 1);
  }
  return 1;
}

static int store_set_error(lua_State *L) {
  sx_store *s = store_check(L);
  lua_Integer code = luaL_checkinteger(L, 2);
  luaL_argcheck(L, code >= 0 && code <= 0xffff, 2, "verify error code out of range");
  X509_STORE_CTX_set_error(s->store, (int)code);
  return 0;
}

static int store_connection(lua_State *L) {
  sx_store *s = store_check(L);
  if (!sx_objects_push(L, s->conn)) lua_pushnil(L);
  return 1;
}

static int store_tostring(lua_State *L) {
  sx_store *s = (sx_store *)luaL_checkudata(L, 1, SX_STORE_MT);
  lua_pushfstring(L, "sslctx.store (%s)", s->store != NULL ? "valid" : "expired");
  return 1;
}

/* ---- the trampoline ------------------------------------------------------ */

enum { VERDICT_KEEP, VERDICT_ACCEPT, VERDICT_REJECT, VERDICT_RETRY };

typedef struct verify_call {
  sx_conn *conn;
  X509_STORE_CTX *store;
  int ok;
  int verdict;
  sx_store *ud;          /* the store object handed to Lua, expired afterwards */
} verify_call;

static int store_gc(lua_State *L) {
  sx_store *s = (sx_store *)luaL_checkudata(L, 1, SX_STORE_MT);
  if (s->call != NULL) s->call->ud = NULL;
  s->call = NULL;
  s->store = NULL;   /* expired, should a finalizer elsewhere bring it back */
  return 0;
}

static int verify_helper(lua_State *L) {
  verify_call *vc = (verify_call *)lua_touserdata(L, 1);
  sx_conn_push(L, vc->conn);
  sx_getslot(L, -1, SX_SLOT_CB);
  lua_pushboolean(L, vc->ok);
  if (vc->conn->policy.cb.wants_store) {
    vc->ud = (sx_store *)lua_newuserdata(L, sizeof(sx_store));
    vc->ud->store = vc->store;
    vc->ud->conn = vc->conn;
    vc->ud->call = vc;
    luaL_setmetatable(L, SX_STORE_MT);
    lua_call(L, 2, 1);
  } else {
    lua_call(L, 1, 1);
  }
  switch (lua_type(L, -1)) {
  case LUA_TNIL: vc->verdict = VERDICT_KEEP; break;
  case LUA_TBOOLEAN: vc->verdict = lua_toboolean(L, -1) ? VERDICT_ACCEPT : VERDICT_REJECT; break;
  case LUA_TLIGHTUSERDATA:
    if (lua_touserdata(L, -1) == sx_RETRY) {
      if (vc->conn->side != SX_CLIENT || !sx_has_retry_verify())
        return luaL_error(L, "RETRY unsupported here");
      vc->verdict = VERDICT_RETRY;
      break;
    }
    /* fall through */
  default:
    return luaL_error(L, "invalid return value (a %s); expected true, false, nil or "
                         "sslctx.RETRY", luaL_typename(L, -1));
  }
  return 0;
}

/* A callback failed: reject this step and make sure OpenSSL acts on the rejection even where
 * the mode would make it ignore it (a client under "never"). */
static int fail_closed(SSL *ssl, X509_STORE_CTX *store) {
  X509_STORE_CTX_set_error(store, X509_V_ERR_APPLICATION_VERIFICATION);
  if (!(SSL_get_verify_mode(ssl) & SSL_VERIFY_PEER))
    SSL_set_verify(ssl, SSL_get_verify_mode(ssl) | SSL_VERIFY_PEER, SSL_get_verify_callback(ssl));
  return 0;
}

/* The verdict of the connection's callback for this step: 1 accept, 0 reject. */
static int run_callback(sx_conn *conn, SSL *ssl, int ok, X509_STORE_CTX *store) {
  verify_call vc;
  int done, base = 0;
  if (conn->policy.cb.kind == SX_CB_C) return conn->policy.cb.fn(ok, store);
  if (conn->policy.cb.kind != SX_CB_LUA) return ok;
  if (conn->L == NULL || conn->cb_failed) {
    X509_STORE_CTX_set_error(store, X509_V_ERR_APPLICATION_VERIFICATION);
    return 0;   /* no thread to run Lua on, or already failed: fail closed */
  }
  if (conn->retry_verify) return 1;   /* RETRY asked: let this pass end, it will be rerun */
  if (conn->borrowed) {
    base = lua_gettop(conn->L);
    sx_hook_clear_request(conn->L);
  }
  vc.conn = conn;
  vc.store = store;
  vc.ok = ok;
  vc.verdict = VERDICT_KEEP;
  vc.ud = NULL;
  done = sx_callback_run(conn, "verify", verify_helper, &vc);
  if (vc.ud != NULL) vc.ud->store = NULL, vc.ud->call = NULL;   /* NULL: already collected */
  if (conn->borrowed) sx_hook_report(conn, base);
  if (!done) return fail_closed(ssl, store);
  switch (vc.verdict) {
  case VERDICT_ACCEPT:
    if (!ok) X509_STORE_CTX_set_error(store, X509_V_OK);
    return 1;
  case VERDICT_REJECT:
    if (X509_STORE_CTX_get_error(store) == X509_V_OK)
      X509_STORE_CTX_set_error(store, X509_V_ERR_APPLICATION_VERIFICATION);
    return 0;
  case VERDICT_RETRY:
    conn->retry_verify = 1;
    if (!sx_set_retry_verify(ssl)) return fail_closed(ssl, store);
    return 1;
  default:
    return ok;
  }
}

int sx_verify_trampoline(int ok, X509_STORE_CTX *store) {
  SSL *ssl = (SSL *)X509_STORE_CTX_get_ex_data(store, SSL_get_ex_data_X509_STORE_CTX_idx());
  sx_conn *conn = ssl != NULL ? (sx_conn *)SSL_get_ex_data(ssl, sx_ssl_ex_index) : NULL;
  int verdict;
  if (conn == NULL) {
    X509_STORE_CTX_set_error(store, X509_V_ERR_APPLICATION_VERIFICATION);
    return 0;   /* the object is gone (its VM closed): fail closed */
  }
  verdict = run_callback(conn, ssl, ok, store);
  if (conn->policy.soft_fail && !conn->cb_failed) {   /* a callback's error still fails closed */
    if (!verdict && X509_STORE_CTX_get_error(store) == X509_V_OK)
      X509_STORE_CTX_set_error(store, X509_V_ERR_APPLICATION_VERIFICATION);
    return 1;   /* the verdict stays recorded for the request phase to judge */
  }
  return verdict;
}

/* ---- verification parameters ------------------------------------------- */

static const char *const param_flag_names[] = {
  "crl_check", "crl_check_all", "x509_strict", "partial_chain", "trusted_first",
  "no_check_time", NULL
};
static const unsigned long param_flag_bits[] = {
  /* as `openssl verify -crl_check_all`: checking all levels implies checking */
  X509_V_FLAG_CRL_CHECK, X509_V_FLAG_CRL_CHECK | X509_V_FLAG_CRL_CHECK_ALL, X509_V_FLAG_X509_STRICT,
  X509_V_FLAG_PARTIAL_CHAIN, X509_V_FLAG_TRUSTED_FIRST, X509_V_FLAG_NO_CHECK_TIME
};

static const char *const param_keys[] = {
  "time", "flags", "purpose", "depth", "host", "ip", NULL
};

static unsigned long parse_param_flags(lua_State *L, int idx, sx_where w) {
  unsigned long bits = 0;
  int i, n;
  if (!lua_istable(L, idx)) sx_where_typeerror(L, w, idx, "flags table");
  n = (int)lua_rawlen(L, idx);
  for (i = 1; i <= n; i++) {
    int k;
    lua_rawgeti(L, idx, i);
    if (lua_type(L, -1) != LUA_TSTRING)
      sx_where_error(L, w, lua_pushfstring(L, "flags entry #%d is not a string", i));
    k = sx_keyword_index(lua_tostring(L, -1), param_flag_names);
    if (k < 0)
      sx_where_error(L, w, lua_pushfstring(L, "unknown verify flag '%s'", lua_tostring(L, -1)));
    bits |= param_flag_bits[k];
    lua_pop(L, 1);
  }
  return bits;
}

static void check_param_keys(lua_State *L, int idx, sx_where w) {
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    lua_pop(L, 1);
    if (lua_type(L, -1) != LUA_TSTRING)
      sx_where_error(L, w, lua_pushfstring(L, "verification parameter keys must be strings, "
                                              "got a %s", luaL_typename(L, -1)));
    if (sx_keyword_index(lua_tostring(L, -1), param_keys) < 0)
      sx_where_error(L, w, lua_pushfstring(L, "unknown verification parameter '%s'",
                                           lua_tostring(L, -1)));
  }
}

/* Applies {time=, flags=, purpose=, depth=, host=, ip=} to the owner's parameters, all
 * validated before any is applied, and folds them into digest (part of the session id
 * context).  *identity is set when a host or ip was given. */
void sx_set_verify_params(lua_State *L, sx_param_getter get, void *owner, int idx, sx_where w,
                          int *flags_explicit, int *identity, sx_policy *pol) {
  X509_VERIFY_PARAM *param;
  lua_Integer when = 0, depth = -1;
  int has_time, has_flags, purpose = -1;
  unsigned long flags = 0;
  size_t hostlen = 0;
  const char *host = NULL, *ip = NULL;
  idx = lua_absindex(L, idx);
  if (!lua_istable(L, idx)) sx_where_typeerror(L, w, idx, "table");
  check_param_keys(L, idx, w);
  lua_getfield(L, idx, "time");
  has_time = !lua_isnil(L, -1);
  if (has_time && !sx_isintegral(L, -1)) sx_where_error(L, w, "time must be an integer (epoch)");
  when = lua_tointeger(L, -1);
  lua_getfield(L, idx, "flags");
  has_flags = !lua_isnil(L, -1);
  if (has_flags) flags = parse_param_flags(L, lua_absindex(L, -1), w);
  lua_getfield(L, idx, "purpose");
  if (!lua_isnil(L, -1)) {
    static const char *const purposes[] = {"sslserver", "sslclient", NULL};
    int k = lua_type(L, -1) == LUA_TSTRING ? sx_keyword_index(lua_tostring(L, -1), purposes) : -1;
    if (k < 0) sx_where_error(L, w, "purpose must be 'sslserver' or 'sslclient'");
    purpose = k == 0 ? X509_PURPOSE_SSL_SERVER : X509_PURPOSE_SSL_CLIENT;
  }
  lua_getfield(L, idx, "depth");
  if (!lua_isnil(L, -1)) {
    if (!sx_isintegral(L, -1) || lua_tointeger(L, -1) < 0 || lua_tointeger(L, -1) > SX_MAX_DEPTH)
      sx_where_error(L, w, "depth must be an integer from 0 to 2^31-1");
    depth = lua_tointeger(L, -1);
  }
  lua_getfield(L, idx, "host");
  if (!lua_isnil(L, -1)) {
    if (lua_type(L, -1) != LUA_TSTRING) sx_where_error(L, w, "host must be a string");
    host = lua_tolstring(L, -1, &hostlen);
    if (hostlen == 0 || memchr(host, '\0', hostlen) != NULL) sx_where_error(L, w, "invalid host");
  }
  lua_getfield(L, idx, "ip");
  if (!lua_isnil(L, -1)) {
    if (lua_type(L, -1) != LUA_TSTRING) sx_where_error(L, w, "ip must be a string");
    ip = lua_tostring(L, -1);
    if (!sx_is_ip_literal(ip))
      sx_where_error(L, w, lua_pushfstring(L, "invalid IP address '%s'", ip));
  }
  /* Validated: apply. */
  param = get(owner);
  if (param == NULL) luaL_argerror(L, 1, "closed while the parameters were read");
  if (identity != NULL && (host != NULL || ip != NULL)) *identity = 1;
  if (has_time) {
    X509_VERIFY_PARAM_set_time(param, (time_t)when);
    pol->has_time = 1;
    pol->time = (int64_t)when;
  }
  if (has_flags) {
    unsigned long managed = 0;
    int i;
    for (i = 0; param_flag_names[i] != NULL; i++) managed |= param_flag_bits[i];
    X509_VERIFY_PARAM_clear_flags(param, managed);
    if (flags != 0) X509_VERIFY_PARAM_set_flags(param, flags);
    if (flags_explicit != NULL) *flags_explicit = 1;
  }
  if (purpose >= 0) {
    X509_VERIFY_PARAM_set_purpose(param, purpose);
    pol->purpose = purpose;
  }
  if (depth >= 0) X509_VERIFY_PARAM_set_depth(param, (int)depth);
  if (host != NULL) X509_VERIFY_PARAM_set1_host(param, host, hostlen);
  if (ip != NULL) {
    X509_VERIFY_PARAM_set1_ip_asc(param, ip);
    memset(pol->ip, 0, sizeof pol->ip);
    strncpy(pol->ip, ip, sizeof pol->ip - 1);   /* an IP literal is at most 45 bytes */
  }
  lua_pop(L, 6);
}

/* ---- registration ------------------------------------------------------ */

void sx_verify_open(lua_State *L) {
  static const luaL_Reg store_methods[] = {
    {"error", store_error},
    {"error_string", store_error_string},
    {"depth", store_depth},
    {"cert", store_cert},
    {"chain", store_chain},
    {"set_error", store_set_error},
    {"connection", store_connection},
    {NULL, NULL}
  };
  static const luaL_Reg store_meta[] = {
    {"__tostring", store_tostring},
    {"__gc", store_gc},
    {NULL, NULL}
  };
  sx_register_class(L, SX_STORE_MT, store_methods, store_meta);
  /* module table is on top: add c_callbacks */
  lua_createtable(L, 0, 3);
  lua_pushlightuserdata(L, (void *)(size_t)&sslctx_cb_preverify);
  lua_setfield(L, -2, "preverify");
  lua_pushlightuserdata(L, (void *)(size_t)&sslctx_cb_reject_all);
  lua_setfield(L, -2, "reject_all");
  lua_pushlightuserdata(L, (void *)(size_t)&sslctx_cb_insecure_accept_all);
  lua_setfield(L, -2, "insecure_accept_all");
  lua_setfield(L, -2, "c_callbacks");
}
