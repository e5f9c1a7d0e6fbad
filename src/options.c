/* options.c: what a context takes as a value, through sslctx.new{} or a setter.
 *
 * One table (`options` below) lists every option of sslctx.new in the order it applies them:
 * its name, its phase (settings, which raise on a bad value, before material, the files and
 * keys, which return nil, message, kind), the function that parses and applies a value, and
 * the name of the context's setter method made from the same entry, if there is one.  The
 * same function serves both: sx_where says where the value came from, so a bad one raises
 * "bad argument #1 to 'new' (option 'x': ...)" or "bad argument #2 to 'set_x' (...)".  How to
 * add an option: doc/internals.md. */
#include <string.h>
#include <openssl/pem.h>
#include "private.h"

/* Applies the value at idx to the context c; w says where the value came from.  Returns 0;
 * 1 with the setter's result pushed; or (material) 3 with nil, message, kind pushed. */
typedef int (*option_fn)(lua_State *L, sx_ctx *c, int idx, sx_where w);

enum { CREATE, SETTING, MATERIAL };

typedef struct option {
  const char *name;     /* key of sslctx.new{} */
  int phase;            /* CREATE: read by sslctx.new before the SSL_CTX exists */
  option_fn apply;      /* NULL for CREATE */
  const char *setter;   /* ctx:<setter>(value) applies it after creation; NULL: none */
  int anchors;          /* gives trust anchors (without any, a client trusts the system's) */
} option;

/* A boolean: sslctx.new's message is "option 'x': boolean expected", a setter's is
 * luaL_checktype's (both as they always were). */
static int check_boolean(lua_State *L, int idx, sx_where w) {
  if (w.opt == NULL) luaL_checktype(L, idx, LUA_TBOOLEAN);
  else if (!lua_isboolean(L, idx)) sx_where_error(L, w, "boolean expected");
  return lua_toboolean(L, idx);
}

/* Pushes the context's object (for its uservalue); returns its index. */
static int push_ctx(lua_State *L, sx_ctx *c) {
  sx_objects_push(L, c);
  return lua_gettop(L);
}

/* ---- verification ------------------------------------------------------- */

/* A 'both' context's verify table has the keys client and server and nothing else: a
 * keyword list or a misspelt key would otherwise leave both modes at their defaults. */
static void check_both_modes(lua_State *L, int t, sx_where w) {
  lua_pushnil(L);
  while (lua_next(L, t)) {
    const char *k = lua_type(L, -2) == LUA_TSTRING ? lua_tostring(L, -2) : NULL;
    int i = k != NULL ? sx_keyword_index(k, sx_side_names) : -1;
    lua_pop(L, 1);
    if (i != SX_CLIENT && i != SX_SERVER)
      sx_where_error(L, w, lua_pushfstring(L, "a 'both' context takes {client = mode, server = "
                                              "mode}, not the key '%s'",
                                           k != NULL ? k : luaL_typename(L, -1)));
  }
}

/* verify: a mode for the context's side; {client = mode, server = mode} for a 'both' one,
 * whose modes apply per connection. */
static int apply_verify(lua_State *L, sx_ctx *c, int idx, sx_where w) {
  if (c->side != SX_BOTH) {
    int obj = push_ctx(L, c);
    lua_pushlightuserdata(L, (void *)sx_KEEP);
    sx_ctx_set_policy(L, obj, c, c->side, idx, w, obj + 1, w);
    return 0;
  }
  if (!lua_istable(L, idx)) sx_where_error(L, w, "a 'both' context takes {client = mode, server = mode}");
  check_both_modes(L, idx, w);
  lua_getfield(L, idx, "client");
  lua_getfield(L, idx, "server");
  if (!lua_isnil(L, -2)) c->policy[SX_CLIENT].mode = sx_parse_mode(L, -2, SX_CLIENT, w);
  if (!lua_isnil(L, -1)) c->policy[SX_SERVER].mode = sx_parse_mode(L, -1, SX_SERVER, w);
  return 0;
}

/* verify_callback: with the mode each side has now (a 'both' context: both sides). */
static int apply_verify_callback(lua_State *L, sx_ctx *c, int idx, sx_where w) {
  sx_where mw = {w.arg, "verify"};
  int obj = push_ctx(L, c), side;
  for (side = SX_CLIENT; side <= SX_SERVER; side++) {
    if (c->side != SX_BOTH && c->side != side) continue;
    lua_pushinteger(L, c->policy[side].mode);
    sx_ctx_set_policy(L, obj, c, side, -1, mw, idx, w);
    lua_pop(L, 1);
  }
  return 0;
}

static int apply_verify_depth(lua_State *L, sx_ctx *c, int idx, sx_where w) {
  lua_Integer n;
  if (w.opt != NULL) {   /* sslctx.new's message, and the setter's below, as they always were */
    if (!sx_isintegral(L, idx) || lua_tointeger(L, idx) < 0 || lua_tointeger(L, idx) > SX_MAX_DEPTH)
      sx_where_error(L, w, "an integer from 0 to 2^31-1 expected");
    n = lua_tointeger(L, idx);
  } else {
    n = luaL_checkinteger(L, idx);
    luaL_argcheck(L, n >= 0 && n <= SX_MAX_DEPTH, idx, "depth must be from 0 to 2^31-1");
  }
  SSL_CTX_set_verify_depth(c->ctx, (int)n);
  sx_ctx_policy_changed(c);
  return 0;
}

static X509_VERIFY_PARAM *ctx_param(void *owner) {
  sx_ctx *c = (sx_ctx *)owner;
  return c->ctx != NULL ? SSL_CTX_get0_param(c->ctx) : NULL;
}

static int apply_verify_params(lua_State *L, sx_ctx *c, int idx, sx_where w) {
  /* Both sides' policies share the one X509_VERIFY_PARAM of the SSL_CTX. */
  sx_policy *server = &c->policy[SX_SERVER], *client = &c->policy[SX_CLIENT];
  sx_set_verify_params(L, ctx_param, c, idx, w, &c->flags_explicit, &c->params_identity, server);
  client->purpose = server->purpose;
  client->has_time = server->has_time;
  client->time = server->time;
  memcpy(client->ip, server->ip, sizeof client->ip);
  sx_ctx_policy_changed(c);
  return 0;
}

/* ---- protocol settings ------------------------------------------------- */

static int parse_version(lua_State *L, int idx, sx_where w) {
  static const char *const names[] = {"tls1.2", "tls1.3", NULL};
  static const int values[] = {TLS1_2_VERSION, TLS1_3_VERSION};
  int k = lua_type(L, idx) == LUA_TSTRING ? sx_keyword_index(lua_tostring(L, idx), names) : -1;
  if (k < 0) {
    if (lua_type(L, idx) == LUA_TSTRING)
      sx_where_error(L, w, lua_pushfstring(L, "unsupported protocol version '%s' (use 'tls1.2' or "
                                              "'tls1.3')", lua_tostring(L, idx)));
    sx_where_typeerror(L, w, idx, "'tls1.2' or 'tls1.3'");
  }
  return values[k];
}

static int apply_min_version(lua_State *L, sx_ctx *c, int idx, sx_where w) {
  SSL_CTX_set_min_proto_version(c->ctx, parse_version(L, idx, w));
  return 0;
}

static int apply_max_version(lua_State *L, sx_ctx *c, int idx, sx_where w) {
  SSL_CTX_set_max_proto_version(c->ctx, parse_version(L, idx, w));
  /* sslctx.new checks the pair once both are applied; a setter never did */
  if (w.opt != NULL && SSL_CTX_get_max_proto_version(c->ctx) != 0 &&
      SSL_CTX_get_max_proto_version(c->ctx) < SSL_CTX_get_min_proto_version(c->ctx))
    luaL_argerror(L, w.arg, "option 'max_version' is below 'min_version'");
  return 0;
}

static int apply_security_level(lua_State *L, sx_ctx *c, int idx, sx_where w) {
  if (!sx_isintegral(L, idx) || lua_tointeger(L, idx) < 0 || lua_tointeger(L, idx) > 5)
    return sx_where_error(L, w, "security level must be an integer from 0 to 5");
  SSL_CTX_set_security_level(c->ctx, (int)lua_tointeger(L, idx));
  sx_ctx_policy_changed(c);   /* the auth level is part of what verification decides */
  return 0;
}

enum { STR_CIPHERS, STR_CIPHERSUITES, STR_GROUPS };

static int set_string_setting(lua_State *L, sx_ctx *c, int which, int idx, sx_where w) {
  static const char *const labels[] = {"ciphers", "ciphersuites", "groups"};
  const char *s;
  int ok;
  if (lua_type(L, idx) != LUA_TSTRING) return sx_where_typeerror(L, w, idx, "string");
  s = lua_tostring(L, idx);
  ERR_clear_error();
  if (which == STR_CIPHERS) ok = SSL_CTX_set_cipher_list(c->ctx, s), c->ciphers_explicit |= ok;
  else if (which == STR_CIPHERSUITES) ok = SSL_CTX_set_ciphersuites(c->ctx, s);
  else ok = SSL_CTX_set1_groups_list(c->ctx, s);
  if (!ok) {
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    luaL_addstring(&b, "invalid ");
    luaL_addstring(&b, labels[which]);
    luaL_addstring(&b, " '");
    luaL_addstring(&b, s);
    luaL_addstring(&b, "': ");
    sx_add_errors(&b);
    luaL_pushresult(&b);
    return sx_where_error(L, w, lua_tostring(L, -1));
  }
  return 0;
}

static int apply_ciphers(lua_State *L, sx_ctx *c, int idx, sx_where w) {
  return set_string_setting(L, c, STR_CIPHERS, idx, w);
}

static int apply_ciphersuites(lua_State *L, sx_ctx *c, int idx, sx_where w) {
  return set_string_setting(L, c, STR_CIPHERSUITES, idx, w);
}

static int apply_groups(lua_State *L, sx_ctx *c, int idx, sx_where w) {
  return set_string_setting(L, c, STR_GROUPS, idx, w);
}

/* ---- ALPN --------------------------------------------------------------- */

/* Builds the wire form (length-prefixed names) of a list; returns a new Lua string on top. */
void sx_alpn_wire(lua_State *L, int idx, sx_where w) {
  luaL_Buffer b;
  int i, n;
  idx = lua_absindex(L, idx);
  if (!lua_istable(L, idx)) sx_where_typeerror(L, w, idx, "list of protocol names");
  n = (int)lua_rawlen(L, idx);
  if (n == 0) sx_where_error(L, w, "empty protocol list");
  for (i = 1; i <= n; i++) {   /* validate first: a luaL_Buffer owns the stack top */
    size_t len;
    lua_rawgeti(L, idx, i);
    if (lua_type(L, -1) != LUA_TSTRING) sx_where_error(L, w, "protocol names must be strings");
    lua_tolstring(L, -1, &len);
    if (len == 0 || len > 255) sx_where_error(L, w, "protocol names must be 1 to 255 bytes");
    lua_pop(L, 1);
  }
  luaL_buffinit(L, &b);
  for (i = 1; i <= n; i++) {
    /* Every luaL_add* but addvalue needs the buffer on top (a full one grows into a box at
     * -1): the length byte goes in while nothing is pushed, then the name. */
    size_t len;
    lua_rawgeti(L, idx, i);
    len = lua_rawlen(L, -1);
    lua_pop(L, 1);
    luaL_addchar(&b, (char)len);
    lua_rawgeti(L, idx, i);
    luaL_addvalue(&b);
  }
  luaL_pushresult(&b);
}

static int apply_alpn(lua_State *L, sx_ctx *c, int idx, sx_where w) {
  size_t len;
  const char *wire;
  sx_alpn_wire(L, idx, w);
  wire = lua_tolstring(L, -1, &len);
  if (SSL_CTX_set_alpn_protos(c->ctx, (const unsigned char *)wire, (unsigned)len) != 0)
    return luaL_error(L, "out of memory");
  lua_pop(L, 1);
  return 0;
}

/* ---- options ------------------------------------------------------------ */

#define OPT(name, bit) {name, (uint64_t)(bit)}
#ifndef SSL_OP_NO_EXTENDED_MASTER_SECRET
#define SSL_OP_NO_EXTENDED_MASTER_SECRET 0
#endif
#ifndef SSL_OP_LEGACY_EC_POINT_FORMATS
#define SSL_OP_LEGACY_EC_POINT_FORMATS 0
#endif
#ifndef SSL_OP_NO_ANTI_REPLAY
#define SSL_OP_NO_ANTI_REPLAY 0
#endif
#ifndef SSL_OP_PRIORITIZE_CHACHA
#define SSL_OP_PRIORITIZE_CHACHA 0
#endif
static const struct {
  const char *name;
  uint64_t bit;
} op_keywords[] = {
  OPT("all", SSL_OP_ALL),
  OPT("no_sslv3", SSL_OP_NO_SSLv3),
  OPT("no_tlsv1", SSL_OP_NO_TLSv1),
  OPT("no_tlsv1_1", SSL_OP_NO_TLSv1_1),
  OPT("no_tlsv1_2", SSL_OP_NO_TLSv1_2),
  OPT("no_tlsv1_3", SSL_OP_NO_TLSv1_3),
  OPT("cipher_server_preference", SSL_OP_CIPHER_SERVER_PREFERENCE),
  OPT("prioritize_chacha", SSL_OP_PRIORITIZE_CHACHA),
  OPT("no_compression", SSL_OP_NO_COMPRESSION),
  OPT("no_ticket", SSL_OP_NO_TICKET),
  OPT("no_renegotiation", SSL_OP_NO_RENEGOTIATION),
  OPT("allow_client_renegotiation", SSL_OP_ALLOW_CLIENT_RENEGOTIATION),
  OPT("no_session_resumption_on_renegotiation", SSL_OP_NO_SESSION_RESUMPTION_ON_RENEGOTIATION),
  OPT("legacy_server_connect", SSL_OP_LEGACY_SERVER_CONNECT),
  OPT("allow_unsafe_legacy_renegotiation", SSL_OP_ALLOW_UNSAFE_LEGACY_RENEGOTIATION),
  OPT("ignore_unexpected_eof", SSL_OP_IGNORE_UNEXPECTED_EOF),
  OPT("enable_middlebox_compat", SSL_OP_ENABLE_MIDDLEBOX_COMPAT),
  OPT("no_anti_replay", SSL_OP_NO_ANTI_REPLAY),
  OPT("no_encrypt_then_mac", SSL_OP_NO_ENCRYPT_THEN_MAC),
  OPT("no_extended_master_secret", SSL_OP_NO_EXTENDED_MASTER_SECRET),
  OPT("no_query_mtu", SSL_OP_NO_QUERY_MTU),
  OPT("cookie_exchange", SSL_OP_COOKIE_EXCHANGE),
  OPT("cleanse_plaintext", SSL_OP_CLEANSE_PLAINTEXT),
  OPT("enable_ktls", SSL_OP_ENABLE_KTLS),
  OPT("tls_rollback_bug", SSL_OP_TLS_ROLLBACK_BUG),
  OPT("dont_insert_empty_fragments", SSL_OP_DONT_INSERT_EMPTY_FRAGMENTS),
  OPT("tlsext_padding", SSL_OP_TLSEXT_PADDING),
  OPT("safari_ecdhe_ecdsa_bug", SSL_OP_SAFARI_ECDHE_ECDSA_BUG),
  OPT("legacy_ec_point_formats", SSL_OP_LEGACY_EC_POINT_FORMATS),
  /* LispWorks keywords that OpenSSL has made no-ops: accepted, documented as such. */
  OPT("no_sslv2", 0), OPT("single_dh_use", 0), OPT("single_ecdh_use", 0),
  OPT("ephemeral_rsa", 0), OPT("microsoft_sess_id_bug", 0), OPT("netscape_challenge_bug", 0),
  OPT("netscape_reuse_cipher_change_bug", 0), OPT("sslref2_reuse_cert_type_bug", 0),
  OPT("microsoft_big_sslv3_buffer", 0), OPT("msie_sslv2_rsa_padding", 0),
  OPT("ssleay_080_client_dh_bug", 0), OPT("tls_d5_bug", 0), OPT("tls_block_padding_bug", 0),
  OPT("pkcs1_check_1", 0), OPT("pkcs1_check_2", 0), OPT("netscape_ca_dn_bug", 0),
  OPT("netscape_demo_cipher_change_bug", 0),
  {NULL, 0}
};

/* One keyword: s is name, in either spelling ("a-b" is "a_b"). */
static int is_keyword(const char *s, const char *name) {
  const char *one[2];
  one[0] = name;
  one[1] = NULL;
  return sx_keyword_index(s, one) == 0;
}

static int option_index(const char *s) {
  int i;
  for (i = 0; op_keywords[i].name != NULL; i++)
    if (is_keyword(s, op_keywords[i].name)) return i;
  return -1;
}

/* Accepts {"no_ticket", ...} and {no_ticket = true, ...}. */
static uint64_t parse_options(lua_State *L, int idx, sx_where w) {
  uint64_t bits = 0;
  idx = lua_absindex(L, idx);
  if (!lua_istable(L, idx)) sx_where_typeerror(L, w, idx, "table of option keywords");
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    const char *name;
    int k;
    if (lua_type(L, -2) == LUA_TSTRING) {
      name = lua_tostring(L, -2);
      if (!lua_toboolean(L, -1)) {
        lua_pop(L, 1);
        if (option_index(name) < 0)
          sx_where_error(L, w, lua_pushfstring(L, "unknown option keyword '%s'", name));
        continue;
      }
    } else if (lua_type(L, -1) == LUA_TSTRING) {
      name = lua_tostring(L, -1);
    } else {
      sx_where_error(L, w, "option keywords must be strings");
      return 0;
    }
    k = option_index(name);
    if (k < 0) sx_where_error(L, w, lua_pushfstring(L, "unknown option keyword '%s'", name));
    bits |= op_keywords[k].bit;
    lua_pop(L, 1);
  }
  return bits;
}

static int push_options(lua_State *L, uint64_t set) {
  int i, n = 0;
  lua_newtable(L);
  for (i = 0; op_keywords[i].name != NULL; i++) {
    uint64_t b = op_keywords[i].bit;
    if (b != 0 && (set & b) == b) {
      lua_pushstring(L, op_keywords[i].name);
      lua_rawseti(L, -2, ++n);
    }
  }
  return 1;
}
static int apply_options(lua_State *L, sx_ctx *c, int idx, sx_where w) {
  return push_options(L, SSL_CTX_set_options(c->ctx, parse_options(L, idx, w)));
}

int sx_ctx_clear_options(lua_State *L) {
  sx_ctx *c = sx_ctx_check(L, 1);
  sx_where w = {2, NULL};
  return push_options(L, SSL_CTX_clear_options(c->ctx, parse_options(L, 2, w)));
}

int sx_ctx_get_options(lua_State *L) {
  return push_options(L, SSL_CTX_get_options(sx_ctx_check(L, 1)->ctx));
}

static int apply_post_handshake_auth(lua_State *L, sx_ctx *c, int idx, sx_where w) {
  int on = check_boolean(L, idx, w);
  SSL_CTX_set_post_handshake_auth(c->ctx, on);
  c->post_handshake_auth = on;
  return 0;
}

/* ---- sessions ----------------------------------------------------------- */

/* 0 turns the server's session cache off (OpenSSL would read 0 as "unlimited"): with
 * session_tickets = false too, a server then resumes nothing. */
static int apply_session_cache_size(lua_State *L, sx_ctx *c, int idx, sx_where w) {
  long size, mode;
  if (!sx_isintegral(L, idx) || lua_tointeger(L, idx) < 0)
    return sx_where_error(L, w, "session cache size must be a non-negative integer");
  size = (long)lua_tointeger(L, idx);
  mode = SSL_CTX_get_session_cache_mode(c->ctx);
  if (size == 0) {
    mode &= ~(long)SSL_SESS_CACHE_SERVER;
  } else {
    SSL_CTX_sess_set_cache_size(c->ctx, size);
    mode |= SSL_SESS_CACHE_SERVER;
  }
  SSL_CTX_set_session_cache_mode(c->ctx, mode);
  return 0;
}

static int apply_session_tickets(lua_State *L, sx_ctx *c, int idx, sx_where w) {
  if (check_boolean(L, idx, w)) SSL_CTX_clear_options(c->ctx, SSL_OP_NO_TICKET);
  else SSL_CTX_set_options(c->ctx, SSL_OP_NO_TICKET);
  return 0;
}

static int apply_ticket_key_rotation(lua_State *L, sx_ctx *c, int idx, sx_where w) {
  if (lua_type(L, idx) != LUA_TNUMBER || !(lua_tonumber(L, idx) >= 0.001) || lua_tonumber(L, idx) > 1e9)
    sx_where_error(L, w, "seconds (a number from 0.001 to 1e9) expected");
  if (c->side == SX_CLIENT) luaL_argerror(L, w.arg, "option 'ticket_key_rotation' is for server contexts");
  c->tickets.rotation = (double)lua_tonumber(L, idx);
  return 0;
}

static int apply_release_buffers(lua_State *L, sx_ctx *c, int idx, sx_where w) {
  if (check_boolean(L, idx, w)) SSL_CTX_set_mode(c->ctx, SSL_MODE_RELEASE_BUFFERS);
  else SSL_CTX_clear_mode(c->ctx, SSL_MODE_RELEASE_BUFFERS);
  return 0;
}

/* ---- trust (trust.c) ---------------------------------------------------- */

/* The options of sslctx.new only: their siblings are read from the table (argument w.arg).
 * Without client_ca, the anchors of ca_file and ca are also the names a server asks for. */
static int without_client_ca(lua_State *L, sx_where w) {
  int none;
  lua_getfield(L, w.arg, "client_ca");
  none = lua_isnil(L, -1);
  lua_pop(L, 1);
  return none;
}

static int apply_ca_file(lua_State *L, sx_ctx *c, int idx, sx_where w) {
  if (lua_type(L, idx) != LUA_TSTRING) sx_where_error(L, w, "string expected");
  if (sx_trust_load_locations(L, c, lua_tostring(L, idx), NULL) == 3) return 3;
  if (without_client_ca(L, w)) sx_trust_names_from_file(c, lua_tostring(L, idx));
  return 0;
}

static int apply_ca_path(lua_State *L, sx_ctx *c, int idx, sx_where w) {
  if (lua_type(L, idx) != LUA_TSTRING) sx_where_error(L, w, "string expected");
  return sx_trust_load_locations(L, c, NULL, lua_tostring(L, idx));
}

static int apply_client_ca(lua_State *L, sx_ctx *c, int idx, sx_where w) {
  return sx_trust_set_client_ca(L, c, idx, w);
}

static int apply_ca(lua_State *L, sx_ctx *c, int idx, sx_where w) {
  return sx_trust_add_ca(L, c, idx, without_client_ca(L, w), w);
}

/* ---- DH, certificate, key, password -------------------------------------- */

static int apply_dh(lua_State *L, sx_ctx *c, int idx, sx_where w) {
  size_t len;
  const char *s;
  BIO *bio;
  int ok;
  if (lua_type(L, idx) != LUA_TSTRING) return sx_where_typeerror(L, w, idx, "'auto', a file or PEM");
  s = lua_tolstring(L, idx, &len);
  ERR_clear_error();
  if (strcmp(s, "auto") == 0) {
    SSL_CTX_set_dh_auto(c->ctx, 1);
    return 0;
  }
  bio = sx_is_pem_text(s, len) ? BIO_new_mem_buf(s, (int)len) : BIO_new_file(s, "r");
  if (bio == NULL) return sx_push_error(L, lua_pushfstring(L, "dh '%s'", s), "file");
  {
#if SX_OPENSSL3
    EVP_PKEY *dh = PEM_read_bio_Parameters(bio, NULL);
    /* any parameters parse here (EC too); only DH ones make DHE work */
    if (dh != NULL && !EVP_PKEY_is_a(dh, "DH") && !EVP_PKEY_is_a(dh, "DHX")) {
      EVP_PKEY_free(dh);
      dh = NULL;
      ERR_raise_data(ERR_LIB_SSL, SSL_R_WRONG_CERTIFICATE_TYPE, "not DH parameters");
    }
    ok = dh != NULL && SSL_CTX_set0_tmp_dh_pkey(c->ctx, dh);
    if (dh != NULL && !ok) EVP_PKEY_free(dh);
#else
    DH *dh = PEM_read_bio_DHparams(bio, NULL, NULL, NULL);
    ok = dh != NULL && SSL_CTX_set_tmp_dh(c->ctx, dh);
    DH_free(dh);
#endif
  }
  BIO_free(bio);
  if (!ok) return sx_push_error(L, "dh parameters", "file");
  return 0;
}

static int apply_certificate(lua_State *L, sx_ctx *c, int idx, sx_where w) {
  STACK_OF(X509) *certs;
  int i, ok;
  luaL_checkany(L, idx);   /* a setter's missing argument (an option is never nil) */
  if ((certs = sx_load_certs(L, idx, "certificate", w)) == NULL) return 3;
  if (sk_X509_num(certs) == 0) {
    sk_X509_pop_free(certs, X509_free);
    lua_pushnil(L);
    lua_pushliteral(L, "certificate: no certificate found");
    lua_pushliteral(L, "file");
    return 3;
  }
  ERR_clear_error();
  ok = SSL_CTX_use_certificate(c->ctx, sk_X509_value(certs, 0)) && SSL_CTX_clear_chain_certs(c->ctx);
  for (i = 1; ok && i < sk_X509_num(certs); i++)
    ok = SSL_CTX_add1_chain_cert(c->ctx, sk_X509_value(certs, i));
  sk_X509_pop_free(certs, X509_free);
  if (!ok) return sx_push_error(L, "certificate", "key");
  return 0;
}

/* Loads the key at idx, with the password at pw_idx (0: the context's stored one). */
static int use_private_key(lua_State *L, sx_ctx *c, int idx, int pw_idx, sx_where w) {
  sx_password pw;
  EVP_PKEY *key;
  int ok;
  idx = lua_absindex(L, idx);
  if (pw_idx == 0) {
    sx_ctx_uv_get(L, push_ctx(L, c), "password");
    pw_idx = lua_gettop(L);
  }
  pw.L = L;
  pw.index = lua_isnil(L, pw_idx) ? 0 : lua_absindex(L, pw_idx);
  pw.failed = 0;
  pw.err_index = 0;
  key = sx_load_key(L, idx, &pw, w);
  if (key == NULL) return 3;
  if (c->ctx == NULL) {   /* the password callback closed it */
    EVP_PKEY_free(key);
    return luaL_error(L, "context was closed while its key was loading");
  }
  ERR_clear_error();
  ok = SSL_CTX_use_PrivateKey(c->ctx, key);
  EVP_PKEY_free(key);
  if (!ok) return sx_push_error(L, "private key", "key");
  if (SSL_CTX_get0_certificate(c->ctx) != NULL && !SSL_CTX_check_private_key(c->ctx))
    return sx_push_error(L, "private key does not match the certificate", "key");
  return 0;
}

/* key; the setter use_private_key(key [, password]) also takes a password for this key only. */
static int apply_key(lua_State *L, sx_ctx *c, int idx, sx_where w) {
  int pw = idx + 1;
  luaL_checkany(L, idx);
  if (w.opt != NULL || lua_isnoneornil(L, pw)) return use_private_key(L, c, idx, 0, w);
  if (lua_type(L, pw) != LUA_TSTRING && lua_type(L, pw) != LUA_TFUNCTION)
    return luaL_argerror(L, pw, "password must be a string or a function");
  return use_private_key(L, c, idx, pw, w);
}

/* password: for the keys that follow (the setter, set_password_callback, takes a table). */
static int apply_password(lua_State *L, sx_ctx *c, int idx, sx_where w) {
  int t = lua_type(L, idx), obj;
  if (t != LUA_TSTRING && t != LUA_TFUNCTION) sx_where_typeerror(L, w, idx, "string or function");
  obj = push_ctx(L, c);
  lua_pushvalue(L, idx);
  sx_ctx_uv_set(L, obj, "password");
  return 0;
}

/* ---- the table ----------------------------------------------------------- */

static const option options[] = {
  /* name                  phase     apply                       setter                     anchors */
  {"side",                 CREATE,   NULL,                       NULL,                      0},
  {"verify",               SETTING,  apply_verify,               NULL,                      0},
  {"verify_callback",      SETTING,  apply_verify_callback,      NULL,                      0},
  {"verify_depth",         SETTING,  apply_verify_depth,         "set_verify_depth",        0},
  {"verify_params",        SETTING,  apply_verify_params,        "set_verify_params",       0},
  {"min_version",          SETTING,  apply_min_version,          "set_min_version",         0},
  {"max_version",          SETTING,  apply_max_version,          "set_max_version",         0},
  {"security_level",       SETTING,  apply_security_level,       "set_security_level",      0},
  {"ciphers",              SETTING,  apply_ciphers,              "set_ciphers",             0},
  {"ciphersuites",         SETTING,  apply_ciphersuites,         "set_ciphersuites",        0},
  {"groups",               SETTING,  apply_groups,               "set_groups",              0},
  {"alpn",                 SETTING,  apply_alpn,                 "set_alpn",                0},
  {"options",              SETTING,  apply_options,              "set_options",             0},
  {"post_handshake_auth",  SETTING,  apply_post_handshake_auth,  "set_post_handshake_auth", 0},
  {"session_cache_size",   SETTING,  apply_session_cache_size,   "set_session_cache_size",  0},
  {"session_tickets",      SETTING,  apply_session_tickets,      NULL,                      0},
  {"ticket_key_rotation",  SETTING,  apply_ticket_key_rotation,  NULL,                      0},
  {"release_buffers",      SETTING,  apply_release_buffers,      NULL,                      0},
  {"password",             SETTING,  apply_password,             NULL,                      0},
  /* material: trust anchors first (trust.c), then the context's own */
  {"ca_file",              MATERIAL, apply_ca_file,              NULL,                      1},
  {"ca_path",              MATERIAL, apply_ca_path,              NULL,                      1},
  {"client_ca",            MATERIAL, apply_client_ca,            "set_client_ca_list",      0},
  {"ca",                   MATERIAL, apply_ca,                   NULL,                      1},
  {"dh",                   MATERIAL, apply_dh,                   "set_dh",                  0},
  {"certificate",          MATERIAL, apply_certificate,          "use_certificate",         0},
  {"key",                  MATERIAL, apply_key,                  "use_private_key",         0},
  {NULL, 0, NULL, NULL, 0}
};

/* Raises unless every key of the table at opts names an option. */
void sx_options_check_names(lua_State *L, int opts) {
  lua_pushnil(L);
  while (lua_next(L, opts)) {
    const option *e;
    lua_pop(L, 1);
    if (lua_type(L, -1) != LUA_TSTRING)
      luaL_argerror(L, opts, lua_pushfstring(L, "option names must be strings, got a %s",
                                             luaL_typename(L, -1)));
    for (e = options; e->name != NULL && !is_keyword(lua_tostring(L, -1), e->name); e++) {}
    if (e->name == NULL)
      luaL_argerror(L, opts, lua_pushfstring(L, "unknown option '%s'", lua_tostring(L, -1)));
  }
}

/* sslctx.new: applies the options of the table at opts (argument 1) in the table's order,
 * then a client's default trust.  0, or 3 with nil, message, kind pushed (a file or key). */
int sx_options_apply(lua_State *L, sx_ctx *c, int opts) {
  const option *e;
  int anchors = 0;
  for (e = options; e->name != NULL; e++) {
    sx_where w = {opts, NULL};
    int top = lua_gettop(L);
    if (e->apply == NULL) continue;
    w.opt = e->name;
    lua_getfield(L, opts, e->name);
    if (!lua_isnil(L, -1)) {
      anchors |= e->anchors;
      if (e->apply(L, c, top + 1, w) == 3) return 3;
    }
    lua_settop(L, top);
  }
  if (!anchors && c->side != SX_SERVER) sx_trust_use_default(c);   /* the system's roots */
  return 0;
}

/* ctx:<setter>(value, ...): the entry is upvalue 1.  A setting's setter returns what its
 * function pushed (usually nothing); material's returns true, or nil, message, kind. */
static int option_setter(lua_State *L) {
  const option *e = (const option *)lua_touserdata(L, lua_upvalueindex(1));
  sx_ctx *c = sx_ctx_check(L, 1);
  sx_where w = {2, NULL};
  int n = e->apply(L, c, 2, w);
  if (n != 0 || e->phase != MATERIAL) return n;
  lua_pushboolean(L, 1);
  return 1;
}

/* Adds the setters to the context's method table (at methods). */
void sx_options_register(lua_State *L, int methods) {
  const option *e;
  methods = lua_absindex(L, methods);
  for (e = options; e->name != NULL; e++) {
    if (e->setter == NULL) continue;
    lua_pushlightuserdata(L, (void *)e);
    lua_pushcclosure(L, option_setter, 1);
    lua_setfield(L, methods, e->setter);
  }
}
