//! `scripts/verify-with-openssl.sh` (FORMAT.md §8), an auditor's verifier made of jq,
//! coreutils and openssl alone, run on the committed vector, on generated variants, and on
//! bundles of the real daemon on SoftHSM and on swtpm (key version 1 and after two rotations),
//! untouched and tampered: the script and the crate must accept and refuse the same bundles and,
//! when they refuse, name the same FORMAT.md §7 check.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;
mod support;

use std::path::{Path, PathBuf};

use actseal::verify::{TrustAnchors, verify_bundle};
use common::openssl::{require_openssl, verify_with_openssl};
use serde_json::{Value, json};
use support::make_bundle::*;

fn vectors() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors")
}

/// The bundle with one byte of the base64 value at `pointer` flipped (at its middle).
fn flip_base64(bundle: &Value, pointer: &str) -> Value {
    let mut b = bundle.clone();
    let mut bytes = unb64(b.pointer(pointer).unwrap().as_str().unwrap());
    let middle = bytes.len() / 2;
    bytes[middle] ^= 1;
    *b.pointer_mut(pointer).unwrap() = json!(b64(&bytes));
    b
}

/// The bundle with the first inclusion proof hash changed in one bit.
fn flip_inclusion_proof(bundle: &Value) -> Value {
    let mut b = bundle.clone();
    let mut hash = hex::decode(b["log"]["inclusionProof"][0].as_str().unwrap()).unwrap();
    hash[31] ^= 1;
    b["log"]["inclusionProof"][0] = json!(hex::encode(hash));
    b
}

/// The bundle with the last byte of the checkpoint's (first) signature flipped.
fn flip_checkpoint_signature(bundle: &Value) -> Value {
    let mut b = bundle.clone();
    let note = b["log"]["checkpoint"].as_str().unwrap().to_string();
    let (text, signatures) = note.split_once("\n\n").unwrap();
    let (line, rest) = signatures.split_once('\n').unwrap();
    let (name, blob) = line.rsplit_once(' ').unwrap();
    let mut blob = unb64(blob);
    *blob.last_mut().unwrap() ^= 1;
    b["log"]["checkpoint"] = json!(format!("{text}\n\n{name} {}\n{rest}", b64(&blob)));
    b
}

/// The script and the crate both refuse `bundle`, naming check `want`. Returns the script's
/// stderr.
fn refused_by_both(
    bundle: &Value,
    anchor: &Path,
    document: &[u8],
    want: &str,
    what: &str,
) -> String {
    let text = serde_json::to_string(bundle).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let by_script = verify_with_openssl(&text, anchor, Some(document), dir.path())
        .expect_err(&format!("the script accepted: {what}"));
    assert_eq!(
        by_script.check.as_deref(),
        Some(want),
        "{what}: the script said {by_script}"
    );
    let anchors = TrustAnchors::from_pem(&std::fs::read(anchor).unwrap()).unwrap();
    let by_crate = verify_bundle(text.as_bytes(), &anchors, Some(document))
        .expect_err(&format!("the crate accepted: {what}"));
    assert_eq!(
        by_crate.check.to_string(),
        want,
        "{what}: the crate said {by_crate}"
    );
    by_script.stderr
}

fn verified_by_both(bundle_json: &str, anchor: &Path, document: &[u8], what: &str) {
    let dir = tempfile::tempdir().unwrap();
    if let Err(e) = verify_with_openssl(bundle_json, anchor, Some(document), dir.path()) {
        panic!("the script refused {what}: {e}");
    }
    let anchors = TrustAnchors::from_pem(&std::fs::read(anchor).unwrap()).unwrap();
    verify_bundle(bundle_json.as_bytes(), &anchors, Some(document))
        .unwrap_or_else(|e| panic!("the crate refused {what}: {e}"));
}

#[test]
fn committed_vector_verifies_with_openssl_alone() {
    require_openssl();
    let dir = tempfile::tempdir().unwrap();
    let bundle = std::fs::read_to_string(vectors().join("bundle-v1.json")).unwrap();
    let document = std::fs::read(vectors().join("document.json")).unwrap();
    let anchor = vectors().join("anchor.pem");
    let out = verify_with_openssl(&bundle, &anchor, Some(&document), dir.path()).unwrap();
    for check in [
        "receipt.signature",
        "receipt.statement",
        "receipt.document",
        "lineage.certificate",
        "lineage.signature",
        "lineage.statement",
        "lineage.rotation",
        "log.key",
        "log.checkpoint",
        "log.inclusion",
    ] {
        assert!(out.contains(&format!("checking {check}")), "{check}: {out}");
    }
    verify_with_openssl(&bundle, &anchor, None, dir.path()).unwrap();
    let refused =
        verify_with_openssl(&bundle, &anchor, Some(b"another document"), dir.path()).unwrap_err();
    assert_eq!(
        refused.check.as_deref(),
        Some("receipt.document"),
        "{refused}"
    );
}

/// The committed fleet vectors (FORMAT.md §9, §12.5): a single receipt and a batch leaf whose
/// `logIndex` is null verify with openssl alone, at the index their proof proves; moved to
/// another index, or with an index written in without the actor key, they are refused.
#[test]
fn committed_fleet_vectors_verify_with_openssl_alone() {
    require_openssl();
    let anchor = vectors().join("anchor.pem");
    for (file, document) in [
        ("fleet-v1.json", "document.json"),
        ("fleet-batch-v1-leaf1.json", "batch-v1-document1.json"),
    ] {
        let text = std::fs::read_to_string(vectors().join(file)).unwrap();
        let document = std::fs::read(vectors().join(document)).unwrap();
        verified_by_both(&text, &anchor, &document, file);
        let bundle: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(bundle["log"]["index"], json!(3), "{file}");
        for index in [2, 4, 6] {
            let mut moved = bundle.clone();
            moved["log"]["index"] = json!(index);
            refused_by_both(&moved, &anchor, &document, "log.inclusion", file);
        }
        let mut payload: Value =
            serde_json::from_slice(&unb64(bundle["receipt"]["payload"].as_str().unwrap())).unwrap();
        payload["predicate"]["logIndex"] = json!(3);
        let mut indexed = bundle.clone();
        indexed["receipt"]["payload"] = json!(b64(&serde_json::to_vec(&payload).unwrap()));
        let want = if bundle.get("batch").is_some() {
            "receipt.batch"
        } else {
            "receipt.signature"
        };
        refused_by_both(&indexed, &anchor, &document, want, file);
    }
}

/// Every link of the committed vector, broken one at a time: each is refused by the check that
/// stands for it, by the script and by the crate alike.
#[test]
fn openssl_rejects_tampered_copies_by_the_right_check() {
    require_openssl();
    let text = std::fs::read_to_string(vectors().join("bundle-v1.json")).unwrap();
    let document = std::fs::read(vectors().join("document.json")).unwrap();
    let anchor = vectors().join("anchor.pem");
    let original: Value = serde_json::from_str(&text).unwrap();
    for (pointer, want) in [
        ("/receipt/signatures/0/sig", "receipt.signature"),
        ("/receipt/payload", "receipt.signature"),
        ("/actorKey/publicKey", "receipt.signature"),
        ("/lineage/deviceCertificate", "lineage.certificate"),
        ("/lineage/statement/signatures/0/sig", "lineage.signature"),
        ("/lineage/statement/payload", "lineage.signature"),
        ("/log/logKey/lineage/statement/signatures/0/sig", "log.key"),
        ("/log/logKey/lineage/deviceCertificate", "log.key"),
        ("/log/logKey/publicKey", "log.key"),
    ] {
        refused_by_both(
            &flip_base64(&original, pointer),
            &anchor,
            &document,
            want,
            pointer,
        );
    }
    let with = |f: &dyn Fn(&mut Value)| {
        let mut copy = original.clone();
        f(&mut copy);
        copy
    };
    let cases: [(&str, Value, &str); 9] = [
        (
            "another mediaType",
            with(&|b| b["mediaType"] = json!("application/json")),
            "bundle.parse",
        ),
        (
            "a lineage without evidence",
            with(&|b| {
                b["lineage"].as_object_mut().unwrap().remove("statement");
            }),
            "bundle.parse",
        ),
        (
            "a log key without lineage",
            with(&|b| b["log"]["logKey"]["lineage"] = json!(null)),
            "bundle.parse",
        ),
        (
            "a lineage statement called a TPM lineage",
            with(&|b| b["lineage"]["backend"] = json!("tpm")),
            "lineage.statement",
        ),
        (
            "inclusion proof",
            flip_inclusion_proof(&original),
            "log.inclusion",
        ),
        (
            "checkpoint signature",
            flip_checkpoint_signature(&original),
            "log.checkpoint",
        ),
        (
            "a proof hash dropped",
            {
                let mut b = original.clone();
                b["log"]["inclusionProof"].as_array_mut().unwrap().pop();
                b
            },
            "log.inclusion",
        ),
        (
            "tree size not the checkpoint's",
            {
                let mut b = original.clone();
                b["log"]["treeSize"] = json!(7);
                b
            },
            "log.checkpoint",
        ),
        (
            "the actor's lineage as the log key's",
            {
                let mut b = original.clone();
                b["log"]["logKey"]["lineage"] = original["lineage"].clone();
                b
            },
            "log.key",
        ),
    ];
    for (what, bad, want) in cases {
        refused_by_both(&bad, &anchor, &document, want, what);
    }

    // Not JSON at all, and a wrong command line.
    let dir = tempfile::tempdir().unwrap();
    let refused = verify_with_openssl("not JSON", &anchor, None, dir.path()).unwrap_err();
    assert_eq!(refused.check.as_deref(), Some("bundle.parse"), "{refused}");
    let usage = std::process::Command::new("sh")
        .arg(common::openssl::SCRIPT)
        .output()
        .unwrap();
    assert_eq!(usage.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&usage.stderr).starts_with("usage: "));
}

/// The committed vector's checkpoint note checked with openssl alone (FORMAT.md §10): the
/// signature over the note text under the log key, and the key id as the SPKI hash prefix.
#[test]
fn committed_checkpoint_verifies_with_openssl_alone() {
    require_openssl();
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(vectors().join("bundle-v1.json")).unwrap();
    let b: serde_json::Value = serde_json::from_str(&text).unwrap();
    let note = b["log"]["checkpoint"].as_str().unwrap();
    let (body, sig_line) = note.split_once("\n\n").unwrap();
    let origin = b["log"]["logKey"]["keyName"].as_str().unwrap();
    let blob_b64 = sig_line
        .strip_prefix(&format!("\u{2014} {origin} "))
        .and_then(|rest| rest.strip_suffix('\n'))
        .unwrap();
    let blob = unb64(blob_b64);
    let spki = unb64(b["log"]["logKey"]["publicKey"].as_str().unwrap());
    assert_eq!(blob[..4], hex::decode(sha256_hex(&spki)).unwrap()[..4]);

    let path = |name: &str| dir.path().join(name);
    std::fs::write(path("text"), format!("{body}\n")).unwrap();
    std::fs::write(path("sig.der"), &blob[4..]).unwrap();
    std::fs::write(path("key.der"), &spki).unwrap();
    let openssl = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let p = |name: &str| path(name).to_str().unwrap().to_string();
    let (ok, _) = openssl(&[
        "pkey",
        "-pubin",
        "-inform",
        "DER",
        "-in",
        &p("key.der"),
        "-out",
        &p("key.pem"),
    ]);
    assert!(ok);
    let verify = || {
        openssl(&[
            "dgst",
            "-sha256",
            "-verify",
            &p("key.pem"),
            "-signature",
            &p("sig.der"),
            &p("text"),
        ])
    };
    let (ok, out) = verify();
    assert!(ok && out.trim() == "Verified OK", "{out}");
    // The size line changed: the signature no longer verifies.
    std::fs::write(
        path("text"),
        format!("{body}\n").replacen("\n6\n", "\n7\n", 1),
    )
    .unwrap();
    assert!(!verify().0);
}

/// The script and the crate agree on variants chosen to exercise each kind of check, and name
/// the same check when they refuse.
#[test]
fn openssl_and_the_verifier_agree() {
    require_openssl();
    let mid = || Some(CaSpec::new("actseal test intermediate", 2));
    let mut cases: Vec<(&str, Options, bool)> = vec![
        ("default", Options::default(), true),
        (
            "intermediate",
            Options {
                intermediate: mid(),
                ..Options::default()
            },
            true,
        ),
        (
            "expired device",
            Options {
                device_not_after: day(2026, 6, 1),
                ..Options::default()
            },
            false,
        ),
        (
            "device not yet valid",
            Options {
                device_not_before: day(2027, 1, 1),
                ..Options::default()
            },
            false,
        ),
        (
            "device is a CA",
            Options {
                device_is_ca: true,
                ..Options::default()
            },
            false,
        ),
        // Certificate roles (FORMAT.md §6.1): a PKCS#11 statement only under a device
        // certificate, the log key only under one that may attest log keys.
        (
            "device certified as a TPM attestation key",
            Options {
                device_ext_key_usage: vec![EKU_TPM_AK.to_vec(), eku_actseal(2)],
                ..Options::default()
            },
            false,
        ),
        (
            "device certified as both roles",
            Options {
                device_ext_key_usage: vec![EKU_TPM_AK.to_vec(), eku_actseal(1), eku_actseal(2)],
                ..Options::default()
            },
            false,
        ),
        (
            "device with no extKeyUsage",
            Options {
                device_ext_key_usage: vec![],
                ..Options::default()
            },
            false,
        ),
        (
            "device that may not attest a log key",
            Options {
                device_ext_key_usage: vec![eku_actseal(1)],
                ..Options::default()
            },
            false,
        ),
        (
            "extractable",
            Options {
                attribute_overrides: vec![("extractable".into(), json!(true))],
                ..Options::default()
            },
            false,
        ),
        (
            "other actor in lineage",
            Options {
                lineage_actor: Some("spiffe://x/y".into()),
                ..Options::default()
            },
            false,
        ),
    ];
    // Rotations and the log key, which the script checks link by link too.
    cases.push(("key version 3 (two rotations)", rotated(3), true));
    cases.push((
        "key version 2 under an intermediate, log key on a second device",
        Options {
            intermediate: mid(),
            log_device: Some(DeviceSpec::second()),
            ..rotated(2)
        },
        true,
    ));
    cases.push((
        "log of one entry",
        Options {
            log_index: 0,
            log_tree_size: 1,
            ..Options::default()
        },
        true,
    ));
    cases.push((
        "high-S receipt signature",
        Options {
            receipt_high_s: true,
            ..Options::default()
        },
        true,
    ));
    let mut not_ca = CaSpec::new("actseal test intermediate", 2);
    not_ca.is_ca = false;
    cases.push((
        "intermediate not a CA",
        Options {
            intermediate: Some(not_ca),
            ..Options::default()
        },
        false,
    ));

    for (name, o, valid) in cases {
        let dir = tempfile::tempdir().unwrap();
        let g = generate(&o);
        let anchor_path = dir.path().join("anchor.pem");
        std::fs::write(&anchor_path, &g.anchor_pem).unwrap();
        let by_openssl =
            verify_with_openssl(&g.bundle_json, &anchor_path, Some(&g.document), dir.path());
        let anchors = TrustAnchors::from_pem(g.anchor_pem.as_bytes()).unwrap();
        let by_crate = verify_bundle(g.bundle_json.as_bytes(), &anchors, Some(&g.document));
        assert_eq!(by_openssl.is_ok(), valid, "{name}: openssl {by_openssl:?}");
        assert_eq!(
            by_crate.is_ok(),
            valid,
            "{name}: crate {:?}",
            by_crate.as_ref().err()
        );
        if let (Err(script), Err(krate)) = (&by_openssl, &by_crate) {
            assert_eq!(
                script.check.as_deref(),
                Some(krate.check.name()),
                "{name}: {script} / {krate}"
            );
        }

        // And every variant fails under another CA's anchor, for both.
        let other_anchor = dir.path().join("other.pem");
        std::fs::write(
            &other_anchor,
            generate(&Options {
                ca: CaSpec::new("another CA", 9),
                ..Options::default()
            })
            .anchor_pem,
        )
        .unwrap();
        let refused =
            verify_with_openssl(&g.bundle_json, &other_anchor, Some(&g.document), dir.path())
                .unwrap_err();
        assert_eq!(
            refused.check.as_deref(),
            Some("lineage.certificate"),
            "{name}: {refused}"
        );
    }
}

/// The script is FORMAT.md §8: below its argument handling it is §8's ```sh blocks, verbatim and
/// in order, and nothing else.
#[test]
fn format_md_section_8_is_the_script() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let doc = std::fs::read_to_string(root.join("docs/FORMAT.md")).unwrap();
    let section = doc
        .split("## 8. Verifying with openssl alone")
        .nth(1)
        .and_then(|s| s.split("\n## ").next())
        .expect("FORMAT.md has §8");
    let blocks: Vec<&str> = section
        .split("```sh\n")
        .skip(1)
        .map(|s| s.split("\n```").next().unwrap())
        .collect();
    assert!(blocks.len() > 3, "§8 has its ```sh blocks");
    let script = std::fs::read_to_string(common::openssl::SCRIPT).unwrap();
    let (_, body) = script
        .split_once("\ncd \"$WORK\"\n\n")
        .expect("the script enters its scratch directory");
    let documented = format!("{}\n", blocks.join("\n\n"));
    if body != documented {
        let line = body
            .lines()
            .zip(documented.lines())
            .position(|(a, b)| a != b)
            .unwrap_or(0);
        panic!(
            "scripts/verify-with-openssl.sh drifted from FORMAT.md §8 at the documented part's \
             line {}: {:?} / {:?}",
            line + 1,
            body.lines().nth(line),
            documented.lines().nth(line)
        );
    }
}

/// Bundles from the real daemon on SoftHSM: key version 1, and version 3 after two rotations
/// (two predecessors, two rotation statements), verified by the script; then every kind of link
/// of the rotated bundle broken, refused by the check that stands for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_pkcs11_bundles_verify_with_openssl_and_tampering_fails_by_step() {
    require_openssl();
    let lab = common::started_lab();
    let (v1, v3) = sign_before_and_after_two_rotations(&lab).await;
    let anchor = lab.anchor();
    verified_by_both(&v1, &anchor, common::DOCUMENT, "the PKCS#11 v1 bundle");
    verified_by_both(&v3, &anchor, common::DOCUMENT, "the PKCS#11 v3 bundle");

    let b: Value = serde_json::from_str(&v3).unwrap();
    let mut cases = common_tampering(&b);
    cases.extend([
        (
            "the log key's lineage statement",
            flip_base64(&b, "/log/logKey/lineage/statement/signatures/0/sig"),
            "log.key",
        ),
        (
            "version 1's lineage statement",
            flip_base64(&b, "/lineage/predecessors/0/statement/payload"),
            "lineage.rotation",
        ),
    ]);
    for (what, bad, want) in cases {
        refused_by_both(&bad, &anchor, common::DOCUMENT, want, what);
    }
}

/// Bundles from the real daemon on swtpm: a TPM2_Certify lineage at version 1 and at version 3
/// (TPM predecessors), and the log key's TPM lineage, verified by the script; then the TPM
/// evidence broken: a flipped byte of the attest (the AK signature fails), of the public area
/// (its Name is no longer certified), a genuine certification of another key (version 1's, the
/// log key's), the log key's attest, and the links every bundle has.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_tpm_bundles_verify_with_openssl_and_tampering_fails_by_step() {
    require_openssl();
    let mut lab = common::new_tpm_lab();
    lab.start_daemon().expect("daemon start");
    let (v1, v3) = sign_before_and_after_two_rotations(&lab).await;
    let anchor = lab.anchor();
    verified_by_both(&v1, &anchor, common::DOCUMENT, "the TPM v1 bundle");
    verified_by_both(&v3, &anchor, common::DOCUMENT, "the TPM v3 bundle");

    let b: Value = serde_json::from_str(&v3).unwrap();
    assert!(b["lineage"]["tpm2Certify"].is_object());
    assert!(b["log"]["logKey"]["lineage"]["tpm2Certify"].is_object());
    let with = |f: &dyn Fn(&mut Value)| {
        let mut copy = b.clone();
        f(&mut copy);
        copy
    };
    let mut cases = common_tampering(&b);
    cases.extend([
        (
            "the TPMS_ATTEST",
            flip_base64(&b, "/lineage/tpm2Certify/attest"),
            "lineage.signature",
        ),
        (
            "the AK signature",
            flip_base64(&b, "/lineage/tpm2Certify/signature"),
            "lineage.signature",
        ),
        (
            "the TPMT_PUBLIC",
            flip_base64(&b, "/lineage/tpm2Certify/publicArea"),
            "lineage.statement",
        ),
        (
            "version 1's genuine TPM2_Certify for version 3",
            with(&|c| {
                c["lineage"]["tpm2Certify"] = c["lineage"]["predecessors"][0]["tpm2Certify"].clone()
            }),
            "lineage.statement",
        ),
        (
            "the log key's genuine TPM2_Certify for the actor key",
            with(&|c| {
                c["lineage"]["tpm2Certify"] = c["log"]["logKey"]["lineage"]["tpm2Certify"].clone()
            }),
            "lineage.statement",
        ),
        (
            "version 2's TPMS_ATTEST",
            flip_base64(&b, "/lineage/predecessors/1/tpm2Certify/attest"),
            "lineage.rotation",
        ),
        (
            "the log key's TPMS_ATTEST",
            flip_base64(&b, "/log/logKey/lineage/tpm2Certify/attest"),
            "log.key",
        ),
        (
            "the actor key's TPM2_Certify as the log key's",
            with(&|c| {
                c["log"]["logKey"]["lineage"]["tpm2Certify"] = c["lineage"]["tpm2Certify"].clone()
            }),
            "log.key",
        ),
    ]);
    for (what, bad, want) in cases {
        refused_by_both(&bad, &anchor, common::DOCUMENT, want, what);
    }
    tpm_structure_checks_bite(&b);
}

/// The §4.2 structure checks, each on its own: a TPM's AK will not sign a TPMS_ATTEST it did
/// not make, so the real bundle's TPM evidence is re-signed by a software key certified as an AK
/// by a test CA (the bundle then verifies under that CA), and crafted TPMS_ATTEST / TPMT_PUBLIC
/// bytes signed by it must still be refused, by the script and the crate, at the step of the
/// key they are about.
fn tpm_structure_checks_bite(real: &Value) {
    let ca = common::pki::TestCa::new("actseal test operator CA");
    let ak = common::pki::TestKey::random();
    let ak_cert = b64(&ca.attestation_key("actseal software AK", &ak));
    let dir = tempfile::tempdir().unwrap();
    let anchor = dir.path().join("software-ak-ca.pem");
    std::fs::write(&anchor, &ca.cert_pem).unwrap();
    let lineages = |b: &Value| {
        let earlier = b["lineage"]["predecessors"].as_array().unwrap().len();
        let mut all = vec!["/lineage".to_string(), "/log/logKey/lineage".to_string()];
        all.extend((0..earlier).map(|i| format!("/lineage/predecessors/{i}")));
        all
    };
    // Every TPM2_Certify re-signed by the software AK, certified as one under the test CA, with
    // its public area and its Qualified Name as the signer (as the TPM would have written it).
    let ak_public = ak.tpm_ak_public();
    let ak_qualified_name = {
        let name = format!("000b{}", sha256_hex(&ak_public));
        let mut qn = vec![0x00, 0x0b];
        qn.extend(
            hex::decode(sha256_hex(&hex::decode(format!("4000000b{name}")).unwrap())).unwrap(),
        );
        qn
    };
    let resign = |b: &mut Value| {
        for at in lineages(b) {
            let lineage = b.pointer_mut(&at).unwrap();
            lineage["deviceCertificate"] = json!(ak_cert);
            lineage["certificateChain"] = json!([]);
            let mut attest = unb64(lineage["tpm2Certify"]["attest"].as_str().unwrap());
            assert_eq!(be16(&attest, 6), 34, "qualifiedSigner is a SHA-256 Name");
            attest[8..42].copy_from_slice(&ak_qualified_name);
            lineage["tpm2Certify"]["attest"] = json!(b64(&attest));
            lineage["tpm2Certify"]["akPublicArea"] = json!(b64(&ak_public));
            lineage["tpm2Certify"]["signature"] = json!(b64(&ak.sign_der(&attest)));
        }
    };
    let mut rigged = real.clone();
    resign(&mut rigged);
    verified_by_both(
        &serde_json::to_string(&rigged).unwrap(),
        &anchor,
        common::DOCUMENT,
        "the TPM bundle re-signed by the software AK",
    );

    // `edit` changes the (attest, publicArea) of the lineage at `at`; the AK signs the result.
    let crafted = |at: &str, edit: &dyn Fn(&mut Vec<u8>, &mut Vec<u8>)| {
        let mut b = rigged.clone();
        let certify = &mut b.pointer_mut(at).unwrap()["tpm2Certify"];
        let mut attest = unb64(certify["attest"].as_str().unwrap());
        let mut public = unb64(certify["publicArea"].as_str().unwrap());
        edit(&mut attest, &mut public);
        certify["attest"] = json!(b64(&attest));
        certify["publicArea"] = json!(b64(&public));
        resign(&mut b);
        b
    };
    let cases: Vec<(&str, Value, &str, &str)> = vec![
        (
            "magic not TPM_GENERATED_VALUE",
            crafted("/lineage", &|a, _| a[0] = 0xfe),
            "lineage.statement",
            "TPMS_ATTEST magic",
        ),
        (
            "type not TPM_ST_ATTEST_CERTIFY",
            crafted("/lineage", &|a, _| a[5] = 0x18),
            "lineage.statement",
            "TPMS_ATTEST type",
        ),
        (
            "a byte after the TPMS_ATTEST",
            crafted("/lineage", &|a, _| a.push(0)),
            "lineage.statement",
            "after its end",
        ),
        (
            "extraData for another actor or version",
            crafted("/lineage", &|a, _| {
                let at = extra_data_at(a);
                a[at] ^= 1
            }),
            "lineage.statement",
            "extraData",
        ),
        (
            "certify.name of another public area",
            crafted("/lineage", &|a, _| {
                let at = name_at(a) + 2;
                a[at] ^= 1
            }),
            "lineage.statement",
            "certified name",
        ),
        (
            "fixedTPM clear (a duplicable key), consistently certified",
            crafted("/lineage", &|a, p| {
                p[7] &= !0x02;
                recertify(a, p)
            }),
            "lineage.statement",
            "fixedTPM",
        ),
        (
            "restricted set, consistently certified",
            crafted("/lineage", &|a, p| {
                p[5] |= 0x01;
                recertify(a, p)
            }),
            "lineage.statement",
            "restricted",
        ),
        (
            "version 1's key without sensitiveDataOrigin (loaded from outside)",
            crafted("/lineage/predecessors/0", &|a, p| {
                p[7] &= !0x20;
                recertify(a, p)
            }),
            "lineage.rotation",
            "sensitiveDataOrigin",
        ),
        (
            "the log key's extraData",
            crafted("/log/logKey/lineage", &|a, _| {
                let at = extra_data_at(a);
                a[at] ^= 1
            }),
            "log.key",
            "extraData",
        ),
    ];
    for (what, bad, want, reason) in cases {
        let stderr = refused_by_both(&bad, &anchor, common::DOCUMENT, want, what);
        assert!(stderr.contains(reason), "{what}: {stderr}");
    }
}

fn be16(bytes: &[u8], at: usize) -> usize {
    usize::from(u16::from_be_bytes([bytes[at], bytes[at + 1]]))
}

/// Offset of extraData's first byte in a TPMS_ATTEST (after magic, type, qualifiedSigner and
/// extraData's size).
fn extra_data_at(attest: &[u8]) -> usize {
    6 + 2 + be16(attest, 6) + 2
}

/// Offset of certify.name's size field: after extraData, clockInfo (17) and firmwareVersion (8).
fn name_at(attest: &[u8]) -> usize {
    let extra = 6 + 2 + be16(attest, 6);
    extra + 2 + be16(attest, extra) + 17 + 8
}

/// Rewrites certify.name as the Name of `public` (000b || SHA-256), as a TPM certifying that
/// public area would.
fn recertify(attest: &mut [u8], public: &[u8]) {
    let at = name_at(attest);
    assert_eq!(be16(attest, at), 34);
    attest[at + 2..at + 4].copy_from_slice(&[0x00, 0x0b]);
    attest[at + 4..at + 36].copy_from_slice(&hex::decode(sha256_hex(public)).unwrap());
}

/// Signs once with version 1, rotates twice, signs with version 3: the two bundles.
async fn sign_before_and_after_two_rotations(lab: &actseal::lab::Lab) -> (String, String) {
    common::create_key(lab, common::ACTOR).await;
    let mut signer = common::signer(lab).await;
    let mut sign = async || {
        signer
            .sign(common::sign_request(common::ACTOR, common::DOCUMENT))
            .await
            .expect("sign")
            .into_inner()
            .bundle_json
    };
    let v1 = sign().await;
    for _ in 0..2 {
        common::admin(lab)
            .await
            .rotate_key(actseal::api::RotateKeyRequest {
                actor: common::ACTOR.into(),
            })
            .await
            .expect("rotate");
    }
    let v3 = sign().await;
    (v1, v3)
}

/// Tampering every rotated bundle must survive, whatever its backend: the log's proof and
/// checkpoint, and the rotation statements.
fn common_tampering(b: &Value) -> Vec<(&'static str, Value, &'static str)> {
    let with = |f: &dyn Fn(&mut Value)| {
        let mut copy = b.clone();
        f(&mut copy);
        copy
    };
    vec![
        (
            "the inclusion proof",
            flip_inclusion_proof(b),
            "log.inclusion",
        ),
        (
            "the checkpoint signature",
            flip_checkpoint_signature(b),
            "log.checkpoint",
        ),
        (
            "rotation 2→3's signature",
            flip_base64(b, "/lineage/rotations/1/signatures/0/sig"),
            "lineage.rotation",
        ),
        (
            "rotation 1→2's statement",
            flip_base64(b, "/lineage/rotations/0/payload"),
            "lineage.rotation",
        ),
        (
            "the rotations swapped",
            with(&|c| c["lineage"]["rotations"].as_array_mut().unwrap().swap(0, 1)),
            "lineage.rotation",
        ),
        (
            "a rotation missing",
            with(&|c| {
                c["lineage"]["rotations"].as_array_mut().unwrap().pop();
            }),
            "lineage.rotation",
        ),
    ]
}
