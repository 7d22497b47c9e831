//! Anchored checkpoints and the size each witness last cosigned, in the ledger database
//! (their own tables, their own connection: the sequencer's schema is not touched). On
//! PostgreSQL the tables are part of the ledger's schema (ledger::store::migrations).

use std::{collections::BTreeSet, time::Duration};

use rusqlite::{Connection, OptionalExtension, params};

use super::AnchoredCheckpoint;
use crate::{
    fleet::anchor::CHANNEL_ANCHORED,
    ledger::store::{LedgerLocation, PgStore, StoreError},
};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS anchored_checkpoints (
    size        INTEGER PRIMARY KEY,
    root        BLOB NOT NULL,
    note        TEXT NOT NULL,
    cosigners   TEXT NOT NULL,
    timestamps  TEXT NOT NULL,
    anchored_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS witness_sizes (
    witness TEXT PRIMARY KEY,
    size    INTEGER NOT NULL
);
";

/// Why the anchor tables could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum AnchorStoreError {
    #[error("anchor tables: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("anchor tables: corrupt row: {0}")]
    Corrupt(String),
    #[error("anchor tables: {0}")]
    Postgres(#[from] StoreError),
}

/// The anchor task's connection to the ledger database.
pub enum AnchorStore {
    Sqlite(Connection),
    Postgres(Box<PgStore>),
}

/// A stored anchored checkpoint's columns: size, root, note, cosigners, timestamps.
type AnchoredRow = (i64, Vec<u8>, String, String, String);

fn to_i64(v: u64) -> Result<i64, AnchorStoreError> {
    i64::try_from(v).map_err(|_| AnchorStoreError::Corrupt(format!("{v} exceeds 2^63")))
}

impl AnchorStore {
    /// Opens the database the ledger already created and adds the anchor tables (SQLite;
    /// PostgreSQL's schema has them).
    pub fn open(location: &LedgerLocation) -> Result<Self, AnchorStoreError> {
        let path = match location {
            LedgerLocation::Sqlite(path) => path,
            LedgerLocation::Postgres(settings) => {
                return Ok(AnchorStore::Postgres(Box::new(PgStore::open(settings)?)));
            }
        };
        let conn = Connection::open(path)?;
        conn.busy_timeout(Duration::from_secs(5))?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.execute_batch(SCHEMA)?;
        Ok(AnchorStore::Sqlite(conn))
    }

    /// Stores an anchored checkpoint (replacing one of the same size: a later round added
    /// cosignatures or tokens).
    pub fn put(&self, anchored: &AnchoredCheckpoint) -> Result<(), AnchorStoreError> {
        let (size, cosigners, timestamps) = columns(anchored)?;
        match self {
            AnchorStore::Sqlite(conn) => {
                conn.execute(
                    "INSERT OR REPLACE INTO anchored_checkpoints
                        (size, root, note, cosigners, timestamps, anchored_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, strftime('%s', 'now'))",
                    params![
                        size,
                        anchored.root.as_slice(),
                        anchored.note,
                        cosigners,
                        timestamps
                    ],
                )?;
            }
            AnchorStore::Postgres(pg) => {
                pg.with_client(|c| {
                    c.execute(
                        "INSERT INTO anchored_checkpoints
                            (size, root, note, cosigners, timestamps, anchored_at)
                         VALUES ($1, $2, $3, $4, $5, EXTRACT(EPOCH FROM now())::BIGINT)
                         ON CONFLICT (size) DO UPDATE SET root = excluded.root,
                            note = excluded.note, cosigners = excluded.cosigners,
                            timestamps = excluded.timestamps, anchored_at = excluded.anchored_at",
                        &[
                            &size,
                            &anchored.root.as_slice(),
                            &anchored.note,
                            &cosigners,
                            &timestamps,
                        ],
                    )
                })?;
            }
        }
        Ok(())
    }

    /// The newest anchored checkpoint.
    pub fn latest(&self) -> Result<Option<AnchoredCheckpoint>, AnchorStoreError> {
        self.query(None)
    }

    /// The anchored checkpoint of exactly `size`.
    pub fn at(&self, size: u64) -> Result<Option<AnchoredCheckpoint>, AnchorStoreError> {
        self.query(Some(to_i64(size)?))
    }

    /// The row of `size`, or the newest when `None`.
    fn row(&self, size: Option<i64>) -> Result<Option<AnchoredRow>, AnchorStoreError> {
        const COLUMNS: &str =
            "SELECT size, root, note, cosigners, timestamps FROM anchored_checkpoints";
        match self {
            AnchorStore::Sqlite(conn) => Ok(conn
                .query_row(
                    &format!("{COLUMNS} WHERE ?1 IS NULL OR size = ?1 ORDER BY size DESC LIMIT 1"),
                    params![size],
                    |row| {
                        Ok((
                            row.get(0)?,
                            row.get(1)?,
                            row.get(2)?,
                            row.get(3)?,
                            row.get(4)?,
                        ))
                    },
                )
                .optional()?),
            AnchorStore::Postgres(pg) => Ok(pg.with_client(|c| {
                c.query_opt(
                    &format!(
                        "{COLUMNS} WHERE $1::BIGINT IS NULL OR size = $1 ORDER BY size DESC LIMIT 1"
                    ),
                    &[&size],
                )?
                .map(|r| {
                    Ok((
                        r.try_get(0)?,
                        r.try_get(1)?,
                        r.try_get(2)?,
                        r.try_get(3)?,
                        r.try_get(4)?,
                    ))
                })
                .transpose()
            })?),
        }
    }

    fn query(&self, size: Option<i64>) -> Result<Option<AnchoredCheckpoint>, AnchorStoreError> {
        self.row(size)?.map(decode).transpose()
    }
    /// The size `witness` last cosigned (0: none yet).
    pub fn witness_size(&self, witness: &str) -> Result<u64, AnchorStoreError> {
        let size: Option<i64> = match self {
            AnchorStore::Sqlite(conn) => conn
                .query_row(
                    "SELECT size FROM witness_sizes WHERE witness = ?1",
                    params![witness],
                    |row| row.get(0),
                )
                .optional()?,
            AnchorStore::Postgres(pg) => pg.with_client(|c| {
                c.query_opt(
                    "SELECT size FROM witness_sizes WHERE witness = $1",
                    &[&witness],
                )?
                .map(|r| r.try_get(0))
                .transpose()
            })?,
        };
        u64::try_from(size.unwrap_or(0)).map_err(|_| AnchorStoreError::Corrupt(witness.into()))
    }

    /// Records the size `witness` has now seen (it cosigned it, or said so in a 409). On
    /// PostgreSQL (a fleet) the stored size only grows: a fenced holder's round that ends
    /// after the next holder's must not set it back (a witness never goes back either).
    pub fn set_witness_size(&self, witness: &str, size: u64) -> Result<(), AnchorStoreError> {
        let size = to_i64(size)?;
        match self {
            AnchorStore::Sqlite(conn) => {
                conn.execute(
                    "INSERT OR REPLACE INTO witness_sizes (witness, size) VALUES (?1, ?2)",
                    params![witness, size],
                )?;
            }
            AnchorStore::Postgres(pg) => {
                pg.with_client(|c| {
                    c.execute(
                        "INSERT INTO witness_sizes (witness, size) VALUES ($1, $2)
                         ON CONFLICT (witness) DO UPDATE
                            SET size = GREATEST(witness_sizes.size, excluded.size)",
                        &[&witness, &size],
                    )
                })?;
            }
        }
        Ok(())
    }
}

impl AnchorStore {
    /// Fleet mode: whether `node` holds the integrator lease at `epoch`, unexpired.
    pub fn holds_lease(&self, node: &str, epoch: i64) -> Result<bool, AnchorStoreError> {
        let AnchorStore::Postgres(pg) = self else {
            return Ok(true);
        };
        Ok(pg.with_client(|c| {
            c.query_opt(HELD, &[&node, &epoch])
                .map(|row| row.is_some_and(|r| r.get::<_, bool>(0)))
        })?)
    }

    /// Fleet mode: stores an anchored checkpoint only if `node` holds the lease at `epoch`
    /// (the row share-locked by the statement, so a takeover waits for it and then reads it),
    /// and announces it on [`CHANNEL_ANCHORED`]. A row of the same size is replaced only by one
    /// of the same root carrying at least as much: no fewer cosignatures and no fewer tokens
    /// ([`AnchoredCheckpoint::carries_at_least`]).
    pub fn put_as_holder(
        &self,
        anchored: &AnchoredCheckpoint,
        node: &str,
        epoch: i64,
    ) -> Result<HolderPut, AnchorStoreError> {
        let AnchorStore::Postgres(pg) = self else {
            self.put(anchored)?;
            return Ok(HolderPut::Stored);
        };
        let (size, cosigners, timestamps) = columns(anchored)?;
        // One statement: the server checks, stores and announces at once, so no stalled
        // client (a stopped node) holds the lease row's lock and blocks a takeover.
        let statement = format!(
            "WITH held AS (
                SELECT 1 FROM fleet_lease WHERE id = 1 AND holder = $6 AND epoch = $7
                   AND expires_at > clock_timestamp() FOR SHARE),
             stored AS (
                INSERT INTO anchored_checkpoints
                    (size, root, note, cosigners, timestamps, anchored_at)
                SELECT $1, $2, $3, $4, $5, EXTRACT(EPOCH FROM now())::BIGINT FROM held
                ON CONFLICT (size) DO UPDATE SET note = excluded.note,
                    cosigners = excluded.cosigners, timestamps = excluded.timestamps,
                    anchored_at = excluded.anchored_at
                WHERE anchored_checkpoints.root = excluded.root
                  AND json_array_length(excluded.cosigners::json)
                      >= json_array_length(anchored_checkpoints.cosigners::json)
                  AND json_array_length(excluded.timestamps::json)
                      >= json_array_length(anchored_checkpoints.timestamps::json)
                RETURNING size),
             announced AS (SELECT pg_notify('{CHANNEL_ANCHORED}', $8) FROM stored)
             SELECT EXISTS (SELECT 1 FROM held), (SELECT count(*) FROM announced)"
        );
        let announced = size.to_string();
        let rows = pg.with_client(|c| {
            c.query(
                &statement,
                &[
                    &size,
                    &anchored.root.as_slice(),
                    &anchored.note,
                    &cosigners,
                    &timestamps,
                    &node,
                    &epoch,
                    &announced,
                ],
            )
        })?;
        let row = rows.first().ok_or_else(|| {
            AnchorStoreError::Corrupt("storing an anchored checkpoint answered no row".into())
        })?;
        let get = |e: postgres::Error| AnchorStoreError::Postgres(StoreError::from(e));
        let held: bool = row.try_get(0).map_err(get)?;
        let announced: i64 = row.try_get(1).map_err(get)?;
        Ok(match (held, announced) {
            (false, _) => HolderPut::Fenced,
            (true, 0) => HolderPut::Unchanged,
            (true, _) => HolderPut::Stored,
        })
    }
}

/// What [`AnchorStore::put_as_holder`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HolderPut {
    /// Stored (and announced): the newest for its size.
    Stored,
    /// The lease holds, but the table keeps what it had: another root at that size (which
    /// must never be published) or more cosignatures or tokens than this one.
    Unchanged,
    /// This node no longer holds the lease at that epoch: nothing stored.
    Fenced,
}

/// Whether the lease row names this node (`$1`) at this epoch (`$2`) and is unexpired.
const HELD: &str = "SELECT holder = $1 AND epoch = $2 AND expires_at > clock_timestamp()
    FROM fleet_lease WHERE id = 1";

/// Fleet mode: the newest anchored checkpoint, read on a follower's own connection.
pub fn latest_on(
    client: &mut postgres::Client,
) -> Result<Option<AnchoredCheckpoint>, AnchorStoreError> {
    let row = client
        .query_opt(
            "SELECT size, root, note, cosigners, timestamps FROM anchored_checkpoints
             ORDER BY size DESC LIMIT 1",
            &[],
        )
        .map_err(StoreError::from)?;
    row.map(|r| -> Result<AnchoredRow, AnchorStoreError> {
        let get = |e: postgres::Error| AnchorStoreError::Postgres(StoreError::from(e));
        Ok((
            r.try_get(0).map_err(get)?,
            r.try_get(1).map_err(get)?,
            r.try_get(2).map_err(get)?,
            r.try_get(3).map_err(get)?,
            r.try_get(4).map_err(get)?,
        ))
    })
    .transpose()?
    .map(decode)
    .transpose()
}

/// The stored columns of an anchored checkpoint besides root and note: size, cosigners,
/// timestamps.
fn columns(anchored: &AnchoredCheckpoint) -> Result<(i64, String, String), AnchorStoreError> {
    let cosigners = serde_json::to_string(&anchored.cosigners)
        .map_err(|e| AnchorStoreError::Corrupt(e.to_string()))?;
    let timestamps: Vec<String> = anchored.timestamps.iter().map(hex::encode).collect();
    let timestamps =
        serde_json::to_string(&timestamps).map_err(|e| AnchorStoreError::Corrupt(e.to_string()))?;
    Ok((to_i64(anchored.size)?, cosigners, timestamps))
}

/// An anchored checkpoint from its stored columns.
fn decode(row: AnchoredRow) -> Result<AnchoredCheckpoint, AnchorStoreError> {
    let (size, root, note, cosigners, timestamps) = row;
    let corrupt = |what: &str| AnchorStoreError::Corrupt(format!("size {size}: {what}"));
    let cosigners: BTreeSet<String> =
        serde_json::from_str(&cosigners).map_err(|_| corrupt("cosigners"))?;
    let timestamps: Vec<String> =
        serde_json::from_str(&timestamps).map_err(|_| corrupt("timestamps"))?;
    Ok(AnchoredCheckpoint {
        size: u64::try_from(size).map_err(|_| corrupt("size"))?,
        root: root.try_into().map_err(|_| corrupt("root"))?,
        note,
        cosigners,
        timestamps: timestamps
            .iter()
            .map(hex::decode)
            .collect::<Result<_, _>>()
            .map_err(|_| corrupt("timestamps"))?,
    })
}
