//! A bounded soak, outside the default suite:
//!
//! ```sh
//! cargo test --release --test soak -- --ignored soak --nocapture
//! ```
//!
//! Eight clients sign for ten minutes (`ACTSEAL_SOAK_SECS` to change it) against two daemons,
//! one on a SoftHSM2 token and one on a swtpm, while each daemon is SIGKILLed at random, the
//! swtpm is restarted under its daemon and the token's directory is moved away for a few
//! seconds. Clients retry a call whose outcome they did not learn with the same request id.
//! At the end every bundle a caller was given must verify, be the one answer for its request
//! id, and be the entry at its index in the daemon's log, and each log must audit clean.

mod common;

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use actseal::api::signer_client::SignerClient;
use base64::{Engine, engine::general_purpose::STANDARD as B64};
use common::*;
use rand_core::{OsRng, RngCore};
use tonic::Code;

const CLIENTS_PER_DAEMON: usize = 4;

/// What one daemon's clients were told, and what went wrong on the way.
#[derive(Default)]
struct Tally {
    /// Request id → (document, bundle) of every OK answer.
    acknowledged: HashMap<String, (Vec<u8>, String)>,
    /// Answers by status code, OK included.
    codes: HashMap<String, u64>,
    /// One request id answered with two different bundles.
    conflicting: Vec<String>,
    /// When each OK answer came.
    ok_at: Vec<Instant>,
}

/// Faults done to one daemon, by kind.
#[derive(Default)]
struct Faults {
    kills: u32,
    swtpm_restarts: u32,
    token_outages: u32,
    /// When each fault ended (the daemon restarted, the TPM or the token back).
    ended_at: Vec<Instant>,
}

/// Longest a service stays down after a fault ends, before it must sign again by itself.
const RECOVERY_BOUND: Duration = Duration::from_secs(20);

#[test]
#[ignore = "a 10-minute soak: cargo test --release --test soak -- --ignored soak"]
fn soak_kills_tpm_restarts_and_token_faults_lose_nothing() {
    let seconds: u64 = std::env::var("ACTSEAL_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(600);
    let until = Instant::now() + Duration::from_secs(seconds);
    let pkcs11 = std::thread::spawn(move || soak_one(new_lab(), until, "pkcs11"));
    let tpm = std::thread::spawn(move || soak_one(new_tpm_lab(), until, "tpm"));
    pkcs11.join().expect("the SoftHSM soak");
    tpm.join().expect("the swtpm soak");
}

/// Soaks one lab's daemon until `until`, then checks everything it acknowledged.
fn soak_one(mut lab: TestLab, until: Instant, name: &'static str) {
    lab.start_daemon().expect("daemon start");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let actors: Vec<String> = (0..CLIENTS_PER_DAEMON)
        .map(|i| format!("spiffe://acme.example/soak/{name}/{i}"))
        .collect();
    runtime.block_on(async {
        for actor in &actors {
            create_key(&lab, actor).await;
        }
    });
    let tally = Arc::new(Mutex::new(Tally::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = actors
        .iter()
        .map(|actor| {
            runtime.spawn(client(
                lab.socket(),
                actor.clone(),
                tally.clone(),
                stop.clone(),
            ))
        })
        .collect();
    let faults = chaos(&mut lab, until);
    // The clients go on long enough for the service to come back from the last fault.
    std::thread::sleep(RECOVERY_BOUND);
    stop.store(true, Ordering::SeqCst);
    runtime.block_on(async {
        for client in clients {
            client.await.expect("client task");
        }
    });
    let tally = Arc::try_unwrap(tally).ok().unwrap().into_inner().unwrap();
    check(&mut lab, name, &tally, &faults);
}

/// Faults the daemon at random intervals until `until`; leaves it running.
fn chaos(lab: &mut TestLab, until: Instant) -> Faults {
    let mut faults = Faults::default();
    let is_tpm = lab.tpm().is_some();
    while Instant::now() < until {
        std::thread::sleep(Duration::from_millis(3_000 + OsRng.next_u64() % 9_000));
        match (OsRng.next_u32() % 2, is_tpm) {
            (0, _) => {
                lab.kill_daemon().expect("SIGKILL");
                lab.start_daemon().expect("restart after SIGKILL");
                faults.kills += 1;
            }
            (_, true) => {
                let tpm = lab.tpm().unwrap();
                tpm.stop().expect("swtpm stop");
                std::thread::sleep(Duration::from_millis(500 + OsRng.next_u64() % 2_500));
                tpm.start().expect("swtpm start");
                faults.swtpm_restarts += 1;
            }
            (_, false) => {
                token_outage(&lab.dir, Duration::from_secs(3));
                faults.token_outages += 1;
            }
        }
        faults.ended_at.push(Instant::now());
    }
    faults
}

/// Moves the token directory away for `length`, then back.
fn token_outage(lab_dir: &Path, length: Duration) {
    let tokens = lab_dir.join("tokens");
    let away = lab_dir.join("tokens.away");
    std::fs::rename(&tokens, &away).expect("move the tokens away");
    std::thread::sleep(length);
    std::fs::rename(&away, &tokens).expect("bring the tokens back");
}

/// Signs in a loop until told to stop, retrying an unknown outcome with the same request id.
async fn client(socket: PathBuf, actor: String, tally: Arc<Mutex<Tally>>, stop: Arc<AtomicBool>) {
    let mut signer: Option<SignerClient<_>> = None;
    let mut pending: Option<(String, Vec<u8>)> = None;
    let mut counter = 0u64;
    while !stop.load(Ordering::SeqCst) {
        let (request_id, document) = pending.take().unwrap_or_else(|| {
            counter += 1;
            let id = format!("{actor}#{counter}");
            (id.clone(), format!("{{\"soak\":\"{id}\"}}").into_bytes())
        });
        let client = match &mut signer {
            Some(client) => client,
            None => match actseal::cli::connect_unix(&socket).await {
                Ok(channel) => signer.insert(SignerClient::new(channel)),
                Err(_) => {
                    pending = Some((request_id, document));
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let mut request = sign_request(&actor, &document);
        request.request_id = request_id.clone();
        let answer = tokio::time::timeout(Duration::from_secs(30), client.sign(request)).await;
        let code = record(&tally, request_id, document, answer, &mut pending);
        if code != Code::Ok {
            signer = None;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

type Answer = Result<
    Result<tonic::Response<actseal::api::SignResponse>, tonic::Status>,
    tokio::time::error::Elapsed,
>;

/// Counts one answer; an unknown outcome leaves the request pending, to retry as it was.
fn record(
    tally: &Mutex<Tally>,
    request_id: String,
    document: Vec<u8>,
    answer: Answer,
    pending: &mut Option<(String, Vec<u8>)>,
) -> Code {
    let mut tally = tally.lock().unwrap();
    let code = match answer {
        Ok(Ok(response)) => {
            let bundle = response.into_inner().bundle_json;
            if let Some((_, earlier)) = tally.acknowledged.get(&request_id)
                && *earlier != bundle
            {
                tally.conflicting.push(request_id.clone());
            }
            tally.acknowledged.insert(request_id, (document, bundle));
            tally.ok_at.push(Instant::now());
            Code::Ok
        }
        Ok(Err(status)) => {
            // The outcome is unknown only where the call may have reached the log.
            if matches!(
                status.code(),
                Code::Unavailable | Code::Unknown | Code::Internal | Code::Cancelled
            ) {
                *pending = Some((request_id, document));
            }
            status.code()
        }
        Err(_) => {
            *pending = Some((request_id, document));
            Code::DeadlineExceeded
        }
    };
    *tally.codes.entry(format!("{code:?}")).or_default() += 1;
    code
}

/// Every acknowledged bundle verifies, is the entry at its index, and the log audits clean.
fn check(lab: &mut TestLab, name: &str, tally: &Tally, faults: &Faults) {
    assert!(
        tally.conflicting.is_empty(),
        "{name}: request ids answered with two bundles: {:?}",
        tally.conflicting
    );
    let recovery = longest_recovery(tally, faults);
    assert!(
        recovery < RECOVERY_BOUND,
        "{name}: no signature for {recovery:?} after a fault ended"
    );
    let report = export_and_audit(lab, &format!("soak-{name}.export.json"));
    let export: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(lab.path(&format!("soak-{name}.export.json"))).unwrap(),
    )
    .unwrap();
    let entries = export["entries"].as_array().expect("entries");
    let mut indexes = HashMap::new();
    for (request_id, (document, bundle)) in &tally.acknowledged {
        let verified = verify(lab, bundle, Some(document))
            .unwrap_or_else(|e| panic!("{name}: acknowledged {request_id} fails: {e}"));
        if let Some(other) = indexes.insert(verified.log_index, request_id) {
            panic!(
                "{name}: {request_id} and {other} share index {}",
                verified.log_index
            );
        }
        let entry = entries
            .get(verified.log_index as usize)
            .unwrap_or_else(|| panic!("{name}: {request_id} is past the log's end"));
        let entry = B64.decode(entry.as_str().unwrap()).unwrap();
        assert_eq!(
            entry_payload(&entry),
            receipt_payload(bundle),
            "{name}: the log's entry {} is not {request_id}'s receipt",
            verified.log_index
        );
    }
    println!(
        "soak {name}: {} bundles acknowledged and verified, {} log entries; faults: {} SIGKILLs, \
         {} swtpm restarts, {} token outages; answers {:?}, longest recovery {recovery:?}\n\
         audit: {}",
        tally.acknowledged.len(),
        entries.len(),
        faults.kills,
        faults.swtpm_restarts,
        faults.token_outages,
        tally.codes,
        report.trim()
    );
}

/// The longest time from the end of a fault to the next OK answer; a fault never followed by
/// one counts as the whole bound.
fn longest_recovery(tally: &Tally, faults: &Faults) -> Duration {
    faults
        .ended_at
        .iter()
        .map(|&ended| {
            tally
                .ok_at
                .iter()
                .filter(|&&ok| ok >= ended)
                .min()
                .map_or(RECOVERY_BOUND, |&ok| ok - ended)
        })
        .max()
        .unwrap_or_default()
}

/// The payload of a log entry (FORMAT.md §11.1).
fn entry_payload(entry: &[u8]) -> &[u8] {
    let field = |at: usize| u32::from_be_bytes(entry[at..at + 4].try_into().unwrap()) as usize;
    let type_len = field(0);
    let payload_at = 4 + type_len + 4;
    &entry[payload_at..payload_at + field(4 + type_len)]
}

fn receipt_payload(bundle_json: &str) -> Vec<u8> {
    let bundle: serde_json::Value = serde_json::from_str(bundle_json).unwrap();
    B64.decode(bundle["receipt"]["payload"].as_str().unwrap())
        .unwrap()
}
