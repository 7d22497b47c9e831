#!/bin/sh
# Verifies an actseal proof bundle with jq, base64, GNU date and openssl alone: no actseal
# code is involved. The steps are those of docs/FORMAT.md §8 (a test keeps the two equal).
#
# Usage: verify-with-openssl.sh BUNDLE ANCHOR [DOCUMENT]
set -eu
if [ $# -lt 2 ] || [ $# -gt 3 ]; then
  echo "usage: $0 BUNDLE ANCHOR [DOCUMENT]" >&2
  exit 2
fi
B=$(realpath "$1") ANCHOR=$(realpath "$2") DOC=
[ $# -eq 3 ] && DOC=$(realpath "$3")
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
cd "$WORK"

# Decode the parts.
jq -r .receipt.payload "$B" | base64 -d > receipt.json
jq -r .lineage.statement.payload "$B" | base64 -d > lineage.json
jq -r '.receipt.signatures[0].sig' "$B" | base64 -d > receipt.sig.der
jq -r '.lineage.statement.signatures[0].sig' "$B" | base64 -d > lineage.sig.der
jq -r .actorKey.publicKey "$B" | base64 -d > actor.spki.der
jq -r .lineage.deviceCertificate "$B" | base64 -d > device.der
test "$(jq '.receipt.signatures | length' "$B")" = 1
test "$(jq '.lineage.statement.signatures | length' "$B")" = 1

# lineage.certificate: device certificate -> certificateChain -> anchor, at signedAt.
openssl x509 -inform DER -in device.der -out device.pem
: > untrusted.pem
for c in $(jq -r '.lineage.certificateChain[]' "$B"); do
  printf '%s' "$c" | base64 -d | openssl x509 -inform DER >> untrusted.pem
done
UNTRUSTED=; [ -s untrusted.pem ] && UNTRUSTED="-untrusted untrusted.pem"
AT=$(date -u -d "$(jq -r .predicate.signedAt receipt.json)" +%s)
openssl verify -x509_strict -purpose any -attime "$AT" -CAfile "$ANCHOR" $UNTRUSTED device.pem
# openssl verify accepts a CA as the leaf: the device certificate must not be one.
if openssl x509 -in device.pem -noout -ext basicConstraints | grep -q 'CA:TRUE'; then
  echo 'device certificate is a CA' >&2; exit 1
fi

# receipt.signature: key ids are the SHA-256 of the actor key's SPKI DER.
KEYID=$(openssl dgst -sha256 -r actor.spki.der | cut -d' ' -f1)
test "$KEYID" = "$(jq -r .actorKey.keyId "$B")"
test "$KEYID" = "$(jq -r '.receipt.signatures[0].keyid' "$B")"
test "$KEYID" = "$(jq -r .predicate.key.id receipt.json)"
openssl pkey -pubin -inform DER -in actor.spki.der -out actor.pub.pem
pae() {  # pae PAYLOAD_TYPE BODY_FILE > PAE_FILE   (§2)
  printf 'DSSEv1 %d %s %d ' "$(printf '%s' "$1" | wc -c)" "$1" "$(wc -c < "$2")"
  cat "$2"
}
pae "$(jq -r .receipt.payloadType "$B")" receipt.json > receipt.pae
openssl dgst -sha256 -verify actor.pub.pem -signature receipt.sig.der receipt.pae

# receipt.document (when the auditor has the document)
if [ -n "$DOC" ]; then
  test "$(openssl dgst -sha256 -r "$DOC" | cut -d' ' -f1)" = "$(jq -r '.subject[0].digest.sha256' receipt.json)"
fi

# lineage.signature: under the device certificate's key.
openssl x509 -in device.pem -pubkey -noout > device.pub.pem
pae "$(jq -r .lineage.statement.payloadType "$B")" lineage.json > lineage.pae
openssl dgst -sha256 -verify device.pub.pem -signature lineage.sig.der lineage.pae

# lineage.statement: about this key, this actor and version, never extractable.
test "$(jq -r '.subject[0].digest.sha256' lineage.json)" = "$KEYID"
test "$(jq -r .predicate.keyId lineage.json)" = "$KEYID"
test "$(jq -r .predicate.actor lineage.json)" = "$(jq -r .predicate.actor receipt.json)"
test "$(jq .predicate.keyVersion lineage.json)" = "$(jq .predicate.key.version receipt.json)"
jq -e '.predicate.attributes | .sensitive == true and .alwaysSensitive == true
  and .extractable == false and .neverExtractable == true and .local == true
  and .sign == true' lineage.json
echo "bundle verified"
