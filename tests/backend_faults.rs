//! Backend faults done for real under the running daemon: a SoftHSM2 token whose storage
//! vanishes for 3 s while clients sign, a token whose PIN changed under the daemon, and a
//! different swtpm answering on the enrolled TPM's address. The daemon must answer
//! UNAVAILABLE fast while faulted, recover by itself, lose nothing it acknowledged, and
//! report its health truthfully (gRPC health and /metrics) without traffic.

mod common;

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use actseal::lab::Lab;
use common::*;
use tonic::Code;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

/// The gRPC health status of the Signer service.
async fn signer_health(lab: &Lab) -> ServingStatus {
    HealthClient::new(channel(lab).await)
        .check(HealthCheckRequest {
            service: "actseal.v1.Signer".into(),
        })
        .await
        .expect("health check")
        .into_inner()
        .status()
}

/// `actseal_backend_up` from the daemon's /metrics (`None` if the scrape failed).
fn backend_up(port: u16) -> Option<bool> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    write!(stream, "GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n").ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    let line = text
        .lines()
        .find(|l| l.starts_with("actseal_backend_up "))?;
    Some(line.ends_with(" 1"))
}

/// Waits (without Sign traffic) until gRPC health and /metrics both say `up`; returns how
/// long that took.
async fn wait_for_health(lab: &Lab, port: u16, up: bool, within: Duration) -> Duration {
    let start = Instant::now();
    let want = if up {
        ServingStatus::Serving
    } else {
        ServingStatus::NotServing
    };
    loop {
        if signer_health(lab).await == want && backend_up(port) == Some(up) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < within,
            "health did not become {want:?} / backend_up {up} within {within:?}; daemon log:\n{}",
            std::fs::read_to_string(lab.daemon_log()).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What the signing clients saw.
#[derive(Default)]
struct Outcomes {
    /// Acknowledged bundles.
    ok: Vec<String>,
    /// (when, how long it took, code, message) of each failed call.
    failed: Vec<(Instant, Duration, Code, String)>,
}

/// Starts `clients` tasks signing distinct documents until `stop` is set.
fn start_signers(
    lab: &Lab,
    clients: usize,
    stop: Arc<AtomicBool>,
    outcomes: Arc<Mutex<Outcomes>>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let socket = lab.socket();
    (0..clients)
        .map(|c| {
            let (stop, outcomes, socket) = (stop.clone(), outcomes.clone(), socket.clone());
            tokio::spawn(async move {
                let channel = actseal::cli::connect_unix(&socket).await.expect("connect");
                let mut signer = actseal::api::signer_client::SignerClient::new(channel);
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let document = format!("client {c} action {i}");
                    let started = Instant::now();
                    let answer = signer.sign(sign_request(ACTOR, document.as_bytes())).await;
                    {
                        let mut seen = outcomes.lock().unwrap();
                        match answer {
                            Ok(response) => seen.ok.push(response.into_inner().bundle_json),
                            Err(status) => seen.failed.push((
                                started,
                                started.elapsed(),
                                status.code(),
                                status.message().to_owned(),
                            )),
                        }
                    }
                    // Failing calls return at once: do not spin a core on them.
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
        })
        .collect()
}

/// Every acknowledged bundle verifies, at an index of its own, and the log holds every one.
/// It may hold a few more: a batch committed just before the fault, whose log head record the
/// token could no longer take, is answered UNAVAILABLE (a retry with its request id gets it).
fn assert_nothing_lost(lab: &Lab, ok: &[String], receipts_before: u64) {
    let mut indexes = std::collections::BTreeSet::new();
    for bundle in ok {
        let verified = verify(lab, bundle, None).expect("an acknowledged bundle verifies");
        assert!(
            indexes.insert(verified.log_index),
            "two bundles at one index"
        );
    }
    let stored = receipt_count(lab);
    assert!(
        stored >= receipts_before + ok.len() as u64,
        "the log lacks acknowledged receipts: {stored} stored, {} before and {} acknowledged",
        receipts_before,
        ok.len()
    );
    export_and_audit(lab, "log-export.json");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pkcs11_token_fault_recovers_by_itself_and_loses_nothing() {
    let mut lab = new_lab();
    let port = free_port();
    configure_server(&lab, &format!("metrics = \"127.0.0.1:{port}\""));
    lab.start_daemon().expect("daemon start");
    create_key(&lab, ACTOR).await;
    let receipts_before = receipt_count(&lab);
    wait_for_health(&lab, port, true, Duration::from_secs(5)).await;
    let (tokens, away) = (lab.dir.join("tokens"), lab.dir.join("tokens-away"));

    // Without any traffic, the health probe sees the token go and come back.
    std::fs::rename(&tokens, &away).unwrap();
    let quiet_down = wait_for_health(&lab, port, false, Duration::from_secs(5)).await;
    std::fs::rename(&away, &tokens).unwrap();
    let quiet_up = wait_for_health(&lab, port, true, Duration::from_secs(10)).await;
    eprintln!(
        "FIGURES pkcs11 quiet fault: down after {quiet_down:?}, up {quiet_up:?} after the token returned"
    );

    let stop = Arc::new(AtomicBool::new(false));
    let outcomes = Arc::new(Mutex::new(Outcomes::default()));
    let clients = start_signers(&lab, 4, stop.clone(), outcomes.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;

    // The token's storage vanishes for 3 s under the signing clients.
    let fault = Instant::now();
    std::fs::rename(&tokens, &away).unwrap();
    let down_after = wait_for_health(&lab, port, false, Duration::from_secs(5)).await;
    tokio::time::sleep(Duration::from_secs(3).saturating_sub(fault.elapsed())).await;
    // Clients stop before the token returns: recovery must come without traffic.
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.await.unwrap();
    }
    std::fs::rename(&away, &tokens).unwrap();
    let restored = Instant::now();
    let recovery = wait_for_health(&lab, port, true, Duration::from_secs(15)).await;

    // Signing works again without a restart.
    let mut signer = signer(&lab).await;
    let after = signer
        .sign(sign_request(ACTOR, DOCUMENT))
        .await
        .expect("sign after the token came back")
        .into_inner();
    let first_ok = restored.elapsed();
    let mut seen = std::mem::take(&mut *outcomes.lock().unwrap());
    seen.ok.push(after.bundle_json);

    let slowest = seen.failed.iter().map(|f| f.1).max().unwrap_or_default();
    eprintln!(
        "FIGURES pkcs11 fault: {} OK, {} UNAVAILABLE during the 3 s fault (slowest {slowest:?}); \
         health down after {down_after:?}; health up {recovery:?} after the token returned; \
         first OK sign {first_ok:?} after",
        seen.ok.len(),
        seen.failed.len()
    );
    let log = std::fs::read_to_string(lab.daemon_log()).unwrap();
    for line in log.lines().filter(|l| l.contains("PKCS#11 token")) {
        eprintln!("daemon: {line}");
    }
    assert!(!seen.failed.is_empty(), "no call was made during the fault");
    for (started, took, code, message) in &seen.failed {
        assert_eq!(*code, Code::Unavailable, "{message}");
        assert!(
            *took < Duration::from_secs(2),
            "a faulted call took {took:?}: {message}"
        );
        assert!(
            *started + *took >= fault,
            "a call failed before the fault: {message}"
        );
    }
    assert!(seen.ok.len() > 1, "the clients signed before the fault");
    assert!(
        recovery < Duration::from_secs(8),
        "recovery took {recovery:?}"
    );
    assert_nothing_lost(&lab, &seen.ok, receipts_before);
    lab.stop_daemon().unwrap();
}

/// Changes the lab token's user PIN with OpenSC's `pkcs11-tool` (PINs passed in its
/// environment, not on its command line), as an operator would.
fn change_token_pin(lab: &Lab, old: &str, new: &str) {
    let output = std::process::Command::new("pkcs11-tool")
        .args(["--module", actseal::lab::SOFTHSM_MODULE, "--token-label"])
        .arg(actseal::lab::TOKEN_LABEL)
        .args([
            "--pin",
            "env:OLD_PIN",
            "--change-pin",
            "--new-pin",
            "env:NEW_PIN",
        ])
        .env("SOFTHSM2_CONF", lab.dir.join("softhsm2.conf"))
        .env("OLD_PIN", old)
        .env("NEW_PIN", new)
        .output()
        .expect("pkcs11-tool (package opensc) runs");
    assert!(
        output.status.success(),
        "pkcs11-tool --change-pin: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Sign's answer now: `Ok` or the refusal's message.
async fn try_sign(lab: &Lab) -> Result<(), (Code, String)> {
    signer(lab)
        .await
        .sign(sign_request(ACTOR, DOCUMENT))
        .await
        .map(|_| ())
        .map_err(|s| (s.code(), s.message().to_owned()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_pin_is_never_retried_automatically() {
    let mut lab = new_lab();
    let port = free_port();
    configure_server(&lab, &format!("metrics = \"127.0.0.1:{port}\""));
    lab.start_daemon().expect("daemon start");
    create_key(&lab, ACTOR).await;
    try_sign(&lab).await.expect("sign");

    // The operator changes the token's PIN but not the daemon's; a token fault then makes the
    // daemon log in again, with the PIN it has.
    let pin = lab.token_pin().unwrap();
    change_token_pin(&lab, &pin, "a-new-pin-1234");
    let (tokens, away) = (lab.dir.join("tokens"), lab.dir.join("tokens-away"));
    std::fs::rename(&tokens, &away).unwrap();
    let (code, _) = try_sign(&lab).await.expect_err("the token is gone");
    assert_eq!(code, Code::Unavailable);
    std::fs::rename(&away, &tokens).unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    let refusal = loop {
        match try_sign(&lab).await {
            Err((Code::Unavailable, message)) if message.contains("refused the PIN") => {
                break message;
            }
            Err((Code::Unavailable, _)) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            other => panic!("expected a refused PIN, got {other:?}"),
        }
    };
    assert!(refusal.contains("not retried"), "{refusal}");
    assert!(!refusal.contains(&pin), "the PIN leaked: {refusal}");
    wait_for_health(&lab, port, false, Duration::from_secs(5)).await;

    // The token takes the daemon's PIN again, but the daemon does not try it by itself: every
    // try would have counted against the token's retry limit.
    change_token_pin(&lab, "a-new-pin-1234", &pin);
    tokio::time::sleep(Duration::from_secs(4)).await;
    let (code, message) = try_sign(&lab).await.expect_err("still not retried");
    assert_eq!(code, Code::Unavailable);
    assert!(message.contains("not retried"), "{message}");
    assert_eq!(signer_health(&lab).await, ServingStatus::NotServing);
    assert_eq!(backend_up(port), Some(false));
    let log = std::fs::read_to_string(lab.daemon_log()).unwrap();
    assert!(!log.contains(&pin), "the PIN is in the daemon's log");

    // The operator restarts the daemon: it signs again.
    lab.stop_daemon().unwrap();
    lab.start_daemon().expect("daemon restart");
    try_sign(&lab).await.expect("sign after the restart");
    lab.stop_daemon().unwrap();
}

/// Counts rows of a table in the daemon's database (either engine).
fn rows(lab: &Lab, table: &str) -> i64 {
    common::ledger_i64(lab, &format!("SELECT COUNT(*) FROM {table}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tpm_that_is_not_ours_is_refused_and_ours_is_used_again() {
    use actseal::api::{CreateKeyRequest, RotateKeyRequest};
    const OTHER_ACTOR: &str = "spiffe://acme.example/agents/refunds";
    let mut lab = new_tpm_lab();
    let port = free_port();
    configure_server(&lab, &format!("metrics = \"127.0.0.1:{port}\""));
    lab.start_daemon().expect("daemon start");
    let key = create_key(&lab, ACTOR).await;
    let mut ok = vec![
        signer(&lab)
            .await
            .sign(sign_request(ACTOR, DOCUMENT))
            .await
            .expect("sign on the enrolled TPM")
            .into_inner()
            .bundle_json,
    ];
    let (receipts, keys, entries) = (
        receipt_count(&lab),
        rows(&lab, "actor_keys"),
        rows(&lab, "log_entries"),
    );

    // Another TPM (its own state, its own endorsement seed) answers on the enrolled TPM's port.
    let mut other = actseal::lab_tpm::Swtpm::create(&lab.dir.join("other-tpm")).expect("swtpm");
    other.stop().unwrap();
    let tpm = lab.tpm().unwrap();
    tpm.stop().unwrap();
    other.port = tpm.port;
    other.start().expect("the other TPM on the enrolled port");
    let down_after = wait_for_health(&lab, port, false, Duration::from_secs(10)).await;

    let mismatch = |status: tonic::Status| {
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        assert!(
            status.message().contains("TPM identity mismatch"),
            "{status:?}"
        );
    };
    let started = Instant::now();
    let mut refused = 0;
    for _ in 0..5 {
        mismatch(
            signer(&lab)
                .await
                .sign(sign_request(ACTOR, DOCUMENT))
                .await
                .unwrap_err(),
        );
        refused += 1;
    }
    let per_refusal = started.elapsed() / refused;
    mismatch(
        admin(&lab)
            .await
            .create_key(CreateKeyRequest {
                actor: OTHER_ACTOR.into(),
            })
            .await
            .unwrap_err(),
    );
    mismatch(
        admin(&lab)
            .await
            .rotate_key(RotateKeyRequest {
                actor: ACTOR.into(),
            })
            .await
            .unwrap_err(),
    );
    assert_eq!(
        (
            receipt_count(&lab),
            rows(&lab, "actor_keys"),
            rows(&lab, "log_entries")
        ),
        (receipts, keys, entries),
        "nothing is stored while the TPM is not ours"
    );

    // The enrolled TPM is back on its port: the same actor signs, rotates, and the other actor
    // gets its key (nothing half-made is left in the way).
    other.stop().unwrap();
    lab.tpm().unwrap().start().expect("the enrolled TPM again");
    let up_after = wait_for_health(&lab, port, true, Duration::from_secs(10)).await;
    let mut signer = signer(&lab).await;
    let again = signer
        .sign(sign_request(ACTOR, DOCUMENT))
        .await
        .expect("sign on the enrolled TPM again")
        .into_inner();
    assert_eq!(again.key_id, key.key_id);
    ok.push(again.bundle_json);
    let rotated = admin(&lab)
        .await
        .rotate_key(RotateKeyRequest {
            actor: ACTOR.into(),
        })
        .await
        .expect("rotate")
        .into_inner();
    assert_eq!(rotated.version, 2);
    ok.push(
        signer
            .sign(sign_request(ACTOR, DOCUMENT))
            .await
            .expect("sign with the rotated key")
            .into_inner()
            .bundle_json,
    );
    create_key(&lab, OTHER_ACTOR).await;
    ok.push(
        signer
            .sign(sign_request(OTHER_ACTOR, DOCUMENT))
            .await
            .expect("the other actor signs")
            .into_inner()
            .bundle_json,
    );
    eprintln!(
        "FIGURES tpm not ours: health NOT_SERVING {down_after:?} after the swap; \
         {refused} Sign refused, {per_refusal:?} each; health SERVING {up_after:?} after the enrolled TPM returned"
    );
    assert_nothing_lost(&lab, &ok, receipts - 1);

    // Enrolled before identities were recorded: the daemon pins the AK it starts with (the
    // one the installed AK certificate is for) and still refuses the other TPM.
    lab.stop_daemon().unwrap();
    std::fs::remove_file(lab.dir.join("state/tpm-identity.json")).unwrap();
    lab.start_daemon()
        .expect("daemon start without a recorded identity");
    wait_for_log(&lab, "pinning this TPM's AK", 1);
    lab.tpm().unwrap().stop().unwrap();
    other.start().unwrap();
    mismatch(
        common::signer(&lab)
            .await
            .sign(sign_request(ACTOR, DOCUMENT))
            .await
            .unwrap_err(),
    );
    other.stop().unwrap();
    lab.tpm().unwrap().start().unwrap();
    try_sign(&lab).await.expect("sign on the enrolled TPM");
    lab.stop_daemon().unwrap();
}
