/* fuzz/common.h: what the sslctx libFuzzer targets share.
 *
 * Every target embeds a Lua 5.4 state with the module linked in (its sources are compiled
 * into the fuzzer with the same sanitizers), preloaded as "sslctx.core", and drives it
 * through the Lua C API exactly as a Lua program would: values are pushed and methods are
 * called under lua_pcall, so a raised error is an ordinary outcome and only a crash, a
 * sanitizer report or a broken invariant (fz_fail) is a finding.
 *
 * A throwaway EC P-256 key and a self-signed certificate for "localhost" are generated at
 * start-up (no private key is ever committed) and are available as PEM text. */
#ifndef SSLCTX_FUZZ_COMMON_H
#define SSLCTX_FUZZ_COMMON_H

#include <stddef.h>
#include <stdint.h>
#include <lua.h>
#include <lauxlib.h>
#include <lualib.h>

/* The shared state: created once by fz_init (idempotent). */
extern lua_State *fz_L;
extern const char *fz_cert_pem;   /* self-signed, CN=localhost, SAN DNS:localhost */
extern const char *fz_key_pem;    /* its EC private key (PKCS#8, unencrypted) */
extern const char *fz_crl_pem;    /* an empty CRL signed by that key */

/* Creates fz_L, opens the standard libraries, preloads the module, makes `sslctx` a global,
 * generates the key material and sets globals CERT_PEM, KEY_PEM, CRL_PEM. */
void fz_init(void);

/* Runs a Lua chunk (a string) in fz_L; aborts with its error if it fails (setup only). */
void fz_dostring(const char *chunk, const char *name);

/* Prints the message and the offending input (hex, first bytes) and aborts: an invariant of
 * the contract does not hold. */
void fz_fail(const char *what, const char *detail);

/* After each input: drop the stack, collect garbage fully (so finalizers run and every
 * OpenSSL object made for the input is freed before the next one: leaks show as leaks). */
void fz_end_input(void);

/* Checks the outcome of a lua_pcall (status, results on the stack above base): an error
 * must be a string; "nil, msg, kind" results must have a string message and a known kind.
 * Returns 1 when the call succeeded. */
int fz_check_outcome(int status, int base, const char *what);

/* A tiny reader over the fuzz input. */
typedef struct fz_reader {
  const uint8_t *p;
  size_t n;
} fz_reader;
int fz_u8(fz_reader *r);                  /* next byte, 0 when exhausted */
uint64_t fz_u64(fz_reader *r);            /* next 8 bytes, little endian, zero-padded */
size_t fz_take(fz_reader *r, size_t max, const uint8_t **out);   /* up to max bytes */

#endif
