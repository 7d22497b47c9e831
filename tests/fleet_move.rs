//! Moving an actor between fleet nodes (issue 12: "an actor belongs to exactly one node at a
//! time") against the real thing: one PostgreSQL server, three daemons with their own SoftHSM
//! tokens. The actor signs on node 0 under load, is accepted by node 1 and handed over by
//! node 0 (`actseal actor accept` / `hand-over`), then signs on node 1; its sequence and
//! receipt chain run on across the move, every bundle verifies offline, the log audits.

mod common;

use common::fleet::{FLEET, document, started};

use std::{
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use actseal::{
    api::{
        AcceptActorRequest, HandOverActorRequest, SignRequest, SignResponse,
        key_admin_client::KeyAdminClient, signer_client::SignerClient,
    },
    lab_fleet::Fleet,
    verify::{TrustAnchors, verify_bundle},
};
use tempfile::TempDir;
use tonic::{Code, transport::Channel};

const MOVER: &str = "spiffe://acme.example/moving/agent";

/// Three nodes started; `None` where PostgreSQL is missing (a failure under CI=true).
async fn started_fleet() -> Option<(Fleet, TempDir)> {
    started_fleet_with(FLEET).await
}

/// [`started_fleet`] with `[fleet]` settings `config`.
async fn started_fleet_with(config: &'static str) -> Option<(Fleet, TempDir)> {
    started("actseal-fleet-move-", config, |_| {}).await
}

/// A signed action as its caller saw it.
struct Acked {
    request_id: String,
    node: usize,
    /// The key version it must be signed with.
    version: u64,
    bundle: String,
}

fn request(actor: &str, request_id: &str) -> SignRequest {
    let mut request = common::sign_request(actor, &document(request_id));
    request.request_id = request_id.to_owned();
    request
}

async fn signer(fleet: &Fleet, node: usize) -> SignerClient<Channel> {
    common::signer(&fleet.nodes[node]).await
}

/// Signs `request_id` as `actor` on `node`: its answer.
async fn sign_on(
    fleet: &Fleet,
    node: usize,
    actor: &str,
    request_id: &str,
) -> Result<SignResponse, tonic::Status> {
    signer(fleet, node)
        .await
        .sign(request(actor, request_id))
        .await
        .map(tonic::Response::into_inner)
}

/// Signs as `actor` on node `node` and asserts the refusal: FAILED_PRECONDITION, with a
/// message that contains `says` (`""`: any message).
async fn refused_on(fleet: &Fleet, node: usize, actor: &str, request_id: &str, says: &str) {
    match sign_on(fleet, node, actor, request_id).await {
        Ok(_) => panic!("{request_id} on node-{node} was signed, not refused"),
        Err(refused) => {
            assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
            assert!(refused.message().contains(says), "{refused:?}");
        }
    }
}

async fn admin(fleet: &Fleet, node: usize) -> KeyAdminClient<Channel> {
    common::admin(&fleet.nodes[node]).await
}

/// The actor's key made on node 0, a first receipt signed there (`request_id`), and the
/// actor accepted by node 1: how the single-handover tests begin.
async fn signed_and_accepted(fleet: &Fleet, actor: &str, request_id: &str) -> SignResponse {
    common::create_key(&fleet.nodes[0], actor).await;
    let first = sign_on(fleet, 0, actor, request_id)
        .await
        .expect("signs on its node");
    admin(fleet, 1)
        .await
        .accept_actor(AcceptActorRequest {
            actor: actor.into(),
        })
        .await
        .expect("accept");
    first
}

/// Signs as [`MOVER`] on node 0 until it is refused there as handed over to node 1, then on
/// node 1, until `stop` (and at least `after` signed on node 1).
fn mover_load(
    fleet: &Fleet,
    stop: Arc<AtomicBool>,
    after: usize,
) -> tokio::task::JoinHandle<Vec<Acked>> {
    let sockets = [fleet.nodes[0].socket(), fleet.nodes[1].socket()];
    tokio::spawn(async move {
        let mut acked = Vec::new();
        let mut node = 0;
        let mut on_target = 0;
        let deadline = Instant::now() + Duration::from_secs(120);
        for k in 0.. {
            if (stop.load(Ordering::SeqCst) && on_target >= after) || Instant::now() > deadline {
                break;
            }
            let request_id = format!("mover-{k}");
            loop {
                let channel = actseal::cli::connect_unix(&sockets[node]).await.unwrap();
                match SignerClient::new(channel)
                    .sign(request(MOVER, &request_id))
                    .await
                {
                    Ok(r) => {
                        acked.push(Acked {
                            request_id: request_id.clone(),
                            node,
                            version: 1 + node as u64,
                            bundle: r.into_inner().bundle_json,
                        });
                        on_target += node;
                        break;
                    }
                    Err(s) if node == 0 && s.code() == Code::FailedPrecondition => {
                        assert!(s.message().contains("node-1"), "names the target: {s:?}");
                        node = 1;
                    }
                    // Handed over, not yet integrated: the target waits for the log.
                    Err(s)
                        if node == 1
                            && s.code() == Code::FailedPrecondition
                            && s.message().contains("node-0") =>
                    {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    Err(s) if s.code() == Code::Unavailable => {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    Err(s) => panic!("{request_id} on node-{node}: {s:?}"),
                }
            }
        }
        acked
    })
}

/// Every bundle verifies offline under the one anchor; the mover's sequence is 1, 2, … with
/// no gap, each receipt's `previousReceipt` is the one before it, and each is signed with the
/// version expected, its lineage carrying every rotation before it.
fn check_chain(fleet: &Fleet, acked: &[Acked]) {
    let anchors = TrustAnchors::from_pem(&std::fs::read(fleet.anchor()).unwrap()).unwrap();
    let mut previous: Option<String> = None;
    for (i, a) in acked.iter().enumerate() {
        let verified = verify_bundle(
            a.bundle.as_bytes(),
            &anchors,
            Some(&document(&a.request_id)),
        )
        .unwrap_or_else(|e| panic!("{}: {e}", a.request_id));
        assert_eq!(verified.key_version, a.version, "{}", a.request_id);
        let statement = common::receipt_statement(&a.bundle);
        assert_eq!(
            statement["predicate"]["sequence"].as_u64(),
            Some(i as u64 + 1)
        );
        let link = statement["predicate"]["previousReceipt"]["sha256"]
            .as_str()
            .map(str::to_owned);
        assert_eq!(link, previous, "{}: the chain is broken", a.request_id);
        previous = Some(common::payload_sha256(&a.bundle));
        let bundle: serde_json::Value = serde_json::from_str(&a.bundle).unwrap();
        let rotations = bundle["lineage"]["rotations"]
            .as_array()
            .map_or(0, Vec::len);
        assert_eq!(rotations as u64, a.version - 1, "{}", a.request_id);
    }
}

/// A query of the log's database (a blocking client, off the async workers).
fn query_i64(fleet: &Fleet, sql: &str, actor: &str) -> i64 {
    tokio::task::block_in_place(|| {
        fleet
            .client()
            .unwrap()
            .query_one(sql, &[&actor])
            .unwrap()
            .get(0)
    })
}

/// The actor's rows in the shared queue.
fn queued(fleet: &Fleet, actor: &str) -> i64 {
    query_i64(
        fleet,
        "SELECT COUNT(*) FROM fleet_queue WHERE actor = $1",
        actor,
    )
}

/// The actor's entries in the log, of one `kind` or (`None`) of every kind.
fn logged(fleet: &Fleet, actor: &str, kind: Option<&str>) -> i64 {
    tokio::task::block_in_place(|| {
        fleet
            .client()
            .unwrap()
            .query_one(
                "SELECT COUNT(*) FROM log_entries WHERE actor = $1 AND ($2::text IS NULL OR kind = $2)",
                &[&actor, &kind],
            )
            .unwrap()
            .get(0)
    })
}

fn owner(fleet: &Fleet, actor: &str) -> String {
    tokio::task::block_in_place(|| {
        fleet
            .client()
            .unwrap()
            .query_one("SELECT node FROM fleet_actors WHERE actor = $1", &[&actor])
            .unwrap()
            .get(0)
    })
}

fn cli(fleet: &Fleet, node: usize, args: &[&str]) -> String {
    let lab = &fleet.nodes[node];
    let socket = lab.socket().display().to_string();
    let mut all = args.to_vec();
    all.extend(["--socket", &socket]);
    lab.run_ok(&all).expect("actseal actor …")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_actor_moves_between_nodes_under_load_with_its_chain_whole() {
    let Some((mut fleet, _dir)) = started_fleet().await else {
        return;
    };
    common::create_key(&fleet.nodes[0], MOVER).await;
    // Not accepted anywhere yet: a hand-over is refused, nothing changes.
    let refused = admin(&fleet, 0)
        .await
        .hand_over_actor(HandOverActorRequest {
            actor: MOVER.into(),
            to: "node-1".into(),
        })
        .await
        .expect_err("a hand-over to a node that did not accept");
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    let stop = Arc::new(AtomicBool::new(false));
    let load = mover_load(&fleet, Arc::clone(&stop), 20);
    // Wait for some receipts on node 0.
    while query_i64(
        &fleet,
        "SELECT COUNT(*) FROM receipts WHERE actor = $1",
        MOVER,
    ) < 10
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Signing for it on the target before the handover: refused (node 0's actor).
    refused_on(&fleet, 1, MOVER, "early", "").await;
    let accepted =
        tokio::task::block_in_place(|| cli(&fleet, 1, &["actor", "accept", "--actor", MOVER]));
    assert!(accepted.contains(" v2 "), "{accepted}");
    // A second accept, on a third node, while the first is pending: refused.
    let second = admin(&fleet, 2)
        .await
        .accept_actor(AcceptActorRequest {
            actor: MOVER.into(),
        })
        .await
        .expect_err("a second accept while one is pending");
    assert_eq!(second.code(), Code::FailedPrecondition, "{second:?}");
    assert!(second.message().contains("node-1"), "{second:?}");
    // A hand-over to the node that did not accept: refused.
    let wrong = admin(&fleet, 0)
        .await
        .hand_over_actor(HandOverActorRequest {
            actor: MOVER.into(),
            to: "node-2".into(),
        })
        .await
        .expect_err("a hand-over to a node that did not accept");
    assert_eq!(wrong.code(), Code::FailedPrecondition, "{wrong:?}");
    assert_eq!(owner(&fleet, MOVER), "node-0");
    let handed = tokio::task::block_in_place(|| {
        cli(
            &fleet,
            0,
            &["actor", "hand-over", "--actor", MOVER, "--to", "node-1"],
        )
    });
    assert!(handed.contains(" v2 "), "{handed}");
    assert_eq!(owner(&fleet, MOVER), "node-1");
    assert_eq!(
        query_i64(
            &fleet,
            "SELECT COUNT(*) FROM fleet_handovers WHERE actor = $1",
            MOVER
        ),
        0
    );
    // The old node signs nothing more for it, and says where to sign.
    refused_on(&fleet, 0, MOVER, "after", "node-1").await;
    stop.store(true, Ordering::SeqCst);
    let acked = load.await.unwrap();
    assert!(
        acked.iter().any(|a| a.node == 0) && acked.iter().filter(|a| a.node == 1).count() >= 20
    );
    let mut acked = acked;
    move_back_and_on(&fleet, &mut acked).await;
    // Restarted, the old node still refuses it and the new one signs on from the log.
    tokio::task::block_in_place(|| {
        for node in [0, 2] {
            fleet.nodes[node].stop_daemon().unwrap();
            fleet.nodes[node]
                .start_daemon_within(Duration::from_secs(90), |_| {})
                .unwrap();
        }
    });
    // The old node, restarted, still refuses it.
    refused_on(&fleet, 0, MOVER, "old-node-restarted", "node-2").await;
    acked.push(sign_one(&fleet, 2, 5, "new-node-restarted").await);
    check_chain(&fleet, &acked);
    let report = tokio::task::block_in_place(|| {
        let export = common::export_log(&fleet.nodes[2], "export-move.json");
        let anchor = fleet.anchor().display().to_string();
        fleet.nodes[2]
            .run_ok(&["audit", &export, "--trust", &anchor])
            .expect("the log audits clean after the move")
    });
    assert!(report.contains("4 rotations"), "{report}");
}

/// Signs one action as the mover on `node`, expecting key `version`.
async fn sign_one(fleet: &Fleet, node: usize, version: u64, request_id: &str) -> Acked {
    let r = sign_on(fleet, node, MOVER, request_id)
        .await
        .unwrap_or_else(|e| panic!("{request_id} on node-{node}: {e:?}"));
    Acked {
        request_id: request_id.to_owned(),
        node,
        version,
        bundle: r.bundle_json,
    }
}

/// Moves the mover back from node 1 to node 0 (v3), rotates it there (v4), which makes node
/// 2's accept (of v4) stale: that hand-over is refused, node 2 accepts again (v5, replacing the
/// stale record) and the mover moves on to node 2.
async fn move_back_and_on(fleet: &Fleet, acked: &mut Vec<Acked>) {
    let to = |actor: &str, to: &str| HandOverActorRequest {
        actor: actor.into(),
        to: to.into(),
    };
    let accept = || AcceptActorRequest {
        actor: MOVER.into(),
    };
    admin(fleet, 0)
        .await
        .accept_actor(accept())
        .await
        .expect("accept back");
    admin(fleet, 1)
        .await
        .hand_over_actor(to(MOVER, "node-0"))
        .await
        .expect("hand back");
    let refused = sign_on(fleet, 1, MOVER, "on-node-1-after")
        .await
        .expect_err("node 1 after handing back");
    assert!(refused.message().contains("node-0"), "{refused:?}");
    for k in 0..3 {
        acked.push(sign_one(fleet, 0, 3, &format!("back-{k}")).await);
    }
    let stale = admin(fleet, 2)
        .await
        .accept_actor(accept())
        .await
        .expect("accept");
    assert_eq!(stale.into_inner().version, 4);
    let rotated = admin(fleet, 0)
        .await
        .rotate_key(actseal::api::RotateKeyRequest {
            actor: MOVER.into(),
        })
        .await
        .expect("a local rotation")
        .into_inner();
    assert_eq!(rotated.version, 4);
    let refused = admin(fleet, 0)
        .await
        .hand_over_actor(to(MOVER, "node-2"))
        .await
        .expect_err("a hand-over to a stale accept");
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    acked.push(sign_one(fleet, 0, 4, "rotated").await);
    let fresh = admin(fleet, 2)
        .await
        .accept_actor(accept())
        .await
        .expect("accept again");
    assert_eq!(fresh.into_inner().version, 5);
    admin(fleet, 0)
        .await
        .hand_over_actor(to(MOVER, "node-2"))
        .await
        .expect("hand on");
    acked.push(sign_one(fleet, 2, 5, "on-node-2").await);
    assert_eq!(owner(fleet, MOVER), "node-2");
}

/// An ownership row changed straight in PostgreSQL (not by a handover) names a node whose
/// hardware does not hold the actor's key: that node refuses to sign for it and queues
/// nothing; the real owner signs on.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_forged_ownership_change_is_refused_by_the_node_it_names() {
    let Some((fleet, _dir)) = started_fleet().await else {
        return;
    };
    let actor = "spiffe://acme.example/forged/agent";
    common::create_key(&fleet.nodes[0], actor).await;
    sign_on(&fleet, 0, actor, "before")
        .await
        .expect("signs on its node");
    let changed = tokio::task::block_in_place(|| {
        fleet
            .client()
            .unwrap()
            .execute(
                "UPDATE fleet_actors SET node = 'node-2' WHERE actor = $1",
                &[&actor],
            )
            .unwrap()
    });
    assert_eq!(changed, 1);
    let queued_before = queued(&fleet, actor);
    let entries_before = logged(&fleet, actor, None);
    // The node the forged row names does not hold the key.
    refused_on(&fleet, 2, actor, "forged", "not in this node's hardware").await;
    // Repeated Signs are refused from memory, re-checked (a hardware signature, an alarm in
    // the log) at most once a second.
    let started = Instant::now();
    for k in 0..20 {
        let again = sign_on(&fleet, 2, actor, &format!("forged-{k}"))
            .await
            .expect_err("refused again");
        assert!(
            again.message().contains("not in this node's hardware"),
            "{again:?}"
        );
    }
    let seconds = started.elapsed().as_secs();
    let alarms = std::fs::read_to_string(fleet.nodes[2].daemon_log())
        .unwrap()
        .lines()
        .filter(|l| l.contains("does not hold the actor's key"))
        .count() as u64;
    assert!(
        alarms <= seconds + 2,
        "{alarms} hardware checks for 21 Signs in {seconds} s"
    );
    assert_eq!(queued(&fleet, actor), queued_before);
    assert_eq!(logged(&fleet, actor, None), entries_before);
    // The node that holds the key signs on; its receipt verifies and continues the chain.
    let next = sign_on(&fleet, 0, actor, "after")
        .await
        .expect("the key's node signs on");
    let verified = common::verify(&fleet.nodes[0], &next.bundle_json, Some(&document("after")))
        .expect("verifies");
    assert_eq!(verified.key_version, 1);
    assert_eq!(
        common::receipt_statement(&next.bundle_json)["predicate"]["sequence"],
        2
    );
}

/// A node restarted after it queued a hand-over's rotation and before the integrator took it
/// (integration held up for real: the test holds the lease row's lock) serves the actor no
/// more; once integration resumes the actor is the target's and signs on there, chain whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_restarted_mid_handover_serves_the_actor_no_more() {
    let Some((mut fleet, _dir)) = started_fleet().await else {
        return;
    };
    let actor = "spiffe://acme.example/restarted/agent";
    let first = signed_and_accepted(&fleet, actor, "first").await;
    // Integration stops: the lease row is locked by this test.
    let (release, holder) = hold_integration(&fleet);
    let socket = fleet.nodes[0].socket();
    let owner_actor = actor.to_owned();
    let handing = tokio::spawn(async move {
        let channel = actseal::cli::connect_unix(&socket).await.unwrap();
        KeyAdminClient::new(channel)
            .hand_over_actor(HandOverActorRequest {
                actor: owner_actor,
                to: "node-1".into(),
            })
            .await
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    while query_i64(
        &fleet,
        "SELECT COUNT(*) FROM fleet_queue WHERE kind = 'rotation' AND actor = $1",
        actor,
    ) == 0
    {
        assert!(Instant::now() < deadline, "the rotation was never queued");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::task::block_in_place(|| {
        fleet.nodes[0].stop_daemon().unwrap();
        fleet.nodes[0]
            .start_daemon_within(Duration::from_secs(90), |_| {})
            .unwrap();
    });
    let _ = handing.await;
    // The node restarted mid-handover refuses the actor.
    refused_on(&fleet, 0, actor, "restarted", "node-1").await;
    assert_eq!(owner(&fleet, actor), "node-0", "not integrated yet");
    release.send(()).unwrap();
    holder.join().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while owner(&fleet, actor) != "node-1" {
        assert!(
            Instant::now() < deadline,
            "the handover was never integrated"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let next = sign_on(&fleet, 1, actor, "moved")
        .await
        .expect("the target signs on");
    let statement = common::receipt_statement(&next.bundle_json);
    assert_eq!(statement["predicate"]["sequence"], 2);
    assert_eq!(
        statement["predicate"]["previousReceipt"]["sha256"].as_str(),
        Some(common::payload_sha256(&first.bundle_json).as_str())
    );
    let anchors = TrustAnchors::from_pem(&std::fs::read(fleet.anchor()).unwrap()).unwrap();
    let verified = verify_bundle(
        next.bundle_json.as_bytes(),
        &anchors,
        Some(&document("moved")),
    )
    .expect("verifies");
    assert_eq!(verified.key_version, 2);
}

/// Rows a database writer forges from a pending handover: the actor's key retired and the
/// accepted key (in the target's hardware) made active from the index of one of its
/// receipts, as if a rotation had logged it. Nothing moves ownership but the integrator's
/// checked rotation: the actor stays its owner's; and even with the ownership row forged
/// too, the target refuses to sign (the log holds no rotation to that key).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_forged_key_row_for_a_pending_handover_moves_nothing_and_is_refused() {
    let Some((mut fleet, _dir)) = started_fleet().await else {
        return;
    };
    let actor = "spiffe://acme.example/forged-key/agent";
    signed_and_accepted(&fleet, actor, "before").await;
    let inserted = tokio::task::block_in_place(|| {
        let mut client = fleet.client().unwrap();
        let mut tx = client.transaction().unwrap();
        tx.execute(
            "UPDATE actor_keys SET state = 'retired', retired_at = created_at
             WHERE actor = $1 AND state = 'active'",
            &[&actor],
        )
        .unwrap();
        let inserted = tx
            .execute(
                "INSERT INTO actor_keys (actor, version, backend, key_ref, key_id, public_key,
                     origin, state, created_at, attestation, retired_at, rotation_index)
                 SELECT actor, (k ->> 'version')::bigint, k ->> 'backend', k ->> 'key_ref',
                     k ->> 'key_id', decode(k ->> 'public_key', 'base64'), k ->> 'origin',
                     'active', k ->> 'created_at', (k -> 'attestation')::text, NULL,
                     (SELECT min(log_index) FROM receipts WHERE actor = $1)
                 FROM (SELECT actor, key_record::json AS k FROM fleet_handovers
                       WHERE actor = $1) h",
                &[&actor],
            )
            .unwrap();
        tx.commit().unwrap();
        inserted
    });
    assert_eq!(inserted, 1, "the forged key row");
    // Integration rounds run (5 ms apart); none of them moves the actor.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(owner(&fleet, actor), "node-0");
    // Not the target's: the forged key row moved nothing.
    refused_on(&fleet, 1, actor, "forged-key", "node-0").await;
    // The ownership row forged as well: the target's hardware holds the key, but the log
    // does not make it active; the target signs nothing and queues nothing.
    let queued_before = queued(&fleet, actor);
    tokio::task::block_in_place(|| {
        fleet
            .client()
            .unwrap()
            .execute(
                "UPDATE fleet_actors SET node = 'node-1' WHERE actor = $1",
                &[&actor],
            )
            .unwrap()
    });
    refused_on(
        &fleet,
        1,
        actor,
        "forged-owner",
        "not made active by a rotation in the log",
    )
    .await;
    // Nor after a restart, which loads the node's actors from the database.
    tokio::task::block_in_place(|| {
        fleet.nodes[1].stop_daemon().unwrap();
        fleet.nodes[1]
            .start_daemon_within(Duration::from_secs(90), |_| {})
            .unwrap();
    });
    refused_on(
        &fleet,
        1,
        actor,
        "forged-restarted",
        "not made active by a rotation in the log",
    )
    .await;
    assert_eq!(queued(&fleet, actor), queued_before);
    assert_eq!(logged(&fleet, actor, Some("receipt")), 1);
}

/// Holds integration up for real: locks the lease row until the returned sender is used
/// (or dropped).
fn hold_integration(fleet: &Fleet) -> (std::sync::mpsc::Sender<()>, std::thread::JoinHandle<()>) {
    let (release, released) = std::sync::mpsc::channel::<()>();
    let (locked, is_locked) = std::sync::mpsc::channel::<()>();
    let mut client = tokio::task::block_in_place(|| fleet.client().unwrap());
    let holder = std::thread::spawn(move || {
        let mut tx = client.transaction().unwrap();
        tx.execute("SELECT 1 FROM fleet_lease WHERE id = 1 FOR UPDATE", &[])
            .unwrap();
        locked.send(()).unwrap();
        let _ = released.recv();
        tx.commit().unwrap();
    });
    is_locked.recv().unwrap();
    (release, holder)
}

/// A hand-over answered `UNAVAILABLE` (its rotation queued, integration held up past the
/// answer timeout) leaves the actor refused on its node while the rotation is queued; once
/// the integrator refuses the rotation (its row tampered with in PostgreSQL), the node finds
/// that in the database and signs for the actor again with its old key, chain whole, and the
/// target never does.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_timed_out_handover_whose_rotation_is_refused_leaves_the_actor_on_its_node() {
    const SHORT: &str = "lease_ms = 1500\nintegrate_interval_ms = 5\nanswer_timeout_ms = 1500";
    let Some((fleet, _dir)) = started_fleet_with(SHORT).await else {
        return;
    };
    let actor = "spiffe://acme.example/refused-move/agent";
    let first = signed_and_accepted(&fleet, actor, "first").await;
    let (release, holder) = hold_integration(&fleet);
    let timed_out = admin(&fleet, 0)
        .await
        .hand_over_actor(HandOverActorRequest {
            actor: actor.into(),
            to: "node-1".into(),
        })
        .await
        .expect_err("integration is held up past the answer timeout");
    assert_eq!(timed_out.code(), Code::Unavailable, "{timed_out:?}");
    let rotations = "SELECT COUNT(*) FROM fleet_queue WHERE kind = 'rotation' AND actor = $1";
    assert_eq!(
        query_i64(&fleet, rotations, actor),
        1,
        "the rotation is queued"
    );
    // Refused while the rotation is queued.
    refused_on(&fleet, 0, actor, "while-queued", "node-1").await;
    let tampered = tokio::task::block_in_place(|| {
        fleet
            .client()
            .unwrap()
            .execute(
                "UPDATE fleet_queue SET entry = entry || '\\x00'::bytea
                 WHERE kind = 'rotation' AND actor = $1",
                &[&actor],
            )
            .unwrap()
    });
    assert_eq!(tampered, 1);
    release.send(()).unwrap();
    holder.join().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while query_i64(&fleet, rotations, actor) != 0 {
        assert!(Instant::now() < deadline, "the rotation was never taken");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        owner(&fleet, actor),
        "node-0",
        "the refused rotation moves nothing"
    );
    assert_eq!(logged(&fleet, actor, Some("rotation")), 0);
    let next = sign_on(&fleet, 0, actor, "after-refusal")
        .await
        .expect("its node signs for it again");
    let statement = common::receipt_statement(&next.bundle_json);
    assert_eq!(statement["predicate"]["sequence"], 2);
    assert_eq!(
        statement["predicate"]["previousReceipt"]["sha256"].as_str(),
        Some(common::payload_sha256(&first.bundle_json).as_str())
    );
    let verified = common::verify(
        &fleet.nodes[0],
        &next.bundle_json,
        Some(&document("after-refusal")),
    )
    .expect("verifies");
    assert_eq!(verified.key_version, 1);
    // The target never got it.
    refused_on(&fleet, 1, actor, "on-target", "").await;
}

/// The SoftHSM directory of node `node`'s own token (found by its label).
fn token_dir(fleet: &Fleet, node: usize) -> PathBuf {
    let label = format!("actseal-node-{node}");
    let tokens = fleet.nodes[0].dir.join("tokens");
    std::fs::read_dir(&tokens)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|dir| {
            std::fs::read(dir.join("token.object")).is_ok_and(|bytes| {
                bytes
                    .windows(label.len() + 1)
                    .any(|w| w.starts_with(label.as_bytes()) && w[label.len()] == b' ')
            })
        })
        .unwrap_or_else(|| panic!("no token labelled {label} in {}", tokens.display()))
}

/// The target's token is down (its files moved away for real) when it first signs for an
/// actor handed over to it: the possession check answers UNAVAILABLE, not a forgery alarm;
/// once the token is back the target signs on, chain whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_target_whose_token_is_down_answers_unavailable_then_signs_on() {
    let Some((fleet, _dir)) = started_fleet().await else {
        return;
    };
    let actor = "spiffe://acme.example/token-down/agent";
    let first = signed_and_accepted(&fleet, actor, "first").await;
    admin(&fleet, 0)
        .await
        .hand_over_actor(HandOverActorRequest {
            actor: actor.into(),
            to: "node-1".into(),
        })
        .await
        .expect("hand over");
    let token = token_dir(&fleet, 1);
    let away = fleet.nodes[1].dir.join("token-away");
    std::fs::rename(&token, &away).unwrap();
    let down = sign_on(&fleet, 1, actor, "token-down")
        .await
        .expect_err("the target's token is down");
    std::fs::rename(&away, &token).unwrap();
    assert_eq!(down.code(), Code::Unavailable, "{down:?}");
    assert!(
        !down.message().contains("not in this node's hardware"),
        "{down:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let next = loop {
        match sign_on(&fleet, 1, actor, "moved").await {
            Ok(answer) => break answer,
            Err(e) if e.code() == Code::Unavailable && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("the target once its token is back: {e:?}"),
        }
    };
    let statement = common::receipt_statement(&next.bundle_json);
    assert_eq!(statement["predicate"]["sequence"], 2);
    assert_eq!(
        statement["predicate"]["previousReceipt"]["sha256"].as_str(),
        Some(common::payload_sha256(&first.bundle_json).as_str())
    );
    let verified = common::verify(&fleet.nodes[0], &next.bundle_json, Some(&document("moved")))
        .expect("verifies");
    assert_eq!(verified.key_version, 2);
}
