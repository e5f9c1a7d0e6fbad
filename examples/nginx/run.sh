#!/bin/sh
# examples/nginx/run.sh [start|stop] — run examples/nginx/nginx.conf under a throwaway
# prefix (default /tmp/sslctx-example; SSLCTX_EXAMPLE_PREFIX overrides) with the test PKI,
# on 127.0.0.1:8443 (TLS) and 127.0.0.1:8080 (HTTP).  Needs nginx with
# libnginx-mod-http-lua, libluajit2-5.1-dev, openssl and curl.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
prefix=${SSLCTX_EXAMPLE_PREFIX:-/tmp/sslctx-example}

if [ "${1:-start}" = stop ]; then
    pid=$(cat "$prefix/logs/nginx.pid")
    kill -QUIT "$pid"
    echo "stopped nginx (master $pid)"
    exit 0
fi

make -C "$repo" --no-print-directory LUA=luajit >/dev/null
pki=$repo/build/pki
sh "$repo/spec/certs/make-pki.sh" "$pki"

mkdir -p "$prefix/conf/certs" "$prefix/logs" "$prefix/tmp"
ln -sfn "$repo/lua" "$prefix/lua"
ln -sfn "$repo/build/luajit" "$prefix/lib"
cp "$here/nginx.conf" "$here/policy.lua" "$prefix/conf/"
certs=$prefix/conf/certs
cp "$pki/ca.pem" "$certs/ca.pem"
cat "$pki/ca.pem" "$pki/int.pem" > "$certs/ca-bundle.pem"

# The site's certificate: the three names, signed by the test intermediate CA.
if [ ! -f "$certs/site.key" ]; then
    printf 'subjectAltName=DNS:public.example,DNS:mtls.example,DNS:soft.example\nextendedKeyUsage=serverAuth\n' \
        > "$certs/site.ext"
    openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=site.example \
        -keyout "$certs/site.key" -out "$certs/site.csr" 2>/dev/null
    openssl x509 -req -in "$certs/site.csr" -CA "$pki/int.pem" -CAkey "$pki/int.key" \
        -set_serial "0x$(openssl rand -hex 8)" -days 30 -extfile "$certs/site.ext" \
        -out "$certs/site.pem" 2>/dev/null
    cat "$certs/site.pem" "$pki/int.pem" > "$certs/site-chain.pem"
fi

nginx -p "$prefix/" -c conf/nginx.conf -e logs/error.log
echo "nginx started (master $(cat "$prefix/logs/nginx.pid")), prefix $prefix"
cat <<EOF
Try:
  r="--cacert $pki/ca.pem --resolve public.example:8443:127.0.0.1 --resolve mtls.example:8443:127.0.0.1 --resolve soft.example:8443:127.0.0.1"
  curl \$r https://public.example:8443/
  curl \$r https://mtls.example:8443/ --cert $pki/client-chain.pem --key $pki/client.key
  curl \$r https://mtls.example:8443/                    # refused: certificate required
  curl \$r https://mtls.example:8443/ --cert $pki/client2-chain.pem --key $pki/client2.key   # not on the list
  curl \$r https://soft.example:8443/                    # 403 from the access phase
  curl \$r https://public.example:8443/ -H 'Host: mtls.example' --cert $pki/client-chain.pem --key $pki/client.key   # 421: SNI public, Host mtls
  curl http://127.0.0.1:8080/fetch                        # TLS client over a cosocket
Stop: $0 stop
EOF
