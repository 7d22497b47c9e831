//! The start-up check: the stored log must be exactly what the newest signed checkpoint
//! commits to, or the daemon refuses to sign on top of it.

use std::collections::{HashMap, HashSet};

use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::{
    ActorHead, KeyState, Store, StoreError,
    checkpoint::Checkpoint,
    entry,
    merkle::{self, Frontier},
};

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
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct KeyRefHead {
    key_id: String,
}

/// What the entries themselves say the signing state is: each actor's newest receipt and the
/// keys that have been retired.
#[derive(Default)]
struct Derived {
    heads: HashMap<String, ActorHead>,
    retired: HashSet<String>,
    /// Key id → (actor, version), from the registration entries.
    registered: HashMap<String, (String, u64)>,
}

impl Derived {
    fn account(&mut self, index: u64, bytes: &[u8]) -> Result<(), StoreError> {
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
                self.heads.insert(
                    head.predicate.actor,
                    ActorHead {
                        sequence,
                        payload_sha256: Sha256::digest(&parts.payload).into(),
                    },
                );
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
            other => return Err(corrupt(&format!("unknown statement type {other:?}"))),
        }
        Ok(())
    }

    /// The tables the sequencer continues from must say what the log says.
    fn compare(&self, store: &Store) -> Result<(), IntegrityError> {
        if store.actor_heads()? != self.heads {
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

#[derive(Debug, thiserror::Error)]
pub enum IntegrityError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("log is corrupt: {0}")]
    Corrupt(String),
}

/// What the check found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogStatus {
    pub size: u64,
    pub root: merkle::Hash,
}

/// Recomputes the tree from every stored entry (O(n) hashing, no proofs trusted) and checks
/// every stored node against it (future proofs are built from them), the tree head against
/// the newest checkpoint, whose note must carry it (`checkpoint_ok` verifies the note's
/// signature), and the state the sequencer continues from (each actor's newest receipt, which
/// keys are retired) against what the entries say.
pub fn check(
    store: &Store,
    origin: &str,
    checkpoint_ok: impl Fn(&str) -> Result<(), String>,
) -> Result<LogStatus, IntegrityError> {
    let mut frontier = Frontier::default();
    let mut expected = 0u64;
    let mut nodes = 0u64;
    let mut derived = Derived::default();
    store.for_each_entry(|index, _kind, _actor, entry| {
        derived.account(index, entry)?;
        if index != expected {
            return Err(StoreError::Corrupt(format!(
                "log entry {expected} is missing (next stored is {index})"
            )));
        }
        for (level, node_index, hash) in frontier.append(merkle::leaf_hash(entry)) {
            if store.node(level, node_index)? != Some(hash) {
                return Err(StoreError::Corrupt(format!(
                    "tree node ({level}, {node_index}) does not match the entries"
                )));
            }
            nodes += 1;
        }
        expected += 1;
        Ok(())
    })?;
    if store.node_count()? != nodes {
        return Err(IntegrityError::Corrupt(
            "the tree holds nodes that no entry accounts for".into(),
        ));
    }
    derived.compare(store)?;
    let size = frontier.size();
    let root = frontier.root();
    let latest = store.latest_checkpoint()?;
    match latest {
        None if size == 0 => return Ok(LogStatus { size, root }),
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
            let body = Checkpoint::new(origin, size, root)
                .map_err(|e| IntegrityError::Corrupt(format!("checkpoint: {e}")))?
                .body();
            if !checkpoint.note.starts_with(&body) {
                return Err(IntegrityError::Corrupt(
                    "the newest checkpoint's note does not state the stored tree head".into(),
                ));
            }
            checkpoint_ok(&checkpoint.note).map_err(|e| {
                IntegrityError::Corrupt(format!("the newest checkpoint's signature: {e}"))
            })?;
        }
    }
    let stored_root = merkle::root_at(store, size)
        .map_err(|e| IntegrityError::Corrupt(format!("stored tree nodes: {e}")))?;
    if stored_root != root {
        return Err(IntegrityError::Corrupt(
            "stored tree nodes do not match the entries".into(),
        ));
    }
    Ok(LogStatus { size, root })
}
