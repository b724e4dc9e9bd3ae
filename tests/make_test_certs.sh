#!/usr/bin/env bash
# Makes a throwaway PKI for the TLS tests with openssl: DIR/ca.{pem,key} (a CA named CA_NAME),
# DIR/server.{pem,key} (CN localhost, SANs localhost and 127.0.0.1, signed by the CA) and
# DIR/client.{pem,key} (CN CLIENT_CN, clientAuth, signed by the CA). Keys are EC P-256.
# usage: tests/make_test_certs.sh DIR [CA_NAME] [CLIENT_CN]
set -euo pipefail
dir=$1 ca_name=${2:-specprune-test-ca} client_cn=${3:-arm-7}
mkdir -p "$dir"
cd "$dir"
key() { openssl ecparam -name prime256v1 -genkey -noout -out "$1" 2>/dev/null; }
key ca.key
openssl req -x509 -new -key ca.key -sha256 -days 2 -subj "/CN=$ca_name" -out ca.pem \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign"
key server.key
openssl req -new -key server.key -subj "/CN=localhost" -out server.csr
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' > server.ext
openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 -sha256 \
  -extfile server.ext -out server.pem 2>/dev/null
key client.key
openssl req -new -key client.key -subj "/CN=$client_cn" -out client.csr
printf 'subjectAltName=DNS:%s\nextendedKeyUsage=clientAuth\n' "$client_cn" > client.ext
openssl x509 -req -in client.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 -sha256 \
  -extfile client.ext -out client.pem 2>/dev/null
rm -f ./*.csr ./*.ext ./*.srl
