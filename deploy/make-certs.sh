#!/bin/sh
# A private CA and the certificates guardstream's web endpoints use, with openssl:
#
#   deploy/make-certs.sh DIR [DNS-NAME ...]
#
# writes into DIR (created if missing):
#   ca.crt, ca.key          the CA: every client trusts ca.crt (GUARDSTREAM_WEB_TLS_CAFILE, Prometheus tls_config);
#                           ca.key signs more certificates later: keep it out of every container and out of git
#   tls.crt, tls.key        the server certificate of the writer and the workers (GUARDSTREAM_WEB_TLS_CERT/KEY),
#                           valid for the DNS names given (default: guardstream guardstream-writer localhost)
#                           and 127.0.0.1
#   client.crt, client.key  a client certificate for mutual TLS (GUARDSTREAM_WEB_TLS_CLIENT_CERT/KEY, Prometheus
#                           cert_file/key_file), accepted where GUARDSTREAM_WEB_TLS_CLIENT_CAFILE is ca.crt
#
# Kubernetes names: pass the Services' names, e.g. guardstream guardstream-writer
# guardstream-writer.NAMESPACE.svc localhost. The certificates are valid for 825 days; run it again to renew
# (a new CA unless ca.crt and ca.key are already in DIR, which are then reused).
#
# tls.key and client.key are left readable by every user (0644): the containers run as uid 10001, which is not
# the user who ran this. Where you can, make them owned by 10001 and 0600 instead
# (sudo chown 10001:10001 DIR/tls.key DIR/client.key && sudo chmod 600 DIR/tls.key DIR/client.key).
set -eu

if [ $# -lt 1 ]; then
    echo "usage: $0 DIR [DNS-NAME ...]" >&2
    exit 2
fi
dir=$1
shift
[ $# -gt 0 ] || set -- guardstream guardstream-writer localhost
mkdir -p "$dir"
cd "$dir"

san=""
for name in "$@"; do
    san="${san}DNS:${name},"
done
san="${san}IP:127.0.0.1"

days=825
if [ ! -f ca.crt ] || [ ! -f ca.key ]; then
    openssl req -x509 -newkey rsa:3072 -nodes -days "$days" -subj "/CN=guardstream web CA" \
        -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
        -keyout ca.key -out ca.crt 2>/dev/null
    chmod 600 ca.key
fi

sign() {  # sign NAME SUBJECT EXTENDED-KEY-USAGE [SUBJECT-ALT-NAMES]
    openssl req -newkey rsa:3072 -nodes -subj "$2" -keyout "$1.key" -out "$1.csr" 2>/dev/null
    {
        echo "basicConstraints=critical,CA:FALSE"
        echo "keyUsage=critical,digitalSignature,keyEncipherment"
        echo "extendedKeyUsage=$3"
        echo "subjectKeyIdentifier=hash"
        echo "authorityKeyIdentifier=keyid,issuer"
        if [ -n "${4:-}" ]; then echo "subjectAltName=$4"; fi
    } > "$1.ext"
    openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days "$days" \
        -extfile "$1.ext" -out "$1.crt" 2>/dev/null
    rm -f "$1.csr" "$1.ext"
    chmod 644 "$1.key" "$1.crt"
}

sign tls "/CN=$1" serverAuth "$san"
sign client "/CN=guardstream-client" clientAuth
chmod 644 ca.crt
echo "wrote ca.crt, tls.crt, tls.key, client.crt, client.key to $(pwd) (server names: $san)"
