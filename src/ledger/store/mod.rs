//! The daemon's durable state behind one trait: SQLite (the embedded default, one host) or
//! PostgreSQL (a shared, replicated log). Every implementation keeps the same guarantees:
//! a batch is one transaction, durable when `commit` returns; a unique violation is
//! [`StoreError::Conflict`]; a row that does not decode is [`StoreError::Corrupt`]; a lost
//! connection is [`StoreError::Unavailable`] and the next call reconnects.

use std::{
    collections::HashMap,
    ops::ControlFlow,
    path::{Path, PathBuf},
};

use spki::DecodePublicKey;

use super::merkle::{Hash, MerkleError, NodeReader};
use crate::{
    backend::{BackendKind, KeyRef},
    proof::lineage::{Attestation, KeyOrigin},
};

pub mod migrations;
pub mod postgres;
mod row;
pub mod sqlite;

pub use postgres::{PgSettings, PgStore};
pub use sqlite::{SCHEMA_VERSION, SqliteStore};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A unique constraint refused the write: the thing exists already.
    #[error("{0}")]
    Conflict(String),
    /// A stored row does not decode: the database was damaged or edited.
    #[error("state database is corrupt: {0}")]
    Corrupt(String),
    /// The database was made by another version of actseal. Nothing is deployed on schema 1,
    /// so there is no migration: refusing is safer than guessing.
    #[error(
        "state database has schema version {found}, this actseal reads version {SCHEMA_VERSION} \
         (key lineage by reference); there is no migration: start from a new state directory"
    )]
    Schema { found: i64 },
    /// The database file could not be created or given owner-only access.
    #[error("state database: {0}")]
    File(#[from] crate::files::FileError),
    /// A PostgreSQL error that is neither a conflict nor a lost connection.
    #[error("state database (PostgreSQL): {0}")]
    Postgres(String),
    /// The PostgreSQL database is of a schema newer than this actseal knows: refused and
    /// left untouched.
    #[error(
        "the PostgreSQL ledger has schema version {found}, newer than this actseal knows \
         ({known}): upgrade actseal; nothing was changed"
    )]
    NewerSchema { found: i64, known: i64 },
    /// The database cannot be reached now (connection lost or refused, server restarting);
    /// the next call reconnects. Callers answer UNAVAILABLE.
    #[error("state database unavailable: {0}")]
    Unavailable(String),
    /// The ledger settings are unusable (URL, password file, TLS).
    #[error("ledger settings: {0}")]
    Settings(String),
}

/// Whether a key version may still sign.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyState {
    Active,
    Retired,
}

impl KeyState {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyState::Active => "active",
            KeyState::Retired => "retired",
        }
    }
}

/// One version of one actor's key.
#[derive(Debug, Clone)]
pub struct KeyRecord {
    pub actor: String,
    pub version: u32,
    pub backend: BackendKind,
    pub key_ref: KeyRef,
    pub key_id: String,
    pub public_key: p256::PublicKey,
    pub origin: KeyOrigin,
    pub state: KeyState,
    pub created_at: String,
    /// This version's own attestation; bundles assemble the lineage from every version's.
    pub attestation: Attestation,
    /// When the key stopped signing (rotation or retirement).
    pub retired_at: Option<String>,
}

/// An actor's newest receipt: where its hash chain continues.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ActorHead {
    pub sequence: u64,
    pub payload_sha256: [u8; 32],
}

/// A receipt ready to append.
#[derive(Debug, Clone)]
pub struct ReceiptRow {
    pub log_index: u64,
    pub actor: String,
    pub sequence: u64,
    pub key_id: String,
    pub payload_sha256: [u8; 32],
    pub signed_at: String,
    /// The checkpoint (tree size) the stored inclusion proof is against: the receipt's batch.
    pub proof_size: u64,
    pub proof: Vec<Hash>,
}

/// A stored receipt's own facts; the bundle is assembled from these, the log entry, the key's
/// lineage and the checkpoint, so that per-key and per-batch data is stored once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredReceipt {
    pub sequence: u64,
    pub key_id: String,
    pub signed_at: String,
    pub proof_size: u64,
    pub proof: Vec<Hash>,
}

/// Kinds of log entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    Receipt,
    Rotation,
    Retirement,
    /// A key version entering the log, signed by the log key.
    Registration,
    /// The first entry of a log that replaced another (a declared fresh start), signed by
    /// the log key. Only ever at index 0 of a database created since; the CHECK constraint of
    /// older databases, which never hold one, need not change.
    LogStart,
}

impl EntryKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EntryKind::Receipt => "receipt",
            EntryKind::Rotation => "rotation",
            EntryKind::Retirement => "retirement",
            EntryKind::Registration => "registration",
            EntryKind::LogStart => "log-start",
        }
    }
}

/// One leaf of the log.
#[derive(Debug, Clone)]
pub struct EntryRow {
    pub log_index: u64,
    pub kind: EntryKind,
    pub actor: String,
    pub entry: Vec<u8>,
}

/// A signed checkpoint as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointRow {
    pub size: u64,
    pub root: Hash,
    pub note: String,
}

/// A stored key version with the log entry of the rotation that made it (`None` for v1).
pub type KeyVersion = (KeyRecord, Option<Vec<u8>>);

/// A change to the key table.
#[derive(Debug, Clone)]
pub enum KeyChange {
    Insert(Box<KeyRecord>),
    /// A version made by a rotation, whose statement is the log entry at `rotation_index`.
    Rotated {
        key: Box<KeyRecord>,
        rotation_index: u64,
    },
    Retire {
        actor: String,
        version: u32,
        retired_at: String,
    },
}

/// Everything one sequencer batch writes, committed in one transaction.
#[derive(Debug, Default)]
pub struct Batch {
    pub keys: Vec<KeyChange>,
    pub entries: Vec<EntryRow>,
    pub nodes: Vec<(u8, u64, Hash)>,
    pub receipts: Vec<ReceiptRow>,
    /// (request id, request fingerprint, log index)
    pub requests: Vec<(String, [u8; 32], u64)>,
    pub checkpoint: Option<CheckpointRow>,
}

impl Batch {
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty() && self.entries.is_empty()
    }
}

pub(crate) fn to_i64(value: u64, what: &str) -> Result<i64, StoreError> {
    i64::try_from(value)
        .map_err(|_| StoreError::Conflict(format!("{what} {value} is out of range")))
}

pub(crate) fn to_u64(value: i64, what: &str) -> Result<u64, StoreError> {
    u64::try_from(value).map_err(|_| StoreError::Corrupt(format!("negative {what} {value}")))
}

pub(crate) fn parse_kind(text: &str) -> Option<EntryKind> {
    Some(match text {
        "receipt" => EntryKind::Receipt,
        "rotation" => EntryKind::Rotation,
        "retirement" => EntryKind::Retirement,
        "registration" => EntryKind::Registration,
        "log-start" => EntryKind::LogStart,
        _ => return None,
    })
}

pub(crate) fn optional_hash(bytes: Option<Vec<u8>>) -> Result<Option<Hash>, ()> {
    bytes
        .map(|b| <Hash>::try_from(b.as_slice()).map_err(|_| ()))
        .transpose()
}

/// Tables the start-up check counts rows of.
#[derive(Debug, Clone, Copy)]
pub enum CheckedTable {
    Receipts,
    Requests,
    Checkpoints,
}

/// A receipt row as the start-up check reads it.
#[derive(Debug, Clone)]
pub struct ScannedReceipt {
    pub actor: String,
    pub sequence: u64,
    pub key_id: String,
    pub payload_sha256: [u8; 32],
    pub signed_at: String,
    pub proof_size: u64,
    pub proof: Vec<Hash>,
    /// The stored root of the checkpoint at `proof_size`, if there is one.
    pub proof_root: Option<Hash>,
}

/// A log entry with the rows that refer to it (see [`Store::scan_from`]).
pub struct ScannedEntry<'a> {
    pub index: u64,
    pub kind: EntryKind,
    pub entry: &'a [u8],
    pub receipt: Option<ScannedReceipt>,
    /// The checkpoint of size `index + 1`: its stored root and note.
    pub checkpoint: Option<(Hash, String)>,
    /// How many request ids name this entry, and the fingerprint of one of them.
    pub requests: u64,
    pub request: Option<[u8; 32]>,
}

/// The columns every key query selects first, in [`RawKey`]'s order.
pub(crate) const KEY_COLUMNS: &str = "k.actor, k.version, k.backend, k.key_ref, k.key_id, k.public_key, k.origin, k.state, k.created_at, k.attestation, k.retired_at";
pub(crate) const KEY_COLUMN_COUNT: usize = 11;

/// A key row as both engines read it, before it is decoded.
pub(crate) struct RawKey {
    pub actor: String,
    pub version: i64,
    pub backend: String,
    pub key_ref: String,
    pub key_id: String,
    pub spki: Vec<u8>,
    pub origin: String,
    pub state: String,
    pub created_at: String,
    pub attestation: String,
    pub retired_at: Option<String>,
}

impl RawKey {
    pub(crate) fn decode(self) -> Result<KeyRecord, StoreError> {
        let key_id = self.key_id;
        let corrupt = |what: &str| StoreError::Corrupt(format!("key {key_id}: bad {what}"));
        Ok(KeyRecord {
            actor: self.actor,
            version: u32::try_from(self.version).map_err(|_| corrupt("version"))?,
            backend: BackendKind::parse(&self.backend).ok_or_else(|| corrupt("backend"))?,
            key_ref: KeyRef(self.key_ref),
            public_key: p256::PublicKey::from_public_key_der(&self.spki)
                .map_err(|_| corrupt("public key"))?,
            origin: match self.origin.as_str() {
                "generated" => KeyOrigin::Generated,
                "adopted" => KeyOrigin::Adopted,
                _ => return Err(corrupt("origin")),
            },
            state: match self.state.as_str() {
                "active" => KeyState::Active,
                "retired" => KeyState::Retired,
                _ => return Err(corrupt("state")),
            },
            created_at: self.created_at,
            attestation: serde_json::from_str(&self.attestation)
                .map_err(|_| corrupt("attestation"))?,
            retired_at: self.retired_at,
            key_id,
        })
    }
}

/// A key record's attestation as stored (JSON text).
pub(crate) fn attestation_json(key: &KeyRecord) -> Result<String, StoreError> {
    serde_json::to_string(&key.attestation)
        .map_err(|e| StoreError::Corrupt(format!("attestation does not serialise: {e}")))
}

/// A stored inclusion proof (concatenated hashes) split into hashes.
pub(crate) fn split_proof(
    proof: &[u8],
    what: impl FnOnce() -> String,
) -> Result<Vec<Hash>, StoreError> {
    let (hashes, rest) = proof.as_chunks::<32>();
    if !rest.is_empty() {
        return Err(StoreError::Corrupt(what()));
    }
    Ok(hashes.to_vec())
}

/// Visits key versions one at a time until the visitor breaks.
pub type KeyVisitor<'a> = dyn FnMut(KeyRecord) -> ControlFlow<()> + 'a;
/// Visits log entries (index, kind, actor, bytes) in index order.
pub type EntryVisitor<'a> = dyn FnMut(u64, EntryKind, &str, &[u8]) -> Result<(), StoreError> + 'a;
/// Visits log entries with the rows that refer to them.
pub type ScanVisitor<'a> = dyn FnMut(ScannedEntry<'_>) -> Result<(), StoreError> + 'a;

/// What the daemon needs of its state database; see [`Store`] for each operation.
pub trait LedgerStore: Send {
    fn keys(&self, actor: Option<&str>) -> Result<Vec<KeyRecord>, StoreError>;
    fn scan_keys(&self, after: (&str, u32), visit: &mut KeyVisitor<'_>) -> Result<(), StoreError>;
    fn key_history(&self, actor: &str, version: u32) -> Result<Vec<KeyVersion>, StoreError>;
    fn actor_heads(&self) -> Result<HashMap<String, ActorHead>, StoreError>;
    fn next_log_index(&self) -> Result<u64, StoreError>;
    fn commit(&mut self, batch: &Batch) -> Result<(), StoreError>;
    fn node(&self, level: u8, index: u64) -> Result<Option<Hash>, StoreError>;
    fn latest_checkpoint(&self) -> Result<Option<CheckpointRow>, StoreError>;
    fn checkpoint(&self, size: u64) -> Result<Option<CheckpointRow>, StoreError>;
    fn request(&self, request_id: &str) -> Result<Option<([u8; 32], u64)>, StoreError>;
    fn for_each_entry(&self, visit: &mut EntryVisitor<'_>) -> Result<(), StoreError>;
    fn meta(&self, name: &str) -> Result<Option<String>, StoreError>;
    fn set_meta(&self, name: &str, value: &str) -> Result<(), StoreError>;
    fn node_count(&self) -> Result<u64, StoreError>;
    fn key_id_registered(&self, key_id: &str) -> Result<bool, StoreError>;
    fn receipt(&self, log_index: u64) -> Result<Option<StoredReceipt>, StoreError>;
    fn entry_actor(&self, log_index: u64) -> Result<Option<String>, StoreError>;
    fn entry(&self, log_index: u64) -> Result<Option<Vec<u8>>, StoreError>;
    fn key_by_id(&self, key_id: &str) -> Result<Option<KeyRecord>, StoreError>;
    fn request_count_below(&self, size: u64) -> Result<u64, StoreError>;
    fn rows_from(&self, table: CheckedTable, from: u64) -> Result<u64, StoreError>;
    fn max_node_index(&self, level: u8) -> Result<Option<u64>, StoreError>;
    fn scan_from(&self, from: u64, visit: &mut ScanVisitor<'_>) -> Result<(), StoreError>;
    fn receipt_count(&self) -> Result<u64, StoreError>;
    /// Which engine this is, for logs and errors.
    fn engine(&self) -> &'static str;
}

/// Where the ledger lives, from the configuration (`Config::ledger_location`).
#[derive(Debug, Clone)]
pub enum LedgerLocation {
    /// The embedded default: one SQLite file in the state directory.
    Sqlite(PathBuf),
    /// A PostgreSQL database (`[ledger] url`).
    Postgres(PgSettings),
}

/// A connection to the state database, whichever engine holds it.
pub struct Store {
    inner: Box<dyn LedgerStore>,
}

impl From<Box<dyn LedgerStore>> for Store {
    fn from(inner: Box<dyn LedgerStore>) -> Self {
        Store { inner }
    }
}

impl Store {
    /// Opens (creating if needed) the SQLite database at `path` ([`SqliteStore::open`]).
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Ok(Self::from(
            Box::new(SqliteStore::open(path)?) as Box<dyn LedgerStore>
        ))
    }

    /// Opens the ledger at `location`, applying the migrations it lacks.
    pub fn open_at(location: &LedgerLocation) -> Result<Self, StoreError> {
        match location {
            LedgerLocation::Sqlite(path) => Self::open(path),
            LedgerLocation::Postgres(settings) => Ok(Self::from(
                Box::new(PgStore::open(settings)?) as Box<dyn LedgerStore>,
            )),
        }
    }

    /// Opens the ledger for the single-host daemon's writer: on PostgreSQL its session holds
    /// the single-host lock ([`postgres::SINGLE_HOST_LOCK`]) for the daemon's life.
    pub fn open_writer(location: &LedgerLocation) -> Result<Self, StoreError> {
        match location {
            LedgerLocation::Sqlite(path) => Self::open(path),
            LedgerLocation::Postgres(settings) => Ok(Self::from(
                Box::new(PgStore::open_single_host(settings)?) as Box<dyn LedgerStore>,
            )),
        }
    }

    /// Which engine holds this ledger (`sqlite`, `postgres`).
    pub fn engine(&self) -> &'static str {
        self.inner.engine()
    }

    /// Key versions, oldest first; of one actor, or of all when `actor` is `None`.
    pub fn keys(&self, actor: Option<&str>) -> Result<Vec<KeyRecord>, StoreError> {
        self.inner.keys(actor)
    }

    /// Key versions in (actor, version) order, starting after `after` (exclusive), handed to
    /// `visit` one at a time until it breaks: a page reads only the rows it walks over.
    pub fn scan_keys(
        &self,
        after: (&str, u32),
        mut visit: impl FnMut(KeyRecord) -> ControlFlow<()>,
    ) -> Result<(), StoreError> {
        self.inner.scan_keys(after, &mut visit)
    }

    /// Versions 1 to `version` of `actor`, oldest first, each with the log entry of the
    /// rotation that made it (`None` for version 1): what a lineage is assembled from.
    pub fn key_history(&self, actor: &str, version: u32) -> Result<Vec<KeyVersion>, StoreError> {
        self.inner.key_history(actor, version)
    }

    /// Every actor's newest receipt: one index probe per actor with a key.
    pub fn actor_heads(&self) -> Result<HashMap<String, ActorHead>, StoreError> {
        self.inner.actor_heads()
    }

    /// The index the next appended entry gets.
    pub fn next_log_index(&self) -> Result<u64, StoreError> {
        self.inner.next_log_index()
    }

    /// Writes a batch in one transaction; when this returns Ok it is durable.
    pub fn commit(&mut self, batch: &Batch) -> Result<(), StoreError> {
        self.inner.commit(batch)
    }

    /// A stored node of the Merkle tree.
    pub fn node(&self, level: u8, index: u64) -> Result<Option<Hash>, StoreError> {
        self.inner.node(level, index)
    }

    /// The newest signed checkpoint.
    pub fn latest_checkpoint(&self) -> Result<Option<CheckpointRow>, StoreError> {
        self.inner.latest_checkpoint()
    }

    /// The signed checkpoint of exactly `size`.
    pub fn checkpoint(&self, size: u64) -> Result<Option<CheckpointRow>, StoreError> {
        self.inner.checkpoint(size)
    }

    /// A request id's fingerprint and the log index it produced.
    pub fn request(&self, request_id: &str) -> Result<Option<([u8; 32], u64)>, StoreError> {
        self.inner.request(request_id)
    }

    /// Calls `visit` with every log entry in index order (for start-up checks and export).
    pub fn for_each_entry(
        &self,
        mut visit: impl FnMut(u64, EntryKind, &str, &[u8]) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        self.inner.for_each_entry(&mut visit)
    }

    pub fn meta(&self, name: &str) -> Result<Option<String>, StoreError> {
        self.inner.meta(name)
    }

    pub fn set_meta(&self, name: &str, value: &str) -> Result<(), StoreError> {
        self.inner.set_meta(name, value)
    }

    /// Number of stored tree nodes.
    pub fn node_count(&self) -> Result<u64, StoreError> {
        self.inner.node_count()
    }

    /// Whether a key id belongs to any registered key version.
    pub fn key_id_registered(&self, key_id: &str) -> Result<bool, StoreError> {
        self.inner.key_id_registered(key_id)
    }

    /// A stored receipt, by log index.
    pub fn receipt(&self, log_index: u64) -> Result<Option<StoredReceipt>, StoreError> {
        self.inner.receipt(log_index)
    }

    /// The actor a log entry is about, by index.
    pub fn entry_actor(&self, log_index: u64) -> Result<Option<String>, StoreError> {
        self.inner.entry_actor(log_index)
    }

    /// A log entry's bytes, by index.
    pub fn entry(&self, log_index: u64) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.entry(log_index)
    }

    /// The key version with this key id.
    pub fn key_by_id(&self, key_id: &str) -> Result<Option<KeyRecord>, StoreError> {
        self.inner.key_by_id(key_id)
    }

    /// Request ids recorded for the first `size` entries.
    pub fn request_count_below(&self, size: u64) -> Result<u64, StoreError> {
        self.inner.request_count_below(size)
    }

    /// Rows of `table` (receipts, requests, checkpoints) about entries at or after `from`:
    /// what the start-up check must have met walking the entries from there.
    pub fn rows_from(&self, table: CheckedTable, from: u64) -> Result<u64, StoreError> {
        self.inner.rows_from(table, from)
    }

    /// The highest stored node index at `level`, if any.
    pub fn max_node_index(&self, level: u8) -> Result<Option<u64>, StoreError> {
        self.inner.max_node_index(level)
    }

    /// Calls `visit` with every log entry from `from` on, in index order, with the rows that
    /// refer to it: its receipt row (and the root of the checkpoint its proof is against), the
    /// checkpoint whose size it completes, and its request ids. One pass over the log for the
    /// start-up check.
    pub fn scan_from(
        &self,
        from: u64,
        mut visit: impl FnMut(ScannedEntry<'_>) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        self.inner.scan_from(from, &mut visit)
    }

    /// Number of receipts in the log.
    pub fn receipt_count(&self) -> Result<u64, StoreError> {
        self.inner.receipt_count()
    }
}

impl NodeReader for Store {
    fn node(&self, level: u8, index: u64) -> Result<Hash, MerkleError> {
        match Store::node(self, level, index) {
            Ok(Some(hash)) => Ok(hash),
            Ok(None) => Err(MerkleError::OutOfRange { level, index }),
            Err(e) => Err(MerkleError::Reader {
                level,
                index,
                source: Box::new(e),
            }),
        }
    }
}
