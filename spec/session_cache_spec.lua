-- session_cache_size = 0 with session_tickets = false: a server that resumes nothing.
local helper = require "helper"

describe("turning server resumption off", function()
  for _, version in ipairs({ "tls1.2", "tls1.3" }) do
    -- The client's session after its first connection.  A TLS 1.3 server still sends
    -- (stateful) tickets with no cache and no stateless tickets, so the client has a
    -- session to offer and the second handshake shows the server refusing it.  A TLS 1.2
    -- server with no cache and no tickets issues neither a session id nor a ticket: the
    -- session is not resumable and conn:session() is nil by contract (reference.md), which
    -- is itself the "resumes nothing" behaviour, so that is asserted instead.
    local function first_session(c, server_resumes)
      local session = c:session()
      if version == "tls1.2" and not server_resumes then
        assert.is_nil(session)
      else
        assert(session, "the first connection produced no session")
      end
      return session
    end

    local function resumes(sopts)
      sopts.max_version = version
      local sctx = helper.server_ctx(sopts)
      local cctx = helper.client_ctx{ max_version = version }
      local c, s = helper.connected(cctx, sctx)
      helper.exchange(s, c, "ticket, please")   -- TLS 1.3 tickets arrive with data
      helper.exchange(c, s, "thanks")
      local session = first_session(c, sopts.session_cache_size ~= 0)
      -- helper.connected: a failed second handshake must fail the test, not read as
      -- "nothing was resumed"
      local c2, s2 = helper.connected(cctx, sctx, { session = session })
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
      local c, s = helper.connected(cctx, sctx)
      helper.exchange(s, c, "x")
      helper.exchange(c, s, "y")
      local session = first_session(c, false)
      local c2, s2 = helper.connected(cctx, sctx, { session = session })
      assert.is_false(c2:session_reused())
      assert.is_false(s2:session_reused())
    end)
  end
end)
