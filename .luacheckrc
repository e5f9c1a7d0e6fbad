-- luacheck configuration for sslctx (Debian's lua-check 1.1).
-- Run: sh scripts/luacheck.sh   (checks lua/, spec/, examples/, bench/)
--
-- Deliberately no blanket ignores: every warning luacheck prints is either fixed or
-- narrowed below with the reason next to it.

-- The code runs on Lua 5.1-5.4 and LuaJIT: allow the union of their standard globals
-- (setfenv, unpack, table.unpack, jit, bit32, ...), the way the compat code reads them.
std = "max"

-- Our own width is 100-ish; specs carry long expected messages and descriptions.
max_line_length = 120

-- An unused implicit or explicit `self` of a method is an idiom (a method that needs no
-- state keeps the method shape), not a mistake.
self = false

-- build/ holds generated trees (luarocks make, PKI); never linted.
exclude_files = { "build/**", "lua_modules/**", ".luarocks/**" }

-- busted globals in the specs and in their helpers.
files["spec/**/*.lua"] = { std = "+busted" }
files["spec/helper.lua"] = { std = "+busted" }

-- Specs keep long literal messages and test names on one line, so that a failure can be
-- found with grep: a wider limit there only.
files["spec/**/*_spec.lua"] = { std = "+busted", max_line_length = 140 }

-- OpenResty code: the `ngx` global (read, and its fields written: ngx.status, ngx.ctx.x).
local ngx_files = { std = "+ngx_lua" }
files["lua/sslctx/ngx.lua"] = ngx_files
files["examples/nginx/**/*.lua"] = ngx_files
files["spec/nginx/**/*.lua"] = { std = "+busted+ngx_lua" }
files["spec/support/nginx.lua"] = { std = "+busted+ngx_lua" }
files["spec/nginx_spec.lua"] = { std = "+busted+ngx_lua", max_line_length = 140 }
files["spec/ffi_callback_spec.lua"] = { std = "+busted+ngx_lua", max_line_length = 140 }
