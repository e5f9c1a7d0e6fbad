/* fixture_verify.c: a trusted native verify callback for the "/absolute/path/lib.so:symbol"
 * form of doc/reference.md "Verification modes".  Compiled at test time by spec/support/callbacks.lua.
 *
 * Observable behaviour: keeps OpenSSL's verdict above the leaf, and rejects the leaf
 * (depth 0) with X509_V_ERR_CERT_REJECTED (28), a code neither OpenSSL nor the module's
 * own callbacks (which use 50) would produce on a good chain.  A second symbol counts calls
 * so that a spec can see that the function really ran. */
#include <openssl/x509.h>
#include <openssl/x509_vfy.h>

static int calls = 0;

int fixture_verify(int ok, X509_STORE_CTX *st);
int fixture_accept_count(int ok, X509_STORE_CTX *st);
int fixture_calls(void);

int fixture_verify(int ok, X509_STORE_CTX *st) {
  calls++;
  if (X509_STORE_CTX_get_error_depth(st) == 0) {
    X509_STORE_CTX_set_error(st, X509_V_ERR_CERT_REJECTED);
    return 0;
  }
  return ok;
}

/* Accepts everything (and clears the error), counting its calls. */
int fixture_accept_count(int ok, X509_STORE_CTX *st) {
  (void)ok;
  calls++;
  X509_STORE_CTX_set_error(st, X509_V_OK);
  return 1;
}

int fixture_calls(void) {
  return calls;
}
