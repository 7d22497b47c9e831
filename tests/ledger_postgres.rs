//! The ledger on a real PostgreSQL server: migrations and the refusal of a newer schema (both
//! engines), a lost connection, the single-host lock, the start-up check catching a damaged
//! row, PostgreSQL restarted under load, and `ledger migrate` from SQLite byte for byte.

mod common;

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use actseal::ledger::store::{
    Batch, EntryKind, EntryRow, LedgerLocation, PgSettings, SCHEMA_VERSION, Store, StoreError,
};
use common::*;
use tonic::Code;

fn settings(pg: &TestPg, db: &str) -> PgSettings {
    let url = pg.create_database(db).expect("database");
    PgSettings::new(&url, Some(pg.password_file().to_owned()))
}

fn entry(index: u64) -> Batch {
    Batch {
        entries: vec![EntryRow {
            log_index: index,
            kind: EntryKind::Registration,
            actor: "a".into(),
            entry: vec![index as u8; 4],
        }],
        ..Batch::default()
    }
}

#[test]
fn a_postgres_ledger_is_made_and_opens_again() {
    let Some(pg) = postgres() else { return };
    let location = LedgerLocation::Postgres(settings(&pg, "ledger"));
    let mut store = Store::open_at(&location).expect("open");
    assert_eq!(store.engine(), "postgres");
    assert_eq!(store.next_log_index().unwrap(), 0);
    store.commit(&entry(0)).unwrap();
    // A second entry at the same index is a conflict, and nothing of it is stored.
    let mut twice = entry(0);
    twice.entries.push(EntryRow {
        log_index: 1,
        ..twice.entries[0].clone()
    });
    assert!(matches!(store.commit(&twice), Err(StoreError::Conflict(_))));
    drop(store);
    let store = Store::open_at(&location).expect("open again");
    assert_eq!(store.next_log_index().unwrap(), 1);
    assert_eq!(store.entry(0).unwrap(), Some(vec![0; 4]));
    let version = pg
        .query_i64("ledger", "SELECT version FROM schema_version")
        .unwrap();
    assert_eq!(
        version,
        actseal::ledger::store::migrations::latest(actseal::ledger::store::migrations::POSTGRES)
    );
}

#[test]
fn a_schema_newer_than_this_actseal_is_refused_and_left_untouched_on_both_engines() {
    // SQLite: a database one version ahead.
    let dir = tempfile::tempdir().unwrap();
    let newer = dir.path().join("newer.db");
    rusqlite::Connection::open(&newer)
        .unwrap()
        .execute_batch(&format!(
            "CREATE TABLE future (x); PRAGMA user_version = {};",
            SCHEMA_VERSION + 1
        ))
        .unwrap();
    let before = std::fs::read(&newer).unwrap();
    let err = Store::open(&newer).err().expect("refused");
    assert!(matches!(err, StoreError::Schema { .. }), "{err}");
    assert_eq!(
        std::fs::read(&newer).unwrap(),
        before,
        "the file was changed"
    );

    // PostgreSQL: a ledger made by this actseal, then marked one version ahead.
    let Some(pg) = postgres() else { return };
    let location = LedgerLocation::Postgres(settings(&pg, "ledger"));
    let mut store = Store::open_at(&location).unwrap();
    store.commit(&entry(0)).unwrap();
    drop(store);
    pg.execute(
        "ledger",
        "UPDATE schema_version SET version = version + 1; CREATE TABLE future (x BIGINT)",
    )
    .unwrap();
    let tables = "SELECT COUNT(*) FROM pg_tables WHERE schemaname = 'public'";
    let (count, version) = (
        pg.query_i64("ledger", tables).unwrap(),
        pg.query_i64("ledger", "SELECT version FROM schema_version")
            .unwrap(),
    );
    let err = Store::open_at(&location).err().expect("refused");
    assert!(
        matches!(err, StoreError::NewerSchema { found, .. } if found == version),
        "{err}"
    );
    assert!(err.to_string().contains("upgrade actseal"), "{err}");
    assert_eq!(pg.query_i64("ledger", tables).unwrap(), count);
    assert_eq!(
        pg.query_i64("ledger", "SELECT version FROM schema_version")
            .unwrap(),
        version
    );
    assert_eq!(
        pg.query_i64("ledger", "SELECT COUNT(*) FROM log_entries")
            .unwrap(),
        1
    );
    // Tables of a ledger with no schema_version (not made by actseal) are refused too.
    pg.create_database("other_app").unwrap();
    pg.execute("other_app", "CREATE TABLE log_entries (x BIGINT)")
        .unwrap();
    let other_app = LedgerLocation::Postgres(PgSettings::new(
        &pg.url("other_app"),
        Some(pg.password_file().to_owned()),
    ));
    assert!(matches!(
        Store::open_at(&other_app).err(),
        Some(StoreError::Corrupt(_))
    ));
}

#[test]
fn a_lost_connection_is_unavailable_and_the_next_call_reconnects() {
    let Some(mut pg) = postgres() else { return };
    let location = LedgerLocation::Postgres(settings(&pg, "ledger"));
    let mut store = Store::open_at(&location).unwrap();
    store.commit(&entry(0)).unwrap();
    pg.stop().unwrap();
    let err = store.next_log_index().unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err}");
    let err = store.commit(&entry(1)).unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err}");
    pg.start_again().unwrap();
    assert_eq!(store.next_log_index().unwrap(), 1);
    store.commit(&entry(1)).unwrap();
    // And after a crash of the server (SIGKILL), the same.
    pg.kill().unwrap();
    assert!(matches!(
        store.entry(1).unwrap_err(),
        StoreError::Unavailable(_)
    ));
    pg.start_again().unwrap();
    assert_eq!(store.entry(1).unwrap(), Some(vec![1; 4]));
}

#[test]
fn bad_ledger_settings_are_refused_without_showing_the_password() {
    let Some(pg) = postgres() else { return };
    let url = pg.create_database("ledger").unwrap();
    let password = pg.password().unwrap();
    // A password in the URL is refused (it would end up in logs and process lists).
    let with_password = url.replace("actseal_lab@", &format!("actseal_lab:{password}@"));
    let err = Store::open_at(&LedgerLocation::Postgres(PgSettings::new(
        &with_password,
        None,
    )))
    .err()
    .unwrap();
    assert!(matches!(err, StoreError::Settings(_)), "{err}");
    assert!(!err.to_string().contains(&password), "{err}");
    // A wrong password: refused by the server, the error names neither.
    let dir = tempfile::tempdir().unwrap();
    let wrong = dir.path().join("wrong.password");
    std::fs::write(&wrong, "not-the-password\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&wrong, std::fs::Permissions::from_mode(0o600)).unwrap();
    let err = Store::open_at(&LedgerLocation::Postgres(PgSettings::new(
        &url,
        Some(wrong.clone()),
    )))
    .err()
    .unwrap();
    assert!(!err.to_string().contains("not-the-password"), "{err}");
    assert!(!err.to_string().contains(&password), "{err}");
    // A password file others can read is refused before connecting.
    std::fs::set_permissions(&wrong, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = Store::open_at(&LedgerLocation::Postgres(PgSettings::new(
        &url,
        Some(wrong),
    )))
    .err()
    .unwrap();
    assert!(matches!(err, StoreError::Settings(_)), "{err}");
    // The configuration refuses a URL with a password, and the password keys without a URL.
    let lab = new_lab();
    configure_ledger(&lab, &format!("url = \"{with_password}\""));
    let out = lab
        .run(&[
            "serve",
            "--config",
            &lab.config().display().to_string(),
            "--check-config",
        ])
        .unwrap();
    assert!(!out.status.success());
    let text =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("password_file"), "{text}");
    assert!(!text.contains(&password), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_single_host_daemon_on_one_postgres_log_is_refused() {
    let Some(lab) = started_lab_on(Engine::Postgres) else {
        return;
    };
    create_key(&lab, ACTOR).await;
    let pg = lab.pg.as_ref().unwrap();
    let mut other = new_lab();
    other
        .use_postgres(&pg.url("ledger"), pg.password_file())
        .unwrap();
    let err = other
        .start_daemon()
        .expect_err("a second single host started");
    let text = err.to_string();
    assert!(text.contains("single host"), "{text}");
    assert!(text.contains("fleet"), "{text}");
    // The first signs on, undisturbed.
    signer(&lab)
        .await
        .sign(sign_request(ACTOR, DOCUMENT))
        .await
        .expect("the first daemon still signs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_postgres_row_is_caught_at_start_up() {
    let Some(mut lab) = started_lab_on(Engine::Postgres) else {
        return;
    };
    create_key(&lab, ACTOR).await;
    let mut signer = signer(&lab).await;
    for i in 0..3 {
        signer
            .sign(sign_request(ACTOR, format!("action {i}").as_bytes()))
            .await
            .unwrap();
    }
    lab.stop_daemon().unwrap();
    let pg = lab.pg.as_ref().unwrap();
    // One byte of a stored receipt entry changed behind the daemon's back.
    pg.execute(
        "ledger",
        "UPDATE log_entries SET entry = overlay(entry placing '\\x00'::bytea from 10 for 1) WHERE log_index = 2",
    )
    .unwrap();
    let err = lab.start_daemon().expect_err("started on a damaged log");
    assert!(err.to_string().contains("refusing to sign"), "{err}");
    let out = lab
        .run(&[
            "log",
            "check",
            "--config",
            &lab.config().display().to_string(),
        ])
        .unwrap();
    assert!(!out.status.success(), "log check passed a damaged log");
}

/// Signers that run until told to stop, each keeping what was acknowledged and counting
/// UNAVAILABLE answers.
struct Load {
    stop: Arc<AtomicBool>,
    acknowledged: Arc<AtomicUsize>,
    unavailable: Arc<AtomicUsize>,
    tasks: Vec<tokio::task::JoinHandle<Vec<actseal::api::SignResponse>>>,
}

async fn load(lab: &actseal::lab::Lab, clients: usize) -> Load {
    let stop = Arc::new(AtomicBool::new(false));
    let acknowledged = Arc::new(AtomicUsize::new(0));
    let unavailable = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for c in 0..clients {
        let mut signer = signer(lab).await;
        let (stop, acknowledged, unavailable) =
            (stop.clone(), acknowledged.clone(), unavailable.clone());
        tasks.push(tokio::spawn(async move {
            let mut ok = Vec::new();
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) {
                i += 1;
                let document = format!("client {c} action {i}");
                match signer.sign(sign_request(ACTOR, document.as_bytes())).await {
                    Ok(response) => {
                        ok.push(response.into_inner());
                        acknowledged.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(status) => {
                        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
                        unavailable.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
            ok
        }));
    }
    Load {
        stop,
        acknowledged,
        unavailable,
        tasks,
    }
}

async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restarted_under_load_gives_unavailable_then_recovers_losing_nothing() {
    let Some(mut lab) = started_lab_on(Engine::Postgres) else {
        return;
    };
    create_key(&lab, ACTOR).await;
    let load = load(&lab, 4).await;
    let acked = load.acknowledged.clone();
    wait_until("signs before the restart", || {
        acked.load(Ordering::SeqCst) > 10
    })
    .await;
    // A fast shutdown (sessions ended) and, the second time, a crash (SIGKILL).
    for crash in [false, true] {
        let pg = lab.pg.as_mut().unwrap();
        tokio::task::block_in_place(|| {
            if crash {
                pg.kill().unwrap()
            } else {
                pg.stop().unwrap()
            }
        });
        let unavailable = load.unavailable.clone();
        let before = unavailable.load(Ordering::SeqCst);
        wait_until("UNAVAILABLE answers", || {
            unavailable.load(Ordering::SeqCst) > before
        })
        .await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let pg = lab.pg.as_mut().unwrap();
        tokio::task::block_in_place(|| pg.start_again().unwrap());
        let at = acked.load(Ordering::SeqCst);
        wait_until("signing to resume", || {
            acked.load(Ordering::SeqCst) > at + 10
        })
        .await;
    }
    load.stop.store(true, Ordering::SeqCst);
    let mut acknowledged = Vec::new();
    for task in load.tasks {
        acknowledged.extend(task.await.unwrap());
    }
    assert!(load.unavailable.load(Ordering::SeqCst) > 0);
    // Every acknowledged receipt is stored, byte for byte, exactly once.
    let mut signer = signer(&lab).await;
    let mut indices = std::collections::HashSet::new();
    for response in &acknowledged {
        assert!(indices.insert(response.log_index), "index given twice");
        let bundle: serde_json::Value = serde_json::from_str(&response.bundle_json).unwrap();
        let tree_size = bundle["log"]["treeSize"].as_u64().unwrap();
        let stored = signer
            .get_inclusion_proof(actseal::api::GetInclusionProofRequest {
                log_index: response.log_index,
                tree_size,
            })
            .await
            .unwrap_or_else(|e| panic!("acknowledged receipt {} lost: {e}", response.log_index))
            .into_inner();
        assert_eq!(stored.bundle_json, response.bundle_json);
    }
    lab.stop_daemon().unwrap();
    let audit = export_and_audit(&lab, "after-restarts.json");
    assert!(audit.starts_with("OK"), "{audit}");
    // And the daemon's start-up check accepts what the outages left.
    lab.start_daemon().unwrap();
}

fn export_entries(path: &str) -> (Vec<String>, serde_json::Value) {
    let export: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let entries = export["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap().to_owned())
        .collect();
    (entries, export)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ledger_migrate_moves_a_sqlite_log_to_postgres_byte_for_byte() {
    let Some(pg) = postgres() else { return };
    let mut lab = new_lab();
    lab.start_daemon().unwrap();
    create_key(&lab, ACTOR).await;
    let other = "spiffe://acme.example/agents/other";
    create_key(&lab, other).await;
    let mut signer = signer(&lab).await;
    let mut retried = None;
    for i in 0..12 {
        let actor = if i % 3 == 0 { other } else { ACTOR };
        let mut request = sign_request(actor, format!("before {i}").as_bytes());
        request.request_id = format!("req-{i}");
        let response = signer.sign(request.clone()).await.unwrap().into_inner();
        retried = Some((request, response));
    }
    lab.stop_daemon().unwrap();
    // Anchor rows too (issue 11 keeps them in the same database): an anchored checkpoint
    // and a witness's size, as the anchor task writes them.
    let sqlite = LedgerLocation::Sqlite(lab.dir.join("state/actseal.db"));
    let newest = Store::open_at(&sqlite)
        .unwrap()
        .latest_checkpoint()
        .unwrap()
        .unwrap();
    let anchored = actseal::anchor::AnchoredCheckpoint {
        size: newest.size,
        root: newest.root,
        note: newest.note.clone(),
        cosigners: ["witness.example/w1".to_owned()].into(),
        timestamps: vec![vec![0x30, 0x03, 0x02, 0x01, 0x07]],
    };
    let anchors = actseal::anchor::store::AnchorStore::open(&sqlite).unwrap();
    anchors.put(&anchored).unwrap();
    anchors
        .set_witness_size("witness.example/w1", newest.size)
        .unwrap();
    drop(anchors);
    let before = export_log(&lab, "before.json");
    let (before_entries, before_export) = export_entries(&before);

    let url = pg.create_database("ledger").unwrap();
    let config = lab.config().display().to_string();
    let password = pg.password_file().display().to_string();
    // Refused while the daemon runs.
    lab.start_daemon().unwrap();
    let out = lab
        .run(&[
            "ledger",
            "migrate",
            "--config",
            &config,
            "--to",
            &url,
            "--password-file",
            &password,
        ])
        .unwrap();
    assert!(!out.status.success(), "migrated under a running daemon");
    lab.stop_daemon().unwrap();
    let report = lab
        .run_ok(&[
            "ledger",
            "migrate",
            "--config",
            &config,
            "--to",
            &url,
            "--password-file",
            &password,
        ])
        .unwrap();
    assert!(report.contains("migrated and checked log"), "{report}");
    assert!(report.contains("log_entries: 14 rows"), "{report}");
    assert!(report.contains("anchored_checkpoints: 1 rows"), "{report}");
    assert!(report.contains("witness_sizes: 1 rows"), "{report}");
    // A second run finds the target not empty and changes nothing.
    let out = lab
        .run(&[
            "ledger",
            "migrate",
            "--from",
            &format!("sqlite:{}", lab.dir.join("state/actseal.db").display()),
            "--to",
            &url,
            "--password-file",
            &password,
        ])
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not empty"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        pg.query_i64("ledger", "SELECT COUNT(*) FROM log_entries")
            .unwrap(),
        14
    );

    let on_pg =
        LedgerLocation::Postgres(PgSettings::new(&url, Some(pg.password_file().to_owned())));
    let anchors = actseal::anchor::store::AnchorStore::open(&on_pg).unwrap();
    assert_eq!(anchors.latest().unwrap(), Some(anchored.clone()));
    assert_eq!(
        anchors.witness_size("witness.example/w1").unwrap(),
        newest.size
    );
    drop(anchors);
    // The same daemon, same token, now on PostgreSQL: the export is the same, byte for byte.
    lab.use_postgres(&url, pg.password_file()).unwrap();
    let migrated = export_log(&lab, "migrated.json");
    assert!(
        std::fs::read(&before).unwrap() == std::fs::read(&migrated).unwrap(),
        "the export changed in the migration"
    );
    lab.start_daemon().unwrap();
    let mut signer = common::signer(&lab).await;
    // A retry by request id answers the stored receipt; new receipts chain on.
    let (request, response) = retried.unwrap();
    let again = signer.sign(request).await.unwrap().into_inner();
    assert_eq!(again.bundle_json, response.bundle_json);
    for i in 0..5 {
        let next = signer
            .sign(sign_request(ACTOR, format!("after {i}").as_bytes()))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(next.log_index, 14 + i);
        verify(
            &lab,
            &next.bundle_json,
            Some(format!("after {i}").as_bytes()),
        )
        .unwrap();
    }
    lab.stop_daemon().unwrap();
    let after = export_log(&lab, "after.json");
    let (after_entries, after_export) = export_entries(&after);
    assert_eq!(&after_entries[..before_entries.len()], &before_entries[..]);
    assert_eq!(after_entries.len(), before_entries.len() + 5);
    assert_eq!(after_export["logKey"], before_export["logKey"]);
    let audit = lab
        .run_ok(&[
            "audit",
            &after,
            "--trust",
            &lab.anchor().display().to_string(),
        ])
        .unwrap();
    assert!(audit.starts_with("OK"), "{audit}");
}

#[test]
fn tls_to_the_server_is_required_and_verified_against_the_configured_ca() {
    use actseal::ledger::store::PgStore;
    let Some(mut pg) = postgres() else { return };
    let url = pg.create_database("ledger").unwrap();
    let password = Some(pg.password_file().to_owned());
    let with_ca = |ca: &std::path::Path, url: &str| PgSettings {
        tls_ca_file: Some(ca.to_owned()),
        ..PgSettings::new(url, password.clone())
    };
    // The server offers no TLS yet: a client that requires it is refused.
    let dir = tempfile::tempdir().unwrap();
    let other_ca = actseal::lab_postgres::make_ca(dir.path(), "other").unwrap();
    assert!(PgStore::open(&with_ca(&other_ca, &url)).is_err());
    let ca = pg.enable_tls().unwrap();
    let store = PgStore::open(&with_ca(&ca, &url)).expect("TLS with the right CA");
    let ssl: bool = store
        .with_client(|c| {
            c.query_one(
                "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                &[],
            )?
            .try_get(0)
        })
        .unwrap();
    assert!(ssl, "the session is not encrypted");
    drop(store);
    // Another CA, or a name the certificate does not hold, is refused.
    assert!(PgStore::open(&with_ca(&other_ca, &url)).is_err());
    let by_name = url.replace("127.0.0.1", "localhost");
    assert!(PgStore::open(&with_ca(&ca, &by_name)).is_err());
    // A CA file that holds no certificate is a settings error, before any connection.
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "").unwrap();
    assert!(matches!(
        PgStore::open(&with_ca(&empty, &url)).err(),
        Some(StoreError::Settings(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolled_back_or_emptied_postgres_database_is_refused_at_start_up() {
    let Some(mut lab) = started_lab_on(Engine::Postgres) else {
        return;
    };
    create_key(&lab, ACTOR).await;
    let mut signer = signer(&lab).await;
    signer.sign(sign_request(ACTOR, b"one")).await.unwrap();
    lab.stop_daemon().unwrap();
    let pg = lab.pg.as_ref().unwrap();
    // A copy of the database as it is now (a backup), then more acknowledged receipts.
    pg.execute("postgres", "CREATE DATABASE backup TEMPLATE ledger")
        .unwrap();
    lab.start_daemon().unwrap();
    let mut signer = common::signer(&lab).await;
    for i in 0..3 {
        signer
            .sign(sign_request(
                ACTOR,
                format!("after the backup {i}").as_bytes(),
            ))
            .await
            .unwrap();
    }
    lab.stop_daemon().unwrap();
    let pg = lab.pg.as_ref().unwrap();
    let (backup, empty) = (pg.url("backup"), pg.create_database("empty").unwrap());
    let config = std::fs::read_to_string(lab.config()).unwrap();
    let current = pg.url("ledger");
    for (url, cause) in [
        (backup, "behind the newest acknowledged tree head"),
        (empty, "holds no log"),
    ] {
        std::fs::write(lab.config(), config.replace(&current, &url)).unwrap();
        let err = lab
            .start_daemon()
            .expect_err("started on a rolled-back log");
        assert!(err.to_string().contains(cause), "{cause}: {err}");
    }
    std::fs::write(lab.config(), config).unwrap();
    lab.start_daemon().expect("the real log starts");
}

/// Fleet anchoring's shared table keeps the most evidence of each size: a round of the same
/// size replaces the stored row only with no fewer cosignatures and no fewer timestamp
/// tokens, never with another root, and never from a node not holding the lease. (A round
/// with a longer note but no token replaced it before: the note's length was the rule.)
#[test]
fn an_anchored_checkpoint_is_replaced_only_by_one_carrying_no_less() {
    use actseal::anchor::{
        AnchoredCheckpoint,
        store::{AnchorStore, HolderPut},
    };
    let Some(pg) = postgres() else { return };
    let location = LedgerLocation::Postgres(settings(&pg, "anchors"));
    drop(Store::open_at(&location).expect("migrated"));
    pg.client("anchors")
        .unwrap()
        .execute(
            "INSERT INTO fleet_lease (id, holder, epoch, expires_at)
             VALUES (1, 'node-a', 7, clock_timestamp() + interval '1 hour')",
            &[],
        )
        .unwrap();
    let anchors = AnchorStore::open(&location).unwrap();
    let round = |cosigners: &[&str], tokens: usize, root: u8| AnchoredCheckpoint {
        size: 5,
        root: [root; 32],
        note: format!("log\n5\nroot\n\n— log sig\n{}", cosigners.join("\n")),
        cosigners: cosigners.iter().map(|c| (*c).to_owned()).collect(),
        timestamps: (0..tokens).map(|t| vec![0x30, 0x01, t as u8]).collect(),
    };
    let put = |a: &AnchoredCheckpoint| anchors.put_as_holder(a, "node-a", 7).unwrap();
    let stored = round(&["— w1"], 1, 1);
    assert_eq!(put(&stored), HolderPut::Stored);
    // More cosignatures (a longer note) but the token lost: kept as it was.
    assert_eq!(put(&round(&["— w1", "— w2"], 0, 1)), HolderPut::Unchanged);
    // The same note without its token: kept.
    assert_eq!(put(&round(&["— w1"], 0, 1)), HolderPut::Unchanged);
    // Another root at that size: never.
    assert_eq!(put(&round(&["— w1", "— w2"], 2, 9)), HolderPut::Unchanged);
    // Another epoch: fenced, nothing stored.
    let fenced = anchors.put_as_holder(&round(&["— w1", "— w2"], 2, 1), "node-a", 6);
    assert_eq!(fenced.unwrap(), HolderPut::Fenced);
    assert_eq!(anchors.latest().unwrap(), Some(stored));
    // No less of either and more of one: replaced.
    let more = round(&["— w1", "— w2"], 1, 1);
    assert_eq!(put(&more), HolderPut::Stored);
    assert_eq!(anchors.latest().unwrap(), Some(more));
}
