//! Checkpoint notes (C2SP signed-note) on arbitrary bytes: parsing and verifying must return
//! an error, never panic; what parses states exactly the text it was parsed from.
#![no_main]

use std::sync::LazyLock;

use actseal::verify::checkpoint::{parse_checkpoint, verify_checkpoint};
use base64::{Engine, engine::general_purpose::STANDARD as B64};
use libfuzzer_sys::fuzz_target;

const ORIGIN: &str = "log.actseal.example/test";

/// The committed vector's log key, DER SubjectPublicKeyInfo.
static KEY: LazyLock<Vec<u8>> = LazyLock::new(|| {
    let pem = include_str!("../../tests/vectors/checkpoint-v1-key.pem");
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    B64.decode(body).expect("PEM body")
});

fuzz_target!(|data: &[u8]| {
    if let Ok(parsed) = parse_checkpoint(data) {
        let head = format!(
            "{}\n{}\n{}\n\n",
            parsed.origin,
            parsed.size,
            B64.encode(parsed.root)
        );
        assert!(data.starts_with(head.as_bytes()), "parsed text differs");
        assert!(!parsed.signatures.is_empty());
    }
    if let Ok(verified) = verify_checkpoint(data, ORIGIN, &KEY) {
        let parsed = parse_checkpoint(data).expect("a verified note parses");
        assert_eq!(parsed.size, verified.size);
        assert_eq!(parsed.root, verified.root);
    }
});
