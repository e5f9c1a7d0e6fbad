/* bench/ref.c — the C reference of the sslctx benchmark: plain OpenSSL doing, call for call,
 * the OpenSSL work the module does for bench/run.lua's workloads.
 *
 *   ref WORKLOAD PKI_DIR N MAX_SECONDS
 *
 * prints one line
 *
 *   RESULT <workload> c n=<done> wall=<s> cpu=<s> value=<metric> unit=<unit> [key=value ...]
 *
 * Fairness (what the module does, mirrored here; see src/context.c, src/connection.c):
 *   - SSL_CTX_new(TLS_method()), min version TLS 1.3, SSL_MODE_ENABLE_PARTIAL_WRITE |
 *     SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER, SSL_OP_ALLOW_CLIENT_RENEGOTIATION cleared,
 *     ciphersuites TLS_AES_128_GCM_SHA256, groups X25519;
 *   - server: certificate + intermediate, a 32-byte session id context (the module derives
 *     one from its policy); mTLS: trust file, client-CA list from it, PEER|FAIL_IF_NO_PEER_CERT;
 *   - client: trust file, VERIFY_PEER set on the context and again on each connection
 *     (with the trivial callback in the _vcb workload), SNI + SSL_set1_host("localhost"),
 *     a 32-byte session id context on each connection, the offered session when resuming;
 *   - memory transport: two BIO_s_mem per SSL, eof_return -1 (the module writes into its own
 *     "outbox" BIO instead: see bench/RESULTS.md); all pending ciphertext moved at once (the
 *     module's drain) and appended with BIO_write (its feed); reads of 16 KiB (its read());
 *   - close: SSL_shutdown once (close_notify) after a clean handshake, then SSL_free;
 *   - sockets: non-blocking fds (LuaSocket makes every socket non-blocking), TCP_NODELAY on
 *     both ends, poll() for want_read/want_write, 5 s per wait.
 *
 * What the module does and this does not is the module's cost: Lua objects, option parsing,
 * the per-connection SHA-256 policy digest, Lua strings for every drain/read.
 *
 * Environment: BENCH_REF_RELEASE_BUFFERS=1 adds SSL_MODE_RELEASE_BUFFERS to every context (the
 * module's default since issue 13) and names the implementation "c_release"; without it the
 * modes are the ones above (no RELEASE_BUFFERS: OpenSSL's default).
 *
 * Workloads: mem_hs, mem_hs_vcb, mem_hs_mtls, mem_hs_resume (N handshakes), mem_bulk
 * (N MiB), mem_idle (N connections kept), sock_hs (N handshakes), sock_bulk (N MiB),
 * reconnect (N resumed connections to a forked server), sock_server (a stand-alone echo
 * server for N connections; prints "PORT <n>"; used by run.lua's reconnect workloads). */
#define _GNU_SOURCE 1
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <openssl/err.h>
#include <openssl/ssl.h>

#define CHUNK 16384
#define ECHO_LEN 32
#define WARMUP 10
#define WAIT_MS 5000

static const char *pki;
static const char *impl = "c";   /* "c_release" with BENCH_REF_RELEASE_BUFFERS=1 */
static long extra_modes = 0;
static double max_seconds;
static const char echo_msg[ECHO_LEN + 1] = "sslctx bench echo 0123456789abcd";

/* Stand-ins for the module's policy digests: 32 constant bytes each. */
static const unsigned char sid_server[32] = "sslctx-bench-server-sid-context";
static const unsigned char sid_client[32] = "sslctx-bench-client-sid-context";

enum { F_VCB = 1, F_MTLS = 2 };

static void die(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "ref: ");
  vfprintf(stderr, fmt, ap);
  fprintf(stderr, "\n");
  va_end(ap);
  ERR_print_errors_fp(stderr);
  exit(1);
}

static double now(clockid_t clk) {
  struct timespec ts;
  clock_gettime(clk, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}
#define WALL() now(CLOCK_MONOTONIC)
#define CPU() now(CLOCK_PROCESS_CPUTIME_ID)

static const char *path(const char *file) {
  static char buf[4][4096];
  static int i;
  char *p = buf[i++ & 3];
  snprintf(p, 4096, "%s/%s", pki, file);
  return p;
}

/* The trivial verify callback of the _vcb workloads. */
static int vcb_trivial(int ok, X509_STORE_CTX *store) {
  (void)store;
  return ok;
}

/* ---- contexts ------------------------------------------------------------ */

static SSL_CTX *base_ctx(void) {
  SSL_CTX *ctx = SSL_CTX_new(TLS_method());
  if (ctx == NULL) die("SSL_CTX_new");
  SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);   /* the module's default, then: */
  SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER |
                            extra_modes);
  SSL_CTX_clear_options(ctx, SSL_OP_ALLOW_CLIENT_RENEGOTIATION);
  SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION);   /* min_version = "tls1.3" */
  if (!SSL_CTX_set_ciphersuites(ctx, "TLS_AES_128_GCM_SHA256")) die("ciphersuites");
  if (!SSL_CTX_set1_groups_list(ctx, "X25519")) die("groups");
  return ctx;
}

static SSL_CTX *server_ctx(int flags) {
  SSL_CTX *ctx = base_ctx();
  int mode = SSL_VERIFY_NONE;
  if (flags & F_MTLS) {
    STACK_OF(X509_NAME) *names;
    mode = SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT;   /* "require" */
    if (!SSL_CTX_load_verify_locations(ctx, path("root.pem"), NULL)) die("server trust");
    names = SSL_load_client_CA_file(path("root.pem"));
    if (names == NULL) die("client CA list");
    SSL_CTX_set_client_CA_list(ctx, names);
  }
  SSL_CTX_set_verify(ctx, mode, NULL);
  if (SSL_CTX_use_certificate_chain_file(ctx, path("server-chain.pem")) != 1) die("server cert");
  if (SSL_CTX_use_PrivateKey_file(ctx, path("server.key"), SSL_FILETYPE_PEM) != 1) die("server key");
  if (!SSL_CTX_check_private_key(ctx)) die("server key mismatch");
  SSL_CTX_set_session_id_context(ctx, sid_server, sizeof sid_server);
  return ctx;
}

static SSL_CTX *client_ctx(int flags) {
  SSL_CTX *ctx = base_ctx();
  SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, (flags & F_VCB) ? vcb_trivial : NULL);
  if (!SSL_CTX_load_verify_locations(ctx, path("root.pem"), NULL)) die("client trust");
  if (flags & F_MTLS) {
    if (SSL_CTX_use_certificate_chain_file(ctx, path("client-chain.pem")) != 1) die("client cert");
    if (SSL_CTX_use_PrivateKey_file(ctx, path("client.key"), SSL_FILETYPE_PEM) != 1) die("client key");
    if (!SSL_CTX_check_private_key(ctx)) die("client key mismatch");
  }
  return ctx;
}

/* ---- connections --------------------------------------------------------- */

static void attach(SSL *s, int fd) {
  if (fd < 0) {
    BIO *r = BIO_new(BIO_s_mem()), *w = BIO_new(BIO_s_mem());
    if (r == NULL || w == NULL) die("BIO_new");
    BIO_set_mem_eof_return(r, -1);
    BIO_set_mem_eof_return(w, -1);
    SSL_set_bio(s, r, w);
  } else if (!SSL_set_fd(s, fd)) {
    die("SSL_set_fd");
  }
}

static SSL *new_server(SSL_CTX *ctx, int fd) {
  SSL *s = SSL_new(ctx);
  if (s == NULL) die("SSL_new");
  SSL_set_accept_state(s);
  SSL_set_verify(s, SSL_CTX_get_verify_mode(ctx), NULL);
  attach(s, fd);
  return s;
}

static SSL *new_client(SSL_CTX *ctx, int flags, SSL_SESSION *sess, int fd) {
  SSL *s = SSL_new(ctx);
  if (s == NULL) die("SSL_new");
  SSL_set_connect_state(s);
  SSL_set_verify(s, SSL_VERIFY_PEER, (flags & F_VCB) ? vcb_trivial : NULL);
  attach(s, fd);
  if (!SSL_set_tlsext_host_name(s, "localhost") || !SSL_set1_host(s, "localhost")) die("host");
  SSL_set_session_id_context(s, sid_client, sizeof sid_client);
  if (sess != NULL && !SSL_set_session(s, sess)) die("SSL_set_session");
  return s;
}

/* The module's close(): close_notify only after a clean handshake, error queue untouched. */
static void close_conn(SSL *s) {
  if (SSL_is_init_finished(s) && !(SSL_get_shutdown(s) & SSL_SENT_SHUTDOWN)) {
    ERR_set_mark();
    SSL_shutdown(s);
    ERR_pop_to_mark();
  }
  SSL_free(s);
}

/* ---- memory transport ---------------------------------------------------- */

/* drain(from) + feed(to): what `b:feed(a:drain())` does, all that is pending at once (one
 * BIO_read into a buffer kept between calls, one BIO_write). */
static void xfer(SSL *from, SSL *to) {
  static char *buf = NULL;
  static size_t cap = 0;
  BIO *w = SSL_get_wbio(from), *r = SSL_get_rbio(to);
  size_t pending = BIO_ctrl_pending(w);
  int n;
  if (pending == 0) return;
  if (pending > cap) {
    buf = realloc(buf, pending);
    if (buf == NULL) die("out of memory");
    cap = pending;
  }
  n = BIO_read(w, buf, (int)pending);
  if (n > 0 && BIO_write(r, buf, n) != n) die("BIO_write");
}

static void handshake_step(SSL *s, int *done) {
  int r;
  if (*done) return;
  ERR_clear_error();
  r = SSL_do_handshake(s);
  if (r == 1) *done = 1;
  else if (SSL_get_error(s, r) != SSL_ERROR_WANT_READ) die("handshake");
}

static void mem_handshake(SSL *c, SSL *s) {
  int cdone = 0, sdone = 0, round;
  for (round = 0; round < 20 && !(cdone && sdone); round++) {
    handshake_step(c, &cdone);
    xfer(c, s);
    handshake_step(s, &sdone);
    xfer(s, c);
  }
  if (!(cdone && sdone)) die("handshake did not finish");
}

static int mem_read(SSL *s, char *buf) {
  int n;
  ERR_clear_error();
  n = SSL_read(s, buf, CHUNK);
  if (n <= 0) die("SSL_read");
  (void)SSL_pending(s);   /* the module's read() asks, to stop at what is ready */
  return n;
}

static void mem_echo(SSL *c, SSL *s) {
  char buf[CHUNK];
  int n;
  if (SSL_write(c, echo_msg, ECHO_LEN) != ECHO_LEN) die("SSL_write");
  xfer(c, s);
  n = mem_read(s, buf);
  if (SSL_write(s, buf, n) != n) die("SSL_write");
  xfer(s, c);
  if (mem_read(c, buf) != ECHO_LEN || memcmp(buf, echo_msg, ECHO_LEN) != 0) die("echo");
}

static void print_result(const char *w, long n, double wall, double cpu, double value,
                         const char *unit, const char *extra) {
  printf("RESULT %s %s n=%ld wall=%.6f cpu=%.6f value=%.6f unit=%s%s%s\n", w, impl, n, wall, cpu,
         value, unit, extra[0] ? " " : "", extra);
  fflush(stdout);
}

static void run_mem_hs(const char *w, long n, int flags, int resume) {
  SSL_CTX *sctx = server_ctx(flags), *cctx = client_ctx(flags);
  SSL_SESSION *sess = NULL;
  double t0 = 0, c0 = 0;
  long i, done = 0, reused = 0;
  char extra[64];
  if (resume) {
    SSL *c = new_client(cctx, flags, NULL, -1), *s = new_server(sctx, -1);
    mem_handshake(c, s);
    mem_echo(c, s);   /* the client reads the tickets */
    sess = SSL_get1_session(c);
    if (sess == NULL || !SSL_SESSION_is_resumable(sess)) die("no resumable session");
    close_conn(c);
    close_conn(s);
  }
  for (i = -WARMUP; i < n; i++) {
    SSL *c, *s;
    if (i == 0) {
      t0 = WALL();
      c0 = CPU();
    }
    if (i > 0 && (i & 15) == 0 && WALL() - t0 > max_seconds) break;
    c = new_client(cctx, flags, sess, -1);
    s = new_server(sctx, -1);
    mem_handshake(c, s);
    mem_echo(c, s);
    if (i >= 0) {
      done++;
      reused += SSL_session_reused(c);
    }
    close_conn(c);
    close_conn(s);
  }
  {
    double wall = WALL() - t0, cpu = CPU() - c0;
    snprintf(extra, sizeof extra, "reused=%ld", reused);
    if (resume && reused != done) die("only %ld of %ld handshakes resumed", reused, done);
    if (!resume && reused != 0) die("unexpected resumption");
    print_result(w, done, wall, cpu, done / wall, "hs/s", extra);
  }
  SSL_SESSION_free(sess);
  SSL_CTX_free(cctx);
  SSL_CTX_free(sctx);
}

static void run_mem_bulk(long mib) {
  SSL_CTX *sctx = server_ctx(0), *cctx = client_ctx(0);
  SSL *c = new_client(cctx, 0, NULL, -1), *s = new_server(sctx, -1);
  static char chunk[CHUNK], buf[CHUNK];
  long i, records = mib * (1048576 / CHUNK), done = 0;
  double t0, c0, wall, cpu;
  memset(chunk, 'x', sizeof chunk);
  mem_handshake(c, s);
  mem_echo(c, s);
  t0 = WALL();
  c0 = CPU();
  for (i = 0; i < records; i++) {
    long got = 0;
    if ((i & 63) == 0 && i > 0 && WALL() - t0 > max_seconds) break;
    ERR_clear_error();
    if (SSL_write(c, chunk, CHUNK) != CHUNK) die("SSL_write");
    xfer(c, s);
    while (got < CHUNK) got += mem_read(s, buf);
    done++;
  }
  wall = WALL() - t0;
  cpu = CPU() - c0;
  {
    double mb = (double)done * CHUNK / 1048576.0;
    char extra[64];
    snprintf(extra, sizeof extra, "mib=%.2f", mb);
    print_result("mem_bulk", (long)mb, wall, cpu, mb / wall, "MiB/s", extra);
  }
  close_conn(c);
  close_conn(s);
  SSL_CTX_free(cctx);
  SSL_CTX_free(sctx);
}

static long rss_bytes(void) {
  long size = 0, resident = 0;
  FILE *f = fopen("/proc/self/statm", "r");
  if (f == NULL || fscanf(f, "%ld %ld", &size, &resident) != 2) die("statm");
  fclose(f);
  return resident * sysconf(_SC_PAGESIZE);
}

static void run_mem_idle(long n) {
  SSL_CTX *sctx = server_ctx(0), *cctx = client_ctx(0);
  SSL **conns = calloc((size_t)(2 * n), sizeof *conns);
  long i, before, after;
  double t0 = WALL(), c0 = CPU();
  char extra[96];
  if (conns == NULL) die("calloc");
  for (i = 0; i < WARMUP; i++) {   /* the first handshakes' one-time allocations */
    SSL *c = new_client(cctx, 0, NULL, -1), *s = new_server(sctx, -1);
    mem_handshake(c, s);
    mem_echo(c, s);
    close_conn(c);
    close_conn(s);
  }
  before = rss_bytes();
  for (i = 0; i < n; i++) {
    conns[2 * i] = new_client(cctx, 0, NULL, -1);
    conns[2 * i + 1] = new_server(sctx, -1);
    mem_handshake(conns[2 * i], conns[2 * i + 1]);
    mem_echo(conns[2 * i], conns[2 * i + 1]);
  }
  after = rss_bytes();
  snprintf(extra, sizeof extra, "rss_before=%ld rss_after=%ld", before, after);
  print_result("mem_idle", n, WALL() - t0, CPU() - c0, (double)(after - before) / (double)n,
               "B/pair", extra);
  for (i = 0; i < 2 * n; i++) close_conn(conns[i]);
  free(conns);
  SSL_CTX_free(cctx);
  SSL_CTX_free(sctx);
}

/* ---- sockets ------------------------------------------------------------- */

static void set_nonblock_nodelay(int fd) {
  int one = 1;
  if (fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) < 0) die("fcntl");
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

static void wait_fd(int fd, short events) {
  struct pollfd p;
  int r;
  p.fd = fd;
  p.events = events;
  do r = poll(&p, 1, WAIT_MS); while (r < 0 && errno == EINTR);
  if (r == 0) die("poll: timed out");
  if (r < 0) die("poll: %s", strerror(errno));
}

/* Waits as SSL_get_error says; dies on anything else. */
static void sock_wait(SSL *s, int r, const char *what) {
  int e = SSL_get_error(s, r);
  if (e == SSL_ERROR_WANT_READ) wait_fd(SSL_get_fd(s), POLLIN);
  else if (e == SSL_ERROR_WANT_WRITE) wait_fd(SSL_get_fd(s), POLLOUT);
  else die("%s: SSL error %d", what, e);
}

static void sock_handshake(SSL *s) {
  int r, k;
  for (k = 0; k < 1000; k++) {
    ERR_clear_error();
    if ((r = SSL_do_handshake(s)) == 1) return;
    sock_wait(s, r, "handshake");
  }
  die("handshake: too many waits");
}

static void sock_write(SSL *s, const char *p, int len) {
  int k;
  for (k = 0; len > 0 && k < 100000; k++) {
    int r;
    ERR_clear_error();
    r = SSL_write(s, p, len);
    if (r > 0) {
      p += r;
      len -= r;
    } else {
      sock_wait(s, r, "write");
    }
  }
  if (len > 0) die("write: too many waits");
}

/* One read() of the module: what is decrypted and ready, waiting first when there is none. */
static int sock_read(SSL *s, char *buf) {
  int k;
  for (k = 0; k < 100000; k++) {
    int r;
    ERR_clear_error();
    r = SSL_read(s, buf, CHUNK);
    if (r > 0) {
      (void)SSL_pending(s);
      return r;
    }
    sock_wait(s, r, "read");
  }
  die("read: too many waits");
  return 0;
}

static int listen_socket(int *port) {
  struct sockaddr_in a;
  socklen_t len = sizeof a;
  int one = 1, fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) die("socket");
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  memset(&a, 0, sizeof a);
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (bind(fd, (struct sockaddr *)&a, sizeof a) < 0 || listen(fd, 128) < 0) die("bind/listen");
  if (getsockname(fd, (struct sockaddr *)&a, &len) < 0) die("getsockname");
  *port = ntohs(a.sin_port);
  return fd;
}

static int connect_to(int port) {
  struct sockaddr_in a;
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) die("socket");
  memset(&a, 0, sizeof a);
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = htons((unsigned short)port);
  if (connect(fd, (struct sockaddr *)&a, sizeof a) < 0) die("connect: %s", strerror(errno));
  set_nonblock_nodelay(fd);
  return fd;
}

enum { SERVE_ECHO, SERVE_BULK };

/* Serves `count` connections one after the other, then returns the CPU time it spent from the
 * connection numbered `timed_from` (0-based) on (bulk: from after the handshake); each
 * connection: handshake, then an echo (SERVE_ECHO) or reading `bulk` bytes and answering one
 * byte (SERVE_BULK). */
static double serve(int lfd, long count, int what, long bulk, long timed_from) {
  SSL_CTX *ctx = server_ctx(0);
  char buf[CHUNK];
  long i;
  double t0 = WALL(), c0 = CPU();
  for (i = 0; i < count; i++) {
    int fd;
    SSL *s;
    if (WALL() - t0 > max_seconds + 30) die("server: out of time");
    wait_fd(lfd, POLLIN);
    if (i == timed_from) c0 = CPU();
    fd = accept(lfd, NULL, NULL);
    if (fd < 0) die("accept: %s", strerror(errno));
    set_nonblock_nodelay(fd);
    s = new_server(ctx, fd);
    sock_handshake(s);
    if (what == SERVE_BULK) c0 = CPU();
    if (what == SERVE_ECHO) {
      int got = 0;
      while (got < ECHO_LEN) got += sock_read(s, buf + got);
      sock_write(s, buf, got);
    } else {
      long got = 0;
      while (got < bulk) got += sock_read(s, buf);
      sock_write(s, "k", 1);
    }
    close_conn(s);
    close(fd);
  }
  SSL_CTX_free(ctx);
  return CPU() - c0;
}

/* The forked server writes its timed CPU seconds (a double) into this pipe. */
static int server_pipe[2] = {-1, -1};

static pid_t fork_server(int lfd, long count, int what, long bulk, long timed_from) {
  pid_t pid;
  if (pipe(server_pipe) < 0) die("pipe");
  pid = fork();
  if (pid < 0) die("fork");
  if (pid == 0) {
    double cpu;
    alarm((unsigned)max_seconds + 60);   /* never outlive the run */
    close(server_pipe[0]);
    cpu = serve(lfd, count, what, bulk, timed_from);
    if (write(server_pipe[1], &cpu, sizeof cpu) != sizeof cpu) _exit(1);
    _exit(0);
  }
  close(server_pipe[1]);
  close(lfd);
  return pid;
}

/* Waits for the server (up to 2 s); returns its timed CPU seconds. */
static double reap(pid_t pid) {
  int k, st;
  double cpu = 0;
  for (k = 0; k < 100; k++) {
    if (waitpid(pid, &st, WNOHANG) == pid) {
      if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) die("server failed");
      if (read(server_pipe[0], &cpu, sizeof cpu) != sizeof cpu) die("server cpu");
      close(server_pipe[0]);
      return cpu;
    }
    usleep(20000);
  }
  kill(pid, SIGKILL);
  waitpid(pid, &st, 0);
  die("server did not exit");
  return 0;
}

/* sock_hs (resume = 0) and reconnect (resume = 1): connect, handshake, echo, close. */
static void run_sock_hs(const char *w, long n, int resume) {
  int port, lfd = listen_socket(&port);
  SSL_CTX *cctx = client_ctx(0);
  SSL_SESSION *sess = NULL;
  pid_t pid = fork_server(lfd, n + WARMUP, SERVE_ECHO, 0, WARMUP);
  long i, done = 0, reused = 0;
  double t0 = 0, c0 = 0, wall, cpu, server_cpu = 0;
  char buf[CHUNK], extra[128];
  for (i = -WARMUP; i < n; i++) {
    int fd, got = 0;
    SSL *c;
    if (i == 0) {
      t0 = WALL();
      c0 = CPU();
    }
    if (i > 0 && WALL() - t0 > max_seconds) {
      /* the server still expects the rest: finish with cheap TCP-only no-shows */
      break;
    }
    fd = connect_to(port);
    c = new_client(cctx, 0, resume ? sess : NULL, fd);
    sock_handshake(c);
    sock_write(c, echo_msg, ECHO_LEN);
    while (got < ECHO_LEN) got += sock_read(c, buf + got);
    if (memcmp(buf, echo_msg, ECHO_LEN) != 0) die("echo");
    if (i >= 0) {
      done++;
      reused += SSL_session_reused(c);
    }
    if (resume) {   /* the newest ticket, as sslctx.socket keeps it */
      SSL_SESSION_free(sess);
      sess = SSL_get1_session(c);
    }
    close_conn(c);
    close(fd);
  }
  wall = WALL() - t0;
  cpu = CPU() - c0;
  if (done < n) {   /* out of time: the server is waiting for connections that will not come */
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
  } else {
    server_cpu = reap(pid);
  }
  if (reused != (resume ? done : 0)) die("%ld of %ld connections resumed", reused, done);
  snprintf(extra, sizeof extra, "reused=%ld client_cpu=%.6f server_cpu=%.6f", reused, cpu,
           server_cpu);
  cpu += server_cpu;
  print_result(w, done, wall, cpu, done / wall, resume ? "conn/s" : "hs/s", extra);
  SSL_SESSION_free(sess);
  SSL_CTX_free(cctx);
}

static void run_sock_bulk(long mib) {
  int port, lfd = listen_socket(&port), fd;
  long bytes = mib * 1048576L, sent = 0;
  SSL_CTX *cctx = client_ctx(0);
  pid_t pid = fork_server(lfd, 1, SERVE_BULK, bytes, 0);
  static char chunk[CHUNK];
  char buf[CHUNK], extra[96];
  double t0, c0, wall, cpu, server_cpu;
  SSL *c;
  memset(chunk, 'x', sizeof chunk);
  fd = connect_to(port);
  c = new_client(cctx, 0, NULL, fd);
  sock_handshake(c);
  t0 = WALL();
  c0 = CPU();
  while (sent < bytes) {   /* bounded by the byte count; each write by its waits */
    sock_write(c, chunk, CHUNK);
    sent += CHUNK;
  }
  if (sock_read(c, buf) != 1 || buf[0] != 'k') die("bulk ack");
  wall = WALL() - t0;
  cpu = CPU() - c0;
  close_conn(c);
  close(fd);
  server_cpu = reap(pid);
  snprintf(extra, sizeof extra, "client_cpu=%.6f server_cpu=%.6f", cpu, server_cpu);
  print_result("sock_bulk", mib, wall, cpu + server_cpu, (double)mib / wall, "MiB/s", extra);
  SSL_CTX_free(cctx);
}

/* A stand-alone echo server for run.lua's reconnect workloads. */
static void run_sock_server(long n) {
  int port, lfd = listen_socket(&port);
  double cpu;
  alarm((unsigned)max_seconds + 60);
  printf("PORT %d\n", port);
  fflush(stdout);
  cpu = serve(lfd, n, SERVE_ECHO, 0, WARMUP);
  printf("SERVERCPU %.6f\n", cpu);
  fflush(stdout);
  close(lfd);
}

int main(int argc, char **argv) {
  const char *w;
  long n;
  if (argc != 5) {
    fprintf(stderr, "usage: %s WORKLOAD PKI_DIR N MAX_SECONDS\n", argv[0]);
    return 2;
  }
  w = argv[1];
  pki = argv[2];
  n = atol(argv[3]);
  max_seconds = atof(argv[4]);
  if (n <= 0 || max_seconds <= 0) die("N and MAX_SECONDS must be positive");
  signal(SIGPIPE, SIG_IGN);
  if (getenv("BENCH_REF_RELEASE_BUFFERS") != NULL && strcmp(getenv("BENCH_REF_RELEASE_BUFFERS"), "1") == 0) {
    impl = "c_release";
    extra_modes = SSL_MODE_RELEASE_BUFFERS;
  }
  if (!OPENSSL_init_ssl(0, NULL)) die("OPENSSL_init_ssl");
  if (strcmp(w, "mem_hs") == 0) run_mem_hs(w, n, 0, 0);
  else if (strcmp(w, "mem_hs_vcb") == 0) run_mem_hs(w, n, F_VCB, 0);
  else if (strcmp(w, "mem_hs_mtls") == 0) run_mem_hs(w, n, F_MTLS, 0);
  else if (strcmp(w, "mem_hs_resume") == 0) run_mem_hs(w, n, 0, 1);
  else if (strcmp(w, "mem_bulk") == 0) run_mem_bulk(n);
  else if (strcmp(w, "mem_idle") == 0) run_mem_idle(n);
  else if (strcmp(w, "sock_hs") == 0) run_sock_hs(w, n, 0);
  else if (strcmp(w, "reconnect") == 0) run_sock_hs(w, n, 1);
  else if (strcmp(w, "sock_bulk") == 0) run_sock_bulk(n);
  else if (strcmp(w, "sock_server") == 0) run_sock_server(n);
  else die("unknown workload '%s'", w);
  return 0;
}
