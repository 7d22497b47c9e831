//! The sequencer: the one place where log entries get their index, receipts their per-actor
//! sequence number and previous-receipt digest, and where the log grows.
//!
//! It is a single thread that owns the write connection. Commands that arrive while it works
//! are taken as a batch: each is signed in order and appended to the Merkle tree, then the
//! log key signs a checkpoint of the new tree, every receipt of the batch gets its inclusion
//! proof against it, and the whole batch is committed in one transaction before any caller
//! is answered (group commit). Ordering is never in doubt, an fsync and a checkpoint
//! signature are shared by the batch, and nobody is told "signed" before it is on disk.

use std::{collections::HashMap, sync::Arc, thread};

use base64::{Engine, engine::general_purpose::STANDARD as B64};
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot};

use super::{
    bundles,
    clock::{self, ClockError, EntryClock},
    validate::ValidAction,
};
use crate::{
    backend::{Backend, BackendError, HardwareKey},
    ledger::{
        ActorHead, Batch, CheckpointRow, EntryKind, EntryRow, KeyChange, KeyRecord, KeyState,
        ReceiptRow, Store, StoreError,
        checkpoint::Checkpoint,
        entry,
        head::{LogHead, PreviousLog},
        merkle::{self, Frontier, Hash, MerkleError, NodeReader},
    },
    pki::device::CertificateHistory,
    proof::{
        IN_TOTO_PAYLOAD_TYPE,
        bundle::LogKeyInBundle,
        dsse::{Envelope, signing_digest},
        lineage::{
            EncodeError, KeyDisposition, Lineage, Registration, ReplacedLog, VersionRef,
            log_start_payload, registration_payload, retirement_payload, rotation_payload,
        },
        receipt::{
            self, Action, CallerInReceipt, KeyRefInReceipt, ReceiptPredicate, ReceiptStatement,
        },
        spki_der,
    },
};

/// Why nothing is signed while no device certificate is valid.
pub const NO_CERTIFICATE: &str = "no installed device certificate is valid now, so nothing signed \
    would verify; the operator must install a renewed one (actseal device install)";

/// Most commands taken into one batch (one commit, one checkpoint).
const MAX_BATCH: usize = 256;

/// The log's identity: its origin and the hardware key that signs its checkpoints.
#[derive(Debug, Clone)]
pub struct LogIdentity {
    pub origin: String,
    pub key: HardwareKey,
    pub key_id: String,
    pub lineage: Lineage,
}

impl LogIdentity {
    pub fn spki_der(&self) -> Vec<u8> {
        spki_der(&self.key.public_key)
    }

    pub fn in_bundle(&self) -> LogKeyInBundle {
        LogKeyInBundle {
            key_name: self.origin.clone(),
            key_id: self.key_id.clone(),
            public_key: B64.encode(self.spki_der()),
            lineage: self.lineage.clone(),
        }
    }
}

/// A signed and durably stored receipt.
#[derive(Debug, Clone)]
pub struct SignedReceipt {
    pub bundle_json: String,
    pub log_index: u64,
    pub sequence: u64,
    pub key_id: String,
}

#[derive(Debug, thiserror::Error)]
pub enum SequencerError {
    #[error("actor {0:?} has no key")]
    UnknownActor(String),
    #[error("{0}")]
    Precondition(String),
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("log: {0}")]
    Log(#[from] MerkleError),
    #[error("checkpoint: {0}")]
    Checkpoint(#[from] crate::ledger::checkpoint::CheckpointError),
    #[error("nothing was stored: {0}")]
    NotStored(String),
    #[error("nothing was stored: {0}")]
    Encode(#[from] EncodeError),
    #[error("{0}")]
    Halted(String),
    /// No installed device certificate is valid now: what would be signed could not verify.
    #[error("{0}")]
    Uncertified(String),
    #[error(transparent)]
    Clock(#[from] ClockError),
    #[error("the sequencer has stopped")]
    Stopped,
}

/// A rotation prepared by the key service: the new version, attested, with its lineage up to
/// the previous version. The sequencer has the previous version sign the rotation statement.
#[derive(Debug)]
pub struct RotationPlan {
    /// The admin caller who asked, recorded in the new version's registration.
    pub requested_by: CallerInReceipt,
    pub previous_version: u32,
    pub new_key: KeyRecord,
}

type Reply<T> = oneshot::Sender<Result<T, SequencerError>>;

enum Command {
    Sign(ValidAction, Option<String>, Reply<SignedReceipt>),
    RegisterKey(Box<KeyRecord>, CallerInReceipt, Reply<()>),
    Rotate(Box<RotationPlan>, Reply<()>),
    Retire(String, u32, KeyDisposition, Reply<()>),
}

/// Where an actor's next receipt goes. `key` is `None` once the actor's key is retired.
struct ActorChain {
    key: Option<ActiveKey>,
    head: Option<ActorHead>,
}

/// An actor's version in service, with the lineage its bundles carry, assembled once when
/// the version comes into service rather than for every receipt.
#[derive(Clone)]
struct ActiveKey {
    record: Arc<KeyRecord>,
    lineage: Arc<Lineage>,
}

/// The handle the gRPC services use.
#[derive(Clone)]
pub struct SequencerHandle {
    tx: mpsc::Sender<Command>,
}

impl SequencerHandle {
    async fn call<T>(&self, make: impl FnOnce(Reply<T>) -> Command) -> Result<T, SequencerError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(make(reply))
            .await
            .map_err(|_| SequencerError::Stopped)?;
        answer.await.map_err(|_| SequencerError::Stopped)?
    }

    /// Signs an action; with a request id, a retry returns the first answer.
    pub async fn sign(
        &self,
        action: ValidAction,
        request_id: Option<String>,
    ) -> Result<SignedReceipt, SequencerError> {
        self.call(|reply| Command::Sign(action, request_id, reply))
            .await
    }

    /// Registers an actor's first key version: a log entry naming the admin who asked.
    pub async fn register_key(
        &self,
        key: KeyRecord,
        requested_by: CallerInReceipt,
    ) -> Result<(), SequencerError> {
        self.call(|reply| Command::RegisterKey(Box::new(key), requested_by, reply))
            .await
    }

    /// Retires the previous version and makes the new one active; a log entry.
    pub async fn rotate(&self, plan: RotationPlan) -> Result<(), SequencerError> {
        self.call(|reply| Command::Rotate(Box::new(plan), reply))
            .await
    }

    /// Retires an actor's active version and destroys (or keeps) its key; a log entry signed
    /// by the log key that says which.
    pub async fn retire(
        &self,
        actor: String,
        version: u32,
        disposition: KeyDisposition,
    ) -> Result<(), SequencerError> {
        self.call(|reply| Command::Retire(actor, version, disposition, reply))
            .await
    }
}

/// Most tree nodes kept in memory; past it the cache starts afresh (recent nodes, which new
/// receipts' proofs mostly need, come back at once).
const NODE_CACHE_LIMIT: usize = 1 << 18;

/// Tree nodes written by the batch in flight, over a cache of nodes recently written or
/// read, over those stored: proofs for new receipts rarely touch SQLite.
struct Overlay<'a> {
    store: &'a Store,
    staged: &'a HashMap<(u8, u64), Hash>,
    cache: &'a std::cell::RefCell<HashMap<(u8, u64), Hash>>,
}

impl NodeReader for Overlay<'_> {
    fn node(&self, level: u8, index: u64) -> Result<Hash, MerkleError> {
        if let Some(hash) = self.staged.get(&(level, index)) {
            return Ok(*hash);
        }
        if let Some(hash) = self.cache.borrow().get(&(level, index)) {
            return Ok(*hash);
        }
        let hash = NodeReader::node(self.store, level, index)?;
        self.cache.borrow_mut().insert((level, index), hash);
        Ok(hash)
    }
}

/// A receipt signed in this batch, waiting for its inclusion proof and the commit.
struct PendingReceipt {
    row: ReceiptRow,
    envelope: Envelope,
    key: ActiveKey,
    signed_at_unix: i64,
    bundle_json: String,
    reply: Option<Reply<SignedReceipt>>,
}

/// What one batch has staged so far.
#[derive(Default)]
struct Staged {
    batch: Batch,
    nodes: HashMap<(u8, u64), Hash>,
    receipts: Vec<PendingReceipt>,
    /// Retries of a request made earlier in the same batch: (log index, reply).
    followers: Vec<(u64, Reply<SignedReceipt>)>,
    requests: HashMap<String, ([u8; 32], u64)>,
    key_replies: Vec<Reply<()>>,
}

struct Sequencer {
    store: Store,
    backend: Arc<dyn Backend>,
    log: LogIdentity,
    /// The device certificates bundles carry, one in force at each receipt's signedAt.
    certificates: Arc<CertificateHistory>,
    actors: HashMap<String, ActorChain>,
    frontier: Frontier,
    /// How long a batch waits for more commands after its first (0: take what is waiting).
    batch_window: std::time::Duration,
    /// Set when the in-memory state can no longer be trusted; every command is refused.
    halted: Option<String>,
    /// Committed tree nodes recently written or read (never uncommitted ones).
    node_cache: std::cell::RefCell<HashMap<(u8, u64), Hash>>,
    /// Dates entries so that times never decrease in log order.
    clock: EntryClock,
    /// The log head record the hardware holds (`None`: the backend keeps none). Rewritten
    /// after every commit, before anyone is answered.
    head: Option<LogHead>,
    /// A commit went through but the record could not be rewritten: it is behind the store.
    head_behind: bool,
}

/// Starts the sequencer thread on `store`. It stops when every handle is dropped.
pub fn start(
    store: Store,
    backend: Arc<dyn Backend>,
    log: LogIdentity,
    certificates: Arc<CertificateHistory>,
    batch_window: std::time::Duration,
    clock: EntryClock,
    head: Option<LogHead>,
) -> Result<(SequencerHandle, thread::JoinHandle<()>), SequencerError> {
    let begin = head.and_then(|h| h.previous.filter(|_| h.size == 0));
    let mut sequencer = Sequencer {
        store,
        backend,
        log,
        certificates,
        batch_window,
        clock,
        halted: None,
        actors: HashMap::new(),
        frontier: Frontier::default(),
        node_cache: std::cell::RefCell::new(HashMap::new()),
        head,
        head_behind: false,
    };
    sequencer.reload()?;
    if let Some(previous) = begin
        && sequencer.frontier.size() == 0
    {
        sequencer.begin_log(previous)?;
    }
    let (tx, rx) = mpsc::channel(1024);
    let thread = thread::Builder::new()
        .name("actseal-sequencer".into())
        .spawn(move || sequencer.run(rx))
        .map_err(|e| SequencerError::NotStored(format!("cannot start sequencer thread: {e}")))?;
    Ok((SequencerHandle { tx }, thread))
}

/// A key's createdAt (its lineage's), a floor for the time of every entry it signs.
fn created_at(key: &KeyRecord) -> Result<i64, SequencerError> {
    clock::parse_rfc3339(&key.created_at).ok_or_else(|| {
        SequencerError::Store(StoreError::Corrupt(format!(
            "key {} has an unreadable createdAt {:?}",
            key.key_id, key.created_at
        )))
    })
}

fn receipt_answer(pending: &PendingReceipt) -> SignedReceipt {
    SignedReceipt {
        bundle_json: pending.bundle_json.clone(),
        log_index: pending.row.log_index,
        sequence: pending.row.sequence,
        key_id: pending.row.key_id.clone(),
    }
}

impl Sequencer {
    /// Rebuilds the in-memory state from the database, the source of truth.
    fn reload(&mut self) -> Result<(), SequencerError> {
        let heads = self.store.actor_heads()?;
        let mut actors: HashMap<String, ActorChain> = HashMap::new();
        for key in self.store.keys(None)? {
            let chain = actors.entry(key.actor.clone()).or_insert(ActorChain {
                key: None,
                head: heads.get(&key.actor).copied(),
            });
            if key.state == KeyState::Active {
                let lineage = Arc::new(bundles::lineage(
                    &self.store,
                    &key,
                    &self.certificates.get(),
                )?);
                chain.key = Some(ActiveKey {
                    record: Arc::new(key),
                    lineage,
                });
            }
        }
        let size = self.store.next_log_index()?;
        let frontier = Frontier::from_reader(&self.store, size)?;
        let newest_time = clock::newest_entry_time(&self.store, size)?;
        // Swapped in only once all of it was read: never a half-rebuilt state.
        self.actors = actors;
        self.frontier = frontier;
        self.clock.resume(newest_time);
        self.node_cache.borrow_mut().clear();
        Ok(())
    }

    fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        while let Some(first) = rx.blocking_recv() {
            let mut commands = vec![first];
            let deadline = std::time::Instant::now() + self.batch_window;
            while commands.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(command) => commands.push(command),
                    Err(mpsc::error::TryRecvError::Empty)
                        if std::time::Instant::now() < deadline =>
                    {
                        // Fewer, larger batches: fewer checkpoints and commits, more latency.
                        thread::sleep(std::time::Duration::from_micros(200));
                    }
                    Err(_) => break,
                }
            }
            let mut staged = Staged::default();
            for command in commands {
                self.stage(&mut staged, command);
            }
            self.finish(staged);
        }
        tracing::debug!("sequencer stopped");
    }

    fn stage(&mut self, staged: &mut Staged, command: Command) {
        if let Some(reason) = &self.halted {
            let error = SequencerError::Halted(reason.clone());
            match command {
                Command::Sign(_, _, reply) => {
                    let _ = reply.send(Err(error));
                }
                Command::RegisterKey(_, _, reply)
                | Command::Rotate(_, reply)
                | Command::Retire(_, _, _, reply) => {
                    let _ = reply.send(Err(error));
                }
            }
            return;
        }
        match command {
            Command::Sign(action, request_id, reply) => {
                if let Err(e) = self.stage_sign(staged, &action, request_id, reply) {
                    // stage_sign answers on success paths itself; errors come back here.
                    let (e, reply) = *e;
                    let _ = reply.send(Err(e));
                }
            }
            Command::RegisterKey(key, by, reply) => match self.stage_register(staged, *key, &by) {
                Ok(()) => staged.key_replies.push(reply),
                Err(e) => {
                    let _ = reply.send(Err(e));
                }
            },
            Command::Rotate(plan, reply) => match self.stage_rotate(staged, *plan) {
                Ok(()) => staged.key_replies.push(reply),
                Err(e) => {
                    let _ = reply.send(Err(e));
                }
            },
            Command::Retire(actor, version, disposition, reply) => {
                match self.stage_retire(staged, &actor, version, disposition) {
                    Ok(()) => staged.key_replies.push(reply),
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                }
            }
        }
    }

    /// Appends an entry to the tree in memory and stages its row and nodes.
    fn append_entry(
        &mut self,
        staged: &mut Staged,
        kind: EntryKind,
        actor: &str,
        bytes: Vec<u8>,
    ) -> u64 {
        let index = self.frontier.size();
        for (level, node_index, hash) in self.frontier.append(merkle::leaf_hash(&bytes)) {
            staged.nodes.insert((level, node_index), hash);
            staged.batch.nodes.push((level, node_index, hash));
        }
        staged.batch.entries.push(EntryRow {
            log_index: index,
            kind,
            actor: actor.to_owned(),
            entry: bytes,
        });
        index
    }

    #[allow(clippy::type_complexity)]
    fn stage_sign(
        &mut self,
        staged: &mut Staged,
        action: &ValidAction,
        request_id: Option<String>,
        reply: Reply<SignedReceipt>,
    ) -> Result<(), Box<(SequencerError, Reply<SignedReceipt>)>> {
        macro_rules! fail {
            ($e:expr) => {
                return Err(Box::new(($e, reply)))
            };
        }
        let fingerprint = action.fingerprint();
        if let Some(id) = &request_id {
            let earlier = match staged.requests.get(id).copied() {
                Some(found) => Some(found),
                None => match self.store.request(id) {
                    Ok(found) => found,
                    Err(e) => fail!(e.into()),
                },
            };
            if let Some((earlier_fingerprint, index)) = earlier {
                if earlier_fingerprint != fingerprint {
                    fail!(SequencerError::Conflict(format!(
                        "request_id {id:?} was used for a different request"
                    )));
                }
                if staged.receipts.iter().any(|p| p.row.log_index == index) {
                    staged.followers.push((index, reply));
                    return Ok(());
                }
                match bundles::stored(
                    &self.store,
                    &self.log,
                    &self.certificates.get(),
                    index,
                    None,
                ) {
                    Ok(Some(answer)) => {
                        // A stored answer is an acknowledgement too: the request must be
                        // the one that receipt answered, and the hardware's head cover it.
                        if let Err(e) = self
                            .check_retry(index, &fingerprint)
                            .and_then(|()| self.sync_head())
                        {
                            fail!(e)
                        }
                        let _ = reply.send(Ok(answer));
                        return Ok(());
                    }
                    Ok(None) => fail!(SequencerError::Store(StoreError::Corrupt(format!(
                        "request {id:?} names missing receipt {index}"
                    )))),
                    Err(e) => fail!(e.into()),
                }
            }
        }
        let Some(chain) = self.actors.get(&action.actor) else {
            fail!(SequencerError::UnknownActor(action.actor.clone()))
        };
        let Some(active) = chain.key.clone() else {
            fail!(SequencerError::Precondition(format!(
                "actor {:?} has no active key: it was retired",
                action.actor
            )))
        };
        let key = Arc::clone(&active.record);
        let sequence = chain.head.map_or(1, |h| h.sequence + 1);
        let previous_receipt = chain.head.map(|h| receipt::Digest {
            sha256: hex::encode(h.payload_sha256),
        });
        let log_index = self.frontier.size();
        let signed_at =
            match created_at(&key).and_then(|c| self.clock.next(&[c]).map_err(Into::into)) {
                Ok(time) => time,
                Err(e) => fail!(e),
            };
        let signed_at_unix = match self.certified_at(&signed_at) {
            Ok(at) => at,
            Err(e) => fail!(e),
        };
        let payload = ReceiptStatement::new(
            &action.document_sha256,
            ReceiptPredicate {
                actor: action.actor.clone(),
                key: KeyRefInReceipt {
                    id: key.key_id.clone(),
                    version: key.version,
                    backend: key.backend.as_str().into(),
                },
                action: Action {
                    action_type: action.action_type.clone(),
                    target: action.target.clone(),
                    parent_sha256: action.parent_sha256.map(hex::encode),
                },
                context: action.context.clone(),
                caller: (*action.caller).clone(),
                signed_at: signed_at.clone(),
                sequence,
                previous_receipt,
                log_index,
                mode: "single".into(),
            },
        )
        .to_payload();
        let payload = match payload {
            Ok(payload) => payload,
            Err(e) => fail!(e.into()),
        };
        let hardware_key = HardwareKey {
            key_ref: key.key_ref.clone(),
            public_key: key.public_key,
        };
        let signature = match self.backend.sign_digest(
            &hardware_key,
            &signing_digest(IN_TOTO_PAYLOAD_TYPE, &payload),
        ) {
            Ok(signature) => signature,
            Err(e) => fail!(e.into()),
        };
        let envelope = Envelope::new(IN_TOTO_PAYLOAD_TYPE, &payload, &key.key_id, &signature);
        let bytes = match entry::encode(&envelope) {
            Ok(bytes) => bytes,
            Err(e) => fail!(SequencerError::NotStored(format!("entry encoding: {e}"))),
        };
        let appended = self.append_entry(staged, EntryKind::Receipt, &action.actor, bytes);
        debug_assert_eq!(appended, log_index);

        let payload_sha256: [u8; 32] = Sha256::digest(&payload).into();
        if let Some(chain) = self.actors.get_mut(&action.actor) {
            chain.head = Some(ActorHead {
                sequence,
                payload_sha256,
            });
        }
        if let Some(id) = request_id {
            staged.requests.insert(id.clone(), (fingerprint, log_index));
            staged.batch.requests.push((id, fingerprint, log_index));
        }
        staged.receipts.push(PendingReceipt {
            row: ReceiptRow {
                log_index,
                actor: action.actor.clone(),
                sequence,
                key_id: key.key_id.clone(),
                payload_sha256,
                signed_at,
                // Filled in once the batch's checkpoint is signed.
                proof_size: 0,
                proof: Vec::new(),
            },
            envelope,
            key: active,
            signed_at_unix,
            bundle_json: String::new(),
            reply: Some(reply),
        });
        Ok(())
    }

    /// The Unix time of `at` if an installed device certificate is valid then: a receipt or
    /// rotation dated when none is could never verify, so it is not signed.
    fn certified_at(&self, at: &str) -> Result<i64, SequencerError> {
        let unix = bundles::unix(at)
            .ok_or_else(|| SequencerError::NotStored(format!("unreadable time {at:?}")))?;
        if self.certificates.covering(unix).in_force(unix).is_none() {
            return Err(SequencerError::Uncertified(NO_CERTIFICATE.into()));
        }
        Ok(unix)
    }

    fn check_new_key(&self, staged: &Staged, key: &KeyRecord) -> Result<(), SequencerError> {
        let taken = self.store.key_id_registered(&key.key_id)?
            || staged.batch.keys.iter().any(|change| match change {
                KeyChange::Insert(k) | KeyChange::Rotated { key: k, .. } => k.key_id == key.key_id,
                KeyChange::Retire { .. } => false,
            })
            || key.key_id == self.log.key_id;
        if taken {
            return Err(SequencerError::Conflict(format!(
                "key {} is registered already",
                key.key_id
            )));
        }
        Ok(())
    }

    /// Has the log key sign a key version's registration (FORMAT.md §11.2) and appends it:
    /// the log, not the key table, says which key is whose.
    fn append_registration(
        &mut self,
        staged: &mut Staged,
        key: &KeyRecord,
        requested_by: &CallerInReceipt,
    ) -> Result<(), SequencerError> {
        let payload = registration_payload(&Registration {
            actor: &key.actor,
            version: key.version,
            key_id: &key.key_id,
            public_key: B64.encode(spki_der(&key.public_key)),
            backend: key.backend.as_str(),
            origin: key.origin,
            registered_at: &self.clock.next(&[created_at(key)?])?,
            requested_by,
            attestation: &key.attestation,
        })?;
        let bytes = self.log_key_entry(&payload)?;
        self.append_entry(staged, EntryKind::Registration, &key.actor, bytes);
        Ok(())
    }

    /// A statement signed by the log key, as a log entry.
    fn log_key_entry(&self, payload: &[u8]) -> Result<Vec<u8>, SequencerError> {
        let signature = self.backend.sign_digest(
            &self.log.key,
            &signing_digest(IN_TOTO_PAYLOAD_TYPE, payload),
        )?;
        let statement = Envelope::new(IN_TOTO_PAYLOAD_TYPE, payload, &self.log.key_id, &signature);
        entry::encode(&statement)
            .map_err(|e| SequencerError::NotStored(format!("entry encoding: {e}")))
    }

    fn stage_register(
        &mut self,
        staged: &mut Staged,
        key: KeyRecord,
        requested_by: &CallerInReceipt,
    ) -> Result<(), SequencerError> {
        if self.actors.contains_key(&key.actor) {
            return Err(SequencerError::Conflict(format!(
                "actor {:?} has a key already; rotate it instead",
                key.actor
            )));
        }
        self.check_new_key(staged, &key)?;
        self.append_registration(staged, &key, requested_by)?;
        let key = Arc::new(key);
        self.actors.insert(
            key.actor.clone(),
            ActorChain {
                key: Some(ActiveKey {
                    record: Arc::clone(&key),
                    lineage: Arc::new(super::keys::first_lineage(key.attestation.clone())),
                }),
                head: None,
            },
        );
        staged
            .batch
            .keys
            .push(KeyChange::Insert(Box::new((*key).clone())));
        Ok(())
    }

    fn active_version(&self, actor: &str, version: u32) -> Result<ActiveKey, SequencerError> {
        let chain = self
            .actors
            .get(actor)
            .ok_or_else(|| SequencerError::UnknownActor(actor.to_owned()))?;
        match &chain.key {
            Some(key) if key.record.version == version => Ok(key.clone()),
            Some(key) => Err(SequencerError::Precondition(format!(
                "actor {actor:?}: version {version} is not the active version (v{} is)",
                key.record.version
            ))),
            None => Err(SequencerError::Precondition(format!(
                "actor {actor:?} has no active key: it was retired"
            ))),
        }
    }

    fn stage_rotate(
        &mut self,
        staged: &mut Staged,
        plan: RotationPlan,
    ) -> Result<(), SequencerError> {
        let actor = plan.new_key.actor.clone();
        let active = self.active_version(&actor, plan.previous_version)?;
        let previous = &active.record;
        self.check_new_key(staged, &plan.new_key)?;
        self.append_registration(staged, &plan.new_key, &plan.requested_by)?;
        // Dated and signed here, in log order: every receipt before it is dated no later, and
        // neither version was created after it.
        let rotated_at = self
            .clock
            .next(&[created_at(previous)?, created_at(&plan.new_key)?])?;
        self.certified_at(&rotated_at)?;
        let payload = rotation_payload(
            &actor,
            VersionRef {
                version: previous.version,
                key_id: &previous.key_id,
            },
            VersionRef {
                version: plan.new_key.version,
                key_id: &plan.new_key.key_id,
            },
            plan.new_key.backend.as_str(),
            &rotated_at,
        )?;
        let previous_key = HardwareKey {
            key_ref: previous.key_ref.clone(),
            public_key: previous.public_key,
        };
        let signature = self.backend.sign_digest(
            &previous_key,
            &signing_digest(IN_TOTO_PAYLOAD_TYPE, &payload),
        )?;
        let statement = Envelope::new(IN_TOTO_PAYLOAD_TYPE, &payload, &previous.key_id, &signature);
        let bytes = entry::encode(&statement)
            .map_err(|e| SequencerError::NotStored(format!("entry encoding: {e}")))?;
        let lineage = bundles::successor_lineage(
            &active.lineage,
            previous,
            plan.new_key.attestation.clone(),
            (statement, &rotated_at),
            &self.certificates.get(),
        );
        let rotation_index = self.append_entry(staged, EntryKind::Rotation, &actor, bytes);
        staged.batch.keys.push(KeyChange::Retire {
            actor: actor.clone(),
            version: plan.previous_version,
            retired_at: rotated_at,
        });
        staged.batch.keys.push(KeyChange::Rotated {
            key: Box::new(plan.new_key.clone()),
            rotation_index,
        });
        if let Some(chain) = self.actors.get_mut(&actor) {
            chain.key = Some(ActiveKey {
                record: Arc::new(plan.new_key),
                lineage: Arc::new(lineage),
            });
        }
        Ok(())
    }

    fn stage_retire(
        &mut self,
        staged: &mut Staged,
        actor: &str,
        version: u32,
        disposition: KeyDisposition,
    ) -> Result<(), SequencerError> {
        let key = self.active_version(actor, version)?.record;
        let retired_at = self.clock.next(&[created_at(&key)?])?;
        let payload = retirement_payload(actor, version, &key.key_id, &retired_at, disposition)?;
        let bytes = self.log_key_entry(&payload)?;
        if disposition == KeyDisposition::Destroyed {
            // Before the entry is committed, so the log never says "destroyed" of a key that
            // still signs. Receipts staged earlier in this batch are signed already; if the
            // commit fails, the actor's key is gone but not retired, and a retried RetireKey
            // completes (a missing key counts as destroyed).
            match self.backend.destroy_key(&key.key_ref) {
                Ok(()) | Err(BackendError::KeyNotFound(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        self.append_entry(staged, EntryKind::Retirement, actor, bytes);
        staged.batch.keys.push(KeyChange::Retire {
            actor: actor.to_owned(),
            version,
            retired_at,
        });
        if let Some(chain) = self.actors.get_mut(actor) {
            chain.key = None;
        }
        Ok(())
    }

    /// Signs the batch's checkpoint, proves each receipt against it, commits, then answers.
    fn finish(&mut self, mut staged: Staged) {
        if staged.batch.is_empty() {
            return;
        }
        match self.seal(&mut staged) {
            Ok(()) => {
                for pending in &staged.receipts {
                    tracing::info!(
                        actor = %pending.row.actor,
                        sequence = pending.row.sequence,
                        log_index = pending.row.log_index,
                        key_id = %pending.row.key_id,
                        "receipt signed"
                    );
                }
                let answers: HashMap<u64, SignedReceipt> = staged
                    .receipts
                    .iter()
                    .map(|p| (p.row.log_index, receipt_answer(p)))
                    .collect();
                for pending in staged.receipts {
                    if let (Some(reply), Some(answer)) =
                        (pending.reply, answers.get(&pending.row.log_index))
                    {
                        let _ = reply.send(Ok(answer.clone()));
                    }
                }
                for (index, reply) in staged.followers {
                    let answer = answers
                        .get(&index)
                        .cloned()
                        .ok_or_else(|| SequencerError::NotStored("retry lost its original".into()));
                    let _ = reply.send(answer);
                }
                for reply in staged.key_replies {
                    let _ = reply.send(Ok(()));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "batch failed; nothing in it was acknowledged");
                let message = e.to_string();
                for pending in staged.receipts {
                    if let Some(reply) = pending.reply {
                        let _ = reply.send(Err(SequencerError::NotStored(message.clone())));
                    }
                }
                for (_, reply) in staged.followers {
                    let _ = reply.send(Err(SequencerError::NotStored(message.clone())));
                }
                for reply in staged.key_replies {
                    let _ = reply.send(Err(SequencerError::NotStored(message.clone())));
                }
                if let Err(e) = self.reload() {
                    // Memory is ahead of the database and cannot be brought back: signing on
                    // would leave gaps and forks. Refuse everything until a restart, whose
                    // start-up check starts from what is on disk.
                    tracing::error!(error = %e, "cannot reload state after a failed batch; the sequencer halts");
                    self.halted = Some(format!("the log is halted after a storage failure: {e}"));
                }
            }
        }
    }

    /// Rewrites the hardware's log head record after a commit of `requests` request ids: DB
    /// commit, then the record, then the answers (a crash between leaves the store ahead of
    /// the record, which the next start accepts and records).
    fn record_head(&mut self, requests: usize) -> Result<(), SequencerError> {
        let Some(head) = self.head else {
            return Ok(());
        };
        let size = self.frontier.size();
        let requests = if self.head_behind {
            self.store.request_count_below(size)?
        } else {
            head.requests + requests as u64
        };
        let next = LogHead {
            size,
            root: self.frontier.root(),
            requests,
            ..head
        };
        if let Err(e) = self.backend.write_log_head(&next.encode()) {
            self.head_behind = true;
            tracing::error!(error = %e, size, "cannot record the log head in the hardware; nothing of this batch is acknowledged");
            return Err(e.into());
        }
        self.head = Some(next);
        self.head_behind = false;
        Ok(())
    }

    /// Brings the record up to the store after a failed rewrite, before a stored answer
    /// goes out.
    fn sync_head(&mut self) -> Result<(), SequencerError> {
        if !self.head_behind {
            return Ok(());
        }
        let Some(head) = self.head else {
            return Ok(());
        };
        let size = self.store.next_log_index()?;
        let next = LogHead {
            size,
            root: merkle::root_at(&self.store, size)?,
            requests: self.store.request_count_below(size)?,
            ..head
        };
        self.backend.write_log_head(&next.encode())?;
        self.head = Some(next);
        self.head_behind = false;
        Ok(())
    }

    /// A stored receipt handed to a retry must be the one made for this request: a
    /// re-pointed request id would hand out another caller's bundle.
    fn check_retry(&self, index: u64, fingerprint: &[u8; 32]) -> Result<(), SequencerError> {
        let payload = self
            .store
            .entry(index)?
            .and_then(|bytes| entry::decode(&bytes))
            .map(|parts| parts.payload);
        match payload
            .as_deref()
            .and_then(super::validate::fingerprint_of_receipt)
        {
            Some(found) if found == *fingerprint => Ok(()),
            _ => Err(SequencerError::Store(StoreError::Corrupt(format!(
                "the request id names receipt {index}, which was made for another request"
            )))),
        }
    }

    /// The first entry of a log that replaces another (a declared fresh start): the new log
    /// key names the replaced log's head, and this is committed before anything is signed.
    fn begin_log(&mut self, previous: PreviousLog) -> Result<(), SequencerError> {
        let started_at = self.clock.next(&[])?;
        let payload = log_start_payload(
            &self.log.origin,
            &ReplacedLog {
                origin_sha256: hex::encode(previous.origin_sha256),
                log_key_id: hex::encode(previous.log_key_id),
                size: previous.size,
                root_hash: hex::encode(previous.root),
            },
            &started_at,
        )?;
        let bytes = self.log_key_entry(&payload)?;
        let mut staged = Staged::default();
        self.append_entry(&mut staged, EntryKind::LogStart, "", bytes);
        self.seal(&mut staged)?;
        tracing::warn!(origin = %self.log.origin, replaced_size = previous.size,
            replaced_log_key = %hex::encode(previous.log_key_id), "new log started; it records the replaced log's head");
        Ok(())
    }

    fn seal(&mut self, staged: &mut Staged) -> Result<(), SequencerError> {
        if !staged.batch.entries.is_empty() {
            let checkpoint = Checkpoint::new(
                self.log.origin.clone(),
                self.frontier.size(),
                self.frontier.root(),
            )?;
            let note = checkpoint.signed_note(
                &self.log.origin,
                &self.log.spki_der(),
                |digest| -> Result<_, SequencerError> {
                    Ok(self.backend.sign_digest(&self.log.key, digest)?)
                },
            )?;
            let certificates = self.certificates.get();
            let overlay = Overlay {
                store: &self.store,
                staged: &staged.nodes,
                cache: &self.node_cache,
            };
            for pending in &mut staged.receipts {
                let proof =
                    merkle::inclusion_proof(&overlay, pending.row.log_index, checkpoint.size())?;
                pending.bundle_json = bundles::bundle_json(
                    pending.envelope.clone(),
                    bundles::SigningKey {
                        record: &pending.key.record,
                        lineage: &pending.key.lineage,
                    },
                    &self.log,
                    bundles::Inclusion {
                        log_index: pending.row.log_index,
                        tree_size: checkpoint.size(),
                        proof: &proof,
                        checkpoint_note: note.clone(),
                    },
                    &certificates,
                    pending.signed_at_unix,
                )?;
                pending.row.proof_size = checkpoint.size();
                pending.row.proof = proof;
                staged.batch.receipts.push(pending.row.clone());
            }
            staged.batch.checkpoint = Some(CheckpointRow {
                size: checkpoint.size(),
                root: *checkpoint.root(),
                note,
            });
        }
        self.store.commit(&staged.batch)?;
        self.record_head(staged.batch.requests.len())?;
        let mut cache = self.node_cache.borrow_mut();
        if cache.len() > NODE_CACHE_LIMIT {
            cache.clear();
        }
        cache.extend(staged.nodes.drain());
        Ok(())
    }
}
