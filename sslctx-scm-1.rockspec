rockspec_format = "3.0"
package = "sslctx"
version = "scm-1"

source = {
   url = "git+https://github.com/sslctx/sslctx.git",
   branch = "main",
}

description = {
   summary = "TLS contexts and connections for Lua over OpenSSL, with explicit verification modes",
   detailed = [[
sslctx binds OpenSSL's SSL_CTX and SSL for Lua 5.1-5.4 and LuaJIT: verification
modes for each side (never/always/once/require/post-handshake), Lua or native
verify callbacks, CRLs and verification parameters, a memory transport, and
adapters for LuaSocket, OpenResty and LuaSec-style code.
]],
   license = "MIT",   -- the LICENSE file
   homepage = "https://github.com/sslctx/sslctx",
}

dependencies = {
   "lua >= 5.1, < 5.5",
}

-- OpenSSL is linked dynamically: inside nginx the module must share nginx's libssl.
external_dependencies = {
   OPENSSL = {
      header = "openssl/ssl.h",
   },
}

build = {
   type = "builtin",
   modules = {
      ["sslctx.core"] = {
         sources = {
            "src/core.c", "src/context.c", "src/connection.c", "src/verify.c",
            "src/x509.c", "src/pkey.c", "src/session.c", "src/bio.c",
            "src/hook.c", "src/conninfo.c", "src/policy.c", "src/trust.c",
            "src/tickets.c", "src/sessstore.c", "src/callback.c",
            "src/ctx_callbacks.c", "src/conn_io.c", "src/conn_policy.c",
            "src/loaders.c", "src/options.c",
         },
         libraries = { "ssl", "crypto", "dl" },
         incdirs = { "$(OPENSSL_INCDIR)" },
         libdirs = { "$(OPENSSL_LIBDIR)" },
      },
      sslctx = "lua/sslctx.lua",
      ["sslctx.stream"] = "lua/sslctx/stream.lua",
      ["sslctx.socket"] = "lua/sslctx/socket.lua",
      ["sslctx.ngx"] = "lua/sslctx/ngx.lua",
      ["sslctx.luasec"] = "lua/sslctx/luasec.lua",
      ["sslctx.luv"] = "lua/sslctx/luv.lua",
      ["sslctx.cqueues"] = "lua/sslctx/cqueues.lua",
   },
}

test_dependencies = {
   "busted",
}

test = {
   type = "busted",
}
