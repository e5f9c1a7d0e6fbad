/* ctx_callbacks.c: the context-level callbacks a connection runs during its handshake:
 * servername (in OpenSSL's client-hello callback, before session lookup), ALPN select, and
 * OpenSSL's new-session callback (a client's session callback, a server's session store).
 * They reach the context's Lua values through the connection's context slot, which
 * outlives ctx:close(): connections made before a close keep working to their end.  Each
 * runs its Lua code through callback.c. */
#include <string.h>
#include "private.h"

/* The field of the context the connection now uses, reached through the connection's slot:
 * it outlives ctx:close(), so connections made before a close keep working to their end. */
#define push_conn_ctx_field(L, conn, field) sx_conn_push_ctx_field((L), (conn), SX_SLOT_CTX, (field))

typedef struct alpn_call {
  sx_conn *conn;
  const unsigned char *in;
  unsigned int inlen;
  const unsigned char *out;
  unsigned char outlen;
} alpn_call;

static int alpn_select_helper(lua_State *L) {
  alpn_call *ac = (alpn_call *)lua_touserdata(L, 1);
  unsigned int i;
  int n = 0;
  size_t len;
  const char *chosen;
  push_conn_ctx_field(L, ac->conn, "alpn_select");
  lua_newtable(L);
  for (i = 0; i < ac->inlen && i + 1 + ac->in[i] <= ac->inlen; i += 1u + ac->in[i]) {
    lua_pushlstring(L, (const char *)ac->in + i + 1, ac->in[i]);
    lua_rawseti(L, -2, ++n);
  }
  sx_objects_push(L, ac->conn);
  lua_call(L, 2, 1);
  if (lua_isnil(L, -1)) return 0;
  if (lua_type(L, -1) != LUA_TSTRING)
    return luaL_error(L, "returned a %s; expected a protocol name or nil", luaL_typename(L, -1));
  chosen = lua_tolstring(L, -1, &len);
  for (i = 0; i < ac->inlen && i + 1 + ac->in[i] <= ac->inlen; i += 1u + ac->in[i]) {
    if (ac->in[i] == len && memcmp(ac->in + i + 1, chosen, len) == 0) {
      ac->out = ac->in + i + 1;   /* point into the client's list: it outlives this call */
      ac->outlen = ac->in[i];
      return 0;
    }
  }
  return luaL_error(L, "returned '%s', which the client did not offer", chosen);
}

int sx_alpn_select_cb(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                          const unsigned char *in, unsigned int inlen, void *arg) {
  sx_conn *conn = (sx_conn *)SSL_get_ex_data(ssl, sx_ssl_ex_index);
  sx_ctx *c = (sx_ctx *)SSL_CTX_get_ex_data(SSL_get_SSL_CTX(ssl), sx_ctx_ex_index);
  (void)arg;
  if (conn == NULL || c == NULL) return SSL_TLSEXT_ERR_ALERT_FATAL;
  if (c->alpn_select_wire != NULL) {
    unsigned char *o;
    if (SSL_select_next_proto(&o, outlen, c->alpn_select_wire, (unsigned)c->alpn_select_len, in,
                              inlen) != OPENSSL_NPN_NEGOTIATED)
      return SSL_TLSEXT_ERR_NOACK;
    *out = o;
    return SSL_TLSEXT_ERR_OK;
  }
  if (conn->L == NULL) return SSL_TLSEXT_ERR_ALERT_FATAL;
  {
    alpn_call ac;
    ac.conn = conn;
    ac.in = in;
    ac.inlen = inlen;
    ac.out = NULL;
    ac.outlen = 0;
    if (!sx_callback_run(conn, "ALPN select", alpn_select_helper, &ac)) return SSL_TLSEXT_ERR_ALERT_FATAL;
    if (ac.out == NULL) return SSL_TLSEXT_ERR_NOACK;
    *out = ac.out;
    *outlen = ac.outlen;
    return SSL_TLSEXT_ERR_OK;
  }
}

typedef struct session_call {
  sx_conn *conn;
  SSL_SESSION *session;
} session_call;

static int session_helper(lua_State *L) {
  session_call *sc = (session_call *)lua_touserdata(L, 1);
  push_conn_ctx_field(L, sc->conn, "session_cb");
  if (lua_isnil(L, -1)) return 0;
  sx_objects_push(L, sc->conn);
  sx_session_push(L, sc->session);
  lua_call(L, 2, 0);
  return 0;
}

static int new_session_cb(SSL *ssl, SSL_SESSION *session) {
  sx_conn *conn = (sx_conn *)SSL_get_ex_data(ssl, sx_ssl_ex_index);
  session_call sc;
  if (SSL_is_server(ssl)) return sx_store_new_session(ssl, session);
  if (conn == NULL || conn->L == NULL) return 0;
  sc.conn = conn;
  sc.session = session;
  sx_callback_run(conn, "session", session_helper, &sc);
  return 0;   /* the session object took its own reference */
}

void sx_ctx_update_new_cb(sx_ctx *c) {
  SSL_CTX_sess_set_new_cb(c->ctx, c->has_session_cb || c->store.on ? new_session_cb : NULL);
}

/* The host_name entry of a ClientHello's server_name extension, or NULL. */
static int client_hello_servername(SSL *ssl, const unsigned char **name, size_t *len) {
  const unsigned char *p;
  size_t rem, list;
  if (!SSL_client_hello_get0_ext(ssl, TLSEXT_TYPE_server_name, &p, &rem) || rem < 5) return 0;
  list = ((size_t)p[0] << 8) | p[1];
  if (list + 2 != rem || p[2] != TLSEXT_NAMETYPE_host_name) return 0;
  *len = ((size_t)p[3] << 8) | p[4];
  if (*len + 5 > rem || *len == 0) return 0;
  *name = p + 5;
  return 1;
}

typedef struct sni_call {
  sx_conn *conn;
  const unsigned char *name;
  size_t len;
} sni_call;

static int sni_helper(lua_State *L) {
  sni_call *sc = (sni_call *)lua_touserdata(L, 1);
  sx_ctx *nc;
  sx_conn_push(L, sc->conn);
  sx_getslot(L, -1, SX_SLOT_CTX);   /* the current context, closed or not */
  push_conn_ctx_field(L, sc->conn, "servername");
  if (sc->name != NULL) lua_pushlstring(L, (const char *)sc->name, sc->len);
  else lua_pushnil(L);
  lua_call(L, 1, 1);
  if (lua_isnil(L, -1) || lua_rawequal(L, -1, -2)) return 0;
  nc = (sx_ctx *)luaL_testudata(L, -1, SX_CTX_MT);
  if (nc == NULL) return luaL_error(L, "returned a %s; expected a context or nil", luaL_typename(L, -1));
  if (nc->ctx == NULL) return luaL_error(L, "returned a closed context");
  sx_conn_switch_context(L, sc->conn, nc, lua_gettop(L));
  return 0;
}

int sx_client_hello_cb(SSL *ssl, int *alert, void *arg) {
  sx_conn *conn = (sx_conn *)SSL_get_ex_data(ssl, sx_ssl_ex_index);
  sni_call sc;
  (void)arg;
  if (conn == NULL || conn->L == NULL) {
    *alert = SSL_AD_INTERNAL_ERROR;
    return SSL_CLIENT_HELLO_ERROR;
  }
  sc.conn = conn;
  sc.name = NULL;
  sc.len = 0;
  client_hello_servername(ssl, &sc.name, &sc.len);
  if (!sx_callback_run(conn, "servername", sni_helper, &sc)) {
    *alert = SSL_AD_INTERNAL_ERROR;
    return SSL_CLIENT_HELLO_ERROR;
  }
  return SSL_CLIENT_HELLO_SUCCESS;
}

