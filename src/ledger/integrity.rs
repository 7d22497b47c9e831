//! The start-up check: the stored log must be exactly what its signed checkpoints commit
//! to, and every table a bundle or a retry is built from must agree with the entries, or the
//! daemon refuses to sign on top of it.
//!
//! It is incremental: a watermark (meta `check.watermark`) records how far the log was
//! checked, the tree root there and the state the entries imply (each actor's newest receipt,
//! retired and registered keys, request ids). A start checks only the entries after it, plus
//! what is cheap at any size (the frontier, the newest checkpoint, per-actor heads, the key
//! table, row counts); `actseal log check` re-verifies from the first entry.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{
    ActorHead, CheckedTable, EntryKind, KeyState, ScannedEntry, Store, StoreError,
    checkpoint::Checkpoint,
    entry,
    merkle::{self, Frontier},
};

/// The meta row holding the [`Watermark`].
const META_WATERMARK: &str = "check.watermark";

/// The few members of an entry's statement that the tables derived from the log depend on.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct EntryHead {
    predicate_type: String,
    predicate: EntryPredicate,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct EntryPredicate {
    actor: String,
    #[serde(default)]
    sequence: Option<u64>,
    #[serde(default)]
    previous: Option<KeyRefHead>,
    #[serde(default)]
    key_id: Option<String>,
    #[serde(default)]
    version: Option<u64>,
    /// A receipt's signing key.
    #[serde(default)]
    key: Option<ReceiptKeyHead>,
    #[serde(default)]
    signed_at: Option<String>,
    #[serde(default)]
    log_index: Option<u64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct KeyRefHead {
    key_id: String,
}

#[derive(Deserialize)]
struct ReceiptKeyHead {
    id: String,
}

/// An actor's newest receipt, as the watermark keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct HeadRecord {
    sequence: u64,
    payload_sha256: String,
}

/// What the entries themselves say the signing state is: each actor's newest receipt and the
/// keys that have been retired or registered.
#[derive(Default, Serialize, Deserialize)]
struct Derived {
    heads: BTreeMap<String, HeadRecord>,
    retired: BTreeSet<String>,
    /// Key id → (actor, version), from the registration entries.
    registered: BTreeMap<String, (String, u64)>,
}

/// How far the log was checked, and what held there.
#[derive(Serialize, Deserialize)]
struct Watermark {
    size: u64,
    root: String,
    /// Request ids naming the first `size` entries.
    requests: u64,
    derived: Derived,
}

/// A receipt's statement as the checks of its row need it.
struct ReceiptFacts<'a> {
    actor: &'a str,
    sequence: u64,
    key_id: &'a str,
    signed_at: &'a str,
    payload_sha256: [u8; 32],
}

impl Derived {
    /// Accounts an entry; for a receipt, returns what its row must say.
    fn account(&mut self, index: u64, bytes: &[u8]) -> Result<Option<OwnedFacts>, StoreError> {
        let corrupt = |what: &str| StoreError::Corrupt(format!("log entry {index}: {what}"));
        let parts = entry::decode(bytes).ok_or_else(|| corrupt("not an envelope"))?;
        let head: EntryHead =
            serde_json::from_slice(&parts.payload).map_err(|_| corrupt("not a statement"))?;
        match head.predicate_type.as_str() {
            crate::proof::receipt::RECEIPT_PREDICATE_TYPE => {
                let sequence = head
                    .predicate
                    .sequence
                    .ok_or_else(|| corrupt("no sequence"))?;
                // A fleet receipt names no index (null, FORMAT.md §3): it is where the log put it.
                if head.predicate.log_index.is_some_and(|named| named != index) {
                    return Err(corrupt("its statement names another log index"));
                }
                let payload_sha256: [u8; 32] = Sha256::digest(&parts.payload).into();
                self.heads.insert(
                    head.predicate.actor.clone(),
                    HeadRecord {
                        sequence,
                        payload_sha256: hex::encode(payload_sha256),
                    },
                );
                return Ok(Some(OwnedFacts {
                    actor: head.predicate.actor,
                    sequence,
                    key_id: head.predicate.key.map(|k| k.id).unwrap_or_default(),
                    signed_at: head.predicate.signed_at.unwrap_or_default(),
                    payload_sha256,
                    payload: parts.payload,
                }));
            }
            crate::proof::lineage::ROTATION_PREDICATE_TYPE => {
                let previous = head
                    .predicate
                    .previous
                    .ok_or_else(|| corrupt("no previous key"))?;
                self.retired.insert(previous.key_id);
            }
            crate::proof::lineage::RETIREMENT_PREDICATE_TYPE => {
                let key_id = head.predicate.key_id.ok_or_else(|| corrupt("no key id"))?;
                self.retired.insert(key_id);
            }
            crate::proof::lineage::REGISTRATION_PREDICATE_TYPE => {
                let key_id = head.predicate.key_id.ok_or_else(|| corrupt("no key id"))?;
                let version = head
                    .predicate
                    .version
                    .ok_or_else(|| corrupt("no version"))?;
                if self
                    .registered
                    .insert(key_id, (head.predicate.actor, version))
                    .is_some()
                {
                    return Err(corrupt("a key registered twice"));
                }
            }
            crate::proof::lineage::LOG_START_PREDICATE_TYPE if index == 0 => {}
            crate::proof::lineage::LOG_START_PREDICATE_TYPE => {
                return Err(corrupt("a log-start statement after the first entry"));
            }
            other => return Err(corrupt(&format!("unknown statement type {other:?}"))),
        }
        Ok(None)
    }

    /// The tables the sequencer continues from must say what the log says.
    fn compare(&self, store: &Store) -> Result<(), IntegrityError> {
        let heads: BTreeMap<String, HeadRecord> = store
            .actor_heads()?
            .into_iter()
            .map(|(actor, head): (String, ActorHead)| {
                (
                    actor,
                    HeadRecord {
                        sequence: head.sequence,
                        payload_sha256: hex::encode(head.payload_sha256),
                    },
                )
            })
            .collect();
        if heads != self.heads {
            return Err(IntegrityError::Corrupt(
                "the receipts table does not match the log's receipts (an actor's chain would fork)"
                    .into(),
            ));
        }
        let keys = store.keys(None)?;
        if keys.len() != self.registered.len() {
            return Err(IntegrityError::Corrupt(format!(
                "the key table holds {} keys, the log registers {}",
                keys.len(),
                self.registered.len()
            )));
        }
        for key in keys {
            let registered = self.registered.get(&key.key_id);
            if registered != Some(&(key.actor.clone(), u64::from(key.version))) {
                return Err(IntegrityError::Corrupt(format!(
                    "key {} ({:?} v{}) is not the key the log registered for it",
                    key.key_id, key.actor, key.version
                )));
            }
            let retired_in_log = self.retired.contains(&key.key_id);
            if retired_in_log != (key.state == KeyState::Retired) {
                return Err(IntegrityError::Corrupt(format!(
                    "key {} is {} but the log says otherwise",
                    key.key_id,
                    key.state.as_str()
                )));
            }
        }
        Ok(())
    }
}

/// A receipt's statement facts, owned (see [`ReceiptFacts`]).
struct OwnedFacts {
    actor: String,
    sequence: u64,
    key_id: String,
    signed_at: String,
    payload_sha256: [u8; 32],
    payload: Vec<u8>,
}

impl OwnedFacts {
    fn facts(&self) -> ReceiptFacts<'_> {
        ReceiptFacts {
            actor: &self.actor,
            sequence: self.sequence,
            key_id: &self.key_id,
            signed_at: &self.signed_at,
            payload_sha256: self.payload_sha256,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum IntegrityError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("log is corrupt: {0}")]
    Corrupt(String),
}

/// What the check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogStatus {
    pub size: u64,
    pub root: merkle::Hash,
    /// Request ids naming the log's entries.
    pub requests: u64,
    /// Entries checked now (the rest were checked at an earlier start).
    pub checked: u64,
    /// The watermark to keep for the next start ([`save_watermark`]), once the caller has
    /// compared this head with the hardware's record.
    pub watermark: String,
}

/// SHA-256 of a watermark's text, as the hardware's log head record keeps it.
pub fn watermark_sha256(text: &str) -> [u8; 32] {
    Sha256::digest(text.as_bytes()).into()
}

/// Stores the watermark a check returned; the next start resumes from it if the hardware's
/// record names its digest.
pub fn save_watermark(store: &Store, text: &str) -> Result<(), StoreError> {
    store.set_meta(META_WATERMARK, text)
}

/// Whether to start from the watermark or from the first entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckMode {
    Incremental,
    Full,
}

/// What the check needs from outside the store: the log's origin, a verifier of checkpoint
/// notes (the signature under the log key) and the fingerprint a retry of a receipt's
/// request would have (from its statement's bytes).
pub struct Checks<'a> {
    pub origin: &'a str,
    pub checkpoint_ok: &'a dyn Fn(&str) -> Result<(), String>,
    pub request_fingerprint: &'a dyn Fn(&[u8]) -> Option<[u8; 32]>,
    /// The digest of the watermark the hardware's log head record names: a stored watermark
    /// is trusted only if it matches (`None`: none is, the whole log is checked).
    pub trusted_watermark: Option<[u8; 32]>,
}

impl Checks<'_> {
    /// A stored checkpoint must state this tree head and be signed by the log key.
    fn checkpoint(&self, size: u64, root: &merkle::Hash, note: &str) -> Result<(), StoreError> {
        let body = Checkpoint::new(self.origin, size, *root)
            .map_err(|e| StoreError::Corrupt(format!("checkpoint {size}: {e}")))?
            .body();
        if !note.starts_with(&body) {
            return Err(StoreError::Corrupt(format!(
                "the checkpoint of size {size}'s note does not state its tree head"
            )));
        }
        (self.checkpoint_ok)(note).map_err(|e| {
            StoreError::Corrupt(format!("the checkpoint of size {size}'s signature: {e}"))
        })
    }
}

fn load_watermark(
    store: &Store,
    trusted: Option<[u8; 32]>,
) -> Result<Option<Watermark>, StoreError> {
    let Some(text) = store.meta(META_WATERMARK)? else {
        return Ok(None);
    };
    if trusted != Some(watermark_sha256(&text)) {
        // Edited, or a crash between storing it and recording its digest in the hardware.
        tracing::warn!(
            "the start-up check's watermark is not the one the hardware's log head names; checking the whole log"
        );
        return Ok(None);
    }
    match serde_json::from_str::<Watermark>(&text) {
        Ok(watermark) => Ok(Some(watermark)),
        Err(e) => {
            tracing::warn!(error = %e, "the start-up check's watermark is unreadable; checking the whole log");
            Ok(None)
        }
    }
}

/// Where to start: the watermark, if its frontier still stands in the stored nodes.
fn resume(
    store: &Store,
    mode: CheckMode,
    trusted: Option<[u8; 32]>,
) -> Result<(Frontier, u64, Derived), IntegrityError> {
    let fresh = || (Frontier::default(), 0, Derived::default());
    if mode == CheckMode::Full {
        return Ok(fresh());
    }
    let Some(watermark) = load_watermark(store, trusted)? else {
        return Ok(fresh());
    };
    let frontier = Frontier::from_reader(store, watermark.size)
        .map_err(|e| IntegrityError::Corrupt(format!("stored tree nodes: {e}")))?;
    if hex::encode(frontier.root()) != watermark.root {
        return Err(IntegrityError::Corrupt(format!(
            "the tree at {} entries, checked at an earlier start, has another root now",
            watermark.size
        )));
    }
    Ok((frontier, watermark.requests, watermark.derived))
}

/// A receipt entry's row must say what its statement says, and its stored inclusion proof
/// must lead to the root of the checkpoint it names (whose root is checked against the tree
/// when the walk reaches it).
fn check_receipt_row(
    scanned: &ScannedEntry<'_>,
    facts: &ReceiptFacts<'_>,
    leaf: &merkle::Hash,
    checks: &Checks<'_>,
    payload: &[u8],
) -> Result<(), StoreError> {
    let index = scanned.index;
    let corrupt = |what: &str| StoreError::Corrupt(format!("receipt {index}: {what}"));
    let Some(row) = &scanned.receipt else {
        return Err(corrupt("its row is missing (no bundle can be built)"));
    };
    if row.actor != facts.actor
        || row.sequence != facts.sequence
        || row.key_id != facts.key_id
        || row.signed_at != facts.signed_at
        || row.payload_sha256 != facts.payload_sha256
    {
        return Err(corrupt("its row does not match its log entry"));
    }
    let root = row
        .proof_root
        .ok_or_else(|| corrupt("the checkpoint its proof is against is missing"))?;
    crate::verify::merkle::verify_inclusion(leaf, index, row.proof_size, &row.proof, &root)
        .map_err(|e| corrupt(&format!("its stored inclusion proof does not verify: {e}")))?;
    if scanned.requests > 1 {
        return Err(corrupt("several request ids name it"));
    }
    if let Some(fingerprint) = scanned.request
        && (checks.request_fingerprint)(payload) != Some(fingerprint)
    {
        return Err(corrupt(
            "the request id naming it was made for another request (a retry would get another's bundle)",
        ));
    }
    Ok(())
}

/// Checks one entry and the rows referring to it, and grows the tree by it.
fn check_entry(
    store: &Store,
    checks: &Checks<'_>,
    walk: &mut Walk,
    scanned: ScannedEntry<'_>,
) -> Result<(), StoreError> {
    let index = scanned.index;
    if index != walk.frontier.size() {
        return Err(StoreError::Corrupt(format!(
            "log entry {} is missing (next stored is {index})",
            walk.frontier.size()
        )));
    }
    let facts = walk.derived.account(index, scanned.entry)?;
    if (scanned.kind == EntryKind::Receipt) != facts.is_some() {
        return Err(StoreError::Corrupt(format!(
            "log entry {index}: its kind column says {}",
            scanned.kind.as_str()
        )));
    }
    let leaf = merkle::leaf_hash(scanned.entry);
    for (level, node_index, hash) in walk.frontier.append(leaf) {
        if store.node(level, node_index)? != Some(hash) {
            return Err(StoreError::Corrupt(format!(
                "tree node ({level}, {node_index}) does not match the entries"
            )));
        }
    }
    match &facts {
        Some(facts) => {
            check_receipt_row(&scanned, &facts.facts(), &leaf, checks, &facts.payload)?;
            walk.receipts += 1;
        }
        None if scanned.receipt.is_some() || scanned.requests > 0 => {
            return Err(StoreError::Corrupt(format!(
                "log entry {index} is no receipt, but a receipt row or request id names it"
            )));
        }
        None => {}
    }
    walk.requests += scanned.requests;
    walk.new_requests += scanned.requests;
    if let Some((root, note)) = &scanned.checkpoint {
        let size = walk.frontier.size();
        if *root != walk.frontier.root() {
            return Err(StoreError::Corrupt(format!(
                "the checkpoint of size {size} has another root than the entries"
            )));
        }
        checks.checkpoint(size, root, note)?;
        walk.checkpoints += 1;
    }
    Ok(())
}

/// The state of a walk over the entries.
struct Walk {
    frontier: Frontier,
    derived: Derived,
    requests: u64,
    new_requests: u64,
    receipts: u64,
    checkpoints: u64,
}

/// Rows about entries after the watermark that the walk did not meet (an orphan receipt,
/// request id or checkpoint) or met too few of.
fn check_counts(store: &Store, from: u64, walk: &Walk) -> Result<(), IntegrityError> {
    for (table, met, what) in [
        (CheckedTable::Receipts, walk.receipts, "receipt rows"),
        (CheckedTable::Requests, walk.new_requests, "request ids"),
        (CheckedTable::Checkpoints, walk.checkpoints, "checkpoints"),
    ] {
        let stored = store.rows_from(table, from)?;
        if stored != met {
            return Err(IntegrityError::Corrupt(format!(
                "{stored} {what} refer to entries from {from} on, {met} refer to entries that exist"
            )));
        }
    }
    // Behind the watermark too (one count, not a walk): a request id deleted there would let
    // a retry sign a second receipt. Re-pointed ones are caught when a retry uses them.
    let total = store.rows_from(CheckedTable::Requests, 0)?;
    if total != walk.requests {
        return Err(IntegrityError::Corrupt(format!(
            "request ids are missing or were added: {total} are stored, the checked log accounts for {}",
            walk.requests
        )));
    }
    let size = walk.frontier.size();
    for level in 0..=63u8 {
        let complete = size >> level;
        if let Some(max) = store.max_node_index(level)?
            && max >= complete
        {
            return Err(IntegrityError::Corrupt(
                "the tree holds nodes that no entry accounts for".into(),
            ));
        }
        if complete == 0 {
            break;
        }
    }
    Ok(())
}

/// Checks the log from the watermark (or, `Full`, from the first entry): every entry after it
/// is rehashed into the tree and every stored node it completes compared; each receipt's row
/// is compared with its statement and its stored inclusion proof verified; each request id is
/// checked against its receipt; every checkpoint met is checked against the tree and its
/// signature verified. Then the newest checkpoint, the per-actor heads and the key table
/// are compared with what the entries say, and the watermark moves to the end.
pub fn check(
    store: &Store,
    checks: &Checks<'_>,
    mode: CheckMode,
) -> Result<LogStatus, IntegrityError> {
    let (frontier, requests, derived) = resume(store, mode, checks.trusted_watermark)?;
    let from = frontier.size();
    let mut walk = Walk {
        frontier,
        derived,
        requests,
        new_requests: 0,
        receipts: 0,
        checkpoints: 0,
    };
    store.scan_from(from, |scanned| {
        check_entry(store, checks, &mut walk, scanned)
    })?;
    check_counts(store, from, &walk)?;
    walk.derived.compare(store)?;
    let size = walk.frontier.size();
    let root = walk.frontier.root();
    match store.latest_checkpoint()? {
        None if size == 0 => {}
        None => {
            return Err(IntegrityError::Corrupt(format!(
                "{size} entries but no signed checkpoint"
            )));
        }
        Some(checkpoint) => {
            if checkpoint.size != size {
                return Err(IntegrityError::Corrupt(format!(
                    "{size} entries but the newest signed checkpoint covers {}",
                    checkpoint.size
                )));
            }
            if checkpoint.root != root {
                return Err(IntegrityError::Corrupt(
                    "the entries' Merkle root differs from the newest signed checkpoint's".into(),
                ));
            }
            checks
                .checkpoint(size, &root, &checkpoint.note)
                .map_err(|e| IntegrityError::Corrupt(format!("the newest checkpoint: {e}")))?;
        }
    }
    let stored_root = merkle::root_at(store, size)
        .map_err(|e| IntegrityError::Corrupt(format!("stored tree nodes: {e}")))?;
    if stored_root != root {
        return Err(IntegrityError::Corrupt(
            "stored tree nodes do not match the entries".into(),
        ));
    }
    let watermark = Watermark {
        size,
        root: hex::encode(root),
        requests: walk.requests,
        derived: walk.derived,
    };
    let text = serde_json::to_string(&watermark)
        .map_err(|e| IntegrityError::Corrupt(format!("watermark: {e}")))?;
    Ok(LogStatus {
        size,
        root,
        requests: walk.requests,
        checked: size - from,
        watermark: text,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A receipt log entry (FORMAT.md §11.1) whose statement says `log_index`.
    fn receipt_entry(log_index: serde_json::Value) -> Vec<u8> {
        let payload = serde_json::json!({
            "_type": "https://in-toto.io/Statement/v1",
            "predicateType": crate::proof::receipt::RECEIPT_PREDICATE_TYPE,
            "predicate": {"actor": "a", "sequence": 1, "key": {"id": "k"},
                          "signedAt": "2026-11-26T17:51:36Z", "logIndex": log_index},
        })
        .to_string();
        let mut out = Vec::new();
        for field in [
            b"application/vnd.in-toto+json".as_slice(),
            payload.as_bytes(),
            b"0",
        ] {
            out.extend_from_slice(&u32::try_from(field.len()).unwrap_or(0).to_be_bytes());
            out.extend_from_slice(field);
        }
        out
    }

    #[test]
    fn a_fleet_receipt_is_where_the_log_put_it_an_indexed_one_where_it_says() {
        let mut derived = Derived::default();
        assert!(
            derived
                .account(3, &receipt_entry(serde_json::Value::Null))
                .is_ok()
        );
        assert!(derived.account(3, &receipt_entry(3.into())).is_ok());
        assert!(matches!(
            derived.account(3, &receipt_entry(2.into())),
            Err(StoreError::Corrupt(_))
        ));
    }
}
