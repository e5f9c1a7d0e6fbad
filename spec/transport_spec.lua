-- Regressions for the socket and fd transports (doc/reference.md "Connections").
local helper = require "helper"
local ok_socket, socket = pcall(require, "socket")

local function tcp_pair()
  local srv = assert(socket.bind("127.0.0.1", 0))
  local _, port = srv:getsockname()
  local c = socket.tcp()
  c:settimeout(5)
  assert(c:connect("127.0.0.1", port))
  local s = assert(srv:accept())
  srv:close()
  return c, s
end

local function handshake_over(c, s)
  local cc = helper.client_ctx():new_connection{ socket = c, hostname = "localhost" }
  local sc = helper.server_ctx():new_connection{ socket = s }
  local a, b
  for _ = 1, 100 do
    a = a or cc:handshake()
    b = b or sc:handshake()
    if a and b then break end
    socket.select({ c, s }, nil, 0.05)
  end
  assert.is_true(a)
  assert.is_true(b)
  return cc, sc
end

describe("socket transport", function()
  if not ok_socket then
    pending("LuaSocket is not installed")
    return
  end

  it("sends nothing on a descriptor whose LuaSocket was closed under the connection", function()
    local c, s = tcp_pair()
    local cc, sc = handshake_over(c, s)
    c:close()                         -- the descriptor number is free for reuse now
    local x, y = tcp_pair()           -- an unrelated connection, likely on that number
    cc:close()                        -- must not send close_notify into x
    y:settimeout(0.3)
    local data, err, partial = y:receive(1)
    assert.is_nil(data)
    assert.equal("timeout", err)
    assert.equal("", partial)
    x:close(); y:close(); sc:close()
  end)

  it("refuses to drive a connection whose LuaSocket was closed under it", function()
    local c, s = tcp_pair()
    local cc, sc = handshake_over(c, s)
    c:close()
    local x, y = tcp_pair()
    assert.has_error(function() cc:write("secret") end,
      "write: the LuaSocket object was closed under the connection")
    -- and it stays finished: later calls neither raise again nor reach the descriptor
    for _, call in ipairs({ function() return cc:write("secret") end,
                            function() return cc:read() end }) do
      local v, msg, kind = call()
      assert.is_nil(v)
      assert.equal("syscall", kind)
      assert.equal("syscall: the connection has already failed", msg)
    end
    y:settimeout(0.3)
    assert.is_nil((y:receive(1)))
    x:close(); y:close(); sc:close(); cc:close()
  end)
end)
