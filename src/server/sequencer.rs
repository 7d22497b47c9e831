//! The sequencer: the one place where log entries get their index, receipts their per-actor
//! sequence number and previous-receipt digest, and where the log grows.
//!
//! A pipeline of three stages, so that the one ordering thread does little but order:
//! - the sequencer thread takes the commands waiting as a batch and places each receipt: log
//!   index, sequence, previous receipt, time and payload, in arrival order. Batch-mode actors'
//!   requests first wait in their window (`window.rs`) and are then placed consecutively under
//!   one batch statement (`proof::batch`);
//! - the signing threads (`pool.rs`) make the batch's hardware signatures in parallel, each
//!   re-checked with `ring` before anything uses it, each call bounded by a timeout; the
//!   sequencer then appends the entries in order, has the log key sign the checkpoint
//!   (checked once), and proves each receipt against it;
//! - the commit thread (`commit.rs`) writes the batch in one transaction, rewrites the
//!   hardware's log head record, and only then answers the callers (group commit), while the
//!   sequencer already signs the next batch. The next batch is handed over only once this
//!   one is known to be stored; if it failed, the next one (staged on top of it) fails too
//!   and the state is rebuilt from the store. Nobody is told "signed" before it is on disk.

use std::{collections::HashMap, sync::Arc, thread};

use base64::{Engine, engine::general_purpose::STANDARD as B64};
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot};

mod commit;
mod fleet;
mod handover;
mod pool;
mod window;

pub use fleet::FleetNode;

pub use window::BatchRules;
use window::{Request, Windows};

use commit::{CommitBatch, Committer};
use p256::ecdsa::Signature;
use pool::{SignJob, SignPool};

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
        entry::{self, BatchSeal},
        head::{LogHead, PreviousLog},
        merkle::{self, Frontier, Hash, MerkleError, NodeReader},
    },
    pki::device::CertificateHistory,
    proof::{
        IN_TOTO_PAYLOAD_TYPE,
        batch::{BatchInBundle, BatchPredicate, BatchStatement, BatchTree},
        bundle::LogKeyInBundle,
        dsse::{Envelope, pae},
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
#[derive(Clone)]
pub struct LogIdentity {
    pub origin: String,
    pub key: HardwareKey,
    pub key_id: String,
    pub lineage: Lineage,
    /// The backend that holds the log key and the log head record: the `[log_token]`'s, or
    /// the actors' backend without one.
    pub backend: Arc<dyn Backend>,
}

impl std::fmt::Debug for LogIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogIdentity")
            .field("origin", &self.origin)
            .field("key", &self.key)
            .field("key_id", &self.key_id)
            .field("backend", &self.backend.kind())
            .finish_non_exhaustive()
    }
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
    /// In a fleet: queued (durably) but not yet integrated; a retry with the same request id
    /// gets the receipt once it is.
    #[error("{0}")]
    Pending(String),
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
    /// Fleet: the rotation to the target node's key (`handover.rs`), and the target.
    HandOver(Box<RotationPlan>, String, Reply<()>),
    /// Fleet: a handover that did not go through; the actor is served here again.
    Reclaim(String, Reply<()>),
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

    /// Fleet: hands the actor over to `target`, whose key the plan rotates to; answered once
    /// the rotation is integrated.
    pub async fn hand_over(
        &self,
        plan: RotationPlan,
        target: String,
    ) -> Result<(), SequencerError> {
        self.call(|reply| Command::HandOver(Box::new(plan), target, reply))
            .await
    }

    /// Fleet: serves an actor again whose handover failed, if it is still this node's.
    pub async fn reclaim(&self, actor: String) -> Result<(), SequencerError> {
        self.call(|reply| Command::Reclaim(actor, reply)).await
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
pub(super) struct PendingReceipt {
    row: ReceiptRow,
    envelope: Envelope,
    key: ActiveKey,
    signed_at_unix: i64,
    bundle_json: String,
    request_id: Option<String>,
    reply: Option<Reply<SignedReceipt>>,
    /// A batch receipt's member of its bundle.
    batch: Option<BatchInBundle>,
}

/// A receipt whose place is fixed (log index, sequence, previous receipt, time) and whose
/// payload is built, waiting for its hardware signature.
struct Prepared {
    action: ValidAction,
    /// The request id and the request's fingerprint.
    request: Option<(String, [u8; 32])>,
    reply: Reply<SignedReceipt>,
    key: ActiveKey,
    /// The actor's head before this receipt, restored should its signing fail.
    previous_head: Option<ActorHead>,
    row: ReceiptRow,
    signed_at_unix: i64,
    payload: Vec<u8>,
}

/// The receipts of one closed window, placed consecutively, with their tree and the
/// statement the actor key signs over its root.
struct PreparedBatch {
    receipts: Vec<Prepared>,
    tree: BatchTree,
    statement: Vec<u8>,
    key: ActiveKey,
}

/// What waits for one hardware signature: a single receipt or a batch statement.
// Few exist at once (one per receipt or batch of a batch), so the size is of no concern.
#[allow(clippy::large_enum_variant)]
enum Unsigned {
    Single(Prepared),
    Batch(PreparedBatch),
}

impl Unsigned {
    fn receipts(&self) -> &[Prepared] {
        match self {
            Unsigned::Single(prepared) => std::slice::from_ref(prepared),
            Unsigned::Batch(batch) => &batch.receipts,
        }
    }

    fn job(&self) -> SignJob {
        let (key, payload) = match self {
            Unsigned::Single(p) => (&p.key, &p.payload),
            Unsigned::Batch(b) => (&b.key, &b.statement),
        };
        SignJob::actor(
            hardware_key(&key.record),
            pae(IN_TOTO_PAYLOAD_TYPE, payload),
        )
    }

    fn into_receipts(self) -> Vec<Prepared> {
        match self {
            Unsigned::Single(prepared) => vec![prepared],
            Unsigned::Batch(batch) => batch.receipts,
        }
    }
}

/// What one batch has staged so far.
#[derive(Default)]
struct Staged {
    batch: Batch,
    nodes: HashMap<(u8, u64), Hash>,
    receipts: Vec<PendingReceipt>,
    /// Receipts placed in order but not yet signed; signed together, in parallel.
    unsigned: Vec<Unsigned>,
    /// Retries of a request made earlier in the same batch: (request id, reply).
    followers: Vec<(String, Reply<SignedReceipt>)>,
    requests: HashMap<String, ([u8; 32], u64)>,
    key_replies: Vec<Reply<()>>,
    /// The batch before failed to commit while this one was staged on top of it.
    poisoned: Option<String>,
}

impl Staged {
    /// Receipts placed but not yet signed.
    fn unsigned_len(&self) -> u64 {
        self.unsigned
            .iter()
            .map(|u| u.receipts().len() as u64)
            .sum()
    }

    fn into_commit(self, tree: (u64, Hash)) -> CommitBatch {
        CommitBatch {
            batch: self.batch,
            tree,
            receipts: self.receipts,
            followers: self.followers,
            key_replies: self.key_replies,
        }
    }
}

/// What the sequencer needs to know of a retry before it places a request.
enum Retry {
    /// A request never seen: place it.
    New(Reply<SignedReceipt>),
    /// Answered already (stored, or it waits for its original in this batch).
    Answered,
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
    /// The halt is only that the state database was unreachable (PostgreSQL restarting): the
    /// next batch tries to reload, and signing resumes once it can.
    unreachable: bool,
    /// Committed tree nodes recently written or read (never uncommitted ones).
    node_cache: std::cell::RefCell<HashMap<(u8, u64), Hash>>,
    /// Dates entries so that times never decrease in log order.
    clock: EntryClock,
    /// The signing threads: hardware calls with a timeout, each signature re-checked.
    pool: SignPool,
    /// The commit thread, which owns the write connection and the log head record.
    committer: Committer,
    /// Request ids of the batch handed to the committer and not yet known to be stored.
    in_flight_requests: HashMap<String, ([u8; 32], u64)>,
    batching: BatchRules,
    /// Batch-mode requests waiting for their window to close.
    windows: Windows,
    /// Fleet mode (`fleet.rs`): entries are queued for the integrator, not appended here.
    fleet: Option<std::cell::RefCell<fleet::Link>>,
    /// Fleet: actors handed over (or being handed over) to another node (`handover.rs`).
    moving: HashMap<String, handover::Moving>,
    /// Non-empty batches finished (sent to be committed, or failed): a handover's rotation
    /// is settled once its batch is finished and the commit stage idle.
    finished_batches: u64,
    /// Fleet: actors this node was named the owner of and refused to load (`handover.rs`),
    /// with when and why: re-checked at most once a second.
    load_refusals: HashMap<String, (std::time::Instant, String)>,
}

/// How the sequencer signs: its threads, their timeout, its batching.
#[derive(Debug, Clone)]
pub struct SigningSettings {
    /// How long a batch waits for more commands after its first (0: take what is waiting).
    pub batch_window: std::time::Duration,
    /// Threads that make hardware calls in parallel.
    pub threads: usize,
    /// A hardware call that takes longer is answered UNAVAILABLE.
    pub hardware_timeout: std::time::Duration,
    /// Which actors sign in batch mode.
    pub batching: BatchRules,
    /// Fleet mode: this node queues into a shared PostgreSQL log (`crate::fleet`).
    pub fleet: Option<FleetNode>,
}

/// Starts the sequencer thread on `store` (read) and its commit thread on `writer`. It stops
/// when every handle is dropped.
pub fn start(
    (store, writer): (Store, Store),
    backend: Arc<dyn Backend>,
    log: LogIdentity,
    certificates: Arc<CertificateHistory>,
    settings: SigningSettings,
    clock: EntryClock,
    head: Option<LogHead>,
) -> Result<(SequencerHandle, thread::JoinHandle<()>), SequencerError> {
    let begin = head.and_then(|h| h.previous.filter(|_| h.size == 0));
    let sink = settings
        .fleet
        .clone()
        .map(|node| fleet::Sink::start(node, log.clone(), Arc::clone(&certificates)))
        .transpose()?;
    let mut sequencer = Sequencer {
        store,
        pool: SignPool::new(
            Arc::clone(&backend),
            settings.threads,
            settings.hardware_timeout,
        ),
        committer: Committer::start(writer, Arc::clone(&log.backend), head, sink)?,
        backend,
        log,
        certificates,
        batch_window: settings.batch_window,
        clock,
        halted: None,
        unreachable: false,
        actors: HashMap::new(),
        frontier: Frontier::default(),
        node_cache: std::cell::RefCell::new(HashMap::new()),
        in_flight_requests: HashMap::new(),
        batching: settings.batching,
        windows: Windows::default(),
        fleet: settings
            .fleet
            .map(|node| std::cell::RefCell::new(fleet::Link::new(node))),
        moving: HashMap::new(),
        finished_batches: 0,
        load_refusals: HashMap::new(),
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

impl PendingReceipt {
    /// Its answer, the bundle moved rather than copied (a bundle is ~8 KB, and a batch's
    /// bundles are all alive at once until answered).
    fn into_answer(self) -> SignedReceipt {
        SignedReceipt {
            bundle_json: self.bundle_json,
            log_index: self.row.log_index,
            sequence: self.row.sequence,
            key_id: self.row.key_id,
        }
    }
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
        if self.fleet.is_some() {
            return self.reload_fleet();
        }
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

    /// [`reload`](Self::reload) in a fleet: this node's actors, their heads as queued (the
    /// chain continues from what this node signed, integrated or not), and a local
    /// numbering of entries: no receipt carries a log index, the integrator assigns them.
    fn reload_fleet(&mut self) -> Result<(), SequencerError> {
        let own = match &self.fleet {
            Some(link) => link.borrow_mut().own_actors()?,
            None => HashMap::new(),
        };
        let handing_over = match &self.fleet {
            Some(link) => link.borrow_mut().handing_over()?,
            None => Vec::new(),
        };
        let mut actors: HashMap<String, ActorChain> = HashMap::new();
        for (actor, head) in own {
            if handing_over.iter().any(|(a, ..)| *a == actor) {
                continue;
            }
            let keys = self.store.keys(Some(&actor))?;
            let active = keys.iter().find(|k| k.state == KeyState::Active);
            // Not served until the log shows how its key became active (refused on the
            // first Sign, `handover::load_moved`). Any other error fails the reload.
            if let Some(key) = active {
                match self.rotated_to(key) {
                    Ok(()) => {}
                    Err(SequencerError::Precondition(_)) => continue,
                    Err(e) => return Err(e),
                }
            }
            let mut chain = ActorChain { key: None, head };
            for key in keys {
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
            actors.insert(actor, chain);
        }
        let size = self.store.next_log_index()?;
        let newest_time = clock::newest_entry_time(&self.store, size)?;
        self.actors = actors;
        for (actor, target, version) in handing_over {
            self.moving
                .insert(actor, handover::Moving::settled(target, version));
        }
        self.frontier = Frontier::default();
        self.clock.resume(newest_time);
        self.node_cache.borrow_mut().clear();
        Ok(())
    }

    /// In a fleet: refuses what this node cannot do for `actor` (another node's actor, or a
    /// registration of an actor the fleet knows already).
    fn fleet_refusal(&mut self, command: &Command) -> Option<SequencerError> {
        self.fleet.as_ref()?;
        let actor = match command {
            Command::Sign(action, ..) => &action.actor,
            Command::RegisterKey(key, ..) => &key.actor,
            Command::Rotate(plan, _) | Command::HandOver(plan, ..) => &plan.new_key.actor,
            Command::Retire(actor, ..) => actor,
            Command::Reclaim(..) => return None,
        };
        if let Some(refusal) = self.handover_refusal(actor) {
            return Some(refusal);
        }
        let local = self.actors.contains_key(actor);
        if local && matches!(command, Command::Sign(..)) {
            return None;
        }
        let link = self.fleet.as_ref()?;
        let owner = link.borrow_mut().owner(actor);
        let node = link.borrow().node.settings.node.clone();
        match owner {
            Ok(Some(owner)) if owner != node => Some(SequencerError::Precondition(format!(
                "actor {actor:?} belongs to fleet node {owner:?}; sign there"
            ))),
            Ok(Some(_)) if matches!(command, Command::RegisterKey(..)) => {
                Some(SequencerError::Conflict(format!(
                    "actor {actor:?} has a key already; rotate it instead"
                )))
            }
            // This node's in the fleet but not served here: handed over to this node.
            Ok(Some(_)) if !local => {
                let actor = actor.clone();
                self.load_moved_at_most_once_a_second(&actor).err()
            }
            Ok(_) => None,
            Err(e) => Some(e),
        }
    }

    /// The next command, or `None` once the next window is due; `Err` once every handle
    /// is gone.
    fn next_command(
        &self,
        runtime: &tokio::runtime::Runtime,
        rx: &mut mpsc::Receiver<Command>,
    ) -> Result<Option<Command>, ()> {
        let received = match self.windows.next_deadline() {
            None => Some(runtime.block_on(rx.recv())),
            // Made inside the runtime: a timer needs its reactor.
            Some(deadline) => runtime
                .block_on(async { tokio::time::timeout_at(deadline.into(), rx.recv()).await })
                .ok(),
        };
        match received {
            Some(Some(command)) => Ok(Some(command)),
            Some(None) => Err(()),
            None => Ok(None),
        }
    }

    fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
        {
            Ok(runtime) => runtime,
            Err(e) => {
                tracing::error!(error = %e, "cannot start the sequencer's timer; it stops");
                return;
            }
        };
        while let Ok(first) = self.next_command(&runtime, &mut rx) {
            let mut commands: Vec<Command> = first.into_iter().collect();
            let deadline = std::time::Instant::now() + self.batch_window;
            while !commands.is_empty() && commands.len() < MAX_BATCH {
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
            if self.unreachable {
                self.reload_after_outage();
            }
            let mut staged = Staged::default();
            if let Err(message) = self.committer.poll() {
                // The batch before failed: start from what is on disk.
                self.recover(&message);
            }
            for command in commands {
                self.stage(&mut staged, command);
            }
            self.close_windows(&mut staged, false);
            self.finish(staged);
        }
        // Stopping: what waits in windows is signed and stored, not dropped.
        let mut staged = Staged::default();
        self.close_windows(&mut staged, true);
        self.finish(staged);
        tracing::debug!("sequencer stopped");
    }

    fn stage(&mut self, staged: &mut Staged, command: Command) {
        let refusal = match &self.halted {
            Some(reason) => Some(SequencerError::Halted(reason.clone())),
            None => self.fleet_refusal(&command),
        };
        if let Some(error) = refusal {
            match command {
                Command::Sign(_, _, reply) => {
                    let _ = reply.send(Err(error));
                }
                Command::RegisterKey(_, _, reply)
                | Command::Rotate(_, reply)
                | Command::Retire(_, _, _, reply)
                | Command::HandOver(_, _, reply)
                | Command::Reclaim(_, reply) => {
                    let _ = reply.send(Err(error));
                }
            }
            return;
        }
        if !matches!(command, Command::Sign(..)) {
            // Key events change what later receipts are signed with (and may destroy a key):
            // the receipts placed before one are signed first, and what the store says of
            // keys must include the batch in flight.
            self.close_windows(staged, true);
            self.sign_unsigned(staged, true);
            self.settle(staged);
        }
        match command {
            Command::Sign(action, request_id, reply) => {
                if let Some(window) = self.batching.window_of(&action.actor, action.rule_window) {
                    let actor = action.actor.clone();
                    if self.windows.add(window, (action, request_id, reply))
                        >= self.batching.max_size
                    {
                        let requests = self.windows.close(&actor);
                        self.place_batch(staged, requests);
                    }
                    return;
                }
                if self.windows.is_open(&action.actor) {
                    // Its batch came first: it takes the sequence numbers before this one.
                    let requests = self.windows.close(&action.actor);
                    self.place_batch(staged, requests);
                }
                if let Err(e) = self.place(staged, action, request_id, reply) {
                    // place answers on success paths itself; errors come back here.
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
            Command::HandOver(plan, target, reply) => {
                match self.stage_handover(staged, *plan, target) {
                    Ok(()) => staged.key_replies.push(reply),
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                }
            }
            Command::Reclaim(actor, reply) => {
                let _ = reply.send(self.reclaim(&actor));
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

    /// Finds what a request id says of a request: new, or answered here (a stored receipt
    /// made for this request, or a follower of its original in this batch).
    fn retry(
        &mut self,
        staged: &mut Staged,
        id: &str,
        fingerprint: &[u8; 32],
        reply: Reply<SignedReceipt>,
    ) -> Result<Retry, (SequencerError, Reply<SignedReceipt>)> {
        if self.in_flight_requests.contains_key(id) {
            // Its original is being committed: wait, then read it from the store.
            self.settle(staged);
        }
        let earlier = match staged.requests.get(id).copied() {
            Some(found) => Some(found),
            None => match self.store.request(id) {
                Ok(found) => found,
                Err(e) => return Err((e.into(), reply)),
            },
        };
        let Some((earlier_fingerprint, index)) = earlier else {
            return self.retry_queued(id, fingerprint, reply);
        };
        if earlier_fingerprint != *fingerprint {
            return Err((
                SequencerError::Conflict(format!(
                    "request_id {id:?} was used for a different request"
                )),
                reply,
            ));
        }
        if staged.requests.contains_key(id) {
            staged.followers.push((id.to_owned(), reply));
            return Ok(Retry::Answered);
        }
        if self.fleet.is_some() {
            // Answered once the head the integrator publishes covers it.
            if let Err(e) = self.check_retry(index, fingerprint) {
                return Err((e, reply));
            }
            self.committer
                .follow(fleet::Follow::Integrated(index, reply));
            return Ok(Retry::Answered);
        }
        let stored = bundles::stored(
            &self.store,
            &self.log,
            &self.certificates.get(),
            index,
            None,
        );
        match stored {
            Ok(Some(answer)) => {
                // A stored answer is an acknowledgement too: the request must be the one
                // that receipt answered, and the hardware's head cover it.
                if let Err(e) = self
                    .check_retry(index, fingerprint)
                    .and_then(|()| self.committer.sync_head())
                {
                    return Err((e, reply));
                }
                let _ = reply.send(Ok(answer));
                Ok(Retry::Answered)
            }
            Ok(None) => Err((
                SequencerError::Store(StoreError::Corrupt(format!(
                    "request {id:?} names missing receipt {index}"
                ))),
                reply,
            )),
            Err(e) => Err((e.into(), reply)),
        }
    }

    /// In a fleet, a request id not in the log may still be queued by this node: its retry
    /// waits for it.
    fn retry_queued(
        &mut self,
        id: &str,
        fingerprint: &[u8; 32],
        reply: Reply<SignedReceipt>,
    ) -> Result<Retry, (SequencerError, Reply<SignedReceipt>)> {
        let Some(link) = &self.fleet else {
            return Ok(Retry::New(reply));
        };
        let queued = link.borrow_mut().queued_request(id);
        match queued {
            Ok(None) => Ok(Retry::New(reply)),
            Ok(Some((_, earlier))) if earlier != *fingerprint => Err((
                SequencerError::Conflict(format!(
                    "request_id {id:?} was used for a different request"
                )),
                reply,
            )),
            Ok(Some((queue_id, _))) => {
                self.committer
                    .follow(fleet::Follow::Queued(queue_id, reply));
                Ok(Retry::Answered)
            }
            Err(e) => Err((e, reply)),
        }
    }

    /// Places a Sign request in the log's order: its index, sequence, previous receipt and
    /// time; the payload is built here and signed later, with the batch's others.
    #[allow(clippy::type_complexity)]
    fn place(
        &mut self,
        staged: &mut Staged,
        action: ValidAction,
        request_id: Option<String>,
        reply: Reply<SignedReceipt>,
    ) -> Result<(), Box<(SequencerError, Reply<SignedReceipt>)>> {
        let log_index = self.frontier.size() + staged.unsigned_len();
        match self.place_one(staged, (action, request_id, reply), log_index, None) {
            Ok(Some(prepared)) => {
                staged.unsigned.push(Unsigned::Single(prepared));
                Ok(())
            }
            Ok(None) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// A request placed at `log_index` (dated `at`, or now): `None` if a retry answered it.
    #[allow(clippy::type_complexity)]
    fn place_one(
        &mut self,
        staged: &mut Staged,
        (action, request_id, reply): Request,
        log_index: u64,
        at: Option<&(String, i64)>,
    ) -> Result<Option<Prepared>, Box<(SequencerError, Reply<SignedReceipt>)>> {
        // Only a request id needs the fingerprint (to tell a retry from a reuse).
        let fingerprint = request_id.as_ref().map(|_| action.fingerprint());
        let reply = match (&request_id, &fingerprint) {
            (Some(id), Some(fingerprint)) => match self.retry(staged, id, fingerprint, reply) {
                Ok(Retry::New(reply)) => reply,
                Ok(Retry::Answered) => return Ok(None),
                Err(e) => return Err(Box::new(e)),
            },
            _ => reply,
        };
        let mode = if at.is_some() { "batch" } else { "single" };
        let (key, previous_head, row, signed_at_unix, payload) =
            match self.prepare(&action, log_index, mode, at) {
                Ok(parts) => parts,
                Err(e) => return Err(Box::new((e, reply))),
            };
        let request = request_id.zip(fingerprint);
        if let Some((id, fingerprint)) = &request {
            staged
                .requests
                .insert(id.clone(), (*fingerprint, log_index));
        }
        Ok(Some(Prepared {
            action,
            request,
            reply,
            key,
            previous_head,
            row,
            signed_at_unix,
            payload,
        }))
    }

    /// The time of a batch: one for all its receipts and its statement.
    fn batch_time(&mut self, actor: &str) -> Result<(ActiveKey, (String, i64)), SequencerError> {
        let key = self.active_key(actor)?;
        let signed_at = self.clock.next(&[created_at(&key.record)?])?;
        let unix = self.certified_at(&signed_at)?;
        Ok((key, (signed_at, unix)))
    }

    /// Places the requests of a closed window as one batch: consecutive log indices and
    /// sequence numbers, one time, one tree, one statement for the actor key to sign.
    fn place_batch(&mut self, staged: &mut Staged, requests: Vec<Request>) {
        let Some(actor) = requests.first().map(|r| r.0.actor.clone()) else {
            return;
        };
        let halted = self.halted.clone().map(SequencerError::Halted);
        let (key, at) = match halted.map_or_else(|| self.batch_time(&actor), Err) {
            Ok(found) => found,
            Err(e) => {
                let message = e.to_string();
                for (_, _, reply) in requests {
                    let _ = reply.send(Err(same_error(&e, &message)));
                }
                return;
            }
        };
        let first_log_index = self.frontier.size() + staged.unsigned_len();
        let mut receipts: Vec<Prepared> = Vec::with_capacity(requests.len());
        for request in requests {
            let log_index = first_log_index + receipts.len() as u64;
            match self.place_one(staged, request, log_index, Some(&at)) {
                Ok(Some(prepared)) => receipts.push(prepared),
                Ok(None) => {}
                Err(e) => {
                    let (e, reply) = *e;
                    let _ = reply.send(Err(e));
                }
            }
        }
        if receipts.is_empty() {
            return;
        }
        let first = self.fleet.is_none().then_some(first_log_index);
        match prepared_batch(receipts, key, &at, first) {
            Ok(batch) => staged.unsigned.push(Unsigned::Batch(batch)),
            Err((e, receipts)) => {
                self.unwind(staged, &receipts);
                for prepared in receipts {
                    Self::refuse(staged, prepared, &e);
                }
            }
        }
    }

    /// Closes the windows that are due (every window with `all`) and places their batches.
    fn close_windows(&mut self, staged: &mut Staged, all: bool) {
        for requests in self.windows.close_due(all) {
            self.place_batch(staged, requests);
        }
    }

    fn active_key(&self, actor: &str) -> Result<ActiveKey, SequencerError> {
        let chain = self
            .actors
            .get(actor)
            .ok_or_else(|| SequencerError::UnknownActor(actor.to_owned()))?;
        chain.key.clone().ok_or_else(|| {
            SequencerError::Precondition(format!(
                "actor {actor:?} has no active key: it was retired"
            ))
        })
    }

    /// The next receipt of `action`'s actor, at `log_index`: its place and payload; the
    /// actor's head moves on in memory (put back by [`unwind`](Self::unwind) should its
    /// signing fail).
    #[allow(clippy::type_complexity)]
    fn prepare(
        &mut self,
        action: &ValidAction,
        log_index: u64,
        mode: &str,
        at: Option<&(String, i64)>,
    ) -> Result<(ActiveKey, Option<ActorHead>, ReceiptRow, i64, Vec<u8>), SequencerError> {
        let active = self.active_key(&action.actor)?;
        let previous_head = self.actors.get(&action.actor).and_then(|c| c.head);
        let key = Arc::clone(&active.record);
        let sequence = previous_head.map_or(1, |h| h.sequence + 1);
        let (signed_at, signed_at_unix) = match at {
            Some(at) => at.clone(),
            None => {
                let signed_at = self.clock.next(&[created_at(&key)?])?;
                let unix = self.certified_at(&signed_at)?;
                (signed_at, unix)
            }
        };
        // A fleet node signs before the integrator orders: no index (FORMAT.md §3).
        let place = (
            sequence,
            previous_head,
            self.fleet.is_none().then_some(log_index),
        );
        let payload = receipt_payload(action, &key, place, &signed_at, mode)?;
        let payload_sha256: [u8; 32] = Sha256::digest(&payload).into();
        if let Some(chain) = self.actors.get_mut(&action.actor) {
            chain.head = Some(ActorHead {
                sequence,
                payload_sha256,
            });
        }
        let row = ReceiptRow {
            log_index,
            actor: action.actor.clone(),
            sequence,
            key_id: key.key_id.clone(),
            payload_sha256,
            signed_at,
            // Filled in once the batch's checkpoint is signed.
            proof_size: 0,
            proof: Vec::new(),
        };
        Ok((active, previous_head, row, signed_at_unix, payload))
    }

    /// Signs every placed receipt and batch statement at once on the signing threads, then
    /// appends them in order. Where some fail, all are unplaced; the failed ones (every
    /// receipt of a failed batch) are answered with their error and the others (`retry`)
    /// placed and signed once more, so that a key that fails or hangs costs the other
    /// actors a second signature, not their answer.
    fn sign_unsigned(&mut self, staged: &mut Staged, retry: bool) {
        if staged.unsigned.is_empty() {
            return;
        }
        let jobs = staged.unsigned.iter().map(Unsigned::job).collect();
        let results = self.pool.sign_all(jobs);
        let placed = std::mem::take(&mut staged.unsigned);
        if results.iter().all(Result::is_ok) {
            for (unsigned, signature) in placed.into_iter().zip(results) {
                match (unsigned, signature) {
                    (Unsigned::Single(p), Ok(signature)) => {
                        self.append_single(staged, p, &signature)
                    }
                    (Unsigned::Batch(b), Ok(signature)) => self.append_batch(staged, b, &signature),
                    (_, Err(_)) => {}
                }
            }
            return;
        }
        self.refuse_failed(staged, placed, results, retry);
    }

    /// After a failed signature in a batch: unplaces every receipt, refuses the failed ones
    /// and places and signs the others again (`retry`), or refuses them too.
    fn refuse_failed(
        &mut self,
        staged: &mut Staged,
        placed: Vec<Unsigned>,
        results: Vec<Result<Signature, BackendError>>,
        retry: bool,
    ) {
        let receipts: Vec<&Prepared> = placed.iter().flat_map(Unsigned::receipts).collect();
        self.unwind_refs(staged, &receipts);
        let mut survivors: Vec<Unsigned> = Vec::new();
        for (unsigned, result) in placed.into_iter().zip(results) {
            match result {
                Err(e) => {
                    let e = e.into();
                    for prepared in unsigned.into_receipts() {
                        Self::refuse(staged, prepared, &e);
                    }
                }
                Ok(_) if retry => survivors.push(unsigned),
                Ok(_) => {
                    let e = SequencerError::Backend(BackendError::Unavailable(
                        "another signature of its batch failed twice".into(),
                    ));
                    for prepared in unsigned.into_receipts() {
                        Self::refuse(staged, prepared, &e);
                    }
                }
            }
        }
        for unsigned in survivors {
            let batch = matches!(unsigned, Unsigned::Batch(_));
            let requests: Vec<Request> = unsigned
                .into_receipts()
                .into_iter()
                .map(|p| (p.action, p.request.map(|(id, _)| id), p.reply))
                .collect();
            if batch {
                self.place_batch(staged, requests);
                continue;
            }
            for (action, request_id, reply) in requests {
                if let Err(e) = self.place(staged, action, request_id, reply) {
                    let (e, reply) = *e;
                    let _ = reply.send(Err(e));
                }
            }
        }
        self.sign_unsigned(staged, false);
    }

    /// Puts back what placing `placed` changed: the actors' heads and the request ids.
    fn unwind(&mut self, staged: &mut Staged, placed: &[Prepared]) {
        let refs: Vec<&Prepared> = placed.iter().collect();
        self.unwind_refs(staged, &refs);
    }

    fn unwind_refs(&mut self, staged: &mut Staged, placed: &[&Prepared]) {
        for prepared in placed.iter().rev() {
            if let Some(chain) = self.actors.get_mut(&prepared.row.actor) {
                chain.head = prepared.previous_head;
            }
            if let Some((id, _)) = &prepared.request {
                staged.requests.remove(id);
            }
        }
    }

    /// Answers a placed receipt, and the retries that wait for it, with an error.
    fn refuse(staged: &mut Staged, prepared: Prepared, error: &SequencerError) {
        let message = error.to_string();
        tracing::warn!(actor = %prepared.row.actor, error = %message, "signature failed; request refused");
        if let Some((id, _)) = &prepared.request {
            let (waiting, others): (Vec<_>, Vec<_>) = std::mem::take(&mut staged.followers)
                .into_iter()
                .partition(|(follower, _)| follower == id);
            staged.followers = others;
            for (_, reply) in waiting {
                let _ = reply.send(Err(same_error(error, &message)));
            }
        }
        let _ = prepared.reply.send(Err(same_error(error, &message)));
    }

    /// Appends a signed single receipt.
    fn append_single(&mut self, staged: &mut Staged, prepared: Prepared, signature: &Signature) {
        let key_id = &prepared.key.record.key_id;
        let envelope = Envelope::new(IN_TOTO_PAYLOAD_TYPE, &prepared.payload, key_id, signature);
        // Infallible here: the envelope's base64 was written just now.
        let bytes = entry::encode(&envelope).unwrap_or_default();
        self.push_receipt(staged, prepared, bytes, envelope, None);
    }

    /// Appends the receipts of a batch whose statement is signed: each entry holds its
    /// seal (leaf index, path, the signed statement), each bundle its batch member.
    fn append_batch(&mut self, staged: &mut Staged, batch: PreparedBatch, signature: &Signature) {
        let key_id = &batch.key.record.key_id;
        let statement = Envelope::new(IN_TOTO_PAYLOAD_TYPE, &batch.statement, key_id, signature);
        let signature_der = signature.to_der().as_bytes().to_vec();
        for (leaf, prepared) in batch.receipts.into_iter().enumerate() {
            let path = batch.tree.path(leaf);
            let seal = BatchSeal {
                leaf_index: u32::try_from(leaf).unwrap_or(u32::MAX),
                path: path.clone(),
                statement_payload: batch.statement.clone(),
                statement_signature_der: signature_der.clone(),
            };
            let bytes = entry::encode_batch(IN_TOTO_PAYLOAD_TYPE, &prepared.payload, &seal);
            let envelope = Envelope {
                payload_type: IN_TOTO_PAYLOAD_TYPE.into(),
                payload: B64.encode(&prepared.payload),
                signatures: Vec::new(),
            };
            let member = BatchInBundle {
                statement: statement.clone(),
                leaf_index: leaf as u64,
                inclusion_proof: path.iter().map(hex_hash).collect(),
            };
            self.push_receipt(staged, prepared, bytes, envelope, Some(member));
        }
    }

    /// Appends a receipt's entry to the tree in memory and stages its rows.
    fn push_receipt(
        &mut self,
        staged: &mut Staged,
        prepared: Prepared,
        bytes: Vec<u8>,
        envelope: Envelope,
        batch: Option<BatchInBundle>,
    ) {
        let index = self.append_entry(staged, EntryKind::Receipt, &prepared.row.actor, bytes);
        debug_assert_eq!(index, prepared.row.log_index);
        let request_id = prepared.request.map(|(id, fingerprint)| {
            staged.batch.requests.push((id.clone(), fingerprint, index));
            id
        });
        staged.receipts.push(PendingReceipt {
            row: prepared.row,
            envelope,
            key: prepared.key,
            signed_at_unix: prepared.signed_at_unix,
            bundle_json: String::new(),
            request_id,
            reply: Some(prepared.reply),
            batch,
        });
    }

    /// Waits for the batch in flight; if it failed, this batch (staged on top of it) fails.
    fn settle(&mut self, staged: &mut Staged) {
        if let Err(message) = self.committer.wait() {
            staged.poisoned.get_or_insert(message);
        }
        self.in_flight_requests.clear();
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
        let signature = self
            .pool
            .sign(SignJob::log(&self.log, pae(IN_TOTO_PAYLOAD_TYPE, payload)))?;
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
        let signature = self.pool.sign(SignJob::actor(
            previous_key,
            pae(IN_TOTO_PAYLOAD_TYPE, &payload),
        ))?;
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

    /// Signs what is still unsigned, seals the batch (checkpoint, proofs, bundles), and
    /// hands it to the commit thread once the batch before is known to be stored; its
    /// commit then overlaps the signing of the next.
    fn finish(&mut self, mut staged: Staged) {
        self.sign_unsigned(&mut staged, true);
        if staged.batch.is_empty() {
            return;
        }
        self.finished_batches += 1;
        // In a fleet the integrator signs the checkpoint and proves each receipt.
        let sealed = match self.fleet {
            None => self.seal(&mut staged),
            Some(_) => Ok(()),
        };
        self.settle(&mut staged);
        let failure = match (staged.poisoned.take(), sealed) {
            (Some(message), _) => Some(format!("an earlier batch failed: {message}")),
            (None, Err(e)) => Some(e.to_string()),
            (None, Ok(())) => None,
        };
        let tree = (self.frontier.size(), self.frontier.root());
        match failure {
            None => {
                self.cache_nodes(&mut staged);
                self.in_flight_requests = std::mem::take(&mut staged.requests);
                self.committer.send(staged.into_commit(tree));
            }
            Some(message) => {
                tracing::error!(error = %message, "batch failed; nothing in it was acknowledged");
                staged.into_commit(tree).answer(Err(&message));
                self.recover(&message);
            }
        }
    }

    /// After a failed batch: memory is ahead of the database; rebuild it from the store.
    fn recover(&mut self, message: &str) {
        tracing::warn!(error = %message, "reloading the log's state after a failed batch");
        let _ = self.committer.wait();
        self.in_flight_requests.clear();
        if let Err(e) = self.reload() {
            if matches!(e, SequencerError::Store(StoreError::Unavailable(_))) {
                tracing::warn!(error = %e, "the state database is unreachable; refusing until it answers");
                self.unreachable = true;
                self.halted = Some(format!("the state database is unreachable: {e}"));
                return;
            }
            // Memory is ahead of the database and cannot be brought back: signing on
            // would leave gaps and forks. Refuse everything until a restart, whose
            // start-up check starts from what is on disk.
            tracing::error!(error = %e, "cannot reload state after a failed batch; the sequencer halts");
            self.halted = Some(format!("the log is halted after a storage failure: {e}"));
        }
    }

    /// Tries again to rebuild the state after the database was unreachable; until it works,
    /// every command is refused UNAVAILABLE (nothing is signed on a state not read back).
    fn reload_after_outage(&mut self) {
        match self.reload() {
            Ok(()) => {
                tracing::info!("the state database answers again; signing resumes");
                self.unreachable = false;
                self.halted = None;
            }
            Err(SequencerError::Store(StoreError::Unavailable(e))) => {
                self.halted = Some(format!("the state database is unreachable: {e}"));
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot reload state after an outage; the sequencer halts");
                self.unreachable = false;
                self.halted = Some(format!("the log is halted after a storage failure: {e}"));
            }
        }
    }

    /// The batch's nodes join the cache as it goes to be committed, so that the next batch's
    /// proofs find them; a failed commit clears the cache ([`reload`](Self::reload)).
    fn cache_nodes(&mut self, staged: &mut Staged) {
        let mut cache = self.node_cache.borrow_mut();
        if cache.len() > NODE_CACHE_LIMIT {
            cache.clear();
        }
        cache.extend(staged.nodes.drain());
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
        let tree = (self.frontier.size(), self.frontier.root());
        self.committer.send(staged.into_commit(tree));
        self.committer.wait().map_err(SequencerError::NotStored)?;
        tracing::warn!(origin = %self.log.origin, replaced_size = previous.size,
            replaced_log_key = %hex::encode(previous.log_key_id), "new log started; it records the replaced log's head");
        Ok(())
    }

    /// Signs the batch's checkpoint (checked once, on a signing thread), proves each receipt
    /// against it and builds its bundle.
    fn seal(&mut self, staged: &mut Staged) -> Result<(), SequencerError> {
        if staged.batch.entries.is_empty() {
            return Ok(());
        }
        let checkpoint = Checkpoint::new(
            self.log.origin.clone(),
            self.frontier.size(),
            self.frontier.root(),
        )?;
        let note = checkpoint.signed_note_checked(
            &self.log.origin,
            &self.log.spki_der(),
            |body| -> Result<_, SequencerError> {
                Ok(self.pool.sign(SignJob::log(&self.log, body.to_vec()))?)
            },
        )?;
        let certificates = self.certificates.get();
        let overlay = Overlay {
            store: &self.store,
            staged: &staged.nodes,
            cache: &self.node_cache,
        };
        // What the batch's bundles share is serialised once per key, not once per receipt.
        let mut shared = bundles::SharedParts::default();
        for pending in &mut staged.receipts {
            let proof =
                merkle::inclusion_proof(&overlay, pending.row.log_index, checkpoint.size())?;
            pending.bundle_json = shared.bundle_json(
                (&pending.envelope, pending.batch.as_ref()),
                bundles::SigningKey {
                    record: &pending.key.record,
                    lineage: &pending.key.lineage,
                },
                &self.log,
                bundles::Inclusion {
                    log_index: pending.row.log_index,
                    tree_size: checkpoint.size(),
                    proof: &proof,
                    checkpoint_note: &note,
                },
                &certificates,
                pending.signed_at_unix,
            )?;
            // The bundle holds them now: freed at once, the next bundles reuse the memory (a
            // batch holds thousands of these until its commit).
            drop(std::mem::take(&mut pending.envelope.payload));
            drop(std::mem::take(&mut pending.envelope.signatures));
            drop(pending.batch.take());
            pending.row.proof_size = checkpoint.size();
            pending.row.proof = proof;
            staged.batch.receipts.push(pending.row.clone());
        }
        staged.batch.checkpoint = Some(CheckpointRow {
            size: checkpoint.size(),
            root: *checkpoint.root(),
            note,
        });
        Ok(())
    }
}

/// A receipt's payload (FORMAT.md §3): `place` is (sequence, previous head, log index).
fn receipt_payload(
    action: &ValidAction,
    key: &KeyRecord,
    (sequence, previous, log_index): (u64, Option<ActorHead>, Option<u64>),
    signed_at: &str,
    mode: &str,
) -> Result<Vec<u8>, SequencerError> {
    Ok(ReceiptStatement::new(
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
            signed_at: signed_at.to_owned(),
            sequence,
            previous_receipt: previous.map(|h| receipt::Digest {
                sha256: hex::encode(h.payload_sha256),
            }),
            log_index,
            mode: mode.into(),
        },
    )
    .to_payload()?)
}

/// A batch of placed receipts (at least one) with its tree and the statement over its root;
/// the receipts back with the error if the statement cannot be encoded.
fn prepared_batch(
    receipts: Vec<Prepared>,
    key: ActiveKey,
    (signed_at, _): &(String, i64),
    first_log_index: Option<u64>,
) -> Result<PreparedBatch, (SequencerError, Vec<Prepared>)> {
    let payloads: Vec<&[u8]> = receipts.iter().map(|p| p.payload.as_slice()).collect();
    let (Some(tree), Some(first)) = (BatchTree::new(&payloads), receipts.first()) else {
        return Err((SequencerError::NotStored("an empty batch".into()), receipts));
    };
    let predicate = BatchPredicate {
        actor: first.row.actor.clone(),
        key: KeyRefInReceipt {
            id: key.record.key_id.clone(),
            version: key.record.version,
            backend: key.record.backend.as_str().into(),
        },
        size: receipts.len() as u64,
        first_sequence: first.row.sequence,
        first_log_index,
        signed_at: signed_at.clone(),
    };
    match BatchStatement::new(&tree.root(), predicate).to_payload() {
        Ok(statement) => Ok(PreparedBatch {
            receipts,
            tree,
            statement,
            key,
        }),
        Err(e) => Err((e.into(), receipts)),
    }
}

/// The same error again, for another caller: backend faults stay UNAVAILABLE.
fn same_error(error: &SequencerError, message: &str) -> SequencerError {
    match error {
        SequencerError::Backend(e) if e.is_fault() => {
            SequencerError::Backend(BackendError::Unavailable(message.to_owned()))
        }
        SequencerError::Halted(_) => SequencerError::Halted(message.to_owned()),
        SequencerError::Uncertified(_) => SequencerError::Uncertified(message.to_owned()),
        SequencerError::UnknownActor(actor) => SequencerError::UnknownActor(actor.clone()),
        SequencerError::Precondition(_) => SequencerError::Precondition(message.to_owned()),
        _ => SequencerError::NotStored(message.to_owned()),
    }
}

/// A hash as lower-case hex: `hex::encode` goes through a `char` iterator, which showed in
/// the batch path's profile (a batch of n receipts writes n·log₂n of these).
fn hex_hash(hash: &Hash) -> String {
    let mut text = [0u8; 64];
    // Cannot fail: the buffer is twice the hash's length, and hex is ASCII.
    let _ = hex::encode_to_slice(hash, &mut text);
    String::from_utf8_lossy(&text).into_owned()
}

fn hardware_key(record: &KeyRecord) -> HardwareKey {
    HardwareKey {
        key_ref: record.key_ref.clone(),
        public_key: record.public_key,
    }
}
