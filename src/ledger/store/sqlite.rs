//! SQLite storage. WAL with `synchronous=FULL`: a committed append survives a crash or a
//! power loss, so the daemon answers a caller only after the commit returns.

use std::{collections::HashMap, ops::ControlFlow, path::Path, time::Duration};

use rusqlite::{Connection, OptionalExtension, params};

use super::row::{SCAN_SELECT, Scanned, key_from_row};
use super::{
    ActorHead, Batch, CheckedTable, CheckpointRow, EntryVisitor, KEY_COLUMN_COUNT, KEY_COLUMNS,
    KeyChange, KeyRecord, KeyVersion, KeyVisitor, LedgerStore, ScanVisitor, StoreError,
    StoredReceipt, attestation_json, parse_kind, to_i64, to_u64,
};
use crate::ledger::merkle::Hash;

/// The schema this code reads and writes (`PRAGMA user_version`). 2: each key version stores
/// its own attestation and refers to the log entry of the rotation that made it; the lineage
/// of bundles is assembled from those (schema 1 stored every predecessor in every version).
pub const SCHEMA_VERSION: i64 = 2;

pub(crate) const SCHEMA: &str = "
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
    attestation TEXT    NOT NULL,
    retired_at  TEXT,
    rotation_index INTEGER REFERENCES log_entries (log_index) DEFERRABLE INITIALLY DEFERRED,
    CHECK ((version = 1) = (rotation_index IS NULL)),
    PRIMARY KEY (actor, version)
);
CREATE TABLE IF NOT EXISTS log_entries (
    log_index   INTEGER PRIMARY KEY CHECK (log_index >= 0),
    kind        TEXT    NOT NULL CHECK (kind IN ('receipt', 'rotation', 'retirement', 'registration', 'log-start')),
    actor       TEXT    NOT NULL,
    entry       BLOB    NOT NULL
);
CREATE TABLE IF NOT EXISTS tree_nodes (
    level   INTEGER NOT NULL,
    idx     INTEGER NOT NULL,
    hash    BLOB    NOT NULL,
    PRIMARY KEY (level, idx)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS checkpoints (
    size    INTEGER PRIMARY KEY CHECK (size >= 1),
    root    BLOB    NOT NULL,
    note    TEXT    NOT NULL
);
CREATE TABLE IF NOT EXISTS requests (
    request_id      TEXT    PRIMARY KEY,
    request_sha256  BLOB    NOT NULL,
    log_index       INTEGER NOT NULL REFERENCES receipts (log_index)
);
CREATE TABLE IF NOT EXISTS meta (
    name    TEXT PRIMARY KEY,
    value   TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS receipts (
    log_index       INTEGER PRIMARY KEY CHECK (log_index >= 0) REFERENCES log_entries (log_index),
    actor           TEXT    NOT NULL,
    sequence        INTEGER NOT NULL CHECK (sequence >= 1),
    key_id          TEXT    NOT NULL REFERENCES actor_keys (key_id),
    payload_sha256  BLOB    NOT NULL,
    signed_at       TEXT    NOT NULL,
    proof_size      INTEGER NOT NULL REFERENCES checkpoints (size),
    proof           BLOB    NOT NULL,
    UNIQUE (actor, sequence)
);
";

fn is_unique_violation(err: &rusqlite::Error) -> bool {
    matches!(
        err,
        rusqlite::Error::SqliteFailure(e, _)
            if e.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
                || e.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY
    )
}

/// The SQLite ledger: one file, one writer at a time.
pub struct SqliteStore {
    conn: Connection,
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path`. The database is created owner-only
    /// before SQLite opens it, and SQLite gives its -wal and -shm files the same mode; files
    /// left readable by others (an older daemon, a copy) are narrowed first. A database of
    /// another schema version is refused ([`StoreError::Schema`]) and left as it is.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        crate::files::private_file(path)?;
        for suffix in ["-wal", "-shm"] {
            let mut side = path.as_os_str().to_owned();
            side.push(suffix);
            crate::files::narrow(Path::new(&side), crate::files::PRIVATE_FILE)?;
        }
        let conn = Connection::open(path)?;
        conn.busy_timeout(Duration::from_secs(5))?;
        // The version first: a database this actseal does not know is left as it is (even
        // its journal mode).
        let found: i64 = conn.query_row("PRAGMA user_version", [], |row| row.get(0))?;
        let tables: i64 = conn.query_row(
            "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table'",
            [],
            |row| row.get(0),
        )?;
        let todo = match (found, tables) {
            // Schema 1 had no version number.
            (0, n) if n > 0 => return Err(StoreError::Schema { found: 1 }),
            (found, _) => super::migrations::pending(super::migrations::SQLITE, found)
                .ok_or(StoreError::Schema { found })?,
        };
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        if !todo.is_empty() {
            let tx = conn.unchecked_transaction()?;
            for migration in todo {
                tx.execute_batch(migration.sql)?;
            }
            tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
            tx.commit()?;
        }
        // An index, not a schema change: the start-up check finds a receipt's request ids.
        conn.execute_batch(
            "CREATE INDEX IF NOT EXISTS requests_by_log_index ON requests (log_index)",
        )?;
        Ok(SqliteStore { conn })
    }

    /// Registers a key version. A second key for the same (actor, version) or the same key
    /// id is a [`StoreError::Conflict`].
    fn insert_key(
        conn: &Connection,
        key: &KeyRecord,
        rotation_index: Option<u64>,
    ) -> Result<(), StoreError> {
        let attestation = attestation_json(key)?;
        let rotation_index = rotation_index.map(|i| to_i64(i, "log index")).transpose()?;
        let result = conn.execute(
            "INSERT INTO actor_keys (actor, version, backend, key_ref, key_id, public_key, origin, state, created_at, attestation, retired_at, rotation_index)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
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
                attestation,
                key.retired_at,
                rotation_index,
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

    /// Runs a query whose first columns are [`KEY_COLUMNS`] and hands each decoded key (with
    /// the row, for further columns) to `visit`, until it breaks.
    fn visit_keys<P: rusqlite::Params>(
        &self,
        sql: &str,
        params: P,
        mut visit: impl FnMut(KeyRecord, &rusqlite::Row<'_>) -> Result<ControlFlow<()>, StoreError>,
    ) -> Result<(), StoreError> {
        let mut stmt = self.conn.prepare_cached(sql)?;
        let mut rows = stmt.query(params)?;
        while let Some(row) = rows.next()? {
            if visit(key_from_row(row)?, row)?.is_break() {
                break;
            }
        }
        Ok(())
    }

    fn checkpoint_query(
        &self,
        sql: &str,
        size: Option<u64>,
    ) -> Result<Option<CheckpointRow>, StoreError> {
        let size = size.map(|s| to_i64(s, "tree size")).transpose()?;
        let row = self
            .conn
            .prepare_cached(sql)?
            .query_row(params![size], |row| {
                Ok((
                    row.get::<_, i64>(0)?,
                    row.get::<_, Vec<u8>>(1)?,
                    row.get::<_, String>(2)?,
                ))
            })
            .optional()?;
        row.map(|(size, root, note)| {
            Ok(CheckpointRow {
                size: to_u64(size, "tree size")?,
                root: <Hash>::try_from(root.as_slice())
                    .map_err(|_| StoreError::Corrupt(format!("checkpoint root at {size}")))?,
                note,
            })
        })
        .transpose()
    }
}

impl LedgerStore for SqliteStore {
    /// Key versions, oldest first; of one actor, or of all when `actor` is `None`.
    fn keys(&self, actor: Option<&str>) -> Result<Vec<KeyRecord>, StoreError> {
        let mut keys = Vec::new();
        self.visit_keys(
            &format!(
                "SELECT {KEY_COLUMNS} FROM actor_keys k WHERE ?1 IS NULL OR k.actor = ?1 ORDER BY k.actor, k.version"
            ),
            params![actor],
            |key, _| {
                keys.push(key);
                Ok(ControlFlow::Continue(()))
            },
        )?;
        Ok(keys)
    }

    /// Key versions in (actor, version) order, starting after `after` (exclusive), handed to
    /// `visit` one at a time until it breaks: a page reads only the rows it walks over.
    fn scan_keys(&self, after: (&str, u32), visit: &mut KeyVisitor<'_>) -> Result<(), StoreError> {
        self.visit_keys(
            &format!(
                "SELECT {KEY_COLUMNS} FROM actor_keys k WHERE (k.actor, k.version) > (?1, ?2) ORDER BY k.actor, k.version"
            ),
            params![after.0, after.1],
            |key, _| Ok(visit(key)),
        )
    }

    /// Versions 1 to `version` of `actor`, oldest first, each with the log entry of the
    /// rotation that made it (`None` for version 1): what a lineage is assembled from.
    fn key_history(&self, actor: &str, version: u32) -> Result<Vec<KeyVersion>, StoreError> {
        let mut history = Vec::new();
        self.visit_keys(
            &format!(
                "SELECT {KEY_COLUMNS}, e.entry FROM actor_keys k
                 LEFT JOIN log_entries e ON e.log_index = k.rotation_index
                 WHERE k.actor = ?1 AND k.version <= ?2 ORDER BY k.version"
            ),
            params![actor, version],
            |key, row| {
                history.push((key, row.get::<_, Option<Vec<u8>>>(KEY_COLUMN_COUNT)?));
                Ok(ControlFlow::Continue(()))
            },
        )?;
        Ok(history)
    }

    /// Every actor's newest receipt: one index probe per actor with a key (receipts need a
    /// registered key), so it costs the same on a log of a thousand or ten million entries.
    fn actor_heads(&self) -> Result<HashMap<String, ActorHead>, StoreError> {
        let mut actors = self
            .conn
            .prepare_cached("SELECT DISTINCT actor FROM actor_keys")?;
        let actors = actors
            .query_map([], |row| row.get::<_, String>(0))?
            .collect::<Result<Vec<_>, _>>()?;
        let mut newest = self.conn.prepare_cached(
            "SELECT sequence, payload_sha256 FROM receipts WHERE actor = ?1 ORDER BY sequence DESC LIMIT 1",
        )?;
        let mut heads = HashMap::new();
        for actor in actors {
            let row: Option<(i64, Vec<u8>)> = newest
                .query_row(params![actor], |row| Ok((row.get(0)?, row.get(1)?)))
                .optional()?;
            let Some((sequence, digest)) = row else {
                continue;
            };
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
        // A receipt of an actor without a key is caught by the start-up check's row counts.
        Ok(heads)
    }

    /// The index the next appended receipt gets.
    fn next_log_index(&self) -> Result<u64, StoreError> {
        let max: Option<i64> =
            self.conn
                .query_row("SELECT MAX(log_index) FROM log_entries", [], |row| {
                    row.get(0)
                })?;
        match max {
            None => Ok(0),
            Some(i) => Ok(to_u64(i, "log index")? + 1),
        }
    }

    /// Writes a batch in one transaction; when this returns Ok it is on disk.
    fn commit(&mut self, batch: &Batch) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        for change in &batch.keys {
            match change {
                KeyChange::Insert(key) => SqliteStore::insert_key(&tx, key, None)?,
                KeyChange::Rotated {
                    key,
                    rotation_index,
                } => SqliteStore::insert_key(&tx, key, Some(*rotation_index))?,
                KeyChange::Retire {
                    actor,
                    version,
                    retired_at,
                } => {
                    let changed = tx.execute(
                        "UPDATE actor_keys SET state = 'retired', retired_at = ?3
                         WHERE actor = ?1 AND version = ?2 AND state = 'active'",
                        params![actor, version, retired_at],
                    )?;
                    if changed != 1 {
                        return Err(StoreError::Conflict(format!(
                            "key {actor:?} v{version} is not active"
                        )));
                    }
                }
            }
        }
        {
            let mut stmt = tx.prepare_cached(
                "INSERT INTO log_entries (log_index, kind, actor, entry) VALUES (?1, ?2, ?3, ?4)",
            )?;
            for e in &batch.entries {
                stmt.execute(params![
                    to_i64(e.log_index, "log index")?,
                    e.kind.as_str(),
                    e.actor,
                    e.entry
                ])?;
            }
            let mut stmt =
                tx.prepare_cached("INSERT INTO tree_nodes (level, idx, hash) VALUES (?1, ?2, ?3)")?;
            for (level, index, hash) in &batch.nodes {
                stmt.execute(params![
                    level,
                    to_i64(*index, "node index")?,
                    hash.as_slice()
                ])?;
            }
            // Before the receipts, whose proofs refer to it.
            if let Some(c) = &batch.checkpoint {
                tx.execute(
                    "INSERT INTO checkpoints (size, root, note) VALUES (?1, ?2, ?3)",
                    params![to_i64(c.size, "tree size")?, c.root.as_slice(), c.note],
                )?;
            }
            let mut stmt = tx.prepare_cached(
                "INSERT INTO receipts (log_index, actor, sequence, key_id, payload_sha256, signed_at, proof_size, proof)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?;
            for row in &batch.receipts {
                stmt.execute(params![
                    to_i64(row.log_index, "log index")?,
                    row.actor,
                    to_i64(row.sequence, "sequence")?,
                    row.key_id,
                    row.payload_sha256.as_slice(),
                    row.signed_at,
                    to_i64(row.proof_size, "tree size")?,
                    row.proof.concat(),
                ])?;
            }
            let mut stmt = tx.prepare_cached(
                "INSERT INTO requests (request_id, request_sha256, log_index) VALUES (?1, ?2, ?3)",
            )?;
            for (id, fingerprint, index) in &batch.requests {
                stmt.execute(params![
                    id,
                    fingerprint.as_slice(),
                    to_i64(*index, "log index")?
                ])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// A stored node of the Merkle tree.
    fn node(&self, level: u8, index: u64) -> Result<Option<Hash>, StoreError> {
        let hash: Option<Vec<u8>> = self
            .conn
            .prepare_cached("SELECT hash FROM tree_nodes WHERE level = ?1 AND idx = ?2")?
            .query_row(params![level, to_i64(index, "node index")?], |row| {
                row.get(0)
            })
            .optional()?;
        hash.map(|h| {
            <Hash>::try_from(h.as_slice())
                .map_err(|_| StoreError::Corrupt(format!("tree node ({level}, {index})")))
        })
        .transpose()
    }

    /// The newest signed checkpoint.
    fn latest_checkpoint(&self) -> Result<Option<CheckpointRow>, StoreError> {
        self.checkpoint_query(
            "SELECT size, root, note FROM checkpoints WHERE ?1 IS NULL ORDER BY size DESC LIMIT 1",
            None,
        )
    }

    /// The signed checkpoint of exactly `size`.
    fn checkpoint(&self, size: u64) -> Result<Option<CheckpointRow>, StoreError> {
        self.checkpoint_query(
            "SELECT size, root, note FROM checkpoints WHERE size = ?1",
            Some(size),
        )
    }

    /// A request id's fingerprint and the log index it produced.
    fn request(&self, request_id: &str) -> Result<Option<([u8; 32], u64)>, StoreError> {
        let row: Option<(Vec<u8>, i64)> = self
            .conn
            .prepare_cached("SELECT request_sha256, log_index FROM requests WHERE request_id = ?1")?
            .query_row(params![request_id], |row| Ok((row.get(0)?, row.get(1)?)))
            .optional()?;
        row.map(|(fingerprint, index)| {
            Ok((
                <[u8; 32]>::try_from(fingerprint.as_slice())
                    .map_err(|_| StoreError::Corrupt(format!("request {request_id:?}")))?,
                to_u64(index, "log index")?,
            ))
        })
        .transpose()
    }

    /// Calls `visit` with every log entry in index order (for start-up checks and export).
    fn for_each_entry(&self, visit: &mut EntryVisitor<'_>) -> Result<(), StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT log_index, kind, actor, entry FROM log_entries ORDER BY log_index")?;
        let mut rows = stmt.query([])?;
        while let Some(row) = rows.next()? {
            let index = to_u64(row.get(0)?, "log index")?;
            let text = row.get_ref(1)?.as_str().unwrap_or_default();
            let kind = parse_kind(text)
                .ok_or_else(|| StoreError::Corrupt(format!("entry {index}: kind {text:?}")))?;
            let actor: String = row.get(2)?;
            let entry = row.get_ref(3)?.as_blob().map_err(rusqlite::Error::from)?;
            visit(index, kind, &actor, entry)?;
        }
        Ok(())
    }

    fn meta(&self, name: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .conn
            .query_row(
                "SELECT value FROM meta WHERE name = ?1",
                params![name],
                |row| row.get(0),
            )
            .optional()?)
    }

    fn set_meta(&self, name: &str, value: &str) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT INTO meta (name, value) VALUES (?1, ?2)
             ON CONFLICT (name) DO UPDATE SET value = excluded.value",
            params![name, value],
        )?;
        Ok(())
    }

    /// Number of stored tree nodes.
    fn node_count(&self) -> Result<u64, StoreError> {
        let n: i64 = self
            .conn
            .query_row("SELECT COUNT(*) FROM tree_nodes", [], |row| row.get(0))?;
        to_u64(n, "count")
    }

    /// Whether a key id belongs to any registered key version.
    fn key_id_registered(&self, key_id: &str) -> Result<bool, StoreError> {
        Ok(self
            .conn
            .prepare_cached("SELECT 1 FROM actor_keys WHERE key_id = ?1")?
            .exists(params![key_id])?)
    }

    /// A stored receipt, by log index.
    fn receipt(&self, log_index: u64) -> Result<Option<StoredReceipt>, StoreError> {
        let row: Option<(i64, String, i64, Vec<u8>, String)> = self
            .conn
            .prepare_cached(
                "SELECT sequence, key_id, proof_size, proof, signed_at FROM receipts WHERE log_index = ?1",
            )?
            .query_row(params![to_i64(log_index, "log index")?], |row| {
                Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?, row.get(4)?))
            })
            .optional()?;
        row.map(|(sequence, key_id, proof_size, proof, signed_at)| {
            let (hashes, rest) = proof.as_chunks::<32>();
            if !rest.is_empty() {
                return Err(StoreError::Corrupt(format!("proof of receipt {log_index}")));
            }
            Ok(StoredReceipt {
                sequence: to_u64(sequence, "sequence")?,
                key_id,
                signed_at,
                proof_size: to_u64(proof_size, "tree size")?,
                proof: hashes.to_vec(),
            })
        })
        .transpose()
    }

    /// The actor a log entry is about, by index.
    fn entry_actor(&self, log_index: u64) -> Result<Option<String>, StoreError> {
        Ok(self
            .conn
            .prepare_cached("SELECT actor FROM log_entries WHERE log_index = ?1")?
            .query_row(params![to_i64(log_index, "log index")?], |row| row.get(0))
            .optional()?)
    }

    /// A log entry's bytes, by index.
    fn entry(&self, log_index: u64) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .conn
            .prepare_cached("SELECT entry FROM log_entries WHERE log_index = ?1")?
            .query_row(params![to_i64(log_index, "log index")?], |row| row.get(0))
            .optional()?)
    }

    /// The key version with this key id.
    fn key_by_id(&self, key_id: &str) -> Result<Option<KeyRecord>, StoreError> {
        let mut found = None;
        self.visit_keys(
            &format!("SELECT {KEY_COLUMNS} FROM actor_keys k WHERE k.key_id = ?1"),
            params![key_id],
            |key, _| {
                found = Some(key);
                Ok(ControlFlow::Break(()))
            },
        )?;
        Ok(found)
    }

    /// Request ids recorded for the first `size` entries.
    fn request_count_below(&self, size: u64) -> Result<u64, StoreError> {
        let n: i64 = self.conn.query_row(
            "SELECT COUNT(*) FROM requests WHERE log_index < ?1",
            params![to_i64(size, "tree size")?],
            |row| row.get(0),
        )?;
        to_u64(n, "count")
    }

    /// Rows of `table` (receipts, requests, checkpoints) about entries at or after `from`:
    /// what the start-up check must have met walking the entries from there.
    fn rows_from(&self, table: CheckedTable, from: u64) -> Result<u64, StoreError> {
        let sql = match table {
            CheckedTable::Receipts => "SELECT COUNT(*) FROM receipts WHERE log_index >= ?1",
            CheckedTable::Requests => "SELECT COUNT(*) FROM requests WHERE log_index >= ?1",
            // The checkpoint of size s is met at entry s - 1.
            CheckedTable::Checkpoints => "SELECT COUNT(*) FROM checkpoints WHERE size > ?1",
        };
        let n: i64 = self
            .conn
            .query_row(sql, params![to_i64(from, "log index")?], |row| row.get(0))?;
        to_u64(n, "count")
    }

    /// The highest stored node index at `level`, if any.
    fn max_node_index(&self, level: u8) -> Result<Option<u64>, StoreError> {
        let max: Option<i64> = self.conn.query_row(
            "SELECT MAX(idx) FROM tree_nodes WHERE level = ?1",
            params![level],
            |row| row.get(0),
        )?;
        max.map(|m| to_u64(m, "node index")).transpose()
    }

    /// Calls `visit` with every log entry from `from` on, in index order, with the rows that
    /// refer to it: its receipt row (and the root of the checkpoint its proof is against), the
    /// checkpoint whose size it completes, and its request ids. One pass over the log for the
    /// start-up check.
    fn scan_from(&self, from: u64, visit: &mut ScanVisitor<'_>) -> Result<(), StoreError> {
        let mut stmt = self.conn.prepare(&format!(
            "{SCAN_SELECT} WHERE e.log_index >= ?1 ORDER BY e.log_index"
        ))?;
        let mut rows = stmt.query(params![to_i64(from, "log index")?])?;
        while let Some(row) = rows.next()? {
            Scanned::decode(row)?.visit(visit)?;
        }
        Ok(())
    }

    /// Number of receipts in the log.
    fn receipt_count(&self) -> Result<u64, StoreError> {
        let n: i64 = self
            .conn
            .query_row("SELECT COUNT(*) FROM receipts", [], |row| row.get(0))?;
        to_u64(n, "count")
    }

    fn engine(&self) -> &'static str {
        "sqlite"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::store::Store;

    #[test]
    fn a_database_of_another_schema_is_refused_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.db");
        // Schema 1 had no user_version and a `lineage` column.
        let old = Connection::open(&path).unwrap();
        old.execute_batch("CREATE TABLE actor_keys (actor TEXT, lineage TEXT);")
            .unwrap();
        drop(old);
        let err = Store::open(&path).err().unwrap();
        assert!(matches!(err, StoreError::Schema { found: 1 }), "{err}");
        assert!(err.to_string().contains("no migration"), "{err}");
        let newer = dir.path().join("newer.db");
        Connection::open(&newer)
            .unwrap()
            .pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .unwrap();
        assert!(matches!(
            Store::open(&newer).err().unwrap(),
            StoreError::Schema { .. }
        ));
        // A new database gets the current schema, and opens again.
        let fresh = dir.path().join("fresh.db");
        drop(Store::open(&fresh).unwrap());
        let store = Store::open(&fresh).unwrap();
        assert!(store.keys(None).unwrap().is_empty());
    }
}
