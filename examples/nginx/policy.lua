-- examples/nginx/policy.lua: the Lua side of examples/nginx/nginx.conf.
--
-- Where each function runs, and what it may do there:
--   client_hello()    ssl_client_hello_by_lua: names the connection's policy (before
--                     OpenSSL looks up a session to resume)
--   require_client(), soft_client()
--                     ssl_certificate_by_lua: installs the mode and the callback
--   verify(ok, store) OpenSSL's verify callback for downstream connections: it runs later,
--                     from nginx's event loop, on a thread of sslctx's own with NO request:
--                     ngx.var, ngx.ctx, ngx.sleep and cosockets raise "no request found";
--                     ngx.log works.  It cannot yield and blocks the worker while it runs:
--                     keep it fast, no I/O.  An error fails the handshake and is logged.
--   check_access(), whoami()
--                     request phases: sngx.verdict() is the connection's verdict, and the
--                     policy that judged it (mtls.example's block guards itself with
--                     sngx.require_policy in nginx.conf)
--   fetch()           content phase: a TLS client over a cosocket; its verify callback runs
--                     on this request's coroutine (ngx.var and ngx.ctx work; no yielding)
local sslctx = require "sslctx"
local sngx = require "sslctx.ngx"

local P = {}

local CERTS = ngx.config.prefix() .. "conf/certs/"

-- SNI name -> policy name.  Sessions resume only under the same policy name.
local POLICY = {
  ["mtls.example"] = "mtls:v1",
  ["soft.example"] = "soft:v1",
}

function P.client_hello()
  local name = require("ngx.ssl.clienthello").get_client_hello_server_name()
  local ok, err = sngx.set_policy(POLICY[name] or "public:v1")
  if not ok then
    ngx.log(ngx.ERR, "set_policy: ", err)
    return ngx.exit(ngx.ERROR)
  end
end

-- Who may come in through mtls.example (subjects as x509:subject() gives them, RFC 2253;
-- fingerprints, x509:fingerprint(), are as good).
local ALLOWED = {
  ["CN=Test Client,O=sslctx"] = true,
}

-- One function for every connection (no per-handshake closures).
function P.verify(ok, store)
  if not ok then
    ngx.log(ngx.INFO, "client certificate refused at depth ", store:depth(), ": ",
            store:error_string())
    return false
  end
  if store:depth() == 0 then
    local subject = store:cert():subject()
    if not ALLOWED[subject] then
      ngx.log(ngx.WARN, "client certificate not on the allow list: ", subject)
      return false
    end
  end
  return true
end

function P.require_client()
  local ok, err = sngx.set_verification_mode("require", P.verify)
  if not ok then
    ngx.log(ngx.ERR, "set_verification_mode: ", err)
    return ngx.exit(ngx.ERROR)
  end
end

-- Soft fail: the handshake finishes whatever the certificate (or none); the verdict is
-- read in the access phase.  Its own trust file: the CA names go out in the request.
function P.soft_client()
  local ok, err = sngx.set_verification_mode("always", P.verify, {
    soft_fail = true,
    ca_file = CERTS .. "ca-bundle.pem",
  })
  if not ok then
    ngx.log(ngx.ERR, "set_verification_mode: ", err)
    return ngx.exit(ngx.ERROR)
  end
end

-- soft.example's access phase: the connection must have been judged by soft.example's
-- policy (a client may send SNI for public.example and Host soft.example: 421), then the
-- verdict decides.  (sngx.require_policy("soft:v1") does both in one call.)
function P.check_access()
  local code, reason, verified, _, policy = sngx.verdict()
  if policy ~= POLICY["soft.example"] then
    return ngx.exit(421)   -- Misdirected Request
  end
  if not verified then
    ngx.status = ngx.HTTP_FORBIDDEN
    ngx.say("client certificate: ", code == 0 and "none" or reason)
    return ngx.exit(ngx.HTTP_FORBIDDEN)
  end
end

function P.whoami()
  local code, reason, verified, pem = sngx.verdict()
  ngx.say("host: ", ngx.var.ssl_server_name or "-")
  ngx.say("client certificate: ", pem and sslctx.x509(pem):subject() or "none")
  ngx.say("verdict: ", code, " (", reason, "), verified: ", tostring(verified))
  ngx.say("resumed: ", ngx.var.ssl_session_reused == "r" and "yes" or "no")
end

-- ---- client over a cosocket --------------------------------------------------------

local client_ctx   -- one context per worker, made on first use

-- A per-connection check on the request coroutine: the upstream's leaf must come from
-- the intermediate CA this site expects (a pin on the issuer), and the request may see
-- what was checked.
local function upstream_check(ok, store)
  if store:depth() == 0 then
    ngx.ctx.upstream_subject = store:cert():subject()
    if ok and store:cert():issuer() ~= "CN=sslctx Test Intermediate CA,O=sslctx" then
      return false
    end
  end
  return nil   -- otherwise OpenSSL's verdict stands
end

function P.fetch()
  if client_ctx == nil then
    client_ctx = sslctx.new{ ca_file = CERTS .. "ca.pem", alpn = { "http/1.1" },
                             verify = "always", verify_callback = upstream_check }
  end
  local host, port = ngx.var.upstream_host, tonumber(ngx.var.upstream_port)
  local sock = ngx.socket.tcp()
  sock:settimeouts(2000, 2000, 5000)
  local ok, err = sock:connect("127.0.0.1", port)
  if not ok then
    ngx.status = ngx.HTTP_BAD_GATEWAY
    return ngx.say("connect: ", err)
  end
  local stream, kind
  stream, err, kind = sngx.connect(sock, client_ctx, { hostname = host })
  if not stream then
    ngx.status = ngx.HTTP_BAD_GATEWAY
    return ngx.say("TLS to ", host, " failed (", kind, "): ", err)
  end
  local conn = stream:connection()
  stream:send("GET / HTTP/1.0\r\nHost: " .. host .. "\r\n\r\n")   -- 1.0: no chunks
  local status = stream:receive("*l")
  repeat local line = stream:receive("*l") until line == nil or line == ""
  local body = stream:receive("*a")
  -- (ask the connection before close(): close() frees it)
  ngx.say("upstream: ", ngx.ctx.upstream_subject, " via ", conn:version(), ", ALPN ",
          tostring(conn:alpn()), ", verify: ", (select(2, conn:verify_result())))
  stream:close()
  ngx.say("status: ", status)
  ngx.print(body or "")
end

return P
