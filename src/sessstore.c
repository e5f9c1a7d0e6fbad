/* sessstore.c: a server context's sessions kept where the application wants them
 * (ctx:set_session_store), in place of OpenSSL's internal server cache.
 *
 * Each session goes out sealed: AES-256-GCM under the store's key, with its id bound in as
 * associated data, so the store never holds a master secret in the clear and nobody without
 * the key can plant a session or move one to another id.  What `get` returns is opened,
 * checked against the id asked for, and handed to OpenSSL, which then checks the session id
 * context (the policy, policy.c) and the expiry before it resumes anything.
 *
 * The store's functions run protected on the thread driving the connection; an error, a
 * yield or a value that does not open is a miss (never a crash, never a resumption), and
 * goes to the connection's logger.  OpenSSL removes sessions where no Lua thread is at hand
 * (when a connection is freed): removals wait in a bounded queue for the next store call. */
#include <string.h>
#include <openssl/rand.h>
#include "private.h"

#define MAGIC "SXS1"
#define MAGIC_LEN 4
#define NONCE_LEN 12
#define TAG_LEN 16
#define MAX_QUEUED_REMOVALS 4096

static const char aad_label[] = "sslctx-session-store-1";

static int gcm(int enc, const unsigned char key[32], const unsigned char *nonce,
               const unsigned char *id, unsigned id_len, const unsigned char *in, int in_len,
               unsigned char *out, unsigned char *tag) {
  EVP_CIPHER_CTX *cx = EVP_CIPHER_CTX_new();
  unsigned char idlen = (unsigned char)id_len;
  int n = 0, fin = 0, ok;
  ok = cx != NULL && EVP_CipherInit_ex(cx, EVP_aes_256_gcm(), NULL, NULL, NULL, enc) &&
       EVP_CIPHER_CTX_ctrl(cx, EVP_CTRL_GCM_SET_IVLEN, NONCE_LEN, NULL) &&
       EVP_CipherInit_ex(cx, NULL, NULL, key, nonce, enc) &&
       EVP_CipherUpdate(cx, NULL, &n, (const unsigned char *)aad_label, sizeof aad_label) &&
       EVP_CipherUpdate(cx, NULL, &n, &idlen, 1) &&
       (id_len == 0 || EVP_CipherUpdate(cx, NULL, &n, id, (int)id_len)) &&
       (enc || EVP_CIPHER_CTX_ctrl(cx, EVP_CTRL_GCM_SET_TAG, TAG_LEN, tag)) &&
       EVP_CipherUpdate(cx, out, &n, in, in_len) && EVP_CipherFinal_ex(cx, out + n, &fin) &&
       (!enc || EVP_CIPHER_CTX_ctrl(cx, EVP_CTRL_GCM_GET_TAG, TAG_LEN, tag));
  EVP_CIPHER_CTX_free(cx);
  ERR_clear_error();
  return ok && n + fin == in_len;
}

/* ---- running the store's functions ------------------------------------ */

/* The store function `field` of the context the connection was made from. */
#define push_store_fn(L, conn, field) sx_conn_push_ctx_field((L), (conn), SX_SLOT_CTX0, (field))

/* ---- removals ------------------------------------------------------------- */

static int flush_helper(lua_State *L) {
  sx_conn *conn = (sx_conn *)lua_touserdata(L, 1);
  sx_store_cfg *st = &conn->origin->store;
  push_store_fn(L, conn, "store_remove");
  while (st->n_removed > 0) {
    unsigned char *e = st->removed[--st->n_removed];
    if (!lua_isfunction(L, -1)) continue;
    lua_pushvalue(L, -1);
    lua_pushlstring(L, (const char *)e + 1, e[0]);
    lua_call(L, 1, 0);
  }
  return 0;
}

static void flush_removed(sx_conn *conn) {
  if (conn->origin->store.n_removed > 0) sx_callback_run_logged(conn, "session store remove", flush_helper, conn);
}

static void remove_cb(SSL_CTX *ctx, SSL_SESSION *sess) {
  sx_ctx *c = (sx_ctx *)SSL_CTX_get_ex_data(ctx, sx_ctx_ex_index);
  sx_store_cfg *st = c != NULL ? &c->store : NULL;
  unsigned int len = 0;
  const unsigned char *id = SSL_SESSION_get_id(sess, &len);
  if (st == NULL || !st->on || len == 0 || len > SSL_MAX_SSL_SESSION_ID_LENGTH) return;
  if (st->n_removed == st->cap_removed) {
    int cap = st->cap_removed == 0 ? 16 : st->cap_removed * 2;
    void *p;
    if (cap > MAX_QUEUED_REMOVALS ||
        (p = OPENSSL_realloc(st->removed, sizeof *st->removed * (size_t)cap)) == NULL) {
      st->dropped++;
      return;
    }
    st->removed = (unsigned char (*)[SSL_MAX_SSL_SESSION_ID_LENGTH + 1])p;
    st->cap_removed = cap;
  }
  st->removed[st->n_removed][0] = (unsigned char)len;
  memcpy(st->removed[st->n_removed] + 1, id, len);
  st->n_removed++;
}

/* ---- new ---------------------------------------------------------------- */

typedef struct new_call {
  sx_conn *conn;
  SSL_SESSION *sess;
} new_call;

static int new_helper(lua_State *L) {
  new_call *nc = (new_call *)lua_touserdata(L, 1);
  sx_store_cfg *st = &nc->conn->origin->store;
  unsigned int id_len = 0;
  const unsigned char *id = SSL_SESSION_get_id(nc->sess, &id_len);
  int der_len = i2d_SSL_SESSION(nc->sess, NULL);
  unsigned char *der, *p, *blob;
  size_t total;
  if (der_len <= 0 || id_len == 0) return 0;   /* nothing a client could ask for by id */
  total = MAGIC_LEN + NONCE_LEN + (size_t)der_len + TAG_LEN;
  push_store_fn(L, nc->conn, "store_new");
  lua_pushlstring(L, (const char *)id, id_len);
  /* the DER and the blob in a Lua userdata: freed by the collector whatever happens */
  der = (unsigned char *)lua_newuserdata(L, (size_t)der_len + total);
  blob = der + der_len;
  p = der;
  if (i2d_SSL_SESSION(nc->sess, &p) != der_len) return luaL_error(L, "cannot encode the session");
  memcpy(blob, MAGIC, MAGIC_LEN);
  if (RAND_bytes(blob + MAGIC_LEN, NONCE_LEN) != 1 ||
      !gcm(1, st->key, blob + MAGIC_LEN, id, id_len, der, der_len,
           blob + MAGIC_LEN + NONCE_LEN, blob + MAGIC_LEN + NONCE_LEN + der_len)) {
    OPENSSL_cleanse(der, (size_t)der_len);
    return luaL_error(L, "cannot seal the session");
  }
  OPENSSL_cleanse(der, (size_t)der_len);
  lua_pushlstring(L, (const char *)blob, total);   /* fn, id, box, blob */
  lua_remove(L, -2);
  lua_pushnumber(L, (lua_Number)(SSL_SESSION_get_time(nc->sess) + SSL_SESSION_get_timeout(nc->sess)));
  lua_call(L, 3, 0);
  return 0;
}

/* OpenSSL's new-session callback, server side (context.c dispatches). */
int sx_store_new_session(SSL *ssl, SSL_SESSION *sess) {
  sx_conn *conn = (sx_conn *)SSL_get_ex_data(ssl, sx_ssl_ex_index);
  new_call nc;
  if (conn == NULL || conn->L == NULL || conn->origin == NULL || !conn->origin->store.on) return 0;
  /* A client that got a ticket resumes with it: the store keeps only what must be found by
   * id (TLS 1.2 clients without tickets, and every session when tickets are off). */
  if (conn->ticket_issued) return 0;
  flush_removed(conn);
  nc.conn = conn;
  nc.sess = sess;
  sx_callback_run_logged(conn, "session store new", new_helper, &nc);
  return 0;   /* OpenSSL keeps its reference */
}

/* ---- get ---------------------------------------------------------------- */

typedef struct get_call {
  sx_conn *conn;
  const unsigned char *id;
  int id_len;
  SSL_SESSION *found;
} get_call;

static int get_helper(lua_State *L) {
  get_call *gc = (get_call *)lua_touserdata(L, 1);
  sx_store_cfg *st = &gc->conn->origin->store;
  const unsigned char *blob, *p;
  unsigned char *der;
  size_t len;
  int der_len;
  SSL_SESSION *s;
  unsigned int have_len = 0;
  const unsigned char *have;
  push_store_fn(L, gc->conn, "store_get");
  lua_pushlstring(L, (const char *)gc->id, (size_t)gc->id_len);
  lua_call(L, 1, 1);
  if (lua_isnil(L, -1)) return 0;   /* a plain miss */
  if (lua_type(L, -1) != LUA_TSTRING)
    return luaL_error(L, "get returned a %s; expected a sealed session or nil", luaL_typename(L, -1));
  blob = (const unsigned char *)lua_tolstring(L, -1, &len);
  if (len < MAGIC_LEN + NONCE_LEN + TAG_LEN + 1 || len > 1024 * 1024 ||
      memcmp(blob, MAGIC, MAGIC_LEN) != 0)
    return luaL_error(L, "get returned something that is not a sealed session");
  der_len = (int)(len - MAGIC_LEN - NONCE_LEN - TAG_LEN);
  der = (unsigned char *)lua_newuserdata(L, (size_t)der_len);
  {
    unsigned char tag[TAG_LEN];
    memcpy(tag, blob + len - TAG_LEN, TAG_LEN);
    if (!gcm(0, st->key, blob + MAGIC_LEN, gc->id, (unsigned)gc->id_len,
             blob + MAGIC_LEN + NONCE_LEN, der_len, der, tag))
      return luaL_error(L, "the session does not open under the store's key for this id");
  }
  p = der;
  s = d2i_SSL_SESSION(NULL, &p, der_len);
  OPENSSL_cleanse(der, (size_t)der_len);
  ERR_clear_error();
  if (s == NULL) return luaL_error(L, "the session does not decode");
  have = SSL_SESSION_get_id(s, &have_len);
  if (have_len != (unsigned)gc->id_len || memcmp(have, gc->id, have_len) != 0) {
    SSL_SESSION_free(s);
    return luaL_error(L, "the session is not the one asked for");
  }
  gc->found = s;
  return 0;
}

static SSL_SESSION *get_cb(SSL *ssl, const unsigned char *id, int id_len, int *copy) {
  sx_conn *conn = (sx_conn *)SSL_get_ex_data(ssl, sx_ssl_ex_index);
  get_call gc;
  *copy = 0;   /* the reference is OpenSSL's */
  if (conn == NULL || conn->L == NULL || conn->origin == NULL || !conn->origin->store.on ||
      id_len <= 0)
    return NULL;
  flush_removed(conn);
  gc.conn = conn;
  gc.id = id;
  gc.id_len = id_len;
  gc.found = NULL;
  if (!sx_callback_run_logged(conn, "session store get", get_helper, &gc) && gc.found != NULL) {
    SSL_SESSION_free(gc.found);   /* raised after it was found: a miss all the same */
    gc.found = NULL;
  }
  return gc.found;
}

/* ---- ctx:set_session_store ------------------------------------------------ */

void sx_store_free(sx_store_cfg *st) {
  OPENSSL_free(st->removed);
  st->removed = NULL;
  st->n_removed = st->cap_removed = 0;
  OPENSSL_cleanse(st->key, sizeof st->key);
  st->on = 0;
}

static void set_fn(lua_State *L, int obj, const char *field) {
  sx_getuv(L, obj);
  lua_insert(L, -2);
  lua_setfield(L, -2, field);
  lua_pop(L, 1);
}

/* ctx:set_session_store{key =, new =, get =, remove =} -> true; false removes it. */
int sx_store_set(lua_State *L) {
  sx_ctx *c = sx_ctx_check(L, 1);
  static const char *const fields[] = {"key", "new", "get", "remove", NULL};
  size_t klen = 0;
  long mode;
  if (c->side == SX_CLIENT) return luaL_argerror(L, 1, "a session store is for server contexts");
  if (lua_type(L, 2) == LUA_TBOOLEAN && !lua_toboolean(L, 2)) {
    sx_store_free(&c->store);
    lua_pushnil(L); set_fn(L, 1, "store_new");
    lua_pushnil(L); set_fn(L, 1, "store_get");
    lua_pushnil(L); set_fn(L, 1, "store_remove");
    SSL_CTX_sess_set_get_cb(c->ctx, NULL);
    SSL_CTX_sess_set_remove_cb(c->ctx, NULL);
    mode = SSL_CTX_get_session_cache_mode(c->ctx) & ~(long)SSL_SESS_CACHE_NO_INTERNAL;
    SSL_CTX_set_session_cache_mode(c->ctx, mode);
    sx_ctx_update_new_cb(c);
    lua_pushboolean(L, 1);
    return 1;
  }
  luaL_checktype(L, 2, LUA_TTABLE);
  lua_settop(L, 2);
  lua_pushnil(L);
  while (lua_next(L, 2)) {
    lua_pop(L, 1);
    if (lua_type(L, -1) != LUA_TSTRING || sx_keyword_index(lua_tostring(L, -1), fields) < 0)
      return luaL_argerror(L, 2, lua_pushfstring(L, "unknown field '%s'", lua_type(L, -1) == LUA_TSTRING
                                                   ? lua_tostring(L, -1) : luaL_typename(L, -1)));
  }
  lua_getfield(L, 2, "key");      /* 3 */
  lua_getfield(L, 2, "new");      /* 4 */
  lua_getfield(L, 2, "get");      /* 5 */
  lua_getfield(L, 2, "remove");   /* 6 */
  if (lua_type(L, 3) != LUA_TSTRING || (lua_tolstring(L, 3, &klen), klen != 32))
    return luaL_argerror(L, 2, "'key' must be a 32-byte string");
  if (!lua_isfunction(L, 4)) return luaL_argerror(L, 2, "'new' must be a function");
  if (!lua_isfunction(L, 5)) return luaL_argerror(L, 2, "'get' must be a function");
  if (!lua_isnil(L, 6) && !lua_isfunction(L, 6)) return luaL_argerror(L, 2, "'remove' must be a function");
  if (c->ctx == NULL) return luaL_argerror(L, 1, "context was closed while the store was read");
  lua_pushvalue(L, 4); set_fn(L, 1, "store_new");
  lua_pushvalue(L, 5); set_fn(L, 1, "store_get");
  lua_pushvalue(L, 6); set_fn(L, 1, "store_remove");
  memcpy(c->store.key, lua_tostring(L, 3), 32);
  c->store.on = 1;
  mode = SSL_CTX_get_session_cache_mode(c->ctx) | SSL_SESS_CACHE_SERVER | SSL_SESS_CACHE_NO_INTERNAL;
  SSL_CTX_set_session_cache_mode(c->ctx, mode);
  SSL_CTX_sess_set_get_cb(c->ctx, get_cb);
  SSL_CTX_sess_set_remove_cb(c->ctx, remove_cb);
  sx_ctx_update_new_cb(c);
  lua_pushboolean(L, 1);
  return 1;
}
