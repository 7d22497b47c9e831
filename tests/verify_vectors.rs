//! The verifier against bundles built by `support::make_bundle`: the valid bundle and its
//! variants verify; every tampering fails with the check FORMAT.md §7 assigns to it; no input
//! panics.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod support;

use actseal::verify::{Check, TrustAnchors, Verified, VerifyError, verify_bundle};
use rcgen::KeyUsagePurpose;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
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

/// The bundle with its receipt replaced by `payload` signed by `key` (keyid = that key's id),
/// and the log rebuilt around the new receipt (at the same position), so that the check the
/// change aims at is the one reached.
fn with_receipt(g: &Generated, payload: &[u8], key: &SoftKey) -> Value {
    let mut b = g.bundle.clone();
    b["receipt"] = envelope(key, payload);
    relog(g, &mut b);
    b
}

/// The bundle with the envelope at `env` replaced by `payload` signed by `key`, keeping the
/// envelope's `keyid`.
fn resign(g: &Generated, env: &str, payload: &[u8], key: &SoftKey) -> Value {
    let mut b = g.bundle.clone();
    let keyid = str_at(&b, &format!("{env}/signatures/0/keyid")).to_string();
    let sig = key.sign_der(&pae(IN_TOTO, payload));
    set(&mut b, env, envelope_with_sig(&keyid, payload, &sig));
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
    assert_eq!((v.sequence, v.log_index), (1, 3));
    assert_eq!((v.log_origin.as_str(), v.tree_size), (LOG_ORIGIN, 6));
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
    assert!(
        text.contains("in log log.acme.example/actseal at index 3 of a signed tree of 6 entries"),
        "{text}"
    );
    // The generated log really is a tree of 6 with the receipt at 3: a non-trivial proof.
    assert_eq!(g.log_entries.len(), 6);
    assert_eq!(g.log_entries[3], entry_bytes(&g.bundle["receipt"]));
    assert_eq!(
        g.bundle["log"]["inclusionProof"].as_array().unwrap().len(),
        3
    );
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
                o.log_tree_size = 40;
            }),
        ),
        (
            "delegated action with parentSha256",
            with(|o| o.parent_sha256 = Some(sha256_hex(b"parent"))),
        ),
        (
            "key version 2, adopted key",
            Options {
                origin: "adopted".into(),
                ..rotated(2)
            },
        ),
        ("key version 3 (two rotations)", rotated(3)),
        ("key version 5", rotated(5)),
        (
            "key version 3, version 1 on a second device, with an intermediate CA",
            {
                let mut o = rotated(3);
                o.predecessors[0].device = Some(DeviceSpec::second());
                o.intermediate = Some(CaSpec::new("actseal test intermediate", 2));
                o
            },
        ),
        (
            "key version 2, old device expired since, valid when the key rotated",
            {
                let mut o = rotated(2);
                let mut old = DeviceSpec::second();
                old.not_after = day(2026, 3, 1);
                o.predecessors[0].device = Some(old);
                o.predecessors[0].rotated_at = "2026-02-28T23:59:59Z".into();
                o
            },
        ),
        (
            "rotations at the same instant, the receipt signed at that instant",
            {
                let mut o = rotated(3);
                for p in &mut o.predecessors {
                    p.rotated_at = o.signed_at.clone();
                }
                o
            },
        ),
        (
            "log of one entry (empty inclusion proof)",
            with(|o| {
                o.log_index = 0;
                o.log_tree_size = 1;
            }),
        ),
        (
            "first of 8 entries",
            with(|o| {
                o.log_index = 0;
                o.log_tree_size = 8;
            }),
        ),
        (
            "last of 7 entries",
            with(|o| {
                o.log_index = 6;
                o.log_tree_size = 7;
            }),
        ),
        ("index 5 of 6", with(|o| o.log_index = 5)),
        (
            "index 700 of 1001",
            with(|o| {
                o.log_index = 700;
                o.log_tree_size = 1001;
            }),
        ),
        (
            "log key on a second device",
            with(|o| o.log_device = Some(DeviceSpec::second())),
        ),
        (
            "log key on a second device under an intermediate CA",
            with(|o| {
                o.log_device = Some(DeviceSpec::second());
                o.intermediate = Some(CaSpec::new("actseal test intermediate", 2));
            }),
        ),
        (
            "another log origin",
            with(|o| o.log_origin = "transparency.example.net/actseal-7".into()),
        ),
        (
            "high-S receipt signature, logged as such",
            with(|o| o.receipt_high_s = true),
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
                o.created_at = "2026-11-25T12:00:00Z".into();
                o.signed_at = "2026-11-26T00:00:00Z".into();
            }),
        ),
        (
            "signedAt exactly at the device notBefore (inclusive)",
            with(|o| {
                o.device_not_before = day(2026, 11, 26);
                o.created_at = "2026-11-26T00:00:00Z".into();
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
    b["log"]["witnesses"] = json!([]);
    b["log"]["logKey"]["comment"] = json!("ignored");
    b["log"]["logKey"]["lineage"]["extra"] = json!(true);
    assert_ok(run(&g, &b, Some(&g.document)));

    let g3 = generate(&rotated(3));
    let mut b = g3.bundle.clone();
    b["lineage"]["predecessors"][0]["note"] = json!("ignored");
    b["lineage"]["predecessors"][1]["predecessors"] = json!("not read here");
    b["lineage"]["rotations"][1]["extra"] = json!({});
    assert_ok(run(&g3, &b, Some(&g3.document)));

    let mut payload: Value = serde_json::from_slice(&g.receipt_payload).unwrap();
    payload["predicate"]["future"] = json!({"x": 1});
    payload["subject"][0]["digest"]["sha512"] = json!("00");
    let b = with_receipt(&g, &serde_json::to_vec(&payload).unwrap(), &g.actor_key);
    assert_ok(run(&g, &b, Some(&g.document)));
}

#[test]
fn high_s_signatures_are_accepted() {
    let g = default_bundle();
    let der = unb64(str_at(&g.bundle, "/receipt/signatures/0/sig"));
    let twin = other_s(&der);
    let is_high = |d: &[u8]| {
        p256::ecdsa::Signature::from_der(d)
            .unwrap()
            .normalize_s()
            .is_some()
    };
    // Exactly one of (s, n - s) is high; the hardware may produce either.
    assert_ne!(is_high(&der), is_high(&twin));
    let mut b = g.bundle.clone();
    set(&mut b, "/receipt/signatures/0/sig", json!(b64(&twin)));
    // The log entry holds the signature bytes: the twin is another entry, not in the log...
    assert_fails(run(&g, &b, Some(&g.document)), Check::LogInclusion);
    // ...and verifies once it is the one logged.
    relog(&g, &mut b);
    assert_ok(run(&g, &b, Some(&g.document)));
    // Same for the lineage statements, which are not logged.
    for env in ["/lineage/statement", "/log/logKey/lineage/statement"] {
        let mut b = g.bundle.clone();
        let sig = format!("{env}/signatures/0/sig");
        let twin = other_s(&unb64(str_at(&b, &sig)));
        set(&mut b, &sig, json!(b64(&twin)));
        assert_ok(run(&g, &b, Some(&g.document)));
    }
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
        Check::LineageRotation,
        Check::LogKey,
        Check::LogCheckpoint,
        Check::LogInclusion,
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
            "lineage.statement",
            "lineage.rotation",
            "log.key",
            "log.checkpoint",
            "log.inclusion"
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
        "/predicate/logIndex" => Some(LogInclusion),
        "/predicate/action/type"
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
        | "/predicate/keyRole"
        | "/predicate/actor"
        | "/predicate/keyVersion"
        | "/predicate/logOrigin"
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

/// Tampers with every member of the statement in the envelope at `env`, which `key` signed:
/// changed and not re-signed, `unsigned` fails; changed and re-signed by `key`, the check
/// `changed(pointer)` fails (`None`: it verifies); removed and re-signed, `removed` fails.
#[allow(clippy::too_many_arguments)]
fn tamper_statement(
    g: &Generated,
    env: &str,
    payload: &[u8],
    key: &SoftKey,
    unsigned: Check,
    changed: impl Fn(&str) -> Option<Check>,
    removed: Check,
    min_leaves: usize,
) {
    let doc = Some(g.document.as_slice());
    let original = decode_payload(payload);
    let (mut leaves, mut members) = (Vec::new(), Vec::new());
    walk(&original, String::new(), &mut leaves, &mut members);
    assert!(leaves.len() >= min_leaves, "{env}: {leaves:?}");
    // The untouched payload re-signed (RFC 6979: the same signature) still verifies.
    assert_ok(run(g, &resign(g, env, payload, key), doc));

    for pointer in &leaves {
        let mut v = original.clone();
        let old = v.pointer(pointer).unwrap().clone();
        set(&mut v, pointer, tamper_value(&old));
        let payload = serde_json::to_vec(&v).unwrap();
        let not_resigned = with_payload_unsigned(g, env, &payload);
        expect(
            run(g, &not_resigned, doc),
            Some(unsigned),
            &format!("{env}: {pointer} (not re-signed)"),
        );
        expect(
            run(g, &resign(g, env, &payload, key), doc),
            changed(pointer),
            &format!("{env}: {pointer} (re-signed)"),
        );
    }
    for pointer in &members {
        let mut v = original.clone();
        remove(&mut v, pointer);
        let payload = serde_json::to_vec(&v).unwrap();
        let not_resigned = with_payload_unsigned(g, env, &payload);
        expect(
            run(g, &not_resigned, doc),
            Some(unsigned),
            &format!("{env}: without {pointer} (not re-signed)"),
        );
        expect(
            run(g, &resign(g, env, &payload, key), doc),
            Some(removed),
            &format!("{env}: without {pointer} (re-signed)"),
        );
    }
}

#[test]
fn every_lineage_member_is_covered_by_the_signature_and_the_checks() {
    let g = default_bundle();
    assert_eq!(
        with_lineage(&g, &g.lineage_payload),
        g.bundle,
        "deterministic signatures"
    );
    tamper_statement(
        &g,
        "/lineage/statement",
        &g.lineage_payload,
        &g.device_key,
        Check::LineageSignature,
        lineage_member_check,
        Check::LineageStatement,
        20,
    );
}

/// The log key's lineage statement is held to the same rules, as the statement about the key
/// of actor `<log origin>`, version 1; every failure is `log.key`.
#[test]
fn every_log_key_lineage_member_is_covered() {
    let g = default_bundle();
    tamper_statement(
        &g,
        "/log/logKey/lineage/statement",
        &g.log_lineage_payload,
        &g.log_device_key,
        Check::LogKey,
        |p| lineage_member_check(p).map(|_| Check::LogKey),
        Check::LogKey,
        20,
    );
}

/// The lineage statements of earlier key versions: every failure is `lineage.rotation`.
#[test]
fn every_predecessor_lineage_member_is_covered() {
    let g = generate(&rotated(3));
    for i in 0..2 {
        tamper_statement(
            &g,
            &format!("/lineage/predecessors/{i}/statement"),
            &g.predecessor_payloads[i],
            &g.predecessor_device_keys[i],
            Check::LineageRotation,
            |p| lineage_member_check(p).map(|_| Check::LineageRotation),
            Check::LineageRotation,
            20,
        );
    }
}

/// Every member of a rotation statement is checked: any change, re-signed by the retiring key
/// or not, fails `lineage.rotation`.
#[test]
fn every_rotation_member_is_covered() {
    let g = generate(&rotated(3));
    for i in 0..2 {
        tamper_statement(
            &g,
            &format!("/lineage/rotations/{i}"),
            &g.rotation_payloads[i],
            &g.predecessor_keys[i],
            Check::LineageRotation,
            |_| Some(Check::LineageRotation),
            Check::LineageRotation,
            11,
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
        ("\"logIndex\":3", "\"logIndex\":1e400"),
        ("\"logIndex\":3", "\"logIndex\":-3"),
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
        ("/log/logKey/publicKey", LogKey, BundleParse),
        ("/log/logKey/lineage/deviceCertificate", LogKey, BundleParse),
        (
            "/log/logKey/lineage/statement/signatures/0/sig",
            LogKey,
            BundleParse,
        ),
        ("/log/logKey/lineage/statement/payload", LogKey, LogKey),
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
    let mut o = rotated(2);
    o.intermediate = Some(CaSpec::new("actseal test intermediate", 2));
    o.log_device = Some(DeviceSpec::second());
    o.predecessors[0].device = Some(DeviceSpec::new(
        "actseal test device key 3",
        "actseal device softhsm-0003",
        4444,
    ));
    let g = generate(&o);
    let cases = [
        ("/receipt/signatures/0/sig", ReceiptSignature),
        ("/actorKey/publicKey", ReceiptSignature),
        ("/lineage/deviceCertificate", LineageCertificate),
        ("/lineage/certificateChain/0", LineageCertificate),
        ("/lineage/statement/signatures/0/sig", LineageSignature),
        ("/lineage/predecessors/0/publicKey", LineageRotation),
        ("/lineage/predecessors/0/deviceCertificate", LineageRotation),
        (
            "/lineage/predecessors/0/statement/signatures/0/sig",
            LineageRotation,
        ),
        ("/lineage/rotations/0/signatures/0/sig", LineageRotation),
        ("/log/logKey/publicKey", LogKey),
        ("/log/logKey/lineage/deviceCertificate", LogKey),
        ("/log/logKey/lineage/statement/signatures/0/sig", LogKey),
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
    parse_fails_under(&anchors(&g.anchor_pem), bytes, what);
}

fn parse_fails_under(anchors: &TrustAnchors, bytes: &[u8], what: &str) {
    match verify_bundle(bytes, anchors, Some(DOCUMENT)) {
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
    let a = anchors(&g.anchor_pem);
    let bytes = g.bundle_json.trim_end().as_bytes();
    for len in 0..bytes.len() {
        parse_fails_under(&a, &bytes[..len], &format!("truncated to {len} bytes"));
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
        "/log/checkpoint",
        "/log/inclusionProof",
        "/log/logKey/keyName",
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

/// Which check rejects a bundle without the member at `pointer`. Object members are all
/// required (`bundle.parse`), except the lineage's `predecessors` and `rotations` (absent means
/// none); removing an array element leaves a well-formed bundle that a later check rejects.
fn removal_check(pointer: &str) -> Check {
    use Check::*;
    let array_element = pointer
        .rsplit('/')
        .next()
        .is_some_and(|last| last.bytes().all(|b| b.is_ascii_digit()));
    if pointer.ends_with("/signatures/0") {
        // The only signature: an empty list is a parse error.
        return BundleParse;
    }
    if pointer == "/lineage/predecessors" || pointer == "/lineage/rotations" {
        return LineageRotation;
    }
    if !array_element {
        return BundleParse;
    }
    if pointer.starts_with("/lineage/predecessors/") || pointer.starts_with("/lineage/rotations/") {
        LineageRotation
    } else if pointer.starts_with("/lineage/certificateChain/") {
        LineageCertificate
    } else if pointer.starts_with("/log/logKey/") {
        LogKey
    } else if pointer.starts_with("/log/inclusionProof/") {
        LogInclusion
    } else {
        panic!("unclassified array element {pointer}")
    }
}

#[test]
fn every_bundle_member_is_required() {
    let mut v3 = rotated(3);
    v3.intermediate = Some(CaSpec::new("actseal test intermediate", 2));
    for o in [Options::default(), v3] {
        let g = generate(&o);
        let (mut leaves, mut members) = (Vec::new(), Vec::new());
        walk(&g.bundle, String::new(), &mut leaves, &mut members);
        for pointer in members {
            let mut b = g.bundle.clone();
            remove(&mut b, &pointer);
            let e = run(&g, &b, Some(&g.document));
            expect(
                e,
                Some(removal_check(&pointer)),
                &format!("v{} without {pointer}", o.key_version),
            );
        }
    }
}

/// Which check rejects a bundle whose leaf at `pointer` was changed by [`tamper_value`]
/// (base64 blobs then no longer decode).
fn bundle_leaf_check(pointer: &str) -> Check {
    use Check::*;
    let blob = ["/payload", "/sig", "/publicKey", "/deviceCertificate"]
        .iter()
        .any(|end| pointer.ends_with(end))
        || pointer.contains("/certificateChain/");
    if blob || pointer == "/mediaType" {
        return BundleParse;
    }
    let prefixes = [
        ("/receipt/", ReceiptSignature),
        ("/actorKey/", ReceiptSignature),
        ("/lineage/statement/", LineageSignature),
        ("/lineage/backend", LineageStatement),
        ("/lineage/predecessors/", LineageRotation),
        ("/lineage/rotations/", LineageRotation),
        ("/log/logKey/", LogKey),
        ("/log/index", LogInclusion),
        ("/log/inclusionProof/", LogInclusion),
        ("/log/treeSize", LogCheckpoint),
        ("/log/checkpoint", LogCheckpoint),
    ];
    prefixes
        .iter()
        .find(|(prefix, _)| pointer.starts_with(prefix))
        .map(|(_, check)| *check)
        .unwrap_or_else(|| panic!("unclassified bundle member {pointer}"))
}

/// Every leaf of the bundle (outside the signed payloads, which have tables of their own) is
/// read and checked: changing it fails the check it belongs to.
#[test]
fn every_bundle_leaf_is_checked() {
    let mut v3 = rotated(3);
    v3.intermediate = Some(CaSpec::new("actseal test intermediate", 2));
    for o in [Options::default(), v3] {
        let g = generate(&o);
        let (mut leaves, mut members) = (Vec::new(), Vec::new());
        walk(&g.bundle, String::new(), &mut leaves, &mut members);
        for pointer in leaves {
            let mut b = g.bundle.clone();
            let old = b.pointer(&pointer).unwrap().clone();
            set(&mut b, &pointer, tamper_value(&old));
            expect(
                run(&g, &b, Some(&g.document)),
                Some(bundle_leaf_check(&pointer)),
                &format!("v{} {pointer} changed", o.key_version),
            );
        }
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
    let proof0 = str_at(&g.bundle, "/log/inclusionProof/0").to_string();
    let log_cases: [(&str, &str, Value); 11] = [
        (
            "proof hash in uppercase hex",
            "/log/inclusionProof/0",
            json!(proof0.to_uppercase()),
        ),
        (
            "proof hash of 31 bytes",
            "/log/inclusionProof/0",
            json!(&proof0[2..]),
        ),
        (
            "proof hash of 33 bytes",
            "/log/inclusionProof/0",
            json!(format!("{proof0}00")),
        ),
        (
            "proof hash in base64",
            "/log/inclusionProof/0",
            json!(b64(&hex::decode(&proof0).unwrap())),
        ),
        (
            "65 proof hashes",
            "/log/inclusionProof",
            json!(vec![proof0.clone(); 65]),
        ),
        ("negative index", "/log/index", json!(-1)),
        ("index as a string", "/log/index", json!("3")),
        ("fractional tree size", "/log/treeSize", json!(6.5)),
        ("checkpoint as an object", "/log/checkpoint", json!({})),
        (
            "log key lineage with rotations",
            "/log/logKey/lineage/rotations",
            json!([g.bundle["receipt"].clone()]),
        ),
        (
            "log key lineage with predecessors",
            "/log/logKey/lineage/predecessors",
            json!([{
                "version": 1,
                "keyId": g.log_key.key_id(),
                "publicKey": b64(&g.log_key.spki_der()),
                "backend": "pkcs11",
                "statement": g.bundle["log"]["logKey"]["lineage"]["statement"].clone(),
                "deviceCertificate": g.bundle["log"]["logKey"]["lineage"]["deviceCertificate"].clone(),
                "certificateChain": [],
            }]),
        ),
    ];
    for (what, pointer, value) in log_cases {
        let mut b = g.bundle.clone();
        match b.pointer_mut(pointer) {
            Some(slot) => *slot = value,
            None => {
                let (parent, name) = pointer.rsplit_once('/').unwrap();
                b.pointer_mut(parent).unwrap()[name] = value;
            }
        }
        cases.push((what, b));
    }
    let mut b = g.bundle.clone();
    set(&mut b, "/log/logKey/publicKey", json!("AAAA"));
    cases.push(("log key not DER", b));
    let g3 = generate(&rotated(3));
    let mut b = g3.bundle.clone();
    set(&mut b, "/lineage/predecessors/0/version", json!(-1));
    cases.push(("negative predecessor version", b));
    let mut b = g3.bundle.clone();
    let chain = vec![b["lineage"]["deviceCertificate"].clone(); 9];
    set(
        &mut b,
        "/lineage/predecessors/1/certificateChain",
        json!(chain),
    );
    cases.push(("predecessor chain too long", b));
    let mut b = g3.bundle.clone();
    b["lineage"]["rotations"][0]["signatures"] = json!([]);
    cases.push(("rotation without a signature", b));
    let mut b = g3.bundle.clone();
    set(&mut b, "/lineage/rotations", json!({}));
    cases.push(("rotations not a list", b));
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
// the log: inclusion proof, checkpoint, log key

/// Verifies each variant and expects `check` to fail.
#[track_caller]
fn variants_fail(check: Check, cases: Vec<(&str, Options)>) {
    for (name, o) in cases {
        match verify_variant(&o) {
            Err(e) if e.check == check => {}
            other => panic!("{name}: expected {check} to fail, got {other:?}"),
        }
    }
}

#[test]
fn wrong_inclusion_proof_hash() {
    let g = default_bundle();
    let proof = g.bundle["log"]["inclusionProof"].as_array().unwrap().len();
    for i in 0..proof {
        for flip in [0, 31] {
            let pointer = format!("/log/inclusionProof/{i}");
            let mut hash = hex::decode(str_at(&g.bundle, &pointer)).unwrap();
            hash[flip] ^= 1;
            let mut b = g.bundle.clone();
            set(&mut b, &pointer, json!(hex::encode(hash)));
            assert_fails(run(&g, &b, Some(&g.document)), Check::LogInclusion);
        }
    }
    // Hashes swapped, one missing, one too many, and the proof of a neighbouring leaf.
    let mut b = g.bundle.clone();
    b["log"]["inclusionProof"]
        .as_array_mut()
        .unwrap()
        .swap(0, 1);
    assert_fails(run(&g, &b, Some(&g.document)), Check::LogInclusion);
    let mut b = g.bundle.clone();
    b["log"]["inclusionProof"].as_array_mut().unwrap().pop();
    assert_fails(run(&g, &b, Some(&g.document)), Check::LogInclusion);
    let mut b = g.bundle.clone();
    b["log"]["inclusionProof"]
        .as_array_mut()
        .unwrap()
        .push(json!("00".repeat(32)));
    assert_fails(run(&g, &b, Some(&g.document)), Check::LogInclusion);
    let leaves: Vec<Hash> = g.log_entries.iter().map(|e| leaf_hash(e)).collect();
    let mut b = g.bundle.clone();
    let neighbour: Vec<String> = inclusion_path(2, &leaves).iter().map(hex::encode).collect();
    set(&mut b, "/log/inclusionProof", json!(neighbour));
    assert_fails(run(&g, &b, Some(&g.document)), Check::LogInclusion);
    // A one-entry log needs an empty proof.
    let g1 = generate(&with(|o| {
        o.log_index = 0;
        o.log_tree_size = 1;
    }));
    assert_eq!(g1.bundle["log"]["inclusionProof"], json!([]));
    let mut b = g1.bundle.clone();
    set(&mut b, "/log/inclusionProof", json!(["00".repeat(32)]));
    assert_fails(run(&g1, &b, Some(&g1.document)), Check::LogInclusion);
}

#[test]
fn wrong_log_index() {
    let g = default_bundle();
    let doc = Some(g.document.as_slice());
    // log.index is not the receipt's logIndex (the proof is still that of index 3).
    for index in [0, 2, 4, 5, 6, 7, u64::MAX] {
        let mut b = g.bundle.clone();
        set(&mut b, "/log/index", json!(index));
        assert_fails(run(&g, &b, doc), Check::LogInclusion);
    }
    // Both say 2 (the receipt re-signed), but the receipt is the leaf at 3.
    let mut payload = decode_payload(&g.receipt_payload);
    payload["predicate"]["logIndex"] = json!(2);
    let mut b = g.bundle.clone();
    b["receipt"] = envelope(&g.actor_key, &serde_json::to_vec(&payload).unwrap());
    relog(&g, &mut b);
    set(&mut b, "/log/index", json!(2));
    assert_fails(run(&g, &b, doc), Check::LogInclusion);
    // ...and index 3 of the log holds another entry.
    set(&mut b, "/log/index", json!(3));
    assert_fails(run(&g, &b, doc), Check::LogInclusion);
    // The receipt says it is at 3 but the log has it at 4: a proof for 4 does not prove 3.
    let at4 = generate(&with(|o| o.log_index = 4));
    let mut b = g.bundle.clone();
    b["log"] = at4.bundle["log"].clone();
    assert_fails(run(&g, &b, doc), Check::LogInclusion);
    // An index at or past the tree size (a note for 6 entries, signed by the log key).
    let g7 = generate(&with(|o| {
        o.log_index = 6;
        o.log_tree_size = 7;
        o.checkpoint_size = Some(6);
    }));
    let mut b = g7.bundle.clone();
    set(&mut b, "/log/treeSize", json!(6));
    let e = assert_fails(run(&g7, &b, doc), Check::LogInclusion);
    assert!(e.detail.contains("not in a tree of size 6"), "{e}");
}

#[test]
fn tree_size_must_be_that_of_the_checkpoint() {
    let g = default_bundle();
    let doc = Some(g.document.as_slice());
    for size in [0, 4, 5, 7, 8, u64::MAX] {
        let mut b = g.bundle.clone();
        set(&mut b, "/log/treeSize", json!(size));
        assert_fails(run(&g, &b, doc), Check::LogCheckpoint);
    }
    // The note signed for another size than the tree's (root of 6, note says 7)...
    variants_fail(
        Check::LogCheckpoint,
        vec![("note says 7", with(|o| o.checkpoint_size = Some(7)))],
    );
    // ...with treeSize agreeing with the note: the proof is for a tree of 6, not 7. (Only
    // where the two trees' paths differ in shape: for a leaf of the full left subtree, here
    // 0..3, the same proof fits both sizes, and only the log key's signature binds the size to
    // the root.)
    let g7 = generate(&with(|o| {
        o.log_index = 5;
        o.checkpoint_size = Some(7);
    }));
    let mut b = g7.bundle.clone();
    set(&mut b, "/log/treeSize", json!(7));
    assert_fails(run(&g7, &b, doc), Check::LogInclusion);
    // A note for size 4 (smaller than the index) with the matching treeSize.
    let g4 = generate(&with(|o| o.checkpoint_size = Some(4)));
    let mut b = g4.bundle.clone();
    set(&mut b, "/log/treeSize", json!(4));
    assert_fails(run(&g4, &b, doc), Check::LogInclusion);
}

#[test]
fn checkpoint_signed_by_another_key() {
    variants_fail(
        Check::LogCheckpoint,
        vec![
            // The log key's key id on the line, another key's signature.
            (
                "signed by another key",
                with(|o| o.checkpoint_signer = Some("someone else's log key".into())),
            ),
            (
                "signed by the actor key",
                with(|o| o.checkpoint_signer = Some(o.actor_key_label.clone())),
            ),
            (
                "signed by the device key",
                with(|o| o.checkpoint_signer = Some(o.device_key_label.clone())),
            ),
        ],
    );
    // A note wholly by another key (its own key id), under the log key's name.
    let g = default_bundle();
    let other = SoftKey::from_label("someone else's log key");
    let body = checkpoint_body(
        LOG_ORIGIN,
        6,
        &tree_root(
            &g.log_entries
                .iter()
                .map(|e| leaf_hash(e))
                .collect::<Vec<_>>(),
        ),
    );
    let mut b = g.bundle.clone();
    set(
        &mut b,
        "/log/checkpoint",
        json!(signed_note(&body, LOG_ORIGIN, &other, &other)),
    );
    let e = assert_fails(run(&g, &b, Some(&g.document)), Check::LogCheckpoint);
    assert!(e.detail.contains("no signature"), "{e}");
    // The same note by the log key verifies (the body above is the generator's).
    set(
        &mut b,
        "/log/checkpoint",
        json!(signed_note(&body, LOG_ORIGIN, &g.log_key, &g.log_key)),
    );
    assert_eq!(b, g.bundle);
    // That other key put in logKey, consistently: its lineage does not vouch for it.
    let mut b = g.bundle.clone();
    set(
        &mut b,
        "/log/checkpoint",
        json!(signed_note(&body, LOG_ORIGIN, &other, &other)),
    );
    set(
        &mut b,
        "/log/logKey/publicKey",
        json!(b64(&other.spki_der())),
    );
    set(&mut b, "/log/logKey/keyId", json!(other.key_id()));
    assert_fails(run(&g, &b, Some(&g.document)), Check::LogKey);
}

#[test]
fn checkpoint_note_lines() {
    let g = default_bundle();
    let doc = Some(g.document.as_slice());
    let note = str_at(&g.bundle, "/log/checkpoint").to_string();
    let (body, line) = note.split_once("\n\n").unwrap();
    let body = format!("{body}\n");
    assert!(
        line.starts_with("\u{2014} log.acme.example/actseal "),
        "{line}"
    );
    let blob = unb64(line.trim_end().rsplit_once(' ').unwrap().1);
    assert_eq!(blob[..4], note_key_id(&g.log_key.spki_der()));
    // Signatures by other keys are ignored (signed-note: witnesses may cosign).
    let other = SoftKey::from_label("a witness");
    let cosigned = format!(
        "{note}{}",
        signed_note(&body, "witness.example", &other, &other)
            .split_once("\n\n")
            .unwrap()
            .1
    );
    let mut b = g.bundle.clone();
    set(&mut b, "/log/checkpoint", json!(cosigned));
    assert_ok(run(&g, &b, doc));
    // A second line under the log key's name and id that does not verify is refused.
    let mut bad = blob.clone();
    *bad.last_mut().unwrap() ^= 1;
    let twice = format!("{note}\u{2014} {LOG_ORIGIN} {}\n", b64(&bad));
    let mut b = g.bundle.clone();
    set(&mut b, "/log/checkpoint", json!(twice));
    assert_fails(run(&g, &b, doc), Check::LogCheckpoint);
    // Malformed notes.
    let malformed = [
        note.replace('\n', "\r\n"),
        note.replacen("\u{2014} ", "- ", 1),
        note.trim_end().to_string(),
        note.replacen("\n\n", "\n", 1),
        format!("{body}\n"),
        note.replacen("\n6\n", "\n06\n", 1),
        note.replacen(LOG_ORIGIN, &format!("{LOG_ORIGIN}\nextension line"), 1),
        String::new(),
    ];
    for text in malformed {
        assert_ne!(text, note);
        let mut b = g.bundle.clone();
        set(&mut b, "/log/checkpoint", json!(text));
        assert_fails(run(&g, &b, doc), Check::LogCheckpoint);
    }
}

#[test]
fn checkpoint_of_another_origin_or_key_name() {
    variants_fail(
        Check::LogCheckpoint,
        vec![
            (
                "note origin differs (signed by the log key)",
                with(|o| o.checkpoint_origin = Some("log.other.example/actseal".into())),
            ),
            (
                "signature line under another key name",
                with(|o| o.checkpoint_key_name = Some("log.other.example/actseal".into())),
            ),
        ],
    );
    // Origin and signature name both another's, with logKey.keyName following them: the log
    // key's lineage is about the log it belongs to.
    let o = with(|o| {
        o.checkpoint_origin = Some("log.other.example/actseal".into());
        o.checkpoint_key_name = Some("log.other.example/actseal".into());
    });
    let g = generate(&o);
    let mut b = g.bundle.clone();
    set(
        &mut b,
        "/log/logKey/keyName",
        json!("log.other.example/actseal"),
    );
    assert_fails(run(&g, &b, Some(&g.document)), Check::LogKey);
}

#[test]
fn log_key_lineage_problems() {
    let mut foreign = DeviceSpec::second();
    foreign.foreign_ca = Some(CaSpec::new("another CA", 9));
    let mut expired = DeviceSpec::second();
    expired.not_after = day(2026, 6, 1);
    let mut not_ca_usage = DeviceSpec::second();
    not_ca_usage.is_ca = true;
    variants_fail(
        Check::LogKey,
        vec![
            (
                "lineage for another actor",
                with(|o| o.log_lineage_actor = Some(o.actor.clone())),
            ),
            (
                "lineage for version 2",
                with(|o| o.log_lineage_key_version = Some(2)),
            ),
            (
                "extractable log key",
                with(|o| o.log_attribute_overrides = vec![("extractable".into(), json!(true))]),
            ),
            (
                "log key not generated on the token",
                with(|o| o.log_attribute_overrides = vec![("local".into(), json!(false))]),
            ),
            (
                "log device from another CA",
                with(|o| o.log_device = Some(foreign.clone())),
            ),
            (
                "log device expired at signedAt",
                with(|o| o.log_device = Some(expired.clone())),
            ),
            (
                "log device certificate is a CA",
                with(|o| o.log_device = Some(not_ca_usage.clone())),
            ),
        ],
    );
    let g = default_bundle();
    let doc = Some(g.document.as_slice());
    // The log key's lineage signed by the log key itself, or by the actor key.
    for key in [&g.log_key, &g.actor_key] {
        let mut b = g.bundle.clone();
        b["log"]["logKey"]["lineage"]["statement"] = envelope(key, &g.log_lineage_payload);
        assert_fails(run(&g, &b, doc), Check::LogKey);
    }
    // The actor key's lineage passed off as the log key's, and the actor key as the log key.
    let mut b = g.bundle.clone();
    b["log"]["logKey"]["lineage"]["statement"] = b["lineage"]["statement"].clone();
    assert_fails(run(&g, &b, doc), Check::LogKey);
    let mut b = g.bundle.clone();
    b["log"]["logKey"]["publicKey"] = b["actorKey"]["publicKey"].clone();
    b["log"]["logKey"]["keyId"] = b["actorKey"]["keyId"].clone();
    assert_fails(run(&g, &b, doc), Check::LogKey);
    // tpm backend: no lineage format.
    let mut b = g.bundle.clone();
    set(&mut b, "/log/logKey/lineage/backend", json!("tpm"));
    assert_fails(run(&g, &b, doc), Check::LogKey);
    // Not a P-256 key.
    let ed25519 = hex::decode(
        "302a300506032b657003210019bf44096984cdfe8541bac167dc3b96c85086aa30b6b6cb0c5c38ad703166e1",
    )
    .unwrap();
    let mut b = g.bundle.clone();
    set(&mut b, "/log/logKey/publicKey", json!(b64(&ed25519)));
    set(&mut b, "/log/logKey/keyId", json!(sha256_hex(&ed25519)));
    assert_fails(run(&g, &b, doc), Check::LogKey);
    // The log key's lineage from a second device verifies, as does the whole bundle under an
    // anchor file that also holds another CA.
    let g2 = generate(&with(|o| o.log_device = Some(DeviceSpec::second())));
    assert_ok(run(&g2, &g2.bundle, Some(&g2.document)));
}

/// The bundle's log with `entry` in place of entry 3 (the receipt's), re-proved and re-signed
/// by the log key.
fn log_with_entry_3(g: &Generated, entry: &[u8]) -> Value {
    let mut leaves: Vec<Hash> = g.log_entries.iter().map(|e| leaf_hash(e)).collect();
    leaves[3] = leaf_hash(entry);
    let body = checkpoint_body(LOG_ORIGIN, 6, &tree_root(&leaves));
    let mut b = g.bundle.clone();
    let proof: Vec<String> = inclusion_path(3, &leaves).iter().map(hex::encode).collect();
    set(&mut b, "/log/inclusionProof", json!(proof));
    set(
        &mut b,
        "/log/checkpoint",
        json!(signed_note(&body, LOG_ORIGIN, &g.log_key, &g.log_key)),
    );
    b
}

/// The leaf is the envelope's length-prefixed encoding (FORMAT.md): a log that holds the same
/// receipt in another encoding does not prove it, and neither does one holding another receipt.
#[test]
fn the_log_entry_is_the_exact_envelope() {
    let g = default_bundle();
    let doc = Some(g.document.as_slice());
    let entry = entry_bytes(&g.bundle["receipt"]);
    assert_eq!(log_with_entry_3(&g, &entry), g.bundle);
    let sig = unb64(str_at(&g.bundle, "/receipt/signatures/0/sig"));
    let payload_type = IN_TOTO.as_bytes();
    let other_encodings = [
        g.receipt_payload.clone(),
        pae(IN_TOTO, &g.receipt_payload),
        [payload_type, &g.receipt_payload, &sig].concat(),
        // Little-endian lengths.
        [
            &(payload_type.len() as u32).to_le_bytes()[..],
            payload_type,
            &(g.receipt_payload.len() as u32).to_le_bytes(),
            &g.receipt_payload,
            &(sig.len() as u32).to_le_bytes(),
            &sig,
        ]
        .concat(),
        // The envelope's JSON.
        serde_json::to_vec(&g.bundle["receipt"]).unwrap(),
        // The base64 payload and signature instead of their bytes.
        {
            let p = str_at(&g.bundle, "/receipt/payload").as_bytes();
            let s = str_at(&g.bundle, "/receipt/signatures/0/sig").as_bytes();
            let mut out = Vec::new();
            for field in [payload_type, p, s] {
                out.extend_from_slice(&(field.len() as u32).to_be_bytes());
                out.extend_from_slice(field);
            }
            out
        },
        // The leaf hash input without the 0x00 prefix cannot be told apart here; the node
        // prefix can: an entry that is a 0x01-prefixed pair is still a leaf.
        [&[0u8][..], &entry].concat(),
    ];
    for (i, other) in other_encodings.iter().enumerate() {
        assert_ne!(other, &entry);
        let b = log_with_entry_3(&g, other);
        expect(
            run(&g, &b, doc),
            Some(Check::LogInclusion),
            &format!("encoding {i}"),
        );
    }
    // Another receipt moved into the bundle without its own log proof.
    let g2 = generate(&with(|o| o.target = "payments://acme.example/other".into()));
    let mut b = g.bundle.clone();
    b["receipt"] = g2.bundle["receipt"].clone();
    assert_fails(run(&g, &b, None), Check::LogInclusion);
    // An interior node presented as the receipt's leaf: a proof one level short, for the
    // subtree of entries 2 and 3, does not verify.
    let leaves: Vec<Hash> = g.log_entries.iter().map(|e| leaf_hash(e)).collect();
    let mut b = g.bundle.clone();
    let short: Vec<String> = inclusion_path(3, &leaves)[1..]
        .iter()
        .map(hex::encode)
        .collect();
    set(&mut b, "/log/inclusionProof", json!(short));
    assert_fails(run(&g, &b, doc), Check::LogInclusion);
}

// ---------------------------------------------------------------------------------------------
// rotation lineage

#[test]
fn a_v3_key_with_two_rotations_verifies() {
    let g = generate(&rotated(3));
    let v = assert_ok(run(&g, &g.bundle, Some(&g.document)));
    assert_eq!(v.key_version, 3);
    assert_eq!(v.key_id, g.actor_key.key_id());
    let lineage = &g.bundle["lineage"];
    assert_eq!(lineage["predecessors"].as_array().unwrap().len(), 2);
    assert_eq!(lineage["rotations"].as_array().unwrap().len(), 2);
    for k in 0..2 {
        assert_eq!(lineage["predecessors"][k]["version"], json!(k + 1));
        assert_eq!(
            lineage["rotations"][k]["signatures"][0]["keyid"],
            json!(g.predecessor_keys[k].key_id())
        );
    }
    let last: Value = serde_json::from_slice(&g.rotation_payloads[1]).unwrap();
    assert_eq!(last["predicate"]["next"]["keyId"], json!(v.key_id));
    assert_eq!(
        last["subject"][0]["name"],
        json!("spiffe://acme.example/agents/payments#3")
    );
}

/// A bundle from `rotated(3)` with `f` applied to its lineage.
fn v3_edited(f: impl FnOnce(&Generated, &mut Value)) -> (Generated, Value) {
    let g = generate(&rotated(3));
    let mut b = g.bundle.clone();
    f(&g, &mut b);
    (g, b)
}

#[track_caller]
fn rotation_fails(f: impl FnOnce(&Generated, &mut Value)) -> VerifyError {
    let (g, b) = v3_edited(f);
    assert_fails(run(&g, &b, Some(&g.document)), Check::LineageRotation)
}

#[test]
fn a_missing_rotation_is_a_break() {
    // A v2 or v3 key without any lineage of earlier versions.
    variants_fail(
        Check::LineageRotation,
        vec![
            (
                "v2 without predecessors",
                with(|o| {
                    o.key_version = 2;
                    o.actor_key_label = "actseal test actor key payments v2".into();
                }),
            ),
            ("v3 with the lineage of v2", {
                let mut o = rotated(3);
                o.predecessors.pop();
                o
            }),
            ("v1 with a predecessor", {
                let mut o = rotated(2);
                o.key_version = 1;
                o
            }),
        ],
    );
    // One rotation missing; one predecessor missing; both of the same step missing.
    rotation_fails(|_, b| {
        b["lineage"]["rotations"].as_array_mut().unwrap().remove(1);
    });
    rotation_fails(|_, b| {
        b["lineage"]["rotations"].as_array_mut().unwrap().remove(0);
    });
    rotation_fails(|_, b| {
        b["lineage"]["predecessors"]
            .as_array_mut()
            .unwrap()
            .remove(0);
    });
    let e = rotation_fails(|_, b| {
        b["lineage"]["predecessors"]
            .as_array_mut()
            .unwrap()
            .remove(1);
        b["lineage"]["rotations"].as_array_mut().unwrap().remove(1);
    });
    assert!(e.detail.contains("needs 2 earlier versions"), "{e}");
    // The gap bridged: v1 signs a rotation straight to v3 in place of v2 → v3.
    let e = rotation_fails(|g, b| {
        let payload = serde_json::to_vec(&rotation_statement(
            &g.options.actor,
            (1, &g.predecessor_keys[0].key_id()),
            (3, &g.actor_key.key_id()),
            "pkcs11",
            "2026-03-01T09:00:00Z",
        ))
        .unwrap();
        b["lineage"]["rotations"][1] = envelope(&g.predecessor_keys[0], &payload);
    });
    assert!(e.detail.contains("a break or a fork"), "{e}");
}

#[test]
fn a_duplicated_or_forked_rotation_is_rejected() {
    // The first rotation twice.
    rotation_fails(|_, b| {
        b["lineage"]["rotations"][1] = b["lineage"]["rotations"][0].clone();
    });
    // The first version twice.
    rotation_fails(|_, b| {
        b["lineage"]["predecessors"][1] = b["lineage"]["predecessors"][0].clone();
    });
    // The rotations in the wrong order, and the predecessors.
    rotation_fails(|_, b| {
        b["lineage"]["rotations"].as_array_mut().unwrap().swap(0, 1);
    });
    rotation_fails(|_, b| {
        b["lineage"]["predecessors"]
            .as_array_mut()
            .unwrap()
            .swap(0, 1);
    });
    // A fork: v1 hands over to another v2 key than the one the chain continues with (a valid
    // rotation, signed by v1).
    let fork = SoftKey::from_label("actseal test actor key payments v2 (fork)").key_id();
    let mut o = rotated(3);
    o.predecessors[0].rotation_overrides = vec![
        ("/predicate/next/keyId".into(), json!(fork)),
        ("/subject/0/digest/sha256".into(), json!(fork)),
    ];
    variants_fail(Check::LineageRotation, vec![("fork at v2", o)]);
    // A fork at the end: the last rotation names another v3 key than the signing key.
    let mut o = rotated(3);
    o.predecessors[1].rotation_overrides = vec![
        ("/predicate/next/keyId".into(), json!(fork)),
        ("/subject/0/digest/sha256".into(), json!(fork)),
    ];
    variants_fail(Check::LineageRotation, vec![("fork at v3", o)]);
    // The v2 key rotated to itself: the chain then names v2, not the signing key.
    let (g, b) = v3_edited(|g, b| {
        let v2 = g.predecessor_keys[1].key_id();
        let payload = serde_json::to_vec(&rotation_statement(
            &g.options.actor,
            (2, &v2),
            (3, &v2),
            "pkcs11",
            "2026-03-01T09:00:00Z",
        ))
        .unwrap();
        b["lineage"]["rotations"][1] = envelope(&g.predecessor_keys[1], &payload);
    });
    assert_fails(run(&g, &b, Some(&g.document)), Check::LineageRotation);
}

#[test]
fn rotations_out_of_time_order() {
    let mut o = rotated(3);
    o.predecessors[0].rotated_at = "2026-05-01T09:00:00Z".into();
    o.predecessors[1].rotated_at = "2026-04-30T09:00:00Z".into();
    let mut one_second = rotated(3);
    one_second.predecessors[0].rotated_at = "2026-05-01T09:00:00Z".into();
    one_second.predecessors[1].rotated_at = "2026-05-01T08:59:59Z".into();
    let mut bad_time = rotated(2);
    bad_time.predecessors[0].rotated_at = "2026-05-01 09:00:00Z".into();
    variants_fail(
        Check::LineageRotation,
        vec![
            ("v2→v3 a day before v1→v2", o),
            ("v2→v3 a second before v1→v2", one_second),
            ("rotatedAt not RFC 3339", bad_time),
        ],
    );
}

#[test]
fn rotation_signed_by_the_wrong_key() {
    let signer = |i: usize, label: &str| {
        let mut o = rotated(3);
        o.predecessors[i].rotation_signer = Some(label.into());
        o
    };
    variants_fail(
        Check::LineageRotation,
        vec![
            (
                "v1→v2 signed by v2",
                signer(0, "actseal test actor key payments v2"),
            ),
            (
                "v2→v3 signed by v3",
                signer(1, "actseal test actor key payments v3"),
            ),
            (
                "v2→v3 signed by v1",
                signer(1, "actseal test actor key payments v1"),
            ),
            (
                "v1→v2 signed by the device key",
                signer(0, "actseal test device key"),
            ),
            (
                "v1→v2 signed by the log key",
                signer(0, "actseal test log key"),
            ),
        ],
    );
    // Signed by v2 and saying so (keyid = v2's id): the keyid is not version 1's.
    let e = rotation_fails(|g, b| {
        b["lineage"]["rotations"][0] = envelope(&g.predecessor_keys[1], &g.rotation_payloads[0]);
    });
    assert!(e.detail.contains("keyid"), "{e}");
}

#[test]
fn receipt_dated_before_its_key_rotated_in() {
    let mut o = rotated(2);
    o.predecessors[0].rotated_at = "2026-11-26T17:51:37Z".into();
    let mut v3 = rotated(3);
    v3.predecessors[1].rotated_at = "2026-12-01T00:00:00Z".into();
    variants_fail(
        Check::LineageRotation,
        vec![
            ("v2 rotated in a second after signedAt", o),
            ("v3 rotated in after signedAt", v3),
        ],
    );
    let mut o = rotated(2);
    o.predecessors[0].rotated_at = o.signed_at.clone();
    assert_ok(verify_variant(&o));
}

#[test]
fn predecessor_attestation_problems() {
    let mut foreign = DeviceSpec::second();
    foreign.foreign_ca = Some(CaSpec::new("another CA", 9));
    let mut impostor_ca = CaSpec::new("impostor key", 1);
    impostor_ca.name = Some("actseal test CA".into());
    let mut impostor = DeviceSpec::second();
    impostor.foreign_ca = Some(impostor_ca);
    let mut expired = DeviceSpec::second();
    expired.not_after = day(2026, 2, 1);
    let mut late = DeviceSpec::second();
    late.not_before = day(2026, 3, 1);
    let device = |i: usize, d: &DeviceSpec| {
        let mut o = rotated(3);
        o.predecessors[i].device = Some(d.clone());
        o
    };
    let attr = |i: usize, name: &str, value: Value| {
        let mut o = rotated(3);
        o.predecessors[i].attribute_overrides = vec![(name.into(), value)];
        o
    };
    variants_fail(
        Check::LineageRotation,
        vec![
            ("v1 on a device of another CA", device(0, &foreign)),
            ("v2 on a device of another CA", device(1, &foreign)),
            ("v1 on a device of an impostor CA", device(0, &impostor)),
            (
                "v1's device expired before the rotation",
                device(0, &expired),
            ),
            (
                "v1's device valid only after the rotation",
                device(0, &late),
            ),
            ("v1 extractable", attr(0, "extractable", json!(true))),
            ("v2 not sensitive", attr(1, "sensitive", json!(false))),
        ],
    );
    // A predecessor's statement about another actor, version or key, signed by its device.
    let g = generate(&rotated(3));
    let doc = Some(g.document.as_slice());
    let original = decode_payload(&g.predecessor_payloads[0]);
    for (pointer, value) in [
        (
            "/predicate/actor",
            json!("spiffe://acme.example/agents/other"),
        ),
        ("/predicate/keyVersion", json!(2)),
        ("/predicate/keyId", json!(g.predecessor_keys[1].key_id())),
    ] {
        let mut v = original.clone();
        set(&mut v, pointer, value);
        let payload = serde_json::to_vec(&v).unwrap();
        let b = resign(
            &g,
            "/lineage/predecessors/0/statement",
            &payload,
            &g.predecessor_device_keys[0],
        );
        assert_fails(run(&g, &b, doc), Check::LineageRotation);
    }
    // Signed by the key it is about, rather than by its device.
    let b = resign(
        &g,
        "/lineage/predecessors/0/statement",
        &g.predecessor_payloads[0],
        &g.predecessor_keys[0],
    );
    assert_fails(run(&g, &b, doc), Check::LineageRotation);
    // Another v1 key put in place, consistently keyed: the rotation was not signed by it.
    let other = SoftKey::from_label("another v1");
    let mut b = g.bundle.clone();
    set(
        &mut b,
        "/lineage/predecessors/0/publicKey",
        json!(b64(&other.spki_der())),
    );
    set(
        &mut b,
        "/lineage/predecessors/0/keyId",
        json!(other.key_id()),
    );
    assert_fails(run(&g, &b, doc), Check::LineageRotation);
    // Only the public key replaced: its id no longer matches.
    let mut b = g.bundle.clone();
    set(
        &mut b,
        "/lineage/predecessors/0/publicKey",
        json!(b64(&other.spki_der())),
    );
    assert_fails(run(&g, &b, doc), Check::LineageRotation);
}

#[test]
fn rotation_statement_problems() {
    let over = |i: usize, pointer: &str, value: Value| {
        let mut o = rotated(3);
        o.predecessors[i].rotation_overrides = vec![(pointer.into(), value)];
        o
    };
    variants_fail(
        Check::LineageRotation,
        vec![
            (
                "another actor",
                over(
                    0,
                    "/predicate/actor",
                    json!("spiffe://acme.example/agents/other"),
                ),
            ),
            (
                "next backend tpm",
                over(1, "/predicate/nextBackend", json!("tpm")),
            ),
            (
                "next backend of v2 tpm",
                over(0, "/predicate/nextBackend", json!("tpm")),
            ),
            (
                "previous version 0",
                over(0, "/predicate/previous/version", json!(0)),
            ),
            (
                "next version 4",
                over(1, "/predicate/next/version", json!(4)),
            ),
            (
                "retirement predicate",
                over(
                    0,
                    "/predicateType",
                    json!("https://actseal.dev/retirement/v1"),
                ),
            ),
            (
                "lineage predicate",
                over(
                    0,
                    "/predicateType",
                    json!("https://actseal.dev/lineage/pkcs11-attributes/v1"),
                ),
            ),
        ],
    );
    // A rotation with another payload type, properly signed.
    let e = rotation_fails(|g, b| {
        let sig = g.predecessor_keys[0].sign_der(&pae("application/json", &g.rotation_payloads[0]));
        let mut env = envelope_with_sig(
            &g.predecessor_keys[0].key_id(),
            &g.rotation_payloads[0],
            &sig,
        );
        env["payloadType"] = json!("application/json");
        b["lineage"]["rotations"][0] = env;
    });
    assert!(e.detail.contains("payloadType"), "{e}");
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
    let fleet = fleet_bundle();
    let files = [
        ("bundle-v1.json", g.bundle_json.as_bytes()),
        ("anchor.pem", g.anchor_pem.as_bytes()),
        ("document.json", g.document.as_slice()),
        ("fleet-v1.json", fleet.bundle_json.as_bytes()),
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
    // The fleet vector (FORMAT.md §9): the same receipt as a fleet node signs it, logIndex
    // null, proved at entry 3 of 6; the values FORMAT.md lists.
    let v = assert_ok(verify_bundle(
        &read("fleet-v1.json"),
        &anchor,
        Some(&read("document.json")),
    ));
    assert_eq!(
        (v.log_index, v.log_index_signed, v.tree_size),
        (3, false, 6)
    );
    assert_eq!(
        decode_payload(&fleet.receipt_payload)["predicate"]["logIndex"],
        Value::Null
    );
    let doc = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/FORMAT.md"),
    )
    .unwrap();
    let leaf = hex::encode(leaf_hash(&fleet.log_entries[3]));
    let root = str_at(&fleet.bundle, "/log/checkpoint")
        .lines()
        .nth(2)
        .unwrap()
        .to_string();
    println!(
        "fleet payload sha256 {} ({} bytes), leaf hash {leaf}, root {root}",
        sha256_hex(&fleet.receipt_payload),
        fleet.receipt_payload.len()
    );
    for value in [sha256_hex(&fleet.receipt_payload), leaf, root] {
        assert!(doc.contains(&value), "FORMAT.md §9 does not list {value}");
    }
}

#[test]
fn a_key_cannot_succeed_itself_or_come_back_in_a_lineage() {
    // v1 and v2 are the same key (A→A).
    let mut same = rotated(2);
    same.predecessors[0].key_label = same.actor_key_label.clone();
    let e = assert_fails(verify_variant(&same), Check::LineageRotation);
    assert!(e.detail.contains("appears twice"), "{e}");
    // v3 is v1's key again (A→B→A).
    let mut back = rotated(3);
    back.actor_key_label = back.predecessors[0].key_label.clone();
    let e = assert_fails(verify_variant(&back), Check::LineageRotation);
    assert!(e.detail.contains("appears twice"), "{e}");
}

#[test]
fn times_must_be_in_order_key_created_then_used() {
    // A receipt dated before its key was created.
    let early = with(|o| o.created_at = "2026-11-26T18:00:00Z".into());
    let e = assert_fails(verify_variant(&early), Check::LineageStatement);
    assert!(e.detail.contains("before its key was created"), "{e}");
    // A version dated as created after it rotated away.
    let mut late = rotated(3);
    late.predecessors[0].created_at = "2026-03-15T00:00:00Z".into();
    assert_fails(verify_variant(&late), Check::LineageRotation);
    // A rotation to a key that did not exist yet.
    let mut premature = rotated(2);
    premature.predecessors[0].rotated_at = "2026-01-15T00:00:00Z".into();
    premature.created_at = "2026-02-01T09:00:00Z".into();
    let e = assert_fails(verify_variant(&premature), Check::LineageRotation);
    assert!(e.detail.contains("created after the rotation"), "{e}");
}

/// A TPM2_Certify-shaped lineage for the bundle's actor key, built by hand and signed by
/// `signer` (standing in for the AK) under the certificate `device_der`: TPMT_PUBLIC of the
/// actor key and of the "AK", and a TPMS_ATTEST that certifies one by the other with the
/// extraData FORMAT.md §4.2 prescribes.
fn crafted_tpm_lineage(g: &Generated, signer: &SoftKey, device_der: &str) -> Value {
    fn tpm2b(bytes: &[u8]) -> Vec<u8> {
        [&(bytes.len() as u16).to_be_bytes()[..], bytes].concat()
    }
    fn ecc_public(key: &SoftKey, attributes: u32) -> Vec<u8> {
        let spki = key.spki_der();
        let point = &spki[spki.len() - 64..];
        [
            &[0x00, 0x23, 0x00, 0x0b][..],
            &attributes.to_be_bytes(),
            &tpm2b(&[]),
            &[0x00, 0x10, 0x00, 0x18, 0x00, 0x0b, 0x00, 0x03, 0x00, 0x10],
            &tpm2b(&point[..32]),
            &tpm2b(&point[32..]),
        ]
        .concat()
    }
    let name = |public: &[u8]| [&[0x00, 0x0b][..], &Sha256::digest(public)].concat();
    // fixedTPM, fixedParent, sensitiveDataOrigin, userWithAuth, sign (+ restricted for the AK).
    let key_public = ecc_public(&g.actor_key, 0x0004_0072);
    let ak_public = ecc_public(signer, 0x0005_0072);
    let signer_qn = [
        &[0x00, 0x0b][..],
        &Sha256::digest([&0x4000_000bu32.to_be_bytes()[..], &name(&ak_public)].concat()),
    ]
    .concat();
    let created_at = &g.options.created_at;
    let subject = format!("actor-key:{}#{}", g.options.actor, g.options.key_version);
    let extra = Sha256::digest(
        [
            &b"actseal/tpm2-certify/v2\0"[..],
            &(subject.len() as u32).to_be_bytes(),
            subject.as_bytes(),
            &(created_at.len() as u32).to_be_bytes(),
            created_at.as_bytes(),
        ]
        .concat(),
    );
    let attest = [
        &[0xff, 0x54, 0x43, 0x47, 0x80, 0x17][..],
        &tpm2b(&signer_qn),
        &tpm2b(&extra),
        &[0u8; 8 + 4 + 4 + 1 + 8],
        &tpm2b(&name(&key_public)),
        &tpm2b(&name(&key_public)),
    ]
    .concat();
    json!({
        "backend": "tpm",
        "tpm2Certify": {
            "attest": b64(&attest),
            "signature": b64(&signer.sign_der(&attest)),
            "publicArea": b64(&key_public),
            "akPublicArea": b64(&ak_public),
            "createdAt": created_at,
        },
        "deviceCertificate": device_der,
        "certificateChain": [],
    })
}

/// Issue 8, item 1: a PKCS#11 device key signs a hand-made TPMS_ATTEST for a key that was never
/// in a TPM. Every byte is as a TPM would write it and the signature is genuine; the device
/// certificate is certified as a PKCS#11 device, not as a TPM attestation key, so it is refused.
/// The same evidence under a certificate with the AK role verifies: the role alone decides.
#[test]
fn a_device_key_signing_a_crafted_tpms_attest_is_refused() {
    let g = generate(&with(|o| o.backend = "tpm".into()));
    let mut bundle = g.bundle.clone();
    let device_cert = str_at(&bundle, "/lineage/deviceCertificate").to_owned();
    bundle["lineage"] = crafted_tpm_lineage(&g, &g.device_key, &device_cert);
    let json = serde_json::to_vec(&bundle).unwrap();
    let anchors = TrustAnchors::from_pem(g.anchor_pem.as_bytes()).unwrap();
    let e = verify_bundle(&json, &anchors, None).expect_err("a device key is not an AK");
    assert_eq!(e.check, Check::LineageCertificate, "{e}");
    assert!(e.detail.contains("TPM attestation key"), "{e}");

    let as_ak = generate(&with(|o| {
        o.backend = "tpm".into();
        o.device_ext_key_usage = vec![EKU_TPM_AK.to_vec(), eku_actseal(2)];
    }));
    let mut bundle = as_ak.bundle.clone();
    let ak_cert = str_at(&bundle, "/lineage/deviceCertificate").to_owned();
    bundle["lineage"] = crafted_tpm_lineage(&as_ak, &as_ak.device_key, &ak_cert);
    // The log key's lineage is a PKCS#11 statement under the same (now AK) certificate: give
    // the log its own PKCS#11 device so only the actor key's evidence is in question.
    let log_cert = generate(&Options::default()).bundle["log"]["logKey"].clone();
    bundle["log"]["logKey"] = log_cert;
    let json = serde_json::to_vec(&bundle).unwrap();
    let anchors = TrustAnchors::from_pem(as_ak.anchor_pem.as_bytes()).unwrap();
    verify_bundle(&json, &anchors, None).expect("the crafted evidence itself is well-formed");

    // The TPMS_ATTEST must name the AK of akPublicArea as its signer (its Qualified Name).
    let mut other_signer = bundle.clone();
    let certify = &mut other_signer["lineage"]["tpm2Certify"];
    let mut attest = unb64(certify["attest"].as_str().unwrap());
    attest[12] ^= 1;
    certify["attest"] = json!(b64(&attest));
    certify["signature"] = json!(b64(&as_ak.device_key.sign_der(&attest)));
    let e = verify_bundle(&serde_json::to_vec(&other_signer).unwrap(), &anchors, None).unwrap_err();
    assert_eq!(e.check, Check::LineageStatement, "{e}");
    assert!(e.detail.contains("qualifiedSigner"), "{e}");
    // And akPublicArea must be a restricted key.
    let mut unrestricted = bundle.clone();
    let certify = &mut unrestricted["lineage"]["tpm2Certify"];
    let mut ak_public = unb64(certify["akPublicArea"].as_str().unwrap());
    ak_public[5] &= !0x01;
    certify["akPublicArea"] = json!(b64(&ak_public));
    let e = verify_bundle(&serde_json::to_vec(&unrestricted).unwrap(), &anchors, None).unwrap_err();
    assert_eq!(e.check, Check::LineageSignature, "{e}");
    assert!(e.detail.contains("restricted"), "{e}");

    // Issue 8, item 4: a TPM key's creation time is real and bound by extraData, so time-order
    // checks apply: rewriting `createdAt` breaks extraData, and a key created after the receipt
    // is refused.
    let mut moved = bundle.clone();
    moved["lineage"]["tpm2Certify"]["createdAt"] = json!("2026-01-01T00:00:00Z");
    let e = verify_bundle(&serde_json::to_vec(&moved).unwrap(), &anchors, None).unwrap_err();
    assert_eq!(e.check, Check::LineageStatement, "{e}");
    assert!(e.detail.contains("extraData"), "{e}");
    let late = generate(&Options {
        created_at: "2026-11-27T00:00:00Z".into(),
        ..as_ak.options.clone()
    });
    let mut bundle = late.bundle.clone();
    bundle["lineage"] = crafted_tpm_lineage(&late, &late.device_key, &ak_cert);
    bundle["log"]["logKey"] = generate(&Options::default()).bundle["log"]["logKey"].clone();
    let e = verify_bundle(&serde_json::to_vec(&bundle).unwrap(), &anchors, None).unwrap_err();
    assert_eq!(e.check, Check::LineageStatement, "{e}");
    assert!(e.detail.contains("before its key was created"), "{e}");
}

/// Issue 8, item 2: an actor named exactly like the log's origin. Its key's attestation says
/// `actor-key:…#1`, the log key's says `log-key:…`: neither passes for the other.
#[test]
fn an_actor_named_like_the_log_origin_cannot_pass_for_the_log_key() {
    let g = generate(&with(|o| o.actor = LOG_ORIGIN.into()));
    let anchors = TrustAnchors::from_pem(g.anchor_pem.as_bytes()).unwrap();
    let json = serde_json::to_vec(&g.bundle).unwrap();
    verify_bundle(&json, &anchors, None).expect("an honest bundle of that actor verifies");
    // The actor key's lineage offered as the log key's (and the log key replaced by it).
    let mut bundle = g.bundle.clone();
    let mut log_key = bundle["log"]["logKey"].clone();
    log_key["keyId"] = bundle["actorKey"]["keyId"].clone();
    log_key["publicKey"] = bundle["actorKey"]["publicKey"].clone();
    let mut actor_lineage = bundle["lineage"].clone();
    actor_lineage
        .as_object_mut()
        .unwrap()
        .remove("predecessors");
    actor_lineage.as_object_mut().unwrap().remove("rotations");
    log_key["lineage"] = actor_lineage;
    bundle["log"]["logKey"] = log_key;
    let e = verify_bundle(&serde_json::to_vec(&bundle).unwrap(), &anchors, None)
        .expect_err("an actor key is not a log key");
    assert_eq!(e.check, Check::LogKey, "{e}");
    assert!(e.detail.contains("keyRole"), "{e}");
    // And the log key signing a receipt as that actor, its own lineage offered as the actor
    // key's: the receipt signature is genuine, the lineage says it is a log key.
    let g = generate(&with(|o| {
        o.actor = LOG_ORIGIN.into();
        o.actor_key_label = o.log_key_label.clone();
    }));
    let mut bundle = g.bundle.clone();
    bundle["lineage"] = bundle["log"]["logKey"]["lineage"].clone();
    let e = verify_bundle(&serde_json::to_vec(&bundle).unwrap(), &anchors, None)
        .expect_err("a log key is not an actor key");
    assert_eq!(e.check, Check::LineageStatement, "{e}");
    assert!(e.detail.contains("keyRole"), "{e}");
}

/// Issue 8, item 3: the key → actor mapping comes from the log's registration entries, never
/// from the export's key table. An export whose receipts are signed by a key that only the
/// table names (a key the operator made beside the daemon, attested by the device all the same)
/// is refused; the same receipts behind the key's registration entry pass.
#[test]
fn audit_takes_keys_from_the_log_not_from_the_export_key_table() {
    use actseal::verify::audit::audit_log;
    let times = ["2026-11-26T18:00:00Z", "2026-11-26T18:01:00Z"];
    let (export, anchor) = receipts_export_with(&times, true);
    let anchors = TrustAnchors::from_pem(anchor.as_bytes()).unwrap();
    let report = audit_log(export.as_bytes(), &anchors).expect("a registered key audits");
    assert_eq!((report.registrations, report.receipts), (1, 2));

    let (forged, anchor) = receipts_export_with(&times, false);
    let anchors = TrustAnchors::from_pem(anchor.as_bytes()).unwrap();
    let e = audit_log(forged.as_bytes(), &anchors).expect_err("a key table is not the log");
    assert_eq!(e.step, actseal::verify::audit::AuditStep::Receipt, "{e}");
    assert_eq!(e.index, Some(0), "{e}");
    assert!(e.detail.contains("never registered"), "{e}");

    // A second key registered for the same version is a fork, even with a valid attestation.
    let g = generate(&Options::default());
    let (export, _) = receipts_export_with(&times, true);
    let mut json: Value = serde_json::from_str(&export).unwrap();
    let twin = generate(&with(|o| o.actor_key_label = "another actor key".into()));
    let mut entries: Vec<Vec<u8>> = json["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| unb64(e.as_str().unwrap()))
        .collect();
    entries.insert(1, registration_entry(&twin, &g.options.created_at));
    let leaves: Vec<Hash> = entries.iter().map(|e| leaf_hash(e)).collect();
    let body = checkpoint_body(LOG_ORIGIN, entries.len() as u64, &tree_root(&leaves));
    json["checkpoint"] = json!(signed_note(&body, LOG_ORIGIN, &g.log_key, &g.log_key));
    json["entries"] = json!(entries.iter().map(|e| b64(e)).collect::<Vec<_>>());
    let e = audit_log(json.to_string().as_bytes(), &anchors).expect_err("two keys for v1");
    assert_eq!(
        e.step,
        actseal::verify::audit::AuditStep::Registration,
        "{e}"
    );
    assert_eq!(e.index, Some(1), "{e}");
    assert!(e.detail.contains("fork"), "{e}");
}
