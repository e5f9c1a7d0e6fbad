/* bench/luahost.c — a minimal `lua5.4 script args...` linked statically against Debian's
 * liblua5.4.a, whose local symbols (luaV_execute, propagatemark, luaH_getstr, ...) make
 * callgrind/perf profiles of the interpreter readable; Debian's /usr/bin/lua5.4 is stripped.
 * bench.sh builds it with BENCH_CG_LUA=host and then runs the module side's callgrind runs
 * under it (the counts stay within a few thousand instructions of lua5.4's).  Like lua.c, it
 * runs the collector in generational mode (lua5.4 does; luaL_newstate alone is incremental):
 * BENCH_GC=incremental in run.lua switches both back. */
#include <stdio.h>
#include <lua.h>
#include <lualib.h>
#include <lauxlib.h>

static int traceback(lua_State *L) {
  luaL_traceback(L, L, lua_tostring(L, 1), 1);
  return 1;
}

int main(int argc, char **argv) {
  lua_State *L = luaL_newstate();
  int i, rc;
  if (argc < 2) { fprintf(stderr, "usage: luahost script [args]\n"); return 2; }
  luaL_openlibs(L);
  lua_gc(L, LUA_GCGEN, 0, 0);   /* as lua.c: the profiles see lua5.4's collector */
  lua_createtable(L, argc, 1);
  for (i = 0; i < argc; i++) { lua_pushstring(L, argv[i]); lua_rawseti(L, -2, i - 1); }
  lua_setglobal(L, "arg");
  lua_pushcfunction(L, traceback);
  if (luaL_loadfile(L, argv[1]) != LUA_OK) { fprintf(stderr, "%s\n", lua_tostring(L, -1)); return 1; }
  rc = lua_pcall(L, 0, 0, 1);
  if (rc != LUA_OK) fprintf(stderr, "%s\n", lua_tostring(L, -1));
  lua_close(L);
  return rc == LUA_OK ? 0 : 1;
}
