//! Trusted time (RFC 3161, FORMAT.md §12): the daemon's client gets tokens from a real
//! authority (`openssl ts -reply` behind an HTTP front, its own CA); the verifier accepts them
//! and `openssl ts -verify` does too; a token altered in any byte, over another checkpoint or
//! from an authority not in the auditor's anchors fails; the client refuses replies that do not
//! answer its request.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use actseal::anchor::tsa::{TsaClient, TsaError};
use actseal::lab_tsa::{
    EssCertId, TEST_TSA_OTHER_POLICY, TEST_TSA_POLICY, TestTsa, TsaKey, TsaMode,
};
use actseal::verify::timestamp::{TsaAnchors, note_text, verify_token};

const NOTE: &str = "log.actseal.example/test\n8\nXcnaeacGWamtVZy3Ad7ZoqudgjqtL0lgz+Nw7/RgQyg=\n\n\u{2014} log.actseal.example/test 2FxEpjBFAiEA23Es8NqAZ8BNWnvVV6XE3XPEfxYH6UcIiWeSVXHkpR8CIEqay6cjULNvsrbzt8iDQ3CuerWoyjtdbs88FL1bXAjw\n";

fn tsa(dir: &Path, name: &str, key: TsaKey, ess: EssCertId) -> TestTsa {
    TestTsa::start(&dir.join(name), name, key, ess).expect("test TSA")
}

fn anchors(path: &Path) -> TsaAnchors {
    TsaAnchors::from_pem(&std::fs::read(path).unwrap()).unwrap()
}

fn client(tsa: &TestTsa, policy: Option<&str>, trust: Option<&Path>) -> TsaClient {
    let pem = trust.map(|p| std::fs::read(p).unwrap());
    TsaClient::new(&tsa.url(), policy, pem.as_deref(), Duration::from_secs(10)).unwrap()
}

async fn stamp(tsa: &TestTsa) -> Vec<u8> {
    let text = note_text(NOTE).unwrap();
    client(tsa, None, None)
        .stamp(text.as_bytes())
        .await
        .expect("a token")
        .token
}

/// `openssl ts -verify` over the note text with the authority's CA as the only trust.
fn openssl_verifies(dir: &Path, token: &[u8], text: &[u8], ca: &Path) -> bool {
    let (t, d) = (dir.join("token.der"), dir.join("text"));
    std::fs::write(&t, token).unwrap();
    std::fs::write(&d, text).unwrap();
    let out = Command::new("openssl")
        .args(["ts", "-verify", "-token_in", "-in"])
        .arg(&t)
        .arg("-data")
        .arg(&d)
        .arg("-CAfile")
        .arg(ca)
        .output()
        .unwrap();
    out.status.success() && String::from_utf8_lossy(&out.stdout).contains("Verification: OK")
}

#[tokio::test]
async fn tokens_of_each_kind_verify_here_and_with_openssl() {
    let dir = tempfile::tempdir().unwrap();
    let text = note_text(NOTE).unwrap().as_bytes();
    for (i, (key, ess)) in [
        (TsaKey::P256, EssCertId::Sha256),
        (TsaKey::P256, EssCertId::Sha1),
        (TsaKey::Rsa2048, EssCertId::Sha1),
        (TsaKey::Rsa2048, EssCertId::Sha256),
    ]
    .into_iter()
    .enumerate()
    {
        let authority = tsa(dir.path(), &format!("tsa{i}"), key, ess);
        // The client with the anchor configured checks the token before it returns it.
        let token = client(&authority, None, Some(&authority.ca_cert()))
            .stamp(text)
            .await
            .unwrap_or_else(|e| panic!("{key:?} {ess:?}: {e}"))
            .token;
        let stamp = verify_token(&token, text, &anchors(&authority.ca_cert()))
            .unwrap_or_else(|e| panic!("{key:?} {ess:?}: {e}"));
        assert_eq!(stamp.policy, TEST_TSA_POLICY);
        assert_eq!(stamp.accuracy_ms, 1000);
        assert!(stamp.gen_time_unix.abs_diff(actseal::verify::unix_now()) < 60);
        assert!(
            stamp.tsa_subject.contains(&format!("tsa{i}")),
            "{}",
            stamp.tsa_subject
        );
        // The authority's own certificate as a pinned anchor also closes the path.
        verify_token(&token, text, &anchors(&authority.tsa_cert())).unwrap();
        assert!(openssl_verifies(
            dir.path(),
            &token,
            text,
            &authority.ca_cert()
        ));
        assert!(!openssl_verifies(
            dir.path(),
            &token,
            b"other text\n",
            &authority.ca_cert()
        ));
    }
}

#[tokio::test]
async fn a_token_altered_in_any_byte_fails() {
    let dir = tempfile::tempdir().unwrap();
    let text = note_text(NOTE).unwrap().as_bytes();
    for (name, key) in [("ec", TsaKey::P256), ("rsa", TsaKey::Rsa2048)] {
        let authority = tsa(dir.path(), name, key, EssCertId::Sha256);
        let trust = anchors(&authority.ca_cert());
        let token = stamp(&authority).await;
        verify_token(&token, text, &trust).unwrap();
        let started = std::time::Instant::now();
        for i in 0..token.len() {
            for flip in [0x01u8, 0x80] {
                let mut bad = token.clone();
                bad[i] ^= flip;
                assert!(
                    verify_token(&bad, text, &trust).is_err(),
                    "{name}: byte {i} of {} ^ {flip:#x} still verifies",
                    token.len()
                );
            }
        }
        eprintln!(
            "{name}: {} bytes, each altered twice, all refused in {:?}",
            token.len(),
            started.elapsed()
        );
        let mut longer = token.clone();
        longer.push(0);
        assert!(verify_token(&longer, text, &trust).is_err());
        assert!(verify_token(&token[..token.len() - 1], text, &trust).is_err());
    }
}

#[tokio::test]
async fn another_checkpoint_or_a_foreign_authority_fails() {
    let dir = tempfile::tempdir().unwrap();
    let text = note_text(NOTE).unwrap().as_bytes();
    let ours = tsa(dir.path(), "ours", TsaKey::P256, EssCertId::Sha256);
    let foreign = tsa(dir.path(), "foreign", TsaKey::P256, EssCertId::Sha256);
    let token = stamp(&foreign).await;
    let err = verify_token(&token, text, &anchors(&ours.ca_cert())).unwrap_err();
    assert!(
        err.contains("does not chain to a TSA trust anchor"),
        "{err}"
    );
    assert!(!openssl_verifies(dir.path(), &token, text, &ours.ca_cert()));
    // Over another checkpoint's text, the imprint differs.
    let other = NOTE.replace("\n8\n", "\n9\n");
    let err = verify_token(
        &token,
        note_text(&other).unwrap().as_bytes(),
        &anchors(&foreign.ca_cert()),
    )
    .unwrap_err();
    assert!(err.contains("imprint"), "{err}");
    // The client configured with our anchor refuses the foreign authority's token.
    let pem = std::fs::read(ours.ca_cert()).unwrap();
    let picky = TsaClient::new(&foreign.url(), None, Some(&pem), Duration::from_secs(10)).unwrap();
    assert!(matches!(
        picky.stamp(text).await,
        Err(TsaError::Untrusted { .. })
    ));
}

#[tokio::test]
async fn the_client_refuses_what_does_not_answer_its_request() {
    let dir = tempfile::tempdir().unwrap();
    let text = note_text(NOTE).unwrap().as_bytes();
    let authority = tsa(dir.path(), "tsa", TsaKey::P256, EssCertId::Sha256);
    let plain = client(&authority, None, None);
    plain.stamp(text).await.unwrap();
    // A replayed reply carries the first request's nonce.
    authority.set_mode(TsaMode::Replay);
    let err = plain.stamp(text).await.unwrap_err();
    assert!(
        matches!(&err, TsaError::Mismatch { detail, .. } if detail.contains("nonce")),
        "{err}"
    );
    authority.set_mode(TsaMode::Fail);
    assert!(matches!(
        plain.stamp(text).await,
        Err(TsaError::Http { status: 500, .. })
    ));
    authority.set_mode(TsaMode::Normal);
    // A policy the authority accepts is stamped under; one it does not is refused by it.
    let other = client(&authority, Some(TEST_TSA_OTHER_POLICY), None);
    let token = other.stamp(text).await.unwrap().token;
    let stamp = verify_token(&token, text, &anchors(&authority.ca_cert())).unwrap();
    assert_eq!(stamp.policy, TEST_TSA_OTHER_POLICY);
    let unknown = client(&authority, Some("1.2.3.4.5"), None);
    assert!(matches!(
        unknown.stamp(text).await,
        Err(TsaError::Refused { status: 2, .. })
    ));
    // An authority that is down.
    let url = authority.url();
    drop(authority);
    let gone = TsaClient::new(&url, None, None, Duration::from_secs(2)).unwrap();
    assert!(matches!(
        gone.stamp(text).await,
        Err(TsaError::Transport { .. })
    ));
}
