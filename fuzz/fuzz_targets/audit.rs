//! The audit of an exported log on arbitrary JSON: it must return an error, never panic (nor
//! run away: exports are bounded), and an export it accepts must audit the same again.
#![no_main]

use std::sync::LazyLock;

use actseal::verify::{TrustAnchors, audit::audit_log};
use libfuzzer_sys::fuzz_target;

static ANCHORS: LazyLock<TrustAnchors> = LazyLock::new(|| {
    TrustAnchors::from_pem(include_bytes!("../seeds/audit-anchor.pem")).expect("anchor")
});

fuzz_target!(|data: &[u8]| {
    if let Ok(report) = audit_log(data, &ANCHORS) {
        let again = audit_log(data, &ANCHORS).expect("audits again");
        assert_eq!(report, again);
    }
});
