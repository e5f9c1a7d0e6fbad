/* x509.c: certificate (sslctx.x509) and CRL (sslctx.crl) objects, and the loaders that turn
 * PEM text, files and Lua values into OpenSSL certificate and CRL stacks. */
#define _POSIX_C_SOURCE 200112L   /* inet_ntop under -std=c99 */
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <arpa/inet.h>
#include <sys/socket.h>
#include <openssl/pem.h>
#include <openssl/bn.h>
#include "private.h"

#define SX_HOLDER_MT "sslctx.holder"

typedef struct sx_x509 {
  X509 *x;            /* NULL once released */
} sx_x509;

typedef struct sx_crl {
  X509_CRL *crl;      /* NULL once released */
} sx_crl;

/* ---- holders: C resources owned by the Lua stack ------------------------- */

/* A holder is pushed (empty) before a C resource is acquired, so that a Lua error raised
 * while the resource is in use (out of memory while pushing results) frees it at
 * collection instead of leaking it. */
typedef struct sx_holder {
  void *p;
  void (*free_fn)(void *p);
} sx_holder;

static sx_holder *holder_push(lua_State *L) {
  sx_holder *h = (sx_holder *)lua_newuserdata(L, sizeof *h);
  h->p = NULL;
  h->free_fn = NULL;
  luaL_setmetatable(L, SX_HOLDER_MT);
  return h;
}

static void holder_release(sx_holder *h) {
  if (h->p != NULL && h->free_fn != NULL) h->free_fn(h->p);
  h->p = NULL;
}

static int holder_gc(lua_State *L) {
  /* reachable through debug.getregistry(): check what it is given, like every finalizer */
  holder_release((sx_holder *)luaL_checkudata(L, 1, SX_HOLDER_MT));
  return 0;
}

static void free_bio(void *p) { BIO_free((BIO *)p); }
static void free_general_names(void *p) { GENERAL_NAMES_free((GENERAL_NAMES *)p); }
static void free_x509_stack(void *p) { sk_X509_pop_free((STACK_OF(X509) *)p, X509_free); }
static void free_crl_stack(void *p) { sk_X509_CRL_pop_free((STACK_OF(X509_CRL) *)p, X509_CRL_free); }

BIO *sx_membio_push(lua_State *L) {
  sx_holder *h = holder_push(L);
  h->free_fn = free_bio;
  h->p = BIO_new(BIO_s_mem());
  return (BIO *)h->p;
}

void sx_membio_result(lua_State *L) {
  sx_holder *h = (sx_holder *)lua_touserdata(L, -1);
  char *data = NULL;
  long n = BIO_get_mem_data((BIO *)h->p, &data);
  lua_pushlstring(L, data, n > 0 ? (size_t)n : 0);
  holder_release(h);
  lua_remove(L, -2);
}

void sx_membio_pop(lua_State *L) {
  holder_release((sx_holder *)lua_touserdata(L, -1));
  lua_pop(L, 1);
}

/* ---- input helpers shared with pkey.c ------------------------------------ */

/* The whole file in a memory BIO; NULL with *err = errno (0: OpenSSL out of memory). */
static BIO *read_file(const char *path, int *err) {
  char chunk[4096];
  size_t n;
  BIO *mem;
  FILE *f = fopen(path, "rb");
  *err = 0;
  if (f == NULL) {
    *err = errno;
    return NULL;
  }
  errno = 0;
  mem = BIO_new(BIO_s_mem());
  while (mem != NULL && (n = fread(chunk, 1, sizeof chunk, f)) > 0) {
    if (BIO_write(mem, chunk, (int)n) != (int)n) {
      BIO_free(mem);
      mem = NULL;
    }
  }
  if (mem != NULL && ferror(f)) {
    *err = errno != 0 ? errno : EIO;
    BIO_free(mem);
    mem = NULL;
  }
  fclose(f);
  return mem;
}

int sx_is_der(const char *s, size_t len) {
  /* Every DER object read here is a SEQUENCE (0x30).  Anything else is taken for PEM, whose
   * reader skips text before the first "-----BEGIN" (as in `openssl x509 -text` output). */
  return len > 0 && (unsigned char)s[0] == 0x30;
}

/* Declines any password: a certificate or CRL is never encrypted, and OpenSSL's default
 * would prompt on the terminal. */
static int no_password(char *buf, int size, int rwflag, void *u) {
  (void)buf, (void)size, (void)rwflag, (void)u;
  return -1;
}

static int is_pem_end(unsigned long e) {
  return ERR_GET_LIB(e) == ERR_LIB_PEM && ERR_GET_REASON(e) == PEM_R_NO_START_LINE;
}

/* ---- decoding certificates and CRLs -------------------------------------- */

/* What differs between reading certificates and reading CRLs. */
typedef struct sx_codec {
  const char *noun;                                  /* for "no <noun> found" */
  void *(*read_pem)(BIO *b);                         /* next block of this type, or NULL */
  void *(*read_der)(const unsigned char **p, long len);
  int (*add)(void *sk, void *obj);                   /* takes obj; 0 when out of memory */
  void (*free_obj)(void *obj);
} sx_codec;

static void *cert_read_pem(BIO *b) { return PEM_read_bio_X509_AUX(b, NULL, no_password, NULL); }
static void *cert_read_der(const unsigned char **p, long len) { return d2i_X509(NULL, p, len); }
static void cert_free(void *o) { X509_free((X509 *)o); }
static int cert_add(void *sk, void *o) { return sk_X509_push((STACK_OF(X509) *)sk, (X509 *)o) > 0; }

static void *crl_read_pem(BIO *b) { return PEM_read_bio_X509_CRL(b, NULL, no_password, NULL); }
static void *crl_read_der(const unsigned char **p, long len) { return d2i_X509_CRL(NULL, p, len); }
static void crl_free(void *o) { X509_CRL_free((X509_CRL *)o); }
static int crl_add(void *sk, void *o) {
  return sk_X509_CRL_push((STACK_OF(X509_CRL) *)sk, (X509_CRL *)o) > 0;
}

static const sx_codec cert_codec = {"certificate", cert_read_pem, cert_read_der, cert_add,
                                    cert_free};
static const sx_codec crl_codec = {"CRL", crl_read_pem, crl_read_der, crl_add, crl_free};

static int add_or_free(const sx_codec *c, void *sk, void *obj) {
  if (c->add(sk, obj)) return 1;
  c->free_obj(obj);
  return 0;
}

/* Decodes the bytes into sk: one DER object, or the PEM blocks of the codec's type (all of
 * them, or only the first).  Returns how many were added, 0 when there was none (queue
 * cleared), -1 on an OpenSSL failure (reasons queued). */
static int decode_into(const sx_codec *c, const char *s, size_t len, void *sk, int first_only) {
  int count = 0;
  void *obj;
  BIO *b;
  if (sx_is_der(s, len)) {
    const unsigned char *p = (const unsigned char *)s;
    obj = c->read_der(&p, (long)len);
    if (obj == NULL) return -1;
    return add_or_free(c, sk, obj) ? 1 : -1;
  }
  if (len > INT_MAX || (b = BIO_new_mem_buf(s, (int)len)) == NULL) return -1;
  while ((obj = c->read_pem(b)) != NULL) {
    if (!add_or_free(c, sk, obj)) {
      count = -1;
      break;
    }
    count++;
    if (first_only) break;
  }
  BIO_free(b);
  if (count < 0) return -1;
  /* Running out of blocks is how the loop ends: only other reasons are failures. */
  if (!first_only || count == 0) {
    unsigned long e = ERR_peek_last_error();
    if (e != 0 && !is_pem_end(e)) return -1;
  }
  ERR_clear_error();
  return count;
}

BIO *sx_open_file(lua_State *L, const char *path, size_t plen, const char *what) {
  int err;
  BIO *mem;
  if (strlen(path) != plen) {
    sx_push_failure(L, "file", "%s: file name contains a zero byte", what);
    return NULL;
  }
  ERR_clear_error();
  if ((mem = read_file(path, &err)) != NULL) return mem;
  if (err != 0) sx_push_failure(L, "file", "%s: %s: %s", what, path, strerror(err));
  else sx_push_ssl_failure(L, what, path, "file");
  return NULL;
}

/* PEM text, or the PEM/DER file named, at idx, into sk.  1, or 0 with nil,msg,kind pushed. */
static int decode_string(lua_State *L, const sx_codec *c, int idx, void *sk, const char *what) {
  size_t len;
  const char *s = lua_tolstring(L, idx, &len), *path = NULL;
  char *data = NULL;
  long dlen;
  int n;
  BIO *mem = NULL;
  ERR_clear_error();
  if (sx_is_pem_text(s, len)) {
    n = decode_into(c, s, len, sk, 0);
  } else {
    path = s;
    if ((mem = sx_open_file(L, path, len, what)) == NULL) return 0;
    dlen = BIO_get_mem_data(mem, &data);
    n = decode_into(c, data, dlen > 0 ? (size_t)dlen : 0, sk, 0);
    BIO_free(mem);
  }
  if (n > 0) return 1;
  if (n < 0) sx_push_ssl_failure(L, what, path, "file");
  else if (path != NULL) sx_push_failure(L, "file", "%s: %s: no %s found", what, path, c->noun);
  else sx_push_failure(L, "file", "%s: no %s found", what, c->noun);
  return 0;
}

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

/* The type name for "expected, got ..." messages: the object's class when it has one. */
static const char *type_name(lua_State *L, int idx) {
  const char *name = luaL_typename(L, idx);
  if (luaL_getmetafield(L, idx, "__name")) {
    if (lua_type(L, -1) == LUA_TSTRING) name = lua_tostring(L, -1);  /* kept by the metatable */
    lua_pop(L, 1);
  }
  return name;
}

static int type_error(lua_State *L, int arg, const char *expected) {
  return luaL_argerror(L, arg, lua_pushfstring(L, "%s expected, got %s", expected,
                                               type_name(L, arg)));
}

/* Created closed, filled once the certificate is in hand (as liolib does with files). */
static sx_x509 *x509_new_closed(lua_State *L) {
  sx_x509 *u = (sx_x509 *)sx_newuserdata(L, sizeof *u);
  u->x = NULL;
  luaL_setmetatable(L, SX_X509_MT);
  return u;
}

void sx_x509_push(lua_State *L, X509 *x) {
  sx_x509 *u;
  if (x == NULL) {
    lua_pushnil(L);
    return;
  }
  u = x509_new_closed(L);
  X509_up_ref(x);
  u->x = x;
}

X509 *sx_x509_test(lua_State *L, int arg) {
  sx_x509 *u = (sx_x509 *)luaL_testudata(L, arg, SX_X509_MT);
  return u != NULL ? u->x : NULL;
}

X509 *sx_x509_check(lua_State *L, int arg) {
  sx_x509 *u = (sx_x509 *)luaL_testudata(L, arg, SX_X509_MT);
  if (u == NULL) return (type_error(L, arg, SX_X509_MT), (X509 *)NULL);
  if (u->x == NULL) luaL_argerror(L, arg, "x509 is closed");
  return u->x;
}

static int x509_release(lua_State *L) {
  sx_x509 *u = (sx_x509 *)luaL_checkudata(L, 1, SX_X509_MT);
  if (u->x != NULL) X509_free(u->x);
  u->x = NULL;
  return 0;
}

/* sslctx.x509(pem_or_der) -> x509 | nil, msg, "file".  PEM: the first certificate. */
int sx_x509_new(lua_State *L) {
  size_t len;
  const char *s = luaL_checklstring(L, 1, &len);
  sx_x509 *u = x509_new_closed(L);
  STACK_OF(X509) *sk = sk_X509_new_null();
  int n;
  ERR_clear_error();
  n = sk != NULL ? decode_into(&cert_codec, s, len, sk, 1) : -1;
  if (n > 0) u->x = sk_X509_shift(sk);
  sk_X509_pop_free(sk, X509_free);
  if (n < 0) return sx_push_error(L, "x509", "file");
  if (n == 0) return sx_push_failure(L, "file", "x509: no certificate found");
  return 1;
}

static int x509_subject(lua_State *L) {
  return push_name(L, X509_get_subject_name(sx_x509_check(L, 1)), "subject");
}

static int x509_issuer(lua_State *L) {
  return push_name(L, X509_get_issuer_name(sx_x509_check(L, 1)), "issuer");
}

static int x509_serial(lua_State *L) {
  push_integer_hex(L, X509_get0_serialNumber(sx_x509_check(L, 1)));
  return 1;
}

static int x509_not_before(lua_State *L) {
  return push_time(L, X509_get0_notBefore(sx_x509_check(L, 1)), "not_before");
}

static int x509_not_after(lua_State *L) {
  return push_time(L, X509_get0_notAfter(sx_x509_check(L, 1)), "not_after");
}

/* 1 for v1 ... 3 for v3, as `openssl x509 -text` shows it. */
static int x509_version(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)X509_get_version(sx_x509_check(L, 1)) + 1);
  return 1;
}

/* x509:signature_name() -> the signature algorithm's name, as `openssl x509 -text` prints
 * it ("sha256WithRSAEncryption", "ecdsa-with-SHA256", "ED25519"); the OID in dotted form
 * when OpenSSL has no name for it. */
static int x509_signature_name(lua_State *L) {
  X509 *x = sx_x509_check(L, 1);
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
  X509 *x = sx_x509_check(L, 1);
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

static int x509_pem(lua_State *L) {
  X509 *x = sx_x509_check(L, 1);
  BIO *b = sx_membio_push(L);
  ERR_clear_error();
  if (b == NULL || !PEM_write_bio_X509(b, x)) {
    sx_membio_pop(L);
    return sx_push_error(L, "pem", "ssl");
  }
  sx_membio_result(L);
  return 1;
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
  return push_der(L, sx_x509_check(L, 1), x509_i2d);
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
  X509 *x = sx_x509_check(L, 1);
  sx_holder *h;
  GENERAL_NAMES *gens;
  int i, res;
  lua_createtable(L, 0, 4);
  res = lua_gettop(L);
  for (i = 0; i < 4; i++) {
    lua_newtable(L);
    lua_setfield(L, res, keys[i]);
  }
  h = holder_push(L);
  h->free_fn = free_general_names;
  h->p = gens = (GENERAL_NAMES *)X509_get_ext_d2i(x, NID_subject_alt_name, NULL, NULL);
  for (i = 0; gens != NULL && i < sk_GENERAL_NAME_num(gens); i++)
    append_general_name(L, res, sk_GENERAL_NAME_value(gens, i));
  holder_release(h);  /* frees the names now */
  lua_pop(L, 1);
  ERR_clear_error();  /* an absent or malformed extension is just no names */
  return 1;
}

/* A DNS name is matched as OpenSSL's hostname verification does (wildcards, the subject CN
 * only when there is no DNS SAN); an IP literal against the iPAddress SANs. */
static int x509_check_host(lua_State *L) {
  X509 *x = sx_x509_check(L, 1);
  size_t len;
  const char *name = luaL_checklstring(L, 2, &len);
  int r;
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
  X509 *x = sx_x509_check(L, 1);
  EVP_PKEY *k;
  ERR_clear_error();
  if ((k = X509_get0_pubkey(x)) == NULL) return sx_push_error(L, "public_key", "ssl");
  sx_pkey_push(L, k);
  return 1;
}

/* x:issued_by(ca): ca's subject and key identifiers match x's issuer and x is signable by
 * ca (its signature is not checked). */
static int x509_issued_by(lua_State *L) {
  X509 *x = sx_x509_check(L, 1);
  X509 *ca = sx_x509_check(L, 2);
  lua_pushboolean(L, X509_check_issued(ca, x) == X509_V_OK);
  ERR_clear_error();
  return 1;
}

static int x509_tostring(lua_State *L) {
  sx_x509 *u = (sx_x509 *)luaL_checkudata(L, 1, SX_X509_MT);
  if (u->x == NULL) {
    lua_pushliteral(L, "sslctx.x509 (closed)");
    return 1;
  }
  lua_pushliteral(L, "sslctx.x509: ");
  if (push_name(L, X509_get_subject_name(u->x), "subject") != 1) {
    lua_pop(L, 3);
    lua_pushliteral(L, "?");
  }
  lua_concat(L, 2);
  return 1;
}

/* Equal when both are open and their DER encodings are the same. */
static int x509_eq(lua_State *L) {
  X509 *a = sx_x509_test(L, 1), *b = sx_x509_test(L, 2);
  lua_pushboolean(L, a != NULL && b != NULL && X509_cmp(a, b) == 0);
  return 1;
}

/* ---- CRL objects --------------------------------------------------------- */

static sx_crl *crl_new_closed(lua_State *L) {
  sx_crl *u = (sx_crl *)sx_newuserdata(L, sizeof *u);
  u->crl = NULL;
  luaL_setmetatable(L, SX_CRL_MT);
  return u;
}

static X509_CRL *crl_test(lua_State *L, int arg) {
  sx_crl *u = (sx_crl *)luaL_testudata(L, arg, SX_CRL_MT);
  return u != NULL ? u->crl : NULL;
}

static X509_CRL *crl_check(lua_State *L, int arg) {
  sx_crl *u = (sx_crl *)luaL_testudata(L, arg, SX_CRL_MT);
  if (u == NULL) return (type_error(L, arg, SX_CRL_MT), (X509_CRL *)NULL);
  if (u->crl == NULL) luaL_argerror(L, arg, "crl is closed");
  return u->crl;
}

static int crl_release(lua_State *L) {
  sx_crl *u = (sx_crl *)luaL_checkudata(L, 1, SX_CRL_MT);
  if (u->crl != NULL) X509_CRL_free(u->crl);
  u->crl = NULL;
  return 0;
}

/* sslctx.crl(pem_or_der) -> crl | nil, msg, "file".  PEM: the first CRL. */
int sx_crl_new(lua_State *L) {
  size_t len;
  const char *s = luaL_checklstring(L, 1, &len);
  sx_crl *u = crl_new_closed(L);
  STACK_OF(X509_CRL) *sk = sk_X509_CRL_new_null();
  int n;
  ERR_clear_error();
  n = sk != NULL ? decode_into(&crl_codec, s, len, sk, 1) : -1;
  if (n > 0) u->crl = sk_X509_CRL_shift(sk);
  sk_X509_CRL_pop_free(sk, X509_CRL_free);
  if (n < 0) return sx_push_error(L, "crl", "file");
  if (n == 0) return sx_push_failure(L, "file", "crl: no CRL found");
  return 1;
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
  X509_CRL *crl = crl_check(L, 1);
  BIO *b = sx_membio_push(L);
  ERR_clear_error();
  if (b == NULL || !PEM_write_bio_X509_CRL(b, crl)) {
    sx_membio_pop(L);
    return sx_push_error(L, "pem", "ssl");
  }
  sx_membio_result(L);
  return 1;
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
    r = X509_CRL_get0_by_cert(crl, &rev, sx_x509_check(L, 2));
  } else {
    return type_error(L, 2, "string or " SX_X509_MT);
  }
  ERR_clear_error();
  lua_pushboolean(L, r == 1);
  return 1;
}

static int crl_tostring(lua_State *L) {
  sx_crl *u = (sx_crl *)luaL_checkudata(L, 1, SX_CRL_MT);
  if (u->crl == NULL) {
    lua_pushliteral(L, "sslctx.crl (closed)");
    return 1;
  }
  lua_pushliteral(L, "sslctx.crl: ");
  if (push_name(L, X509_CRL_get_issuer(u->crl), "issuer") != 1) {
    lua_pop(L, 3);
    lua_pushliteral(L, "?");
  }
  lua_concat(L, 2);
  return 1;
}

/* Equal when both are open and have the same encoding (X509_CRL_match: their digests). */
static int crl_eq(lua_State *L) {
  X509_CRL *a = crl_test(L, 1), *b = crl_test(L, 2);
  lua_pushboolean(L, a != NULL && b != NULL && X509_CRL_match(a, b) == 0);
  return 1;
}

/* ---- loaders ------------------------------------------------------------- */

/* One loader per kind: how to add an object of ours found in a Lua value. */
typedef struct sx_loader {
  const sx_codec *codec;
  const char *mt;                      /* the object class accepted */
  const char *closed;                  /* message for a closed one */
  const char *expected;                /* for type errors: a single item */
  void *(*new_stack)(void);
  void (*free_stack)(void *sk);
  int (*add_object)(void *sk, void *ud);   /* up-refs; 0 when out of memory */
} sx_loader;

static void *cert_stack_new(void) { return sk_X509_new_null(); }
static void *crl_stack_new(void) { return sk_X509_CRL_new_null(); }

static int cert_add_object(void *sk, void *ud) {
  X509 *x = ((sx_x509 *)ud)->x;
  X509_up_ref(x);
  return add_or_free(&cert_codec, sk, x);
}

static int crl_add_object(void *sk, void *ud) {
  X509_CRL *crl = ((sx_crl *)ud)->crl;
  X509_CRL_up_ref(crl);
  return add_or_free(&crl_codec, sk, crl);
}

static const sx_loader cert_loader = {
  &cert_codec, SX_X509_MT, "x509 is closed",
  "PEM text, file name or " SX_X509_MT,
  cert_stack_new, free_x509_stack, cert_add_object
};

static const sx_loader crl_loader = {
  &crl_codec, SX_CRL_MT, "crl is closed",
  "PEM text, file name or " SX_CRL_MT,
  crl_stack_new, free_crl_stack, crl_add_object
};

/* The value at idx is a string or an open object of the loader's class; raises naming the
 * caller's argument or option w (and the array position, when pos > 0) otherwise. */
static void check_item(lua_State *L, const sx_loader *ld, sx_where w, int idx, int pos) {
  void *ud;
  const char *problem = NULL;
  if (lua_type(L, idx) == LUA_TSTRING) return;
  ud = luaL_testudata(L, idx, ld->mt);
  /* Both object structs hold just their OpenSSL pointer, NULL once released. */
  if (ud != NULL && *(void **)ud != NULL) return;
  if (ud != NULL) problem = ld->closed;
  else problem = lua_pushfstring(L, "%s%s expected, got %s", ld->expected,
                                 pos > 0 ? "" : " (or an array of them)", type_name(L, idx));
  if (pos > 0) problem = lua_pushfstring(L, "item %d: %s", pos, problem);
  sx_where_error(L, w, problem);
}

/* One string or object at idx, into sk.  1, or 0 with nil,msg,kind pushed. */
static int load_item(lua_State *L, const sx_loader *ld, int idx, void *sk, const char *what) {
  if (lua_type(L, idx) == LUA_TSTRING) return decode_string(L, ld->codec, idx, sk, what);
  ERR_clear_error();
  if (ld->add_object(sk, lua_touserdata(L, idx))) return 1;
  sx_push_error(L, what, "file");
  return 0;
}

static void *load_all(lua_State *L, const sx_loader *ld, int arg, const char *what, sx_where w) {
  int i, n = 0, ok = 1, hidx;
  sx_holder *h;
  void *sk;
  arg = lua_absindex(L, arg);
  if (lua_type(L, arg) == LUA_TTABLE) {
    n = (int)lua_rawlen(L, arg);
    for (i = 1; i <= n; i++) {
      lua_rawgeti(L, arg, i);
      check_item(L, ld, w, lua_gettop(L), i);
      lua_pop(L, 1);
    }
  } else {
    check_item(L, ld, w, arg, 0);
  }
  /* The stack is held by the Lua stack until it is handed over. */
  h = holder_push(L);
  hidx = lua_gettop(L);
  h->free_fn = ld->free_stack;
  if ((h->p = sk = ld->new_stack()) == NULL) {
    sx_push_error(L, what, "file");
    ok = 0;
  } else if (lua_type(L, arg) != LUA_TTABLE) {
    ok = load_item(L, ld, arg, sk, what);
  } else if (n == 0) {
    sx_push_failure(L, "file", "%s: no %s given (empty list)", what, ld->codec->noun);
    ok = 0;
  } else {
    for (i = 1; ok && i <= n; i++) {
      lua_rawgeti(L, arg, i);
      ok = load_item(L, ld, lua_gettop(L), sk, what);
      if (ok) lua_pop(L, 1);
      else lua_remove(L, -4);   /* the item, below nil,msg,kind */
    }
  }
  if (ok) h->p = NULL;        /* handed to the caller */
  else holder_release(h);
  lua_remove(L, hidx);
  return ok ? sk : NULL;
}

STACK_OF(X509) *sx_load_certs(lua_State *L, int idx, const char *what, sx_where w) {
  return (STACK_OF(X509) *)load_all(L, &cert_loader, idx, what, w);
}

STACK_OF(X509_CRL) *sx_load_crls(lua_State *L, int idx, sx_where w) {
  return (STACK_OF(X509_CRL) *)load_all(L, &crl_loader, idx, "crl", w);
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
  static const luaL_Reg no_methods[] = {{NULL, NULL}};
  static const luaL_Reg holder_meta[] = {{"__gc", holder_gc}, {NULL, NULL}};
  sx_register_class(L, SX_X509_MT, x509_methods, x509_meta);
  sx_register_class(L, SX_CRL_MT, crl_methods, crl_meta);
  sx_register_class(L, SX_HOLDER_MT, no_methods, holder_meta);
}
