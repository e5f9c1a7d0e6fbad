-- bench/cgdiff.lua — per-operation instruction differences between the module and the
-- reference, by function, from `callgrind_annotate` outputs (self or inclusive cost):
--
--   lua5.4 bench/cgdiff.lua TOP N_SMALL N_BIG MOD_SMALL MOD_BIG REF_SMALL REF_BIG
--
-- Each argument is one annotate output, or several joined by commas (one per process of a
-- run: client and server), which are summed.  Each side's per-operation cost of a function
-- is (big - small) / (N_BIG - N_SMALL): start-up, context creation and warm-up cancel out.
-- Prints the TOP functions by |module - reference|, then the totals grouped by object
-- (libcrypto, libssl, libc, the interpreter, sslctx core.so, ...).  Paths are reduced to
-- file names, so that runs of two trees (or two output directories) compare function by
-- function: give two module runs to see what a change of the module costs.

local top, n_small, n_big = tonumber(arg[1]), tonumber(arg[2]), tonumber(arg[3])
local files = { arg[4], arg[5], arg[6], arg[7] }

local function load1(path, t)
  local total
  for line in io.lines(path) do
    local num, rest = line:match("^%s*([%d,]+)%s+%b()%s+(.+)$")
    if not num then num, rest = line:match("^%s*([%d,]+)%s+(%S.*)$") end
    if num then
      local v = tonumber((num:gsub(",", "")))
      if rest:match("PROGRAM TOTALS") then total = v
      elseif rest:match(":") then
        rest = rest:gsub("[^%s%[:]*/", "")   -- no directories: two trees' runs line up
        t[rest] = (t[rest] or 0) + v
      end
    end
  end
  return total or 0
end

local function load(paths)
  local t, total = {}, 0
  for path in paths:gmatch("[^,]+") do total = total + load1(path, t) end
  return t, total
end

local ms, mst = load(files[1])
local mb, mbt = load(files[2])
local rs, rst = load(files[3])
local rb, rbt = load(files[4])
local span = n_big - n_small

local function per(big, small, k) return ((big[k] or 0) - (small[k] or 0)) / span end

local keys, seen = {}, {}
for _, t in ipairs({ ms, mb, rs, rb }) do
  for k in pairs(t) do if not seen[k] then seen[k] = true; keys[#keys + 1] = k end end
end

local rows = {}
for _, k in ipairs(keys) do
  local m, r = per(mb, ms, k), per(rb, rs, k)
  rows[#rows + 1] = { k = k, m = m, r = r, d = m - r }
end
table.sort(rows, function(a, b) return math.abs(a.d) > math.abs(b.d) end)

local function object(k)
  local o = k:match("%[([^%]]+)%]%s*$")
  if not o then return "?" end
  return o:match("([^/]+)$")
end

local mt, rt = (mbt - mst) / span, (rbt - rst) / span
print(("per operation: module %.0f, reference %.0f, difference %+.0f instructions"):format(mt, rt, mt - rt))
print()
print(("%12s %12s %12s  %s"):format("module", "reference", "difference", "function [object]"))
for i = 1, math.min(top, #rows) do
  local r = rows[i]
  print(("%12.0f %12.0f %+12.0f  %s"):format(r.m, r.r, r.d, r.k))
end
print()
local by = {}
for _, r in ipairs(rows) do
  local o = object(r.k)
  local b = by[o] or { m = 0, r = 0 }
  b.m, b.r = b.m + r.m, b.r + r.r
  by[o] = b
end
local objs = {}
for o, b in pairs(by) do objs[#objs + 1] = { o = o, m = b.m, r = b.r } end
table.sort(objs, function(a, b) return math.abs(a.m - a.r) > math.abs(b.m - b.r) end)
print(("%12s %12s %12s  %s"):format("module", "reference", "difference", "object"))
for _, b in ipairs(objs) do
  if math.abs(b.m - b.r) >= 50 then
    print(("%12.0f %12.0f %+12.0f  %s"):format(b.m, b.r, b.m - b.r, b.o))
  end
end
