-- spec/nginx/specsrv.lua: the Lua side of the nginx used by spec/nginx_spec.lua.
--
-- Every handler answers in "key=value" lines so that the spec can check single facts.
-- Certificates are in <prefix>conf/certs (copied there by spec/support/nginx.lua).
local sslctx = require "sslctx"
local sngx = require "sslctx.ngx"

local S = {}

local CERTS = ngx.config.prefix() .. "conf/certs/"

local function read(name)
  local f = assert(io.open(CERTS .. name, "rb"))
  local s = f:read("*a")
  f:close()
  return s
end

local function fingerprint(name)
  return sslctx.x509(read(name)):fingerprint()
end

local function say(k, v)
  ngx.say(k, "=", tostring(v))
end

-- ---------------------------------------------------------------------------
-- Client over a cosocket: GET /client?port=&host=&v=&alpn=&cb=&fp=&session=

-- A Lua callback that only records (returns nil: OpenSSL's verdict stands).
local function recorder(rec)
  return function(ok, store)
    rec[#rec + 1] = store:depth() .. ":" .. tostring(ok) .. ":" .. store:error()
    if not ok then rec.code = store:error() end
  end
end

local function make_callback(args, rec)
  local cb = args.cb
  if cb == nil or cb == "" or cb == "none" then return nil end
  if cb == "record" then return recorder(rec) end
  if cb == "pin" then   -- reject by fingerprint: the leaf must have the pinned one
    return function(ok, store)
      rec[#rec + 1] = store:depth() .. ":" .. tostring(ok)
      if store:depth() == 0 then
        local fp = store:cert():fingerprint()
        rec.leaf = fp
        return ok and fp == args.fp
      end
    end
  end
  if cb == "var" then   -- runs on the request coroutine: ngx.var and ngx.ctx work
    return function(ok, store)
      rec[#rec + 1] = store:depth() .. ":" .. tostring(ok)
      rec.var = ngx.var.arg_token
      ngx.ctx.seen = (ngx.ctx.seen or 0) + 1
      rec.phase = ngx.get_phase()
    end
  end
  if cb == "retry" then   -- asynchronous decision: RETRY until a timer has answered
    local state = {}
    return function(ok, store)
      if store:depth() ~= 0 then return nil end
      if state.answer == nil then
        if not state.started then
          state.started = true
          assert(ngx.timer.at(0.02, function() state.answer = (args.answer ~= "no") end))
        end
        rec.retries = (rec.retries or 0) + 1
        return sslctx.RETRY
      end
      return ok and state.answer
    end
  end
  if cb == "yield" then
    return function() ngx.sleep(0.001) return true end
  end
  if cb == "error" then
    return function() error("client-callback-boom") end
  end
  if cb == "creject" then return sslctx.c_callbacks.reject_all end
  if cb == "caccept" then return sslctx.c_callbacks.insecure_accept_all end
  if cb == "ffi_reject" or cb == "ffi_preverify" then
    -- LuaJIT: a cdata function pointer, here one of the module's own C callbacks reached
    -- through ffi.load (a C function from ffi.C-style namespaces, cast to a pointer).
    local ffi = require "ffi"
    pcall(ffi.cdef, "int sslctx_cb_reject_all(int, void *); int sslctx_cb_preverify(int, void *);")
    local lib = ffi.load(package.searchpath("sslctx.core", package.cpath))
    local fn = cb == "ffi_reject" and lib.sslctx_cb_reject_all or lib.sslctx_cb_preverify
    return ffi.cast("int (*)(int, void *)", fn)
  end
  error("unknown cb " .. tostring(cb))
end

local function new_ctx(args, rec)
  local opts = { ca_file = CERTS .. "ca.pem", verify = args.mode or "always" }
  if args.v and args.v ~= "" then opts.min_version, opts.max_version = args.v, args.v end
  if args.alpn and args.alpn ~= "" then
    local list = {}
    for p in args.alpn:gmatch("[^,]+") do list[#list + 1] = p end
    opts.alpn = list
  end
  local ctx = sslctx.new(opts)
  local cb = make_callback(args, rec)
  if cb ~= nil then ctx:set_verification_mode("client", opts.verify, cb) end
  return ctx
end

local function http_get(stream, host)
  local n, err = stream:send({ "GET / HTTP/1.1\r\nHost: ", host, "\r\nConnection: close\r\n\r\n" })
  if not n then return nil, "send: " .. tostring(err) end
  local status, rerr = stream:receive("*l")
  if not status then return nil, "status: " .. tostring(rerr) end
  for _ = 1, 100 do
    local line, herr = stream:receive()
    if not line then return nil, "header: " .. tostring(herr) end
    if line == "" then break end
  end
  local body, berr, partial = stream:receive("*a")
  if not body then return nil, "body: " .. tostring(berr) .. " partial=" .. tostring(partial) end
  return status, body
end

local function connect_once(args, ctx, session)
  local sock = ngx.socket.tcp()
  local t = tonumber(args.t) or 3000
  sock:settimeouts(t, t, t)
  local ok, err = sock:connect("127.0.0.1", tonumber(args.port))
  if not ok then return nil, "connect: " .. tostring(err), "syscall" end
  local opts = { session = session }
  if args.host ~= "default" then opts.hostname = args.host or "localhost" end
  if args.hs then opts.handshake_timeout = tonumber(args.hs) end
  return sngx.connect(sock, ctx, opts)
end

function S.client()
  local args = ngx.req.get_uri_args()
  local rec = {}
  local ctx = new_ctx(args, rec)
  ngx.update_time()
  local started = ngx.now()
  local stream, err, kind = connect_once(args, ctx, nil)
  ngx.update_time()
  say("elapsed_ms", math.floor((ngx.now() - started) * 1000))
  say("callbacks", table.concat(rec, ","))
  if rec.code then say("cb_code", rec.code) end
  if rec.leaf then say("leaf", rec.leaf) end
  if rec.var then say("var", rec.var) end
  if rec.retries then say("retries", rec.retries) end
  if rec.phase then say("cb_phase", rec.phase) end
  if ngx.ctx.seen then say("ctx_seen", ngx.ctx.seen) end
  if not stream then
    say("ok", false)
    say("kind", kind)
    say("err", err)
    return
  end
  local conn = stream:connection()
  say("ok", true)
  say("version", conn:version())
  say("alpn", conn:alpn())
  local code, str, verified = conn:verify_result()
  say("verify", code .. " " .. str .. " " .. tostring(verified))
  local peer = conn:peer_certificate()
  say("peer", peer and peer:subject())
  local status, body = http_get(stream, args.host or "localhost")
  say("status", status)
  say("body", body and body:gsub("\n", "") or body)
  local session = conn:session()
  say("session", session ~= nil)
  stream:close()
  if args.session == "1" and session then
    local s2, err2, kind2 = connect_once(args, ctx, session)
    if not s2 then
      say("second", "failed " .. tostring(kind2) .. " " .. tostring(err2))
    else
      say("reused", s2:connection():session_reused())
      local st2, body2 = http_get(s2, args.host or "localhost")
      say("second_status", st2)
      say("second_body", body2 and body2:gsub("\n", "") or body2)
      s2:close()
    end
    -- A session is offered only where its hostname matches: another name makes a full
    -- handshake (the server cert has SANs localhost and 127.0.0.1).
    local a2 = {}
    for k, v in pairs(args) do a2[k] = v end
    a2.host = (args.host == "127.0.0.1") and "localhost" or "127.0.0.1"
    local s3 = connect_once(a2, ctx, session)
    if s3 then
      say("other_host_reused", s3:connection():session_reused())
      s3:close()
    end
  end
end

-- Stream shapes: receive(n), receiveany, receive after close, send after close.
function S.shapes()
  local args = ngx.req.get_uri_args()
  local ctx = new_ctx(args, {})
  local stream, err, kind = connect_once(args, ctx, nil)
  if not stream then
    say("ok", false) say("kind", kind) say("err", err)
    return
  end
  stream:settimeouts(2000, 2000, 2000)
  stream:send("GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
  local first = stream:receive(4)
  say("first4", first)
  local any = stream:receiveany(3)
  say("any3", any)
  local rest = stream:receive("*a")
  say("rest_has_body", rest and rest:find("upstream good", 1, true) ~= nil)
  local again, aerr = stream:receive("*l")
  say("after_close_notify", tostring(again) .. " " .. tostring(aerr))
  say("close", stream:close())
  local d, derr = stream:receive(1)
  say("after_close", tostring(d) .. " " .. tostring(derr))
  local n, serr = stream:send("x")
  say("send_after_close", tostring(n) .. " " .. tostring(serr))
end

-- What receive(pattern) gives, three times, from an upstream that the spec plays itself.
function S.read()
  local args = ngx.req.get_uri_args()
  local ctx = new_ctx(args, {})
  local stream, err, kind = connect_once(args, ctx, nil)
  if not stream then
    say("ok", false) say("kind", kind) say("err", err)
    return
  end
  local pattern = ({ a = "*a", l = "*l" })[args.pattern] or tonumber(args.pattern)
  local function show(v) return v == nil and "nil" or (tostring(v):gsub("\n", "\\n")) end
  for i = 1, 3 do
    local data, e, partial, k = stream:receive(pattern)
    say("r" .. i, show(data) .. "|" .. show(e) .. "|" .. show(partial) .. "|" .. show(k))
    if not data then break end
  end
  stream:close()
end

-- A stream kept past its request: step=1 connects and keeps it in this module (and reads
-- the response, so that nothing is pending); step=2, a later request, uses it.  nginx closed
-- its cosocket when the first request ended: never "closed", which means close_notify.
function S.keep()
  local args = ngx.req.get_uri_args()
  if args.step == "1" then
    local stream, err, kind = connect_once(args, new_ctx(args, {}), nil)
    if not stream then say("ok", false) say("kind", kind) say("err", err) return end
    stream:send("GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
    say("status", stream:receive("*l"))
    local length = 0
    for _ = 1, 100 do   -- the headers, then exactly the body: nothing stays buffered
      local line = stream:receive("*l")
      if not line or line == "" then break end
      length = tonumber(line:match("^[Cc]ontent%-[Ll]ength:%s*(%d+)")) or length
    end
    if length > 0 then stream:receive(length) end
    S.kept = stream
    say("ok", true)
    return
  end
  local stream = S.kept
  S.kept = nil
  if not stream then say("ok", false) say("err", "nothing kept") return end
  local n, serr, skind = stream:send("GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
  say("send", tostring(n) .. "|" .. tostring(serr) .. "|" .. tostring(skind))
  local d, rerr, _, rkind = stream:receive("*l")
  say("receive", tostring(d) .. "|" .. tostring(rerr) .. "|" .. tostring(rkind))
  local any, aerr, akind = stream:receiveany(10)
  say("receiveany", tostring(any) .. "|" .. tostring(aerr) .. "|" .. tostring(akind))
  stream:close()
end

-- Argument errors name the caller's argument (connect's own, not new_connection's).
function S.argerr()
  local function try(label, fn)
    local ok, err = pcall(fn)
    say(label, ok and "no error" or tostring(err))
  end
  local ctx = new_ctx({}, {})
  local function sock()
    local s = ngx.socket.tcp()
    s:settimeouts(1000, 1000, 1000)
    assert(s:connect("127.0.0.1", tonumber(ngx.var.server_port)))
    return s
  end
  try("hostname_empty", function() return sngx.connect(sock(), ctx, { hostname = "" }) end)
  try("hostname_number", function() return sngx.connect(sock(), ctx, { hostname = 5 }) end)
  try("unknown_option", function() return sngx.connect(sock(), ctx, { bogus = true }) end)
  try("handshake_timeout", function()
    return sngx.connect(sock(), ctx, { hostname = "localhost", handshake_timeout = -1 })
  end)
  try("require_policy_nil", function() return sngx.require_policy(nil) end)
  try("session_dict_missing", function()
    return sngx.connect(sock(), ctx, { hostname = "localhost", session_dict = "nope" })
  end)
  try("session_dict_type", function()
    return sngx.connect(sock(), ctx, { hostname = "localhost", session_dict = 1 })
  end)
  try("mode_bad", function() return sngx.set_verification_mode("sometimes") end)
end

-- One OpenSSL in the worker: the module shares nginx's libssl/libcrypto.
function S.maps()
  local version = sslctx.openssl_version()
  local f = assert(io.open("/proc/self/maps", "r"))
  local seen, list = {}, {}
  for line in f:lines() do
    local path = line:match("%s(/%S+)$")
    if path and (path:find("libssl", 1, true) or path:find("libcrypto", 1, true) or
                 path:find("sslctx/core.so", 1, true)) and not seen[path] then
      seen[path] = true
      list[#list + 1] = path
    end
  end
  f:close()
  table.sort(list)
  say("openssl", version)
  say("paths", table.concat(list, ","))
end

-- The hook functions refuse to run outside their phases.
function S.phase()
  local ok1, err1 = sngx.set_policy("x")
  local ok2, err2 = sngx.set_verification_mode("require")
  local c, err3 = sngx.verdict()   -- a request phase, but no TLS here
  say("set_policy", tostring(ok1) .. " " .. tostring(err1))
  say("set_verification_mode", tostring(ok2) .. " " .. tostring(err2))
  say("verdict", tostring(c) .. " " .. tostring(err3))
end

-- ---------------------------------------------------------------------------
-- Server hook: per-SNI policy on the downstream listener

local POLICY = {
  ["a.test"] = "mtls-a",
  ["c.test"] = "soft-c",
  ["d.test"] = "error-d",
  ["e.test"] = "creject-e",
  ["f.test"] = "otherca-f",
  ["g.test"] = "soft-g",
}

function S.client_hello()
  local ch = require "ngx.ssl.clienthello"
  local name = ch.get_client_hello_server_name()
  assert(sngx.set_policy(POLICY[name] or "open"))
end

local allowed   -- fingerprints the a.test callback lets in

local function probe(what, fn)
  local ok, err = pcall(fn)
  return what .. "=" .. (ok and "ok" or ("ERR(" .. tostring(err):gsub("^.*: ", "") .. ")"))
end

-- a.test: a client certificate is required; the callback accepts only allowed fingerprints.
function S.check_a(ok, store)
  if store:depth() ~= 0 then return nil end
  local fp = store:cert():fingerprint()
  local conn = store:connection()
  ngx.log(ngx.NOTICE, "sslctx-spec check_a ok=", tostring(ok), " fp=", fp, " ",
          probe("var", function() return ngx.var.host end), " ",
          probe("ctx", function() return ngx.ctx.x end), " ",
          probe("sleep", function() ngx.sleep(0) end), " ",
          "borrowed=", tostring(conn:is_borrowed()), " ",
          probe("handshake", function() conn:handshake() end))
  return ok and allowed[fp] == true
end

function S.cert_a()
  if allowed == nil then allowed = { [fingerprint("client.pem")] = true } end
  assert(sngx.set_verification_mode("require", S.check_a))
end

-- c.test: soft fail; the callback rejects client2 by fingerprint (recorded, not fatal).
function S.check_c(_, store)
  if store:depth() == 0 and store:cert():fingerprint() == S.client2_fp then return false end
  return nil
end

function S.cert_c()
  if S.client2_fp == nil then S.client2_fp = fingerprint("client2.pem") end
  assert(sngx.set_verification_mode("require", S.check_c, { soft_fail = true }))
end

-- d.test: the callback raises: the handshake fails, the worker goes on.
function S.check_d()
  error("server-callback-boom")
end

function S.cert_d()
  assert(sngx.set_verification_mode("require", S.check_d))
end

-- e.test: a C callback (light userdata) that rejects everything, with its own trust (PEM).
function S.cert_e()
  assert(sngx.set_verification_mode("require", sslctx.c_callbacks.reject_all,
                                    { ca = read("ca.pem") .. read("int.pem") }))
end

-- f.test: its own trust file: only clients of the other CA get in.
function S.cert_f()
  assert(sngx.set_verification_mode("require", nil, { ca_file = CERTS .. "other-ca.pem" }))
end

-- g.test: soft fail, OpenSSL's own verdict: any certificate of the CA is verified here.
function S.cert_g()
  assert(sngx.set_verification_mode("require", nil, { soft_fail = true }))
end

-- ---------------------------------------------------------------------------
-- Hook policies, one per server block of the HOOKN/HOOKU listeners (<label>.hook.test)

-- An accepting Lua callback: any certificate, even one OpenSSL refused.
function S.accept_all()
  return true
end

local HOOK = {
  strict = function()   -- required, the allow list of a.test (client.pem only)
    if allowed == nil then allowed = { [fingerprint("client.pem")] = true } end
    return sngx.set_verification_mode("require", S.check_a)
  end,
  otherca = function()  -- required, verified against the other CA
    return sngx.set_verification_mode("require", nil, { ca_file = CERTS .. "other-ca.pem" })
  end,
  cacc = function()     -- required, a C callback that accepts anything
    return sngx.set_verification_mode("require", sslctx.c_callbacks.insecure_accept_all)
  end,
  lacc = function()     -- required, a Lua callback that accepts anything
    return sngx.set_verification_mode("require", S.accept_all)
  end,
  soft = function()     -- soft fail: the handshake finishes whatever is sent
    return sngx.set_verification_mode("require", nil, { soft_fail = true })
  end,
  never = function()    -- no certificate asked
    return sngx.set_verification_mode("never")
  end,
}

function S.hook_hello()
  local name = require("ngx.ssl.clienthello").get_client_hello_server_name() or ""
  assert(sngx.set_policy("hook-" .. (name:match("^(%w+)%.hook%.test$") or "none")))
end

function S.hook_cert(label)
  ngx.log(ngx.NOTICE, "sslctx-spec hook-cert ", label)
  assert(HOOK[label]())
end

-- ---------------------------------------------------------------------------
-- Client sessions in a shared dict: GET /dict?policy=&port=&host=&v=

-- Contexts made once per worker, by policy: what sessions the workers may share.
local dict_ctx = {}
local DICT_POLICIES = {
  strict = function() return {} end,                       -- the CA, the name checked
  lax = function() return { verify = "never" } end,        -- anything goes, recorded
  laxcb = function() return { verify_callback = S.accept_all } end,   -- a Lua callback
  named = function() return { verify_callback = S.accept_all }, "spec-named:v1" end,
}

function S.dict()
  local args = ngx.req.get_uri_args()
  local key = args.policy .. "/" .. (args.v or "")
  local ctx = dict_ctx[key]
  if ctx == nil then
    local opts, name = DICT_POLICIES[args.policy]()
    opts.ca_file = CERTS .. "ca.pem"
    opts.verify = opts.verify or "always"
    if args.v and args.v ~= "" then opts.min_version, opts.max_version = args.v, args.v end
    ctx = sslctx.new(opts)
    if name then ctx:set_session_id_context(name) end
    dict_ctx[key] = ctx
  end
  say("pid", ngx.worker.pid())
  local sock = ngx.socket.tcp()
  sock:settimeouts(3000, 3000, 3000)
  local ok, err = sock:connect("127.0.0.1", tonumber(args.port))
  if not ok then say("ok", false) say("err", "connect: " .. tostring(err)) return end
  local stream, kind
  stream, err, kind = sngx.connect(sock, ctx, { hostname = args.host or "localhost",
                                                session_dict = "sslctx_sessions" })
  if not stream then say("ok", false) say("kind", kind) say("err", err) return end
  local conn = stream:connection()
  say("ok", true)
  say("reused", conn:session_reused())
  local code, str = conn:verify_result()
  say("verify", code .. " " .. str)
  local status, body = http_get(stream, args.host or "localhost")
  say("status", status)
  say("body", body and body:gsub("\n", "") or body)
  stream:close()
  local entries = 0
  for _, k in ipairs(ngx.shared.sslctx_sessions:get_keys(0)) do
    if k:find("|127.0.0.1|" .. args.port .. "|", 1, true) then entries = entries + 1 end
  end
  say("entries", entries)
  local latest = ngx.shared.sslctx_sessions:ttl("sslctx.ngx|127.0.0.1|" .. args.port .. "|" ..
                                                (args.host or "localhost") .. "|latest")
  say("ttl", latest and math.floor(latest) or "none")
end

function S.report()
  local code, str, verified, pem, policy, sni = sngx.verdict()
  say("host", ngx.var.host)
  say("policy", policy)
  say("sni_sent", sni)
  say("sni", ngx.var.ssl_server_name)
  say("code", code)
  say("string", str)
  say("verified", verified)
  say("subject", pem and sslctx.x509(pem):subject() or "-")
  say("reused", ngx.var.ssl_session_reused)
  say("client_verify", ngx.var.ssl_client_verify)
  say("pid", ngx.worker.pid())
end

return S
