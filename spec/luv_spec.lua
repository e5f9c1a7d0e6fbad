-- spec/luv_spec.lua: sslctx.luv, TLS streams over luv TCP handles on 127.0.0.1 (doc/reference.md,
-- "sslctx.luv").  Every loop runs under a deadline; every handle is closed before the next test.

local helper = require "helper"
local ok_uv, uv = pcall(require, "luv")
local tls = ok_uv and require "sslctx.luv"

local describe_luv = ok_uv and describe or pending

-- luv ends the process when a callback raises: callbacks go through G, which keeps the
-- first error for run_until to raise in the test itself.
local failure
local function G(fn)
  return function(...)
    local ok, err = pcall(fn, ...)
    if not ok and not failure then failure = err end
  end
end

-- Runs the loop until done() is true or `secs` passed; returns done().
local function run_until(done, secs)
  uv.update_time()   -- the loop's clock only moves while it runs: it may be minutes old
  local deadline = uv.now() + (secs or 5) * 1000
  local guard = uv.new_timer()
  guard:start(20, 20, function() end)     -- wakes the loop so that the deadline is seen
  while not failure and not done() and uv.now() < deadline do uv.run("once") end
  guard:close()
  if failure then
    local err = failure
    failure = nil
    error(err, 0)
  end
  return not not done()
end

-- Closes every TCP handle still open and lets the loop settle.
local function settle()
  failure = nil
  uv.walk(function(h)
    if h:get_type() == "tcp" and not h:is_closing() then h:close() end
  end)
  for _ = 1, 20 do uv.run("nowait") end
end

-- A listener on 127.0.0.1 whose accepted streams go to on_stream(stream); -> port, handle.
local function listen(sctx, on_stream, sopts)
  local server = uv.new_tcp()
  assert(server:bind("127.0.0.1", 0))
  assert(server:listen(512, G(function(err)
    assert(not err, err)
    local tcp = uv.new_tcp()
    server:accept(tcp)
    on_stream(tls.wrap(tcp, sctx, sopts))
  end)))
  return server:getsockname().port, server
end

-- Connects to port; cb(tcp) once connected.
local function dial(port, cb)
  local tcp = uv.new_tcp()
  tcp:connect("127.0.0.1", port, G(function(err)
    assert(not err, err)
    cb(tcp)
  end))
  return tcp
end

local function client_ctx(cert)
  return helper.client_ctx(cert and {
    certificate = helper.pki(cert .. "-chain.pem"), key = helper.pki(cert .. ".key") } or nil)
end

-- Server side: echo every chunk back; close at the peer's end.
local function echo(s)
  s:read_start(G(function(err, data)
    if err or not data then return s:close() end
    s:write(data)
  end))
end

describe_luv("sslctx.luv", function()
  after_each(settle)

  it("carries data both ways under mutual TLS 1.3, callbacks in luv's shape", function()
    local sctx = helper.server_ctx({ verify = "require" })
    local cctx = client_ctx("client")
    local seen = {}
    local port, server = listen(sctx, G(function(s)
      s:handshake(G(function(err)
        seen.server_hs = err or "ok"
        seen.server_peer = s:connection():peer_certificate():subject()
      end))
      echo(s)
    end))
    local got, ended, closed = {}, false, false
    dial(port, G(function(tcp)
      local s = tls.wrap(tcp, cctx, { hostname = "localhost" })
      s:handshake(G(function(err)
        seen.client_hs = err or "ok"
        seen.version = s:connection():version()
      end))
      assert.is_true(s:write("ping ", G(function(err) seen.w1 = err or "ok" end)))
      assert.is_true(s:write({ "po", "ng" }, G(function(err) seen.w2 = err or "ok" end)))
      s:read_start(G(function(err, data)
        assert.is_nil(err)
        if data then
          got[#got + 1] = data
          if table.concat(got) == "ping pong" then s:shutdown() end
        else
          ended = true
          s:close(G(function() closed = true; server:close() end))
        end
      end))
    end))
    assert.is_true(run_until(function() return closed end))
    assert.equal("ping pong", table.concat(got))
    assert.is_true(ended)
    assert.same({ "ok", "ok", "ok", "ok" }, { seen.client_hs, seen.server_hs, seen.w1, seen.w2 })
    assert.equal("TLSv1.3", seen.version)
    assert.truthy(seen.server_peer:find("CN=Test Client", 1, true))
  end)

  it("serves 200 concurrent streams in one loop", function()
    local sctx = helper.server_ctx({ verify = "require" })
    local cctx = client_ctx("client")
    local port, server = listen(sctx, echo)
    -- under check-gc every hundred instructions are a full collection of the heap the whole
    -- suite has grown: 20 streams at once are enough to shake the finalizers out
    local N, done, bad = helper.forced_gc and 20 or 200, 0, {}
    for i = 1, N do
      dial(port, G(function(tcp)
        local s = tls.wrap(tcp, cctx, { hostname = "localhost" })
        local want = ("line %d\n"):format(i):rep(50)
        local buf = ""
        s:write(want)
        s:read_start(G(function(err, data)
          if err then bad[#bad + 1] = err; done = done + 1; return s:close() end
          buf = buf .. (data or "")
          if #buf >= #want then
            if buf ~= want then bad[#bad + 1] = "garbled " .. i end
            done = done + 1
            s:close()
          end
        end))
      end))
    end
    assert.is_true(run_until(function() return done == N end, 30), "finished " .. done)
    server:close()
    assert.same({}, bad)
  end)

  it("a server certificate the client does not trust fails with 'verify: ...' on both callbacks", function()
    local sctx = helper.server_ctx()
    local cctx = helper.client_ctx({ ca_file = helper.pki("other-ca.pem") })
    local serr
    local port, server = listen(sctx, G(function(s)
      s:handshake(G(function(err) serr = err; s:close() end))
    end))
    local herr, rerr, werr
    dial(port, G(function(tcp)
      local s = tls.wrap(tcp, cctx, { hostname = "localhost" })
      s:handshake(G(function(err) herr = err end))
      s:write("never sent", G(function(err) werr = err end))
      s:read_start(G(function(err) rerr = err; s:close() end))
    end))
    assert.is_true(run_until(function() return herr and rerr and werr and serr end))
    server:close()
    assert.truthy(herr:match("^verify: "), herr)
    assert.equal(herr, rerr)
    assert.equal(herr, werr)
    assert.truthy(serr:match("^ssl: .*unknown ca"), serr)
  end)

  it("a client certificate the server does not trust: server 'verify: ...', client fails at its first read", function()
    local sctx = helper.server_ctx({ verify = "require" })
    local cctx = client_ctx("client-untrusted")
    local serr, cerr, chs
    local port, server = listen(sctx, G(function(s)
      s:handshake(G(function(err) serr = err; s:close() end))
    end))
    dial(port, G(function(tcp)
      local s = tls.wrap(tcp, cctx, { hostname = "localhost" })
      s:handshake(G(function(err) chs = err or "ok" end))
      s:read_start(G(function(err, data)
        cerr = err or ("data: " .. tostring(data))
        s:close()
      end))
    end))
    assert.is_true(run_until(function() return serr and cerr end))
    server:close()
    assert.truthy(serr:match("^verify: "), serr)
    assert.equal("ok", chs)        -- TLS 1.3: the client's handshake ends before the verdict
    assert.truthy(cerr:match("^ssl: .*alert"), cerr)
  end)

  it("checks the host name by default on a client, and refuses a client without one", function()
    local sctx = helper.server_ctx({ certificate = helper.pki("wronghost-chain.pem"),
                                     key = helper.pki("wronghost.key") })
    local cctx = client_ctx()
    local port, server = listen(sctx, G(function(s) s:handshake(G(function() s:close() end)) end))
    local herr
    dial(port, G(function(tcp)
      local msg = helper.raises(tls.wrap, tcp, cctx)
      assert.truthy(msg:find("bad argument #3 to 'wrap'", 1, true), msg)
      local s = tls.wrap(tcp, cctx, { hostname = "localhost" })
      s:handshake(G(function(err) herr = err; s:close() end))
    end))
    assert.is_true(run_until(function() return herr end))
    server:close()
    assert.truthy(herr:match("^verify: .*hostname mismatch"), herr)
  end)

  it("times out a peer that stalls mid-handshake ('timeout: ...'); servers default to 30 s", function()
    local sctx = helper.server_ctx()
    local serr, t0, t1
    local port, server = listen(sctx, G(function(s)
      t0 = uv.now()
      s:handshake(G(function(err) serr = err; t1 = uv.now(); s:close() end))
    end), { handshake_timeout = 300 })
    local stalled
    dial(port, G(function(tcp)
      stalled = tcp
      tcp:write("\22\3\1\0\200")      -- a record header that promises a ClientHello, then nothing
      tcp:read_start(G(function() end))
    end))
    assert.is_true(run_until(function() return serr end, 5))
    server:close()
    assert.truthy(serr:match("^timeout: "), serr)
    assert.is_true(t1 - t0 >= 250 and t1 - t0 < 3000, tostring(t1 - t0))
    stalled:close()
    -- the default: a server stream gets 30 s, a client none
    local a, b = uv.new_tcp(), uv.new_tcp()
    local s = tls.wrap(a, sctx)
    local c = tls.wrap(b, client_ctx(), { hostname = "localhost" })
    assert.is_true(s.deadline - uv.now() > 29000 and s.deadline - uv.now() <= 30000)
    assert.is_nil(c.deadline)
    s:close(); c:close()
  end)

  -- #timing: it judges what the loop did within fixed waits (check-gc leaves it out)
  it("a reader that stops reading: the writer sees the queue grow, nothing else buffers, every byte arrives #timing", function()
    local sctx = helper.server_ctx()
    local cctx = client_ctx()
    local chunk = helper.payload(65536)
    local written, peak, writer = 0, 0, nil
    local port, server = listen(sctx, G(function(s)
      writer = s
      -- write while the unsent output stays under 512 KiB; stop otherwise (and for good
      -- once 16 MiB went out: a bound)
      local function fill()
        while s:get_write_queue_size() < 512 * 1024 and written < 16 * 1048576 do
          s:write(chunk)
          written = written + #chunk
          peak = math.max(peak, s:get_write_queue_size())
        end
      end
      s:handshake(G(function(err) assert.is_nil(err); fill() end))
      s.fill = fill
    end))
    local reader, received = nil, 0
    dial(port, G(function(tcp)
      reader = tls.wrap(tcp, cctx, { hostname = "localhost" })
      reader:handshake(G(function(err) assert.is_nil(err) end))
    end))
    -- the reader never calls read_start: the writer must stall, well short of 16 MiB
    assert.is_true(run_until(function() return writer and written > 0 end))
    run_until(function() return false end, 0.5)
    assert.is_true(written < 16 * 1048576, "the writer never saw backpressure: " .. written)
    assert.is_true(writer:get_write_queue_size() >= 512 * 1024)
    assert.is_true(peak < 512 * 1024 + 2 * #chunk, tostring(peak))
    assert.is_true(writer:get_write_queue_size() <= writer.handle:get_write_queue_size())
    -- the idle reader holds at most one record of plaintext and no unread input
    assert.is_true(reader:connection():pending_plaintext() <= 16384)
    assert.is_nil(reader.inbuf)
    assert.is_falsy(reader.hreading)
    -- now read everything: the writer drains, refills, and every byte arrives intact
    local target = written
    local stop_at = 4 * 1048576
    reader:read_start(G(function(err, data)
      assert.is_nil(err)
      local off = received % #chunk
      local want = (chunk .. chunk):sub(off + 1, off + #data)
      if data ~= want then error("garbled at " .. received) end
      received = received + #data
    end))
    local refill = uv.new_timer()
    refill:start(10, 10, G(function()
      if written < stop_at then writer.fill() target = written end
    end))
    assert.is_true(run_until(function() return received >= target and written >= stop_at end, 20),
                   ("received %d of %d"):format(received, target))
    refill:close()
    server:close()
  end)

  it("close while writes are queued: pending callbacks get ECANCELED, close's callback runs last", function()
    local sctx = helper.server_ctx()
    local cctx = client_ctx()
    local order = {}
    local big = helper.payload(1048576)
    local port, server = listen(sctx, G(function(s)
      s:handshake(G(function(err)
        assert.is_nil(err)
        for i = 1, 8 do   -- 8 MiB to a reader that never reads: most stay queued
          s:write(big, G(function(e) order[#order + 1] = "w" .. i .. ":" .. tostring(e) end))
        end
        s:shutdown(G(function(e) order[#order + 1] = "shutdown:" .. tostring(e) end))
        local later = uv.new_timer()
        later:start(100, 0, G(function()
          later:close()
          s:close(G(function() order[#order + 1] = "close" end))
          assert.is_true(s:is_closing())
          -- read callbacks stop; methods after close raise
          assert.truthy(helper.raises(s.write, s, "x"):find("closed stream", 1, true))
        end))
      end))
    end))
    dial(port, G(function(tcp)
      tls.wrap(tcp, cctx, { hostname = "localhost" }):handshake(G(function() end))
    end))
    assert.is_true(run_until(function() return order[#order] == "close" end))
    server:close()
    assert.equal("close", order[#order])
    assert.equal(10, #order, table.concat(order, " "))
    local canceled = 0
    for i = 1, 9 do
      if order[i]:find("ECANCELED: operation canceled", 1, true) then canceled = canceled + 1 end
    end
    assert.is_true(canceled >= 2, table.concat(order, " "))
    assert.equal("shutdown:ECANCELED: operation canceled", order[9])
  end)

  it("close before the handshake: handshake and write callbacks get ECANCELED, then close's", function()
    local order = {}
    local server = uv.new_tcp()            -- accepts, never reads
    assert(server:bind("127.0.0.1", 0))
    server:listen(8, function() local t = uv.new_tcp(); server:accept(t) end)
    local s
    dial(server:getsockname().port, function(tcp)
      s = tls.wrap(tcp, client_ctx(), { hostname = "localhost" })
      s:handshake(G(function(e) order[#order + 1] = "hs:" .. tostring(e) end))
      s:write("early", G(function(e) order[#order + 1] = "w:" .. tostring(e) end))
      assert.equal(5, s:get_write_queue_size())
      s:close(G(function() order[#order + 1] = "close" end))
      assert.same({}, order)      -- nothing inside the calls
    end)
    assert.is_true(run_until(function() return #order == 3 end))
    server:close()
    assert.same({ "hs:ECANCELED: operation canceled", "w:ECANCELED: operation canceled", "close" }, order)
  end)

  -- A small write goes to the socket at once (conn:drain_to), a large one partly waits on the
  -- handle: closing right after must still call them back in order, sent before canceled.
  it("write callbacks keep their order when one went straight to the socket and close cancels the next", function()
    local sctx = helper.server_ctx()
    local order = {}
    local port, server = listen(sctx, G(function(s)
      s:read_start(G(function(_, d) if not d then s:close() end end))
    end))
    dial(port, G(function(tcp)
      local s = tls.wrap(tcp, client_ctx(), { hostname = "localhost" })
      s:handshake(G(function(err)
        assert.is_nil(err)
        s:write(("x"):rep(100), G(function(e) order[#order + 1] = "w1:" .. tostring(e) end))
        s:write(("y"):rep(4 * 1024 * 1024), G(function(e) order[#order + 1] = "w2:" .. tostring(e) end))
        s:close(G(function() order[#order + 1] = "close"; server:close() end))
      end))
    end))
    assert.is_true(run_until(function() return order[#order] == "close" end))
    assert.equal(3, #order)
    assert.equal("w1:nil", order[1])
    assert.truthy(order[2]:find("^w2:ECANCELED"), order[2])
  end)

  it("hostile callbacks: close inside the handshake callback with writes and a read pending; wrap inside a timeout", function()
    local sctx = helper.server_ctx()
    local order = {}
    local port, server = listen(sctx, G(function(s) s:handshake(G(function() end)) end))
    dial(port, G(function(tcp)
      local s = tls.wrap(tcp, client_ctx(), { hostname = "localhost" })
      s:write("queued before the handshake", G(function(e) order[#order + 1] = "w:" .. tostring(e) end))
      s:read_start(G(function(e, d) order[#order + 1] = "r:" .. tostring(e) .. ":" .. tostring(d) end))
      s:handshake(G(function(e)
        order[#order + 1] = "hs:" .. tostring(e)
        s:close(G(function() order[#order + 1] = "close" end))
      end))
    end))
    assert.is_true(run_until(function() return order[#order] == "close" end))
    assert.equal("hs:nil", order[1])
    assert.equal("close", order[#order])
    for _, e in ipairs(order) do assert.is_nil(e:match("^r:"), e) end   -- reads stop at close
    -- a timeout callback that wraps (and times out) another stream
    local fired, second, accepted = 0, nil, {}
    local server2 = uv.new_tcp()
    assert(server2:bind("127.0.0.1", 0))
    server2:listen(8, G(function()
      local tcp = uv.new_tcp()
      server2:accept(tcp)
      accepted[#accepted + 1] = tcp
      if #accepted < 2 then return end
      local first = tls.wrap(accepted[1], sctx, { handshake_timeout = 100 })
      first:handshake(G(function(err)
        fired = fired + 1
        assert.truthy(err:match("^timeout: "), err)
        first:close()
        second = tls.wrap(accepted[2], sctx, { handshake_timeout = 50 })
        second:handshake(G(function(e2) fired = fired + 1; second.err2 = e2; second:close() end))
      end))
    end))
    local raws = {}
    for _ = 1, 2 do dial(server2:getsockname().port, G(function(tcp) raws[#raws + 1] = tcp end)) end
    assert.is_true(run_until(function() return fired == 2 end))
    for _, r in ipairs(raws) do r:close() end
    server:close(); server2:close()
    assert.truthy(second.err2:match("^timeout: handshake not finished within 50 ms"), second.err2)
  end)

  it("runs no callback inside the call that registers it", function()
    local sctx = helper.server_ctx()
    local port, server = listen(sctx, G(function(s)
      s:handshake(G(function() s:write("hello") end))
      s:read_start(G(function(err, data) if err or not data then s:close() end end))
    end))
    local stream, ready, log = nil, false, {}
    dial(port, G(function(tcp)
      stream = tls.wrap(tcp, client_ctx(), { hostname = "localhost" })
      stream:handshake(G(function() ready = true end))
    end))
    assert.is_true(run_until(function() return ready end))
    -- the server's "hello" arrives and sits decrypted-or-not; give it time to land
    run_until(function() return false end, 0.2)
    local inside = true
    stream:handshake(G(function(e) log[#log + 1] = { "hs", inside, e } end))
    stream:write("x", G(function(e) log[#log + 1] = { "w", inside, e } end))
    stream:read_start(G(function(e, d)
      log[#log + 1] = { "r", inside, e, d }
      stream:read_stop()
    end))
    inside = false
    assert.same({}, log)
    assert.is_true(run_until(function() return #log >= 3 end))
    stream:close()
    server:close()
    local kinds = {}
    for _, e in ipairs(log) do
      assert.is_false(e[2])
      kinds[e[1]] = e
    end
    assert.is_nil(kinds.hs[3])
    assert.is_nil(kinds.w[3])
    assert.equal("hello", kinds.r[4])
  end)

  it("half-close: after the peer's close_notify the stream still writes; a FIN without it is 'eof: ...'", function()
    local sctx = helper.server_ctx()
    local got_end, reply
    local port, server = listen(sctx, G(function(s)
      s:read_start(G(function(err, data)
        if data then return end
        got_end = err or "close_notify"
        s:write("after your end", G(function() s:close() end))
      end))
    end))
    dial(port, G(function(tcp)
      local s = tls.wrap(tcp, client_ctx(), { hostname = "localhost" })
      s:shutdown(G(function(err) assert.is_nil(err) end))     -- before the handshake: waits for it
      local buf = ""
      s:read_start(G(function(err, data)
        if data then buf = buf .. data return end
        reply = { buf, err }
        s:close()
      end))
    end))
    assert.is_true(run_until(function() return reply end))
    assert.equal("close_notify", got_end)
    assert.equal("after your end", reply[1])
    assert.is_nil(reply[2])   -- the server's close sent close_notify
    -- a raw TCP FIN after the handshake: truncation
    local eof
    local port2, server2 = listen(sctx, G(function(s)
      s:read_start(G(function(err, data) if not data then eof = err or "close_notify"; s:close() end end))
    end))
    dial(port2, G(function(tcp)
      local s = tls.wrap(tcp, client_ctx(), { hostname = "localhost" })
      s:handshake(G(function(err)
        assert.is_nil(err)
        s:write("x", G(function() tcp:shutdown() end))    -- FIN, no close_notify
      end))
    end))
    assert.is_true(run_until(function() return eof end))
    server:close(); server2:close()
    assert.truthy(eof:match("^eof: "), eof)
  end)

  it("takes bytes already read (preread) and a feed that takes less than it is given", function()
    local sctx = helper.server_ctx()
    local data = helper.payload(300000)
    local buf, done = {}, false
    local server = uv.new_tcp()
    assert(server:bind("127.0.0.1", 0))
    server:listen(8, G(function()
      local tcp = uv.new_tcp()
      server:accept(tcp)
      tcp:read_start(G(function(err, first)       -- the first bytes, read by the application
        assert.is_nil(err)
        tcp:read_stop()
        local s = tls.wrap(tcp, sctx, { preread = first, buffer_limit = 4096 })
        s:read_start(G(function(e, d)
          assert.is_nil(e)
          if d then buf[#buf + 1] = d else done = true; s:close() end
        end))
      end))
    end))
    dial(server:getsockname().port, G(function(tcp)
      local s = tls.wrap(tcp, client_ctx(), { hostname = "localhost" })
      s:write(data)
      s:shutdown()
    end))
    assert.is_true(run_until(function() return done end, 10))
    server:close()
    assert.equal(#data, #table.concat(buf))
    assert.is_true(table.concat(buf) == data)
  end)

  it("a coroutine handler reads and writes as straight-line code", function()
    local sctx = helper.server_ctx()
    local result
    local port, server = listen(sctx, G(function(s)
      tls.spawn(function()
        local c = tls.coro(s)
        assert(c:handshake())
        local line = ""
        while not line:find("\n", 1, true) do
          local d, err = c:read()
          assert(d, err)
          line = line .. d
        end
        assert(c:write("you said " .. line))
        assert(c:shutdown())
        assert.is_nil(c:read())    -- the client's close_notify
        c:close()
      end)
    end))
    dial(port, G(function(tcp)
      tls.spawn(function()
        local c = tls.coro(tls.wrap(tcp, client_ctx(), { hostname = "localhost" }))
        assert(c:write("hi\n"))
        local got = {}
        while true do
          local d, err = c:read()
          if not d then assert.is_nil(err) break end
          got[#got + 1] = d
        end
        c:shutdown()
        c:close()
        result = table.concat(got)
      end)
    end))
    assert.is_true(run_until(function() return result end))
    server:close()
    assert.equal("you said hi\n", result)
    assert.truthy(helper.raises(tls.coro(tls.wrap(uv.new_tcp(), sctx)).handshake,
                                tls.coro(tls.wrap(uv.new_tcp(), sctx))):find("coroutine", 1, true))
  end)

  it("raises on bad arguments, naming them", function()
    local sctx = helper.server_ctx()
    assert.truthy(helper.raises(tls.wrap, nil, sctx):find("bad argument #1 to 'wrap'", 1, true))
    assert.truthy(helper.raises(tls.wrap, uv.new_tcp(), {}):find("bad argument #2 to 'wrap'", 1, true))
    assert.truthy(helper.raises(tls.wrap, uv.new_tcp(), sctx, { fd = 3 }):find("bad argument #3", 1, true))
    assert.truthy(helper.raises(tls.wrap, uv.new_tcp(), sctx, { handshake_timeout = -1 })
                  :find("handshake_timeout", 1, true))
    assert.truthy(helper.raises(tls.wrap, uv.new_tcp(), sctx, { bogus = 1 }):find("bogus", 1, true))
    local s = tls.wrap(uv.new_tcp(), sctx)
    assert.truthy(helper.raises(s.write, s, 42):find("bad argument #1 to 'write'", 1, true))
    assert.truthy(helper.raises(s.write, s, { "a", 1 }):find("list entry 2", 1, true))
    assert.truthy(helper.raises(s.write, s, "a", "cb"):find("bad argument #2 to 'write'", 1, true))
    assert.truthy(helper.raises(s.read_start, s):find("bad argument #1 to 'read_start'", 1, true))
    assert.truthy(helper.raises(s.handshake, s, 1):find("bad argument #1 to 'handshake'", 1, true))
    s:close()
    assert.truthy(helper.raises(s.read_start, s, function() end):find("closed stream", 1, true))
  end)
end)
