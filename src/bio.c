/* bio.c: the module's own BIOs.
 * - fd: OpenSSL's socket BIO writes with write(2), which raises SIGPIPE on a socket the peer
 *   has closed and kills a Lua process that did not ignore it; this one sends with
 *   MSG_NOSIGNAL, and falls back to read/write for non-sockets (pipes), where write(2) runs
 *   with SIGPIPE blocked in the calling thread and a SIGPIPE it raised is taken back before
 *   the mask is restored: the failure is EPIPE (kind "syscall"), never a dead process.
 * - outbox: the memory transport's write side.  drain() makes its Lua string straight from
 *   this buffer, one copy, where a BIO_s_mem would need a BIO_read into a bounce buffer first.
 */
#define _GNU_SOURCE 1
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/types.h>
#include <sys/socket.h>
#include <openssl/bio.h>
#include "private.h"

#ifndef MSG_NOSIGNAL
#define MSG_NOSIGNAL 0
#endif

typedef struct fd_bio {
  int fd;
  int not_socket;   /* send/recv said ENOTSOCK once: use write/read */
} fd_bio;

static int retryable(int e) {
  return e == EAGAIN || e == EWOULDBLOCK || e == EINTR || e == EINPROGRESS || e == EALREADY;
}

/* write(2) that cannot kill the process: SIGPIPE is blocked for this thread only (other
 * threads and the process's disposition are left alone), and a SIGPIPE this write raised is
 * consumed with a zero-timeout sigtimedwait before the old mask comes back.  One that was
 * already pending (the application's own, blocked) is left pending. */
static ssize_t write_nosigpipe(int fd, const char *buf, size_t len) {
  sigset_t pipe_set, old, pending;
  int was_pending, saved;
  ssize_t n;
  sigemptyset(&pipe_set);
  sigaddset(&pipe_set, SIGPIPE);
  if (pthread_sigmask(SIG_BLOCK, &pipe_set, &old) != 0) {
    errno = EINVAL;   /* never write unprotected */
    return -1;
  }
  was_pending = sigpending(&pending) == 0 && sigismember(&pending, SIGPIPE) == 1;
  n = write(fd, buf, len);
  saved = errno;
  if (n < 0 && saved == EPIPE && !was_pending) {
    struct timespec zero = {0, 0};
    while (sigtimedwait(&pipe_set, NULL, &zero) < 0 && errno == EINTR) continue;
  }
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  errno = saved;
  return n;
}

/* send/recv on sockets; read/write once the descriptor turns out not to be one. */
static ssize_t fd_send(fd_bio *f, const char *buf, size_t len) {
  if (!f->not_socket) {
    ssize_t n = send(f->fd, buf, len, MSG_NOSIGNAL);
    if (n >= 0 || errno != ENOTSOCK) return n;
    f->not_socket = 1;
  }
  return write_nosigpipe(f->fd, buf, len);
}

static ssize_t fd_recv(fd_bio *f, char *buf, size_t len) {
  if (!f->not_socket) {
    ssize_t n = recv(f->fd, buf, len, 0);
    if (n >= 0 || errno != ENOTSOCK) return n;
    f->not_socket = 1;
  }
  return read(f->fd, buf, len);
}

static int fd_bio_write(BIO *b, const char *buf, int len) {
  ssize_t n;
  BIO_clear_retry_flags(b);
  n = fd_send((fd_bio *)BIO_get_data(b), buf, (size_t)len);
  if (n < 0 && retryable(errno)) BIO_set_retry_write(b);
  return (int)n;
}

static int fd_bio_read(BIO *b, char *buf, int len) {
  ssize_t n;
  BIO_clear_retry_flags(b);
  if (buf == NULL || len <= 0) return 0;
  n = fd_recv((fd_bio *)BIO_get_data(b), buf, (size_t)len);
  if (n < 0 && retryable(errno)) BIO_set_retry_read(b);
  if (n == 0) BIO_set_flags(b, BIO_FLAGS_IN_EOF);
  return (int)n;
}

static int fd_bio_puts(BIO *b, const char *s) {
  size_t n = 0;
  while (s[n] != '\0') n++;
  return fd_bio_write(b, s, (int)n);
}

static long fd_bio_ctrl(BIO *b, int cmd, long num, void *ptr) {
  fd_bio *f = (fd_bio *)BIO_get_data(b);
  (void)num;
  switch (cmd) {
  case BIO_CTRL_FLUSH: return 1;
  case BIO_C_GET_FD:
    if (ptr != NULL) *(int *)ptr = f->fd;
    return f->fd;
  case BIO_CTRL_EOF: return BIO_test_flags(b, BIO_FLAGS_IN_EOF) != 0;
  default: return 0;
  }
}

static int fd_bio_create(BIO *b) {
  fd_bio *f = (fd_bio *)OPENSSL_zalloc(sizeof *f);
  if (f == NULL) return 0;
  f->fd = -1;
  BIO_set_data(b, f);
  BIO_set_init(b, 1);
  return 1;
}

static int fd_bio_destroy(BIO *b) {
  OPENSSL_free(BIO_get_data(b));   /* the fd is the connection's to close */
  BIO_set_data(b, NULL);
  return 1;
}

static BIO_METHOD *fd_method = NULL;
static CRYPTO_ONCE fd_method_once = CRYPTO_ONCE_STATIC_INIT;

static void fd_method_init(void) {
  BIO_METHOD *m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK | BIO_TYPE_DESCRIPTOR,
                               "sslctx fd");
  if (m == NULL) return;
  BIO_meth_set_write(m, fd_bio_write);
  BIO_meth_set_read(m, fd_bio_read);
  BIO_meth_set_puts(m, fd_bio_puts);
  BIO_meth_set_ctrl(m, fd_bio_ctrl);
  BIO_meth_set_create(m, fd_bio_create);
  BIO_meth_set_destroy(m, fd_bio_destroy);
  fd_method = m;   /* process-wide and never freed: BIOs of any Lua state may use it */
}

BIO *sx_fd_bio_new(int fd) {
  BIO *b;
  if (!CRYPTO_THREAD_run_once(&fd_method_once, fd_method_init) || fd_method == NULL) return NULL;
  b = BIO_new(fd_method);
  if (b != NULL) ((fd_bio *)BIO_get_data(b))->fd = fd;
  return b;
}

/* ---- outbox: SSL -> drain() ---------------------------------------------- */

/* Once drained, a buffer past this size is freed: an idle connection keeps at most this much,
 * and one burst does not pin its memory. */
#define OUTBOX_KEEP 2048

typedef struct outbox {
  char *buf;
  size_t off, len, cap;   /* unread bytes are buf[off .. len) */
} outbox;

static int outbox_reserve(outbox *o, size_t n) {
  size_t need, cap;
  char *nb;
  if (o->off > 0 && o->cap - o->len < n) {   /* slide the unread part down first */
    memmove(o->buf, o->buf + o->off, o->len - o->off);
    o->len -= o->off;
    o->off = 0;
  }
  if (o->cap - o->len >= n) return 1;
  need = o->len + n;
  if (need < o->len || need > ((size_t)-1) / 2) return 0;
  if (o->cap == 0) {
    cap = (need + 255) & ~(size_t)255;   /* sized to the first write */
  } else {
    cap = o->cap;
    while (cap < need) cap *= 2;
  }
  nb = (char *)realloc(o->buf, cap);
  if (nb == NULL) return 0;
  o->buf = nb;
  o->cap = cap;
  return 1;
}

static int outbox_write(BIO *b, const char *data, int len) {
  outbox *o = (outbox *)BIO_get_data(b);
  BIO_clear_retry_flags(b);
  if (len <= 0) return 0;
  if (!outbox_reserve(o, (size_t)len)) return -1;   /* SSL reports the failed write */
  memcpy(o->buf + o->len, data, (size_t)len);
  o->len += (size_t)len;
  return len;
}

/* What is waiting, without taking it (drain pushes it, then consumes). */
const char *sx_outbox_peek(BIO *b, size_t *n) {
  outbox *o = (outbox *)BIO_get_data(b);
  *n = o->len - o->off;
  return *n > 0 ? o->buf + o->off : "";   /* never NULL: callers may hand it to memcpy */
}

void sx_outbox_consume(BIO *b, size_t n) {
  outbox *o = (outbox *)BIO_get_data(b);
  if (n > o->len - o->off) n = o->len - o->off;
  o->off += n;
  if (o->off < o->len) return;
  o->off = o->len = 0;
  if (o->cap > OUTBOX_KEEP) {
    free(o->buf);
    o->buf = NULL;
    o->cap = 0;
  }
}

/* Write-only: SSL never reads its wbio, and drain() uses peek/consume. */
static long outbox_ctrl(BIO *b, int cmd, long num, void *ptr) {
  outbox *o = (outbox *)BIO_get_data(b);
  (void)num;
  (void)ptr;
  switch (cmd) {
  case BIO_CTRL_PENDING:
  case BIO_CTRL_WPENDING: return (long)(o->len - o->off);
  case BIO_CTRL_FLUSH: return 1;
  default: return 0;
  }
}

static int outbox_create(BIO *b) {
  outbox *o = (outbox *)OPENSSL_zalloc(sizeof *o);
  if (o == NULL) return 0;
  BIO_set_data(b, o);
  BIO_set_init(b, 1);
  return 1;
}

static int outbox_destroy(BIO *b) {
  outbox *o = (outbox *)BIO_get_data(b);
  if (o != NULL) free(o->buf);
  OPENSSL_free(o);
  BIO_set_data(b, NULL);
  return 1;
}

static BIO_METHOD *outbox_method = NULL;
static CRYPTO_ONCE outbox_method_once = CRYPTO_ONCE_STATIC_INIT;

static void outbox_method_init(void) {
  BIO_METHOD *m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "sslctx outbox");
  if (m == NULL) return;
  BIO_meth_set_write(m, outbox_write);
  BIO_meth_set_ctrl(m, outbox_ctrl);
  BIO_meth_set_create(m, outbox_create);
  BIO_meth_set_destroy(m, outbox_destroy);
  outbox_method = m;   /* process-wide and never freed, as fd_method */
}

BIO *sx_outbox_new(void) {
  if (!CRYPTO_THREAD_run_once(&outbox_method_once, outbox_method_init) || outbox_method == NULL)
    return NULL;
  return BIO_new(outbox_method);
}
