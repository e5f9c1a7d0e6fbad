--- sslctx: TLS for Lua over OpenSSL.
-- The C core (`sslctx.core`) does the work; this front re-exports it, so that Lua-level
-- additions have one place to live without touching the core's names.
local core = require "sslctx.core"

local sslctx = {}
for k, v in pairs(core) do
  if k ~= "_set_cdata_checker" then sslctx[k] = v end   -- internal: see below
end

-- Under LuaJIT, C reads a pointer cdata's payload as the pointer; only the ffi knows a
-- cdata's type, so it vets them first: a function pointer for callbacks, a data pointer
-- (SSL*) for borrow.  Anything else (an int, an array) would be a wild pointer.
if rawget(_G, "jit") then
  local ok, ffi = pcall(require, "ffi")
  if ok then
    core._set_cdata_checker(function(value, what)
      -- "ctype<int (*)(int, void *)>" (a pointer), "ctype<int ()>" (from a namespace)
      local t = tostring(ffi.typeof(value))
      local is_function = t:match("%)>$") ~= nil
      if what == "function" then return is_function end
      return not is_function and t:match("%*>$") ~= nil
    end)
  end
end

return sslctx
