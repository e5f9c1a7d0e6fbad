#!/bin/sh
# bench/pki.sh OUTDIR — the benchmark's own throwaway PKI, made at run time with the openssl
# CLI (no private key is ever committed):
#
#   root.pem                 ECDSA P-256 root CA (the trust anchor of both sides)
#   int.pem                  ECDSA P-256 intermediate CA (pathlen 0), signed by the root
#   server.pem/.key          ECDSA P-256 leaf, SAN DNS:localhost + IP:127.0.0.1, serverAuth
#   server-chain.pem         server leaf + intermediate (what the server sends)
#   client.pem/.key          ECDSA P-256 leaf, clientAuth (mTLS)
#   client-chain.pem         client leaf + intermediate
#
# Idempotent: a complete set made by this version of the script is reused.
set -eu

[ $# -eq 1 ] && [ -n "$1" ] || { echo "usage: $0 OUTDIR" >&2; exit 2; }
out=$1
if [ -f "$out/.done" ] && [ "$out/.done" -nt "$0" ]; then exit 0; fi
command -v openssl >/dev/null 2>&1 || { echo "$0: openssl CLI not found" >&2; exit 1; }

mkdir -p "$out"
out=$(cd "$out" && pwd)
work=$(mktemp -d "$out/.work.XXXXXX")
log=$work/log
trap 'rc=$?; [ $rc -ne 0 ] && [ -f "$log" ] && cat "$log" >&2; rm -rf "$work"; exit $rc' EXIT
trap 'exit 1' HUP INT TERM
cd "$work"
q() { "$@" >>"$log" 2>&1; }

key() { q openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 \
          -pkeyopt ec_param_enc:named_curve -out "$1"; }

cat >ext.cnf <<'EOF'
[ int ]
basicConstraints = critical, CA:TRUE, pathlen:0
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[ server ]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost, IP:127.0.0.1
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[ client ]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
EOF

key root.key
q openssl req -new -x509 -key root.key -sha256 -days 3650 -subj "/CN=sslctx bench root" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
  -out root.pem

# issue NAME SUBJECT ISSUER EXT
issue() {
  key "$1.key"
  q openssl req -new -key "$1.key" -subj "$2" -out "$1.csr"
  q openssl x509 -req -in "$1.csr" -CA "$3.pem" -CAkey "$3.key" -CAcreateserial -sha256 \
    -days 3650 -extfile ext.cnf -extensions "$4" -out "$1.pem"
}
issue int "/CN=sslctx bench intermediate" root int
issue server "/CN=localhost" int server
issue client "/CN=sslctx bench client" int client
cat server.pem int.pem >server-chain.pem
cat client.pem int.pem >client-chain.pem
q openssl verify -CAfile root.pem -untrusted int.pem -purpose sslserver -verify_hostname localhost server.pem
q openssl verify -CAfile root.pem -untrusted int.pem -purpose sslclient client.pem

for f in root.pem int.pem server.pem server.key server-chain.pem client.pem client.key \
         client-chain.pem; do
  mv "$f" "$out/$f"
done
chmod 600 "$out"/*.key
touch "$out/.done"
