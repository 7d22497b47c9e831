//! Fleet throughput (issue 12): three nodes queueing into one PostgreSQL log against one
//! node on SQLite, in the same run, with the same clients per node, per-action and in batch
//! mode; the integration lag (queued -> integrated) at that load; the failover time
//! (SIGKILL of the integrator -> the next integration by another node).
//!
//! `cargo bench --bench fleet_throughput` (`ACTSEAL_BENCH_SECONDS`, `ACTSEAL_BENCH_CLIENTS`,
//! `ACTSEAL_BENCH_MODES`, default `per-action,batch,per-action@20/s,batch@20/s,
//! per-action@20/s-actors,batch@20/s-actors`; `ACTSEAL_BENCH_DAEMON`: another daemon binary,
//! for a before/after comparison). The `@20/s` modes give every daemon an emulated discrete
//! TPM (`[testing] emulate_signatures_per_second = 20`, on its actors' token and its log token
//! alike): each node then brings its own slow hardware, as the hosts of a real fleet do,
//! whereas the plain modes share this machine's two cores among all the nodes and PostgreSQL.
//! The `@20/s-actors` modes throttle the lone node as `@20/s` does (its one TPM holds the log
//! key too) but only the fleet nodes' actor tokens (`emulate_actors_token_only`): in a fleet
//! the log token is a network HSM, not a host's TPM.

mod support;

use std::time::{Duration, Instant};

use actseal::{lab::Lab, lab_fleet::Fleet};
use tokio::task::block_in_place;

fn clients() -> usize {
    std::env::var("ACTSEAL_BENCH_CLIENTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(8)
}

fn modes() -> Vec<String> {
    std::env::var("ACTSEAL_BENCH_MODES")
        .unwrap_or_else(|_| {
            "per-action,batch,per-action@20/s,batch@20/s,per-action@20/s-actors,batch@20/s-actors"
                .into()
        })
        .split(',')
        .map(str::to_owned)
        .collect()
}

const ACTOR: &str = "spiffe://bench.example/agent";
const BATCH: &str = "[[ledger.batch]]\nactors = [\"*\"]\nwindow_ms = 5";
const EMULATED_TPM: &str = "[testing]\nemulate_signatures_per_second = 20";
const EMULATED_ACTOR_TPM: &str =
    "[testing]\nemulate_signatures_per_second = 20\nemulate_actors_token_only = true";

/// What a mode adds to a daemon's configuration (`fleet`: a fleet node's).
fn mode_config(mode: &str, fleet: bool) -> Vec<&'static str> {
    let mut lines = Vec::new();
    if mode.starts_with("batch") {
        lines.push(BATCH);
    }
    if mode.ends_with("@20/s") || (mode.ends_with("@20/s-actors") && !fleet) {
        lines.push(EMULATED_TPM);
    } else if mode.ends_with("@20/s-actors") {
        lines.push(EMULATED_ACTOR_TPM);
    }
    lines
}

async fn create_key(lab: &Lab, actor: &str) {
    let channel = actseal::cli::connect_unix(&lab.socket()).await.unwrap();
    actseal::api::key_admin_client::KeyAdminClient::new(channel)
        .create_key(actseal::api::CreateKeyRequest {
            actor: actor.into(),
        })
        .await
        .unwrap();
}

/// Integration lag quantiles (ms) of what was integrated after queue id `from`.
fn lag_ms(fleet: &Fleet, from: i64) -> (f64, f64, i64) {
    let mut client = fleet.client().unwrap();
    let row = client
        .query_one(
            "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY x),
                    percentile_cont(0.99) WITHIN GROUP (ORDER BY x), COUNT(*)
             FROM (SELECT EXTRACT(EPOCH FROM integrated_at - queued_at)::float8 * 1000 AS x
                   FROM fleet_integrated WHERE queue_id > $1) t",
            &[&from],
        )
        .unwrap();
    (
        row.get::<_, Option<f64>>(0).unwrap_or(0.0),
        row.get::<_, Option<f64>>(1).unwrap_or(0.0),
        row.get(2),
    )
}

fn newest_queue_id(fleet: &Fleet) -> i64 {
    let mut client = fleet.client().unwrap();
    client
        .query_one(
            "SELECT COALESCE(MAX(queue_id), 0) FROM fleet_integrated",
            &[],
        )
        .unwrap()
        .get(0)
}

/// One node on SQLite: its rate (receipts/s), p50, p99.
async fn single(mode: &str, clients: usize) -> (f64, Duration, Duration) {
    let dir = tempfile::Builder::new()
        .prefix("actseal-bench-single-")
        .tempdir()
        .unwrap();
    let mut lab =
        Lab::create(&support::daemon_binary(), &dir.path().join("lab"), false).expect("lab");
    for text in mode_config(mode, false) {
        lab.append_config(text).unwrap();
    }
    lab.start_daemon().unwrap();
    create_key(&lab, ACTOR).await;
    support::daemon_rate(&lab, ACTOR, clients).await
}

/// Three nodes into one PostgreSQL log, `clients` per node at once.
async fn fleet_phase(fleet: &Fleet, clients: usize) -> (f64, [Duration; 3]) {
    let actors: Vec<String> = (0..3).map(|n| format!("{ACTOR}-{n}")).collect();
    let (a, b, c) = tokio::join!(
        support::daemon_rate(&fleet.nodes[0], &actors[0], clients),
        support::daemon_rate(&fleet.nodes[1], &actors[1], clients),
        support::daemon_rate(&fleet.nodes[2], &actors[2], clients),
    );
    (a.0 + b.0 + c.0, [a.2, b.2, c.2])
}

/// SIGKILL of the integrator while another node signs: time to the next integration by
/// another node.
async fn failover(fleet: &Fleet) -> Duration {
    let (holder, _, _) = block_in_place(|| fleet.holder())
        .unwrap()
        .expect("a holder");
    let pid = fleet.nodes[holder].daemon_pid().unwrap();
    let load_node = (holder + 1) % 3;
    let actor = format!("{ACTOR}-{load_node}");
    let load = support::daemon_rate(&fleet.nodes[load_node], &actor, 2);
    let watch = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        // Epoch and size from the read that names the holder (the lease may move between two).
        let (now_holder, epoch, published) = block_in_place(|| fleet.holder()).unwrap().unwrap();
        assert_eq!(now_holder, holder, "the lease moved before the kill");
        let killed = Instant::now();
        // Killed by pid: the lab is borrowed by the load meanwhile.
        let _ = std::process::Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status();
        loop {
            let (who, now, size) = block_in_place(|| fleet.lease()).unwrap().unwrap();
            if now > epoch && who != format!("node-{holder}") && size > published {
                break killed.elapsed();
            }
            assert!(killed.elapsed() < Duration::from_secs(30), "no failover");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    let (_, took) = tokio::join!(load, watch);
    took
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let clients = clients();
    let seconds = support::phase_seconds();
    println!("fleet_throughput: SoftHSM, {clients} Sign clients per node, {seconds:?} per phase");
    let exe = support::daemon_binary();
    let modes = modes();
    for (m, mode) in modes.iter().enumerate() {
        let (single_rate, p50, p99) = single(mode, clients).await;
        println!(
            "{mode:22} 1 node, SQLite      : {single_rate:7.0} receipts/s  p50 {p50:.1?} p99 {p99:.1?}"
        );
        let dir = tempfile::Builder::new()
            .prefix("actseal-bench-fleet-")
            .tempdir()
            .unwrap();
        let mut fleet = block_in_place(|| {
            Fleet::create(
                &exe,
                dir.path(),
                3,
                "lease_ms = 3000\nintegrate_interval_ms = 5",
            )
        })
        .expect("fleet set-up");
        for node in &fleet.nodes {
            for text in mode_config(mode, true) {
                node.append_config(text).unwrap();
            }
        }
        block_in_place(|| fleet.start_all()).expect("fleet start");
        for (n, node) in fleet.nodes.iter().enumerate() {
            create_key(node, &format!("{ACTOR}-{n}")).await;
        }
        let from = block_in_place(|| newest_queue_id(&fleet));
        let (fleet_rate, p99s) = fleet_phase(&fleet, clients).await;
        let (lag50, lag99, integrated) = block_in_place(|| lag_ms(&fleet, from));
        println!(
            "{mode:22} 3 nodes, PostgreSQL : {fleet_rate:7.0} receipts/s  ({:.2}x one SQLite node)  Sign p99 per node {p99s:.1?}",
            fleet_rate / single_rate
        );
        println!(
            "{mode:22} integration lag     : p50 {lag50:.1} ms  p99 {lag99:.1} ms  over {integrated} entries"
        );
        if mode == "per-action"
            || (m + 1 == modes.len() && !modes.iter().any(|m| m == "per-action"))
        {
            let took = failover(&fleet).await;
            println!(
                "{mode:22} failover            : {took:.2?} (lease 3 s; SIGKILL -> next integration elsewhere)"
            );
        }
    }
}
