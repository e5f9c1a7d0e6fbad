-- spec/socket_spec.lua: sslctx.socket, the LuaSocket adapter (doc/reference.md,
-- sslctx.socket), over real sockets on 127.0.0.1: LuaSocket's receive/send/timeout shapes,
-- dirty/getfd for select and copas, verification results, sni (both sides), DANE, and
-- client session reuse.

local helper = require "helper"
local peers = require "support.peers"
local socket = require "socket"
local sslsocket = require "sslctx.socket"

local gettime = socket.gettime

-- A connected pair of LuaSocket TCP objects on 127.0.0.1.
local function tcp_pair()
  local srv = assert(socket.bind("127.0.0.1", 0))
  local _, port = srv:getsockname()
  local c = socket.tcp()
  c:settimeout(5)
  assert(c:connect("127.0.0.1", port))
  srv:settimeout(5)
  local s = assert(srv:accept())
  srv:close()
  return c, s
end

-- Drives two streams' handshakes with settimeout(0), waiting with socket.select on the
-- stream objects themselves (as copas does).  Bounded.
local function pump(a, b)
  a:settimeout(0)
  b:settimeout(0)
  local da, db, ra, rb = false, false, nil, nil
  for _ = 1, 400 do
    if not da then
      local ok, msg, kind = a:dohandshake()
      if ok then da = true elseif kind ~= "timeout" then da, ra = true, { msg, kind } end
    end
    if not db then
      local ok, msg, kind = b:dohandshake()
      if ok then db = true elseif kind ~= "timeout" then db, rb = true, { msg, kind } end
    end
    if da and db then break end
    socket.select({ a, b }, nil, 0.05)
  end
  return ra, rb
end

-- A client and a server stream over one TCP pair, handshake done.
local function stream_pair(copts, sopts, cctx, sctx)
  local c, s = tcp_pair()
  cctx = cctx or helper.client_ctx(copts and copts.ctx)
  sctx = sctx or helper.server_ctx(sopts and sopts.ctx)
  local cs = sslsocket.wrap(c, cctx, { hostname = "localhost" })
  local ss = sslsocket.wrap(s, sctx)
  local ce, se = pump(cs, ss)
  assert(not ce, "client handshake: " .. tostring(ce and ce[1]))
  assert(not se, "server handshake: " .. tostring(se and se[1]))
  cs:settimeout(nil)
  ss:settimeout(nil)
  return cs, ss
end

local function elapsed(t0) return gettime() - t0 end

describe("sslctx.socket", function()
  local open = {}
  local function track(...)
    for i = 1, select("#", ...) do open[#open + 1] = (select(i, ...)) end
    return ...
  end
  after_each(function()
    for _, s in ipairs(open) do pcall(s.close, s) end
    open = {}
  end)
  teardown(function() peers.cleanup() end)

  describe("argument checks", function()
    it("wrap raises on a non-socket, a non-context and a non-table opts", function()
      local ctx = helper.client_ctx()
      assert.truthy(helper.raises(sslsocket.wrap, 42, ctx):find("bad argument #1 to 'wrap'", 1, true))
      local c, s = tcp_pair()
      assert.truthy(helper.raises(sslsocket.wrap, c, "ctx"):find("bad argument #2 to 'wrap'", 1, true))
      assert.truthy(helper.raises(sslsocket.wrap, c, ctx, 5):find("bad argument #3 to 'wrap'", 1, true))
      c:close()
      s:close()
    end)

    it("wrap with a table of sslctx.new options builds the context; a bad file is nil, msg, kind", function()
      local c, s = tcp_pair()
      local st = sslsocket.wrap(c, { side = "client", ca_file = helper.pki("ca.pem") },
                                { hostname = "localhost" })
      assert.equal("SSL stream (sslctx.socket{client})", tostring(st):match("^[^:]+"))
      st:close()
      local c2, s2 = tcp_pair()
      local none, msg, kind = sslsocket.wrap(c2, { ca_file = "/nonexistent/ca.pem" })
      assert.is_nil(none)
      assert.is_string(msg)
      assert.equal("file", kind)
      c2:close()
      s:close()
      s2:close()
    end)

    it("receive and settimeout raise on invalid patterns and modes, as LuaSocket does", function()
      local cs, ss = track(stream_pair())
      assert.truthy(helper.raises(cs.receive, cs, "*L"):find("invalid receive pattern", 1, true))
      assert.truthy(helper.raises(cs.receive, cs, -1):find("invalid receive pattern", 1, true))
      assert.truthy(helper.raises(cs.settimeout, cs, 1, "x"):find("invalid timeout mode", 1, true))
      assert.equal(1, cs:settimeout(1, "t"))
      assert.equal(1, ss:settimeout(nil))
    end)

    it("a verifying client without a hostname raises at the handshake unless sni() names one", function()
      local ctx = helper.client_ctx()
      local c, s = tcp_pair()
      local st = sslsocket.wrap(c, ctx)
      assert.truthy(helper.raises(st.dohandshake, st):find("hostname", 1, true))
      st:close()
      s:close()
    end)
  end)

  describe("receive patterns (LuaSocket 3 semantics)", function()
    it("lines drop every CR; 'l' and '*l' alike; a count includes the prefix", function()
      local cs, ss = track(stream_pair())
      cs:settimeout(2)
      assert.equal(21, ss:send("hello\r\nwo\rrld\nabcdefg"))
      assert.equal("hello", cs:receive("*l"))
      assert.equal("world", cs:receive("l"))
      assert.equal("xyzabcd", cs:receive(7, "xyz"))
      -- a prefix at least as long as the count is returned as it is, nothing read
      assert.equal("123456", cs:receive(5, "123456"))
      assert.equal("efg", cs:receive(3))
    end)

    it("the default pattern is a line; a numeric string is a count", function()
      local cs, ss = track(stream_pair())
      cs:settimeout(2)
      ss:send("one\ntwo!")
      assert.equal("one", cs:receive())
      assert.equal("two", cs:receive("3"))
      assert.equal("!", cs:receive(1))
    end)

    it("a timeout returns nil, 'timeout', the partial data (with the prefix), then 'timeout' kind", function()
      local cs, ss = track(stream_pair())
      ss:send("partial")
      cs:settimeout(0.2)
      local t0 = gettime()
      local r, err, part, kind = cs:receive("*l", "PFX")
      local dt = elapsed(t0)
      assert.is_nil(r)
      assert.equal("timeout", err)
      assert.equal("PFXpartial", part)
      assert.equal("timeout", kind)
      assert.truthy(dt >= 0.15 and dt < 2, "waited " .. dt)
      -- LuaSocket's resume idiom: pass the partial back as the prefix
      ss:send(" line\n")
      cs:settimeout(2)
      assert.equal("PFXpartial line", cs:receive("*l", part))
      -- counts and *a time out the same way
      ss:send("abc")
      cs:settimeout(0.1)
      r, err, part = cs:receive(10)
      assert.same({ nil, "timeout", "abc" }, { r, err, part })
      r, err, part = cs:receive("*a", "x")
      assert.same({ nil, "timeout", "x" }, { r, err, part })
    end)

    it("settimeout(0) never waits", function()
      local cs = track(stream_pair())
      cs:settimeout(0)
      local t0 = gettime()
      local r, err, part = cs:receive("*l")
      assert.same({ nil, "timeout", "" }, { r, err, part })
      -- nothing arrives, so any wait at all would last until the peer closes; the bound is
      -- loose because check-gc runs a full collection every 100 instructions
      assert.truthy(elapsed(t0) < 1)
    end)

    it("mode 't' bounds the whole call across several arrivals; mode 'b' each wait", function()
      local cs, ss = track(stream_pair())
      ss:send("a")
      cs:settimeout(0.3, "t")
      local t0 = gettime()
      local r, err, part = cs:receive(5)
      assert.same({ nil, "timeout", "a" }, { r, err, part })
      assert.truthy(elapsed(t0) < 1.5)
      cs:settimeout(-1, "t")
      cs:settimeout(0.2, "b")
      t0 = gettime()
      r, err = cs:receive(1)
      assert.same({ nil, "timeout" }, { r, err })
      assert.truthy(elapsed(t0) >= 0.15)
    end)

    it("a clean close (close_notify) is 'closed'; '*a' returns what came before it", function()
      local cs, ss = track(stream_pair())
      ss:send("tail\nend")
      ss:close()
      cs:settimeout(2)
      assert.equal("tail", cs:receive("*l"))
      assert.equal("end", cs:receive("*a"))
      local r, err, part, kind = cs:receive("*a")
      assert.same({ nil, "closed", "", "closed" }, { r, err, part, kind })
      r, err, part = cs:receive("*l", "p")
      assert.same({ nil, "closed", "p" }, { r, err, part })
      r, err, part = cs:receive(4)
      assert.same({ nil, "closed", "" }, { r, err, part })
    end)

    it("a transport that ends without close_notify is never 'closed' (kind eof)", function()
      local c, s = tcp_pair()
      local cs = track(sslsocket.wrap(c, helper.client_ctx(), { hostname = "localhost" }))
      local ss = track(sslsocket.wrap(s, helper.server_ctx()))
      assert.is_nil(pump(cs, ss))
      ss:send("cut")
      -- FIN on the TCP socket under the stream, no close_notify.  (Not s:close(): the
      -- connection would keep the descriptor's number, which the next socket may get.)
      s:shutdown("both")
      cs:settimeout(2)
      local r, err, part, kind = cs:receive("*a")
      assert.is_nil(r)
      assert.equal("eof", kind)
      assert.truthy(err:find("^eof"), err)
      assert.equal("cut", part)
    end)

    it("moves a large payload both ways with send(data, i, j) indices", function()
      local cs, ss = track(stream_pair())
      local data = helper.payload(300000)
      ss:settimeout(0)
      cs:settimeout(0)
      local sent, got, parts = 0, 0, {}
      for _ = 1, 20000 do
        if sent < #data then
          local n, err, last = ss:send(data, sent + 1)
          if n then sent = n else
            assert.equal("timeout", err)
            sent = last
          end
        end
        local r, err, part = cs:receive(#data - got)
        local piece = r or part
        if not r then assert.equal("timeout", err) end
        if #piece > 0 then
          parts[#parts + 1] = piece
          got = got + #piece
        end
        if got >= #data then break end
        socket.select({ cs }, { ss }, 0.05)
      end
      assert.equal(#data, got)
      assert.equal(data, table.concat(parts))
    end)

    it("send returns the last index sent; a timeout returns nil, 'timeout', last index", function()
      local cs, ss = track(stream_pair())
      cs:settimeout(2)
      assert.equal(4, ss:send("abcdef", 2, 4))
      assert.equal("bcd", cs:receive(3))
      assert.equal(6, ss:send("abcdef", -2))
      assert.equal("ef", cs:receive(2))
      assert.equal(2, ss:send("abcdef", 3, 2))   -- nothing to send: start - 1
      -- nobody reads: the kernel buffers fill up and the deadline passes
      local big = string.rep("x", 8 * 1024 * 1024)
      ss:settimeout(0.3)
      local t0 = gettime()
      local n, err, last, kind = ss:send(big)
      assert.is_nil(n)
      assert.equal("timeout", err)
      assert.equal("timeout", kind)
      assert.truthy(last > 0 and last < #big, "last = " .. tostring(last))
      assert.truthy(elapsed(t0) < 3)
    end)
  end)

  describe("select and copas support", function()
    it("getfd is the socket's descriptor; dirty() is true while decrypted data waits", function()
      local cs, ss = track(stream_pair())
      assert.equal(cs.sock:getfd(), cs:getfd())
      assert.is_false(cs:dirty())
      ss:send("one\ntwo\n")
      cs:settimeout(2)
      assert.equal("one", cs:receive("*l"))
      assert.is_true(cs:dirty())
      -- socket.select reports a dirty stream readable at once
      local r = socket.select({ cs }, nil, 0)
      assert.equal(cs, r[1])
      assert.equal("two", cs:receive("*l"))
      assert.is_false(cs:dirty())
      cs:close()
      assert.equal(-1, cs:getfd())
      local r2, err, part = cs:receive()
      assert.same({ nil, "closed", "" }, { r2, err, part })
    end)

    it("runs many streams from one coroutine scheduler, the way copas drives LuaSec", function()
      -- Each task uses settimeout(0) and yields on "timeout" with the stream and want();
      -- the loop waits with socket.select on the stream objects (getfd/dirty).
      local sctx, cctx = helper.server_ctx(), helper.client_ctx()
      local tasks, results = {}, {}
      local function add(fn, ...)
        local co = coroutine.create(fn)
        tasks[#tasks + 1] = { co = co, args = { ... } }
      end
      local function io(stream, op, ...)
        for _ = 1, 1000 do
          local a, err, part = stream[op](stream, ...)
          -- "wantread" from a send (or "wantwrite" from a receive) waits the other way
          if a or (err ~= "timeout" and err ~= "wantread" and err ~= "wantwrite") then
            return a, err, part
          end
          coroutine.yield(stream, stream:want())
          if op == "receive" then
            local pat = ...
            return io(stream, op, pat, part)
          end
        end
        error("too many rounds")
      end
      local n = 5
      for i = 1, n do
        local c, s = tcp_pair()
        local cs = track(sslsocket.wrap(c, cctx, { hostname = "localhost" }))
        local ss = track(sslsocket.wrap(s, sctx))
        cs:settimeout(0)
        ss:settimeout(0)
        add(function()   -- server: echo one line upper-cased (handshake implicit)
          local line = assert(io(ss, "receive", "*l"))
          assert(io(ss, "send", line:upper() .. "\n"))
        end)
        add(function()   -- client
          assert(io(cs, "send", "player " .. i .. "\n"))
          results[i] = io(cs, "receive", "*l")
        end)
      end
      local deadline = gettime() + 10
      while gettime() < deadline do
        local rs, ws, alive = {}, {}, 0
        for _, t in ipairs(tasks) do
          if coroutine.status(t.co) ~= "dead" and not t.wait then
            local ok, stream, want = coroutine.resume(t.co, unpack and unpack(t.args) or table.unpack(t.args))
            assert(ok, stream)
            if coroutine.status(t.co) ~= "dead" then t.wait = { stream, want } end
          end
          if coroutine.status(t.co) ~= "dead" then
            alive = alive + 1
            local set = t.wait[2] == "write" and ws or rs
            set[#set + 1] = t.wait[1]
          end
        end
        if alive == 0 then break end
        local r, w = socket.select(rs, ws, 0.2)
        for _, t in ipairs(tasks) do
          if t.wait and (r[t.wait[1]] or w[t.wait[1]]) then t.wait = nil end
        end
      end
      for i = 1, n do assert.equal("PLAYER " .. i, results[i]) end
    end)
  end)

  describe("verification, peer and information", function()
    it("exposes the peer's certificate, chain, verification and info", function()
      local cs, ss = track(stream_pair())
      local cert = cs:getpeercertificate()
      assert.equal("CN=localhost", cert:subject())
      local chain = cs:getpeerchain()
      assert.equal(2, #chain)
      assert.equal("CN=sslctx Test Intermediate CA,O=sslctx", chain[2]:subject())
      assert.equal(chain[2], cs:getpeercertificate(2))
      assert.is_true((cs:getpeerverification()))
      local info = cs:info()
      assert.truthy(info.protocol:match("^TLSv1%.[23]$"))
      assert.is_string(info.cipher)
      assert.equal(info.protocol, cs:info("protocol"))
      assert.equal("localhost", ss:getsniname())
      assert.is_nil(ss:getpeercertificate())   -- the server asked for none
      assert.is_string(cs:getpeername())
      assert.is_string(cs:getsockname())
      assert.equal(1, cs:setoption("tcp-nodelay", true))
    end)

    it("getpeerverification gives LuaSec's shape: false, {[depth + 1] = {errors}}", function()
      local c, s = tcp_pair()
      local cctx = helper.client_ctx({ verify = "never" })
      local cs = track(sslsocket.wrap(c, cctx, { hostname = "wrong.example" }))
      local ss = track(sslsocket.wrap(s, helper.server_ctx()))
      assert.is_nil(pump(cs, ss))
      local ok, errs = cs:getpeerverification()
      assert.is_false(ok)
      assert.is_table(errs[1])
      assert.truthy(table.concat(errs[1], "; "):find("mismatch", 1, true))
    end)

    it("a failed verification is nil, message, 'verify'; the message carries OpenSSL's reason", function()
      local c, s = tcp_pair()
      local cs = track(sslsocket.wrap(c, helper.client_ctx(), { hostname = "wrong.example" }))
      local ss = track(sslsocket.wrap(s, helper.server_ctx()))
      local ce = pump(cs, ss)
      assert.equal("verify", ce[2])
      assert.truthy(ce[1]:find("certificate verify failed", 1, true), ce[1])
      -- the failure sticks
      local ok, msg, kind = cs:dohandshake()
      assert.same({ nil, "verify" }, { ok, kind })
      assert.equal(ce[1], msg)
      local r, err, part, k = cs:receive()
      assert.same({ nil, ce[1], "", "verify" }, { r, err, part, k })
    end)

    it("sni(name) before the handshake sets the name sent and checked", function()
      local c, s = tcp_pair()
      local cs = track(sslsocket.wrap(c, helper.client_ctx()))
      local ss = track(sslsocket.wrap(s, helper.server_ctx()))
      assert.is_true(cs:sni("good.example"))
      assert.is_nil(pump(cs, ss))
      assert.equal("good.example", ss:getsniname())
      assert.truthy(helper.raises(cs.sni, cs, "other.example"):find("already started", 1, true))
    end)

    it("a client certificate reaches the server side", function()
      local _, ss = track(stream_pair(
        { ctx = { certificate = helper.pki("client-chain.pem"), key = helper.pki("client.key") } },
        { ctx = { verify = "require" } }))
      assert.equal("CN=Test Client,O=sslctx", ss:getpeercertificate():subject())
      local ok, errs, verified = ss:getpeerverification()
      assert.is_true(ok)
      assert.is_nil(errs)
      assert.is_true(verified)
    end)
  end)

  describe("server-side sni(map [, strict])", function()
    local pki = helper.pki
    local function sni_pair(name, map_of, strict, sctx)
      local c, s = tcp_pair()
      local cctx = helper.client_ctx({ verify = "never" })
      local cs = track(sslsocket.wrap(c, cctx, { hostname = name }))
      local ss = track(sslsocket.wrap(s, sctx or helper.server_ctx()))
      if map_of then assert.is_true(ss:sni(map_of, strict)) end
      local ce, se = pump(cs, ss)
      return cs, ss, ce, se
    end
    local wrong = helper.server_ctx({ certificate = pki("wronghost-chain.pem"), key = pki("wronghost.key") })

    it("serves the mapped name's certificate; other names get the stream's own", function()
      local cs, ss = sni_pair("wrong.example", { ["wrong.example"] = wrong })
      assert.equal("CN=wrong.example", cs:getpeercertificate():subject())
      assert.equal("wrong.example", ss:getsniname())
      assert.equal(wrong, ss:connection():context())
      cs = sni_pair("other.example", { ["wrong.example"] = wrong })
      assert.equal("CN=localhost", cs:getpeercertificate():subject())
      -- a name sent in capitals finds its lowercase entry
      cs = sni_pair("WRONG.example", { ["wrong.example"] = wrong })
      assert.equal("CN=wrong.example", cs:getpeercertificate():subject())
    end)

    it("strict: a name not in the map, or none, fails the handshake on both sides", function()
      local _, _, ce, se = sni_pair("other.example", { ["wrong.example"] = wrong }, true)
      assert.truthy(ce and se, "both sides must fail")
      assert.equal("callback", se[2])
      assert.truthy(se[1]:find("no certificate for the server name 'other.example'", 1, true), se[1])
      assert.equal("ssl", ce[2])
      -- an IP literal is not sent as SNI: no name at all
      _, _, ce, se = sni_pair("127.0.0.1", { ["wrong.example"] = wrong }, true)
      assert.truthy(ce and se)
      assert.truthy(se[1]:find("(none sent)", 1, true), se[1])
    end)

    it("a map belongs to its stream: another stream on the same context keeps its certificate",
       function()
      local sctx = helper.server_ctx()
      local cs = sni_pair("wrong.example", { ["wrong.example"] = wrong }, false, sctx)
      assert.equal("CN=wrong.example", cs:getpeercertificate():subject())
      local cs2 = sni_pair("wrong.example", nil, false, sctx)   -- no map on this stream
      assert.equal("CN=localhost", cs2:getpeercertificate():subject())
    end)

    it("a map whose context callback was replaced afterwards fails the handshake, never " ..
       "silently", function()
      local sctx = helper.server_ctx()
      local c, s = tcp_pair()
      local cs = track(sslsocket.wrap(c, helper.client_ctx({ verify = "never" }), { hostname = "wrong.example" }))
      local ss = track(sslsocket.wrap(s, sctx))
      assert.is_true(ss:sni({ ["wrong.example"] = wrong }))
      sctx:set_servername_callback(function() return nil end)
      local _, se = pump(cs, ss)
      assert.same({ "sni(map): the context's servername callback was replaced; the map was not applied",
                    "callback" }, se)
    end)

    it("raises on a bad map, on a client context in it, after the handshake started", function()
      local c, s = tcp_pair()
      local ss = track(sslsocket.wrap(s, helper.server_ctx()))
      track(c)
      assert.truthy(helper.raises(ss.sni, ss, "name"):find("table of server names", 1, true))
      assert.truthy(helper.raises(ss.sni, ss, { [1] = wrong }):find("non-empty strings", 1, true))
      assert.truthy(helper.raises(ss.sni, ss, { x = "ctx" }):find("sslctx context expected", 1, true))
      assert.truthy(helper.raises(ss.sni, ss, { x = helper.client_ctx() })
                      :find("a server context expected", 1, true))
      local _, ss2 = track(stream_pair())
      assert.truthy(helper.raises(ss2.sni, ss2, { x = wrong }):find("already started", 1, true))
    end)
  end)

  describe("channel data, DANE and LuaSec's info fields", function()
    it("info() has LuaSec's fields; Finished and keying material agree across the streams", function()
      local cs, ss = track(stream_pair())
      local i = cs:info()
      for _, k in ipairs({ "protocol", "cipher", "key", "authentication", "encryption", "mac" }) do
        assert.is_string(i[k], k)
      end
      assert.is_number(i.bits)
      assert.is_number(i.algbits)
      assert.is_false(i.export)
      assert.equal(cs:getfinished(), ss:getpeerfinished())
      assert.equal(ss:getfinished(), cs:getpeerfinished())
      assert.equal(cs:exportkeyingmaterial("EXPORTER-x", 20, "c"), ss:exportkeyingmaterial("EXPORTER-x", 20, "c"))
      cs:close()
      assert.is_nil(cs:getfinished())
      assert.same({ nil, "closed" }, { cs:exportkeyingmaterial("EXPORTER-x", 20) })
    end)

    it("setdane/settlsa: a DANE-EE record authenticates a server no trusted CA issued", function()
      local key_der = helper.run("openssl pkey -in " .. helper.sh_quote(helper.pki("server.key")) ..
                                 " -pubout -outform DER | openssl dgst -sha256 -binary | od -An -v -tx1")
      local digest = (key_der:gsub("%s", ""):gsub("%x%x", function(h) return string.char(tonumber(h, 16)) end))
      local function try(data, name)
        local c, s = tcp_pair()
        local cctx = helper.client_ctx({ ca_file = helper.pki("other-ca.pem") })
        local cs = track(sslsocket.wrap(c, cctx))     -- no hostname: setdane gives one
        local ss = track(sslsocket.wrap(s, helper.server_ctx()))
        assert.is_true(cs:setdane(name or "localhost"))
        assert.is_true(cs:settlsa(3, 1, 1, data))
        return pump(cs, ss), cs, ss
      end
      local ce, cs, ss = try(digest)
      assert.is_nil(ce)
      assert.equal(3, (cs:connection():dane_tlsa()))
      assert.equal("localhost", ss:getsniname())
      ce = try(("\0"):rep(32))
      assert.equal("verify", ce[2])
      -- sni() after setdane keeps DANE (the connection is made again with it)
      local c, s = tcp_pair()
      local cs2 = track(sslsocket.wrap(c, helper.client_ctx({ ca_file = helper.pki("other-ca.pem") })))
      local ss2 = track(sslsocket.wrap(s, helper.server_ctx()))
      assert.is_true(cs2:setdane("localhost"))
      assert.is_true(cs2:settlsa(3, 1, 1, digest))
      assert.is_true(cs2:sni("good.example"))
      assert.is_nil(pump(cs2, ss2))
      assert.equal("good.example", ss2:getsniname())
      assert.equal(3, (cs2:connection():dane_tlsa()))
      assert.truthy(helper.raises(cs2.setdane, cs2, "x"):find("already", 1, true))
      assert.truthy(helper.raises(ss2.setdane, ss2, "x"):find("client streams", 1, true))
    end)

    it("wrap takes a copas-wrapped socket as its socket; tostring starts with SSL", function()
      local c, s = tcp_pair()
      local fake_copas = setmetatable({ socket = c }, { __tostring = function(self)
        return tostring(self.socket) .. " (copas wrapped)"
      end })
      local cs = track(sslsocket.wrap(fake_copas, helper.client_ctx(), { hostname = "localhost" }))
      local ss = track(sslsocket.wrap(s, helper.server_ctx()))
      assert.is_nil(pump(cs, ss))
      assert.equal(c:getfd(), cs:getfd())
      assert.equal("SSL", tostring(cs):sub(1, 3))
      -- any other table is not a socket
      assert.truthy(helper.raises(sslsocket.wrap, { socket = c }, helper.client_ctx(),
                                  { hostname = "localhost" }))
    end)
  end)

  describe("connect", function()
    it("connects, checks the host name, and returns nil, message, kind on failures", function()
      local proc = peers.module_server({ max = 3 })
      local ctx = helper.client_ctx()
      local s, msg = sslsocket.connect("127.0.0.1", proc.port, { ctx = ctx, timeout = 5 })
      assert.truthy(s, msg)
      local kind
      s:send("abc\n")
      assert.equal("cba", s:receive("*l"))
      s:close()
      -- hostname defaults to host; an explicit one that the certificate lacks fails
      s, msg, kind = sslsocket.connect("127.0.0.1", proc.port,
                                       { ctx = ctx, hostname = "wrong.example", timeout = 5 })
      assert.is_nil(s)
      assert.equal("verify", kind)
      assert.truthy(msg:find("hostname mismatch", 1, true), msg)
      -- the default context trusts the system's roots, not the test CA
      s, msg, kind = sslsocket.connect("localhost", proc.port, { timeout = 5 })
      assert.is_nil(s)
      assert.equal("verify", kind, msg)
      peers.wait_exit(proc, 5)
      peers.stop(proc)
    end)

    it("connects over IPv6 loopback, checking ::1 as an IP", function()
      local probe = socket.bind("::1", 0)
      if not probe then
        pending("no IPv6 loopback here")
        return
      end
      probe:close()
      local proc = peers.module_server({ host = "::1", max = 1 })
      finally(function() peers.stop(proc) end)
      local s, msg, kind = sslsocket.connect("::1", proc.port, { ctx = helper.client_ctx(), timeout = 5 })
      assert.truthy(s, tostring(msg) .. " " .. tostring(kind))
      s:send("v6\n")
      assert.equal("6v", s:receive("*l"))
      assert.is_true((s:getpeerverification()))
      s:close()
    end)

    it("a refused connection and a silent peer are nil, message, kind", function()
      local port = peers.free_port()
      local s, msg, kind = sslsocket.connect("127.0.0.1", port, { ctx = helper.client_ctx(), timeout = 2 })
      assert.is_nil(s)
      assert.equal("connection refused", msg)
      assert.equal("syscall", kind)
      -- a listener that never speaks TLS: the handshake times out
      local mute = assert(socket.bind("127.0.0.1", 0))
      local _, mport = mute:getsockname()
      local t0 = gettime()
      s, msg, kind = sslsocket.connect("127.0.0.1", mport, { ctx = helper.client_ctx(), timeout = 0.3 })
      assert.same({ nil, "timeout", "timeout" }, { s, msg, kind })
      assert.truthy(elapsed(t0) < 3)
      mute:close()
    end)

    for _, tls in ipairs({ "1.2", "1.3" }) do
      it("reuses the session on a second connect to the module's server (TLS " .. tls .. ")", function()
        local proc = peers.module_server({ max = 4, tls = tls })
        local ctx = helper.client_ctx()
        local function once(opts)
          local o = { ctx = ctx, timeout = 5 }
          for k, v in pairs(opts or {}) do o[k] = v end
          local s, msg = sslsocket.connect("localhost", proc.port, o)
          assert.truthy(s, msg)
          s:send("ping\n")
          assert.equal("gnip", s:receive("*l"))
          local reused = s:session_reused()
          assert.equal("TLSv" .. tls, s:info("protocol"))
          s:close()
          return reused
        end
        assert.is_false(once())
        assert.is_true(once())
        assert.is_false(once({ reuse_session = false }))
        -- another context: its own cache, a full handshake
        assert.is_false(once({ ctx = helper.client_ctx() }))
        local results = peers.wait_results(proc, 4)
        assert.equal("false", results[1].reused)
        assert.equal("true", results[2].reused)
        assert.equal("false", results[3].reused)
        peers.stop(proc)
      end)
    end

    it("reuses the session against openssl s_server", function()
      local proc = peers.s_server({ naccept = 2 })
      local ctx = helper.client_ctx()
      local reused = {}
      for i = 1, 2 do
        local s, msg = sslsocket.connect("localhost", proc.port, { ctx = ctx, timeout = 5 })
        assert.truthy(s, msg)
        s:send("hello\n")
        assert.equal("olleh", s:receive("*l"))
        reused[i] = s:session_reused()
        s:close()
      end
      assert.same({ false, true }, reused)
      peers.stop(proc)
    end)
  end)
end)
