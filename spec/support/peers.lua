-- spec/support/peers.lua: real TLS peers for the socket, interop and examples specs.
--
-- Every server listens on loopback only (127.0.0.1 or ::1), on a free port; every process
-- runs under `timeout` (a safety net: nothing outlives a crashed spec by long) and is
-- stopped by PID; every wait is bounded in time.  Runs on Lua 5.1-5.4 and LuaJIT.
--
--   peers.have(bin)                   is the program on PATH?
--   peers.root()                      absolute path of the repository root (the cwd)
--   peers.lua()                       the interpreter running the specs (command name)
--   peers.lua_env()                   "LUA_PATH=... LUA_CPATH=..." for Lua subprocesses
--   peers.tmpdir()                    a fresh temporary directory (removed by peers.cleanup)
--   peers.free_port()                 a port that was free on 127.0.0.1 a moment ago
--   peers.listening(port)             "loopback" | "wildcard" | nil: who listens on port
--   peers.spawn(cmd, opts)            start a background process -> proc {pid, log, ...}
--   peers.alive(proc)                 is it still running?
--   peers.stop(proc)                  TERM, then KILL after a bounded wait; idempotent
--   peers.wait_listen(proc, port, s)  true once port listens (bounded), false + log otherwise
--   peers.wait_line(proc, pattern, s) the first capture of pattern in proc's log (bounded)
--   peers.wait_exit(proc, s)          true once the process ended (bounded)
--   peers.log(proc)                   what the process printed so far
--   peers.run(cmd, opts)              run a command to its end (under `timeout`) -> out, code
--   peers.s_server(opts)              openssl s_server on 127.0.0.1
--   peers.gnutls_serv(opts)           gnutls-serv, bound to loopback by an LD_PRELOAD shim
--   peers.nginx(opts)                 nginx under a temporary prefix, non-daemon
--   peers.module_server(opts)         spec/support/tls_server.lua (the module as a server)
--   peers.s_client(opts)              openssl s_client -> ok (data came back), output, code
--   peers.gnutls_cli(opts)            gnutls-cli -> ok, output, code
--   peers.curl(opts)                  curl -> body, output, code
--   peers.cleanup()                   stop every process started, remove temp dirs

local helper = require "helper"
local socket = require "socket"

local peers = {}

local REG = debug.getregistry()
local q = helper.sh_quote
local started = {}     -- procs of this spec file, for cleanup
local tmpdirs = {}

local function sleep(s) socket.sleep(s) end

local read_file, write_file = helper.read_file, helper.write_file
peers.read_file = read_file
peers.write_file = write_file

function peers.have(bin)
  return helper.exec_ok("command -v " .. q(bin) .. " >/dev/null 2>&1")
end

function peers.root()
  if REG["sslctx.spec.peers.root"] then return REG["sslctx.spec.peers.root"] end
  local p = assert(io.popen("pwd", "r"))
  local dir = p:read("*l")
  p:close()
  REG["sslctx.spec.peers.root"] = dir
  return dir
end

function peers.pki(name)
  local p = helper.pki(name)
  if p:sub(1, 1) ~= "/" then p = peers.root() .. "/" .. p end
  return p
end

function peers.lua()
  if jit then return "luajit" end
  return "lua" .. _VERSION:match("%d+%.%d+")
end

function peers.lua_env()
  local root = peers.root()
  local lp = root .. "/lua/?.lua;" .. root .. "/lua/?/init.lua;" .. root .. "/spec/?.lua;;"
  local cp = root .. "/build/" .. peers.lua() .. "/?.so;;"
  return "env -u LUA_PATH_5_2 -u LUA_PATH_5_3 -u LUA_PATH_5_4 -u LUA_CPATH_5_2 " ..
         "-u LUA_CPATH_5_3 -u LUA_CPATH_5_4 LUA_PATH=" .. q(lp) .. " LUA_CPATH=" .. q(cp) ..
         " SSLCTX_PKI_DIR=" .. q(peers.pki(""):gsub("/$", ""))
end

function peers.tmpdir()
  local p = assert(io.popen("mktemp -d /tmp/sslctx-peers.XXXXXX", "r"))
  local dir = p:read("*l")
  p:close()
  assert(dir and dir:match("^/tmp/sslctx%-peers%."), "mktemp failed")
  tmpdirs[#tmpdirs + 1] = dir
  return dir
end

function peers.free_port()
  local s = assert(socket.bind("127.0.0.1", 0))
  local _, port = s:getsockname()
  s:close()
  return tonumber(port)
end

-- Who listens on `port`: "loopback" (127.0.0.1 / ::1 only), "wildcard" (some listener on
-- 0.0.0.0 or ::, or another address), nil (nobody).
function peers.listening(port)
  local hex = ("%04X"):format(port)
  local found
  for _, file in ipairs({ "/proc/net/tcp", "/proc/net/tcp6" }) do
    local text = read_file(file) or ""
    for addr, p, st in text:gmatch("%d+: (%x+):(%x+) %x+:%x+ (%x%x)") do
      if p == hex and st == "0A" then
        local loop = addr == "0100007F" or addr == "00000000000000000000000001000000"
        if not loop then return "wildcard" end
        found = "loopback"
      end
    end
  end
  return found
end

-- Starts `cmd` in the background under `timeout`, output to a log file.
-- opts: lifetime (s, default 120), dir (a temp dir; default a new one), env (a prefix such as
-- "LD_PRELOAD=..."), stdin (a file; default /dev/null).
function peers.spawn(cmd, opts)
  opts = opts or {}
  local dir = opts.dir or peers.tmpdir()
  local proc = { dir = dir, log = dir .. "/" .. (opts.name or "proc") .. ".log", cmd = cmd }
  -- The shell stays to wait for its child (so that no zombie is left behind); its pipe is
  -- closed by peers.stop once the child has ended.
  local line = ("%s timeout -k 3 %d %s >%s 2>&1 <%s & echo $!; wait"):format(
    opts.env or "", opts.lifetime or 120, cmd, q(proc.log), q(opts.stdin or "/dev/null"))
  local p = assert(io.popen(line, "r"))
  local pid = p:read("*l")
  proc.handle = p
  proc.pid = tonumber(pid)
  assert(proc.pid, "spawn: no pid for: " .. cmd)
  started[#started + 1] = proc
  return proc
end

function peers.alive(proc)
  if not proc or not proc.pid or proc.stopped then return false end
  local stat = read_file("/proc/" .. proc.pid .. "/stat")
  if not stat then return false end
  local state = stat:match("^%d+ %b() (%a)")
  return state ~= nil and state ~= "Z" and state ~= "X"
end

function peers.log(proc)
  return read_file(proc.log) or ""
end

function peers.stop(proc)
  if not proc or proc.stopped then return end
  if peers.alive(proc) then
    os.execute("kill -TERM " .. proc.pid .. " 2>/dev/null")
    for _ = 1, 60 do
      if not peers.alive(proc) then break end
      sleep(0.05)
    end
    if peers.alive(proc) then os.execute("kill -KILL " .. proc.pid .. " 2>/dev/null") end
  end
  if proc.handle then
    pcall(proc.handle.close, proc.handle)   -- the waiting shell ends with its child
    proc.handle = nil
  end
  proc.stopped = true
end

function peers.wait_exit(proc, secs)
  local deadline = socket.gettime() + (secs or 10)
  while socket.gettime() < deadline do
    if not peers.alive(proc) then return true end
    sleep(0.05)
  end
  return not peers.alive(proc)
end

function peers.wait_listen(proc, port, secs)
  local deadline = socket.gettime() + (secs or 10)
  while socket.gettime() < deadline do
    if peers.listening(port) then return true end
    if not peers.alive(proc) then return false, peers.log(proc) end
    sleep(0.05)
  end
  return false, "not listening after " .. tostring(secs or 10) .. " s:\n" .. peers.log(proc)
end

function peers.wait_line(proc, pattern, secs)
  local deadline = socket.gettime() + (secs or 10)
  repeat
    local log = peers.log(proc)
    local cap = log:match(pattern)
    if cap then return cap end
    if not peers.alive(proc) then
      cap = peers.log(proc):match(pattern)
      return cap, peers.log(proc)
    end
    sleep(0.05)
  until socket.gettime() >= deadline
  return nil, peers.log(proc)
end

-- Runs a shell command to its end under `timeout` (opts.timeout, default 10 s).
-- Returns its output (stdout + stderr) and exit code.
function peers.run(cmd, opts)
  opts = opts or {}
  local line = ("%s timeout -k 2 %d %s <%s 2>&1; echo \"::rc=$?\""):format(
    opts.env or "", opts.timeout or 10, cmd, q(opts.stdin or "/dev/null"))
  local p = assert(io.popen(line, "r"))
  local out = p:read("*a")
  p:close()
  local code = tonumber(out:match("::rc=(%d+)%s*$"))
  out = out:gsub("::rc=%d+%s*$", "")
  return out, code
end

function peers.cleanup()
  for i = #started, 1, -1 do peers.stop(started[i]) end
  started = {}
  for _, d in ipairs(tmpdirs) do os.execute("rm -rf " .. q(d)) end
  tmpdirs = {}
end

-- Starts a server process and waits (bounded) until it listens on loopback; retries with
-- another port when it did not come up (a port taken in between).
local function start_listening(make_cmd, opts)
  local last
  for _ = 1, 3 do
    local port = peers.free_port()
    local cmd, env = make_cmd(port)
    local proc = peers.spawn(cmd, { env = env, name = opts.name, lifetime = opts.lifetime,
                                    dir = opts.dir })
    proc.port = port
    local ok, why = peers.wait_listen(proc, port, opts.wait or 10)
    if ok then
      local who = peers.listening(port)
      if who ~= "loopback" then
        peers.stop(proc)
        error("a test server listens beyond loopback on port " .. port .. ": " .. cmd)
      end
      return proc
    end
    last = why
    peers.stop(proc)
  end
  error("server did not start: " .. tostring(last))
end

-- ---------------------------------------------------------------------------
-- openssl s_server
-- opts: cert (PKI name of a leaf, default "server"), key, chain (PKI name, default "int.pem"
-- or none for selfsigned/untrusted), cafile (default "ca.pem"), verify = n (-verify) or
-- Verify = n (-Verify), return_error (-verify_return_error, default true when verifying),
-- mode ("rev" default, "www"), naccept, tls ("1.2"/"1.3"), extra (string).
function peers.s_server(opts)
  opts = opts or {}
  local cert = opts.cert or "server"
  local a = { "openssl s_server -accept 127.0.0.1:%d",
              "-cert", q(peers.pki(cert .. ".pem")),
              "-key", q(peers.pki(opts.key or (cert .. ".key"))) }
  local chain = opts.chain
  if chain == nil and cert ~= "selfsigned" and cert ~= "untrusted" then chain = "int.pem" end
  if chain then a[#a + 1] = "-cert_chain " .. q(peers.pki(chain)) end
  if opts.cert == "untrusted" then a[#a + 1] = "-cert_chain " .. q(peers.pki("other-ca.pem")) end
  a[#a + 1] = "-CAfile " .. q(peers.pki(opts.cafile or "ca.pem"))
  if opts.verify then a[#a + 1] = "-verify " .. opts.verify end
  if opts.Verify then a[#a + 1] = "-Verify " .. opts.Verify end
  if (opts.verify or opts.Verify) and opts.return_error ~= false then
    a[#a + 1] = "-verify_return_error"
  end
  a[#a + 1] = opts.mode == "www" and "-www" or "-rev"
  if opts.naccept then a[#a + 1] = "-naccept " .. opts.naccept end
  if opts.tls then a[#a + 1] = "-tls" .. opts.tls:gsub("%.", "_") end
  if opts.extra then a[#a + 1] = opts.extra end
  local fmt = table.concat(a, " ")
  return start_listening(function(port) return fmt:format(port) end,
                         { name = "s_server", lifetime = opts.lifetime })
end

-- ---------------------------------------------------------------------------
-- gnutls-serv (it has no listen-address option: the shim binds it to loopback)

local function compile_shim()
  local root = peers.root()
  local out = root .. "/build/support/loopback_bind.so"
  local src = root .. "/spec/support/loopback_bind.c"
  if REG["sslctx.spec.peers.shim"] then return out end
  local cmd = ("mkdir -p %s && cc -std=c99 -O2 -Wall -Wextra -Werror -shared -fPIC -o %s %s -ldl 2>&1"):format(
    q(root .. "/build/support"), q(out), q(src))
  local res = helper.run(cmd .. " && echo SHIM-OK")
  assert(res:find("SHIM-OK", 1, true), "cannot build the loopback shim:\n" .. res)
  REG["sslctx.spec.peers.shim"] = true
  return out
end
peers.compile_shim = compile_shim

-- opts: cert (default "server"; chain file <cert>-chain.pem), cafile, client
-- ("none" | "request" (default: verify if sent) | "require"), tls, mode ("echo" | "http").
function peers.gnutls_serv(opts)
  opts = opts or {}
  local shim = compile_shim()
  local cert = opts.cert or "server"
  local certfile = cert == "selfsigned" and "selfsigned.pem" or (cert .. "-chain.pem")
  local a = { "gnutls-serv --port %d",
              "--x509certfile", q(peers.pki(certfile)),
              "--x509keyfile", q(peers.pki(cert .. ".key")),
              "--x509cafile", q(peers.pki(opts.cafile or "ca.pem")) }
  if opts.client == "none" then a[#a + 1] = "--disable-client-cert"
  elseif opts.client == "require" then a[#a + 1] = "--require-client-cert --verify-client-cert"
  else a[#a + 1] = "--verify-client-cert" end
  a[#a + 1] = opts.mode == "http" and "--http" or "--echo"
  if opts.tls == "1.2" then a[#a + 1] = "--priority NORMAL:-VERS-ALL:+VERS-TLS1.2"
  elseif opts.tls == "1.3" then a[#a + 1] = "--priority NORMAL:-VERS-ALL:+VERS-TLS1.3" end
  local fmt = table.concat(a, " ")
  return start_listening(function(port) return fmt:format(port), "LD_PRELOAD=" .. q(shim) end,
                         { name = "gnutls-serv", lifetime = opts.lifetime })
end

-- ---------------------------------------------------------------------------
-- nginx: a temporary prefix, `daemon off; master_process off;`, stopped by PID.
-- opts: verify_client ("on" | "optional" | "optional_no_ca" | nil), cert (default "server"),
-- cafile (default "ca.pem"), tls.
function peers.nginx(opts)
  opts = opts or {}
  local dir = peers.tmpdir()
  for _, d in ipairs({ "logs", "tmp", "conf" }) do os.execute("mkdir -p " .. q(dir .. "/" .. d)) end
  local cert = opts.cert or "server"
  local client = ""
  if opts.verify_client then
    client = ("ssl_client_certificate %s;\n    ssl_verify_client %s;\n    ssl_verify_depth 3;"):format(
      peers.pki(opts.cafile or "ca.pem"), opts.verify_client)
  end
  local protocols = opts.tls and ("TLSv" .. opts.tls) or "TLSv1.2 TLSv1.3"
  local function conf(port)
    return ([[
pid %s/logs/nginx.pid;
error_log %s/logs/error.log info;
events { worker_connections 64; }
http {
  access_log %s/logs/access.log;
  client_body_temp_path %s/tmp/body;
  proxy_temp_path %s/tmp/proxy;
  fastcgi_temp_path %s/tmp/fastcgi;
  uwsgi_temp_path %s/tmp/uwsgi;
  scgi_temp_path %s/tmp/scgi;
  server {
    listen 127.0.0.1:%d ssl;
    server_name localhost;
    ssl_certificate %s;
    ssl_certificate_key %s;
    ssl_protocols %s;
    %s
    location / {
      default_type text/plain;
      return 200 "verify=$ssl_client_verify subject=$ssl_client_s_dn\n";
    }
  }
}
]]):format(dir, dir, dir, dir, dir, dir, dir, dir, port,
           peers.pki(cert .. "-chain.pem"), peers.pki(cert .. ".key"), protocols, client)
  end
  return start_listening(function(port)
    write_file(dir .. "/conf/nginx.conf", conf(port))
    return ("nginx -p %s -c %s -e %s -g %s"):format(q(dir .. "/"), q(dir .. "/conf/nginx.conf"),
      q(dir .. "/logs/error.log"), q("daemon off; master_process off;"))
  end, { name = "nginx", lifetime = opts.lifetime, dir = dir })
end

-- ---------------------------------------------------------------------------
-- The module as a server: spec/support/tls_server.lua in a Lua subprocess.
-- opts are passed as key=value arguments (see that file); waits for its READY line.
function peers.module_server(opts)
  opts = opts or {}
  local args = {}
  for k, v in pairs(opts) do
    if k ~= "lifetime" then args[#args + 1] = q(k .. "=" .. tostring(v)) end
  end
  table.sort(args)
  local cmd = ("%s %s %s %s"):format(peers.lua_env(), peers.lua(),
    q(peers.root() .. "/spec/support/tls_server.lua"), table.concat(args, " "))
  local proc = peers.spawn(cmd, { name = "module_server", lifetime = opts.lifetime or 60 })
  local port, log = peers.wait_line(proc, "READY (%d+)", 15)
  if not port then
    peers.stop(proc)
    error("module server did not start:\n" .. tostring(log))
  end
  proc.port = tonumber(port)
  assert(peers.listening(proc.port) == "loopback", "module server not on loopback only")
  return proc
end

-- The RESULT lines a module server logged: list of tables of their key=value fields.
function peers.results(proc)
  local list = {}
  for line in peers.log(proc):gmatch("RESULT ([^\n]*)") do
    local t = {}
    for k, v in line:gmatch("(%w+)=(%b[])") do t[k] = v:sub(2, -2) end
    list[#list + 1] = t
  end
  return list
end

-- Waits until a module server logged n RESULT lines (bounded); returns them.
function peers.wait_results(proc, n, secs)
  local deadline = socket.gettime() + (secs or 10)
  repeat
    local r = peers.results(proc)
    if #r >= n then return r end
    sleep(0.05)
  until socket.gettime() >= deadline or not peers.alive(proc)
  return peers.results(proc)
end

-- ---------------------------------------------------------------------------
-- Clients

local function stdin_file(text)
  local dir = peers.tmpdir()
  local path = dir .. "/stdin"
  write_file(path, text)
  return path
end

-- openssl s_client: sends opts.send (default "hello sslctx\n") and "CLOSE", reads until the
-- server closes (-ign_eof).  opts: port, host (default 127.0.0.1), servername (default
-- "localhost"; false for none), verify_host (default "localhost"), cafile (default ca.pem),
-- cert/key (PKI names; cert gets its -chain.pem), tls, expect (text whose arrival means
-- success; default: the reversal of send, for s_server -rev, or opts.expect).
-- Returns ok, output, exit code, verify return code.
function peers.s_client(opts)
  local a = { "openssl s_client -connect", q((opts.host or "127.0.0.1") .. ":" .. opts.port),
              "-CAfile", q(peers.pki(opts.cafile or "ca.pem")), "-verify_return_error",
              "-ign_eof" }
  if opts.servername ~= false then a[#a + 1] = "-servername " .. q(opts.servername or "localhost") end
  if opts.verify_host ~= false then
    a[#a + 1] = "-verify_hostname " .. q(opts.verify_host or "localhost")
  end
  if opts.cert then
    a[#a + 1] = "-cert " .. q(peers.pki(opts.cert .. ".pem"))
    a[#a + 1] = "-key " .. q(peers.pki(opts.key or (opts.cert .. ".key")))
    a[#a + 1] = "-cert_chain " .. q(peers.pki("int.pem"))
  end
  if opts.tls then a[#a + 1] = "-tls" .. opts.tls:gsub("%.", "_") end
  if opts.extra then a[#a + 1] = opts.extra end
  local send = opts.send or "hello sslctx\n"
  -- "CLOSE" makes `s_server -rev` end the connection (the module server ends it anyway)
  local out, code = peers.run(table.concat(a, " "), { stdin = stdin_file(send .. "CLOSE\n"),
                                                       timeout = opts.timeout or 10 })
  local expect = opts.expect or (send:gsub("\n$", ""):reverse())
  local vcode = tonumber(out:match("verify error:num=(%d+)") or out:match("Verify return code: (%d+)"))
  return out:find(expect, 1, true) ~= nil, out, code, vcode
end

-- gnutls-cli: sends opts.send then keeps stdin open opts.linger seconds (default 1) so that
-- the answer can arrive.  opts: port, host, cafile, cert/key, tls, expect, servername.
function peers.gnutls_cli(opts)
  local a = { "gnutls-cli -p", tostring(opts.port), "--x509cafile", q(peers.pki(opts.cafile or "ca.pem")) }
  if opts.cert then
    a[#a + 1] = "--x509certfile " .. q(peers.pki(opts.cert .. "-chain.pem"))
    a[#a + 1] = "--x509keyfile " .. q(peers.pki(opts.key or (opts.cert .. ".key")))
  end
  if opts.tls == "1.2" then a[#a + 1] = "--priority NORMAL:-VERS-ALL:+VERS-TLS1.2"
  elseif opts.tls == "1.3" then a[#a + 1] = "--priority NORMAL:-VERS-ALL:+VERS-TLS1.3" end
  a[#a + 1] = "--sni-hostname " .. q(opts.servername or "localhost")
  a[#a + 1] = "--verify-hostname " .. q(opts.verify_host or "localhost")
  a[#a + 1] = q(opts.host or "127.0.0.1")
  local send = opts.send or "hello sslctx\n"
  local inp = stdin_file(send)
  local cmd = ("sh -c %s"):format(q(("(cat %s; sleep %s) | %s"):format(
    q(inp), tostring(opts.linger or 1), table.concat(a, " "))))
  local out, code = peers.run(cmd, { timeout = opts.timeout or 15 })
  local expect = opts.expect or send:gsub("\n$", "")
  return out:find(expect, 1, true) ~= nil, out, code
end

-- curl: GET https://localhost:port/ (resolved to 127.0.0.1).  opts: port, cacert, cert/key,
-- path, tls.  Returns body (stdout), full output (with -v on stderr), exit code.
function peers.curl(opts)
  local dir = peers.tmpdir()
  local body = dir .. "/body"
  local a = { "curl -sS -v --max-time 8 -o", q(body),
              "--resolve", q("localhost:" .. opts.port .. ":127.0.0.1"),
              "--cacert", q(peers.pki(opts.cacert or "ca.pem")) }
  if opts.cert then
    a[#a + 1] = "--cert " .. q(peers.pki(opts.cert .. "-chain.pem"))
    a[#a + 1] = "--key " .. q(peers.pki(opts.key or (opts.cert .. ".key")))
  end
  if opts.tls then a[#a + 1] = "--tlsv" .. opts.tls .. " --tls-max " .. opts.tls end
  a[#a + 1] = q("https://localhost:" .. opts.port .. (opts.path or "/"))
  local out, code = peers.run(table.concat(a, " "), { timeout = 12 })
  return read_file(body), out, code
end

return peers
