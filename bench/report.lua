-- bench/report.lua RESULTS_FILE — the Markdown report of a bench/bench.sh run.
--
-- Per workload: the module's and the reference's medians with min–max over the repetitions,
-- and the ratio module/reference taken per repetition (the two runs of one repetition are
-- neighbours in time), its median and min–max.  "CPU ratio" is the same ratio on process CPU
-- time instead of wall time (for the socket workloads: client plus server), less
-- sensitive to other load on the machine.  Callgrind: instructions per handshake.

local path = assert(arg[1], "usage: report.lua RESULTS_FILE")

local meta, runs, cg = {}, {}, {}
local order = {}
for line in io.lines(path) do
  local k, v = line:match("^META ([%w_]+)=(.*)$")
  if k then
    meta[k] = v
  elseif line:match("^rep=") then
    local rep, w, impl, rest = line:match("^rep=(%d+) RESULT (%S+) (%S+) (.*)$")
    local r = { rep = tonumber(rep), impl = impl }
    for key, val in rest:gmatch("([%w_]+)=(%S+)") do r[key] = tonumber(val) or val end
    if not runs[w] then runs[w] = {}; order[#order + 1] = w end
    table.insert(runs[w], r)
  elseif line:match("^CG ") then
    local w, small, big, rest = line:match("^CG (%S+) small=(%d+) big=(%d+) (.*)$")
    local e = { w = w }
    for impl, a, b in rest:gmatch("([%w_]+)=(%d+),(%d+)") do
      e[impl] = (tonumber(b) - tonumber(a)) / (tonumber(big) - tonumber(small))
    end
    cg[#cg + 1] = e
  end
end

local function stats(xs)
  local t = {}
  for i, x in ipairs(xs) do t[i] = x end
  table.sort(t)
  local n = #t
  if n == 0 then return nil end
  local med = n % 2 == 1 and t[(n + 1) / 2] or (t[n / 2] + t[n / 2 + 1]) / 2
  return { med = med, min = t[1], max = t[n], n = n }
end

local function fmt(x)
  local a = math.abs(x)
  if a >= 10000 then return ("%.0f"):format(x) end
  if a >= 100 then return ("%.0f"):format(x) end
  if a >= 10 then return ("%.1f"):format(x) end
  return ("%.2f"):format(x)
end

local function span(s, f)
  f = f or fmt
  if not s then return "–" end
  return ("%s (%s–%s)"):format(f(s.med), f(s.min), f(s.max))
end

local function r3(x) return ("%.3f"):format(x) end

-- workload -> reference impl, target, kind
local targets = {
  mem_hs = { 0.98 }, mem_hs_vcb = { 0.97 }, mem_hs_mtls = { 0.98 }, mem_hs_resume = { 0.98 },
  mem_bulk = { 0.95 }, sock_hs = { 0.98 }, sock_bulk = { 0.95 },
  reconnect = { 2.0, ref = "luasec" },
  mem_idle = { 1024, diff = true },
}

local function by_rep(list, impl)
  local t = {}
  for _, r in ipairs(list) do if r.impl == impl then t[r.rep] = r end end
  return t
end

local function values(t, key)
  local xs = {}
  for _, r in pairs(t) do xs[#xs + 1] = r[key] end
  return xs
end

local out = {}
local function p(s) out[#out + 1] = s or "" end

p("## Results")
p()
p(("Machine: %s CPUs (`nproc`), %s; %s (the module runs against %s); %s; LuaSec %s."):format(
  meta.nproc or "?", meta.cpu or "?", meta.openssl or "?", meta.openssl_module or "?",
  meta.lua or "?", meta.luasec or "?"))
p(("Tree: %s, module %s. Started %s, %s s. Load average (1/5/15 min): %s at the start, "
  .. "%s after the wall-clock runs, %s at the end."):format(
  meta.git or "?", meta.module_sha256 or "?", meta.started or "?", meta.elapsed_s or "?",
  meta.load_start or "?", meta.load_after_wallclock or "?", meta.load_end or "?"))
p(("Command: `%s` (%s)."):format(meta.command or "bench/bench.sh", meta.params or ""))
p()
p("| workload | unit | module: median (min–max) | reference: median (min–max) | "
  .. "module/ref per repetition: median (min–max) | CPU ratio | target | met |")
p("|---|---|---|---|---|---|---|---|")

local verdicts = {}
for _, w in ipairs(order) do
  local list = runs[w]
  local tg = targets[w] or { 0 }
  local refimpl = tg.ref or "c"
  local m, r = by_rep(list, "module"), by_rep(list, refimpl)
  local ratios, cpu_ratios = {}, {}
  for rep, mr in pairs(m) do
    local rr = r[rep]
    if rr then
      if tg.diff then
        ratios[#ratios + 1] = mr.value - rr.value
      else
        ratios[#ratios + 1] = mr.value / rr.value
        if mr.cpu > 0 and rr.cpu > 0 then
          cpu_ratios[#cpu_ratios + 1] = (mr.n / mr.cpu) / (rr.n / rr.cpu)
        end
      end
    end
  end
  local sm, sr = stats(values(m, "value")), stats(values(r, "value"))
  local sq, sc = stats(ratios), stats(cpu_ratios)
  local unit = list[1].unit
  local met, target_s
  if tg.diff then
    target_s = ("Δ ≤ %d B"):format(tg[1])
    met = sq and sq.med <= tg[1]
    p(("| %s | %s | %s | %s | Δ module − C: %s | – | %s | %s |"):format(w, unit, span(sm), span(sr),
      span(sq), target_s, met and "yes" or "**no**"))
  else
    target_s = ("≥ %s"):format(tg[1])
    met = sq and sq.med >= tg[1]
    local cpu_met = sc and sc.med >= tg[1]
    local verdict = met and "yes" or (cpu_met and "**no** (CPU: yes)" or "**no**")
    local label = refimpl == "c" and "" or (" (vs " .. refimpl .. ")")
    p(("| %s%s | %s | %s | %s | %s | %s | %s | %s |"):format(w, label, unit, span(sm), span(sr),
      span(sq, r3), sc and r3(sc.med) or "–", target_s, verdict))
  end
  verdicts[#verdicts + 1] = { w = w, met = met }
  if w == "reconnect" then
    local c = by_rep(list, "c")
    local sc2 = stats(values(c, "value"))
    if sc2 then
      local rs = {}
      for rep, mr in pairs(m) do if c[rep] then rs[#rs + 1] = mr.value / c[rep].value end end
      p(("| reconnect (vs C client, resumed) | %s | %s | %s | %s | – | info | – |"):format(unit,
        span(sm), span(sc2), span(stats(rs), r3)))
    end
  end
end

-- Issue 13's variants, measured in the same repetitions: the module with release_buffers =
-- false (module_keep), the C reference with SSL_MODE_RELEASE_BUFFERS (c_release), LuaSec's
-- idle pairs; and the idle target, module RSS per pair ≤ 0.85 × C's.
local function ratio_stats(a, b, cpu)
  local rs = {}
  for rep, x in pairs(a) do
    local y = b[rep]
    if y then
      if cpu then
        if x.cpu > 0 and y.cpu > 0 then rs[#rs + 1] = (x.n / x.cpu) / (y.n / y.cpu) end
      else
        rs[#rs + 1] = x.value / y.value
      end
    end
  end
  return stats(rs)
end
local variant_label = {
  module_keep = "module, release_buffers = false", c_release = "C, RELEASE_BUFFERS",
  luasec = "LuaSec", c = "C",
}
local vrows = {}
for _, w in ipairs(order) do
  local list = runs[w]
  local m, c = by_rep(list, "module"), by_rep(list, "c")
  local idle = w == "mem_idle"
  local present = {}
  for _, r in ipairs(list) do present[r.impl] = true end
  local impls = {}
  for _, impl in ipairs({ "module_keep", "c_release", "luasec" }) do
    if present[impl] and not (w == "reconnect" and impl == "luasec") then impls[#impls + 1] = impl end
  end
  if idle and next(c) then table.insert(impls, 1, "c") end
  for _, impl in ipairs(impls) do
    local v = by_rep(list, impl)
    local sv = stats(values(v, "value"))
    local rm, rc = ratio_stats(m, v), ratio_stats(v, c)
    local cm = ratio_stats(m, v, true)
    local target, met = "info", "–"
    if idle and impl == "c" then
      target, met = "≤ 0.85", rm and rm.med <= 0.85 and "yes" or "**no**"
      verdicts[#verdicts + 1] = { w = "mem_idle module/C ≤ 0.85", met = met == "yes" }
    end
    vrows[#vrows + 1] = ("| %s | %s (%s) | %s | %s | %s | %s | %s | %s |"):format(w, impl,
      variant_label[impl], list[1].unit, span(sv), span(rm, r3), idle and "–" or (cm and r3(cm.med) or "–"),
      (impl ~= "c" and rc) and span(rc, r3) or "–", target .. " | " .. met)
  end
end
if #vrows > 0 then
  p()
  p("Variants in the same repetitions (module = the module's defaults: SSL_MODE_RELEASE_BUFFERS on; "
    .. "per-repetition ratios; for B/pair lower is better):")
  p()
  p("| workload | variant | unit | variant: median (min–max) | module/variant | CPU module/variant | "
    .. "variant/C | target | met |")
  p("|---|---|---|---|---|---|---|---|---|")
  for _, row in ipairs(vrows) do p(row) end
end

local cg_target = { mem_hs = 50000, mem_hs_vcb = 50000, mem_hs_mtls = 50000,
                    mem_hs_resume = 50000, sock_hs = 50000 }
local cg_unit = { mem_bulk = "MiB", reconnect = "connection" }
if #cg > 0 then
  p()
  p("Instructions per operation (callgrind `Ir`, every process of the run: the sock_hs and "
    .. "reconnect servers too; (Ir(big N) − Ir(small N)) / (big − small), so start-up, contexts "
    .. "and warm-up cancel):")
  p()
  p("| workload | per | module | C | module − C | target | met |")
  p("|---|---|---|---|---|---|---|")
  for _, c in ipairs(cg) do
    local d = c.module - c.c
    local t = cg_target[c.w]
    local target, met = "info", "–"
    if t then
      target = ("≤ +%d"):format(t)
      met = d <= t and "yes" or "**no**"
      verdicts[#verdicts + 1] = { w = "callgrind " .. c.w, met = d <= t }
    end
    p(("| %s | %s | %.0f | %.0f | %+.0f (%+.2f%%) | %s | %s |"):format(c.w, cg_unit[c.w] or "handshake",
      c.module, c.c, d, 100 * d / c.c, target, met))
    if c.module_keep then
      p(("| %s (module, release_buffers = false) | %s | %.0f | %.0f | %+.0f (%+.2f%%); "
        .. "module − this: %+.0f | info | – |"):format(
        c.w, cg_unit[c.w] or "handshake", c.module_keep, c.c, c.module_keep - c.c,
        100 * (c.module_keep - c.c) / c.c, c.module - c.module_keep))
    end
    if c.luasec then
      p(("| %s (LuaSec client) | %s | %.0f | %.0f | LuaSec / module = %.2f | info | – |"):format(c.w,
        cg_unit[c.w] or "handshake", c.luasec, c.c, c.luasec / c.module))
    end
  end
end

p()
local missed = {}
for _, v in ipairs(verdicts) do if not v.met then missed[#missed + 1] = v.w end end
p(#missed == 0 and "All targets met." or ("Targets missed: " .. table.concat(missed, ", ") .. "."))
print(table.concat(out, "\n"))
