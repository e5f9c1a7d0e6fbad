-- session_cache_size = 0 with session_tickets = false: a server that resumes nothing.
local helper = require "helper"

describe("turning server resumption off", function()
  for _, version in ipairs({ "tls1.2", "tls1.3" }) do
    local function resumes(sopts)
      sopts.max_version = version
      local sctx = helper.server_ctx(sopts)
      local cctx = helper.client_ctx{ max_version = version }
      local c, s = helper.connect(cctx, sctx)
      helper.exchange(s, c, "ticket, please")   -- TLS 1.3 tickets arrive with data
      helper.exchange(c, s, "thanks")
      local c2, s2 = helper.connect(cctx, sctx, { session = c:session() })
      return c2:session_reused(), s2:session_reused()
    end

    it(version .. ": resumes by default", function()
      local cr, sr = resumes({})
      assert.is_true(cr)
      assert.is_true(sr)
    end)

    it(version .. ": resumes nothing with no cache and no tickets", function()
      local cr, sr = resumes({ session_cache_size = 0, session_tickets = false })
      assert.is_false(cr)
      assert.is_false(sr)
    end)

    it(version .. ": set_session_cache_size(0) after creation does the same", function()
      local sctx = helper.server_ctx{ max_version = version, session_tickets = false }
      sctx:set_session_cache_size(0)
      local cctx = helper.client_ctx{ max_version = version }
      local c, s = helper.connect(cctx, sctx)
      helper.exchange(s, c, "x")
      helper.exchange(c, s, "y")
      local c2 = helper.connect(cctx, sctx, { session = c:session() })
      assert.is_false(c2:session_reused())
    end)
  end
end)
