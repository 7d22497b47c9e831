//! `StreamSigner.SignStream` against a real daemon on SoftHSM: many actions over one stream,
//! each answered once with its correlation id (a verifiable bundle, or that action's error
//! while the others succeed), and a hostile client that pushes far past the per-caller
//! in-flight bound gets RESOURCE_EXHAUSTED for what is over it, with nothing of it stored.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::collections::BTreeMap;

use actseal::api::{
    SignStreamRequest, SignStreamResponse, sign_stream_response::Result as Answer,
    stream_signer_client::StreamSignerClient,
};
use actseal::verify::{BundleVerifier, TrustAnchors};
use common::*;
use tokio_stream::StreamExt;

const OTHER: &str = "spiffe://acme.example/agents/payments-2";

async fn client(lab: &actseal::lab::Lab) -> StreamSignerClient<tonic::transport::Channel> {
    StreamSignerClient::new(channel(lab).await)
}

/// Sends all of `requests` at once and collects every answer, by correlation id (each id must
/// come back exactly once).
async fn burst(
    lab: &actseal::lab::Lab,
    requests: Vec<SignStreamRequest>,
) -> BTreeMap<u64, SignStreamResponse> {
    let expected = requests.len();
    let mut answers = client(lab)
        .await
        .sign_stream(tokio_stream::iter(requests))
        .await
        .expect("the stream opens")
        .into_inner();
    let mut by_id = BTreeMap::new();
    while let Some(answer) = answers.next().await {
        let answer = answer.expect("the stream carries answers, not a stream error");
        let id = answer.correlation_id;
        assert!(by_id.insert(id, answer).is_none(), "id {id} answered twice");
    }
    assert_eq!(by_id.len(), expected, "every action is answered");
    by_id
}

fn document(i: u64) -> Vec<u8> {
    format!("{{\"streamed action\":{i}}}").into_bytes()
}

fn action(id: u64, actor: &str) -> SignStreamRequest {
    SignStreamRequest {
        correlation_id: id,
        request: Some(sign_request(actor, &document(id))),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_actions_mid_stream_get_their_own_errors_while_the_others_are_signed() {
    let lab = started_lab();
    create_key(&lab, ACTOR).await;
    create_key(&lab, OTHER).await;
    let mut requests = Vec::new();
    for id in 1..=48u64 {
        let mut r = action(id * 10, if id % 2 == 0 { ACTOR } else { OTHER });
        match id % 8 {
            3 => r.request.as_mut().unwrap().actor = "not a spiffe id".into(),
            5 => r.request = None,
            7 => r.request.as_mut().unwrap().actor = "spiffe://acme.example/agents/unknown".into(),
            _ => {}
        }
        requests.push(r);
    }
    // A retry inside the stream: same request id and content, another correlation id.
    let mut first = action(1000, ACTOR);
    first.request.as_mut().unwrap().request_id = "stream-retry-1".into();
    let mut retry = first.clone();
    retry.correlation_id = 1001;
    requests.extend([first, retry]);

    let answers = burst(&lab, requests).await;
    let anchors = TrustAnchors::from_pem(&std::fs::read(lab.anchor()).unwrap()).unwrap();
    let mut verifier = BundleVerifier::new(&anchors);
    let mut sequences: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    let mut bundles = BTreeMap::new();
    for (id, answer) in &answers {
        let bad = id < &1000 && matches!((id / 10) % 8, 3 | 5 | 7);
        match answer.result.as_ref().expect("an answer has a result") {
            Answer::Signed(signed) => {
                assert!(!bad, "action {id} should have been refused");
                // The retry carries the first request, document and all.
                let doc = document(if *id == 1001 { 1000 } else { *id });
                let v = verifier
                    .verify(signed.bundle_json.as_bytes(), Some(&doc))
                    .unwrap_or_else(|e| panic!("action {id}: {e}"));
                assert_eq!(v.sequence, signed.sequence);
                sequences.entry(v.actor).or_default().push(v.sequence);
                bundles.insert(*id, signed.bundle_json.clone());
            }
            Answer::Error(e) => {
                assert!(bad, "action {id} refused: {e:?}");
                let want = match (id / 10) % 8 {
                    7 => [tonic::Code::PermissionDenied, tonic::Code::NotFound],
                    _ => [tonic::Code::InvalidArgument, tonic::Code::InvalidArgument],
                };
                assert!(
                    want.contains(&tonic::Code::from(e.code)),
                    "action {id}: {e:?}"
                );
                assert!(!e.message.is_empty());
            }
        }
    }
    // The retry is the first answer byte for byte, signed once.
    assert_eq!(bundles[&1000], bundles[&1001]);
    for (actor, mut seq) in sequences {
        seq.sort_unstable();
        seq.dedup();
        assert_eq!(
            seq,
            (1..=seq.len() as u64).collect::<Vec<_>>(),
            "{actor}: no gap"
        );
    }
    // 48 actions, 18 bad, the retry once: 31 receipts.
    assert_eq!(receipt_count(&lab), 31);
    let audit = export_and_audit(&lab, "stream-export.json");
    assert!(audit.contains("31 receipts"), "{audit}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_past_its_in_flight_bound_is_refused_per_action_and_others_go_on() {
    let mut lab = new_lab();
    configure_server(&lab, "limits = { max_stream_actions_in_flight = 2 }");
    lab.start_daemon().unwrap();
    create_key(&lab, ACTOR).await;

    // Two streams of the same caller, 150 actions each, sent without waiting for answers.
    let (a, b) = tokio::join!(
        burst(&lab, (1..=150).map(|i| action(i, ACTOR)).collect()),
        burst(&lab, (1001..=1150).map(|i| action(i, ACTOR)).collect()),
    );
    let (mut signed, mut refused) = (0u64, 0u64);
    for (id, answer) in a.iter().chain(&b) {
        match answer.result.as_ref().unwrap() {
            Answer::Signed(s) => {
                signed += 1;
                verify(&lab, &s.bundle_json, Some(&document(*id))).unwrap();
            }
            Answer::Error(e) => {
                assert_eq!(
                    tonic::Code::from(e.code),
                    tonic::Code::ResourceExhausted,
                    "{e:?}"
                );
                assert!(e.message.contains("2 streamed actions"), "{e:?}");
                refused += 1;
            }
        }
    }
    assert!(signed >= 2, "signed {signed}");
    assert!(
        refused >= 150,
        "the burst went past the bound: {refused} refused of 300"
    );
    // Nothing of a refused action was signed or stored.
    assert_eq!(receipt_count(&lab), signed);

    // A client that keeps within the bound is never refused, on the same daemon.
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let mut answers = client(&lab)
        .await
        .sign_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let mut next = 5000u64;
    for _ in 0..2 {
        tx.send(action(next, ACTOR)).await.unwrap();
        next += 1;
    }
    let mut done = 0;
    while done < 40 {
        let answer = answers.next().await.unwrap().unwrap();
        assert!(
            matches!(answer.result, Some(Answer::Signed(_))),
            "a client within the bound was refused: {answer:?}"
        );
        done += 1;
        if next < 5040 {
            tx.send(action(next, ACTOR)).await.unwrap();
            next += 1;
        }
    }
    drop(tx);
    assert!(
        answers.next().await.is_none(),
        "the stream ends after the last answer"
    );
    assert_eq!(receipt_count(&lab), signed + 40);
    // And plain Sign is untouched.
    signer(&lab)
        .await
        .sign(sign_request(ACTOR, b"after"))
        .await
        .unwrap();
}

/// End to end: the daemon in batch mode (its own builder, src/proof/batch.rs) signs streamed
/// actions as batches; every bundle verifies with the crate's verifier and with the openssl
/// script as a batch receipt, the batches are whole and consecutive, and the exported log
/// audits clean, batch seals and all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_batch_bundles_verify_offline_and_audit() {
    let mut lab = new_lab();
    let config = std::fs::read_to_string(lab.config()).unwrap();
    std::fs::write(
        lab.config(),
        format!("{config}\n[[ledger.batch]]\nactors = [\"{ACTOR}\"]\nwindow_ms = 20\n"),
    )
    .unwrap();
    lab.start_daemon().unwrap();
    create_key(&lab, ACTOR).await;
    create_key(&lab, OTHER).await;
    // 60 actions: within the default in-flight bound of 64.
    let mut requests: Vec<_> = (1..=50).map(|i| action(i, ACTOR)).collect();
    requests.extend((51..=60).map(|i| action(i, OTHER)));
    let answers = burst(&lab, requests).await;
    let anchors = TrustAnchors::from_pem(&std::fs::read(lab.anchor()).unwrap()).unwrap();
    let mut verifier = BundleVerifier::new(&anchors);
    let mut sizes = BTreeMap::new();
    let mut checked_by_script = 0;
    for (id, answer) in &answers {
        let Some(Answer::Signed(signed)) = &answer.result else {
            panic!("action {id}: {answer:?}");
        };
        let v = verifier
            .verify(signed.bundle_json.as_bytes(), Some(&document(*id)))
            .unwrap_or_else(|e| panic!("action {id}: {e}"));
        if v.actor == ACTOR {
            assert_eq!(v.mode, "batch", "action {id}");
            let (leaf, size) = v.batch.unwrap();
            assert_eq!(v.sequence, {
                let b: serde_json::Value = serde_json::from_str(&signed.bundle_json).unwrap();
                let statement = receipt_statement(&signed.bundle_json);
                assert_eq!(b["batch"]["leafIndex"], serde_json::json!(leaf));
                statement["predicate"]["sequence"].as_u64().unwrap()
            });
            sizes.insert(v.sequence - leaf, size);
            if checked_by_script < 3 {
                let dir = tempfile::tempdir().unwrap();
                common::openssl::verify_with_openssl(
                    &signed.bundle_json,
                    &lab.anchor(),
                    Some(&document(*id)),
                    dir.path(),
                )
                .unwrap_or_else(|e| panic!("the openssl script refused action {id}: {e}"));
                checked_by_script += 1;
            }
        } else {
            assert_eq!((v.mode.as_str(), v.batch), ("single", None), "action {id}");
        }
    }
    // The batches tile sequences 1..=50 without a gap.
    let mut next = 1;
    for (first, size) in &sizes {
        assert_eq!(*first, next, "batches {sizes:?}");
        next += size;
    }
    assert_eq!(next, 51, "batches {sizes:?}");
    assert!(
        sizes.len() < 50,
        "some batch held more than one receipt: {sizes:?}"
    );
    let audit = export_and_audit(&lab, "batch-export.json");
    assert!(audit.contains("60 receipts"), "{audit}");
}
