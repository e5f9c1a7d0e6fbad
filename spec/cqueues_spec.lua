-- spec/cqueues_spec.lua: sslctx.cqueues, connections over the fd transport waiting with
-- cqueues.poll inside a cqueues controller, on 127.0.0.1 (lua/sslctx/cqueues.lua's header).

local helper = require "helper"
local ok_cq, cqueues = pcall(require, "cqueues")
local csocket = ok_cq and require "cqueues.socket"
local scq = ok_cq and require "sslctx.cqueues"

local describe_cq = ok_cq and describe or pending

-- Steps the controller until it is empty or `secs` passed; an error in a coroutine is raised.
local function run(cq, secs)
  local deadline = cqueues.monotime() + (secs or 10)
  while not cq:empty() and cqueues.monotime() < deadline do
    local ok, err = cq:step(0.05)
    if not ok then error(err, 0) end
  end
  return cq:empty()
end

local function listener()
  local srv = assert(csocket.listen("127.0.0.1", 0))
  assert(srv:listen())
  local _, _, port = srv:localname()
  return srv, port
end

local function dial(port)
  local sock = assert(csocket.connect("127.0.0.1", port))
  assert(sock:connect(5))
  return sock
end

local function client_ctx(cert, opts)
  local o = helper.merge(cert and {
    certificate = helper.pki(cert .. "-chain.pem"), key = helper.pki(cert .. ".key") } or {}, opts)
  return helper.client_ctx(o)
end

describe_cq("sslctx.cqueues", function()
  it("serves 50 mutual-TLS clients concurrently in one controller", function()
    local cq = cqueues.new()
    local sctx = helper.server_ctx({ verify = "require" })
    local cctx = client_ctx("client")
    local srv, port = listener()
    local N, served, answers = 50, 0, {}
    cq:wrap(function()
      for _ = 1, N do
        local sock = assert(srv:accept(5))
        cq:wrap(function()
          local s = scq.wrap(sock, sctx, { timeout = 5 })
          assert(s:handshake())
          local line = assert(s:read())
          assert(s:write("echo " .. line .. " from " .. s:connection():peer_certificate():subject()))
          s:shutdown()
          s:close()
          served = served + 1
        end)
      end
      srv:close()
    end)
    for i = 1, N do
      cq:wrap(function()
        local s = scq.wrap(dial(port), cctx, { hostname = "localhost", timeout = 5 })
        assert(s:handshake())
        assert(s:write("n" .. i))
        local parts = {}
        while true do
          local d, msg, kind = s:read()
          if not d then assert(kind == "closed", msg) break end
          parts[#parts + 1] = d
        end
        answers[i] = table.concat(parts)
        s:close()
      end)
    end
    assert.is_true(run(cq, 30))
    assert.equal(N, served)
    for i = 1, N do assert.truthy(answers[i]:find("^echo n" .. i .. " from CN=Test Client"), answers[i]) end
  end)

  it("a server the client does not trust: nil, 'certificate verify failed...', 'verify'", function()
    local cq = cqueues.new()
    local srv, port = listener()
    local got, sgot = {}, {}
    cq:wrap(function()
      local s = scq.wrap(assert(srv:accept(5)), helper.server_ctx(), { timeout = 5 })
      sgot = { s:handshake() }
      s:close()
      srv:close()
    end)
    cq:wrap(function()
      local s = scq.wrap(dial(port), client_ctx(nil, { ca_file = helper.pki("other-ca.pem") }),
                         { hostname = "localhost", timeout = 5 })
      got = { s:handshake() }
      s:close()
    end)
    assert.is_true(run(cq))
    assert.is_nil(got[1])
    assert.equal("verify", got[3])
    assert.truthy(got[2]:find("certificate verify failed", 1, true), got[2])
    assert.equal("ssl", sgot[3])
  end)

  it("a peer that stalls mid-handshake: nil, 'timeout: ...', 'timeout' after the deadline", function()
    local cq = cqueues.new()
    local srv, port = listener()
    local got, t0, t1
    local stalled
    cq:wrap(function()
      local s = scq.wrap(assert(srv:accept(5)), helper.server_ctx(), { timeout = 0.3 })
      t0 = cqueues.monotime()
      got = { s:handshake() }
      t1 = cqueues.monotime()
      s:close()
      srv:close()
    end)
    cq:wrap(function() stalled = dial(port) end)   -- connects and says nothing
    assert.is_true(run(cq))
    stalled:close()
    assert.equal("timeout", got[3])
    assert.truthy(got[2]:match("^timeout: handshake not done within 0.3 s"), got[2])
    assert.is_true(t1 - t0 >= 0.25 and t1 - t0 < 3, tostring(t1 - t0))
  end)

  it("raises on bad arguments, naming them; methods after close raise", function()
    local sctx = helper.server_ctx()
    assert.truthy(helper.raises(scq.wrap, "x", sctx):find("bad argument #1 to 'wrap'", 1, true))
    assert.truthy(helper.raises(scq.wrap, 0, {}):find("bad argument #2 to 'wrap'", 1, true))
    assert.truthy(helper.raises(scq.wrap, 0, sctx, { fd = 1 }):find("bad argument #3 to 'wrap'", 1, true))
    assert.truthy(helper.raises(scq.wrap, 0, sctx, { timeout = "x" }):find("timeout", 1, true))
    local a = assert(csocket.listen("127.0.0.1", 0))
    local s = scq.wrap(a, sctx)
    assert.truthy(helper.raises(s.write, s, 1):find("bad argument #1 to 'write'", 1, true))
    s:close()
    assert.truthy(helper.raises(s.read, s):find("closed stream", 1, true))
  end)
end)
