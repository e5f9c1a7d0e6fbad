/* policy.c: the verification policy's identity, and the sessions bound to it.
 *
 * The policy is everything that decides a verdict (doc/reference.md, "The verification
 * policy"): side, mode bits, soft fail, the callback's identity, the trust store in use,
 * the verification parameters (depth, flags, purpose, time, host/ip), the security level and,
 * for a client, the name it checks.  Its digest binds sessions on both sides:
 * - a server's session id context is the digest, so OpenSSL resumes a session (from its
 *   cache or from a ticket) only under an equal policy;
 * - a client offers a session only when the session's id context, stamped from the digest
 *   when the session was made, equals the connection's digest when its handshake starts.
 * A policy that changes in the middle of a handshake leaves no session that claims a policy
 * it was not judged under (sx_conn_policy_changed). */
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <openssl/rand.h>
#include "private.h"

/* ---- callback identities ------------------------------------------------ */

/* A Lua function or a C pointer is known by a serial, never reused in this process, mixed
 * with a random value drawn per process (again after a fork): two processes never share
 * such an identity.  A symbol is known by its name, the same in every process. */
static unsigned char process_nonce[16];
static pid_t nonce_pid = 0;
static uint64_t serial_counter = 0;

static const unsigned char *current_nonce(void) {
  pid_t pid = getpid();
  if (pid != nonce_pid) {
    if (RAND_bytes(process_nonce, sizeof process_nonce) != 1) {
      /* without randomness the pid and the time still keep processes apart */
      memset(process_nonce, 0, sizeof process_nonce);
      memcpy(process_nonce, &pid, sizeof pid);
      {
        time_t now = time(NULL);
        memcpy(process_nonce + 8, &now, sizeof now < 8 ? sizeof now : 8);
      }
      ERR_clear_error();
    }
    nonce_pid = pid;
  }
  return process_nonce;
}

static const char serials_key = 's';

/* The serial of the function, light userdata or (LuaJIT) function pointer at idx: one per
 * value for as long as the value lives (a weak-keyed table per Lua state), so a function
 * collected and another made at its address never share one. */
void sx_callback_identify(lua_State *L, int idx, const void *pointer, sx_callback *cb) {
  idx = lua_absindex(L, idx);
  lua_rawgetp(L, LUA_REGISTRYINDEX, &serials_key);
  if (lua_isnil(L, -1)) {
    lua_pop(L, 1);
    lua_newtable(L);
    lua_createtable(L, 0, 1);
    lua_pushliteral(L, "k");
    lua_setfield(L, -2, "__mode");
    lua_setmetatable(L, -2);
    lua_pushvalue(L, -1);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &serials_key);
  }
  if (pointer != NULL) lua_pushlightuserdata(L, (void *)pointer);   /* a cdata: by its pointer */
  else lua_pushvalue(L, idx);
  lua_rawget(L, -2);
  if (lua_isnumber(L, -1)) {
    cb->serial = (uint64_t)lua_tonumber(L, -1);
    lua_pop(L, 2);
    return;
  }
  lua_pop(L, 1);
  cb->serial = __atomic_add_fetch(&serial_counter, 1, __ATOMIC_RELAXED);
  if (pointer != NULL) lua_pushlightuserdata(L, (void *)pointer);
  else lua_pushvalue(L, idx);
  lua_pushnumber(L, (lua_Number)cb->serial);   /* exact below 2^53 */
  lua_rawset(L, -3);
  lua_pop(L, 1);
}

void sx_callback_name(const char *name, sx_callback *cb) {
  sx_digest d;
  sx_digest_init(&d);
  sx_digest_update(&d, "symbol", 7);
  sx_digest_update(&d, name, strlen(name) + 1);
  sx_digest_final(&d, cb->name_id);
  cb->by_name = 1;
}

/* ---- the digest --------------------------------------------------------- */

static void mix_int(sx_digest *d, const char *what, long long v) {
  unsigned char b[8];
  int i;
  for (i = 0; i < 8; i++) b[i] = (unsigned char)((unsigned long long)v >> (56 - 8 * i));
  sx_digest_update(d, what, strlen(what) + 1);
  sx_digest_update(d, b, sizeof b);
}

/* The callback's share.  A name from set_session_id_context stands for the per-process part
 * only (the application vouches that its workers' functions agree): the callback never drops
 * out, so a named policy with a callback and one without, or a Lua function and a native
 * one, or two different symbols, still differ. */
static void mix_callback(sx_digest *d, const sx_policy *p) {
  mix_int(d, "callback", p->cb.kind);
  if (p->cb.kind == SX_CB_NONE) return;
  if (p->cb.by_name) {
    sx_digest_update(d, p->cb.name_id, 32);
  } else if (p->cb_named) {
    sx_digest_update(d, "named", 6);
    sx_digest_update(d, p->cb_name, 32);
  } else {
    sx_digest_update(d, current_nonce(), sizeof process_nonce);
    mix_int(d, "serial", (long long)p->cb.serial);
  }
}

static void sx_policy_identity(const sx_policy *p, int side, X509_VERIFY_PARAM *param, int sec_level,
                               unsigned char out[32]) {
  sx_digest d;
  int i;
  const char *host;
  sx_digest_init(&d);
  sx_digest_update(&d, "sslctx-policy-2", 16);
  mix_int(&d, "side", side);
  mix_int(&d, "mode", p->mode);
  mix_int(&d, "soft_fail", p->soft_fail);
  mix_callback(&d, p);
  sx_digest_update(&d, p->trust, 32);
  mix_int(&d, "purpose", p->purpose);
  mix_int(&d, "time", p->has_time ? (long long)p->time : -1);
  mix_int(&d, "has_time", p->has_time);
  sx_digest_update(&d, p->ip, strlen(p->ip) + 1);
  sx_digest_update(&d, p->peer, 32);
  sx_digest_update(&d, p->dane, 32);
  mix_int(&d, "flags", (long long)X509_VERIFY_PARAM_get_flags(param));
  mix_int(&d, "depth", X509_VERIFY_PARAM_get_depth(param));
  mix_int(&d, "hostflags", X509_VERIFY_PARAM_get_hostflags(param));
  for (i = 0; (host = X509_VERIFY_PARAM_get0_host(param, i)) != NULL; i++)
    sx_digest_update(&d, host, strlen(host) + 1);
  mix_int(&d, "security_level", sec_level);
  sx_digest_final(&d, out);
}


/* ---- contexts ----------------------------------------------------------- */

/* A server context's session id context, recomputed after its policy changed.  Connections
 * copy it when SSL_new makes them. */
void sx_ctx_refresh_sid(sx_ctx *c) {
  unsigned char sid[32];
  if (!c->sid_dirty) return;
  sx_policy_identity(&c->policy[SX_SERVER], SX_SERVER, SSL_CTX_get0_param(c->ctx),
                     SSL_CTX_get_security_level(c->ctx), sid);
  SSL_CTX_set_session_id_context(c->ctx, sid, sizeof sid);
  c->sid_dirty = 0;
}

/* ---- connections -------------------------------------------------------- */

static void conn_identity(sx_conn *conn, unsigned char out[32]) {
  if (conn->trust_unknown) {   /* a borrowed SSL verifying against its owner's store */
    sx_trust_digest_objects(SSL_CTX_get_cert_store(SSL_get_SSL_CTX(conn->ssl)), conn->policy.trust);
    conn->trust_unknown = 0;
  }
  sx_policy_identity(&conn->policy, conn->side, SSL_get0_param(conn->ssl),
                     SSL_get_security_level(conn->ssl), out);
}

/* A session that may have been judged under another policy than the one its id context
 * names: it gets an id context that no policy has, and never resumes. */
static void taint_session(SSL_SESSION *s) {
  unsigned char junk[32];
  if (RAND_bytes(junk, sizeof junk) != 1) {
    memset(junk, 0xA5, sizeof junk);
    ERR_clear_error();
  }
  junk[0] = 0;   /* digests that collide with this are as likely as with any other value */
  SSL_SESSION_set1_id_context(s, junk, sizeof junk);
}

static int same_sid(SSL_SESSION *s, const unsigned char *sid, unsigned int len) {
  unsigned int have_len = 0;
  const unsigned char *have = SSL_SESSION_get0_id_context(s, &have_len);
  return have_len == len && CRYPTO_memcmp(have, sid, len) == 0;
}

/* After any per-connection change of the policy (the setters, an SNI switch).
 * - Before the handshake: a server's id context follows at once; a client's is computed when
 *   its handshake starts (sx_conn_client_start).
 * - During a handshake: a resumed session must have been made under the new policy, or the
 *   change raises; a session whose peer certificate was already judged becomes
 *   unresumable; a session not yet judged is relabelled, since its verdict will be the new
 *   policy's.
 * - After it: the sessions made so far were judged under the old policy and keep its label;
 *   a renegotiation makes new ones under the new.
 * A connection named with set_policy keeps its name: the application vouches for it. */
void sx_conn_policy_changed(lua_State *L, sx_conn *conn) {
  unsigned char sid[32];
  SSL_SESSION *s;
  conn->custom = 1;
  if (conn->named) return;
  if (conn->side == SX_CLIENT && !conn->started) return;
  conn_identity(conn, sid);
  SSL_set_session_id_context(conn->ssl, sid, sizeof sid);
  memcpy(conn->sid, sid, sizeof sid);
  conn->sid_len = sizeof sid;
  if (!SSL_in_init(conn->ssl) || SSL_in_before(conn->ssl) || conn->switching) return;
  s = SSL_get_session(conn->ssl);
  if (s == NULL) return;
  /* The change is made already: the connection itself fails closed (a caller that catches
   * the error cannot finish the handshake under a policy that did not judge it). */
  if (SSL_session_reused(conn->ssl)) {
    if (!same_sid(s, sid, sizeof sid)) {
      conn->fatal = "verify";
      luaL_error(L, "this handshake resumed a session made under another verification policy; "
                    "set the policy before the session is looked up");
    }
  } else if (conn->side == SX_CLIENT && conn->offered) {
    /* the server may still resume what was offered under the old policy */
    conn->fatal = "verify";
    luaL_error(L, "the verification policy cannot change during a handshake that offered a "
                  "session");
  } else if (SSL_SESSION_get0_peer(s) != NULL) {
    taint_session(s);
  } else {
    SSL_SESSION_set1_id_context(s, sid, sizeof sid);
  }
}

/* The name a client checks (or only sends) is part of its policy.  Most connections of a
 * context go to the same name: its digest is kept on the context. */
void sx_conn_set_peer(sx_ctx *c, sx_conn *conn, const char *host, size_t len, int checked) {
  if (c->memo_host[0] != '\0' && c->memo_checked == checked && len < sizeof c->memo_host &&
      memcmp(c->memo_host, host, len + 1) == 0) {
    memcpy(conn->policy.peer, c->memo_peer, sizeof conn->policy.peer);
    return;
  }
  memset(conn->policy.peer, 0, sizeof conn->policy.peer);
  sx_digest_mix(conn->policy.peer, checked ? "checked" : "unchecked", host, len);
  if (len < sizeof c->memo_host) {
    memcpy(c->memo_host, host, len + 1);
    c->memo_checked = checked;
    memcpy(c->memo_peer, conn->policy.peer, sizeof c->memo_peer);
    c->memo_gen = 0;   /* the identity memo was for another name */
  }
}

/* A connection that changed nothing of its own since its context's policy was last changed
 * has the identity the context computed for the last connection with the same name. */
static void client_identity(sx_conn *conn, unsigned char sid[32]) {
  sx_ctx *c = (sx_ctx *)SSL_CTX_get_ex_data(SSL_get_SSL_CTX(conn->ssl), sx_ctx_ex_index);
  int pristine = c != NULL && !conn->custom && conn->ctx_gen == c->policy_gen;
  if (pristine && c->memo_gen == c->policy_gen + 1 &&
      memcmp(c->memo_peer, conn->policy.peer, sizeof c->memo_peer) == 0) {
    memcpy(sid, c->memo_sid, 32);
    return;
  }
  conn_identity(conn, sid);
  if (pristine && c->memo_host[0] != '\0' &&
      memcmp(c->memo_peer, conn->policy.peer, sizeof c->memo_peer) == 0) {
    memcpy(c->memo_sid, sid, 32);
    c->memo_gen = c->policy_gen + 1;
  }
}

/* A client's handshake starts: its id context is the policy's digest now, and the session
 * given with opts.session is offered only if it was made under an equal policy. */
void sx_conn_client_start(sx_conn *conn) {
  conn->started = 1;
  if (!conn->named) {
    client_identity(conn, conn->sid);
    conn->sid_len = sizeof conn->sid;
    SSL_set_session_id_context(conn->ssl, conn->sid, conn->sid_len);
  }
  if (conn->offer == NULL) return;
  if (same_sid(conn->offer, conn->sid, conn->sid_len) && SSL_SESSION_is_resumable(conn->offer) &&
      SSL_set_session(conn->ssl, conn->offer))
    conn->offered = 1;
  ERR_clear_error();
  SSL_SESSION_free(conn->offer);
  conn->offer = NULL;
}

void sx_conn_mix_dane(lua_State *L, sx_conn *conn, const char *what, const void *p, size_t n) {
  sx_digest_mix(conn->policy.dane, what, p, n);
  sx_conn_policy_changed(L, conn);
}

/* conn:set_policy(name) / conn:set_session_id_context(raw): the application names the
 * connection's whole policy. */
void sx_conn_name_policy(sx_conn *conn, const unsigned char *sid, size_t len) {
  conn->named = 1;
  memset(conn->sid, 0, sizeof conn->sid);
  memcpy(conn->sid, sid, len < sizeof conn->sid ? len : sizeof conn->sid);
  conn->sid_len = (unsigned)len;
  SSL_set_session_id_context(conn->ssl, sid, (unsigned)len);
}
