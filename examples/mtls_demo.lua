-- Mutual TLS in one process, over sslctx's memory transport.
--
--   make demo            (or: lua5.4 examples/mtls_demo.lua from the repository)
--
-- Builds a throwaway PKI with spec/certs/make-pki.sh, runs one accepted mTLS
-- handshake and two rejected ones, and prints what each side saw.

-- Find the repository from this file's own path, so the demo runs from any cwd.
local here = (arg and arg[0] or ""):match("^(.*)/[^/]*$") or "."
local root = here .. "/.."
local luaname = jit and "luajit" or ("lua" .. _VERSION:match("%d+%.%d+"))
package.path = root .. "/lua/?.lua;" .. root .. "/lua/?/init.lua;" .. package.path
package.cpath = root .. "/build/" .. luaname .. "/?.so;" .. package.cpath

local sslctx = require "sslctx"

local function shq(s) return "'" .. s:gsub("'", "'\\''") .. "'" end

-- os.execute returns a number on 5.1 and true/nil on 5.2+.
local function sh(cmd)
  local r = os.execute(cmd)
  return r == true or r == 0
end

local problems = {}
local function expect(cond, what)
  if not cond then problems[#problems + 1] = what end
  return cond
end

----------------------------------------------------------------------------
-- Throwaway PKI in a temporary directory.
local p = assert(io.popen("mktemp -d"))
local dir = p:read("*l")
p:close()
assert(dir and dir ~= "", "mktemp -d failed")
if not sh("sh " .. shq(root .. "/spec/certs/make-pki.sh") .. " " .. shq(dir)) then
  sh("rm -rf " .. shq(dir))
  error("spec/certs/make-pki.sh failed")
end
local function pki(name) return dir .. "/" .. name end

----------------------------------------------------------------------------
-- Helpers for the report.
local function fmt_mode(ctx, side)
  local flags, int, preset = ctx:get_verification_mode(side)
  return ("flags {%s}, integer %d, preset %s"):format(
    table.concat(flags, ", "), int, preset and ('"' .. preset .. '"') or "none")
end

local function fmt_result(conn)
  local code, str, verified = conn:verify_result()
  return ("code %s (%s), verified %s"):format(tostring(code), tostring(str), tostring(verified))
end

local function fmt_cipher(conn)
  local c = conn:cipher()
  if type(c) == "table" then c = c.name or c[1] end
  return tostring(c)
end

local function print_cert(label, cert)
  if not cert then
    print(("  %s: none"):format(label))
    return
  end
  print(("  %s:"):format(label))
  print(("    subject     %s"):format(cert:subject()))
  print(("    issuer      %s"):format(cert:issuer()))
  print(("    not after   %s"):format(os.date("!%Y-%m-%d %H:%M:%SZ", cert:not_after())))
  print(("    sha256      %s"):format(cert:fingerprint()))
end

local function fmt_fail(ok, msg, kind)
  if ok then return "true" end
  return ('nil, "%s", "%s"'):format(tostring(msg), tostring(kind))
end

-- Move everything `from` has to send into `to`, honouring partial feeds.
local function move(from, to)
  local data = from:drain()
  while #data > 0 do
    local n = to:feed(data)
    if not n or n == 0 then return end
    data = data:sub(n + 1)
  end
end

local function retryable(kind) return kind == "want_read" or kind == "want_write" end

-- Drive both handshakes until each side has finished or failed. Bounded: a
-- handshake needs a handful of flights, 20 rounds means something is stuck.
-- Returns the final {ok, msg, kind} of each side.
local function pump(client, server)
  local c, s = { false }, { false }
  local cdone, sdone = false, false
  for _ = 1, 20 do
    if not cdone then
      c = { client:handshake() }
      cdone = c[1] == true or not retryable(c[3])
    end
    move(client, server)
    if not sdone then
      s = { server:handshake() }
      sdone = s[1] == true or not retryable(s[3])
    end
    move(server, client)
    if cdone and sdone then break end
  end
  return c, s
end

local function check_new(ctx, msg, kind)
  if not ctx then error(("sslctx.new failed: %s (%s)"):format(tostring(msg), tostring(kind))) end
  return ctx
end

----------------------------------------------------------------------------
local function main()
  print("sslctx mutual-TLS demo")
  print(("  %s, %s"):format(_VERSION, sslctx.openssl_version()))
  print()

  local server_ctx = check_new(sslctx.new {
    side = "server",
    certificate = pki "server-chain.pem",
    key = pki "server.key",
    ca_file = pki "ca.pem",
    verify = "require",
  })
  local client_ctx = check_new(sslctx.new {
    certificate = pki "client-chain.pem",
    key = pki "client.key",
    ca_file = pki "ca.pem",
  })

  print("Verification modes")
  print("  server: " .. fmt_mode(server_ctx, "server"))
  print("  client: " .. fmt_mode(client_ctx, "client"))
  print()

  -- 1. The accepted case: both certificates chain to ca.pem.
  print("1. Client with a certificate from the trusted CA")
  local server = server_ctx:new_connection()
  local client = client_ctx:new_connection { hostname = "localhost" }
  local c, s = pump(client, server)
  print("  client handshake: " .. fmt_fail(c[1], c[2], c[3]))
  print("  server handshake: " .. fmt_fail(s[1], s[2], s[3]))
  if expect(c[1] == true and s[1] == true, "mutual handshake did not complete") then
    print(("  protocol    %s"):format(tostring(client:version())))
    print(("  cipher      %s"):format(fmt_cipher(client)))
    print("  client verify_result: " .. fmt_result(client))
    print("  server verify_result: " .. fmt_result(server))
    expect(select(3, client:verify_result()) == true, "client did not verify the server")
    expect(select(3, server:verify_result()) == true, "server did not verify the client")
    print_cert("server's certificate, as the client saw it", client:peer_certificate())
    print_cert("client's certificate, as the server saw it", server:peer_certificate())

    -- One message each way.
    local msg = "hello from the client"
    local n, err, kind = client:write(msg)
    expect(n == #msg, "client write: " .. tostring(err or kind))
    move(client, server)
    local got, rerr, rkind = server:read()
    print(('  server read:  %s'):format(got and ('"' .. got .. '"') or fmt_fail(got, rerr, rkind)))
    expect(got == msg, "server did not read the client's message")
    local subject = server:peer_certificate() and server:peer_certificate():subject() or "?"
    server:write("hello, " .. subject)
    move(server, client)
    -- In TLS 1.3 session tickets precede the reply: read until data comes.
    local reply
    for _ = 1, 5 do
      local r, e, k = client:read()
      if r and #r > 0 then reply = r break end
      if not r and not retryable(k) then reply = fmt_fail(r, e, k) break end
    end
    print(('  client read:  "%s"'):format(tostring(reply)))
    expect(reply == "hello, " .. subject, "client did not read the server's reply")
  end
  client:close()
  server:close()
  print()

  -- 2. Rejected by the server: the client's certificate comes from another CA.
  print("2. Client with a certificate from an untrusted CA (other-ca)")
  local bad_client_ctx = check_new(sslctx.new {
    certificate = pki "client-untrusted.pem",
    key = pki "client-untrusted.key",
    ca_file = pki "ca.pem",
  })
  server = server_ctx:new_connection()
  client = bad_client_ctx:new_connection { hostname = "localhost" }
  c, s = pump(client, server)
  print("  server handshake: " .. fmt_fail(s[1], s[2], s[3]))
  print("  server verify_result: " .. fmt_result(server))
  expect(s[1] == nil and s[3] == "verify", "server did not reject the untrusted client")
  expect(server:verify_result() == 20, "server's verify_result is not 20")
  -- In TLS 1.3 the client has finished before the server judges it: the
  -- server's alert reaches it on its first read.
  if c[1] == true then
    local r, e, k = client:read()
    print("  client read after its handshake: " .. fmt_fail(r, e, k))
  else
    print("  client handshake: " .. fmt_fail(c[1], c[2], c[3]))
  end
  client:close()
  server:close()
  bad_client_ctx:close()
  print()

  -- 3. Rejected by the client: the server's certificate has expired.
  print("3. Server with an expired certificate")
  local expired_ctx = check_new(sslctx.new {
    side = "server",
    certificate = pki "expired-chain.pem",
    key = pki "expired.key",
    ca_file = pki "ca.pem",
    verify = "require",
  })
  server = expired_ctx:new_connection()
  client = client_ctx:new_connection { hostname = "localhost" }
  c, s = pump(client, server)
  print("  client handshake: " .. fmt_fail(c[1], c[2], c[3]))
  print("  client verify_result: " .. fmt_result(client))
  print("  server handshake: " .. fmt_fail(s[1], s[2], s[3]))
  expect(c[1] == nil and c[3] == "verify", "client did not reject the expired server")
  local code, str = client:verify_result()
  expect(code == 10 and str == "certificate has expired",
         "client's verify_result is not 10, certificate has expired")
  client:close()
  server:close()
  expired_ctx:close()
  print()

  client_ctx:close()
  server_ctx:close()
end

local ok, err = pcall(main)
sh("rm -rf " .. shq(dir))
if not ok then
  io.stderr:write("mtls_demo: ", tostring(err), "\n")
  os.exit(1)
end
if #problems > 0 then
  for _, what in ipairs(problems) do io.stderr:write("mtls_demo: unexpected: ", what, "\n") end
  print(("mTLS demo: FAILED (%d unexpected results)"):format(#problems))
  os.exit(1)
end
print("mTLS demo: OK (1 mutual handshake accepted, 2 rejected as expected)")
