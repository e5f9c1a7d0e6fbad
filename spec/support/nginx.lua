-- spec/support/nginx.lua: start and stop a throwaway nginx (with the lua module) for the
-- specs, under a temporary prefix, on 127.0.0.1 ports picked free.
--
--   nginx.available()                 -> true | nil, why (nginx, ndk + lua modules, LuaJIT build)
--   nginx.load_modules()              -> the load_module lines (ndk first) | nil, why
--   nginx.luajit_cpath(root)          -> directory with sslctx/core.so for LuaJIT (built if
--                                        needed; SSLCTX_NGINX_CPATH overrides) | nil, why
--   nginx.user_line()                 -> "user root;" under root, else ""
--   nginx.free_ports(n)               -> { port, ... } (127.0.0.1, distinct, free right now)
--   nginx.render(text, vars)          ${NAME} -> vars.NAME (unknown names raise)
--   nginx.start{ conf = text, certs = { name = path, ... }, files = { rel = text },
--                links = { rel = target }, ports = { port, ... } }
--                                     -> server (raises with the error log on failure)
--   server.prefix, server.master      the temp prefix ("/tmp/x/"), the master's pid
--   server:workers()                  -> { pid, ... } (children of the master, from /proc)
--   nginx.children(pid)               -> { pid, ... } the children of any process (/proc)
--   server:reload([timeout])          HUP the master, wait until the old workers are gone
--   server:log()                      -> the error log's text
--   server:alive()                    -> the master still runs
--   server:stop()                     QUIT the master (KILL that pid after 5 s), remove the prefix
--
-- Every wait is bounded.  Processes are signalled by pid only.  Runs on Lua 5.1-5.4/LuaJIT.
local helper = require "helper"

local M = {}

local q = helper.sh_quote
local run = helper.run
local exec_ok = helper.exec_ok

local has_socket, socket = pcall(require, "socket")

function M.sleep(s)
  if has_socket and socket.sleep then
    socket.sleep(s)
  else
    os.execute("sleep " .. string.format("%.3f", s))
  end
end

function M.now()
  if has_socket and socket.gettime then return socket.gettime() end
  return os.time()
end

local function trim(s)
  return (s:gsub("^%s+", ""):gsub("%s+$", ""))
end

M.MODULE_DIRS = { "/usr/lib/nginx/modules", "/usr/share/nginx/modules", "/usr/local/nginx/modules" }

local function find_module(name)
  for _, dir in ipairs(M.MODULE_DIRS) do
    if helper.file_exists(dir .. "/" .. name) then return dir .. "/" .. name end
  end
  return nil
end

function M.nginx_binary()
  local path = trim(run("command -v nginx || ls /usr/sbin/nginx 2>/dev/null"))
  if path == "" then return nil end
  return path:match("[^\n]+")
end

-- The load_module lines for the lua module (ndk first), or nil, why.
function M.load_modules()
  local ndk = find_module("ndk_http_module.so")
  local lua = find_module("ngx_http_lua_module.so")
  if not lua then return nil, "ngx_http_lua_module.so not found (libnginx-mod-http-lua)" end
  local lines = {}
  if ndk then lines[#lines + 1] = "load_module " .. ndk .. ";" end
  lines[#lines + 1] = "load_module " .. lua .. ";"
  return table.concat(lines, "\n")
end

-- The directory for nginx's lua_package_cpath holding sslctx/core.so: the LuaJIT build
-- (nginx's lua module runs LuaJIT), made if missing or stale.  SSLCTX_NGINX_CPATH names
-- another directory (a build of the module made some other way) instead.
function M.luajit_cpath(root)
  local dir = os.getenv("SSLCTX_NGINX_CPATH")
  if dir and dir ~= "" then
    if not helper.file_exists(dir .. "/sslctx/core.so") then
      return nil, "SSLCTX_NGINX_CPATH: no " .. dir .. "/sslctx/core.so"
    end
    return dir
  end
  local so = "build/luajit/sslctx/core.so"
  local out = run("make --no-print-directory " .. q(so))
  if not helper.file_exists(so) then return nil, "cannot build " .. so .. ":\n" .. out end
  return root .. "/build/luajit"
end

local cached_availability
function M.available()
  if cached_availability then return cached_availability[1], cached_availability[2] end
  local ok, why = true, nil
  if not M.nginx_binary() then
    ok, why = nil, "nginx is not installed"
  else
    local lm, err = M.load_modules()
    if not lm then
      ok, why = nil, err
    elseif not exec_ok("pkg-config --exists luajit 2>/dev/null") and
           not helper.file_exists("build/luajit/sslctx/core.so") then
      ok, why = nil, "no LuaJIT development files (libluajit2-5.1-dev) to build the module nginx loads"
    end
  end
  cached_availability = { ok, why }
  return ok, why
end

-- Ports: the kernel hands out free ones (bind to port 0), all distinct.
function M.free_ports(n)
  local ports, seen = {}, {}
  if has_socket then
    local held = {}
    for _ = 1, n do
      local s = assert(socket.bind("127.0.0.1", 0))
      local _, port = s:getsockname()
      held[#held + 1] = s
      ports[#ports + 1] = tonumber(port)
    end
    for _, s in ipairs(held) do s:close() end
    return ports
  end
  -- No LuaSocket: random ports in 20000-59999 that `ss` does not list as listening.
  local listening = run("ss -Hltn 2>/dev/null")
  math.randomseed(os.time() + tonumber(tostring({}):match("0x(%x+)") or "0", 16) % 100000)
  for _ = 1, 1000 do
    if #ports == n then break end
    local p = math.random(20000, 59999)
    if not seen[p] and not listening:find(":" .. p .. " ", 1, true) then
      seen[p] = true
      ports[#ports + 1] = p
    end
  end
  assert(#ports == n, "no free ports found")
  return ports
end

function M.render(text, vars)
  return (text:gsub("%${([%w_]+)}", function(name)
    local v = vars[name]
    if v == nil then error("nginx.render: no value for ${" .. name .. "}", 0) end
    return tostring(v)
  end))
end

local write_file, read_file = helper.write_file, helper.read_file
M.read_file = read_file

local function pid_alive(pid)
  return pid ~= nil and exec_ok("kill -0 " .. tonumber(pid) .. " 2>/dev/null")
end
M.pid_alive = pid_alive

local Server = {}
Server.__index = Server

function Server:log()
  return read_file(self.prefix .. "logs/error.log") or ""
end

function Server:alive()
  return pid_alive(self.master)
end

-- The children of `pid`, from /proc (no `ps`: procps is not on a minimal system).  A task's
-- /proc/<pid>/task/<pid>/children lists them where the kernel has it; otherwise each
-- /proc/<n>/stat is read for its parent pid (the 4th field, after the parenthesised name,
-- which may itself hold spaces and parentheses).
local function children(pid)
  pid = tonumber(pid)
  local pids = {}
  local list = read_file("/proc/" .. pid .. "/task/" .. pid .. "/children")
  if list then
    for child in list:gmatch("%d+") do pids[#pids + 1] = tonumber(child) end
    return pids
  end
  for entry in run("ls /proc"):gmatch("%d+") do
    local stat = read_file("/proc/" .. entry .. "/stat")
    local ppid = stat and stat:match("%) %S+ (%d+)")
    if tonumber(ppid) == pid then pids[#pids + 1] = tonumber(entry) end
  end
  return pids
end
M.children = children

function Server:workers()
  local pids = children(self.master)
  table.sort(pids)
  return pids
end

-- HUP: the master re-reads the configuration (a new Lua VM), starts new workers and lets
-- the old ones finish.  Waits until no old worker is left and a new one runs.
function Server:reload(timeout)
  local old = {}
  for _, pid in ipairs(self:workers()) do old[pid] = true end
  assert(exec_ok("kill -HUP " .. tonumber(self.master)), "kill -HUP failed")
  local deadline = M.now() + (timeout or 10)
  while M.now() < deadline do
    local fresh, stale = 0, 0
    for _, pid in ipairs(self:workers()) do
      if old[pid] then stale = stale + 1 else fresh = fresh + 1 end
    end
    if stale == 0 and fresh > 0 then return true end
    M.sleep(0.02)
  end
  error("nginx reload: old workers still running after " .. (timeout or 10) .. " s\n" .. self:log())
end

function Server:stop()
  if self.stopped then return end
  self.stopped = true
  if pid_alive(self.master) then
    exec_ok("kill -QUIT " .. tonumber(self.master))
    local deadline = M.now() + 5
    while pid_alive(self.master) and M.now() < deadline do M.sleep(0.02) end
    if pid_alive(self.master) then exec_ok("kill -KILL " .. tonumber(self.master)) end
  end
  if not os.getenv("SSLCTX_KEEP_NGINX") then
    exec_ok("rm -rf " .. q(self.prefix))
  end
end

local function wait_for_ports(ports, deadline)
  if not has_socket then M.sleep(0.3) return true end
  for _, port in ipairs(ports) do
    local up = false
    while not up and M.now() < deadline do
      local c = socket.tcp()
      c:settimeout(0.2)
      if c:connect("127.0.0.1", port) then up = true end
      c:close()
      if not up then M.sleep(0.02) end
    end
    if not up then return false end
  end
  return true
end

-- opts.conf: the configuration text (rendered); opts.certs: { dest_name = source_path };
-- opts.files: { relative_path = text } written into the prefix; opts.links: { relative_path
-- = target } symlinks made there; opts.ports: ports to wait for.
function M.start(opts)
  local prefix = trim(run("mktemp -d /tmp/sslctx-nginx.XXXXXX"))
  assert(prefix:match("^/tmp/sslctx%-nginx%.%w+$"), "mktemp failed: " .. prefix)
  prefix = prefix .. "/"
  local self = setmetatable({ prefix = prefix }, Server)
  assert(exec_ok("mkdir -p " .. q(prefix .. "conf/certs") .. " " .. q(prefix .. "logs") .. " " ..
                 q(prefix .. "tmp")))
  for dest, src in pairs(opts.certs or {}) do
    local data = assert(read_file(src), "cannot read " .. src)
    write_file(prefix .. "conf/certs/" .. dest, data)
  end
  for rel, text in pairs(opts.files or {}) do write_file(prefix .. rel, text) end
  for rel, target in pairs(opts.links or {}) do
    assert(exec_ok("ln -s " .. q(target) .. " " .. q(prefix .. rel)), "cannot link " .. rel)
  end
  write_file(prefix .. "conf/nginx.conf", opts.conf)
  local out = run(q(M.nginx_binary()) .. " -p " .. q(prefix) .. " -c conf/nginx.conf -e logs/error.log")
  local deadline = M.now() + 5
  local pid
  while M.now() < deadline do
    pid = tonumber(read_file(prefix .. "logs/nginx.pid") or "")
    if pid then break end
    M.sleep(0.02)
  end
  if not pid then
    local log = self:log()
    exec_ok("rm -rf " .. q(prefix))
    error("nginx did not start:\n" .. out .. "\n" .. log, 0)
  end
  self.master = pid
  if not wait_for_ports(opts.ports or {}, deadline) then
    local log = self:log()
    self:stop()
    error("nginx started but its ports do not answer:\n" .. log, 0)
  end
  return self
end

-- The user line: a root master needs a user for its workers (this one, so that they can
-- read the prefix and the repository).
function M.user_line()
  if trim(run("id -u")) == "0" then return "user root;" end
  return ""
end

return M
