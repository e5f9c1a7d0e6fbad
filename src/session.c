/* session.c: SSL_SESSION objects, for resumption across connections and processes. */
#include <string.h>
#include "private.h"

typedef struct sx_session {
  SSL_SESSION *s;   /* NULL once released */
} sx_session;

static sx_session *session_check(lua_State *L, int arg) {
  sx_session *p = (sx_session *)luaL_checkudata(L, arg, SX_SESSION_MT);
  if (p->s == NULL) luaL_argerror(L, arg, "session is released");
  return p;
}

SSL_SESSION *sx_session_test(lua_State *L, int arg) {
  return (SSL_SESSION *)sx_box_test(L, arg, SX_SESSION_MT);
}

static sx_session *session_create(lua_State *L) {
  return (sx_session *)sx_box_new(L, SX_SESSION_MT);
}

void sx_session_push(lua_State *L, SSL_SESSION *s) {
  sx_session *p = session_create(L);
  SSL_SESSION_up_ref(s);
  p->s = s;
}

/* sslctx.session(der) -> session | nil, message, "ssl" */
int sx_session_new(lua_State *L) {
  size_t len;
  const unsigned char *der = (const unsigned char *)luaL_checklstring(L, 1, &len);
  sx_session *p = session_create(L);
  ERR_clear_error();
  p->s = d2i_SSL_SESSION(NULL, &der, (long)len);
  if (p->s == NULL) return sx_push_error(L, "session", "ssl");
  return 1;
}

static int session_der(lua_State *L) {
  sx_session *p = session_check(L, 1);
  int n = i2d_SSL_SESSION(p->s, NULL);
  unsigned char *buf, *q;
  if (n <= 0) return sx_push_error(L, "session", "ssl");
  buf = q = (unsigned char *)OPENSSL_malloc((size_t)n);
  if (buf == NULL) return luaL_error(L, "out of memory");
  i2d_SSL_SESSION(p->s, &q);
  lua_pushlstring(L, (const char *)buf, (size_t)n);   /* may raise: free first would lose it */
  OPENSSL_free(buf);
  return 1;
}

static int session_id(lua_State *L) {
  unsigned int len = 0;
  const unsigned char *id = SSL_SESSION_get_id(session_check(L, 1)->s, &len);
  static const char hex[] = "0123456789abcdef";
  char out[2 * SSL_MAX_SSL_SESSION_ID_LENGTH];
  unsigned int i;
  for (i = 0; i < len && i < SSL_MAX_SSL_SESSION_ID_LENGTH; i++) {
    out[2 * i] = hex[id[i] >> 4];
    out[2 * i + 1] = hex[id[i] & 15];
  }
  lua_pushlstring(L, out, 2 * i);
  return 1;
}

static int session_hostname(lua_State *L) {
  SSL_SESSION *s = session_check(L, 1)->s;
  const char *h = SSL_SESSION_get0_hostname(s);
  if (h == NULL) {
    lua_pushnil(L);
    return 1;
  }
  /* 5.1, 5.2, LuaJIT collect before copying: a finalizer may close the session object */
  SSL_SESSION_up_ref(s);
  lua_pushstring(L, h);
  SSL_SESSION_free(s);
  return 1;
}

static int session_resumable(lua_State *L) {
  lua_pushboolean(L, SSL_SESSION_is_resumable(session_check(L, 1)->s));
  return 1;
}

static int session_time(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)SSL_SESSION_get_time(session_check(L, 1)->s));
  return 1;
}

static int session_timeout(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)SSL_SESSION_get_timeout(session_check(L, 1)->s));
  return 1;
}

static int session_protocol(lua_State *L) {
  int v = SSL_SESSION_get_protocol_version(session_check(L, 1)->s);
  lua_pushstring(L, v == TLS1_3_VERSION ? "TLSv1.3" : v == TLS1_2_VERSION ? "TLSv1.2" : "unknown");
  return 1;
}

static int session_gc(lua_State *L) {
  SSL_SESSION_free((SSL_SESSION *)sx_box_take(L, SX_SESSION_MT));
  return 0;
}

static int session_tostring(lua_State *L) {
  sx_session *p = (sx_session *)luaL_checkudata(L, 1, SX_SESSION_MT);
  if (p->s == NULL) lua_pushliteral(L, "sslctx.session (released)");
  else lua_pushfstring(L, "sslctx.session: %p", (void *)p->s);
  return 1;
}

void sx_session_open(lua_State *L) {
  static const luaL_Reg methods[] = {
    {"der", session_der},
    {"id", session_id},
    {"hostname", session_hostname},
    {"is_resumable", session_resumable},
    {"time", session_time},
    {"timeout", session_timeout},
    {"protocol", session_protocol},
    {"close", session_gc},
    {NULL, NULL}
  };
  static const luaL_Reg meta[] = {
    {"__gc", session_gc},
    {"__close", session_gc},
    {"__tostring", session_tostring},
    {NULL, NULL}
  };
  sx_register_class(L, SX_SESSION_MT, methods, meta);
}
