-- https_get.lua: a verifying HTTPS client over sslctx.socket (the LuaSocket adapter).
--
--   lua5.4 examples/https_get.lua https://localhost:PORT/ --cafile build/pki/ca.pem
--   lua5.4 examples/https_get.lua https://HOST[:PORT][/PATH] [--cafile FILE] [--cert FILE
--          --key FILE] [--hostname NAME] [--timeout SECONDS] [--tls 1.2|1.3]
--   lua5.4 examples/https_get.lua --demo
--
-- Run from the repository after `make` (it finds lua/ and build/<lua>/ from its own path).
-- The server's certificate is verified (mode "always") against --cafile, or the system's
-- trust store without it, and its name is checked against the URL's host (or --hostname):
-- a DNS name is also sent as SNI, an IP literal is checked as an IP.  The body goes to
-- stdout; the status line and what the handshake established go to stderr.
--
-- Exit status: 0 for a 2xx answer, 1 for another HTTP status, 2 for a network or TLS
-- failure (the message says which: "verify" for a certificate or name that did not check
-- out), 64 for a usage error.
--
-- --demo: starts `openssl s_server -www` on 127.0.0.1 at a free port with the test PKI
-- (build/pki, made by spec/certs/make-pki.sh when missing), fetches https://localhost:PORT/
-- (verified), then asks for the same server under the name wrong.example (refused: hostname
-- mismatch), stops the server and exits 0 when both went as expected.

local here = (arg and arg[0] or ""):match("^(.*)/[^/]*$") or "."
local root = here .. "/.."
local luaname = jit and "luajit" or ("lua" .. _VERSION:match("%d+%.%d+"))
package.path = root .. "/lua/?.lua;" .. root .. "/lua/?/init.lua;" .. package.path
package.cpath = root .. "/build/" .. luaname .. "/?.so;" .. package.cpath

local sslctx = require "sslctx"
local sslsocket = require "sslctx.socket"
local socket = require "socket"

local function say(...) io.stderr:write(table.concat({ ... }), "\n") end

local function usage(msg)
  if msg then say("https_get: ", msg) end
  say("usage: https_get.lua https://HOST[:PORT][/PATH] [--cafile FILE] [--cert FILE --key FILE]",
      " [--hostname NAME] [--timeout S] [--tls 1.2|1.3]\n       https_get.lua --demo")
  os.exit(64)
end

-- https://host[:port][/path], host possibly an [IPv6] literal.
local function parse_url(url)
  local rest = url:match("^https://(.+)$")
  if not rest then return nil end
  local hostport, path = rest:match("^([^/]+)(/.*)$")
  if not hostport then hostport, path = rest, "/" end
  local host, port = hostport:match("^%[([^%]]+)%]:?(%d*)$")
  if not host then host, port = hostport:match("^([^:]+):?(%d*)$") end
  if not host then return nil end
  return host, tonumber(port) or 443, path
end

-- Reads the body: chunked, Content-Length or until the TLS stream closes (close_notify).
local function read_body(s, headers)
  if (headers["transfer-encoding"] or ""):lower():find("chunked", 1, true) then
    local parts = {}
    for _ = 1, 100000 do
      local line, err = s:receive("*l")
      if not line then return nil, err end
      local size = tonumber(line:match("^%x+"), 16)
      if not size then return nil, "bad chunk header" end
      if size == 0 then
        for _ = 1, 100 do   -- trailer
          local t = s:receive("*l")
          if not t or t == "" then break end
        end
        return table.concat(parts)
      end
      local data, derr = s:receive(size)
      if not data then return nil, derr end
      parts[#parts + 1] = data
      s:receive("*l")
    end
    return nil, "too many chunks"
  end
  local length = tonumber(headers["content-length"] or "")
  if length then return s:receive(length) end
  return s:receive("*a")   -- "closed" only on close_notify: a truncation is an error
end

-- Returns exit status, and prints as documented.
local function get(url, o)
  local host, port, path = parse_url(url)
  if not host then usage("not an https URL: " .. tostring(url)) end
  local ctx_opts = { side = "client", verify = "always", ca_file = o.cafile,
                     certificate = o.cert, key = o.key }
  if o.tls then
    ctx_opts.min_version = "tls" .. o.tls
    ctx_opts.max_version = "tls" .. o.tls
  end
  local ctx, cmsg, ckind = sslctx.new(ctx_opts)
  if not ctx then
    say("https_get: context: ", cmsg, " (", ckind, ")")
    return 2
  end
  local s, msg, kind = sslsocket.connect(host, port, {
    ctx = ctx, hostname = o.hostname or host, timeout = o.timeout or 10 })
  if not s then
    say("https_get: ", host, ":", port, ": ", msg, " (", kind, ")")
    return 2
  end
  local info = s:info()
  local peer = s:getpeercertificate()
  say("* ", info.protocol, " ", info.cipher, ", server certificate ", peer and peer:subject() or "?",
      " verified for ", o.hostname or host)
  local hosthdr = host:find(":", 1, true) and ("[" .. host .. "]") or host
  if port ~= 443 then hosthdr = hosthdr .. ":" .. port end
  local ok, err = s:send(("GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: sslctx-https_get\r\n" ..
                          "Accept: */*\r\nConnection: close\r\n\r\n"):format(path, hosthdr))
  if not ok then
    say("https_get: send: ", err)
    s:close()
    return 2
  end
  local status, serr = s:receive("*l")
  if not status then
    say("https_get: no response: ", serr)
    s:close()
    return 2
  end
  say("< ", status)
  local headers = {}
  for _ = 1, 200 do
    local line, herr = s:receive("*l")
    if not line then
      say("https_get: headers: ", herr)
      s:close()
      return 2
    end
    if line == "" then break end
    local k, v = line:match("^([^:]+):%s*(.*)$")
    if k then headers[k:lower()] = v end
  end
  local body, berr = read_body(s, headers)
  s:close()
  if not body then
    say("https_get: body: ", berr)
    return 2
  end
  io.stdout:write(body)
  io.stdout:flush()
  local code = tonumber(status:match("^HTTP/%d%.%d (%d%d%d)"))
  return (code and code >= 200 and code < 300) and 0 or 1
end

local function shq(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end

local function demo()
  local pki = os.getenv("SSLCTX_PKI_DIR") or (root .. "/build/pki")
  local r = os.execute("sh " .. shq(root .. "/spec/certs/make-pki.sh") .. " " .. shq(pki))
  if not (r == true or r == 0) then
    say("https_get --demo: make-pki.sh failed")
    return 2
  end
  local probe = assert(socket.bind("127.0.0.1", 0))
  local _, port = probe:getsockname()
  probe:close()
  local cmd = ("timeout 30 openssl s_server -accept 127.0.0.1:%d -cert %s -cert_chain %s -key %s -www " ..
               ">/dev/null 2>&1 </dev/null & echo $!"):format(port, shq(pki .. "/server.pem"),
               shq(pki .. "/int.pem"), shq(pki .. "/server.key"))
  local p = assert(io.popen(cmd))
  local pid = tonumber(p:read("*l"))
  p:close()
  local status = 2
  local ok, err = pcall(function()
    -- wait (bounded) until it accepts connections
    local up = false
    for _ = 1, 100 do
      local c = socket.tcp()
      c:settimeout(0.2)
      if c:connect("127.0.0.1", port) then
        c:close()
        up = true
        break
      end
      c:close()
      socket.sleep(0.05)
    end
    if not up then error("openssl s_server did not start") end
    local url = ("https://localhost:%d/"):format(port)
    say("== GET ", url, " (expect: verified, 200)")
    local good = get(url, { cafile = pki .. "/ca.pem", timeout = 5 })
    say("== GET ", url, " as wrong.example (expect: refused, hostname mismatch)")
    local bad = get(url, { cafile = pki .. "/ca.pem", hostname = "wrong.example", timeout = 5 })
    if good == 0 and bad == 2 then
      say("== demo: OK")
      status = 0
    else
      say("== demo: unexpected results ", good, " ", bad)
      status = 1
    end
  end)
  if pid then os.execute("kill " .. pid .. " 2>/dev/null") end
  if not ok then
    say("https_get --demo: ", err)
    return 2
  end
  return status
end

-- command line
local url
local o = {}
local i = 1
local args = arg or {}
while i <= #args do
  local a = args[i]
  local function value()
    i = i + 1
    if args[i] == nil then usage(a .. " needs a value") end
    return args[i]
  end
  if a == "--demo" then o.demo = true
  elseif a == "--cafile" then o.cafile = value()
  elseif a == "--cert" then o.cert = value()
  elseif a == "--key" then o.key = value()
  elseif a == "--hostname" then o.hostname = value()
  elseif a == "--timeout" then o.timeout = tonumber(value()) or usage("--timeout needs a number")
  elseif a == "--tls" then o.tls = value()
  elseif a == "-h" or a == "--help" then usage()
  elseif a:sub(1, 2) == "--" then usage("unknown option " .. a)
  elseif url then usage("more than one URL")
  else url = a end
  i = i + 1
end

if o.demo then os.exit(demo()) end
if not url then usage() end
os.exit(get(url, o))
