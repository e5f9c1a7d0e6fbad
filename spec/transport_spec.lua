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

describe("conn:write(s, i, j)", function()
  it("writes s:sub(i, j) as string.sub reads the positions", function()
    local c, s = helper.connected(helper.client_ctx(), helper.server_ctx())
    local text = "0123456789"
    for _, r in ipairs { { 1, 10 }, { 4 }, { 2, 5 }, { -3 }, { -4, -2 }, { 0, 3 }, { -100, 2 },
                         { 8, 100 }, { 5, 5 } } do
      local want = text:sub(r[1], r[2])
      assert.equal(#want, c:write(text, r[1], r[2]))
      s:feed(c:drain())
      assert.equal(want, s:read())
    end
    for _, r in ipairs { { 5, 4 }, { 11 }, { 3, -100 }, { 1, 0 } } do
      assert.equal(0, c:write(text, r[1], r[2]))
      assert.equal(0, c:pending())
    end
  end)

  it("goes on after a want_write with the same range, and loses nothing", function()
    local c, s = helper.connected(helper.client_ctx(), helper.server_ctx(), { buffer_limit = 4096 })
    local body = helper.payload(100000)
    local sent, got, waits = 0, {}, 0
    for _ = 1, 10000 do
      if sent == #body then break end
      local n, _, kind = c:write(body, sent + 1, math.min(#body, sent + 30000))
      if n then sent = sent + n
      else
        assert.equal("want_write", kind)
        waits = waits + 1
        s:feed(c:drain())
        got[#got + 1] = s:read()
      end
    end
    s:feed(c:drain())
    while true do
      local d = s:read()
      if not d then break end
      got[#got + 1] = d
    end
    assert.is_true(waits > 0)
    assert.equal(#body, #table.concat(got))
    assert.is_true(table.concat(got) == body)
  end)

  it("says which position is not an integer", function()
    local c = helper.connected(helper.client_ctx(), helper.server_ctx())
    assert.has_error(function() c:write("abc", 1, "x") end,
                     "bad argument #3 to 'write' (integer position expected)")
    assert.has_error(function() c:write("abc", 1.5) end,
                     "bad argument #2 to 'write' (integer position expected)")
  end)
end)

describe("conn:drain_to(fd)", function()
  if not ok_socket then
    it("needs LuaSocket", function() pending("LuaSocket is not installed") end)
    return
  end

  it("sends what drain would give, straight to a socket, and leaves the rest for drain", function()
    local x, y = tcp_pair()
    local c, s = helper.connected(helper.client_ctx(), helper.server_ctx())
    assert.equal(0, c:drain_to(x:getfd()))   -- nothing waits: nothing sent
    assert.equal(5, c:write("hello"))
    local waiting = c:pending()
    assert.equal(waiting, c:drain_to(x:getfd()))
    assert.equal(0, c:pending())
    y:settimeout(5)
    assert(s:feed(assert(y:receive(waiting))))
    assert.equal("hello", s:read())
    x:close(); y:close()
  end)

  it("takes what a full socket takes, never blocks, and drain has the rest in order", function()
    local x, y = tcp_pair()
    local c, s = helper.connected(helper.client_ctx(), helper.server_ctx(), { buffer_limit = false })
    local body = helper.payload(24 * 1024 * 1024)   -- more than loopback buffers hold
    local sent = 0
    while sent < #body do sent = sent + assert(c:write(body, sent + 1)) end
    local total = c:pending()
    local n = assert(c:drain_to(x:getfd()))
    assert.is_true(n > 0 and n < total, ("sent %d of %d"):format(n, total))
    -- until the socket takes nothing (the kernel may move some along meanwhile): 0, at once
    local last
    for _ = 1, 1000 do
      last = assert(c:drain_to(x:getfd()))
      if last == 0 then break end
      n = n + last
    end
    assert.equal(0, last)
    assert.equal(total - n, c:pending())
    local rest = c:drain()
    assert.equal(total - n, #rest)
    -- the peer reads the direct part, then the rest, and gets the body back whole
    y:settimeout(5)
    local first = assert(y:receive(n))
    x:close()
    local got = {}
    local function take(data)
      local off = 1
      while off <= #data do
        off = off + s:feed(data:sub(off))
        while true do
          local d = s:read()
          if not d then break end
          got[#got + 1] = d
        end
      end
    end
    take(first)
    take(rest)
    assert.is_true(table.concat(got) == body)
    y:close()
  end)

  it("fails with kind syscall, takes nothing, and the process lives, on a closed peer or a pipe", function()
    local x, y = tcp_pair()
    local c = helper.connected(helper.client_ctx(), helper.server_ctx())
    y:close()
    local failed
    for _ = 1, 50 do           -- the first sends may still be taken before the reset arrives
      assert(c:write("x"))
      local n, msg, kind = c:drain_to(x:getfd())
      if not n then failed = { msg, kind } break end
      socket.sleep(0.01)
    end
    assert.is_truthy(failed, "never failed")
    assert.equal("syscall", failed[2])
    assert.is_true(c:pending() > 0)
    x:close()
    -- standard input, when it is not a socket (make test gives /dev/null)
    if not helper.run("readlink /proc/self/fd/0"):match("^socket:") then
      local n, msg, kind = c:drain_to(0)
      assert.is_nil(n)
      assert.equal("syscall", kind)
      assert.truthy(msg:find("socket", 1, true), msg)
      assert.is_true(c:pending() > 0)
    end
  end)

  it("says what a bad descriptor argument is", function()
    local c = helper.connected(helper.client_ctx(), helper.server_ctx())
    for _, bad in ipairs { "3", -1, 1.5, 2 ^ 40 } do
      assert.has_error(function() c:drain_to(bad) end,
                       "bad argument #1 to 'drain_to' (file descriptor (a non-negative integer) expected)")
    end
  end)
end)
