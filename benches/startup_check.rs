//! The daemon's start-up check as the log grows: the first start over a log none of which was
//! checked (a full walk: what a start after a watermark mismatch, or the first start after an
//! upgrade, pays) and the incremental start after it (the watermark the hardware's log head
//! vouches for: nothing re-read but the cheap whole-log checks).
//!
//! The store is real: a SoftHSM lab daemon makes the log key, the actor key and its
//! registration and first receipt; then this bench appends receipts to the same SQLite store
//! in batches of 1,000 exactly as the sequencer does (real statements, tree nodes, a
//! checkpoint per batch signed by the log key in the token, a stored inclusion proof and a
//! request id per receipt). Only the receipts' actor signatures are a placeholder: the
//! start-up check never verifies them (the audit does), and signing 10^6 digests through the
//! token with the software re-check would take longer than the whole measurement.
//!
//! Run: `cargo bench --bench startup_check`. `ACTSEAL_BENCH_SIZES` (default
//! "100000,1000000") sets the log sizes measured, in increasing order.

#[path = "support/mod.rs"]
mod support;

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use actseal::{
    api::{CreateKeyRequest, SignRequest, key_admin_client::KeyAdminClient, sign_request::Action},
    backend::HardwareKey,
    config::Config,
    lab::Lab,
    ledger::{
        Batch, CheckpointRow, EntryKind, EntryRow, KeyState, ReceiptRow, Store,
        checkpoint::Checkpoint,
        entry,
        merkle::{self, Frontier, Hash, MerkleError, NodeReader},
    },
    proof::{
        IN_TOTO_PAYLOAD_TYPE,
        dsse::Envelope,
        now_rfc3339,
        receipt::{
            Action as ReceiptAction, CallerInReceipt, Digest as ReceiptDigest, KeyRefInReceipt,
            ReceiptPredicate, ReceiptStatement,
        },
    },
    server,
};
use sha2::{Digest, Sha256};

const ACTOR: &str = "spiffe://acme.example/agents/startup-bench";
const BATCH: u64 = 1000;

/// Every node of the tree, in memory (proofs for the filler without SQLite reads).
struct Nodes(HashMap<(u8, u64), Hash>);

impl NodeReader for Nodes {
    fn node(&self, level: u8, index: u64) -> Result<Hash, MerkleError> {
        self.0
            .get(&(level, index))
            .copied()
            .ok_or(MerkleError::OutOfRange { level, index })
    }
}

/// What the filler continues from.
struct Filler {
    store: Store,
    frontier: Frontier,
    nodes: Nodes,
    sequence: u64,
    previous: [u8; 32],
    key: actseal::ledger::KeyRecord,
}

impl Filler {
    fn open(lab: &Lab) -> Filler {
        let store = Store::open(&lab.dir.join("state/actseal.db")).unwrap();
        let size = store.next_log_index().unwrap();
        let mut frontier = Frontier::default();
        let mut nodes = HashMap::new();
        store
            .for_each_entry(|_, _, _, bytes| {
                for (level, index, hash) in frontier.append(merkle::leaf_hash(bytes)) {
                    nodes.insert((level, index), hash);
                }
                Ok(())
            })
            .unwrap();
        assert_eq!(frontier.size(), size);
        let head = store.actor_heads().unwrap()[ACTOR];
        let key = store
            .keys(Some(ACTOR))
            .unwrap()
            .into_iter()
            .find(|k| k.state == KeyState::Active)
            .unwrap();
        Filler {
            store,
            frontier,
            nodes: Nodes(nodes),
            sequence: head.sequence,
            previous: head.payload_sha256,
            key,
        }
    }

    fn receipt(&mut self, caller: &CallerInReceipt) -> (Vec<u8>, ReceiptRow, [u8; 32]) {
        let index = self.frontier.size();
        self.sequence += 1;
        let document: [u8; 32] = Sha256::digest(index.to_be_bytes()).into();
        let signed_at = now_rfc3339();
        let payload = ReceiptStatement::new(
            &document,
            ReceiptPredicate {
                actor: ACTOR.into(),
                key: KeyRefInReceipt {
                    id: self.key.key_id.clone(),
                    version: self.key.version,
                    backend: self.key.backend.as_str().into(),
                },
                action: ReceiptAction {
                    action_type: "bench.action".into(),
                    target: format!("bench:target:{index}"),
                    parent_sha256: None,
                },
                context: [("run".to_string(), "startup-bench".to_string())].into(),
                caller: caller.clone(),
                signed_at: signed_at.clone(),
                sequence: self.sequence,
                previous_receipt: Some(ReceiptDigest {
                    sha256: hex::encode(self.previous),
                }),
                log_index: Some(index),
                mode: "single".into(),
            },
        )
        .to_payload()
        .unwrap();
        let placeholder = p256::ecdsa::Signature::from_slice(&[1u8; 64]).unwrap();
        let envelope = Envelope::new(
            IN_TOTO_PAYLOAD_TYPE,
            &payload,
            &self.key.key_id,
            &placeholder,
        );
        let bytes = entry::encode(&envelope).unwrap();
        self.previous = Sha256::digest(&payload).into();
        let fingerprint = server::validate::fingerprint_of_receipt(&payload).unwrap();
        let row = ReceiptRow {
            log_index: index,
            actor: ACTOR.into(),
            sequence: self.sequence,
            key_id: self.key.key_id.clone(),
            payload_sha256: self.previous,
            signed_at,
            proof_size: 0,
            proof: Vec::new(),
        };
        (bytes, row, fingerprint)
    }

    /// Appends receipts in batches until the log holds `until` entries.
    fn fill(&mut self, lab: &Lab, until: u64) {
        let config = Config::load(&lab.config()).unwrap();
        let (backend, _) = server::open_backend(&config).unwrap();
        let log = server::stored_log_identity(&self.store, std::sync::Arc::clone(&backend))
            .unwrap()
            .unwrap();
        let caller = CallerInReceipt::Unix {
            uid: 0,
            gid: 0,
            pid: 1,
        };
        while self.frontier.size() < until {
            let mut batch = Batch::default();
            let end = (self.frontier.size() + BATCH).min(until);
            while self.frontier.size() < end {
                let (bytes, row, fingerprint) = self.receipt(&caller);
                for (level, index, hash) in self.frontier.append(merkle::leaf_hash(&bytes)) {
                    self.nodes.0.insert((level, index), hash);
                    batch.nodes.push((level, index, hash));
                }
                batch.requests.push((
                    format!("bench-{}", row.log_index),
                    fingerprint,
                    row.log_index,
                ));
                batch.entries.push(EntryRow {
                    log_index: row.log_index,
                    kind: EntryKind::Receipt,
                    actor: ACTOR.into(),
                    entry: bytes,
                });
                batch.receipts.push(row);
            }
            let checkpoint = Checkpoint::new(
                log.origin.clone(),
                self.frontier.size(),
                self.frontier.root(),
            )
            .unwrap();
            let key: &HardwareKey = &log.key;
            let note = checkpoint
                .signed_note(&log.origin, &log.spki_der(), |digest| {
                    backend.sign_digest(key, digest).map_err(|e| {
                        actseal::ledger::checkpoint::CheckpointError::InvalidKeyName(e.to_string())
                    })
                })
                .unwrap();
            for row in &mut batch.receipts {
                row.proof_size = checkpoint.size();
                row.proof =
                    merkle::inclusion_proof(&self.nodes, row.log_index, checkpoint.size()).unwrap();
            }
            batch.checkpoint = Some(CheckpointRow {
                size: checkpoint.size(),
                root: *checkpoint.root(),
                note,
            });
            self.store.commit(&batch).unwrap();
        }
    }
}

/// What the sequencer adds to every batch: rewriting the token's log head record (the same
/// record back, so the log is unchanged).
fn head_write_cost(lab: &Lab) {
    let config = Config::load(&lab.config()).unwrap();
    let (backend, _) = server::open_backend(&config).unwrap();
    let record = backend.read_log_head().unwrap().expect("a log head record");
    let rounds = 300;
    let start = Instant::now();
    for _ in 0..rounds {
        backend.write_log_head(&record).unwrap();
    }
    let written = start.elapsed();
    let start = Instant::now();
    for _ in 0..rounds {
        backend.read_log_head().unwrap();
    }
    println!(
        "log head record on the SoftHSM token: rewritten in {:.3} ms, read in {:.3} ms ({rounds} rounds)",
        written.as_secs_f64() * 1e3 / f64::from(rounds),
        start.elapsed().as_secs_f64() * 1e3 / f64::from(rounds)
    );
    if std::env::var("ACTSEAL_BENCH_HEAD_ONLY").is_ok() {
        std::process::exit(0);
    }
}

/// Starts the daemon; returns the time to its socket and its "log verified" line.
fn timed_start(lab: &mut Lab) -> (Duration, String) {
    let start = Instant::now();
    lab.start_daemon_within(Duration::from_secs(1800), |_| {})
        .expect("daemon start");
    let took = start.elapsed();
    lab.stop_daemon().unwrap();
    let log = std::fs::read_to_string(lab.daemon_log()).unwrap();
    let line = log
        .lines()
        .rfind(|l| l.contains("log verified"))
        .unwrap_or_default();
    let field = |name: &str| {
        line.split_whitespace()
            .find(|w| w.starts_with(name))
            .unwrap_or_default()
            .to_owned()
    };
    (
        took,
        format!("{}, {}", field("checked="), field("check_ms=")),
    )
}

fn main() {
    let sizes: Vec<u64> = std::env::var("ACTSEAL_BENCH_SIZES")
        .unwrap_or_else(|_| "100000,1000000".into())
        .split(',')
        .map(|s| s.trim().parse().expect("a size"))
        .collect();
    let (_dir, mut lab) = support::started_softhsm_lab("actseal-startup-bench-");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let channel = actseal::cli::connect_unix(&lab.socket()).await.unwrap();
        KeyAdminClient::new(channel.clone())
            .create_key(CreateKeyRequest {
                actor: ACTOR.into(),
            })
            .await
            .unwrap();
        actseal::api::signer_client::SignerClient::new(channel)
            .sign(SignRequest {
                actor: ACTOR.into(),
                action_type: "bench.action".into(),
                target: "bench:target".into(),
                action: Some(Action::Document(b"first action".to_vec())),
                context: Default::default(),
                parent_action_sha256: vec![],
                request_id: "first".into(),
            })
            .await
            .unwrap();
    });
    lab.stop_daemon().unwrap();
    head_write_cost(&lab);
    let mut filler = Filler::open(&lab);
    for size in sizes {
        let fill = Instant::now();
        filler.fill(&lab, size);
        let filled = fill.elapsed();
        let (first, first_checked) = timed_start(&mut lab);
        let (second, second_checked) = timed_start(&mut lab);
        let count = Instant::now();
        let requests = filler
            .store
            .rows_from(actseal::ledger::CheckedTable::Requests, 0)
            .unwrap();
        let counted = count.elapsed();
        let db_bytes = std::fs::metadata(lab.dir.join("state/actseal.db"))
            .map(|m| m.len())
            .unwrap_or(0);
        println!(
            "log of {size} entries (filled in {:.0} s, {:.0} MiB): start-up with the check walking \
             every entry {:.2} s ({first_checked}); incremental start {:.2} s ({second_checked}); \
             counting the {requests} request ids alone {:.3} s",
            filled.as_secs_f64(),
            db_bytes as f64 / (1024.0 * 1024.0),
            first.as_secs_f64(),
            second.as_secs_f64(),
            counted.as_secs_f64()
        );
    }
}
