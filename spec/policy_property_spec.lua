-- policy_property_spec.lua: random pairs of verification policies, on both sides.
--
-- A session is made under a first policy and offered under a second (doc/reference.md,
-- "The verification policy").  Whenever the two policies differ, the second connection
-- must not resume and must reach the verdict a fresh connection under the second policy
-- reaches; whenever they are equal (however each was set: on the context or on the
-- connection), it must resume.  Servers are also tried behind a servername switch, and
-- with clients that offer whatever they hold (a client whose policy is named, as a
-- non-sslctx client behaves).
--
-- The seed is printed; SSLCTX_PROPERTY_SEED=<seed> replays a run (same interpreter family:
-- the generator below is the same on every Lua).
local sslctx = require "sslctx"
local helper = require "helper"
local support = require "support.callbacks"

local pki = helper.pki

local SEED = tonumber(os.getenv("SSLCTX_PROPERTY_SEED") or "") or (os.time() % 2147483646 + 1)
local ROUNDS = tonumber(os.getenv("SSLCTX_PROPERTY_ROUNDS") or "") or 100
print(("policy_property_spec: seed %d (SSLCTX_PROPERTY_SEED=%d replays it)"):format(SEED, SEED))

-- Park-Miller: exact in doubles, so every interpreter draws the same sequence.
local state = SEED
local function rand(n)
  state = (16807 * state) % 2147483647
  return state % n + 1
end
local function pick(list) return list[rand(#list)] end

-- Callbacks shared by every policy that names them: the same function is the same identity.
local ACCEPT = function() return true end
local KEEP = function() return nil end
local CALLBACKS = {
  none = nil,
  accept = ACCEPT,
  keep = KEEP,
  c_preverify = sslctx.c_callbacks.preverify,
  c_accept = sslctx.c_callbacks.insecure_accept_all,
}
local CALLBACK_NAMES = { "none", "accept", "keep", "c_preverify", "c_accept" }

local NOW = os.time()
local TRUSTS = {
  ca = { ca_file = pki("ca.pem") },
  other = { ca_file = pki("other-ca.pem") },
  both = { ca_file = pki("ca.pem"), ca = helper.read("other-ca.pem") },
}

local VERSIONS = {
  { min_version = "tls1.3", max_version = "tls1.3" },
  { min_version = "tls1.2", max_version = "tls1.2" },
  { min_version = "tls1.2", max_version = "tls1.2", session_tickets = false },
}

-- A policy: its knobs, each with the level it is set at ("ctx" or "conn").
local function draw(side)
  local p = {
    mode = pick(side == "client" and { "always", "never" } or { "never", "always", "require", "once" }),
    callback = pick(CALLBACK_NAMES),
    trust = pick { "ca", "other", "both" },
    depth = pick { false, 1, 5 },
    flags = pick { false, "x509_strict", "partial_chain" },
    purpose = pick { false, side == "client" and "sslserver" or "sslclient" },
    time = pick { false, NOW },
    security_level = pick { 1, 2 },
    soft_fail = pick { false, true },
    unchecked = side == "client" and pick { false, true } or false,
  }
  p.level = {}
  for _, k in ipairs { "mode", "trust", "depth", "flags", "time" } do p.level[k] = pick { "ctx", "conn" } end
  return p
end

local KNOBS = { "mode", "callback", "trust", "depth", "flags", "purpose", "time", "security_level",
                "soft_fail", "unchecked" }

local function equal(a, b)
  for _, k in ipairs(KNOBS) do if a[k] ~= b[k] then return false end end
  return true
end

local function describe_policy(p)
  local t = {}
  for _, k in ipairs(KNOBS) do
    t[#t + 1] = k .. "=" .. tostring(p[k]) .. ((p.level[k] == "conn") and "@conn" or "")
  end
  return "{" .. table.concat(t, " ") .. "}"
end

-- A copy of p with every level drawn anew: the same policy, set another way.
local function same_other_way(p)
  local q = {}
  for k, v in pairs(p) do q[k] = v end
  q.level = {}
  for k in pairs(p.level) do q.level[k] = pick { "ctx", "conn" } end
  return q
end

local function params_of(p, level)
  local vp, any = {}, false
  if p.flags and p.level.flags == level then vp.flags = { p.flags }; any = true end
  if p.time and p.level.time == level then vp.time = p.time; any = true end
  if level == "ctx" and p.purpose then vp.purpose = p.purpose; any = true end
  return any and vp or nil
end

-- The context of a policy, with the context-level knobs; extra: certificate, key, version.
local function context_of(side, p, extra)
  local opts = helper.merge(extra, {
    side = side,
    security_level = p.security_level,
    verify_params = params_of(p, "ctx"),
  })
  if side == "server" then
    opts.certificate, opts.key = pki("server-chain.pem"), pki("server.key")
  end
  if p.level.mode == "ctx" then opts.verify = p.mode end
  if p.level.mode == "ctx" then opts.verify_callback = CALLBACKS[p.callback] end
  if p.level.trust == "ctx" then
    for k, v in pairs(TRUSTS[p.trust]) do opts[k] = v end
  else
    opts.ca_file = nil
    if side == "server" then opts.ca_file = pki("ca.pem") end   -- replaced per connection
  end
  if p.depth and p.level.depth == "ctx" then opts.verify_depth = p.depth end
  return helper.new_ctx(opts)
end

-- The connection-level knobs.
local function apply_conn(conn, side, p)
  if p.level.mode == "conn" then conn:set_verification_mode(side, p.mode, CALLBACKS[p.callback]) end
  if p.level.trust == "conn" then assert(conn:set_trust(TRUSTS[p.trust])) end
  if p.depth and p.level.depth == "conn" then conn:set_verify_depth(p.depth) end
  local vp = params_of(p, "conn")
  if vp then conn:set_verify_params(vp) end
  if p.soft_fail then conn:set_soft_fail(true) end
end

local function client_opts(p, hostname)
  return { hostname = hostname or "localhost", verify_hostname = not p.unchecked }
end

-- The result of one side's handshake, made comparable: "ok"/kind and the verify code.
local function outcome(conn, ok, kind)
  return (ok and "ok" or tostring(kind)) .. "/" .. tostring((conn:verify_result()))
end

-- The property: the session made under p1, offered under p2 through second(session) ->
-- judging connection, outcome.  Equal policies resume; unequal ones never do, and reach the
-- verdict a fresh connection under p2 reaches.
local function judge(p1, p2, sess, second, where)
  local conn, got = second(sess)
  if equal(p1, p2) then
    assert.is_true(conn:session_reused(), "equal policies did not resume: " .. where)
    return { compared = 0, resumed = 1 }
  end
  assert.is_false(conn:session_reused(), "a session crossed policies: " .. where)
  local _, fresh = second(nil)
  assert.equal(fresh, got, "verdict differs from a fresh connection's: " .. where)
  return { compared = 1, resumed = 0 }
end

describe("policy property (seed " .. SEED .. ")", function()
  local good_server, other_server

  setup(function()
    good_server, other_server = {}, {}
    for i, v in ipairs(VERSIONS) do
      good_server[i] = helper.server_ctx(v)
      other_server[i] = helper.server_ctx(helper.merge(v, {
        certificate = pki("untrusted-chain.pem"), key = pki("untrusted.key") }))
    end
  end)

  it("client: a session crosses no policy boundary, and equal policies resume", function()
    local compared, resumed = 0, 0
    for round = 1, ROUNDS do
      local vi = rand(#VERSIONS)
      local p1 = draw("client")
      local p2 = rand(3) == 1 and same_other_way(p1) or draw("client")
      local where = ("seed %d round %d %s\n  first  %s\n  second %s"):format(
        SEED, round, VERSIONS[vi].max_version .. (VERSIONS[vi].session_tickets == false and " ids" or ""),
        describe_policy(p1), describe_policy(p2))
      -- the first policy's session, from whichever server it accepts
      local sess, server
      for _, srv in ipairs { good_server[vi], other_server[vi] } do
        local c = context_of("client", p1, VERSIONS[vi]):new_connection(client_opts(p1))
        apply_conn(c, "client", p1)
        local ok = helper.pump(c, srv:new_connection())
        if ok then
          sess, server = support.session_of(c), srv
          break
        end
      end
      if sess then
        local function second(with_session)
          local o = client_opts(p2)
          o.session = with_session
          local c = context_of("client", p2, VERSIONS[vi]):new_connection(o)
          apply_conn(c, "client", p2)
          local ok, _, kind = helper.pump(c, server:new_connection())
          return c, outcome(c, ok, kind)
        end
        local tally = judge(p1, p2, sess, second, where)
        compared, resumed = compared + tally.compared, resumed + tally.resumed
      end
    end
    if os.getenv("SSLCTX_PROPERTY_VERBOSE") then print("client", compared, resumed) end
    assert.is_true(compared > 0 and resumed > 0,
                   ("seed %d: too few cases (compared %d, resumed %d)"):format(SEED, compared, resumed))
  end)

  for _, switched in ipairs { false, true } do
    it("server" .. (switched and " behind a servername switch" or "") ..
       ": a session crosses no policy boundary, and equal policies resume", function()
      local compared, resumed = 0, 0
      local clients = {}
      for i, v in ipairs(VERSIONS) do
        local base = helper.merge(v, { verify = "never" })
        clients[i] = {
          helper.client_ctx(helper.merge(base, { certificate = pki("client-chain.pem"), key = pki("client.key") })),
          helper.client_ctx(helper.merge(base, { certificate = pki("client-untrusted-chain.pem"),
                                                 key = pki("client-untrusted.key") })),
          helper.client_ctx(base),   -- no certificate
        }
      end
      local target
      for round = 1, ROUNDS do
        local vi = rand(#VERSIONS)
        local p1 = draw("server")
        local p2 = rand(3) == 1 and same_other_way(p1) or draw("server")
        if switched then   -- the switched-to context carries the whole policy but soft fail
          for _, p in ipairs { p1, p2 } do
            for k in pairs(p.level) do p.level[k] = "ctx" end
          end
        end
        local where = ("seed %d round %d %s%s\n  first  %s\n  second %s"):format(
          SEED, round, VERSIONS[vi].max_version, VERSIONS[vi].session_tickets == false and " ids" or "",
          describe_policy(p1), describe_policy(p2))
        -- Tickets and the session cache belong to the context a connection is made from: an
        -- equal policy on a direct connection resumes on the same context, with what the
        -- first set per connection set per connection again.  Behind a switch the front
        -- context owns them, so the switched-to contexts may be two equal ones.
        local sctx1 = context_of("server", p1, VERSIONS[vi])
        local sctx2
        if equal(p1, p2) and not switched then
          for k in pairs(p1.level) do
            if p1.level[k] == "conn" then p2.level[k] = "conn" end
          end
          sctx2 = sctx1
        else
          sctx2 = context_of("server", p2, VERSIONS[vi])
        end
        local front = helper.server_ctx(VERSIONS[vi])
        front:set_servername_callback(function() return target end)
        local function server_conn(sctx, p)
          local s
          if switched then
            target = sctx
            s = front:new_connection()
          else
            s = sctx:new_connection()
          end
          apply_conn(s, "server", p)
          return s
        end
        -- a client whose certificate the first policy accepts
        local sess, client
        for _, cc in ipairs(clients[vi]) do
          local c = cc:new_connection { hostname = "localhost" }
          c:set_policy("offers what it holds")
          local s = server_conn(sctx1, p1)
          local cok, _, _, sok = helper.pump(c, s)
          if cok and sok then
            local probe = c:write("x")
            helper.transfer(c, s)
            local got = probe and s:read()
            helper.transfer(s, c)
            if got == "x" then
              sess, client = support.session_of(c), cc
              if sess then break end
            end
          end
        end
        if sess then
          -- unequal policies: also under another name, as a client that sends what it holds
          local hostname = equal(p1, p2) and "localhost" or pick { "localhost", "b.test" }
          local function second(with_session)
            local c = client:new_connection { hostname = hostname, session = with_session }
            c:set_policy("offers what it holds")
            local s = server_conn(sctx2, p2)
            local _, _, _, sok, _, skind = helper.pump(c, s)
            return s, outcome(s, sok, skind)
          end
          local tally = judge(p1, p2, sess, second, where)
          compared, resumed = compared + tally.compared, resumed + tally.resumed
        end
      end
      if os.getenv("SSLCTX_PROPERTY_VERBOSE") then print("server", switched, compared, resumed) end
      assert.is_true(compared > 0 and resumed > 0,
                     ("seed %d: too few cases (compared %d, resumed %d)"):format(SEED, compared, resumed))
    end)
  end
end)
