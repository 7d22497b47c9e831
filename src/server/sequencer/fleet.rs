//! The sequencer's fleet mode, node side (`crate::fleet`): a sealed batch is queued, not
//! appended; the callers are answered by a waiter thread once the integrator has integrated
//! every entry and published a log head that covers them. Each bundle is built from what the
//! node signed and the integrator's proof, with one query for a settle's indices and proofs
//! and one for its checkpoints, through the builder `bundles::stored` uses: byte for byte
//! what a retry or `GetInclusionProof` gives.

use std::{
    collections::HashMap,
    sync::{Arc, mpsc},
    thread,
    time::{Duration, Instant},
};

use postgres::{Client, fallible_iterator::FallibleIterator};

use super::{LogIdentity, Reply, SequencerError, SignedReceipt, bundles, commit::CommitBatch};
use crate::{
    fleet::{
        self, FleetError, FleetSettings,
        queue::{self, Enqueue, Placed, QueueRow, QueuedReceipt},
    },
    ledger::{CheckpointRow, EntryKind, KeyChange, Store, StoreError, store::postgres::PgSettings},
    pki::device::CertificateHistory,
};

/// A retry that waits for what it names to be integrated and published.
pub(super) enum Follow {
    /// A queued entry of this node, by queue id.
    Queued(i64, Reply<SignedReceipt>),
    /// An integrated receipt, by log index.
    Integrated(u64, Reply<SignedReceipt>),
}

/// What a node needs to queue and to answer.
#[derive(Debug, Clone)]
pub struct FleetNode {
    pub settings: FleetSettings,
    pub pg: PgSettings,
}

/// The commit thread's fleet half: the queue connection and the waiter.
pub(super) struct Sink {
    node: FleetNode,
    client: Option<Client>,
    waiter: mpsc::Sender<Waiting>,
}

/// A queued batch: (local index, queue id) of its entries, and since when it waits.
type Queued = (Box<CommitBatch>, Vec<(u64, i64)>, Instant);

enum Waiting {
    Batch(Box<CommitBatch>, Vec<(u64, i64)>, Instant),
    Follow(Follow, Instant),
}

impl Sink {
    pub fn start(
        node: FleetNode,
        log: LogIdentity,
        certificates: Arc<CertificateHistory>,
    ) -> Result<Self, SequencerError> {
        let (waiter, inbox) = mpsc::channel();
        let waiting = Waiter {
            node: node.clone(),
            log,
            certificates,
            conn: None,
            batches: Vec::new(),
            follows: Vec::new(),
        };
        thread::Builder::new()
            .name("actseal-fleet-waiter".into())
            .spawn(move || waiting.run(&inbox))
            .map_err(|e| {
                SequencerError::NotStored(format!("cannot start the fleet waiter: {e}"))
            })?;
        Ok(Sink {
            node,
            client: None,
            waiter,
        })
    }

    fn client(&mut self) -> Result<&mut Client, FleetError> {
        let client = match self.client.take() {
            Some(client) => client,
            None => crate::ledger::store::postgres::connect(&self.node.pg)?,
        };
        Ok(self.client.insert(client))
    }

    /// Queues the batch in one transaction; its callers are answered once it is integrated
    /// (or now, with the error, if it could not be queued).
    pub fn queue(&mut self, batch: CommitBatch) -> Result<(), String> {
        let (enqueue, locals) = rows_of(&batch);
        let node = self.node.settings.node.clone();
        let queued = self
            .client()
            .and_then(|client| queue::enqueue(client, &node, &enqueue));
        match queued {
            Ok(ids) => {
                let map = locals.into_iter().zip(ids).collect();
                let _ = self
                    .waiter
                    .send(Waiting::Batch(Box::new(batch), map, Instant::now()));
                Ok(())
            }
            Err(e) => {
                if matches!(e, FleetError::Unavailable(_)) {
                    self.client = None;
                }
                let message = e.to_string();
                tracing::error!(error = %message, "queueing failed; nothing in the batch was acknowledged");
                batch.answer(Err(&message));
                Err(message)
            }
        }
    }

    pub fn follow(&self, follow: Follow) {
        let _ = self.waiter.send(Waiting::Follow(follow, Instant::now()));
    }
}

/// The queue rows of a batch, in log order, with each row's local index.
fn rows_of(batch: &CommitBatch) -> (Enqueue, Vec<u64>) {
    let receipts: HashMap<u64, &super::PendingReceipt> = batch
        .receipts
        .iter()
        .map(|p| (p.row.log_index, p))
        .collect();
    let requests: HashMap<u64, (String, [u8; 32])> = batch
        .batch
        .requests
        .iter()
        .map(|(id, fingerprint, index)| (*index, (id.clone(), *fingerprint)))
        .collect();
    // Each registration's key by the key id its statement names (a registration whose
    // rotation then failed has none, and the integrator refuses it); each rotation's new key
    // by the rotation entry's index. `Some(version)` for a rotation's rows.
    let mut by_key_id: HashMap<&str, (&crate::ledger::KeyRecord, Option<u32>)> = HashMap::new();
    let mut by_rotation: HashMap<u64, &crate::ledger::KeyRecord> = HashMap::new();
    for change in &batch.batch.keys {
        match change {
            KeyChange::Insert(key) => {
                by_key_id.insert(key.key_id.as_str(), (&**key, None));
            }
            KeyChange::Rotated {
                key,
                rotation_index,
            } => {
                by_key_id.insert(key.key_id.as_str(), (&**key, Some(key.version)));
                by_rotation.insert(*rotation_index, &**key);
            }
            KeyChange::Retire { .. } => {}
        }
    }
    let mut heads: HashMap<String, crate::ledger::ActorHead> = HashMap::new();
    let mut out = Enqueue::default();
    let mut locals = Vec::with_capacity(batch.batch.entries.len());
    for entry in &batch.batch.entries {
        let receipt = receipts.get(&entry.log_index).map(|p| {
            heads.insert(
                p.row.actor.clone(),
                crate::ledger::ActorHead {
                    sequence: p.row.sequence,
                    payload_sha256: p.row.payload_sha256,
                },
            );
            QueuedReceipt {
                sequence: p.row.sequence,
                key_id: p.row.key_id.clone(),
                payload_sha256: p.row.payload_sha256,
                signed_at: p.row.signed_at.clone(),
            }
        });
        let (key, rotates_version) = match entry.kind {
            EntryKind::Registration => registered_key_id(&entry.entry)
                .and_then(|id| by_key_id.get(id.as_str()))
                .map_or((None, None), |(k, v)| (Some((*k).clone()), *v)),
            EntryKind::Rotation => by_rotation
                .get(&entry.log_index)
                .map_or((None, None), |k| (Some((*k).clone()), Some(k.version))),
            _ => (None, None),
        };
        out.rows.push(QueueRow {
            kind: entry.kind,
            actor: entry.actor.clone(),
            entry: entry.entry.clone(),
            receipt,
            request: requests.get(&entry.log_index).cloned(),
            key,
            rotates_version,
        });
        locals.push(entry.log_index);
    }
    out.heads = heads.into_iter().collect();
    (out, locals)
}

/// The key id a registration entry's statement names.
fn registered_key_id(entry: &[u8]) -> Option<String> {
    let parts = crate::ledger::entry::decode(entry)?;
    let statement: serde_json::Value = serde_json::from_slice(&parts.payload).ok()?;
    statement["predicate"]["keyId"].as_str().map(str::to_owned)
}

/// The thread that answers once entries are integrated and published.
struct Waiter {
    node: FleetNode,
    log: LogIdentity,
    certificates: Arc<CertificateHistory>,
    conn: Option<(Client, Store)>,
    /// Batches queued: each with (local index, queue id) of its entries, and since when.
    batches: Vec<Queued>,
    follows: Vec<(Follow, Instant)>,
}

/// How often a waiter looks without a NOTIFY.
const POLL: Duration = Duration::from_millis(20);

impl Waiter {
    fn run(mut self, inbox: &mpsc::Receiver<Waiting>) {
        loop {
            let first = if self.batches.is_empty() && self.follows.is_empty() {
                match inbox.recv() {
                    Ok(w) => Some(w),
                    Err(_) => return,
                }
            } else {
                None
            };
            for waiting in first.into_iter().chain(inbox.try_iter()) {
                match waiting {
                    Waiting::Batch(b, ids, at) => self.batches.push((b, ids, at)),
                    Waiting::Follow(f, at) => self.follows.push((f, at)),
                }
            }
            if let Err(e) = self.settle() {
                tracing::warn!(error = %e, "fleet waiter: database unavailable; waiting");
                self.conn = None;
                thread::sleep(Duration::from_millis(100));
            }
            self.expire();
            self.wait_notify();
        }
    }

    fn conn(&mut self) -> Result<&mut (Client, Store), FleetError> {
        let conn = match self.conn.take() {
            Some(conn) => conn,
            None => {
                let mut client = crate::ledger::store::postgres::connect(&self.node.pg)?;
                client.batch_execute(&format!("LISTEN {}", fleet::CHANNEL_PUBLISHED))?;
                (client, fleet::open_store(&self.node.pg)?)
            }
        };
        Ok(self.conn.insert(conn))
    }

    fn wait_notify(&mut self) {
        if self.batches.is_empty() && self.follows.is_empty() {
            return;
        }
        if let Some((client, _)) = self.conn.as_mut() {
            let mut notifications = client.notifications();
            let mut it = notifications.timeout_iter(POLL);
            if let Ok(Some(_)) = it.next() {
                while let Ok(Some(_)) = it.next() {}
            }
        } else {
            thread::sleep(POLL);
        }
    }

    /// Answers every batch and retry whose entries are integrated and published: one query
    /// for where they went (and the published size), one for the checkpoints of the ready.
    fn settle(&mut self) -> Result<(), FleetError> {
        let ids: Vec<i64> = self
            .batches
            .iter()
            .flat_map(|(_, ids, _)| ids.iter().map(|(_, id)| *id))
            .chain(self.follows.iter().filter_map(|(f, _)| match f {
                Follow::Queued(id, _) => Some(*id),
                Follow::Integrated(..) => None,
            }))
            .collect();
        let (client, _) = self.conn()?;
        let (published, placed) = queue::settled(client, &ids)?;
        let refused = self.refused(&placed)?;
        let covered = |p: &Placed| p.log_index < published;
        let mut ready = Vec::new();
        for (batch, ids, at) in std::mem::take(&mut self.batches) {
            if ids.iter().any(|(_, id)| refused.contains(id)) {
                batch.answer(Err("the integrator refused an entry of this batch (see its log); nothing in it was acknowledged"));
            } else if ids
                .iter()
                .all(|(_, id)| placed.get(id).is_some_and(covered))
            {
                let at_index: HashMap<u64, Placed> = ids
                    .iter()
                    .filter_map(|(local, id)| Some((*local, placed.get(id)?.clone())))
                    .collect();
                ready.push(((batch, ids, at), at_index));
            } else {
                self.batches.push((batch, ids, at));
            }
        }
        let checkpoints = match self.checkpoints_of(ready.iter().map(|(_, at_index)| at_index)) {
            Ok(checkpoints) => checkpoints,
            Err(e) => {
                // Integrated, but not answerable yet: kept for the next pass, never dropped
                // (a dropped batch would tell its callers the daemon stopped).
                self.batches
                    .extend(ready.into_iter().map(|(waiting, _)| waiting));
                return Err(e);
            }
        };
        for ((batch, ..), at_index) in ready {
            self.answer(*batch, &at_index, &checkpoints);
        }
        let follows = std::mem::take(&mut self.follows);
        for (follow, at) in follows {
            let index = match &follow {
                Follow::Queued(id, _) => placed.get(id).map(|p| p.log_index),
                Follow::Integrated(index, _) => Some(*index),
            };
            match (follow, index) {
                (follow, Some(index)) if index < published => match follow {
                    Follow::Queued(_, reply) | Follow::Integrated(_, reply) => {
                        let _ = reply.send(self.stored(index));
                    }
                },
                (follow, _) => self.follows.push((follow, at)),
            }
        }
        Ok(())
    }

    /// Queue ids of batches waiting over a second that are neither queued nor integrated:
    /// the integrator refused them.
    fn refused(&mut self, placed: &HashMap<i64, Placed>) -> Result<Vec<i64>, FleetError> {
        let old: Vec<i64> = self
            .batches
            .iter()
            .filter(|(_, _, at)| at.elapsed() > Duration::from_secs(1))
            .flat_map(|(_, ids, _)| ids.iter().map(|(_, id)| *id))
            .filter(|id| !placed.contains_key(id))
            .collect();
        if old.is_empty() {
            return Ok(Vec::new());
        }
        let (client, _) = self.conn()?;
        // Gone from the queue and (asked after that) not integrated: refused.
        let waiting = queue::still_queued(client, &old)?;
        let gone: Vec<i64> = old.into_iter().filter(|id| !waiting.contains(id)).collect();
        let integrated_since = queue::integrated(client, &gone)?;
        Ok(gone
            .into_iter()
            .filter(|id| !integrated_since.contains_key(id))
            .collect())
    }

    /// The checkpoints the ready batches' receipts are proved against, each checked once.
    fn checkpoints_of<'a>(
        &mut self,
        ready: impl Iterator<Item = &'a HashMap<u64, Placed>>,
    ) -> Result<HashMap<u64, CheckpointRow>, FleetError> {
        let mut sizes: Vec<u64> = ready
            .flat_map(|at| at.values().filter_map(|p| Some(p.proof.as_ref()?.0)))
            .collect();
        if sizes.is_empty() {
            return Ok(HashMap::new());
        }
        sizes.sort_unstable();
        sizes.dedup();
        let log = self.log.clone();
        let (client, _) = self.conn()?;
        let mut found = queue::checkpoints(client, &sizes)?;
        found.retain(|size, checkpoint| {
            let checked = bundles::check_checkpoint(&log, *size, checkpoint);
            if let Err(e) = &checked {
                tracing::error!(error = %e, size, "a stored checkpoint does not verify");
            }
            checked.is_ok()
        });
        Ok(found)
    }

    fn stored(&mut self, index: u64) -> Result<SignedReceipt, SequencerError> {
        let certificates = self.certificates.get();
        let log = self.log.clone();
        let (_, store) = self.conn().map_err(to_sequencer)?;
        bundles::stored(store, &log, &certificates, index, None)?
            .ok_or_else(|| SequencerError::NotStored(format!("log entry {index} is not a receipt")))
    }

    /// Answers a batch: each receipt's bundle built from what this node signed and the
    /// integrator's proof (`bundles::proven_bundle_json`, as `bundles::stored` builds it);
    /// from the store if that cannot be done.
    fn answer(
        &mut self,
        mut batch: CommitBatch,
        at_index: &HashMap<u64, Placed>,
        checkpoints: &HashMap<u64, CheckpointRow>,
    ) {
        let certificates = self.certificates.get();
        let entries: HashMap<u64, &[u8]> = batch
            .batch
            .entries
            .iter()
            .map(|e| (e.log_index, e.entry.as_slice()))
            .collect();
        let mut shared = bundles::SharedParts::default();
        let mut answers = Vec::with_capacity(batch.receipts.len());
        for pending in &batch.receipts {
            let Some(placed) = at_index.get(&pending.row.log_index) else {
                answers.push(None);
                continue;
            };
            let built = entries
                .get(&pending.row.log_index)
                .ok_or_else(|| "its entry is not in its batch".to_owned())
                .and_then(|entry| {
                    from_parts(
                        &mut shared,
                        pending,
                        entry,
                        placed,
                        checkpoints,
                        &self.log,
                        &certificates,
                    )
                });
            let answer = match built {
                Ok(bundle) => Ok(bundle),
                Err(why) => {
                    tracing::warn!(log_index = placed.log_index, reason = %why,
                        "fleet answer not built from its parts; reading it from the store");
                    self.stored(placed.log_index).map(|s| s.bundle_json)
                }
            };
            match answer {
                Ok(bundle) => answers.push(Some((placed.log_index, bundle))),
                Err(e) => {
                    let message =
                        format!("integrated at {}, but its bundle: {e}", placed.log_index);
                    tracing::error!(error = %message, "cannot answer a fleet batch");
                    batch.answer(Err(&message));
                    return;
                }
            }
        }
        for (pending, answer) in batch.receipts.iter_mut().zip(answers) {
            if let Some((index, bundle)) = answer {
                pending.bundle_json = bundle;
                pending.row.log_index = index;
            }
        }
        batch.answer(Ok(()));
    }

    /// Answers UNAVAILABLE what waited longer than the bound: it stays queued and will be
    /// integrated; a retry with the same request id gets it then.
    fn expire(&mut self) {
        let bound = self.node.settings.answer_timeout;
        let message = "queued but not yet integrated (no integrator holds the lease?); retry with the same request id";
        let (late, on): (Vec<_>, Vec<_>) = std::mem::take(&mut self.batches)
            .into_iter()
            .partition(|(_, _, at)| at.elapsed() > bound);
        self.batches = on;
        for (batch, _, _) in late {
            batch.answer_pending(message);
        }
        let (late, on): (Vec<_>, Vec<_>) = std::mem::take(&mut self.follows)
            .into_iter()
            .partition(|(_, at)| at.elapsed() > bound);
        self.follows = on;
        for (follow, _) in late {
            let (Follow::Queued(_, reply) | Follow::Integrated(_, reply)) = follow;
            let _ = reply.send(Err(SequencerError::Pending(message.into())));
        }
    }
}

/// A receipt's bundle from what its node signed (envelope, key, lineage, time, entry) and
/// where the integrator placed it (index, proof, checkpoint).
fn from_parts(
    shared: &mut bundles::SharedParts,
    pending: &super::PendingReceipt,
    entry: &[u8],
    placed: &Placed,
    checkpoints: &HashMap<u64, CheckpointRow>,
    log: &LogIdentity,
    certificates: &crate::pki::device::DeviceCertificates,
) -> Result<String, String> {
    let (size, proof) = placed
        .proof
        .as_ref()
        .ok_or("integrated without its receipt row")?;
    let checkpoint = checkpoints
        .get(size)
        .ok_or("the checkpoint of its proof is missing or does not verify")?;
    let parts = bundles::ReceiptParts {
        entry,
        receipt: (&pending.envelope, pending.batch.as_ref()),
        key: bundles::SigningKey {
            record: &pending.key.record,
            lineage: &pending.key.lineage,
        },
        signed_at: pending.signed_at_unix,
    };
    let inclusion = bundles::Inclusion {
        log_index: placed.log_index,
        tree_size: *size,
        proof,
        checkpoint_note: &checkpoint.note,
    };
    shared
        .proven_bundle_json(&parts, log, inclusion, &checkpoint.root, certificates)
        .map_err(|e| e.to_string())
}

fn to_sequencer(e: FleetError) -> SequencerError {
    match e {
        FleetError::Store(s) => SequencerError::Store(s),
        other => SequencerError::Pending(other.to_string()),
    }
}

/// The sequencer thread's own fleet queries: who owns an actor, which actors are this
/// node's, whether a request id is queued.
pub(super) struct Link {
    pub node: FleetNode,
    client: Option<Client>,
}

impl Link {
    pub fn new(node: FleetNode) -> Self {
        Link { node, client: None }
    }

    fn with<T>(
        &mut self,
        f: impl FnOnce(&mut Client, &str) -> Result<T, FleetError>,
    ) -> Result<T, SequencerError> {
        let client = match self.client.take() {
            Some(client) => client,
            None => crate::ledger::store::postgres::connect(&self.node.pg)?,
        };
        let client = self.client.insert(client);
        f(client, &self.node.settings.node).map_err(|e| {
            if matches!(e, FleetError::Unavailable(_)) {
                self.client = None;
            }
            match e {
                FleetError::Store(s) => SequencerError::Store(s),
                // Retried by the sequencer once the database answers (`reload_after_outage`).
                FleetError::Unavailable(m) => SequencerError::Store(StoreError::Unavailable(m)),
                other => SequencerError::NotStored(other.to_string()),
            }
        })
    }

    pub fn owner(&mut self, actor: &str) -> Result<Option<String>, SequencerError> {
        self.with(|c, _| queue::owner(c, actor))
    }

    pub fn own_actors(
        &mut self,
    ) -> Result<HashMap<String, Option<crate::ledger::ActorHead>>, SequencerError> {
        self.with(queue::own_actors)
    }

    pub fn own_actor_head(
        &mut self,
        actor: &str,
    ) -> Result<Option<crate::ledger::ActorHead>, SequencerError> {
        self.with(|c, node| queue::own_actor_head(c, node, actor))
    }

    pub fn queued_request(&mut self, id: &str) -> Result<Option<(i64, [u8; 32])>, SequencerError> {
        self.with(|c, node| queue::queued_request(c, node, id))
    }

    /// Handovers this node queued and the integrator has not yet taken (`handover.rs`).
    pub fn handing_over(&mut self) -> Result<Vec<(String, String, u32)>, SequencerError> {
        self.with(fleet::handover::queued_by)
    }

    /// Whether this node has a rotation of `actor` queued (`fleet::handover::rotation_queued`).
    pub fn rotation_queued(&mut self, actor: &str) -> Result<bool, SequencerError> {
        self.with(|c, node| fleet::handover::rotation_queued(c, node, actor))
    }
}
