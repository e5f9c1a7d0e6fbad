/* connection.c: the SSL object over memory buffers, a file descriptor or a LuaSocket object
 * (LispWorks ssl-new, attach-ssl, socket-stream-handshake). */
#include <string.h>
#include <errno.h>
#include <unistd.h>
#include <limits.h>
#include "private.h"

static const char *const side_names[] = {"client", "server", NULL};

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
static int socket_gone(lua_State *L, sx_conn *conn, int obj, int protected_call) {
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
  if (conn->ssl != NULL) socket_gone(L, conn, obj, protected_call);
  conn_release(conn);
  if (was_socket) close_socket(L, obj, protected_call);
}

/* Any allocation may run a finalizer, and a finalizer may close this very connection (user
 * code that closes what it wraps).  A method that uses the SSL after allocating keeps the
 * connection busy meanwhile: close() then only asks (the object reads as closed at once),
 * and the method closes it on its way out.  A memory error between the two leaves it busy:
 * close() then waits for __gc. */
static void busy_begin(sx_conn *conn) {
  conn->busy++;
}

static void busy_end(lua_State *L, sx_conn *conn) {
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
  else lua_pushfstring(L, "sslctx.connection (%s): %p", side_names[conn->side], (void *)conn);
  return 1;
}

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
  if (socket_gone(L, conn, 1, 0))
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
  busy_begin(conn);
  return conn;
}

static void drive_end(lua_State *L, sx_conn *conn) {
  conn->L = NULL;
  busy_end(L, conn);
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
  /* A callback that fails inside SSL_read (post-handshake auth, a session ticket) leaves its
   * message on top of the stack, where the luaL_Buffer must be: it moves to this slot. */
  lua_pushnil(L);
  errslot = lua_gettop(L);
  {   /* the common case: one SSL_read, what is ready fits: one copy into the Lua string */
    char first[16384];   /* a whole TLS record's plaintext, whatever the luaL_Buffer's size */
    size_t room = limit < sizeof first ? limit : sizeof first;
    errno = 0;
    r = SSL_read(conn->ssl, first, (int)room);
    if (conn->cb_failed && conn->cb_err_index != errslot) {
      st = io_classify(conn, r);
      lua_replace(L, errslot);
      conn->cb_err_index = errslot;
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
    if (conn->cb_failed && conn->cb_err_index != errslot) {
      st = io_classify(conn, r);
      lua_replace(L, errslot);
      conn->cb_err_index = errslot;
      break;
    }
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

static int conn_write(lua_State *L) {
  size_t len;
  const char *s = luaL_checklstring(L, 2, &len);
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
  busy_begin(conn);   /* 5.1, 5.2, LuaJIT: a collection step comes before the copy */
  lua_pushlstring(L, p, pending);
  sx_outbox_consume(conn->wbio, pending);
  busy_end(L, conn);
  return 1;
}

static int conn_pending(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)BIO_ctrl_pending(memory_check(L)->wbio));
  return 1;
}

/* ---- after the handshake ------------------------------------------------ */

static X509 *peer_certificate(sx_conn *conn) {
  X509 *x = sx_get1_peer_certificate(conn->ssl);
  if (x == NULL && conn->first_peer != NULL && (conn->policy.mode & SSL_VERIFY_CLIENT_ONCE)) {
    X509_up_ref(conn->first_peer);   /* "once": the first handshake's certificate stays */
    x = conn->first_peer;
  }
  return x;
}

static int conn_peer_certificate(lua_State *L) {
  X509 *x = peer_certificate(sx_conn_check(L, 1));
  if (x == NULL) {
    lua_pushnil(L);
  } else {
    sx_x509_push(L, x);
    X509_free(x);
  }
  return 1;
}

static void push_cert_list(lua_State *L, STACK_OF(X509) *sk, X509 *first) {
  int i, n = 0;
  lua_newtable(L);
  if (first != NULL && (sk_X509_num(sk) == 0 || X509_cmp(sk_X509_value(sk, 0), first) != 0)) {
    sx_x509_push(L, first);
    lua_rawseti(L, -2, ++n);
  }
  for (i = 0; i < sk_X509_num(sk); i++) {
    sx_x509_push(L, sk_X509_value(sk, i));
    lua_rawseti(L, -2, ++n);
  }
}

static int conn_peer_chain(lua_State *L) {
  sx_conn *conn = sx_conn_check(L, 1);
  STACK_OF(X509) *sk = SSL_get_peer_cert_chain(conn->ssl);
  X509 *leaf = peer_certificate(conn);
  if (sk == NULL && leaf == NULL) {
    lua_pushnil(L);
    return 1;
  }
  busy_begin(conn);   /* sk belongs to the session, which close() may free */
  push_cert_list(L, sk, leaf);   /* a server's chain lacks the leaf: the contract includes it */
  busy_end(L, conn);
  X509_free(leaf);
  return 1;
}

static int conn_verified_chain(lua_State *L) {
  sx_conn *conn = sx_conn_check(L, 1);
  STACK_OF(X509) *sk = SSL_get0_verified_chain(conn->ssl);
  if (sk == NULL) {
    lua_pushnil(L);
    return 1;
  }
  busy_begin(conn);
  push_cert_list(L, sk, NULL);
  busy_end(L, conn);
  return 1;
}

static int conn_verify_result(lua_State *L) {
  sx_conn *conn = sx_conn_check(L, 1);
  long code = SSL_get_verify_result(conn->ssl);
  X509 *peer = peer_certificate(conn);
  lua_pushinteger(L, code);
  lua_pushstring(L, X509_verify_cert_error_string(code));
  lua_pushboolean(L, peer != NULL && code == X509_V_OK);
  X509_free(peer);
  return 3;
}

static int conn_version(lua_State *L) {
  lua_pushstring(L, SSL_get_version(sx_conn_check(L, 1)->ssl));
  return 1;
}

static int conn_cipher(lua_State *L) {
  const SSL_CIPHER *c = SSL_get_current_cipher(sx_conn_check(L, 1)->ssl);
  if (c == NULL) lua_pushnil(L);
  else lua_pushstring(L, SSL_CIPHER_get_name(c));
  return 1;
}

/* Pushes len bytes at p, which the SSL owns, with the connection busy. */
static void push_owned(lua_State *L, sx_conn *conn, const void *p, size_t len) {
  busy_begin(conn);
  lua_pushlstring(L, (const char *)p, len);
  busy_end(L, conn);
}

static int conn_alpn(lua_State *L) {
  sx_conn *conn = sx_conn_check(L, 1);
  const unsigned char *p = NULL;
  unsigned int len = 0;
  SSL_get0_alpn_selected(conn->ssl, &p, &len);
  if (p == NULL || len == 0) lua_pushnil(L);
  else push_owned(L, conn, p, len);
  return 1;
}

static int conn_servername(lua_State *L) {
  sx_conn *conn = sx_conn_check(L, 1);
  const char *name = SSL_get_servername(conn->ssl, TLSEXT_NAMETYPE_host_name);
  if (name == NULL) lua_pushnil(L);
  else push_owned(L, conn, name, strlen(name));
  return 1;
}

static int conn_session_reused(lua_State *L) {
  lua_pushboolean(L, SSL_session_reused(sx_conn_check(L, 1)->ssl));
  return 1;
}

static int conn_session(lua_State *L) {
  SSL_SESSION *s = SSL_get1_session(sx_conn_check(L, 1)->ssl);
  if (s == NULL || !SSL_SESSION_is_resumable(s)) {
    SSL_SESSION_free(s);
    lua_pushnil(L);
    return 1;
  }
  sx_session_push(L, s);
  SSL_SESSION_free(s);
  return 1;
}

static int conn_side(lua_State *L) {
  lua_pushstring(L, side_names[sx_conn_check(L, 1)->side]);
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

/* ---- per-connection verification --------------------------------------- */

/* Every per-connection setter of the policy: never from inside the connection's own
 * callback (a verification running now would end under one policy and be labelled with
 * another), then the session id context follows the change (policy.c). */
static sx_conn *policy_check(lua_State *L, const char *what) {
  sx_conn *conn = sx_conn_check(L, 1);
  if (conn->in_callback)
    luaL_error(L, "%s called from inside this connection's own callback", what);
  return conn;
}

static int conn_check_side(lua_State *L, sx_conn *conn, int arg) {
  int k = sx_check_side(L, arg);
  if (k != conn->side)
    return luaL_argerror(L, arg, lua_pushfstring(L, "this is a %s connection", side_names[conn->side]));
  return k;
}

static int conn_set_verification_mode(lua_State *L) {
  sx_conn *conn = policy_check(L, "set_verification_mode");
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
  sx_conn *conn = policy_check(L, "set_verify_depth");
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
  sx_conn *conn = policy_check(L, "set_verify_params");
  sx_where w = {2, NULL};
  sx_set_verify_params(L, conn_param, conn, 2, w, NULL, NULL, &conn->policy);
  sx_conn_policy_changed(L, conn);
  return 0;
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

/* ---- per-connection trust and session policy ----------------------------- */

/* conn:set_trust{ca_file = path, ca = pem} -> true | nil, msg, kind: a trust store and a
 * client-CA list of this connection's own (a borrowed one verifies against it instead of its
 * owner's).  Its identity is built as a context's is (trust.c), so that equal trust gives
 * equal policies wherever it was set. */
static int conn_set_trust(lua_State *L) {
  sx_conn *conn = policy_check(L, "set_trust");
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

/* conn:set_soft_fail(bool): verification failures are recorded, not fatal (a missing
 * certificate too); callback errors still fail the handshake. */
static int conn_set_soft_fail(lua_State *L) {
  sx_conn *conn = policy_check(L, "set_soft_fail");
  luaL_checktype(L, 2, LUA_TBOOLEAN);
  conn->policy.soft_fail = lua_toboolean(L, 2);
  sx_apply_verify(conn->ssl, &conn->policy);
  sx_conn_policy_changed(L, conn);
  return 0;
}

static int conn_set_session_id_context(lua_State *L) {
  sx_conn *conn = policy_check(L, "set_session_id_context");
  size_t len;
  const char *s = luaL_checklstring(L, 2, &len);
  luaL_argcheck(L, len <= SSL_MAX_SID_CTX_LENGTH, 2, "session id context longer than 32 bytes");
  sx_conn_name_policy(conn, (const unsigned char *)s, len);
  return 0;
}

/* conn:set_policy(name): a session id context naming the connection's whole policy, so
 * sessions resume only under that name (any length of name; it is hashed, with the side). */
static int conn_set_policy(lua_State *L) {
  sx_conn *conn = policy_check(L, "set_policy");
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
  k = lua_type(L, -1) == LUA_TSTRING ? sx_keyword_index(lua_tostring(L, -1), side_names) : -1;
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
    conn->rbio = BIO_new(BIO_s_mem());
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

void sx_connection_open(lua_State *L) {
  static const luaL_Reg methods[] = {
    {"handshake", conn_handshake},
    {"read", conn_read},
    {"write", conn_write},
    {"pending_plaintext", conn_pending_plaintext},
    {"shutdown", conn_shutdown},
    {"close", conn_close},
    {"feed", conn_feed},
    {"drain", conn_drain},
    {"pending", conn_pending},
    {"peer_certificate", conn_peer_certificate},
    {"peer_chain", conn_peer_chain},
    {"verified_chain", conn_verified_chain},
    {"verify_result", conn_verify_result},
    {"version", conn_version},
    {"cipher", conn_cipher},
    {"alpn", conn_alpn},
    {"servername", conn_servername},
    {"session", conn_session},
    {"session_reused", conn_session_reused},
    {"set_verification_mode", conn_set_verification_mode},
    {"get_verification_mode", conn_get_verification_mode},
    {"set_verify_depth", conn_set_verify_depth},
    {"get_verify_depth", conn_get_verify_depth},
    {"set_verify_params", conn_set_verify_params},
    {"renegotiate", conn_renegotiate},
    {"verify_client_post_handshake", conn_verify_client_post_handshake},
    {"side", conn_side},
    {"context", conn_context},
    {"getfd", conn_getfd},
    {"set_trust", conn_set_trust},
    {"set_soft_fail", conn_set_soft_fail},
    {"set_session_id_context", conn_set_session_id_context},
    {"set_policy", conn_set_policy},
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
}
