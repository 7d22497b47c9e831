//! The offline verifier on arbitrary bundle JSON, with and without the action document: it
//! must return an error, never panic, and accept only a bundle that verifies again the same.
#![no_main]

use std::sync::LazyLock;

use actseal::verify::{TrustAnchors, verify_bundle};
use libfuzzer_sys::fuzz_target;

static ANCHORS: LazyLock<TrustAnchors> = LazyLock::new(|| {
    TrustAnchors::from_pem(include_bytes!("../../tests/vectors/anchor.pem")).expect("anchor")
});
const DOCUMENT: &[u8] = include_bytes!("../../tests/vectors/document.json");

fuzz_target!(|data: &[u8]| {
    let with_document = verify_bundle(data, &ANCHORS, Some(DOCUMENT));
    let without = verify_bundle(data, &ANCHORS, None);
    if let Ok(verified) = with_document {
        assert!(verified.document_checked);
        // A bundle that verifies with its document verifies without it, naming the same.
        let without = without.expect("verifies without the document too");
        assert_eq!(without.key_id, verified.key_id);
        assert_eq!(without.log_index, verified.log_index);
    }
});
