-- Asynchronous certificate checks with sslctx.RETRY and a coroutine scheduler.
--
--   lua5.4 examples/doc_async_verify.lua        (from the repository, after `make`)
--
-- Three clients connect at once.  Their verify callback asks a slow "revocation service"
-- about the server's certificate.  Instead of blocking, the callback starts the lookup and
-- returns sslctx.RETRY: the handshake returns nil, "want_retry_verify", the client's
-- coroutine yields to the scheduler, and when the answer is in, handshake() runs
-- verification again and the callback answers from the result.  See doc/callbacks.md.

local here = (arg and arg[0] or ""):match("^(.*)/[^/]*$") or "."
local root = here .. "/.."
local luaname = jit and "luajit" or ("lua" .. _VERSION:match("%d+%.%d+"))
package.path = root .. "/lua/?.lua;" .. package.path
package.cpath = root .. "/build/" .. luaname .. "/?.so;" .. package.cpath

local sslctx = require "sslctx"

-- The test PKI (spec/certs/make-pki.sh is quick when it is already there).
local pki = os.getenv("SSLCTX_PKI_DIR") or (root .. "/build/pki")
os.execute("sh " .. root .. "/spec/certs/make-pki.sh " .. pki)
local function file(name) return pki .. "/" .. name end
assert(io.open(file("ca.pem")), "no test PKI in " .. pki)

----------------------------------------------------------------------------
-- A pretend remote service: an answer arrives a few scheduler ticks after the question.
local service = { pending = {}, answers = {} }

function service.ask(fingerprint, revoked)
  if service.pending[fingerprint] == nil and service.answers[fingerprint] == nil then
    service.pending[fingerprint] = { ticks = 3, revoked = revoked }
  end
end

function service.tick()
  for fp, q in pairs(service.pending) do
    q.ticks = q.ticks - 1
    if q.ticks == 0 then
      service.answers[fp] = not q.revoked
      service.pending[fp] = nil
    end
  end
end

----------------------------------------------------------------------------
-- The verify callback: OpenSSL's chain check first, then the service, without blocking.
local REVOKED = {}   -- fingerprints our service will say are revoked

local calls = 0
local function verify(ok, store)
  calls = calls + 1
  if not ok or store:depth() > 0 then return nil end    -- keep OpenSSL's verdict
  local fp = store:cert():fingerprint()
  local answer = service.answers[fp]
  if answer == nil then
    service.ask(fp, REVOKED[fp])
    return sslctx.RETRY        -- handshake() returns "want_retry_verify"; ask me again later
  end
  return answer                -- true: accept; false: reject (error 50)
end

----------------------------------------------------------------------------
-- A scheduler: each task is a coroutine; a task yields when it has to wait.
local tasks = {}
local function spawn(name, fn) tasks[#tasks + 1] = { name = name, co = coroutine.create(fn) } end
local function run()
  while #tasks > 0 do
    service.tick()
    for i = #tasks, 1, -1 do
      local t = tasks[i]
      local ok, err = coroutine.resume(t.co)
      if not ok then error(t.name .. ": " .. tostring(err)) end
      if coroutine.status(t.co) == "dead" then table.remove(tasks, i) end
    end
  end
end

----------------------------------------------------------------------------
local server = assert(sslctx.new{ side = "server", certificate = file("server-chain.pem"),
                                  key = file("server.key") })
local client = assert(sslctx.new{ ca_file = file("ca.pem"), verify_callback = verify })

local results = {}
local function connect(name)
  local c = client:new_connection{ hostname = "localhost" }
  local s = server:new_connection()
  local retries = 0
  while true do
    local ok, msg, kind = c:handshake()
    s:feed(c:drain())
    s:handshake()
    c:feed(s:drain())
    if ok then break end
    if kind == "want_retry_verify" then
      retries = retries + 1
      coroutine.yield()        -- the lookup is under way: let the others run
    elseif kind ~= "want_read" and kind ~= "want_write" then
      results[name] = ("refused (%s: %s)"):format(kind, msg)
      return
    end
  end
  results[name] = ("accepted after %d retries, %s"):format(retries, c:version())
end

spawn("first", function() connect("first") end)
spawn("second", function() connect("second") end)
spawn("third", function() connect("third") end)
run()
for _, name in ipairs({ "first", "second", "third" }) do print(name, results[name]) end

-- Now the service says the certificate is revoked.
local leaf = sslctx.x509(io.open(file("server.pem")):read("*a"))
service.answers = {}
REVOKED[leaf:fingerprint()] = true
spawn("fourth", function() connect("fourth") end)
run()
print("fourth", results.fourth)
print("callback calls", calls)

assert(results.first:find("^accepted") and results.fourth:find("^refused %(verify"))
