/* trust.c: trust stores (X509_STORE) as contexts and connections build them, each with an
 * identity that the verification policy digests (policy.c).
 *
 * The identity is a running digest of what was added, in order: each certificate and CRL by
 * its SHA-256, each hashed directory by its path.  It never looks at the store's objects,
 * which a hashed directory grows lazily while verifying: two processes that configure the
 * same trust get the same identity, whatever each has verified since. */
#include <string.h>
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
