#!/bin/sh
# make-pki.sh OUTDIR — build the throwaway test PKI described in README.md.
#
# Keys are generated at test time so that no private key is ever committed.
# Every certificate is issued with `openssl ca`, because only it can set an
# arbitrary notBefore/notAfter on OpenSSL 3.0 (x509 -not_before is 3.4+) and it
# keeps the index that revocation and CRL generation need anyway.
set -eu

if [ $# -ne 1 ] || [ -z "$1" ]; then
    echo "usage: $0 OUTDIR" >&2
    exit 2
fi
out=$1
script=$0

# Idempotent: a complete PKI made by this very version of the script is reused.
if [ -f "$out/.done" ] && [ "$out/.done" -nt "$script" ]; then
    exit 0
fi

command -v openssl >/dev/null 2>&1 || { echo "$0: openssl CLI not found" >&2; exit 1; }

mkdir -p "$out"
out=$(cd "$out" && pwd)
# Build in a private work dir and only move finished files into OUTDIR, so an
# interrupted run never leaves a half-made PKI marked as done, and nothing in
# OUTDIR other than the names we produce is ever touched.
work=$(mktemp -d "$out/.work.XXXXXX")
log=$work/log
cleanup() {
    rc=$?
    if [ "$rc" -ne 0 ] && [ -f "$log" ]; then
        echo "$0: failed; openssl output follows:" >&2
        cat "$log" >&2
    fi
    rm -rf "$work"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 1' HUP INT TERM
: >"$log"

# Quiet on success: everything openssl says goes to the log, shown on failure.
q() { "$@" >>"$log" 2>&1; }
# ca CA_DIR args... — `openssl ca` run as the CA whose files are in CA_DIR.
ca() { d=$1; shift; CA_DIR=$d openssl ca -batch -config ca.cnf "$@" >>"$log" 2>&1; }

# GNU date (Debian). 1 day back absorbs clock skew between test processes.
start=$(date -u -d '1 day ago' +%Y%m%d%H%M%SZ)
end=$(date -u -d '10 years' +%Y%m%d%H%M%SZ)

cd "$work"
# ca.cnf also serves `openssl req`, which parses $ENV::CA_DIR too.
CA_DIR=.
export CA_DIR

cat >ca.cnf <<'EOF'
# CA_DIR selects which CA (root, int, other) signs.
[ ca ]
default_ca = CA_default

[ CA_default ]
dir             = $ENV::CA_DIR
database        = $dir/index.txt
new_certs_dir   = $dir/new
certificate     = $dir/cert.pem
private_key     = $dir/key.pem
crlnumber       = $dir/crlnumber
# Unused (-rand_serial) but `openssl ca` insists on the setting.
serial          = $dir/serial
default_md      = sha256
policy          = policy_any
preserve        = yes
unique_subject  = no
email_in_dn     = no
copy_extensions = none
crl_extensions  = crl_ext

[ policy_any ]
organizationName = optional
commonName       = supplied

[ req ]
distinguished_name = req_dn
prompt             = no
[ req_dn ]
CN = placeholder

[ crl_ext ]
authorityKeyIdentifier = keyid:always

[ root ]
basicConstraints       = critical, CA:TRUE
keyUsage               = critical, keyCertSign, cRLSign
subjectKeyIdentifier   = hash

[ intermediate ]
basicConstraints       = critical, CA:TRUE, pathlen:0
keyUsage               = critical, keyCertSign, cRLSign
subjectKeyIdentifier   = hash
authorityKeyIdentifier = keyid:always

[ server ]
basicConstraints       = critical, CA:FALSE
keyUsage               = critical, digitalSignature
extendedKeyUsage       = serverAuth
subjectKeyIdentifier   = hash
authorityKeyIdentifier = keyid:always
subjectAltName         = DNS:localhost, DNS:good.example, IP:127.0.0.1, IP:::1

[ rsa_server ]
basicConstraints       = critical, CA:FALSE
# RSA key exchange (TLS 1.2 kRSA) needs keyEncipherment as well.
keyUsage               = critical, digitalSignature, keyEncipherment
extendedKeyUsage       = serverAuth
subjectKeyIdentifier   = hash
authorityKeyIdentifier = keyid:always
subjectAltName         = DNS:localhost, DNS:good.example, IP:127.0.0.1, IP:::1

[ wronghost ]
basicConstraints       = critical, CA:FALSE
keyUsage               = critical, digitalSignature
extendedKeyUsage       = serverAuth
subjectKeyIdentifier   = hash
authorityKeyIdentifier = keyid:always
subjectAltName         = DNS:wrong.example

[ client ]
basicConstraints       = critical, CA:FALSE
keyUsage               = critical, digitalSignature
extendedKeyUsage       = clientAuth
subjectKeyIdentifier   = hash
authorityKeyIdentifier = keyid:always

# No keyUsage here: with one lacking keyCertSign OpenSSL would not treat the
# certificate as self-signed and report 20 instead of 18.
[ selfsigned ]
basicConstraints       = critical, CA:FALSE
extendedKeyUsage       = serverAuth
subjectKeyIdentifier   = hash
subjectAltName         = DNS:localhost, IP:127.0.0.1
EOF

newkey() { # name [rsa]
    if [ "${2:-}" = rsa ]; then
        q openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$1.key"
    else
        q openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1.key"
    fi
}

newca_dir() { # dir
    mkdir -p "$1/new"
    : >"$1/index.txt"
    echo 1000 >"$1/crlnumber"
}

# issue CA_DIR NAME SUBJECT EXTSECTION [NOTBEFORE NOTAFTER]
issue() {
    cadir=$1 name=$2 subj=$3 ext=$4 sd=${5:-$start} ed=${6:-$end}
    q openssl req -new -config ca.cnf -key "$name.key" -subj "$subj" -out "$name.csr"
    ca "$cadir" -notext -rand_serial \
        -startdate "$sd" -enddate "$ed" -extensions "$ext" -extfile ca.cnf \
        -in "$name.csr" -out "$name.pem"
}

# selfsign CA_DIR NAME SUBJECT EXTSECTION — root of its own CA dir.
selfsign() {
    cadir=$1 name=$2 subj=$3 ext=$4
    newca_dir "$cadir"
    q openssl req -new -config ca.cnf -key "$name.key" -subj "$subj" -out "$name.csr"
    ca "$cadir" -notext -rand_serial -selfsign \
        -keyfile "$name.key" -startdate "$start" -enddate "$end" \
        -extensions "$ext" -extfile ca.cnf -in "$name.csr" -out "$name.pem"
    cp "$name.pem" "$cadir/cert.pem"
    cp "$name.key" "$cadir/key.pem"
}

# Subjects are written O first so that RFC 2253 renders them "CN=...,O=...".

# Root CA and intermediate.
newkey ca
selfsign root ca "/O=sslctx/CN=sslctx Test Root CA" root
newkey int
issue root int "/O=sslctx/CN=sslctx Test Intermediate CA" intermediate
newca_dir intca
cp int.pem intca/cert.pem
cp int.key intca/key.pem

# Second, untrusted root.
newkey other-ca
selfsign other other-ca "/CN=sslctx Other CA" root

# Server leaves.
newkey server
issue intca server "/CN=localhost" server
newkey rsa-server rsa
issue intca rsa-server "/CN=localhost" rsa_server
newkey expired
issue intca expired "/CN=localhost" server 20200101000000Z 20200102000000Z
newkey wronghost
issue intca wronghost "/CN=wrong.example" wronghost
newkey revoked
issue intca revoked "/CN=localhost" server
newkey untrusted
issue other untrusted "/CN=localhost" server

# Self-signed leaf: its own one-off "CA" dir.
newkey selfsigned
selfsign selfca selfsigned "/CN=localhost" selfsigned

# Client leaves.
newkey client
issue intca client "/O=sslctx/CN=Test Client" client
newkey client2
issue intca client2 "/O=sslctx/CN=Second Client" client
newkey revoked-client
issue intca revoked-client "/O=sslctx/CN=Revoked Client" client
newkey client-untrusted
issue other client-untrusted "/O=sslctx/CN=Untrusted Client" client

# Revocation and CRLs (lastUpdate 1 day back, like the certificates).
ca intca -revoke revoked.pem -crl_reason keyCompromise
ca intca -revoke revoked-client.pem -crl_reason keyCompromise
ca intca -gencrl \
    -crl_lastupdate "$start" -crl_nextupdate "$end" -out crl-int.pem
ca root -gencrl \
    -crl_lastupdate "$start" -crl_nextupdate "$end" -out crl-root.pem
cat crl-int.pem crl-root.pem >crl.pem

# The server key again, encrypted (PKCS#8, AES-256) with password "secret".
q openssl pkcs8 -topk8 -v2 aes-256-cbc -passout pass:secret -in server.key -out server-enc.key

# Chains: leaf first, then issuers.
cat server.pem int.pem >server-chain.pem
cat server.pem int.pem ca.pem >server-fullchain.pem
for n in rsa-server expired wronghost revoked client client2 revoked-client; do
    cat "$n.pem" int.pem >"$n-chain.pem"
done
cat untrusted.pem other-ca.pem >untrusted-chain.pem
cat client-untrusted.pem other-ca.pem >client-untrusted-chain.pem

# DH parameters from the fixed RFC 7919 group: no prime search, so instant.
q openssl genpkey -genparam -algorithm DH -pkeyopt group:ffdhe2048 -out dh2048.pem

# Hashed directory for ca_path tests: only the root, as the one trust anchor.
mkdir capath
cp ca.pem capath/ca.pem
q openssl rehash capath

# Publish. Only our own file names are replaced in OUTDIR.
rm -f *.csr
for f in *.pem *.key; do
    mv -f "$f" "$out/$f"
done
rm -rf "$out/capath"
mv capath "$out/capath"
touch "$out/.done"
