/* fuzz/common.c: the embedded Lua state, the throwaway key material, invariant checks. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include "common.h"

int luaopen_sslctx_core(lua_State *L);

lua_State *fz_L = NULL;
const char *fz_cert_pem = NULL;
const char *fz_key_pem = NULL;
const char *fz_crl_pem = NULL;

void fz_fail(const char *what, const char *detail) {
  fprintf(stderr, "\nsslctx fuzz: INVARIANT BROKEN: %s\n  %s\n", what, detail ? detail : "");
  fflush(stderr);
  abort();
}

static char *bio_string(BIO *b) {
  char *data = NULL, *copy;
  long n = BIO_get_mem_data(b, &data);
  copy = malloc((size_t)n + 1);
  if (copy == NULL) fz_fail("out of memory", "bio_string");
  memcpy(copy, data, (size_t)n);
  copy[n] = '\0';
  return copy;
}

/* EC P-256 key, self-signed certificate and an empty CRL, in PEM. */
static void make_material(void) {
  EVP_PKEY *key = EVP_EC_gen("P-256");
  X509 *x = X509_new();
  X509_NAME *name = X509_NAME_new();
  X509_CRL *crl = X509_CRL_new();
  X509V3_CTX v3;
  X509_EXTENSION *ext;
  BIO *b;
  if (key == NULL || x == NULL || name == NULL || crl == NULL) fz_fail("key material", "alloc");
  X509_set_version(x, 2);
  ASN1_INTEGER_set(X509_get_serialNumber(x), 4242);
  X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)"localhost", -1, -1, 0);
  X509_set_subject_name(x, name);
  X509_set_issuer_name(x, name);
  X509_gmtime_adj(X509_getm_notBefore(x), -3600);
  X509_gmtime_adj(X509_getm_notAfter(x), 3600L * 24 * 365);
  X509_set_pubkey(x, key);
  X509V3_set_ctx(&v3, x, x, NULL, NULL, 0);
  ext = X509V3_EXT_conf_nid(NULL, &v3, NID_subject_alt_name, "DNS:localhost,IP:127.0.0.1");
  X509_add_ext(x, ext, -1);
  X509_EXTENSION_free(ext);
  ext = X509V3_EXT_conf_nid(NULL, &v3, NID_basic_constraints, "critical,CA:TRUE");
  X509_add_ext(x, ext, -1);
  X509_EXTENSION_free(ext);
  if (!X509_sign(x, key, EVP_sha256())) fz_fail("key material", "X509_sign");
  X509_CRL_set_version(crl, 1);
  X509_CRL_set_issuer_name(crl, name);
  {
    ASN1_TIME *t = ASN1_TIME_new();
    X509_gmtime_adj(t, -3600);
    X509_CRL_set1_lastUpdate(crl, t);
    X509_gmtime_adj(t, 3600L * 24 * 30);
    X509_CRL_set1_nextUpdate(crl, t);
    ASN1_TIME_free(t);
  }
  if (!X509_CRL_sign(crl, key, EVP_sha256())) fz_fail("key material", "X509_CRL_sign");

  b = BIO_new(BIO_s_mem());
  PEM_write_bio_X509(b, x);
  fz_cert_pem = bio_string(b);
  BIO_free(b);
  b = BIO_new(BIO_s_mem());
  PEM_write_bio_PKCS8PrivateKey(b, key, NULL, NULL, 0, NULL, NULL);
  fz_key_pem = bio_string(b);
  BIO_free(b);
  b = BIO_new(BIO_s_mem());
  PEM_write_bio_X509_CRL(b, crl);
  fz_crl_pem = bio_string(b);
  BIO_free(b);
  X509_CRL_free(crl);
  X509_NAME_free(name);
  X509_free(x);
  EVP_PKEY_free(key);
}

void fz_dostring(const char *chunk, const char *name) {
  if (luaL_loadbuffer(fz_L, chunk, strlen(chunk), name) != LUA_OK ||
      lua_pcall(fz_L, 0, 0, 0) != LUA_OK)
    fz_fail("setup chunk failed", lua_tostring(fz_L, -1));
}

void fz_init(void) {
  if (fz_L != NULL) return;
  make_material();
  fz_L = luaL_newstate();
  if (fz_L == NULL) fz_fail("luaL_newstate", NULL);
  luaL_openlibs(fz_L);
  luaL_getsubtable(fz_L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
  lua_pushcfunction(fz_L, luaopen_sslctx_core);
  lua_setfield(fz_L, -2, "sslctx.core");
  lua_pop(fz_L, 1);
  lua_pushstring(fz_L, fz_cert_pem);
  lua_setglobal(fz_L, "CERT_PEM");
  lua_pushstring(fz_L, fz_key_pem);
  lua_setglobal(fz_L, "KEY_PEM");
  lua_pushstring(fz_L, fz_crl_pem);
  lua_setglobal(fz_L, "CRL_PEM");
  fz_dostring("sslctx = require 'sslctx.core'", "=init");
}

void fz_end_input(void) {
  lua_settop(fz_L, 0);
  lua_gc(fz_L, LUA_GCCOLLECT, 0);
  lua_gc(fz_L, LUA_GCCOLLECT, 0);
}

static const char *const kinds[] = {
  "want_read", "want_write", "want_retry_verify", "verify", "callback", "closed", "eof", "ssl",
  "syscall", "file", "key", "timeout", NULL
};

int fz_check_outcome(int status, int base, const char *what) {
  int top = lua_gettop(fz_L), i;
  if (status != LUA_OK) {
    if (lua_type(fz_L, -1) != LUA_TSTRING) fz_fail("an error that is not a string", what);
    return 0;
  }
  if (top - base >= 2 && lua_isnil(fz_L, base + 1) && !lua_isnil(fz_L, base + 2)) {
    if (lua_type(fz_L, base + 2) != LUA_TSTRING) fz_fail("nil, <not a string>", what);
    if (top - base >= 3 && !lua_isnil(fz_L, base + 3)) {
      const char *k = lua_tostring(fz_L, base + 3);
      int known = 0;
      for (i = 0; k != NULL && kinds[i] != NULL; i++) known |= strcmp(k, kinds[i]) == 0;
      if (!known) fz_fail("nil, msg, <unknown kind>", k != NULL ? k : what);
    }
  }
  return 1;
}

int fz_u8(fz_reader *r) {
  if (r->n == 0) return 0;
  r->n--;
  return *r->p++;
}

uint64_t fz_u64(fz_reader *r) {
  uint64_t v = 0;
  int i;
  for (i = 0; i < 8; i++) v |= (uint64_t)fz_u8(r) << (8 * i);
  return v;
}

size_t fz_take(fz_reader *r, size_t max, const uint8_t **out) {
  size_t k = max < r->n ? max : r->n;
  *out = r->p;
  r->p += k;
  r->n -= k;
  return k;
}
