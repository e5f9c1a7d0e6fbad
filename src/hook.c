/* hook.c: borrowed connections.  An SSL* that belongs to someone else (nginx's downstream
 * connection, from ngx.ssl's raw pointer) gets a connection object so that modes, callbacks,
 * trust and session policy apply to it, while its owner drives and frees it.
 *
 * Lifetimes, each learnt from a crash (see the OpenResty notes in doc/):
 * - the borrowed object is anchored in the registry of the VM that borrowed it, and released
 *   by OpenSSL's ex_data free callback when the owner frees the SSL;
 * - callbacks run on a thread owned by the module, one per VM, kept in that VM's registry
 *   (nginx rebuilds its VM on reload while this library stays loaded), with OpenResty's
 *   per-thread request pointer cleared before every call;
 * - if the VM closes first, its objects detach from their SSLs and later callbacks fail
 *   closed. */
#define _GNU_SOURCE 1
#include <string.h>
#include <dlfcn.h>
#include "private.h"

/* Per VM: shared by the VM and the records of the SSLs it borrowed. */
typedef struct sx_vm {
  int refs;
  int alive;
  lua_State *thread;
} sx_vm;

/* Per borrowed SSL, in its ex_data. */
typedef struct sx_hook {
  sx_vm *vm;
  int ref;          /* registry ref of the connection object in vm */
  sx_conn *conn;    /* NULL once the object was collected */
} sx_hook;

static int hook_ex_index = -1;
static CRYPTO_ONCE hook_once = CRYPTO_ONCE_STATIC_INIT;
static const char vm_key = 'v', thread_key = 't', message_key = 'm';

static void vm_unref(sx_vm *vm) {
  if (--vm->refs == 0) OPENSSL_free(vm);
}

/* OpenSSL frees the SSL: let go of the object (if its VM still exists) and of the record. */
static void hook_free(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int idx, long argl, void *argp) {
  sx_hook *h = (sx_hook *)ptr;
  (void)parent, (void)ad, (void)idx, (void)argl, (void)argp;
  if (h == NULL) return;
  if (h->vm->alive) {
    if (h->conn != NULL) h->conn->ssl = NULL;   /* the Lua object now reads as closed */
    luaL_unref(h->vm->thread, LUA_REGISTRYINDEX, h->ref);
  }
  vm_unref(h->vm);
  OPENSSL_free(h);
}

static void hook_index_init(void) {
  hook_ex_index = SSL_get_ex_new_index(0, (void *)"sslctx.hook", NULL, NULL, hook_free);
}

/* OpenResty's LuaJIT copies a thread's "exdata" (ngx_lua's request pointer) into threads made
 * from it; ngx.var inside a callback would then read a freed request.  Only that LuaJIT has
 * lua_setexdata, so it is looked up at run time. */
typedef void (*setexdata_fn)(lua_State *L, void *exdata);
static setexdata_fn find_setexdata(void) {
  static int looked = 0;
  static setexdata_fn fn = NULL;
  if (!looked) {
    void *p = dlsym(RTLD_DEFAULT, "lua_setexdata");
    memcpy(&fn, &p, sizeof fn);
    looked = 1;
  }
  return fn;
}

void sx_hook_clear_request(lua_State *L) {
  setexdata_fn fn = find_setexdata();
  if (fn != NULL) fn(L, NULL);
}

#define SX_VM_MT "sslctx.vm"

static int vm_gc(lua_State *L) {
  /* reachable through debug.getregistry(): check what it is given, like every finalizer */
  sx_vm **box = (sx_vm **)luaL_checkudata(L, 1, SX_VM_MT);
  if (*box != NULL) {
    (*box)->alive = 0;
    vm_unref(*box);
    *box = NULL;
  }
  return 0;
}

/* The VM's record, made on first use: a box in the registry whose __gc marks the VM gone,
 * and the module's thread, anchored beside it. */
static sx_vm *vm_get(lua_State *L) {
  sx_vm **box, *vm;
  lua_rawgetp(L, LUA_REGISTRYINDEX, &vm_key);
  if (!lua_isnil(L, -1)) {
    vm = *(sx_vm **)lua_touserdata(L, -1);
    lua_pop(L, 1);
    return vm;
  }
  lua_pop(L, 1);
  box = (sx_vm **)lua_newuserdata(L, sizeof(sx_vm *));
  *box = NULL;
  if (luaL_newmetatable(L, SX_VM_MT)) {
    lua_pushcfunction(L, vm_gc);
    lua_setfield(L, -2, "__gc");
  }
  lua_setmetatable(L, -2);
  vm = (sx_vm *)OPENSSL_zalloc(sizeof(sx_vm));
  if (vm == NULL) return (sx_vm *)(size_t)luaL_error(L, "out of memory");
  *box = vm;
  vm->refs = 1;
  vm->alive = 1;
  lua_rawsetp(L, LUA_REGISTRYINDEX, &vm_key);
  vm->thread = lua_newthread(L);
  sx_hook_clear_request(vm->thread);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &thread_key);
  /* A slot made now, so that storing a failed callback's message later does not allocate. */
  lua_pushboolean(L, 0);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &message_key);
  return vm;
}

/* Accepts a light userdata, or under LuaJIT a pointer cdata (whose payload is the pointer). */
static SSL *check_ssl_pointer(lua_State *L, int arg) {
  void *p = NULL;
  if (lua_type(L, arg) == LUA_TLIGHTUSERDATA) p = lua_touserdata(L, arg);
#ifdef LUAJIT_VERSION_NUM
  else if (lua_type(L, arg) == 10) {
    if (!sx_cdata_is(L, arg, "pointer")) luaL_argerror(L, arg, "cdata must be a pointer (SSL*)");
    p = *(void *const *)lua_topointer(L, arg);
  }
#endif
  else luaL_argerror(L, arg, lua_pushfstring(L, "SSL pointer (light userdata or cdata) expected, "
                                                "got %s", luaL_typename(L, arg)));
  if (p == NULL) luaL_argerror(L, arg, "NULL SSL pointer");
  return (SSL *)p;
}

/* sslctx.borrow(ssl_pointer) -> connection: the same object for the same SSL in this VM. */
int sx_hook_borrow(lua_State *L) {
  SSL *ssl = check_ssl_pointer(L, 1);
  sx_vm *vm;
  sx_hook *h;
  sx_conn *conn;
  CRYPTO_THREAD_run_once(&hook_once, hook_index_init);
  if (hook_ex_index < 0) return luaL_error(L, "no OpenSSL ex_data index available");
  vm = vm_get(L);
  h = (sx_hook *)SSL_get_ex_data(ssl, hook_ex_index);
  if (h != NULL && h->vm == vm && h->conn != NULL && sx_objects_push(L, h->conn)) return 1;
  if (h != NULL) lua_pop(L, 1), h = NULL;   /* another VM's record: superseded below */
  conn = sx_conn_new_borrowed(L, ssl, vm->thread);
  h = (sx_hook *)OPENSSL_zalloc(sizeof *h);
  if (h == NULL) return luaL_error(L, "out of memory");
  h->vm = vm;
  vm->refs++;
  lua_pushvalue(L, -1);
  h->ref = luaL_ref(L, LUA_REGISTRYINDEX);
  h->conn = conn;
  {
    sx_hook *old = (sx_hook *)SSL_get_ex_data(ssl, hook_ex_index);
    if (old != NULL) hook_free(NULL, old, NULL, hook_ex_index, 0, NULL);
  }
  if (!SSL_set_ex_data(ssl, hook_ex_index, h)) {
    hook_free(NULL, h, NULL, hook_ex_index, 0, NULL);
    return luaL_error(L, "cannot attach to the SSL object");
  }
  return 1;
}

/* The borrowed object is being collected (its VM is closing, or the SSL was freed first). */
void sx_hook_detach(sx_conn *conn) {
  if (conn->ssl != NULL && hook_ex_index >= 0) {
    sx_hook *h = (sx_hook *)SSL_get_ex_data(conn->ssl, hook_ex_index);
    if (h != NULL && h->conn == conn) h->conn = NULL;
    SSL_set_ex_data(conn->ssl, sx_ssl_ex_index, NULL);   /* later callbacks fail closed */
  }
  conn->ssl = NULL;
}

/* A failed callback on a borrowed connection has no driving call to report to: its message
 * goes to the logger the Lua side installed (its logger slot), then the stack is restored. */
static int log_helper(lua_State *L) {
  sx_conn *conn = (sx_conn *)lua_touserdata(L, 1);
  int msg;
  lua_rawgetp(L, LUA_REGISTRYINDEX, &message_key);
  msg = lua_gettop(L);
  sx_conn_push(L, conn);
  sx_getslot(L, -1, SX_SLOT_LOGGER);
  if (lua_isnil(L, -1)) return 0;
  lua_pushfstring(L, "sslctx: %s callback: ", conn->cb_name != NULL ? conn->cb_name : "verify");
  if (lua_type(L, msg) == LUA_TSTRING || lua_type(L, msg) == LUA_TNUMBER) lua_pushvalue(L, msg);
  else lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, msg));
  lua_concat(L, 2);
  lua_call(L, 1, 0);
  return 0;
}

void sx_hook_report(sx_conn *conn, int base) {
  lua_State *L = conn->L;
  if (conn->cb_failed && conn->cb_err_index > base) {
    /* the helper runs in a frame of its own: hand it the message through the registry */
    lua_pushvalue(L, conn->cb_err_index);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &message_key);
    if (sx_cpcall(L, log_helper, conn) != LUA_OK) lua_pop(L, 1);
    lua_pushboolean(L, 0);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &message_key);
  }
  lua_settop(L, base);
}
