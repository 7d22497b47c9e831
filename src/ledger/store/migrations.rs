//! Schema versions and the migrations the daemon applies itself, in one transaction, when it
//! opens a ledger. A database newer than this actseal knows is refused and left untouched.
//! SQLite keeps its version in `PRAGMA user_version`, PostgreSQL in the `schema_version`
//! row; each engine has its own ordered list (a new version appends an entry).

use postgres::Client;

use super::StoreError;

/// One step of a schema: the SQL that takes a database of the version before to `version`.
pub struct Migration {
    pub version: i64,
    pub sql: &'static str,
}

/// SQLite: a new database is made at version 2 at once (version 1, never deployed, had no
/// number and is refused).
pub const SQLITE: &[Migration] = &[Migration {
    version: 2,
    sql: super::sqlite::SCHEMA,
}];

/// PostgreSQL: version 1 is SQLite's version 2 translated (INTEGER -> BIGINT, BLOB ->
/// BYTEA), the anchor tables, and the fleet's tables (ISSUE 12).
pub const POSTGRES: &[Migration] = &[
    Migration {
        version: 1,
        sql: POSTGRES_V1,
    },
    // Fleet mode (src/fleet): a queued registration carries the key version it enters (the
    // integrator inserts it with the entry), and retries find queued request ids by node.
    Migration {
        version: 2,
        sql: "ALTER TABLE fleet_queue ADD COLUMN key_record TEXT;
              CREATE INDEX fleet_queue_by_request ON fleet_queue (node, request_id);",
    },
    // Fleet mode: moving an actor between nodes (src/fleet/handover.rs).
    Migration {
        version: 3,
        sql: POSTGRES_V3_HANDOVERS,
    },
];

/// The newest version of a list.
pub fn latest(list: &[Migration]) -> i64 {
    list.last().map_or(0, |m| m.version)
}

/// The migrations a database at `found` lacks, or `None` when it is newer than the list.
pub fn pending(list: &[Migration], found: i64) -> Option<&[Migration]> {
    if found > latest(list) {
        return None;
    }
    let first = list
        .iter()
        .position(|m| m.version > found)
        .unwrap_or(list.len());
    Some(&list[first..])
}

/// Taken (transaction-scoped) while a PostgreSQL database is migrated: nodes of a fleet
/// starting at once apply each migration once.
const MIGRATION_LOCK: i64 = 0x6163_7473_6561_6c01;

/// Brings a PostgreSQL ledger to [`POSTGRES`]'s newest version in one transaction, or
/// refuses a newer one ([`StoreError::NewerSchema`]) and rolls back.
pub fn apply_postgres(client: &mut Client) -> Result<(), StoreError> {
    let mut tx = client.transaction()?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])?;
    let has_version: bool = tx
        .query_one("SELECT to_regclass('schema_version') IS NOT NULL", &[])?
        .try_get(0)?;
    let found: i64 = if has_version {
        tx.query_opt("SELECT version FROM schema_version WHERE id = 1", &[])?
            .map(|row| row.try_get(0))
            .transpose()?
            .unwrap_or(0)
    } else {
        let has_log: bool = tx
            .query_one("SELECT to_regclass('log_entries') IS NOT NULL", &[])?
            .try_get(0)?;
        if has_log {
            return Err(StoreError::Corrupt(
                "the database has ledger tables but no schema_version: not made by actseal".into(),
            ));
        }
        0
    };
    let known = latest(POSTGRES);
    let todo = pending(POSTGRES, found).ok_or(StoreError::NewerSchema { found, known })?;
    if todo.is_empty() {
        return Ok(());
    }
    if !has_version {
        tx.batch_execute(
            "CREATE TABLE schema_version (
                id      SMALLINT PRIMARY KEY CHECK (id = 1),
                version BIGINT NOT NULL
            )",
        )?;
    }
    for migration in todo {
        tx.batch_execute(migration.sql)?;
    }
    tx.execute(
        "INSERT INTO schema_version (id, version) VALUES (1, $1)
         ON CONFLICT (id) DO UPDATE SET version = excluded.version",
        &[&known],
    )?;
    tx.commit()?;
    tracing::info!(
        from = found,
        to = known,
        "PostgreSQL ledger schema migrated"
    );
    Ok(())
}

/// Version 3: a pending handover per actor (the target node and the key version it made for
/// the actor). The integrator moves the actor to the target in the transaction that
/// integrates the rotation to that key, once it has checked the rotation's signature
/// (`crate::fleet::handover::complete`); no trigger does it, so a row written straight into
/// the key table moves nothing.
const POSTGRES_V3_HANDOVERS: &str = r#"
CREATE TABLE fleet_handovers (
    actor       TEXT PRIMARY KEY REFERENCES fleet_actors (actor),
    target      TEXT NOT NULL,
    key_id      TEXT NOT NULL UNIQUE,
    key_record  TEXT NOT NULL,
    accepted_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp()
);
"#;

/// Version 1 of the PostgreSQL ledger.
const POSTGRES_V1: &str = r#"
CREATE TABLE log_entries (
    log_index   BIGINT PRIMARY KEY CHECK (log_index >= 0),
    kind        TEXT   NOT NULL CHECK (kind IN ('receipt', 'rotation', 'retirement', 'registration', 'log-start')),
    actor       TEXT   NOT NULL,
    entry       BYTEA  NOT NULL
);
CREATE TABLE actor_keys (
    actor       TEXT COLLATE "C" NOT NULL,
    version     BIGINT NOT NULL CHECK (version >= 1),
    backend     TEXT   NOT NULL,
    key_ref     TEXT   NOT NULL,
    key_id      TEXT   NOT NULL UNIQUE,
    public_key  BYTEA  NOT NULL,
    origin      TEXT   NOT NULL,
    state       TEXT   NOT NULL,
    created_at  TEXT   NOT NULL,
    attestation TEXT   NOT NULL,
    retired_at  TEXT,
    rotation_index BIGINT REFERENCES log_entries (log_index) DEFERRABLE INITIALLY DEFERRED,
    CHECK ((version = 1) = (rotation_index IS NULL)),
    PRIMARY KEY (actor, version)
);
CREATE TABLE tree_nodes (
    level   BIGINT NOT NULL,
    idx     BIGINT NOT NULL,
    hash    BYTEA  NOT NULL,
    PRIMARY KEY (level, idx)
);
CREATE TABLE checkpoints (
    size    BIGINT PRIMARY KEY CHECK (size >= 1),
    root    BYTEA  NOT NULL,
    note    TEXT   NOT NULL
);
CREATE TABLE meta (
    name    TEXT PRIMARY KEY,
    value   TEXT NOT NULL
);
CREATE TABLE receipts (
    log_index       BIGINT PRIMARY KEY CHECK (log_index >= 0) REFERENCES log_entries (log_index),
    actor           TEXT   NOT NULL,
    sequence        BIGINT NOT NULL CHECK (sequence >= 1),
    key_id          TEXT   NOT NULL REFERENCES actor_keys (key_id),
    payload_sha256  BYTEA  NOT NULL,
    signed_at       TEXT   NOT NULL,
    proof_size      BIGINT NOT NULL REFERENCES checkpoints (size),
    proof           BYTEA  NOT NULL,
    UNIQUE (actor, sequence)
);
CREATE TABLE requests (
    request_id      TEXT   PRIMARY KEY,
    request_sha256  BYTEA  NOT NULL,
    log_index       BIGINT NOT NULL REFERENCES receipts (log_index)
);
CREATE INDEX requests_by_log_index ON requests (log_index);
CREATE TABLE anchored_checkpoints (
    size        BIGINT PRIMARY KEY,
    root        BYTEA  NOT NULL,
    note        TEXT   NOT NULL,
    cosigners   TEXT   NOT NULL,
    timestamps  TEXT   NOT NULL,
    anchored_at BIGINT NOT NULL
);
CREATE TABLE witness_sizes (
    witness TEXT PRIMARY KEY,
    size    BIGINT NOT NULL
);
CREATE TABLE fleet_lease (
    id          SMALLINT PRIMARY KEY CHECK (id = 1),
    holder      TEXT        NOT NULL,
    epoch       BIGINT      NOT NULL,
    expires_at  TIMESTAMPTZ NOT NULL,
    published_size BIGINT   NOT NULL DEFAULT 0
);
CREATE TABLE fleet_actors (
    actor TEXT PRIMARY KEY,
    node  TEXT NOT NULL
);
CREATE TABLE fleet_actor_heads (
    actor          TEXT PRIMARY KEY REFERENCES fleet_actors (actor),
    sequence       BIGINT NOT NULL CHECK (sequence >= 1),
    payload_sha256 BYTEA  NOT NULL
);
CREATE TABLE fleet_queue (
    queue_id       BIGSERIAL PRIMARY KEY,
    node           TEXT   NOT NULL,
    kind           TEXT   NOT NULL,
    actor          TEXT   NOT NULL,
    entry          BYTEA  NOT NULL,
    sequence       BIGINT, key_id TEXT, payload_sha256 BYTEA, signed_at TEXT,
    request_id     TEXT, request_sha256 BYTEA,
    rotates_version INTEGER,
    queued_at      TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp()
);
CREATE TABLE fleet_integrated (
    queue_id   BIGINT PRIMARY KEY,
    node       TEXT   NOT NULL,
    log_index  BIGINT NOT NULL UNIQUE REFERENCES log_entries (log_index),
    queued_at  TIMESTAMPTZ NOT NULL,
    integrated_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp()
);
CREATE TABLE fleet_nodes (
    node TEXT PRIMARY KEY,
    last_seen TIMESTAMPTZ NOT NULL
);
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_takes_what_a_database_lacks_and_refuses_a_newer_one() {
        const LIST: &[Migration] = &[
            Migration {
                version: 1,
                sql: "a",
            },
            Migration {
                version: 2,
                sql: "b",
            },
            Migration {
                version: 4,
                sql: "c",
            },
        ];
        let versions =
            |found| pending(LIST, found).map(|m| m.iter().map(|m| m.version).collect::<Vec<_>>());
        assert_eq!(versions(0), Some(vec![1, 2, 4]));
        assert_eq!(versions(2), Some(vec![4]));
        assert_eq!(versions(3), Some(vec![4]));
        assert_eq!(versions(4), Some(vec![]));
        assert_eq!(versions(5), None);
        assert_eq!(latest(SQLITE), crate::ledger::store::SCHEMA_VERSION);
        // Versions only grow along each list.
        for list in [SQLITE, POSTGRES] {
            assert!(list.windows(2).all(|w| w[0].version < w[1].version));
        }
    }
}
