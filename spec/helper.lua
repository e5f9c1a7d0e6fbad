-- spec/helper.lua: shared fixtures for the sslctx specs.
--
-- busted loads this file as its helper before any spec runs, and specs may also
-- `require "helper"`.  It must run unchanged on Lua 5.1-5.4 and LuaJIT.
--
-- What it offers:
--   helper.pki(name)            path of a file of the throwaway PKI (build/pki/<name>)
--   helper.read(name)           contents of that file
--   helper.openssl_verify{...}  numeric code `openssl verify` reports (0 = OK), and its output
--   helper.openssl(args)        output of any `openssl` CLI command (stderr included)
--   helper.server_ctx(opts)     a server context (server-chain.pem, trust ca.pem) + opts
--   helper.client_ctx(opts)     a client context (trust ca.pem, security level 1) + opts
--   helper.contexts{client=, server=}  both of the above -> cctx, sctx
--   helper.connect(cctx, sctx, copts, sopts) -> c, s, cok, cmsg, ckind, sok, smsg, skind
--   helper.pump(c, s, max_rounds) -> cok, cmsg, ckind, sok, smsg, skind
--   helper.transfer(a, b)       moves what `a` must send into `b`'s input
--   helper.exchange(from, to, data) -> what `to` read (pushes data through)
--   helper.NONE                 in an opts table: "drop this default"
--   helper.raises(fn, ...)      -> the error message (string) or fails the test
--   helper.file_exists(path), helper.read_file(path) (nil if unreadable),
--   helper.write_file(path, data)
--   helper.run_child(script, seconds, wrapper) -> output, exit status of a child interpreter
--   helper.valgrind_child(script, seconds) -> the same under valgrind, or nil, why not
--   helper.with_busy_gc(fn)     runs fn with a collector that never rests

local helper = {}

-- Event-loop libraries are loaded once, before busted insulates the first spec file: an
-- insulated file unloads what it required, and opening luv again in the same Lua state
-- while the default loop still holds the first opening's handles and callback references
-- corrupts them (a crash in uv_listen, callbacks resolved to the wrong registry slots).
-- (Only in busted's own process: child interpreters that load this helper have no need.)
if package.loaded["busted.core"] then
  pcall(require, "luv")
  pcall(require, "cqueues")
end

local unpack = unpack or table.unpack
helper.unpack = unpack

-- Set under scripts/check-gc.sh, whose launcher forces a full collection every few VM
-- instructions and refuses collectgarbage("stop"): specs about a stopped collector or about
-- what an event loop finishes within a wait read it.
helper.forced_gc = os.getenv("SSLCTX_GC_EVERY") ~= nil

-- False under `make test` for every interpreter but the first it runs: spec files whose
-- outcome does not depend on the interpreter driving them (nginx runs its own LuaJIT) run
-- once per `make test`, and whenever run alone.
helper.first_interpreter = os.getenv("SSLCTX_ONCE_PER_RUN") ~= "skip"

-- The Makefile exports SSLCTX_PKI_DIR (an absolute build/pki); default: build/pki.
helper.PKI_DIR = os.getenv("SSLCTX_PKI_DIR") or "build/pki"
helper.NONE = setmetatable({}, { __tostring = function() return "helper.NONE" end })

-- Lua version facts the specs need.
helper.LUA54 = _VERSION == "Lua 5.4"

-- ---------------------------------------------------------------------------
-- Shell helpers

local function sh_quote(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end
helper.sh_quote = sh_quote

-- os.execute returns 0 (5.1) or true/nil, "exit", code (5.2+).
local function exec_ok(cmd)
  local a, _, c = os.execute(cmd)
  if type(a) == "number" then return a == 0 end
  return a == true and (c == nil or c == 0)
end
helper.exec_ok = exec_ok

-- Runs a command, returns everything it printed (stdout and stderr).
function helper.run(cmd)
  local p = assert(io.popen(cmd .. " 2>&1", "r"))
  local out = p:read("*a")
  p:close()
  return out
end

-- Runs `script` (Lua source) in a child of the running interpreter (same version; the
-- package paths come from the environment), under `wrapper` (a command prefix such as
-- valgrind's) if given, killed after `seconds` (default 20).  Returns what it printed and
-- its exit status, for specs whose failure would be a crash or a hang of their own process.
function helper.run_child(script, seconds, wrapper)
  local interp = (jit and "luajit") or ("lua" .. _VERSION:match("%d+%.%d+"))
  local f = os.tmpname()
  helper.write_file(f, script)
  local out = helper.run("timeout " .. (seconds or 20) .. " " .. (wrapper or "") .. " " .. interp
                         .. " " .. helper.sh_quote(f) .. "; echo \"::rc=$?\"")
  os.remove(f)
  return out, tonumber(out:match("::rc=(%d+)%s*$"))
end

-- run_child under valgrind (memcheck, exit 99 on any error) -> output, exit status; or
-- nil, why when it cannot run here (no valgrind; LuaJIT, which is not valgrind-clean).
function helper.valgrind_child(script, seconds)
  if not exec_ok("command -v valgrind >/dev/null 2>&1") then
    return nil, "valgrind is not installed (make deps installs it)"
  end
  if jit then return nil, "LuaJIT's own allocator and string code are not valgrind-clean" end
  return helper.run_child(script, seconds, "valgrind -q --error-exitcode=99 --num-callers=12")
end

-- Runs `openssl <args>` (args: a string already quoted, or a list of words to quote).
function helper.openssl(args)
  if type(args) == "table" then
    local words = {}
    for i = 1, #args do words[i] = sh_quote(args[i]) end
    args = table.concat(words, " ")
  end
  return helper.run("openssl " .. args)
end

-- ---------------------------------------------------------------------------
-- The throwaway PKI: generated once per run (per Lua process) into build/pki.
--
-- busted insulates each spec file (it restores _G and package.loaded), so the
-- "already generated" marker lives in the registry, which it leaves alone.

local REG_KEY = "sslctx.spec.helper.pki_generated"

local function file_exists(path)
  local f = io.open(path, "rb")
  if f then f:close() return true end
  return false
end
helper.file_exists = file_exists

-- Contents of a file, or nil when it cannot be opened (the support modules share these).
function helper.read_file(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("*a")
  f:close()
  return s
end

-- Writes `data` to a file (replacing it); raises when it cannot be opened.
function helper.write_file(path, data)
  local f = assert(io.open(path, "wb"))
  f:write(data)
  f:close()
end

local function generate_pki()
  local reg = debug.getregistry()
  if reg[REG_KEY] then return end
  local script = "spec/certs/make-pki.sh"
  if not file_exists(script) then
    error("helper: " .. script .. " is missing (run the specs from the repository root)")
  end
  -- make-pki.sh is idempotent (OUTDIR/.done newer than the script: nothing to do) and
  -- only publishes complete PKIs; it prints openssl's output on failure.
  local out = helper.run("mkdir -p " .. sh_quote(helper.PKI_DIR) .. " && sh " .. sh_quote(script) ..
                         " " .. sh_quote(helper.PKI_DIR) .. " && echo PKI-OK")
  if not out:find("PKI-OK", 1, true) then
    error("helper: " .. script .. " failed:\n" .. out)
  end
  reg[REG_KEY] = true
end

function helper.ensure_pki()
  generate_pki()
  return helper.PKI_DIR
end

-- Path of a PKI file (or directory, e.g. "capath").
function helper.pki(name)
  generate_pki()
  local path = helper.PKI_DIR .. "/" .. name
  return path
end

function helper.read(name)
  local path = helper.pki(name)
  local f = assert(io.open(path, "rb"), "helper.read: cannot open " .. path)
  local s = f:read("*a")
  f:close()
  return s
end

-- ---------------------------------------------------------------------------
-- `openssl verify` with the profile of doc/reference.md "Verify callbacks":
--   openssl verify -purpose sslserver|sslclient [-verify_hostname H|-verify_ip IP]
--                  -auth_level N [-attime T] [-crl_check -CRLfile F] ...
-- args: { cert = name (required), CAfile = name, CApath = name, untrusted = name | {names},
--         purpose = "sslserver" | "sslclient", host = name, ip = address, auth_level = n,
--         attime = epoch, crl = name | {names} (adds -crl_check), crl_check_all = bool,
--         verify_depth = n, partial_chain = bool, no_check_time = bool, x509_strict = bool }
-- File names are PKI names (helper.pki) unless they contain a "/".
-- Returns code, output: code is the number in the first "error N at D depth lookup:" line,
-- or 0 when the output says OK.  Raises if the output is neither (the CLI misbehaved).

local function pki_path(name)
  if name:find("/", 1, true) then return name end
  return helper.pki(name)
end

local function as_list(v)
  if v == nil then return {} end
  if type(v) == "table" then return v end
  return { v }
end

function helper.openssl_verify(args)
  assert(type(args) == "table" and args.cert, "openssl_verify: args.cert is required")
  local w = { "verify" }
  local function add(...) for _, x in ipairs({ ... }) do w[#w + 1] = x end end
  add("-purpose", args.purpose or "sslserver")
  if args.host then add("-verify_hostname", args.host) end
  if args.ip then add("-verify_ip", args.ip) end
  add("-auth_level", tostring(args.auth_level or 1))
  if args.attime then add("-attime", tostring(args.attime)) end
  if args.verify_depth then add("-verify_depth", tostring(args.verify_depth)) end
  if args.partial_chain then add("-partial_chain") end
  if args.no_check_time then add("-no_check_time") end
  if args.x509_strict then add("-x509_strict") end
  local crls = as_list(args.crl)
  if #crls > 0 then
    add(args.crl_check_all and "-crl_check_all" or "-crl_check")
    for _, c in ipairs(crls) do add("-CRLfile", pki_path(c)) end
  end
  if args.CAfile then add("-CAfile", pki_path(args.CAfile)) end
  if args.CApath then add("-CApath", pki_path(args.CApath)) end
  if not args.CAfile and not args.CApath then
    -- never fall back to the system's roots: they are not part of any test
    add("-no-CAfile", "-no-CApath")
  end
  for _, u in ipairs(as_list(args.untrusted)) do add("-untrusted", pki_path(u)) end
  add(pki_path(args.cert))
  local out = helper.openssl(w)
  local code = out:match("error (%d+) at %-?%d+ depth lookup:")
  if code then return tonumber(code), out end
  if out:match(": OK%s*$") or out:match(": OK\n") then return 0, out end
  error("helper.openssl_verify: cannot parse the output of openssl verify:\n" .. out)
end

-- ---------------------------------------------------------------------------
-- Contexts and connections

local function sslctx()
  return require "sslctx"
end

local function merge(defaults, opts)
  local t = {}
  for k, v in pairs(defaults) do t[k] = v end
  for k, v in pairs(opts or {}) do t[k] = v end
  for k, v in pairs(t) do if v == helper.NONE then t[k] = nil end end
  return t
end
helper.merge = merge

-- Creates a context and fails the test with the returned message if it could not.
function helper.new_ctx(opts)
  local ctx, msg, kind = sslctx().new(opts)
  assert(ctx, "sslctx.new failed: " .. tostring(msg) .. " (" .. tostring(kind) .. ")")
  return ctx
end

-- A server context: leaf + intermediate chain, trust anchor ca.pem (for client certs),
-- security level 1 (so that the -auth_level of openssl_verify is known).
function helper.server_ctx(opts)
  return helper.new_ctx(merge({
    side = "server",
    certificate = helper.pki("server-chain.pem"),
    key = helper.pki("server.key"),
    ca_file = helper.pki("ca.pem"),
    security_level = 1,
  }, opts))
end

-- A client context: trust anchor ca.pem, security level 1, mode the default ("always").
function helper.client_ctx(opts)
  return helper.new_ctx(merge({
    side = "client",
    ca_file = helper.pki("ca.pem"),
    security_level = 1,
  }, opts))
end

-- helper.contexts{ client = {...}, server = {...} } -> cctx, sctx
function helper.contexts(t)
  t = t or {}
  return helper.client_ctx(t.client), helper.server_ctx(t.server)
end

-- Moves what `a` must send into `b`'s input; returns the number of bytes moved.
function helper.transfer(a, b)
  local data = a:drain()
  assert(type(data) == "string", "drain() must return a string, got " .. type(data))
  local total = #data
  while #data > 0 do
    local n, msg = b:feed(data)
    assert(type(n) == "number" and n > 0,
           "feed() took nothing: " .. tostring(n) .. " " .. tostring(msg))
    data = data:sub(n + 1)
  end
  return total
end

local function is_want(kind)
  return kind == "want_read" or kind == "want_write"
end
helper.is_want = is_want

-- Drives a client and a server connection (memory transport) through their handshakes.
-- Each side's handshake() is called until it returns true or a non-want failure; the
-- flights are moved across after each call, and once both sides are done the last
-- flights are delivered too (so a side that failed has sent its alert into the other
-- side's input; the other side sees it on its next call).
-- Returns cok, cmsg, ckind, sok, smsg, skind: the last results of each side.
function helper.pump(client, server, max_rounds)
  max_rounds = max_rounds or 30
  local cr, sr = { nil, "not started", "want_read" }, { nil, "not started", "want_read" }
  local cdone, sdone = false, false
  for _ = 1, max_rounds do
    local moved = 0
    if not cdone then
      cr = { client:handshake() }
      if cr[1] or not is_want(cr[3]) then cdone = true end
    end
    moved = moved + helper.transfer(client, server)
    if not sdone then
      sr = { server:handshake() }
      if sr[1] or not is_want(sr[3]) then sdone = true end
    end
    moved = moved + helper.transfer(server, client)
    if cdone and sdone then break end
    if moved == 0 and cr[3] == "want_read" and sr[3] == "want_read" and not cdone and not sdone then
      -- both wait for the other and nothing is in flight: stuck
      break
    end
  end
  -- final flights (alerts, tickets), in both directions
  helper.transfer(client, server)
  helper.transfer(server, client)
  return cr[1], cr[2], cr[3], sr[1], sr[2], sr[3]
end

-- Creates a client and a server connection and pumps the handshake.
-- copts default: { hostname = "localhost" }; pass helper.NONE to drop it.
-- Returns c, s, cok, cmsg, ckind, sok, smsg, skind.
function helper.connect(cctx, sctx, copts, sopts, rounds)
  local c = cctx:new_connection(merge({ hostname = "localhost" }, copts))
  local s = sctx:new_connection(sopts)
  return c, s, helper.pump(c, s, rounds)
end

-- Like helper.connect, but the handshake must succeed on both sides.
function helper.connected(cctx, sctx, copts, sopts)
  local c, s, cok, cmsg, ckind, sok, smsg, skind = helper.connect(cctx, sctx, copts, sopts)
  assert(cok == true, "client handshake failed: " .. tostring(cmsg) .. " (" .. tostring(ckind) .. ")")
  assert(sok == true, "server handshake failed: " .. tostring(smsg) .. " (" .. tostring(skind) .. ")")
  return c, s
end

-- Writes all of `data` on `from` (moving ciphertext across whenever write wants it)
-- and reads on `to` until #data bytes arrived.  Returns what `to` read.
function helper.exchange(from, to, data, max_rounds)
  max_rounds = max_rounds or 100000
  local sent, got, parts = 0, 0, {}
  for _ = 1, max_rounds do
    if sent < #data then
      local n, msg, kind = from:write(data:sub(sent + 1))
      if n then
        assert(type(n) == "number" and n >= 0, "write returned " .. tostring(n))
        sent = sent + n
      else
        assert(is_want(kind), "write failed: " .. tostring(msg) .. " (" .. tostring(kind) .. ")")
      end
    end
    helper.transfer(from, to)
    while got < #data do
      local s, msg, kind = to:read()
      if not s then
        assert(is_want(kind), "read failed: " .. tostring(msg) .. " (" .. tostring(kind) .. ")")
        break
      end
      parts[#parts + 1] = s
      got = got + #s
    end
    helper.transfer(to, from)  -- e.g. TLS 1.3 key updates, post-handshake messages
    if got >= #data and sent >= #data then break end
  end
  return table.concat(parts)
end

-- Reads on `conn` until a non-want result or nothing more arrives; returns that result.
function helper.read_result(conn)
  return conn:read()
end

-- Runs fn with a collector that never rests (each allocation does collection work), then
-- puts the collector back, also when fn raises (re-raised).  Lua 5.4 may be in generational
-- mode, where the pause and step multiplier do nothing: it is switched to incremental.
function helper.with_busy_gc(fn)
  local restore
  if _VERSION == "Lua 5.4" then
    local mode = collectgarbage("incremental", 1, 1000)
    restore = function()
      collectgarbage("incremental", 200, 100)   -- Lua's defaults
      collectgarbage(mode)
    end
  else
    local pause = collectgarbage("setpause", 1)
    local stepmul = collectgarbage("setstepmul", 1000)
    restore = function()
      collectgarbage("setpause", pause)
      collectgarbage("setstepmul", stepmul)
    end
  end
  local ok, err = pcall(fn)
  restore()
  if not ok then error(err, 0) end
end

-- The collector's pace for the close-in-method children: "busy" (a full cycle at almost every
-- allocation, so that a finalizer runs in the middle of a method) or "normal" (Lua's
-- defaults, for the setup of each round).
function helper.gc_pace(which)
  local busy = which == "busy"
  if _VERSION == "Lua 5.4" then
    collectgarbage("incremental", busy and 0 or 200, busy and 1000 or 100)
  else
    collectgarbage("setpause", busy and 0 or 200)
    collectgarbage("setstepmul", busy and 100000 or 200)
  end
end

-- Garbage whose finalizer is fn (5.1 and LuaJIT run __gc only for userdata).
function helper.garbage_with_finalizer(fn)
  if newproxy then getmetatable(newproxy(true)).__gc = fn
  else setmetatable({}, { __gc = fn }) end
end

-- Calls fn(...) expecting it to raise; returns the error message as a string.
function helper.raises(fn, ...)
  local ok, err = pcall(fn, ...)
  assert(not ok, "expected an error, but the call succeeded")
  return tostring(err)
end

-- Asserts that `msg` contains `needle` literally.
function helper.contains(msg, needle)
  return type(msg) == "string" and msg:find(needle, 1, true) ~= nil
end

-- x509 subject helpers
function helper.cli_subject(name)
  local out = helper.openssl({ "x509", "-in", pki_path(name), "-noout", "-subject",
                               "-nameopt", "RFC2253" })
  return (out:gsub("^subject=%s*", ""):gsub("%s+$", ""))
end

-- A 1 MiB-ish deterministic payload with every byte value.
function helper.payload(size)
  local bytes = {}
  for i = 0, 255 do bytes[#bytes + 1] = string.char((i * 7 + 3) % 256) end
  local chunk = table.concat(bytes)
  local reps = math.floor(size / 256) + 1
  return string.rep(chunk, reps):sub(1, size)
end

-- Is a callback argument supported by this build yet?  (The callbacks work lands in a
-- separate issue; until then passing a function raises "not supported yet".)
function helper.callbacks_supported()
  local ok_load, mod = pcall(sslctx)
  if not ok_load then return false end
  local ok_ctx, ctx = pcall(mod.new, { side = "server" })
  if not ok_ctx or not ctx then return false end
  local ok, err = pcall(ctx.set_verification_mode, ctx, "server", "always", function() end)
  pcall(ctx.close, ctx)
  if ok then return true end
  if tostring(err):find("not supported", 1, true) then return false end
  return true  -- some other error: let the tests show it
end

-- Generate the PKI now when run as busted's helper (cwd = repository root).
if file_exists("spec/certs/make-pki.sh") then
  generate_pki()
end

package.loaded.helper = helper
return helper
