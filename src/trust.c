/* trust.c: trust stores (X509_STORE), CRLs and client-CA lists, for contexts and connections
 * alike, each store with an identity that the verification policy digests (policy.c).
 *
 * The identity is a running digest of what was added, in order: each certificate and CRL by
 * its SHA-256, each hashed directory by its path.  It never looks at the store's objects,
 * which a hashed directory grows lazily while verifying: two processes that configure the
 * same trust get the same identity, whatever each has verified since. */
#include <errno.h>
#include <string.h>
#include <sys/stat.h>
#include <openssl/pem.h>
#include "private.h"

#define log_add sx_digest_mix

void sx_trust_add_cert(X509_STORE *store, X509 *x, unsigned char id[32]) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int n = 0;
  X509_STORE_add_cert(store, x);   /* a duplicate is not a failure */
  X509_digest(x, EVP_sha256(), md, &n);
  log_add(id, "cert", md, n);
}

void sx_trust_add_crl(X509_STORE *store, X509_CRL *crl, unsigned char id[32]) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int n = 0;
  X509_STORE_add_crl(store, crl);
  X509_CRL_digest(crl, EVP_sha256(), md, &n);
  log_add(id, "crl", md, n);
}

/* The certificates and CRLs of a PEM file, as SSL_CTX_load_verify_locations reads it.
 * 0 with the reason on OpenSSL's error queue. */
int sx_trust_add_file(X509_STORE *store, const char *path, unsigned char id[32]) {
  BIO *in = BIO_new_file(path, "r");
  STACK_OF(X509_INFO) *infos;
  int i, count = 0;
  if (in == NULL) return 0;
  infos = PEM_X509_INFO_read_bio(in, NULL, NULL, (void *)"");
  BIO_free(in);
  if (infos == NULL) return 0;
  for (i = 0; i < sk_X509_INFO_num(infos); i++) {
    X509_INFO *info = sk_X509_INFO_value(infos, i);
    if (info->x509 != NULL) sx_trust_add_cert(store, info->x509, id), count++;
    if (info->crl != NULL) sx_trust_add_crl(store, info->crl, id), count++;
  }
  sk_X509_INFO_pop_free(infos, X509_INFO_free);
  if (count == 0) {
    ERR_raise(ERR_LIB_X509, X509_R_NO_CERTIFICATE_OR_CRL_FOUND);
    return 0;
  }
  ERR_clear_error();   /* duplicates */
  return 1;
}

/* Adds the path to the ':'-separated list *dirs (what a copy of the store re-adds). */
static int dirs_append(char **dirs, const char *dir) {
  size_t old = *dirs != NULL ? strlen(*dirs) : 0, n = strlen(dir);
  char *p = (char *)OPENSSL_realloc(*dirs, old + n + 2);
  if (p == NULL) return 0;
  if (old > 0) p[old++] = ':';
  memcpy(p + old, dir, n + 1);
  *dirs = p;
  return 1;
}

static int store_add_dir(X509_STORE *store, const char *dir) {
  X509_LOOKUP *lu = X509_STORE_add_lookup(store, X509_LOOKUP_hash_dir());
  return lu != NULL && X509_LOOKUP_add_dir(lu, dir, X509_FILETYPE_PEM);
}

/* A hashed directory (or a ':'-separated list of them): it counts by its path. */
int sx_trust_add_dir(X509_STORE *store, const char *dir, unsigned char id[32], char **dirs) {
  if (!store_add_dir(store, dir) || !dirs_append(dirs, dir)) return 0;
  log_add(id, "dir", dir, strlen(dir) + 1);
  return 1;
}

/* The system's default file and directory, as X509_STORE_set_default_paths loads them; they
 * count by their paths.  With store NULL, only the identity and the list of directories are
 * updated (the process-wide default store is already loaded). */
int sx_trust_add_defaults(X509_STORE *store, unsigned char id[32], char **dirs) {
  const char *dir = getenv(X509_get_default_cert_dir_env());
  const char *file = getenv(X509_get_default_cert_file_env());
  if (dir == NULL) dir = X509_get_default_cert_dir();
  if (file == NULL) file = X509_get_default_cert_file();
  if (store != NULL && !X509_STORE_set_default_paths(store)) return 0;
  ERR_clear_error();
  if (!dirs_append(dirs, dir)) return 0;
  log_add(id, "default-file", file, strlen(file) + 1);
  log_add(id, "default-dir", dir, strlen(dir) + 1);
  return 1;
}

/* A new store with the same certificates, CRLs and directories: a context that lent its
 * store to connections changes a copy, so those connections keep the trust they were made
 * with.  NULL when out of memory. */
X509_STORE *sx_trust_copy(X509_STORE *from, const char *dirs) {
  X509_STORE *to = X509_STORE_new();
  STACK_OF(X509_OBJECT) *objs;
  int i, ok = to != NULL;
  if (!ok) return NULL;
  X509_STORE_lock(from);
  objs = X509_STORE_get0_objects(from);
  for (i = 0; ok && i < sk_X509_OBJECT_num(objs); i++) {
    X509_OBJECT *o = sk_X509_OBJECT_value(objs, i);
    if (X509_OBJECT_get_type(o) == X509_LU_X509) ok = X509_STORE_add_cert(to, X509_OBJECT_get0_X509(o));
    else if (X509_OBJECT_get_type(o) == X509_LU_CRL) ok = X509_STORE_add_crl(to, X509_OBJECT_get0_X509_CRL(o));
  }
  X509_STORE_unlock(from);
  if (ok) ok = X509_VERIFY_PARAM_set1(X509_STORE_get0_param(to), X509_STORE_get0_param(from));
  while (ok && dirs != NULL && *dirs != '\0') {
    const char *end = strchr(dirs, ':');
    size_t n = end != NULL ? (size_t)(end - dirs) : strlen(dirs);
    char *one = OPENSSL_strndup(dirs, n);
    ok = one != NULL && store_add_dir(to, one);
    OPENSSL_free(one);
    dirs += n;
    if (*dirs == ':') dirs++;
  }
  if (!ok) {
    X509_STORE_free(to);
    return NULL;
  }
  ERR_clear_error();
  return to;
}

/* ---- client-CA lists ---------------------------------------------------- */

/* Copy on write of a context's client-CA list: OpenSSL reads the context's list at the time
 * of each certificate request of a connection that has none of its own. */
void sx_trust_pin_client_ca(lua_State *L, SSL_CTX *ctx) {
  STACK_OF(X509_NAME) *list = SSL_CTX_get_client_CA_list(ctx);
  sx_objects_push_all(L);
  lua_pushnil(L);
  while (lua_next(L, -2)) {
    sx_conn *conn = (sx_conn *)luaL_testudata(L, -1, SX_CONN_MT);
    if (conn != NULL && conn->ssl != NULL && !conn->borrowed && conn->side == SX_SERVER &&
        SSL_get_SSL_CTX(conn->ssl) == ctx && SSL_get_client_CA_list(conn->ssl) == list) {
      STACK_OF(X509_NAME) *copy = SSL_dup_CA_list(list);
      if (copy == NULL) luaL_error(L, "out of memory");   /* nothing changed yet */
      SSL_set_client_CA_list(conn->ssl, copy);
    }
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
}

/* The identity of a store the module did not build (nginx's, under the hook): its objects as
 * they are now.  Sessions then resume only where the same objects are loaded. */
void sx_trust_digest_objects(X509_STORE *store, unsigned char id[32]) {
  STACK_OF(X509_OBJECT) *objs;
  int i;
  memset(id, 0, 32);
  if (store == NULL) {
    log_add(id, "none", "", 0);
    return;
  }
  X509_STORE_lock(store);
  objs = X509_STORE_get0_objects(store);
  for (i = 0; i < sk_X509_OBJECT_num(objs); i++) {
    X509_OBJECT *o = sk_X509_OBJECT_value(objs, i);
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int n = 0;
    if (X509_OBJECT_get_type(o) == X509_LU_X509) {
      X509_digest(X509_OBJECT_get0_X509(o), EVP_sha256(), md, &n);
      log_add(id, "cert", md, n);
    } else if (X509_OBJECT_get_type(o) == X509_LU_CRL) {
      X509_CRL_digest(X509_OBJECT_get0_X509_CRL(o), EVP_sha256(), md, &n);
      log_add(id, "crl", md, n);
    }
  }
  X509_STORE_unlock(store);
}

/* ---- trust anchors and the names a server asks for ------------------------ */

/* The subjects of certs, appended to names (a server's certificate request lists them). */
static void add_subjects(STACK_OF(X509_NAME) *names, STACK_OF(X509) *certs) {
  int i;
  for (i = 0; i < sk_X509_num(certs); i++) {
    X509_NAME *nm = X509_NAME_dup(X509_get_subject_name(sk_X509_value(certs, i)));
    if (nm != NULL && !sk_X509_NAME_push(names, nm)) X509_NAME_free(nm);
  }
}

/* The subjects of a PEM file's certificates, appended to names. */
static void add_file_subjects(STACK_OF(X509_NAME) *names, const char *file) {
  STACK_OF(X509_NAME) *from_file = SSL_load_client_CA_file(file);
  while (from_file != NULL && sk_X509_NAME_num(from_file) > 0)
    if (!sk_X509_NAME_push(names, sk_X509_NAME_shift(from_file))) break;
  sk_X509_NAME_pop_free(from_file, X509_NAME_free);
  ERR_clear_error();
}

/* ---- a context's trust ---------------------------------------------------- */

static void trust_changed(sx_ctx *c) {
  memcpy(c->policy[SX_CLIENT].trust, c->trust_id, 32);
  memcpy(c->policy[SX_SERVER].trust, c->trust_id, 32);
  sx_ctx_policy_changed(c);
}

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

void sx_trust_use_default(sx_ctx *c) {
  if (!CRYPTO_THREAD_run_once(&default_store_once, default_store_init) || default_store == NULL ||
      !X509_STORE_up_ref(default_store)) {
    /* no shared store: load privately */
    sx_trust_add_defaults(SSL_CTX_get_cert_store(c->ctx), c->trust_id, &c->trust_dirs);
    ERR_clear_error();
  } else {
    SSL_CTX_set_cert_store(c->ctx, default_store);   /* frees the empty store it had */
    c->store_shared = 1;
    sx_trust_add_defaults(NULL, c->trust_id, &c->trust_dirs);
  }
  trust_changed(c);
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

static X509_STORE *writable_store_or_raise(lua_State *L, sx_ctx *c) {
  X509_STORE *store = writable_store(c);
  if (store == NULL) luaL_error(L, "out of memory");
  return store;
}

int sx_ctx_lend_trust(sx_ctx *c, SSL *ssl) {
  if (!SSL_set1_verify_cert_store(ssl, SSL_CTX_get_cert_store(c->ctx))) return 0;
  c->store_lent = 1;
  return 1;
}

int sx_trust_add_crls(lua_State *L, sx_ctx *c, int idx, sx_where w) {
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
  trust_changed(c);
  return 0;
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

int sx_trust_load_locations(lua_State *L, sx_ctx *c, const char *file, const char *dir) {
  X509_STORE *store;
  if (dir != NULL && check_trust_dirs(L, dir) == 3) return 3;
  store = writable_store_or_raise(L, c);
  ERR_clear_error();
  if ((file != NULL && !sx_trust_add_file(store, file, c->trust_id)) ||
      (dir != NULL && !sx_trust_add_dir(store, dir, c->trust_id, &c->trust_dirs))) {
    const char *what = file != NULL ? file : dir;
    trust_changed(c);   /* what was added counts */
    return sx_push_error(L, lua_pushfstring(L, "trust locations '%s'", what), "file");
  }
  trust_changed(c);
  return 0;
}

int sx_trust_load_defaults(lua_State *L, sx_ctx *c) {
  ERR_clear_error();
  if (!sx_trust_add_defaults(writable_store_or_raise(L, c), c->trust_id, &c->trust_dirs)) {
    trust_changed(c);
    return sx_push_error(L, "default trust paths", "file");
  }
  trust_changed(c);
  return 0;
}

/* Before the context's client-CA list changes: its connections keep the one they have. */
static void pin_names(lua_State *L, sx_ctx *c) {
  if (!c->names_lent) return;
  sx_trust_pin_client_ca(L, c->ctx);
  c->names_lent = 0;
}

void sx_trust_names_from_file(sx_ctx *c, const char *file) {
  STACK_OF(X509_NAME) *names = SSL_load_client_CA_file(file);
  if (names != NULL) SSL_CTX_set_client_CA_list(c->ctx, names);
  ERR_clear_error();
}

/* Adds PEM text (or an x509 / list) at idx to the trust store, and its subjects to the client
 * CA list when add_names. */
int sx_trust_add_ca(lua_State *L, sx_ctx *c, int idx, int add_names, sx_where w) {
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
  trust_changed(c);
  return 0;
}

/* client_ca: a list of files / PEM texts, or false for an empty list. */
int sx_trust_set_client_ca(lua_State *L, sx_ctx *c, int idx, sx_where w) {
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
    lua_rawgeti(L, idx, i);
    certs = sx_load_certs(L, lua_absindex(L, -1), "client_ca", w);
    if (certs == NULL) {
      sk_X509_NAME_pop_free(names, X509_NAME_free);
      return 3;
    }
    add_subjects(names, certs);
    sk_X509_pop_free(certs, X509_free);
    lua_pop(L, 1);
  }
  SSL_CTX_set_client_CA_list(c->ctx, names);
  return 0;
}

/* ---- a connection's own trust (conn:set_trust) ---------------------------- */

void sx_anchors_free(sx_anchors *a) {
  X509_STORE_free(a->store);
  sk_X509_NAME_pop_free(a->names, X509_NAME_free);
  a->store = NULL;
  a->names = NULL;
}

/* {ca_file = path, ca = pem} at arg: a new store, its identity (built as a context's is, so
 * that equal trust gives equal policies wherever it was set) and the names of its anchors.
 * 0, or 3 with nil, message, kind pushed. */
int sx_trust_anchors(lua_State *L, int arg, sx_anchors *a) {
  STACK_OF(X509) *certs = NULL;
  const char *file;
  int i, top;
  luaL_checktype(L, arg, LUA_TTABLE);
  lua_getfield(L, arg, "ca_file");
  lua_getfield(L, arg, "ca");
  top = lua_gettop(L);
  if (lua_isnil(L, top - 1) && lua_isnil(L, top)) return luaL_argerror(L, arg, "'ca_file' or 'ca' expected");
  if (!lua_isnil(L, top - 1) && lua_type(L, top - 1) != LUA_TSTRING)
    return luaL_argerror(L, arg, "'ca_file' must be a string");
  file = lua_tostring(L, top - 1);
  if (!lua_isnil(L, top)) {   /* may raise: before anything is allocated */
    sx_where w = {arg, "ca"};
    if ((certs = sx_load_certs(L, top, "ca", w)) == NULL) return 3;
  }
  memset(a->id, 0, sizeof a->id);
  a->store = X509_STORE_new();
  a->names = sk_X509_NAME_new_null();
  ERR_clear_error();
  if (a->store == NULL || a->names == NULL || (file != NULL && !sx_trust_add_file(a->store, file, a->id))) {
    int oom = file == NULL || a->store == NULL || a->names == NULL;
    sx_anchors_free(a);
    sk_X509_pop_free(certs, X509_free);
    if (oom) return luaL_error(L, "out of memory");
    return sx_push_error(L, lua_pushfstring(L, "trust file '%s'", file), "file");
  }
  if (file != NULL) add_file_subjects(a->names, file);
  for (i = 0; certs != NULL && i < sk_X509_num(certs); i++)
    sx_trust_add_cert(a->store, sk_X509_value(certs, i), a->id);
  if (certs != NULL) add_subjects(a->names, certs);
  sk_X509_pop_free(certs, X509_free);
  ERR_clear_error();
  return 0;
}
