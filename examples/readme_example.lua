-- Mutual TLS between a client and a server in one process, over memory buffers.
local sslctx = require "sslctx"
os.execute("sh spec/certs/make-pki.sh build/pki")     -- a throwaway test PKI
local pki = "build/pki/"

local server = assert(sslctx.new{ side = "server", verify = "require",   -- mTLS
  certificate = pki .. "server-chain.pem", key = pki .. "server.key", ca_file = pki .. "ca.pem" })
local client = assert(sslctx.new{ ca_file = pki .. "ca.pem",   -- verifies: "always" by default
  certificate = pki .. "client-chain.pem", key = pki .. "client.key" })

local c = client:new_connection{ hostname = "localhost" }   -- SNI and name check
local s = server:new_connection()
for _ = 1, 10 do                                            -- carry the bytes across
  local cdone = c:handshake(); s:feed(c:drain())
  local sdone = s:handshake(); c:feed(s:drain())
  if cdone and sdone then break end
end

c:write("hello over TLS"); s:feed(c:drain())
print(s:read(), s:peer_certificate():subject())   --> hello over TLS  CN=Test Client,O=sslctx
print(c:version(), c:verify_result())             --> TLSv1.3  0  ok  true
