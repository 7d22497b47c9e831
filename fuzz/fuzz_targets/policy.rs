//! The policy parser and its patterns on arbitrary text: errors, never panics, and decisions
//! on a parsed policy for callers and values taken from the input.
#![no_main]

use std::path::Path;

use actseal::server::{
    auth::Caller,
    policy::{CallerPattern, Pattern, Policy},
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // The whole input as a policy file.
    if let Ok(policy) = Policy::parse(text, Path::new("fuzz.toml")) {
        let callers = [
            Caller::Unix {
                uid: 1000,
                gid: 1000,
                pid: 1,
            },
            Caller::X509 {
                spiffe_id: Some("spiffe://acme.example/agents/payments".into()),
                subject: "CN=ops-admin,O=Acme".into(),
            },
            Caller::InsecureTcp {
                address: "127.0.0.1:1".into(),
            },
        ];
        for caller in &callers {
            let _ = policy.may_sign(caller, "spiffe://acme.example/agents/payments", "payment.x");
            let _ = policy.may_administer(caller, "a/b,c");
        }
    }
    // Or a pattern, a NUL, and a value to match (bounded: matching is linear by design).
    let (pattern, value) = text.split_once('\0').unwrap_or((text, text));
    if let Ok(p) = Pattern::parse(pattern) {
        let _ = p.matches(value);
    }
    if let Ok(p) = Pattern::parse_subject(pattern) {
        let _ = p.matches(value);
    }
    if let Ok(p) = CallerPattern::parse(pattern) {
        let _ = p.matches(&Caller::X509 {
            spiffe_id: Some(value.to_owned()),
            subject: value.to_owned(),
        });
    }
});
