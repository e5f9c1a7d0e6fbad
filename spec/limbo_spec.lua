-- spec/limbo_spec.lua: x509-limbo replayed through real sslctx handshakes must reach the same
-- verdict as OpenSSL itself (`openssl verify`, computed now, on the libssl in use) on the same
-- inputs.  How a case maps to a handshake: spec/support/limbo.lua.
--
-- The data lives outside the repository (../shared/conformance/x509-limbo beside the
-- checkout, or $SSLCTX_LIMBO_DIR); without it the whole spec is pending, visibly.
--
-- Counts (agree / disagree / skipped with reasons) are printed at the end; every
-- disagreement is a failing test whose message shows both verdicts and their reasons.
-- Error codes are compared too, for information only (the contract promises codes only for
-- certificates with a single defect, which limbo does not mark).

local limbo = require "support.limbo"

local dir, why = limbo.find()
-- SSLCTX_LIMBO_SAMPLE=k replays every k-th case only (scripts/check-valgrind.sh uses it to
-- stay within its time); the summary says so.
local SAMPLE = tonumber(os.getenv("SSLCTX_LIMBO_SAMPLE") or "1") or 1

-- Cases that openssl verify may accept but no TLS handshake can carry (doc/hardening.md,
-- "x509-limbo parity"): such a case is counted as skipped, with its reason.  Any other case
-- that cannot be replayed while openssl verify accepts it fails: the module would otherwise
-- hide a broken handshake behind "skipped".
local KNOWN_UNREPLAYABLE = {
  -- the verifier's security level keeps P-192 out of the groups it offers, so the leaf's key
  -- cannot sign a handshake (OpenSSL's own s_server cannot present it either)
  ["webpki::forbidden-p192-leaf"] = true,
}

describe("x509-limbo replay #limbo", function()
  if not dir then
    pending("x509-limbo: " .. why)
    return
  end

  local data = limbo.load(dir)
  local counts = { agree = 0, disagree = 0, skipped = 0, code_differs = 0, kind_wrong = 0 }
  local skipped, disagreements, code_notes, kind_notes = {}, {}, {}, {}
  local tmp

  setup(function()
    tmp = limbo.tmpdir()
  end)

  teardown(function()
    limbo.cleanup()
    local total = #data.testcases
    if SAMPLE > 1 then
      print(("\nx509-limbo: sampling 1 case in %d (SSLCTX_LIMBO_SAMPLE)"):format(SAMPLE))
      total = math.ceil(total / SAMPLE)
    end
    print(("\nx509-limbo: %d cases: %d agree, %d disagree, %d skipped; error codes differ on %d " ..
           "agreeing failures; %d verification failures not reported as kind 'verify'")
          :format(total, counts.agree, counts.disagree, counts.skipped, counts.code_differs,
                  counts.kind_wrong))
    for _, s in ipairs(skipped) do print("  skipped " .. s) end
    for _, d in ipairs(disagreements) do print("  DISAGREE " .. d) end
    for _, n in ipairs(code_notes) do print("  code " .. n) end
    for _, n in ipairs(kind_notes) do print("  KIND " .. n) end
  end)

  for index, case in ipairs(data.testcases) do
    local label = case.validation_kind .. " " .. case.id
    local sampled_in = (index - 1) % SAMPLE == 0   -- SSLCTX_LIMBO_SAMPLE (the summary says so)
    if sampled_in and not case.peer_certificate_key then
      counts.skipped = counts.skipped + 1
      skipped[#skipped + 1] = case.id .. ": no peer_certificate_key (cannot be presented in a handshake)"
      pending(label .. ": no peer_certificate_key in the case")
    elseif sampled_in then
      it(label, function()
        local r = limbo.replay(case)
        if r.error or r.verdict == nil then
          local reason = r.error or ("the handshake failed outside verification: " ..
                                     tostring(r.message) .. " (" .. tostring(r.kind) .. ")")
          -- Not a verdict of ours.  When OpenSSL itself fails the chain, the module has
          -- nothing to disagree with, and the case is counted as skipped.  When OpenSSL
          -- accepts it, the handshake should have carried it: that fails, unless the case is
          -- on the documented list above.
          local ov, _, oout = limbo.oracle(case, tmp, r.auth_level or 2)
          local text = ("%s: not replayable through TLS (%s); openssl verify says %s")
                       :format(case.id, reason, ov)
          if ov == "SUCCESS" and not KNOWN_UNREPLAYABLE[case.id] then
            counts.disagree = counts.disagree + 1
            disagreements[#disagreements + 1] = text
            error("openssl verify accepts the chain, but no handshake carried it: " .. text ..
                  "\n" .. tostring(oout), 0)
          end
          counts.skipped = counts.skipped + 1
          skipped[#skipped + 1] = text
          return
        end
        local ov, ocode, oout = limbo.oracle(case, tmp, r.auth_level)
        if ov == r.verdict then
          counts.agree = counts.agree + 1
          if ov == "FAILURE" and ocode ~= r.code then
            counts.code_differs = counts.code_differs + 1
            code_notes[#code_notes + 1] = ("%s: openssl %s, sslctx %s (%s)"):format(
              case.id, tostring(ocode), tostring(r.code), tostring(r.code_text))
          end
          if r.kind_wrong then
            -- Same verdict, wrong classification: doc/reference.md says a rejected peer certificate is
            -- kind "verify".  A module bug (see doc/hardening.md).
            counts.kind_wrong = counts.kind_wrong + 1
            local text = ("%s: rejected (code %s: %s) but reported as nil, %q, %q"):format(
              case.id, tostring(r.code), tostring(r.code_text), tostring(r.message), tostring(r.kind))
            kind_notes[#kind_notes + 1] = text
            error("verification failure with the wrong kind: " .. text, 0)
          end
        else
          counts.disagree = counts.disagree + 1
          local text = ("%s: openssl verify %s (%s), sslctx %s (code %s: %s; %s, %s) over %s")
                       :format(case.id, ov, (oout:gsub("%s+$", ""):gsub("\n", " | ")), r.verdict,
                               tostring(r.code), tostring(r.code_text), tostring(r.message),
                               tostring(r.kind), tostring(r.version))
          disagreements[#disagreements + 1] = text
          error("disagreement with OpenSSL: " .. text, 0)
        end
      end)
    end
  end

  -- Runs after every case (busted keeps the order): if the module broke so that no handshake
  -- reached verification, the cases above would all be skipped or pending, none failing.
  it("replayed cases reached a verdict that agrees with openssl verify", function()
    assert.is_true(counts.agree > 0, ("no case agreed (%d skipped, %d disagree)")
                                     :format(counts.skipped, counts.disagree))
  end)
end)
