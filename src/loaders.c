/* loaders.c: from Lua values to OpenSSL objects.  Holders (C resources owned by the Lua
 * stack), the objects that box one OpenSSL pointer, reading a value that is PEM text or names
 * a PEM/DER file, certificates and CRLs from strings, files, objects or arrays of them
 * (sslctx.x509, sslctx.crl, sx_load_certs, sx_load_crls), and the password callback through
 * which pkey.c asks Lua for an encrypted key's password. */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <openssl/pem.h>
#include "private.h"

#define SX_HOLDER_MT "sslctx.holder"

/* ---- holders: C resources owned by the Lua stack ------------------------- */

/* A holder is pushed (empty) before a C resource is acquired, so that a Lua error raised
 * while the resource is in use (out of memory while pushing results) frees it at
 * collection instead of leaking it. */
sx_holder *sx_holder_push(lua_State *L) {
  sx_holder *h = (sx_holder *)lua_newuserdata(L, sizeof *h);
  h->p = NULL;
  h->free_fn = NULL;
  luaL_setmetatable(L, SX_HOLDER_MT);
  return h;
}

void sx_holder_release(sx_holder *h) {
  if (h->p != NULL && h->free_fn != NULL) h->free_fn(h->p);
  h->p = NULL;
}

static int holder_gc(lua_State *L) {
  /* reachable through debug.getregistry(): check what it is given, like every finalizer */
  sx_holder_release((sx_holder *)luaL_checkudata(L, 1, SX_HOLDER_MT));
  return 0;
}

static void free_bio(void *p) { BIO_free((BIO *)p); }

BIO *sx_membio_push(lua_State *L) {
  sx_holder *h = sx_holder_push(L);
  h->free_fn = free_bio;
  h->p = BIO_new(BIO_s_mem());
  return (BIO *)h->p;
}

void sx_membio_result(lua_State *L) {
  sx_holder *h = (sx_holder *)lua_touserdata(L, -1);
  char *data = NULL;
  long n = BIO_get_mem_data((BIO *)h->p, &data);
  lua_pushlstring(L, data, n > 0 ? (size_t)n : 0);
  sx_holder_release(h);
  lua_remove(L, -2);
}

void sx_membio_pop(lua_State *L) {
  sx_holder_release((sx_holder *)lua_touserdata(L, -1));
  lua_pop(L, 1);
}

/* ---- boxes: objects holding one OpenSSL pointer -------------------------- */

/* Created closed (NULL), filled once the OpenSSL object is in hand, as liolib does with
 * files: a memory error in between leaves a consistent object. */
void **sx_box_new(lua_State *L, const char *mt) {
  void **box = (void **)sx_newuserdata(L, sizeof *box);
  *box = NULL;
  luaL_setmetatable(L, mt);
  return box;
}

/* __gc and __close: the pointer of the object at 1, which is left closed; the caller frees it
 * (NULL when it was already closed). */
void *sx_box_take(lua_State *L, const char *mt) {
  void **box = (void **)luaL_checkudata(L, 1, mt);
  void *p = *box;
  *box = NULL;
  return p;
}

void *sx_box_test(lua_State *L, int arg, const char *mt) {
  void **box = (void **)luaL_testudata(L, arg, mt);
  return box != NULL ? *box : NULL;
}

/* The type name for "expected, got ..." messages: the object's class when it has one. */
const char *sx_type_name(lua_State *L, int idx) {
  const char *name = luaL_typename(L, idx);
  if (luaL_getmetafield(L, idx, "__name")) {
    if (lua_type(L, -1) == LUA_TSTRING) name = lua_tostring(L, -1);  /* kept by the metatable */
    lua_pop(L, 1);
  }
  return name;
}

/* ---- values that are PEM text or name a file ----------------------------- */

/* The whole file in a memory BIO; NULL with *err = errno (0: OpenSSL out of memory). */
static BIO *read_file(const char *path, int *err) {
  char chunk[4096];
  size_t n;
  BIO *mem;
  FILE *f = fopen(path, "rb");
  *err = 0;
  if (f == NULL) {
    *err = errno;
    return NULL;
  }
  errno = 0;
  mem = BIO_new(BIO_s_mem());
  while (mem != NULL && (n = fread(chunk, 1, sizeof chunk, f)) > 0) {
    if (BIO_write(mem, chunk, (int)n) != (int)n) {
      BIO_free(mem);
      mem = NULL;
    }
  }
  if (mem != NULL && ferror(f)) {
    *err = errno != 0 ? errno : EIO;
    BIO_free(mem);
    mem = NULL;
  }
  fclose(f);
  return mem;
}

int sx_is_der(const char *s, size_t len) {
  /* Every DER object read here is a SEQUENCE (0x30).  Anything else is taken for PEM, whose
   * reader skips text before the first "-----BEGIN" (as in `openssl x509 -text` output). */
  return len > 0 && (unsigned char)s[0] == 0x30;
}

/* The file's bytes in a memory BIO; NULL with nil, "<what>: <path>: <reason>", "file"
 * pushed. */
static BIO *open_file(lua_State *L, const char *path, size_t plen, const char *what) {
  int err;
  BIO *mem;
  if (strlen(path) != plen) {
    sx_push_failure(L, "file", "%s: file name contains a zero byte", what);
    return NULL;
  }
  ERR_clear_error();
  if ((mem = read_file(path, &err)) != NULL) return mem;
  if (err != 0) sx_push_failure(L, "file", "%s: %s: %s", what, path, strerror(err));
  else sx_push_ssl_failure(L, what, path, "file");
  return NULL;
}

int sx_input_open(lua_State *L, int idx, const char *what, sx_input *in) {
  char *data = NULL;
  long n;
  in->s = lua_tolstring(L, idx, &in->len);
  in->path = NULL;
  in->mem = NULL;
  if (sx_is_pem_text(in->s, in->len)) return 1;
  in->path = in->s;
  if ((in->mem = open_file(L, in->path, in->len, what)) == NULL) return 0;
  n = BIO_get_mem_data(in->mem, &data);
  in->s = data;
  in->len = n > 0 ? (size_t)n : 0;
  return 1;
}

void sx_input_close(sx_input *in) {
  BIO_free(in->mem);
  in->mem = NULL;
}

/* ---- certificates and CRLs ----------------------------------------------- */

/* Declines any password: a certificate or CRL is never encrypted, and OpenSSL's default
 * would prompt on the terminal. */
static int no_password(char *buf, int size, int rwflag, void *u) {
  (void)buf, (void)size, (void)rwflag, (void)u;
  return -1;
}

static int is_pem_end(unsigned long e) {
  return ERR_GET_LIB(e) == ERR_LIB_PEM && ERR_GET_REASON(e) == PEM_R_NO_START_LINE;
}

/* What differs between reading certificates and reading CRLs. */
typedef struct sx_codec {
  const char *noun;                                  /* for "no <noun> found" */
  void *(*read_pem)(BIO *b);                         /* next block of this type, or NULL */
  void *(*read_der)(const unsigned char **p, long len);
  int (*add)(void *sk, void *obj);                   /* takes obj; 0 when out of memory */
  void (*free_obj)(void *obj);
} sx_codec;

static void *cert_read_pem(BIO *b) { return PEM_read_bio_X509_AUX(b, NULL, no_password, NULL); }
static void *cert_read_der(const unsigned char **p, long len) { return d2i_X509(NULL, p, len); }
static void cert_free(void *o) { X509_free((X509 *)o); }
static int cert_add(void *sk, void *o) { return sk_X509_push((STACK_OF(X509) *)sk, (X509 *)o) > 0; }

static void *crl_read_pem(BIO *b) { return PEM_read_bio_X509_CRL(b, NULL, no_password, NULL); }
static void *crl_read_der(const unsigned char **p, long len) { return d2i_X509_CRL(NULL, p, len); }
static void crl_free(void *o) { X509_CRL_free((X509_CRL *)o); }
static int crl_add(void *sk, void *o) {
  return sk_X509_CRL_push((STACK_OF(X509_CRL) *)sk, (X509_CRL *)o) > 0;
}

static const sx_codec cert_codec = {"certificate", cert_read_pem, cert_read_der, cert_add,
                                    cert_free};
static const sx_codec crl_codec = {"CRL", crl_read_pem, crl_read_der, crl_add, crl_free};

static int add_or_free(const sx_codec *c, void *sk, void *obj) {
  if (c->add(sk, obj)) return 1;
  c->free_obj(obj);
  return 0;
}

/* Decodes the bytes into sk: one DER object, or the PEM blocks of the codec's type (all of
 * them, or only the first).  Returns how many were added, 0 when there was none (queue
 * cleared), -1 on an OpenSSL failure (reasons queued). */
static int decode_into(const sx_codec *c, const char *s, size_t len, void *sk, int first_only) {
  int count = 0;
  void *obj;
  BIO *b;
  if (sx_is_der(s, len)) {
    const unsigned char *p = (const unsigned char *)s;
    obj = c->read_der(&p, (long)len);
    if (obj == NULL) return -1;
    return add_or_free(c, sk, obj) ? 1 : -1;
  }
  if (len > INT_MAX || (b = BIO_new_mem_buf(s, (int)len)) == NULL) return -1;
  while ((obj = c->read_pem(b)) != NULL) {
    if (!add_or_free(c, sk, obj)) {
      count = -1;
      break;
    }
    count++;
    if (first_only) break;
  }
  BIO_free(b);
  if (count < 0) return -1;
  /* Running out of blocks is how the loop ends: only other reasons are failures. */
  if (!first_only || count == 0) {
    unsigned long e = ERR_peek_last_error();
    if (e != 0 && !is_pem_end(e)) return -1;
  }
  ERR_clear_error();
  return count;
}

/* PEM text, or the PEM/DER file named, at idx, into sk.  1, or 0 with nil,msg,kind pushed. */
static int decode_string(lua_State *L, const sx_codec *c, int idx, void *sk, const char *what) {
  sx_input in;
  int n;
  ERR_clear_error();
  if (!sx_input_open(L, idx, what, &in)) return 0;
  n = decode_into(c, in.s, in.len, sk, 0);
  sx_input_close(&in);
  if (n > 0) return 1;
  if (n < 0) sx_push_ssl_failure(L, what, in.path, "file");
  else if (in.path != NULL)
    sx_push_failure(L, "file", "%s: %s: no %s found", what, in.path, c->noun);
  else sx_push_failure(L, "file", "%s: no %s found", what, c->noun);
  return 0;
}

/* One loader per kind: how to add an object of ours found in a Lua value. */
typedef struct sx_loader {
  const sx_codec *codec;
  const char *mt;                      /* the object class accepted */
  const char *closed;                  /* message for a closed one */
  const char *expected;                /* for type errors: a single item */
  void *(*new_stack)(void);
  void (*free_stack)(void *sk);
  int (*add_object)(void *sk, void *ud);   /* up-refs; 0 when out of memory */
} sx_loader;

static void free_x509_stack(void *p) { sk_X509_pop_free((STACK_OF(X509) *)p, X509_free); }
static void free_crl_stack(void *p) { sk_X509_CRL_pop_free((STACK_OF(X509_CRL) *)p, X509_CRL_free); }
static void *cert_stack_new(void) { return sk_X509_new_null(); }
static void *crl_stack_new(void) { return sk_X509_CRL_new_null(); }

static int cert_add_object(void *sk, void *ud) {
  X509 *x = *(X509 **)ud;
  X509_up_ref(x);
  return add_or_free(&cert_codec, sk, x);
}

static int crl_add_object(void *sk, void *ud) {
  X509_CRL *crl = *(X509_CRL **)ud;
  X509_CRL_up_ref(crl);
  return add_or_free(&crl_codec, sk, crl);
}

static const sx_loader cert_loader = {
  &cert_codec, SX_X509_MT, "x509 is closed",
  "PEM text, file name or " SX_X509_MT,
  cert_stack_new, free_x509_stack, cert_add_object
};

static const sx_loader crl_loader = {
  &crl_codec, SX_CRL_MT, "crl is closed",
  "PEM text, file name or " SX_CRL_MT,
  crl_stack_new, free_crl_stack, crl_add_object
};

/* sslctx.x509 / sslctx.crl (pem_or_der) -> object | nil, msg, "file".  PEM: the first one. */
static int new_first(lua_State *L, const sx_loader *ld, const char *what) {
  size_t len;
  const char *s = luaL_checklstring(L, 1, &len);
  void **box = sx_box_new(L, ld->mt);
  void *sk = ld->new_stack();
  int n;
  ERR_clear_error();
  n = sk != NULL ? decode_into(ld->codec, s, len, sk, 1) : -1;
  if (n > 0) *box = OPENSSL_sk_shift((OPENSSL_STACK *)sk);
  ld->free_stack(sk);
  if (n < 0) return sx_push_error(L, what, "file");
  if (n == 0) return sx_push_failure(L, "file", "%s: no %s found", what, ld->codec->noun);
  return 1;
}

int sx_x509_new(lua_State *L) {
  return new_first(L, &cert_loader, "x509");
}

int sx_crl_new(lua_State *L) {
  return new_first(L, &crl_loader, "crl");
}

/* The value at idx is a string or an open object of the loader's class; raises naming the
 * caller's argument or option w (and the array position, when pos > 0) otherwise. */
static void check_item(lua_State *L, const sx_loader *ld, sx_where w, int idx, int pos) {
  void *ud;
  const char *problem = NULL;
  if (lua_type(L, idx) == LUA_TSTRING) return;
  ud = luaL_testudata(L, idx, ld->mt);
  /* Both objects are boxes: one OpenSSL pointer, NULL once released. */
  if (ud != NULL && *(void **)ud != NULL) return;
  if (ud != NULL) problem = ld->closed;
  else problem = lua_pushfstring(L, "%s%s expected, got %s", ld->expected,
                                 pos > 0 ? "" : " (or an array of them)", sx_type_name(L, idx));
  if (pos > 0) problem = lua_pushfstring(L, "item %d: %s", pos, problem);
  sx_where_error(L, w, problem);
}

/* One string or object at idx, into sk.  1, or 0 with nil,msg,kind pushed. */
static int load_item(lua_State *L, const sx_loader *ld, int idx, void *sk, const char *what) {
  if (lua_type(L, idx) == LUA_TSTRING) return decode_string(L, ld->codec, idx, sk, what);
  ERR_clear_error();
  if (ld->add_object(sk, lua_touserdata(L, idx))) return 1;
  sx_push_error(L, what, "file");
  return 0;
}

static void *load_all(lua_State *L, const sx_loader *ld, int arg, const char *what, sx_where w) {
  int i, n = 0, ok = 1, hidx;
  sx_holder *h;
  void *sk;
  arg = lua_absindex(L, arg);
  if (lua_type(L, arg) == LUA_TTABLE) {
    n = (int)lua_rawlen(L, arg);
    for (i = 1; i <= n; i++) {
      lua_rawgeti(L, arg, i);
      check_item(L, ld, w, lua_gettop(L), i);
      lua_pop(L, 1);
    }
  } else {
    check_item(L, ld, w, arg, 0);
  }
  /* The stack is held by the Lua stack until it is handed over. */
  h = sx_holder_push(L);
  hidx = lua_gettop(L);
  h->free_fn = ld->free_stack;
  if ((h->p = sk = ld->new_stack()) == NULL) {
    sx_push_error(L, what, "file");
    ok = 0;
  } else if (lua_type(L, arg) != LUA_TTABLE) {
    ok = load_item(L, ld, arg, sk, what);
  } else if (n == 0) {
    sx_push_failure(L, "file", "%s: no %s given (empty list)", what, ld->codec->noun);
    ok = 0;
  } else {
    for (i = 1; ok && i <= n; i++) {
      lua_rawgeti(L, arg, i);
      ok = load_item(L, ld, lua_gettop(L), sk, what);
      if (ok) lua_pop(L, 1);
      else lua_remove(L, -4);   /* the item, below nil,msg,kind */
    }
  }
  if (ok) h->p = NULL;        /* handed to the caller */
  else sx_holder_release(h);
  lua_remove(L, hidx);
  return ok ? sk : NULL;
}

STACK_OF(X509) *sx_load_certs(lua_State *L, int idx, const char *what, sx_where w) {
  return (STACK_OF(X509) *)load_all(L, &cert_loader, idx, what, w);
}

STACK_OF(X509_CRL) *sx_load_crls(lua_State *L, int idx, sx_where w) {
  return (STACK_OF(X509_CRL) *)load_all(L, &crl_loader, idx, "crl", w);
}

/* ---- the password callback ---------------------------------------------- */

/* Registry slot through which the password (string or function) reaches the protected
 * helper: a helper run by sx_cpcall cannot see its caller's stack.  The slot is created at
 * open, so that writing it later from inside OpenSSL never allocates (never raises). */
static const char password_slot = 'p';

typedef struct password_call {
  char *buf;
  int size;
  int rwflag;
  int len;            /* out: bytes copied */
} password_call;

/* Raises "password callback: <the error value>". */
static int raise_callback_error(lua_State *L, int idx) {
  int t = lua_type(L, idx);
  if (t == LUA_TSTRING || t == LUA_TNUMBER)
    lua_pushfstring(L, "password callback: %s", lua_tostring(L, idx));
  else
    lua_pushfstring(L, "password callback: (error object is a %s value)", lua_typename(L, t));
  return lua_error(L);
}

/* Runs protected.  Takes the password (or the function giving it) from the slot, calls
 * fn(max_len, rwflag ~= 0) if it is a function, and copies the string into the buffer.
 * Every failure raises its final message, which sx_cpcall leaves on the stack. */
static int password_helper(lua_State *L) {
  password_call *c = (password_call *)lua_touserdata(L, 1);
  int is_fn;
  size_t len;
  const char *s;
  lua_rawgetp(L, LUA_REGISTRYINDEX, &password_slot);
  lua_pushboolean(L, 0);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &password_slot);
  is_fn = lua_type(L, -1) == LUA_TFUNCTION;
  if (is_fn) {
    lua_pushinteger(L, c->size);
    lua_pushboolean(L, c->rwflag != 0);
    if (lua_pcall(L, 2, 1, 0) != LUA_OK) return raise_callback_error(L, -1);
    if (lua_type(L, -1) != LUA_TSTRING)
      return luaL_error(L, "password callback: returned %s (string expected)",
                        luaL_typename(L, -1));
  }
  s = lua_tolstring(L, -1, &len);
  if (len > (size_t)c->size) {
    /* Truncating would try a different password than the one given. */
    if (is_fn) return luaL_error(L, "password callback: password longer than %d bytes", c->size);
    return luaL_error(L, "password longer than %d bytes", c->size);
  }
  memcpy(c->buf, s, len);
  c->len = (int)len;
  return 0;
}

int sx_password_cb(char *buf, int size, int rwflag, void *u) {
  sx_password *pw = (sx_password *)u;
  lua_State *L;
  password_call c;
  int idx, t;
  /* After one failure OpenSSL may ask again: say no without stacking a second message. */
  if (pw == NULL || pw->index == 0 || pw->failed || size < 0) return -1;
  L = pw->L;
  idx = lua_absindex(L, pw->index);
  t = lua_type(L, idx);
  if (t != LUA_TSTRING && t != LUA_TFUNCTION) return -1;
  if (!lua_checkstack(L, 4)) {
    pw->failed = 1;
    pw->err_index = 0;
    return -1;
  }
  c.buf = buf;
  c.size = size;
  c.rwflag = rwflag;
  c.len = 0;
  lua_pushvalue(L, idx);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &password_slot);
  if (sx_cpcall(L, password_helper, &c) != LUA_OK) {
    lua_pushboolean(L, 0);   /* in case the helper never ran */
    lua_rawsetp(L, LUA_REGISTRYINDEX, &password_slot);
    pw->failed = 1;
    pw->err_index = lua_gettop(L);
    return -1;
  }
  return c.len;
}

/* ---- registration -------------------------------------------------------- */

void sx_loaders_open(lua_State *L) {
  static const luaL_Reg no_methods[] = {{NULL, NULL}};
  static const luaL_Reg holder_meta[] = {{"__gc", holder_gc}, {NULL, NULL}};
  sx_register_class(L, SX_HOLDER_MT, no_methods, holder_meta);
  lua_pushboolean(L, 0);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &password_slot);
}
