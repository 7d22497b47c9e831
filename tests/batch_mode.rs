//! Batch mode in the daemon (issue 10): requests for a batched actor within a window become
//! leaves of one tree whose root the actor key signs once; each caller still gets its own
//! receipt, sequence number and log entry. Against real SoftHSM and swtpm: the batch member of
//! every bundle is checked here with this file's own code (the verifier checks it too once
//! its batch support lands), windows close on time, a backend that fails or hangs in the
//! middle of a batch answers every caller with an error and stores nothing, and a SIGKILL
//! under batch load loses no acknowledged receipt.

mod common;

use std::time::{Duration, Instant};

use base64::{Engine, engine::general_purpose::STANDARD as B64};
use common::*;
use p256::{
    ecdsa::{Signature, VerifyingKey, signature::hazmat::PrehashVerifier},
    pkcs8::DecodePublicKey,
};
use sha2::{Digest, Sha256};
use tonic::Code;

const SINGLE_ACTOR: &str = "spiffe://acme.example/agents/reports";

/// Adds `[ledger]` settings to the lab's configuration: keys into its `[ledger]` table (which
/// a lab on PostgreSQL already has), `[[ledger.batch]]` tables after everything else.
fn configure_ledger(lab: &actseal::lab::Lab, lines: &str) {
    let (keys, tables) = lines.split_at(lines.find("[[").unwrap_or(lines.len()));
    common::configure_ledger(lab, keys);
    let mut config = std::fs::read_to_string(lab.config()).unwrap();
    config.push_str(&format!("\n{tables}\n"));
    std::fs::write(lab.config(), config).unwrap();
}

fn batched_lab(tpm: bool, ledger: &str) -> TestLab {
    let mut lab = if tpm { new_tpm_lab() } else { new_lab() };
    configure_ledger(&lab, ledger);
    lab.start_daemon().expect("daemon start");
    lab
}

const BATCH_5MS: &str =
    "[[ledger.batch]]\nactors = [\"spiffe://acme.example/agents/payments\"]\nwindow_ms = 30\n";

fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "DSSEv1 {} {} {} ",
        payload_type.len(),
        payload_type,
        payload.len()
    )
    .into_bytes();
    out.extend_from_slice(payload);
    out
}

fn hex32(text: &serde_json::Value) -> Result<[u8; 32], String> {
    let bytes = hex::decode(text.as_str().ok_or("not a string")?).map_err(|e| e.to_string())?;
    bytes.try_into().map_err(|_| "not 32 bytes".to_string())
}

fn leaf_hash(bytes: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update([0]);
    h.update(bytes);
    h.finalize().into()
}

/// What a checked batch bundle says.
#[derive(Debug)]
struct BatchFacts {
    sequence: u64,
    log_index: u64,
    size: u64,
    first_sequence: u64,
    root: [u8; 32],
}

/// Checks a batch bundle's receipt against its batch member, independently of the daemon's
/// code: the statement's signature under the bundle's actor key, its predicate, the leaf's
/// place, the path to the root, and the log entry (rebuilt from the bundle, seal and all)
/// under the log's signed checkpoint.
fn check_batch_bundle(bundle_json: &str) -> Result<BatchFacts, String> {
    let bundle: serde_json::Value = serde_json::from_str(bundle_json).map_err(|e| e.to_string())?;
    let receipt = &bundle["receipt"];
    if receipt["signatures"] != serde_json::json!([]) {
        return Err("a batch receipt has a signature of its own".into());
    }
    let payload = B64
        .decode(receipt["payload"].as_str().ok_or("no payload")?)
        .map_err(|e| e.to_string())?;
    let statement: serde_json::Value =
        serde_json::from_slice(&payload).map_err(|e| e.to_string())?;
    let predicate = &statement["predicate"];
    if predicate["mode"] != "batch" {
        return Err(format!("mode {}", predicate["mode"]));
    }
    let batch = bundle.get("batch").ok_or("no batch member")?;
    let envelope = &batch["statement"];
    let statement_payload = B64
        .decode(envelope["payload"].as_str().ok_or("no statement payload")?)
        .map_err(|e| e.to_string())?;
    let signatures = envelope["signatures"].as_array().ok_or("no signatures")?;
    if signatures.len() != 1 {
        return Err("the statement must have one signature".into());
    }
    let key_id = bundle["actorKey"]["keyId"].as_str().ok_or("no key id")?;
    if signatures[0]["keyid"] != key_id {
        return Err("statement keyid is not the actor key".into());
    }
    let spki = B64
        .decode(bundle["actorKey"]["publicKey"].as_str().ok_or("no key")?)
        .map_err(|e| e.to_string())?;
    if hex::encode(Sha256::digest(&spki)) != key_id {
        return Err("key id is not the key's".into());
    }
    let key = VerifyingKey::from_public_key_der(&spki).map_err(|e| e.to_string())?;
    let signature_der = B64
        .decode(signatures[0]["sig"].as_str().ok_or("no sig")?)
        .map_err(|e| e.to_string())?;
    let signature = Signature::from_der(&signature_der).map_err(|e| e.to_string())?;
    let digest = Sha256::digest(pae(
        envelope["payloadType"].as_str().unwrap_or_default(),
        &statement_payload,
    ));
    key.verify_prehash(&digest, &signature)
        .map_err(|_| "the batch statement's signature does not verify")?;
    let batch_statement: serde_json::Value =
        serde_json::from_slice(&statement_payload).map_err(|e| e.to_string())?;
    let bp = &batch_statement["predicate"];
    if batch_statement["predicateType"] != "https://actseal.dev/receipt-batch/v1" {
        return Err("not a receipt-batch statement".into());
    }
    for (mine, theirs) in [
        (&predicate["actor"], &bp["actor"]),
        (&predicate["key"], &bp["key"]),
        (&predicate["signedAt"], &bp["signedAt"]),
    ] {
        if mine != theirs {
            return Err(format!("receipt says {mine}, batch says {theirs}"));
        }
    }
    let (size, first_sequence, first_log_index) = (
        bp["size"].as_u64().ok_or("no size")?,
        bp["firstSequence"].as_u64().ok_or("no firstSequence")?,
        bp["firstLogIndex"].as_u64().ok_or("no firstLogIndex")?,
    );
    let subject = &batch_statement["subject"][0];
    let expected_name = format!(
        "receipt-batch:{}#{}/{}",
        bp["actor"].as_str().unwrap_or_default(),
        bp["key"]["version"],
        first_sequence
    );
    if subject["name"] != *expected_name.as_str() {
        return Err(format!("subject name {}", subject["name"]));
    }
    let root = hex32(&subject["digest"]["sha256"])?;
    let leaf = batch["leafIndex"].as_u64().ok_or("no leafIndex")?;
    let sequence = predicate["sequence"].as_u64().ok_or("no sequence")?;
    let log_index = predicate["logIndex"].as_u64().ok_or("no logIndex")?;
    if leaf >= size || sequence != first_sequence + leaf || log_index != first_log_index + leaf {
        return Err(format!(
            "leaf {leaf} of {size}: sequence {sequence} / log index {log_index} out of place"
        ));
    }
    let path: Vec<[u8; 32]> = batch["inclusionProof"]
        .as_array()
        .ok_or("no inclusionProof")?
        .iter()
        .map(hex32)
        .collect::<Result<_, _>>()?;
    actseal::verify::merkle::verify_inclusion(&leaf_hash(&payload), leaf, size, &path, &root)
        .map_err(|e| format!("batch path: {e}"))?;
    // The log entry, rebuilt as FORMAT.md §11.1 says, is the leaf the log proves.
    let mut seal = b"actseal-batch-seal/v1\n".to_vec();
    seal.extend_from_slice(&(leaf as u32).to_be_bytes());
    seal.push(path.len() as u8);
    path.iter().for_each(|h| seal.extend_from_slice(h));
    for field in [&statement_payload, &signature_der] {
        seal.extend_from_slice(&(field.len() as u32).to_be_bytes());
        seal.extend_from_slice(field);
    }
    let mut entry = Vec::new();
    for field in [
        receipt["payloadType"]
            .as_str()
            .unwrap_or_default()
            .as_bytes(),
        &payload,
        &seal,
    ] {
        entry.extend_from_slice(&(field.len() as u32).to_be_bytes());
        entry.extend_from_slice(field);
    }
    let log = &bundle["log"];
    let log_spki = B64
        .decode(log["logKey"]["publicKey"].as_str().ok_or("no log key")?)
        .map_err(|e| e.to_string())?;
    let checkpoint = actseal::verify::checkpoint::verify_checkpoint(
        log["checkpoint"]
            .as_str()
            .ok_or("no checkpoint")?
            .as_bytes(),
        log["logKey"]["keyName"].as_str().ok_or("no key name")?,
        &log_spki,
    )
    .map_err(|e| format!("checkpoint: {e}"))?;
    let log_path: Vec<[u8; 32]> = log["inclusionProof"]
        .as_array()
        .ok_or("no log proof")?
        .iter()
        .map(hex32)
        .collect::<Result<_, _>>()?;
    if log["index"].as_u64() != Some(log_index) || log["treeSize"].as_u64() != Some(checkpoint.size)
    {
        return Err("log proof is not of this receipt's index and checkpoint".into());
    }
    actseal::verify::merkle::verify_inclusion(
        &leaf_hash(&entry),
        log_index,
        checkpoint.size,
        &log_path,
        &checkpoint.root,
    )
    .map_err(|e| format!("log inclusion: {e}"))?;
    Ok(BatchFacts {
        sequence,
        log_index,
        size,
        first_sequence,
        root,
    })
}

/// Sends `count` Sign requests for `actor` at once; the answers in the order sent.
async fn sign_concurrently(
    lab: &actseal::lab::Lab,
    actor: &str,
    count: usize,
    tag: &str,
) -> Vec<Result<actseal::api::SignResponse, tonic::Status>> {
    let mut tasks = Vec::new();
    for i in 0..count {
        let mut signer = signer(lab).await;
        let (actor, document) = (actor.to_owned(), format!("{tag} {i}"));
        tasks.push(tokio::spawn(async move {
            signer
                .sign(sign_request(&actor, document.as_bytes()))
                .await
                .map(|r| r.into_inner())
        }));
    }
    let mut answers = Vec::new();
    for task in tasks {
        answers.push(task.await.unwrap());
    }
    answers
}

fn set_json(bundle_json: &str, edit: impl FnOnce(&mut serde_json::Value)) -> String {
    let mut value: serde_json::Value = serde_json::from_str(bundle_json).unwrap();
    edit(&mut value);
    value.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_receipts_check_out_each_with_its_own_entry_and_sequence() {
    let lab = batched_lab(false, BATCH_5MS);
    create_key(&lab, ACTOR).await;
    create_key(&lab, SINGLE_ACTOR).await;
    let answers = sign_concurrently(&lab, ACTOR, 12, "batched").await;
    let mut facts = Vec::new();
    for answer in &answers {
        let answer = answer.as_ref().unwrap_or_else(|e| {
            panic!(
                "batched sign: {e:?}\n{}",
                std::fs::read_to_string(lab.daemon_log()).unwrap_or_default()
            )
        });
        let checked = check_batch_bundle(&answer.bundle_json).expect("batch bundle checks out");
        assert_eq!(checked.sequence, answer.sequence);
        assert_eq!(checked.log_index, answer.log_index);
        facts.push(checked);
    }
    // Every caller its own sequence number and log entry; receipts of one batch consecutive.
    let mut sequences: Vec<u64> = facts.iter().map(|f| f.sequence).collect();
    sequences.sort();
    assert_eq!(sequences, (1..=12).collect::<Vec<_>>());
    let mut indices: Vec<u64> = facts.iter().map(|f| f.log_index).collect();
    indices.sort();
    indices.dedup();
    assert_eq!(indices.len(), 12);
    assert!(
        facts.iter().any(|f| f.size > 1),
        "12 requests at once within 30 ms made no batch larger than one: {facts:?}"
    );
    for f in &facts {
        let same: Vec<_> = facts.iter().filter(|g| g.root == f.root).collect();
        assert_eq!(
            same.len() as u64,
            f.size,
            "every leaf of a batch was answered"
        );
        assert!(same.iter().all(|g| g.first_sequence == f.first_sequence));
    }
    assert_eq!(receipt_count(&lab), 12);

    // GetInclusionProof hands out the same bundle, batch member and all, from the store.
    let mut signer = signer(&lab).await;
    for answer in answers.iter().flatten() {
        let tree_size = serde_json::from_str::<serde_json::Value>(&answer.bundle_json).unwrap()
            ["log"]["treeSize"]
            .as_u64()
            .unwrap();
        let stored = signer
            .get_inclusion_proof(actseal::api::GetInclusionProofRequest {
                log_index: answer.log_index,
                tree_size,
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(stored.bundle_json, answer.bundle_json);
    }

    // An actor without a batch rule is signed alone, as before, and verifies as before.
    let single = signer
        .sign(sign_request(SINGLE_ACTOR, DOCUMENT))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        receipt_statement(&single.bundle_json)["predicate"]["mode"],
        "single"
    );
    verify(&lab, &single.bundle_json, Some(DOCUMENT)).expect("single receipt verifies");
    assert!(check_batch_bundle(&single.bundle_json).is_err());
}

/// Forgeries across the two modes, built from real bundles, each refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receipt_of_one_mode_cannot_pass_as_the_other() {
    let lab = batched_lab(false, BATCH_5MS);
    create_key(&lab, ACTOR).await;
    create_key(&lab, SINGLE_ACTOR).await;
    let answers = sign_concurrently(&lab, ACTOR, 6, "forgery").await;
    let batch = answers
        .iter()
        .flatten()
        .find(|a| check_batch_bundle(&a.bundle_json).is_ok_and(|f| f.size > 1))
        .expect("a batch of more than one")
        .bundle_json
        .clone();
    let single = signer(&lab)
        .await
        .sign(sign_request(SINGLE_ACTOR, DOCUMENT))
        .await
        .unwrap()
        .into_inner()
        .bundle_json;

    // The batch statement's signature presented as the receipt's own: the single-mode
    // verifier refuses it (it signs the statement, not the receipt).
    let as_single = set_json(&batch, |b| {
        let sig = b["batch"]["statement"]["signatures"].clone();
        b["receipt"]["signatures"] = sig;
        b.as_object_mut().unwrap().remove("batch");
    });
    assert!(verify(&lab, &as_single, None).is_err());
    // The batch receipt as it is verifies with the crate's verifier, as a batch receipt
    // (FORMAT.md §12; before the verifier knew batches, this was refused).
    let verified = verify(&lab, &batch, None).expect("the batch receipt verifies");
    assert_eq!(verified.mode, "batch");
    // A leaf moved to another index.
    let moved = set_json(&batch, |b| {
        let leaf = b["batch"]["leafIndex"].as_u64().unwrap();
        b["batch"]["leafIndex"] = (leaf ^ 1).into();
    });
    assert!(check_batch_bundle(&moved).is_err());
    assert!(verify(&lab, &moved, None).is_err());
    // A proof of the wrong size: one hash dropped.
    let short = set_json(&batch, |b| {
        b["batch"]["inclusionProof"].as_array_mut().unwrap().pop();
    });
    assert!(check_batch_bundle(&short).is_err());
    assert!(verify(&lab, &short, None).is_err());
    // The batch member of one receipt on another receipt of the same batch.
    let other = answers
        .iter()
        .flatten()
        .map(|a| a.bundle_json.clone())
        .find(|b| {
            *b != batch
                && check_batch_bundle(b).map(|f| f.root).ok()
                    == check_batch_bundle(&batch).map(|f| f.root).ok()
        })
        .expect("a second receipt of the batch");
    let swapped = set_json(&batch, |b| {
        let theirs: serde_json::Value = serde_json::from_str(&other).unwrap();
        b["receipt"] = theirs["receipt"].clone();
    });
    assert!(check_batch_bundle(&swapped).is_err());
    assert!(verify(&lab, &swapped, None).is_err());
    // A single receipt relabelled batch, with a batch member from a real batch of another
    // actor and key.
    let relabelled = set_json(&single, |b| {
        let real: serde_json::Value = serde_json::from_str(&batch).unwrap();
        b["batch"] = real["batch"].clone();
        b["receipt"]["signatures"] = serde_json::json!([]);
    });
    assert!(check_batch_bundle(&relabelled).is_err());
    assert!(verify(&lab, &relabelled, None).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_window_that_never_fills_closes_on_time_and_a_full_one_at_once() {
    let lab = batched_lab(
        false,
        "max_batch_size = 4\n[[ledger.batch]]\nactors = [\"spiffe://acme.example/agents/payments\"]\nwindow_ms = 400\n",
    );
    create_key(&lab, ACTOR).await;
    let mut signer = signer(&lab).await;
    // One request alone: its window closes after 400 ms, not never.
    let started = Instant::now();
    let alone = signer
        .sign(sign_request(ACTOR, DOCUMENT))
        .await
        .expect("a lone request is answered")
        .into_inner();
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(390),
        "answered after {took:?}"
    );
    assert!(
        took < Duration::from_millis(3000),
        "answered after {took:?}"
    );
    assert_eq!(check_batch_bundle(&alone.bundle_json).unwrap().size, 1);

    // Four at once fill the window (max_batch_size 4): it closes without waiting.
    let started = Instant::now();
    let answers = sign_concurrently(&lab, ACTOR, 4, "full").await;
    let took = started.elapsed();
    let sizes: Vec<u64> = answers
        .iter()
        .map(|a| {
            check_batch_bundle(&a.as_ref().unwrap().bundle_json)
                .unwrap()
                .size
        })
        .collect();
    if sizes.iter().all(|&s| s == 4) {
        assert!(
            took < Duration::from_millis(390),
            "a full batch waited {took:?}"
        );
    }
    assert!(sizes.iter().all(|&s| s <= 4), "{sizes:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_lost_mid_batch_answers_every_caller_and_stores_none_of_it() {
    let mut lab = batched_lab(
        true,
        "hardware_timeout_ms = 1500\n[[ledger.batch]]\nactors = [\"spiffe://acme.example/agents/payments\"]\nwindow_ms = 600\n",
    );
    create_key(&lab, ACTOR).await;
    let first = signer(&lab)
        .await
        .sign(sign_request(ACTOR, DOCUMENT))
        .await
        .unwrap()
        .into_inner();
    let before = receipt_count(&lab);

    // Five requests wait in a window; the TPM goes away before it closes.
    let waiting = {
        let lab_socket = lab.socket();
        tokio::spawn(async move {
            let mut tasks = Vec::new();
            for i in 0..5 {
                let channel = actseal::cli::connect_unix(&lab_socket).await.unwrap();
                let mut signer = actseal::api::signer_client::SignerClient::new(channel);
                tasks.push(tokio::spawn(async move {
                    signer
                        .sign(sign_request(ACTOR, format!("lost {i}").as_bytes()))
                        .await
                }));
            }
            let mut out = Vec::new();
            for t in tasks {
                out.push(t.await.unwrap());
            }
            out
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    lab.tpm().unwrap().stop().expect("swtpm stop");
    for answer in waiting.await.unwrap() {
        let status = answer.expect_err("nothing is signed without the TPM");
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    }
    assert_eq!(receipt_count(&lab), before, "none of the batch was stored");

    // The TPM comes back: the chain goes on with no gap.
    lab.tpm().unwrap().start().expect("swtpm start");
    let next = signer(&lab)
        .await
        .sign(sign_request(ACTOR, DOCUMENT))
        .await
        .expect("signs again")
        .into_inner();
    assert_eq!(next.sequence, first.sequence + 1);
    let facts = check_batch_bundle(&next.bundle_json).unwrap();
    assert_eq!(
        receipt_statement(&next.bundle_json)["predicate"]["previousReceipt"]["sha256"],
        *payload_sha256(&first.bundle_json).as_str()
    );
    assert_eq!(facts.sequence, first.sequence + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_tpm_times_out_unavailable_and_order_is_kept() {
    let lab = batched_lab(true, "hardware_timeout_ms = 800\n");
    create_key(&lab, ACTOR).await;
    let mut signer = signer(&lab).await;
    let first = signer
        .sign(sign_request(ACTOR, DOCUMENT))
        .await
        .unwrap()
        .into_inner();
    let before = receipt_count(&lab);
    let pid = std::fs::read_to_string(walk(&lab.dir, "swtpm.pid").expect("swtpm pid file"))
        .expect("swtpm pid");
    let pid: i32 = pid.trim().parse().unwrap();
    create_key(&lab, SINGLE_ACTOR).await;
    // SIGSTOP: swtpm keeps its socket open and never answers, as a wedged TPM does.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    let started = Instant::now();
    let mut other = common::signer(&lab).await;
    let (hung, hung_other, checkpoint) = tokio::join!(
        signer.sign(sign_request(ACTOR, DOCUMENT)),
        other.sign(sign_request(SINGLE_ACTOR, DOCUMENT)),
        async {
            // The daemon answers what needs no hardware meanwhile.
            tokio::time::sleep(Duration::from_millis(100)).await;
            common::signer(&lab)
                .await
                .get_checkpoint(actseal::api::GetCheckpointRequest {})
                .await
        }
    );
    let took = started.elapsed();
    unsafe { libc::kill(pid, libc::SIGCONT) };
    checkpoint.expect("reads are served while the TPM hangs");
    for hung in [hung, hung_other] {
        let status = hung.expect_err("a hung TPM signs nothing");
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    }
    // Both actors answered within a few timeouts (800 ms each), not stalled for good.
    assert!(took < Duration::from_secs(10), "answered after {took:?}");
    assert_eq!(receipt_count(&lab), before);

    // It answers again: the next receipt follows the last stored one, no gap, no fork.
    let mut next = None;
    for _ in 0..20 {
        match signer.sign(sign_request(ACTOR, DOCUMENT)).await {
            Ok(answer) => {
                next = Some(answer.into_inner());
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
    let next = next.expect("signs again once the TPM answers");
    assert_eq!(next.sequence, first.sequence + 1);
    // Right after the second actor's registration: nothing of the hung requests is in the log.
    assert_eq!(next.log_index, first.log_index + 2);
    verify(&lab, &next.bundle_json, Some(DOCUMENT)).expect("verifies");
}

fn walk(dir: &std::path::Path, name: &str) -> Option<std::path::PathBuf> {
    for entry in std::fs::read_dir(dir).ok()? {
        let path = entry.ok()?.path();
        if path.file_name().is_some_and(|n| n == name) {
            return Some(path);
        }
        if path.is_dir()
            && let Some(found) = walk(&path, name)
        {
            return Some(found);
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_batch_load_loses_no_acknowledged_receipt() {
    let mut lab = batched_lab(false, BATCH_5MS);
    create_key(&lab, ACTOR).await;
    let signed = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut clients = Vec::new();
    for c in 0..8 {
        let mut signer = signer(&lab).await;
        let signed = signed.clone();
        clients.push(tokio::spawn(async move {
            let mut acknowledged = Vec::new();
            for i in 0.. {
                let request = sign_request(ACTOR, format!("client {c} action {i}").as_bytes());
                match signer.sign(request).await {
                    Ok(response) => {
                        acknowledged.push(response.into_inner());
                        signed.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    }
                    Err(_) => break,
                }
            }
            acknowledged
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while signed.load(std::sync::atomic::Ordering::SeqCst) <= 40 {
        assert!(Instant::now() < deadline, "too few signs in 60 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    lab.kill_daemon().unwrap();
    let mut acknowledged = Vec::new();
    for client in clients {
        acknowledged.extend(client.await.unwrap());
    }
    assert!(
        acknowledged
            .iter()
            .any(|a| { check_batch_bundle(&a.bundle_json).is_ok_and(|f| f.size > 1) })
    );

    lab.start_daemon().unwrap();
    let mut signer = common::signer(&lab).await;
    for response in &acknowledged {
        check_batch_bundle(&response.bundle_json).expect("acknowledged bundle checks out");
        let tree_size = serde_json::from_str::<serde_json::Value>(&response.bundle_json).unwrap()
            ["log"]["treeSize"]
            .as_u64()
            .unwrap();
        let stored = signer
            .get_inclusion_proof(actseal::api::GetInclusionProofRequest {
                log_index: response.log_index,
                tree_size,
            })
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "acknowledged receipt {} is missing: {e}",
                    response.log_index
                )
            })
            .into_inner();
        assert_eq!(stored.bundle_json, response.bundle_json);
    }
    // The chain goes on from what is on disk: no gap, no fork.
    let stored = receipt_count(&lab);
    let next = signer
        .sign(sign_request(ACTOR, DOCUMENT))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(next.sequence, stored + 1);
    assert_eq!(next.log_index, stored + 1);
    check_batch_bundle(&next.bundle_json).unwrap();
}

/// A figure, not a check (run with `cargo test --release --test batch_mode -- --ignored
/// soak`): batch-mode receipts a second on swtpm with 32 clients, each waiting for its
/// answer, and their p50/p99 latency (the window is 5 ms).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn soak_batch_throughput_on_swtpm() {
    let lab = batched_lab(
        true,
        "[[ledger.batch]]\nactors = [\"spiffe://acme.example/agents/payments\"]\nwindow_ms = 5\n",
    );
    create_key(&lab, ACTOR).await;
    let clients = 32;
    // Requests in flight on each client's connection (HTTP/2 streams), as a streaming
    // client keeps them: ACTSEAL_SOAK_IN_FLIGHT, default 1.
    let in_flight: usize = std::env::var("ACTSEAL_SOAK_IN_FLIGHT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let duration = Duration::from_secs(5);
    let started = Instant::now();
    let mut tasks = Vec::new();
    let mut channels = Vec::new();
    for _ in 0..clients {
        channels.push(channel(&lab).await);
    }
    for c in 0..clients * in_flight {
        let mut signer =
            actseal::api::signer_client::SignerClient::new(channels[c % clients].clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut i = 0;
            while started.elapsed() < duration {
                let sent = Instant::now();
                let request = sign_request(ACTOR, format!("soak {c} {i}").as_bytes());
                signer.sign(request).await.expect("sign");
                latencies.push(sent.elapsed());
                i += 1;
            }
            latencies
        }));
    }
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.unwrap());
    }
    let rate = latencies.len() as f64 / started.elapsed().as_secs_f64();
    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() as f64 - 1.0) * q) as usize];
    println!(
        "batch mode on swtpm, {clients} clients x {in_flight} in flight, window 5 ms: {rate:.0} receipts/s (p50 {:?}, p99 {:?})",
        at(0.5),
        at(0.99)
    );
}

/// Sends the requests at once (each on its own connection); the answers in the order sent.
async fn sign_all_at_once(
    lab: &actseal::lab::Lab,
    requests: Vec<actseal::api::SignRequest>,
) -> Vec<actseal::api::SignResponse> {
    let mut tasks = Vec::new();
    for request in requests {
        let mut signer = signer(lab).await;
        tasks.push(tokio::spawn(async move { signer.sign(request).await }));
    }
    let mut answers = Vec::new();
    for task in tasks {
        answers.push(task.await.unwrap().expect("signed").into_inner());
    }
    answers
}

/// Batch windows per policy rule (`batch_window_ms`): the rule that allows an action decides
/// its mode over the actor's `[[ledger.batch]]` window, `0` making single receipts. Requests
/// of one actor under three rules (a rule window, a rule's 0, the actor's window) arrive
/// interleaved, so one actor's chain mixes modes: every receipt still checks out (batch
/// members by this file's own code, all by the verifier), its mode is the one its rule gives,
/// and sequence numbers, previous-receipt digests and log indices form one unbroken chain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_rules_batch_window_decides_the_mode_and_the_mixed_chain_stays_whole() {
    let mut lab = new_lab();
    let uid = own_uid();
    write_policy(
        &lab,
        &format!(
            "[[sign]]\ncallers = [\"uid:{uid}\"]\nactors = [\"{ACTOR}\"]\nactions = [\"bulk.*\"]\n\
             batch_window_ms = 40\n\n\
             [[sign]]\ncallers = [\"uid:{uid}\"]\nactors = [\"{ACTOR}\"]\nactions = [\"urgent.*\"]\n\
             batch_window_ms = 0\n\n\
             [[sign]]\ncallers = [\"uid:{uid}\"]\nactors = [\"*\"]\nactions = [\"*\"]\n\n\
             [[admin]]\ncallers = [\"uid:{uid}\"]\nactors = [\"*\"]\n"
        ),
    );
    configure_ledger(
        &lab,
        &format!("[[ledger.batch]]\nactors = [\"{ACTOR}\"]\nwindow_ms = 40\n"),
    );
    lab.start_daemon().expect("daemon start");
    create_key(&lab, ACTOR).await;
    let mut all = Vec::new();
    for round in 0..3 {
        let mut requests = Vec::new();
        let mut kinds = Vec::new();
        for i in 0..12 {
            let kind = ["bulk.export", "urgent.page", "payment.initiate"][i % 3];
            let mut request = sign_request(ACTOR, format!("{kind} {round} {i}").as_bytes());
            request.action_type = kind.into();
            requests.push(request);
            kinds.push(kind);
        }
        for (kind, answer) in kinds
            .into_iter()
            .zip(sign_all_at_once(&lab, requests).await)
        {
            let mode = receipt_statement(&answer.bundle_json)["predicate"]["mode"].clone();
            let batched = check_batch_bundle(&answer.bundle_json);
            if kind == "urgent.page" {
                assert_eq!(mode, "single", "a rule's batch_window_ms = 0 signs alone");
                assert!(batched.is_err());
            } else {
                assert_eq!(
                    mode, "batch",
                    "{kind} is batched (its rule, or the actor's window)"
                );
                batched.expect("batch bundle checks out");
            }
            verify(&lab, &answer.bundle_json, None).expect("every receipt verifies");
            all.push(answer);
        }
    }
    assert!(
        all.iter()
            .any(|a| check_batch_bundle(&a.bundle_json).is_ok_and(|f| f.size > 1)),
        "no batch larger than one receipt was made"
    );
    // One chain: sequences 1..=36 in log order, each naming the one before.
    all.sort_by_key(|a| a.sequence);
    let sequences: Vec<u64> = all.iter().map(|a| a.sequence).collect();
    assert_eq!(sequences, (1..=36).collect::<Vec<_>>());
    for pair in all.windows(2) {
        assert!(
            pair[0].log_index < pair[1].log_index,
            "log order follows sequence"
        );
        let previous = &receipt_statement(&pair[1].bundle_json)["predicate"]["previousReceipt"];
        assert_eq!(
            previous["sha256"],
            payload_sha256(&pair[0].bundle_json),
            "receipt {} names receipt {} as its previous one",
            pair[1].sequence,
            pair[0].sequence
        );
    }
    assert!(receipt_statement(&all[0].bundle_json)["predicate"]["previousReceipt"].is_null());
    assert_eq!(receipt_count(&lab), 36);
}
