/* tickets.c: session ticket keys of a server context.
 *
 * Every server context encrypts its tickets with keys of its own, through OpenSSL's ticket
 * key callback (AES-256-CBC with HMAC-SHA256, nginx's 80-byte ssl_session_ticket_key layout:
 * 16 bytes name, 32 bytes HMAC secret, 32 bytes AES key):
 * - keys the context makes itself rotate: a new encrypting key every ticket_key_rotation
 *   seconds, older keys still decrypting for seven periods after they stopped encrypting,
 *   then dropped (their tickets get a full handshake).  A process that runs for months never
 *   puts every resumable session under one key;
 * - keys given with ctx:set_ticket_keys are the application's (shared by the processes of a
 *   pool, rotated by it): the first encrypts, all decrypt, the module never rotates them.
 * A ticket under a key other than the first is accepted and renewed under the first.
 * Key bytes never reach a message, and are cleansed when dropped. */
#define _POSIX_C_SOURCE 200809L   /* clock_gettime under -std=c99 */
#include <string.h>
#include <time.h>
#include <openssl/rand.h>
#include "private.h"
#if SX_OPENSSL3
#include <openssl/core_names.h>
#endif

#define KEY_BYTES 80
#define MAX_APP_KEYS 64
#define KEPT_PERIODS 7

struct sx_ticket_key {
  unsigned char name[16];
  unsigned char hmac[32];
  unsigned char aes[32];
  double born;      /* made-here keys: when it started encrypting */
};

static double now_seconds(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void keys_free(sx_tickets *t) {
  if (t->keys != NULL) OPENSSL_clear_free(t->keys, sizeof *t->keys * (size_t)t->cap);
  t->keys = NULL;
  t->n = t->cap = 0;
}

void sx_tickets_free(sx_tickets *t) {
  keys_free(t);
}

/* Made-here keys: a new one at the front when the first has encrypted for a period; those
 * whose encrypting period ended more than seven periods ago go.  Key i stopped encrypting
 * when key i-1 was born (no ticket was made in between: every use checks this first).
 * 0 when no key could be made (then no ticket is issued or accepted). */
static int rotate_if_due(sx_tickets *t, double now) {
  int i;
  if (t->app) return t->n > 0;
  if (t->keys == NULL) {
    t->cap = KEPT_PERIODS + 1;
    t->keys = (struct sx_ticket_key *)OPENSSL_zalloc(sizeof *t->keys * (size_t)t->cap);
    if (t->keys == NULL) {
      t->cap = 0;
      return 0;
    }
  }
  if (t->n == 0 || now - t->keys[0].born >= t->rotation) {
    struct sx_ticket_key fresh;
    if (RAND_bytes((unsigned char *)&fresh, KEY_BYTES) != 1) {
      ERR_clear_error();
      return t->n > 0;
    }
    /* scheduled, not observed: a key unused for a while still ends where its period ends */
    fresh.born = t->n == 0 ? now : t->keys[0].born + t->rotation;
    while (now - fresh.born >= t->rotation) fresh.born += t->rotation;
    if (t->n == t->cap) {
      t->n--;
      OPENSSL_cleanse(&t->keys[t->n], sizeof t->keys[t->n]);
    }
    memmove(&t->keys[1], &t->keys[0], sizeof *t->keys * (size_t)t->n);
    t->keys[0] = fresh;
    OPENSSL_cleanse(&fresh, sizeof fresh);
    t->n++;
  }
  for (i = 1; i < t->n; i++) {
    if (now - t->keys[i - 1].born >= KEPT_PERIODS * t->rotation) {   /* key i ended then */
      OPENSSL_cleanse(&t->keys[i], sizeof *t->keys * (size_t)(t->n - i));
      t->n = i;
      break;
    }
  }
  return 1;
}

#if SX_OPENSSL3
static int set_hmac(EVP_MAC_CTX *hctx, const unsigned char *key) {
  OSSL_PARAM params[3];
  params[0] = OSSL_PARAM_construct_octet_string(OSSL_MAC_PARAM_KEY, (void *)key, 32);
  params[1] = OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, (char *)"SHA256", 0);
  params[2] = OSSL_PARAM_construct_end();
  return EVP_MAC_CTX_set_params(hctx, params);
}
typedef EVP_MAC_CTX sx_hmac_ctx;
#else
static int set_hmac(HMAC_CTX *hctx, const unsigned char *key) {
  return HMAC_Init_ex(hctx, key, 32, EVP_sha256(), NULL);
}
typedef HMAC_CTX sx_hmac_ctx;
#endif

/* The context whose keys a connection's tickets use: the one it was made from (OpenSSL's
 * session context), also after a servername switch. */
static int ticket_cb(SSL *ssl, unsigned char *key_name, unsigned char *iv, EVP_CIPHER_CTX *cctx,
                     sx_hmac_ctx *hctx, int enc) {
  sx_conn *conn = (sx_conn *)SSL_get_ex_data(ssl, sx_ssl_ex_index);
  sx_tickets *t = conn != NULL && conn->origin != NULL ? &conn->origin->tickets : NULL;
  int i;
  if (t == NULL || !rotate_if_due(t, now_seconds())) return enc ? -1 : 0;
  if (enc) {
    struct sx_ticket_key *k = &t->keys[0];
    conn->ticket_issued = 1;   /* the client resumes with it: no session store entry */
    if (RAND_bytes(iv, 16) != 1) return -1;
    memcpy(key_name, k->name, 16);
    if (!EVP_EncryptInit_ex(cctx, EVP_aes_256_cbc(), NULL, k->aes, iv) || !set_hmac(hctx, k->hmac))
      return -1;
    return 1;
  }
  for (i = 0; i < t->n; i++) {
    struct sx_ticket_key *k = &t->keys[i];
    if (CRYPTO_memcmp(key_name, k->name, 16) != 0) continue;
    if (!set_hmac(hctx, k->hmac) || !EVP_DecryptInit_ex(cctx, EVP_aes_256_cbc(), NULL, k->aes, iv))
      return -1;
    return i == 0 ? 1 : 2;   /* 2: valid, renew it under the first key */
  }
  return 0;   /* an unknown (or dropped) key: a full handshake */
}

/* Server contexts: the callback, and made-here keys rotating every `seconds`. */
void sx_tickets_init(SSL_CTX *ctx, sx_tickets *t, double seconds) {
  t->rotation = seconds;
#if SX_OPENSSL3
  SSL_CTX_set_tlsext_ticket_key_evp_cb(ctx, ticket_cb);
#else
  SSL_CTX_set_tlsext_ticket_key_cb(ctx, ticket_cb);
#endif
}

/* ctx:set_ticket_keys(keys) -> true: the application's keys replace whatever the context had
 * (made-here keys stop rotating for good). */
int sx_tickets_set(lua_State *L, sx_tickets *t, int idx) {
  int i, n;
  struct sx_ticket_key *keys;
  luaL_checktype(L, idx, LUA_TTABLE);
  n = (int)lua_rawlen(L, idx);
  if (n < 1) return luaL_argerror(L, idx, "a non-empty list of 80-byte keys expected");
  if (n > MAX_APP_KEYS)
    return luaL_argerror(L, idx, lua_pushfstring(L, "at most %d keys", MAX_APP_KEYS));
  for (i = 1; i <= n; i++) {   /* every entry checked before anything changes */
    lua_rawgeti(L, idx, i);
    if (lua_type(L, -1) != LUA_TSTRING)
      return luaL_argerror(L, idx, lua_pushfstring(L, "key #%d: an 80-byte string expected, "
                                                          "got %s", i, luaL_typename(L, -1)));
    if (lua_rawlen(L, -1) != KEY_BYTES)
      return luaL_argerror(L, idx, lua_pushfstring(L, "key #%d: must be 80 bytes (nginx's "
                                                          "ssl_session_ticket_key format), not %d",
                                                       i, (int)lua_rawlen(L, -1)));
    lua_pop(L, 1);
  }
  keys = (struct sx_ticket_key *)OPENSSL_zalloc(sizeof *keys * (size_t)n);
  if (keys == NULL) return luaL_error(L, "out of memory");
  for (i = 1; i <= n; i++) {
    lua_rawgeti(L, idx, i);
    memcpy(&keys[i - 1], lua_tostring(L, -1), KEY_BYTES);
    lua_pop(L, 1);
  }
  keys_free(t);
  t->keys = keys;
  t->n = t->cap = n;
  t->app = 1;
  return 0;
}
