//! Shared set-up for the integration tests: a real SoftHSM lab with a running daemon, gRPC
//! clients on its Unix socket, and readers of its state.
#![allow(dead_code)]

pub mod fleet;
pub mod openssl;
pub mod pki;

use std::path::Path;

use actseal::{
    api::{
        CreateKeyRequest, SignRequest, key_admin_client::KeyAdminClient, sign_request::Action,
        signer_client::SignerClient,
    },
    lab::{Lab, LabLedger},
    verify::{TrustAnchors, Verified, VerifyError, verify_bundle},
};
use base64::{Engine as _, engine::general_purpose::STANDARD as B64};
use tempfile::TempDir;
use tonic::transport::Channel;

pub const ACTOR: &str = "spiffe://acme.example/agents/payments";
pub const DOCUMENT: &[u8] =
    br#"{"prompt":"pay invoice 42","tool_call":{"name":"bank.transfer","amount":"10.00"}}"#;

/// A lab in its own temporary directory; removed (daemon killed) when dropped.
pub struct TestLab {
    pub lab: Lab,
    _dir: TempDir,
    /// The PostgreSQL server holding the ledger, for a lab on PostgreSQL (dropped last).
    pub pg: Option<TestPg>,
}

impl std::ops::Deref for TestLab {
    type Target = Lab;
    fn deref(&self) -> &Lab {
        &self.lab
    }
}

impl std::ops::DerefMut for TestLab {
    fn deref_mut(&mut self) -> &mut Lab {
        &mut self.lab
    }
}

/// A new lab (tokens, CA, device certificate) with its daemon not yet started; its ledger on
/// the engine `ACTSEAL_TEST_LEDGER` names (SQLite by default, see [`LabLedger::from_env`]).
pub fn new_lab() -> TestLab {
    on_test_ledger(sqlite_lab())
}

/// Moves a new lab's ledger where `ACTSEAL_TEST_LEDGER` says. A PostgreSQL that is asked for
/// but missing fails the test: the PostgreSQL pass never passes a test it did not run there.
fn on_test_ledger(lab: TestLab) -> TestLab {
    match LabLedger::from_env().expect("the test ledger") {
        LabLedger::Sqlite => lab,
        LabLedger::Postgres => {
            assert!(
                actseal::lab_postgres::server_bin().is_some(),
                "ACTSEAL_TEST_LEDGER=postgres and PostgreSQL (initdb, pg_ctl) is not installed"
            );
            with_postgres(lab).expect("PostgreSQL")
        }
    }
}

/// A new lab on the default SQLite ledger, whatever `ACTSEAL_TEST_LEDGER` says.
fn sqlite_lab() -> TestLab {
    let dir = tempfile::Builder::new()
        .prefix("actseal-test-")
        .tempdir()
        .expect("temp dir");
    let lab = Lab::create(
        Path::new(env!("CARGO_BIN_EXE_actseal")),
        &dir.path().join("lab"),
        false,
    )
    .expect("lab set-up");
    TestLab {
        lab,
        _dir: dir,
        pg: None,
    }
}

/// Which engine holds a test daemon's ledger.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Sqlite,
    Postgres,
}

/// A PostgreSQL server of its own in a temporary directory; stopped and removed when dropped.
pub struct TestPg {
    pub pg: actseal::lab_postgres::Postgres,
    _dir: TempDir,
}

impl std::ops::Deref for TestPg {
    type Target = actseal::lab_postgres::Postgres;
    fn deref(&self) -> &Self::Target {
        &self.pg
    }
}

impl std::ops::DerefMut for TestPg {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.pg
    }
}

/// A fresh PostgreSQL server, or `None` (SKIPPED; a failure under `CI=true`) when it is not
/// installed.
pub fn postgres() -> Option<TestPg> {
    if !can_run(
        actseal::lab_postgres::server_bin().is_some(),
        "PostgreSQL (initdb, pg_ctl) is not installed: scripts/install-deps.sh",
    ) {
        return None;
    }
    let dir = tempfile::Builder::new()
        .prefix("actseal-pg-")
        .tempdir()
        .expect("temp dir");
    let pg = actseal::lab_postgres::Postgres::start(&dir.path().join("pg")).expect("PostgreSQL");
    Some(TestPg { pg, _dir: dir })
}

/// A new lab whose daemon's ledger is on `engine` (for PostgreSQL: a server of its own and a
/// database `ledger` in it), the daemon not yet started; `None` when the engine is missing.
/// `Engine::Sqlite` is the default lab, which `ACTSEAL_TEST_LEDGER` may move too.
pub fn new_lab_on(engine: Engine) -> Option<TestLab> {
    match engine {
        Engine::Sqlite => Some(new_lab()),
        Engine::Postgres => with_postgres(sqlite_lab()),
    }
}

/// Puts `lab`'s ledger on a PostgreSQL server of its own (database `ledger`).
fn with_postgres(mut lab: TestLab) -> Option<TestLab> {
    let pg = postgres()?;
    let url = pg.create_database("ledger").expect("database");
    lab.use_postgres(&url, pg.password_file())
        .expect("ledger on PostgreSQL");
    lab.pg = Some(pg);
    Some(lab)
}

/// A new lab on `engine` with its daemon running; `None` when the engine is missing.
pub fn started_lab_on(engine: Engine) -> Option<TestLab> {
    let mut lab = new_lab_on(engine)?;
    lab.start_daemon().expect("daemon start");
    Some(lab)
}

/// The lab's ledger, opened as the daemon's configuration says (either engine).
pub fn open_store(lab: &Lab) -> actseal::ledger::Store {
    let config = actseal::config::Config::load(&lab.config()).expect("config");
    actseal::ledger::Store::open_at(&config.ledger_location()).expect("open the ledger")
}

/// A direct connection to a lab's ledger, whichever engine holds it, for tests that read or
/// damage rows on either: the SQL must be valid on both (one parameter at most, written `$1`,
/// which SQLite reads as the first parameter too).
pub enum LedgerDb {
    Sqlite(rusqlite::Connection),
    /// A client per call, made and dropped within [`LedgerDb::pg`] (the blocking client may
    /// not be made, nor dropped, on an async test's runtime thread).
    Postgres(actseal::ledger::store::PgSettings),
}

impl LedgerDb {
    /// Opens the ledger the lab's configuration names (read-write: the daemon must be stopped
    /// for edits).
    pub fn open(lab: &Lab) -> LedgerDb {
        use actseal::ledger::store::LedgerLocation;
        let config = actseal::config::Config::load(&lab.config()).expect("config");
        match config.ledger_location() {
            LedgerLocation::Sqlite(path) => {
                LedgerDb::Sqlite(rusqlite::Connection::open(path).expect("open state database"))
            }
            LedgerLocation::Postgres(settings) => LedgerDb::Postgres(settings),
        }
    }

    /// Runs `work` with a client of the PostgreSQL ledger, off the async runtime.
    fn pg<T>(
        settings: &actseal::ledger::store::PgSettings,
        work: impl FnOnce(&mut postgres::Client) -> Result<T, postgres::Error>,
    ) -> Result<T, String> {
        use actseal::ledger::store::postgres as pg;
        pg::blocking(|| {
            let mut client = pg::connect(settings).map_err(|e| e.to_string())?;
            work(&mut client).map_err(|e| e.to_string())
        })
    }

    /// The first column of the first row of `sql`.
    pub fn one<T>(&mut self, sql: &str) -> T
    where
        T: rusqlite::types::FromSql + for<'a> postgres::types::FromSql<'a>,
    {
        match self {
            LedgerDb::Sqlite(conn) => conn
                .query_row(sql, [], |row| row.get(0))
                .map_err(|e| e.to_string()),
            LedgerDb::Postgres(settings) => {
                Self::pg(settings, |c| c.query_one(sql, &[])?.try_get(0))
            }
        }
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    /// The first two columns of every row of `sql`.
    pub fn pairs<A, B>(&mut self, sql: &str) -> Vec<(A, B)>
    where
        A: rusqlite::types::FromSql + for<'a> postgres::types::FromSql<'a>,
        B: rusqlite::types::FromSql + for<'a> postgres::types::FromSql<'a>,
    {
        match self {
            LedgerDb::Sqlite(conn) => conn
                .prepare(sql)
                .and_then(|mut stmt| {
                    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                        .collect::<Result<Vec<_>, _>>()
                })
                .map_err(|e| e.to_string()),
            LedgerDb::Postgres(settings) => Self::pg(settings, |c| {
                c.query(sql, &[])?
                    .iter()
                    .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
                    .collect()
            }),
        }
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    /// Runs `sql` (no parameters); returns the rows it changed.
    pub fn execute(&mut self, sql: &str) -> u64 {
        match self {
            LedgerDb::Sqlite(conn) => conn
                .execute(sql, [])
                .map(|n| n as u64)
                .map_err(|e| e.to_string()),
            LedgerDb::Postgres(settings) => Self::pg(settings, |c| c.execute(sql, &[])),
        }
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    /// Runs `sql` with `$1` bound to `value`; returns the rows it changed.
    pub fn execute_with<P>(&mut self, sql: &str, value: P) -> u64
    where
        P: rusqlite::ToSql + postgres::types::ToSql + Sync,
    {
        match self {
            LedgerDb::Sqlite(conn) => conn
                .execute(sql, [&value])
                .map(|n| n as u64)
                .map_err(|e| e.to_string()),
            LedgerDb::Postgres(settings) => Self::pg(settings, |c| c.execute(sql, &[&value])),
        }
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
    }
}

/// The first column of the first row of `sql` (valid on both engines, no parameters) in the
/// lab's ledger, as an integer: a count for tests that run on either.
pub fn ledger_i64(lab: &Lab, sql: &str) -> i64 {
    LedgerDb::open(lab).one(sql)
}

/// Whether the lab's ledger is on PostgreSQL.
pub fn on_postgres(lab: &Lab) -> bool {
    let config = actseal::config::Config::load(&lab.config()).expect("config");
    config.ledger.url.is_some()
}

/// A new lab whose daemon uses a private swtpm (AK enrolled), its daemon not yet started.
pub fn new_tpm_lab() -> TestLab {
    let dir = tempfile::Builder::new()
        .prefix("actseal-tpm-test-")
        .tempdir()
        .expect("temp dir");
    let lab = Lab::create_with_backend(
        Path::new(env!("CARGO_BIN_EXE_actseal")),
        &dir.path().join("lab"),
        false,
        actseal::lab::LabBackend::Tpm,
    )
    .expect("TPM lab set-up");
    on_test_ledger(TestLab {
        lab,
        _dir: dir,
        pg: None,
    })
}

/// A new lab with its daemon running.
pub fn started_lab() -> TestLab {
    let mut lab = new_lab();
    lab.start_daemon().expect("daemon start");
    lab
}

pub async fn channel(lab: &Lab) -> Channel {
    actseal::cli::connect_unix(&lab.socket())
        .await
        .expect("connect to the daemon")
}

pub async fn signer(lab: &Lab) -> SignerClient<Channel> {
    SignerClient::new(channel(lab).await)
}

pub async fn admin(lab: &Lab) -> KeyAdminClient<Channel> {
    KeyAdminClient::new(channel(lab).await)
}

pub async fn create_key(lab: &Lab, actor: &str) -> actseal::api::ActorKey {
    admin(lab)
        .await
        .create_key(CreateKeyRequest {
            actor: actor.into(),
        })
        .await
        .expect("create key")
        .into_inner()
}

pub fn sign_request(actor: &str, document: &[u8]) -> SignRequest {
    SignRequest {
        actor: actor.into(),
        action_type: "payment.initiate".into(),
        target: "acct:DE89370400440532013000".into(),
        action: Some(Action::Document(document.to_vec())),
        context: [("ticket".to_string(), "FIN-8812".to_string())].into(),
        parent_action_sha256: vec![],
        request_id: String::new(),
    }
}

pub fn verify(
    lab: &Lab,
    bundle_json: &str,
    document: Option<&[u8]>,
) -> Result<Verified, VerifyError> {
    let anchor = std::fs::read(lab.anchor()).expect("anchor");
    let anchors = TrustAnchors::from_pem(&anchor).expect("anchor parses");
    verify_bundle(bundle_json.as_bytes(), &anchors, document)
}

/// The decoded receipt statement of a bundle.
pub fn receipt_statement(bundle_json: &str) -> serde_json::Value {
    let bundle: serde_json::Value = serde_json::from_str(bundle_json).expect("bundle JSON");
    let payload = B64
        .decode(bundle["receipt"]["payload"].as_str().expect("payload"))
        .expect("payload base64");
    serde_json::from_slice(&payload).expect("payload JSON")
}

/// SHA-256 (hex) of a bundle's receipt payload bytes.
pub fn payload_sha256(bundle_json: &str) -> String {
    use sha2::{Digest, Sha256};
    let bundle: serde_json::Value = serde_json::from_str(bundle_json).expect("bundle JSON");
    let payload = B64
        .decode(bundle["receipt"]["payload"].as_str().expect("payload"))
        .expect("payload base64");
    hex::encode(Sha256::digest(payload))
}

/// Receipts in the daemon's database, read directly from the file.
pub fn receipt_count(lab: &Lab) -> u64 {
    if on_postgres(lab) {
        return open_store(lab).receipt_count().expect("count receipts");
    }
    let conn = rusqlite::Connection::open_with_flags(
        lab.dir.join("state/actseal.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .expect("open state database");
    conn.query_row("SELECT COUNT(*) FROM receipts", [], |row| {
        row.get::<_, i64>(0)
    })
    .expect("count receipts") as u64
}

/// A TCP port on loopback that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until the daemon's log holds `needle` at least `count` times.
pub fn wait_for_log(lab: &Lab, needle: &str, count: usize) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let log = std::fs::read_to_string(lab.daemon_log()).unwrap_or_default();
        if log.matches(needle).count() >= count {
            return log;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the daemon never logged {needle:?} {count} times:\n{log}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Replaces the lab's policy file.
pub fn write_policy(lab: &Lab, text: &str) {
    std::fs::write(lab.policy(), text).expect("write policy");
}

/// Adds lines under `[server]` of the lab's configuration.
pub fn configure_server(lab: &Lab, lines: &str) {
    let config = std::fs::read_to_string(lab.config()).unwrap();
    std::fs::write(
        lab.config(),
        config.replacen("[server]\n", &format!("[server]\n{lines}\n"), 1),
    )
    .unwrap();
}

/// Adds lines to the lab's `[ledger]` section (made if absent).
pub fn configure_ledger(lab: &Lab, lines: &str) {
    let config = std::fs::read_to_string(lab.config()).unwrap();
    let config = if config.contains("\n[ledger]\n") {
        config.replacen("\n[ledger]\n", &format!("\n[ledger]\n{lines}\n"), 1)
    } else {
        format!("{config}\n[ledger]\n{lines}\n")
    };
    std::fs::write(lab.config(), config).unwrap();
}

/// The uid of this test process (the lab's own user, whom the default policy allows).
pub fn own_uid() -> u32 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").unwrap().uid()
}

/// Whether a test that needs `what` (e.g. root) can run here. Where it cannot, it says SKIPPED
/// and passes, except under `CI=true`, where it fails: CI never passes a test it did not run.
pub fn can_run(possible: bool, what: &str) -> bool {
    if possible {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("CI=true and this test cannot run: {what}");
    }
    eprintln!("SKIPPED: {what}");
    false
}

/// Exports the lab's log (`actseal log export`, offline) to `name` in the lab; returns the path.
pub fn export_log(lab: &Lab, name: &str) -> String {
    let export = lab.path(name);
    let config = lab.config().display().to_string();
    lab.run_ok(&["log", "export", "--config", &config, "--out", &export])
        .expect("log export");
    export
}

/// Exports the lab's log and audits it against the lab's anchor; returns the audit's report.
pub fn export_and_audit(lab: &Lab, name: &str) -> String {
    let export = export_log(lab, name);
    let anchor = lab.anchor().display().to_string();
    lab.run_ok(&["audit", &export, "--trust", &anchor])
        .expect("the log audits clean")
}

/// Signs on the daemon at `socket` until answered, for at most `patience`: UNAVAILABLE or a
/// broken connection (a killed or restarted daemon, PostgreSQL down) is retried with the same
/// request id, and counted in `unavailable` if given. The bundle and its log index.
pub async fn sign_until_acked(
    socket: &Path,
    request: SignRequest,
    patience: std::time::Duration,
    unavailable: Option<&std::sync::Mutex<u64>>,
) -> Result<(String, u64), tonic::Status> {
    let deadline = std::time::Instant::now() + patience;
    loop {
        let outcome = match actseal::cli::connect_unix(socket).await {
            Ok(channel) => SignerClient::new(channel).sign(request.clone()).await,
            Err(e) => Err(tonic::Status::unavailable(e.to_string())),
        };
        match outcome {
            Ok(response) => {
                let r = response.into_inner();
                return Ok((r.bundle_json, r.log_index));
            }
            Err(status)
                if matches!(
                    status.code(),
                    tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled
                ) && std::time::Instant::now() < deadline =>
            {
                if let Some(count) = unavailable {
                    *count.lock().unwrap() += 1;
                }
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            Err(status) => return Err(status),
        }
    }
}
