#!/bin/sh
# Verifies an actseal proof bundle with jq, base64, GNU coreutils (od, basenc, date, head, tail,
# cut, tr, wc) and openssl 3 alone: no actseal code is involved. It checks every link: the
# receipt, the key's PKCS#11 or TPM lineage up to the trust anchor, every earlier key version
# and rotation, the log key, the checkpoint and the inclusion proof. The steps are those of
# docs/FORMAT.md §8, which holds everything below `cd "$WORK"` verbatim (a test keeps the two
# equal).
#
# Usage: verify-with-openssl.sh BUNDLE ANCHOR [DOCUMENT]
# Exit status: 0 verified; 1 a check failed, named on stderr as "FAILED <§7 check>: <why>";
# 2 usage.
set -eu
if [ $# -lt 2 ] || [ $# -gt 3 ]; then
  echo "usage: $0 BUNDLE ANCHOR [DOCUMENT]" >&2
  exit 2
fi
B=$(realpath "$1") ANCHOR=$(realpath "$2") DOC=
[ $# -eq 3 ] && DOC=$(realpath "$3")
WORK=$(mktemp -d)
cd "$WORK"

# The signed formats (FORMAT.md §3, §4, §6, §11.2). When a format changes, its value changes
# here; the lines that read these formats are marked "format:".
BUNDLE_TYPE=application/vnd.actseal.bundle.v1+json
PAYLOAD_TYPE=application/vnd.in-toto+json
STATEMENT_TYPE=https://in-toto.io/Statement/v1
RECEIPT_TYPE=https://actseal.dev/receipt/v1
BATCH_TYPE=https://actseal.dev/receipt-batch/v1
SEAL_MAGIC='actseal-batch-seal/v1'  # then a newline (§12.3)
PKCS11_LINEAGE_TYPE=https://actseal.dev/lineage/pkcs11-attributes/v2
ROTATION_TYPE=https://actseal.dev/rotation/v1
TPM_EXTRA_DATA_DOMAIN=actseal/tpm2-certify/v2
# The extended key usages that give a device certificate its role (§6.1): a certificate
# vouches for one kind of evidence only, and for a log key only with LOG_EKU as well.
DEVICE_EKU=2.25.242230413017653211193847039386664154048.1.1  # PKCS#11 device: lineage statements
AK_EKU=2.23.133.8.3                                          # TPM attestation key: TPMS_ATTEST
LOG_EKU=2.25.242230413017653211193847039386664154048.1.2     # may attest a log key
# The DER SubjectPublicKeyInfo of a P-256 key: these 26 bytes, then 04 || x || y.
P256_SPKI_PREFIX=3059301306072a8648ce3d020106082a8648ce3d030107034200

# Each step names the §7 check it stands for; the first failure ends the script, with that name
# and the reason on stderr. A command that fails without a reason is reported the same way.
STEP=bundle.parse REPORTED=
trap 'status=$?; cd /; rm -rf "$WORK"
  [ $status -eq 0 ] || [ -n "$REPORTED" ] || echo "FAILED $STEP: a command failed" >&2' EXIT
step() { STEP=$1; echo "checking $1${2:+ ($2)}"; }
fail() { echo "FAILED $STEP: $*" >&2; REPORTED=1; exit 1; }
same() { [ "$2" = "$3" ] || fail "$1 is '$2', expected '$3'"; }  # same WHAT GOT WANT
# expect FILE WHAT CHECKS THEN [JQ ARGS]: CHECKS is a list of jq [description, condition] pairs
# over the JSON in FILE; the first condition that is not true fails the step. Then the values of
# the jq expression THEN (e.g. `empty`), one a line, are in expect.out after an "ok" line.
expect() {
  _x_file=$1 _x_what=$2 _x_checks=$3 _x_then=$4; shift 4
  jq -r "$@" "([$_x_checks] | map(select(.[1] != true) | .[0]) | first // \"ok\"), ($_x_then)" \
    "$_x_file" > expect.out 2>/dev/null || fail "$_x_what: not JSON of the expected shape"
  read -r _x_bad < expect.out
  [ "$_x_bad" = ok ] || fail "$_x_what: $_x_bad"
}
number() { case $2 in '' | *[!0-9]*) fail "$1 '$2' is not a number";; esac; }  # number WHAT N
hex() { od -An -v -tx1 | tr -d ' \n'; }              # bytes on stdin as lowercase hex
unhex() { tr a-f A-F | basenc --base16 -d; }          # lowercase hex on stdin as bytes
u32be() { printf '%08X' "$1" | basenc --base16 -d; }  # a 4-byte big-endian number
sha256() { openssl dgst -sha256 -r "$@" | cut -c1-64; }  # of a file, or of stdin
# epoch WHAT TIME: $EPOCH := TIME (RFC 3339 UTC, seconds: 2026-11-26T17:51:36Z) in Unix seconds.
epoch() {
  case $2 in
    [0-9][0-9][0-9][0-9]-[01][0-9]-[0-3][0-9]T[0-2][0-9]:[0-5][0-9]:[0-5][0-9]Z) ;;
    *) fail "$1 '$2' is not a time like 2026-11-26T17:51:36Z";;
  esac
  EPOCH=$(date -u -d "$2" +%s 2>/dev/null) && [ "$(date -u -d "@$EPOCH" +%FT%TZ)" = "$2" ] \
    || fail "$1 '$2' is not a valid time"
}
# p256 DER PEM WHAT: DER is a P-256 SubjectPublicKeyInfo; PEM receives it for openssl dgst.
p256() {
  [ "$(wc -c < "$1")" -eq 91 ] && [ "$(head -c 26 "$1" | hex)" = "$P256_SPKI_PREFIX" ] \
    || fail "$3 is not an EC P-256 public key"
  openssl pkey -pubin -inform DER -in "$1" -out "$2" 2>/dev/null || fail "$3 is not a P-256 point"
}
# path_root INDEX SIZE LEAF PATH: $R := the root that the RFC 9162 inclusion proof in file PATH
# (hex hashes, one a line, leaf side first) leads to from leaf hash LEAF at INDEX of a tree of
# SIZE (§2.1.3.2, shell arithmetic; node hashes SHA-256(01 || left || right)).
node() { printf '01%s%s' "$1" "$2" | unhex | sha256; }
path_root() {
  R=$3 FN=$1 SN=$(($2 - 1))
  for P in $(cat "$4"); do
    case $P in *[!0-9a-f]*) fail "inclusion proof hash '$P' is not lowercase hex";; esac
    [ ${#P} -eq 64 ] || fail "inclusion proof hash '$P' is not 32 bytes"
    [ "$SN" -ne 0 ] || fail "the inclusion proof is longer than the tree is tall"
    if [ $((FN & 1)) -eq 1 ] || [ "$FN" -eq "$SN" ]; then
      R=$(node "$P" "$R")
      if [ $((FN & 1)) -eq 0 ]; then
        while [ "$FN" -ne 0 ] && [ $((FN & 1)) -eq 0 ]; do FN=$((FN >> 1)) SN=$((SN >> 1)); done
      fi
    else
      R=$(node "$R" "$P")
    fi
    FN=$((FN >> 1)) SN=$((SN >> 1))
  done
  [ "$SN" -eq 0 ] || fail "the inclusion proof is shorter than the tree is tall"
}
pae() {  # pae PAYLOAD_TYPE BODY_FILE > PAE_FILE   (§2)
  printf 'DSSEv1 %d %s %d ' "$(printf '%s' "$1" | wc -c)" "$1" "$(wc -c < "$2")"
  cat "$2"
}
# dsse FILE PATH PUB KEYID NAME WHAT: the DSSE envelope at jq PATH in FILE has one signature, by
# the key PUB whose id is KEYID; NAME.json receives its payload, NAME.sig.der its signature.
dsse() {
  expect "$1" "$6" "$2"' | ["one signature", (.signatures | length) == 1],
    ["payloadType", .payloadType == $type],
    ["keyid = the signing key id", .signatures[0].keyid == $key]' \
    "$2 | .payload, .signatures[0].sig" --arg type "$PAYLOAD_TYPE" --arg key "$4"
  { read -r _; read -r _d_payload; read -r _d_sig; } < expect.out
  printf '%s' "$_d_payload" | base64 -d > "$5.json" 2>/dev/null || fail "$6: payload not base64"
  printf '%s' "$_d_sig" | base64 -d > "$5.sig.der" 2>/dev/null || fail "$6: signature not base64"
  pae "$PAYLOAD_TYPE" "$5.json" > "$5.pae"
  openssl dgst -sha256 -verify "$3" -signature "$5.sig.der" "$5.pae" > /dev/null \
    || fail "$6: the signature does not verify"
}

# certificate N LINEAGE AT EKU OTHER KIND WHAT: the device certificate of the lineage in file
# LINEAGE -> its certificateChain -> the anchor, each valid at AT (Unix seconds); the device
# certificate is no CA, carries the extended key usage EKU and not OTHER (the other evidence
# role), and LOG_EKU too when KIND is "log". N.device.pub.pem receives its key and $DEVICE_ID
# the key's id.
certificate() {
  _c_n=$1 _c_at=$3 _c_eku=$4 _c_other=$5 _c_kind=$6 _c_what=$7 _c_device=device
  : > "$_c_n.untrusted.pem"
  for c in $(jq -r '.deviceCertificate, .certificateChain[]' "$2"); do  # device, then chain
    if [ $_c_device = device ]; then
      printf '%s' "$c" | base64 -d > "$_c_n.device.der" 2>/dev/null \
        || fail "$_c_what: the device certificate is not base64"
      openssl x509 -inform DER -in "$_c_n.device.der" -noout -pubkey \
        -ext basicConstraints,keyUsage,extendedKeyUsage > "$_c_n.device.txt" 2>/dev/null \
        || fail "$_c_what: the device certificate is not X.509 DER"
      _c_device=chain
    else
      printf '%s' "$c" | base64 -d 2>/dev/null \
        | openssl x509 -inform DER >> "$_c_n.untrusted.pem" 2>/dev/null \
        || fail "$_c_what: a certificateChain entry is not X.509 DER"
    fi
  done
  _c_untrusted=; [ ! -s "$_c_n.untrusted.pem" ] || _c_untrusted="-untrusted $_c_n.untrusted.pem"
  # shellcheck disable=SC2086  # $_c_untrusted is empty or two words
  openssl verify -x509_strict -purpose any -attime "$_c_at" -CAfile "$ANCHOR" $_c_untrusted \
    "$_c_n.device.der" > "$_c_n.verify.out" 2>&1 \
    || fail "$_c_what: $(tr '\n' ' ' < "$_c_n.verify.out")"
  # openssl verify accepts a CA as the leaf: the device certificate must not be one, and signs.
  _c_text=$(cat "$_c_n.device.txt")
  case $_c_text in *CA:TRUE*) fail "$_c_what: the device certificate is a CA";; esac
  case $_c_text in *'X509v3 Key Usage:'*)
    case $_c_text in *'Digital Signature'*) ;; *) fail "$_c_what: keyUsage lacks digitalSignature";;
    esac;;
  esac
  # format: the certificate's role (§6.1).
  has_eku "$_c_n.device.txt" "$_c_eku" \
    || fail "$_c_what: the device certificate lacks the extended key usage $_c_eku"
  ! has_eku "$_c_n.device.txt" "$_c_other" \
    || fail "$_c_what: the device certificate also names the other role $_c_other"
  [ "$_c_kind" != log ] || has_eku "$_c_n.device.txt" "$LOG_EKU" \
    || fail "$_c_what: the device certificate may not attest a log key (no $LOG_EKU)"
  openssl pkey -pubin -in "$_c_n.device.txt" -out "$_c_n.device.pub.pem"
  DEVICE_ID=$(openssl pkey -pubin -in "$_c_n.device.pub.pem" -outform DER | sha256)
}
# has_eku TEXT OID: the extendedKeyUsage in TEXT (openssl x509 -ext output) lists OID. openssl
# prints an OID's name when it knows one, else its dotted form; asn1parse names it the same way.
has_eku() {
  _e_name=$(openssl asn1parse -genstr "OID:$2" | tail -n 1) _e_name=${_e_name##*:} _e_next=
  while read -r line; do
    if [ -n "$_e_next" ]; then
      printf '%s\n' "$line" | tr ',' '\n' | {
        while read -r u; do [ "$u" != "$2" ] && [ "$u" != "$_e_name" ] || exit 0; done; exit 1
      } && return 0
      _e_next=
    fi
    case $line in *'Extended Key Usage:'*) _e_next=1;; esac
  done < "$1"
  return 1
}

# A reader of big-endian TPM structures (TPM 2.0 Part 2). read FILE: start reading FILE.
# take N: $HEX := its next N bytes as hex; num N: $NUM := them as a number; tpm2b: a u16 size,
# then that many bytes in $HEX; end: nothing may follow. ($REST: the bytes not yet read, as hex.)
read_tpm() { TPM=$1 POS=0 REST=$(hex < "$1"); }
take() {
  _r_pattern= _r_i=0
  while [ $_r_i -lt "$1" ]; do _r_pattern="$_r_pattern??" _r_i=$((_r_i + 1)); done
  [ ${#REST} -ge $(($1 * 2)) ] || fail "$TPM is truncated at byte $POS"
  _r_tail=${REST#$_r_pattern}
  HEX=${REST%"$_r_tail"} REST=$_r_tail POS=$((POS + $1))
}
num() { take "$1"; NUM=$((0x$HEX)); }
tpm2b() { num 2; take "$NUM"; }
end() { [ -z "$REST" ] || fail "$TPM has bytes after its end"; }

# tpm_public FILE: the ECC TPMT_PUBLIC in FILE; $_t_attributes, $_t_curve and the point
# ($_t_x, $_t_y, left-padded to 32 bytes) are what it holds.
tpm_public() {
  read_tpm "$1"
  take 2; same "TPMT_PUBLIC type" "$HEX" 0023         # TPM_ALG_ECC
  take 2; same "TPMT_PUBLIC nameAlg" "$HEX" 000b      # TPM_ALG_SHA256
  num 4; _t_attributes=$NUM                           # objectAttributes
  tpm2b                                               # authPolicy
  num 2; [ "$NUM" -eq 16 ] || take 4                  # symmetric: alg [keyBits, mode]
  num 2; [ "$NUM" -eq 16 ] || take 2                  # scheme: alg [hashAlg]
  take 2; _t_curve=$HEX                               # curveID
  num 2; [ "$NUM" -eq 16 ] || take 2                  # kdf: alg [hashAlg]
  tpm2b; _t_x=$HEX                                    # unique.x
  tpm2b; _t_y=$HEX                                    # unique.y
  end
  same "TPMT_PUBLIC curveID" "$_t_curve" 0003         # TPM_ECC_NIST_P256
  [ ${#_t_x} -le 64 ] && [ ${#_t_y} -le 64 ] || fail "a TPMT_PUBLIC coordinate is over 32 bytes"
  _t_x=$(printf '%64s' "$_t_x" | tr ' ' 0) _t_y=$(printf '%64s' "$_t_y" | tr ' ' 0)
}
# The key id of the point just read: the SHA-256 of its P-256 SubjectPublicKeyInfo.
tpm_key_id() { printf '%s04%s%s' "$P256_SPKI_PREFIX" "$_t_x" "$_t_y" | unhex | sha256; }

# tpm_ak N: N.ak.bin (akPublicArea) is a restricted, sign-only key made in its TPM, and it is
# the attestation key certificate's key (whose id is $DEVICE_ID).
tpm_ak() {
  tpm_public "$1.ak.bin"
  attribute fixedTPM 1 1; attribute fixedParent 4 1; attribute sensitiveDataOrigin 5 1
  attribute sign 18 1; attribute restricted 16 1; attribute decrypt 17 0
  same "the attestation key of akPublicArea" "$(tpm_key_id)" "$DEVICE_ID"
}

# tpm_certify N SUBJECT_FILE KEYID: the §4.2 checks of the TPM2_Certify in N.attest.bin
# (TPMS_ATTEST), N.public.bin (the key's TPMT_PUBLIC), N.ak.bin (the attestation key's),
# N.created (its createdAt) and N.nonce.bin, for the key subject named in SUBJECT_FILE (§4.3)
# and the key whose id is KEYID.
tpm_certify() {
  read_tpm "$1.attest.bin"
  take 4; same "TPMS_ATTEST magic" "$HEX" ff544347    # TPM_GENERATED_VALUE
  take 2; same "TPMS_ATTEST type" "$HEX" 8017         # TPM_ST_ATTEST_CERTIFY
  # format: qualifiedSigner is the AK's Qualified Name as a primary key of the endorsement
  # hierarchy: 000b || SHA-256(4000000b || 000b || SHA-256(akPublicArea)).
  tpm2b; _t_signer=$HEX                               # qualifiedSigner
  tpm2b; _t_extra=$HEX                                # extraData
  take 16                                             # clockInfo: clock, resetCount, restartCount
  take 1; case $HEX in 00 | 01) ;; *) fail "TPMS_ATTEST clockInfo.safe is $HEX";; esac
  take 8                                              # firmwareVersion
  tpm2b; _t_name=$HEX                                 # certify.name
  tpm2b                                               # certify.qualifiedName
  end
  same "TPMS_ATTEST qualifiedSigner" "$_t_signer" \
    "000b$(printf '4000000b000b%s' "$(sha256 "$1.ak.bin")" | unhex | sha256)"
  # The key: made in this TPM and never to leave it: fixedTPM, fixedParent,
  # sensitiveDataOrigin and sign set; restricted and decrypt clear.
  tpm_public "$1.public.bin"
  attribute fixedTPM 1 1; attribute fixedParent 4 1; attribute sensitiveDataOrigin 5 1
  attribute sign 18 1; attribute restricted 16 0; attribute decrypt 17 0
  # The TPM certified this public area: its Name is 000b || SHA-256(TPMT_PUBLIC).
  same "the certified name" "$_t_name" "000b$(sha256 "$1.public.bin")"
  # Its point is the key: the P-256 SubjectPublicKeyInfo of (x, y) hashes to KEYID.
  same "the certified key" "$(tpm_key_id)" "$3"
  # format: extraData = SHA-256(domain || 00 || u32be(len(subject)) || subject
  # || u32be(len(createdAt)) || createdAt || nonce) binds the key to its subject and its time.
  { printf '%s' "$TPM_EXTRA_DATA_DOMAIN"; printf 00 | unhex; u32be "$(wc -c < "$2")"; cat "$2"
    u32be "$(wc -c < "$1.created")"; cat "$1.created"; cat "$1.nonce.bin"; } > "$1.extra.bin"
  same "TPMS_ATTEST extraData" "$_t_extra" "$(sha256 "$1.extra.bin")"
}
attribute() {  # attribute NAME BIT WANT: bit BIT of $_t_attributes is WANT
  [ $(((_t_attributes >> $2) & 1)) -eq "$3" ] \
    || fail "$TPM objectAttributes.$1 must be $3: the key may not be held by the TPM alone"
}

# pkcs11_statement N KIND NAME_FILE VERSION KEYID: the §4.1 checks of the lineage statement
# N.json (whose signature has verified) about key id KEYID: for KIND "actor", version VERSION of
# the actor named in NAME_FILE; for KIND "log", the key of the log named in NAME_FILE (§4.3).
# $CREATED := the key's createdAt in Unix seconds.
pkcs11_statement() {
  # format: the lineage statement's predicate (§4.1) and the key's subject (§4.3).
  expect "$1.json" "the lineage statement" '
    ["_type", ._type == $st], ["predicateType", .predicateType == $type],
    ["one subject", (.subject | length) == 1],
    ["subject digest = the key id", .subject[0].digest.sha256 == $key],
    ["keyRole", .predicate.keyRole == (if $kind == "log" then "log-key" else "actor-key" end)],
    ["subject name = the key subject", .subject[0].name ==
     (if $kind == "log" then "log-key:\($name)" else "actor-key:\($name)#\($version)" end)],
    ["the key owner", if $kind == "log"
     then .predicate.logOrigin == $name and .predicate.actor == null
       and .predicate.keyVersion == null
     else .predicate.actor == $name and .predicate.keyVersion == $version
       and .predicate.logOrigin == null end],
    ["predicate.keyId", .predicate.keyId == $key],
    ["predicate.origin", .predicate.origin == "generated" or .predicate.origin == "adopted"],
    ["keyType EC", .predicate.attributes.keyType == "EC"],
    ["curve P-256", .predicate.attributes.curve == "P-256"],
    ["sensitive", .predicate.attributes.sensitive == true],
    ["alwaysSensitive", .predicate.attributes.alwaysSensitive == true],
    ["extractable false", .predicate.attributes.extractable == false],
    ["neverExtractable", .predicate.attributes.neverExtractable == true],
    ["local", .predicate.attributes.local == true], ["sign", .predicate.attributes.sign == true]' \
    .predicate.createdAt --arg st "$STATEMENT_TYPE" --arg type "$PKCS11_LINEAGE_TYPE" \
    --arg kind "$2" --rawfile name "$3" --argjson version "$4" --arg key "$5"
  { read -r _; read -r _p_created; } < expect.out
  epoch predicate.createdAt "$_p_created"; CREATED=$EPOCH
}

# attestation N CHECKS KIND NAME_FILE VERSION KEYID AT BACKEND WHAT: the key attestation (§4)
# in N.lineage.json vouches that key KEYID lives in hardware of BACKEND, under a device
# certificate of the evidence's role valid at AT, as version VERSION of the actor named in
# NAME_FILE (KIND "actor") or as the key of the log named in NAME_FILE (KIND "log"). CHECKS: the
# three §7 checks this stands for (certificate, signature, statement). $CREATED := the key's
# createdAt (Unix seconds).
attestation() {
  _a_n=$1 _a_kind=$3 _a_name=$4 _a_version=$5 _a_key=$6 _a_at=$7 _a_backend=$8 _a_what=$9
  # shellcheck disable=SC2086  # three words
  set -- $2
  step "$1" "$_a_what: device certificate"
  # A PKCS#11 key is vouched for by a lineage statement, a TPM key by a TPM2_Certify (§4).
  expect "$_a_n.lineage.json" "$_a_what" \
    '["one kind of evidence", has("statement") != has("tpm2Certify")]' \
    'if has("statement") then "pkcs11" else "tpm", (.tpm2Certify
     | .attest, .signature, .publicArea, .akPublicArea, .createdAt, .nonce // "") end'
  { read -r _; read -r _a_evidence; } < expect.out
  # The key's subject name (§4.3), which the evidence binds.
  if [ "$_a_kind" = log ]; then
    { printf 'log-key:'; cat "$_a_name"; } > "$_a_n.subject"
  else
    { printf 'actor-key:'; cat "$_a_name"; printf '#%s' "$_a_version"; } > "$_a_n.subject"
  fi
  case $_a_evidence in
    pkcs11)
      certificate "$_a_n" "$_a_n.lineage.json" "$_a_at" "$DEVICE_EKU" "$AK_EKU" "$_a_kind" \
        "$_a_what"
      step "$2" "$_a_what: lineage statement signed by the device key"
      dsse "$_a_n.lineage.json" .statement "$_a_n.device.pub.pem" "$DEVICE_ID" "$_a_n" \
        "$_a_what: lineage statement"
      step "$3" "$_a_what: what the device states about the key"
      same "$_a_what: lineage.backend" "$(jq -r .backend "$_a_n.lineage.json")" "$_a_backend"
      same "$_a_what: the backend of a lineage statement" "$_a_backend" pkcs11
      pkcs11_statement "$_a_n" "$_a_kind" "$_a_name" "$_a_version" "$_a_key";;
    tpm)
      { read -r _; read -r _; read -r _a_attest; read -r _a_signature; read -r _a_public
        read -r _a_ak; read -r _a_created; read -r _a_nonce; } < expect.out
      certificate "$_a_n" "$_a_n.lineage.json" "$_a_at" "$AK_EKU" "$DEVICE_EKU" "$_a_kind" \
        "$_a_what"
      step "$2" "$_a_what: TPMS_ATTEST signed by the attestation key"
      printf '%s' "$_a_attest" | base64 -d > "$_a_n.attest.bin" 2>/dev/null \
        || fail "$_a_what: tpm2Certify.attest is not base64"
      printf '%s' "$_a_signature" | base64 -d > "$_a_n.attest.sig.der" 2>/dev/null \
        || fail "$_a_what: tpm2Certify.signature is not base64"
      printf '%s' "$_a_ak" | base64 -d > "$_a_n.ak.bin" 2>/dev/null \
        || fail "$_a_what: tpm2Certify.akPublicArea is not base64"
      tpm_ak "$_a_n"
      openssl dgst -sha256 -verify "$_a_n.device.pub.pem" -signature "$_a_n.attest.sig.der" \
        "$_a_n.attest.bin" > /dev/null \
        || fail "$_a_what: the AK signature over TPMS_ATTEST does not verify"
      step "$3" "$_a_what: what the TPM states about the key"
      same "$_a_what: lineage.backend" "$(jq -r .backend "$_a_n.lineage.json")" "$_a_backend"
      same "$_a_what: the backend of a TPM2_Certify" "$_a_backend" tpm
      printf '%s' "$_a_public" | base64 -d > "$_a_n.public.bin" 2>/dev/null \
        || fail "$_a_what: tpm2Certify.publicArea is not base64"
      printf '%s' "$_a_nonce" | base64 -d > "$_a_n.nonce.bin" 2>/dev/null \
        || fail "$_a_what: tpm2Certify.nonce is not base64"
      printf '%s' "$_a_created" > "$_a_n.created"
      epoch tpm2Certify.createdAt "$_a_created"; _a_created_at=$EPOCH
      tpm_certify "$_a_n" "$_a_n.subject" "$_a_key"
      CREATED=$_a_created_at;;
  esac
}

# bundle.parse: the bundle's shape (§5): the members read below are there, of their types.
expect "$B" "the bundle" 'def text: type == "string";
  def count: type == "number" and . >= 0 and . == floor and . < 9007199254740992;
  def lineage: type == "object" and (.deviceCertificate | text) and (.certificateChain | type) ==
    "array" and all(.certificateChain[]; text) and has("statement") != has("tpm2Certify");
  ["mediaType", .mediaType == $type],
  ["receipt", (.receipt | type) == "object" and (.receipt.signatures | type) == "array"],
  ["receipt: its own signature and no batch member, or a batch member and no signature (§12)",
   if has("batch") then (.receipt.signatures | length) == 0 and (.batch | type) == "object"
   and (.batch.statement.signatures | type == "array" and length == 1)
   and (.batch.leafIndex | count) and (.batch.inclusionProof | type) == "array"
   and all(.batch.inclusionProof[]; text) else (.receipt.signatures | length) == 1 end],
  ["actorKey", (.actorKey.publicKey | text) and (.actorKey.keyId | text)],
  ["lineage: a device certificate, its chain, a statement or a tpm2Certify", (.lineage | lineage)],
  ["lineage.predecessors", (.lineage.predecessors // [] | type == "array"
   and all(.[]; lineage and (.publicKey | text) and (.keyId | text)))],
  ["lineage.rotations",
   (.lineage.rotations // [] | type == "array" and all(.[]; type == "object"))],
  ["log.index", (.log.index | count)], ["log.treeSize", (.log.treeSize | count)],
  ["log.inclusionProof",
   (.log.inclusionProof | type) == "array" and all(.log.inclusionProof[]; text)],
  ["log.checkpoint", (.log.checkpoint | text)],
  ["log.logKey", (.log.logKey | (.keyName | text) and (.publicKey | text) and (.keyId | text)
   and (.lineage | lineage))]' \
  '(.actorKey | .publicKey, .keyId), (.lineage | (.predecessors // [] | length),
   (.rotations // [] | length)), (.log | .index, .treeSize, .logKey.publicKey, .logKey.keyId,
   .logKey.lineage.backend), if has("batch") then "batch" else "single" end' \
  --arg type "$BUNDLE_TYPE"
{ read -r _; read -r ACTOR_KEY; read -r ACTOR_KEY_ID; read -r PREDECESSORS; read -r ROTATIONS
  read -r INDEX; read -r SIZE; read -r LOG_KEY; read -r LOG_KEY_ID; read -r LOG_BACKEND
  read -r MODE; } < expect.out

# receipt.signature: key ids are the SHA-256 of the key's SubjectPublicKeyInfo DER.
step receipt.signature
printf '%s' "$ACTOR_KEY" | base64 -d > actor.spki.der 2>/dev/null \
  || fail "actorKey.publicKey is not base64"
p256 actor.spki.der actor.pub.pem actorKey.publicKey
KEYID=$(sha256 actor.spki.der)
same actorKey.keyId "$ACTOR_KEY_ID" "$KEYID"
if [ "$MODE" = single ]; then
  dsse "$B" .receipt actor.pub.pem "$KEYID" receipt "the receipt"
else
  # A batch receipt (§12): the actor key signed the batch statement; receipt.batch then proves
  # the receipt payload is the leaf it claims under the statement's root.
  dsse "$B" .batch.statement actor.pub.pem "$KEYID" batch "the batch statement"
  step receipt.batch
  # format: the batch statement (§12.2).
  expect batch.json "the batch statement" '
    ["_type", ._type == $st], ["predicateType", .predicateType == $type],
    ["one subject", (.subject | length) == 1],
    ["subject digest", (.subject[0].digest.sha256 | test("^[0-9a-f]{64}$"))],
    ["predicate.key.id", .predicate.key.id == $key],
    ["predicate.size", (.predicate.size | type == "number" and . >= 1 and . == floor)],
    ["predicate.firstSequence",
     (.predicate.firstSequence | type == "number" and . >= 1 and . == floor)],
    ["predicate.key.version",
     (.predicate.key.version | type == "number" and . >= 1 and . == floor)],
    ["predicate.firstLogIndex: a number, or null in a fleet batch",
     (.predicate | has("firstLogIndex") and (.firstLogIndex | type == "number" or . == null))],
    ["subject name", .subject[0].name == "receipt-batch:\(.predicate.actor)#\(.predicate.key.version)/\(.predicate.firstSequence)"]' \
    '.predicate.size, .subject[0].digest.sha256' \
    --arg st "$STATEMENT_TYPE" --arg type "$BATCH_TYPE" --arg key "$KEYID"
  { read -r _; read -r BATCH_SIZE; read -r BATCH_ROOT; } < expect.out
  jq -r '.receipt.payload' "$B" | base64 -d > receipt.json 2>/dev/null \
    || fail "receipt.payload is not base64"
  LEAF=$(jq -r .batch.leafIndex "$B")
  jq -r '.batch.inclusionProof[]' "$B" > batch.path
  [ "$LEAF" -lt "$BATCH_SIZE" ] || fail "batch.leafIndex $LEAF is not in a batch of $BATCH_SIZE"
  path_root "$LEAF" "$BATCH_SIZE" "$({ printf 00 | unhex; cat receipt.json; } | sha256)" batch.path
  same "the root the batch inclusion proof leads to" "$R" "$BATCH_ROOT"
  # The log entry's signature slot holds the batch seal (§12.3), built here as receipt.sig.der.
  { printf '%s\n' "$SEAL_MAGIC"; u32be "$LEAF"; printf '%02X' "$(wc -l < batch.path)" | unhex
    tr -d '\n' < batch.path | unhex; u32be "$(wc -c < batch.json)"; cat batch.json
    u32be "$(wc -c < batch.sig.der)"; cat batch.sig.der; } > receipt.sig.der
fi

# receipt.statement: what the receipt says (§3; `actseal verify` checks the finer rules).
step receipt.statement
expect receipt.json "the receipt" '
  ["_type", ._type == $st], ["predicateType", .predicateType == $type],
  ["one subject", (.subject | length) == 1],
  ["subject digest", (.subject[0].digest.sha256 | test("^[0-9a-f]{64}$"))],
  ["subject name = action target", .subject[0].name == .predicate.action.target],
  ["predicate.key.id", .predicate.key.id == $key],
  ["predicate.key.version", (.predicate.key.version | type == "number" and . >= 1 and . == floor)],
  ["predicate.key.backend", .predicate.key.backend == "pkcs11" or .predicate.key.backend == "tpm"],
  ["predicate.sequence", (.predicate.sequence | type == "number" and . >= 1 and . == floor)],
  ["previousReceipt null exactly at sequence 1",
   (.predicate.sequence == 1) == (.predicate.previousReceipt == null)],
  ["predicate.logIndex: a number, or null in a fleet receipt",
   (.predicate | has("logIndex") and (.logIndex | type == "number" or . == null))],
  ["predicate.mode: single with its own signature, batch with a batch member",
   .predicate.mode == $mode]' \
  '.predicate | .key.version, .key.backend, .signedAt, .logIndex' \
  --arg st "$STATEMENT_TYPE" --arg type "$RECEIPT_TYPE" --arg key "$KEYID" --arg mode "$MODE"
jq -j .predicate.actor receipt.json > actor.txt
{ read -r _; read -r VERSION; read -r BACKEND; read -r SIGNED; read -r LOG_INDEX; } < expect.out
epoch predicate.signedAt "$SIGNED"; SIGNED_AT=$EPOCH
if [ "$MODE" = batch ]; then
  # format: a leaf is the receipt the batch statement places there (§12.4).
  expect receipt.json "the receipt" '.predicate as $p | $b[0].predicate as $s |
    ["actor", $p.actor == $s.actor], ["key version", $p.key.version == $s.key.version],
    ["key backend", $p.key.backend == $s.key.backend], ["signedAt", $p.signedAt == $s.signedAt],
    ["sequence = firstSequence + leafIndex", $p.sequence == $s.firstSequence + $leaf],
    ["logIndex = firstLogIndex + leafIndex, or both null (a fleet batch)",
     if $s.firstLogIndex == null then $p.logIndex == null
     else $p.logIndex != null and $p.logIndex == $s.firstLogIndex + $leaf end]' empty \
    --slurpfile b batch.json --argjson leaf "$LEAF"
  same receipt.payloadType "$(jq -r .receipt.payloadType "$B")" "$PAYLOAD_TYPE"
fi

# receipt.document (when the auditor has the document)
if [ -n "$DOC" ]; then
  step receipt.document
  same "the document's SHA-256" "$(sha256 "$DOC")" \
    "$(jq -r '.subject[0].digest.sha256' receipt.json)"
fi

# lineage.certificate, lineage.signature, lineage.statement: the signing key's attestation, for
# the receipt's actor, key version and backend, under a certificate valid at signedAt.
jq .lineage "$B" > key.lineage.json
attestation key "lineage.certificate lineage.signature lineage.statement" actor actor.txt \
  "$VERSION" "$KEYID" "$SIGNED_AT" "$BACKEND" "the signing key"
[ -z "$CREATED" ] || [ "$CREATED" -le "$SIGNED_AT" ] \
  || fail "the receipt is dated before its key was created"
KEY_CREATED=$CREATED

# lineage.rotation: versions 1 … VERSION-1, each attested, each handing over to the next by a
# rotation statement it signed; every version a new key; times in order (§11.2).
step lineage.rotation "key version $VERSION"
same "the number of predecessors" "$PREDECESSORS" $((VERSION - 1))
same "the number of rotations" "$ROTATIONS" $((VERSION - 1))
SEEN=" $KEYID " LAST= K=1
while [ "$K" -lt "$VERSION" ]; do
  step lineage.rotation "version $K"
  jq ".lineage.predecessors[$((K - 1))]" "$B" > "v$K.lineage.json"
  { read -r V; read -r PUBLIC; read -r CLAIMED_ID; read -r V_BACKEND; } <<EOF
$(jq -r '.version, .publicKey, .keyId, .backend' "v$K.lineage.json")
EOF
  same "predecessors[$((K - 1))].version" "$V" "$K"
  printf '%s' "$PUBLIC" | base64 -d > "v$K.spki.der" 2>/dev/null \
    || fail "version $K's publicKey is not base64"
  p256 "v$K.spki.der" "v$K.pub.pem" "version $K's publicKey"
  ID=$(sha256 "v$K.spki.der")
  same "version $K's keyId" "$CLAIMED_ID" "$ID"
  case $SEEN in *" $ID "*) fail "key $ID appears twice: a version must be a new key";; esac
  SEEN="$SEEN$ID "
  # The version it hands over to: the next predecessor, or the signing key.
  if [ $((K + 1)) -eq "$VERSION" ]; then
    NEXT_ID=$KEYID NEXT_BACKEND=$BACKEND
  else
    { read -r NEXT_ID; read -r NEXT_BACKEND; } <<EOF
$(jq -r ".lineage.predecessors[$K] | .keyId, .backend" "$B")
EOF
  fi
  dsse "$B" ".lineage.rotations[$((K - 1))]" "v$K.pub.pem" "$ID" "r$K" "rotation $K→$((K + 1))"
  # format: the rotation statement's predicate (§11.2).
  expect "r$K.json" "rotation $K→$((K + 1))" '
    ["_type", ._type == $st], ["predicateType", .predicateType == $type],
    ["one subject", (.subject | length) == 1],
    ["subject name = actor#next", .subject[0].name == "\($actor)#\($k + 1)"],
    ["subject digest = the next key id", .subject[0].digest.sha256 == $next],
    ["predicate.actor", .predicate.actor == $actor],
    ["predicate.previous", .predicate.previous.version == $k and .predicate.previous.keyId == $id],
    ["predicate.next", .predicate.next.version == $k + 1 and .predicate.next.keyId == $next],
    ["predicate.nextBackend", .predicate.nextBackend == $backend]' .predicate.rotatedAt \
    --arg st "$STATEMENT_TYPE" --arg type "$ROTATION_TYPE" --rawfile actor actor.txt \
    --argjson k "$K" --arg id "$ID" --arg next "$NEXT_ID" --arg backend "$NEXT_BACKEND"
  { read -r _; read -r ROTATED; } < expect.out
  epoch "rotation $K rotatedAt" "$ROTATED"; ROTATED=$EPOCH
  [ -z "$LAST" ] || [ "$ROTATED" -ge "$LAST" ] \
    || fail "rotation $K is dated before the rotation preceding it"
  attestation "v$K" "lineage.rotation lineage.rotation lineage.rotation" actor actor.txt "$K" \
    "$ID" "$ROTATED" "$V_BACKEND" "version $K"
  # A version hands over after it was created, to a version created by then.
  [ -z "$CREATED" ] || [ "$CREATED" -le "$ROTATED" ] \
    || fail "version $K is dated as created after it rotated"
  [ -z "$LAST" ] || [ -z "$CREATED" ] || [ "$CREATED" -le "$LAST" ] \
    || fail "rotation $((K - 1)): the next version is dated as created after the rotation"
  LAST=$ROTATED K=$((K + 1))
done
if [ -n "$LAST" ]; then
  [ -z "$KEY_CREATED" ] || [ "$KEY_CREATED" -le "$LAST" ] \
    || fail "rotation $((VERSION - 1)): the next version is dated as created after the rotation"
  [ "$SIGNED_AT" -ge "$LAST" ] || fail "the receipt is dated before its key came into service"
fi

# log.key: the log key is attested as the key of the log named by its key name (subject
# log-key:<name>), by a device that may attest log keys, under a certificate valid at signedAt.
step log.key
printf '%s' "$LOG_KEY" | base64 -d > log.spki.der 2>/dev/null \
  || fail "log.logKey.publicKey is not base64"
p256 log.spki.der log.pub.pem log.logKey.publicKey
LOG_ID=$(sha256 log.spki.der)
same log.logKey.keyId "$LOG_KEY_ID" "$LOG_ID"
jq -j .log.logKey.keyName "$B" > log.name
jq .log.logKey.lineage "$B" > log.lineage.json
attestation log "log.key log.key log.key" log log.name 1 "$LOG_ID" "$SIGNED_AT" \
  "$LOG_BACKEND" "the log key"

# log.checkpoint: a C2SP signed note (§10) whose text is three lines (origin = the log key's
# name, size = log.treeSize, root), then a blank line, then signature lines
# "— <key name> <base64(4-byte key id || DER signature)>"; every line with the log key's name and
# key id (the first 4 bytes of its id) must verify, and at least one must be there.
step log.checkpoint
jq -j .log.checkpoint "$B" > note
[ "$(wc -c < note)" -le 1048576 ] || fail "the checkpoint is over 1 MiB"
[ "$(tr -d '\000-\011\013-\037\177' < note | wc -c)" -eq "$(wc -c < note)" ] \
  || fail "the checkpoint holds a control character"
jq -j '.log.checkpoint | split("\n\n")[0] + "\n"' "$B" > note.text
same "the checkpoint's number of text lines" "$(wc -l < note.text)" 3
same "the checkpoint origin" "$(head -n 1 note.text)" "$(cat log.name)"
number log.treeSize "$SIZE"
same "the checkpoint size" "$(head -n 2 note.text | tail -n 1)" "$SIZE"
ROOT_B64=$(tail -n 1 note.text) ROOT=$(tail -n 1 note.text | base64 -d 2>/dev/null | hex)
[ ${#ROOT} -eq 64 ] && [ "$(printf '%s' "$ROOT" | unhex | base64)" = "$ROOT_B64" ] \
  || fail "the checkpoint root '$ROOT_B64' is not the base64 of 32 bytes"
jq -r --rawfile name log.name '.log.checkpoint | split("\n\n")[1:] | join("\n\n")
  | if endswith("\n") and length > 1 then rtrimstr("\n") else error("no signature lines") end
  | split("\n")[] | if startswith("— ") then . else error("a malformed signature line") end
  | select(startswith("— \($name) ")) | ltrimstr("— \($name) ")' "$B" > note.sigs 2> note.err \
  || fail "$(cat note.err)"
GOOD=0
while read -r SIG; do
  printf '%s' "$SIG" | base64 -d > note.blob 2>/dev/null || fail "a signature line is not base64"
  [ "$(head -c 4 note.blob | hex)" = "$(printf '%s' "$LOG_ID" | cut -c1-8)" ] || continue
  tail -c +5 note.blob > note.sig.der
  openssl dgst -sha256 -verify log.pub.pem -signature note.sig.der note.text > /dev/null \
    || fail "the checkpoint signature by the log key does not verify"
  GOOD=$((GOOD + 1))
done < note.sigs
[ "$GOOD" -ge 1 ] || fail "the checkpoint has no signature by the log key"

# log.inclusion: the receipt's log entry (§11.1: u32be(len) || bytes, for payloadType, payload
# and signature) hashes to leaf SHA-256(00 || entry), which the inclusion proof leads to the
# checkpoint's root, by RFC 9162 §2.1.3.2 with node hashes SHA-256(01 || left || right).
step log.inclusion
number log.index "$INDEX"
# A fleet receipt (logIndex null, §3) is at the index its proof proves; others must say so.
[ "$LOG_INDEX" = null ] || same log.index "$INDEX" "$LOG_INDEX"
{ u32be ${#PAYLOAD_TYPE}; printf '%s' "$PAYLOAD_TYPE"; u32be "$(wc -c < receipt.json)"
  cat receipt.json; u32be "$(wc -c < receipt.sig.der)"; cat receipt.sig.der; } > entry
[ "$INDEX" -lt "$SIZE" ] || fail "leaf $INDEX is not in a tree of $SIZE"
jq -r '.log.inclusionProof[]' "$B" > log.path
path_root "$INDEX" "$SIZE" "$({ printf 00 | unhex; cat entry; } | sha256)" log.path
same "the root the inclusion proof leads to" "$R" "$ROOT"
echo "bundle verified"
