/* context.c: the SSL_CTX object (LispWorks make-ssl-ctx and its setters): life cycle,
 * sslctx.new, the verification mode, the trust and callback methods.  The options and the
 * setters made from them: options.c; trust stores and client-CA lists: trust.c. */
#include <string.h>
#include "private.h"

const char *const sx_side_names[] = {"client", "server", "both", NULL};

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
  else lua_pushfstring(L, "sslctx.context (%s): %p", sx_side_names[c->side], (void *)c);
  return 1;
}

/* uservalue helpers: uv[field] = value at top (popped) / push uv[field] */
void sx_ctx_uv_set(lua_State *L, int obj, const char *field) {
  obj = lua_absindex(L, obj);
  sx_getuv(L, obj);
  lua_insert(L, -2);
  lua_setfield(L, -2, field);
  lua_pop(L, 1);
}

void sx_ctx_uv_get(lua_State *L, int obj, const char *field) {
  sx_getuv(L, lua_absindex(L, obj));
  lua_getfield(L, -1, field);
  lua_remove(L, -2);
}

/* ---- verification ------------------------------------------------------- */

/* Sets one side's mode and callback from the values at mode_idx / cb_idx. */
void sx_ctx_set_policy(lua_State *L, int obj, sx_ctx *c, int side, int mode_idx,
                       sx_where mode_w, int cb_idx, sx_where cb_w) {
  sx_policy *p = &c->policy[side];
  int mode = sx_parse_mode(L, mode_idx, side, mode_w);
  int keep = lua_touserdata(L, cb_idx) == sx_KEEP && lua_type(L, cb_idx) == LUA_TLIGHTUSERDATA;
  if (!keep) {
    sx_callback cb;
    sx_parse_callback(L, cb_idx, cb_w, &cb);
    p->cb = cb;
    lua_pushvalue(L, cb_idx);
    sx_ctx_uv_set(L, obj, side == SX_CLIENT ? "cb_client" : "cb_server");
  }
  p->mode = mode;
  c->last_side = side;
  if (c->side == side || (c->side == SX_BOTH && side == SX_SERVER)) {
    sx_verify_fn fn = p->cb.kind == SX_CB_LUA ? sx_verify_trampoline
                      : p->cb.kind == SX_CB_C ? p->cb.fn : NULL;
    SSL_CTX_set_verify(c->ctx, p->mode, fn);
  }
  sx_ctx_policy_changed(c);
}

static int ctx_set_verification_mode(lua_State *L) {
  sx_ctx *c = sx_ctx_check(L, 1);
  lua_settop(L, 4);   /* an omitted callback is nil, at a fixed slot */
  int side = sx_check_side(L, 2);
  sx_where mw = {3, NULL}, cw = {4, NULL};
  if (c->side != SX_BOTH && side != c->side)   /* it would be stored and never used */
    return luaL_argerror(L, 2, lua_pushfstring(L, "this is a %s context", sx_side_names[c->side]));
  if (lua_isnone(L, 3)) return luaL_argerror(L, 3, "mode expected");
  sx_ctx_set_policy(L, 1, c, side, 3, mw, 4, cw);
  lua_pushinteger(L, c->policy[side].mode);
  return 1;
}

static int ctx_get_verification_mode(lua_State *L) {
  sx_ctx *c = sx_ctx_check(L, 1);
  int side = lua_isnoneornil(L, 2) ? -1 : sx_check_side(L, 2);
  int eff = side >= 0 ? side : (c->side == SX_BOTH ? c->last_side : c->side);
  int n = sx_push_mode(L, c->policy[eff].mode, side);
  if (n == 2) lua_pushnil(L);
  sx_ctx_uv_get(L, 1, eff == SX_CLIENT ? "cb_client" : "cb_server");
  return 4;
}

static int ctx_get_verify_depth(lua_State *L) {
  lua_pushinteger(L, SSL_CTX_get_verify_depth(sx_ctx_check(L, 1)->ctx));
  return 1;
}

/* ---- trust (trust.c) ---------------------------------------------------- */

static int ctx_add_crl(lua_State *L) {
  sx_ctx *c = sx_ctx_check(L, 1);
  sx_where w = {2, NULL};
  luaL_checkany(L, 2);
  if (sx_trust_add_crls(L, c, 2, w) == 3) return 3;
  lua_pushboolean(L, 1);
  return 1;
}

static int ctx_load_verify_locations(lua_State *L) {
  sx_ctx *c = sx_ctx_check(L, 1);
  const char *file = luaL_optstring(L, 2, NULL);
  const char *dir = luaL_optstring(L, 3, NULL);
  if (file == NULL && dir == NULL) return luaL_argerror(L, 2, "a file or a directory expected");
  if (sx_trust_load_locations(L, c, file, dir) == 3) return 3;
  lua_pushboolean(L, 1);
  return 1;
}

static int ctx_set_default_verify_paths(lua_State *L) {
  if (sx_trust_load_defaults(L, sx_ctx_check(L, 1)) == 3) return 3;
  lua_pushboolean(L, 1);
  return 1;
}

/* ---- password, security level, ALPN select ----------------------------- */

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
  sx_ctx_uv_set(L, 1, "password");
  return 0;
}

static int ctx_get_security_level(lua_State *L) {
  lua_pushinteger(L, SSL_CTX_get_security_level(sx_ctx_check(L, 1)->ctx));
  return 1;
}

static int ctx_set_alpn_select(lua_State *L) {
  sx_ctx *c = sx_ctx_check(L, 1);
  sx_where w = {2, NULL};
  if (lua_type(L, 2) == LUA_TFUNCTION) {
    OPENSSL_free(c->alpn_select_wire);
    c->alpn_select_wire = NULL;
    lua_pushvalue(L, 2);
    sx_ctx_uv_set(L, 1, "alpn_select");
  } else {
    size_t len;
    const char *wire;
    unsigned char *copy;
    sx_alpn_wire(L, 2, w);
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
  unsigned char name[32];
  sx_digest d;
  size_t len;
  const char *s = luaL_checklstring(L, 2, &len);
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
  sx_ctx_policy_changed(c);
  return 0;
}

static int ctx_set_session_callback(lua_State *L) {
  sx_ctx *c = sx_ctx_check(L, 1);
  long mode;
  if (!lua_isnil(L, 2)) luaL_checktype(L, 2, LUA_TFUNCTION);
  lua_pushvalue(L, 2);
  sx_ctx_uv_set(L, 1, "session_cb");
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

/* ---- SNI ---------------------------------------------------------------- */

static int ctx_set_servername_callback(lua_State *L) {
  sx_ctx *c = sx_ctx_check(L, 1);
  if (!lua_isnil(L, 2)) luaL_checktype(L, 2, LUA_TFUNCTION);
  lua_pushvalue(L, 2);
  sx_ctx_uv_set(L, 1, "servername");
  SSL_CTX_set_client_hello_cb(c->ctx, lua_isnil(L, 2) ? NULL : sx_client_hello_cb, NULL);
  return 0;
}

static int ctx_side(lua_State *L) {
  lua_pushstring(L, sx_side_names[sx_ctx_check(L, 1)->side]);
  return 1;
}

/* ---- sslctx.new --------------------------------------------------------- */

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
     * one (sx_connection_new). */
    if (side == SX_SERVER && !SSL_CTX_set_cipher_list(c->ctx, SX_SERVER_CIPHERS)) ERR_clear_error();
    SSL_CTX_set_options(c->ctx, SSL_OP_CIPHER_SERVER_PREFERENCE);   /* no effect on clients */
  }
  return c;
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
  sx_options_check_names(L, 1);
  lua_getfield(L, 1, "side");
  if (!lua_isnil(L, -1)) {
    int k = lua_type(L, -1) == LUA_TSTRING ? sx_keyword_index(lua_tostring(L, -1), sx_side_names) : -1;
    if (k < 0) luaL_argerror(L, 1, "option 'side': 'client', 'server' or 'both' expected");
    side = k;
  }
  lua_pop(L, 1);
  c = ctx_create(L, side);
  obj = lua_gettop(L);
  if (sx_options_apply(L, c, 1) == 3) {
    ctx_release(c);
    return 3;
  }
  lua_settop(L, obj);
  sx_gc_native(L, SX_CTX_NATIVE_KB);
  return 1;
}

void sx_context_open(lua_State *L) {
  static const luaL_Reg methods[] = {
    {"set_verification_mode", ctx_set_verification_mode},
    {"get_verification_mode", ctx_get_verification_mode},
    {"get_verify_depth", ctx_get_verify_depth},
    {"add_crl", ctx_add_crl},
    {"load_verify_locations", ctx_load_verify_locations},
    {"set_default_verify_paths", ctx_set_default_verify_paths},
    {"set_password_callback", ctx_set_password_callback},
    {"clear_options", sx_ctx_clear_options},
    {"get_options", sx_ctx_get_options},
    {"get_security_level", ctx_get_security_level},
    {"set_alpn_select", ctx_set_alpn_select},
    {"set_session_id_context", ctx_set_session_id_context},
    {"set_session_callback", ctx_set_session_callback},
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
  luaL_getmetatable(L, SX_CTX_MT);
  lua_getfield(L, -1, "__index");
  sx_options_register(L, -1);   /* the setters made from the options' table */
  lua_pop(L, 2);
}

