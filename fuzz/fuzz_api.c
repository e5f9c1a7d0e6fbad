/* fuzz/fuzz_api.c: the Lua-facing API driven by random argument sequences through an
 * embedded Lua state.  The driver is fuzz/api_driver.lua (its header says what it generates
 * and what it leaves out on purpose); this file loads it once and hands it each input.
 *
 * Invariants: no crash or sanitizer report (leaks included: after each input the Lua state
 * is collected, so everything the input made is freed); the driver's own contract checks
 * (errors are strings; nil, message, kind is well formed) hold. */
#include <stdlib.h>
#include <string.h>
#include "common.h"

#ifndef FZ_DRIVER_PATH
#define FZ_DRIVER_PATH "fuzz/api_driver.lua"
#endif

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  const char *path = getenv("SSLCTX_FUZZ_DRIVER");
  (void)argc, (void)argv;
  fz_init();
  if (path == NULL) path = FZ_DRIVER_PATH;
  if (luaL_dofile(fz_L, path) != LUA_OK) fz_fail("cannot load the API driver", lua_tostring(fz_L, -1));
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  lua_settop(fz_L, 0);
  lua_getglobal(fz_L, "RUN");
  lua_pushlstring(fz_L, (const char *)data, size);
  if (lua_pcall(fz_L, 1, 0, 0) != LUA_OK) {
    const char *e = lua_tostring(fz_L, -1);
    if (e != NULL && strstr(e, "INVARIANT") != NULL) fz_fail("API driver", e);
    /* any other error escaping RUN is the driver's own (e.g. a callback error outside a
     * protected call): not a finding */
  }
  fz_end_input();
  return 0;
}
