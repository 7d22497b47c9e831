//! `actseal audit`: replays a whole exported log offline and confirms every entry.
//!
//! The tree is recomputed from the entries and must equal the newest checkpoint, signed by the
//! attested log key. Every receipt must verify under a registered, attested key of its actor
//! that was in service at its position in the log; each actor's receipts must form one hash
//! chain with sequence numbers 1, 2, 3, … (no gap, no fork); rotations must be signed by the
//! version they retire and retirements by the log key.

use std::collections::HashMap;

use p256::ecdsa::VerifyingKey;
use p256::pkcs8::DecodePublicKey;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::anchors::TrustAnchors;
use super::batch::{self, BatchMember, BatchStatement, MODE_BATCH, MODE_SINGLE};
use super::bundle::{self, LogKeyJson};
use super::checkpoint::verify_checkpoint;
use super::dsse::{self, Envelope};
use super::statement::{self, KeyClaim, KeySubject, Receipt};
use super::time_order::{self, TimeOrder};
use super::{attestation, digest, log};

/// Media type of a log export (`actseal log export`).
pub const EXPORT_MEDIA_TYPE: &str = "application/vnd.actseal.log-export.v1+json";

/// A log export. A `keys` member, which older exports carried, is ignored: which key belongs to
/// which actor is taken from the log's own registration entries, never from a table beside it.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ExportJson {
    media_type: String,
    log_key: LogKeyJson,
    checkpoint: String,
    entries: Vec<String>,
}

/// Which step of the audit (FORMAT.md §11.3) found the problem.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditStep {
    /// The export is not a well-formed export, or an entry is not a well-formed entry.
    Export,
    /// The entries are not what the newest checkpoint, signed by the log key, commits to.
    Tree,
    /// A key registration is not signed by the log key, not attested, or forks a version.
    Registration,
    /// A receipt is not signed by the key in service, or breaks its actor's chain.
    Receipt,
    /// A rotation is not signed by the version it retires, or forks the lineage.
    Rotation,
    /// A retirement is not signed by the log key, or retires a version not in service.
    Retirement,
    /// An entry is dated before the one ahead of it.
    TimeOrder,
    /// A key signed a receipt dated after its retirement.
    SignedAfterRetirement,
    /// The log key is not attested as this log's key.
    LogKey,
}

/// Where the audit stopped, and why.
#[derive(Debug, thiserror::Error)]
#[error("{}{detail}", match .index { Some(i) => format!("entry {i}: "), None => String::new() })]
pub struct AuditError {
    pub step: AuditStep,
    /// The log index of the offending entry, if the failure is about one.
    pub index: Option<u64>,
    pub detail: String,
}

fn fail(step: AuditStep, index: Option<u64>, detail: impl Into<String>) -> AuditError {
    AuditError {
        step,
        index,
        detail: detail.into(),
    }
}

/// What a successful audit confirmed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditReport {
    pub origin: String,
    pub size: u64,
    pub root_hex: String,
    pub receipts: u64,
    pub actors: u64,
    pub rotations: u64,
    pub retirements: u64,
    pub registrations: u64,
    /// Retirements whose statement says the key was kept in the hardware, not destroyed.
    pub retired_keys_kept: u64,
    /// Receipts signed by fleet nodes (`logIndex` null, FORMAT.md §3).
    pub fleet_receipts: u64,
    /// Fleet batches whose last leaves are not in the log yet (FORMAT.md §12.4): the
    /// integrator had not ordered them when the checkpoint was signed.
    pub open_fleet_batches: u64,
}

impl std::fmt::Display for AuditReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "OK: log {} of {} entries (root {}) replayed: {} key registrations, {} receipts of {} actors, \
             {} rotations, {} retirements ({} keys kept in hardware); every signature, chain and sequence checked",
            self.origin.escape_default(),
            self.size,
            self.root_hex,
            self.registrations,
            self.receipts,
            self.actors,
            self.rotations,
            self.retirements,
            self.retired_keys_kept
        )?;
        if self.fleet_receipts > 0 {
            write!(
                f,
                "; {} fleet receipts (logIndex null) placed by the log, {} fleet batches still being integrated",
                self.fleet_receipts, self.open_fleet_batches
            )?;
        }
        Ok(())
    }
}

/// A key the log registered (FORMAT.md §11.2), attested when it was registered.
struct Key {
    actor: String,
    version: u64,
    verifying: VerifyingKey,
}

#[derive(Default)]
struct ActorState {
    /// Key id of the version in service; `None` before registration or after retirement.
    active: Option<String>,
    /// Registered versions, by version number: a second key for one version is a fork.
    registered: HashMap<u64, String>,
    retired: bool,
    sequence: u64,
    previous_sha256: Option<String>,
}

/// A log entry split into its three fields (FORMAT.md §11.1). The signature slot holds a DER
/// signature, or for a batch receipt the batch seal (§12.3).
struct RawEntry {
    payload_type: String,
    payload: Vec<u8>,
    slot: Vec<u8>,
}

/// Splits a log entry into its fields.
fn split_entry(entry: &[u8]) -> Result<RawEntry, String> {
    let mut rest = entry;
    let mut fields: Vec<&[u8]> = Vec::with_capacity(3);
    for _ in 0..3 {
        let (len, tail) = rest.split_first_chunk::<4>().ok_or("entry is truncated")?;
        let len = usize::try_from(u32::from_be_bytes(*len)).map_err(|_| "entry field too large")?;
        if tail.len() < len {
            return Err("entry is truncated".into());
        }
        let (field, tail) = tail.split_at(len);
        fields.push(field);
        rest = tail;
    }
    if !rest.is_empty() {
        return Err("entry has trailing bytes".into());
    }
    let [payload_type, payload, slot] =
        <[&[u8]; 3]>::try_from(fields).map_err(|_| "entry shape")?;
    let payload_type =
        String::from_utf8(payload_type.to_vec()).map_err(|_| "payload type is not UTF-8")?;
    Ok(RawEntry {
        payload_type,
        payload: payload.to_vec(),
        slot: slot.to_vec(),
    })
}

/// The envelope of an entry whose slot holds a DER signature.
fn signed_envelope(entry: &RawEntry) -> Result<Envelope, String> {
    if batch::is_seal(&entry.slot) {
        return Err("the signature slot holds a batch seal, which only a batch receipt may".into());
    }
    let signature = p256::ecdsa::Signature::from_der(&entry.slot)
        .map_err(|_| "signature is not DER ECDSA P-256")?;
    Ok(Envelope {
        payload_type: entry.payload_type.clone(),
        payload: entry.payload.clone(),
        keyid: String::new(),
        signature,
        signature_der: entry.slot.clone(),
    })
}

/// A batch whose receipts the replay is in the middle of: the rest of its leaves must follow in
/// order under the same signed statement (FORMAT.md §12.4): at once for an indexed batch; for a
/// fleet batch, with nothing of its actor between them.
struct OpenBatch {
    /// SHA-256 over the seal's statement payload and signature.
    digest: [u8; 32],
    statement: BatchStatement,
    next_leaf: u64,
}

/// The digest naming a batch statement as a seal carries it.
fn statement_digest(member: &BatchMember) -> [u8; 32] {
    let mut h = Sha256::new();
    for part in [&member.statement.payload, &member.statement.signature_der] {
        h.update(u64::try_from(part.len()).unwrap_or(u64::MAX).to_be_bytes());
        h.update(part);
    }
    h.finalize().into()
}

fn root_of(leaves: &[[u8; 32]]) -> [u8; 32] {
    match leaves.len() {
        0 => Sha256::digest([]).into(),
        1 => leaves.first().copied().unwrap_or_default(),
        n => {
            // The largest power of two below n (RFC 9162 MTH split).
            let k = n.checked_next_power_of_two().map_or(n, |p| p / 2);
            let (left, right) = leaves.split_at(k);
            let mut h = Sha256::new();
            h.update([1u8]);
            h.update(root_of(left));
            h.update(root_of(right));
            h.finalize().into()
        }
    }
}

/// The log an export claims to be, checked against its newest checkpoint.
struct LogUnderAudit {
    origin: String,
    key_id: String,
    verifying: VerifyingKey,
    key_lineage: bundle::Lineage,
    entries: Vec<Vec<u8>>,
    root: [u8; 32],
}

/// Parses the export and requires its entries to be exactly what the newest checkpoint, signed
/// by the export's log key, commits to.
fn open_export(export_json: &[u8]) -> Result<LogUnderAudit, AuditError> {
    let export: ExportJson = serde_json::from_slice(export_json)
        .map_err(|e| fail(AuditStep::Export, None, format!("not a log export: {e}")))?;
    if export.media_type != EXPORT_MEDIA_TYPE {
        return Err(fail(
            AuditStep::Export,
            None,
            format!("mediaType is {:?}", export.media_type),
        ));
    }
    let (origin, log_key, key_lineage) =
        bundle::decode_log_key(export.log_key).map_err(|e| fail(AuditStep::Export, None, e))?;
    let verifying = VerifyingKey::from_public_key_der(&log_key.spki_der)
        .map_err(|e| fail(AuditStep::Export, None, format!("log key: {e}")))?;
    let checkpoint = verify_checkpoint(export.checkpoint.as_bytes(), &origin, &log_key.spki_der)
        .map_err(|e| fail(AuditStep::Tree, None, format!("checkpoint: {e}")))?;
    let entries = export
        .entries
        .iter()
        .enumerate()
        .map(|(i, text)| {
            bundle::base64(&format!("entries[{i}]"), text)
                .map_err(|e| fail(AuditStep::Export, None, e))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let size = u64::try_from(entries.len()).unwrap_or(u64::MAX);
    if checkpoint.size != size {
        return Err(fail(
            AuditStep::Tree,
            None,
            format!(
                "{size} entries, but the checkpoint covers {}",
                checkpoint.size
            ),
        ));
    }
    let leaves: Vec<[u8; 32]> = entries.iter().map(|e| log::leaf_hash(e)).collect();
    let root = root_of(&leaves);
    if root != checkpoint.root {
        return Err(fail(
            AuditStep::Tree,
            None,
            "the entries' Merkle root is not the checkpoint's root",
        ));
    }
    Ok(LogUnderAudit {
        origin,
        key_id: digest::key_id(&log_key.spki_der),
        verifying,
        key_lineage,
        entries,
        root,
    })
}

/// The replay's state: what the log has said so far.
struct Replay<'a> {
    log: &'a LogUnderAudit,
    anchors: &'a TrustAnchors,
    keys: HashMap<String, Key>,
    actors: HashMap<String, ActorState>,
    /// When each key last signed a receipt, and when it was retired (rotation or retirement):
    /// no key may sign after its retirement, whatever order the entries are in.
    last_signed: HashMap<String, i64>,
    retired_at: HashMap<String, i64>,
    last_time: i64,
    receipts: u64,
    rotations: u64,
    retirements: u64,
    registrations: u64,
    retired_kept: u64,
    fleet_receipts: u64,
    /// The time rules of FORMAT.md §11.4.
    times: TimeOrder,
    /// An indexed batch whose leaves are still to come.
    open_batch: Option<OpenBatch>,
    /// Fleet batches whose leaves are still to come, by actor.
    fleet_batches: HashMap<String, OpenBatch>,
}

/// Replays an exported log. The first problem found is returned.
pub fn audit_log(export_json: &[u8], anchors: &TrustAnchors) -> Result<AuditReport, AuditError> {
    let log = open_export(export_json)?;
    let size = u64::try_from(log.entries.len()).unwrap_or(u64::MAX);
    let receipts = log.entries.iter().enumerate().filter_map(|(i, entry)| {
        let raw = split_entry(entry).ok()?;
        let kind = statement::predicate_type_of(&raw.payload_type, &raw.payload).ok()?;
        (kind == statement::RECEIPT_PREDICATE_TYPE).then(|| {
            let index = u64::try_from(i).unwrap_or(u64::MAX);
            (index, time_order::is_fleet_receipt(&raw.payload))
        })
    });
    let single_host_len = time_order::single_host_len(receipts, size);
    let mut replay = Replay {
        log: &log,
        anchors,
        keys: HashMap::new(),
        actors: HashMap::new(),
        last_signed: HashMap::new(),
        retired_at: HashMap::new(),
        last_time: i64::MIN,
        receipts: 0,
        rotations: 0,
        retirements: 0,
        registrations: 0,
        retired_kept: 0,
        fleet_receipts: 0,
        times: TimeOrder::new(single_host_len),
        open_batch: None,
        fleet_batches: HashMap::new(),
    };
    for (position, entry) in log.entries.iter().enumerate() {
        let index = u64::try_from(position).unwrap_or(u64::MAX);
        replay
            .entry(index, entry)
            .map_err(|(step, e)| fail(step, Some(index), e))?;
    }
    replay.finish()?;
    Ok(AuditReport {
        origin: log.origin.clone(),
        size,
        root_hex: hex::encode(log.root),
        receipts: replay.receipts,
        actors: u64::try_from(replay.actors.len()).unwrap_or(u64::MAX),
        rotations: replay.rotations,
        retirements: replay.retirements,
        registrations: replay.registrations,
        retired_keys_kept: replay.retired_kept,
        fleet_receipts: replay.fleet_receipts,
        open_fleet_batches: u64::try_from(replay.fleet_batches.len()).unwrap_or(u64::MAX),
    })
}

impl Replay<'_> {
    /// Checks one entry against everything before it.
    fn entry(&mut self, index: u64, entry: &[u8]) -> Result<(), (AuditStep, String)> {
        let export = |e| (AuditStep::Export, e);
        let raw = split_entry(entry).map_err(export)?;
        let kind = statement::predicate_type_of(&raw.payload_type, &raw.payload).map_err(export)?;
        if kind == statement::RECEIPT_PREDICATE_TYPE {
            self.receipt(index, &raw)
                .map_err(|e| (AuditStep::Receipt, e))?;
        } else {
            self.require_no_open_batch()
                .map_err(|e| (AuditStep::Receipt, e))?;
            let envelope = signed_envelope(&raw).map_err(export)?;
            match kind.as_str() {
                statement::REGISTRATION_PREDICATE_TYPE => self
                    .registration(&envelope)
                    .map_err(|e| (AuditStep::Registration, e)),
                statement::ROTATION_PREDICATE_TYPE => self
                    .rotation(&envelope)
                    .map_err(|e| (AuditStep::Rotation, e)),
                statement::RETIREMENT_PREDICATE_TYPE => self
                    .retirement(&envelope)
                    .map_err(|e| (AuditStep::Retirement, e)),
                statement::LOG_START_PREDICATE_TYPE if index == 0 => {
                    dsse::verify(&envelope, &self.log.verifying).map_err(|e| {
                        (
                            AuditStep::Export,
                            format!("log start not signed by the log key: {e}"),
                        )
                    })
                }
                statement::LOG_START_PREDICATE_TYPE => {
                    Err(export("a log-start entry after the first entry".into()))
                }
                other => Err(export(format!("unknown entry type {other:?}"))),
            }?;
        }
        self.times
            .check(&raw.payload, &kind, index)
            .map_err(|e| (AuditStep::TimeOrder, e))
    }

    /// A fleet batch of `actor` is open: nothing else of that actor may come before its next
    /// leaf.
    fn require_no_open_fleet_batch(&self, actor: &str) -> Result<(), String> {
        match self.fleet_batches.get(actor) {
            Some(open) => Err(format!(
                "the fleet batch of {} receipts by {} from sequence {} stops at leaf {}: its leaves come in order, with nothing of its actor between them",
                open.statement.size,
                open.statement.actor,
                open.statement.first_sequence,
                open.next_leaf
            )),
            None => Ok(()),
        }
    }

    /// Every indexed batch is whole: once its first leaf is in the log, the others follow at
    /// once.
    fn require_no_open_batch(&self) -> Result<(), String> {
        match &self.open_batch {
            Some(open) => Err(format!(
                "the batch of {} receipts by {} from sequence {} stops at leaf {}: a batch is logged whole",
                open.statement.size,
                open.statement.actor,
                open.statement.first_sequence,
                open.next_leaf
            )),
            None => Ok(()),
        }
    }

    /// The batch statement the leaf `member` of `actor` continues, or starts (leaf 0): an open
    /// indexed batch must be continued at once; an open fleet batch of the actor by its next
    /// leaf.
    fn leaf_statement(
        &mut self,
        member: &BatchMember,
        digest: [u8; 32],
        (actor, key_id, verifying): (&str, &str, &VerifyingKey),
    ) -> Result<BatchStatement, String> {
        let next = |open: &OpenBatch| open.digest == digest && open.next_leaf == member.leaf_index;
        if let Some(open) = self.open_batch.take() {
            if next(&open) {
                return Ok(open.statement);
            }
            self.open_batch = Some(open);
            self.require_no_open_batch()?;
        }
        if let Some(open) = self.fleet_batches.remove(actor) {
            if next(&open) {
                return Ok(open.statement);
            }
            self.fleet_batches.insert(actor.to_owned(), open);
            self.require_no_open_fleet_batch(actor)?;
        }
        if member.leaf_index != 0 {
            return Err(format!(
                "leaf {} of a batch whose earlier leaves are not before it",
                member.leaf_index
            ));
        }
        dsse::verify(&member.statement, verifying)
            .map_err(|e| format!("the batch statement: {e}"))?;
        batch::check_statement(&member.statement, key_id)
    }

    /// A batch receipt's seal: the statement verifies under `key` (once per batch), the
    /// payload is the leaf it claims, and the leaf is the next of its batch.
    fn batch_receipt(
        &mut self,
        entry: &RawEntry,
        (actor, key_id, verifying): (&str, &str, &VerifyingKey),
    ) -> Result<Receipt, String> {
        if !batch::is_seal(&entry.slot) {
            return Err("a batch receipt's entry holds a signature, not a batch seal".into());
        }
        let member = batch::parse_seal(&entry.slot)?;
        let digest = statement_digest(&member);
        let statement = self.leaf_statement(&member, digest, (actor, key_id, verifying))?;
        if statement.key_id != key_id {
            return Err("a leaf names another key than its batch statement".into());
        }
        batch::check_leaf(&statement, &member, &entry.payload)?;
        let receipt =
            statement::check_receipt(&entry.payload_type, &entry.payload, key_id, MODE_BATCH)?;
        batch::check_agrees(&statement, member.leaf_index, &receipt)?;
        let next_leaf = member.leaf_index.saturating_add(1);
        if next_leaf < statement.size {
            let fleet = statement.first_log_index.is_none();
            let open = OpenBatch {
                digest,
                statement,
                next_leaf,
            };
            if fleet {
                self.fleet_batches.insert(actor.to_owned(), open);
            } else {
                self.open_batch = Some(open);
            }
        }
        Ok(receipt)
    }

    /// A key registration: signed by the log key, attested for its actor and version when it
    /// was registered, a new key, and the only key of that version.
    fn registration(&mut self, envelope: &Envelope) -> Result<(), String> {
        dsse::verify(envelope, &self.log.verifying)
            .map_err(|e| format!("registration not signed by the log key: {e}"))?;
        let r = statement::check_registration(envelope)?;
        self.require_no_open_fleet_batch(&r.actor)?;
        let claim = KeyClaim {
            subject: KeySubject::Actor {
                actor: &r.actor,
                version: r.version,
            },
            key_id: &r.key.key_id,
            backend: &r.backend,
        };
        attestation::check(&r.attestation, self.anchors, &claim, r.registered_at_unix)
            .map_err(|e| format!("registration of {}#{}: {e}", r.actor, r.version))?;
        if self.keys.contains_key(&r.key.key_id) || r.key.key_id == self.log.key_id {
            return Err(format!("key {} is registered twice", r.key.key_id));
        }
        let state = self.actors.entry(r.actor.clone()).or_default();
        if state.retired {
            return Err(format!("registration for retired actor {:?}", r.actor));
        }
        if state.registered.contains_key(&r.version) {
            return Err(format!(
                "a second key for {}#{}: a fork",
                r.actor, r.version
            ));
        }
        let expected = u64::try_from(state.registered.len())
            .unwrap_or(u64::MAX)
            .saturating_add(1);
        if r.version != expected {
            return Err(format!(
                "{} registers version {} where version {expected} was due",
                r.actor, r.version
            ));
        }
        state.registered.insert(r.version, r.key.key_id.clone());
        if r.version == 1 {
            state.active = Some(r.key.key_id.clone());
        }
        let verifying = VerifyingKey::from_public_key_der(&r.key.spki_der)
            .map_err(|e| format!("registered key: {e}"))?;
        self.keys.insert(
            r.key.key_id,
            Key {
                actor: r.actor,
                version: r.version,
                verifying,
            },
        );
        self.registrations = self.registrations.saturating_add(1);
        Ok(())
    }

    /// A receipt: signed by the actor's key in service, at its own position, continuing the
    /// actor's hash chain.
    fn receipt(&mut self, index: u64, entry: &RawEntry) -> Result<(), String> {
        // The signer and the mode are named inside the payload; find them, then check the
        // signature or the batch seal the mode calls for.
        let claimed: serde_json::Value =
            serde_json::from_slice(&entry.payload).map_err(|e| format!("receipt payload: {e}"))?;
        let key_id = claimed
            .pointer("/predicate/key/id")
            .and_then(|v| v.as_str())
            .ok_or("receipt names no key")?
            .to_owned();
        let is_batch =
            claimed.pointer("/predicate/mode").and_then(|v| v.as_str()) == Some(MODE_BATCH);
        let key = self.keys.get(&key_id).ok_or_else(|| {
            format!("receipt signed by key {key_id}, which the log never registered")
        })?;
        let (actor, version, verifying) = (key.actor.clone(), key.version, key.verifying);
        let receipt = if is_batch {
            self.batch_receipt(entry, (&actor, &key_id, &verifying))?
        } else {
            self.require_no_open_batch()?;
            self.require_no_open_fleet_batch(&actor)?;
            let envelope = signed_envelope(entry)?;
            dsse::verify(&envelope, &verifying)?;
            statement::check_receipt(&entry.payload_type, &entry.payload, &key_id, MODE_SINGLE)?
        };
        if receipt.actor != actor || receipt.key_version != version {
            return Err("receipt's actor or key version is not its key's".into());
        }
        // An indexed receipt must be where it says; a fleet receipt (null) is where the log
        // put it, and the actor's chain below keeps it there once.
        match receipt.log_index {
            Some(said) if said != index => return Err(format!("receipt says logIndex {said}")),
            Some(_) => {}
            None => self.fleet_receipts = self.fleet_receipts.saturating_add(1),
        }
        let last = self.last_signed.entry(key_id.clone()).or_insert(i64::MIN);
        *last = (*last).max(receipt.signed_at_unix);
        self.last_time = self.last_time.max(receipt.signed_at_unix);
        let state = self.actors.entry(receipt.actor.clone()).or_default();
        if state.retired {
            return Err("signed by a retired key after its retirement".into());
        }
        if state.active.as_deref() != Some(key_id.as_str()) {
            return Err(
                "signed by a key version that is not in service: a retired key after its retirement, or a fork"
                    .into(),
            );
        }
        let expected = state.sequence.checked_add(1).ok_or("sequence overflow")?;
        if receipt.sequence != expected {
            return Err(format!(
                "{}: sequence {} where {expected} was due (a gap or a fork)",
                receipt.actor, receipt.sequence
            ));
        }
        if receipt.previous_sha256 != state.previous_sha256 {
            return Err(format!(
                "{}: previousReceipt does not name the previous receipt",
                receipt.actor
            ));
        }
        state.sequence = expected;
        state.previous_sha256 = Some(digest::sha256_hex(&entry.payload));
        self.receipts = self.receipts.saturating_add(1);
        Ok(())
    }

    /// A rotation: signed by the version in service, handing over to the version registered
    /// next.
    fn rotation(&mut self, envelope: &Envelope) -> Result<(), String> {
        let actor: String = serde_json::from_slice::<serde_json::Value>(&envelope.payload)
            .ok()
            .and_then(|v| {
                v.pointer("/predicate/actor")
                    .and_then(|a| a.as_str())
                    .map(str::to_owned)
            })
            .ok_or("rotation names no actor")?;
        self.require_no_open_fleet_batch(&actor)?;
        let rotation = statement::check_rotation(envelope, &actor)?;
        let previous = self
            .keys
            .get(&rotation.from_key_id)
            .ok_or("rotation from a key the log never registered")?;
        if previous.actor != actor || previous.version != rotation.from_version {
            return Err("rotation signed by a key of another actor or version".into());
        }
        dsse::verify(envelope, &previous.verifying)
            .map_err(|e| format!("rotation not signed by the version it retires: {e}"))?;
        let next = self
            .keys
            .get(&rotation.to_key_id)
            .ok_or("rotation to a key the log never registered")?;
        if next.actor != actor || next.version != rotation.to_version {
            return Err("rotation names a key of another actor or version".into());
        }
        if rotation.to_version != rotation.from_version.saturating_add(1) {
            return Err("rotation skips a version".into());
        }
        let state = self.actors.entry(actor).or_default();
        if state.retired || state.active.as_deref() != Some(rotation.from_key_id.as_str()) {
            return Err("rotation from a version that is not in service (a fork)".into());
        }
        state.active = Some(rotation.to_key_id.clone());
        self.retired_at
            .insert(rotation.from_key_id.clone(), rotation.rotated_at_unix);
        self.last_time = self.last_time.max(rotation.rotated_at_unix);
        self.rotations = self.rotations.saturating_add(1);
        Ok(())
    }

    /// A retirement: signed by the log key, of the version in service.
    fn retirement(&mut self, envelope: &Envelope) -> Result<(), String> {
        dsse::verify(envelope, &self.log.verifying)
            .map_err(|e| format!("retirement not signed by the log key: {e}"))?;
        let retirement = statement::check_retirement(envelope)?;
        self.require_no_open_fleet_batch(&retirement.actor)?;
        let state = self.actors.entry(retirement.actor.clone()).or_default();
        if state.retired
            || state.active.as_deref() != Some(retirement.key_id.as_str())
            || state.registered.get(&retirement.version) != Some(&retirement.key_id)
        {
            return Err("retirement of a version that is not in service".into());
        }
        if retirement.key_disposition == "kept" {
            self.retired_kept = self.retired_kept.saturating_add(1);
        }
        state.active = None;
        state.retired = true;
        self.retired_at
            .insert(retirement.key_id.clone(), retirement.retired_at_unix);
        self.last_time = self.last_time.max(retirement.retired_at_unix);
        self.retirements = self.retirements.saturating_add(1);
        Ok(())
    }

    /// What can only be checked once the whole log is known: no key signed after its
    /// retirement by time, and the log key was attested as this log's key.
    fn finish(&self) -> Result<(), AuditError> {
        self.require_no_open_batch()
            .map_err(|e| fail(AuditStep::Receipt, None, e))?;
        for (key_id, retired) in &self.retired_at {
            if self
                .last_signed
                .get(key_id)
                .is_some_and(|last| last > retired)
            {
                return Err(fail(
                    AuditStep::SignedAfterRetirement,
                    None,
                    format!("key {key_id} signed a receipt dated after its retirement"),
                ));
            }
        }
        let when = if self.last_time == i64::MIN {
            0
        } else {
            self.last_time
        };
        let claim = KeyClaim {
            subject: KeySubject::Log {
                origin: &self.log.origin,
            },
            key_id: &self.log.key_id,
            backend: &self.log.key_lineage.backend,
        };
        attestation::check(&self.log.key_lineage, self.anchors, &claim, when)
            .map_err(|e| fail(AuditStep::LogKey, None, format!("log key: {e}")))?;
        Ok(())
    }
}
