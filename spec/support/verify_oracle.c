/* verify_oracle.c: what OpenSSL itself does, for comparison with a Lua verify callback.
 *
 * Runs X509_verify_cert the way libssl does during a handshake (ssl_verify_cert_chain:
 * the peer's chain as the untrusted set, the "ssl_server"/"ssl_client" defaults, the
 * expected host name, the security level as auth level) with a verify callback that
 * records every call, and prints one line per call:
 *
 *     step <depth> <ok 0|1> <error> <chain length> <sha256 of the current cert>
 *
 * then "result <X509_STORE_CTX_get_error at the end> <X509_verify_cert's return>".
 *
 * usage: verify_oracle ssl_server|ssl_client CAfile chainfile host|- keep|accept [auth_level]
 *   keep:   the callback returns ok (what a Lua callback returning nil does)
 *   accept: the callback returns 1 and clears the error (what returning true does) */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509_vfy.h>
#include <openssl/evp.h>

static int accept_all = 0;

static int record(int ok, X509_STORE_CTX *st) {
  X509 *x = X509_STORE_CTX_get_current_cert(st);
  STACK_OF(X509) *chain = X509_STORE_CTX_get0_chain(st);
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int n = 0, i;
  printf("step %d %d %d %d ", X509_STORE_CTX_get_error_depth(st), ok ? 1 : 0,
         X509_STORE_CTX_get_error(st), chain != NULL ? sk_X509_num(chain) : 0);
  if (x != NULL && X509_digest(x, EVP_sha256(), md, &n)) {
    for (i = 0; i < n; i++) printf("%02x", md[i]);
  } else {
    printf("-");
  }
  printf("\n");
  if (accept_all) {
    if (!ok) X509_STORE_CTX_set_error(st, X509_V_OK);
    return 1;
  }
  return ok;
}

int main(int argc, char **argv) {
  X509_STORE *store;
  X509_STORE_CTX *ctx;
  STACK_OF(X509) *chain;
  X509 *x;
  FILE *f;
  int r;
  if (argc < 6) {
    fprintf(stderr, "usage: %s purpose CAfile chain host|- keep|accept [auth_level]\n", argv[0]);
    return 2;
  }
  accept_all = strcmp(argv[5], "accept") == 0;
  store = X509_STORE_new();
  if (store == NULL || !X509_STORE_load_locations(store, argv[2], NULL)) {
    fprintf(stderr, "cannot load %s\n", argv[2]);
    return 2;
  }
  chain = sk_X509_new_null();
  f = fopen(argv[3], "r");
  if (f == NULL) {
    fprintf(stderr, "cannot open %s\n", argv[3]);
    return 2;
  }
  while ((x = PEM_read_X509(f, NULL, NULL, NULL)) != NULL) sk_X509_push(chain, x);
  fclose(f);
  if (sk_X509_num(chain) == 0) {
    fprintf(stderr, "no certificate in %s\n", argv[3]);
    return 2;
  }
  ctx = X509_STORE_CTX_new();
  if (!X509_STORE_CTX_init(ctx, store, sk_X509_value(chain, 0), chain)) return 2;
  X509_STORE_CTX_set_default(ctx, argv[1]);
  if (strcmp(argv[4], "-") != 0)
    X509_VERIFY_PARAM_set1_host(X509_STORE_CTX_get0_param(ctx), argv[4], 0);
  X509_VERIFY_PARAM_set_auth_level(X509_STORE_CTX_get0_param(ctx), argc > 6 ? atoi(argv[6]) : 1);
  X509_STORE_CTX_set_verify_cb(ctx, record);
  r = X509_verify_cert(ctx);
  printf("result %d %d\n", X509_STORE_CTX_get_error(ctx), r);
  return 0;
}
