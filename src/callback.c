/* callback.c: running Lua from inside OpenSSL, and the failure protocol.
 *
 * OpenSSL calls the module's C callbacks (verify, servername, ALPN select, session, the
 * session store) in the middle of SSL_do_handshake/SSL_read/...: a Lua error there must
 * never longjmp through OpenSSL's frames.  So every call into Lua goes through a small C
 * helper run with lua_pcall (lua_cpcall on 5.1) on conn->L, the thread of the driving call.
 *
 * The failure protocol, for callbacks whose failure fails the connection:
 *   1. sx_callback_run: the first failure's message stays on conn->L's stack (later ones
 *      are dropped); conn->cb_failed, cb_name and cb_err_index record it, and the C callback
 *      returns OpenSSL's "fail" value (an alert);
 *   2. the driving call (conn_io.c), once OpenSSL has returned, sees cb_failed and returns
 *      sx_push_callback_failure: nil, "<name> callback: <message>", "callback";
 *   3. drive_begin resets the three fields before the next driving call.
 * Callbacks whose failure is only a miss (the session store) use sx_callback_run_logged:
 * the message goes to the connection's logger instead. */
#include "private.h"

void sx_conn_push(lua_State *L, sx_conn *conn) {
  if (!sx_objects_push(L, conn)) luaL_error(L, "connection object is gone");
}

void sx_conn_push_ctx_field(lua_State *L, sx_conn *conn, int slot, const char *field) {
  sx_conn_push(L, conn);
  sx_getslot(L, -1, slot);
  sx_getuv(L, -1);
  lua_getfield(L, -1, field);
  lua_replace(L, -4);
  lua_pop(L, 2);
}

int sx_callback_run(sx_conn *conn, const char *name, lua_CFunction helper, void *data) {
  lua_State *L = conn->L;
  int rc;
  conn->in_callback++;
  ERR_set_mark();   /* whatever the Lua code does to the error queue stays its own */
  rc = sx_cpcall(L, helper, data);
  ERR_pop_to_mark();
  conn->in_callback--;
  if (rc == LUA_OK) return 1;
  if (conn->cb_failed) {
    lua_pop(L, 1);  /* the first failure is the one reported */
  } else {
    conn->cb_failed = 1;
    conn->cb_name = name;
    conn->cb_err_index = lua_gettop(L);
  }
  return 0;
}

/* An error object's __tostring, run protected: it is user code too. */
static int tostring_helper(lua_State *L) {
  luaL_callmeta(L, 1, "__tostring");
  return 1;
}

/* Pushes the text of the error value at idx. */
static void push_error_text(lua_State *L, int idx) {
  if (lua_type(L, idx) == LUA_TSTRING || lua_type(L, idx) == LUA_TNUMBER) {
    lua_pushstring(L, lua_tostring(L, idx));
    return;
  }
  if (luaL_getmetafield(L, idx, "__tostring") != 0) {
    lua_pop(L, 1);
    lua_pushcfunction(L, tostring_helper);
    lua_pushvalue(L, idx);
    if (lua_pcall(L, 1, 1, 0) == LUA_OK && lua_type(L, -1) == LUA_TSTRING) return;
    lua_pop(L, 1);
  }
  lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, idx));
}

/* The failure of a Lua callback: nil, "<name> callback: <error>", "callback". */
int sx_push_callback_failure(lua_State *L, sx_conn *conn) {
  const char *name = conn->cb_name != NULL ? conn->cb_name : "verify";
  conn->fatal = "callback";
  ERR_clear_error();
  lua_pushnil(L);
  push_error_text(L, conn->cb_err_index);
  lua_pushfstring(L, "%s callback: %s", name, lua_tostring(L, -1));
  lua_remove(L, -2);
  lua_pushliteral(L, "callback");
  return 3;
}

typedef struct log_call {
  sx_conn *conn;
  const char *what;
  int err_index;
} log_call;

static int log_helper(lua_State *L) {
  log_call *lc = (log_call *)lua_touserdata(L, 1);
  sx_conn_push(L, lc->conn);
  sx_getslot(L, -1, SX_SLOT_LOGGER);
  if (!lua_isfunction(L, -1)) return 0;
  push_error_text(L, lc->err_index);
  lua_pushfstring(L, "%s: %s", lc->what, lua_tostring(L, -1));
  lua_remove(L, -2);
  lua_call(L, 1, 0);
  return 0;
}

/* The failure on top of the stack goes to the connection's logger (run protected: the
 * logger is user code, and formatting allocates), then is popped. */
static void log_failure(lua_State *L, sx_conn *conn, const char *what) {
  log_call lc;
  lc.conn = conn;
  lc.what = what;
  lc.err_index = lua_gettop(L);
  if (sx_cpcall(L, log_helper, &lc) != LUA_OK) lua_pop(L, 1);   /* a failing logger is dropped */
  lua_pop(L, 1);
}

int sx_callback_run_logged(sx_conn *conn, const char *what, lua_CFunction helper, void *data) {
  lua_State *L = conn->L;
  int rc;
  conn->in_callback++;
  ERR_set_mark();
  rc = sx_cpcall(L, helper, data);
  ERR_pop_to_mark();
  conn->in_callback--;
  if (rc == LUA_OK) return 1;
  log_failure(L, conn, what);
  return 0;
}

