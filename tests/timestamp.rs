//! Trusted time (RFC 3161, FORMAT.md §15): the daemon's client gets tokens from a real
//! authority (`openssl ts -reply` behind an HTTP front, its own CA); the verifier accepts them
//! and `openssl ts -verify` does too; a token altered in any byte, over another checkpoint or
//! from an authority not in the auditor's anchors fails; the client refuses replies that do not
//! answer its request.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use actseal::anchor::tsa::{TsaClient, TsaError};
use actseal::lab_tsa::{
    EssCertId, TEST_TSA_OTHER_POLICY, TEST_TSA_POLICY, TestTsa, TsaKey, TsaMode,
};
use actseal::verify::timestamp::{TsaAnchors, note_text, verify_token};
use actseal::verify::{TrustAnchors, verify_bundle, verify_bundle_timestamps};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use common::{ACTOR, create_key, new_lab, sign_request, signer};

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

/// Adds `[anchor]` with one TSA (checked against its CA) to a lab's configuration.
fn anchor_with_tsa(lab: &actseal::lab::Lab, tsa: &TestTsa) {
    let config = std::fs::read_to_string(lab.config()).unwrap();
    let section = format!(
        "\n[anchor]\nacknowledge = \"anchored\"\n\n[[anchor.tsa]]\nurl = \"{}\"\ntrust = \"{}\"\n",
        tsa.url(),
        tsa.ca_cert().display()
    );
    std::fs::write(lab.config(), config + &section).unwrap();
}

/// Signs `n` documents one after another; returns the bundles and the mean latency.
async fn sign_n(lab: &actseal::lab::Lab, n: usize, tag: &str) -> (Vec<String>, Duration) {
    let mut client = signer(lab).await;
    let started = std::time::Instant::now();
    let mut bundles = Vec::new();
    for i in 0..n {
        let doc = format!("{tag} document {i}");
        let answer = client
            .sign(sign_request(ACTOR, doc.as_bytes()))
            .await
            .expect("sign")
            .into_inner();
        bundles.push(answer.bundle_json);
    }
    (bundles, started.elapsed() / u32::try_from(n).unwrap())
}

fn tokens_of(bundle: &str) -> (Vec<Vec<u8>>, String) {
    let v: serde_json::Value = serde_json::from_str(bundle).unwrap();
    let tokens = v["log"]["timestamps"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|t| B64.decode(t["token"].as_str().unwrap()).unwrap())
                .collect()
        })
        .unwrap_or_default();
    (tokens, v["log"]["checkpoint"].as_str().unwrap().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_stamps_checkpoints_and_bundles_carry_the_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let authority = tsa(dir.path(), "stamps", TsaKey::P256, EssCertId::Sha256);
    let foreign = tsa(dir.path(), "foreign", TsaKey::P256, EssCertId::Sha256);
    const N: usize = 20;

    // The same lab without and then with the TSA: the added latency of stamping.
    let mut lab = new_lab();
    lab.start_daemon().unwrap();
    create_key(&lab, ACTOR).await;
    let (_, plain) = sign_n(&lab, N, "plain").await;
    lab.stop_daemon().unwrap();
    anchor_with_tsa(&lab, &authority);
    lab.start_daemon().unwrap();
    let served_before = authority.served();
    let (bundles, stamped) = sign_n(&lab, N, "stamped").await;
    let served = authority.served() - served_before;
    eprintln!(
        "Sign, one caller, sequential: {plain:?} without a TSA, {stamped:?} with acknowledge = \"anchored\" and one TSA ({served} tokens for {N} receipts)"
    );
    assert!(served >= 1 && served <= N as u64 + 2, "{served}");

    let anchor = lab.anchor().display().to_string();
    let ca = authority.ca_cert().display().to_string();
    let foreign_ca = foreign.ca_cert().display().to_string();
    for (i, bundle) in bundles.iter().enumerate() {
        let (tokens, note) = tokens_of(bundle);
        assert!(!tokens.is_empty(), "bundle {i} carries no timestamp token");
        let text = note_text(&note).unwrap().as_bytes();
        verify_token(&tokens[0], text, &anchors(&authority.ca_cert())).unwrap();
        assert!(openssl_verifies(
            dir.path(),
            &tokens[0],
            text,
            &authority.ca_cert()
        ));
    }
    let path = lab.path("stamped.json");
    std::fs::write(&path, &bundles[N - 1]).unwrap();
    let out = lab
        .run_ok(&["verify", &path, "--trust", &anchor, "--tsa-trust", &ca])
        .unwrap();
    assert!(out.contains("stamped:"), "{out}");
    // An auditor who trusts another authority only: log.timestamp fails.
    let out = lab
        .run(&[
            "verify",
            &path,
            "--trust",
            &anchor,
            "--tsa-trust",
            &foreign_ca,
        ])
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("log.timestamp failed"), "{text}");

    // The forensic view and a many-bundle verify check the tokens too when given the anchors:
    // proved with the authority's CA, failed (log.timestamp) with a foreign one.
    let many = lab.path("many.json");
    std::fs::write(&many, &bundles[N - 2]).unwrap();
    let out = lab
        .run_ok(&[
            "verify",
            &path,
            &many,
            "--trust",
            &anchor,
            "--tsa-trust",
            &ca,
        ])
        .unwrap();
    assert!(out.contains("2 of 2 bundles verified"), "{out}");
    // (One bundle of many: `actions` reports the rest as a gap, so it exits 1 either way.)
    let out = lab
        .run(&["actions", &path, "--trust", &anchor, "--tsa-trust", &ca])
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("PROVED") && text.contains("stamped:") && !text.contains("not checked"),
        "{text}"
    );
    let out = lab
        .run(&[
            "actions",
            &path,
            "--trust",
            &anchor,
            "--tsa-trust",
            &foreign_ca,
        ])
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("log.timestamp"), "{text}");

    // An altered byte of the bundle's token fails log.timestamp (every 7th byte).
    let bundle_anchors = TrustAnchors::from_pem(&std::fs::read(lab.anchor()).unwrap()).unwrap();
    let verified = verify_bundle(bundles[0].as_bytes(), &bundle_anchors, None).unwrap();
    let tsa_anchors = anchors(&authority.ca_cert());
    verify_bundle_timestamps(bundles[0].as_bytes(), &verified, &tsa_anchors).unwrap();
    let (tokens, _) = tokens_of(&bundles[0]);
    let mut v: serde_json::Value = serde_json::from_str(&bundles[0]).unwrap();
    for i in (0..tokens[0].len()).step_by(7) {
        let mut bad = tokens[0].clone();
        bad[i] ^= 0x01;
        v["log"]["timestamps"] = serde_json::json!([{ "token": B64.encode(&bad) }]);
        let altered = v.to_string();
        let err = verify_bundle_timestamps(altered.as_bytes(), &verified, &tsa_anchors)
            .expect_err("an altered token verifies");
        assert_eq!(err.check, actseal::verify::Check::LogTimestamp);
    }

    // The tokens the daemon stores (anchored_checkpoints) verify with openssl.
    let rows: Vec<(String, String)> =
        common::LedgerDb::open(&lab).pairs("SELECT note, timestamps FROM anchored_checkpoints");
    assert!(!rows.is_empty());
    for (note, timestamps) in rows {
        let tokens: Vec<String> = serde_json::from_str(&timestamps).unwrap();
        for token in tokens {
            let token = hex::decode(token).unwrap();
            let text = note_text(&note).unwrap().as_bytes();
            assert!(openssl_verifies(
                dir.path(),
                &token,
                text,
                &authority.ca_cert()
            ));
        }
    }
    lab.stop_daemon().unwrap();
}

/// The committed vector (FORMAT.md §15): a token of the test authority over the note text of
/// `checkpoint-v1.txt`, its CA, and what it states. Regenerate (a new key and time: update the
/// constants here and in FORMAT.md) with
/// `ACTSEAL_REGEN_VECTORS=1 cargo test --test timestamp committed_vector`.
#[tokio::test]
async fn committed_vector() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors");
    let note = std::fs::read_to_string(dir.join("checkpoint-v1.txt")).unwrap();
    let text = note_text(&note).unwrap().as_bytes();
    if std::env::var_os("ACTSEAL_REGEN_VECTORS").is_some_and(|v| v == "1") {
        let tmp = tempfile::tempdir().unwrap();
        let authority = tsa(
            tmp.path(),
            "actseal test TSA",
            TsaKey::P256,
            EssCertId::Sha256,
        );
        let token = client(&authority, None, None)
            .stamp(text)
            .await
            .unwrap()
            .token;
        std::fs::write(dir.join("timestamp-v1.der"), token).unwrap();
        std::fs::copy(authority.ca_cert(), dir.join("timestamp-v1-tsa-ca.pem")).unwrap();
    }
    let token = std::fs::read(dir.join("timestamp-v1.der")).unwrap();
    let ca = dir.join("timestamp-v1-tsa-ca.pem");
    let stamp = verify_token(&token, text, &anchors(&ca)).unwrap();
    eprintln!("{stamp:?}");
    eprintln!(
        "token sha256 {}, imprint {}",
        hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&token)),
        hex::encode(<sha2::Sha256 as sha2::Digest>::digest(text))
    );
    assert_eq!(stamp.gen_time, VECTOR_GEN_TIME);
    assert_eq!(stamp.policy, TEST_TSA_POLICY);
    assert_eq!(stamp.tsa_subject, "CN=actseal test TSA,O=actseal tests");
    let scratch = tempfile::tempdir().unwrap();
    assert!(openssl_verifies(scratch.path(), &token, text, &ca));
    // A receipt signed at genTime + tolerance is accepted, one second later is not.
    let at = stamp.gen_time_unix + 1 + actseal::verify::timestamp::SIGNED_AT_TOLERANCE_SECONDS;
    assert!(stamp.check_signed_at(at).is_ok());
    assert!(stamp.check_signed_at(at + 1).is_err());
}

/// genTime of `timestamp-v1.der`.
const VECTOR_GEN_TIME: &str = "2026-12-01T13:22:06Z";

/// Median latency (ms) of `count` Sign calls one after another.
async fn median_ms(lab: &actseal::lab::Lab, count: usize, tag: &str) -> f64 {
    let mut client = signer(lab).await;
    let mut times = Vec::new();
    for i in 0..count {
        let started = std::time::Instant::now();
        let doc = format!("{tag} latency {i}");
        client
            .sign(sign_request(ACTOR, doc.as_bytes()))
            .await
            .unwrap();
        times.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

/// Signs per second with `concurrency` callers, `count` in all.
async fn rate(lab: &actseal::lab::Lab, count: usize, concurrency: usize, tag: &str) -> f64 {
    let started = std::time::Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..concurrency {
        let mut client = signer(lab).await;
        let (per, tag) = (count / concurrency, tag.to_string());
        tasks.spawn(async move {
            for i in 0..per {
                let doc = format!("{tag} rate {worker} {i}");
                client
                    .sign(sign_request(ACTOR, doc.as_bytes()))
                    .await
                    .unwrap();
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    count as f64 / started.elapsed().as_secs_f64()
}

/// Mean `ms` of the daemon's "checkpoint anchored" lines after byte `from` of its log, and
/// their number.
fn rounds_since(lab: &actseal::lab::Lab, from: usize) -> (usize, f64) {
    let log = std::fs::read_to_string(lab.daemon_log()).unwrap();
    let rounds: Vec<f64> = log[from..]
        .lines()
        .filter(|l| l.contains("checkpoint anchored"))
        .filter_map(|l| l.split(" ms=").nth(1))
        .filter_map(|v| v.split_whitespace().next()?.parse().ok())
        .collect();
    (
        rounds.len(),
        rounds.iter().sum::<f64>() / rounds.len().max(1) as f64,
    )
}

/// The figures of the closing note, from one run: Sign latency and rate with anchoring off,
/// with one TSA, and with two witnesses (2-of-2) and one TSA (`anchored`), and the anchoring
/// time per checkpoint; and the TSA's own round trip. Run with
/// `cargo test --release --test timestamp -- --ignored stamping_figures --nocapture`.
#[tokio::test(flavor = "multi_thread")]
#[ignore]
async fn stamping_figures() {
    use actseal::lab_witness::{LabWitness, configure_anchor};
    let dir = tempfile::tempdir().unwrap();
    let authority = tsa(dir.path(), "figures", TsaKey::P256, EssCertId::Sha256);
    let text = note_text(NOTE).unwrap().as_bytes();
    let plain = client(&authority, None, Some(&authority.ca_cert()));
    let mut rtt = Vec::new();
    for _ in 0..50 {
        rtt.push(plain.stamp(text).await.unwrap().elapsed.as_secs_f64() * 1000.0);
    }
    rtt.sort_by(f64::total_cmp);
    println!(
        "TSA round trip (client: request, openssl ts -reply, checks and token verification): median {:.2} ms",
        rtt[rtt.len() / 2]
    );

    let mut lab = new_lab();
    let original = std::fs::read_to_string(lab.config()).unwrap();
    lab.start_daemon().unwrap();
    create_key(&lab, ACTOR).await;
    rate(&lab, 200, 8, "warm").await;
    let off = (
        median_ms(&lab, 100, "off").await,
        rate(&lab, 2000, 32, "off").await,
    );
    lab.stop_daemon().unwrap();

    authority.add_to_config(&lab.config()).unwrap();
    let from = std::fs::metadata(lab.daemon_log()).unwrap().len() as usize;
    lab.start_daemon().unwrap();
    rate(&lab, 200, 8, "warm-tsa").await;
    let tsa_on = (
        median_ms(&lab, 100, "tsa").await,
        rate(&lab, 2000, 32, "tsa").await,
    );
    let tsa_rounds = rounds_since(&lab, from);
    lab.stop_daemon().unwrap();

    let mut witnesses: Vec<LabWitness> = (1..=2)
        .map(|i| LabWitness::create(&lab, i).unwrap())
        .collect();
    for w in &mut witnesses {
        w.start(&lab).unwrap();
    }
    std::fs::write(lab.config(), &original).unwrap();
    configure_anchor(&lab, &witnesses, 2, "").unwrap();
    authority.add_to_config(&lab.config()).unwrap();
    let from = std::fs::metadata(lab.daemon_log()).unwrap().len() as usize;
    lab.start_daemon().unwrap();
    rate(&lab, 200, 8, "warm-all").await;
    let all_on = (
        median_ms(&lab, 100, "all").await,
        rate(&lab, 2000, 32, "all").await,
    );
    let all_rounds = rounds_since(&lab, from);
    lab.stop_daemon().unwrap();

    println!(
        "anchoring off: Sign median {:.2} ms sequential, {:.0} signs/s (32 concurrent)",
        off.0, off.1
    );
    println!(
        "one TSA (anchored): Sign median {:.2} ms sequential, {:.0} signs/s (32 concurrent); {} rounds, mean {:.2} ms per anchored checkpoint",
        tsa_on.0, tsa_on.1, tsa_rounds.0, tsa_rounds.1
    );
    println!(
        "2 witnesses (2-of-2) + one TSA (anchored): Sign median {:.2} ms sequential, {:.0} signs/s (32 concurrent); {} rounds, mean {:.2} ms per anchored checkpoint",
        all_on.0, all_on.1, all_rounds.0, all_rounds.1
    );
}

/// A TSA that fails: in the `anchored` mode the caller gets UNAVAILABLE naming it once
/// `wait_ms` passes, the receipt is durably logged, and a retry with the same request id
/// returns it stamped once the TSA answers again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_tsa_holds_anchored_answers_until_it_answers() {
    let dir = tempfile::tempdir().unwrap();
    let authority = tsa(dir.path(), "flaky", TsaKey::P256, EssCertId::Sha256);
    let mut lab = new_lab();
    let config = std::fs::read_to_string(lab.config()).unwrap();
    std::fs::write(lab.config(), config + "\n[anchor]\nwait_ms = 1500\n").unwrap();
    authority.add_to_config(&lab.config()).unwrap();
    lab.start_daemon().unwrap();
    create_key(&lab, ACTOR).await;
    authority.set_mode(TsaMode::Fail);
    let mut client = signer(&lab).await;
    let mut request = sign_request(ACTOR, b"while the TSA is down");
    request.request_id = "tsa-down-1".into();
    let status = client.sign(request.clone()).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(
        status.message().contains("no timestamp authority answered"),
        "{status:?}"
    );
    assert_eq!(common::receipt_count(&lab), 1, "the receipt is in the log");
    authority.set_mode(TsaMode::Normal);
    let answer = client.sign(request).await.expect("the retry").into_inner();
    let (tokens, note) = tokens_of(&answer.bundle_json);
    assert!(!tokens.is_empty());
    verify_token(
        &tokens[0],
        note_text(&note).unwrap().as_bytes(),
        &anchors(&authority.ca_cert()),
    )
    .unwrap();
    assert_eq!(common::receipt_count(&lab), 1, "the retry appended nothing");
    lab.stop_daemon().unwrap();
}
