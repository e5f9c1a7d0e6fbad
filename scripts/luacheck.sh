#!/bin/sh
# Lint the Lua sources with luacheck (Debian package lua-check), using .luacheckrc.
#   sh scripts/luacheck.sh            lua/ spec/ examples/ bench/
#   sh scripts/luacheck.sh FILE...    only those files
# Exits non-zero on any warning or error.
set -eu
cd "$(dirname "$0")/.."

if ! command -v luacheck >/dev/null 2>&1; then
    echo "luacheck.sh: luacheck not found (Debian package lua-check; 'make deps' installs it)" >&2
    exit 1
fi

if [ $# -eq 0 ]; then
    set --
    for d in lua spec examples bench; do
        [ -d "$d" ] && set -- "$@" "$d"
    done
fi

# --codes: show the warning codes that .luacheckrc refers to; colour only on a terminal.
if [ -t 1 ]; then
    exec luacheck --codes "$@"
else
    exec luacheck --codes --no-color "$@"
fi
