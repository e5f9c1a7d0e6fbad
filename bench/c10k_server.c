/* bench/c10k_server.c — the C side of the c10k workload (bench/c10k.sh): one epoll loop doing
 * the OpenSSL work examples/game_server.lua does for the messages the workload sends.
 *
 *   c10k_server --port N --cert CHAIN.pem --key KEY --cafile CA.pem [--max-seconds S]
 *
 * Listens on 127.0.0.1 (loopback only), prints "listening on 127.0.0.1:<port>", and for each
 * connection: a TLS handshake requiring a client certificate (verify "require", the client CA
 * list from --cafile, OpenSSL's defaults otherwise, as sslctx.new gives the Lua server), then
 * "WELCOME <CN>"; "PING" -> "PONG"; "QUIT" -> "BYE" + close_notify; "BULK n" -> n MiB (what
 * the luv bulk server does); a line over 1 KiB closes the connection.  It exits after S
 * seconds (default 120).  Socket BIOs (SSL_set_fd), edge-triggered epoll.
 */
#define _GNU_SOURCE
#include <errno.h>
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
#include <openssl/x509.h>

typedef struct conn {
  int fd, handshaken, closing;
  SSL *ssl;
  long long bulk_left;      /* bytes of a BULK answer still to write */
  char *out;                /* a line that did not fit (want_write) */
  size_t out_len;
  char line[1025];
  int len;
} conn;

static SSL_CTX *ctx;
static int epfd;
static char bulk_buf[16384];

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void die(const char *what) {
  fprintf(stderr, "c10k_server: %s\n", what);
  ERR_print_errors_fp(stderr);
  exit(2);
}

static void drop(conn *c) {
  if (c->ssl) SSL_free(c->ssl);
  close(c->fd);
  free(c->out);
  free(c);
  ERR_clear_error();
}

/* 1: keep going; 0: wait for the socket; -1: dropped */
static int io_result(conn *c, int r) {
  int e = SSL_get_error(c->ssl, r);
  if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) return 0;
  drop(c);
  return -1;
}

/* Writes what is pending: a queued line, then the rest of a BULK answer. */
static int flush(conn *c) {
  while (c->out_len > 0) {
    int r = SSL_write(c->ssl, c->out, (int)c->out_len);
    if (r <= 0) return io_result(c, r);
    memmove(c->out, c->out + r, c->out_len - (size_t)r);
    c->out_len -= (size_t)r;
  }
  while (c->bulk_left > 0) {
    int n = c->bulk_left < (long long)sizeof bulk_buf ? (int)c->bulk_left : (int)sizeof bulk_buf;
    int r = SSL_write(c->ssl, bulk_buf, n);
    if (r <= 0) return io_result(c, r);
    c->bulk_left -= r;
  }
  if (c->closing) {
    SSL_shutdown(c->ssl);
    drop(c);
    return -1;
  }
  return 1;
}

static int send_line(conn *c, const char *s) {
  size_t n = strlen(s);
  c->out = realloc(c->out, c->out_len + n);
  if (!c->out) die("out of memory");
  memcpy(c->out + c->out_len, s, n);
  c->out_len += n;
  return flush(c);
}

static int on_line(conn *c, const char *line) {
  long long mib;
  if (!strcmp(line, "PING")) return send_line(c, "PONG\n");
  if (!strcmp(line, "QUIT")) { c->closing = 1; return send_line(c, "BYE\n"); }
  if (sscanf(line, "BULK %lld", &mib) == 1 && mib > 0 && mib <= 65536) {
    c->bulk_left = mib * 1048576;
    return flush(c);
  }
  return send_line(c, "ERROR unknown command\n");
}

static void drive(conn *c) {
  int r;
  if (!c->handshaken) {
    X509 *peer;
    char cn[256] = "", welcome[300];
    r = SSL_do_handshake(c->ssl);
    if (r != 1) { io_result(c, r); return; }
    c->handshaken = 1;
    peer = SSL_get1_peer_certificate(c->ssl);
    if (peer) {
      X509_NAME_get_text_by_NID(X509_get_subject_name(peer), NID_commonName, cn, sizeof cn);
      X509_free(peer);
    }
    snprintf(welcome, sizeof welcome, "WELCOME %s\n", cn);
    if (send_line(c, welcome) < 0) return;
  } else if (flush(c) < 0) {
    return;
  }
  for (;;) {   /* edge-triggered: read until OpenSSL wants the socket */
    char buf[16384];
    int i, start = 0;
    r = SSL_read(c->ssl, buf, sizeof buf);
    if (r <= 0) { io_result(c, r); return; }
    for (i = 0; i < r; i++) {
      if (buf[i] != '\n') continue;
      if (c->len + (i - start) > 1024) { drop(c); return; }
      memcpy(c->line + c->len, buf + start, (size_t)(i - start));
      c->line[c->len + i - start] = 0;
      if (c->len + i - start > 0 && c->line[c->len + i - start - 1] == '\r') c->line[c->len + i - start - 1] = 0;
      c->len = 0;
      start = i + 1;
      if (on_line(c, c->line) < 0) return;
    }
    if (c->len + (r - start) > 1024) { drop(c); return; }
    memcpy(c->line + c->len, buf + start, (size_t)(r - start));
    c->len += r - start;
  }
}

int main(int argc, char **argv) {
  const char *cert = NULL, *key = NULL, *cafile = NULL;
  int port = -1, lfd, one = 1, i;
  double max_seconds = 120, deadline;
  struct sockaddr_in sa;
  socklen_t salen = sizeof sa;
  struct epoll_event ev, evs[512];
  STACK_OF(X509_NAME) *names;
  for (i = 1; i + 1 < argc; i += 2) {
    if (!strcmp(argv[i], "--port")) port = atoi(argv[i + 1]);
    else if (!strcmp(argv[i], "--cert")) cert = argv[i + 1];
    else if (!strcmp(argv[i], "--key")) key = argv[i + 1];
    else if (!strcmp(argv[i], "--cafile")) cafile = argv[i + 1];
    else if (!strcmp(argv[i], "--max-seconds")) max_seconds = atof(argv[i + 1]);
    else break;
  }
  if (i != argc || port < 0 || port > 65535 || !cert || !key || !cafile || max_seconds <= 0) {
    fprintf(stderr, "usage: c10k_server --port N --cert F --key F --cafile F [--max-seconds S]\n");
    return 64;
  }
  memset(bulk_buf, 'x', sizeof bulk_buf);
  ctx = SSL_CTX_new(TLS_server_method());
  if (!ctx) die("SSL_CTX_new");
  SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
  SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
  if (SSL_CTX_use_certificate_chain_file(ctx, cert) != 1) die("--cert");
  if (SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1) die("--key");
  if (!SSL_CTX_load_verify_locations(ctx, cafile, NULL)) die("--cafile");
  names = SSL_load_client_CA_file(cafile);
  if (names) SSL_CTX_set_client_CA_list(ctx, names);
  SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, NULL);
  SSL_CTX_set_session_id_context(ctx, (const unsigned char *)"c10k", 4);

  lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
  setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  memset(&sa, 0, sizeof sa);
  sa.sin_family = AF_INET;
  sa.sin_port = htons((unsigned short)port);
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (bind(lfd, (struct sockaddr *)&sa, sizeof sa) < 0 || listen(lfd, 4096) < 0) die("bind/listen");
  getsockname(lfd, (struct sockaddr *)&sa, &salen);
  printf("listening on 127.0.0.1:%d\n", ntohs(sa.sin_port));
  fflush(stdout);

  epfd = epoll_create1(0);
  ev.events = EPOLLIN;
  ev.data.ptr = NULL;
  epoll_ctl(epfd, EPOLL_CTL_ADD, lfd, &ev);
  deadline = now() + max_seconds;
  while (now() < deadline) {
    int n = epoll_wait(epfd, evs, 512, 200), k;
    for (k = 0; k < n; k++) {
      conn *c = evs[k].data.ptr;
      if (c == NULL) {
        for (;;) {
          int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK);
          if (fd < 0) break;
          setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
          c = calloc(1, sizeof *c);
          if (!c) die("out of memory");
          c->fd = fd;
          c->ssl = SSL_new(ctx);
          SSL_set_fd(c->ssl, fd);
          SSL_set_accept_state(c->ssl);
          ev.events = EPOLLIN | EPOLLOUT | EPOLLET;
          ev.data.ptr = c;
          epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev);
        }
      } else {
        drive(c);
      }
    }
  }
  return 0;
}
