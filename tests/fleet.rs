//! Fleet mode (issue 12) against the real thing: one PostgreSQL server started for the test
//! (initdb/pg_ctl as an unprivileged user) and three daemons, each with its own SoftHSM token,
//! sharing one log token, queueing into one log; one integrator at a time under a lease.

mod common;

use common::fleet::{Acked, FLEET, Load, actor, collect, create_actors, document, started};

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use actseal::{
    api::GetInclusionProofRequest,
    lab::LOG_TOKEN_LABEL,
    lab_fleet::Fleet,
    verify::{TrustAnchors, verify_bundle},
};
use base64::{Engine, engine::general_purpose::STANDARD as B64};
use sha2::{Digest, Sha256};
use tempfile::TempDir;
use tonic::Code;

struct TestFleet {
    fleet: Fleet,
    /// Each node's metrics port.
    metrics: Vec<u16>,
    _dir: TempDir,
}

impl Drop for TestFleet {
    /// A failed test shows the end of each node's log (its directory is removed after this).
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        for (n, node) in self.fleet.nodes.iter().enumerate() {
            let log = std::fs::read_to_string(node.daemon_log()).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            let tail = &lines[lines.len().saturating_sub(60)..];
            eprintln!(
                "--- node-{n}'s log, last {} lines:\n{}",
                tail.len(),
                tail.join("\n")
            );
        }
    }
}

impl std::ops::Deref for TestFleet {
    type Target = Fleet;
    fn deref(&self) -> &Fleet {
        &self.fleet
    }
}

impl std::ops::DerefMut for TestFleet {
    fn deref_mut(&mut self) -> &mut Fleet {
        &mut self.fleet
    }
}

/// Three nodes started, each with `actors` actors of its own; `None` where PostgreSQL is
/// missing (a failure under CI=true).
async fn started_fleet(actors: usize) -> Option<TestFleet> {
    let metrics: Vec<u16> = (0..3).map(|_| common::free_port()).collect();
    let ports = metrics.clone();
    let (mut fleet, dir) = started("actseal-fleet-", FLEET, move |fleet| {
        for (node, port) in fleet.nodes.iter().zip(&ports) {
            common::configure_server(node, &format!("metrics = \"127.0.0.1:{port}\""));
        }
    })
    .await?;
    create_actors(&mut fleet, actors).await;
    Some(TestFleet {
        fleet,
        metrics,
        _dir: dir,
    })
}

/// A node's /metrics text.
fn scrape(port: u16) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("metrics");
    write!(stream, "GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).unwrap();
    text
}

/// The value of the first sample of `name` (with its labels) in a scrape.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

/// [`spawn_load_until`] with no stop.
fn spawn_load(fleet: &Fleet, workers: usize, count: usize, tag: &str) -> Load {
    spawn_load_until(fleet, workers, count, tag, Arc::new(AtomicBool::new(false)))
}

/// [`common::fleet::spawn_load`], each action retried for up to a minute.
fn spawn_load_until(
    fleet: &Fleet,
    workers: usize,
    count: usize,
    tag: &str,
    stop: Arc<AtomicBool>,
) -> Load {
    common::fleet::spawn_load(fleet, workers, count, tag, &stop, Duration::from_secs(60))
}

fn payload_of(bundle: &str) -> Vec<u8> {
    let bundle: serde_json::Value = serde_json::from_str(bundle).unwrap();
    B64.decode(bundle["receipt"]["payload"].as_str().unwrap())
        .unwrap()
}

/// Everything the callers were told holds: each bundle verifies offline under the one trust
/// anchor, carries `logIndex: null` and its own index; one index each; each actor's
/// sequence has no gap and no repeat (the main loads start at 1); every bundle proving against a tree size names the
/// same root there (no two checkpoints of one size disagree).
fn check_acked(fleet: &Fleet, acked: &[Acked]) {
    let anchors = TrustAnchors::from_pem(&std::fs::read(fleet.anchor()).unwrap()).unwrap();
    let mut indices = HashSet::new();
    let mut roots: HashMap<u64, Vec<u8>> = HashMap::new();
    let mut sequences: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for a in acked {
        verify_bundle(
            a.bundle.as_bytes(),
            &anchors,
            Some(&document(&a.request_id)),
        )
        .unwrap_or_else(|e| panic!("{}: bundle does not verify: {e}", a.request_id));
        let statement = common::receipt_statement(&a.bundle);
        assert!(
            statement["predicate"]["logIndex"].is_null(),
            "a fleet receipt names no index"
        );
        let bundle: serde_json::Value = serde_json::from_str(&a.bundle).unwrap();
        assert_eq!(bundle["log"]["index"].as_u64(), Some(a.log_index));
        assert!(
            indices.insert(a.log_index),
            "log index {} given twice",
            a.log_index
        );
        let note = bundle["log"]["checkpoint"].as_str().unwrap();
        let parsed = actseal::verify::checkpoint::parse_checkpoint(note.as_bytes()).unwrap();
        let root = roots.entry(parsed.size).or_insert(parsed.root.to_vec());
        assert_eq!(
            *root,
            parsed.root.to_vec(),
            "two checkpoints of size {} disagree",
            parsed.size
        );
        sequences
            .entry(a.actor.clone())
            .or_default()
            .push(statement["predicate"]["sequence"].as_u64().unwrap());
    }
    for (actor, mut seen) in sequences {
        seen.sort_unstable();
        let first = seen[0];
        let want: Vec<u64> = (first..first + seen.len() as u64).collect();
        assert_eq!(seen, want, "{actor}: sequences have a gap or a repeat");
    }
}

/// Exports the log from `node`, audits it, and checks every acknowledged receipt is in it
/// exactly once and nothing is in it twice.
/// The audit's report.
fn export_and_check(fleet: &Fleet, node: usize, acked: &[Acked], name: &str) -> String {
    let lab = &fleet.nodes[node];
    let export = common::export_log(lab, name);
    let anchor = fleet.anchor().display().to_string();
    let report = lab
        .run_ok(&["audit", &export, "--trust", &anchor])
        .expect("the fleet's log audits clean");
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(&export).unwrap()).unwrap();
    let mut in_log: HashMap<[u8; 32], usize> = HashMap::new();
    for entry in json["entries"].as_array().unwrap() {
        let bytes = B64.decode(entry.as_str().unwrap()).unwrap();
        let parts = actseal::ledger::entry::decode(&bytes).unwrap();
        *in_log
            .entry(Sha256::digest(&parts.payload).into())
            .or_default() += 1;
    }
    assert!(
        in_log.values().all(|&n| n == 1),
        "an entry is in the log twice"
    );
    for a in acked {
        let digest: [u8; 32] = Sha256::digest(payload_of(&a.bundle)).into();
        assert_eq!(
            in_log.get(&digest),
            Some(&1),
            "{}: not in the log exactly once",
            a.request_id
        );
    }
    report
}

/// Queues a tampered entry and a replayed one straight into PostgreSQL (as a faulty node
/// would) and waits for the integrator to refuse both.
fn forged_rows_are_refused(fleet: &Fleet) {
    let mut client = fleet.client().unwrap();
    let newest = client
        .query_one(
            "SELECT r.actor, r.sequence, r.key_id, r.payload_sha256, r.signed_at, e.entry
             FROM receipts r JOIN log_entries e USING (log_index) ORDER BY log_index DESC LIMIT 1",
            &[],
        )
        .unwrap();
    let entries_before: i64 = client
        .query_one("SELECT COUNT(*) FROM log_entries", &[])
        .unwrap()
        .get(0);
    let replayed: Vec<u8> = newest.get(5);
    let mut tampered = replayed.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 0x01;
    let mut ids = Vec::new();
    for entry in [tampered, replayed] {
        let id: i64 = client
            .query_one(
                "INSERT INTO fleet_queue (node, kind, actor, entry, sequence, key_id, payload_sha256, signed_at)
                 VALUES ('node-0', 'receipt', $1, $2, $3, $4, $5, $6) RETURNING queue_id",
                &[
                    &newest.get::<_, String>(0),
                    &entry,
                    &newest.get::<_, i64>(1),
                    &newest.get::<_, String>(2),
                    &newest.get::<_, Vec<u8>>(3),
                    &newest.get::<_, String>(4),
                ],
            )
            .unwrap()
            .get(0);
        ids.push(id);
    }
    assert_refused(&mut client, &ids, entries_before);
}

/// Waits until the integrator took the queue rows `ids`, and checks it integrated none.
fn assert_refused(client: &mut postgres::Client, ids: &[i64], entries_before: i64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left: i64 = client
            .query_one(
                "SELECT COUNT(*) FROM fleet_queue WHERE queue_id = ANY($1)",
                &[&ids],
            )
            .unwrap()
            .get(0);
        if left == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the forged rows were never taken"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let integrated: i64 = client
        .query_one(
            "SELECT COUNT(*) FROM fleet_integrated WHERE queue_id = ANY($1)",
            &[&ids],
        )
        .unwrap()
        .get(0);
    assert_eq!(integrated, 0, "a forged entry was integrated");
    let entries_after: i64 = client
        .query_one("SELECT COUNT(*) FROM log_entries", &[])
        .unwrap()
        .get(0);
    assert_eq!(
        entries_after, entries_before,
        "a forged entry entered the log"
    );
}

/// Nothing was integrated twice and the queue drained.
fn check_tables(fleet: &Fleet) {
    let mut client = fleet.client().unwrap();
    let row = client
        .query_one(
            "SELECT (SELECT COUNT(*) FROM fleet_integrated),
                    (SELECT COUNT(DISTINCT log_index) FROM fleet_integrated),
                    (SELECT COUNT(*) FROM log_entries),
                    (SELECT COUNT(*) FROM fleet_queue)",
            &[],
        )
        .unwrap();
    let (integrated, distinct, entries, queued): (i64, i64, i64, i64) =
        (row.get(0), row.get(1), row.get(2), row.get(3));
    assert_eq!(integrated, distinct);
    assert_eq!(
        integrated, entries,
        "every entry came through the queue once"
    );
    assert_eq!(queued, 0, "the queue drained");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_nodes_sign_into_one_log_and_the_audit_passes() {
    let Some(fleet) = started_fleet(3).await else {
        return;
    };
    let (tasks, _) = spawn_load(&fleet, 3, 20, "all");
    let acked = collect(tasks).await;
    assert_eq!(acked.len(), 3 * 3 * 20);
    check_acked(&fleet, &acked);
    assert!(acked.iter().all(|a| {
        let s = common::receipt_statement(&a.bundle)["predicate"]["sequence"].as_u64();
        s.is_some_and(|s| (1..=20).contains(&s))
    }));
    tokio::task::block_in_place(|| check_tables(&fleet));
    // Per-node metrics: exactly one integrator, all agreeing on the holder and epoch; it
    // integrated everything, with its lag histogram; the queue drained.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let scrapes: Vec<String> = fleet.metrics.iter().map(|p| scrape(*p)).collect();
    let (holder, epoch, _) = lease(&fleet).unwrap();
    let mut integrators = 0.0;
    for (n, text) in scrapes.iter().enumerate() {
        let labels = format!("{{node=\"node-{n}\"");
        integrators += sample(text, &format!("actseal_fleet_is_integrator{labels}")).unwrap();
        assert_eq!(
            sample(text, &format!("actseal_fleet_lease_epoch{labels}")),
            Some(epoch as f64)
        );
        assert_eq!(
            sample(text, &format!("actseal_fleet_queue_depth{labels}")),
            Some(0.0)
        );
        assert!(
            text.contains(&format!(
                "actseal_fleet_lease_holder{labels},holder=\"{holder}\"}} 1"
            )),
            "{text}"
        );
    }
    assert_eq!(integrators, 1.0);
    let holder_text = &scrapes[holder
        .strip_prefix("node-")
        .unwrap()
        .parse::<usize>()
        .unwrap()];
    let integrated = sample(holder_text, "actseal_fleet_integrated_total").unwrap();
    assert!(integrated >= acked.len() as f64, "{integrated} integrated");
    let lag_count = sample(holder_text, "actseal_fleet_integration_lag_seconds_count").unwrap();
    assert_eq!(lag_count, integrated);
    // Any node exports the whole log and serves proofs of every node's receipts.
    tokio::task::block_in_place(|| export_and_check(&fleet, 2, &acked, "export-2.json"));
    let mut other = common::signer(&fleet.nodes[1]).await;
    let of_node_0 = acked.iter().find(|a| a.actor == actor(0, 0)).unwrap();
    let proof = other
        .get_inclusion_proof(GetInclusionProofRequest {
            log_index: of_node_0.log_index,
            tree_size: 0,
        })
        .await
        .expect("inclusion proof from another node")
        .into_inner();
    let anchors = TrustAnchors::from_pem(&std::fs::read(fleet.anchor()).unwrap()).unwrap();
    verify_bundle(
        proof.bundle_json.as_bytes(),
        &anchors,
        Some(&document(&of_node_0.request_id)),
    )
    .expect("the other node's bundle verifies");
    // A retry by request id gets the first answer, byte for byte.
    let mut again = common::sign_request(&of_node_0.actor, &document(&of_node_0.request_id));
    again.request_id = of_node_0.request_id.clone();
    let retried = common::signer(&fleet.nodes[0])
        .await
        .sign(again.clone())
        .await
        .expect("retry")
        .into_inner();
    assert_eq!(retried.bundle_json, of_node_0.bundle);
    // An actor belongs to the node that registered it: another node refuses, naming it.
    let refused = other.sign(again).await.expect_err("another node's actor");
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(
        refused.message().contains("node-0"),
        "{}",
        refused.message()
    );
    // Another node's actor is not rotated here either.
    let rotate = common::admin(&fleet.nodes[1])
        .await
        .rotate_key(actseal::api::RotateKeyRequest { actor: actor(0, 0) })
        .await
        .expect_err("another node's actor");
    assert_eq!(rotate.code(), Code::FailedPrecondition, "{rotate:?}");
    assert!(rotate.message().contains("node-0"), "{}", rotate.message());
    // A node's bug must not poison the shared log: a queued entry whose signature does not
    // verify, and a replay of an integrated one, are refused and never integrated.
    tokio::task::block_in_place(|| forged_rows_are_refused(&fleet));
    let (tasks, _) = spawn_load(&fleet, 1, 3, "after");
    let after = collect(tasks).await;
    check_acked(&fleet, &after);
    // Registering an actor another node owns is refused.
    let taken = common::admin(&fleet.nodes[2])
        .await
        .create_key(actseal::api::CreateKeyRequest { actor: actor(0, 0) })
        .await
        .expect_err("another node's actor");
    assert!(
        matches!(taken.code(), Code::FailedPrecondition | Code::AlreadyExists),
        "{taken:?}"
    );
}

/// The lease row (blocking client, off the async workers).
fn lease(fleet: &Fleet) -> Option<(String, i64, i64)> {
    tokio::task::block_in_place(|| fleet.lease()).unwrap()
}

/// The holder's index, its epoch and published size, from one read of the lease row.
fn holder(fleet: &Fleet) -> (usize, i64, i64) {
    tokio::task::block_in_place(|| fleet.holder())
        .unwrap()
        .expect("someone holds the lease")
}

/// Waits until the lease moved past `epoch` to another node than `from` and that node has
/// published a bigger tree than `published`; how long it took.
async fn wait_for_takeover(fleet: &Fleet, from: usize, epoch: i64, published: i64) -> Duration {
    let started = Instant::now();
    loop {
        let (holder, now, size) = lease(fleet).unwrap();
        if now > epoch && holder != format!("node-{from}") && size > published {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no other node took over from node-{from} (lease {holder} epoch {now}, size {size})"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_integrator_sigkilled_under_load_fails_over_and_loses_nothing() {
    let Some(mut fleet) = started_fleet(2).await else {
        return;
    };
    let stop = Arc::new(AtomicBool::new(false));
    let (tasks, _) = spawn_load_until(&fleet, 2, 100_000, "kill", Arc::clone(&stop));
    let mut failovers = Vec::new();
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(800)).await;
        let (holder, epoch, published) = holder(&fleet);
        fleet.nodes[holder].kill_daemon().unwrap();
        failovers.push(wait_for_takeover(&fleet, holder, epoch, published).await);
        // The killed node comes back (its callers retry with their request ids).
        tokio::task::block_in_place(|| fleet.nodes[holder].start_daemon()).unwrap();
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::SeqCst);
    let acked = collect(tasks).await;
    assert!(acked.len() > 100, "only {} acknowledged", acked.len());
    check_acked(&fleet, &acked);
    tokio::task::block_in_place(|| check_tables(&fleet));
    tokio::task::block_in_place(|| export_and_check(&fleet, 0, &acked, "export-kill.json"));
    for failover in &failovers {
        // Bounded: the lease (1.5 s here), a follower's poll (lease / 6), the takeover's
        // check and its first integration. The bound here is loose (debug build, tests in
        // parallel on a small machine); the 5 s target is met in benches/fleet_throughput.
        assert!(
            *failover < Duration::from_secs(15),
            "failover took {failover:?}"
        );
    }
    eprintln!("failovers: {failovers:?}");
}

/// A hung log token (a network HSM that stops answering; in the lab, the shared SoftHSM
/// token held by a node stopped inside a call) halts integration on every node: nothing is
/// published while it hangs, and the lease moves on as each takeover's start-up check waits
/// past its bound. Once the token answers, integration resumes and nothing acknowledged is
/// lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hung_log_token_halts_integration_and_the_fleet_resumes_losing_nothing() {
    let Some(fleet) = started_fleet(2).await else {
        return;
    };
    let stop = Arc::new(AtomicBool::new(false));
    let (tasks, _) = spawn_load_until(&fleet, 2, 100_000, "hang", Arc::clone(&stop));
    tokio::time::sleep(Duration::from_millis(800)).await;
    let (_, epoch, _) = holder(&fleet);
    let held = tokio::task::block_in_place(|| fleet.nodes[0].hold_token(LOG_TOKEN_LABEL))
        .expect("the log token's files locked");
    assert!(!held.is_empty());
    // A head write in flight when the locks were taken may still be published; then nothing.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (_, _, halted_at) = lease(&fleet).unwrap();
    // Past a takeover's bound (ten leases, 15 s here).
    tokio::time::sleep(Duration::from_secs(17)).await;
    let (_, epoch_now, size) = lease(&fleet).unwrap();
    assert_eq!(
        size, halted_at,
        "a tree was published while the log token hung"
    );
    assert!(epoch_now > epoch, "the lease stayed at epoch {epoch}");
    drop(held);
    let released = Instant::now();
    while lease(&fleet).unwrap().2 <= halted_at {
        assert!(
            released.elapsed() < Duration::from_secs(60),
            "integration never resumed after the log token answered again"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "resumed {:?} after the release (epochs {epoch} -> {epoch_now} while hung)",
        released.elapsed()
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::SeqCst);
    let acked = collect(tasks).await;
    check_acked(&fleet, &acked);
    tokio::task::block_in_place(|| check_tables(&fleet));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stopped_integrator_is_fenced_and_signs_no_checkpoint_into_the_log() {
    let Some(fleet) = started_fleet(2).await else {
        return;
    };
    let stop = Arc::new(AtomicBool::new(false));
    let (tasks, _) = spawn_load_until(&fleet, 2, 100_000, "stop", Arc::clone(&stop));
    tokio::time::sleep(Duration::from_millis(800)).await;
    let (holder, epoch, published) = holder(&fleet);
    // Stopped mid-work, past its lease: its open transaction is ended by the server and
    // another node takes the lease at the next epoch. Stopped between two calls on the log
    // token: the lab's SoftHSM token is a directory of locked files that a node stopped
    // inside a call would hold for every node (a network HSM has no such lock).
    tokio::task::block_in_place(|| fleet.nodes[holder].stop_daemon_between_token_calls()).unwrap();
    wait_for_takeover(&fleet, holder, epoch, published).await;
    let (_, taken_at, _) = lease(&fleet).unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    fleet.nodes[holder].signal_daemon("CONT").unwrap();
    tokio::task::block_in_place(|| {
        common::wait_for_log(&fleet.nodes[holder], "fenced: the lease moved on", 1)
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::SeqCst);
    let acked = collect(tasks).await;
    check_acked(&fleet, &acked);
    tokio::task::block_in_place(|| check_tables(&fleet));
    // Every stored checkpoint (the fenced node's included, had it stored one) agrees with
    // the tree: the whole log re-verified from its first entry.
    let lab = &fleet.nodes[holder];
    tokio::task::block_in_place(|| {
        lab.run_ok(&[
            "log",
            "check",
            "--config",
            &lab.config().display().to_string(),
        ])
    })
    .expect("the whole log checks");
    tokio::task::block_in_place(|| export_and_check(&fleet, holder, &acked, "export-fenced.json"));
    let (now_holder, now_epoch, _) = lease(&fleet).unwrap();
    assert!(now_epoch >= taken_at && taken_at > epoch);
    // The fenced node never went on under its old epoch. On a loaded machine a later holder
    // may miss a renewal and the fenced node win the lease anew: then at a later epoch, and
    // by a takeover its log shows after the fence.
    if now_holder == format!("node-{holder}") {
        let log = std::fs::read_to_string(fleet.nodes[holder].daemon_log()).unwrap();
        let after = &log[log
            .find("fenced: the lease moved on")
            .expect("the fenced node logs that it was fenced")..];
        assert!(
            now_epoch > taken_at && after.contains("holding the integrator lease"),
            "the fenced node holds the lease at epoch {now_epoch} without a new takeover:\n{after}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_restarted_under_load_answers_unavailable_then_recovers() {
    let Some(mut fleet) = started_fleet(2).await else {
        return;
    };
    let stop = Arc::new(AtomicBool::new(false));
    let (tasks, unavailable) = spawn_load_until(&fleet, 2, 100_000, "pg", Arc::clone(&stop));
    tokio::time::sleep(Duration::from_millis(800)).await;
    tokio::task::block_in_place(|| fleet.postgres.stop()).unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    tokio::task::block_in_place(|| fleet.postgres.start_again()).unwrap();
    let before = lease(&fleet).unwrap().2;
    // Integration continues after the restart (a generous wait: the nodes reconnect and the
    // holder re-checks the store, slower on a loaded machine; the bound is not this test's).
    let deadline = Instant::now() + Duration::from_secs(60);
    while lease(&fleet).unwrap().2 <= before + 20 {
        assert!(
            Instant::now() < deadline,
            "integration did not resume after the restart"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::SeqCst);
    let acked = collect(tasks).await;
    assert!(
        *unavailable.lock().unwrap() > 0,
        "callers were told UNAVAILABLE while it was down"
    );
    check_acked(&fleet, &acked);
    tokio::task::block_in_place(|| check_tables(&fleet));
    tokio::task::block_in_place(|| export_and_check(&fleet, 1, &acked, "export-pg.json"));
}

#[test]
fn fleet_mode_on_sqlite_is_refused_at_start() {
    let mut lab = common::new_lab();
    lab.add_log_token().unwrap();
    lab.append_config("[fleet]\nnode = \"alone\"").unwrap();
    let error = lab
        .start_daemon()
        .expect_err("a fleet node on SQLite")
        .to_string();
    assert!(
        error.contains("[fleet] needs the log on PostgreSQL"),
        "{error}"
    );
}

/// Signs one action as `actor` on `node`; the bundle.
async fn sign_one(fleet: &Fleet, node: usize, actor: &str, request_id: &str) -> Acked {
    let mut request = common::sign_request(actor, &document(request_id));
    request.request_id = request_id.to_owned();
    let r = common::signer(&fleet.nodes[node])
        .await
        .sign(request)
        .await
        .unwrap_or_else(|e| panic!("{request_id}: {e}"))
        .into_inner();
    Acked {
        request_id: request_id.to_owned(),
        actor: actor.to_owned(),
        bundle: r.bundle_json,
        log_index: r.log_index,
    }
}

/// Queues the log entries at `indices` again, as a faulty node would, with `kind`s, the
/// key record and rotated version given; the integrator must refuse them all.
fn replay_is_refused(fleet: &Fleet, rows: &[(i64, &str, Option<String>, Option<i32>)]) {
    let mut client = fleet.client().unwrap();
    let entries_before: i64 = client
        .query_one("SELECT COUNT(*) FROM log_entries", &[])
        .unwrap()
        .get(0);
    let mut ids = Vec::new();
    for (index, kind, key_record, rotates) in rows {
        let id: i64 = client
            .query_one(
                "INSERT INTO fleet_queue (node, kind, actor, entry, key_record, rotates_version)
                 SELECT 'node-1', $2, actor, entry, $3, $4 FROM log_entries WHERE log_index = $1
                 RETURNING queue_id",
                &[index, kind, key_record, rotates],
            )
            .unwrap()
            .get(0);
        ids.push(id);
    }
    assert_refused(&mut client, &ids, entries_before);
}

/// The log index of the newest entry of `kind` for `actor`.
fn newest_entry(fleet: &Fleet, kind: &str, actor: &str) -> i64 {
    fleet
        .client()
        .unwrap()
        .query_one(
            "SELECT MAX(log_index) FROM log_entries WHERE kind = $1 AND actor = $2",
            &[&kind, &actor],
        )
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fleet_node_rotates_and_retires_keys_under_load_and_the_log_audits() {
    let Some(fleet) = started_fleet(2).await else {
        return;
    };
    let stop = Arc::new(AtomicBool::new(false));
    // Light load: one caller per node on its actor 0, all along.
    let (tasks, _) = spawn_load_until(&fleet, 1, 10_000, "light", Arc::clone(&stop));
    let (rotated, retired) = (actor(1, 1), actor(2, 1));
    let v1 = sign_one(&fleet, 1, &rotated, "rot-v1").await;
    let mut admin = common::admin(&fleet.nodes[1]).await;
    let key_v2 = admin
        .rotate_key(actseal::api::RotateKeyRequest {
            actor: rotated.clone(),
        })
        .await
        .expect("rotation on a fleet node")
        .into_inner();
    assert_eq!(key_v2.version, 2);
    let v2 = sign_one(&fleet, 1, &rotated, "rot-v2").await;
    let gone = common::admin(&fleet.nodes[2])
        .await
        .retire_key(actseal::api::RetireKeyRequest {
            actor: retired.clone(),
            version: 1,
            keep_key: false,
        })
        .await
        .expect("retirement on a fleet node")
        .into_inner();
    assert_eq!(gone.state, "retired");
    let refused = common::signer(&fleet.nodes[2])
        .await
        .sign(common::sign_request(&retired, b"after retirement"))
        .await
        .expect_err("a retired actor signs nothing");
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    // The rotated version is what the log holds, from any node.
    let old = common::signer(&fleet.nodes[0])
        .await
        .get_actor_key(actseal::api::GetActorKeyRequest {
            actor: rotated.clone(),
            version: 1,
        })
        .await
        .expect("v1 from another node")
        .into_inner();
    assert_eq!(old.state, "retired");
    stop.store(true, Ordering::SeqCst);
    let mut acked = collect(tasks).await;
    assert!(!acked.is_empty());
    // Both versions' bundles verify offline; v2's lineage carries the rotation.
    let anchors = TrustAnchors::from_pem(&std::fs::read(fleet.anchor()).unwrap()).unwrap();
    for (a, version) in [(&v1, 1), (&v2, 2)] {
        let verified = verify_bundle(
            a.bundle.as_bytes(),
            &anchors,
            Some(&document(&a.request_id)),
        )
        .unwrap_or_else(|e| panic!("{}: {e}", a.request_id));
        assert_eq!(verified.key_version, version);
    }
    let v2_bundle: serde_json::Value = serde_json::from_str(&v2.bundle).unwrap();
    assert_eq!(
        v2_bundle["lineage"]["rotations"].as_array().map(Vec::len),
        Some(1)
    );
    assert_eq!(
        common::receipt_statement(&v2.bundle)["predicate"]["sequence"],
        2,
        "the sequence runs on across versions"
    );
    acked.extend([v1, v2]);
    check_acked(&fleet, &acked);
    // Replays of the rotation (its v1 key is no longer the log's) and of the retirement
    // (the actor has no active key) are refused, never integrated.
    tokio::task::block_in_place(|| {
        use actseal::ledger::store::LedgerStore;
        let store = actseal::ledger::store::PgStore::from_client(fleet.client().unwrap());
        let key = store.key_by_id(&key_v2.key_id).unwrap().expect("v2 stored");
        let record = actseal::fleet::queue::key_to_json(&key).unwrap();
        let rotation = newest_entry(&fleet, "rotation", &rotated);
        replay_is_refused(
            &fleet,
            &[
                (rotation - 1, "registration", Some(record.clone()), Some(2)),
                (rotation, "rotation", Some(record), Some(2)),
            ],
        );
        replay_is_refused(
            &fleet,
            &[(
                newest_entry(&fleet, "retirement", &retired),
                "retirement",
                None,
                None,
            )],
        );
        check_tables(&fleet);
        let report = export_and_check(&fleet, 0, &acked, "export-rotation.json");
        assert!(report.contains("1 rotations, 1 retirements"), "{report}");
    });
}
