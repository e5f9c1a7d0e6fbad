/* conninfo.c: what a connection can tell after (or set before) its handshake: the peer's
 * certificate and chains, the verification result, version, cipher and its description, ALPN,
 * server name, session, exported keying material (RFC 5705 / RFC 8446 7.5), the Finished
 * messages (channel bindings), and DANE (RFC 6698/7671).
 *
 * The methods join the "sslctx.connection" class: sx_conninfo_open runs after
 * sx_connection_open and adds them (sx_conn_add_methods). */
#include <string.h>
#include "private.h"

/* Largest exported keying material and TLSA association data accepted (bytes): both are
 * copied through a buffer on the C stack. */
#define SX_EKM_MAX 16384
#define SX_TLSA_MAX 16384

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
  sx_conn_busy_begin(conn);   /* sk belongs to the session, which close() may free */
  push_cert_list(L, sk, leaf);   /* a server's chain lacks the leaf: the contract includes it */
  sx_conn_busy_end(L, conn);
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
  sx_conn_busy_begin(conn);
  push_cert_list(L, sk, NULL);
  sx_conn_busy_end(L, conn);
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
  sx_conn_busy_begin(conn);
  lua_pushlstring(L, (const char *)p, len);
  sx_conn_busy_end(L, conn);
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

/* From here, bytes the SSL owns are copied onto the C stack before anything is pushed: a
 * push may run a finalizer that closes this connection (and frees them), and the method must
 * still finish with what it read (what the methods above do with the busy count). */

/* ---- cipher ------------------------------------------------------------- */

/* Copies the value of "Key=value" from OpenSSL's cipher description into out (empty when
 * the key is absent). */
static void description_field(const char *desc, const char *key, char *out, size_t size) {
  const char *p = strstr(desc, key);
  size_t n = 0;
  out[0] = '\0';
  if (p == NULL) return;
  p += strlen(key);
  while (p[n] != '\0' && p[n] != ' ' && p[n] != '\n' && n + 1 < size) n++;
  memcpy(out, p, n);
  out[n] = '\0';
}

static void set_string(lua_State *L, const char *key, const char *value) {
  if (value == NULL || value[0] == '\0') return;
  lua_pushstring(L, value);
  lua_setfield(L, -2, key);
}

/* conn:cipher_info() -> {name, standard_name, version, bits, algbits, kx, auth, enc, mac,
 * description} | nil (no cipher negotiated yet).  The strings are OpenSSL's
 * (SSL_CIPHER_description); version is the protocol that introduced the cipher. */
static int conn_cipher_info(lua_State *L) {
  sx_conn *conn = sx_conn_check(L, 1);
  const SSL_CIPHER *c = SSL_get_current_cipher(conn->ssl);
  char desc[256], kx[64], au[64], enc[64], mac[64];
  int bits, algbits = 0;
  size_t n;
  if (c == NULL) {
    lua_pushnil(L);
    return 1;
  }
  /* Cipher descriptions are static data of OpenSSL: they outlive the connection. */
  if (SSL_CIPHER_description(c, desc, (int)sizeof desc) == NULL) desc[0] = '\0';
  n = strlen(desc);
  while (n > 0 && (desc[n - 1] == '\n' || desc[n - 1] == ' ')) desc[--n] = '\0';
  description_field(desc, "Kx=", kx, sizeof kx);
  description_field(desc, "Au=", au, sizeof au);
  description_field(desc, "Enc=", enc, sizeof enc);
  description_field(desc, "Mac=", mac, sizeof mac);
  bits = SSL_CIPHER_get_bits(c, &algbits);
  lua_createtable(L, 0, 10);
  set_string(L, "name", SSL_CIPHER_get_name(c));
  set_string(L, "standard_name", SSL_CIPHER_standard_name(c));
  set_string(L, "version", SSL_CIPHER_get_version(c));
  lua_pushinteger(L, bits);
  lua_setfield(L, -2, "bits");
  lua_pushinteger(L, algbits);
  lua_setfield(L, -2, "algbits");
  set_string(L, "kx", kx);
  set_string(L, "auth", au);
  set_string(L, "enc", enc);
  set_string(L, "mac", mac);
  set_string(L, "description", desc);
  return 1;
}

/* ---- keying material, Finished messages --------------------------------- */

/* conn:export_keying_material(label, length [, context]) -> string | nil, message, "ssl".
 * A nil context and an empty one differ (RFC 5705: "no context" is not "empty context"). */
static int conn_export_keying_material(lua_State *L) {
  sx_conn *conn = sx_conn_check(L, 1);
  size_t label_len, ctx_len = 0;
  const char *label = luaL_checklstring(L, 2, &label_len);
  lua_Integer len = luaL_checkinteger(L, 3);
  const char *context = luaL_optlstring(L, 4, NULL, &ctx_len);
  unsigned char out[SX_EKM_MAX];
  if (len < 1 || len > SX_EKM_MAX)
    return luaL_argerror(L, 3, lua_pushfstring(L, "length must be 1 to %d", SX_EKM_MAX));
  if (!SSL_is_init_finished(conn->ssl)) {
    lua_pushnil(L);
    lua_pushliteral(L, "export_keying_material: the handshake is not complete");
    lua_pushliteral(L, "ssl");
    return 3;
  }
  ERR_clear_error();
  if (SSL_export_keying_material(conn->ssl, out, (size_t)len, label, label_len,
                                 (const unsigned char *)context, ctx_len,
                                 context != NULL) != 1)
    return sx_push_error(L, "export_keying_material", "ssl");
  lua_pushlstring(L, (const char *)out, (size_t)len);
  return 1;
}

/* The Finished messages are at most EVP_MAX_MD_SIZE bytes; copied onto the C stack, so the
 * push needs no protection. */
static int push_finished(lua_State *L, int peer) {
  sx_conn *conn = sx_conn_check(L, 1);
  unsigned char buf[EVP_MAX_MD_SIZE];
  size_t n = peer ? SSL_get_peer_finished(conn->ssl, buf, sizeof buf)
                  : SSL_get_finished(conn->ssl, buf, sizeof buf);
  if (n == 0 || n > sizeof buf) lua_pushnil(L);
  else lua_pushlstring(L, (const char *)buf, n);
  return 1;
}

/* conn:finished() -> the last Finished message this side sent | nil */
static int conn_finished(lua_State *L) {
  return push_finished(L, 0);
}

/* conn:peer_finished() -> the last Finished message the peer sent | nil */
static int conn_peer_finished(lua_State *L) {
  return push_finished(L, 1);
}

/* ---- DANE --------------------------------------------------------------- */

static const char *const dane_flag_names[] = {"no_ee_namechecks", NULL};

/* DANE is set before the handshake: afterwards (or on a borrowed connection, whose owner
 * drives it) nil, message, "ssl", as other methods report a state they cannot act in. */
static int push_started(lua_State *L, const char *what) {
  lua_pushnil(L);
  lua_pushfstring(L, "%s: the handshake has already started", what);
  lua_pushliteral(L, "ssl");
  return 3;
}

/* conn:set_dane(basedomain [, flags]) -> true | nil, message, "ssl".  Before the
 * handshake (after it: nil, message, "ssl").  basedomain becomes the name checked (and sent as SNI when none is set).
 * The context is made DANE-capable on first use (SSL_CTX_dane_enable is idempotent and
 * changes nothing for connections that do not enable DANE). */
static int conn_set_dane(lua_State *L) {
  sx_conn *conn = sx_conn_check(L, 1);
  size_t len;
  const char *base = luaL_checklstring(L, 2, &len);
  unsigned long flags = 0;
  if (len == 0 || strlen(base) != len)
    return luaL_argerror(L, 2, "non-empty name without NUL bytes expected");
  if (!lua_isnoneornil(L, 3)) {
    lua_Integer i;
    luaL_checktype(L, 3, LUA_TTABLE);
    for (i = 1;; i++) {
      const char *name;
      lua_rawgeti(L, 3, i);
      if (lua_isnil(L, -1)) {
        lua_pop(L, 1);
        break;
      }
      if (lua_type(L, -1) != LUA_TSTRING)
        return luaL_argerror(L, 3, lua_pushfstring(L, "DANE flags: string expected, got %s",
                                                   luaL_typename(L, -1)));
      name = lua_tostring(L, -1);
      if (sx_keyword_index(name, dane_flag_names) < 0)
        return luaL_argerror(L, 3, lua_pushfstring(L, "unknown DANE flag '%s'", name));
      flags |= DANE_FLAG_NO_DANE_EE_NAMECHECKS;
      lua_pop(L, 1);
    }
  }
  if (conn->borrowed || !SSL_in_before(conn->ssl)) return push_started(L, "set_dane");
  ERR_clear_error();
  if (SSL_CTX_dane_enable(SSL_get_SSL_CTX(conn->ssl)) <= 0)
    return sx_push_error(L, "set_dane", "ssl");
  if (SSL_dane_enable(conn->ssl, base) <= 0) return sx_push_error(L, "set_dane", "ssl");
  if (flags != 0) SSL_dane_set_flags(conn->ssl, flags);
  /* DANE decides verdicts: its settings are part of the policy sessions are bound to */
  sx_conn_mix_dane(L, conn, "dane", base, len);
  sx_conn_mix_dane(L, conn, "flags", &flags, sizeof flags);
  lua_pushboolean(L, 1);
  return 1;
}

static int tlsa_field(lua_State *L, int arg) {
  lua_Integer v = luaL_checkinteger(L, arg);
  if (v < 0 || v > 255) return luaL_argerror(L, arg, "0 to 255 expected");
  return (int)v;
}

/* conn:add_tlsa(usage, selector, mtype, data) -> true | nil, message, "ssl".  After
 * set_dane, before the handshake.  data is the record's binary association data.  A record
 * OpenSSL cannot use (an unknown usage, selector or matching type) is nil, message. */
static int conn_add_tlsa(lua_State *L) {
  sx_conn *conn = sx_conn_check(L, 1);
  int usage = tlsa_field(L, 2), selector = tlsa_field(L, 3), mtype = tlsa_field(L, 4);
  size_t len;
  const unsigned char *data = (const unsigned char *)luaL_checklstring(L, 5, &len);
  int r;
  if (len > SX_TLSA_MAX) return luaL_argerror(L, 5, "association data too long");
  if (conn->borrowed || !SSL_in_before(conn->ssl)) return push_started(L, "add_tlsa");
  ERR_clear_error();
  r = SSL_dane_tlsa_add(conn->ssl, (uint8_t)usage, (uint8_t)selector, (uint8_t)mtype, data,
                        len);
  if (r > 0) {
    unsigned char fields[3];
    fields[0] = (unsigned char)usage, fields[1] = (unsigned char)selector, fields[2] = (unsigned char)mtype;
    sx_conn_mix_dane(L, conn, "tlsa", fields, sizeof fields);
    sx_conn_mix_dane(L, conn, "data", data, len);
    lua_pushboolean(L, 1);
    return 1;
  }
  if (r == 0) {
    lua_pushnil(L);
    lua_pushfstring(L, "add_tlsa: unusable TLSA record (%d %d %d)", usage, selector, mtype);
    lua_pushliteral(L, "ssl");
    return 3;
  }
  return sx_push_error(L, "add_tlsa", "ssl");
}

/* conn:dane_tlsa() -> usage, selector, mtype, data, depth of the TLSA record that
 * authenticated the peer | nil (DANE not enabled, or no record matched). */
static int conn_dane_tlsa(lua_State *L) {
  sx_conn *conn = sx_conn_check(L, 1);
  uint8_t usage = 0, selector = 0, mtype = 0;
  const unsigned char *data = NULL;
  unsigned char copy[SX_TLSA_MAX];
  size_t len = 0;
  int depth = SSL_get0_dane_tlsa(conn->ssl, &usage, &selector, &mtype, &data, &len);
  if (depth < 0 || data == NULL || len > sizeof copy) {   /* add_tlsa took none larger */
    lua_pushnil(L);
    return 1;
  }
  memcpy(copy, data, len);
  lua_pushinteger(L, usage);
  lua_pushinteger(L, selector);
  lua_pushinteger(L, mtype);
  lua_pushlstring(L, (const char *)copy, len);
  lua_pushinteger(L, depth);
  return 5;
}

void sx_conninfo_open(lua_State *L) {
  static const luaL_Reg methods[] = {
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
    {"cipher_info", conn_cipher_info},
    {"export_keying_material", conn_export_keying_material},
    {"finished", conn_finished},
    {"peer_finished", conn_peer_finished},
    {"set_dane", conn_set_dane},
    {"add_tlsa", conn_add_tlsa},
    {"dane_tlsa", conn_dane_tlsa},
    {NULL, NULL}
  };
  sx_conn_add_methods(L, methods);
}
