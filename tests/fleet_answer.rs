//! The fleet's answer path (issue 12) against the real thing: one PostgreSQL server and three
//! daemons with their own SoftHSM tokens. A node builds each answer from what it signed and
//! the integrator's proof (`bundles::proven_bundle_json`); a retry by request id and
//! `GetInclusionProof` build it from the store (`bundles::stored`). They must agree byte for
//! byte, for single and batch receipts, for a rotated key's lineage, on every node.

mod common;

use common::fleet::{FLEET, actor, create_actors, document, started};

use std::time::Duration;

use actseal::{
    api::{GetInclusionProofRequest, RotateKeyRequest},
    lab_fleet::Fleet,
    verify::{TrustAnchors, verify_bundle},
};

const BATCH: &str = "[[ledger.batch]]\nactors = [\"*\"]\nwindow_ms = 5";

/// A first answer: its request, actor, node and bundle.
struct Answered {
    node: usize,
    actor: String,
    request_id: String,
    bundle: String,
    log_index: u64,
}

/// Three nodes started (node 2 in batch mode), two actors each; `None` where PostgreSQL is
/// missing (a failure under CI=true).
async fn started_fleet() -> Option<(Fleet, tempfile::TempDir)> {
    let (mut fleet, dir) = started("actseal-fleet-answer-", FLEET, |fleet| {
        fleet.nodes[2].append_config(BATCH).expect("batch mode");
    })
    .await?;
    create_actors(&mut fleet, 2).await;
    Some((fleet, dir))
}

/// `workers` concurrent callers per actor of every node, `count` Signs each, with request ids.
async fn load(fleet: &Fleet, workers: usize, count: usize, tag: &str) -> Vec<Answered> {
    let mut tasks = Vec::new();
    for (n, node) in fleet.nodes.iter().enumerate() {
        for a in 0..2 {
            for w in 0..workers {
                let socket = node.socket();
                let tag = tag.to_owned();
                tasks.push(tokio::spawn(async move {
                    let channel = actseal::cli::connect_unix(&socket).await.unwrap();
                    let mut signer = actseal::api::signer_client::SignerClient::new(channel);
                    let mut answered = Vec::new();
                    for k in 0..count {
                        let request_id = format!("{tag}-{n}-{a}-{w}-{k}");
                        let mut request =
                            common::sign_request(&actor(n, a), &document(&request_id));
                        request.request_id = request_id.clone();
                        let reply = signer
                            .sign(request)
                            .await
                            .unwrap_or_else(|e| panic!("{request_id}: {e}"))
                            .into_inner();
                        answered.push(Answered {
                            node: n,
                            actor: actor(n, a),
                            request_id,
                            bundle: reply.bundle_json,
                            log_index: reply.log_index,
                        });
                    }
                    answered
                }));
            }
        }
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.expect("load task"));
    }
    all
}

fn bundle_field(bundle: &str, pointer: &str) -> serde_json::Value {
    let value: serde_json::Value = serde_json::from_str(bundle).unwrap();
    value.pointer(pointer).cloned().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn answers_built_from_the_nodes_parts_are_the_stored_bundles_byte_for_byte() {
    let Some((fleet, _dir)) = started_fleet().await else {
        return;
    };
    // A rotated key first: its bundles carry a lineage with a predecessor and a rotation.
    let rotated = actor(0, 1);
    let v2 = common::admin(&fleet.nodes[0])
        .await
        .rotate_key(RotateKeyRequest {
            actor: rotated.clone(),
        })
        .await
        .expect("rotation on a fleet node")
        .into_inner();
    assert_eq!(v2.version, 2);
    let answered = load(&fleet, 3, 8, "first").await;
    assert_eq!(answered.len(), 3 * 2 * 3 * 8);
    let anchors = TrustAnchors::from_pem(&std::fs::read(fleet.anchor()).unwrap()).unwrap();
    let mut batch_receipts = 0;
    for a in &answered {
        verify_bundle(
            a.bundle.as_bytes(),
            &anchors,
            Some(&document(&a.request_id)),
        )
        .unwrap_or_else(|e| panic!("{}: bundle does not verify: {e}", a.request_id));
        assert_eq!(
            bundle_field(&a.bundle, "/log/index"),
            serde_json::json!(a.log_index),
            "{}: the answer's index is the proven one",
            a.request_id
        );
        if a.node == 2 {
            assert!(
                !bundle_field(&a.bundle, "/batch").is_null(),
                "{}: node 2 signs in batch mode",
                a.request_id
            );
            batch_receipts += 1;
        }
        if a.actor == rotated {
            assert_eq!(
                bundle_field(&a.bundle, "/lineage/rotations")
                    .as_array()
                    .map(Vec::len),
                Some(1),
                "{}: the rotated key's lineage",
                a.request_id
            );
        }
    }
    assert_eq!(batch_receipts, 2 * 3 * 8);
    // A retry by request id (the store's path, on the node that signed) and the inclusion
    // proof at the receipt's own tree size (the store's path, on another node) give the
    // first answer's bytes.
    for a in &answered {
        let mut again = common::sign_request(&a.actor, &document(&a.request_id));
        again.request_id = a.request_id.clone();
        let retried = common::signer(&fleet.nodes[a.node])
            .await
            .sign(again)
            .await
            .unwrap_or_else(|e| panic!("{}: retry: {e}", a.request_id))
            .into_inner();
        assert_eq!(
            retried.bundle_json, a.bundle,
            "{}: the retry's bundle differs from the first answer",
            a.request_id
        );
        assert_eq!(retried.log_index, a.log_index);
        let tree_size = bundle_field(&a.bundle, "/log/treeSize").as_u64().unwrap();
        let proof = common::signer(&fleet.nodes[(a.node + 1) % 3])
            .await
            .get_inclusion_proof(GetInclusionProofRequest {
                log_index: a.log_index,
                tree_size,
            })
            .await
            .unwrap_or_else(|e| panic!("{}: inclusion proof: {e}", a.request_id))
            .into_inner();
        assert_eq!(
            proof.bundle_json, a.bundle,
            "{}: another node's stored bundle differs from the first answer",
            a.request_id
        );
    }
    // Every first answer came from the node's parts: none fell back to the store.
    for node in &fleet.nodes {
        let log = std::fs::read_to_string(node.daemon_log()).unwrap();
        assert!(!log.contains("not built from its parts"), "{log}");
        assert!(!log.contains("cannot answer a fleet batch"), "{log}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_retry_while_queued_gets_the_same_bytes_as_the_first_answer() {
    let Some((fleet, _dir)) = started_fleet().await else {
        return;
    };
    // The same request sent twice at once on one node: one is signed, the other follows it
    // (in its batch or while it is queued); both get the same bytes, and a later retry too.
    for k in 0..10 {
        let request_id = format!("twice-{k}");
        let node = k % 3;
        let mut request = common::sign_request(&actor(node, 0), &document(&request_id));
        request.request_id = request_id.clone();
        let mut one = common::signer(&fleet.nodes[node]).await;
        let mut two = common::signer(&fleet.nodes[node]).await;
        let (first, second) = tokio::join!(one.sign(request.clone()), two.sign(request.clone()));
        let first = first.expect("first").into_inner();
        let second = second.expect("second").into_inner();
        assert_eq!(first.bundle_json, second.bundle_json, "{request_id}");
        tokio::time::sleep(Duration::from_millis(10)).await;
        let later = one.sign(request).await.expect("later").into_inner();
        assert_eq!(later.bundle_json, first.bundle_json, "{request_id}");
    }
}
