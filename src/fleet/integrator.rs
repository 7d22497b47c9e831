//! The integrator every node runs: it takes the lease when it is free or expired, and while
//! it holds it, integrates what the nodes queued. Each integration is one transaction that
//! first locks and checks the lease, then reads the queue, checks each entry, extends the
//! tree, has the log key sign the checkpoint, writes everything (`write_batch`) and moves the
//! rows from the queue to `fleet_integrated`. After the commit it rewrites the log head in
//! the log token and only then publishes the size that head covers; nodes answer on that.

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc::{self, RecvTimeoutError},
    },
    thread,
    time::{Duration, Instant},
};

use postgres::{Client, fallible_iterator::FallibleIterator};
use sha2::{Digest, Sha256};

use super::{
    FleetError, FleetSettings, check,
    lease::{self, Held},
    metrics::FleetMetrics,
    queue::{self, QueuedReceipt},
};
use crate::{
    backend::Backend,
    ledger::{
        Batch, CheckpointRow, EntryKind, EntryRow, KeyChange, KeyRecord, KeyState, ReceiptRow,
        Store, StoreError,
        checkpoint::Checkpoint,
        head::LogHead,
        merkle::{self, Frontier, Hash, MerkleError, NodeReader},
        store::postgres::{PgSettings, write_batch},
    },
    server::sequencer::LogIdentity,
};

/// Loads the log identity, or creates it (log key in the log token, meta rows) on an empty
/// log; called under the lease. Then the start-up check against the head in the log token:
/// the head to continue from.
pub type TakeOver = dyn Fn(&Store) -> Result<(LogIdentity, Option<LogHead>), String> + Send + Sync;

/// What an integrator needs.
pub struct Setup {
    pub settings: FleetSettings,
    pub pg: PgSettings,
    /// The backend holding the log key and the log head (the shared log token).
    pub log_backend: Arc<dyn Backend>,
    pub take_over: Box<TakeOver>,
    pub metrics: Arc<FleetMetrics>,
    /// Told the epoch at takeover and the size after each integration (the anchor task).
    pub anchoring: super::anchor::AnchorHook,
}

/// The integrator thread; stops when dropped.
pub struct Integrator {
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Drop for Integrator {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Starts the integrator thread.
pub fn spawn(setup: Setup) -> Result<Integrator, FleetError> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    let thread = thread::Builder::new()
        .name("actseal-integrator".into())
        .spawn(move || run(setup, &flag))
        .map_err(|e| FleetError::Refused(format!("cannot start the integrator: {e}")))?;
    Ok(Integrator {
        stop,
        thread: Some(thread),
    })
}

/// A connection: the lease and queue client, and a store for reads.
struct Conn {
    client: Client,
    store: Store,
}

/// What the holder keeps between integrations.
struct Holding {
    held: Held,
    log: LogIdentity,
    frontier: Frontier,
    head: Option<LogHead>,
    /// A commit went through but the head could not be rewritten: publish nothing until it is.
    head_behind: bool,
    renewed: Instant,
    cache: HashMap<(u8, u64), Hash>,
}

fn connect(setup: &Setup) -> Result<Conn, FleetError> {
    let mut client = crate::ledger::store::postgres::connect(&setup.pg)?;
    let lease_ms = setup.settings.lease.as_millis().max(200);
    // A stopped holder's open transaction ends (and its lock goes) well before its lease
    // does; a follower never waits on the lock longer than a lease.
    client.batch_execute(&format!(
        "SET idle_in_transaction_session_timeout = {}; SET lock_timeout = {lease_ms}; LISTEN {}",
        lease_ms / 2,
        super::CHANNEL_QUEUED
    ))?;
    let store = super::open_store(&setup.pg)?;
    Ok(Conn { client, store })
}

fn run(setup: Setup, stop: &AtomicBool) {
    let mut conn: Option<Conn> = None;
    let mut holding: Option<Holding> = None;
    // The lease this node held when its connection broke or an integration failed: it
    // continues at the same epoch if it still holds it (state rebuilt from the store).
    let mut resume: Option<Held> = None;
    let poll = setup.settings.lease / 6;
    let mut next_try = Instant::now();
    let mut metrics_at = Instant::now();
    while !stop.load(Ordering::SeqCst) {
        let c = match conn.as_mut() {
            Some(c) => c,
            None => match connect(&setup) {
                Ok(c) => conn.insert(c),
                Err(e) => {
                    tracing::warn!(error = %e, "integrator: cannot reach the database; retrying");
                    thread::sleep(Duration::from_millis(200));
                    continue;
                }
            },
        };
        let outcome = match holding.as_mut() {
            Some(h) => step_holder(&setup, c, h).map(|n| n > 0),
            None if resume.is_some() || Instant::now() >= next_try => {
                next_try = Instant::now() + poll;
                match take_over(&setup, c, resume.take()) {
                    Ok(taken) => {
                        holding = taken;
                        Ok(false)
                    }
                    Err(e) => Err(e),
                }
            }
            None => Ok(false),
        };
        let busy = match outcome {
            Ok(busy) => busy,
            Err(FleetError::Fenced { holder, epoch }) => {
                tracing::warn!(node = %setup.settings.node, holder = %holder, epoch,
                    "fenced: the lease moved on; this node stops integrating");
                setup.metrics.was_fenced();
                holding = None;
                false
            }
            Err(e) => {
                tracing::warn!(error = %e, "integrator: integration interrupted; continuing from the store");
                resume = holding.take().map(|h| h.held).or(resume);
                if matches!(e, FleetError::Unavailable(_)) {
                    conn = None;
                }
                thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        let Some(c) = conn.as_mut() else { continue };
        if !busy {
            let interval = if holding.is_some() {
                setup.settings.integrate_interval
            } else {
                poll.min(Duration::from_millis(100))
            };
            wait(c, interval);
        }
        if metrics_at.elapsed() > Duration::from_millis(250) {
            metrics_at = Instant::now();
            refresh_metrics(&setup, c);
        }
    }
}

/// Waits up to `timeout` for a queue insert's NOTIFY (or the timeout).
fn wait(c: &mut Conn, timeout: Duration) {
    let mut notifications = c.client.notifications();
    let mut it = notifications.timeout_iter(timeout);
    if let Ok(Some(_)) = it.next() {
        // Take whatever else arrived: one integration serves them all.
        while let Ok(Some(_)) = it.next() {}
    }
}

fn refresh_metrics(setup: &Setup, c: &mut Conn) {
    if let Ok(Some(state)) = lease::state(&mut c.client) {
        setup
            .metrics
            .set_lease(&state.holder, state.epoch, state.published_size);
    }
    if let Ok(depth) = queue::depth(&mut c.client) {
        setup.metrics.set_queue_depth(depth);
    }
    let _ = queue::seen(&mut c.client, &setup.settings.node);
}

/// Takes the lease if it is free (or continues `resume`, the epoch this node held), then,
/// under it, rebuilds the holder's state from the store.
fn take_over(
    setup: &Setup,
    c: &mut Conn,
    resume: Option<Held>,
) -> Result<Option<Holding>, FleetError> {
    let node = &setup.settings.node;
    let held = match resume {
        Some(held) => {
            lease::renew(&mut c.client, node, held, setup.settings.lease)?;
            held
        }
        None => match lease::try_take(&mut c.client, node, setup.settings.lease)? {
            Some(held) => {
                setup.metrics.took_over();
                held
            }
            None => return Ok(None),
        },
    };
    let started = Instant::now();
    // Under the lease: the identity (made on an empty log), the start-up check of the store
    // against the log token's head, which it brings up to the store.
    let Conn { client, store } = c;
    let (log, head, size, frontier) =
        under_heartbeat(client, node, held, setup.settings.lease, || {
            let (log, head) = (setup.take_over)(store).map_err(FleetError::Refused)?;
            let size = store.next_log_index()?;
            let frontier = Frontier::from_reader(&*store, size)
                .map_err(|e| FleetError::Store(StoreError::Corrupt(format!("tree: {e}"))))?;
            Ok::<_, FleetError>((log, head, size, frontier))
        })??;
    lease::renew(&mut c.client, node, held, setup.settings.lease)?;
    lease::publish(&mut c.client, node, held, size)?;
    setup.anchoring.took(held.epoch, size);
    tracing::info!(node = %node, epoch = held.epoch, size, resumed = resume.is_some(),
        takeover_ms = started.elapsed().as_millis() as u64, "holding the integrator lease");
    Ok(Some(Holding {
        held,
        log,
        frontier,
        head,
        head_behind: false,
        renewed: Instant::now(),
        cache: HashMap::new(),
    }))
}

/// Runs a takeover's start-up work while another thread renews the lease just taken (every
/// quarter lease): on a long log or a starved machine the check can outlast one lease, and a
/// lease that lapses mid-check goes to the next node, which would then do the same, round
/// after round. A renewal that finds the lease gone ends the heartbeat; the work's result is
/// then discarded as `Fenced`. The heartbeat stops after [`takeover_bound`]: work hung on an
/// unreachable log token must let the lease lapse, not hold the fleet's integration forever.
fn under_heartbeat<T>(
    client: &mut Client,
    node: &str,
    held: Held,
    lease: Duration,
    work: impl FnOnce() -> T,
) -> Result<T, FleetError> {
    let (stop, stopped) = mpsc::channel::<()>();
    thread::scope(|scope| {
        let beat = scope.spawn(move || {
            let until = Instant::now() + takeover_bound(lease);
            while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(lease / 4) {
                if Instant::now() >= until {
                    tracing::error!(node = %node, epoch = held.epoch, bound_ms = takeover_bound(lease).as_millis() as u64,
                        "the takeover's start-up check outlasted its bound; letting the lease lapse");
                    return Err(FleetError::Refused(
                        "the takeover's start-up check outlasted its bound; the lease lapses".into(),
                    ));
                }
                lease::renew(client, node, held, lease)?;
            }
            Ok(())
        });
        let out = work();
        drop(stop);
        let beat = beat
            .join()
            .unwrap_or_else(|_| Err(FleetError::Refused("the lease heartbeat panicked".into())));
        beat.map(|()| out)
    })
}

/// How long a takeover's start-up check may keep the lease alive: ten leases, and at least
/// ten seconds (an incremental check takes milliseconds; a whole one of a long log, seconds).
fn takeover_bound(lease: Duration) -> Duration {
    (lease * 10).max(Duration::from_secs(10))
}

/// One round of the holder: the head brought up if a rewrite failed, an integration, and a
/// renewal when nothing was integrated for a third of the lease. The number integrated.
fn step_holder(setup: &Setup, c: &mut Conn, h: &mut Holding) -> Result<usize, FleetError> {
    if h.head_behind {
        let requests = c.store.request_count_below(h.frontier.size())?;
        record_head(setup, &mut c.client, h, requests)?;
        lease::publish(
            &mut c.client,
            &setup.settings.node,
            h.held,
            h.frontier.size(),
        )?;
    }
    let integrated = integrate(setup, c, h)?;
    if integrated == 0 && h.renewed.elapsed() >= setup.settings.lease / 3 {
        lease::renew(
            &mut c.client,
            &setup.settings.node,
            h.held,
            setup.settings.lease,
        )?;
        h.renewed = Instant::now();
        heal_head(setup, c, h)?;
    }
    Ok(integrated)
}

/// While idle: a fenced holder stopped between its last look at the log token's head and
/// its write may still write an older head (`super::head`); the holder finds the head
/// behind the tree it published and rewrites it.
fn heal_head(setup: &Setup, c: &mut Conn, h: &mut Holding) -> Result<(), FleetError> {
    if h.head.is_none() {
        return Ok(());
    }
    let record = setup
        .log_backend
        .read_log_head()
        .map_err(|e| FleetError::Unavailable(format!("log head: {e}")))?;
    let behind = match record.as_deref().map(LogHead::decode) {
        Some(Ok(head)) => head.size < h.frontier.size(),
        _ => true,
    };
    if behind {
        tracing::warn!(
            size = h.frontier.size(),
            "the log token's head is behind the published tree; rewriting it"
        );
        let requests = c.store.request_count_below(h.frontier.size())?;
        record_head(setup, &mut c.client, h, requests)?;
    }
    Ok(())
}

/// A queued row as the integrator reads it.
struct Queued {
    queue_id: i64,
    node: String,
    kind: EntryKind,
    actor: String,
    entry: Vec<u8>,
    receipt: Option<QueuedReceipt>,
    request: Option<(String, [u8; 32])>,
    key: Option<KeyRecord>,
    /// A rotation's new version (on its rotation and on its registration).
    rotates_version: Option<u32>,
    /// Seconds it has waited so far.
    waited: f64,
}

/// A queue row, or its id with why it cannot be integrated.
type QueueRead = Result<Queued, (i64, String)>;

/// The columns `decode_row` reads.
const QUEUE_COLUMNS: &str = "queue_id, node, kind, actor, entry, sequence, key_id, payload_sha256,
    signed_at, request_id, request_sha256, key_record, rotates_version,
    EXTRACT(EPOCH FROM clock_timestamp() - queued_at)::float8";

fn read_queue(tx: &mut postgres::Transaction<'_>, limit: usize) -> Result<Vec<Item>, FleetError> {
    let rows = tx.query(
        &format!("SELECT {QUEUE_COLUMNS} FROM fleet_queue ORDER BY queue_id LIMIT $1"),
        &[&i64::try_from(limit).unwrap_or(i64::MAX)],
    )?;
    pair_rotations(tx, rows.iter().map(decode_row).collect())
}

/// What is integrated at once: a row, or a rotation's registration and rotation entries
/// (consecutive in the log, as a single host writes them).
enum Item {
    One(Box<QueueRead>),
    Rotation(Box<Queued>, Box<Queued>),
}

/// Puts each rotation entry right after the registration of the version it makes active
/// (both were queued in one transaction; a read cut by its limit fetches the rotation). A
/// rotation's entry without the other is refused.
fn pair_rotations(
    tx: &mut postgres::Transaction<'_>,
    rows: Vec<QueueRead>,
) -> Result<Vec<Item>, FleetError> {
    let mut rotations: Vec<Queued> = Vec::new();
    let mut rest = Vec::with_capacity(rows.len());
    for row in rows {
        match row {
            Ok(r) if r.kind == EntryKind::Rotation => rotations.push(r),
            other => rest.push(other),
        }
    }
    let mut items = Vec::with_capacity(rest.len());
    for row in rest {
        let reg = match row {
            Ok(r) if r.kind == EntryKind::Registration && r.rotates_version.is_some() => r,
            other => {
                items.push(Item::One(Box::new(other)));
                continue;
            }
        };
        let found = match rotations.iter().position(|o| partners(&reg, o)) {
            Some(at) => Some(rotations.swap_remove(at)),
            None => fetch_rotation(tx, &reg)?,
        };
        match found {
            Some(rot) => items.push(Item::Rotation(Box::new(reg), Box::new(rot))),
            None => items.push(Item::One(Box::new(Err((
                reg.queue_id,
                "a rotation's registration without its rotation entry".into(),
            ))))),
        }
    }
    for rot in rotations {
        items.push(Item::One(Box::new(Err((
            rot.queue_id,
            "a rotation entry without the registration of its new version".into(),
        )))));
    }
    Ok(items)
}

/// Whether `rot` is the rotation entry queued with the registration `reg`.
fn partners(reg: &Queued, rot: &Queued) -> bool {
    rot.kind == EntryKind::Rotation
        && rot.node == reg.node
        && rot.actor == reg.actor
        && rot.rotates_version == reg.rotates_version
}

/// The rotation entry queued with `reg`, when the queue's read stopped before it.
fn fetch_rotation(
    tx: &mut postgres::Transaction<'_>,
    reg: &Queued,
) -> Result<Option<Queued>, FleetError> {
    let version = reg
        .rotates_version
        .map(|v| i32::try_from(v).unwrap_or(i32::MAX));
    let row = tx.query_opt(
        &format!(
            "SELECT {QUEUE_COLUMNS} FROM fleet_queue WHERE kind = 'rotation' AND node = $1
             AND actor = $2 AND rotates_version = $3 AND queue_id > $4 ORDER BY queue_id LIMIT 1"
        ),
        &[&reg.node, &reg.actor, &version, &reg.queue_id],
    )?;
    Ok(row.as_ref().map(decode_row).and_then(Result::ok))
}

fn digest(bytes: Option<Vec<u8>>) -> Option<[u8; 32]> {
    bytes.and_then(|b| <[u8; 32]>::try_from(b.as_slice()).ok())
}

/// A queue row, or why it cannot be integrated.
fn decode_row(r: &postgres::Row) -> QueueRead {
    let queue_id: i64 = r.get(0);
    let bad = |what: &str| (queue_id, what.to_owned());
    let kind = match r.get::<_, String>(2).as_str() {
        "receipt" => EntryKind::Receipt,
        "registration" => EntryKind::Registration,
        "rotation" => EntryKind::Rotation,
        "retirement" => EntryKind::Retirement,
        other => return Err(bad(&format!("kind {other:?} is not queued in a fleet"))),
    };
    let receipt = match (r.get::<_, Option<i64>>(5), r.get::<_, Option<String>>(6)) {
        (Some(sequence), Some(key_id)) => Some(QueuedReceipt {
            sequence: u64::try_from(sequence).map_err(|_| bad("negative sequence"))?,
            key_id,
            payload_sha256: digest(r.get(7)).ok_or_else(|| bad("payload digest"))?,
            signed_at: r
                .get::<_, Option<String>>(8)
                .ok_or_else(|| bad("signed_at"))?,
        }),
        _ => None,
    };
    let request = match r.get::<_, Option<String>>(9) {
        Some(id) => Some((id, digest(r.get(10)).ok_or_else(|| bad("request digest"))?)),
        None => None,
    };
    let key = r
        .get::<_, Option<String>>(11)
        .map(|text| queue::key_from_json(&text).map_err(|e| bad(&e.to_string())))
        .transpose()?;
    Ok(Queued {
        queue_id,
        node: r.get(1),
        kind,
        actor: r.get(3),
        entry: r.get(4),
        receipt,
        request,
        key,
        rotates_version: r
            .get::<_, Option<i32>>(12)
            .map(|v| u32::try_from(v).map_err(|_| bad("negative rotates_version")))
            .transpose()?,
        waited: r.get(13),
    })
}

/// Keys for the checks: the store's, and those this integration registers.
struct BatchKeys<'a> {
    store: &'a Store,
    new: &'a HashMap<String, KeyRecord>,
    /// Key ids this integration retires.
    retired: &'a std::collections::HashSet<String>,
    /// The store's answers so far in this integration (the lease is held: nothing else
    /// changes the keys meanwhile), so a batch of one actor's receipts reads its key once.
    cache: &'a std::cell::RefCell<HashMap<String, Option<KeyRecord>>>,
}

impl check::Keys for BatchKeys<'_> {
    fn key(&self, key_id: &str) -> Result<Option<KeyRecord>, String> {
        let cached = self.cache.borrow().get(key_id).cloned();
        let key = match (self.new.get(key_id), cached) {
            (Some(key), _) => Some(key.clone()),
            (None, Some(stored)) => stored,
            (None, None) => {
                let stored = self.store.key_by_id(key_id).map_err(|e| e.to_string())?;
                self.cache
                    .borrow_mut()
                    .insert(key_id.to_owned(), stored.clone());
                stored
            }
        };
        Ok(key.map(|mut k| {
            if self.retired.contains(key_id) {
                k.state = KeyState::Retired;
            }
            k
        }))
    }
}

/// Nodes staged by this integration over the cache over the store.
struct Nodes<'a> {
    store: &'a Store,
    staged: &'a HashMap<(u8, u64), Hash>,
    cache: &'a HashMap<(u8, u64), Hash>,
}

impl NodeReader for Nodes<'_> {
    fn node(&self, level: u8, index: u64) -> Result<Hash, MerkleError> {
        if let Some(hash) = self
            .staged
            .get(&(level, index))
            .or(self.cache.get(&(level, index)))
        {
            return Ok(*hash);
        }
        NodeReader::node(self.store, level, index)
    }
}

/// What one integration stages.
#[derive(Default)]
struct Staged {
    /// Each receipt actor's newest receipt in the log and in this integration so far.
    heads: HashMap<String, (u64, [u8; 32])>,
    batch: Batch,
    nodes: HashMap<(u8, u64), Hash>,
    /// (queue id, log index)
    placed: Vec<(i64, i64)>,
    refused: Vec<i64>,
    new_keys: HashMap<String, KeyRecord>,
    /// Each actor's active key after this integration's rotations and retirements.
    active: HashMap<String, Option<KeyRecord>>,
    retired: std::collections::HashSet<String>,
    lags: Vec<f64>,
    /// Keys read from the store by the checks (`BatchKeys`).
    key_cache: std::cell::RefCell<HashMap<String, Option<KeyRecord>>>,
    /// (actor, new key id) of each checked rotation: a pending handover to that key
    /// completes in this integration (`handover::complete`).
    rotated: Vec<(String, String)>,
}

/// Checks a row and, if it passes, appends it to the tree.
fn stage_row(
    store: &Store,
    log: &LogIdentity,
    frontier: &mut Frontier,
    staged: &mut Staged,
    requests: &mut std::collections::HashSet<String>,
    row: Queued,
) {
    let checked = match (&row.kind, &row.receipt) {
        (EntryKind::Receipt, Some(facts)) => {
            let keys = BatchKeys {
                store,
                new: &staged.new_keys,
                retired: &staged.retired,
                cache: &staged.key_cache,
            };
            let head = staged.heads.get(&row.actor).copied();
            check::receipt(&row.entry, &row.actor, facts, &keys, head)
        }
        (EntryKind::Registration, _) if registered(store, staged, row.key.as_ref()) => {
            Err("it registers a key or an actor that is registered already".into())
        }
        (EntryKind::Receipt, None) => Err("a receipt without its facts".into()),
        (EntryKind::Retirement, _) => retirement(store, log, staged, &row),
        (EntryKind::Registration, _) if row.rotates_version.is_some() => {
            Err("a rotation's registration alone".into())
        }
        (kind, _) => check::log_statement(&row.entry, *kind, &log.key.public_key, row.key.as_ref()),
    };
    if let Err(reason) = checked {
        refuse(staged, &row, &reason);
        return;
    }
    place(frontier, staged, requests, row);
}

fn refuse(staged: &mut Staged, row: &Queued, reason: &str) {
    tracing::error!(queue_id = row.queue_id, node = %row.node, actor = %row.actor, reason = %reason,
        "queued entry refused: it is not integrated");
    staged.refused.push(row.queue_id);
}

/// The key the log (with this integration so far) holds active for `actor`.
fn active_key(store: &Store, staged: &Staged, actor: &str) -> Result<KeyRecord, String> {
    let active = match staged.active.get(actor) {
        Some(key) => key.clone(),
        None => store
            .keys(Some(actor))
            .map_err(|e| e.to_string())?
            .into_iter()
            .find(|k| k.state == KeyState::Active),
    };
    active.ok_or_else(|| format!("actor {actor:?} has no active key in the log"))
}

/// Checks a retirement of the actor's active key and stages its key change.
fn retirement(
    store: &Store,
    log: &LogIdentity,
    staged: &mut Staged,
    row: &Queued,
) -> Result<(), String> {
    let active = active_key(store, staged, &row.actor)?;
    let retired_at = check::retirement(&row.entry, &row.actor, &log.key.public_key, &active)?;
    staged.batch.keys.push(KeyChange::Retire {
        actor: row.actor.clone(),
        version: active.version,
        retired_at,
    });
    staged.active.insert(row.actor.clone(), None);
    staged.retired.insert(active.key_id);
    Ok(())
}

/// Checks a rotation (its new version's registration, signed by the log key, and its
/// rotation entry, signed by the actor's active key) and places both, consecutively: the
/// previous version retired, the new one active from the rotation's index.
fn stage_rotation(
    store: &Store,
    log: &LogIdentity,
    frontier: &mut Frontier,
    staged: &mut Staged,
    (reg, rot): (Queued, Queued),
) {
    let checked = (|| {
        let key = reg
            .key
            .as_ref()
            .ok_or("a rotation's registration without its key")?;
        if rot.key.as_ref().map(|k| &k.key_id) != Some(&key.key_id)
            || Some(key.version) != reg.rotates_version
        {
            return Err("the rotation's rows name different keys".to_owned());
        }
        let active = active_key(store, staged, &rot.actor)?;
        let rotated_at = check::rotation(&rot.entry, &rot.actor, &active, key)?;
        let taken = staged.new_keys.contains_key(&key.key_id)
            || !matches!(store.key_by_id(&key.key_id), Ok(None))
            || key.key_id == log.key_id;
        if taken {
            return Err(format!("key {} is registered already", key.key_id));
        }
        check::log_statement(&reg.entry, reg.kind, &log.key.public_key, Some(key))?;
        Ok((key.clone(), active, rotated_at))
    })();
    let (key, active, rotated_at) = match checked {
        Ok(checked) => checked,
        Err(reason) => {
            refuse(staged, &reg, &reason);
            refuse(staged, &rot, &reason);
            return;
        }
    };
    let mut none = std::collections::HashSet::new();
    place(frontier, staged, &mut none, reg);
    let rotation_index = frontier.size();
    place(frontier, staged, &mut none, rot);
    staged.batch.keys.push(KeyChange::Retire {
        actor: key.actor.clone(),
        version: active.version,
        retired_at: rotated_at,
    });
    staged.new_keys.insert(key.key_id.clone(), key.clone());
    staged.retired.insert(active.key_id);
    staged.active.insert(key.actor.clone(), Some(key.clone()));
    staged.rotated.push((key.actor.clone(), key.key_id.clone()));
    staged.batch.keys.push(KeyChange::Rotated {
        key: Box::new(key),
        rotation_index,
    });
}

/// Appends a checked row to the tree and stages what it writes.
fn place(
    frontier: &mut Frontier,
    staged: &mut Staged,
    requests: &mut std::collections::HashSet<String>,
    row: Queued,
) {
    let index = frontier.size();
    for (level, node_index, hash) in frontier.append(merkle::leaf_hash(&row.entry)) {
        staged.nodes.insert((level, node_index), hash);
        staged.batch.nodes.push((level, node_index, hash));
    }
    if let Some(facts) = row.receipt {
        staged
            .heads
            .insert(row.actor.clone(), (facts.sequence, facts.payload_sha256));
        staged.batch.receipts.push(ReceiptRow {
            log_index: index,
            actor: row.actor.clone(),
            sequence: facts.sequence,
            key_id: facts.key_id,
            payload_sha256: facts.payload_sha256,
            signed_at: facts.signed_at,
            proof_size: 0,
            proof: Vec::new(),
        });
        if let Some((id, fingerprint)) = row.request {
            // One request id names one receipt: a second (another node's) is not recorded.
            if requests.insert(id.clone()) {
                staged.batch.requests.push((id, fingerprint, index));
            }
        }
    }
    if let (EntryKind::Registration, Some(key), None) = (row.kind, row.key, row.rotates_version) {
        staged.new_keys.insert(key.key_id.clone(), key.clone());
        staged.active.insert(key.actor.clone(), Some(key.clone()));
        staged.batch.keys.push(KeyChange::Insert(Box::new(key)));
    }
    staged.batch.entries.push(EntryRow {
        log_index: index,
        kind: row.kind,
        actor: row.actor,
        entry: row.entry,
    });
    staged
        .placed
        .push((row.queue_id, i64::try_from(index).unwrap_or(i64::MAX)));
    staged.lags.push(row.waited);
}

/// Whether a registration's key id, or its actor, is registered already (in the log or in
/// this integration): inserting it would break a unique key of the key table.
fn registered(store: &Store, staged: &Staged, key: Option<&KeyRecord>) -> bool {
    let Some(key) = key else {
        return false;
    };
    let in_batch = staged
        .new_keys
        .values()
        .any(|k| k.key_id == key.key_id || k.actor == key.actor);
    in_batch
        || !matches!(store.key_by_id(&key.key_id), Ok(None))
        || !matches!(store.keys(Some(&key.actor)).map(|k| k.is_empty()), Ok(true))
}

/// The readable rows of `items`.
fn queued(items: &[Item]) -> impl Iterator<Item = &Queued> {
    items.iter().flat_map(|item| match item {
        Item::One(row) => Result::as_ref(&**row).ok().into_iter().collect(),
        Item::Rotation(reg, rot) => vec![&**reg, &**rot],
    })
}

/// The newest receipt in the log of each receipt actor of `rows`.
fn stored_heads(
    tx: &mut postgres::Transaction<'_>,
    rows: &[Item],
) -> Result<HashMap<String, (u64, [u8; 32])>, FleetError> {
    let mut actors: Vec<&str> = queued(rows)
        .filter(|r| r.receipt.is_some())
        .map(|r| r.actor.as_str())
        .collect();
    actors.sort_unstable();
    actors.dedup();
    let found = tx.query(
        "SELECT DISTINCT ON (actor) actor, sequence, payload_sha256 FROM receipts
         WHERE actor = ANY($1) ORDER BY actor, sequence DESC",
        &[&actors],
    )?;
    let mut heads = HashMap::new();
    for row in found {
        let sequence = u64::try_from(row.get::<_, i64>(1)).unwrap_or(0);
        if let Some(digest) = digest(row.get(2)) {
            heads.insert(row.get::<_, String>(0), (sequence, digest));
        }
    }
    Ok(heads)
}

/// Request ids of `rows` already recorded in the log (one query for all).
fn recorded_requests(
    tx: &mut postgres::Transaction<'_>,
    rows: &[Item],
) -> Result<std::collections::HashSet<String>, FleetError> {
    let ids: Vec<&str> = queued(rows)
        .filter_map(|row| row.request.as_ref().map(|(id, _)| id.as_str()))
        .collect();
    if ids.is_empty() {
        return Ok(std::collections::HashSet::new());
    }
    let found = tx.query(
        "SELECT request_id FROM requests WHERE request_id = ANY($1)",
        &[&ids],
    )?;
    Ok(found.into_iter().map(|r| r.get(0)).collect())
}

/// One integration; the number of entries integrated.
fn integrate(setup: &Setup, c: &mut Conn, h: &mut Holding) -> Result<usize, FleetError> {
    let node = &setup.settings.node;
    let mut tx = c.client.transaction()?;
    lease::lock_held(&mut tx, node, h.held)?;
    let rows = read_queue(&mut tx, setup.settings.max_batch)?;
    if rows.is_empty() {
        return Ok(0);
    }
    let started = Instant::now();
    let mut frontier = h.frontier.clone();
    let mut staged = Staged {
        heads: stored_heads(&mut tx, &rows)?,
        ..Staged::default()
    };
    let mut requests = recorded_requests(&mut tx, &rows)?;
    for item in rows {
        let row = match item {
            Item::One(row) => *row,
            Item::Rotation(reg, rot) => {
                stage_rotation(&c.store, &h.log, &mut frontier, &mut staged, (*reg, *rot));
                continue;
            }
        };
        match row {
            Ok(row) => stage_row(
                &c.store,
                &h.log,
                &mut frontier,
                &mut staged,
                &mut requests,
                row,
            ),
            Err((queue_id, reason)) => {
                tracing::error!(queue_id, reason = %reason, "queued row unreadable: refused");
                staged.refused.push(queue_id);
            }
        }
    }
    if !staged.batch.entries.is_empty() {
        // The lease again, right before the log key signs: a session the server ended while
        // this node staged (stopped, idle in the transaction) fails here, before a signature.
        lease::lock_held(&mut tx, node, h.held)?;
        seal(setup, &c.store, h, &frontier, &mut staged)?;
        write_batch(&mut tx, &staged.batch)?;
        super::handover::complete(&mut tx, &staged.rotated)?;
        let (ids, indices): (Vec<i64>, Vec<i64>) = staged.placed.iter().copied().unzip();
        tx.execute(
            "INSERT INTO fleet_integrated (queue_id, node, log_index, queued_at)
             SELECT q.queue_id, q.node, x.log_index, q.queued_at
             FROM fleet_queue q JOIN unnest($1::bigint[], $2::bigint[]) AS x(queue_id, log_index)
               ON x.queue_id = q.queue_id",
            &[&ids, &indices],
        )?;
    }
    let done: Vec<i64> = staged
        .placed
        .iter()
        .map(|(id, _)| *id)
        .chain(staged.refused.iter().copied())
        .collect();
    tx.execute("DELETE FROM fleet_queue WHERE queue_id = ANY($1)", &[&done])?;
    lease::renew(&mut tx, node, h.held, setup.settings.lease)?;
    tx.commit()?;
    h.renewed = Instant::now();
    let count = staged.batch.entries.len();
    let requests = staged.batch.requests.len();
    h.frontier = frontier;
    if h.cache.len() > 1 << 18 {
        h.cache.clear();
    }
    h.cache.extend(staged.nodes.drain());
    if count > 0 {
        let total = h.head.map_or(0, |head| head.requests) + requests as u64;
        record_head(setup, &mut c.client, h, total)?;
        lease::publish_unsynced(&mut c.client, node, h.held, h.frontier.size())?;
    }
    let spent = started.elapsed().as_secs_f64();
    let lags: Vec<f64> = staged.lags.iter().map(|w| w + spent).collect();
    setup.metrics.integrated(&lags);
    tracing::debug!(
        entries = count,
        size = h.frontier.size(),
        ms = (spent * 1000.0) as u64,
        "integrated"
    );
    setup.anchoring.integrated(h.frontier.size());
    Ok(count)
}

/// Signs the checkpoint of the new tree with the log key (checked) and proves each receipt
/// against it.
fn seal(
    setup: &Setup,
    store: &Store,
    h: &Holding,
    frontier: &Frontier,
    staged: &mut Staged,
) -> Result<(), FleetError> {
    let corrupt = |e: String| FleetError::Store(StoreError::Corrupt(e));
    let checkpoint = Checkpoint::new(h.log.origin.clone(), frontier.size(), frontier.root())
        .map_err(|e| corrupt(e.to_string()))?;
    let backend = Arc::clone(&setup.log_backend);
    let note = checkpoint.signed_note_checked(&h.log.origin, &h.log.spki_der(), |body| {
        let digest: [u8; 32] = Sha256::digest(body).into();
        backend
            .sign_digest(&h.log.key, &digest)
            .map_err(|e| FleetError::Unavailable(format!("log key: {e}")))
    })?;
    let nodes = Nodes {
        store,
        staged: &staged.nodes,
        cache: &h.cache,
    };
    for row in &mut staged.batch.receipts {
        row.proof = merkle::inclusion_proof(&nodes, row.log_index, checkpoint.size())
            .map_err(|e| corrupt(format!("proof of {}: {e}", row.log_index)))?;
        row.proof_size = checkpoint.size();
    }
    staged.batch.checkpoint = Some(CheckpointRow {
        size: checkpoint.size(),
        root: *checkpoint.root(),
        note,
    });
    Ok(())
}

/// Rewrites the log head in the log token to the tree just committed, if this node still
/// holds the lease and the token holds no newer head (`super::head::write`).
/// `requests`: request ids recorded for the whole tree.
fn record_head(
    setup: &Setup,
    client: &mut Client,
    h: &mut Holding,
    requests: u64,
) -> Result<(), FleetError> {
    let Some(head) = h.head else {
        return Ok(());
    };
    let next = LogHead {
        size: h.frontier.size(),
        root: h.frontier.root(),
        requests,
        ..head
    };
    let node = &setup.settings.node;
    let written = super::head::write(setup.log_backend.as_ref(), client, node, h.held, &next);
    if let Err(e) = written {
        h.head_behind = true;
        tracing::error!(error = %e, size = next.size, "cannot record the log head in the log token; nothing is published");
        return Err(e);
    }
    h.head = Some(next);
    h.head_behind = false;
    Ok(())
}

impl From<crate::ledger::checkpoint::CheckpointError> for FleetError {
    fn from(e: crate::ledger::checkpoint::CheckpointError) -> Self {
        FleetError::Store(StoreError::Corrupt(format!("checkpoint: {e}")))
    }
}
