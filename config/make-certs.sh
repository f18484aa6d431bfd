#!/usr/bin/env bash
# Throwaway certificates for config/tls.yaml: a CA, a server certificate for
# localhost/127.0.0.1, and a client certificate with a SPIFFE id.
#   bash config/make-certs.sh [OUT_DIR]     (default: config/certs)
set -euo pipefail
out=${1:-"$(dirname "$0")/certs"}
mkdir -p "$out"
cd "$out"
days=3650
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days "$days" \
  -subj "/CN=weft demo CA" -keyout ca.key -out ca.pem 2>/dev/null
leaf() { # name cn san
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$2" \
    -keyout "$1.key" -out "$1.csr" 2>/dev/null
  openssl x509 -req -in "$1.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -days "$days" \
    -extfile <(printf 'subjectAltName=%s\nbasicConstraints=CA:FALSE\n' "$3") -out "$1.pem" 2>/dev/null
  rm -f "$1.csr" ca.srl
}
leaf server localhost "DNS:localhost,IP:127.0.0.1"
leaf client client-a "URI:spiffe://cluster.local/ns/demo/sa/client-a"
echo "certificates written to $out: ca.pem server.pem/key client.pem/key"
