//! The newest acknowledged tree head, kept in the hardware (a PKCS#11 data object, a TPM NV
//! index) where losing the database, or restoring an older copy of it, cannot take it along.
//!
//! The sequencer rewrites the record after every committed batch and before anyone is
//! answered; at start-up the stored log must reach it (same log, at least as long, the same
//! root at the record's size) or the daemon refuses to sign: signing on a shorter log would
//! hand out a second receipt at an index an acknowledged one already holds (a fork).
//!
//! The record also binds the log's identity (origin, log key, its stored lineage), so a
//! database of another log, or one whose log key identity was edited, is not taken for it.

use sha2::{Digest, Sha256};

use super::{Store, StoreError, merkle};

/// `"ASLH"`: actseal log head.
const MAGIC: [u8; 4] = *b"ASLH";
const VERSION: u8 = 1;
/// Bit 0 of the flags: the record names the log this one replaced (a declared fresh start).
const FLAG_PREVIOUS: u8 = 1;
/// Fixed length of an encoded record (TPM NV indexes are defined with a fixed size).
pub const RECORD_LEN: usize = 4 + 1 + 1 + 2 + 8 + 32 + 8 + 3 * 32 + 32 + (8 + 3 * 32);

/// What ties a head to one log: its origin, its log key and the stored identity (key
/// reference, public key and lineage, as bundles carry them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogBinding {
    pub origin_sha256: [u8; 32],
    /// SHA-256 of the log key's DER SubjectPublicKeyInfo (its key id).
    pub log_key_id: [u8; 32],
    pub identity_sha256: [u8; 32],
}

impl LogBinding {
    /// The binding of a log from its stored identity, byte for byte as stored.
    pub fn new(origin: &str, spki_der: &[u8], key_ref: &str, lineage_json: &str) -> Self {
        let mut identity = Sha256::new();
        for part in [
            origin.as_bytes(),
            spki_der,
            key_ref.as_bytes(),
            lineage_json.as_bytes(),
        ] {
            identity.update((part.len() as u64).to_be_bytes());
            identity.update(part);
        }
        LogBinding {
            origin_sha256: Sha256::digest(origin.as_bytes()).into(),
            log_key_id: Sha256::digest(spki_der).into(),
            identity_sha256: identity.finalize().into(),
        }
    }
}

/// The head of a log that a declared fresh start replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PreviousLog {
    pub size: u64,
    pub root: merkle::Hash,
    pub log_key_id: [u8; 32],
    pub origin_sha256: [u8; 32],
}

/// The record the hardware keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogHead {
    pub binding: LogBinding,
    pub size: u64,
    pub root: merkle::Hash,
    /// Request ids recorded for the first `size` entries (a deleted one would let a retry
    /// sign a second receipt).
    pub requests: u64,
    /// SHA-256 of the start-up check's watermark (`crate::ledger::integrity`): a watermark
    /// edited in the database does not match and is not trusted to skip anything.
    pub watermark_sha256: [u8; 32],
    pub previous: Option<PreviousLog>,
}

#[derive(Debug, thiserror::Error)]
pub enum HeadError {
    #[error("the log head record in the hardware is unreadable: {0}")]
    Unreadable(&'static str),
    #[error(
        "the state database holds no log, but the hardware holds the head of log key {log_key} \
         at tree size {size}: the database was lost or replaced. Restore it, or declare a \
         fresh start (actseal ledger recover --declare-fresh-start); see README, \"When things go wrong\""
    )]
    DatabaseLost { size: u64, log_key: String },
    #[error(
        "the state database is behind the newest acknowledged tree head: it holds {stored} \
         entries, the hardware's record says {hardware} were acknowledged (a lost or damaged \
         WAL, or an older copy of the database). Restore the newest database, or declare a \
         fresh start (actseal ledger recover --declare-fresh-start); see README, \"When things go wrong\""
    )]
    Behind { stored: u64, hardware: u64 },
    #[error(
        "the state database's log differs from the acknowledged one at tree size {size} \
         (another root): it is another history of this log. Restore the right database, or \
         declare a fresh start (actseal ledger recover --declare-fresh-start)"
    )]
    Forked { size: u64 },
    #[error(
        "the state database is of another log than the hardware's record ({what} differs: \
         database {stored}, hardware {hardware})"
    )]
    OtherLog {
        what: &'static str,
        stored: String,
        hardware: String,
    },
    #[error(
        "the stored log key identity (key reference, public key or lineage) is not the one the \
         hardware's record binds: the meta table was damaged or edited"
    )]
    IdentityChanged,
    #[error(
        "request ids are missing: the database holds {stored} for the first {size} entries, \
         the hardware's record says {hardware} (a retry would sign a second receipt)"
    )]
    RequestsMissing {
        size: u64,
        stored: u64,
        hardware: u64,
    },
    #[error(
        "the hardware holds a newer log head (tree size {held}) than the one to write (size \
         {next}): a writer that fell behind does not put it back"
    )]
    WouldGoBack { held: u64, next: u64 },
    #[error(
        "the hardware holds another root at tree size {size} than the head to write: not \
         replaced (two roots for one size are a fork)"
    )]
    WouldFork { size: u64 },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("stored tree nodes: {0}")]
    Tree(#[from] merkle::MerkleError),
}

impl LogHead {
    /// The head of a new, empty log.
    pub fn empty(binding: LogBinding) -> Self {
        LogHead {
            binding,
            size: 0,
            root: merkle::empty_root(),
            requests: 0,
            watermark_sha256: [0; 32],
            previous: None,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(RECORD_LEN);
        out.extend_from_slice(&MAGIC);
        out.push(VERSION);
        out.push(if self.previous.is_some() {
            FLAG_PREVIOUS
        } else {
            0
        });
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(&self.size.to_be_bytes());
        out.extend_from_slice(&self.root);
        out.extend_from_slice(&self.requests.to_be_bytes());
        out.extend_from_slice(&self.binding.origin_sha256);
        out.extend_from_slice(&self.binding.log_key_id);
        out.extend_from_slice(&self.binding.identity_sha256);
        out.extend_from_slice(&self.watermark_sha256);
        let previous = self.previous.unwrap_or(PreviousLog {
            size: 0,
            root: [0; 32],
            log_key_id: [0; 32],
            origin_sha256: [0; 32],
        });
        out.extend_from_slice(&previous.size.to_be_bytes());
        out.extend_from_slice(&previous.root);
        out.extend_from_slice(&previous.log_key_id);
        debug_assert_eq!(out.len() + 32, RECORD_LEN);
        out.extend_from_slice(&previous.origin_sha256);
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, HeadError> {
        if bytes.len() != RECORD_LEN {
            return Err(HeadError::Unreadable("wrong length"));
        }
        let mut rest = bytes;
        let mut take = |n: usize| {
            let (field, tail) = rest.split_at(n);
            rest = tail;
            field
        };
        let hash = |b: &[u8]| <[u8; 32]>::try_from(b).unwrap_or_default();
        let number = |b: &[u8]| u64::from_be_bytes(<[u8; 8]>::try_from(b).unwrap_or_default());
        if take(4) != MAGIC {
            return Err(HeadError::Unreadable("not an actseal log head"));
        }
        if take(1)[0] != VERSION {
            return Err(HeadError::Unreadable("unknown record version"));
        }
        let flags = take(1)[0];
        take(2);
        let size = number(take(8));
        let root = hash(take(32));
        let requests = number(take(8));
        let binding = LogBinding {
            origin_sha256: hash(take(32)),
            log_key_id: hash(take(32)),
            identity_sha256: hash(take(32)),
        };
        let watermark_sha256 = hash(take(32));
        let previous = PreviousLog {
            size: number(take(8)),
            root: hash(take(32)),
            log_key_id: hash(take(32)),
            origin_sha256: hash(take(32)),
        };
        Ok(LogHead {
            binding,
            size,
            root,
            requests,
            watermark_sha256,
            previous: (flags & FLAG_PREVIOUS != 0).then_some(previous),
        })
    }
}

/// Writes `next` into the hardware unless the record there now is one it may not replace
/// ([`may_replace`], checked right before the write by the backend).
pub fn replace_guarded(
    backend: &dyn crate::backend::Backend,
    next: &LogHead,
) -> Result<crate::backend::HeadWrite, crate::backend::BackendError> {
    let allow = |current: Option<&[u8]>| may_replace(current, next).map_err(|e| e.to_string());
    backend.replace_log_head(&next.encode(), &allow)
}

/// Whether `next` may replace `current`, the record the hardware holds (`None`: none yet):
/// never a smaller tree, another root at the same size, or another log's head. Nor a
/// record that does not decode: the start-up check refuses it, and overwriting it would
/// erase the evidence of whatever damaged it.
pub fn may_replace(current: Option<&[u8]>, next: &LogHead) -> Result<(), HeadError> {
    let Some(current) = current else {
        return Ok(());
    };
    let held = LogHead::decode(current)?;
    if held.binding.log_key_id != next.binding.log_key_id
        || held.binding.origin_sha256 != next.binding.origin_sha256
    {
        return Err(HeadError::OtherLog {
            what: "log key or origin",
            stored: hex::encode(next.binding.log_key_id),
            hardware: hex::encode(held.binding.log_key_id),
        });
    }
    if held.size > next.size {
        return Err(HeadError::WouldGoBack {
            held: held.size,
            next: next.size,
        });
    }
    if held.size == next.size && held.root != next.root {
        return Err(HeadError::WouldFork { size: held.size });
    }
    Ok(())
}

/// The stored log's head as the start-up check found it.
#[derive(Debug, Clone, Copy)]
pub struct StoredHead {
    pub binding: LogBinding,
    pub size: u64,
    pub root: merkle::Hash,
    pub requests: u64,
}

/// Compares the stored log with the hardware's record. Returns the record the hardware must
/// hold from now on (`Some` when it must be written: none yet, or the database is a committed
/// batch ahead of it after a crash between the commit and the record's update).
pub fn reconcile(
    store: &Store,
    stored: &StoredHead,
    hardware: Option<&LogHead>,
) -> Result<(LogHead, bool), HeadError> {
    let current = |previous| LogHead {
        binding: stored.binding,
        size: stored.size,
        root: stored.root,
        requests: stored.requests,
        // The caller sets it once the new watermark is stored.
        watermark_sha256: hardware.map_or([0; 32], |h| h.watermark_sha256),
        previous,
    };
    let Some(hardware) = hardware else {
        return Ok((current(None), true));
    };
    let other = |what, stored: &[u8; 32], hardware: &[u8; 32]| HeadError::OtherLog {
        what,
        stored: hex::encode(stored),
        hardware: hex::encode(hardware),
    };
    if stored.binding.origin_sha256 != hardware.binding.origin_sha256 {
        return Err(other(
            "origin (SHA-256)",
            &stored.binding.origin_sha256,
            &hardware.binding.origin_sha256,
        ));
    }
    if stored.binding.log_key_id != hardware.binding.log_key_id {
        return Err(other(
            "log key",
            &stored.binding.log_key_id,
            &hardware.binding.log_key_id,
        ));
    }
    if stored.binding.identity_sha256 != hardware.binding.identity_sha256 {
        return Err(HeadError::IdentityChanged);
    }
    if stored.size < hardware.size {
        return Err(HeadError::Behind {
            stored: stored.size,
            hardware: hardware.size,
        });
    }
    let (root, requests) = if stored.size == hardware.size {
        (stored.root, stored.requests)
    } else {
        (
            merkle::root_at(store, hardware.size)?,
            store.request_count_below(hardware.size)?,
        )
    };
    if root != hardware.root {
        return Err(HeadError::Forked {
            size: hardware.size,
        });
    }
    if requests < hardware.requests {
        return Err(HeadError::RequestsMissing {
            size: hardware.size,
            stored: requests,
            hardware: hardware.requests,
        });
    }
    let ahead = stored.size > hardware.size;
    Ok((current(hardware.previous), ahead))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_garbage_is_refused() {
        let binding = LogBinding::new("actseal/x", b"spki", "ab", "{}");
        let mut head = LogHead::empty(binding);
        head.size = 21;
        head.requests = 3;
        head.root = [7; 32];
        let bytes = head.encode();
        assert_eq!(bytes.len(), RECORD_LEN);
        assert_eq!(LogHead::decode(&bytes).unwrap(), head);
        head.previous = Some(PreviousLog {
            size: 9,
            root: [1; 32],
            log_key_id: [2; 32],
            origin_sha256: [3; 32],
        });
        assert_eq!(LogHead::decode(&head.encode()).unwrap(), head);
        assert!(LogHead::decode(&bytes[1..]).is_err());
        let mut bad = bytes.clone();
        bad[0] ^= 1;
        assert!(LogHead::decode(&bad).is_err());
        assert_ne!(
            LogBinding::new("actseal/x", b"spki", "ab", "{ }").identity_sha256,
            binding.identity_sha256
        );
    }

    #[test]
    fn a_head_never_replaces_a_newer_one_or_another_root_of_its_size() {
        let binding = LogBinding::new("actseal/x", b"spki", "ab", "{}");
        let at = |size, root| LogHead {
            size,
            root: [root; 32],
            ..LogHead::empty(binding)
        };
        let held = at(10, 1).encode();
        assert!(may_replace(None, &at(3, 1)).is_ok());
        assert!(matches!(
            may_replace(Some(b"garbage"), &at(3, 1)),
            Err(HeadError::Unreadable(_))
        ));
        assert!(may_replace(Some(&held), &at(11, 2)).is_ok());
        assert!(may_replace(Some(&held), &at(10, 1)).is_ok());
        assert!(matches!(
            may_replace(Some(&held), &at(9, 1)),
            Err(HeadError::WouldGoBack { held: 10, next: 9 })
        ));
        assert!(matches!(
            may_replace(Some(&held), &at(10, 2)),
            Err(HeadError::WouldFork { size: 10 })
        ));
        let other = LogHead {
            binding: LogBinding::new("actseal/x", b"other", "ab", "{}"),
            ..at(12, 1)
        };
        assert!(matches!(
            may_replace(Some(&held), &other),
            Err(HeadError::OtherLog { .. })
        ));
    }

    #[test]
    fn reconcile_names_what_differs_and_accepts_a_store_ahead() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.db")).unwrap();
        let binding = LogBinding::new("actseal/x", b"spki", "ab", "{}");
        let stored = StoredHead {
            binding,
            size: 5,
            root: [5; 32],
            requests: 4,
        };
        let mut hardware = LogHead {
            size: 5,
            root: [5; 32],
            requests: 4,
            ..LogHead::empty(binding)
        };
        let (same, _) = reconcile(&store, &stored, Some(&hardware)).unwrap();
        assert_eq!((same.size, same.root), (5, [5; 32]));
        let check = |hardware: &LogHead| reconcile(&store, &stored, Some(hardware)).unwrap_err();
        let mut other = hardware;
        other.binding = LogBinding::new("actseal/y", b"spki", "ab", "{}");
        assert!(matches!(
            check(&other),
            HeadError::OtherLog {
                what: "origin (SHA-256)",
                ..
            }
        ));
        other.binding = LogBinding::new("actseal/x", b"other spki", "ab", "{}");
        assert!(matches!(
            check(&other),
            HeadError::OtherLog {
                what: "log key",
                ..
            }
        ));
        other.binding = LogBinding::new("actseal/x", b"spki", "ab", "{\"edited\":1}");
        assert!(matches!(check(&other), HeadError::IdentityChanged));
        hardware.root = [6; 32];
        assert!(matches!(check(&hardware), HeadError::Forked { size: 5 }));
        hardware.root = [5; 32];
        hardware.requests = 5;
        assert!(matches!(
            check(&hardware),
            HeadError::RequestsMissing { .. }
        ));
        hardware.size = 6;
        assert!(matches!(
            check(&hardware),
            HeadError::Behind {
                stored: 5,
                hardware: 6
            }
        ));
        // A crash between the commit and the record: the store is ahead, and accepted.
        let empty = LogHead::empty(binding);
        let (ahead, write) = reconcile(&store, &stored, Some(&empty)).unwrap();
        assert!(write);
        assert_eq!(ahead.size, 5);
    }
}
