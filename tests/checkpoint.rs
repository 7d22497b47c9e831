//! Signed checkpoints (FORMAT.md §10): notes made by the daemon side (`ledger::checkpoint`)
//! verify with the independent verifier (`verify::checkpoint`) and with openssl; every
//! alteration is refused; the committed vector is reproduced byte for byte.
//!
//! Regenerate the vector with
//! `ACTSEAL_REGEN_VECTORS=1 cargo test --test checkpoint committed_vector`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::path::PathBuf;
use std::process::Command;

use actseal::ledger::checkpoint::{Checkpoint, CheckpointError as SignError, key_id};
use actseal::verify::checkpoint::{
    CheckpointError, ParsedCheckpoint, parse_checkpoint, verify_checkpoint,
};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use p256::ecdsa::signature::hazmat::PrehashSigner;
use p256::ecdsa::{Signature, SigningKey};
use p256::pkcs8::{EncodePublicKey, LineEnding};
use proptest::prelude::*;
use sha2::{Digest, Sha256};

/// A fixed software key: the scalar is SHA-256 of the label. Signatures are RFC 6979
/// deterministic, so notes are reproducible.
fn key(label: &str) -> SigningKey {
    SigningKey::from_bytes(&Sha256::digest(label.as_bytes())).unwrap()
}

fn spki(key: &SigningKey) -> Vec<u8> {
    key.verifying_key()
        .to_public_key_der()
        .unwrap()
        .as_bytes()
        .to_vec()
}

fn sign_with(key: &SigningKey) -> impl FnOnce(&[u8; 32]) -> Result<Signature, SignError> + '_ {
    |digest| Ok(key.sign_prehash(digest).unwrap())
}

const ORIGIN: &str = "log.actseal.example/test";

/// MTH of the RFC 6962 test tree at size 8 (see tests/merkle.rs).
const ROOT_8: &str = "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328";

fn note(origin: &str, size: u64, root: [u8; 32], key: &SigningKey) -> String {
    Checkpoint::new(origin, size, root)
        .unwrap()
        .signed_note(origin, &spki(key), sign_with(key))
        .unwrap()
}

fn sample() -> (SigningKey, String) {
    let k = key("actseal checkpoint test key");
    let n = note(
        ORIGIN,
        8,
        hex::decode(ROOT_8).unwrap().try_into().unwrap(),
        &k,
    );
    (k, n)
}

#[track_caller]
fn refused(note: &str, key_name: &str, spki: &[u8]) -> CheckpointError {
    match verify_checkpoint(note.as_bytes(), key_name, spki) {
        Ok(c) => panic!("note verified but should not have: {c:?}\n{note}"),
        Err(e) => e,
    }
}

#[test]
fn signed_note_round_trips() {
    let (k, note) = sample();
    let c = Checkpoint::new(ORIGIN, 8, hex::decode(ROOT_8).unwrap().try_into().unwrap()).unwrap();
    assert!(note.starts_with(&format!("{}\n", c.body())));
    let parsed = verify_checkpoint(note.as_bytes(), ORIGIN, &spki(&k)).unwrap();
    assert_eq!(parsed.origin, ORIGIN);
    assert_eq!(parsed.size, 8);
    assert_eq!(hex::encode(parsed.root), ROOT_8);
    assert_eq!(parsed.signatures.len(), 1);
    assert_eq!(parsed.signatures[0].key_name, ORIGIN);
    assert_eq!(parsed.signatures[0].key_id, key_id(&spki(&k)));
    assert_eq!(parse_checkpoint(note.as_bytes()).unwrap(), parsed);

    // Sizes at the edges of the format.
    for size in [0, 1, u64::MAX] {
        let n = note_for_size(&k, size);
        assert_eq!(
            verify_checkpoint(n.as_bytes(), ORIGIN, &spki(&k))
                .unwrap()
                .size,
            size
        );
    }
}

fn note_for_size(k: &SigningKey, size: u64) -> String {
    note(ORIGIN, size, [7; 32], k)
}

#[test]
fn the_signer_gets_the_digest_of_the_body() {
    let (k, _) = sample();
    let c = Checkpoint::new(ORIGIN, 3, [1; 32]).unwrap();
    let mut seen = None;
    c.signed_note::<SignError>(ORIGIN, &spki(&k), |d| {
        seen = Some(*d);
        Ok(k.sign_prehash(d).unwrap())
    })
    .unwrap();
    assert_eq!(seen.unwrap(), <[u8; 32]>::from(Sha256::digest(c.body())));
}

#[test]
fn wrong_key_name_or_key_is_refused() {
    let (k, note) = sample();
    let other = key("another key");
    assert!(matches!(
        refused(&note, "log.actseal.example/other", &spki(&k)),
        CheckpointError::NoSignature { .. }
    ));
    // Another key under the same name has another key id: its line is not there.
    assert!(matches!(
        refused(&note, ORIGIN, &spki(&other)),
        CheckpointError::NoSignature { .. }
    ));
    // A note signed by another key, with our name on the line.
    let by_other = Checkpoint::new(ORIGIN, 8, [0; 32])
        .unwrap()
        .signed_note(ORIGIN, &spki(&other), sign_with(&other))
        .unwrap();
    assert!(matches!(
        refused(&by_other, ORIGIN, &spki(&k)),
        CheckpointError::NoSignature { .. }
    ));
    // Not a P-256 key at all.
    assert_eq!(
        refused(&note, ORIGIN, b"not a key"),
        CheckpointError::InvalidKey
    );
}

#[test]
fn altered_text_is_refused() {
    let (k, note) = sample();
    let root_b64 = STANDARD.encode(hex::decode(ROOT_8).unwrap());
    let mut other_root = hex::decode(ROOT_8).unwrap();
    other_root[31] ^= 1;
    for altered in [
        note.replacen("\n8\n", "\n9\n", 1),
        note.replacen("\n8\n", "\n80\n", 1),
        note.replacen(ORIGIN, "log.actseal.example/tesT", 1),
        note.replacen(&root_b64, &STANDARD.encode(&other_root), 1),
    ] {
        assert_ne!(altered, note);
        assert!(matches!(
            refused(&altered, ORIGIN, &spki(&k)),
            CheckpointError::BadSignature { .. }
        ));
    }
}

#[test]
fn malformed_notes_are_refused() {
    let (k, note) = sample();
    let spki = spki(&k);
    let (text, sig_line) = note.split_once("\n\n").unwrap();
    let text = format!("{text}\n");
    let bad = [
        // Extra blank lines: before the signatures, after them, at the start.
        format!("{text}\n\n{sig_line}"),
        format!("{note}\n"),
        format!("\n{note}"),
        format!("{text}\n{sig_line}\n"),
        // No signature, no blank line, no final newline.
        format!("{text}\n"),
        text.clone(),
        note.trim_end_matches('\n').to_string(),
        // CRLF line ends, a tab, a NUL.
        note.replace('\n', "\r\n"),
        note.replacen(ORIGIN, &format!("{ORIGIN}\t"), 1),
        note.replacen(ORIGIN, &format!("{ORIGIN}\0"), 1),
        // Signature line syntax.
        note.replacen('\u{2014}', "-", 1),
        note.replacen("\u{2014} ", "\u{2014}  ", 1),
        note.replacen(&format!("{ORIGIN} "), &format!("{ORIGIN}  "), 1),
        note.replacen(&format!("\u{2014} {ORIGIN}"), "\u{2014} ", 1),
        format!("{text}\n\u{2014} {ORIGIN} AAAA\n"),
        format!("{text}\n\u{2014} {ORIGIN} AAAAAA==\n"),
        format!("{text}\n\u{2014} {ORIGIN} !!!!\n"),
        // Text lines: empty extension line, missing line, leading zero, sign.
        note.replacen("\n\n", "\n\nextension\n\n", 1),
        note.replacen("\n8\n", "\n", 1),
        note.replacen("\n8\n", "\n08\n", 1),
        note.replacen("\n8\n", "\n+8\n", 1),
    ];
    for b in &bad {
        let e = refused(b, ORIGIN, &spki);
        assert!(
            matches!(e, CheckpointError::Malformed(_)),
            "{b:?}: wrong error {e}"
        );
        assert!(parse_checkpoint(b.as_bytes()).is_err(), "{b:?}");
    }
    // Every truncation.
    for len in 0..note.len() {
        assert!(verify_checkpoint(&note.as_bytes()[..len], ORIGIN, &spki).is_err());
    }
    // Not UTF-8.
    let mut bytes = note.clone().into_bytes();
    bytes[2] = 0xff;
    assert!(parse_checkpoint(&bytes).is_err());
    // Too long (C2SP signed-note sets no limit; the verifier's is 1 MiB).
    let huge = format!("{}{note}", "x".repeat(1024 * 1024));
    assert!(parse_checkpoint(huge.as_bytes()).is_err());
    let long = format!("{}{note}", "x".repeat(70_000));
    assert!(parse_checkpoint(long.as_bytes()).is_ok());
}

/// C2SP tlog-checkpoint extension lines are read (and signed over); at least 16 signature
/// lines (signed-note's minimum) are accepted, and 100 post-quantum-sized ones.
#[test]
fn extension_lines_and_many_large_signatures_are_accepted() {
    let (k, note) = sample();
    let with_extension = note.replacen("\n\n", "\nextension one\nextension two\n\n", 1);
    let parsed = parse_checkpoint(with_extension.as_bytes()).unwrap();
    assert_eq!(parsed.extensions, ["extension one", "extension two"]);
    // Signed over: the log's old signature does not cover the extensions.
    assert!(matches!(
        verify_checkpoint(with_extension.as_bytes(), ORIGIN, &spki(&k)),
        Err(CheckpointError::BadSignature { .. })
    ));
    let pq_line = |i: usize| {
        format!(
            "\u{2014} witness-{i}.example {}\n",
            STANDARD.encode(vec![i as u8; 4 + 4627])
        )
    };
    let many: String = (0..99).map(pq_line).collect();
    let big = format!("{note}{many}");
    assert!(big.len() > 590 * 1024);
    let parsed = verify_checkpoint(big.as_bytes(), ORIGIN, &spki(&k)).unwrap();
    assert_eq!(parsed.signatures.len(), 100);
}

#[test]
fn other_signatures_are_ignored_but_a_bad_one_of_ours_is_not() {
    let (k, note) = sample();
    let other = key("a witness");
    // Another key's (cosigner's) line before ours: ignored.
    let c = Checkpoint::new(ORIGIN, 8, hex::decode(ROOT_8).unwrap().try_into().unwrap()).unwrap();
    let witness = c
        .signed_note("witness.example", &spki(&other), sign_with(&other))
        .unwrap();
    let witness_line = witness.split_once("\n\n").unwrap().1;
    let (text, ours) = note.split_once("\n\n").unwrap();
    let both = format!("{text}\n\n{witness_line}{ours}");
    let parsed = verify_checkpoint(both.as_bytes(), ORIGIN, &spki(&k)).unwrap();
    assert_eq!(parsed.signatures.len(), 2);
    verify_checkpoint(both.as_bytes(), "witness.example", &spki(&other)).unwrap();

    // A second line of ours whose signature does not verify: the note is refused.
    let forged = {
        let mut blob = key_id(&spki(&k)).to_vec();
        let sig: Signature = other.sign_prehash(&[9; 32]).unwrap();
        blob.extend_from_slice(sig.to_der().as_bytes());
        format!("{note}\u{2014} {ORIGIN} {}\n", STANDARD.encode(blob))
    };
    assert!(matches!(
        refused(&forged, ORIGIN, &spki(&k)),
        CheckpointError::BadSignature { .. }
    ));
    // Our key id with bytes that are not a DER signature.
    let garbage = {
        let mut blob = key_id(&spki(&k)).to_vec();
        blob.extend_from_slice(b"not DER");
        format!("{note}\u{2014} {ORIGIN} {}\n", STANDARD.encode(blob))
    };
    assert!(matches!(
        refused(&garbage, ORIGIN, &spki(&k)),
        CheckpointError::BadSignature { .. }
    ));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// No edit of a valid note panics the parser, and none verifies unless the signed text is
    /// unchanged.
    #[test]
    fn edited_notes_never_panic_or_verify(at in 0usize..400, byte in any::<u8>(), op in 0u8..3) {
        let (k, note) = sample();
        let mut bytes = note.clone().into_bytes();
        let at = at % bytes.len();
        match op {
            0 => bytes[at] = byte,
            1 => bytes.insert(at, byte),
            _ => { bytes.remove(at); }
        }
        let original: ParsedCheckpoint = parse_checkpoint(note.as_bytes()).unwrap();
        if let Ok(c) = verify_checkpoint(&bytes, ORIGIN, &spki(&k)) {
            prop_assert_eq!((c.origin, c.size, c.root), (original.origin, original.size, original.root));
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = parse_checkpoint(&bytes);
        let _ = verify_checkpoint(&bytes, ORIGIN, &bytes);
    }
}

// ---------------------------------------------------------------------------------------------
// The committed vector.

fn vectors_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/vectors")
}

#[test]
fn committed_vector() {
    let (k, note) = sample();
    let pem = k.verifying_key().to_public_key_pem(LineEnding::LF).unwrap();
    let note_path = vectors_dir().join("checkpoint-v1.txt");
    let pem_path = vectors_dir().join("checkpoint-v1-key.pem");
    if std::env::var_os("ACTSEAL_REGEN_VECTORS").is_some() {
        std::fs::write(&note_path, &note).unwrap();
        std::fs::write(&pem_path, &pem).unwrap();
    }
    let committed = std::fs::read_to_string(&note_path).unwrap();
    let committed_pem = std::fs::read_to_string(&pem_path).unwrap();
    assert_eq!(
        committed, note,
        "the generator no longer produces checkpoint-v1.txt"
    );
    assert_eq!(committed_pem, pem);

    // The verifier reads the key from the committed PEM, not from the generator.
    let der = {
        use p256::pkcs8::DecodePublicKey;
        p256::ecdsa::VerifyingKey::from_public_key_pem(&committed_pem)
            .unwrap()
            .to_public_key_der()
            .unwrap()
            .as_bytes()
            .to_vec()
    };
    let c = verify_checkpoint(committed.as_bytes(), ORIGIN, &der).unwrap();
    assert_eq!((c.size, hex::encode(c.root)), (8, ROOT_8.to_string()));
    assert_eq!(
        hex::encode(key_id(&der)),
        hex::encode(c.signatures[0].key_id)
    );
}

/// The committed note checked by openssl alone: the signature line's blob minus the 4-byte key
/// id is a DER ECDSA signature over the note text (everything before the blank line, with its
/// final newline), and the key id is the first 4 bytes of SHA-256 of the SPKI DER.
#[test]
fn committed_vector_verifies_with_openssl() {
    let dir = tempfile::tempdir().unwrap();
    let note = std::fs::read_to_string(vectors_dir().join("checkpoint-v1.txt")).unwrap();
    let pem_path = vectors_dir().join("checkpoint-v1-key.pem");
    let (text, sig_line) = note.split_once("\n\n").unwrap();
    let blob = STANDARD
        .decode(sig_line.trim_end().rsplit_once(' ').unwrap().1)
        .unwrap();
    std::fs::write(dir.path().join("text"), format!("{text}\n")).unwrap();
    std::fs::write(dir.path().join("sig.der"), &blob[4..]).unwrap();
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir.path())
            .output()
            .expect("the openssl binary is required by this test");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    };
    let pem = pem_path.to_str().unwrap();
    run(&[
        "dgst",
        "-sha256",
        "-verify",
        pem,
        "-signature",
        "sig.der",
        "text",
    ]);
    let der = run(&["pkey", "-pubin", "-in", pem, "-outform", "DER"]);
    assert_eq!(&Sha256::digest(&der)[..4], &blob[..4]);
}
