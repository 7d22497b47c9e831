//! The ledger on PostgreSQL, through the blocking `postgres` client (the store is
//! synchronous: it is used from the sequencer's and commit threads and `spawn_blocking`).
//! A batch is one transaction with `synchronous_commit = on`; a lost connection is
//! [`StoreError::Unavailable`] and the next call connects again. The password comes from a
//! file, never from the URL; TLS (rustls) verifies the server against a configured CA.

use std::{cell::RefCell, collections::HashMap, path::PathBuf, sync::Arc, time::Duration};

use postgres::{Client, NoTls, Row, Statement, Transaction, error::SqlState, types::ToSql};

use super::row::{SCAN_SELECT, Scanned, key_from_row};
use super::{
    ActorHead, Batch, CheckedTable, CheckpointRow, EntryVisitor, KEY_COLUMN_COUNT, KEY_COLUMNS,
    KeyChange, KeyRecord, KeyVersion, KeyVisitor, LedgerStore, ScanVisitor, StoreError,
    StoredReceipt, attestation_json, parse_kind, split_proof, to_i64, to_u64,
};
use crate::ledger::merkle::Hash;

/// The session advisory lock a single-host daemon holds on its PostgreSQL log for its whole
/// life, so that two single hosts never write one log ("actseal\0" as a number).
pub const SINGLE_HOST_LOCK: i64 = 0x6163_7473_6561_6c00;

/// Rows read per round trip by the scans (export, start-up check, key pages).
const PAGE: i64 = 1000;

/// How the client reaches a PostgreSQL ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgSettings {
    /// `postgres://user@host:port/database` (a password in it is refused).
    pub url: String,
    /// The file holding the password (owner-only, one line).
    pub password_file: Option<PathBuf>,
    /// PEM file of the CA(s) the server's certificate must chain to; `Some` turns TLS on and
    /// requires it (host name verified).
    pub tls_ca_file: Option<PathBuf>,
    /// `application_name` of the sessions (the fleet uses the node's name).
    pub application_name: String,
}

impl PgSettings {
    /// Settings for `url` with the password in `password_file`, no TLS.
    pub fn new(url: &str, password_file: Option<PathBuf>) -> Self {
        PgSettings {
            url: url.to_owned(),
            password_file,
            tls_ca_file: None,
            application_name: "actseal".into(),
        }
    }

    /// The URL parsed, with the password from its file: nothing secret is ever in the URL.
    fn client_config(&self) -> Result<postgres::Config, StoreError> {
        let mut config: postgres::Config = self
            .url
            .parse()
            .map_err(|e| StoreError::Settings(format!("ledger.url does not parse: {e}")))?;
        if config.get_password().is_some() {
            return Err(StoreError::Settings(
                "ledger.url holds a password: put it in ledger.password_file instead".into(),
            ));
        }
        if let Some(file) = &self.password_file {
            let password = crate::secret::PinSource::File(file.clone())
                .read_as(crate::secret::SecretKind::DatabasePassword)
                .map_err(|e| StoreError::Settings(format!("ledger.password_file: {e}")))?;
            config.password(password.as_bytes());
        }
        config.application_name(&self.application_name);
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(5));
        }
        // A server host that vanishes (no reset ever comes) is noticed in about 20 s rather
        // than the system's two hours, and its calls answer UNAVAILABLE.
        config
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(10))
            .keepalives_interval(Duration::from_secs(3))
            .keepalives_retries(3)
            .tcp_user_timeout(Duration::from_secs(20));
        if self.tls_ca_file.is_some() {
            config.ssl_mode(postgres::config::SslMode::Require);
        }
        Ok(config)
    }

    fn tls(&self) -> Result<Option<tokio_postgres_rustls::MakeRustlsConnect>, StoreError> {
        let Some(ca) = &self.tls_ca_file else {
            return Ok(None);
        };
        use rustls_pki_types::{CertificateDer, pem::PemObject};
        let bad =
            |e: String| StoreError::Settings(format!("ledger.tls_ca_file {}: {e}", ca.display()));
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(ca).map_err(|e| bad(e.to_string()))? {
            roots
                .add(cert.map_err(|e| bad(e.to_string()))?)
                .map_err(|e| bad(e.to_string()))?;
        }
        if roots.is_empty() {
            return Err(bad("holds no certificate".into()));
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| bad(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Some(tokio_postgres_rustls::MakeRustlsConnect::new(config)))
    }
}

/// Runs blocking client work; inside a multi-threaded runtime (a caller that did not move to
/// `spawn_blocking`) the worker is told it blocks, since the client runs its own runtime.
pub fn blocking<T>(work: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(work)
        }
        _ => work(),
    }
}

/// A client of the ledger database (`application_name` set, `synchronous_commit = on`).
pub fn connect(settings: &PgSettings) -> Result<Client, StoreError> {
    let config = settings.client_config()?;
    let tls = settings.tls()?;
    blocking(|| {
        let mut client = match tls {
            Some(tls) => config.connect(tls),
            None => config.connect(NoTls),
        }
        .map_err(|e| classify(e).0)?;
        client
            .batch_execute("SET synchronous_commit = on")
            .map_err(|e| classify(e).0)?;
        Ok(client)
    })
}

/// Whether an error means the session is gone (or never came): the server is down, was
/// restarted, or the network failed. Such a connection is dropped and made again.
fn connection_lost(e: &postgres::Error) -> bool {
    if e.is_closed() {
        return true;
    }
    match e.code() {
        // No SQLSTATE: an I/O, TLS or protocol failure of the connection itself.
        None => e.as_db_error().is_none(),
        Some(code) => {
            code.code().starts_with("08")
                || [
                    SqlState::ADMIN_SHUTDOWN,
                    SqlState::CRASH_SHUTDOWN,
                    SqlState::CANNOT_CONNECT_NOW,
                    SqlState::IDLE_IN_TRANSACTION_SESSION_TIMEOUT,
                ]
                .contains(code)
        }
    }
}

/// The store's error for a client error, and whether the connection must be dropped.
fn classify(e: postgres::Error) -> (StoreError, bool) {
    if connection_lost(&e) {
        return (StoreError::Unavailable(e.to_string()), true);
    }
    match (e.code(), e.as_db_error()) {
        (Some(code), Some(db)) if *code == SqlState::UNIQUE_VIOLATION => {
            (StoreError::Conflict(db.message().to_owned()), false)
        }
        _ => (StoreError::Postgres(e.to_string()), false),
    }
}

impl From<postgres::Error> for StoreError {
    fn from(e: postgres::Error) -> Self {
        classify(e).0
    }
}

/// A session with its prepared statements.
struct Session {
    client: Client,
    statements: HashMap<String, Statement>,
}

impl Session {
    fn statement(&mut self, sql: &str) -> Result<Statement, postgres::Error> {
        if let Some(statement) = self.statements.get(sql) {
            return Ok(statement.clone());
        }
        let statement = self.client.prepare(sql)?;
        self.statements.insert(sql.to_owned(), statement.clone());
        Ok(statement)
    }

    fn query(
        &mut self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, postgres::Error> {
        let statement = self.statement(sql)?;
        self.client.query(&statement, params)
    }

    fn query_opt(
        &mut self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<Row>, postgres::Error> {
        let statement = self.statement(sql)?;
        self.client.query_opt(&statement, params)
    }

    fn query_one(
        &mut self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Row, postgres::Error> {
        let statement = self.statement(sql)?;
        self.client.query_one(&statement, params)
    }
}

/// The PostgreSQL ledger: one session, made again after it is lost.
pub struct PgStore {
    /// `None` for a store made from a caller's client: it cannot connect again.
    settings: Option<PgSettings>,
    /// Whether every session first takes [`SINGLE_HOST_LOCK`].
    single_host: bool,
    session: RefCell<Option<Session>>,
}

impl Drop for PgStore {
    /// The client closes its session through its own runtime: never on an async worker.
    fn drop(&mut self) {
        let session = self.session.get_mut().take();
        blocking(move || drop(session));
    }
}

// The RefCell is only borrowed inside one call (scans release it before visiting), and the
// store moves between threads whole, never shared: `LedgerStore: Send`.

impl PgStore {
    /// Connects, applies the migrations the database lacks ([`super::migrations`]) and
    /// refuses a schema newer than this actseal knows.
    pub fn open(settings: &PgSettings) -> Result<Self, StoreError> {
        let store = PgStore {
            settings: Some(settings.clone()),
            single_host: false,
            session: RefCell::new(Some(Session {
                client: connect(settings)?,
                statements: HashMap::new(),
            })),
        };
        store.with(|s| super::migrations::apply_postgres(&mut s.client))?;
        Ok(store)
    }

    /// [`PgStore::open`] for the writer of a single-host daemon: its session holds
    /// [`SINGLE_HOST_LOCK`] (taken again on every reconnection), so a second single-host
    /// daemon, or one started while a fleet writes the log, is refused.
    pub fn open_single_host(settings: &PgSettings) -> Result<Self, StoreError> {
        let mut store = Self::open(settings)?;
        store.single_host = true;
        store.with(|s| take_single_host_lock(&mut s.client))?;
        Ok(store)
    }

    /// A store over a caller's client (a fleet's integrator); it cannot reconnect by itself.
    pub fn from_client(client: Client) -> Self {
        PgStore {
            settings: None,
            single_host: false,
            session: RefCell::new(Some(Session {
                client,
                statements: HashMap::new(),
            })),
        }
    }

    /// Runs `work` on the session, connecting first if it was lost. An error that means the
    /// connection is gone drops it: the next call connects again. Reads found a session that
    /// died since its last use (a server restart) try once more on a new one; a commit never
    /// does (whether a commit whose answer was lost is stored, only a read can tell).
    fn with<T>(
        &self,
        mut work: impl FnMut(&mut Session) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        match self.with_once(&mut work) {
            Err(StoreError::Unavailable(_)) if self.settings.is_some() => self.with_once(&mut work),
            result => result,
        }
    }

    fn with_once<T>(
        &self,
        work: &mut impl FnMut(&mut Session) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut slot = self.session.borrow_mut();
        blocking(|| {
            let session = match slot.take() {
                Some(session) => session,
                None => {
                    let settings = self.settings.as_ref().ok_or_else(|| {
                        StoreError::Unavailable("the connection to the ledger was lost".into())
                    })?;
                    let mut client = connect(settings)?;
                    if self.single_host {
                        take_single_host_lock(&mut client)?;
                    }
                    tracing::info!("reconnected to the PostgreSQL ledger");
                    Session {
                        client,
                        statements: HashMap::new(),
                    }
                }
            };
            let session = slot.insert(session);
            let result = work(session);
            if matches!(result, Err(StoreError::Unavailable(_))) || session.client.is_closed() {
                *slot = None;
            }
            result
        })
    }

    /// Runs `work` with the session's client (the anchor tables, `ledger migrate`); like the
    /// reads, once more on a new session if the old one had died (so `work` must be safe to
    /// run again after a failure: one transaction, or idempotent statements).
    pub fn with_client<T>(
        &self,
        mut work: impl FnMut(&mut Client) -> Result<T, postgres::Error>,
    ) -> Result<T, StoreError> {
        self.with(|session| work(&mut session.client).map_err(StoreError::from))
    }

    fn keys_where(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<(KeyRecord, Row)>, StoreError> {
        let rows = self.with(|s| Ok(s.query(sql, params)?))?;
        rows.into_iter()
            .map(|row| Ok((key_from_row(&row)?, row)))
            .collect()
    }

    fn checkpoint_query(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<CheckpointRow>, StoreError> {
        let row = self.with(|s| Ok(s.query_opt(sql, params)?))?;
        row.map(|row| {
            let size: i64 = row.try_get(0)?;
            let root: Vec<u8> = row.try_get(1)?;
            Ok(CheckpointRow {
                size: to_u64(size, "tree size")?,
                root: <Hash>::try_from(root.as_slice())
                    .map_err(|_| StoreError::Corrupt(format!("checkpoint root at {size}")))?,
                note: row.try_get(2)?,
            })
        })
        .transpose()
    }

    fn count(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<u64, StoreError> {
        let n: i64 = self.with(|s| Ok(s.query_one(sql, params)?.try_get(0)?))?;
        to_u64(n, "count")
    }
}

/// Takes the single-host lock on this session, or says who may hold the log.
fn take_single_host_lock(client: &mut Client) -> Result<(), StoreError> {
    let taken: bool = client
        .query_one("SELECT pg_try_advisory_lock($1)", &[&SINGLE_HOST_LOCK])?
        .try_get(0)?;
    if !taken {
        return Err(StoreError::Conflict(
            "another actseal daemon holds this PostgreSQL log as a single host (advisory lock \
             taken): two single-host daemons must never write one log; stop the other one, or \
             run the nodes in fleet mode ([fleet])"
                .into(),
        ));
    }
    Ok(())
}

fn digest(bytes: Vec<u8>, what: impl FnOnce() -> String) -> Result<[u8; 32], StoreError> {
    <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| StoreError::Corrupt(what()))
}

fn insert_key(
    tx: &mut Transaction<'_>,
    key: &KeyRecord,
    rotation_index: Option<u64>,
) -> Result<(), StoreError> {
    let attestation = attestation_json(key)?;
    let rotation_index = rotation_index.map(|i| to_i64(i, "log index")).transpose()?;
    let result = tx.execute(
        "INSERT INTO actor_keys (actor, version, backend, key_ref, key_id, public_key, origin, state, created_at, attestation, retired_at, rotation_index)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
        &[
            &key.actor,
            &i64::from(key.version),
            &key.backend.as_str(),
            &key.key_ref.0,
            &key.key_id,
            &crate::proof::spki_der(&key.public_key),
            &key.origin.as_str(),
            &key.state.as_str(),
            &key.created_at,
            &attestation,
            &key.retired_at,
            &rotation_index,
        ],
    );
    match result.map_err(classify) {
        Ok(_) => Ok(()),
        Err((StoreError::Conflict(_), _)) => Err(StoreError::Conflict(format!(
            "actor {:?} already has key version {}, or key {} is registered already",
            key.actor, key.version, key.key_id
        ))),
        Err((e, _)) => Err(e),
    }
}

fn write_keys(tx: &mut Transaction<'_>, batch: &Batch) -> Result<(), StoreError> {
    for change in &batch.keys {
        match change {
            KeyChange::Insert(key) => insert_key(tx, key, None)?,
            KeyChange::Rotated {
                key,
                rotation_index,
            } => insert_key(tx, key, Some(*rotation_index))?,
            KeyChange::Retire {
                actor,
                version,
                retired_at,
            } => {
                let changed = tx.execute(
                    "UPDATE actor_keys SET state = 'retired', retired_at = $3
                     WHERE actor = $1 AND version = $2 AND state = 'active'",
                    &[actor, &i64::from(*version), retired_at],
                )?;
                if changed != 1 {
                    return Err(StoreError::Conflict(format!(
                        "key {actor:?} v{version} is not active"
                    )));
                }
            }
        }
    }
    Ok(())
}

fn indices<'a>(values: impl Iterator<Item = &'a u64>, what: &str) -> Result<Vec<i64>, StoreError> {
    values.map(|v| to_i64(*v, what)).collect()
}

/// Writes everything [`LedgerStore::commit`] writes for `batch` (keys, entries, nodes, the
/// checkpoint, receipts, request ids) inside a transaction the caller owns and commits: the
/// fleet's integrator adds its own rows to the same transaction. Rows go in one statement
/// per table (arrays unnested), in the order the foreign keys need.
pub fn write_batch(tx: &mut Transaction<'_>, batch: &Batch) -> Result<(), StoreError> {
    write_keys(tx, batch)?;
    if !batch.entries.is_empty() {
        let index = indices(batch.entries.iter().map(|e| &e.log_index), "log index")?;
        let kind: Vec<&str> = batch.entries.iter().map(|e| e.kind.as_str()).collect();
        let actor: Vec<&str> = batch.entries.iter().map(|e| e.actor.as_str()).collect();
        let entry: Vec<&[u8]> = batch.entries.iter().map(|e| e.entry.as_slice()).collect();
        tx.execute(
            "INSERT INTO log_entries (log_index, kind, actor, entry)
             SELECT * FROM UNNEST($1::BIGINT[], $2::TEXT[], $3::TEXT[], $4::BYTEA[])",
            &[&index, &kind, &actor, &entry],
        )?;
    }
    if !batch.nodes.is_empty() {
        let level: Vec<i64> = batch.nodes.iter().map(|n| i64::from(n.0)).collect();
        let idx = indices(batch.nodes.iter().map(|n| &n.1), "node index")?;
        let hash: Vec<&[u8]> = batch.nodes.iter().map(|n| n.2.as_slice()).collect();
        tx.execute(
            "INSERT INTO tree_nodes (level, idx, hash)
             SELECT * FROM UNNEST($1::BIGINT[], $2::BIGINT[], $3::BYTEA[])",
            &[&level, &idx, &hash],
        )?;
    }
    // Before the receipts, whose proofs refer to it.
    if let Some(c) = &batch.checkpoint {
        tx.execute(
            "INSERT INTO checkpoints (size, root, note) VALUES ($1, $2, $3)",
            &[&to_i64(c.size, "tree size")?, &c.root.as_slice(), &c.note],
        )?;
    }
    write_receipts(tx, batch)?;
    if !batch.requests.is_empty() {
        let id: Vec<&str> = batch.requests.iter().map(|r| r.0.as_str()).collect();
        let fingerprint: Vec<&[u8]> = batch.requests.iter().map(|r| r.1.as_slice()).collect();
        let index = indices(batch.requests.iter().map(|r| &r.2), "log index")?;
        tx.execute(
            "INSERT INTO requests (request_id, request_sha256, log_index)
             SELECT * FROM UNNEST($1::TEXT[], $2::BYTEA[], $3::BIGINT[])",
            &[&id, &fingerprint, &index],
        )?;
    }
    Ok(())
}

fn write_receipts(tx: &mut Transaction<'_>, batch: &Batch) -> Result<(), StoreError> {
    if batch.receipts.is_empty() {
        return Ok(());
    }
    let r = &batch.receipts;
    let index = indices(r.iter().map(|r| &r.log_index), "log index")?;
    let actor: Vec<&str> = r.iter().map(|r| r.actor.as_str()).collect();
    let sequence = indices(r.iter().map(|r| &r.sequence), "sequence")?;
    let key_id: Vec<&str> = r.iter().map(|r| r.key_id.as_str()).collect();
    let digest: Vec<&[u8]> = r.iter().map(|r| r.payload_sha256.as_slice()).collect();
    let signed_at: Vec<&str> = r.iter().map(|r| r.signed_at.as_str()).collect();
    let proof_size = indices(r.iter().map(|r| &r.proof_size), "tree size")?;
    let proof: Vec<Vec<u8>> = r.iter().map(|r| r.proof.concat()).collect();
    tx.execute(
        "INSERT INTO receipts (log_index, actor, sequence, key_id, payload_sha256, signed_at, proof_size, proof)
         SELECT * FROM UNNEST($1::BIGINT[], $2::TEXT[], $3::BIGINT[], $4::TEXT[], $5::BYTEA[], $6::TEXT[], $7::BIGINT[], $8::BYTEA[])",
        &[&index, &actor, &sequence, &key_id, &digest, &signed_at, &proof_size, &proof],
    )?;
    Ok(())
}

impl LedgerStore for PgStore {
    fn keys(&self, actor: Option<&str>) -> Result<Vec<KeyRecord>, StoreError> {
        let sql = format!(
            "SELECT {KEY_COLUMNS} FROM actor_keys k WHERE $1::TEXT IS NULL OR k.actor = $1 ORDER BY k.actor, k.version"
        );
        Ok(self
            .keys_where(&sql, &[&actor])?
            .into_iter()
            .map(|(k, _)| k)
            .collect())
    }

    fn scan_keys(&self, after: (&str, u32), visit: &mut KeyVisitor<'_>) -> Result<(), StoreError> {
        let sql = format!(
            "SELECT {KEY_COLUMNS} FROM actor_keys k WHERE (k.actor, k.version) > ($1, $2) ORDER BY k.actor, k.version LIMIT $3"
        );
        let (mut actor, mut version) = (after.0.to_owned(), i64::from(after.1));
        loop {
            let page = self.keys_where(&sql, &[&actor, &version, &PAGE])?;
            let full = page.len() as i64 == PAGE;
            for (key, _) in page {
                (actor, version) = (key.actor.clone(), i64::from(key.version));
                if visit(key).is_break() {
                    return Ok(());
                }
            }
            if !full {
                return Ok(());
            }
        }
    }

    fn key_history(&self, actor: &str, version: u32) -> Result<Vec<KeyVersion>, StoreError> {
        let sql = format!(
            "SELECT {KEY_COLUMNS}, e.entry FROM actor_keys k
             LEFT JOIN log_entries e ON e.log_index = k.rotation_index
             WHERE k.actor = $1 AND k.version <= $2 ORDER BY k.version"
        );
        self.keys_where(&sql, &[&actor, &i64::from(version)])?
            .into_iter()
            .map(|(key, row)| Ok((key, row.try_get::<_, Option<Vec<u8>>>(KEY_COLUMN_COUNT)?)))
            .collect()
    }

    fn actor_heads(&self) -> Result<HashMap<String, ActorHead>, StoreError> {
        // One index probe per actor with a key, as on SQLite, in one round trip.
        let rows = self.with(|s| {
            Ok(s.query(
                "SELECT a.actor, r.sequence, r.payload_sha256
                 FROM (SELECT DISTINCT actor FROM actor_keys) a
                 CROSS JOIN LATERAL (SELECT sequence, payload_sha256 FROM receipts
                     WHERE actor = a.actor ORDER BY sequence DESC LIMIT 1) r",
                &[],
            )?)
        })?;
        let mut heads = HashMap::new();
        for row in rows {
            let actor: String = row.try_get(0)?;
            let payload_sha256 =
                digest(row.try_get(2)?, || format!("receipt digest of {actor:?}"))?;
            let sequence = to_u64(row.try_get(1)?, "sequence")?;
            heads.insert(
                actor,
                ActorHead {
                    sequence,
                    payload_sha256,
                },
            );
        }
        Ok(heads)
    }

    fn next_log_index(&self) -> Result<u64, StoreError> {
        let max: Option<i64> = self.with(|s| {
            Ok(s.query_one("SELECT MAX(log_index) FROM log_entries", &[])?
                .try_get(0)?)
        })?;
        match max {
            None => Ok(0),
            Some(i) => Ok(to_u64(i, "log index")? + 1),
        }
    }

    fn commit(&mut self, batch: &Batch) -> Result<(), StoreError> {
        self.with_once(&mut |s: &mut Session| {
            let mut tx = s.client.transaction()?;
            write_batch(&mut tx, batch)?;
            tx.commit()?;
            Ok(())
        })
    }

    fn node(&self, level: u8, index: u64) -> Result<Option<Hash>, StoreError> {
        let index_i = to_i64(index, "node index")?;
        let row = self.with(|s| {
            Ok(s.query_opt(
                "SELECT hash FROM tree_nodes WHERE level = $1 AND idx = $2",
                &[&i64::from(level), &index_i],
            )?)
        })?;
        row.map(|row| {
            let hash: Vec<u8> = row.try_get(0)?;
            <Hash>::try_from(hash.as_slice())
                .map_err(|_| StoreError::Corrupt(format!("tree node ({level}, {index})")))
        })
        .transpose()
    }

    fn latest_checkpoint(&self) -> Result<Option<CheckpointRow>, StoreError> {
        self.checkpoint_query(
            "SELECT size, root, note FROM checkpoints ORDER BY size DESC LIMIT 1",
            &[],
        )
    }

    fn checkpoint(&self, size: u64) -> Result<Option<CheckpointRow>, StoreError> {
        self.checkpoint_query(
            "SELECT size, root, note FROM checkpoints WHERE size = $1",
            &[&to_i64(size, "tree size")?],
        )
    }

    fn request(&self, request_id: &str) -> Result<Option<([u8; 32], u64)>, StoreError> {
        let row = self.with(|s| {
            Ok(s.query_opt(
                "SELECT request_sha256, log_index FROM requests WHERE request_id = $1",
                &[&request_id],
            )?)
        })?;
        row.map(|row| {
            Ok((
                digest(row.try_get(0)?, || format!("request {request_id:?}"))?,
                to_u64(row.try_get(1)?, "log index")?,
            ))
        })
        .transpose()
    }

    fn for_each_entry(&self, visit: &mut EntryVisitor<'_>) -> Result<(), StoreError> {
        let mut from = 0i64;
        loop {
            let rows = self.with(|s| {
                Ok(s.query(
                    "SELECT log_index, kind, actor, entry FROM log_entries WHERE log_index >= $1 ORDER BY log_index LIMIT $2",
                    &[&from, &PAGE],
                )?)
            })?;
            let full = rows.len() as i64 == PAGE;
            for row in rows {
                let index = to_u64(row.try_get(0)?, "log index")?;
                let text: &str = row.try_get(1)?;
                let kind = parse_kind(text)
                    .ok_or_else(|| StoreError::Corrupt(format!("entry {index}: kind {text:?}")))?;
                let actor: &str = row.try_get(2)?;
                let entry: &[u8] = row.try_get(3)?;
                visit(index, kind, actor, entry)?;
                from = to_i64(index + 1, "log index")?;
            }
            if !full {
                return Ok(());
            }
        }
    }

    fn meta(&self, name: &str) -> Result<Option<String>, StoreError> {
        self.with(|s| {
            Ok(
                s.query_opt("SELECT value FROM meta WHERE name = $1", &[&name])?
                    .map(|row| row.try_get(0))
                    .transpose()?,
            )
        })
    }

    fn set_meta(&self, name: &str, value: &str) -> Result<(), StoreError> {
        self.with(|s| {
            s.query(
                "INSERT INTO meta (name, value) VALUES ($1, $2)
                 ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                &[&name, &value],
            )?;
            Ok(())
        })
    }

    fn node_count(&self) -> Result<u64, StoreError> {
        self.count("SELECT COUNT(*) FROM tree_nodes", &[])
    }

    fn key_id_registered(&self, key_id: &str) -> Result<bool, StoreError> {
        self.with(|s| {
            Ok(
                s.query_opt("SELECT 1 FROM actor_keys WHERE key_id = $1", &[&key_id])?
                    .is_some(),
            )
        })
    }

    fn receipt(&self, log_index: u64) -> Result<Option<StoredReceipt>, StoreError> {
        let index = to_i64(log_index, "log index")?;
        let row = self.with(|s| {
            Ok(s.query_opt(
                "SELECT sequence, key_id, proof_size, proof, signed_at FROM receipts WHERE log_index = $1",
                &[&index],
            )?)
        })?;
        row.map(|row| {
            let proof: Vec<u8> = row.try_get(3)?;
            Ok(StoredReceipt {
                sequence: to_u64(row.try_get(0)?, "sequence")?,
                key_id: row.try_get(1)?,
                signed_at: row.try_get(4)?,
                proof_size: to_u64(row.try_get(2)?, "tree size")?,
                proof: split_proof(&proof, || format!("proof of receipt {log_index}"))?,
            })
        })
        .transpose()
    }

    fn entry_actor(&self, log_index: u64) -> Result<Option<String>, StoreError> {
        let index = to_i64(log_index, "log index")?;
        self.with(|s| {
            Ok(s.query_opt(
                "SELECT actor FROM log_entries WHERE log_index = $1",
                &[&index],
            )?
            .map(|row| row.try_get(0))
            .transpose()?)
        })
    }

    fn entry(&self, log_index: u64) -> Result<Option<Vec<u8>>, StoreError> {
        let index = to_i64(log_index, "log index")?;
        self.with(|s| {
            Ok(s.query_opt(
                "SELECT entry FROM log_entries WHERE log_index = $1",
                &[&index],
            )?
            .map(|row| row.try_get(0))
            .transpose()?)
        })
    }

    fn key_by_id(&self, key_id: &str) -> Result<Option<KeyRecord>, StoreError> {
        let sql = format!("SELECT {KEY_COLUMNS} FROM actor_keys k WHERE k.key_id = $1");
        Ok(self
            .keys_where(&sql, &[&key_id])?
            .into_iter()
            .next()
            .map(|(k, _)| k))
    }

    fn request_count_below(&self, size: u64) -> Result<u64, StoreError> {
        self.count(
            "SELECT COUNT(*) FROM requests WHERE log_index < $1",
            &[&to_i64(size, "tree size")?],
        )
    }

    fn rows_from(&self, table: CheckedTable, from: u64) -> Result<u64, StoreError> {
        let sql = match table {
            CheckedTable::Receipts => "SELECT COUNT(*) FROM receipts WHERE log_index >= $1",
            CheckedTable::Requests => "SELECT COUNT(*) FROM requests WHERE log_index >= $1",
            // The checkpoint of size s is met at entry s - 1.
            CheckedTable::Checkpoints => "SELECT COUNT(*) FROM checkpoints WHERE size > $1",
        };
        self.count(sql, &[&to_i64(from, "log index")?])
    }

    fn max_node_index(&self, level: u8) -> Result<Option<u64>, StoreError> {
        let max: Option<i64> = self.with(|s| {
            Ok(s.query_one(
                "SELECT MAX(idx) FROM tree_nodes WHERE level = $1",
                &[&i64::from(level)],
            )?
            .try_get(0)?)
        })?;
        max.map(|m| to_u64(m, "node index")).transpose()
    }

    fn scan_from(&self, from: u64, visit: &mut ScanVisitor<'_>) -> Result<(), StoreError> {
        let mut next = to_i64(from, "log index")?;
        loop {
            let sql =
                format!("{SCAN_SELECT} WHERE e.log_index >= $1 ORDER BY e.log_index LIMIT $2");
            let rows = self.with(|s| Ok(s.query(&sql, &[&next, &PAGE])?))?;
            let full = rows.len() as i64 == PAGE;
            for row in rows {
                let row = Scanned::decode(&row)?;
                next = to_i64(row.index + 1, "log index")?;
                row.visit(visit)?;
            }
            if !full {
                return Ok(());
            }
        }
    }

    fn receipt_count(&self) -> Result<u64, StoreError> {
        self.count("SELECT COUNT(*) FROM receipts", &[])
    }

    fn engine(&self) -> &'static str {
        "postgres"
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn a_bad_password_file_is_named_as_the_database_password_not_shown() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("db.password");
        std::fs::write(&file, "hunter2-db-secret\n").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let settings = PgSettings::new("postgres://actseal@127.0.0.1:1/log", Some(file));
        let text = settings.client_config().unwrap_err().to_string();
        assert!(
            text.contains("ledger.password_file: refusing the database password file"),
            "{text}"
        );
        assert!(
            !text.contains("PIN") && !text.contains("hunter2-db-secret"),
            "{text}"
        );
    }
}
