//! SQLite storage. WAL with `synchronous=FULL`: a committed append survives a crash or a
//! power loss, so the daemon answers a caller only after the commit returns.

use std::{collections::HashMap, path::Path, time::Duration};

use rusqlite::{Connection, OptionalExtension, params};
use spki::DecodePublicKey;

use crate::{
    backend::{BackendKind, KeyRef},
    proof::lineage::{KeyOrigin, Lineage},
};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS actor_keys (
    actor       TEXT    NOT NULL,
    version     INTEGER NOT NULL CHECK (version >= 1),
    backend     TEXT    NOT NULL,
    key_ref     TEXT    NOT NULL,
    key_id      TEXT    NOT NULL UNIQUE,
    public_key  BLOB    NOT NULL,
    origin      TEXT    NOT NULL,
    state       TEXT    NOT NULL,
    created_at  TEXT    NOT NULL,
    lineage     TEXT    NOT NULL,
    PRIMARY KEY (actor, version)
);
CREATE TABLE IF NOT EXISTS receipts (
    log_index       INTEGER PRIMARY KEY CHECK (log_index >= 0),
    actor           TEXT    NOT NULL,
    sequence        INTEGER NOT NULL CHECK (sequence >= 1),
    key_id          TEXT    NOT NULL REFERENCES actor_keys (key_id),
    payload_sha256  BLOB    NOT NULL,
    signed_at       TEXT    NOT NULL,
    bundle          TEXT    NOT NULL,
    UNIQUE (actor, sequence)
);
";

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
    pub lineage: Lineage,
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
    pub bundle_json: String,
}

/// A connection to the state database.
pub struct Store {
    conn: Connection,
}

fn to_i64(value: u64, what: &str) -> Result<i64, StoreError> {
    i64::try_from(value)
        .map_err(|_| StoreError::Conflict(format!("{what} {value} is out of range")))
}

fn to_u64(value: i64, what: &str) -> Result<u64, StoreError> {
    u64::try_from(value).map_err(|_| StoreError::Corrupt(format!("negative {what} {value}")))
}

fn is_unique_violation(err: &rusqlite::Error) -> bool {
    matches!(
        err,
        rusqlite::Error::SqliteFailure(e, _)
            if e.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
                || e.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY
    )
}

impl Store {
    /// Opens (creating if needed) the database at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(Duration::from_secs(5))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.execute_batch(SCHEMA)?;
        Ok(Store { conn })
    }

    /// Registers a key version. A second key for the same (actor, version) or the same key
    /// id is a [`StoreError::Conflict`].
    pub fn insert_key(&mut self, key: &KeyRecord) -> Result<(), StoreError> {
        let lineage = serde_json::to_string(&key.lineage)
            .map_err(|e| StoreError::Corrupt(format!("lineage does not serialise: {e}")))?;
        let result = self.conn.execute(
            "INSERT INTO actor_keys (actor, version, backend, key_ref, key_id, public_key, origin, state, created_at, lineage)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            params![
                key.actor,
                key.version,
                key.backend.as_str(),
                key.key_ref.0,
                key.key_id,
                crate::proof::spki_der(&key.public_key),
                key.origin.as_str(),
                key.state.as_str(),
                key.created_at,
                lineage,
            ],
        );
        match result {
            Ok(_) => Ok(()),
            Err(e) if is_unique_violation(&e) => Err(StoreError::Conflict(format!(
                "actor {:?} already has key version {}, or key {} is registered already",
                key.actor, key.version, key.key_id
            ))),
            Err(e) => Err(e.into()),
        }
    }

    /// Key versions, oldest first; of one actor, or of all when `actor` is `None`.
    pub fn keys(&self, actor: Option<&str>) -> Result<Vec<KeyRecord>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT actor, version, backend, key_ref, key_id, public_key, origin, state, created_at, lineage
             FROM actor_keys WHERE ?1 IS NULL OR actor = ?1 ORDER BY actor, version",
        )?;
        let rows = stmt.query_map(params![actor], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, u32>(1)?,
                row.get::<_, String>(2)?,
                row.get::<_, String>(3)?,
                row.get::<_, String>(4)?,
                row.get::<_, Vec<u8>>(5)?,
                row.get::<_, String>(6)?,
                row.get::<_, String>(7)?,
                row.get::<_, String>(8)?,
                row.get::<_, String>(9)?,
            ))
        })?;
        let mut keys = Vec::new();
        for row in rows {
            let (
                actor,
                version,
                backend,
                key_ref,
                key_id,
                spki,
                origin,
                state,
                created_at,
                lineage,
            ) = row?;
            let corrupt = |what: &str| StoreError::Corrupt(format!("key {key_id}: bad {what}"));
            keys.push(KeyRecord {
                backend: BackendKind::parse(&backend).ok_or_else(|| corrupt("backend"))?,
                public_key: p256::PublicKey::from_public_key_der(&spki)
                    .map_err(|_| corrupt("public key"))?,
                origin: match origin.as_str() {
                    "generated" => KeyOrigin::Generated,
                    "adopted" => KeyOrigin::Adopted,
                    _ => return Err(corrupt("origin")),
                },
                state: match state.as_str() {
                    "active" => KeyState::Active,
                    "retired" => KeyState::Retired,
                    _ => return Err(corrupt("state")),
                },
                lineage: serde_json::from_str(&lineage).map_err(|_| corrupt("lineage"))?,
                actor,
                version,
                key_ref: KeyRef(key_ref),
                key_id,
                created_at,
            });
        }
        Ok(keys)
    }

    /// Every actor's newest receipt.
    pub fn actor_heads(&self) -> Result<HashMap<String, ActorHead>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT actor, MAX(sequence), payload_sha256 FROM receipts GROUP BY actor")?;
        let rows = stmt.query_map([], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, i64>(1)?,
                row.get::<_, Vec<u8>>(2)?,
            ))
        })?;
        let mut heads = HashMap::new();
        for row in rows {
            let (actor, sequence, digest) = row?;
            let payload_sha256 = <[u8; 32]>::try_from(digest.as_slice())
                .map_err(|_| StoreError::Corrupt(format!("receipt digest of {actor:?}")))?;
            heads.insert(
                actor,
                ActorHead {
                    sequence: to_u64(sequence, "sequence")?,
                    payload_sha256,
                },
            );
        }
        Ok(heads)
    }

    /// The index the next appended receipt gets.
    pub fn next_log_index(&self) -> Result<u64, StoreError> {
        let max: Option<i64> =
            self.conn
                .query_row("SELECT MAX(log_index) FROM receipts", [], |row| row.get(0))?;
        match max {
            None => Ok(0),
            Some(i) => Ok(to_u64(i, "log index")? + 1),
        }
    }

    /// Appends receipts in one transaction; when this returns Ok they are on disk.
    pub fn append_receipts(&mut self, rows: &[ReceiptRow]) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        {
            let mut stmt = tx.prepare_cached(
                "INSERT INTO receipts (log_index, actor, sequence, key_id, payload_sha256, signed_at, bundle)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?;
            for row in rows {
                stmt.execute(params![
                    to_i64(row.log_index, "log index")?,
                    row.actor,
                    to_i64(row.sequence, "sequence")?,
                    row.key_id,
                    row.payload_sha256.as_slice(),
                    row.signed_at,
                    row.bundle_json,
                ])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// The stored bundle of a receipt, by log index.
    pub fn bundle(&self, log_index: u64) -> Result<Option<String>, StoreError> {
        Ok(self
            .conn
            .query_row(
                "SELECT bundle FROM receipts WHERE log_index = ?1",
                params![to_i64(log_index, "log index")?],
                |row| row.get(0),
            )
            .optional()?)
    }

    /// Number of receipts in the log.
    pub fn receipt_count(&self) -> Result<u64, StoreError> {
        let n: i64 = self
            .conn
            .query_row("SELECT COUNT(*) FROM receipts", [], |row| row.get(0))?;
        to_u64(n, "count")
    }
}
