/* bio.c: the module's own BIOs.
 * - fd: OpenSSL's socket BIO writes with write(2), which raises SIGPIPE on a socket the peer
 *   has closed and kills a Lua process that did not ignore it; this one sends with
 *   MSG_NOSIGNAL, and falls back to read/write for non-sockets (pipes), where write(2) runs
 *   with SIGPIPE blocked in the calling thread and a SIGPIPE it raised is taken back before
 *   the mask is restored: the failure is EPIPE (kind "syscall"), never a dead process.
 * - outbox and inbox: the memory transport's two sides.  drain() makes its Lua string
 *   straight from the outbox, one copy, where a BIO_s_mem would need a BIO_read into a bounce
 *   buffer first; both free their buffer once empty, which a BIO_s_mem never does.
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

/* conn:drain_to: a send that never blocks and never raises SIGPIPE; sockets only (a pipe's
 * write could block: ENOTSOCK tells the caller to hand the bytes over otherwise).  -> bytes
 * sent, 0 when the socket takes nothing now, or -1 with errno. */
ssize_t sx_send_now(int fd, const char *buf, size_t len) {
  ssize_t n;
  do n = send(fd, buf, len, MSG_NOSIGNAL | MSG_DONTWAIT);
  while (n < 0 && errno == EINTR);
  if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return 0;
  return n;
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

/* ---- the memory transport's buffers ------------------------------------- */

/* Both directions hold bytes in a membuf that is freed as soon as it is empty and larger than
 * MEMBUF_KEEP: an idle connection keeps no flight or burst (a BIO_s_mem keeps the capacity
 * of the largest flight it ever held), and one burst does not pin its memory.  A buffer
 * that empties while bulk data flows comes back at its previous size at once (`hint`),
 * instead of growing again by doubling, copying what it holds each time. */
#define MEMBUF_KEEP 2048
#define MEMBUF_HINT_MAX (256 * 1024)

typedef struct membuf {
  char *buf;
  size_t off, len, cap;   /* unread bytes are buf[off .. len) */
  size_t hint;            /* capacity when last freed (bounded): the next bulk allocation */
  int eof_return;         /* inbox: what a read of an empty buffer returns (-1: retry) */
} membuf;

static int membuf_reserve(membuf *m, size_t n) {
  size_t need, cap;
  char *nb;
  if (m->off > 0 && m->cap - m->len < n) {   /* slide the unread part down first */
    memmove(m->buf, m->buf + m->off, m->len - m->off);
    m->len -= m->off;
    m->off = 0;
  }
  if (m->cap - m->len >= n) return 1;
  need = m->len + n;
  if (need < m->len || need > ((size_t)-1) / 2) return 0;
  if (m->cap == 0) {
    cap = (need + 255) & ~(size_t)255;   /* sized to the first write... */
    if (need > MEMBUF_KEEP && m->hint > cap) cap = m->hint;   /* ...or to the last burst */
  } else {
    cap = m->cap;
    while (cap < need) cap *= 2;
  }
  nb = (char *)realloc(m->buf, cap);
  if (nb == NULL) return 0;
  m->buf = nb;
  m->cap = cap;
  return 1;
}

static int membuf_append(membuf *m, const char *data, size_t n) {
  if (!membuf_reserve(m, n)) return 0;
  memcpy(m->buf + m->len, data, n);
  m->len += n;
  return 1;
}

static void membuf_consume(membuf *m, size_t n) {
  if (n > m->len - m->off) n = m->len - m->off;
  m->off += n;
  if (m->off < m->len) return;
  m->off = m->len = 0;
  if (m->cap > MEMBUF_KEEP) {
    m->hint = m->cap < MEMBUF_HINT_MAX ? m->cap : MEMBUF_HINT_MAX;
    free(m->buf);
    m->buf = NULL;
    m->cap = 0;
  }
}

static int membuf_create(BIO *b) {
  membuf *m = (membuf *)OPENSSL_zalloc(sizeof *m);
  if (m == NULL) return 0;
  m->eof_return = -1;
  BIO_set_data(b, m);
  BIO_set_init(b, 1);
  return 1;
}

static int membuf_destroy(BIO *b) {
  membuf *m = (membuf *)BIO_get_data(b);
  if (m != NULL) free(m->buf);
  OPENSSL_free(m);
  BIO_set_data(b, NULL);
  return 1;
}

static long membuf_ctrl(BIO *b, int cmd, long num, void *ptr) {
  membuf *m = (membuf *)BIO_get_data(b);
  (void)ptr;
  switch (cmd) {
  case BIO_CTRL_PENDING:
  case BIO_CTRL_WPENDING: return (long)(m->len - m->off);
  case BIO_CTRL_EOF: return m->len == m->off && m->eof_return == 0;
  case BIO_C_SET_BUF_MEM_EOF_RETURN: m->eof_return = (int)num; return 1;
  case BIO_CTRL_FLUSH: return 1;
  default: return 0;
  }
}

/* Both write: the outbox is SSL's output (drain() uses peek/consume), the inbox what
 * feed() gives SSL to read. */
static int membuf_write(BIO *b, const char *data, int len) {
  BIO_clear_retry_flags(b);
  if (len <= 0) return 0;
  if (!membuf_append((membuf *)BIO_get_data(b), data, (size_t)len)) return -1;
  return len;
}

/* outbox: drain() makes its Lua string straight from the buffer (one copy). */
const char *sx_outbox_peek(BIO *b, size_t *n) {
  membuf *m = (membuf *)BIO_get_data(b);
  *n = m->len - m->off;
  return *n > 0 ? m->buf + m->off : "";   /* never NULL: callers may hand it to memcpy */
}

void sx_outbox_consume(BIO *b, size_t n) {
  membuf_consume((membuf *)BIO_get_data(b), n);
}

/* inbox: an empty buffer is "retry" until feed(nil) sets the end (BIO_set_mem_eof_return). */
static int inbox_read(BIO *b, char *out, int len) {
  membuf *m = (membuf *)BIO_get_data(b);
  size_t avail = m->len - m->off, n = len > 0 ? (size_t)len : 0;
  BIO_clear_retry_flags(b);
  if (avail == 0) {
    if (m->eof_return != 0) BIO_set_retry_read(b);
    return m->eof_return;
  }
  if (n > avail) n = avail;
  memcpy(out, m->buf + m->off, n);
  membuf_consume(m, n);
  return (int)n;
}

static BIO_METHOD *outbox_method = NULL, *inbox_method = NULL;
static CRYPTO_ONCE membuf_methods_once = CRYPTO_ONCE_STATIC_INIT;

static BIO_METHOD *membuf_method_new(const char *name, int readable) {
  BIO_METHOD *m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, name);
  if (m == NULL) return NULL;
  BIO_meth_set_write(m, membuf_write);
  if (readable) BIO_meth_set_read(m, inbox_read);
  BIO_meth_set_ctrl(m, membuf_ctrl);
  BIO_meth_set_create(m, membuf_create);
  BIO_meth_set_destroy(m, membuf_destroy);
  return m;
}

static void membuf_methods_init(void) {
  /* process-wide and never freed, as fd_method */
  outbox_method = membuf_method_new("sslctx outbox", 0);
  inbox_method = membuf_method_new("sslctx inbox", 1);
}

BIO *sx_outbox_new(void) {
  if (!CRYPTO_THREAD_run_once(&membuf_methods_once, membuf_methods_init) || outbox_method == NULL)
    return NULL;
  return BIO_new(outbox_method);
}

BIO *sx_inbox_new(void) {
  if (!CRYPTO_THREAD_run_once(&membuf_methods_once, membuf_methods_init) || inbox_method == NULL)
    return NULL;
  return BIO_new(inbox_method);
}
