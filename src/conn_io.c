/* conn_io.c: the calls that drive a connection (handshake, read, write, shutdown,
 * renegotiate, post-handshake authentication), the memory transport's feed and drain, and how
 * the outcome of an SSL_* call becomes true or nil, message, kind.  Every driving call runs
 * between drive_begin and drive_end: the failure protocol (callback.c) and the busy rule
 * (connection.c) start and end there. */
#include <string.h>
#include <errno.h>
#include <limits.h>
#include "private.h"

/* ---- driving calls ------------------------------------------------------ */

/* A failed connection is finished: OpenSSL's state is broken (a later read would even report
 * a clean close) and SSL_get_error(3) forbids further I/O.  Every driving call repeats the
 * first failure's kind. */
static int push_already_failed(lua_State *L, sx_conn *conn) {
  return sx_push_failure(L, conn->fatal, "%s: the connection has already failed", conn->fatal);
}

/* Every call that can run OpenSSL's handshake records the thread that drives it, so that
 * callbacks run there, and refuses to run from inside the connection's own callback.  NULL,
 * with the three results pushed, when the connection has already failed. */
static sx_conn *drive_begin(lua_State *L, const char *what) {
  sx_conn *conn = sx_conn_check(L, 1);
  if (conn->borrowed)
    luaL_error(L, "%s on a borrowed connection: its owner drives it", what);
  if (conn->in_callback)
    luaL_error(L, "%s called from inside this connection's own callback", what);
  luaL_checkstack(L, 16, "sslctx: no stack space for callbacks");
  if (sx_conn_socket_gone(L, conn, 1, 0))
    luaL_error(L, "%s: the LuaSocket object was closed under the connection", what);
  if (conn->fatal != NULL) {
    push_already_failed(L, conn);
    return NULL;
  }
  conn->L = L;
  conn->cb_failed = 0;
  conn->cb_err_index = 0;
  conn->retry_verify = 0;
  if (ERR_peek_error() != 0) ERR_clear_error();
  if (!conn->started && conn->side == SX_CLIENT) sx_conn_client_start(conn);
  sx_conn_busy_begin(conn);
  return conn;
}

static void drive_end(lua_State *L, sx_conn *conn) {
  conn->L = NULL;
  sx_conn_busy_end(L, conn);
}

static int push_kind(lua_State *L, const char *kind) {
  return sx_push_failure(L, kind, "%s", kind);
}

/* The transport ended without close_notify: truncation, never "closed". */
static int push_eof(lua_State *L, sx_conn *conn) {
  conn->fatal = "eof";
  ERR_clear_error();
  return sx_push_failure(L, "eof", "eof: the peer closed the connection without close_notify");
}

static int is_verify_failure(unsigned long e) {
  int reason = ERR_GET_REASON(e);
  return ERR_GET_LIB(e) == ERR_LIB_SSL &&
         (reason == SSL_R_CERTIFICATE_VERIFY_FAILED ||
          reason == SSL_R_PEER_DID_NOT_RETURN_A_CERTIFICATE);
}

static int push_ssl_failure(lua_State *L, sx_conn *conn) {
  unsigned long e = ERR_peek_error();
  /* "certificate verify failed" may follow another entry (a certificate whose extensions do
   * not parse queues "invalid certificate" first): it decides the kind wherever it is. */
  if (!is_verify_failure(e) && is_verify_failure(ERR_peek_last_error())) e = ERR_peek_last_error();
  if (ERR_GET_LIB(e) == ERR_LIB_SSL && ERR_GET_REASON(e) == SSL_R_UNEXPECTED_EOF_WHILE_READING) {
    return push_eof(L, conn);
  }
  if (is_verify_failure(e)) {
    long vr = SSL_get_verify_result(conn->ssl);
    luaL_Buffer b;
    conn->fatal = "verify";
    lua_pushnil(L);
    luaL_buffinit(L, &b);
    sx_add_errors(&b);
    if (vr != X509_V_OK) {
      luaL_addstring(&b, ": ");
      luaL_addstring(&b, X509_verify_cert_error_string(vr));
    }
    luaL_pushresult(&b);
    lua_pushliteral(L, "verify");
    return 3;
  }
  conn->fatal = "ssl";
  return sx_push_error(L, "ssl", "ssl");
}

/* The outcome of an SSL_* call, classified at once: anything that allocates from Lua may run
 * a finalizer, and SSL_get_error reads the thread's error queue and errno. */
typedef struct io_status {
  int err;
  int sys_errno;
} io_status;

static io_status io_classify(sx_conn *conn, int r) {
  io_status st;
  st.sys_errno = errno;
  st.err = SSL_get_error(conn->ssl, r);
  return st;
}

/* Maps a failed SSL_* call to nil, message, kind. */
static int push_io_result(lua_State *L, sx_conn *conn, io_status st) {
  int err = st.err;
  errno = st.sys_errno;
  if (conn->cb_failed) return sx_push_callback_failure(L, conn);
  switch (err) {
  case SSL_ERROR_WANT_READ: return push_kind(L, "want_read");
  case SSL_ERROR_WANT_WRITE: return push_kind(L, "want_write");
  case SSL_ERROR_WANT_RETRY_VERIFY: return push_kind(L, "want_retry_verify");
  case SSL_ERROR_ZERO_RETURN: return push_kind(L, "closed");
  case SSL_ERROR_SYSCALL:
    if (ERR_peek_error() == 0 && st.sys_errno == 0) {
      return push_eof(L, conn);
    }
    if (ERR_peek_error() != 0) return push_ssl_failure(L, conn);
    conn->fatal = "syscall";
    return sx_push_failure(L, "syscall", "%s", strerror(st.sys_errno));
  case SSL_ERROR_SSL: return push_ssl_failure(L, conn);
  default:
    conn->fatal = "ssl";
    return sx_push_error(L, "ssl", "ssl");
  }
}

static void remember_first_peer(sx_conn *conn) {
  if (conn->first_peer == NULL) conn->first_peer = sx_get1_peer_certificate(conn->ssl);
}

static int conn_handshake(lua_State *L) {
  sx_conn *conn = drive_begin(L, "handshake");
  int r, n;
  if (conn == NULL) return 3;
  errno = 0;
  r = SSL_do_handshake(conn->ssl);
  if (r == 1 && !conn->cb_failed) {
    remember_first_peer(conn);
    drive_end(L, conn);
    lua_pushboolean(L, 1);
    return 1;
  }
  n = push_io_result(L, conn, io_classify(conn, r));
  drive_end(L, conn);
  return n;
}

/* ---- data --------------------------------------------------------------- */

#if LUA_VERSION_NUM == 501
#define READ_CHUNK LUAL_BUFFERSIZE
#define sx_prepbuffsize(b, n) luaL_prepbuffer(b)
#else
#define READ_CHUNK 16384
#define sx_prepbuffsize(b, n) luaL_prepbuffsize((b), (n))
#endif

/* A callback that fails inside SSL_read (post-handshake auth, a session ticket) leaves its
 * message on top of the stack, where the luaL_Buffer must be: it moves to errslot, once.
 * 1 when it did (the outcome of r is classified first). */
static int move_callback_failure(lua_State *L, sx_conn *conn, int r, int errslot, io_status *st) {
  if (!conn->cb_failed || conn->cb_err_index == errslot) return 0;
  *st = io_classify(conn, r);
  lua_replace(L, errslot);
  conn->cb_err_index = errslot;
  return 1;
}

static int conn_read(lua_State *L) {
  lua_Integer want = luaL_optinteger(L, 2, 0);
  sx_conn *conn;
  size_t got = 0, limit;
  int r = 0, n;
  io_status st = {0, 0};
  luaL_Buffer b;
  int errslot;
  luaL_argcheck(L, want >= 0, 2, "byte count must not be negative");
  if ((conn = drive_begin(L, "read")) == NULL) return 3;
  limit = want > 0 ? (size_t)want : (size_t)-1;
  lua_pushnil(L);   /* errslot: see move_callback_failure */
  errslot = lua_gettop(L);
  {   /* the common case: one SSL_read, what is ready fits: one copy into the Lua string */
    char first[16384];   /* a whole TLS record's plaintext, whatever the luaL_Buffer's size */
    size_t room = limit < sizeof first ? limit : sizeof first;
    errno = 0;
    r = SSL_read(conn->ssl, first, (int)room);
    if (move_callback_failure(L, conn, r, errslot, &st)) {
      r = 0;
    } else if (r <= 0) {
      st = io_classify(conn, r);
    } else if (((size_t)r == limit || SSL_pending(conn->ssl) == 0) && !conn->cb_failed) {
      lua_pushlstring(L, first, (size_t)r);
      drive_end(L, conn);
      return 1;
    }
    luaL_buffinit(L, &b);
    if (r > 0) {
      luaL_addlstring(&b, first, (size_t)r);
      got = (size_t)r;
    }
    if (r <= 0 || conn->cb_failed || SSL_pending(conn->ssl) == 0) limit = got;   /* no loop */
  }
  while (got < limit) {
    size_t room = limit - got < READ_CHUNK ? limit - got : READ_CHUNK;
    char *p = sx_prepbuffsize(&b, room);
    errno = 0;
    r = SSL_read(conn->ssl, p, (int)room);
    if (move_callback_failure(L, conn, r, errslot, &st)) break;
    if (r <= 0) {
      st = io_classify(conn, r);
      break;
    }
    luaL_addsize(&b, (size_t)r);
    got += (size_t)r;
    if (SSL_pending(conn->ssl) == 0) break;   /* what is decrypted and ready: no more */
  }
  if (got > 0 && !conn->cb_failed) {
    luaL_pushresult(&b);
    drive_end(L, conn);
    return 1;
  }
  luaL_pushresult(&b);
  lua_pop(L, 1);
  n = push_io_result(L, conn, st);
  drive_end(L, conn);
  return n;
}

/* s[i..j] as string.sub reads them (negative positions count from the end); *len gets the
 * range's length.  An event loop writes a long string piece by piece without copying it. */
static const char *checkrange(lua_State *L, int arg, size_t *len) {
  size_t size;
  const char *s = luaL_checklstring(L, arg, &size);
  lua_Integer i, j, n = (lua_Integer)size;
  if (!lua_isnoneornil(L, arg + 1) && !sx_isintegral(L, arg + 1))
    luaL_argerror(L, arg + 1, "integer position expected");
  if (!lua_isnoneornil(L, arg + 2) && !sx_isintegral(L, arg + 2))
    luaL_argerror(L, arg + 2, "integer position expected");
  i = lua_isnoneornil(L, arg + 1) ? 1 : lua_tointeger(L, arg + 1);
  j = lua_isnoneornil(L, arg + 2) ? n : lua_tointeger(L, arg + 2);
  if (i < 0) i = i < -n ? 1 : n + i + 1;
  else if (i == 0) i = 1;
  if (j < 0) j = j < -n ? 0 : n + j + 1;
  else if (j > n) j = n;
  *len = i > j ? 0 : (size_t)(j - i + 1);
  return s + (i > j ? 0 : i - 1);
}

/* conn:write(s [, i [, j]]) -> bytes of s[i..j] taken | nil, msg, kind */
static int conn_write(lua_State *L) {
  size_t len;
  const char *s = checkrange(L, 2, &len);
  sx_conn *conn = drive_begin(L, "write");
  int r, n;
  if (conn == NULL) return 3;
  if (len == 0) {
    drive_end(L, conn);
    lua_pushinteger(L, 0);
    return 1;
  }
  if (conn->transport == SX_T_MEMORY && conn->buffer_limit > 0) {
    size_t pending = BIO_ctrl_pending(conn->wbio);
    if (pending >= conn->buffer_limit) {
      drive_end(L, conn);
      return push_kind(L, "want_write");
    }
    if (len > conn->buffer_limit - pending) len = conn->buffer_limit - pending;
  }
  if (len > 0x7fffffff) len = 0x7fffffff;
  errno = 0;
  r = SSL_write(conn->ssl, s, (int)len);
  if (r > 0 && !conn->cb_failed) {
    drive_end(L, conn);
    lua_pushinteger(L, r);
    return 1;
  }
  n = push_io_result(L, conn, io_classify(conn, r));
  drive_end(L, conn);
  return n;
}

static int conn_pending_plaintext(lua_State *L) {
  lua_pushinteger(L, SSL_pending(sx_conn_check(L, 1)->ssl));
  return 1;
}

static int conn_shutdown(lua_State *L) {
  sx_conn *conn = drive_begin(L, "shutdown");
  int r, n;
  io_status st;
  if (conn == NULL) return 3;
  errno = 0;
  r = SSL_shutdown(conn->ssl);
  if (r == 1 || (r == 0 && !conn->cb_failed)) {
    drive_end(L, conn);
    lua_pushboolean(L, r == 1);
    if (r == 1) return 1;
    lua_pushliteral(L, "want_read");
    return 2;
  }
  st = io_classify(conn, r);
  if (st.err == SSL_ERROR_WANT_READ && !conn->cb_failed) {
    ERR_clear_error();
    drive_end(L, conn);
    lua_pushboolean(L, 0);
    lua_pushliteral(L, "want_read");
    return 2;
  }
  n = push_io_result(L, conn, st);
  drive_end(L, conn);
  return n;
}

/* ---- memory transport --------------------------------------------------- */

static sx_conn *memory_check(lua_State *L) {
  sx_conn *conn = sx_conn_check(L, 1);
  if (conn->transport != SX_T_MEMORY)
    luaL_argerror(L, 1, "not a memory-transport connection");
  return conn;
}

static int conn_feed(lua_State *L) {
  sx_conn *conn = memory_check(L);
  size_t len, take;
  const char *s;
  if (lua_isnoneornil(L, 2)) {
    BIO_set_mem_eof_return(conn->rbio, 0);
    conn->input_ended = 1;
    lua_pushinteger(L, 0);
    return 1;
  }
  s = luaL_checklstring(L, 2, &len);
  if (conn->input_ended) return luaL_error(L, "feed after feed(nil) marked the end of input");
  take = len;
  if (conn->buffer_limit > 0) {
    size_t pending = BIO_ctrl_pending(conn->rbio);
    take = pending >= conn->buffer_limit ? 0 : conn->buffer_limit - pending;
    if (take > len) take = len;
  }
  if (take > 0x7fffffff) take = 0x7fffffff;
  if (take > 0 && BIO_write(conn->rbio, s, (int)take) != (int)take)
    return luaL_error(L, "out of memory");
  lua_pushinteger(L, (lua_Integer)take);
  if (take == 0 && len > 0) {   /* nothing lost: the caller still holds every byte */
    size_t waiting = BIO_ctrl_pending(conn->rbio);
    lua_pushfstring(L, "input buffer full (%d bytes waiting, buffer_limit %d): call handshake() "
                       "or read() before feeding more", (int)(waiting > INT_MAX ? INT_MAX : waiting),
                    (int)(conn->buffer_limit > INT_MAX ? INT_MAX : conn->buffer_limit));
    return 2;
  }
  return 1;
}

/* One copy: the Lua string is made straight from the outbox, which is consumed only once the
 * string exists (a memory error loses nothing). */
static int conn_drain(lua_State *L) {
  sx_conn *conn = memory_check(L);
  size_t pending;
  const char *p = sx_outbox_peek(conn->wbio, &pending);
  lua_Integer max = luaL_optinteger(L, 2, (lua_Integer)pending);
  luaL_argcheck(L, max >= 0, 2, "byte count must not be negative");
  if ((size_t)max < pending) pending = (size_t)max;
  sx_conn_busy_begin(conn);   /* 5.1, 5.2, LuaJIT: a collection step comes before the copy */
  lua_pushlstring(L, p, pending);
  sx_outbox_consume(conn->wbio, pending);
  sx_conn_busy_end(L, conn);
  return 1;
}

/* conn:drain_to(fd) -> bytes sent | nil, msg, "syscall": what waits in drain() goes
 * straight to a socket the caller owns, as much as it takes now (an event loop whose own
 * write queue is empty saves making a string of it); the rest stays for drain(). */
static int conn_drain_to(lua_State *L) {
  sx_conn *conn = memory_check(L);
  size_t pending;
  const char *p = sx_outbox_peek(conn->wbio, &pending);
  ssize_t n;
  if (!sx_isintegral(L, 2) || lua_tointeger(L, 2) < 0 || lua_tointeger(L, 2) > INT_MAX)
    return luaL_argerror(L, 2, "file descriptor (a non-negative integer) expected");
  if (pending == 0) {
    lua_pushinteger(L, 0);
    return 1;
  }
  n = sx_send_now((int)lua_tointeger(L, 2), p, pending);
  if (n < 0) return sx_push_failure(L, "syscall", "%s", strerror(errno));
  sx_outbox_consume(conn->wbio, (size_t)n);
  lua_pushinteger(L, (lua_Integer)n);
  return 1;
}

static int conn_pending(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)BIO_ctrl_pending(memory_check(L)->wbio));
  return 1;
}

/* ---- renegotiation and post-handshake authentication -------------------- */

static int push_ssl_refusal(lua_State *L, const char *msg) {
  ERR_clear_error();
  lua_pushnil(L);
  lua_pushstring(L, msg);
  lua_pushliteral(L, "ssl");
  return 3;
}

static int conn_renegotiate(lua_State *L) {
  sx_conn *conn = drive_begin(L, "renegotiate");
  if (conn == NULL) return 3;
  drive_end(L, conn);
  if (SSL_version(conn->ssl) != TLS1_2_VERSION)
    return push_ssl_refusal(L, "renegotiation needs TLS 1.2");
  /* Always a full handshake: a resumed one would check nothing. */
  SSL_set_options(conn->ssl, SSL_OP_NO_SESSION_RESUMPTION_ON_RENEGOTIATION);
  if (!SSL_renegotiate(conn->ssl)) return sx_push_error(L, "renegotiate", "ssl");
  lua_pushboolean(L, 1);
  return 1;
}

static int conn_verify_client_post_handshake(lua_State *L) {
  sx_conn *conn = sx_conn_check(L, 1);
  int mode = conn->policy.mode;
  if (conn->side != SX_SERVER) return push_ssl_refusal(L, "post-handshake authentication is a server request");
  if (SSL_version(conn->ssl) != TLS1_3_VERSION)
    return push_ssl_refusal(L, "post-handshake authentication needs TLS 1.3");
  if ((mode & SSL_VERIFY_CLIENT_ONCE) &&
      (conn->pha_requested || ((mode & SSL_VERIFY_PEER) && !(mode & SSL_VERIFY_POST_HANDSHAKE))))
    return push_ssl_refusal(L, "mode 'once': a certificate was already requested");
  ERR_clear_error();
  if (!SSL_verify_client_post_handshake(conn->ssl))
    return sx_push_error(L, "post-handshake authentication", "ssl");
  conn->pha_requested = 1;
  lua_pushboolean(L, 1);
  return 1;
}

const luaL_Reg sx_conn_io_methods[] = {
  {"handshake", conn_handshake},
  {"read", conn_read},
  {"write", conn_write},
  {"pending_plaintext", conn_pending_plaintext},
  {"shutdown", conn_shutdown},
  {"feed", conn_feed},
  {"drain", conn_drain},
  {"drain_to", conn_drain_to},
  {"pending", conn_pending},
  {"renegotiate", conn_renegotiate},
  {"verify_client_post_handshake", conn_verify_client_post_handshake},
  {NULL, NULL}
};
