-- The rock as luarocks installs it: scripts/rock.sh runs `luarocks make` into build/rocktree,
-- then this spec starts a fresh interpreter whose package.path and package.cpath point only
-- into that tree, loads sslctx from there and runs a mutual-TLS handshake.
--
-- Under `make test` the tree may not exist yet (it is `make rock`'s): the checks are then
-- pending, not failed.

local helper = require "helper"

local TREE = os.getenv("SSLCTX_ROCKTREE") or "build/rocktree"
local V = _VERSION:match("%d+%.%d+")
local INTERP = "lua" .. V
local SHARE = TREE .. "/share/lua/" .. V
local LIB = TREE .. "/lib/lua/" .. V
local BUILT = helper.file_exists(LIB .. "/sslctx/core.so")

-- Runs in the fresh interpreter: arg[1] = the PKI directory.
local CHILD = [[
local sslctx = require "sslctx"
local function searchpath(name, path)   -- package.searchpath is 5.2+
  for t in path:gmatch("[^;]+") do
    local f = t:gsub("%?", (name:gsub("%.", "/")))
    local h = io.open(f, "rb")
    if h then h:close() return f end
  end
end
print("core", searchpath("sslctx.core", package.cpath))
print("front", searchpath("sslctx", package.path))
local pki = arg[1] .. "/"
local sctx = assert(sslctx.new{ side = "server", verify = "require", ca_file = pki .. "ca.pem",
                                certificate = pki .. "server-chain.pem", key = pki .. "server.key" })
local cctx = assert(sslctx.new{ side = "client", ca_file = pki .. "ca.pem",
                                certificate = pki .. "client-chain.pem", key = pki .. "client.key" })
local c = cctx:new_connection{ hostname = "localhost" }
local s = sctx:new_connection()
local cok, sok
for _ = 1, 20 do
  if not cok then cok = c:handshake() end
  s:feed(c:drain())
  if not sok then sok = s:handshake() end
  c:feed(s:drain())
  if cok and sok then break end
end
print("handshake", tostring(cok), tostring(sok))
print("client verified", select(3, c:verify_result()))
print("server verified", select(3, s:verify_result()))
print("peer", c:peer_certificate():subject(), s:peer_certificate():subject())
print("version", sslctx._VERSION, sslctx.openssl_version())
]]

local function run_child()
  local pki = helper.ensure_pki()
  local name = os.tmpname()
  local f = assert(io.open(name, "w"))
  f:write(CHILD)
  f:close()
  local setup = ("package.path = %q; package.cpath = %q"):format(
    SHARE .. "/?.lua;" .. SHARE .. "/?/init.lua", LIB .. "/?.so")
  -- no LUA_PATH*/LUA_CPATH* from the environment: only the tree
  local cmd = "env -u LUA_PATH -u LUA_CPATH -u LUA_PATH_5_2 -u LUA_PATH_5_3 -u LUA_PATH_5_4 " ..
              "-u LUA_CPATH_5_2 -u LUA_CPATH_5_3 -u LUA_CPATH_5_4 " .. INTERP .. " -e " ..
              helper.sh_quote(setup) .. " " .. helper.sh_quote(name) .. " " .. helper.sh_quote(pki)
  local out = helper.run(cmd)
  os.remove(name)
  return out
end

describe("the rock installed by luarocks make (scripts/rock.sh)", function()
  local t = (BUILT and not jit) and it or pending

  t("loads from the tree alone and runs a mutual-TLS handshake", function()
    local out = run_child()
    assert.truthy(out:find("core\t" .. LIB .. "/sslctx/core.so", 1, true), out)
    assert.truthy(out:find("front\t" .. SHARE .. "/sslctx.lua", 1, true), out)
    assert.truthy(out:find("handshake\ttrue\ttrue", 1, true), out)
    assert.truthy(out:find("client verified\ttrue", 1, true), out)
    assert.truthy(out:find("server verified\ttrue", 1, true), out)
    assert.truthy(out:find("peer\tCN=localhost\tCN=Test Client,O=sslctx", 1, true), out)
  end)

  t("installs every Lua module of the project", function()
    local modules = { "sslctx" }
    for f in helper.run("ls lua/sslctx"):gmatch("([%w_]+)%.lua") do modules[#modules + 1] = "sslctx/" .. f end
    assert.is_true(#modules >= 6, "lua/sslctx/ lists no modules")
    for _, m in ipairs(modules) do
      assert.truthy(helper.file_exists(SHARE .. "/" .. m .. ".lua"), m .. " missing from the rock")
    end
  end)
end)
