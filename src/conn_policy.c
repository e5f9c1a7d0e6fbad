/* conn_policy.c: a connection's own verification policy, set after creation: mode and
 * callback, depth, parameters, soft fail, the session id context or policy name, and the
 * servername callback's switch to another context's server policy.  Every setter starts with
 * sx_conn_policy_check and ends with the policy's identity following the change (policy.c).
 * conn:set_trust builds its store and client-CA list with trust.c. */
#include <string.h>
#include "private.h"

/* ---- per-connection verification --------------------------------------- */

/* Every per-connection setter of the policy: never from inside the connection's own
 * callback (a verification running now would end under one policy and be labelled with
 * another), then the session id context follows the change (policy.c). */
sx_conn *sx_conn_policy_check(lua_State *L, const char *what) {
  sx_conn *conn = sx_conn_check(L, 1);
  if (conn->in_callback)
    luaL_error(L, "%s called from inside this connection's own callback", what);
  return conn;
}

static int conn_check_side(lua_State *L, sx_conn *conn, int arg) {
  int k = sx_check_side(L, arg);
  if (k != conn->side)
    return luaL_argerror(L, arg, lua_pushfstring(L, "this is a %s connection",
                                                 sx_conn_side_names[conn->side]));
  return k;
}

static int conn_set_verification_mode(lua_State *L) {
  sx_conn *conn = sx_conn_policy_check(L, "set_verification_mode");
  lua_settop(L, 4);   /* an omitted callback is nil, at a fixed slot */
  int side = conn_check_side(L, conn, 2);
  sx_where mw = {3, NULL}, cw = {4, NULL};
  int mode;
  if (lua_isnone(L, 3)) return luaL_argerror(L, 3, "mode expected");
  mode = sx_parse_mode(L, 3, side, mw);
  if (!(lua_type(L, 4) == LUA_TLIGHTUSERDATA && lua_touserdata(L, 4) == sx_KEEP)) {
    sx_callback cb;
    sx_parse_callback(L, 4, cw, &cb);
    conn->policy.cb = cb;
    conn->policy.cb_named = 0;   /* a context's name vouches for its own callbacks only */
    lua_pushvalue(L, 4);
    sx_setslot(L, 1, SX_SLOT_CB);
  }
  conn->policy.mode = mode;
  sx_apply_verify(conn->ssl, &conn->policy);
  sx_conn_policy_changed(L, conn);
  lua_pushinteger(L, mode);
  return 1;
}

static int conn_get_verification_mode(lua_State *L) {
  sx_conn *conn = sx_conn_check(L, 1);
  int side = lua_isnoneornil(L, 2) ? -1 : conn_check_side(L, conn, 2);
  if (sx_push_mode(L, conn->policy.mode, side) == 2) lua_pushnil(L);
  sx_getslot(L, 1, SX_SLOT_CB);
  return 4;
}

static int conn_set_verify_depth(lua_State *L) {
  sx_conn *conn = sx_conn_policy_check(L, "set_verify_depth");
  lua_Integer n = luaL_checkinteger(L, 2);
  luaL_argcheck(L, n >= 0 && n <= SX_MAX_DEPTH, 2, "depth must be from 0 to 2^31-1");
  SSL_set_verify_depth(conn->ssl, (int)n);
  sx_conn_policy_changed(L, conn);
  return 0;
}

static int conn_get_verify_depth(lua_State *L) {
  lua_pushinteger(L, SSL_get_verify_depth(sx_conn_check(L, 1)->ssl));
  return 1;
}

static X509_VERIFY_PARAM *conn_param(void *owner) {
  sx_conn *conn = (sx_conn *)owner;
  return conn->ssl != NULL && !conn->close_asked ? SSL_get0_param(conn->ssl) : NULL;
}

static int conn_set_verify_params(lua_State *L) {
  sx_conn *conn = sx_conn_policy_check(L, "set_verify_params");
  sx_where w = {2, NULL};
  sx_set_verify_params(L, conn_param, conn, 2, w, NULL, NULL, &conn->policy);
  sx_conn_policy_changed(L, conn);
  return 0;
}

/* conn:set_soft_fail(bool): verification failures are recorded, not fatal (a missing
 * certificate too); callback errors still fail the handshake. */
static int conn_set_soft_fail(lua_State *L) {
  sx_conn *conn = sx_conn_policy_check(L, "set_soft_fail");
  luaL_checktype(L, 2, LUA_TBOOLEAN);
  conn->policy.soft_fail = lua_toboolean(L, 2);
  sx_apply_verify(conn->ssl, &conn->policy);
  sx_conn_policy_changed(L, conn);
  return 0;
}

static int conn_set_session_id_context(lua_State *L) {
  sx_conn *conn = sx_conn_policy_check(L, "set_session_id_context");
  size_t len;
  const char *s = luaL_checklstring(L, 2, &len);
  luaL_argcheck(L, len <= SSL_MAX_SID_CTX_LENGTH, 2, "session id context longer than 32 bytes");
  sx_conn_name_policy(conn, (const unsigned char *)s, len);
  return 0;
}

/* conn:set_policy(name): a session id context naming the connection's whole policy, so
 * sessions resume only under that name (any length of name; it is hashed, with the side). */
static int conn_set_policy(lua_State *L) {
  sx_conn *conn = sx_conn_policy_check(L, "set_policy");
  size_t len;
  const char *name = luaL_checklstring(L, 2, &len);
  unsigned char sid[32];
  sx_digest d;
  sx_digest_init(&d);
  sx_digest_update(&d, "sslctx-policy-name", 19);
  sx_digest_update(&d, &conn->side, sizeof conn->side);
  sx_digest_update(&d, name, len);
  if (!sx_digest_final(&d, sid)) return luaL_error(L, "out of memory");
  sx_conn_name_policy(conn, sid, sizeof sid);
  return 0;
}

/* ---- the servername callback's switch ---------------------------------- */

/* Applies the new context's server policy to the connection: everything SSL_set_SSL_CTX does
 * not carry over itself (mode, callback, depth, parameters, trust store, client-CA list),
 * then the session id context of the connection's policy as it now is. */
void sx_conn_switch_context(lua_State *L, sx_conn *conn, sx_ctx *nc, int nc_idx) {
  SSL *ssl = conn->ssl;
  X509_VERIFY_PARAM *param = SSL_get0_param(ssl);
  int soft_fail = conn->policy.soft_fail;
  SSL_set_SSL_CTX(ssl, nc->ctx);
  SSL_set_client_CA_list(ssl, NULL);   /* the new context's, pinned if it changes */
  nc->names_lent = 1;
  if (!sx_ctx_lend_trust(nc, ssl)) luaL_error(L, "out of memory");
  conn->policy = nc->policy[SX_SERVER];
  conn->policy.soft_fail = soft_fail;   /* the connection's own choice */
  sx_apply_verify(ssl, &conn->policy);
  X509_VERIFY_PARAM_set_inh_flags(param, X509_VP_FLAG_OVERWRITE | X509_VP_FLAG_RESET_FLAGS);
  X509_VERIFY_PARAM_set1(param, SSL_CTX_get0_param(nc->ctx));
  X509_VERIFY_PARAM_set_inh_flags(param, 0);
  SSL_set_verify_depth(ssl, SSL_CTX_get_verify_depth(nc->ctx));
  SSL_set_security_level(ssl, SSL_CTX_get_security_level(nc->ctx));
  conn->named = 0;       /* the new context's policy replaces whatever named the old one */
  conn->switching = 1;   /* before session lookup: nothing to relabel */
  sx_conn_policy_changed(L, conn);
  conn->switching = 0;
  sx_getuv(L, nc_idx);
  lua_getfield(L, -1, "cb_server");
  lua_remove(L, -2);
  sx_conn_push(L, conn);      /* value, conn */
  lua_pushvalue(L, -2);
  sx_setslot(L, -2, SX_SLOT_CB);
  lua_pushvalue(L, nc_idx);
  sx_setslot(L, -2, SX_SLOT_CTX);
  lua_pop(L, 2);
}

/* conn:set_trust{ca_file = path, ca = pem} -> true | nil, msg, kind: a trust store and a
 * client-CA list of this connection's own (a borrowed one verifies against it instead of its
 * owner's).  Its identity is built as a context's is (trust.c), so that equal trust gives
 * equal policies wherever it was set. */
static int conn_set_trust(lua_State *L) {
  sx_conn *conn = sx_conn_policy_check(L, "set_trust");
  sx_anchors a;
  if (sx_trust_anchors(L, 2, &a) == 3) return 3;
  if (conn->ssl == NULL || conn->close_asked) {   /* closed by Lua code run while the table was read */
    sx_anchors_free(&a);
    return luaL_argerror(L, 1, "closed while the trust table was read");
  }
  SSL_set0_verify_cert_store(conn->ssl, a.store);   /* takes ownership */
  SSL_set_client_CA_list(conn->ssl, a.names);       /* takes ownership */
  memcpy(conn->policy.trust, a.id, sizeof a.id);
  conn->trust_unknown = 0;
  sx_conn_policy_changed(L, conn);
  lua_pushboolean(L, 1);
  return 1;
}

const luaL_Reg sx_conn_policy_methods[] = {
  {"set_trust", conn_set_trust},
  {"set_verification_mode", conn_set_verification_mode},
  {"get_verification_mode", conn_get_verification_mode},
  {"set_verify_depth", conn_set_verify_depth},
  {"get_verify_depth", conn_get_verify_depth},
  {"set_verify_params", conn_set_verify_params},
  {"set_soft_fail", conn_set_soft_fail},
  {"set_session_id_context", conn_set_session_id_context},
  {"set_policy", conn_set_policy},
  {NULL, NULL}
};
