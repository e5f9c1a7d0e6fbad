/* x509.c: the methods of certificate (sslctx.x509) and CRL (sslctx.crl) objects.  Making them
 * from PEM text, files and Lua values is loaders.c's. */
#define _POSIX_C_SOURCE 200112L   /* inet_ntop under -std=c99 */
#include <limits.h>
#include <string.h>
#include <arpa/inet.h>
#include <sys/socket.h>
#include <openssl/pem.h>
#include <openssl/bn.h>
#include "private.h"

/* Both objects are boxes (loaders.c): one pointer, NULL once released. */

static void free_general_names(void *p) { GENERAL_NAMES_free((GENERAL_NAMES *)p); }
/* ---- time and integers --------------------------------------------------- */

/* Days from 1970-01-01 to the proleptic Gregorian date y-m-d (m 1..12); counts whole
 * 400-year eras (146097 days each) so that it is exact for any year, negative ones too. */
static long long days_from_civil(long long y, int m, int d) {
  long long era, yoe, doy, doe;
  if (m <= 2) y -= 1;                           /* years start on March 1st here ... */
  era = (y >= 0 ? y : y - 399) / 400;
  yoe = y - era * 400;                          /* [0, 399] */
  doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1;   /* ... so Feb 29 comes last */
  doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;  /* [0, 146096] */
  return era * 146097 + doe - 719468;           /* 719468: days from 0000-03-01 to 1970 */
}

static void push_int64(lua_State *L, long long v) {
#if LUA_VERSION_NUM >= 503
  lua_pushinteger(L, (lua_Integer)v);
#else
  lua_pushnumber(L, (lua_Number)v);   /* lua_Integer may be 32 bits before 5.3 */
#endif
}

/* Pushes the time as epoch seconds; nil when absent, nil,msg,kind when unreadable. */
static int push_time(lua_State *L, const ASN1_TIME *t, const char *what) {
  struct tm tm;
  long long days;
  if (t == NULL) {
    lua_pushnil(L);
    return 1;
  }
  ERR_clear_error();
  if (!ASN1_TIME_to_tm(t, &tm)) return sx_push_error(L, what, "ssl");
  days = days_from_civil((long long)tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday);
  push_int64(L, days * 86400 + tm.tm_hour * 3600 + tm.tm_min * 60 + tm.tm_sec);
  return 1;
}

/* Hex of the integer as `openssl x509 -serial` prints it (i2a_ASN1_INTEGER), without the
 * line continuations it inserts past 35 bytes: '-' when negative, "00" when empty. */
static void push_integer_hex(lua_State *L, const ASN1_INTEGER *a) {
  static const char hex[] = "0123456789ABCDEF";
  luaL_Buffer b;
  int i, len = ASN1_STRING_length(a);
  const unsigned char *p = ASN1_STRING_get0_data(a);
  luaL_buffinit(L, &b);
  if (ASN1_STRING_type(a) == V_ASN1_NEG_INTEGER) luaL_addchar(&b, '-');
  if (len == 0) luaL_addstring(&b, "00");
  for (i = 0; i < len; i++) {
    luaL_addchar(&b, hex[p[i] >> 4]);
    luaL_addchar(&b, hex[p[i] & 15]);
  }
  luaL_pushresult(&b);
}

/* RFC 2253 with UTF-8 left as is (no \XX escapes of bytes above 0x7f). */
static int push_name(lua_State *L, const X509_NAME *name, const char *what) {
  BIO *b = sx_membio_push(L);
  ERR_clear_error();
  if (b == NULL || X509_NAME_print_ex(b, name, 0, XN_FLAG_RFC2253 & ~ASN1_STRFLGS_ESC_MSB) < 0) {
    sx_membio_pop(L);
    return sx_push_error(L, what, "ssl");
  }
  sx_membio_result(L);
  return 1;
}

/* ---- x509 objects -------------------------------------------------------- */

static int type_error(lua_State *L, int arg, const char *expected) {
  return luaL_argerror(L, arg, lua_pushfstring(L, "%s expected, got %s", expected,
                                               sx_type_name(L, arg)));
}

/* The pointer of an open object of class mt at arg; raises otherwise. */
static void *box_check(lua_State *L, int arg, const char *mt, const char *closed) {
  void **box = (void **)luaL_testudata(L, arg, mt);
  if (box == NULL) return (type_error(L, arg, mt), NULL);
  if (*box == NULL) luaL_argerror(L, arg, closed);
  return *box;
}

void sx_x509_push(lua_State *L, X509 *x) {
  if (x == NULL) {
    lua_pushnil(L);
    return;
  }
  X509_up_ref(x);
  *sx_box_new(L, SX_X509_MT) = x;
}

X509 *sx_x509_test(lua_State *L, int arg) {
  return (X509 *)sx_box_test(L, arg, SX_X509_MT);
}

static X509 *x509_check(lua_State *L, int arg) {
  return (X509 *)box_check(L, arg, SX_X509_MT, "x509 is closed");
}

static int x509_release(lua_State *L) {
  X509_free((X509 *)sx_box_take(L, SX_X509_MT));
  return 0;
}

static int x509_subject(lua_State *L) {
  return push_name(L, X509_get_subject_name(x509_check(L, 1)), "subject");
}

static int x509_issuer(lua_State *L) {
  return push_name(L, X509_get_issuer_name(x509_check(L, 1)), "issuer");
}

static int x509_serial(lua_State *L) {
  push_integer_hex(L, X509_get0_serialNumber(x509_check(L, 1)));
  return 1;
}

static int x509_not_before(lua_State *L) {
  return push_time(L, X509_get0_notBefore(x509_check(L, 1)), "not_before");
}

static int x509_not_after(lua_State *L) {
  return push_time(L, X509_get0_notAfter(x509_check(L, 1)), "not_after");
}

/* 1 for v1 ... 3 for v3, as `openssl x509 -text` shows it. */
static int x509_version(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)X509_get_version(x509_check(L, 1)) + 1);
  return 1;
}

/* x509:signature_name() -> the signature algorithm's name, as `openssl x509 -text` prints
 * it ("sha256WithRSAEncryption", "ecdsa-with-SHA256", "ED25519"); the OID in dotted form
 * when OpenSSL has no name for it. */
static int x509_signature_name(lua_State *L) {
  X509 *x = x509_check(L, 1);
  const X509_ALGOR *alg = NULL;
  const ASN1_OBJECT *obj = NULL;
  int nid = X509_get_signature_nid(x);
  char buf[128];
  if (nid != NID_undef && OBJ_nid2ln(nid) != NULL) {
    lua_pushstring(L, OBJ_nid2ln(nid));
    return 1;
  }
  X509_get0_signature(NULL, &alg, x);
  if (alg != NULL) X509_ALGOR_get0(&obj, NULL, NULL, alg);
  if (obj == NULL || OBJ_obj2txt(buf, (int)sizeof buf, obj, 1) <= 0) {
    lua_pushnil(L);
    return 1;
  }
  lua_pushstring(L, buf);
  return 1;
}

static void push_hex_lower(lua_State *L, const unsigned char *p, unsigned int n) {
  static const char hex[] = "0123456789abcdef";
  char out[2 * EVP_MAX_MD_SIZE];
  unsigned int i;
  for (i = 0; i < n; i++) {
    out[2 * i] = hex[p[i] >> 4];
    out[2 * i + 1] = hex[p[i] & 15];
  }
  lua_pushlstring(L, out, 2 * (size_t)n);
}

static int x509_fingerprint(lua_State *L) {
  X509 *x = x509_check(L, 1);
  const char *name = luaL_optstring(L, 2, "sha256");
  const EVP_MD *md = EVP_get_digestbyname(name);
  unsigned char buf[EVP_MAX_MD_SIZE];
  unsigned int n = 0;
  if (md == NULL) return luaL_argerror(L, 2, lua_pushfstring(L, "unknown digest '%s'", name));
  ERR_clear_error();
  if (!X509_digest(x, md, buf, &n)) return sx_push_error(L, "fingerprint", "ssl");
  push_hex_lower(L, buf, n);
  return 1;
}

/* PEM through a memory BIO that the Lua stack holds. */
typedef int (*sx_pem_fn)(BIO *b, void *obj);

static int x509_write_pem(BIO *b, void *obj) { return PEM_write_bio_X509(b, (X509 *)obj); }
static int crl_write_pem(BIO *b, void *obj) { return PEM_write_bio_X509_CRL(b, (X509_CRL *)obj); }

static int push_pem(lua_State *L, void *obj, sx_pem_fn write) {
  BIO *b = sx_membio_push(L);
  ERR_clear_error();
  if (b == NULL || !write(b, obj)) {
    sx_membio_pop(L);
    return sx_push_error(L, "pem", "ssl");
  }
  sx_membio_result(L);
  return 1;
}

static int x509_pem(lua_State *L) {
  return push_pem(L, x509_check(L, 1), x509_write_pem);
}

/* DER straight into a scratch userdata: nothing of OpenSSL's is held while Lua allocates. */
typedef int (*sx_i2d_fn)(void *obj, unsigned char **out);

static int x509_i2d(void *obj, unsigned char **out) { return i2d_X509((X509 *)obj, out); }
static int crl_i2d(void *obj, unsigned char **out) { return i2d_X509_CRL((X509_CRL *)obj, out); }

static int push_der(lua_State *L, void *obj, sx_i2d_fn i2d) {
  unsigned char *buf, *p;
  int n;
  ERR_clear_error();
  if ((n = i2d(obj, NULL)) <= 0) return sx_push_error(L, "der", "ssl");
  buf = p = (unsigned char *)lua_newuserdata(L, (size_t)n);
  if (i2d(obj, &p) != n) {
    lua_pop(L, 1);
    return sx_push_error(L, "der", "ssl");
  }
  lua_pushlstring(L, (const char *)buf, (size_t)n);
  lua_remove(L, -2);
  return 1;
}

static int x509_der(lua_State *L) {
  return push_der(L, x509_check(L, 1), x509_i2d);
}

static void append_string(lua_State *L, int t, const ASN1_STRING *s) {
  lua_pushlstring(L, (const char *)ASN1_STRING_get0_data(s), (size_t)ASN1_STRING_length(s));
  lua_rawseti(L, t, (int)lua_rawlen(L, t) + 1);
}

/* An iPAddress is 4 or 16 octets; anything else (a name constraint's address/mask pair
 * never appears in a SAN) is skipped. */
static void append_ip(lua_State *L, int t, const ASN1_OCTET_STRING *s) {
  char text[INET6_ADDRSTRLEN];
  int len = ASN1_STRING_length(s);
  int family = len == 4 ? AF_INET : len == 16 ? AF_INET6 : -1;
  if (family < 0 || inet_ntop(family, ASN1_STRING_get0_data(s), text, sizeof text) == NULL)
    return;
  lua_pushstring(L, text);
  lua_rawseti(L, t, (int)lua_rawlen(L, t) + 1);
}

static void append_general_name(lua_State *L, int res, const GENERAL_NAME *g) {
  const char *key;
  switch (g->type) {
    case GEN_DNS: key = "dns"; break;
    case GEN_IPADD: key = "ip"; break;
    case GEN_EMAIL: key = "email"; break;
    case GEN_URI: key = "uri"; break;
    default: return;   /* otherName, dirName, ...: not asked for */
  }
  lua_getfield(L, res, key);
  if (g->type == GEN_IPADD) append_ip(L, lua_gettop(L), g->d.iPAddress);
  else append_string(L, lua_gettop(L), g->d.ia5);
  lua_pop(L, 1);
}

/* {dns = {...}, ip = {...}, email = {...}, uri = {...}}, in the certificate's order. */
static int x509_subject_alt_names(lua_State *L) {
  static const char *const keys[] = {"dns", "ip", "email", "uri"};
  X509 *x = x509_check(L, 1);
  sx_holder *h;
  GENERAL_NAMES *gens;
  int i, res;
  lua_createtable(L, 0, 4);
  res = lua_gettop(L);
  for (i = 0; i < 4; i++) {
    lua_newtable(L);
    lua_setfield(L, res, keys[i]);
  }
  h = sx_holder_push(L);
  h->free_fn = free_general_names;
  h->p = gens = (GENERAL_NAMES *)X509_get_ext_d2i(x, NID_subject_alt_name, NULL, NULL);
  for (i = 0; gens != NULL && i < sk_GENERAL_NAME_num(gens); i++)
    append_general_name(L, res, sk_GENERAL_NAME_value(gens, i));
  sx_holder_release(h);  /* frees the names now */
  lua_pop(L, 1);
  ERR_clear_error();  /* an absent or malformed extension is just no names */
  return 1;
}

/* A DNS name is matched as OpenSSL's hostname verification does (wildcards, the subject CN
 * only when there is no DNS SAN); an IP literal against the iPAddress SANs. */
static int x509_check_host(lua_State *L) {
  size_t len;
  int r;
  X509 *x = x509_check(L, 1);
  const char *name = luaL_checklstring(L, 2, &len);
  if (strlen(name) != len) {   /* "127.0.0.1\0.evil": never a match */
    lua_pushboolean(L, 0);
    return 1;
  }
  ERR_clear_error();
  r = X509_check_ip_asc(x, name, 0);
  if (r == -2) r = X509_check_host(x, name, len, 0, NULL);   /* not an IP literal */
  ERR_clear_error();
  lua_pushboolean(L, r == 1);
  return 1;
}

static int x509_public_key(lua_State *L) {
  X509 *x = x509_check(L, 1);
  EVP_PKEY *k;
  ERR_clear_error();
  if ((k = X509_get0_pubkey(x)) == NULL) return sx_push_error(L, "public_key", "ssl");
  sx_pkey_push(L, k);
  return 1;
}

/* x:issued_by(ca): ca's subject and key identifiers match x's issuer and x is signable by
 * ca (its signature is not checked). */
static int x509_issued_by(lua_State *L) {
  X509 *x = x509_check(L, 1);
  X509 *ca = x509_check(L, 2);
  lua_pushboolean(L, X509_check_issued(ca, x) == X509_V_OK);
  ERR_clear_error();
  return 1;
}

/* "<class>: <name>" ("?" when it cannot be printed), or "<class> (closed)". */
typedef const X509_NAME *(*sx_name_fn)(const void *obj);

static const X509_NAME *x509_subject_of(const void *obj) {
  return X509_get_subject_name((const X509 *)obj);
}

static const X509_NAME *crl_issuer_of(const void *obj) {
  return X509_CRL_get_issuer((const X509_CRL *)obj);
}

static int push_tostring(lua_State *L, const char *mt, sx_name_fn name_of, const char *what) {
  void *obj = *(void **)luaL_checkudata(L, 1, mt);
  if (obj == NULL) {
    lua_pushfstring(L, "%s (closed)", mt);
    return 1;
  }
  lua_pushfstring(L, "%s: ", mt);
  if (push_name(L, name_of(obj), what) != 1) {
    lua_pop(L, 3);
    lua_pushliteral(L, "?");
  }
  lua_concat(L, 2);
  return 1;
}

static int x509_tostring(lua_State *L) {
  return push_tostring(L, SX_X509_MT, x509_subject_of, "subject");
}

/* Equal when both are open and their DER encodings are the same. */
static int x509_eq(lua_State *L) {
  X509 *a = sx_x509_test(L, 1), *b = sx_x509_test(L, 2);
  lua_pushboolean(L, a != NULL && b != NULL && X509_cmp(a, b) == 0);
  return 1;
}

/* ---- CRL objects --------------------------------------------------------- */

static X509_CRL *crl_check(lua_State *L, int arg) {
  return (X509_CRL *)box_check(L, arg, SX_CRL_MT, "crl is closed");
}

static int crl_release(lua_State *L) {
  X509_CRL_free((X509_CRL *)sx_box_take(L, SX_CRL_MT));
  return 0;
}

static int crl_issuer(lua_State *L) {
  return push_name(L, X509_CRL_get_issuer(crl_check(L, 1)), "issuer");
}

static int crl_last_update(lua_State *L) {
  return push_time(L, X509_CRL_get0_lastUpdate(crl_check(L, 1)), "last_update");
}

static int crl_next_update(lua_State *L) {
  return push_time(L, X509_CRL_get0_nextUpdate(crl_check(L, 1)), "next_update");
}

static int crl_pem(lua_State *L) {
  return push_pem(L, crl_check(L, 1), crl_write_pem);
}

static int crl_der(lua_State *L) {
  return push_der(L, crl_check(L, 1), crl_i2d);
}

/* Parses "0A1B" (as serial() prints it; optional '-', optional ':' separators, any case)
 * into an ASN1_INTEGER; NULL when it is not hex.  The caller frees it. */
static ASN1_INTEGER *serial_from_hex(const char *s) {
  char clean[1024];
  size_t i, n = 0;
  BIGNUM *bn = NULL;
  ASN1_INTEGER *a = NULL;
  for (i = 0; s[i] != '\0'; i++) {
    char ch = s[i];
    if (ch == ':') continue;
    if (!(ch == '-' && n == 0) && !((ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'f') ||
                                    (ch >= 'A' && ch <= 'F')))
      return NULL;
    if (n + 1 >= sizeof clean) return NULL;
    clean[n++] = ch;
  }
  clean[n] = '\0';
  if (n == 0 || (n == 1 && clean[0] == '-')) return NULL;
  if (BN_hex2bn(&bn, clean) == (int)n) a = BN_to_ASN1_INTEGER(bn, NULL);
  BN_free(bn);
  return a;
}

/* crl:revoked(serial_hex | x509) -> boolean.  An x509 must also be from the CRL's issuer;
 * an entry with reason removeFromCRL (delta CRLs) is not a revocation. */
static int crl_revoked(lua_State *L) {
  X509_CRL *crl = crl_check(L, 1);
  X509_REVOKED *rev = NULL;
  int r;
  ERR_clear_error();
  if (lua_type(L, 2) == LUA_TSTRING) {
    ASN1_INTEGER *serial = serial_from_hex(lua_tostring(L, 2));
    if (serial == NULL) {
      ERR_clear_error();
      return luaL_argerror(L, 2, lua_pushfstring(L, "invalid serial '%s' (hex expected)",
                                                 lua_tostring(L, 2)));
    }
    r = X509_CRL_get0_by_serial(crl, &rev, serial);
    ASN1_INTEGER_free(serial);
  } else if (luaL_testudata(L, 2, SX_X509_MT) != NULL) {
    r = X509_CRL_get0_by_cert(crl, &rev, x509_check(L, 2));
  } else {
    return type_error(L, 2, "string or " SX_X509_MT);
  }
  ERR_clear_error();
  lua_pushboolean(L, r == 1);
  return 1;
}

static int crl_tostring(lua_State *L) {
  return push_tostring(L, SX_CRL_MT, crl_issuer_of, "issuer");
}

/* Equal when both are open and have the same encoding (X509_CRL_match: their digests). */
static int crl_eq(lua_State *L) {
  X509_CRL *a = (X509_CRL *)sx_box_test(L, 1, SX_CRL_MT);
  X509_CRL *b = (X509_CRL *)sx_box_test(L, 2, SX_CRL_MT);
  lua_pushboolean(L, a != NULL && b != NULL && X509_CRL_match(a, b) == 0);
  return 1;
}

/* ---- registration -------------------------------------------------------- */

void sx_x509_open(lua_State *L) {
  static const luaL_Reg x509_methods[] = {
    {"subject", x509_subject},
    {"issuer", x509_issuer},
    {"serial", x509_serial},
    {"not_before", x509_not_before},
    {"not_after", x509_not_after},
    {"version", x509_version},
    {"fingerprint", x509_fingerprint},
    {"signature_name", x509_signature_name},
    {"pem", x509_pem},
    {"der", x509_der},
    {"subject_alt_names", x509_subject_alt_names},
    {"check_host", x509_check_host},
    {"public_key", x509_public_key},
    {"issued_by", x509_issued_by},
    {NULL, NULL}
  };
  static const luaL_Reg x509_meta[] = {
    {"__gc", x509_release},
    {"__close", x509_release},
    {"__tostring", x509_tostring},
    {"__eq", x509_eq},
    {NULL, NULL}
  };
  static const luaL_Reg crl_methods[] = {
    {"issuer", crl_issuer},
    {"last_update", crl_last_update},
    {"next_update", crl_next_update},
    {"pem", crl_pem},
    {"der", crl_der},
    {"revoked", crl_revoked},
    {NULL, NULL}
  };
  static const luaL_Reg crl_meta[] = {
    {"__gc", crl_release},
    {"__close", crl_release},
    {"__tostring", crl_tostring},
    {"__eq", crl_eq},
    {NULL, NULL}
  };
  sx_register_class(L, SX_X509_MT, x509_methods, x509_meta);
  sx_register_class(L, SX_CRL_MT, crl_methods, crl_meta);
}
