//! Issue 9 items 1, 2 and 6: a lost, damaged or rolled-back state database, and damaged
//! tables a bundle or retry is built from, are refused at start against the log head the
//! hardware keeps (a SoftHSM data object; a swtpm NV index); `actseal log recover
//! --declare-fresh-start` begins a new log that names the replaced one. Real daemon, real
//! SoftHSM and swtpm, real files cut, flipped, copied and deleted.

mod common;

use std::path::PathBuf;

use actseal::lab::Lab;
use common::*;

const SIGNS: usize = 20;

fn db(lab: &Lab, suffix: &str) -> PathBuf {
    lab.dir.join(format!("state/actseal.db{suffix}"))
}

/// Signs `n` receipts with request ids `r0`, `r1`, …; returns their bundles.
async fn sign_n(lab: &Lab, from: usize, n: usize) -> Vec<String> {
    let mut signer = signer(lab).await;
    let mut bundles = Vec::new();
    for i in from..from + n {
        let mut request = sign_request(ACTOR, format!("action {i}").as_bytes());
        request.request_id = format!("r{i}");
        bundles.push(
            signer
                .sign(request)
                .await
                .expect("sign")
                .into_inner()
                .bundle_json,
        );
    }
    bundles
}

/// A lab whose log holds a registration and `SIGNS` acknowledged receipts.
async fn lab_with_receipts() -> (TestLab, Vec<String>) {
    let lab = started_lab();
    if admin(&lab)
        .await
        .create_key(actseal::api::CreateKeyRequest {
            actor: ACTOR.into(),
        })
        .await
        .is_err()
    {
        panic!("{}", std::fs::read_to_string(lab.daemon_log()).unwrap());
    }
    let bundles = sign_n(&lab, 0, SIGNS).await;
    (lab, bundles)
}

/// The daemon must refuse to start; returns its log, which must name the cause.
fn refused(lab: &mut Lab, cause: &str) -> String {
    let error = lab
        .start_daemon()
        .expect_err("the daemon started on a database behind the hardware's head")
        .to_string();
    assert!(error.contains("refusing to sign"), "{error}");
    assert!(error.contains(cause), "expected {cause:?} in:\n{error}");
    error
}

/// Runs `sql` on the stopped daemon's ledger (either engine: these row edits apply to both).
fn edit(lab: &Lab, sql: &str) {
    let changed = LedgerDb::open(lab).execute(sql);
    assert!(changed > 0, "{sql} changed nothing");
}

/// Flips bit 0 of byte `at` of receipt `index`'s stored inclusion proof (either engine).
fn flip_proof_bit(lab: &Lab, index: u64, at: usize) {
    let mut db = LedgerDb::open(lab);
    let mut proof: Vec<u8> = db.one(&format!(
        "SELECT proof FROM receipts WHERE log_index = {index}"
    ));
    assert!(proof.len() >= 32, "receipt {index} has an empty proof");
    proof[at] ^= 1;
    let sql = format!("UPDATE receipts SET proof = $1 WHERE log_index = {index}");
    assert_eq!(db.execute_with(&sql, proof), 1);
}

fn flip_byte(path: &PathBuf, at: usize) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[at] ^= 0x5a;
    std::fs::write(path, bytes).unwrap();
}

fn bundle_file(lab: &Lab, name: &str, bundle: &str) -> String {
    let path = lab.dir.join(name);
    std::fs::write(&path, bundle).unwrap();
    path.display().to_string()
}

fn verifies_under(lab: &Lab, bundle: &str, origin: &str) -> bool {
    let path = bundle_file(lab, "check.bundle.json", bundle);
    let anchor = lab.anchor().display().to_string();
    lab.run(&["verify", &path, "--trust", &anchor, "--log-origin", origin])
        .unwrap()
        .status
        .success()
}

fn old_origin(bundle: &str) -> String {
    let bundle: serde_json::Value = serde_json::from_str(bundle).unwrap();
    let note = bundle["log"]["checkpoint"].as_str().unwrap_or_default();
    note.lines().next().unwrap_or_default().to_owned()
}

/// Declares a fresh start, starts, signs, and checks that the new log records the replaced
/// head and that old and new bundles cannot pass as one log's.
async fn recover_and_compare(lab: &mut TestLab, old: &[String], replaced_size: u64) {
    let config = lab.config().display().to_string();
    let without = lab
        .run(&[
            "ledger",
            "recover",
            "--config",
            &config,
            "--origin",
            "actseal/recovered",
        ])
        .unwrap();
    assert!(
        !without.status.success(),
        "recover ran without --declare-fresh-start"
    );
    let origin = old_origin(&old[0]);
    assert!(origin.starts_with("actseal/"), "{origin}");
    let same = lab
        .run(&[
            "ledger",
            "recover",
            "--config",
            &config,
            "--declare-fresh-start",
            "--origin",
            &origin,
        ])
        .unwrap();
    assert!(
        !same.status.success(),
        "a fresh start under the replaced origin was accepted"
    );
    lab.run_ok(&[
        "ledger",
        "recover",
        "--config",
        &config,
        "--declare-fresh-start",
        "--origin",
        "actseal/recovered",
    ])
    .expect("declared fresh start");
    if let Err(e) = lab.start_daemon() {
        let state: Vec<_> = std::fs::read_dir(lab.dir.join("state"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        panic!("the daemon did not start the declared new log: {e}\nstate: {state:?}");
    }
    create_key(lab, ACTOR).await;
    let new = sign_n(lab, 100, 2).await;
    assert!(verifies_under(lab, &new[0], "actseal/recovered"));
    assert!(
        !verifies_under(lab, &new[0], &origin),
        "a new bundle passes as the old log's"
    );
    assert!(
        !verifies_under(lab, &old[0], "actseal/recovered"),
        "an old bundle passes as the new log's"
    );
    assert!(
        verifies_under(lab, &old[0], &origin),
        "old bundles still verify as the old log's"
    );
    lab.stop_daemon().unwrap();

    // The new log's first entry, signed by the new log key, names the replaced head.
    let export = export_log(lab, "recovered.json");
    let anchor = lab.anchor().display().to_string();
    lab.run_ok(&["audit", &export, "--trust", &anchor])
        .expect("the new log audits clean");
    let export: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&export).unwrap()).unwrap();
    let first = export["entries"][0].clone();
    let text = first.to_string();
    let statement = statement_of_entry(&first);
    assert_eq!(
        statement["predicateType"], "https://actseal.dev/log-start/v1",
        "{text}"
    );
    assert_eq!(statement["predicate"]["replaces"]["size"], replaced_size);
    let old_key =
        serde_json::from_str::<serde_json::Value>(&old[0]).unwrap()["log"]["logKey"]["keyId"]
            .as_str()
            .unwrap()
            .to_owned();
    assert_eq!(
        statement["predicate"]["replaces"]["logKeyId"],
        old_key.as_str()
    );
    assert_ne!(
        export["logKey"]["keyId"],
        old_key.as_str(),
        "the new log reuses the old log key"
    );
}

fn statement_of_entry(entry: &serde_json::Value) -> serde_json::Value {
    use base64::{Engine, engine::general_purpose::STANDARD as B64};
    let bytes = B64
        .decode(entry.as_str().expect("entry is base64"))
        .unwrap();
    let parts = actseal::ledger::entry::decode(&bytes).expect("an entry");
    serde_json::from_slice(&parts.payload).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_wal_is_refused_and_a_fresh_start_records_the_replaced_head() {
    let (mut lab, bundles) = lab_with_receipts().await;
    lab.kill_daemon().unwrap();
    assert!(db(&lab, "-wal").exists(), "no WAL after SIGKILL");
    std::fs::remove_file(db(&lab, "-wal")).unwrap();
    let _ = std::fs::remove_file(db(&lab, "-shm"));
    let log = refused(&mut lab, "");
    assert!(log.contains("behind") || log.contains("lost"), "{log}");
    recover_and_compare(&mut lab, &bundles, SIGNS as u64 + 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_wal_is_refused() {
    let (mut lab, _) = lab_with_receipts().await;
    lab.kill_daemon().unwrap();
    let wal = db(&lab, "-wal");
    let len = std::fs::metadata(&wal).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&wal)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    refused(&mut lab, "behind the newest acknowledged tree head");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_byte_in_the_wal_is_refused() {
    let (mut lab, _) = lab_with_receipts().await;
    lab.kill_daemon().unwrap();
    let wal = db(&lab, "-wal");
    let len = std::fs::metadata(&wal).unwrap().len() as usize;
    flip_byte(&wal, len / 2);
    refused(&mut lab, "behind the newest acknowledged tree head");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_copy_of_the_database_is_refused() {
    let mut lab = started_lab();
    create_key(&lab, ACTOR).await;
    sign_n(&lab, 0, 5).await;
    lab.stop_daemon().unwrap();
    let copies: Vec<(PathBuf, Option<Vec<u8>>)> = ["", "-wal", "-shm"]
        .iter()
        .map(|s| (db(&lab, s), std::fs::read(db(&lab, s)).ok()))
        .collect();
    lab.start_daemon().unwrap();
    sign_n(&lab, 5, SIGNS - 5).await;
    lab.stop_daemon().unwrap();
    for (path, bytes) in copies {
        match bytes {
            Some(bytes) => std::fs::write(path, bytes).unwrap(),
            None => {
                let _ = std::fs::remove_file(path);
            }
        }
    }
    refused(&mut lab, "behind the newest acknowledged tree head");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_database_is_refused_not_a_new_log() {
    let (mut lab, bundles) = lab_with_receipts().await;
    lab.stop_daemon().unwrap();
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(db(&lab, suffix));
    }
    refused(&mut lab, "holds no log");
    // Still refused the second time (the empty database the first attempt left is no log).
    refused(&mut lab, "holds no log");
    recover_and_compare(&mut lab, &bundles, SIGNS as u64 + 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_database_file_is_refused() {
    let (mut lab, _) = lab_with_receipts().await;
    lab.stop_daemon().unwrap();
    for suffix in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(db(&lab, suffix));
    }
    std::fs::write(db(&lab, ""), b"").unwrap();
    refused(&mut lab, "holds no log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_stored_log_key_lineage_is_refused() {
    let (mut lab, _) = lab_with_receipts().await;
    lab.stop_daemon().unwrap();
    // Still valid JSON, one signature byte changed: only the binding can tell.
    let mut db = LedgerDb::open(&lab);
    let lineage: String = db.one("SELECT value FROM meta WHERE name = 'log.lineage'");
    let at = lineage
        .find("\"statement\"")
        .or_else(|| lineage.find("\"signature"))
        .unwrap_or(20)
        + 40;
    let mut bytes = lineage.into_bytes();
    bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
    let damaged = String::from_utf8(bytes).unwrap();
    db.execute_with(
        "UPDATE meta SET value = $1 WHERE name = 'log.lineage'",
        damaged,
    );
    drop(db);
    refused(&mut lab, "log key identity");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_byte_in_a_stored_inclusion_proof_is_refused() {
    let (mut lab, _) = lab_with_receipts().await;
    lab.stop_daemon().unwrap();
    flip_proof_bit(&lab, 5, 3);
    refused(
        &mut lab,
        "receipt 5: its stored inclusion proof does not verify",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_request_row_is_refused() {
    let (mut lab, _) = lab_with_receipts().await;
    lab.stop_daemon().unwrap();
    // r7 is receipt 8 (the key's registration is entry 0).
    edit(&lab, "DELETE FROM requests WHERE log_index = 8");
    refused(&mut lab, "request ids are missing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_re_pointed_request_row_is_refused() {
    let (mut lab, _) = lab_with_receipts().await;
    lab.stop_daemon().unwrap();
    edit(
        &lab,
        "UPDATE requests SET log_index = 4 WHERE log_index = 8",
    );
    refused(&mut lab, "several request ids name it");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_old_checkpoint_is_refused() {
    let (mut lab, _) = lab_with_receipts().await;
    lab.stop_daemon().unwrap();
    // The signature line of an old checkpoint (not the newest): one base64 character.
    edit(
        &lab,
        "UPDATE checkpoints SET note = substr(note, 1, length(note) - 10) || \
         (CASE substr(note, length(note) - 9, 1) WHEN 'A' THEN 'B' ELSE 'A' END) || substr(note, length(note) - 8) \
         WHERE size = (SELECT MIN(size) FROM checkpoints WHERE size > 3)",
    );
    refused(&mut lab, "the checkpoint of size 4's signature");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_start_up_check_is_incremental_and_its_watermark_is_bound_to_the_hardware() {
    let (mut lab, _) = lab_with_receipts().await;
    lab.stop_daemon().unwrap();
    for _ in 0..2 {
        lab.start_daemon().unwrap();
        lab.stop_daemon().unwrap();
    }
    let log = std::fs::read_to_string(lab.daemon_log()).unwrap();
    let checked: Vec<&str> = log.lines().filter(|l| l.contains("log verified")).collect();
    assert_eq!(checked.len(), 3, "{log}");
    assert!(
        checked[1].contains(&format!("checked={}", SIGNS + 1)),
        "{}",
        checked[1]
    );
    assert!(checked[2].contains("checked=0"), "{}", checked[2]);
    // An edited watermark is not trusted: the whole log is checked again.
    edit(
        &lab,
        "UPDATE meta SET value = replace(value, '\"requests\":', '\"requests\": ') WHERE name = 'check.watermark'",
    );
    lab.start_daemon().unwrap();
    lab.stop_daemon().unwrap();
    let log = std::fs::read_to_string(lab.daemon_log()).unwrap();
    let last = log.lines().rfind(|l| l.contains("log verified")).unwrap();
    assert!(last.contains(&format!("checked={}", SIGNS + 1)), "{last}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tpm_daemon_keeps_its_head_in_nv_and_refuses_a_deleted_wal() {
    let mut lab = new_tpm_lab();
    lab.start_daemon().expect("TPM daemon start");
    create_key(&lab, ACTOR).await;
    sign_n(&lab, 0, SIGNS).await;
    lab.kill_daemon().unwrap();
    // The record is in the TPM's NV index: read it with tpm2-tools, outside the daemon.
    let tcti = lab.tpm().unwrap().tcti();
    let out = lab.dir.join("head.bin");
    let read = std::process::Command::new("tpm2_nvread")
        .args([
            &format!("{:#x}", actseal::backend::tpm::LOG_HEAD_NV_INDEX),
            "-C",
            "o",
            "-o",
        ])
        .arg(&out)
        .env("TPM2TOOLS_TCTI", &tcti)
        .env("TSS2_LOG", "all+NONE")
        .output()
        .expect("tpm2_nvread runs");
    assert!(
        read.status.success(),
        "{}",
        String::from_utf8_lossy(&read.stderr)
    );
    let head = actseal::ledger::head::LogHead::decode(&std::fs::read(&out).unwrap()).unwrap();
    assert_eq!(head.size, SIGNS as u64 + 1);
    std::fs::remove_file(db(&lab, "-wal")).unwrap();
    let _ = std::fs::remove_file(db(&lab, "-shm"));
    let log = refused(&mut lab, "");
    assert!(log.contains("behind") || log.contains("lost"), "{log}");
    // The TPM restarted (its NV persists): still refused.
    lab.tpm().unwrap().restart().unwrap();
    refused(&mut lab, "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damage_behind_the_watermark_is_caught_at_start_or_when_used() {
    let (mut lab, _) = lab_with_receipts().await;
    // A clean restart moves the watermark past every entry: the next start re-reads none.
    lab.stop_daemon().unwrap();
    lab.start_daemon().unwrap();
    lab.stop_daemon().unwrap();
    // r7 (receipt 8) re-pointed at receipt 4; receipt 6's (r5) stored proof flipped.
    edit(
        &lab,
        "UPDATE requests SET log_index = 4 WHERE log_index = 8",
    );
    flip_proof_bit(&lab, 6, 0);
    lab.start_daemon()
        .expect("rows behind the watermark are not re-read at start");
    let mut signer = signer(&lab).await;
    for (id, document, cause) in [
        ("r7", "action 7", "made for another request"),
        ("r5", "action 5", "inclusion proof"),
    ] {
        let mut request = sign_request(ACTOR, document.as_bytes());
        request.request_id = id.into();
        let status = signer
            .sign(request)
            .await
            .expect_err("a retry was answered from a damaged row");
        assert!(
            status.message().contains(cause)
                || std::fs::read_to_string(lab.daemon_log())
                    .unwrap()
                    .contains(cause),
            "{id}: {status:?}"
        );
    }
    assert_eq!(
        receipt_count(&lab),
        SIGNS as u64,
        "a retry signed a second receipt"
    );
    // The offline full check re-reads them and names the damage.
    lab.stop_daemon().unwrap();
    let config = lab.config().display().to_string();
    let check = lab.run(&["log", "check", "--config", &config]).unwrap();
    let text = String::from_utf8_lossy(&check.stderr);
    assert!(
        !check.status.success() && text.contains("receipt 4"),
        "{text}"
    );
    // A deleted request id behind the watermark is counted at start.
    edit(&lab, "DELETE FROM requests WHERE log_index = 10");
    refused(&mut lab, "request ids are missing");
}
