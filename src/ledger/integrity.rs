//! The start-up check: the stored log must be exactly what the newest signed checkpoint
//! commits to, or the daemon refuses to sign on top of it.

use super::{
    Store, StoreError,
    checkpoint::Checkpoint,
    merkle::{self, Frontier},
};

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
/// every stored node against it (future proofs are built from them), and the tree head against
/// the newest checkpoint, whose note must carry it. `checkpoint_ok` verifies the note's
/// signature.
pub fn check(
    store: &Store,
    origin: &str,
    checkpoint_ok: impl Fn(&str) -> Result<(), String>,
) -> Result<LogStatus, IntegrityError> {
    let mut frontier = Frontier::default();
    let mut expected = 0u64;
    let mut nodes = 0u64;
    store.for_each_entry(|index, _kind, _actor, entry| {
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
