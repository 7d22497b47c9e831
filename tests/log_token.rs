//! Issue 10 part D, `[log_token]`: the log key and the log head on a token of their own, apart
//! from the actors' token; several processes share it. Real daemon, real SoftHSM tokens, a
//! real second process reading the head while the daemon rewrites it.

mod common;

use std::{
    io::{BufRead, BufReader},
    path::PathBuf,
    process::Stdio,
    sync::mpsc,
    time::Duration,
};

use actseal::lab::{LOG_TOKEN_LABEL, Lab, TOKEN_LABEL};
use base64::{Engine, engine::general_purpose::STANDARD as B64};
use common::*;

fn db(lab: &Lab, suffix: &str) -> PathBuf {
    lab.dir.join(format!("state/actseal.db{suffix}"))
}

/// A lab whose daemon keeps its log on a separate log token, started.
fn log_token_lab() -> TestLab {
    let mut lab = new_lab();
    lab.add_log_token().expect("log token");
    lab.start_daemon().expect("daemon start");
    lab
}

async fn sign_n(lab: &Lab, from: usize, n: usize) -> Vec<String> {
    let mut signer = signer(lab).await;
    let mut bundles = Vec::new();
    for i in from..from + n {
        let mut request = sign_request(ACTOR, format!("action {i}").as_bytes());
        request.request_id = format!("r{i}");
        let bundle = signer.sign(request).await.expect("sign").into_inner();
        bundles.push(bundle.bundle_json);
    }
    bundles
}

fn log_size(lab: &Lab) -> u64 {
    let conn = rusqlite::Connection::open(db(lab, "")).expect("open state database");
    conn.query_row("SELECT COUNT(*) FROM log_entries", [], |row| {
        row.get::<_, i64>(0)
    })
    .expect("count entries") as u64
}

/// `actseal log head` under `config`: its one line.
fn head_line(lab: &Lab, config: &str) -> String {
    let output = lab
        .run(&["log", "head", "--config", config])
        .expect("log head");
    let stdout = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    assert!(
        output.status.success() && !stdout.is_empty(),
        "log head: {}{stdout}{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// The lab's configuration without its `[log_token]`: the actors' token alone.
fn actors_only_config(lab: &Lab) -> String {
    let text = std::fs::read_to_string(lab.config()).unwrap();
    let cut = text.find("[log_token]").expect("a [log_token] section");
    let path = lab.dir.join("actors-only.toml");
    std::fs::write(&path, &text[..cut]).unwrap();
    path.display().to_string()
}

/// The token label the log key's lineage statement names (the token that made the key).
fn log_key_token_label(bundle: &str) -> String {
    let bundle: serde_json::Value = serde_json::from_str(bundle).unwrap();
    let payload = bundle["log"]["logKey"]["lineage"]["statement"]["payload"]
        .as_str()
        .expect("the log key's attribute statement");
    let statement: serde_json::Value =
        serde_json::from_slice(&B64.decode(payload).unwrap()).unwrap();
    statement["predicate"]["token"]["label"]
        .as_str()
        .unwrap_or_else(|| panic!("no token label in {statement}"))
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_token_holds_the_log_key_and_head_and_refuses_a_rolled_back_database() {
    let mut lab = log_token_lab();
    create_key(&lab, ACTOR).await;
    let first = sign_n(&lab, 0, 5).await;
    for bundle in &first {
        verify(&lab, bundle, None).expect("bundle verifies");
    }
    // The log key was made on the log token and attested by the actors' token's device key.
    assert_eq!(log_key_token_label(&first[0]), LOG_TOKEN_LABEL);
    let config = lab.config().display().to_string();
    assert!(
        head_line(&lab, &config).starts_with(&format!("size {} ", log_size(&lab))),
        "the log token's head covers the log"
    );
    // The actors' token holds no log head at all.
    let actors_only = actors_only_config(&lab);
    assert_eq!(head_line(&lab, &actors_only), "no log head in the hardware");
    lab.stop_daemon().unwrap();
    let copies: Vec<(PathBuf, Option<Vec<u8>>)> = ["", "-wal", "-shm"]
        .iter()
        .map(|s| (db(&lab, s), std::fs::read(db(&lab, s)).ok()))
        .collect();
    // A restart reads the head from the log token and goes on from it.
    lab.start_daemon().unwrap();
    let later = sign_n(&lab, 5, 5).await;
    verify(&lab, &later[4], None).expect("bundle after restart verifies");
    lab.stop_daemon().unwrap();
    assert!(head_line(&lab, &config).starts_with(&format!("size {} ", log_size(&lab))));
    for (path, bytes) in copies {
        match bytes {
            Some(bytes) => std::fs::write(path, bytes).unwrap(),
            None => {
                let _ = std::fs::remove_file(path);
            }
        }
    }
    let error = lab
        .start_daemon()
        .expect_err("the daemon started on a rolled-back database")
        .to_string();
    assert!(
        error.contains("behind the newest acknowledged tree head"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_process_sees_every_rewrite_of_the_shared_log_head() {
    let lab = log_token_lab();
    create_key(&lab, ACTOR).await;
    sign_n(&lab, 0, 2).await;
    // Another process with the log token open all along (its own SoftHSM instance).
    let config = lab.config().display().to_string();
    let mut follower = lab
        .command(&["log", "head", "--config", &config, "--follow"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("log head --follow");
    let (lines_tx, lines) = mpsc::channel();
    let stdout = follower.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if lines_tx.send(line.unwrap_or_default()).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    let mut wait_for = |size: u64| loop {
        let line = lines
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| {
                panic!("the second process never saw size {size}; it saw {seen:?}")
            });
        seen.push(line.clone());
        if line.starts_with(&format!("size {size} ")) {
            return;
        }
        assert!(!line.starts_with("no log head"), "{line}");
    };
    wait_for(log_size(&lab));
    for round in 0..5 {
        sign_n(&lab, 10 + round, 1).await;
        wait_for(log_size(&lab));
    }
    follower.kill().unwrap();
    follower.wait().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_token_that_is_the_actors_token_or_lacks_the_log_key_is_refused() {
    // The actors' token named as the log token.
    let mut lab = new_lab();
    lab.use_log_token(TOKEN_LABEL, &lab.dir.join("secrets/token.pin"))
        .unwrap();
    let error = lab.start_daemon().expect_err("started").to_string();
    assert!(error.contains("names the actors' token"), "{error}");
    // A log begun on the actors' token does not move to a log token added later.
    let mut lab = started_lab();
    create_key(&lab, ACTOR).await;
    sign_n(&lab, 0, 2).await;
    lab.stop_daemon().unwrap();
    lab.add_log_token().unwrap();
    let error = lab.start_daemon().expect_err("started").to_string();
    assert!(error.contains("is not on the log token"), "{error}");
}

/// The log token's SoftHSM directory (its `token.object` names its label).
fn log_token_dir(lab: &Lab) -> PathBuf {
    std::fs::read_dir(lab.dir.join("tokens"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|dir| {
            std::fs::read(dir.join("token.object")).is_ok_and(|b| {
                b.windows(LOG_TOKEN_LABEL.len())
                    .any(|w| w == LOG_TOKEN_LABEL.as_bytes())
            })
        })
        .expect("the log token's directory")
}

fn acknowledged_are_stored(lab: &Lab, acknowledged: &[String]) {
    let conn = rusqlite::Connection::open(db(lab, "")).expect("open state database");
    for id in acknowledged {
        let found: i64 = conn
            .query_row(
                "SELECT COUNT(*) FROM requests WHERE request_id LIKE '%] ' || ?1",
                [id],
                |row| row.get(0),
            )
            .unwrap();
        if found != 1 {
            let ids: Vec<String> = conn
                .prepare("SELECT request_id FROM requests ORDER BY log_index DESC LIMIT 5")
                .unwrap()
                .query_map([], |row| row.get(0))
                .unwrap()
                .map(Result::unwrap)
                .collect();
            panic!(
                "acknowledged request {id} lost ({} acknowledged; newest stored {ids:?}); daemon log:\n{}",
                acknowledged.len(),
                std::fs::read_to_string(lab.daemon_log()).unwrap_or_default()
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_emptied_head_slot_is_torn_and_the_other_slot_counts() {
    let mut lab = log_token_lab();
    create_key(&lab, ACTOR).await;
    sign_n(&lab, 0, 4).await;
    lab.stop_daemon().unwrap();
    // What SoftHSM leaves when killed between its truncate and its write of an object file:
    // the newest-written object (the slot of the newest record) empty.
    let newest = std::fs::read_dir(log_token_dir(&lab))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "object"))
        .filter(|p| !p.ends_with("token.object"))
        .max_by_key(|p| std::fs::metadata(p).unwrap().modified().unwrap())
        .unwrap();
    std::fs::write(&newest, b"").unwrap();
    // The other slot holds the record before it (behind the database, which is accepted).
    let config = lab.config().display().to_string();
    let line = head_line(&lab, &config);
    assert!(line.starts_with("size "), "{line}");
    lab.start_daemon()
        .expect("a torn slot must not stop the daemon");
    let later = sign_n(&lab, 4, 3).await;
    verify(&lab, &later[2], None).expect("verifies");
    lab.stop_daemon().unwrap();
    assert!(head_line(&lab, &config).starts_with(&format!("size {} ", log_size(&lab))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_head_writes_under_load_loses_nothing_acknowledged() {
    use rand_core::{OsRng, RngCore};
    let mut lab = log_token_lab();
    create_key(&lab, ACTOR).await;
    let mut acknowledged = Vec::new();
    for round in 0..10 {
        let (done_tx, mut done) = tokio::sync::mpsc::unbounded_channel();
        let mut clients = Vec::new();
        for client in 0..8 {
            let (socket_lab, done_tx) = (lab.socket(), done_tx.clone());
            clients.push(tokio::spawn(async move {
                let Ok(channel) = actseal::cli::connect_unix(&socket_lab).await else {
                    return;
                };
                let mut signer = actseal::api::signer_client::SignerClient::new(channel);
                for i in 0.. {
                    let id = format!("k{round}-{client}-{i}");
                    let mut request = sign_request(ACTOR, id.as_bytes());
                    request.request_id = id.clone();
                    match signer.sign(request).await {
                        Ok(_) => {
                            let _ = done_tx.send(id);
                        }
                        Err(_) => return,
                    }
                }
            }));
        }
        drop(done_tx);
        let delay = 150 + OsRng.next_u32() % 400;
        tokio::time::sleep(Duration::from_millis(u64::from(delay))).await;
        lab.kill_daemon().unwrap();
        for client in clients {
            let _ = client.await;
        }
        while let Ok(id) = done.try_recv() {
            acknowledged.push(id);
        }
        lab.start_daemon()
            .unwrap_or_else(|e| panic!("restart after SIGKILL {round}: {e}"));
        acknowledged_are_stored(&lab, &acknowledged);
    }
    assert!(
        acknowledged.len() > 50,
        "too little load: {}",
        acknowledged.len()
    );
    let last = sign_n(&lab, 0, 1).await;
    verify(&lab, &last[0], None).expect("verifies after the crashes");
    let config = lab.config().display().to_string();
    lab.stop_daemon().unwrap();
    assert!(head_line(&lab, &config).starts_with(&format!("size {} ", log_size(&lab))));
}

/// Runs [`legacy_head_helper`] in a child process of this test binary with the lab's SoftHSM
/// configuration (a process of its own: SOFTHSM2_CONF is read at C_Initialize); its output.
fn legacy_helper(lab: &Lab, task: &str) -> String {
    let output = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "legacy_head_helper",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("ACTSEAL_LEGACY_HEAD_TASK", task)
        .env("SOFTHSM2_CONF", lab.dir.join("softhsm2.conf"))
        .env(
            "ACTSEAL_LEGACY_HEAD_PIN",
            lab.dir.join("secrets/log-token.pin"),
        )
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// Not a test of its own: the child of [`legacy_helper`]. `to-legacy` turns the log token's
/// head slots into the earlier layout (one object, label `actseal-log-head/<n>`, the record
/// as its CKA_VALUE), as a token written by an earlier actseal holds it; `count` prints the
/// objects of each layout.
#[test]
fn legacy_head_helper() {
    use cryptoki::{
        context::{CInitializeArgs, CInitializeFlags, Pkcs11},
        object::{Attribute, AttributeType, ObjectClass},
        session::UserType,
        types::AuthPin,
    };
    let Ok(task) = std::env::var("ACTSEAL_LEGACY_HEAD_TASK") else {
        return;
    };
    let pin_file = std::env::var("ACTSEAL_LEGACY_HEAD_PIN").unwrap();
    let pin = std::fs::read_to_string(pin_file).unwrap().trim().to_owned();
    let ctx = Pkcs11::new(actseal::lab::SOFTHSM_MODULE).unwrap();
    ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .unwrap();
    let slot = ctx
        .get_slots_with_initialized_token()
        .unwrap()
        .into_iter()
        .find(|s| ctx.get_token_info(*s).unwrap().label().trim() == LOG_TOKEN_LABEL)
        .unwrap();
    let session = ctx.open_rw_session(slot).unwrap();
    session
        .login(UserType::User, Some(&AuthPin::from(pin)))
        .unwrap();
    let find = |application: &str| {
        session
            .find_objects(&[
                Attribute::Class(ObjectClass::DATA),
                Attribute::Application(application.as_bytes().to_vec()),
            ])
            .unwrap()
    };
    let (slots, legacy) = (find("actseal-log-head-slot"), find("actseal"));
    if task == "count" {
        println!("slots {} legacy {}", slots.len(), legacy.len());
        return;
    }
    assert_eq!((slots.len(), legacy.len()), (2, 0), "the current layout");
    let mut newest: Option<(u64, Vec<u8>)> = None;
    for &handle in &slots {
        let label = session
            .get_attributes(handle, &[AttributeType::Label])
            .unwrap()
            .into_iter()
            .find_map(|a| match a {
                Attribute::Label(label) => Some(label),
                _ => None,
            })
            .unwrap();
        let generation = u64::from_be_bytes(label[..8].try_into().unwrap());
        let record = label[8..label.len() - 16].to_vec();
        if newest.as_ref().is_none_or(|(g, _)| generation > *g) {
            newest = Some((generation, record));
        }
        session.destroy_object(handle).unwrap();
    }
    let (generation, record) = newest.unwrap();
    session
        .create_object(&[
            Attribute::Class(ObjectClass::DATA),
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Label(format!("actseal-log-head/{generation}").into_bytes()),
            Attribute::Application(b"actseal".to_vec()),
            Attribute::Value(record),
        ])
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_in_the_earlier_one_object_layout_is_read_and_replaced() {
    let mut lab = log_token_lab();
    create_key(&lab, ACTOR).await;
    sign_n(&lab, 0, 3).await;
    lab.stop_daemon().unwrap();
    legacy_helper(&lab, "to-legacy");
    assert!(legacy_helper(&lab, "count").contains("slots 0 legacy 1"));
    let config = lab.config().display().to_string();
    assert!(head_line(&lab, &config).starts_with(&format!("size {} ", log_size(&lab))));
    // The earlier record still guards the log: without the database the daemon refuses.
    let entries = log_size(&lab);
    let saved: Vec<(PathBuf, Option<Vec<u8>>)> = ["", "-wal", "-shm"]
        .iter()
        .map(|s| (db(&lab, s), std::fs::read(db(&lab, s)).ok()))
        .collect();
    for (path, _) in &saved {
        let _ = std::fs::remove_file(path);
    }
    let error = lab
        .start_daemon()
        .expect_err("started without its log")
        .to_string();
    assert!(error.contains("holds no log"), "{error}");
    for (path, bytes) in saved {
        let _ = std::fs::remove_file(&path);
        if let Some(bytes) = bytes {
            std::fs::write(path, bytes).unwrap();
        }
    }
    lab.start_daemon()
        .expect("starts on the earlier layout's head");
    sign_n(&lab, 3, 2).await;
    lab.stop_daemon().unwrap();
    assert!(legacy_helper(&lab, "count").contains("slots 2 legacy 0"));
    assert!(head_line(&lab, &config).starts_with(&format!("size {} ", log_size(&lab))));
    assert!(log_size(&lab) > entries);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vanished_log_token_fails_signing_and_comes_back_without_a_restart() {
    let mut lab = log_token_lab();
    create_key(&lab, ACTOR).await;
    sign_n(&lab, 0, 2).await;
    let (dir, away) = (log_token_dir(&lab), lab.dir.join("log-token-away"));
    std::fs::rename(&dir, &away).unwrap();
    let mut signer = signer(&lab).await;
    let mut refused = None;
    for i in 0..20 {
        let mut request = sign_request(ACTOR, format!("during {i}").as_bytes());
        request.request_id = format!("during-{i}");
        if let Err(status) = signer.sign(request).await {
            refused = Some(status);
            break;
        }
    }
    let refused = refused.expect("signing went on without the log token");
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    std::fs::rename(&away, &dir).unwrap();
    // The log token's pool re-initialises the context it shares with the actors' token.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let bundle = loop {
        let mut request = sign_request(ACTOR, b"after");
        request.request_id = "after".into();
        match signer.sign(request).await {
            Ok(answer) => break answer.into_inner().bundle_json,
            Err(e) if std::time::Instant::now() < deadline => {
                assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("signing did not come back: {e:?}"),
        }
    };
    verify(&lab, &bundle, None).expect("verifies");
    let log = std::fs::read_to_string(lab.daemon_log()).unwrap();
    for line in log.lines().filter(|l| l.contains("PKCS#11 token")) {
        eprintln!("daemon: {line}");
    }
    assert!(
        log.contains("PKCS#11 token back"),
        "no recovery logged:\n{log}"
    );
    let config = lab.config().display().to_string();
    lab.stop_daemon().unwrap();
    assert!(head_line(&lab, &config).starts_with(&format!("size {} ", log_size(&lab))));
    lab.start_daemon().expect("restart");
}
