//! The tamper-evident log end to end on a real SoftHSM token: inclusion and consistency
//! proofs, checkpoints, rotation and retirement, retries, audit, and a damaged database.

mod common;

use actseal::api::{
    GetActorKeyRequest, GetCheckpointRequest, GetConsistencyProofRequest, GetInclusionProofRequest,
    RetireKeyRequest, RotateKeyRequest,
};
use common::*;
use tonic::Code;

fn write(lab: &actseal::lab::Lab, name: &str, text: &str) -> String {
    let path = lab.dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

fn anchor(lab: &actseal::lab::Lab) -> String {
    lab.anchor().display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_receipt_is_proved_in_a_growing_log_with_consistent_checkpoints() {
    every_receipt_is_proved_in_a_growing_log_with_consistent_checkpoints_on(Engine::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_receipt_is_proved_in_a_growing_log_with_consistent_checkpoints_on_postgres() {
    every_receipt_is_proved_in_a_growing_log_with_consistent_checkpoints_on(Engine::Postgres).await;
}

async fn every_receipt_is_proved_in_a_growing_log_with_consistent_checkpoints_on(engine: Engine) {
    let Some(lab) = started_lab_on(engine) else {
        return;
    };
    create_key(&lab, ACTOR).await;
    let other = "spiffe://acme.example/agents/other";
    create_key(&lab, other).await;

    // Concurrent signers: batches of several receipts share a checkpoint.
    let mut tasks = Vec::new();
    for c in 0..4 {
        let mut signer = signer(&lab).await;
        let actor = if c % 2 == 0 { ACTOR } else { other };
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            for i in 0..15 {
                let document = format!("client {c} action {i}");
                let response = signer
                    .sign(sign_request(actor, document.as_bytes()))
                    .await
                    .unwrap()
                    .into_inner();
                out.push((document, response));
            }
            out
        }));
    }
    let mut signed = Vec::new();
    for task in tasks {
        signed.extend(task.await.unwrap());
    }
    assert_eq!(signed.len(), 60);
    for (document, response) in &signed {
        let verified = verify(&lab, &response.bundle_json, Some(document.as_bytes()))
            .unwrap_or_else(|e| panic!("bundle {} does not verify: {e}", response.log_index));
        assert_eq!(verified.log_index, response.log_index);
        assert!(verified.tree_size > response.log_index);
    }

    // Older receipts proved against the newest checkpoint: the refreshed bundle verifies.
    let mut signer = signer(&lab).await;
    let newest = signer
        .get_checkpoint(GetCheckpointRequest {})
        .await
        .unwrap()
        .into_inner();
    // Two key registrations (entries 0 and 1), then 60 receipts.
    assert_eq!(newest.size, 62);
    for index in [2u64, 3, 31, 61] {
        let proof = signer
            .get_inclusion_proof(GetInclusionProofRequest {
                log_index: index,
                tree_size: 0,
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(proof.tree_size, 62);
        let verified = verify(&lab, &proof.bundle_json, None).expect("refreshed bundle verifies");
        assert_eq!(verified.tree_size, 62);
    }

    // Consistency between the checkpoint an early bundle carries and the newest, offline.
    let first = &signed.iter().find(|(_, r)| r.log_index == 2).unwrap().1;
    let early: serde_json::Value = serde_json::from_str(&first.bundle_json).unwrap();
    let early_size = early["log"]["treeSize"].as_u64().unwrap();
    assert!(early_size < 62);
    let consistency = signer
        .get_consistency_proof(GetConsistencyProofRequest {
            old_size: early_size,
            new_size: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let proof_json = serde_json::json!({
        "oldSize": consistency.old_size,
        "newSize": consistency.new_size,
        "hashes": consistency.hashes.iter().map(hex::encode).collect::<Vec<_>>(),
        "oldCheckpoint": consistency.old_checkpoint,
        "newCheckpoint": consistency.new_checkpoint,
    });
    let bundle_path = write(&lab, "first.bundle.json", &first.bundle_json);
    let proof_path = write(&lab, "consistency.json", &proof_json.to_string());
    let out = lab
        .run(&[
            "verify-log",
            &proof_path,
            "--bundle",
            &bundle_path,
            "--trust",
            &anchor(&lab),
        ])
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // The same through the client commands.
    let cli_proof = lab.path("cli-consistency.json");
    lab.run_ok(&[
        "log",
        "consistency",
        "--old",
        &early_size.to_string(),
        "--out",
        &cli_proof,
    ])
    .unwrap();
    lab.run_ok(&[
        "verify-log",
        &cli_proof,
        "--bundle",
        &bundle_path,
        "--trust",
        &anchor(&lab),
    ])
    .unwrap();
    // A forged proof fails.
    let mut forged = proof_json.clone();
    forged["hashes"][0] = serde_json::Value::String("00".repeat(32));
    let forged_path = write(&lab, "forged.json", &forged.to_string());
    let out = lab
        .run(&[
            "verify-log",
            &forged_path,
            "--bundle",
            &bundle_path,
            "--trust",
            &anchor(&lab),
        ])
        .unwrap();
    assert_eq!(out.status.code(), Some(1));

    // Proof requests past the tree are refused precisely.
    let past = signer
        .get_inclusion_proof(GetInclusionProofRequest {
            log_index: 62,
            tree_size: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(past.code(), Code::OutOfRange, "{past:?}");
    let past = signer
        .get_inclusion_proof(GetInclusionProofRequest {
            log_index: 2,
            tree_size: 63,
        })
        .await
        .unwrap_err();
    assert_eq!(past.code(), Code::OutOfRange, "{past:?}");
    let past = signer
        .get_consistency_proof(GetConsistencyProofRequest {
            old_size: 1,
            new_size: 1000,
        })
        .await
        .unwrap_err();
    assert_eq!(past.code(), Code::OutOfRange, "{past:?}");
    let backwards = signer
        .get_consistency_proof(GetConsistencyProofRequest {
            old_size: 62,
            new_size: early_size,
        })
        .await
        .unwrap_err();
    assert_eq!(backwards.code(), Code::InvalidArgument, "{backwards:?}");
    let zero = signer
        .get_consistency_proof(GetConsistencyProofRequest {
            old_size: 0,
            new_size: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(zero.code(), Code::InvalidArgument, "{zero:?}");

    // The whole log replays offline.
    let audit = export_and_audit(&lab, "log-export.json");
    assert!(audit.contains("60 receipts of 2 actors"), "{audit}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_twice_keeps_old_and_new_bundles_verifiable_and_retirement_stops_signing() {
    rotation_twice_keeps_old_and_new_bundles_verifiable_and_retirement_stops_signing_on(
        Engine::Sqlite,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_twice_keeps_old_and_new_bundles_verifiable_and_retirement_stops_signing_on_postgres()
 {
    rotation_twice_keeps_old_and_new_bundles_verifiable_and_retirement_stops_signing_on(
        Engine::Postgres,
    )
    .await;
}

async fn rotation_twice_keeps_old_and_new_bundles_verifiable_and_retirement_stops_signing_on(
    engine: Engine,
) {
    let Some(lab) = started_lab_on(engine) else {
        return;
    };
    let v1 = create_key(&lab, ACTOR).await;
    let mut signer = signer(&lab).await;
    let mut admin = admin(&lab).await;
    let mut bundles = vec![
        signer
            .sign(sign_request(ACTOR, b"v1 action"))
            .await
            .unwrap()
            .into_inner(),
    ];
    let v2 = admin
        .rotate_key(RotateKeyRequest {
            actor: ACTOR.into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(v2.version, 2);
    bundles.push(
        signer
            .sign(sign_request(ACTOR, b"v2 action"))
            .await
            .unwrap()
            .into_inner(),
    );
    let v3 = admin
        .rotate_key(RotateKeyRequest {
            actor: ACTOR.into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(v3.version, 3);
    bundles.push(
        signer
            .sign(sign_request(ACTOR, b"v3 action"))
            .await
            .unwrap()
            .into_inner(),
    );

    for (bundle, (key, document)) in
        bundles
            .iter()
            .zip([(&v1, "v1 action"), (&v2, "v2 action"), (&v3, "v3 action")])
    {
        let verified =
            verify(&lab, &bundle.bundle_json, Some(document.as_bytes())).expect("verifies");
        assert_eq!(verified.key_id, key.key_id);
        assert_eq!(verified.key_version, u64::from(key.version));
    }
    // The sequence runs on across key versions.
    assert_eq!(
        receipt_statement(&bundles[2].bundle_json)["predicate"]["sequence"],
        3
    );
    let old = signer
        .get_actor_key(GetActorKeyRequest {
            actor: ACTOR.into(),
            version: 1,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(old.state, "retired");
    assert!(!old.retired_at.is_empty());

    // A lineage with a break or a fork is rejected.
    let v3_bundle: serde_json::Value = serde_json::from_str(&bundles[2].bundle_json).unwrap();
    let mut broken = v3_bundle.clone();
    broken["lineage"]["rotations"]
        .as_array_mut()
        .unwrap()
        .remove(0);
    let err = verify(&lab, &broken.to_string(), None).unwrap_err();
    assert_eq!(err.check.to_string(), "lineage.rotation");
    let mut forked = v3_bundle.clone();
    let rotations = forked["lineage"]["rotations"].as_array_mut().unwrap();
    rotations.swap(0, 1);
    let err = verify(&lab, &forked.to_string(), None).unwrap_err();
    assert_eq!(err.check.to_string(), "lineage.rotation");
    let mut resigned = v3_bundle.clone();
    resigned["lineage"]["rotations"][1]["signatures"][0]["sig"] =
        v3_bundle["lineage"]["rotations"][0]["signatures"][0]["sig"].clone();
    assert!(verify(&lab, &resigned.to_string(), None).is_err());

    // Retirement: no more signing; rotation from a retired key is refused; both are logged.
    let retired = admin
        .retire_key(RetireKeyRequest {
            actor: ACTOR.into(),
            version: 3,
            keep_key: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(retired.state, "retired");
    let refused = signer
        .sign(sign_request(ACTOR, b"after retirement"))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    let refused = admin
        .rotate_key(RotateKeyRequest {
            actor: ACTOR.into(),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    let wrong = admin
        .retire_key(RetireKeyRequest {
            actor: ACTOR.into(),
            version: 1,
            keep_key: false,
        })
        .await
        .unwrap_err();
    assert_eq!(wrong.code(), Code::FailedPrecondition, "{wrong:?}");
    for bundle in &bundles {
        verify(&lab, &bundle.bundle_json, None).expect("old proofs stay verifiable");
    }
    let audit = export_and_audit(&lab, "log-export.json");
    assert!(
        audit.contains("3 receipts of 1 actors, 2 rotations, 1 retirements"),
        "{audit}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_with_a_request_id_return_the_same_bundle_and_append_nothing() {
    retries_with_a_request_id_return_the_same_bundle_and_append_nothing_on(Engine::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_with_a_request_id_return_the_same_bundle_and_append_nothing_on_postgres() {
    retries_with_a_request_id_return_the_same_bundle_and_append_nothing_on(Engine::Postgres).await;
}

async fn retries_with_a_request_id_return_the_same_bundle_and_append_nothing_on(engine: Engine) {
    let Some(lab) = started_lab_on(engine) else {
        return;
    };
    create_key(&lab, ACTOR).await;
    let mut signer = signer(&lab).await;
    let mut request = sign_request(ACTOR, DOCUMENT);
    request.request_id = "payment-42-attempt".into();
    let first = signer.sign(request.clone()).await.unwrap().into_inner();
    let again = signer.sign(request.clone()).await.unwrap().into_inner();
    assert_eq!(first.bundle_json, again.bundle_json);
    assert_eq!(first.log_index, again.log_index);
    assert_eq!(receipt_count(&lab), 1);

    let mut different = request.clone();
    different.target = "acct:somewhere-else".into();
    let conflict = signer.sign(different).await.unwrap_err();
    assert_eq!(conflict.code(), Code::AlreadyExists, "{conflict:?}");
    let mut bad = request.clone();
    bad.request_id = "has spaces".into();
    assert_eq!(
        signer.sign(bad).await.unwrap_err().code(),
        Code::InvalidArgument
    );

    // Concurrent duplicates (likely in one batch) get one receipt between them.
    let mut duplicate = request.clone();
    duplicate.request_id = "concurrent-1".into();
    let mut tasks = Vec::new();
    for _ in 0..6 {
        let mut signer = common::signer(&lab).await;
        let duplicate = duplicate.clone();
        tasks.push(tokio::spawn(async move {
            signer.sign(duplicate).await.unwrap().into_inner()
        }));
    }
    let mut answers = Vec::new();
    for task in tasks {
        answers.push(task.await.unwrap());
    }
    assert!(
        answers
            .iter()
            .all(|a| a.bundle_json == answers[0].bundle_json)
    );
    assert_eq!(receipt_count(&lab), 2);
}

fn sqlite(lab: &actseal::lab::Lab, sql: &str) {
    let conn = rusqlite::Connection::open(lab.dir.join("state/actseal.db")).unwrap();
    conn.execute_batch(sql).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_database_is_caught_at_start_up_and_by_audit() {
    let mut lab = started_lab();
    create_key(&lab, ACTOR).await;
    let mut signer = signer(&lab).await;
    for i in 0..5 {
        signer
            .sign(sign_request(ACTOR, format!("action {i}").as_bytes()))
            .await
            .unwrap();
    }
    drop(signer);
    // Entry 0 registers version 1; 1-5 are receipts; 6 registers version 2 and 7 rotates to
    // it, so that version 1 is retired in the log.
    admin(&lab)
        .await
        .rotate_key(RotateKeyRequest {
            actor: ACTOR.into(),
        })
        .await
        .unwrap();
    lab.stop_daemon().unwrap();
    let database = lab.dir.join("state/actseal.db");
    let pristine = lab.dir.join("pristine.db");
    std::fs::copy(&database, &pristine).unwrap();
    let export = export_log(&lab, "good-export.json");

    // (what, damage, whether the entries themselves are damaged: then audit must fail too)
    let damages = [
        (
            "a changed byte in an entry",
            true,
            "UPDATE log_entries SET entry = CAST(replace(CAST(entry AS TEXT), 'action', 'actioN') AS BLOB) WHERE log_index = 2;",
        ),
        (
            "a deleted entry",
            true,
            "DELETE FROM requests; DELETE FROM receipts WHERE log_index = 5; DELETE FROM log_entries WHERE log_index = 5;",
        ),
        (
            "a deleted middle entry",
            true,
            "DELETE FROM receipts WHERE log_index = 1; DELETE FROM log_entries WHERE log_index = 1;",
        ),
        // Entries intact, so an audit of them passes; start-up still refuses the bad node.
        (
            "a changed tree node",
            false,
            "UPDATE tree_nodes SET hash = zeroblob(32) WHERE level = 1 AND idx = 0;",
        ),
        (
            "a checkpoint row that disagrees with its note",
            false,
            "UPDATE checkpoints SET root = zeroblob(32) WHERE size = (SELECT MAX(size) FROM checkpoints);",
        ),
        (
            "an edited checkpoint note",
            true,
            "UPDATE checkpoints SET note = replace(note, char(10) || '8' || char(10), char(10) || '7' || char(10)) WHERE size = 8;",
        ),
        // The entries are intact, but the tables the sequencer continues from disagree with
        // them: signing on would fork a chain or use a retired key.
        (
            "a deleted newest receipt row",
            false,
            "DELETE FROM requests; DELETE FROM receipts WHERE log_index = 5;",
        ),
        (
            "a retired key made active again",
            false,
            "UPDATE actor_keys SET state = 'active', retired_at = NULL WHERE version = 1;",
        ),
    ];
    for (what, entries_damaged, sql) in damages {
        std::fs::copy(&pristine, &database).unwrap();
        let _ = std::fs::remove_file(lab.dir.join("state/actseal.db-wal"));
        let _ = std::fs::remove_file(lab.dir.join("state/actseal.db-shm"));
        sqlite(&lab, &format!("PRAGMA foreign_keys = OFF; {sql}"));
        let err = lab.start_daemon().expect_err(what);
        let text = err.to_string();
        assert!(
            text.contains("log is corrupt") || text.contains("corrupt"),
            "{what}: {text}"
        );

        // audit catches it in an export of the damaged database too (where one can be made).
        let damaged = lab.path("damaged-export.json");
        let exported = lab
            .run(&[
                "log",
                "export",
                "--config",
                &lab.config().display().to_string(),
                "--out",
                &damaged,
            ])
            .unwrap();
        if exported.status.success() {
            let out = lab
                .run(&["audit", &damaged, "--trust", &anchor(&lab)])
                .unwrap();
            let expected = if entries_damaged { 1 } else { 0 };
            assert_eq!(
                out.status.code(),
                Some(expected),
                "{what}: {}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
    }
    // A tampered export (an entry's byte changed) fails the audit; the pristine one passes.
    lab.run_ok(&["audit", &export, "--trust", &anchor(&lab)])
        .unwrap();
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&export).unwrap()).unwrap();
    json["entries"].as_array_mut().unwrap().swap(1, 2);
    let swapped = write(&lab, "swapped-export.json", &json.to_string());
    let out = lab
        .run(&["audit", &swapped, "--trust", &anchor(&lab)])
        .unwrap();
    assert_eq!(out.status.code(), Some(1));

    // Restored, it starts and signs on.
    std::fs::copy(&pristine, &database).unwrap();
    lab.start_daemon().unwrap();
    let next = common::signer(&lab)
        .await
        .sign(sign_request(ACTOR, DOCUMENT))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(next.log_index, 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_window_shares_checkpoints_between_callers() {
    a_batch_window_shares_checkpoints_between_callers_on(Engine::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_window_shares_checkpoints_between_callers_on_postgres() {
    a_batch_window_shares_checkpoints_between_callers_on(Engine::Postgres).await;
}

async fn a_batch_window_shares_checkpoints_between_callers_on(engine: Engine) {
    let Some(mut lab) = new_lab_on(engine) else {
        return;
    };
    configure_ledger(&lab, "batch_window_ms = 50");
    lab.start_daemon().unwrap();
    create_key(&lab, ACTOR).await;
    let mut tasks = Vec::new();
    for c in 0..8 {
        let mut signer = signer(&lab).await;
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            for i in 0..5 {
                let document = format!("client {c} action {i}");
                out.push((
                    document.clone(),
                    signer
                        .sign(sign_request(ACTOR, document.as_bytes()))
                        .await
                        .unwrap()
                        .into_inner(),
                ));
            }
            out
        }));
    }
    let mut signed = Vec::new();
    for task in tasks {
        signed.extend(task.await.unwrap());
    }
    for (document, response) in &signed {
        verify(&lab, &response.bundle_json, Some(document.as_bytes())).expect("verifies");
    }
    let checkpoints: i64 = match &lab.pg {
        Some(pg) => pg
            .query_i64("ledger", "SELECT COUNT(*) FROM checkpoints")
            .unwrap(),
        None => rusqlite::Connection::open_with_flags(
            lab.dir.join("state/actseal.db"),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .unwrap()
        .query_row("SELECT COUNT(*) FROM checkpoints", [], |r| r.get(0))
        .unwrap(),
    };
    assert!(
        checkpoints < 40,
        "{checkpoints} checkpoints for 40 receipts: no batching"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotating_under_load_keeps_every_receipt_valid_and_the_log_auditable() {
    rotating_under_load_keeps_every_receipt_valid_and_the_log_auditable_on(Engine::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotating_under_load_keeps_every_receipt_valid_and_the_log_auditable_on_postgres() {
    rotating_under_load_keeps_every_receipt_valid_and_the_log_auditable_on(Engine::Postgres).await;
}

async fn rotating_under_load_keeps_every_receipt_valid_and_the_log_auditable_on(engine: Engine) {
    let Some(mut lab) = started_lab_on(engine) else {
        return;
    };
    create_key(&lab, ACTOR).await;
    let mut tasks = Vec::new();
    for c in 0..4 {
        let mut signer = signer(&lab).await;
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            for i in 0..25 {
                let document = format!("client {c} action {i}");
                let response = signer
                    .sign(sign_request(ACTOR, document.as_bytes()))
                    .await
                    .unwrap()
                    .into_inner();
                out.push((document, response));
            }
            out
        }));
    }
    let mut admin = admin(&lab).await;
    for _ in 0..2 {
        tokio::time::sleep(std::time::Duration::from_millis(30)).await;
        admin
            .rotate_key(RotateKeyRequest {
                actor: ACTOR.into(),
            })
            .await
            .unwrap();
    }
    let mut signed = Vec::new();
    for task in tasks {
        signed.extend(task.await.unwrap());
    }
    for (document, response) in &signed {
        verify(&lab, &response.bundle_json, Some(document.as_bytes()))
            .unwrap_or_else(|e| panic!("receipt {} does not verify: {e}", response.log_index));
    }
    lab.stop_daemon().unwrap();
    let audit = export_and_audit(&lab, "log-export.json");
    assert!(
        audit.contains("100 receipts of 1 actors, 2 rotations"),
        "{audit}"
    );
}

/// The PostgreSQL pass of scripts/test.sh runs on PostgreSQL for real: a test lab's ledger is
/// on the engine `ACTSEAL_TEST_LEDGER` names, and the daemon's receipts are in that engine
/// (the server's own tables), not in a SQLite file beside it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_test_lab_keeps_its_ledger_on_the_engine_actseal_test_ledger_names() {
    use actseal::lab::LabLedger;
    let on_pg = LabLedger::from_env().expect("ACTSEAL_TEST_LEDGER") == LabLedger::Postgres;
    let lab = started_lab();
    create_key(&lab, ACTOR).await;
    signer(&lab)
        .await
        .sign(sign_request(ACTOR, DOCUMENT))
        .await
        .expect("sign");
    assert_eq!(on_postgres(&lab), on_pg);
    assert_eq!(lab.dir.join("state/actseal.db").exists(), !on_pg);
    assert_eq!(ledger_i64(&lab, "SELECT COUNT(*) FROM receipts"), 1);
    if let Some(pg) = &lab.pg {
        let rows = pg
            .query_i64("ledger", "SELECT COUNT(*) FROM receipts")
            .expect("the server's receipts");
        assert_eq!(rows, 1, "the receipt is not in the lab's PostgreSQL server");
    }
}
