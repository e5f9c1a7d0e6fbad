/* private.h: what the C files of sslctx share.  Nothing here is public API. */
#ifndef SSLCTX_PRIVATE_H
#define SSLCTX_PRIVATE_H

#include <stddef.h>
#include <stdint.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <openssl/err.h>
#include "compat.h"

/* Metatable names (also __name). */
#define SX_CTX_MT     "sslctx.context"
#define SX_CONN_MT    "sslctx.connection"
#define SX_X509_MT    "sslctx.x509"
#define SX_PKEY_MT    "sslctx.pkey"
#define SX_SESSION_MT "sslctx.session"
#define SX_STORE_MT   "sslctx.store"
#define SX_CRL_MT     "sslctx.crl"

enum { SX_CLIENT = 0, SX_SERVER = 1, SX_BOTH = 2 };

/* ---- callbacks ---------------------------------------------------------- */

typedef int (*sx_verify_fn)(int preverify_ok, X509_STORE_CTX *store);

enum { SX_CB_NONE = 0, SX_CB_LUA, SX_CB_C };

typedef struct sx_callback {
  int kind;           /* SX_CB_* */
  sx_verify_fn fn;    /* SX_CB_C: the native function */
  int wants_store;    /* SX_CB_LUA: the function can see a second argument */
  int by_name;        /* a symbol: known by its name in every process */
  uint64_t serial;    /* otherwise: never reused in this process (policy.c) */
  unsigned char name_id[32];
} sx_callback;

/* The verification policy of one side (policy.c digests it): what a connection copies at
 * creation and then changes on its own.  The X509_VERIFY_PARAM and the security level are
 * read from the object itself. */
typedef struct sx_policy {
  int mode;                        /* SSL_VERIFY_* bits */
  int soft_fail;                   /* verification failures are recorded, not fatal */
  sx_callback cb;
  int cb_named;                    /* set_session_id_context named the callbacks' share */
  unsigned char cb_name[32];
  /* What set_verify_params set that OpenSSL cannot read back (flags, depth and hosts are
   * read from the X509_VERIFY_PARAM itself): the identity depends on the state, never on the
   * order of the calls that made it. */
  int purpose;                     /* 0: none set */
  int has_time;
  int64_t time;
  char ip[48];                     /* as given; "" for none */
  unsigned char peer[32];          /* client: digest of the name it sends/checks; 0s: none */
  unsigned char dane[32];          /* running digest of set_dane and add_tlsa; 0s: none */
  unsigned char trust[32];         /* identity of the trust store in use (trust.c) */
} sx_policy;

/* ---- context ------------------------------------------------------------ */

/* Session ticket keys of a server context (tickets.c). */
struct sx_ticket_key;
typedef struct sx_tickets {
  struct sx_ticket_key *keys;   /* keys[0] encrypts; all decrypt */
  int n, cap;
  int app;                      /* given by set_ticket_keys: never rotated here */
  double rotation;              /* seconds between made-here keys */
} sx_tickets;

/* A server context's external session store (sessstore.c). */
typedef struct sx_store_cfg {
  int on;
  unsigned char key[32];        /* seals each session; never shown */
  unsigned char (*removed)[SSL_MAX_SSL_SESSION_ID_LENGTH + 1];   /* ids to remove: len, id */
  int n_removed, cap_removed;
  long dropped;                 /* removals lost because the queue was full */
} sx_store_cfg;

typedef struct sx_ctx {
  SSL_CTX *ctx;                 /* NULL once closed */
  int side;                     /* SX_CLIENT, SX_SERVER, SX_BOTH */
  int last_side;                /* side of the last set_verification_mode (for "both") */
  sx_policy policy[2];          /* indexed by SX_CLIENT / SX_SERVER */
  int flags_explicit;           /* verify_params{flags=} given: add_crl leaves crl_check alone */
  int sid_dirty;                /* policy changed since the server's sid was derived */
  unsigned char trust_id[32];   /* identity of the trust store (trust.c) */
  char *trust_dirs;             /* hashed directories in the store, ':'-separated */
  int store_lent;               /* connections hold the current store: change a copy */
  int names_lent;               /* server connections read the client-CA list: pin it first */
  unsigned long policy_gen;     /* bumped on every change of the policy or trust */
  /* A client's identity is the same for every connection with the same name and no change
   * of its own: the last one computed is kept (policy.c). */
  char memo_host[256];
  int memo_checked;
  unsigned char memo_peer[32];  /* digest of memo_host (valid while memo_host[0]) */
  unsigned long memo_gen;       /* policy_gen + 1 while memo_sid is valid */
  unsigned char memo_sid[32];   /* the identity of a connection with memo_peer */
  unsigned char *alpn_select_wire;  /* server ALPN preference list (wire form), or NULL */
  size_t alpn_select_len;
  int post_handshake_auth;      /* client: offer TLS 1.3 post-handshake auth */
  int store_shared;             /* trusts the process-wide default store (copy on write) */
  int params_identity;          /* verify params name a host or ip: clients need no hostname */
  sx_tickets tickets;           /* server: ticket keys (until __gc: connections use them) */
  sx_store_cfg store;           /* server: the session store, if any */
  int has_session_cb;           /* client: set_session_callback gave a function */
  int ciphers_explicit;         /* ciphers were given: no server default on "both" contexts */
  int gc_debt_kb;               /* native estimate of open connections not yet told the GC */
  /* uservalue fields: "cb_client", "cb_server" (as given), "fn_client", "fn_server" (Lua
   * functions), "password", "alpn_select", "servername", "session_cb" */
} sx_ctx;

/* ---- connection --------------------------------------------------------- */

enum { SX_T_MEMORY = 0, SX_T_FD, SX_T_SOCKET, SX_T_BORROWED };

/* A connection's Lua slots (sx_getslot / sx_setslot). */
enum {
  SX_SLOT_CTX = 1,   /* the context now (an SNI switch changes it) */
  SX_SLOT_CTX0,      /* the context it was made from, kept alive across a switch */
  SX_SLOT_CB,        /* the verify callback as given */
  SX_SLOT_SOCKET,    /* the LuaSocket object of the socket transport */
  SX_SLOT_LOGGER,    /* where a borrowed connection's callback errors go */
  SX_SLOT_N = SX_SLOT_LOGGER
};

typedef struct sx_conn {
  SSL *ssl;                     /* NULL once closed */
  lua_State *L;                 /* the thread driving it, during a driving call */
  int side;                     /* SX_CLIENT / SX_SERVER */
  int busy;                     /* methods using the SSL across an allocation (nesting) */
  int close_asked;              /* close() while busy: the last of them closes it */
  int in_callback;              /* inside one of its own Lua callbacks */
  sx_policy policy;             /* copied at creation, then per-connection */
  int transport;                /* SX_T_* */
  int fd;                       /* SX_T_FD / SX_T_SOCKET */
  int close_transport;          /* close() closes the fd/socket */
  BIO *rbio, *wbio;             /* memory transport: network -> SSL, SSL -> network */
  size_t buffer_limit;          /* memory transport: 0 = none */
  int cb_failed;                /* a Lua callback failed; its message is on the stack */
  int cb_err_index;             /* stack slot of that message during the driving call */
  const char *cb_name;          /* which callback failed: "verify", "servername", ... */
  const char *fatal;            /* the kind of the failure that ended it (NULL: none): no
                                   close_notify, driving calls repeat it */
  int retry_verify;             /* RETRY was asked for in this handshake */
  int pha_requested;            /* verify_client_post_handshake was called */
  int input_ended;              /* memory transport: feed(nil) was called */
  int borrowed;                 /* someone else's SSL (hook.c): never driven or freed here */
  int named;                    /* set_policy / set_session_id_context named the policy */
  int started;                  /* client: the handshake started (its session decided) */
  int offered;                  /* client: a session was offered in this handshake */
  int switching;                /* inside the servername callback's context switch */
  int trust_unknown;            /* borrowed: its owner's store, not yet digested */
  int custom;                   /* its policy changed since it was made */
  sx_ctx *origin;               /* the context it was made from (its slot keeps it alive) */
  int ticket_issued;            /* server: this handshake sent a ticket (tickets.c) */
  unsigned long ctx_gen;        /* its context's policy_gen when it was made */
  SSL_SESSION *offer;           /* client: opts.session, until the handshake starts */
  unsigned char sid[32];        /* the session id context in force */
  unsigned sid_len;
  X509 *first_peer;             /* the first handshake's peer certificate ("once") */
} sx_conn;

/* Memory transport: what feed() takes and write() queues by default (buffer_limit). */
#define SX_DEFAULT_BUFFER_LIMIT (256 * 1024)

/* The collector sees a few hundred bytes of userdata for an object that holds tens of KB in
 * OpenSSL: each new one also counts this estimate towards the collector's pacing. */
#define SX_CONN_NATIVE_KB 32
#define SX_CTX_NATIVE_KB 64
/* Connections count towards the pacing only while they are neither closed nor collected:
 * their estimates add up on their context and go to the collector in steps of this much, and
 * close() takes a connection's share back (a program that closes what it opens makes the
 * collector do nothing extra). */
#define SX_GC_STEP_KB 256
void sx_gc_native(lua_State *L, int kb);

/* ---- shared helpers (core.c) ------------------------------------------- */

extern const void *const sx_RETRY;
extern const void *const sx_KEEP;
extern int sx_ssl_ex_index;     /* SSL ex_data: sx_conn* */
extern int sx_ctx_ex_index;     /* SSL_CTX ex_data: sx_ctx* */

void sx_register_class(lua_State *L, const char *name, const luaL_Reg *methods,
                       const luaL_Reg *metamethods);
void sx_objects_set(lua_State *L, const void *p, int idx);  /* weak map pointer -> object */
int sx_objects_push(lua_State *L, const void *p);            /* pushes object or nil; 1 if found */
void sx_objects_push_all(lua_State *L);                      /* pushes the weak map itself */
/* Pushes nil, message, kind; message = prefix ": " + the drained OpenSSL error queue. */
int sx_push_error(lua_State *L, const char *prefix, const char *kind);
/* Appends the drained error queue to the buffer (", "-separated). */
void sx_add_errors(luaL_Buffer *b);
/* Where a value came from, for error messages: argument `arg`, or option `opt` of it. */
typedef struct sx_where {
  int arg;
  const char *opt;   /* NULL for a plain argument */
} sx_where;
int sx_where_error(lua_State *L, sx_where w, const char *problem);
int sx_where_typeerror(lua_State *L, sx_where w, int idx, const char *expected);
/* Accepts "a_b" and "a-b" spellings of keyword names; -1 if unknown. */
int sx_keyword_index(const char *s, const char *const names[]);
int sx_is_pem_text(const char *s, size_t len);  /* first non-blank is "-----BEGIN" */
int sx_has_retry_verify(void);
/* Under LuaJIT: is the cdata at idx a "function" pointer / a data "pointer"? (Lua checker) */
int sx_cdata_is(lua_State *L, int idx, const char *what);                  /* runtime OpenSSL has SSL_set_retry_verify */

/* SHA-256 for policy digests (session id contexts).  A failed allocation makes the digest
 * all-zero-but-unique-per-call impossible, so sx_digest_final reports it: 0 on failure. */
typedef struct sx_digest {
  EVP_MD_CTX *md;
  int failed;
} sx_digest;
void sx_digest_init(sx_digest *d);
void sx_digest_update(sx_digest *d, const void *p, size_t n);
int sx_digest_final(sx_digest *d, unsigned char out[32]);
void sx_digest_mix(unsigned char digest[32], const char *what, const void *p, size_t n);

/* ---- x509.c / pkey.c / loaders.c ---------------------------------------- */

void sx_x509_open(lua_State *L);                 /* registers metatables */
void sx_x509_push(lua_State *L, X509 *x);        /* up-refs x */
X509 *sx_x509_test(lua_State *L, int arg);       /* NULL unless an open x509 */
/* Loads one or more certificates (PEM text, PEM/DER file, or an x509 object) at arg.
 * Returns a stack of up-ref'd certificates (leaf first), or NULL with nil,msg,kind pushed. */
STACK_OF(X509) *sx_load_certs(lua_State *L, int idx, const char *what, sx_where w);
/* Loads CRLs from PEM text or a file; NULL with nil,msg,kind pushed on failure. */
STACK_OF(X509_CRL) *sx_load_crls(lua_State *L, int idx, sx_where w);

typedef struct sx_password {
  lua_State *L;
  int index;        /* stack index of a string or function, 0 for none */
  int failed;       /* the callback raised or returned a bad value */
  int err_index;    /* then: stack index of its message */
} sx_password;

void sx_pkey_open(lua_State *L);
void sx_pkey_push(lua_State *L, EVP_PKEY *k);     /* up-refs k */
/* Loads a private key from PEM text, a PEM/DER file, or a pkey object; NULL with
 * nil,msg,kind pushed on failure. */
EVP_PKEY *sx_load_key(lua_State *L, int idx, sx_password *pw, sx_where w);

/* ---- verify.c ----------------------------------------------------------- */

void sx_verify_open(lua_State *L);
int sx_check_side(lua_State *L, int arg);   /* "client" / "server" -> SX_CLIENT / SX_SERVER */
int sx_parse_mode(lua_State *L, int idx, int side, sx_where w);
/* Parses the callback argument at arg into cb; pushes the value to keep as "given" and
 * the Lua function (or nil) for the trampoline. */
void sx_parse_callback(lua_State *L, int idx, sx_where w, sx_callback *cb);
int sx_push_mode(lua_State *L, int mode, int side);   /* flags, integer[, preset] */
int sx_verify_trampoline(int ok, X509_STORE_CTX *store);
void sx_apply_verify(SSL *ssl, const sx_policy *p);
/* The owner's parameters, or NULL once it is closed (Lua code run while the table is read,
 * an __index or a finalizer, may close it: they are fetched only after). */
typedef X509_VERIFY_PARAM *(*sx_param_getter)(void *owner);
void sx_set_verify_params(lua_State *L, sx_param_getter get, void *owner, int idx, sx_where w,
                          int *flags_explicit, int *identity, sx_policy *pol);
#define SX_MAX_DEPTH 2147483647   /* OpenSSL takes any non-negative int */
/* Runs helper(data) protected on conn->L, the thread driving the connection, with the
 * OpenSSL error queue isolated.  Returns 1, or 0 when it failed: the first failure's message
 * stays on the stack for the driving call to report as "<name> callback: <message>". */
int sx_callback_run(sx_conn *conn, const char *name, lua_CFunction helper, void *data);
/* Pushes conn's Lua object (its values: sx_getslot); inside a protected helper. */
void sx_conn_push(lua_State *L, sx_conn *conn);
/* Pushes field of the uservalue of the context in the connection's slot (SX_SLOT_CTX: the
 * one it uses now; SX_SLOT_CTX0: the one it was made from); inside a protected helper. */
void sx_conn_push_ctx_field(lua_State *L, sx_conn *conn, int slot, const char *field);

/* ---- callback.c: the failure protocol ------------------------------------ */

/* nil, "<name> callback: <message>", "callback" for the failure sx_callback_run kept. */
int sx_push_callback_failure(lua_State *L, sx_conn *conn);
/* As sx_callback_run, but a failure is only logged (the connection's logger), as
 * "<what>: <message>": 1, or 0 when it failed. */
int sx_callback_run_logged(sx_conn *conn, const char *what, lua_CFunction helper, void *data);

/* ---- context.c / connection.c / session.c ------------------------------ */

void sx_context_open(lua_State *L);
sx_ctx *sx_ctx_check(lua_State *L, int arg);
extern const char *const sx_side_names[];   /* "client", "server", "both" by SX_* */
/* The context's uservalue: uv[field] = the value on top (popped) / pushes uv[field]. */
void sx_ctx_uv_set(lua_State *L, int obj, const char *field);
void sx_ctx_uv_get(lua_State *L, int obj, const char *field);
/* Sets one side's mode and callback from the values at mode_idx / cb_idx (sslctx.KEEP keeps
 * the callback). */
void sx_ctx_set_policy(lua_State *L, int obj, sx_ctx *c, int side, int mode_idx,
                       sx_where mode_w, int cb_idx, sx_where cb_w);
/* Whatever decides a verdict changed: the server's session id context is derived again. */
static inline void sx_ctx_policy_changed(sx_ctx *c) {
  c->sid_dirty = 1;
  c->policy_gen++;
}
int sx_connection_new(lua_State *L);   /* ctx:new_connection (connection.c) */

/* ---- options.c: sslctx.new{} and the setters, from one table ------------- */

void sx_options_check_names(lua_State *L, int opts);
int sx_options_apply(lua_State *L, sx_ctx *c, int opts);
void sx_options_register(lua_State *L, int methods);
int sx_ctx_clear_options(lua_State *L);
int sx_ctx_get_options(lua_State *L);
/* Pushes the wire form (length-prefixed names) of the protocol list at idx. */
void sx_alpn_wire(lua_State *L, int idx, sx_where w);

/* ---- policy.c: the verification policy's identity ----------------------- */

void sx_callback_identify(lua_State *L, int idx, const void *pointer, sx_callback *cb);
void sx_callback_name(const char *name, sx_callback *cb);
void sx_ctx_refresh_sid(sx_ctx *c);
void sx_conn_policy_changed(lua_State *L, sx_conn *conn);
void sx_conn_client_start(sx_conn *conn);
void sx_conn_name_policy(sx_conn *conn, const unsigned char *sid, size_t len);
void sx_conn_set_peer(sx_ctx *c, sx_conn *conn, const char *host, size_t len, int checked);
/* DANE settings (set_dane, add_tlsa) are part of the policy (conninfo.c). */
void sx_conn_mix_dane(lua_State *L, sx_conn *conn, const char *what, const void *p, size_t n);


/* ---- tickets.c / sessstore.c -------------------------------------------- */

#define SX_TICKET_ROTATION_DEFAULT 86400.0
/* Mozilla's "intermediate" TLS 1.2 list: ECDHE (and DHE, when parameters are set) with
 * AES-GCM or ChaCha20-Poly1305. */
#define SX_SERVER_CIPHERS \
  "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:" \
  "ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:" \
  "DHE-RSA-AES128-GCM-SHA256:DHE-RSA-AES256-GCM-SHA384:DHE-RSA-CHACHA20-POLY1305"
void sx_tickets_init(SSL_CTX *ctx, sx_tickets *t, double seconds);
void sx_tickets_free(sx_tickets *t);
int sx_tickets_set(lua_State *L, sx_tickets *t, int idx);
int sx_store_set(lua_State *L);      /* ctx:set_session_store */
void sx_store_free(sx_store_cfg *s);
int sx_store_new_session(SSL *ssl, SSL_SESSION *sess);
/* ---- ctx_callbacks.c ----------------------------------------------------- */

/* Installs OpenSSL's new-session callback while a client session callback or a server
 * session store needs it. */
void sx_ctx_update_new_cb(sx_ctx *c);
int sx_alpn_select_cb(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                      const unsigned char *in, unsigned int inlen, void *arg);
int sx_client_hello_cb(SSL *ssl, int *alert, void *arg);
/* conn_policy.c: the servername callback moves the connection to the context at nc_idx. */
void sx_conn_switch_context(lua_State *L, sx_conn *conn, sx_ctx *nc, int nc_idx);

/* ---- trust.c: trust stores and their identities ------------------------- */

void sx_trust_add_cert(X509_STORE *store, X509 *x, unsigned char id[32]);
void sx_trust_add_crl(X509_STORE *store, X509_CRL *crl, unsigned char id[32]);
int sx_trust_add_file(X509_STORE *store, const char *path, unsigned char id[32]);
int sx_trust_add_dir(X509_STORE *store, const char *dir, unsigned char id[32], char **dirs);
int sx_trust_add_defaults(X509_STORE *store, unsigned char id[32], char **dirs);
X509_STORE *sx_trust_copy(X509_STORE *from, const char *dirs);
void sx_trust_digest_objects(X509_STORE *store, unsigned char id[32]);
/* Gives every open server connection of ctx that reads the context's client-CA list a copy
 * of its own, before the context changes it. */
void sx_trust_pin_client_ca(lua_State *L, SSL_CTX *ctx);
/* A context's trust.  Those returning int give 0, or 3 with nil, message, kind pushed. */
void sx_trust_use_default(sx_ctx *c);                 /* the system's roots, shared */
int sx_ctx_lend_trust(sx_ctx *c, SSL *ssl);   /* to a new connection (copy on write afterwards) */
int sx_trust_add_crls(lua_State *L, sx_ctx *c, int idx, sx_where w);
int sx_trust_load_locations(lua_State *L, sx_ctx *c, const char *file, const char *dir);
int sx_trust_load_defaults(lua_State *L, sx_ctx *c);
void sx_trust_names_from_file(sx_ctx *c, const char *file);   /* the client-CA list */
int sx_trust_add_ca(lua_State *L, sx_ctx *c, int idx, int add_names, sx_where w);
int sx_trust_set_client_ca(lua_State *L, sx_ctx *c, int idx, sx_where w);
/* A connection's own trust (conn:set_trust): store, identity and client-CA list. */
typedef struct sx_anchors {
  X509_STORE *store;
  STACK_OF(X509_NAME) *names;
  unsigned char id[32];
} sx_anchors;
int sx_trust_anchors(lua_State *L, int arg, sx_anchors *a);
void sx_anchors_free(sx_anchors *a);

/* ---- the connection class: connection.c, conn_io.c, conn_policy.c, conninfo.c ---- */

extern const char *const sx_conn_side_names[];   /* "client", "server" */
void sx_connection_open(lua_State *L);
void sx_conninfo_open(lua_State *L);   /* conninfo.c: after sx_connection_open */
int sx_connection_new(lua_State *L);   /* ctx:new_connection([opts]) */
sx_conn *sx_conn_check(lua_State *L, int arg);   /* raises unless an open connection */
/* Adds methods to the class (after sx_connection_open registered it). */
void sx_conn_add_methods(lua_State *L, const luaL_Reg *methods);
extern const luaL_Reg sx_conn_io_methods[];       /* conn_io.c: the driving calls */
extern const luaL_Reg sx_conn_policy_methods[];   /* conn_policy.c: the policy setters */
/* The busy rule (connection.c): a method that uses the SSL across an allocation holds the
 * connection busy; a close() asked meanwhile happens at the last sx_conn_busy_end. */
static inline void sx_conn_busy_begin(sx_conn *conn) {
  conn->busy++;
}
void sx_conn_busy_end(lua_State *L, sx_conn *conn);
/* The LuaSocket object of the connection at obj was closed under it: marks it failed. */
int sx_conn_socket_gone(lua_State *L, sx_conn *conn, int obj, int protected_call);
/* Every per-connection setter of the policy starts with this (conn_policy.c). */
sx_conn *sx_conn_policy_check(lua_State *L, const char *what);
BIO *sx_fd_bio_new(int fd);   /* bio.c: the fd transport, without SIGPIPE */
BIO *sx_outbox_new(void);      /* bio.c: the memory transport's write side */
BIO *sx_inbox_new(void);       /* bio.c: the memory transport's read side */
ssize_t sx_send_now(int fd, const char *buf, size_t len);   /* bio.c: conn:drain_to's send */
const char *sx_outbox_peek(BIO *b, size_t *n);
void sx_outbox_consume(BIO *b, size_t n);
sx_conn *sx_conn_new_borrowed(lua_State *L, SSL *ssl, lua_State *thread);  /* pushes it */

/* hook.c: borrowed connections */
int sx_hook_borrow(lua_State *L);
void sx_hook_detach(sx_conn *conn);
void sx_hook_clear_request(lua_State *L);
void sx_hook_report(sx_conn *conn, int base);

void sx_session_open(lua_State *L);
int sx_session_new(lua_State *L);   /* sslctx.session(der) */
void sx_session_push(lua_State *L, SSL_SESSION *s);   /* up-refs s */
SSL_SESSION *sx_session_test(lua_State *L, int arg);

/* ---- added by loaders.c/pkey.c ------------------------------------------ */

int sx_x509_new(lua_State *L);    /* sslctx.x509(pem_or_der) */
int sx_crl_new(lua_State *L);     /* sslctx.crl(pem_or_der) */
int sx_pkey_new(lua_State *L);    /* sslctx.pkey(pem_or_der [, password]) */

/* ---- loaders.c: what x509.c and pkey.c share ----------------------------- */

void sx_loaders_open(lua_State *L);   /* before sx_x509_open and sx_pkey_open */
/* A C resource owned by the Lua stack: pushed empty before the resource is acquired, so that
 * a Lua error while it is in use frees it (at collection). */
typedef struct sx_holder {
  void *p;
  void (*free_fn)(void *p);
} sx_holder;
sx_holder *sx_holder_push(lua_State *L);
void sx_holder_release(sx_holder *h);   /* frees p now; the holder stays on the stack */
/* A memory BIO in a holder: NULL when out of memory (the holder is pushed all the same).
 * _result replaces the holder on top by the BIO's contents; _pop frees it and pops it. */
BIO *sx_membio_push(lua_State *L);
void sx_membio_result(lua_State *L);
void sx_membio_pop(lua_State *L);
/* An object of class mt holding one OpenSSL pointer, pushed closed (NULL): the caller fills
 * it.  _test: the pointer of an open one at arg, else NULL. */
void **sx_box_new(lua_State *L, const char *mt);
void *sx_box_test(lua_State *L, int arg, const char *mt);
void *sx_box_take(lua_State *L, const char *mt);   /* closes the one at 1: its pointer */
/* For "expected, got ..." messages: the value's class (__name) when it has one. */
const char *sx_type_name(lua_State *L, int idx);
int sx_is_der(const char *s, size_t len);   /* starts as a DER SEQUENCE does */
/* The bytes the string at idx stands for: PEM text as it is, anything else names a PEM/DER
 * file, read whole.  1, or 0 with nil, msg, "file" pushed; sx_input_close after a 1. */
typedef struct sx_input {
  const char *s;
  size_t len;
  const char *path;   /* the file's name; NULL for PEM text */
  BIO *mem;           /* holds a file's bytes */
} sx_input;
int sx_input_open(lua_State *L, int idx, const char *what, sx_input *in);
void sx_input_close(sx_input *in);
/* OpenSSL's pem_password_cb over an sx_password (u): asks its string or function, protected;
 * a failure is kept in pw (failed, err_index) and the callback says no. */
int sx_password_cb(char *buf, int size, int rwflag, void *u);
/* ---- core.c: failure triples -------------------------------------------- */

/* Push nil, message, kind and return 3: a formatted message, or "<what>[: <path>]: " and
 * the drained OpenSSL error queue. */
int sx_push_failure(lua_State *L, const char *kind, const char *fmt, ...);
int sx_push_ssl_failure(lua_State *L, const char *what, const char *path, const char *kind);

#endif
