/* loopback_bind.c: an LD_PRELOAD shim that turns a bind() to the wildcard address into a bind
 * to loopback (0.0.0.0 -> 127.0.0.1, :: -> ::1).  gnutls-serv has no option to choose its
 * listening address; the interop specs run it under this shim so that no test server is
 * ever reachable from outside the machine.  Built by spec/support/peers.lua into
 * build/support/loopback_bind.so. */
#define _GNU_SOURCE 1
#include <dlfcn.h>
#include <string.h>
#include <sys/types.h>
#include <sys/socket.h>
#include <netinet/in.h>

typedef int (*bind_fn)(int, const struct sockaddr *, socklen_t);

int bind(int fd, const struct sockaddr *addr, socklen_t len) {
  static bind_fn real = NULL;
  if (real == NULL) {
    union { void *p; bind_fn f; } u;
    u.p = dlsym(RTLD_NEXT, "bind");
    real = u.f;
  }
  if (addr != NULL && addr->sa_family == AF_INET && len >= (socklen_t)sizeof(struct sockaddr_in)) {
    struct sockaddr_in a;
    memcpy(&a, addr, sizeof a);
    if (a.sin_addr.s_addr == htonl(INADDR_ANY)) {
      a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
      return real(fd, (const struct sockaddr *)&a, (socklen_t)sizeof a);
    }
  } else if (addr != NULL && addr->sa_family == AF_INET6 &&
             len >= (socklen_t)sizeof(struct sockaddr_in6)) {
    struct sockaddr_in6 a;
    memcpy(&a, addr, sizeof a);
    if (IN6_IS_ADDR_UNSPECIFIED(&a.sin6_addr)) {
      a.sin6_addr = in6addr_loopback;
      return real(fd, (const struct sockaddr *)&a, (socklen_t)sizeof a);
    }
  }
  return real(fd, addr, len);
}
