//! The verifier against bundles built by `support::make_bundle`: the valid bundle and its
//! variants verify; every tampering fails with the check FORMAT.md §7 assigns to it; no input
//! panics.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod support;

use actseal::verify::{Check, TrustAnchors, Verified, VerifyError, verify_bundle};
use rcgen::KeyUsagePurpose;
use serde_json::{Value, json};
use support::make_bundle::*;

// ---------------------------------------------------------------------------------------------
// helpers

fn anchors(pem: &str) -> TrustAnchors {
    TrustAnchors::from_pem(pem.as_bytes()).expect("test anchors parse")
}

fn run(g: &Generated, bundle: &Value, document: Option<&[u8]>) -> Result<Verified, VerifyError> {
    verify_bundle(
        &serde_json::to_vec(bundle).unwrap(),
        &anchors(&g.anchor_pem),
        document,
    )
}

#[track_caller]
fn assert_ok(result: Result<Verified, VerifyError>) -> Verified {
    match result {
        Ok(v) => v,
        Err(e) => panic!("expected the bundle to verify, got: {e}"),
    }
}

#[track_caller]
fn assert_fails(result: Result<Verified, VerifyError>, check: Check) -> VerifyError {
    match result {
        Ok(v) => panic!("expected {check} to fail, but the bundle verified:\n{v}"),
        Err(e) => {
            assert_eq!(e.check, check, "wrong check failed: {e}");
            e
        }
    }
}

/// Generates a variant and verifies it with its own anchor and document.
fn verify_variant(o: &Options) -> Result<Verified, VerifyError> {
    let g = generate(o);
    verify_bundle(
        g.bundle_json.as_bytes(),
        &anchors(&g.anchor_pem),
        Some(&g.document),
    )
}

fn with(f: impl FnOnce(&mut Options)) -> Options {
    let mut o = Options::default();
    f(&mut o);
    o
}

fn str_at<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer).and_then(Value::as_str).unwrap()
}

fn set(v: &mut Value, pointer: &str, new: Value) {
    *v.pointer_mut(pointer).unwrap() = new;
}

/// The bundle with its receipt replaced by `payload` signed by `key` (keyid = that key's id).
fn with_receipt(g: &Generated, payload: &[u8], key: &SoftKey) -> Value {
    let mut b = g.bundle.clone();
    b["receipt"] = envelope(key, payload);
    b
}

/// The bundle with its lineage statement replaced by `payload` signed by the device key.
fn with_lineage(g: &Generated, payload: &[u8]) -> Value {
    let mut b = g.bundle.clone();
    b["lineage"]["statement"] = envelope(&g.device_key, payload);
    b
}

/// The bundle with only the payload bytes of the envelope at `env` replaced (signature kept).
fn with_payload_unsigned(g: &Generated, env: &str, payload: &[u8]) -> Value {
    let mut b = g.bundle.clone();
    set(&mut b, &format!("{env}/payload"), json!(b64(payload)));
    b
}

// ---------------------------------------------------------------------------------------------
// valid bundles

#[test]
fn generated_bundle_verifies_and_reports_what_it_proves() {
    let g = default_bundle();
    let v = assert_ok(verify_bundle(
        g.bundle_json.as_bytes(),
        &anchors(&g.anchor_pem),
        Some(&g.document),
    ));
    assert_eq!(v.actor, "spiffe://acme.example/agents/payments");
    assert_eq!(v.action_type, "payment.initiate");
    assert_eq!(v.target, "payments://acme.example/accounts/ops/transfers");
    assert_eq!(v.document_sha256, sha256_hex(DOCUMENT));
    assert!(v.document_checked);
    assert_eq!(v.key_id, g.actor_key.key_id());
    assert_eq!(v.key_version, 1);
    assert_eq!(v.backend, "pkcs11");
    assert_eq!((v.sequence, v.log_index), (1, 0));
    assert_eq!(v.signed_at, "2026-11-26T17:51:36Z");
    assert_eq!(
        v.device_subject,
        "CN=actseal device softhsm-0001,O=actseal tests"
    );
    assert_eq!(v.anchor_subject, "CN=actseal test CA,O=actseal tests");
    assert_eq!(v.token_serial, "5a1e2b3c4d5e6f70");
    assert_eq!(v.origin, "generated");
    assert_eq!(
        v.context.get("ticket").map(String::as_str),
        Some("OPS-1142")
    );
    assert_eq!(v.caller, "unix uid=1000 gid=1000 pid=4242");
    let text = v.to_string();
    assert!(
        text.starts_with("OK: spiffe://acme.example/agents/payments performed payment.initiate")
    );
    assert!(
        text.contains("requested by unix uid=1000 gid=1000 pid=4242"),
        "{text}"
    );
    assert!(text.contains("matches the given document"));
}

#[test]
fn without_the_document_the_digest_is_reported_unchecked() {
    let g = default_bundle();
    let v = assert_ok(verify_bundle(
        g.bundle_json.as_bytes(),
        &anchors(&g.anchor_pem),
        None,
    ));
    assert!(!v.document_checked);
    assert!(v.to_string().contains("NOT checked"));
}

#[test]
fn variants_that_must_verify() {
    let prev = sha256_hex(b"previous receipt payload");
    let variants = [
        (
            "intermediate CA in certificateChain",
            with(|o| o.intermediate = Some(CaSpec::new("actseal test intermediate", 2))),
        ),
        (
            "sequence 2 with previousReceipt",
            with(|o| {
                o.sequence = 2;
                o.previous_receipt = Some(prev.clone());
                o.log_index = 17;
            }),
        ),
        (
            "delegated action with parentSha256",
            with(|o| o.parent_sha256 = Some(sha256_hex(b"parent"))),
        ),
        (
            "key version 2, adopted key",
            with(|o| {
                o.key_version = 2;
                o.actor_key_label = "actseal test actor key payments v2".into();
                o.origin = "adopted".into();
            }),
        ),
        ("empty context", with(|o| o.context.clear())),
        (
            "mTLS caller with a SPIFFE ID",
            with(|o| {
                o.caller = json!({"kind": "x509", "spiffeId": "spiffe://acme.example/agents/payments",
                    "subject": "CN=payments,O=Acme"})
            }),
        ),
        (
            "mTLS caller without a SPIFFE ID",
            with(|o| o.caller = json!({"kind": "x509", "spiffeId": null, "subject": "CN=ops"})),
        ),
        (
            "development caller",
            with(|o| o.caller = json!({"kind": "insecure-tcp", "address": "127.0.0.1:50123"})),
        ),
        (
            "device certificate without keyUsage",
            with(|o| o.device_key_usage.clear()),
        ),
        (
            "device certificate expired today but valid at signedAt",
            with(|o| {
                o.ca.not_before = day(2019, 1, 1);
                o.device_not_before = day(2020, 1, 1);
                o.device_not_after = day(2021, 1, 1);
                o.signed_at = "2020-06-01T00:00:00Z".into();
                o.created_at = "2020-05-01T00:00:00Z".into();
            }),
        ),
        (
            "signedAt exactly at the device notAfter (inclusive)",
            with(|o| {
                o.device_not_after = day(2026, 11, 26);
                o.signed_at = "2026-11-26T00:00:00Z".into();
            }),
        ),
        (
            "signedAt exactly at the device notBefore (inclusive)",
            with(|o| {
                o.device_not_before = day(2026, 11, 26);
                o.signed_at = "2026-11-26T00:00:00Z".into();
            }),
        ),
    ];
    for (name, o) in variants {
        if let Err(e) = verify_variant(&o) {
            panic!("{name}: {e}");
        }
    }
}

#[test]
fn unknown_members_are_ignored() {
    let g = default_bundle();
    let mut b = g.bundle.clone();
    b["comment"] = json!({"anything": [1, 2e300, null]});
    b["receipt"]["signatures"][0]["note"] = json!("ignored");
    b["lineage"]["extra"] = json!(1);
    b["actorKey"]["algorithm"] = json!("ES256");
    assert_ok(run(&g, &b, Some(&g.document)));

    let mut payload: Value = serde_json::from_slice(&g.receipt_payload).unwrap();
    payload["predicate"]["future"] = json!({"x": 1});
    payload["subject"][0]["digest"]["sha512"] = json!("00");
    let b = with_receipt(&g, &serde_json::to_vec(&payload).unwrap(), &g.actor_key);
    assert_ok(run(&g, &b, Some(&g.document)));
}

#[test]
fn high_s_signatures_are_accepted() {
    use p256::elliptic_curve::ops::Neg;
    let g = default_bundle();
    let der = unb64(str_at(&g.bundle, "/receipt/signatures/0/sig"));
    let sig = p256::ecdsa::Signature::from_der(&der).unwrap();
    let (r, s) = sig.split_scalars();
    let high = p256::ecdsa::Signature::from_scalars(r, s.as_ref().neg()).unwrap();
    // Exactly one of (s, n - s) is high; the hardware may produce either.
    assert_ne!(sig.normalize_s().is_some(), high.normalize_s().is_some());
    let mut b = g.bundle.clone();
    set(
        &mut b,
        "/receipt/signatures/0/sig",
        json!(b64(high.to_der().as_bytes())),
    );
    assert_ok(run(&g, &b, Some(&g.document)));
}

#[test]
fn several_anchors_in_one_pem_file() {
    let g = default_bundle();
    let other = generate(&with(|o| o.ca = CaSpec::new("another CA", 9)));
    let both = format!("# other\n{}\n# ours\n{}", other.anchor_pem, g.anchor_pem);
    let a = anchors(&both);
    assert_eq!(a.subjects().len(), 2);
    assert_ok(verify_bundle(
        g.bundle_json.as_bytes(),
        &a,
        Some(&g.document),
    ));
    assert_ok(verify_bundle(
        other.bundle_json.as_bytes(),
        &a,
        Some(&other.document),
    ));
}

#[test]
fn check_names_are_those_of_format_md() {
    let names: Vec<String> = [
        Check::BundleParse,
        Check::ReceiptSignature,
        Check::ReceiptStatement,
        Check::ReceiptDocument,
        Check::LineageCertificate,
        Check::LineageSignature,
        Check::LineageStatement,
    ]
    .iter()
    .map(ToString::to_string)
    .collect();
    assert_eq!(
        names,
        [
            "bundle.parse",
            "receipt.signature",
            "receipt.statement",
            "receipt.document",
            "lineage.certificate",
            "lineage.signature",
            "lineage.statement"
        ]
    );
    let g = default_bundle();
    let e = assert_fails(
        verify_bundle(
            g.bundle_json.as_bytes(),
            &anchors(&g.anchor_pem),
            Some(b"other"),
        ),
        Check::ReceiptDocument,
    );
    assert!(
        e.to_string().starts_with("receipt.document failed: "),
        "{e}"
    );
}

#[test]
fn the_caller_is_required_and_checked() {
    let bad = [
        ("no caller", json!(null)),
        ("unknown kind", json!({"kind": "telepathy", "uid": 1})),
        (
            "unix without pid",
            json!({"kind": "unix", "uid": 1, "gid": 1}),
        ),
        (
            "unix uid as text",
            json!({"kind": "unix", "uid": "1", "gid": 1, "pid": 1}),
        ),
        (
            "x509 without spiffeId member",
            json!({"kind": "x509", "subject": "CN=a"}),
        ),
        (
            "x509 spiffeId not spiffe://",
            json!({"kind": "x509", "spiffeId": "https://a/b", "subject": "CN=a"}),
        ),
        (
            "x509 naming nobody",
            json!({"kind": "x509", "spiffeId": null, "subject": ""}),
        ),
        (
            "insecure-tcp without address",
            json!({"kind": "insecure-tcp"}),
        ),
    ];
    for (what, caller) in bad {
        let o = with(|o| o.caller = caller);
        let e = verify_variant(&o).unwrap_err();
        assert_eq!(e.check, Check::ReceiptStatement, "{what}: {e}");
    }
    let spiffe = with(|o| {
        o.caller = json!({"kind": "x509", "spiffeId": "spiffe://acme.example/a", "subject": "CN=a"})
    });
    assert_eq!(
        assert_ok(verify_variant(&spiffe)).caller,
        "x509 spiffe://acme.example/a (subject \"CN=a\")"
    );
}

#[test]
fn summary_escapes_caller_supplied_text() {
    let o = with(|o| {
        o.target = "t\nOK: forged line\u{1b}[2J".into();
        o.context = vec![("k\r".into(), "v\u{7}".into())];
    });
    let v = assert_ok(verify_variant(&o));
    let text = v.to_string();
    assert!(!text.contains("\nOK: forged"), "{text}");
    assert!(
        !text.chars().any(|c| c.is_control() && c != '\n'),
        "{text:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// tampering with the signed payloads, one member at a time

/// A change to one JSON member that keeps its kind (so that, re-signed, the statement checks
/// see a plausible value): hex digests get one digit changed, other strings a suffix, numbers +1,
/// booleans flipped, `null` a digest object.
fn tamper_value(v: &Value) -> Value {
    match v {
        Value::String(s) if s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()) => {
            let first = if s.starts_with('0') { "1" } else { "0" };
            json!(format!("{first}{}", &s[1..]))
        }
        Value::String(s) => json!(format!("{s}x")),
        Value::Number(n) => json!(n.as_u64().unwrap() + 1),
        Value::Bool(b) => json!(!b),
        Value::Null => json!({"sha256": "0".repeat(64)}),
        other => panic!("not a leaf: {other}"),
    }
}

/// JSON pointers of every leaf and of every object member or array element.
fn walk(v: &Value, at: String, leaves: &mut Vec<String>, members: &mut Vec<String>) {
    let children: Vec<(String, &Value)> = match v {
        Value::Object(m) => m.iter().map(|(k, c)| (format!("{at}/{k}"), c)).collect(),
        Value::Array(a) => a
            .iter()
            .enumerate()
            .map(|(i, c)| (format!("{at}/{i}"), c))
            .collect(),
        _ => {
            leaves.push(at);
            return;
        }
    };
    for (p, c) in children {
        members.push(p.clone());
        walk(c, p, leaves, members);
    }
}

fn remove(v: &mut Value, pointer: &str) {
    let (parent, last) = pointer.rsplit_once('/').unwrap();
    match v.pointer_mut(parent).unwrap() {
        Value::Object(m) => {
            m.remove(last).unwrap();
        }
        Value::Array(a) => {
            a.remove(last.parse().unwrap());
        }
        _ => unreachable!(),
    }
}

/// Decodes a payload, checking first that re-encoding it is the identity, so that a tampered
/// payload differs from the signed one only in the tampered member.
fn decode_payload(payload: &[u8]) -> Value {
    let v: Value = serde_json::from_slice(payload).unwrap();
    assert_eq!(
        serde_json::to_vec(&v).unwrap(),
        payload,
        "payload is not canonical"
    );
    v
}

/// Which check rejects a re-signed receipt whose member at `pointer` was changed (`None`: the
/// member is recorded but not checked). Unknown pointers fail the test, so a new member must be
/// classified here.
fn receipt_member_check(pointer: &str) -> Option<Check> {
    use Check::*;
    if pointer.starts_with("/predicate/context/") {
        return None;
    }
    match pointer {
        "/_type"
        | "/predicateType"
        | "/subject/0/name"
        | "/predicate/key/id"
        | "/predicate/key/backend"
        | "/predicate/action/target"
        | "/predicate/signedAt"
        | "/predicate/sequence"
        | "/predicate/previousReceipt"
        | "/predicate/mode" => Some(ReceiptStatement),
        "/subject/0/digest/sha256" => Some(ReceiptDocument),
        "/predicate/caller/kind" => Some(ReceiptStatement),
        "/predicate/actor" | "/predicate/key/version" => Some(LineageStatement),
        "/predicate/action/type"
        | "/predicate/logIndex"
        | "/predicate/caller/uid"
        | "/predicate/caller/gid"
        | "/predicate/caller/pid" => None,
        other => panic!("unclassified receipt member {other}"),
    }
}

/// Same for the lineage statement.
fn lineage_member_check(pointer: &str) -> Option<Check> {
    if pointer.starts_with("/predicate/token/") {
        return None;
    }
    match pointer {
        "/predicate/attributes/id"
        | "/predicate/attributes/label"
        | "/predicate/attributes/token"
        | "/predicate/attributes/private" => None,
        "/_type"
        | "/predicateType"
        | "/subject/0/name"
        | "/subject/0/digest/sha256"
        | "/predicate/actor"
        | "/predicate/keyVersion"
        | "/predicate/keyId"
        | "/predicate/origin"
        | "/predicate/createdAt"
        | "/predicate/attributes/keyType"
        | "/predicate/attributes/curve"
        | "/predicate/attributes/sensitive"
        | "/predicate/attributes/alwaysSensitive"
        | "/predicate/attributes/extractable"
        | "/predicate/attributes/neverExtractable"
        | "/predicate/attributes/local"
        | "/predicate/attributes/sign" => Some(Check::LineageStatement),
        other => panic!("unclassified lineage member {other}"),
    }
}

fn expect(result: Result<Verified, VerifyError>, want: Option<Check>, what: &str) {
    match (result, want) {
        (Ok(_), None) => {}
        (Err(e), Some(c)) if e.check == c => {}
        (Ok(_), Some(c)) => panic!("{what}: verified, expected {c} to fail"),
        (Err(e), want) => panic!("{what}: got {e}, expected {want:?}"),
    }
}

#[test]
fn every_receipt_member_is_covered_by_the_signature_and_the_checks() {
    let g = default_bundle();
    let doc = Some(g.document.as_slice());
    let original = decode_payload(&g.receipt_payload);
    let (mut leaves, mut members) = (Vec::new(), Vec::new());
    walk(&original, String::new(), &mut leaves, &mut members);
    assert!(leaves.len() >= 15, "{leaves:?}");

    for pointer in &leaves {
        let mut v = original.clone();
        let old = v.pointer(pointer).unwrap().clone();
        set(&mut v, pointer, tamper_value(&old));
        let payload = serde_json::to_vec(&v).unwrap();
        let unsigned = with_payload_unsigned(&g, "/receipt", &payload);
        expect(
            run(&g, &unsigned, doc),
            Some(Check::ReceiptSignature),
            &format!("{pointer} (not re-signed)"),
        );
        let resigned = with_receipt(&g, &payload, &g.actor_key);
        expect(
            run(&g, &resigned, doc),
            receipt_member_check(pointer),
            &format!("{pointer} (re-signed)"),
        );
    }
    for pointer in &members {
        let mut v = original.clone();
        remove(&mut v, pointer);
        let payload = serde_json::to_vec(&v).unwrap();
        let unsigned = with_payload_unsigned(&g, "/receipt", &payload);
        expect(
            run(&g, &unsigned, doc),
            Some(Check::ReceiptSignature),
            &format!("without {pointer} (not re-signed)"),
        );
        let want = if pointer.starts_with("/predicate/context/") {
            None
        } else {
            Some(Check::ReceiptStatement)
        };
        let resigned = with_receipt(&g, &payload, &g.actor_key);
        expect(
            run(&g, &resigned, doc),
            want,
            &format!("without {pointer} (re-signed)"),
        );
    }
}

#[test]
fn every_lineage_member_is_covered_by_the_signature_and_the_checks() {
    let g = default_bundle();
    let doc = Some(g.document.as_slice());
    let original = decode_payload(&g.lineage_payload);
    let (mut leaves, mut members) = (Vec::new(), Vec::new());
    walk(&original, String::new(), &mut leaves, &mut members);
    assert!(leaves.len() >= 20, "{leaves:?}");

    for pointer in &leaves {
        let mut v = original.clone();
        let old = v.pointer(pointer).unwrap().clone();
        set(&mut v, pointer, tamper_value(&old));
        let payload = serde_json::to_vec(&v).unwrap();
        let unsigned = with_payload_unsigned(&g, "/lineage/statement", &payload);
        expect(
            run(&g, &unsigned, doc),
            Some(Check::LineageSignature),
            &format!("{pointer} (not re-signed)"),
        );
        expect(
            run(&g, &with_lineage(&g, &payload), doc),
            lineage_member_check(pointer),
            &format!("{pointer} (re-signed)"),
        );
    }
    for pointer in &members {
        let mut v = original.clone();
        remove(&mut v, pointer);
        let payload = serde_json::to_vec(&v).unwrap();
        let unsigned = with_payload_unsigned(&g, "/lineage/statement", &payload);
        expect(
            run(&g, &unsigned, doc),
            Some(Check::LineageSignature),
            &format!("without {pointer} (not re-signed)"),
        );
        expect(
            run(&g, &with_lineage(&g, &payload), doc),
            Some(Check::LineageStatement),
            &format!("without {pointer} (re-signed)"),
        );
    }
}

#[test]
fn re_signed_receipts_with_malformed_values_fail_the_statement_check() {
    let g = default_bundle();
    let text = String::from_utf8(g.receipt_payload.clone()).unwrap();
    let cases = [
        ("\"sequence\":1", "\"sequence\":18446744073709551616"),
        ("\"sequence\":1", "\"sequence\":1.0"),
        ("\"sequence\":1", "\"sequence\":-1"),
        ("\"sequence\":1", "\"sequence\":0"),
        ("\"sequence\":1", "\"sequence\":\"1\""),
        ("\"logIndex\":0", "\"logIndex\":1e400"),
        ("\"version\":1", "\"version\":0"),
        (
            "\"mode\":\"single\"",
            "\"mode\":\"single\",\"mode\":\"single\"",
        ),
        (
            "\"ticket\":\"OPS-1142\"",
            "\"ticket\":\"OPS-1142\",\"ticket\":\"OPS-9\"",
        ),
        ("\"ticket\":\"OPS-1142\"", "\"ticket\":7"),
        (
            "\"previousReceipt\":null",
            "\"previousReceipt\":{\"sha256\":null}",
        ),
        (
            "\"signedAt\":\"2026-11-26T17:51:36Z\"",
            "\"signedAt\":\"2026-11-26T17:51:36.5Z\"",
        ),
        (
            "\"signedAt\":\"2026-11-26T17:51:36Z\"",
            "\"signedAt\":\"2026-11-26T18:51:36+01:00\"",
        ),
        ("\"action\":{", "\"action\":{\"parentSha256\":\"ABC\","),
        ("{\"_type\"", "[{\"_type\""),
    ];
    for (from, to) in cases {
        assert!(text.contains(from), "{from}");
        let payload = text.replacen(from, to, 1);
        let b = with_receipt(&g, payload.as_bytes(), &g.actor_key);
        expect(
            run(&g, &b, Some(&g.document)),
            Some(Check::ReceiptStatement),
            to,
        );
    }
    for payload in [
        &b""[..],
        b"null",
        b"{}",
        b"\xff\xfe",
        b"[]",
        &g.receipt_payload[..10],
    ] {
        let b = with_receipt(&g, payload, &g.actor_key);
        expect(
            run(&g, &b, Some(&g.document)),
            Some(Check::ReceiptStatement),
            &format!("{payload:?}"),
        );
    }
}

#[test]
fn payload_type_is_bound_by_the_signature_and_checked() {
    let g = default_bundle();
    let mut b = g.bundle.clone();
    set(&mut b, "/receipt/payloadType", json!("application/json"));
    assert_fails(run(&g, &b, Some(&g.document)), Check::ReceiptSignature);

    let sig = g
        .actor_key
        .sign_der(&pae("application/json", &g.receipt_payload));
    let mut env = envelope_with_sig(&g.actor_key.key_id(), &g.receipt_payload, &sig);
    env["payloadType"] = json!("application/json");
    b["receipt"] = env;
    assert_fails(run(&g, &b, Some(&g.document)), Check::ReceiptStatement);
}

// ---------------------------------------------------------------------------------------------
// tampering with the blobs

/// The bundle with byte `index` of the base64 blob at `pointer` inverted.
fn flip_byte(bundle: &Value, pointer: &str, index: usize) -> Value {
    let mut bytes = unb64(str_at(bundle, pointer));
    bytes[index] ^= 0xff;
    let mut b = bundle.clone();
    set(&mut b, pointer, json!(b64(&bytes)));
    b
}

fn blob_len(bundle: &Value, pointer: &str) -> usize {
    unb64(str_at(bundle, pointer)).len()
}

#[test]
fn flipping_the_last_or_first_byte_of_each_blob() {
    use Check::*;
    let g = default_bundle();
    let cases = [
        ("/receipt/signatures/0/sig", ReceiptSignature, BundleParse),
        ("/receipt/payload", ReceiptSignature, ReceiptSignature),
        ("/actorKey/publicKey", ReceiptSignature, BundleParse),
        (
            "/lineage/deviceCertificate",
            LineageCertificate,
            BundleParse,
        ),
        (
            "/lineage/statement/signatures/0/sig",
            LineageSignature,
            BundleParse,
        ),
        (
            "/lineage/statement/payload",
            LineageSignature,
            LineageSignature,
        ),
    ];
    for (pointer, last_check, first_check) in cases {
        let last = blob_len(&g.bundle, pointer) - 1;
        let e = run(&g, &flip_byte(&g.bundle, pointer, last), Some(&g.document));
        expect(e, Some(last_check), &format!("{pointer} last byte"));
        let e = run(&g, &flip_byte(&g.bundle, pointer, 0), Some(&g.document));
        expect(e, Some(first_check), &format!("{pointer} first byte"));
    }
}

/// Every single-byte change of the DER blobs is caught, by parsing or by the blob's check.
#[test]
fn flipping_any_byte_of_the_der_blobs() {
    use Check::*;
    let o = with(|o| o.intermediate = Some(CaSpec::new("actseal test intermediate", 2)));
    let g = generate(&o);
    let cases = [
        ("/receipt/signatures/0/sig", ReceiptSignature),
        ("/actorKey/publicKey", ReceiptSignature),
        ("/lineage/deviceCertificate", LineageCertificate),
        ("/lineage/certificateChain/0", LineageCertificate),
        ("/lineage/statement/signatures/0/sig", LineageSignature),
    ];
    for (pointer, check) in cases {
        for i in 0..blob_len(&g.bundle, pointer) {
            match run(&g, &flip_byte(&g.bundle, pointer, i), Some(&g.document)) {
                Err(e) if e.check == check || e.check == BundleParse => {}
                other => panic!("{pointer} byte {i}: {other:?}"),
            }
        }
    }
}

#[test]
fn a_changed_device_subject_breaks_the_certificate_signature() {
    let g = default_bundle();
    let der = unb64(str_at(&g.bundle, "/lineage/deviceCertificate"));
    let at = der.windows(4).position(|w| w == b"0001").unwrap();
    let mut changed = der.clone();
    changed[at + 3] = b'2';
    let mut b = g.bundle.clone();
    set(&mut b, "/lineage/deviceCertificate", json!(b64(&changed)));
    assert_fails(run(&g, &b, Some(&g.document)), Check::LineageCertificate);
}

// ---------------------------------------------------------------------------------------------
// swapped keys and certificates

#[test]
fn another_actor_key() {
    let g = default_bundle();
    let other = SoftKey::from_label("someone else");
    let doc = Some(g.document.as_slice());

    // Only the public key replaced: the key ids no longer match.
    let mut b = g.bundle.clone();
    set(&mut b, "/actorKey/publicKey", json!(b64(&other.spki_der())));
    assert_fails(run(&g, &b, doc), Check::ReceiptSignature);

    // Key and key id replaced consistently, envelope keyid too: the signature does not verify.
    set(&mut b, "/actorKey/keyId", json!(other.key_id()));
    set(&mut b, "/receipt/signatures/0/keyid", json!(other.key_id()));
    assert_fails(run(&g, &b, doc), Check::ReceiptSignature);

    // A keyId that is not the hash of the key.
    let mut b = g.bundle.clone();
    set(&mut b, "/actorKey/keyId", json!(other.key_id()));
    assert_fails(run(&g, &b, doc), Check::ReceiptSignature);

    // The receipt signed by another key while actorKey stays.
    let b = with_receipt(&g, &g.receipt_payload, &other);
    assert_fails(run(&g, &b, doc), Check::ReceiptSignature);

    // A fully consistent receipt by another key: the lineage does not vouch for it.
    let mut payload = decode_payload(&g.receipt_payload);
    payload["predicate"]["key"]["id"] = json!(other.key_id());
    let mut b = with_receipt(&g, &serde_json::to_vec(&payload).unwrap(), &other);
    b["actorKey"] = json!({"keyId": other.key_id(), "publicKey": b64(&other.spki_der())});
    assert_fails(run(&g, &b, doc), Check::LineageStatement);
}

#[test]
fn actor_key_that_is_not_p256() {
    let g = default_bundle();
    // A syntactically valid SPKI for an Ed25519 key (RFC 8410 example).
    let ed25519 = hex::decode(
        "302a300506032b657003210019bf44096984cdfe8541bac167dc3b96c85086aa30b6b6cb0c5c38ad703166e1",
    )
    .unwrap();
    let mut b = g.bundle.clone();
    set(&mut b, "/actorKey/publicKey", json!(b64(&ed25519)));
    set(&mut b, "/actorKey/keyId", json!(sha256_hex(&ed25519)));
    assert_fails(run(&g, &b, Some(&g.document)), Check::ReceiptSignature);
}

#[test]
fn device_certificate_from_another_ca() {
    let g = default_bundle();
    let other = generate(&with(|o| o.ca = CaSpec::new("another CA", 9)));
    let mut b = g.bundle.clone();
    b["lineage"]["deviceCertificate"] = other.bundle["lineage"]["deviceCertificate"].clone();
    assert_fails(run(&g, &b, Some(&g.document)), Check::LineageCertificate);
    // The whole other bundle is fine under its own anchor, not under ours.
    assert_fails(
        verify_bundle(
            other.bundle_json.as_bytes(),
            &anchors(&g.anchor_pem),
            Some(&g.document),
        ),
        Check::LineageCertificate,
    );
}

#[test]
fn impostor_ca_with_the_same_name() {
    let g = default_bundle();
    let mut impostor = CaSpec::new("impostor key", 1);
    impostor.name = Some("actseal test CA".into());
    let other = generate(&with(|o| o.ca = impostor));
    let e = assert_fails(
        verify_bundle(
            other.bundle_json.as_bytes(),
            &anchors(&g.anchor_pem),
            Some(&g.document),
        ),
        Check::LineageCertificate,
    );
    assert!(e.detail.contains("does not verify"), "{e}");
}

#[test]
fn certificate_problems() {
    let cases = [
        (
            "device expired at signedAt",
            with(|o| o.device_not_after = day(2026, 6, 1)),
        ),
        (
            "device not yet valid at signedAt",
            with(|o| {
                o.device_not_before = day(2027, 1, 1);
                o.device_not_after = day(2030, 1, 1);
            }),
        ),
        (
            "device valid one second too late",
            with(|o| {
                o.device_not_before = day(2026, 11, 26);
                o.signed_at = "2026-11-25T23:59:59Z".into();
            }),
        ),
        (
            "anchor expired at signedAt",
            with(|o| {
                o.ca.not_before = day(2020, 1, 1);
                o.ca.not_after = day(2025, 1, 1);
            }),
        ),
        (
            "anchor without basicConstraints",
            with(|o| o.ca.is_ca = false),
        ),
        (
            "device certificate is a CA",
            with(|o| o.device_is_ca = true),
        ),
        (
            "device keyUsage lacks digitalSignature",
            with(|o| o.device_key_usage = vec![KeyUsagePurpose::KeyAgreement]),
        ),
        (
            "intermediate is not a CA",
            with(|o| {
                let mut mid = CaSpec::new("actseal test intermediate", 2);
                mid.is_ca = false;
                o.intermediate = Some(mid);
            }),
        ),
        (
            "intermediate expired",
            with(|o| {
                let mut mid = CaSpec::new("actseal test intermediate", 2);
                mid.not_after = day(2026, 2, 1);
                o.intermediate = Some(mid);
            }),
        ),
    ];
    for (name, o) in cases {
        match verify_variant(&o) {
            Err(e) if e.check == Check::LineageCertificate => {}
            other => panic!("{name}: {other:?}"),
        }
    }
}

#[test]
fn certificate_chain_must_be_complete() {
    let o = with(|o| o.intermediate = Some(CaSpec::new("actseal test intermediate", 2)));
    let g = generate(&o);
    let mut b = g.bundle.clone();
    b["lineage"]["certificateChain"] = json!([]);
    assert_fails(run(&g, &b, Some(&g.document)), Check::LineageCertificate);
    // The intermediate itself as device certificate: it is a CA.
    let mut b = g.bundle.clone();
    b["lineage"]["deviceCertificate"] = b["lineage"]["certificateChain"][0].clone();
    assert_fails(run(&g, &b, Some(&g.document)), Check::LineageCertificate);
}

// ---------------------------------------------------------------------------------------------
// lineage statements

#[test]
fn lineage_statement_problems() {
    let cases = [
        (
            "extractable key",
            with(|o| o.attribute_overrides = vec![("extractable".into(), json!(true))]),
        ),
        (
            "not neverExtractable",
            with(|o| o.attribute_overrides = vec![("neverExtractable".into(), json!(false))]),
        ),
        (
            "imported key (not local)",
            with(|o| o.attribute_overrides = vec![("local".into(), json!(false))]),
        ),
        (
            "attribute as a string",
            with(|o| o.attribute_overrides = vec![("sensitive".into(), json!("true"))]),
        ),
        (
            "another actor",
            with(|o| o.lineage_actor = Some("spiffe://acme.example/agents/other".into())),
        ),
        (
            "another key version",
            with(|o| o.lineage_key_version = Some(2)),
        ),
        ("unknown origin", with(|o| o.origin = "imported".into())),
        (
            "tpm backend: no lineage format",
            with(|o| o.backend = "tpm".into()),
        ),
    ];
    for (name, o) in cases {
        match verify_variant(&o) {
            Err(e) if e.check == Check::LineageStatement => {}
            other => panic!("{name}: {other:?}"),
        }
    }
}

#[test]
fn lineage_backend_must_match_the_receipt() {
    let g = default_bundle();
    let mut b = g.bundle.clone();
    set(&mut b, "/lineage/backend", json!("tpm"));
    assert_fails(run(&g, &b, Some(&g.document)), Check::LineageStatement);
}

#[test]
fn lineage_signed_by_the_actor_key_is_rejected() {
    let g = default_bundle();
    let mut b = g.bundle.clone();
    b["lineage"]["statement"] = envelope(&g.actor_key, &g.lineage_payload);
    assert_fails(run(&g, &b, Some(&g.document)), Check::LineageSignature);
}

// ---------------------------------------------------------------------------------------------
// documents

#[test]
fn wrong_document() {
    let g = default_bundle();
    let mut other = g.document.clone();
    other.pop();
    for doc in [&other[..], b"", b"{}"] {
        assert_fails(run(&g, &g.bundle, Some(doc)), Check::ReceiptDocument);
    }
}

// ---------------------------------------------------------------------------------------------
// malformed bundles

fn parse_fails(bytes: &[u8], what: &str) {
    let g = default_bundle();
    match verify_bundle(bytes, &anchors(&g.anchor_pem), Some(&g.document)) {
        Err(e) if e.check == Check::BundleParse => {}
        other => panic!("{what}: {other:?}"),
    }
}

#[test]
fn garbage_is_a_parse_error() {
    let g = default_bundle();
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let inputs: Vec<(&str, Vec<u8>)> = vec![
        ("empty", vec![]),
        ("whitespace", b"  \n".to_vec()),
        ("binary", (0..=255u8).collect()),
        ("not JSON", b"mediaType: bundle".to_vec()),
        ("null", b"null".to_vec()),
        ("array", b"[]".to_vec()),
        ("empty object", b"{}".to_vec()),
        ("number", b"123456789012345678901234567890".to_vec()),
        ("huge float", b"1e999999".to_vec()),
        ("deep nesting", deep.into_bytes()),
        (
            "invalid UTF-8",
            [&b"{\"mediaType\":\""[..], b"\xff\"}"].concat(),
        ),
        (
            "trailing data",
            format!("{} {{}}", g.bundle_json).into_bytes(),
        ),
        (
            "two bundles",
            format!("{}{}", g.bundle_json, g.bundle_json).into_bytes(),
        ),
        ("oversized", vec![b' '; 5 * 1024 * 1024]),
    ];
    for (what, bytes) in inputs {
        parse_fails(&bytes, what);
    }
}

#[test]
fn every_truncation_is_a_parse_error() {
    let g = default_bundle();
    let bytes = g.bundle_json.trim_end().as_bytes();
    for len in 0..bytes.len() {
        parse_fails(&bytes[..len], &format!("truncated to {len} bytes"));
    }
}

#[test]
fn huge_numbers_where_strings_belong() {
    let g = default_bundle();
    for pointer in [
        "/mediaType",
        "/receipt/payload",
        "/actorKey/keyId",
        "/lineage/certificateChain",
    ] {
        let text = serde_json::to_string(&g.bundle).unwrap();
        let old = serde_json::to_string(g.bundle.pointer(pointer).unwrap()).unwrap();
        for n in [
            "18446744073709551616",
            "1e400",
            "-0",
            "123456789012345678901234567890",
        ] {
            let bad = text.replacen(&old, n, 1);
            assert_ne!(bad, text);
            parse_fails(bad.as_bytes(), &format!("{pointer} = {n}"));
        }
    }
}

#[test]
fn every_bundle_member_is_required() {
    let g = default_bundle();
    let (mut leaves, mut members) = (Vec::new(), Vec::new());
    walk(&g.bundle, String::new(), &mut leaves, &mut members);
    for pointer in members {
        let mut b = g.bundle.clone();
        remove(&mut b, &pointer);
        let e = run(&g, &b, Some(&g.document));
        // Removing the only signature leaves an empty list: also a parse error.
        expect(e, Some(Check::BundleParse), &format!("without {pointer}"));
    }
}

#[test]
fn bundle_shape_errors() {
    let g = default_bundle();
    let sig = g.bundle["receipt"]["signatures"][0].clone();
    let mut cases: Vec<(&str, Value)> = Vec::new();
    let mut b = g.bundle.clone();
    set(
        &mut b,
        "/mediaType",
        json!("application/vnd.actseal.bundle.v2+json"),
    );
    cases.push(("other mediaType", b));
    let mut b = g.bundle.clone();
    set(
        &mut b,
        "/receipt/signatures",
        json!([sig.clone(), sig.clone()]),
    );
    cases.push(("two signatures", b));
    let mut b = g.bundle.clone();
    set(&mut b, "/receipt/signatures", json!(sig.clone()));
    cases.push(("signatures not a list", b));
    let mut b = g.bundle.clone();
    set(&mut b, "/lineage/certificateChain", json!(["AAAA"]));
    cases.push(("chain entry not DER", b));
    let mut b = g.bundle.clone();
    let cert = b["lineage"]["deviceCertificate"].clone();
    set(&mut b, "/lineage/certificateChain", json!(vec![cert; 9]));
    cases.push(("chain too long", b));
    let mut b = g.bundle.clone();
    set(
        &mut b,
        "/actorKey/publicKey",
        json!("MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE"),
    );
    cases.push(("publicKey truncated DER", b));
    let mut b = g.bundle.clone();
    set(
        &mut b,
        "/receipt/signatures/0/sig",
        json!(b64(&[0x30, 0x06, 0x02, 0x01, 0x00, 0x02, 0x01, 0x01])),
    );
    cases.push(("signature with r = 0", b));
    for (pointer, mangle) in [
        ("/receipt/payload", 0),
        ("/receipt/signatures/0/sig", 1),
        ("/actorKey/publicKey", 2),
        ("/lineage/deviceCertificate", 3),
    ] {
        let text = str_at(&g.bundle, pointer).to_string();
        let bad = match mangle {
            0 => text.trim_end_matches('=').to_string(), // unpadded
            1 => format!("{}\n{}", &text[..10], &text[10..]), // embedded newline
            2 => text.replacen('A', "-", 1).replacen('+', "-", 1), // URL-safe alphabet
            _ => format!("{text}="),                     // extra padding
        };
        assert_ne!(bad, text, "{pointer}");
        let mut b = g.bundle.clone();
        set(&mut b, pointer, json!(bad));
        cases.push(("bad base64", b));
    }
    for (what, b) in cases {
        expect(
            run(&g, &b, Some(&g.document)),
            Some(Check::BundleParse),
            what,
        );
    }
    // Duplicate members cannot be written with serde_json::Value: edit the text.
    let text = g.bundle_json.replacen(
        "\"mediaType\": \"application/vnd.actseal.bundle.v1+json\",",
        "\"mediaType\": \"application/vnd.actseal.bundle.v1+json\",\n  \"mediaType\": \"application/vnd.actseal.bundle.v1+json\",",
        1,
    );
    assert_ne!(text, g.bundle_json);
    parse_fails(text.as_bytes(), "duplicate mediaType");
}

/// Random byte edits of the bundle text never panic and never verify.
#[test]
fn random_edits_never_panic() {
    let g = default_bundle();
    let a = anchors(&g.anchor_pem);
    let original = g.bundle_json.as_bytes();
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for _ in 0..3000 {
        let mut bytes = original.to_vec();
        for _ in 0..=(next() % 3) {
            let i = (next() % bytes.len() as u64) as usize;
            bytes[i] = next() as u8;
        }
        if let Ok(v) = verify_bundle(&bytes, &a, Some(&g.document)) {
            // Only edits outside the signed and checked content (whitespace) can verify.
            let reparsed: Value = serde_json::from_slice(&bytes).unwrap();
            assert_eq!(reparsed, g.bundle, "an edited bundle verified:\n{v}");
        }
    }
}

#[test]
fn lineage_keyid_must_name_the_device_key() {
    let g = default_bundle();
    let mut b = g.bundle.clone();
    set(
        &mut b,
        "/lineage/statement/signatures/0/keyid",
        json!(g.actor_key.key_id()),
    );
    assert_fails(run(&g, &b, Some(&g.document)), Check::LineageSignature);
    assert_eq!(
        str_at(&g.bundle, "/lineage/statement/signatures/0/keyid"),
        g.device_key.key_id()
    );
}

// ---------------------------------------------------------------------------------------------
// committed vectors

/// `tests/vectors/` holds the default generated bundle, its anchor and its document. With
/// `ACTSEAL_REGEN_VECTORS=1` this test rewrites them; otherwise it checks that they still verify
/// and that the generator still produces them byte for byte (so a change to the format or the
/// generator shows up as a diff of the committed files).
#[test]
fn committed_vectors() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors");
    let g = default_bundle();
    let files = [
        ("bundle-v1.json", g.bundle_json.as_bytes()),
        ("anchor.pem", g.anchor_pem.as_bytes()),
        ("document.json", g.document.as_slice()),
    ];
    if std::env::var_os("ACTSEAL_REGEN_VECTORS").is_some_and(|v| v == "1") {
        std::fs::create_dir_all(&dir).unwrap();
        for (name, bytes) in files {
            std::fs::write(dir.join(name), bytes).unwrap();
        }
    }
    let read = |name: &str| {
        std::fs::read(dir.join(name))
            .unwrap_or_else(|e| panic!("{name}: {e} (regenerate with ACTSEAL_REGEN_VECTORS=1)"))
    };
    for (name, bytes) in files {
        assert!(
            read(name) == bytes,
            "tests/vectors/{name} differs from the generator's output"
        );
    }
    let anchor = TrustAnchors::from_pem(&read("anchor.pem")).unwrap();
    let v = assert_ok(verify_bundle(
        &read("bundle-v1.json"),
        &anchor,
        Some(&read("document.json")),
    ));
    assert_eq!(v.key_id, g.actor_key.key_id());
    assert!(v.document_checked);
}
