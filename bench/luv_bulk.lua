-- bench/luv_bulk.lua: the luv side of the c10k workload's bulk row (bench/c10k.sh): a server
-- on sslctx.luv that speaks what bench/c10k_server.c speaks ("WELCOME <CN>", PING -> PONG,
-- "BULK n" -> n MiB), writing 64 KiB at a time while the stream's write queue stays under
-- 1 MiB (what an application does for backpressure).
--
--   lua5.4 bench/luv_bulk.lua --port N --cert F --key F --cafile F [--max-seconds S]

local uv = require "luv"
local sslctx = require "sslctx"
local tls = require "sslctx.luv"

local o = { max_seconds = 120 }
for i = 1, #arg, 2 do o[arg[i]:gsub("^%-%-", ""):gsub("-", "_")] = arg[i + 1] end
local ctx = assert(sslctx.new({ side = "server", certificate = o.cert, key = o.key,
                                ca_file = o.cafile, verify = "require" }))
local chunk = ("x"):rep(65536)
local QUEUE = 1048576

local function serve(s)
  local left, buf = 0, ""
  local function fill()
    while left > 0 and s:get_write_queue_size() < QUEUE do
      local piece = left >= #chunk and chunk or chunk:sub(1, left)
      left = left - #piece
      -- the callback of the piece that drains the queue below the mark refills it
      s:write(piece, function(err) if not err and left > 0 then fill() end end)
    end
  end
  s:handshake(function(err)
    if err then return s:close() end
    local cert = s:connection():peer_certificate()
    s:write("WELCOME " .. (cert:subject():match("CN=([^,]+)") or "") .. "\n")
    s:read_start(function(e, data)
      if e or not data then return s:close() end
      buf = buf .. data
      for line in buf:gmatch("([^\n]*)\n") do
        if line == "PING" then s:write("PONG\n")
        elseif line:match("^BULK %d+$") then
          left = tonumber(line:match("%d+")) * 1048576
          fill()
        end
      end
      buf = buf:match("[^\n]*$")
    end)
  end)
end

local server = uv.new_tcp()
assert(server:bind("127.0.0.1", tonumber(o.port)))
assert(server:listen(128, function()
  local tcp = uv.new_tcp()
  server:accept(tcp)
  tcp:nodelay(true)
  serve(tls.wrap(tcp, ctx))
end))
print("listening on 127.0.0.1:" .. server:getsockname().port)
io.stdout:flush()
local t = uv.new_timer()
t:start(math.floor(tonumber(o.max_seconds) * 1000), 0, function() os.exit(0) end)
t:unref()
uv.run()
