/* pkey.c: key objects (sslctx.pkey) and private key loading (the password callback and
 * reading files are in loaders.c). */
#include <limits.h>
#include <string.h>
#include <openssl/pem.h>
#include <openssl/evp.h>
#include <openssl/rsa.h>
#include "private.h"

typedef struct sx_pkey {
  EVP_PKEY *k;        /* NULL once released */
} sx_pkey;

/* ---- decoding ----------------------------------------------------------- */

/* One decoding attempt: the caller's password, and what happened to it. */
typedef struct key_source {
  sx_password *pw;    /* may be NULL: no password */
  int asked;          /* OpenSSL asked for a password (the key is encrypted) */
  int no_key;         /* PEM input without any private key block */
} key_source;

static int source_password_cb(char *buf, int size, int rwflag, void *u) {
  key_source *src = (key_source *)u;
  src->asked = 1;
  return sx_password_cb(buf, size, rwflag, src->pw);
}

static int has_password(const sx_password *pw) {
  return pw != NULL && pw->index != 0;
}

/* Whether the bytes contain the text (PEM labels: "PRIVATE KEY-----" ends them all). */
static int contains(const char *s, size_t len, const char *text) {
  size_t i, n = strlen(text);
  for (i = 0; i + n <= len; i++)
    if (memcmp(s + i, text, n) == 0) return 1;
  return 0;
}

/* A private key from PEM (traditional or PKCS#8, encrypted or not) or DER (traditional,
 * PKCS#8, or encrypted PKCS#8).  NULL with OpenSSL's reasons queued. */
static EVP_PKEY *decode_private_key(const char *s, size_t len, key_source *src) {
  EVP_PKEY *k = NULL;
  int der = sx_is_der(s, len);
  BIO *b;
  if (der) {
    const unsigned char *p = (const unsigned char *)s;
    X509_SIG *encrypted = d2i_X509_SIG(NULL, &p, (long)len);
    if (encrypted == NULL) {
      ERR_clear_error();
      p = (const unsigned char *)s;
      return d2i_AutoPrivateKey(NULL, &p, (long)len);
    }
    X509_SIG_free(encrypted);
  } else if (!contains(s, len, "PRIVATE KEY-----")) {
    src->no_key = 1;   /* 3.x would only say "unsupported" */
    return NULL;
  }
  if (len > INT_MAX || (b = BIO_new_mem_buf(s, (int)len)) == NULL) return NULL;
  if (der) k = d2i_PKCS8PrivateKey_bio(b, NULL, source_password_cb, src);
  else k = PEM_read_bio_PrivateKey(b, NULL, source_password_cb, src);
  BIO_free(b);
  return k;
}

/* A public key (SubjectPublicKeyInfo, PEM "PUBLIC KEY" or DER).  NULL, queue untouched. */
static EVP_PKEY *decode_public_key(const char *s, size_t len) {
  EVP_PKEY *k = NULL;
  BIO *b;
  ERR_set_mark();
  if (sx_is_der(s, len)) {
    const unsigned char *p = (const unsigned char *)s;
    k = d2i_PUBKEY(NULL, &p, (long)len);
  } else if (contains(s, len, "PUBLIC KEY-----") && len <= INT_MAX &&
             (b = BIO_new_mem_buf(s, (int)len)) != NULL) {
    k = PEM_read_bio_PUBKEY(b, NULL, NULL, NULL);
    BIO_free(b);
  }
  ERR_pop_to_mark();
  return k;
}

/* Moves the message the password callback stashed to nil, msg, kind on top.  A function's
 * message is final ("password callback: ..."), a string's gets the usual prefix. */
static int push_password_failure(lua_State *L, sx_password *pw, const char *what,
                                 const char *path) {
  int is_fn = lua_type(L, pw->index) == LUA_TFUNCTION;
  const char *kind = is_fn ? "callback" : "key";
  if (pw->err_index == 0) return sx_push_failure(L, kind, "%s: password: Lua stack overflow", what);
  lua_pushnil(L);
  if (is_fn) lua_pushvalue(L, pw->err_index);
  else if (path != NULL) lua_pushfstring(L, "%s: %s: %s", what, path, lua_tostring(L, pw->err_index));
  else lua_pushfstring(L, "%s: %s", what, lua_tostring(L, pw->err_index));
  lua_pushstring(L, kind);
  lua_remove(L, pw->err_index);
  pw->err_index = 0;
  return 3;
}

/* After a failed decode: pushes nil, msg, kind (for a key: kind "key"). */
static int push_key_failure(lua_State *L, key_source *src, const char *what, const char *path) {
  const char *p = path != NULL ? path : "", *sep = path != NULL ? ": " : "";
  if (src->pw != NULL && src->pw->failed) {
    ERR_clear_error();
    return push_password_failure(L, src->pw, what, path);
  }
  if (src->no_key) {
    ERR_clear_error();
    return sx_push_failure(L, "key", "%s: %s%sno private key found", what, p, sep);
  }
  if (src->asked && !has_password(src->pw)) {
    ERR_clear_error();
    return sx_push_failure(L, "key", "%s: %s%sthe key is encrypted and no password was given",
                           what, p, sep);
  }
  return sx_push_ssl_failure(L, what, path, "key");
}

/* ---- pkey objects ------------------------------------------------------- */

void sx_pkey_push(lua_State *L, EVP_PKEY *k) {
  if (k == NULL) {
    lua_pushnil(L);
    return;
  }
  EVP_PKEY_up_ref(k);
  *sx_box_new(L, SX_PKEY_MT) = k;
}

static EVP_PKEY *pkey_check(lua_State *L, int arg) {
  sx_pkey *u = (sx_pkey *)luaL_testudata(L, arg, SX_PKEY_MT);
  if (u == NULL)
    return (luaL_argerror(L, arg, lua_pushfstring(L, SX_PKEY_MT " expected, got %s",
                                                  luaL_typename(L, arg))), (EVP_PKEY *)NULL);
  if (u->k == NULL) luaL_argerror(L, arg, "pkey is closed");
  return u->k;
}

static int pkey_release(lua_State *L) {
  EVP_PKEY_free((EVP_PKEY *)sx_box_take(L, SX_PKEY_MT));
  return 0;
}

/* The password argument: nil (none), a string or a function; raises otherwise. */
static void check_password_arg(lua_State *L, int arg, sx_password *pw) {
  int t = lua_type(L, arg);
  pw->L = L;
  pw->index = t == LUA_TNONE || t == LUA_TNIL ? 0 : arg;
  pw->failed = 0;
  pw->err_index = 0;
  if (t != LUA_TNONE && t != LUA_TNIL && t != LUA_TSTRING && t != LUA_TFUNCTION)
    luaL_argerror(L, arg, lua_pushfstring(L, "string or function expected, got %s",
                                          luaL_typename(L, arg)));
}

/* sslctx.pkey(pem_or_der [, password]) -> pkey | nil, msg, kind.  A private key, or else a
 * public key (SubjectPublicKeyInfo). */
int sx_pkey_new(lua_State *L) {
  size_t len;
  const char *s = luaL_checklstring(L, 1, &len);
  sx_password pw;
  key_source src;
  sx_pkey *u;
  check_password_arg(L, 2, &pw);
  lua_settop(L, 2);
  u = (sx_pkey *)sx_box_new(L, SX_PKEY_MT);
  src.pw = &pw;
  src.asked = src.no_key = 0;
  ERR_clear_error();
  u->k = decode_private_key(s, len, &src);
  /* PEM without a private key block, or DER that is no private key: a public key? */
  if (u->k == NULL && !pw.failed && (src.no_key || sx_is_der(s, len)))
    u->k = decode_public_key(s, len);
  if (u->k != NULL) {
    ERR_clear_error();
    return 1;
  }
  if (src.no_key)
    return sx_push_failure(L, "key", "pkey: no %skey found",
                           contains(s, len, "PUBLIC KEY-----") ? "readable " : "");
  return push_key_failure(L, &src, "pkey", NULL);
}

EVP_PKEY *sx_load_key(lua_State *L, int arg, sx_password *pw, sx_where w) {
  sx_input in;
  EVP_PKEY *k;
  key_source src;
  arg = lua_absindex(L, arg);
  if (luaL_testudata(L, arg, SX_PKEY_MT) != NULL) {
    k = ((sx_pkey *)lua_touserdata(L, arg))->k;
    if (k == NULL) sx_where_error(L, w, "pkey is closed");
    EVP_PKEY_up_ref(k);
    return k;
  }
  if (lua_type(L, arg) != LUA_TSTRING) {
    sx_where_typeerror(L, w, arg, "PEM text, file name or " SX_PKEY_MT);
    return NULL;
  }
  if (pw != NULL) {
    pw->failed = 0;
    pw->err_index = 0;
  }
  if (!sx_input_open(L, arg, "key", &in)) return NULL;
  src.pw = pw;
  src.asked = src.no_key = 0;
  ERR_clear_error();
  k = decode_private_key(in.s, in.len, &src);
  sx_input_close(&in);
  if (k == NULL) push_key_failure(L, &src, "key", in.path);
  ERR_clear_error();
  return k;
}

/* "RSA", "EC", "ED25519", ...: the same names on 1.1.1 and 3.x. */
static const char *key_type_name(const EVP_PKEY *k) {
  const char *name = NULL;
  int id = EVP_PKEY_base_id(k);
  switch (id) {
    case EVP_PKEY_RSA: return "RSA";
    case EVP_PKEY_RSA_PSS: return "RSA-PSS";
    case EVP_PKEY_DSA: return "DSA";
    case EVP_PKEY_DH: return "DH";
    case EVP_PKEY_EC: return "EC";
    case EVP_PKEY_ED25519: return "ED25519";
    case EVP_PKEY_ED448: return "ED448";
    case EVP_PKEY_X25519: return "X25519";
    case EVP_PKEY_X448: return "X448";
    default: name = id != NID_undef ? OBJ_nid2sn(id) : NULL;
  }
  if (name == NULL) name = sx_pkey_provider_type_name(k);   /* a provider-only key type */
  return name != NULL ? name : "unknown";
}

static int pkey_type(lua_State *L) {
  lua_pushstring(L, key_type_name(pkey_check(L, 1)));
  return 1;
}

static int pkey_bits(lua_State *L) {
  lua_pushinteger(L, EVP_PKEY_bits(pkey_check(L, 1)));
  return 1;
}

/* Whether the key has its private half: only then can it be encoded as a private key. */
static int has_private(EVP_PKEY *k) {
  int n;
  if (sx_pkey_is_public_rsa(k)) return 0;
  ERR_set_mark();
  n = i2d_PrivateKey(k, NULL);
  ERR_pop_to_mark();
  return n > 0;
}

/* pem([public_only]) / der([public_only]): the private key as unencrypted PKCS#8, or the
 * public key (SubjectPublicKeyInfo; also what a key without its private half gives). */
static int pkey_encode(lua_State *L, int der) {
  EVP_PKEY *k = pkey_check(L, 1);
  int public_only = lua_toboolean(L, 2) || !has_private(k);
  BIO *b = sx_membio_push(L);
  int ok;
  ERR_clear_error();
  if (b == NULL) ok = 0;
  else if (public_only) ok = der ? i2d_PUBKEY_bio(b, k) : PEM_write_bio_PUBKEY(b, k);
  else if (der) ok = i2d_PKCS8PrivateKey_bio(b, k, NULL, NULL, 0, NULL, NULL);
  else ok = PEM_write_bio_PKCS8PrivateKey(b, k, NULL, NULL, 0, NULL, NULL);
  if (!ok) {
    sx_membio_pop(L);
    return sx_push_error(L, der ? "der" : "pem", "ssl");
  }
  sx_membio_result(L);
  return 1;
}

static int pkey_pem(lua_State *L) {
  return pkey_encode(L, 0);
}

static int pkey_der(lua_State *L) {
  return pkey_encode(L, 1);
}

static int pkey_tostring(lua_State *L) {
  sx_pkey *u = (sx_pkey *)luaL_checkudata(L, 1, SX_PKEY_MT);
  if (u->k == NULL) lua_pushliteral(L, "sslctx.pkey (closed)");
  else lua_pushfstring(L, "sslctx.pkey: %s (%d bits)", key_type_name(u->k), EVP_PKEY_bits(u->k));
  return 1;
}

/* Equal when both are open and have the same public key (and parameters). */
static int pkey_eq(lua_State *L) {
  EVP_PKEY *a = (EVP_PKEY *)sx_box_test(L, 1, SX_PKEY_MT);
  EVP_PKEY *b = (EVP_PKEY *)sx_box_test(L, 2, SX_PKEY_MT);
  lua_pushboolean(L, a != NULL && b != NULL && sx_pkey_eq(a, b) == 1);
  ERR_clear_error();
  return 1;
}

void sx_pkey_open(lua_State *L) {
  static const luaL_Reg methods[] = {
    {"type", pkey_type},
    {"bits", pkey_bits},
    {"pem", pkey_pem},
    {"der", pkey_der},
    {NULL, NULL}
  };
  static const luaL_Reg meta[] = {
    {"__gc", pkey_release},
    {"__close", pkey_release},
    {"__tostring", pkey_tostring},
    {"__eq", pkey_eq},
    {NULL, NULL}
  };
  sx_register_class(L, SX_PKEY_MT, methods, meta);
}
