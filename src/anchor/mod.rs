//! Anchoring the log outside the operator's reach (FORMAT.md §14, CONFIG.md `[anchor]`): a
//! task beside the sequencer watches the newest committed checkpoint and, whenever it is newer
//! than the last anchored one and no anchoring is in flight, submits the newest to every
//! witness (C2SP `tlog-witness`, each with a consistency proof from the size it last saw) and
//! asks every timestamp authority for a token over it, in parallel. The result, the note with
//! the witnesses' cosignature lines and the tokens, is stored in the ledger database and
//! published on a watch channel; `Sign` in the `anchored` mode waits on it.
//!
//! Coalescing keeps the cost flat: however many batches were committed meanwhile, one round
//! anchors the newest, and it covers them all.
//!
//! In a fleet ([`FleetRole`], FORMAT.md §14.5) the task runs on every node but anchors only
//! while its node holds the integrator lease (the integrator's hook says at which epoch; the
//! lease row is read before each round and locked when storing); every node follows the
//! shared table onto its watch.

pub mod http;
pub mod store;
pub mod tsa;
pub mod witness_client;

use std::{
    collections::BTreeSet,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use serde::Deserialize;
use tokio::sync::{Notify, watch};

use crate::{
    fleet::anchor::AnchorHook,
    ledger::{CheckpointRow, Store, merkle, store::PgSettings},
    verify::{
        cosignature::{NoteKey, parse_vkey},
        witness_policy::{PolicyWitness, WitnessPolicy},
    },
};
use store::{AnchorStore, HolderPut};
use witness_client::Submitted;

/// When `Sign` answers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Acknowledge {
    /// Once an anchored checkpoint covering the receipt satisfies the witness policy (and
    /// carries a timestamp token, if TSAs are configured); the bundle carries it.
    #[default]
    Anchored,
    /// At once, with the log-signed checkpoint; `GetInclusionProof` later returns the proof
    /// against the newest anchored checkpoint.
    Logged,
}

/// `[anchor]` of the daemon's configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnchorConfig {
    #[serde(default)]
    pub acknowledge: Acknowledge,
    /// How many of the witnesses must cosign (required with witnesses).
    #[serde(default)]
    pub quorum: Option<usize>,
    /// How long `Sign` (anchored mode) waits for the policy before UNAVAILABLE.
    #[serde(default = "default_wait_ms")]
    pub wait_ms: u64,
    /// Deadline of one request to a witness or a TSA.
    #[serde(default = "default_request_timeout_ms")]
    pub request_timeout_ms: u64,
    /// How often witnesses missing from the newest anchored checkpoint are asked again while
    /// no new checkpoint comes.
    #[serde(default = "default_retry_ms")]
    pub retry_ms: u64,
    #[serde(default)]
    pub witness: Vec<WitnessConfig>,
    #[serde(default)]
    pub tsa: Vec<tsa::TsaConfig>,
}

impl Default for AnchorConfig {
    fn default() -> Self {
        AnchorConfig {
            acknowledge: Acknowledge::default(),
            quorum: None,
            wait_ms: default_wait_ms(),
            request_timeout_ms: default_request_timeout_ms(),
            retry_ms: default_retry_ms(),
            witness: Vec::new(),
            tsa: Vec::new(),
        }
    }
}

fn default_wait_ms() -> u64 {
    10_000
}
fn default_request_timeout_ms() -> u64 {
    3_000
}
fn default_retry_ms() -> u64 {
    1_000
}

/// One `[[anchor.witness]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WitnessConfig {
    /// `http://host:port[/prefix]`; `add-checkpoint` is POSTed under it.
    pub url: String,
    /// The witness's verifier key, `name+hash+base64` (a cosignature/v1 key).
    pub key: String,
}

impl AnchorConfig {
    /// Whether anything is to be anchored.
    pub fn enabled(&self) -> bool {
        !self.witness.is_empty() || !self.tsa.is_empty()
    }

    /// The witness policy `quorum` of the configured witnesses (None without witnesses).
    pub fn policy(&self) -> Result<Option<WitnessPolicy>, String> {
        if self.witness.is_empty() {
            return match self.quorum {
                Some(_) => Err("anchor.quorum is set but no [[anchor.witness]] is".into()),
                None => Ok(None),
            };
        }
        let quorum = self.quorum.ok_or(
            "anchor.quorum must say how many of the [[anchor.witness]] entries must cosign",
        )?;
        let witnesses = self
            .witness
            .iter()
            .map(|w| {
                let key = witness_key(&w.key)?;
                crate::anchor::http::split_url(&w.url).map_err(|e| e.to_string())?;
                Ok(PolicyWitness {
                    name: key.name.clone(),
                    key,
                    url: Some(w.url.clone()),
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        WitnessPolicy::threshold_of(witnesses, quorum)
            .map(Some)
            .map_err(|e| format!("anchor: {e}"))
    }

    /// Checks the section (called when the configuration is parsed).
    pub fn check(&self) -> Result<(), String> {
        self.policy()?;
        for t in &self.tsa {
            t.client(Duration::from_millis(self.request_timeout_ms))
                .map_err(|e| format!("anchor.tsa: {e}"))?;
        }
        if self.wait_ms == 0 || self.request_timeout_ms == 0 || self.retry_ms == 0 {
            return Err("anchor: wait_ms, request_timeout_ms and retry_ms must be positive".into());
        }
        Ok(())
    }
}

fn witness_key(vkey: &str) -> Result<NoteKey, String> {
    let key = parse_vkey(vkey).map_err(|e| format!("anchor.witness.key: {e}"))?;
    if key.kind != crate::verify::cosignature::SIGNATURE_TYPE_COSIGNATURE {
        return Err(format!(
            "anchor.witness.key {vkey:?} is not a cosignature/v1 (0x04) key"
        ));
    }
    Ok(key)
}

/// A checkpoint with what anchors it: the witnesses' cosignatures (as lines on the note) and
/// the timestamp tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnchoredCheckpoint {
    pub size: u64,
    pub root: merkle::Hash,
    /// The log-signed note with the cosignature lines after the log's signature.
    pub note: String,
    /// The key names of the witnesses whose cosignature is on the note.
    pub cosigners: BTreeSet<String>,
    /// DER TimeStampTokens over the note text.
    pub timestamps: Vec<Vec<u8>>,
}

impl AnchoredCheckpoint {
    /// Whether it has no fewer cosignatures and no fewer timestamp tokens than `other`: what
    /// may replace an anchored checkpoint of its size, never back to less evidence of either
    /// (`store::AnchorStore::put_as_holder` applies the same rule in SQL).
    pub fn carries_at_least(&self, other: &AnchoredCheckpoint) -> bool {
        self.cosigners.len() >= other.cosigners.len()
            && self.timestamps.len() >= other.timestamps.len()
    }

    /// The checkpoint's note text (the signed bytes): up to the blank line.
    pub fn note_text(&self) -> &str {
        note_text(&self.note)
    }
}

fn note_text(note: &str) -> &str {
    match note.find("\n\n") {
        Some(at) => &note[..=at],
        None => note,
    }
}

/// Why `Sign` could not be answered with an anchored checkpoint in time.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "receipt {log_index} is durably in the log but not anchored within {wait_ms} ms: \
     the witness policy is not met (missing: {missing}){tsa}; retry with the same request_id \
     to get it once anchored"
)]
pub struct NotAnchored {
    pub log_index: u64,
    pub wait_ms: u64,
    /// The witnesses without a cosignature on the newest anchored checkpoint covering it.
    pub missing: String,
    pub tsa: String,
}

/// What the rest of the daemon holds of the anchor task.
#[derive(Clone)]
pub struct AnchorHandle {
    latest: watch::Receiver<Option<Arc<AnchoredCheckpoint>>>,
    wake: Arc<Notify>,
    acknowledge: Acknowledge,
    wait: Duration,
    policy: Option<Arc<WitnessPolicy>>,
    tsa_count: usize,
}

impl AnchorHandle {
    /// Tells the task a checkpoint was committed.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    pub fn acknowledge(&self) -> Acknowledge {
        self.acknowledge
    }

    /// The newest anchored checkpoint, if any.
    pub fn latest(&self) -> Option<Arc<AnchoredCheckpoint>> {
        self.latest.borrow().clone()
    }

    /// Whether `anchored` meets the witness policy and, with TSAs, carries a token.
    pub fn satisfies(&self, anchored: &AnchoredCheckpoint) -> bool {
        let witnessed = self
            .policy
            .as_ref()
            .is_none_or(|p| p.satisfied_by(&anchored.cosigners));
        witnessed && (self.tsa_count == 0 || !anchored.timestamps.is_empty())
    }

    /// Waits until an anchored checkpoint that includes `log_index` satisfies the policy.
    pub async fn wait_covering(
        &self,
        log_index: u64,
    ) -> Result<Arc<AnchoredCheckpoint>, NotAnchored> {
        self.wake();
        let mut rx = self.latest.clone();
        let ready = |a: &Option<Arc<AnchoredCheckpoint>>| {
            a.as_ref()
                .is_some_and(|a| a.size > log_index && self.satisfies(a))
        };
        let waited = tokio::time::timeout(self.wait, rx.wait_for(ready)).await;
        if let Ok(Ok(found)) = waited
            && let Some(found) = found.clone()
        {
            return Ok(found);
        }
        let newest = self.latest().filter(|a| a.size > log_index);
        let missing: Vec<String> = match (&self.policy, &newest) {
            (None, _) => Vec::new(),
            (Some(p), Some(a)) => p
                .witnesses()
                .filter(|w| !a.cosigners.contains(&w.key.name))
                .map(|w| w.key.name.clone())
                .collect(),
            (Some(p), None) => p.witnesses().map(|w| w.key.name.clone()).collect(),
        };
        let no_token =
            self.tsa_count > 0 && newest.as_ref().is_none_or(|a| a.timestamps.is_empty());
        Err(NotAnchored {
            log_index,
            wait_ms: self.wait.as_millis() as u64,
            missing: if missing.is_empty() {
                "none".into()
            } else {
                missing.join(", ")
            },
            tsa: if no_token {
                "; no timestamp authority answered".into()
            } else {
                String::new()
            },
        })
    }
}

/// Why the anchor task could not start.
#[derive(Debug, thiserror::Error)]
pub enum AnchorStartError {
    #[error("anchor: {0}")]
    Config(String),
    #[error(transparent)]
    Store(#[from] store::AnchorStoreError),
    #[error("anchor: {0}")]
    Ledger(#[from] crate::ledger::StoreError),
}

/// A witness as the task uses it.
#[derive(Debug, Clone)]
struct Witness {
    url: String,
    key: NoteKey,
}

/// The task's state.
struct Task {
    witnesses: Vec<Witness>,
    tsas: Vec<tsa::TsaConfig>,
    request_timeout: Duration,
    retry: Duration,
    ledger: Arc<Mutex<Store>>,
    anchors: Arc<Mutex<AnchorStore>>,
    tx: Arc<Latest>,
    wake: Arc<Notify>,
    handle: AnchorHandle,
    /// In a fleet: this node's name and what its integrator tells of the lease.
    fleet: Option<FleetRole>,
}

/// The sender of the newest anchored checkpoint.
type Latest = watch::Sender<Option<Arc<AnchoredCheckpoint>>>;

/// A fleet node's part in anchoring (docs/FORMAT.md §14.5): the task anchors only while the
/// node holds the integrator lease; every node follows the shared table.
#[derive(Clone)]
pub struct FleetRole {
    node: String,
    hook: AnchorHook,
    wake: Arc<Notify>,
}

impl FleetRole {
    /// The role of fleet node `node`, with a hook whose "integrated" call wakes the task.
    pub fn new(node: &str) -> FleetRole {
        let wake = Arc::new(Notify::new());
        let woken = Arc::clone(&wake);
        FleetRole {
            node: node.to_owned(),
            hook: AnchorHook::new(Arc::new(move |_| woken.notify_one())),
            wake,
        }
    }

    /// The hook to give the integrator's `Setup`.
    pub fn hook(&self) -> AnchorHook {
        self.hook.clone()
    }
}

/// Whether `new` should replace `current` as the newest anchored checkpoint: larger, or of
/// the same size carrying at least as much and more than it.
fn better(new: &AnchoredCheckpoint, current: &AnchoredCheckpoint) -> bool {
    new.size > current.size
        || (new.size == current.size
            && new.carries_at_least(current)
            && !current.carries_at_least(new))
}

/// Publishes `anchored` on `tx` unless what it holds is as good.
fn offer(tx: &Latest, anchored: AnchoredCheckpoint) -> bool {
    tx.send_if_modified(|current| {
        let take = current.as_ref().is_none_or(|c| better(&anchored, c));
        if take {
            *current = Some(Arc::new(anchored.clone()));
        }
        take
    })
}

/// How often a fleet node reads the shared table when no NOTIFY came.
const FOLLOW_POLL: Duration = Duration::from_millis(200);

/// Every fleet node: follows the shared anchored-checkpoint table (LISTEN on
/// `actseal_fleet_anchored`, polled every [`FOLLOW_POLL`] too) onto `tx`, until nobody holds
/// a receiver.
fn follow(settings: &PgSettings, tx: &Latest) {
    let mut client: Option<postgres::Client> = None;
    while !tx.is_closed() {
        let c = match client.as_mut() {
            Some(c) => c,
            None => match listening(settings) {
                Ok(c) => client.insert(c),
                Err(e) => {
                    tracing::warn!(error = %e, "anchor follower: cannot reach the database; retrying");
                    std::thread::sleep(FOLLOW_POLL);
                    continue;
                }
            },
        };
        match store::latest_on(c) {
            Ok(Some(anchored)) => {
                let size = anchored.size;
                if offer(tx, anchored) {
                    tracing::debug!(size, "anchor follower: newer anchored checkpoint");
                }
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(error = %e, "anchor follower: cannot read the anchored checkpoints");
                client = None;
                std::thread::sleep(FOLLOW_POLL);
                continue;
            }
        }
        use postgres::fallible_iterator::FallibleIterator;
        let mut notifications = c.notifications();
        let mut it = notifications.timeout_iter(FOLLOW_POLL);
        if let Ok(Some(_)) = it.next() {
            while let Ok(Some(_)) = it.next() {}
        }
    }
}

fn listening(settings: &PgSettings) -> Result<postgres::Client, crate::ledger::StoreError> {
    let mut client = crate::ledger::store::postgres::connect(settings)?;
    client
        .batch_execute(&format!(
            "LISTEN {}",
            crate::fleet::anchor::CHANNEL_ANCHORED
        ))
        .map_err(crate::ledger::StoreError::from)?;
    Ok(client)
}

/// How often the task looks at the log even if nobody woke it (entries the key service
/// commits, a missed wake-up).
const POLL: Duration = Duration::from_millis(500);

/// How long a round waits for witnesses still answering once the policy is met: a slow or
/// hanging witness must not hold every later checkpoint back. One dropped this way is brought
/// up to date by the 409 it answers next time.
const STRAGGLER_GRACE: Duration = Duration::from_millis(200);

/// Starts the anchor task (None when `[anchor]` names neither witnesses nor TSAs); in a
/// fleet (`fleet`, the log on PostgreSQL) also the follower of the shared table. Call within
/// the tokio runtime.
pub fn spawn(
    config: &AnchorConfig,
    database: &crate::ledger::store::LedgerLocation,
    fleet: Option<FleetRole>,
) -> Result<Option<AnchorHandle>, AnchorStartError> {
    if !config.enabled() {
        return Ok(None);
    }
    let policy = config.policy().map_err(AnchorStartError::Config)?;
    let witnesses = config
        .witness
        .iter()
        .map(|w| {
            Ok(Witness {
                url: w.url.clone(),
                key: witness_key(&w.key)?,
            })
        })
        .collect::<Result<Vec<_>, String>>()
        .map_err(AnchorStartError::Config)?;
    let anchors = AnchorStore::open(database)?;
    let latest = anchors.latest()?.map(Arc::new);
    let (tx, rx) = watch::channel(latest);
    let tx = Arc::new(tx);
    let wake = fleet
        .as_ref()
        .map_or_else(|| Arc::new(Notify::new()), |f| Arc::clone(&f.wake));
    if let (Some(_), crate::ledger::store::LedgerLocation::Postgres(pg)) = (&fleet, database) {
        let (pg, tx) = (pg.clone(), Arc::clone(&tx));
        std::thread::Builder::new()
            .name("actseal-anchor-follow".into())
            .spawn(move || follow(&pg, &tx))
            .map_err(|e| AnchorStartError::Config(format!("cannot start the follower: {e}")))?;
    }
    let handle = AnchorHandle {
        latest: rx,
        wake: Arc::clone(&wake),
        acknowledge: config.acknowledge,
        wait: Duration::from_millis(config.wait_ms),
        policy: policy.map(Arc::new),
        tsa_count: config.tsa.len(),
    };
    let task = Task {
        witnesses,
        tsas: config.tsa.clone(),
        request_timeout: Duration::from_millis(config.request_timeout_ms),
        retry: Duration::from_millis(config.retry_ms),
        ledger: Arc::new(Mutex::new(Store::open_at(database)?)),
        anchors: Arc::new(Mutex::new(anchors)),
        tx,
        wake,
        handle: handle.clone(),
        fleet,
    };
    tracing::info!(witnesses = task.witnesses.len(), tsas = task.tsas.len(),
        fleet_node = task.fleet.as_ref().map(|f| f.node.as_str()),
        acknowledge = ?config.acknowledge, quorum = ?config.quorum, "anchoring checkpoints");
    tokio::spawn(task.run());
    Ok(Some(handle))
}

/// One answer of a round.
enum Outcome {
    Cosigned { name: String, line: String },
    Token(Vec<u8>),
    Failed,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Task {
    async fn run(self) {
        let mut last_try = Instant::now();
        // In a fleet: the epoch this task anchors at (None: not the holder).
        let mut anchoring_at: Option<i64> = None;
        loop {
            tokio::select! {
                () = self.wake.notified() => {}
                () = tokio::time::sleep(POLL) => {}
            }
            let epoch = match &self.fleet {
                None => None,
                Some(f) => match f.hook.epoch() {
                    Some(epoch) => Some(epoch),
                    None => {
                        anchoring_at = None;
                        continue;
                    }
                },
            };
            if let Some(e) = epoch
                && anchoring_at != epoch
            {
                if !self.holding(e).await {
                    continue;
                }
                self.resume_from_store(e).await;
                anchoring_at = epoch;
            }
            let ledger = Arc::clone(&self.ledger);
            let newest = match tokio::task::spawn_blocking(move || {
                lock(&ledger).latest_checkpoint()
            })
            .await
            {
                Ok(Ok(Some(c))) => c,
                Ok(Ok(None)) => continue,
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "anchor: cannot read the newest checkpoint");
                    continue;
                }
                Err(_) => continue,
            };
            let current = self.handle.latest();
            let base = match &current {
                Some(a) if a.size > newest.size => continue,
                Some(a) if a.size == newest.size => {
                    if self
                        .handle
                        .satisfies_all(a, &self.witnesses, self.tsas.len())
                        || last_try.elapsed() < self.retry
                    {
                        continue;
                    }
                    Some(a.clone())
                }
                _ => None,
            };
            if let Some(e) = epoch
                && !self.holding(e).await
            {
                anchoring_at = None;
                continue;
            }
            last_try = Instant::now();
            self.round(newest, base, epoch).await;
        }
    }

    /// Fleet mode: whether this node still holds the lease at `epoch` (read from the lease
    /// row: a fenced node stops before its next round, whatever its integrator knows yet).
    async fn holding(&self, epoch: i64) -> bool {
        let Some(fleet) = &self.fleet else {
            return true;
        };
        let (anchors, node) = (Arc::clone(&self.anchors), fleet.node.clone());
        let held =
            tokio::task::spawn_blocking(move || lock(&anchors).holds_lease(&node, epoch)).await;
        match held {
            Ok(Ok(true)) => true,
            Ok(Ok(false)) => {
                tracing::info!(node = %fleet.node, epoch, "not the integrator lease holder (any more): not anchoring");
                fleet.hook.fenced(epoch);
                false
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "anchor: cannot read the lease; not anchoring this round");
                false
            }
            Err(_) => false,
        }
    }

    /// Fleet mode, on taking the lease: the newest anchored checkpoint the table holds (the
    /// previous holder's), from which the rounds go on; witness sizes are read per round.
    async fn resume_from_store(&self, epoch: i64) {
        let anchors = Arc::clone(&self.anchors);
        match tokio::task::spawn_blocking(move || lock(&anchors).latest()).await {
            Ok(Ok(stored)) => {
                let size = stored.as_ref().map(|a| a.size);
                if let Some(stored) = stored {
                    offer(&self.tx, stored);
                }
                tracing::info!(epoch, anchored_size = ?size, "holding the lease: anchoring from the stored state");
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "anchor: cannot read the stored anchored checkpoint")
            }
            Err(_) => {}
        }
    }

    /// Anchors `checkpoint`; with `base` (an earlier round of the same size), asks only what
    /// it lacks and adds to it.
    async fn round(
        &self,
        checkpoint: CheckpointRow,
        base: Option<Arc<AnchoredCheckpoint>>,
        epoch: Option<i64>,
    ) {
        let started = Instant::now();
        let mut anchored = match &base {
            Some(b) => (**b).clone(),
            None => AnchoredCheckpoint {
                size: checkpoint.size,
                root: checkpoint.root,
                note: checkpoint.note.clone(),
                cosigners: BTreeSet::new(),
                timestamps: Vec::new(),
            },
        };
        let mut jobs = tokio::task::JoinSet::new();
        for w in &self.witnesses {
            if anchored.cosigners.contains(&w.key.name) {
                continue;
            }
            let (w, note) = (w.clone(), checkpoint.note.clone());
            let (ledger, anchors, timeout) = (
                Arc::clone(&self.ledger),
                Arc::clone(&self.anchors),
                self.request_timeout,
            );
            let size = checkpoint.size;
            let holder = self
                .fleet
                .as_ref()
                .zip(epoch)
                .map(|(f, e)| (f.node.clone(), e));
            jobs.spawn(async move {
                match submit(&w, size, &note, ledger, Arc::clone(&anchors), timeout).await {
                    Ok(line) => Outcome::Cosigned {
                        name: w.key.name.clone(),
                        line,
                    },
                    Err(SubmitError::Ahead { theirs, .. })
                        if superseded(&anchors, holder).await =>
                    {
                        // A fenced holder's round in flight: the next holder has anchored
                        // a newer checkpoint meanwhile; not a rollback.
                        tracing::info!(witness = %w.key.name, size, theirs,
                            "the witness has a newer checkpoint from the next lease holder; round dropped");
                        Outcome::Failed
                    }
                    Err(e) => {
                        tracing::warn!(witness = %w.key.name, url = %w.url, size, error = %e,
                            "witness did not cosign");
                        Outcome::Failed
                    }
                }
            });
        }
        if anchored.timestamps.is_empty() {
            for t in &self.tsas {
                let (t, text) = (t.clone(), note_text(&checkpoint.note).as_bytes().to_vec());
                let timeout = self.request_timeout;
                jobs.spawn(async move {
                    match tsa::timestamp(&t, &text, timeout).await {
                        Ok(token) => Outcome::Token(token),
                        Err(e) => {
                            tracing::warn!(tsa = %t.url, error = %e, "no timestamp token");
                            Outcome::Failed
                        }
                    }
                });
            }
        }
        let mut satisfied_at: Option<Instant> = None;
        let mut changed = false;
        loop {
            let next = match satisfied_at {
                Some(at) => {
                    let left = STRAGGLER_GRACE.saturating_sub(at.elapsed());
                    match tokio::time::timeout(left, jobs.join_next()).await {
                        Ok(next) => next,
                        Err(_) => break,
                    }
                }
                None => jobs.join_next().await,
            };
            let Some(result) = next else { break };
            match result {
                Ok(Outcome::Cosigned { name, line }) => {
                    anchored.note.push_str(&line);
                    anchored.cosigners.insert(name);
                    changed = true;
                }
                Ok(Outcome::Token(token)) => {
                    anchored.timestamps.push(token);
                    changed = true;
                }
                Ok(Outcome::Failed) | Err(_) => {}
            }
            if changed && satisfied_at.is_none() && self.handle.satisfies(&anchored) {
                // Publish as soon as the policy is met: callers waiting need no more.
                self.publish(&anchored, epoch).await;
                satisfied_at = Some(Instant::now());
                changed = false;
                tracing::debug!(
                    size = anchored.size,
                    ms = started.elapsed().as_millis() as u64,
                    "anchored: policy met"
                );
            }
        }
        jobs.abort_all();
        if changed || base.is_none() {
            self.publish(&anchored, epoch).await;
        }
        tracing::info!(
            size = anchored.size,
            cosigners = anchored.cosigners.len(),
            timestamps = anchored.timestamps.len(),
            satisfied = self.handle.satisfies(&anchored),
            ms = started.elapsed().as_millis() as u64,
            "checkpoint anchored"
        );
    }

    /// Stores and publishes; an anchored checkpoint that could not be stored is not published
    /// (a bundle must never carry what a restart would not find again). In a fleet it is
    /// stored only under the lease at `epoch`.
    async fn publish(&self, anchored: &AnchoredCheckpoint, epoch: Option<i64>) {
        let anchors = Arc::clone(&self.anchors);
        let row = anchored.clone();
        let holder = self
            .fleet
            .as_ref()
            .zip(epoch)
            .map(|(f, e)| (f.node.clone(), e));
        let stored = tokio::task::spawn_blocking(move || match holder {
            Some((node, epoch)) => lock(&anchors).put_as_holder(&row, &node, epoch),
            None => lock(&anchors).put(&row).map(|()| HolderPut::Stored),
        });
        match stored.await {
            Ok(Ok(HolderPut::Stored)) if self.fleet.is_some() => {
                offer(&self.tx, anchored.clone());
            }
            Ok(Ok(HolderPut::Stored)) => {
                let _ = self.tx.send(Some(Arc::new(anchored.clone())));
            }
            Ok(Ok(HolderPut::Unchanged)) => {
                // Never published: a restart would not find it (or the table has another
                // root at that size, which no bundle may carry).
                tracing::warn!(
                    size = anchored.size,
                    "the shared table keeps another anchored checkpoint of this size; this round's is not published"
                );
            }
            Ok(Ok(HolderPut::Fenced)) => {
                tracing::warn!(
                    size = anchored.size,
                    epoch,
                    "fenced: the lease moved on; this round's anchored checkpoint is not stored"
                );
                if let (Some(f), Some(e)) = (&self.fleet, epoch) {
                    f.hook.fenced(e);
                }
            }
            Ok(Err(e)) => tracing::error!(error = %e, "cannot store the anchored checkpoint"),
            Err(_) => tracing::error!("anchor store task failed"),
        }
    }
}

impl AnchorHandle {
    /// Whether every witness has cosigned and a TSA answered: nothing left to ask again.
    fn satisfies_all(&self, a: &AnchoredCheckpoint, witnesses: &[Witness], tsas: usize) -> bool {
        witnesses.iter().all(|w| a.cosigners.contains(&w.key.name))
            && (tsas == 0 || !a.timestamps.is_empty())
    }
}

/// Fleet mode: whether this node (`holder`: its name and epoch) no longer holds the lease.
async fn superseded(anchors: &Arc<Mutex<AnchorStore>>, holder: Option<(String, i64)>) -> bool {
    let Some((node, epoch)) = holder else {
        return false;
    };
    let anchors = Arc::clone(anchors);
    matches!(
        tokio::task::spawn_blocking(move || lock(&anchors).holds_lease(&node, epoch)).await,
        Ok(Ok(false))
    )
}

/// Why one witness did not cosign.
#[derive(Debug, thiserror::Error)]
enum SubmitError {
    #[error(transparent)]
    Witness(#[from] witness_client::WitnessError),
    #[error(
        "the witness has seen size {theirs}, larger than this log's {ours}: this log was rolled back or forked"
    )]
    Ahead { theirs: u64, ours: u64 },
    #[error("the witness keeps answering 409 (size {0})")]
    Conflicts(u64),
    #[error("{0}")]
    Local(String),
}

/// Submits one checkpoint to one witness: from the size it last saw (per the ledger DB), or
/// the size it names in a 409.
async fn submit(
    w: &Witness,
    size: u64,
    note: &str,
    ledger: Arc<Mutex<Store>>,
    anchors: Arc<Mutex<AnchorStore>>,
    timeout: Duration,
) -> Result<String, SubmitError> {
    let name = w.key.name.clone();
    let local = |e: String| SubmitError::Local(e);
    let (a, n) = (Arc::clone(&anchors), name.clone());
    let mut old = tokio::task::spawn_blocking(move || lock(&a).witness_size(&n))
        .await
        .map_err(|e| local(e.to_string()))?
        .map_err(|e| local(e.to_string()))?;
    for _ in 0..3 {
        if old > size {
            return Err(SubmitError::Ahead {
                theirs: old,
                ours: size,
            });
        }
        let l = Arc::clone(&ledger);
        let proof = if old == 0 || old == size {
            Vec::new()
        } else {
            tokio::task::spawn_blocking(move || merkle::consistency_proof(&*lock(&l), old, size))
                .await
                .map_err(|e| local(e.to_string()))?
                .map_err(|e| local(e.to_string()))?
        };
        match witness_client::add_checkpoint(&w.url, &w.key, old, &proof, note, timeout).await? {
            Submitted::Cosigned { line, .. } => {
                let (a, n) = (Arc::clone(&anchors), name.clone());
                tokio::task::spawn_blocking(move || lock(&a).set_witness_size(&n, size))
                    .await
                    .map_err(|e| local(e.to_string()))?
                    .map_err(|e| local(e.to_string()))?;
                return Ok(line);
            }
            Submitted::Conflict(theirs) => {
                tracing::info!(witness = %name, ours = old, theirs, "witness has another size; resubmitting from it");
                let (a, n) = (Arc::clone(&anchors), name.clone());
                tokio::task::spawn_blocking(move || lock(&a).set_witness_size(&n, theirs))
                    .await
                    .map_err(|e| local(e.to_string()))?
                    .map_err(|e| local(e.to_string()))?;
                if theirs == old {
                    return Err(SubmitError::Conflicts(theirs));
                }
                old = theirs;
            }
        }
    }
    Err(SubmitError::Conflicts(old))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn anchored(size: u64, cosigners: &[&str], tokens: usize) -> AnchoredCheckpoint {
        AnchoredCheckpoint {
            size,
            root: [1; 32],
            note: String::new(),
            cosigners: cosigners.iter().map(|c| (*c).to_owned()).collect(),
            timestamps: vec![vec![0x30]; tokens],
        }
    }

    #[test]
    fn a_round_replaces_the_newest_only_with_no_less_evidence() {
        let current = anchored(5, &["w1"], 1);
        assert!(better(&anchored(6, &[], 0), &current), "a larger tree");
        assert!(better(&anchored(5, &["w1", "w2"], 1), &current));
        assert!(better(&anchored(5, &["w1"], 2), &current));
        assert!(!better(&anchored(5, &["w1"], 1), &current), "the same");
        assert!(
            !better(&anchored(5, &["w1", "w2"], 0), &current),
            "a token lost"
        );
        assert!(
            !better(&anchored(5, &[], 2), &current),
            "a cosignature lost"
        );
        assert!(!better(&anchored(4, &["w1", "w2"], 2), &current), "smaller");
    }
}
