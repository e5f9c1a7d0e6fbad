#!/bin/sh
# The rock, built and installed the way users install it:
#   1. luarocks lint sslctx-scm-1.rockspec
#   2. luarocks make, from a copy of the work tree, into build/rocktree (one Lua version each
#      of $ROCK_LUAS, default "5.4"; e.g. ROCK_LUAS="5.1 5.2 5.3 5.4")
#   3. spec/rock_spec.lua under each of those Luas: a fresh interpreter whose package.path and
#      package.cpath point only into build/rocktree loads sslctx and runs a TLS handshake.
# Needs the Debian package luarocks (and what `make deps` installs).
set -eu
cd "$(dirname "$0")/.."
root=$(pwd)
ROCK_LUAS=${ROCK_LUAS:-5.4}
tree=$root/build/rocktree
work=$root/build/rock-src

if ! command -v luarocks >/dev/null 2>&1; then
    echo "rock.sh: luarocks not found (Debian package luarocks)" >&2
    exit 1
fi

echo "== luarocks lint sslctx-scm-1.rockspec"
luarocks lint sslctx-scm-1.rockspec
echo "lint: OK"

# OpenSSL's location as pkg-config knows it (Debian: /usr/include, /usr/lib/<triplet>).
ssl_inc=$(pkg-config --variable=includedir openssl 2>/dev/null || echo /usr/include)
ssl_lib=$(pkg-config --variable=libdir openssl 2>/dev/null || echo /usr/lib)

# Build from a copy: `luarocks make` leaves objects next to the sources.
rm -rf "$work" "$tree"
mkdir -p "$work"
tar --exclude=./build --exclude=./.git -cf - . | (cd "$work" && tar -xf -)

for v in $ROCK_LUAS; do
    echo "== luarocks make (Lua $v) into build/rocktree"
    (cd "$work" && luarocks --lua-version="$v" --tree "$tree" make sslctx-scm-1.rockspec \
        OPENSSL_INCDIR="$ssl_inc" OPENSSL_LIBDIR="$ssl_lib" LUA_INCDIR="/usr/include/lua$v")
    luarocks --lua-version="$v" --tree "$tree" list sslctx
done

# The spec: under each Lua that has busted.
status=0
for v in $ROCK_LUAS; do
    echo "== spec/rock_spec.lua (lua$v)"
    if ! "lua$v" -e 'require "busted.runner"' >/dev/null 2>&1; then
        echo "rock.sh: lua$v has no busted: skipped" >&2
        continue
    fi
    env -u LUA_PATH_5_2 -u LUA_PATH_5_3 -u LUA_PATH_5_4 \
        -u LUA_CPATH_5_2 -u LUA_CPATH_5_3 -u LUA_CPATH_5_4 \
        LUA_PATH="lua/?.lua;lua/?/init.lua;spec/?.lua;;" LUA_CPATH=";;" \
        SSLCTX_ROCKTREE="$tree" SSLCTX_PKI_DIR="$root/build/pki" \
        "lua$v" /usr/bin/busted -o utfTerminal spec/rock_spec.lua </dev/null || status=1
done
exit $status
