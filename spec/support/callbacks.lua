-- spec/support/callbacks.lua: what the callback, SNI, renegotiation, resumption and GC specs
-- share beyond spec/helper.lua.
--
--   support.root()                   absolute path of the repository root (the cwd)
--   support.compile(src, out, opts)  cc a C file of spec/support into build/support; a
--                                    compiler failure raises (the test fails, never skips)
--   support.fixture_so()             absolute path of the compiled fixture_verify.c (.so)
--   support.oracle{...}              OpenSSL's own verify-callback calls on the same inputs
--   support.recorder(verdict)        a Lua verify callback recording every call
--   support.drive(c, s, opts)        helper.pump, also driving through want_retry_verify
--   support.settle(a, b, rounds)     moves flights both ways, reading on both sides
--   support.session_of(c, s)         the client's resumable session (reads for TLS 1.3 tickets)
--   support.rss()                    resident set size of this process, in bytes
--
-- Runs unchanged on Lua 5.1-5.4 and LuaJIT.

local helper = require "helper"

local support = {}

local REG = debug.getregistry()

-- ---------------------------------------------------------------------------
-- Paths and compilation

function support.root()
  if REG["sslctx.spec.support.root"] then return REG["sslctx.spec.support.root"] end
  local p = assert(io.popen("pwd", "r"))
  local dir = p:read("*l")
  p:close()
  assert(dir and dir:sub(1, 1) == "/", "support.root: cannot find the working directory")
  REG["sslctx.spec.support.root"] = dir
  return dir
end

-- Where compiled fixtures go: build/support (SSLCTX_SUPPORT_DIR overrides, absolute).
local function build_dir()
  local dir = os.getenv("SSLCTX_SUPPORT_DIR")
  if dir and dir:sub(1, 1) == "/" then return dir end
  return support.root() .. "/build/support"
end

local function openssl_flags()
  local out = helper.run("pkg-config --cflags --libs libcrypto")
  if out:find("%-lcrypto") then return (out:gsub("%s+$", "")) end
  return "-lcrypto"
end

-- Compiles spec/support/<src> into build/support/<out>: a shared object when opts.shared.
-- Compiled once per Lua process (the registry survives busted's insulation), into a
-- temporary name then renamed, so that concurrent runs never see a half-written file.
function support.compile(src, out, opts)
  opts = opts or {}
  local key = "sslctx.spec.support.compiled." .. out
  if REG[key] then return REG[key] end
  local dir = build_dir()
  local path = dir .. "/" .. out
  local tmp = path .. ".tmp" .. tostring(os.time()) .. tostring(math.random(1, 1e9))
  local source = support.root() .. "/spec/support/" .. src
  assert(helper.file_exists(source), "support.compile: missing " .. source)
  local cc = os.getenv("CC") or "cc"
  local cmd = "mkdir -p " .. helper.sh_quote(dir) .. " && " .. cc .. " -std=c99 -Wall -O1 " ..
              (opts.shared and "-shared -fPIC " or "") .. "-o " .. helper.sh_quote(tmp) .. " " ..
              helper.sh_quote(source) .. " " .. openssl_flags() ..
              " && mv -f " .. helper.sh_quote(tmp) .. " " .. helper.sh_quote(path) ..
              " && echo SUPPORT-CC-OK"
  local output = helper.run(cmd)
  if not output:find("SUPPORT-CC-OK", 1, true) then
    os.remove(tmp)
    error("support.compile: compiling " .. source .. " failed:\n" .. cmd .. "\n" .. output, 2)
  end
  REG[key] = path
  return path
end

function support.fixture_so()
  return support.compile("fixture_verify.c", "fixture_verify.so", { shared = true })
end

-- ---------------------------------------------------------------------------
-- The oracle: OpenSSL's verify-callback calls for a chain, as libssl makes them.
-- args: { purpose = "ssl_server" | "ssl_client", ca = PKI name, chain = PKI name (leaf
-- first), host = name or nil, policy = "keep" | "accept", auth_level = n (default 1) }
-- Returns steps, result: steps[i] = { depth =, ok =, error =, chain_len =, fingerprint = },
-- result = the error code at the end of verification.

function support.oracle(args)
  local exe = support.compile("verify_oracle.c", "verify_oracle")
  local words = { exe, args.purpose or "ssl_server", helper.pki(args.ca or "ca.pem"),
                  helper.pki(args.chain), args.host or "-", args.policy or "keep",
                  tostring(args.auth_level or 1) }
  for i = 1, #words do words[i] = helper.sh_quote(words[i]) end
  local out = helper.run(table.concat(words, " "))
  local steps, result = {}, nil
  for line in out:gmatch("[^\n]+") do
    local d, ok, e, n, fp = line:match("^step (%-?%d+) (%d) (%d+) (%d+) (%S+)$")
    if d then
      steps[#steps + 1] = { depth = tonumber(d), ok = ok == "1", error = tonumber(e),
                            chain_len = tonumber(n), fingerprint = fp }
    else
      local r = line:match("^result (%d+)")
      if r then result = tonumber(r) else error("support.oracle: unexpected output:\n" .. out) end
    end
  end
  assert(result, "support.oracle: no result line:\n" .. out)
  return steps, result
end

-- ---------------------------------------------------------------------------
-- Recording callbacks

-- A Lua verify callback that records each call: { depth, ok, error, error_string,
-- chain_len, fingerprint, subject, thread }, and returns verdict(ok, store, n) (or nil when
-- verdict is nil).  rec.calls is the list; rec.fn the callback; rec.reset() clears.
function support.recorder(verdict)
  local rec = { calls = {} }
  function rec.fn(ok, store)
    local cert = store:cert()
    local n = #rec.calls + 1
    rec.calls[n] = {
      ok = ok,
      ok_type = type(ok),
      depth = store:depth(),
      error = store:error(),
      error_string = store:error_string(),
      chain_len = #store:chain(),
      fingerprint = cert and cert:fingerprint() or nil,
      subject = cert and cert:subject() or nil,
      thread = coroutine.running(),
    }
    if verdict then return verdict(ok, store, n) end
  end
  function rec.reset() rec.calls = {} end
  function rec.depths()
    local t = {}
    for i, c in ipairs(rec.calls) do t[i] = c.depth end
    return t
  end
  return rec
end

-- ---------------------------------------------------------------------------
-- Driving

-- Every result a call returned, with their number (nil-safe).
function support.pack(...)
  return { n = select("#", ...), ... }
end
local pack = support.pack

-- Like helper.pump, but a want_retry_verify result is answered by calling handshake()
-- again (on_retry(side) first, when given).  Returns cok, cmsg, ckind, sok, smsg, skind and
-- the list of every result of each side ({ {ok, msg, kind, n = count}, ... }).
function support.drive(c, s, opts)
  opts = opts or {}
  local rounds = opts.rounds or 40
  local chist, shist = {}, {}
  local cr, sr = { nil, "not started", "want_read" }, { nil, "not started", "want_read" }
  local cdone, sdone = false, false
  local function pending(kind)
    return kind == "want_read" or kind == "want_write" or kind == "want_retry_verify"
  end
  for _ = 1, rounds do
    if not cdone then
      if cr[3] == "want_retry_verify" and opts.on_retry then opts.on_retry("client") end
      cr = pack(c:handshake())
      chist[#chist + 1] = cr
      if cr[1] or not pending(cr[3]) then cdone = true end
    end
    helper.transfer(c, s)
    if not sdone then
      if sr[3] == "want_retry_verify" and opts.on_retry then opts.on_retry("server") end
      sr = pack(s:handshake())
      shist[#shist + 1] = sr
      if sr[1] or not pending(sr[3]) then sdone = true end
    end
    helper.transfer(s, c)
    if cdone and sdone then break end
  end
  helper.transfer(c, s)
  helper.transfer(s, c)
  return cr[1], cr[2], cr[3], sr[1], sr[2], sr[3], chist, shist
end

-- Moves flights both ways for a few rounds, calling read() on both sides (post-handshake
-- messages: tickets, renegotiation, post-handshake authentication).  Returns the last
-- read results of a and b ({data, msg, kind}); stops at the first non-want failure.
function support.settle(a, b, rounds)
  local ar, br = {}, {}
  for _ = 1, rounds or 6 do
    helper.transfer(a, b)
    br = { b:read() }
    helper.transfer(b, a)
    ar = { a:read() }
    if (not ar[1] and not helper.is_want(ar[3])) or (not br[1] and not helper.is_want(br[3])) then
      break
    end
  end
  helper.transfer(a, b)
  helper.transfer(b, a)
  return ar, br
end

-- The client's resumable session after a completed handshake: in TLS 1.3 the tickets
-- arrive after the handshake, so the client reads once.
function support.session_of(c)
  local sess = c:session()
  if sess then return sess end
  local data, msg, kind = c:read()
  assert(data or helper.is_want(kind), "read for the session ticket failed: " .. tostring(msg))
  return c:session()
end

-- The side whose peer rejected the handshake learns it: its handshake fails with kind
-- "ssl" (an alert), or, in TLS 1.3 where a client's handshake may complete first, its
-- first read does.  Returns true or false, a description.
function support.learns_rejection(conn, ok, msg, kind)
  if ok then
    local r = pack(conn:read())
    ok, msg, kind = r[1], r[2], r[3]
    if ok == nil and kind == "want_read" then
      return false, "read after the handshake only wants more input"
    end
  end
  if ok == nil and kind == "ssl" then return true, msg end
  return false, "expected a failure of kind 'ssl', got " .. tostring(ok) .. ", " ..
                tostring(msg) .. ", " .. tostring(kind)
end

-- ---------------------------------------------------------------------------
-- Memory

local page_size
function support.page_size()
  if not page_size then
    local out = helper.run("getconf PAGESIZE")
    page_size = assert(tonumber(out:match("%d+")), "getconf PAGESIZE: " .. out)
  end
  return page_size
end

-- Resident set size in bytes, from /proc/self/statm (second field, in pages).
function support.rss()
  local f = assert(io.open("/proc/self/statm", "r"))
  local line = f:read("*l")
  f:close()
  local _, resident = line:match("^(%d+)%s+(%d+)")
  return tonumber(resident) * support.page_size()
end

return support
