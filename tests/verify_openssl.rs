//! Cross-checks the committed vector with the `openssl` CLI alone (FORMAT.md §8), and checks
//! that the CLI and the crate's verifier agree on a set of good and bad variants.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;
mod support;

use std::path::{Path, PathBuf};

use actseal::verify::{TrustAnchors, verify_bundle};
use common::openssl::{require_openssl, verify_with_openssl};
use serde_json::json;
use support::make_bundle::*;

fn vectors() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors")
}

#[test]
fn committed_vector_verifies_with_openssl_alone() {
    require_openssl();
    let dir = tempfile::tempdir().unwrap();
    let bundle = std::fs::read_to_string(vectors().join("bundle-v1.json")).unwrap();
    let document = std::fs::read(vectors().join("document.json")).unwrap();
    let anchor = vectors().join("anchor.pem");
    verify_with_openssl(&bundle, &anchor, Some(&document), dir.path()).unwrap();
    verify_with_openssl(&bundle, &anchor, None, dir.path()).unwrap();
}

#[test]
fn openssl_rejects_tampered_copies() {
    require_openssl();
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(vectors().join("bundle-v1.json")).unwrap();
    let document = std::fs::read(vectors().join("document.json")).unwrap();
    let anchor = vectors().join("anchor.pem");
    let original: serde_json::Value = serde_json::from_str(&text).unwrap();

    let flip_last = |pointer: &str| {
        let mut b = original.clone();
        let mut bytes = unb64(b.pointer(pointer).unwrap().as_str().unwrap());
        *bytes.last_mut().unwrap() ^= 1;
        *b.pointer_mut(pointer).unwrap() = json!(b64(&bytes));
        serde_json::to_string(&b).unwrap()
    };
    for pointer in [
        "/receipt/signatures/0/sig",
        "/receipt/payload",
        "/lineage/deviceCertificate",
        "/lineage/statement/signatures/0/sig",
        "/lineage/statement/payload",
    ] {
        let bad = flip_last(pointer);
        assert!(
            verify_with_openssl(&bad, &anchor, Some(&document), dir.path()).is_err(),
            "{pointer}"
        );
    }
    assert!(verify_with_openssl(&text, &anchor, Some(b"another document"), dir.path()).is_err());
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

/// The CLI and the crate agree on variants chosen to exercise each kind of check.
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
    // The openssl steps check the signing key's own attestation, not the rotation lineage or
    // the log: these variants exercise them only where both verifiers must agree.
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
            by_crate.err()
        );

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
        assert!(
            verify_with_openssl(&g.bundle_json, &other_anchor, Some(&g.document), dir.path())
                .is_err(),
            "{name}"
        );
    }
}

/// `scripts/verify-with-openssl.sh` holds FORMAT.md §8's block verbatim, and verifies the
/// committed vector with it (jq, GNU date and openssl; the README's commands install them).
#[test]
fn format_md_section_8_script_verifies_the_committed_vector() {
    require_openssl();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let doc = std::fs::read_to_string(root.join("docs/FORMAT.md")).unwrap();
    let section = doc
        .split("## 8. Verifying with openssl alone")
        .nth(1)
        .expect("FORMAT.md has §8");
    let block = section
        .split("```sh\n")
        .nth(1)
        .and_then(|s| s.split("\n```").next())
        .expect("§8 has a ```sh block");
    let script_path = root.join("scripts/verify-with-openssl.sh");
    let script = std::fs::read_to_string(&script_path).unwrap();
    assert!(
        script.contains(block),
        "scripts/verify-with-openssl.sh drifted from FORMAT.md §8"
    );

    let run = |document: Option<&[u8]>| {
        let dir = tempfile::tempdir().unwrap();
        let mut command = std::process::Command::new("sh");
        command
            .arg(&script_path)
            .arg(vectors().join("bundle-v1.json"))
            .arg(vectors().join("anchor.pem"));
        if let Some(document) = document {
            std::fs::write(dir.path().join("document.json"), document).unwrap();
            command.arg(dir.path().join("document.json"));
        }
        command.output().expect("sh runs")
    };
    let good = run(Some(
        &std::fs::read(vectors().join("document.json")).unwrap(),
    ));
    assert!(
        good.status.success() && String::from_utf8_lossy(&good.stdout).contains("bundle verified"),
        "§8 script failed: {}",
        String::from_utf8_lossy(&good.stderr)
    );
    assert!(run(None).status.success());
    assert!(!run(Some(b"another document")).status.success());
}
