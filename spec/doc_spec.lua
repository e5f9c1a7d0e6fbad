-- The documentation against the module, at run time:
--   * every name the module exports (module functions and constants, every method of every
--     class, the Lua submodules' functions and methods) has its entry in doc/reference.md,
--     under its class's section;
--   * the option names and keywords the reference lists are the ones the module accepts;
--   * every code block marked `lua run` in doc/*.md and README.md runs without error (with the
--     test PKI's directory as the current directory), and the examples the docs point to
--     (examples/doc_*.lua, examples/readme_example.lua) run;
--   * relative links between the docs point at files and headings that exist.

local helper = require "helper"
local sslctx = require "sslctx"

local INTERP = jit and "luajit" or ("lua" .. _VERSION:match("%d+%.%d+"))
local q = helper.sh_quote

local function read_file(path)
  local f = assert(io.open(path, "rb"), "cannot open " .. path)
  local s = f:read("*a")
  f:close()
  return s
end

local ROOT = (helper.run("pwd"):gsub("%s+$", ""))
local REFERENCE = read_file("doc/reference.md")

-- Files matching a shell glob (none: an empty list).
local function glob(pattern)
  local list = {}
  local p = assert(io.popen("ls -d " .. pattern .. " 2>/dev/null"))
  for name in p:lines() do list[#list + 1] = name end
  p:close()
  return list
end

local function doc_files()
  return glob("doc/*.md README.md")
end

-- ---------------------------------------------------------------------------
-- The reference, split into its "## " sections.

local function sections(text)
  local result, current = {}, nil
  for line in (text .. "\n"):gmatch("([^\n]*)\n") do
    if line:match("^## ") then
      current = { title = line, headings = {}, body = {} }
      result[#result + 1] = current
    elseif current then
      if line:match("^###+ ") then current.headings[#current.headings + 1] = line end
      current.body[#current.body + 1] = line
    end
  end
  for _, s in ipairs(result) do s.body = table.concat(s.body, "\n") end
  return result
end

local SECTIONS = sections(REFERENCE)

local function section_for(tag)
  for _, s in ipairs(SECTIONS) do
    if s.title:find("`" .. tag .. "`", 1, true) then return s end
  end
  error("doc/reference.md has no section titled with `" .. tag .. "`")
end

-- Names with a heading of their own: "### ctx:set_alpn(list)", "### sslctx.RETRY",
-- "### stream:getpeername(), stream:getsockname(), ...".
local function heading_names(section)
  local names = {}
  for _, h in ipairs(section.headings) do
    for name in h:gmatch("[%w_]+[:%.]([%w_]+)") do names[name] = true end
  end
  return names
end

-- Names mentioned in backquotes anywhere in the section: `name` or `name(...)`.
local function mentioned_names(section)
  local names = heading_names(section)
  for inner in section.body:gmatch("`([^`]+)`") do
    local name = inner:match("^[%w_]+[:%.]([%w_]+)") or inner:match("^([%w_]+)")
    if name then names[name] = true end
  end
  return names
end

local function method_names(class_table)
  local names = {}
  for k, v in pairs(class_table) do
    if type(k) == "string" and type(v) == "function" and not k:match("^_") then
      names[#names + 1] = k
    end
  end
  table.sort(names)
  return names
end

local function missing(names, documented)
  local m = {}
  for _, n in ipairs(names) do
    if not documented[n] then m[#m + 1] = n end
  end
  return m
end

local function assert_documented(what, names, documented)
  local m = missing(names, documented)
  assert(#m == 0, what .. ": not documented in doc/reference.md: " .. table.concat(m, ", "))
end

-- ---------------------------------------------------------------------------

describe("doc/reference.md documents every exported name", function()
  it("module functions and constants, under the module's section", function()
    local names = {}
    for k in pairs(sslctx) do
      if type(k) == "string" and not k:match("^_") then names[#names + 1] = k end
    end
    table.sort(names)
    assert.truthy(#names >= 8)
    local section = section_for("sslctx")
    assert_documented("sslctx", names, heading_names(section))
    for k in pairs(sslctx.c_callbacks) do
      assert.truthy(section.body:find("c_callbacks." .. k, 1, true),
                    "sslctx.c_callbacks." .. k .. " not documented")
    end
  end)

  local CLASSES = { "sslctx.context", "sslctx.connection", "sslctx.store", "sslctx.x509",
                    "sslctx.pkey", "sslctx.crl", "sslctx.session" }
  for _, class in ipairs(CLASSES) do
    it("every method of " .. class .. ", under its section", function()
      local mt = debug.getregistry()[class]
      assert(type(mt) == "table" and type(mt.__index) == "table", class .. ": no metatable")
      local names = method_names(mt.__index)
      assert.truthy(#names > 0)
      assert_documented(class, names, heading_names(section_for(class)))
    end)
  end

  it("no class was left out of the list above", function()
    local known = {}
    for _, c in ipairs(CLASSES) do known[c] = true end
    for k, v in pairs(debug.getregistry()) do
      if type(k) == "string" and k:match("^sslctx%.") and type(v) == "table" and
         type(v.__index) == "table" and v.__name == k and #method_names(v.__index) > 0 then
        assert.truthy(known[k], "class " .. k .. " is not checked by doc_spec")
      end
    end
  end)

  it("sslctx.socket: functions and stream methods", function()
    local M = require "sslctx.socket"
    local section = section_for("sslctx.socket")
    local documented = heading_names(section)
    assert_documented("sslctx.socket", method_names(M), documented)
    assert_documented("sslctx.socket stream", method_names(M.Stream), documented)
  end)

  it("sslctx.luasec: functions, connection and certificate methods", function()
    local M = require "sslctx.luasec"
    local section = section_for("sslctx.luasec")
    assert_documented("sslctx.luasec", method_names(M), heading_names(section))
    assert.truthy(heading_names(section).config)
    local mentioned = mentioned_names(section)
    assert_documented("sslctx.luasec connection", method_names(M.Conn), mentioned)
    assert_documented("sslctx.luasec certificate", method_names(M.Cert), mentioned)
  end)

  it("sslctx.ngx: functions and stream methods (here or in doc/openresty.md)", function()
    local ok, M = pcall(require, "sslctx.ngx")
    if not ok then return pending("sslctx.ngx does not load here: " .. tostring(M)) end
    local mentioned = mentioned_names(section_for("sslctx.ngx"))
    local openresty = read_file("doc/openresty.md")
    local function doc(names)
      local m = {}
      for _, n in ipairs(names) do
        if not mentioned[n] and not openresty:find(n, 1, true) then m[#m + 1] = n end
      end
      return m
    end
    local names = method_names(M)
    for k, v in pairs(M) do
      if type(k) == "string" and type(v) ~= "function" and type(v) ~= "table" then
        names[#names + 1] = k
      end
    end
    local m = doc(names)
    assert(#m == 0, "sslctx.ngx: not documented: " .. table.concat(m, ", "))
    m = doc(method_names(M.Stream))
    assert(#m == 0, "sslctx.ngx stream: not documented: " .. table.concat(m, ", "))
  end)
end)

-- ---------------------------------------------------------------------------

-- The first column of the tables of a section: "| `name` | ..." (several names per cell).
local function table_names(section)
  local names = {}
  for cell in section.body:gmatch("\n| ([^|]+) |") do
    for name in cell:gmatch("`([%w_]+)`") do names[#names + 1] = name end
  end
  return names
end

-- The backquoted names of the list lines (lines that start with a backquote) under a "### "
-- heading.
local function listed_after(heading)
  local start = REFERENCE:find("\n" .. heading .. "\n", 1, true)
  assert(start, "doc/reference.md: no heading " .. heading)
  local rest = REFERENCE:sub(start + #heading + 2)
  local stop = rest:find("\n#") or #rest
  local names = {}
  for line in rest:sub(1, stop):gmatch("[^\n]+") do
    if line:match("^`") then
      for name in line:gmatch("`([%w_.]+)`") do names[#names + 1] = name end
    end
  end
  assert(#names > 0, "no list under " .. heading)
  return names
end

-- A value no option accepts, so that a known option raises about its value and an unknown
-- one about its name.
local ODD = setmetatable({}, { __tostring = function() return "odd" end })

describe("doc/reference.md lists the options and keywords the module accepts", function()
  local function section_of_heading(prefix)
    local start = REFERENCE:find("\n### " .. prefix, 1, true)
    assert(start, "no heading " .. prefix)
    local stop = REFERENCE:find("\n##", start + 1, true) or #REFERENCE
    return { body = REFERENCE:sub(start, stop) }
  end

  it("sslctx.new options", function()
    local names = table_names(section_of_heading("sslctx.new("))
    assert.truthy(#names >= 20)
    for _, name in ipairs(names) do
      local ok, err = pcall(sslctx.new, { [name] = ODD })
      assert(ok or not tostring(err):find("unknown option", 1, true),
             "sslctx.new does not know the documented option '" .. name .. "'")
    end
  end)

  it("new_connection options", function()
    local names = table_names(section_of_heading("ctx:new_connection("))
    assert.truthy(#names >= 8)
    local ctx = sslctx.new{ side = "server" }
    for _, name in ipairs(names) do
      local ok, err = pcall(ctx.new_connection, ctx, { [name] = ODD })
      assert(ok or not tostring(err):find("unknown option", 1, true),
             "new_connection does not know the documented option '" .. name .. "'")
    end
  end)

  it("verification parameters", function()
    local names = table_names(section_of_heading("ctx:set_verify_params("))
    assert.same({ "time", "flags", "purpose", "depth", "host", "ip" }, names)
    local ctx = sslctx.new{}
    for _, name in ipairs(names) do
      local ok, err = pcall(ctx.set_verify_params, ctx, { [name] = ODD })
      assert(ok or not tostring(err):find("unknown verification parameter", 1, true),
             "set_verify_params does not know '" .. name .. "': " .. tostring(err))
    end
  end)

  it("option keywords: each one is accepted, and get_options names only documented ones", function()
    local doc = listed_after("### Option keywords")
    local set = {}
    for _, k in ipairs(doc) do set[k] = true end
    local ctx = sslctx.new{}
    for _, k in ipairs(doc) do
      assert(pcall(ctx.set_options, ctx, { k }), "set_options refuses documented '" .. k .. "'")
      assert(pcall(ctx.clear_options, ctx, { k }))
    end
    for _, k in ipairs(ctx:set_options(doc)) do
      assert.truthy(set[k], "get_options names '" .. k .. "', which is not documented")
    end
    assert.has_error(function() ctx:set_options{ "no_such_option" } end)
  end)

  it("mode keywords, verification flags and protocol versions", function()
    local ctx = sslctx.new{ side = "server" }
    for _, k in ipairs(listed_after("### Mode keywords")) do
      local kw = k == "verify_peer" and { k } or { "verify_peer", k }
      ctx:set_verification_mode("server", kw)
    end
    for _, k in ipairs(listed_after("### Verification flags")) do
      ctx:set_verify_params{ flags = { k } }
    end
    for _, v in ipairs(listed_after("### Protocol versions")) do
      ctx:set_min_version(v)
      ctx:set_max_version(v)
    end
    for _, preset in ipairs({ "never", "always", "once", "require", "require_once",
                              "post_handshake", "require_post_handshake" }) do
      assert.truthy(REFERENCE:find("`\"" .. preset .. "\"`", 1, true), preset)
      ctx:set_verification_mode("server", preset)
    end
  end)

  it("openssl_version items", function()
    local start = REFERENCE:find("### sslctx.openssl_version", 1, true)
    local para = REFERENCE:sub(start, REFERENCE:find("\n### ", start + 5, true))
    local count = 0
    for item in para:gmatch('`"([%w_]+)"`') do
      assert.truthy(sslctx.openssl_version(item), item)
      count = count + 1
    end
    assert.truthy(count >= 8)
  end)

  it("error kinds: the table names every kind of the contract", function()
    for _, kind in ipairs({ "want_read", "want_write", "want_retry_verify", "verify", "callback",
                            "closed", "eof", "ssl", "syscall", "file", "key", "timeout" }) do
      assert.truthy(REFERENCE:find("`" .. kind .. "`", 1, true), kind)
    end
  end)
end)

-- ---------------------------------------------------------------------------
-- Runnable code.

local function lua_env(cwd_is_pki)
  local lpath = ROOT .. "/lua/?.lua;" .. ROOT .. "/lua/?/init.lua;;"
  local cpath = ROOT .. "/build/" .. INTERP .. "/?.so;;"
  local prefix = "env -u LUA_PATH_5_2 -u LUA_PATH_5_3 -u LUA_PATH_5_4 -u LUA_CPATH_5_2 " ..
                 "-u LUA_CPATH_5_3 -u LUA_CPATH_5_4 LUA_PATH=" .. q(lpath) .. " LUA_CPATH=" ..
                 q(cpath) .. " SSLCTX_PKI_DIR=" .. q(helper.ensure_pki()) .. " "
  if cwd_is_pki then prefix = "cd " .. q(helper.ensure_pki()) .. " && " .. prefix end
  return prefix
end

-- Runs a file; returns ok, output.
local function run_lua(path, cwd_is_pki)
  local out = helper.run("(" .. lua_env(cwd_is_pki) .. "timeout 120 " .. INTERP .. " " .. q(path) ..
                         " 2>&1; echo \"exit status $?\")")
  local status = tonumber(out:match("exit status (%d+)%s*$"))
  return status == 0, out
end

-- ```lua run blocks of a Markdown file: list of {line = n, code = text}.
local function runnable_blocks(text)
  local blocks, n, inside, code, start = {}, 0, false, nil, 0
  for line in (text .. "\n"):gmatch("([^\n]*)\n") do
    n = n + 1
    if not inside and line:match("^```lua run%s*$") then
      inside, code, start = true, {}, n
    elseif inside and line:match("^```%s*$") then
      blocks[#blocks + 1] = { line = start, code = table.concat(code, "\n") .. "\n" }
      inside = false
    elseif inside then
      code[#code + 1] = line
    end
  end
  return blocks
end

describe("the documentation's code runs", function()
  it("every `lua run` block of doc/*.md and README.md", function()
    local total = 0
    for _, file in ipairs(doc_files()) do
      for _, b in ipairs(runnable_blocks(read_file(file))) do
        total = total + 1
        local tmp = os.tmpname()
        local f = assert(io.open(tmp, "w"))
        f:write(b.code)
        f:close()
        local ok, out = run_lua(tmp, true)
        os.remove(tmp)
        assert(ok, ("%s:%d: the block failed under %s:\n%s"):format(file, b.line, INTERP, out))
      end
    end
    assert.truthy(total >= 10, "only " .. total .. " runnable blocks found")
  end)

  -- Examples run from the repository root.  doc_luasec_program.lua is a client/server pair
  -- that spec/luasec_spec.lua runs.
  local SKIP = { ["examples/doc_luasec_program.lua"] = true }
  local examples = {}
  for _, name in ipairs(glob("examples/doc_*.lua examples/readme_example.lua")) do
    if not SKIP[name] then examples[#examples + 1] = name end
  end
  for _, file in ipairs(examples) do
    it(file .. " runs", function()
      local ok, out = run_lua(file, false)
      assert(ok, file .. " failed under " .. INTERP .. ":\n" .. out)
    end)
  end

  it("the README's example is examples/readme_example.lua", function()
    local readme = read_file("README.md")
    local example = read_file("examples/readme_example.lua")
    assert.truthy(readme:find(example, 1, true),
                  "README.md must contain examples/readme_example.lua verbatim")
  end)
end)

-- ---------------------------------------------------------------------------
-- Links.

-- GitHub's heading anchors: lowercase, punctuation dropped, spaces to hyphens, duplicates
-- numbered.
local function anchors(text)
  local set, seen, fenced = {}, {}, false
  for line in (text .. "\n"):gmatch("([^\n]*)\n") do
    if line:match("^```") then fenced = not fenced end
    local title = not fenced and line:match("^#+%s+(.-)%s*$")
    if title then
      local a = title:lower():gsub("[^%w%s_%-]", ""):gsub("%s", "-")
      local n = seen[a]
      seen[a] = (n or 0) + 1
      if n then a = a .. "-" .. n end
      set[a] = true
    end
  end
  return set
end

-- Written by other engineers; until they land, links to them are not checked.
local NOT_YET = { ["doc/hardening.md"] = true, ["bench/RESULTS.md"] = true }

describe("links between the docs", function()
  it("point at files and headings that exist", function()
    local problems = {}
    for _, file in ipairs(doc_files()) do
      local dir = file:match("^(.*)/") or "."
      local text = read_file(file)
      local here = anchors(text)
      for target in text:gmatch("%]%(([^)%s]+)%)") do
        if not target:match("^%a+:") then   -- not http:, mailto:, ...
          local path, anchor = target:match("^([^#]*)#?(.*)$")
          local full = path == "" and file or (dir .. "/" .. path)
          local exists = path == "" or helper.file_exists(full) or
                         helper.exec_ok("test -d " .. q(full))
          local not_yet = NOT_YET[(full:gsub("^%./", ""):gsub("^doc/%.%./", ""))]
          if not exists and not not_yet then
            problems[#problems + 1] = file .. ": missing " .. target
          elseif exists and anchor ~= "" and full:match("%.md$") then
            local set = path == "" and here or anchors(read_file(full))
            if not set[anchor] then problems[#problems + 1] = file .. ": no heading for " .. target end
          end
        end
      end
    end
    assert(#problems == 0, table.concat(problems, "\n"))
  end)
end)
