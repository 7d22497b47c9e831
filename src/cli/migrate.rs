//! `actseal ledger migrate --from sqlite:<path>|--config <daemon config> --to postgres://…`:
//! copies a single-host SQLite log into an empty PostgreSQL database in one transaction,
//! byte for byte (entries, tree nodes, checkpoints, receipts, requests, keys, meta, anchored
//! checkpoints and witness sizes), then checks the copy: the whole log's integrity check on
//! the target, every table's row count, and the newest checkpoint equal.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use postgres::types::ToSql;
use rusqlite::types::ValueRef;

use crate::{
    cli::out::outln,
    config::Config,
    ledger::store::{PgSettings, PgStore, Store, postgres as pg},
};

/// A column's type in both engines.
#[derive(Clone, Copy)]
enum Col {
    Int,
    Text,
    Bytes,
}

/// The tables copied, in an order their foreign keys accept (a key's rotation index is
/// checked at commit), with their columns.
const TABLES: &[(&str, &[(&str, Col)])] = &[
    (
        "log_entries",
        &[
            ("log_index", Col::Int),
            ("kind", Col::Text),
            ("actor", Col::Text),
            ("entry", Col::Bytes),
        ],
    ),
    (
        "actor_keys",
        &[
            ("actor", Col::Text),
            ("version", Col::Int),
            ("backend", Col::Text),
            ("key_ref", Col::Text),
            ("key_id", Col::Text),
            ("public_key", Col::Bytes),
            ("origin", Col::Text),
            ("state", Col::Text),
            ("created_at", Col::Text),
            ("attestation", Col::Text),
            ("retired_at", Col::Text),
            ("rotation_index", Col::Int),
        ],
    ),
    (
        "tree_nodes",
        &[("level", Col::Int), ("idx", Col::Int), ("hash", Col::Bytes)],
    ),
    (
        "checkpoints",
        &[
            ("size", Col::Int),
            ("root", Col::Bytes),
            ("note", Col::Text),
        ],
    ),
    (
        "receipts",
        &[
            ("log_index", Col::Int),
            ("actor", Col::Text),
            ("sequence", Col::Int),
            ("key_id", Col::Text),
            ("payload_sha256", Col::Bytes),
            ("signed_at", Col::Text),
            ("proof_size", Col::Int),
            ("proof", Col::Bytes),
        ],
    ),
    (
        "requests",
        &[
            ("request_id", Col::Text),
            ("request_sha256", Col::Bytes),
            ("log_index", Col::Int),
        ],
    ),
    ("meta", &[("name", Col::Text), ("value", Col::Text)]),
    (
        "anchored_checkpoints",
        &[
            ("size", Col::Int),
            ("root", Col::Bytes),
            ("note", Col::Text),
            ("cosigners", Col::Text),
            ("timestamps", Col::Text),
            ("anchored_at", Col::Int),
        ],
    ),
    (
        "witness_sizes",
        &[("witness", Col::Text), ("size", Col::Int)],
    ),
];

/// Rows sent per statement.
const CHUNK: usize = 2000;

/// One column's values of a chunk, as PostgreSQL arrays.
enum Values {
    Int(Vec<Option<i64>>),
    Text(Vec<Option<String>>),
    Bytes(Vec<Option<Vec<u8>>>),
}

impl Values {
    fn new(col: Col) -> Self {
        match col {
            Col::Int => Values::Int(Vec::new()),
            Col::Text => Values::Text(Vec::new()),
            Col::Bytes => Values::Bytes(Vec::new()),
        }
    }

    /// Adds a SQLite value, which must be of the column's type (or NULL).
    fn push(&mut self, value: ValueRef<'_>, what: &dyn Fn() -> String) -> Result<()> {
        match (self, value) {
            (Values::Int(v), ValueRef::Null) => v.push(None),
            (Values::Text(v), ValueRef::Null) => v.push(None),
            (Values::Bytes(v), ValueRef::Null) => v.push(None),
            (Values::Int(v), ValueRef::Integer(i)) => v.push(Some(i)),
            (Values::Text(v), ValueRef::Text(t)) => v.push(Some(
                String::from_utf8(t.to_vec()).with_context(|| format!("{}: not UTF-8", what()))?,
            )),
            (Values::Bytes(v), ValueRef::Blob(b)) => v.push(Some(b.to_vec())),
            _ => bail!("{}: a value of another type than the schema's", what()),
        }
        Ok(())
    }

    fn len(&self) -> usize {
        match self {
            Values::Int(v) => v.len(),
            Values::Text(v) => v.len(),
            Values::Bytes(v) => v.len(),
        }
    }

    fn param(&self) -> &(dyn ToSql + Sync) {
        match self {
            Values::Int(v) => v,
            Values::Text(v) => v,
            Values::Bytes(v) => v,
        }
    }
}

fn pg_type(col: Col) -> &'static str {
    match col {
        Col::Int => "BIGINT[]",
        Col::Text => "TEXT[]",
        Col::Bytes => "BYTEA[]",
    }
}

/// Where the SQLite log is: `sqlite:<path>` or the daemon configuration's state directory.
fn source_path(from: Option<&str>, config: Option<&Path>) -> Result<PathBuf> {
    match (from, config) {
        (Some(from), None) => match from.strip_prefix("sqlite:") {
            Some(path) if !path.is_empty() => Ok(PathBuf::from(path)),
            _ => bail!("--from must be sqlite:<path of the state database>"),
        },
        (None, Some(config)) => {
            let config = Config::load(config)?;
            if config.ledger.url.is_some() {
                bail!("the configuration's ledger is on PostgreSQL already (ledger.url)");
            }
            if std::os::unix::net::UnixStream::connect(&config.server.socket).is_ok() {
                bail!(
                    "a daemon answers on {}: stop it first (the copy must be of a log at rest)",
                    config.server.socket.display()
                );
            }
            Ok(config.state.database())
        }
        _ => bail!("give exactly one of --from sqlite:<path> and --config <daemon config>"),
    }
}

/// What `ledger migrate` is told.
pub struct MigrateArgs<'a> {
    pub from: Option<&'a str>,
    pub config: Option<&'a Path>,
    pub to: &'a str,
    pub password_file: Option<&'a Path>,
    pub tls_ca_file: Option<&'a Path>,
}

/// `actseal ledger migrate`.
pub fn migrate(args: &MigrateArgs<'_>) -> Result<()> {
    let source = source_path(args.from, args.config)?;
    if !source.is_file() {
        bail!("{} does not exist: nothing to migrate", source.display());
    }
    let settings = PgSettings {
        tls_ca_file: args.tls_ca_file.map(Path::to_owned),
        ..PgSettings::new(args.to, args.password_file.map(Path::to_owned))
    };
    // Read in one SQLite transaction: one consistent state of the log.
    let mut sqlite =
        rusqlite::Connection::open_with_flags(&source, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let found: i64 = sqlite.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if found != crate::ledger::store::SCHEMA_VERSION {
        bail!(
            "{} has schema version {found}: this actseal migrates version {}",
            source.display(),
            crate::ledger::store::SCHEMA_VERSION
        );
    }
    let read = sqlite.transaction()?;
    // The target: migrated to the current schema, empty, and no daemon writing it.
    let target = PgStore::open(&settings)?;
    let moved = target.with_client(|client| -> Result<_, postgres::Error> {
        Ok(client
            .query_one("SELECT pg_try_advisory_lock($1)", &[&pg::SINGLE_HOST_LOCK])?
            .get::<_, bool>(0))
    })?;
    if !moved {
        bail!("a daemon holds the target log (single-host lock): stop it first");
    }
    let counts = copy(&read, &target)?;
    drop(read);
    let report = verify(&source, &settings, &counts)?;
    for (table, n) in &counts {
        outln!("{table}: {n} rows");
    }
    outln!("{report}");
    Ok(())
}

/// Copies every table in one PostgreSQL transaction; refuses a target that holds anything.
fn copy(read: &rusqlite::Transaction<'_>, target: &PgStore) -> Result<Vec<(&'static str, u64)>> {
    let mut failure = None;
    let counts = target.with_client(|client| {
        let mut tx = client.transaction()?;
        for (table, _) in TABLES {
            let n: i64 = tx
                .query_one(&format!("SELECT COUNT(*) FROM {table}"), &[])?
                .get(0);
            if n > 0 {
                failure = Some(format!(
                    "the target database is not empty ({table} has {n} rows): nothing was copied"
                ));
                return Ok(Vec::new());
            }
        }
        let mut counts = Vec::new();
        for (table, cols) in TABLES {
            match copy_table(read, &mut tx, table, cols) {
                Ok(n) => counts.push((*table, n)),
                Err(CopyError::Pg(e)) => return Err(e),
                Err(CopyError::Other(e)) => {
                    failure = Some(format!("{e:#}"));
                    return Ok(Vec::new());
                }
            }
        }
        tx.commit()?;
        Ok(counts)
    })?;
    if let Some(failure) = failure {
        bail!("{failure}");
    }
    Ok(counts)
}

enum CopyError {
    Pg(postgres::Error),
    Other(anyhow::Error),
}

impl From<postgres::Error> for CopyError {
    fn from(e: postgres::Error) -> Self {
        CopyError::Pg(e)
    }
}

impl From<anyhow::Error> for CopyError {
    fn from(e: anyhow::Error) -> Self {
        CopyError::Other(e)
    }
}

impl From<rusqlite::Error> for CopyError {
    fn from(e: rusqlite::Error) -> Self {
        CopyError::Other(e.into())
    }
}

/// Copies one table, `CHUNK` rows a statement. A table the source never made (the anchor
/// tables of a daemon that never anchored) has no rows.
fn copy_table(
    read: &rusqlite::Transaction<'_>,
    tx: &mut postgres::Transaction<'_>,
    table: &str,
    cols: &[(&str, Col)],
) -> Result<u64, CopyError> {
    let exists: i64 = read.query_row(
        "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = ?1",
        [table],
        |r| r.get(0),
    )?;
    if exists == 0 {
        return Ok(0);
    }
    let names: Vec<&str> = cols.iter().map(|c| c.0).collect();
    let list = names.join(", ");
    let mut stmt = read.prepare(&format!("SELECT {list} FROM {table}"))?;
    let casts: Vec<String> = cols
        .iter()
        .enumerate()
        .map(|(i, c)| format!("${}::{}", i + 1, pg_type(c.1)))
        .collect();
    let insert = format!(
        "INSERT INTO {table} ({list}) SELECT * FROM UNNEST({})",
        casts.join(", ")
    );
    let mut rows = stmt.query([])?;
    let mut chunk: Vec<Values> = cols.iter().map(|c| Values::new(c.1)).collect();
    let mut total = 0u64;
    loop {
        let row = rows.next()?;
        if let Some(row) = row {
            for (i, values) in chunk.iter_mut().enumerate() {
                let what = || format!("{table}.{}", cols[i].0);
                values.push(row.get_ref(i)?, &what)?;
            }
        }
        let full = chunk[0].len() >= CHUNK;
        if full || (row.is_none() && chunk[0].len() > 0) {
            let params: Vec<&(dyn ToSql + Sync)> = chunk.iter().map(Values::param).collect();
            total += tx.execute(&insert, &params)?;
            chunk = cols.iter().map(|c| Values::new(c.1)).collect();
        }
        if row.is_none() {
            return Ok(total);
        }
    }
}

/// Checks the copy: the whole log's integrity on the target, each table's count, and the
/// newest checkpoint byte for byte.
fn verify(source: &Path, settings: &PgSettings, counts: &[(&str, u64)]) -> Result<String> {
    let target = PgStore::open(settings)?;
    for (table, n) in counts {
        let found: i64 = target.with_client(|c| {
            Ok(c.query_one(&format!("SELECT COUNT(*) FROM {table}"), &[])?
                .get(0))
        })?;
        if found as u64 != *n {
            bail!("after the copy {table} has {found} rows, not {n}");
        }
    }
    let source = Store::open_at(&crate::ledger::store::LedgerLocation::Sqlite(
        source.to_owned(),
    ))?;
    let target = Store::from(Box::new(target) as Box<dyn crate::ledger::store::LedgerStore>);
    if source.latest_checkpoint()? != target.latest_checkpoint()? {
        bail!("the newest checkpoint differs after the copy");
    }
    if target.latest_checkpoint()?.is_none() {
        return Ok("migrated an empty log".into());
    }
    let (origin, status) = super::operator::check_whole_log(&target)?;
    Ok(format!(
        "migrated and checked log {origin}: {} entries, root {}, {} request ids",
        status.size,
        hex::encode(status.root),
        status.requests
    ))
}
