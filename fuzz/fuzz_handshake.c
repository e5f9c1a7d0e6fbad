/* fuzz/fuzz_handshake.c: a server (FZ_SERVER=1) or a client (FZ_SERVER=0) connection over the
 * memory transport, fed arbitrary bytes as what arrives from the network.
 *
 * Input: one flags byte, then frames of [2-byte big-endian length][bytes]; each frame is fed
 * with conn:feed(), then handshake() (or, once the handshake is done, read() and write())
 * runs and what the connection wants to send is drained and dropped.  At the end the input
 * is closed with feed(nil) and the connection driven once more, then shut down and closed.
 * The flags pick the verify callback's verdict (nil, true, false, an error, RETRY), TLS 1.2
 * only or 1.3 too, a servername callback switching contexts, and session/ALPN callbacks, so
 * that whatever part of a handshake the bytes reach runs the module's Lua trampolines.
 *
 * The client first sends its ClientHello (drained and dropped): the bytes then play the
 * server.  Seeds (fuzz/corpus/handshake_*, and build/fuzz/seeds made at run time by
 * fuzz/make_seeds.lua) are real flights from sslctx handshakes.
 *
 * Invariants: no crash or sanitizer report; every call returns a value or nil, message,
 * kind with a known kind, and never raises (the connection is driven correctly; only
 * handshake() after a failure may answer "already failed"). */
#include <string.h>
#include "common.h"

#ifndef FZ_SERVER
#define FZ_SERVER 1
#endif
#define FZ_STR2(x) #x
#define FZ_STR(x) FZ_STR2(x)
#define FZ_SERVER_STR FZ_STR(FZ_SERVER)

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc, (void)argv;
  fz_init();
  fz_dostring(
    "IS_SERVER = " FZ_SERVER_STR "\n"
    "local KINDS = {want_read=1, want_write=1, want_retry_verify=1, verify=1, callback=1,\n"
    "  closed=1, eof=1, ssl=1, syscall=1, file=1, key=1, timeout=1}\n"
    "local verdict = nil\n"
    "local function cb(ok, store)\n"
    "  local c = store:cert(); if c then local _ = c:subject() end\n"
    "  local _ = store:depth(), store:error(), #store:chain()\n"
    "  if verdict == 'error' then error('callback error') end\n"
    "  if verdict == 'retry' then return sslctx.RETRY end\n"
    "  return verdict\n"
    "end\n"
    "local function mkserver(v)\n"
    "  local ctx = assert(sslctx.new{side = 'server', certificate = CERT_PEM, key = KEY_PEM,\n"
    "    ca = CERT_PEM, max_version = v, security_level = 0, dh = 'auto'})\n"
    "  ctx:set_verification_mode('server', 'always', cb)\n"
    "  ctx:set_alpn_select(function(list) return list[1] end)\n"
    "  ctx:set_session_callback(function() end)\n"
    "  return ctx\n"
    "end\n"
    "local function mkclient(v)\n"
    "  local ctx = assert(sslctx.new{side = 'client', ca = CERT_PEM, max_version = v,\n"
    "    alpn = {'h2', 'http/1.1'}, certificate = CERT_PEM, key = KEY_PEM, security_level = 0,\n"
    "    post_handshake_auth = true})\n"
    "  ctx:set_verification_mode('client', 'always', cb)\n"
    "  ctx:set_session_callback(function() end)\n"
    "  return ctx\n"
    "end\n"
    "local S = {['tls1.2'] = mkserver('tls1.2'), ['tls1.3'] = mkserver('tls1.3')}\n"
    "local S2 = mkserver('tls1.3')\n"
    "local C = {['tls1.2'] = mkclient('tls1.2'), ['tls1.3'] = mkclient('tls1.3')}\n"
    "local verdicts = {[0] = nil, true, false, 'error', 'retry'}\n"
    "local function check(what, ok, a, b, c)\n"
    "  if not ok then\n"
    "    error('INVARIANT: ' .. what .. ' raised: ' .. tostring(a))\n"
    "  end\n"
    "  if a == nil and (type(b) ~= 'string' or not KINDS[c]) then\n"
    "    error('INVARIANT: ' .. what .. ' returned nil, ' .. tostring(b) .. ', ' .. tostring(c))\n"
    "  end\n"
    "  return a, b, c\n"
    "end\n"
    "function DRIVE(data)\n"
    "  local flags = data:byte(1) or 0\n"
    "  verdict = verdicts[flags % 5]\n"
    "  local v = (flags & 8) ~= 0 and 'tls1.2' or 'tls1.3'\n"
    "  local conn\n"
    "  if IS_SERVER == 1 then\n"
    "    local ctx = S[v]\n"
    "    if (flags & 16) ~= 0 then\n"
    "      ctx:set_servername_callback(function(name) return name and S2 or nil end)\n"
    "    else ctx:set_servername_callback(nil) end\n"
    "    conn = ctx:new_connection()\n"
    "  else\n"
    "    conn = C[v]:new_connection{hostname = (flags & 16) ~= 0 and '127.0.0.1' or 'localhost'}\n"
    "    check('first handshake', pcall(conn.handshake, conn))\n"
    "    conn:drain()\n"
    "  end\n"
    "  local done, failed = false, false\n"
    "  local function step()\n"
    "    if failed then return end\n"
    "    if not done then\n"
    "      local ok, _, kind = check('handshake', pcall(conn.handshake, conn))\n"
    "      if ok then done = true\n"
    "      elseif kind ~= 'want_read' and kind ~= 'want_write' and kind ~= 'want_retry_verify' then\n"
    "        failed = true end\n"
    "    end\n"
    "    if done then\n"
    "      local s, _, kind = check('read', pcall(conn.read, conn))\n"
    "      if s == nil and kind ~= 'want_read' and kind ~= 'want_write' then failed = true end\n"
    "      if not failed then check('write', pcall(conn.write, conn, 'pong')) end\n"
    "      check('pending_plaintext', pcall(conn.pending_plaintext, conn))\n"
    "      local _ = conn:peer_certificate(), conn:peer_chain(), conn:verify_result()\n"
    "      local _ = conn:version(), conn:cipher(), conn:alpn(), conn:servername(), conn:session()\n"
    "    end\n"
    "    conn:drain()\n"
    "  end\n"
    "  local i = 2\n"
    "  while i <= #data do\n"
    "    local hi, lo = data:byte(i, i + 1)\n"
    "    local len = (hi or 0) * 256 + (lo or 0)\n"
    "    local chunk = data:sub(i + 2, i + 1 + len)\n"
    "    i = i + 2 + len\n"
    "    if #chunk > 0 then\n"
    "      check('feed', pcall(conn.feed, conn, chunk))\n"
    "    end\n"
    "    step()\n"
    "  end\n"
    "  check('feed(nil)', pcall(conn.feed, conn, nil))\n"
    "  step()\n"
    "  if done and not failed then check('shutdown', pcall(conn.shutdown, conn)) end\n"
    "  conn:close()\n"
    "end\n", "=handshake-init");
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  lua_settop(fz_L, 0);
  lua_getglobal(fz_L, "DRIVE");
  lua_pushlstring(fz_L, (const char *)data, size);
  if (lua_pcall(fz_L, 1, 0, 0) != LUA_OK) fz_fail("handshake driver", lua_tostring(fz_L, -1));
  fz_end_input();
  return 0;
}
