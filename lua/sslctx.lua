--- sslctx: TLS for Lua over OpenSSL.
-- The C core (`sslctx.core`) does the work; this front re-exports it, so that Lua-level
-- additions have one place to live without touching the core's names.
local core = require "sslctx.core"

local sslctx = {}
for k, v in pairs(core) do sslctx[k] = v end

return sslctx
