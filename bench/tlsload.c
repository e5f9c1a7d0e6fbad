/* bench/tlsload.c — a TLS load generator that is not the module under test: C over OpenSSL
 * with epoll, for the c10k workload (bench/c10k.sh) and the game server's smoke spec.
 *
 *   tlsload --port N --cafile ROOT.pem (--issuer-cert CA.pem --issuer-key CA.key | --cert F --key F)
 *           [--clients N] [--concurrency C] [--seconds S] [--hold S] [--bulk MiB]
 *
 * Each client connects to 127.0.0.1:port (loopback only, there is no host option), runs a
 * TLS 1.3 handshake presenting a client certificate, checks the server's certificate against
 * --cafile and the name "localhost", waits for the server's "WELCOME <CN>" line, sends
 * "PING", waits for "PONG", and then stays connected.  With --issuer-cert/--issuer-key every
 * client gets its own certificate, CN "player<i>", minted at start under that CA (one shared
 * P-256 key); with --cert/--key they all present that one.
 *
 * At most C handshakes are in flight at once (default 100); everything stops after S seconds
 * (default 60) even if not every client finished.  Then it prints
 *
 *   RESULT clients=N ok=K failed=F ramp_s=T rate=K/T hs_p50_ms=.. hs_p99_ms=.. welcome_p99_ms=..
 *
 * (handshake latency: from connect() to the client's handshake done), and with --hold S
 * prints "HOLDING" and keeps every connection open S more seconds (reading and discarding
 * what arrives) before exiting 0 (1 when a client failed).  --bulk M (one client): after
 * PONG sends "BULK M" and times M MiB arriving: RESULT ... bulk_mib=M bulk_s=.. mib_s=..
 * Client counts are capped at 20000; run under a descriptor limit above the count.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <openssl/pem.h>

#define MAX_CLIENTS 20000

enum { ST_CONNECTING, ST_HANDSHAKE, ST_WELCOME, ST_PONG, ST_BULK, ST_HOLD, ST_FAILED };

typedef struct {
  int fd, state;
  SSL *ssl;
  double t0, t_hs, t_welcome;
  char line[256];
  int len;
  long long bulk_left;
} client;

static client *clients;
static int n_clients = 1, concurrency = 100, n_launched, n_ok, n_failed;
static double seconds = 60, hold, t_first, t_last, bulk_t0, bulk_t1;
static int port, bulk_mib, epfd;
static SSL_CTX *ctx;
static X509 **certs;
static EVP_PKEY *client_key;
static char first_error[256];

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void die(const char *what) {
  fprintf(stderr, "tlsload: %s\n", what);
  ERR_print_errors_fp(stderr);
  exit(2);
}

static void fail(client *c, const char *why) {
  unsigned long e = ERR_peek_error();
  if (!first_error[0]) {
    char buf[160] = "";
    if (e) ERR_error_string_n(e, buf, sizeof buf);
    snprintf(first_error, sizeof first_error, "%s%s%s", why, buf[0] ? ": " : "", buf);
  }
  ERR_clear_error();
  if (c->state == ST_HOLD) n_ok--;   /* it was counted: it no longer holds */
  c->state = ST_FAILED;
  if (c->ssl) SSL_free(c->ssl);
  c->ssl = NULL;
  if (c->fd >= 0) close(c->fd);
  c->fd = -1;
  n_failed++;
}

/* ---- certificates ---------------------------------------------------------------------- */

static void add_ext(X509 *x, X509 *issuer, int nid, const char *value) {
  X509V3_CTX v3;
  X509_EXTENSION *ext;
  X509V3_set_ctx(&v3, issuer, x, NULL, NULL, 0);
  ext = X509V3_EXT_conf_nid(NULL, &v3, nid, value);
  if (!ext || !X509_add_ext(x, ext, -1)) die("extension");
  X509_EXTENSION_free(ext);
}

static void mint(const char *issuer_cert, const char *issuer_key) {
  FILE *f;
  X509 *ca;
  EVP_PKEY *ca_key;
  int i;
  if (!(f = fopen(issuer_cert, "r")) || !(ca = PEM_read_X509(f, NULL, NULL, NULL))) die("issuer certificate");
  fclose(f);
  if (!(f = fopen(issuer_key, "r")) || !(ca_key = PEM_read_PrivateKey(f, NULL, NULL, NULL))) die("issuer key");
  fclose(f);
  client_key = EVP_EC_gen("P-256");
  if (!client_key) die("key generation");
  certs = calloc((size_t)n_clients, sizeof *certs);
  for (i = 0; i < n_clients; i++) {
    X509 *x = X509_new();
    X509_NAME *name = X509_NAME_new();
    char cn[32];
    snprintf(cn, sizeof cn, "player%d", i + 1);
    X509_set_version(x, 2);
    ASN1_INTEGER_set(X509_get_serialNumber(x), i + 1);
    X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)cn, -1, -1, 0);
    X509_set_subject_name(x, name);
    X509_NAME_free(name);
    X509_set_issuer_name(x, X509_get_subject_name(ca));
    X509_gmtime_adj(X509_getm_notBefore(x), -3600);
    X509_gmtime_adj(X509_getm_notAfter(x), 86400);
    X509_set_pubkey(x, client_key);
    add_ext(x, ca, NID_basic_constraints, "critical,CA:FALSE");
    add_ext(x, ca, NID_key_usage, "critical,digitalSignature");
    add_ext(x, ca, NID_ext_key_usage, "clientAuth");
    if (!X509_sign(x, ca_key, EVP_sha256())) die("signing");
    certs[i] = x;
  }
  X509_free(ca);
  EVP_PKEY_free(ca_key);
}

/* ---- the clients ----------------------------------------------------------------------- */

static void launch(int i) {
  client *c = &clients[i];
  struct sockaddr_in sa;
  struct epoll_event ev;
  int one = 1;
  c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
  c->t0 = now();
  if (!t_first) t_first = c->t0;
  n_launched++;
  if (c->fd < 0) { fail(c, "socket"); return; }
  setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  memset(&sa, 0, sizeof sa);
  sa.sin_family = AF_INET;
  sa.sin_port = htons((unsigned short)port);
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(c->fd, (struct sockaddr *)&sa, sizeof sa) < 0 && errno != EINPROGRESS) {
    fail(c, strerror(errno));
    return;
  }
  c->state = ST_CONNECTING;
  ev.events = EPOLLIN | EPOLLOUT | EPOLLET | EPOLLRDHUP;
  ev.data.u32 = (unsigned)i;
  if (epoll_ctl(epfd, EPOLL_CTL_ADD, c->fd, &ev) < 0) fail(c, "epoll_ctl");
}

static int want(client *c, int r) {   /* 1: wait for the socket; 0: failed */
  int e = SSL_get_error(c->ssl, r);
  if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) return 1;
  fail(c, e == SSL_ERROR_ZERO_RETURN ? "closed by the server" :
          e == SSL_ERROR_SYSCALL ? "connection ended (syscall)" : "TLS error");
  return 0;
}

static int send_line(client *c, const char *s) {
  int r = SSL_write(c->ssl, s, (int)strlen(s));   /* a few bytes: one record, taken whole */
  if (r <= 0) return want(c, r) ? 1 : 0;
  return 1;
}

static void drive(client *c) {
  int r;
  if (c->state == ST_CONNECTING) {
    int err = 0;
    socklen_t len = sizeof err;
    getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
    if (err) { fail(c, strerror(err)); return; }
    c->ssl = SSL_new(ctx);
    SSL_set_fd(c->ssl, c->fd);
    SSL_set_tlsext_host_name(c->ssl, "localhost");
    SSL_set1_host(c->ssl, "localhost");
    if (certs) {
      SSL_use_certificate(c->ssl, certs[c - clients]);
      SSL_use_PrivateKey(c->ssl, client_key);
    }
    c->state = ST_HANDSHAKE;
  }
  if (c->state == ST_HANDSHAKE) {
    r = SSL_connect(c->ssl);
    if (r != 1) { want(c, r); return; }
    c->t_hs = now();
    c->state = ST_WELCOME;
  }
  for (;;) {   /* read until the socket is empty (edge-triggered) */
    char buf[16384];
    int i, start = 0;
    if (c->state == ST_FAILED) return;
    r = SSL_read(c->ssl, buf, sizeof buf);
    if (r <= 0) { want(c, r); return; }
    if (c->state == ST_HOLD) continue;
    if (c->state == ST_BULK) {
      c->bulk_left -= r;
      if (c->bulk_left <= 0) { bulk_t1 = now(); c->state = ST_HOLD; n_ok++; t_last = bulk_t1; }
      continue;
    }
    for (i = 0; i < r; i++) {
      if (buf[i] != '\n') continue;
      if (c->len + (i - start) >= (int)sizeof c->line) { fail(c, "line too long"); return; }
      memcpy(c->line + c->len, buf + start, (size_t)(i - start));
      c->line[c->len + i - start] = 0;
      c->len = 0;
      start = i + 1;
      if (c->state == ST_WELCOME) {
        if (strncmp(c->line, "WELCOME ", 8) != 0) { fail(c, "no WELCOME"); return; }
        c->t_welcome = now();
        c->state = ST_PONG;
        if (!send_line(c, "PING\n")) return;
      } else if (c->state == ST_PONG) {
        if (strcmp(c->line, "PONG") != 0) { fail(c, "no PONG"); return; }
        if (bulk_mib) {
          char cmd[32];
          snprintf(cmd, sizeof cmd, "BULK %d\n", bulk_mib);
          c->bulk_left = (long long)bulk_mib * 1048576;
          c->state = ST_BULK;
          bulk_t0 = now();
          if (!send_line(c, cmd)) return;
          if (i + 1 < r) { c->bulk_left -= r - (i + 1); }
          break;
        }
        c->state = ST_HOLD;
        n_ok++;
        t_last = now();
        break;
      }
    }
    if (c->state == ST_WELCOME || c->state == ST_PONG) {
      if (c->len + (r - start) >= (int)sizeof c->line) { fail(c, "line too long"); return; }
      memcpy(c->line + c->len, buf + start, (size_t)(r - start));
      c->len += r - start;
    }
  }
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

static double pct(double *v, int n, double p) {
  int k;
  if (n == 0) return 0;
  k = (int)(p * (n - 1) + 0.5);
  return v[k];
}

static void usage(void) {
  fprintf(stderr, "usage: tlsload --port N --cafile F (--issuer-cert F --issuer-key F | --cert F --key F)\n"
                  "               [--clients N] [--concurrency C] [--seconds S] [--hold S] [--bulk MiB]\n");
  exit(64);
}

int main(int argc, char **argv) {
  const char *cafile = NULL, *cert = NULL, *key = NULL, *icert = NULL, *ikey = NULL;
  double deadline, *hs, *wl;
  int i, n_hs = 0, n_wl = 0;
  struct epoll_event evs[256];
  for (i = 1; i < argc; i++) {
    const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
    if (!v) usage();
    if (!strcmp(a, "--port")) port = atoi(v);
    else if (!strcmp(a, "--cafile")) cafile = v;
    else if (!strcmp(a, "--cert")) cert = v;
    else if (!strcmp(a, "--key")) key = v;
    else if (!strcmp(a, "--issuer-cert")) icert = v;
    else if (!strcmp(a, "--issuer-key")) ikey = v;
    else if (!strcmp(a, "--clients")) n_clients = atoi(v);
    else if (!strcmp(a, "--concurrency")) concurrency = atoi(v);
    else if (!strcmp(a, "--seconds")) seconds = atof(v);
    else if (!strcmp(a, "--hold")) hold = atof(v);
    else if (!strcmp(a, "--bulk")) bulk_mib = atoi(v);
    else usage();
    i++;
  }
  if (port <= 0 || port > 65535 || !cafile || (!(cert && key) && !(icert && ikey))) usage();
  if (n_clients < 1 || n_clients > MAX_CLIENTS || concurrency < 1) usage();
  if (seconds <= 0 || seconds > 3600 || hold < 0 || hold > 3600) usage();
  if (bulk_mib < 0 || bulk_mib > 65536 || (bulk_mib && n_clients != 1)) usage();

  ctx = SSL_CTX_new(TLS_client_method());
  if (!ctx) die("SSL_CTX_new");
  SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION);
  SSL_CTX_set_max_proto_version(ctx, TLS1_3_VERSION);
  SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
  if (!SSL_CTX_load_verify_locations(ctx, cafile, NULL)) die("--cafile");
  if (cert) {
    if (SSL_CTX_use_certificate_chain_file(ctx, cert) != 1) die("--cert");
    if (SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1) die("--key");
  } else {
    mint(icert, ikey);
  }
  clients = calloc((size_t)n_clients, sizeof *clients);
  hs = calloc((size_t)n_clients, sizeof *hs);
  wl = calloc((size_t)n_clients, sizeof *wl);
  if (!clients || !hs || !wl) die("out of memory");
  for (i = 0; i < n_clients; i++) clients[i].fd = -1;
  epfd = epoll_create1(0);

  deadline = now() + seconds;
  while (n_ok + n_failed < n_clients && now() < deadline) {
    int n, k;
    while (n_launched < n_clients && n_launched - n_ok - n_failed < concurrency) launch(n_launched);
    n = epoll_wait(epfd, evs, 256, 50);
    for (k = 0; k < n; k++) {
      client *c = &clients[evs[k].data.u32];
      if (c->state != ST_FAILED) drive(c);
    }
  }
  for (i = 0; i < n_clients; i++) {
    client *c = &clients[i];
    if (c->state != ST_HOLD && c->state != ST_FAILED && i < n_launched) fail(c, "deadline passed");
    if (c->t_hs > 0) hs[n_hs++] = (c->t_hs - c->t0) * 1000;
    if (c->t_welcome > 0) wl[n_wl++] = (c->t_welcome - c->t0) * 1000;
  }
  n_failed += n_clients - n_launched;
  qsort(hs, (size_t)n_hs, sizeof *hs, cmp_double);
  qsort(wl, (size_t)n_wl, sizeof *wl, cmp_double);
  printf("RESULT clients=%d ok=%d failed=%d ramp_s=%.3f rate=%.1f hs_p50_ms=%.2f hs_p99_ms=%.2f "
         "welcome_p50_ms=%.2f welcome_p99_ms=%.2f",
         n_clients, n_ok, n_failed, t_last - t_first, t_last > t_first ? n_ok / (t_last - t_first) : 0,
         pct(hs, n_hs, .5), pct(hs, n_hs, .99), pct(wl, n_wl, .5), pct(wl, n_wl, .99));
  if (bulk_mib)
    printf(" bulk_mib=%d bulk_s=%.3f mib_s=%.1f", bulk_mib, bulk_t1 - bulk_t0,
           bulk_t1 > bulk_t0 ? bulk_mib / (bulk_t1 - bulk_t0) : 0);
  printf("%s%s\n", first_error[0] ? " first_error=" : "", first_error);
  fflush(stdout);
  if (hold > 0) {
    double until = now() + hold;
    printf("HOLDING\n");
    fflush(stdout);
    while (now() < until) {
      int n = epoll_wait(epfd, evs, 256, 100), k;
      for (k = 0; k < n; k++) {
        client *c = &clients[evs[k].data.u32];
        if (c->state == ST_HOLD) drive(c);
      }
    }
  }
  return n_failed ? 1 : 0;
}
