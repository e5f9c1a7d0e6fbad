#!/bin/sh
# Install the Debian 12 packages that building and testing sslctx needs.
# Installs only what is missing; silent when everything is already there.
# A stamp (build/.deps-stamp) that is newer than this script skips even the
# dpkg check, so that every `make test` stays cheap.
set -eu

# The one list.  luajit2/libluajit2-5.1-dev are OpenResty's LuaJIT (they replace
# libluajit-5.1-dev); the peers (openssl, gnutls, nginx with its lua module, curl,
# LuaSec) are what the interop, OpenResty and LuaSec-facade specs run against; coxpcall
# is copas' (spec/copas_spec.lua); procps gives pgrep to the bench scripts (a minimal Debian has
# none); clang and valgrind serve the hardening checks, luarocks the rock check; sslscan
# and testssl.sh scan a default server (spec/scan_spec.lua, `make scan`).
PACKAGES="
    gcc libc6-dev make pkg-config
    libssl-dev openssl ca-certificates
    lua5.1 liblua5.1-0-dev
    lua5.2 liblua5.2-dev
    lua5.3 liblua5.3-dev
    lua5.4 liblua5.4-dev
    luajit2 libluajit2-5.1-dev
    lua-busted lua-socket lua-check lua-sec lua-coxpcall luarocks
    lua-luv lua-cqueues
    gnutls-bin curl nginx libnginx-mod-http-lua procps
    clang libclang-rt-14-dev valgrind
    sslscan testssl.sh
"

root=$(cd "$(dirname "$0")/.." && pwd)
stamp=$root/build/.deps-stamp

if [ "${1:-}" != "--force" ] && [ -f "$stamp" ] && [ "$stamp" -nt "$0" ]; then
    exit 0
fi

missing=
for p in $PACKAGES; do
    status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
    case $status in
        *" installed") ;;
        *) missing="$missing $p" ;;
    esac
done

if [ -n "$missing" ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "deps.sh: missing Debian packages:$missing" >&2
        echo "deps.sh: run as root (e.g. sudo make deps) or install them with apt-get" >&2
        exit 1
    fi
    echo "deps.sh: installing:$missing"
    # Debian's nginx starts a server on every interface's port 80 when installed: a
    # temporary policy-rc.d that answers 101 keeps every package from starting anything.
    policy=/usr/sbin/policy-rc.d
    made_policy=
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' > "$policy"
        chmod 755 "$policy"
        made_policy=1
    fi
    trap '[ -z "$made_policy" ] || rm -f "$policy"' EXIT
    apt-get update -q
    # shellcheck disable=SC2086  # word splitting of the list is intended
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $missing
fi

mkdir -p "$root/build"
touch "$stamp"
