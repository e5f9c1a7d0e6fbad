/* context.c: the SSL_CTX object (LispWorks make-ssl-ctx and its setters). */
#include <errno.h>
#include <string.h>
#include <sys/stat.h>
#include <openssl/pem.h>
#include "private.h"

static const char *const side_names[] = {"client", "server", "both", NULL};

/* ---- life cycle --------------------------------------------------------- */

static sx_ctx *ctx_check_any(lua_State *L, int arg) {
  return (sx_ctx *)luaL_checkudata(L, arg, SX_CTX_MT);
}

sx_ctx *sx_ctx_check(lua_State *L, int arg) {
  sx_ctx *c = ctx_check_any(L, arg);
  if (c->ctx == NULL) luaL_argerror(L, arg, "context is closed");
  return c;
}

/* One idempotent release for close(), __close and __gc: the context takes no new work.
 * Connections made from it hold the SSL_CTX and this object (their context slots) to their
 * end, so what their callbacks read through it stays: the SSL_CTX's pointer back here, the
 * uservalue's callbacks and the ALPN list, until the collector takes the object. */
static void ctx_release(sx_ctx *c) {
  if (c->ctx == NULL) return;
  SSL_CTX_free(c->ctx);   /* connections hold their own references */
  c->ctx = NULL;
  OPENSSL_free(c->trust_dirs);
  c->trust_dirs = NULL;
}

static int ctx_gc(lua_State *L) {
  sx_ctx *c = ctx_check_any(L, 1);
  ctx_release(c);
  /* no connection is left to select with the list, or to make tickets or sessions */
  OPENSSL_free(c->alpn_select_wire);
  c->alpn_select_wire = NULL;
  sx_tickets_free(&c->tickets);
  sx_store_free(&c->store);
  return 0;
}

static int ctx_close(lua_State *L) {
  ctx_release(ctx_check_any(L, 1));
  return 0;
}

static int ctx_tostring(lua_State *L) {
  sx_ctx *c = ctx_check_any(L, 1);
  if (c->ctx == NULL) lua_pushliteral(L, "sslctx.context (closed)");
  else lua_pushfstring(L, "sslctx.context (%s): %p", side_names[c->side], (void *)c);
  return 1;
}

/* uservalue helpers: uv[field] = value at top (popped) / push uv[field] */
static void uv_set(lua_State *L, int obj, const char *field) {
  obj = lua_absindex(L, obj);
  sx_getuv(L, obj);
  lua_insert(L, -2);
  lua_setfield(L, -2, field);
  lua_pop(L, 1);
}

static void uv_get(lua_State *L, int obj, const char *field) {
  sx_getuv(L, lua_absindex(L, obj));
  lua_getfield(L, -1, field);
  lua_remove(L, -2);
}

static void mark_policy_changed(sx_ctx *c) {
  c->sid_dirty = 1;
  c->policy_gen++;
}

/* Before the context's client-CA list changes: its connections keep the one they have. */
static void pin_names(lua_State *L, sx_ctx *c) {
  if (!c->names_lent) return;
  sx_trust_pin_client_ca(L, c->ctx);
  c->names_lent = 0;
}

static void mark_trust_changed(sx_ctx *c) {
  memcpy(c->policy[SX_CLIENT].trust, c->trust_id, 32);
  memcpy(c->policy[SX_SERVER].trust, c->trust_id, 32);
  mark_policy_changed(c);
}

/* ---- verification ------------------------------------------------------- */

/* Sets one side's mode and callback from the values at mode_idx / cb_idx. */
static void ctx_set_policy(lua_State *L, int obj, sx_ctx *c, int side, int mode_idx,
                           sx_where mode_w, int cb_idx, sx_where cb_w) {
  sx_policy *p = &c->policy[side];
  int mode = sx_parse_mode(L, mode_idx, side, mode_w);
  int keep = lua_touserdata(L, cb_idx) == sx_KEEP && lua_type(L, cb_idx) == LUA_TLIGHTUSERDATA;
  if (!keep) {
    sx_callback cb;
    sx_parse_callback(L, cb_idx, cb_w, &cb);
    p->cb = cb;
    lua_pushvalue(L, cb_idx);
    uv_set(L, obj, side == SX_CLIENT ? "cb_client" : "cb_server");
  }
  p->mode = mode;
  c->last_side = side;
  if (c->side == side || (c->side == SX_BOTH && side == SX_SERVER)) {
    sx_verify_fn fn = p->cb.kind == SX_CB_LUA ? sx_verify_trampoline
                      : p->cb.kind == SX_CB_C ? p->cb.fn : NULL;
    SSL_CTX_set_verify(c->ctx, p->mode, fn);
  }
  mark_policy_changed(c);
}

static int ctx_set_verification_mode(lua_State *L) {
  sx_ctx *c = sx_ctx_check(L, 1);
  lua_settop(L, 4);   /* an omitted callback is nil, at a fixed slot */
  int side = sx_check_side(L, 2);
  sx_where mw = {3, NULL}, cw = {4, NULL};
  if (c->side != SX_BOTH && side != c->side)   /* it would be stored and never used */
    return luaL_argerror(L, 2, lua_pushfstring(L, "this is a %s context", side_names[c->side]));
  if (lua_isnone(L, 3)) return luaL_argerror(L, 3, "mode expected");
  ctx_set_policy(L, 1, c, side, 3, mw, 4, cw);
  lua_pushinteger(L, c->policy[side].mode);
  return 1;
}

static int ctx_get_verification_mode(lua_State *L) {
  sx_ctx *c = sx_ctx_check(L, 1);
  int side = lua_isnoneornil(L, 2) ? -1 : sx_check_side(L, 2);
  int eff = side >= 0 ? side : (c->side == SX_BOTH ? c->last_side : c->side);
  int n = sx_push_mode(L, c->policy[eff].mode, side);
  if (n == 2) lua_pushnil(L);
  uv_get(L, 1, eff == SX_CLIENT ? "cb_client" : "cb_server");
  return 4;
}

static int ctx_set_verify_depth(lua_State *L) {
  sx_ctx *c = sx_ctx_check(L, 1);
  lua_Integer n = luaL_checkinteger(L, 2);
  luaL_argcheck(L, n >= 0 && n <= SX_MAX_DEPTH, 2, "depth must be from 0 to 2^31-1");
  SSL_CTX_set_verify_depth(c->ctx, (int)n);
  mark_policy_changed(c);
  return 0;
}

static int ctx_get_verify_depth(lua_State *L) {
  lua_pushinteger(L, SSL_CTX_get_verify_depth(sx_ctx_check(L, 1)->ctx));
  return 1;
}

static X509_VERIFY_PARAM *ctx_param(void *owner) {
  sx_ctx *c = (sx_ctx *)owner;
  return c->ctx != NULL ? SSL_CTX_get0_param(c->ctx) : NULL;
}

static void apply_verify_params(lua_State *L, sx_ctx *c, int idx, sx_where w) {
  /* Both sides' policies share the one X509_VERIFY_PARAM of the SSL_CTX. */
  sx_policy *server = &c->policy[SX_SERVER], *client = &c->policy[SX_CLIENT];
  sx_set_verify_params(L, ctx_param, c, idx, w, &c->flags_explicit, &c->params_identity, server);
  client->purpose = server->purpose;
  client->has_time = server->has_time;
  client->time = server->time;
  memcpy(client->ip, server->ip, sizeof client->ip);
  mark_policy_changed(c);
}

static int ctx_set_verify_params(lua_State *L) {
  sx_ctx *c = sx_ctx_check(L, 1);
  sx_where w = {2, NULL};
  apply_verify_params(L, c, 2, w);
  return 0;
}

/* ---- trust -------------------------------------------------------------- */

/* The system's roots, loaded once per process and shared (refcounted) by every client
 * context that trusts the defaults: loading them costs milliseconds and ~1 MiB a context.
 * A context that later changes its trust gets a store of its own first (copy on write). */
static X509_STORE *default_store = NULL;
static CRYPTO_ONCE default_store_once = CRYPTO_ONCE_STATIC_INIT;

static void default_store_init(void) {
  X509_STORE *s = X509_STORE_new();
  if (s != NULL && X509_STORE_set_default_paths(s)) default_store = s;
  else X509_STORE_free(s);
  ERR_clear_error();
}

static void use_default_store(sx_ctx *c) {
  if (!CRYPTO_THREAD_run_once(&default_store_once, default_store_init) || default_store == NULL ||
      !X509_STORE_up_ref(default_store)) {
    /* no shared store: load privately */
    sx_trust_add_defaults(SSL_CTX_get_cert_store(c->ctx), c->trust_id, &c->trust_dirs);
    ERR_clear_error();
    return;
  }
  SSL_CTX_set_cert_store(c->ctx, default_store);   /* frees the empty store it had */
  c->store_shared = 1;
  sx_trust_add_defaults(NULL, c->trust_id, &c->trust_dirs);
}

/* Copy on write: the process-wide default store, or one lent to connections, is changed in
 * a copy, so that connections keep the trust they were made with.  NULL when out of memory. */
static X509_STORE *writable_store(sx_ctx *c) {
  if (c->store_shared || c->store_lent) {
    X509_STORE *copy = sx_trust_copy(SSL_CTX_get_cert_store(c->ctx), c->trust_dirs);
    if (copy == NULL) return NULL;
    SSL_CTX_set_cert_store(c->ctx, copy);   /* drops the context's reference to the old one */
    c->store_shared = c->store_lent = 0;
  }
  return SSL_CTX_get_cert_store(c->ctx);
}

int sx_ctx_lend_trust(sx_ctx *c, SSL *ssl) {
  if (!SSL_set1_verify_cert_store(ssl, SSL_CTX_get_cert_store(c->ctx))) return 0;
  c->store_lent = 1;
  return 1;
}

static X509_STORE *writable_store_or_raise(lua_State *L, sx_ctx *c) {
  X509_STORE *store = writable_store(c);
  if (store == NULL) luaL_error(L, "out of memory");
  return store;
}

static int add_crl_from(lua_State *L, sx_ctx *c, int idx, sx_where w) {
  STACK_OF(X509_CRL) *crls = sx_load_crls(L, idx, w);
  X509_STORE *store;
  int i;
  if (crls == NULL) return 3;
  store = writable_store(c);
  for (i = 0; store != NULL && i < sk_X509_CRL_num(crls); i++)
    sx_trust_add_crl(store, sk_X509_CRL_value(crls, i), c->trust_id);
  sk_X509_CRL_pop_free(crls, X509_CRL_free);
  if (store == NULL) return luaL_error(L, "out of memory");
  ERR_clear_error();   /* a CRL already present is not a failure */
  if (!c->flags_explicit) X509_VERIFY_PARAM_set_flags(SSL_CTX_get0_param(c->ctx), X509_V_FLAG_CRL_CHECK);
  mark_trust_changed(c);
  lua_pushboolean(L, 1);
  return 1;
}

static int ctx_add_crl(lua_State *L) {
  sx_ctx *c = sx_ctx_check(L, 1);
  sx_where w = {2, NULL};
  luaL_checkany(L, 2);
  return add_crl_from(L, c, 2, w);
}

/* OpenSSL only records a hashed directory and looks into it while verifying, so a missing
 * one would pass silently here and fail every verification later: check each entry of the
 * ':'-separated list now.  Nil, message, "file" or 0. */
static int check_trust_dirs(lua_State *L, const char *dirs) {
  const char *p = dirs;
  while (*p != '\0') {
    const char *end = strchr(p, ':');
    size_t n = end != NULL ? (size_t)(end - p) : strlen(p);
    if (n > 0) {
      struct stat st;
      const char *one, *why;
      lua_pushlstring(L, p, n);   /* returns void on 5.1 */
      one = lua_tostring(L, -1);
      why = stat(one, &st) != 0 ? strerror(errno) : !S_ISDIR(st.st_mode) ? "not a directory" : NULL;
      if (why != NULL) {
        lua_pushnil(L);
        lua_pushfstring(L, "trust directory '%s': %s", one, why);
        lua_pushliteral(L, "file");
        return 3;
      }
      lua_pop(L, 1);
    }
    p += n;
    if (*p == ':') p++;
  }
  return 0;
}

static int load_locations(lua_State *L, sx_ctx *c, const char *file, const char *dir) {
  X509_STORE *store;
  if (dir != NULL && check_trust_dirs(L, dir) == 3) return 3;
  store = writable_store_or_raise(L, c);
  ERR_clear_error();
  if ((file != NULL && !sx_trust_add_file(store, file, c->trust_id)) ||
      (dir != NULL && !sx_trust_add_dir(store, dir, c->trust_id, &c->trust_dirs))) {
    const char *what = file != NULL ? file : dir;
    mark_trust_changed(c);   /* what was added counts */
    return sx_push_error(L, lua_pushfstring(L, "trust locations '%s'", what), "file");
  }
  mark_trust_changed(c);
  return 0;
}

static int ctx_load_verify_locations(lua_State *L) {
  sx_ctx *c = sx_ctx_check(L, 1);
  const char *file = luaL_optstring(L, 2, NULL);
  const char *dir = luaL_optstring(L, 3, NULL);
  if (file == NULL && dir == NULL) return luaL_argerror(L, 2, "a file or a directory expected");
  if (load_locations(L, c, file, dir) == 3) return 3;
  lua_pushboolean(L, 1);
  return 1;
}

static int ctx_set_default_verify_paths(lua_State *L) {
  sx_ctx *c = sx_ctx_check(L, 1);
  ERR_clear_error();
  if (!sx_trust_add_defaults(writable_store_or_raise(L, c), c->trust_id, &c->trust_dirs)) {
    mark_trust_changed(c);
    return sx_push_error(L, "default trust paths", "file");
  }
  mark_trust_changed(c);
  lua_pushboolean(L, 1);
  return 1;
}

/* Adds PEM text (or an x509 / list) at idx to the trust store, and its subjects to the client
 * CA list when add_names. */
static int add_ca_certs(lua_State *L, sx_ctx *c, int idx, int add_names, sx_where w) {
  STACK_OF(X509) *certs = sx_load_certs(L, idx, "ca", w);
  X509_STORE *store;
  int i;
  if (certs == NULL) return 3;
  store = writable_store(c);
  if (add_names) pin_names(L, c);
  for (i = 0; store != NULL && i < sk_X509_num(certs); i++) {
    sx_trust_add_cert(store, sk_X509_value(certs, i), c->trust_id);
    if (add_names) SSL_CTX_add_client_CA(c->ctx, sk_X509_value(certs, i));
  }
  sk_X509_pop_free(certs, X509_free);
  if (store == NULL) return luaL_error(L, "out of memory");
  ERR_clear_error();   /* duplicates are not failures */
  mark_trust_changed(c);
  return 0;
}

/* client_ca: a list of files / PEM texts, or false for an empty list. */
static int set_client_ca(lua_State *L, sx_ctx *c, int idx, sx_where w) {
  STACK_OF(X509_NAME) *names;
  int i, n;
  idx = lua_absindex(L, idx);
  if (lua_type(L, idx) == LUA_TBOOLEAN && !lua_toboolean(L, idx)) {
    pin_names(L, c);
    SSL_CTX_set_client_CA_list(c->ctx, sk_X509_NAME_new_null());
    return 0;
  }
  if (lua_type(L, idx) == LUA_TSTRING) {   /* one file or PEM text: treat as a list of one */
    lua_createtable(L, 1, 0);
    lua_pushvalue(L, idx);
    lua_rawseti(L, -2, 1);
    lua_replace(L, idx);
  }
  if (!lua_istable(L, idx)) return sx_where_typeerror(L, w, idx, "list of files or PEM texts, or false");
  n = (int)lua_rawlen(L, idx);
  for (i = 1; i <= n; i++) {   /* check first: nothing may raise once the list is allocated */
    int t;
    lua_rawgeti(L, idx, i);
    t = lua_type(L, -1);
    if (t == LUA_TUSERDATA && luaL_testudata(L, -1, SX_X509_MT) && sx_x509_test(L, -1) == NULL)
      return sx_where_error(L, w, lua_pushfstring(L, "entry #%d: x509 is closed", i));
    if (t != LUA_TSTRING && !(t == LUA_TUSERDATA && sx_x509_test(L, -1) != NULL))
      return sx_where_error(L, w, lua_pushfstring(L, "entry #%d: file name, PEM text or sslctx.x509 "
                                                     "expected, got %s", i, luaL_typename(L, -1)));
    lua_pop(L, 1);
  }
  pin_names(L, c);   /* may raise: before the new list is allocated */
  names = sk_X509_NAME_new_null();
  if (names == NULL) return luaL_error(L, "out of memory");
  for (i = 1; i <= n; i++) {
    STACK_OF(X509) *certs;
    int j;
    lua_rawgeti(L, idx, i);
    certs = sx_load_certs(L, lua_absindex(L, -1), "client_ca", w);
    if (certs == NULL) {
      sk_X509_NAME_pop_free(names, X509_NAME_free);
      return 3;
    }
    for (j = 0; j < sk_X509_num(certs); j++) {
      X509_NAME *nm = X509_NAME_dup(X509_get_subject_name(sk_X509_value(certs, j)));
      if (nm != NULL && !sk_X509_NAME_push(names, nm)) X509_NAME_free(nm);
    }
    sk_X509_pop_free(certs, X509_free);
    lua_pop(L, 1);
  }
  SSL_CTX_set_client_CA_list(c->ctx, names);
  return 0;
}

static int ctx_set_client_ca_list(lua_State *L) {
  sx_ctx *c = sx_ctx_check(L, 1);
  sx_where w = {2, NULL};
  if (set_client_ca(L, c, 2, w) == 3) return 3;
  lua_pushboolean(L, 1);
  return 1;
}

/* ---- certificate and key ------------------------------------------------ */

static int use_certificate(lua_State *L, sx_ctx *c, int idx, sx_where w) {
  STACK_OF(X509) *certs = sx_load_certs(L, idx, "certificate", w);
  int i, ok;
  if (certs == NULL) return 3;
  if (sk_X509_num(certs) == 0) {
    sk_X509_pop_free(certs, X509_free);
    lua_pushnil(L);
    lua_pushliteral(L, "certificate: no certificate found");
    lua_pushliteral(L, "file");
    return 3;
  }
  ERR_clear_error();
  ok = SSL_CTX_use_certificate(c->ctx, sk_X509_value(certs, 0)) && SSL_CTX_clear_chain_certs(c->ctx);
  for (i = 1; ok && i < sk_X509_num(certs); i++)
    ok = SSL_CTX_add1_chain_cert(c->ctx, sk_X509_value(certs, i));
  sk_X509_pop_free(certs, X509_free);
  if (!ok) return sx_push_error(L, "certificate", "key");
  return 0;
}

static int ctx_use_certificate(lua_State *L) {
  sx_ctx *c = sx_ctx_check(L, 1);
  sx_where w = {2, NULL};
  luaL_checkany(L, 2);
  if (use_certificate(L, c, 2, w) == 3) return 3;
  lua_pushboolean(L, 1);
  return 1;
}

/* Loads the key at idx, with the password at pw_idx (0: the context's stored one). */
static int use_private_key(lua_State *L, sx_ctx *c, int obj, int idx, int pw_idx, sx_where w) {
  sx_password pw;
  EVP_PKEY *key;
  int ok;
  idx = lua_absindex(L, idx);
  if (pw_idx == 0) {
    uv_get(L, obj, "password");
    pw_idx = lua_gettop(L);
  }
  pw.L = L;
  pw.index = lua_isnil(L, pw_idx) ? 0 : lua_absindex(L, pw_idx);
  pw.failed = 0;
  pw.err_index = 0;
  key = sx_load_key(L, idx, &pw, w);
  if (key == NULL) return 3;
  if (c->ctx == NULL) {   /* the password callback closed it */
    EVP_PKEY_free(key);
    return luaL_error(L, "context was closed while its key was loading");
  }
  ERR_clear_error();
  ok = SSL_CTX_use_PrivateKey(c->ctx, key);
  EVP_PKEY_free(key);
  if (!ok) return sx_push_error(L, "private key", "key");
  if (SSL_CTX_get0_certificate(c->ctx) != NULL && !SSL_CTX_check_private_key(c->ctx))
    return sx_push_error(L, "private key does not match the certificate", "key");
  return 0;
}

static int ctx_use_private_key(lua_State *L) {
  sx_ctx *c = sx_ctx_check(L, 1);
  sx_where w = {2, NULL};
  luaL_checkany(L, 2);
  if (!lua_isnoneornil(L, 3) && lua_type(L, 3) != LUA_TSTRING && lua_type(L, 3) != LUA_TFUNCTION)
    return luaL_argerror(L, 3, "password must be a string or a function");
  if (use_private_key(L, c, 1, 2, lua_isnoneornil(L, 3) ? 0 : 3, w) == 3) return 3;
  lua_pushboolean(L, 1);
  return 1;
}

static void check_password_value(lua_State *L, int idx, sx_where w) {
  int t = lua_type(L, idx);
  if (t != LUA_TSTRING && t != LUA_TFUNCTION)
    sx_where_typeerror(L, w, idx, "string or function");
}

static int ctx_set_password_callback(lua_State *L) {
  sx_ctx *c = sx_ctx_check(L, 1);
  int has_pw, has_cb;
  luaL_checktype(L, 2, LUA_TTABLE);
  (void)c;
  lua_getfield(L, 2, "password");
  lua_getfield(L, 2, "callback");
  has_pw = !lua_isnil(L, -2);
  has_cb = !lua_isnil(L, -1);
  if (!has_pw && !has_cb) return luaL_argerror(L, 2, "'password' or 'callback' expected");
  if (has_pw && has_cb) return luaL_argerror(L, 2, "give 'password' or 'callback', not both");
  if (has_pw && lua_type(L, -2) != LUA_TSTRING) return luaL_argerror(L, 2, "password must be a string");
  if (has_cb && lua_type(L, -1) != LUA_TFUNCTION) return luaL_argerror(L, 2, "callback must be a function");
  if (has_cb) lua_replace(L, -2);
  else lua_pop(L, 1);
  uv_set(L, 1, "password");
  return 0;
}

/* ---- protocol settings ------------------------------------------------- */

static int parse_version(lua_State *L, int idx, sx_where w) {
  static const char *const names[] = {"tls1.2", "tls1.3", NULL};
  static const int values[] = {TLS1_2_VERSION, TLS1_3_VERSION};
  int k = lua_type(L, idx) == LUA_TSTRING ? sx_keyword_index(lua_tostring(L, idx), names) : -1;
  if (k < 0) {
    if (lua_type(L, idx) == LUA_TSTRING)
      sx_where_error(L, w, lua_pushfstring(L, "unsupported protocol version '%s' (use 'tls1.2' or "
                                              "'tls1.3')", lua_tostring(L, idx)));
    sx_where_typeerror(L, w, idx, "'tls1.2' or 'tls1.3'");
  }
  return values[k];
}

static int ctx_set_min_version(lua_State *L) {
  sx_ctx *c = sx_ctx_check(L, 1);
  sx_where w = {2, NULL};
  SSL_CTX_set_min_proto_version(c->ctx, parse_version(L, 2, w));
  return 0;
}

static int ctx_set_max_version(lua_State *L) {
  sx_ctx *c = sx_ctx_check(L, 1);
  sx_where w = {2, NULL};
  SSL_CTX_set_max_proto_version(c->ctx, parse_version(L, 2, w));
  return 0;
}

static int set_security_level(lua_State *L, sx_ctx *c, int idx, sx_where w) {
  if (!sx_isintegral(L, idx) || lua_tointeger(L, idx) < 0 || lua_tointeger(L, idx) > 5)
    return sx_where_error(L, w, "security level must be an integer from 0 to 5");
  SSL_CTX_set_security_level(c->ctx, (int)lua_tointeger(L, idx));
  mark_policy_changed(c);   /* the auth level is part of what verification decides */
  return 0;
}

static int ctx_set_security_level(lua_State *L) {
  sx_where w = {2, NULL};
  set_security_level(L, sx_ctx_check(L, 1), 2, w);
  return 0;
}

static int ctx_get_security_level(lua_State *L) {
  lua_pushinteger(L, SSL_CTX_get_security_level(sx_ctx_check(L, 1)->ctx));
  return 1;
}

enum { STR_CIPHERS, STR_CIPHERSUITES, STR_GROUPS };

static int set_string_setting(lua_State *L, sx_ctx *c, int which, int idx, sx_where w) {
  static const char *const labels[] = {"ciphers", "ciphersuites", "groups"};
  const char *s;
  int ok;
  if (lua_type(L, idx) != LUA_TSTRING) return sx_where_typeerror(L, w, idx, "string");
  s = lua_tostring(L, idx);
  ERR_clear_error();
  if (which == STR_CIPHERS) ok = SSL_CTX_set_cipher_list(c->ctx, s), c->ciphers_explicit |= ok;
  else if (which == STR_CIPHERSUITES) ok = SSL_CTX_set_ciphersuites(c->ctx, s);
  else ok = SSL_CTX_set1_groups_list(c->ctx, s);
  if (!ok) {
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    luaL_addstring(&b, "invalid ");
    luaL_addstring(&b, labels[which]);
    luaL_addstring(&b, " '");
    luaL_addstring(&b, s);
    luaL_addstring(&b, "': ");
    sx_add_errors(&b);
    luaL_pushresult(&b);
    return sx_where_error(L, w, lua_tostring(L, -1));
  }
  return 0;
}

static int ctx_set_ciphers(lua_State *L) {
  sx_where w = {2, NULL};
  set_string_setting(L, sx_ctx_check(L, 1), STR_CIPHERS, 2, w);
  return 0;
}

static int ctx_set_ciphersuites(lua_State *L) {
  sx_where w = {2, NULL};
  set_string_setting(L, sx_ctx_check(L, 1), STR_CIPHERSUITES, 2, w);
  return 0;
}

static int ctx_set_groups(lua_State *L) {
  sx_where w = {2, NULL};
  set_string_setting(L, sx_ctx_check(L, 1), STR_GROUPS, 2, w);
  return 0;
}

/* ---- options ------------------------------------------------------------ */

#define OPT(name, bit) {name, (uint64_t)(bit)}
#ifndef SSL_OP_NO_EXTENDED_MASTER_SECRET
#define SSL_OP_NO_EXTENDED_MASTER_SECRET 0
#endif
#ifndef SSL_OP_LEGACY_EC_POINT_FORMATS
#define SSL_OP_LEGACY_EC_POINT_FORMATS 0
#endif
#ifndef SSL_OP_NO_ANTI_REPLAY
#define SSL_OP_NO_ANTI_REPLAY 0
#endif
#ifndef SSL_OP_PRIORITIZE_CHACHA
#define SSL_OP_PRIORITIZE_CHACHA 0
#endif
static const struct {
  const char *name;
  uint64_t bit;
} option_table[] = {
  OPT("all", SSL_OP_ALL),
  OPT("no_sslv3", SSL_OP_NO_SSLv3),
  OPT("no_tlsv1", SSL_OP_NO_TLSv1),
  OPT("no_tlsv1_1", SSL_OP_NO_TLSv1_1),
  OPT("no_tlsv1_2", SSL_OP_NO_TLSv1_2),
  OPT("no_tlsv1_3", SSL_OP_NO_TLSv1_3),
  OPT("cipher_server_preference", SSL_OP_CIPHER_SERVER_PREFERENCE),
  OPT("prioritize_chacha", SSL_OP_PRIORITIZE_CHACHA),
  OPT("no_compression", SSL_OP_NO_COMPRESSION),
  OPT("no_ticket", SSL_OP_NO_TICKET),
  OPT("no_renegotiation", SSL_OP_NO_RENEGOTIATION),
  OPT("allow_client_renegotiation", SSL_OP_ALLOW_CLIENT_RENEGOTIATION),
  OPT("no_session_resumption_on_renegotiation", SSL_OP_NO_SESSION_RESUMPTION_ON_RENEGOTIATION),
  OPT("legacy_server_connect", SSL_OP_LEGACY_SERVER_CONNECT),
  OPT("allow_unsafe_legacy_renegotiation", SSL_OP_ALLOW_UNSAFE_LEGACY_RENEGOTIATION),
  OPT("ignore_unexpected_eof", SSL_OP_IGNORE_UNEXPECTED_EOF),
  OPT("enable_middlebox_compat", SSL_OP_ENABLE_MIDDLEBOX_COMPAT),
  OPT("no_anti_replay", SSL_OP_NO_ANTI_REPLAY),
  OPT("no_encrypt_then_mac", SSL_OP_NO_ENCRYPT_THEN_MAC),
  OPT("no_extended_master_secret", SSL_OP_NO_EXTENDED_MASTER_SECRET),
  OPT("no_query_mtu", SSL_OP_NO_QUERY_MTU),
  OPT("cookie_exchange", SSL_OP_COOKIE_EXCHANGE),
  OPT("cleanse_plaintext", SSL_OP_CLEANSE_PLAINTEXT),
  OPT("enable_ktls", SSL_OP_ENABLE_KTLS),
  OPT("tls_rollback_bug", SSL_OP_TLS_ROLLBACK_BUG),
  OPT("dont_insert_empty_fragments", SSL_OP_DONT_INSERT_EMPTY_FRAGMENTS),
  OPT("tlsext_padding", SSL_OP_TLSEXT_PADDING),
  OPT("safari_ecdhe_ecdsa_bug", SSL_OP_SAFARI_ECDHE_ECDSA_BUG),
  OPT("legacy_ec_point_formats", SSL_OP_LEGACY_EC_POINT_FORMATS),
  /* LispWorks keywords that OpenSSL has made no-ops: accepted, documented as such. */
  OPT("no_sslv2", 0), OPT("single_dh_use", 0), OPT("single_ecdh_use", 0),
  OPT("ephemeral_rsa", 0), OPT("microsoft_sess_id_bug", 0), OPT("netscape_challenge_bug", 0),
  OPT("netscape_reuse_cipher_change_bug", 0), OPT("sslref2_reuse_cert_type_bug", 0),
  OPT("microsoft_big_sslv3_buffer", 0), OPT("msie_sslv2_rsa_padding", 0),
  OPT("ssleay_080_client_dh_bug", 0), OPT("tls_d5_bug", 0), OPT("tls_block_padding_bug", 0),
  OPT("pkcs1_check_1", 0), OPT("pkcs1_check_2", 0), OPT("netscape_ca_dn_bug", 0),
  OPT("netscape_demo_cipher_change_bug", 0),
  {NULL, 0}
};

static int option_index(const char *s) {
  int i;
  for (i = 0; option_table[i].name != NULL; i++) {
    const char *one[2];
    one[0] = option_table[i].name;
    one[1] = NULL;
    if (sx_keyword_index(s, one) == 0) return i;
  }
  return -1;
}

/* Accepts {"no_ticket", ...} and {no_ticket = true, ...}. */
static uint64_t parse_options(lua_State *L, int idx, sx_where w) {
  uint64_t bits = 0;
  idx = lua_absindex(L, idx);
  if (!lua_istable(L, idx)) sx_where_typeerror(L, w, idx, "table of option keywords");
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    const char *name;
    int k;
    if (lua_type(L, -2) == LUA_TSTRING) {
      name = lua_tostring(L, -2);
      if (!lua_toboolean(L, -1)) {
        lua_pop(L, 1);
        if (option_index(name) < 0)
          sx_where_error(L, w, lua_pushfstring(L, "unknown option keyword '%s'", name));
        continue;
      }
    } else if (lua_type(L, -1) == LUA_TSTRING) {
      name = lua_tostring(L, -1);
    } else {
      sx_where_error(L, w, "option keywords must be strings");
      return 0;
    }
    k = option_index(name);
    if (k < 0) sx_where_error(L, w, lua_pushfstring(L, "unknown option keyword '%s'", name));
    bits |= option_table[k].bit;
    lua_pop(L, 1);
  }
  return bits;
}

static int push_options(lua_State *L, uint64_t set) {
  int i, n = 0;
  lua_newtable(L);
  for (i = 0; option_table[i].name != NULL; i++) {
    uint64_t b = option_table[i].bit;
    if (b != 0 && (set & b) == b) {
      lua_pushstring(L, option_table[i].name);
      lua_rawseti(L, -2, ++n);
    }
  }
  return 1;
}

static int ctx_set_options(lua_State *L) {
  sx_ctx *c = sx_ctx_check(L, 1);
  sx_where w = {2, NULL};
  return push_options(L, SSL_CTX_set_options(c->ctx, parse_options(L, 2, w)));
}

static int ctx_clear_options(lua_State *L) {
  sx_ctx *c = sx_ctx_check(L, 1);
  sx_where w = {2, NULL};
  return push_options(L, SSL_CTX_clear_options(c->ctx, parse_options(L, 2, w)));
}

static int ctx_get_options(lua_State *L) {
  return push_options(L, SSL_CTX_get_options(sx_ctx_check(L, 1)->ctx));
}

/* ---- DH ----------------------------------------------------------------- */

static int set_dh(lua_State *L, sx_ctx *c, int idx, sx_where w) {
  size_t len;
  const char *s;
  BIO *bio;
  int ok;
  if (lua_type(L, idx) != LUA_TSTRING) return sx_where_typeerror(L, w, idx, "'auto', a file or PEM");
  s = lua_tolstring(L, idx, &len);
  ERR_clear_error();
  if (strcmp(s, "auto") == 0) {
    SSL_CTX_set_dh_auto(c->ctx, 1);
    return 0;
  }
  bio = sx_is_pem_text(s, len) ? BIO_new_mem_buf(s, (int)len) : BIO_new_file(s, "r");
  if (bio == NULL) return sx_push_error(L, lua_pushfstring(L, "dh '%s'", s), "file");
  {
#if SX_OPENSSL3
    EVP_PKEY *dh = PEM_read_bio_Parameters(bio, NULL);
    /* any parameters parse here (EC too); only DH ones make DHE work */
    if (dh != NULL && !EVP_PKEY_is_a(dh, "DH") && !EVP_PKEY_is_a(dh, "DHX")) {
      EVP_PKEY_free(dh);
      dh = NULL;
      ERR_raise_data(ERR_LIB_SSL, SSL_R_WRONG_CERTIFICATE_TYPE, "not DH parameters");
    }
    ok = dh != NULL && SSL_CTX_set0_tmp_dh_pkey(c->ctx, dh);
    if (dh != NULL && !ok) EVP_PKEY_free(dh);
#else
    DH *dh = PEM_read_bio_DHparams(bio, NULL, NULL, NULL);
    ok = dh != NULL && SSL_CTX_set_tmp_dh(c->ctx, dh);
    DH_free(dh);
#endif
  }
  BIO_free(bio);
  if (!ok) return sx_push_error(L, "dh parameters", "file");
  return 0;
}

static int ctx_set_dh(lua_State *L) {
  sx_where w = {2, NULL};
  if (set_dh(L, sx_ctx_check(L, 1), 2, w) == 3) return 3;
  lua_pushboolean(L, 1);
  return 1;
}

/* ---- ALPN --------------------------------------------------------------- */

/* Builds the wire form (length-prefixed names) of a list; returns a new Lua string on top. */
static void alpn_wire(lua_State *L, int idx, sx_where w) {
  luaL_Buffer b;
  int i, n;
  idx = lua_absindex(L, idx);
  if (!lua_istable(L, idx)) sx_where_typeerror(L, w, idx, "list of protocol names");
  n = (int)lua_rawlen(L, idx);
  if (n == 0) sx_where_error(L, w, "empty protocol list");
  for (i = 1; i <= n; i++) {   /* validate first: a luaL_Buffer owns the stack top */
    size_t len;
    lua_rawgeti(L, idx, i);
    if (lua_type(L, -1) != LUA_TSTRING) sx_where_error(L, w, "protocol names must be strings");
    lua_tolstring(L, -1, &len);
    if (len == 0 || len > 255) sx_where_error(L, w, "protocol names must be 1 to 255 bytes");
    lua_pop(L, 1);
  }
  luaL_buffinit(L, &b);
  for (i = 1; i <= n; i++) {
    /* Every luaL_add* but addvalue needs the buffer on top (a full one grows into a box at
     * -1): the length byte goes in while nothing is pushed, then the name. */
    size_t len;
    lua_rawgeti(L, idx, i);
    len = lua_rawlen(L, -1);
    lua_pop(L, 1);
    luaL_addchar(&b, (char)len);
    lua_rawgeti(L, idx, i);
    luaL_addvalue(&b);
  }
  luaL_pushresult(&b);
}

static int set_alpn(lua_State *L, sx_ctx *c, int idx, sx_where w) {
  size_t len;
  const char *wire;
  alpn_wire(L, idx, w);
  wire = lua_tolstring(L, -1, &len);
  if (SSL_CTX_set_alpn_protos(c->ctx, (const unsigned char *)wire, (unsigned)len) != 0)
    return luaL_error(L, "out of memory");
  lua_pop(L, 1);
  return 0;
}

static int ctx_set_alpn(lua_State *L) {
  sx_where w = {2, NULL};
  set_alpn(L, sx_ctx_check(L, 1), 2, w);
  return 0;
}

static int ctx_set_alpn_select(lua_State *L) {
  sx_ctx *c = sx_ctx_check(L, 1);
  sx_where w = {2, NULL};
  if (lua_type(L, 2) == LUA_TFUNCTION) {
    OPENSSL_free(c->alpn_select_wire);
    c->alpn_select_wire = NULL;
    lua_pushvalue(L, 2);
    uv_set(L, 1, "alpn_select");
  } else {
    size_t len;
    const char *wire;
    unsigned char *copy;
    alpn_wire(L, 2, w);
    wire = lua_tolstring(L, -1, &len);
    copy = (unsigned char *)OPENSSL_memdup(wire, len);
    if (copy == NULL) return luaL_error(L, "out of memory");
    OPENSSL_free(c->alpn_select_wire);
    c->alpn_select_wire = copy;
    c->alpn_select_len = len;
  }
  SSL_CTX_set_alpn_select_cb(c->ctx, sx_alpn_select_cb, NULL);
  return 0;
}

/* ---- sessions ----------------------------------------------------------- */

static int ctx_set_session_id_context(lua_State *L) {
  sx_ctx *c = sx_ctx_check(L, 1);
  size_t len;
  const char *s = luaL_checklstring(L, 2, &len);
  sx_digest d;
  unsigned char name[32];
  int side;
  luaL_argcheck(L, len <= SSL_MAX_SID_CTX_LENGTH, 2, "session id context longer than 32 bytes");
  /* The name stands for the callbacks' share of the identity; the rest still counts. */
  sx_digest_init(&d);
  sx_digest_update(&d, "sslctx-callbacks-name", 22);
  sx_digest_update(&d, s, len);
  if (!sx_digest_final(&d, name)) return luaL_error(L, "out of memory");
  for (side = SX_CLIENT; side <= SX_SERVER; side++) {
    c->policy[side].cb_named = 1;
    memcpy(c->policy[side].cb_name, name, sizeof name);
  }
  mark_policy_changed(c);
  return 0;
}

static int ctx_set_session_callback(lua_State *L) {
  sx_ctx *c = sx_ctx_check(L, 1);
  long mode;
  if (!lua_isnil(L, 2)) luaL_checktype(L, 2, LUA_TFUNCTION);
  lua_pushvalue(L, 2);
  uv_set(L, 1, "session_cb");
  mode = SSL_CTX_get_session_cache_mode(c->ctx) | SSL_SESS_CACHE_CLIENT;
  if (c->side == SX_CLIENT) mode |= SSL_SESS_CACHE_NO_INTERNAL_STORE;
  SSL_CTX_set_session_cache_mode(c->ctx, mode);
  c->has_session_cb = !lua_isnil(L, 2);
  sx_ctx_update_new_cb(c);
  return 0;
}

/* ctx:set_ticket_keys(keys) -> true (server contexts). */
static int ctx_set_ticket_keys(lua_State *L) {
  sx_ctx *c = sx_ctx_check(L, 1);
  if (c->side == SX_CLIENT) return luaL_argerror(L, 1, "ticket keys are for server contexts");
  sx_tickets_set(L, &c->tickets, 2);
  lua_pushboolean(L, 1);
  return 1;
}

/* 0 turns the server's session cache off (OpenSSL would read 0 as "unlimited"): with
 * session_tickets = false too, a server then resumes nothing. */
static int set_cache_size(lua_State *L, sx_ctx *c, int idx, sx_where w) {
  long size, mode;
  if (!sx_isintegral(L, idx) || lua_tointeger(L, idx) < 0)
    return sx_where_error(L, w, "session cache size must be a non-negative integer");
  size = (long)lua_tointeger(L, idx);
  mode = SSL_CTX_get_session_cache_mode(c->ctx);
  if (size == 0) {
    mode &= ~(long)SSL_SESS_CACHE_SERVER;
  } else {
    SSL_CTX_sess_set_cache_size(c->ctx, size);
    mode |= SSL_SESS_CACHE_SERVER;
  }
  SSL_CTX_set_session_cache_mode(c->ctx, mode);
  return 0;
}

static int ctx_set_session_cache_size(lua_State *L) {
  sx_where w = {2, NULL};
  set_cache_size(L, sx_ctx_check(L, 1), 2, w);
  return 0;
}

static int ctx_set_post_handshake_auth(lua_State *L) {
  sx_ctx *c = sx_ctx_check(L, 1);
  luaL_checktype(L, 2, LUA_TBOOLEAN);
  SSL_CTX_set_post_handshake_auth(c->ctx, lua_toboolean(L, 2));
  c->post_handshake_auth = lua_toboolean(L, 2);
  return 0;
}

/* ---- SNI ---------------------------------------------------------------- */

static int ctx_set_servername_callback(lua_State *L) {
  sx_ctx *c = sx_ctx_check(L, 1);
  if (!lua_isnil(L, 2)) luaL_checktype(L, 2, LUA_TFUNCTION);
  lua_pushvalue(L, 2);
  uv_set(L, 1, "servername");
  SSL_CTX_set_client_hello_cb(c->ctx, lua_isnil(L, 2) ? NULL : sx_client_hello_cb, NULL);
  return 0;
}

static int ctx_side(lua_State *L) {
  lua_pushstring(L, side_names[sx_ctx_check(L, 1)->side]);
  return 1;
}

/* ---- sslctx.new --------------------------------------------------------- */

static const char *const option_names[] = {
  "side", "verify", "verify_callback", "verify_depth", "ca_file", "ca_path", "ca", "client_ca",
  "certificate", "key", "password", "min_version", "max_version", "security_level", "ciphers",
  "ciphersuites", "groups", "alpn", "options", "post_handshake_auth", "session_cache_size",
  "session_tickets", "dh", "verify_params", "release_buffers", "ticket_key_rotation", NULL
};

static void check_option_names(lua_State *L, int opts) {
  lua_pushnil(L);
  while (lua_next(L, opts)) {
    lua_pop(L, 1);
    if (lua_type(L, -1) != LUA_TSTRING)
      luaL_argerror(L, 1, lua_pushfstring(L, "option names must be strings, got a %s",
                                          luaL_typename(L, -1)));
    if (sx_keyword_index(lua_tostring(L, -1), option_names) < 0)
      luaL_argerror(L, 1, lua_pushfstring(L, "unknown option '%s'", lua_tostring(L, -1)));
  }
}

/* Pushes opts[name]; returns 1 when it is not nil. */
static int opt(lua_State *L, int opts, const char *name) {
  lua_getfield(L, opts, name);
  if (lua_isnil(L, -1)) {
    lua_pop(L, 1);
    return 0;
  }
  return 1;
}

static sx_ctx *ctx_create(lua_State *L, int side) {
  sx_ctx *c = (sx_ctx *)sx_newuserdata(L, sizeof(sx_ctx));
  memset(c, 0, sizeof *c);   /* closed until SSL_CTX_new succeeds */
  luaL_setmetatable(L, SX_CTX_MT);
  lua_newtable(L);
  sx_setuv(L, -2);
  c->side = side;
  c->last_side = side == SX_SERVER ? SX_SERVER : SX_CLIENT;
  c->policy[SX_CLIENT].mode = SSL_VERIFY_PEER;   /* clients verify by default */
  c->policy[SX_SERVER].mode = SSL_VERIFY_NONE;
  c->sid_dirty = 1;
  ERR_clear_error();
  c->ctx = SSL_CTX_new(TLS_method());
  if (c->ctx == NULL) {
    sx_push_error(L, "SSL_CTX_new", "ssl");
    lua_error(L);
  }
  SSL_CTX_set_ex_data(c->ctx, sx_ctx_ex_index, c);
  sx_objects_set(L, c, -1);
  SSL_CTX_set_min_proto_version(c->ctx, TLS1_2_VERSION);
  /* Idle connections give their read and write buffers back (as nginx, LuaSec and Python's
   * ssl do): option release_buffers = false keeps them. */
  SSL_CTX_set_mode(c->ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER |
                           SSL_MODE_RELEASE_BUFFERS);
  SSL_CTX_clear_options(c->ctx, SSL_OP_ALLOW_CLIENT_RENEGOTIATION);
  SSL_CTX_set_verify(c->ctx, c->policy[side == SX_CLIENT ? SX_CLIENT : SX_SERVER].mode, NULL);
  if (side != SX_CLIENT) {   /* made-here ticket keys that rotate (tickets.c) */
    sx_tickets_init(c->ctx, &c->tickets, SX_TICKET_ROTATION_DEFAULT);
  }
  if (side != SX_CLIENT) {
    /* TLS 1.2: forward-secret AEAD suites only (Mozilla's "intermediate" profile), in the
     * server's order; TLS 1.3 keeps OpenSSL's suites.  Options ciphers/options win.  A
     * "both" context keeps OpenSSL's list for its clients: its server connections get this
     * one (connection.c). */
    if (side == SX_SERVER && !SSL_CTX_set_cipher_list(c->ctx, SX_SERVER_CIPHERS)) ERR_clear_error();
    SSL_CTX_set_options(c->ctx, SSL_OP_CIPHER_SERVER_PREFERENCE);   /* no effect on clients */
  }
  return c;
}

/* A 'both' context's verify table has the keys client and server and nothing else: a
 * keyword list or a misspelt key would otherwise leave both modes at their defaults. */
static void check_both_modes(lua_State *L, int t, sx_where w) {
  lua_pushnil(L);
  while (lua_next(L, t)) {
    const char *k = lua_type(L, -2) == LUA_TSTRING ? lua_tostring(L, -2) : NULL;
    int i = k != NULL ? sx_keyword_index(k, side_names) : -1;
    lua_pop(L, 1);
    if (i != SX_CLIENT && i != SX_SERVER)
      sx_where_error(L, w, lua_pushfstring(L, "a 'both' context takes {client = mode, server = "
                                              "mode}, not the key '%s'",
                                           k != NULL ? k : luaL_typename(L, -1)));
  }
}

/* Applies the options that raise on bad values (nothing can fail at run time here). */
static void apply_settings(lua_State *L, int obj, sx_ctx *c, int opts) {
  int side = c->side;
  if (side == SX_BOTH) {
    if (opt(L, opts, "verify")) {
      sx_where w = {1, "verify"};
      int t = lua_gettop(L);
      if (!lua_istable(L, t)) sx_where_error(L, w, "a 'both' context takes {client = mode, server = mode}");
      check_both_modes(L, t, w);
      lua_getfield(L, t, "client");
      lua_getfield(L, t, "server");
      if (!lua_isnil(L, -2)) c->policy[SX_CLIENT].mode = sx_parse_mode(L, -2, SX_CLIENT, w);
      if (!lua_isnil(L, -1)) c->policy[SX_SERVER].mode = sx_parse_mode(L, -1, SX_SERVER, w);
      lua_pop(L, 3);
    }
    if (opt(L, opts, "verify_callback")) {
      sx_where mw = {1, "verify"}, cw = {1, "verify_callback"};
      int cb = lua_gettop(L);
      lua_pushinteger(L, c->policy[SX_CLIENT].mode);
      ctx_set_policy(L, obj, c, SX_CLIENT, -1, mw, cb, cw);
      lua_pushinteger(L, c->policy[SX_SERVER].mode);
      ctx_set_policy(L, obj, c, SX_SERVER, -1, mw, cb, cw);
      lua_pop(L, 3);
    }
  } else {
    sx_where mw = {1, "verify"}, cw = {1, "verify_callback"};
    if (!opt(L, opts, "verify")) lua_pushinteger(L, c->policy[side].mode);
    if (!opt(L, opts, "verify_callback")) lua_pushnil(L);
    ctx_set_policy(L, obj, c, side, -2, mw, -1, cw);
    lua_pop(L, 2);
  }
  if (opt(L, opts, "verify_depth")) {
    if (!sx_isintegral(L, -1) || lua_tointeger(L, -1) < 0 || lua_tointeger(L, -1) > SX_MAX_DEPTH)
      luaL_argerror(L, 1, "option 'verify_depth': an integer from 0 to 2^31-1 expected");
    SSL_CTX_set_verify_depth(c->ctx, (int)lua_tointeger(L, -1));
    mark_policy_changed(c);
    lua_pop(L, 1);
  }
  if (opt(L, opts, "verify_params")) {
    sx_where w = {1, "verify_params"};
    apply_verify_params(L, c, -1, w);
    lua_pop(L, 1);
  }
  if (opt(L, opts, "min_version")) {
    sx_where w = {1, "min_version"};
    SSL_CTX_set_min_proto_version(c->ctx, parse_version(L, -1, w));
    lua_pop(L, 1);
  }
  if (opt(L, opts, "max_version")) {
    sx_where w = {1, "max_version"};
    SSL_CTX_set_max_proto_version(c->ctx, parse_version(L, -1, w));
    lua_pop(L, 1);
  }
  if (SSL_CTX_get_max_proto_version(c->ctx) != 0 &&
      SSL_CTX_get_max_proto_version(c->ctx) < SSL_CTX_get_min_proto_version(c->ctx))
    luaL_argerror(L, 1, "option 'max_version' is below 'min_version'");
  if (opt(L, opts, "security_level")) {
    sx_where w = {1, "security_level"};
    set_security_level(L, c, -1, w);
    lua_pop(L, 1);
  }
  {
    static const char *const strs[] = {"ciphers", "ciphersuites", "groups"};
    int i;
    for (i = 0; i < 3; i++) {
      if (opt(L, opts, strs[i])) {
        sx_where w = {1, NULL};
        w.opt = strs[i];
        set_string_setting(L, c, i, -1, w);
        lua_pop(L, 1);
      }
    }
  }
  if (opt(L, opts, "alpn")) {
    sx_where w = {1, "alpn"};
    set_alpn(L, c, -1, w);
    lua_pop(L, 1);
  }
  if (opt(L, opts, "options")) {
    sx_where w = {1, "options"};
    SSL_CTX_set_options(c->ctx, parse_options(L, -1, w));
    lua_pop(L, 1);
  }
  if (opt(L, opts, "post_handshake_auth")) {
    if (!lua_isboolean(L, -1)) luaL_argerror(L, 1, "option 'post_handshake_auth': boolean expected");
    SSL_CTX_set_post_handshake_auth(c->ctx, lua_toboolean(L, -1));
    c->post_handshake_auth = lua_toboolean(L, -1);
    lua_pop(L, 1);
  }
  if (opt(L, opts, "session_cache_size")) {
    sx_where w = {1, "session_cache_size"};
    set_cache_size(L, c, -1, w);
    lua_pop(L, 1);
  }
  if (opt(L, opts, "session_tickets")) {
    if (!lua_isboolean(L, -1)) luaL_argerror(L, 1, "option 'session_tickets': boolean expected");
    if (lua_toboolean(L, -1)) SSL_CTX_clear_options(c->ctx, SSL_OP_NO_TICKET);
    else SSL_CTX_set_options(c->ctx, SSL_OP_NO_TICKET);
    lua_pop(L, 1);
  }
  if (opt(L, opts, "ticket_key_rotation")) {
    if (lua_type(L, -1) != LUA_TNUMBER || !(lua_tonumber(L, -1) >= 0.001) ||
        lua_tonumber(L, -1) > 1e9)
      luaL_argerror(L, 1, "option 'ticket_key_rotation': seconds (a number from 0.001 to 1e9) expected");
    if (c->side == SX_CLIENT) luaL_argerror(L, 1, "option 'ticket_key_rotation' is for server contexts");
    c->tickets.rotation = (double)lua_tonumber(L, -1);
    lua_pop(L, 1);
  }
  if (opt(L, opts, "release_buffers")) {
    if (!lua_isboolean(L, -1)) luaL_argerror(L, 1, "option 'release_buffers': boolean expected");
    if (lua_toboolean(L, -1)) SSL_CTX_set_mode(c->ctx, SSL_MODE_RELEASE_BUFFERS);
    else SSL_CTX_clear_mode(c->ctx, SSL_MODE_RELEASE_BUFFERS);
    lua_pop(L, 1);
  }
  if (opt(L, opts, "password")) {
    sx_where w = {1, "password"};
    check_password_value(L, -1, w);
    uv_set(L, obj, "password");
  }
}

/* Applies the options that read files or keys; returns 3 with nil,msg,kind pushed on failure. */
static int apply_material(lua_State *L, int obj, sx_ctx *c, int opts) {
  int has_trust = 0, names_from_trust = 1;
  if (opt(L, opts, "ca_file")) {
    if (lua_type(L, -1) != LUA_TSTRING) luaL_argerror(L, 1, "option 'ca_file': string expected");
    if (load_locations(L, c, lua_tostring(L, -1), NULL) == 3) return 3;
    lua_pop(L, 1);
    has_trust = 1;
  }
  if (opt(L, opts, "ca_path")) {
    if (lua_type(L, -1) != LUA_TSTRING) luaL_argerror(L, 1, "option 'ca_path': string expected");
    if (load_locations(L, c, NULL, lua_tostring(L, -1)) == 3) return 3;
    lua_pop(L, 1);
    has_trust = 1;
  }
  if (opt(L, opts, "client_ca")) {
    sx_where w = {1, "client_ca"};
    if (set_client_ca(L, c, -1, w) == 3) return 3;
    lua_pop(L, 1);
    names_from_trust = 0;
  }
  if (names_from_trust && opt(L, opts, "ca_file")) {
    STACK_OF(X509_NAME) *names = SSL_load_client_CA_file(lua_tostring(L, -1));
    if (names != NULL) SSL_CTX_set_client_CA_list(c->ctx, names);
    ERR_clear_error();
    lua_pop(L, 1);
  }
  if (opt(L, opts, "ca")) {
    sx_where w = {1, "ca"};
    if (add_ca_certs(L, c, lua_gettop(L), names_from_trust, w) == 3) return 3;
    lua_pop(L, 1);
    has_trust = 1;
  }
  if (!has_trust && c->side != SX_SERVER) {
    use_default_store(c);   /* clients verify against the system's roots */
    mark_trust_changed(c);
  }
  if (opt(L, opts, "dh")) {
    sx_where w = {1, "dh"};
    if (set_dh(L, c, lua_gettop(L), w) == 3) return 3;
    lua_pop(L, 1);
  }
  if (opt(L, opts, "certificate")) {
    sx_where w = {1, "certificate"};
    if (use_certificate(L, c, lua_gettop(L), w) == 3) return 3;
    lua_pop(L, 1);
  }
  if (opt(L, opts, "key")) {
    sx_where w = {1, "key"};
    if (use_private_key(L, c, obj, lua_gettop(L), 0, w) == 3) return 3;
    lua_pop(L, 1);
  }
  return 0;
}

int sx_context_new(lua_State *L) {
  int side = SX_CLIENT, obj;
  sx_ctx *c;
  if (lua_isnoneornil(L, 1)) {
    lua_settop(L, 0);
    lua_newtable(L);
  }
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_settop(L, 1);
  check_option_names(L, 1);
  if (opt(L, 1, "side")) {
    int k = lua_type(L, -1) == LUA_TSTRING ? sx_keyword_index(lua_tostring(L, -1), side_names) : -1;
    if (k < 0) luaL_argerror(L, 1, "option 'side': 'client', 'server' or 'both' expected");
    side = k;
    lua_pop(L, 1);
  }
  c = ctx_create(L, side);
  obj = lua_gettop(L);
  apply_settings(L, obj, c, 1);
  if (apply_material(L, obj, c, 1) == 3) {
    ctx_release(c);
    return 3;
  }
  lua_settop(L, obj);
  sx_gc_native(L, SX_CTX_NATIVE_KB);
  return 1;
}

int sx_connection_new(lua_State *L);

void sx_context_open(lua_State *L) {
  static const luaL_Reg methods[] = {
    {"set_verification_mode", ctx_set_verification_mode},
    {"get_verification_mode", ctx_get_verification_mode},
    {"set_verify_depth", ctx_set_verify_depth},
    {"get_verify_depth", ctx_get_verify_depth},
    {"set_verify_params", ctx_set_verify_params},
    {"add_crl", ctx_add_crl},
    {"use_certificate", ctx_use_certificate},
    {"use_private_key", ctx_use_private_key},
    {"load_verify_locations", ctx_load_verify_locations},
    {"set_default_verify_paths", ctx_set_default_verify_paths},
    {"set_client_ca_list", ctx_set_client_ca_list},
    {"set_password_callback", ctx_set_password_callback},
    {"set_options", ctx_set_options},
    {"clear_options", ctx_clear_options},
    {"get_options", ctx_get_options},
    {"set_dh", ctx_set_dh},
    {"set_ciphers", ctx_set_ciphers},
    {"set_ciphersuites", ctx_set_ciphersuites},
    {"set_groups", ctx_set_groups},
    {"set_min_version", ctx_set_min_version},
    {"set_max_version", ctx_set_max_version},
    {"set_security_level", ctx_set_security_level},
    {"get_security_level", ctx_get_security_level},
    {"set_alpn", ctx_set_alpn},
    {"set_alpn_select", ctx_set_alpn_select},
    {"set_post_handshake_auth", ctx_set_post_handshake_auth},
    {"set_session_id_context", ctx_set_session_id_context},
    {"set_session_callback", ctx_set_session_callback},
    {"set_session_cache_size", ctx_set_session_cache_size},
    {"set_ticket_keys", ctx_set_ticket_keys},
    {"set_session_store", sx_store_set},
    {"set_servername_callback", ctx_set_servername_callback},
    {"new_connection", sx_connection_new},
    {"side", ctx_side},
    {"close", ctx_close},
    {NULL, NULL}
  };
  static const luaL_Reg meta[] = {
    {"__gc", ctx_gc},
    {"__close", ctx_close},
    {"__tostring", ctx_tostring},
    {NULL, NULL}
  };
  sx_register_class(L, SX_CTX_MT, methods, meta);
}
