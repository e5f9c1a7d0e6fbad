-- bench/soak.lua: a bounded soak -- many handshakes with Lua callbacks in one process, and
-- the resident memory must stay flat.
--
--   LUA_PATH='lua/?.lua;lua/?/init.lua;spec/?.lua;;' LUA_CPATH='build/lua5.4/?.so;;' \
--     lua5.4 bench/soak.lua [handshakes=10000] [warmup=1000] [limit_kib=1024]
--
-- Every handshake (memory transport, mutual TLS) runs: the client's Lua verify callback
-- (reading store:cert(), store:depth(), store:chain()), the server's Lua verify callback on
-- the client certificate ("require"), a servername callback switching to a second server
-- context on every other connection, a Lua ALPN selector, the client's session callback,
-- and 2 KiB of data each way; every 8th connection offers the previous session
-- (resumption), every 16th fails verification on purpose (wrong host name: the error path),
-- TLS 1.2 and 1.3 alternate.  Contexts live for the whole run; connections are dropped and
-- collected.
--
-- Memory: resident set size from /proc/self/statm after a full collection, once after
-- `warmup` handshakes (the baseline: caches, OpenSSL's lazily built tables and the Lua heap
-- have found their size) and then every 1000; the run fails if the last reading exceeds the
-- baseline by more than `limit_kib` (1 MiB).  The Lua heap is printed too.
--
-- As a library (spec/soak_spec.lua): loadfile("bench/soak.lua")("--library").run(opts)
-- returns the result table instead of exiting.

local M = {}

local function page_size()
  local p = io.popen("getconf PAGESIZE 2>/dev/null")
  local s = p and p:read("*l")
  if p then p:close() end
  return tonumber(s) or 4096
end

local PAGE
function M.rss()
  local f = io.open("/proc/self/statm", "r")
  if not f then return nil end
  local line = f:read("*l")
  f:close()
  PAGE = PAGE or page_size()
  local _, resident = line:match("^(%d+)%s+(%d+)")
  return tonumber(resident) * PAGE
end

local function full_gc()
  for _ = 1, 4 do collectgarbage("collect") end
end

local function now()
  local ok, socket = pcall(require, "socket")
  if ok and socket.gettime then return socket.gettime() end
  return os.clock()
end

-- opts: handshakes, warmup, limit_kib, deadline (seconds; 0 = none), log (function(line))
function M.run(opts)
  opts = opts or {}
  local helper = require "helper"
  local n = opts.handshakes or 10000
  local warmup = opts.warmup or 1000
  local limit = (opts.limit_kib or 1024) * 1024
  local deadline = opts.deadline or 0
  local log = opts.log or print
  local pki = helper.pki

  local counters = { client_cb = 0, server_cb = 0, sni = 0, alpn = 0, sessions = 0,
                     resumed = 0, failed_on_purpose = 0, bytes = 0 }
  local payload = string.rep("0123456789abcdef", 128)   -- 2 KiB

  local function client_ctx(version)
    local ctx = helper.client_ctx({ max_version = version, alpn = { "h2", "http/1.1" },
                                    certificate = pki("client-chain.pem"), key = pki("client.key") })
    ctx:set_verification_mode("client", "always", function(_, store)
      counters.client_cb = counters.client_cb + 1
      local cert = store:cert()
      if cert and store:depth() == 0 then local _ = cert:subject() end
      local _ = #store:chain()
      return nil
    end)
    ctx:set_session_callback(function()
      counters.sessions = counters.sessions + 1
    end)
    return ctx
  end

  local function server_ctx()
    local ctx = helper.server_ctx({ verify = "require" })
    ctx:set_verification_mode("server", "require", function(ok, _)   -- a store is made: cost measured
      counters.server_cb = counters.server_cb + 1
      return ok
    end)
    ctx:set_alpn_select(function(offered)
      counters.alpn = counters.alpn + 1
      return offered[1]
    end)
    return ctx
  end

  local cctx = { ["tls1.2"] = client_ctx("tls1.2"), ["tls1.3"] = client_ctx("tls1.3") }
  local sctx, sctx2 = server_ctx(), server_ctx()
  sctx:set_servername_callback(function()
    counters.sni = counters.sni + 1
    if counters.sni % 2 == 0 then return sctx2 end
    return nil
  end)

  local last_session = {}
  local function one(i)
    local version = (i % 2 == 0) and "tls1.2" or "tls1.3"
    local wrong = (i % 16 == 0)
    local copts = { hostname = wrong and "wrong.example" or "localhost" }
    if i % 8 == 4 and last_session[version] then copts.session = last_session[version] end
    local c = cctx[version]:new_connection(copts)
    local s = sctx:new_connection()
    local cok, cmsg, ckind, sok, smsg = helper.pump(c, s)
    if wrong then
      assert(not cok and ckind == "verify",
             "handshake " .. i .. ": a wrong host name must fail verification: " .. tostring(cmsg))
      counters.failed_on_purpose = counters.failed_on_purpose + 1
    else
      assert(cok == true and sok == true, "handshake " .. i .. " failed: client " .. tostring(cmsg) ..
             " / server " .. tostring(smsg))
      local got = helper.exchange(c, s, payload)
      local back = helper.exchange(s, c, payload)
      assert(#got == #payload and #back == #payload, "data exchange " .. i)
      counters.bytes = counters.bytes + #got + #back
      if c:session_reused() then counters.resumed = counters.resumed + 1 end
      local sess = c:session()
      if sess then last_session[version] = sess end
    end
    c:close()
    s:close()
  end

  local t0 = now()
  local result = { samples = {}, handshakes = 0 }
  local have_rss = M.rss() ~= nil
  for i = 1, n do
    one(i)
    result.handshakes = i
    if i == warmup then
      full_gc()
      result.baseline = M.rss()
      result.baseline_lua_kib = collectgarbage("count")
      log(("soak: %d handshakes (warm-up) in %.1f s; RSS %s KiB, Lua heap %.0f KiB"):format(
        i, now() - t0, have_rss and tostring(math.floor(result.baseline / 1024)) or "?",
        result.baseline_lua_kib))
    elseif i > warmup and i % 1000 == 0 then
      full_gc()
      local r = M.rss()
      result.samples[#result.samples + 1] = r
      log(("soak: %d handshakes in %.1f s; RSS %s KiB (%+d KiB), Lua heap %.0f KiB"):format(
        i, now() - t0, have_rss and tostring(math.floor(r / 1024)) or "?",
        have_rss and math.floor((r - result.baseline) / 1024) or 0, collectgarbage("count")))
    end
    if deadline > 0 and now() - t0 > deadline then
      result.timed_out = true
      break
    end
  end
  full_gc()
  result.final = M.rss()
  result.final_lua_kib = collectgarbage("count")
  result.seconds = now() - t0
  result.counters = counters
  result.limit = limit
  if have_rss and result.baseline then
    result.growth = result.final - result.baseline
    result.ok = result.growth <= limit and not result.timed_out
  else
    result.ok = not result.timed_out
  end
  log(("soak: %d handshakes in %.1f s (%.1f/s); RSS growth after warm-up %s KiB (limit %d KiB); " ..
       "callbacks: client %d, server %d, servername %d, alpn %d, session %d; resumed %d; " ..
       "failed on purpose %d%s"):format(result.handshakes, result.seconds,
       result.handshakes / result.seconds,
       result.growth and tostring(math.floor(result.growth / 1024)) or "?", math.floor(limit / 1024),
       counters.client_cb, counters.server_cb, counters.sni, counters.alpn, counters.sessions,
       counters.resumed, counters.failed_on_purpose, result.timed_out and "; TIMED OUT" or ""))
  for _, ctx in pairs(cctx) do ctx:close() end
  sctx:close()
  sctx2:close()
  return result
end

if select(1, ...) == "--library" then return M end

-- As a script.
local args = { ... }
local r = M.run({ handshakes = tonumber(args[1]), warmup = tonumber(args[2]),
                  limit_kib = tonumber(args[3]) })
if not r.ok then
  io.stderr:write("soak: FAIL\n")
  os.exit(1)
end
print("soak: OK")
