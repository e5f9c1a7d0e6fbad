/* connection.c: the SSL object over memory buffers, a file descriptor or a LuaSocket object
 * (LispWorks ssl-new, attach-ssl, socket-stream-handshake): its creation and transports, the
 * busy rule and close, its own trust store, and the connection class.  The driving calls are
 * in conn_io.c, the policy setters in conn_policy.c, what it tells in conninfo.c. */
#include <string.h>
#include <unistd.h>
#include <limits.h>
#include "private.h"

const char *const sx_conn_side_names[] = {"client", "server", NULL};

/* ---- life cycle --------------------------------------------------------- */

static sx_conn *conn_check_any(lua_State *L, int arg) {
  void *p = lua_touserdata(L, arg);
  if (p != NULL && lua_getmetatable(L, arg)) {   /* upvalue 1: see sx_register_class */
    int same = lua_rawequal(L, -1, lua_upvalueindex(1));
    lua_pop(L, 1);
    if (same) return (sx_conn *)p;
  }
  return (sx_conn *)luaL_checkudata(L, arg, SX_CONN_MT);
}

sx_conn *sx_conn_check(lua_State *L, int arg) {
  sx_conn *conn = conn_check_any(L, arg);
  if (conn->ssl == NULL || conn->close_asked) luaL_argerror(L, arg, "connection is closed");
  return conn;
}

/* close_notify only after a clean handshake, and never a read: close() must not block.
 * This also runs from __gc, possibly in the middle of another connection's error report, so
 * it leaves the error queue as it found it. */
static void send_close_notify(sx_conn *conn) {
  if (conn->fatal == NULL && SSL_is_init_finished(conn->ssl) &&
      !(SSL_get_shutdown(conn->ssl) & SSL_SENT_SHUTDOWN)) {
    ERR_set_mark();   /* on an empty queue no mark: the pop then clears what shutdown left */
    SSL_shutdown(conn->ssl);
    ERR_pop_to_mark();
  }
}

/* One idempotent release for close(), __gc and __close.  A LuaSocket object is closed by the
 * caller (it needs Lua); a raw fd is closed here. */
static void conn_release(sx_conn *conn) {
  if (conn->ssl == NULL) return;
  if (conn->borrowed) {
    sx_hook_detach(conn);
    return;
  }
  send_close_notify(conn);
  SSL_set_ex_data(conn->ssl, sx_ssl_ex_index, NULL);
  SSL_free(conn->ssl);   /* frees the memory BIOs too */
  conn->ssl = NULL;
  conn->rbio = conn->wbio = NULL;
  X509_free(conn->first_peer);
  conn->first_peer = NULL;
  SSL_SESSION_free(conn->offer);
  conn->offer = NULL;
  if (conn->transport == SX_T_FD && conn->close_transport && conn->fd >= 0) close(conn->fd);
  conn->fd = -1;
}

static void close_socket(lua_State *L, int obj, int protected_call) {
  sx_getslot(L, obj, SX_SLOT_SOCKET);
  if (!lua_isnil(L, -1)) {
    lua_getfield(L, -1, "close");
    lua_pushvalue(L, -2);
    if (protected_call) lua_pcall(L, 1, 0, 0);   /* in __gc: a failing close is not ours to raise */
    else lua_call(L, 1, 0);
  }
  lua_pop(L, 1);
}

/* getfd() of the LuaSocket object, run protected when asked (in __gc). */
static int socket_current_fd(lua_State *L, int obj, int protected_call) {
  int fd = -1;
  sx_getslot(L, obj, SX_SLOT_SOCKET);
  lua_getfield(L, -1, "getfd");
  lua_pushvalue(L, -2);
  if (protected_call ? lua_pcall(L, 1, 1, 0) == LUA_OK : (lua_call(L, 1, 1), 1))
    fd = sx_isintegral(L, -1) ? (int)lua_tointeger(L, -1) : -1;
  lua_pop(L, 2);
  return fd;
}

/* A LuaSocket object closed under the connection frees its descriptor number for reuse by
 * an unrelated socket: nothing may be sent on it any more, not even close_notify. */
int sx_conn_socket_gone(lua_State *L, sx_conn *conn, int obj, int protected_call) {
  if (conn->transport != SX_T_SOCKET || conn->fd < 0) return 0;
  if (socket_current_fd(L, obj, protected_call) == conn->fd) return 0;
  conn->fatal = "syscall";
  conn->fd = -1;
  return 1;
}

/* Releases the connection (object at obj) and closes its LuaSocket object if it owns one;
 * the socket's methods run protected when asked (from __gc, or at the end of a method). */
static void close_now(lua_State *L, sx_conn *conn, int obj, int protected_call) {
  int was_socket = conn->ssl != NULL && conn->transport == SX_T_SOCKET && conn->close_transport;
  conn->close_asked = 0;
  if (conn->ssl != NULL) sx_conn_socket_gone(L, conn, obj, protected_call);
  conn_release(conn);
  if (was_socket) close_socket(L, obj, protected_call);
}

/* Any allocation may run a finalizer, and a finalizer may close this very connection (user
 * code that closes what it wraps).  A method that uses the SSL after allocating keeps the
 * connection busy meanwhile (sx_conn_busy_begin, then this): close() then only asks (the
 * object reads as closed at once), and the method closes it on its way out.  A memory error
 * between the two leaves it busy: close() then waits for __gc. */
void sx_conn_busy_end(lua_State *L, sx_conn *conn) {
  if (--conn->busy == 0 && conn->close_asked) close_now(L, conn, 1, 1);
}

/* A connection closed by the program never needs the collector: its share of the context's
 * pending estimate is taken back. */
static void refund_gc_debt(sx_conn *conn) {
  if (conn->ssl != NULL && !conn->close_asked && conn->origin != NULL &&
      conn->origin->gc_debt_kb >= SX_CONN_NATIVE_KB)
    conn->origin->gc_debt_kb -= SX_CONN_NATIVE_KB;
}

static int conn_gc(lua_State *L) {
  sx_conn *conn = conn_check_any(L, 1);
  conn->busy = 0;   /* unreachable: none of its methods is running */
  close_now(L, conn, 1, 1);
  return 0;
}

/* __close runs on a reachable object, from anywhere: a coroutine closed from inside one of
 * the connection's own callbacks closes its <close> variables while the handshake that runs
 * the callback still uses the SSL.  It waits, as close() does, and never raises. */
static int conn_close_meta(lua_State *L) {
  sx_conn *conn = conn_check_any(L, 1);
  if (conn->ssl == NULL || conn->borrowed) return 0;   /* a borrowed SSL is its owner's */
  refund_gc_debt(conn);
  if (conn->busy > 0 || conn->in_callback) conn->close_asked = 1;
  else close_now(L, conn, 1, 1);
  return 0;
}

static int conn_close(lua_State *L) {
  sx_conn *conn = conn_check_any(L, 1);
  if (conn->borrowed && conn->ssl != NULL)
    return luaL_error(L, "close on a borrowed connection: its owner frees it");
  if (conn->in_callback) return luaL_error(L, "close called from inside this connection's own callback");
  refund_gc_debt(conn);
  if (conn->busy > 0 && conn->ssl != NULL) conn->close_asked = 1;
  else close_now(L, conn, 1, 0);
  return 0;
}

static int conn_tostring(lua_State *L) {
  sx_conn *conn = conn_check_any(L, 1);
  if (conn->ssl == NULL || conn->close_asked) lua_pushliteral(L, "sslctx.connection (closed)");
  else lua_pushfstring(L, "sslctx.connection (%s): %p", sx_conn_side_names[conn->side], (void *)conn);
  return 1;
}

/* ---- what it is ----------------------------------------------------------- */

static int conn_side(lua_State *L) {
  lua_pushstring(L, sx_conn_side_names[sx_conn_check(L, 1)->side]);
  return 1;
}

static int conn_context(lua_State *L) {
  sx_conn_check(L, 1);
  sx_getslot(L, 1, SX_SLOT_CTX);
  return 1;
}

static int conn_getfd(lua_State *L) {
  sx_conn *conn = sx_conn_check(L, 1);
  lua_pushinteger(L, conn->transport == SX_T_MEMORY ? -1 : conn->fd);
  return 1;
}

/* conn:set_logger(fn(message)): where a borrowed connection's callback errors go. */
static int conn_set_logger(lua_State *L) {
  sx_conn_check(L, 1);
  if (!lua_isnil(L, 2)) luaL_checktype(L, 2, LUA_TFUNCTION);
  lua_pushvalue(L, 2);
  sx_setslot(L, 1, SX_SLOT_LOGGER);
  return 0;
}

static int conn_is_borrowed(lua_State *L) {
  lua_pushboolean(L, sx_conn_check(L, 1)->borrowed);
  return 1;
}

/* ---- creation ----------------------------------------------------------- */

/* Pushes a connection object over someone else's SSL (hook.c keeps it anchored). */
sx_conn *sx_conn_new_borrowed(lua_State *L, SSL *ssl, lua_State *thread) {
  sx_conn *conn = (sx_conn *)sx_newuserdata_slots(L, sizeof(sx_conn), SX_SLOT_N);
  memset(conn, 0, sizeof *conn);
  conn->fd = -1;
  luaL_setmetatable(L, SX_CONN_MT);
  conn->ssl = ssl;
  conn->borrowed = 1;
  conn->transport = SX_T_BORROWED;
  conn->side = SSL_is_server(ssl) ? SX_SERVER : SX_CLIENT;
  conn->policy.mode = SSL_get_verify_mode(ssl);
  conn->trust_unknown = 1;   /* its owner's store: digested when a policy change needs it */
  conn->started = 1;
  conn->L = thread;   /* no driving calls: callbacks run on the module's thread */
  SSL_set_ex_data(ssl, sx_ssl_ex_index, conn);
  sx_objects_set(L, conn, -1);
  return conn;
}

static const char *const conn_option_names[] = {
  "fd", "socket", "close", "side", "session", "buffer_limit", "hostname", "verify_hostname", NULL
};

static void check_conn_options(lua_State *L, int opts) {
  lua_pushnil(L);
  while (lua_next(L, opts)) {
    lua_pop(L, 1);
    if (lua_type(L, -1) != LUA_TSTRING || sx_keyword_index(lua_tostring(L, -1), conn_option_names) < 0)
      luaL_argerror(L, 2, lua_pushfstring(L, "unknown option '%s'",
                                          lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1)
                                                                         : luaL_typename(L, -1)));
  }
}

static int conn_side_from(lua_State *L, sx_ctx *c, int opts) {
  int k;
  lua_getfield(L, opts, "side");
  if (lua_isnil(L, -1)) {
    lua_pop(L, 1);
    if (c->side == SX_BOTH)
      luaL_argerror(L, 2, "a 'both' context needs opts.side ('client' or 'server')");
    return c->side;
  }
  k = lua_type(L, -1) == LUA_TSTRING ? sx_keyword_index(lua_tostring(L, -1), sx_conn_side_names) : -1;
  if (k < 0) luaL_argerror(L, 2, "option 'side': 'client' or 'server' expected");
  lua_pop(L, 1);
  return k;
}

/* The fd or socket is the caller's until new_connection returns: *close_transport is applied
 * only then, so that a creation that raises half-way never closes it (from __gc). */
static void setup_transport(lua_State *L, sx_conn *conn, int obj, int opts, int *close_transport) {
  lua_getfield(L, opts, "fd");
  lua_getfield(L, opts, "socket");
  if (!lua_isnil(L, -2) && !lua_isnil(L, -1)) luaL_argerror(L, 2, "give opts.fd or opts.socket, not both");
  if (!lua_isnil(L, -2)) {
    if (!sx_isintegral(L, -2) || lua_tointeger(L, -2) < 0 || lua_tointeger(L, -2) > INT_MAX)
      luaL_argerror(L, 2, "option 'fd': a descriptor (an integer from 0 to INT_MAX) expected");
    conn->transport = SX_T_FD;
    conn->fd = (int)lua_tointeger(L, -2);
  } else if (!lua_isnil(L, -1)) {
    int s = lua_gettop(L);
    if (lua_type(L, s) != LUA_TUSERDATA && lua_type(L, s) != LUA_TTABLE)
      luaL_argerror(L, 2, "option 'socket': a LuaSocket TCP object expected");
    lua_getfield(L, s, "getfd");
    if (!lua_isfunction(L, -1)) luaL_argerror(L, 2, "option 'socket': object has no getfd method");
    lua_pushvalue(L, s);
    lua_call(L, 1, 1);
    if (!sx_isintegral(L, -1) || lua_tointeger(L, -1) < 0 || lua_tointeger(L, -1) > INT_MAX)
      luaL_argerror(L, 2, "option 'socket': the socket is closed (getfd gave no descriptor)");
    conn->transport = SX_T_SOCKET;
    conn->fd = (int)lua_tointeger(L, -1);
    lua_pop(L, 1);
    lua_pushvalue(L, s);
    sx_setslot(L, obj, SX_SLOT_SOCKET);   /* the connection keeps the socket alive */
  } else {
    conn->transport = SX_T_MEMORY;
    conn->fd = -1;
  }
  lua_pop(L, 2);
  lua_getfield(L, opts, "close");
  if (!lua_isnil(L, -1) && !lua_isboolean(L, -1)) luaL_argerror(L, 2, "option 'close': boolean expected");
  *close_transport = lua_isnil(L, -1) || lua_toboolean(L, -1);
  lua_pop(L, 1);
  lua_getfield(L, opts, "buffer_limit");
  conn->buffer_limit = conn->transport == SX_T_MEMORY ? SX_DEFAULT_BUFFER_LIMIT : 0;
  if (lua_type(L, -1) == LUA_TBOOLEAN && !lua_toboolean(L, -1)) {
    conn->buffer_limit = 0;   /* false: no limit */
  } else if (!lua_isnil(L, -1)) {
    if (!sx_isintegral(L, -1) || lua_tointeger(L, -1) < 1)
      luaL_argerror(L, 2, "option 'buffer_limit': a positive integer or false expected");
    if (conn->transport != SX_T_MEMORY)
      luaL_argerror(L, 2, "option 'buffer_limit' is for the memory transport");
    conn->buffer_limit = (size_t)lua_tointeger(L, -1);
  }
  lua_pop(L, 1);
}

static void attach_transport(lua_State *L, sx_conn *conn) {
  if (conn->transport == SX_T_MEMORY) {
    conn->rbio = sx_inbox_new();
    conn->wbio = sx_outbox_new();
    if (conn->rbio == NULL || conn->wbio == NULL) {
      BIO_free(conn->rbio);
      BIO_free(conn->wbio);
      conn->rbio = conn->wbio = NULL;
      luaL_error(L, "out of memory");
    }
    BIO_set_mem_eof_return(conn->rbio, -1);   /* empty means "not yet", until feed(nil) */
    SSL_set_bio(conn->ssl, conn->rbio, conn->wbio);
  } else {
    BIO *b = sx_fd_bio_new(conn->fd);
    if (b == NULL) luaL_error(L, "out of memory");
    SSL_set_bio(conn->ssl, b, b);   /* one reference, owned by the SSL */
  }
}

/* Client identity: a DNS name is SNI + name check, an IP literal an IP check without SNI. */
static void setup_hostname(lua_State *L, sx_conn *conn, sx_ctx *c, int opts,
                           const char **hostname) {
  X509_VERIFY_PARAM *param = SSL_get0_param(conn->ssl);
  int verify_hostname = 1;
  lua_getfield(L, opts, "verify_hostname");
  if (!lua_isnil(L, -1)) {
    if (!lua_isboolean(L, -1)) luaL_argerror(L, 2, "option 'verify_hostname': boolean expected");
    verify_hostname = lua_toboolean(L, -1);
  }
  lua_pop(L, 1);
  lua_getfield(L, opts, "hostname");   /* stays on the stack while *hostname is used */
  *hostname = NULL;
  if (lua_isnil(L, -1)) {
    if (conn->side == SX_CLIENT && (conn->policy.mode & SSL_VERIFY_PEER) && verify_hostname &&
        X509_VERIFY_PARAM_get0_host(param, 0) == NULL && !c->params_identity)
      luaL_argerror(L, 2, "a verifying client needs opts.hostname (or a host/ip verification "
                          "parameter, or verify_hostname = false)");
    return;
  }
  if (lua_type(L, -1) != LUA_TSTRING || lua_rawlen(L, -1) == 0)
    luaL_argerror(L, 2, "option 'hostname': a non-empty string expected");
  if (conn->side != SX_CLIENT) luaL_argerror(L, 2, "option 'hostname' is for client connections");
  *hostname = lua_tostring(L, -1);
  if (strlen(*hostname) != lua_rawlen(L, -1))
    luaL_argerror(L, 2, "option 'hostname': must not contain a NUL byte");
  sx_conn_set_peer(c, conn, *hostname, lua_rawlen(L, -1), verify_hostname);
  if (sx_is_ip_literal(*hostname)) {
    if (verify_hostname && !X509_VERIFY_PARAM_set1_ip_asc(param, *hostname))
      luaL_argerror(L, 2, "option 'hostname': invalid IP address");
  } else {
    if (!SSL_set_tlsext_host_name(conn->ssl, *hostname))
      luaL_argerror(L, 2, "option 'hostname': invalid server name");
    if (verify_hostname && !SSL_set1_host(conn->ssl, *hostname))
      luaL_argerror(L, 2, "option 'hostname': invalid host name");
  }
}

/* opts.session is kept until the handshake starts, and offered only if the policy it was
 * made under equals the connection's then (sx_conn_client_start). */
static void take_client_session(lua_State *L, sx_conn *conn, int opts) {
  SSL_SESSION *s;
  lua_getfield(L, opts, "session");
  if (lua_isnil(L, -1)) {
    lua_pop(L, 1);
    return;
  }
  s = sx_session_test(L, -1);
  if (s == NULL) luaL_argerror(L, 2, "option 'session': an sslctx.session expected");
  if (conn->side != SX_CLIENT) luaL_argerror(L, 2, "option 'session' is for client connections");
  SSL_SESSION_up_ref(s);
  conn->offer = s;
  lua_pop(L, 1);
}

/* Reading the options can run Lua code (an __index metamethod, or a finalizer at any
 * allocation) that closes the context: it is checked again before each use. */
static void check_ctx_open(lua_State *L, sx_ctx *c) {
  if (c->ctx == NULL) luaL_argerror(L, 1, "context was closed while the options were read");
}

int sx_connection_new(lua_State *L) {
  sx_ctx *c = sx_ctx_check(L, 1);
  sx_conn *conn;
  int obj, opts, side, close_transport = 0;
  const char *hostname = NULL;
  if (lua_isnoneornil(L, 2)) {   /* only read from: one empty table serves every call */
    static const char empty_opts_key = 'e';
    lua_settop(L, 1);
    lua_rawgetp(L, LUA_REGISTRYINDEX, &empty_opts_key);
    if (lua_isnil(L, -1)) {
      lua_pop(L, 1);
      lua_newtable(L);
      lua_pushvalue(L, -1);
      lua_rawsetp(L, LUA_REGISTRYINDEX, &empty_opts_key);
    }
  }
  luaL_checktype(L, 2, LUA_TTABLE);
  lua_settop(L, 2);
  opts = 2;
  check_conn_options(L, opts);
  side = conn_side_from(L, c, opts);
  check_ctx_open(L, c);
  if (side == SX_SERVER) sx_ctx_refresh_sid(c);   /* before SSL_new copies it */
  conn = (sx_conn *)sx_newuserdata_slots(L, sizeof(sx_conn), SX_SLOT_N);
  memset(conn, 0, sizeof *conn);   /* closed until SSL_new succeeds */
  conn->fd = -1;
  luaL_setmetatable(L, SX_CONN_MT);
  obj = lua_gettop(L);
  lua_pushvalue(L, 1);
  sx_setslot(L, obj, SX_SLOT_CTX);    /* the connection keeps its context alive */
  lua_pushvalue(L, 1);
  sx_setslot(L, obj, SX_SLOT_CTX0);   /* and the original one across an SNI switch */
  sx_getuv(L, 1);
  lua_getfield(L, -1, side == SX_CLIENT ? "cb_client" : "cb_server");
  sx_setslot(L, obj, SX_SLOT_CB);
  lua_pop(L, 1);
  conn->side = side;
  conn->policy = c->policy[side];
  setup_transport(L, conn, obj, opts, &close_transport);
  check_ctx_open(L, c);
  if (ERR_peek_error() != 0) ERR_clear_error();
  conn->ssl = SSL_new(c->ctx);   /* from here the SSL holds its own reference to c->ctx */
  if (conn->ssl == NULL) {
    sx_push_error(L, "SSL_new", "ssl");
    return lua_error(L);
  }
  SSL_set_ex_data(conn->ssl, sx_ssl_ex_index, conn);
  sx_objects_set(L, conn, obj);
  /* The connection keeps the context's trust and client-CA list as they are now: later
   * changes to the context affect later connections only. */
  if (!sx_ctx_lend_trust(c, conn->ssl)) luaL_error(L, "out of memory");
  if (side == SX_SERVER) c->names_lent = 1;   /* pinned when the context changes it */
  if (side == SX_SERVER && c->side == SX_BOTH && !c->ciphers_explicit &&
      !SSL_set_cipher_list(conn->ssl, SX_SERVER_CIPHERS))   /* a server's default (context.c) */
    ERR_clear_error();
  conn->origin = c;   /* ticket keys and the session store: the slot keeps it alive */
  conn->ctx_gen = c->policy_gen;
  if (side == SX_CLIENT) SSL_set_connect_state(conn->ssl);
  else SSL_set_accept_state(conn->ssl);
  sx_apply_verify(conn->ssl, &conn->policy);
  attach_transport(L, conn);
  setup_hostname(L, conn, c, opts, &hostname);
  take_client_session(L, conn, opts);
  conn->close_transport = close_transport;
  lua_settop(L, obj);
  c->gc_debt_kb += SX_CONN_NATIVE_KB;
  if (c->gc_debt_kb >= SX_GC_STEP_KB) {
    int kb = c->gc_debt_kb;
    c->gc_debt_kb = 0;
    sx_gc_native(L, kb);
  }
  return 1;
}

/* Adds methods to the connection class, each with the metatable as upvalue 1 (what
 * sx_conn_check compares against, as sx_register_class arranges). */
void sx_conn_add_methods(lua_State *L, const luaL_Reg *methods) {
  luaL_getmetatable(L, SX_CONN_MT);
  lua_getfield(L, -1, "__index");
  lua_pushvalue(L, -2);
  luaL_setfuncs(L, methods, 1);
  lua_pop(L, 2);
}

void sx_connection_open(lua_State *L) {
  static const luaL_Reg methods[] = {
    {"close", conn_close},
    {"side", conn_side},
    {"context", conn_context},
    {"getfd", conn_getfd},
    {"set_logger", conn_set_logger},
    {"is_borrowed", conn_is_borrowed},
    {NULL, NULL}
  };
  static const luaL_Reg meta[] = {
    {"__gc", conn_gc},
    {"__close", conn_close_meta},
    {"__tostring", conn_tostring},
    {NULL, NULL}
  };
  sx_register_class(L, SX_CONN_MT, methods, meta);
  sx_conn_add_methods(L, sx_conn_io_methods);       /* conn_io.c */
  sx_conn_add_methods(L, sx_conn_policy_methods);   /* conn_policy.c */
}
