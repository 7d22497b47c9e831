//! Fleet throughput (issue 12): three nodes queueing into one PostgreSQL log against one
//! node on SQLite, in the same run, with the same clients per node; the integration lag
//! (queued -> integrated) at that load; the failover time (SIGKILL of the integrator ->
//! the next integration by another node).
//!
//! `cargo bench --bench fleet_throughput` (`ACTSEAL_BENCH_SECONDS`, `ACTSEAL_BENCH_CLIENTS`).

mod support;

use std::time::{Duration, Instant};

use actseal::{lab::Lab, lab_fleet::Fleet};

fn clients() -> usize {
    std::env::var("ACTSEAL_BENCH_CLIENTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(8)
}

const ACTOR: &str = "spiffe://bench.example/agent";

async fn create_key(lab: &Lab, actor: &str) {
    let channel = actseal::cli::connect_unix(&lab.socket()).await.unwrap();
    actseal::api::key_admin_client::KeyAdminClient::new(channel)
        .create_key(actseal::api::CreateKeyRequest {
            actor: actor.into(),
        })
        .await
        .unwrap();
}

/// Integration lag quantiles (ms) of what was integrated after `from` (queue id).
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

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let clients = clients();
    let seconds = support::phase_seconds();
    println!(
        "fleet_throughput: {clients} clients per node, {seconds:?} per phase, SoftHSM per-action Sign"
    );

    // One node on SQLite.
    let (_single_dir, single) = support::started_softhsm_lab("actseal-bench-single-");
    create_key(&single, ACTOR).await;
    let (single_rate, p50, p99) = support::daemon_rate(&single, ACTOR, clients).await;
    println!("1 node, SQLite      : {single_rate:8.0} receipts/s  p50 {p50:?} p99 {p99:?}");
    drop(single);

    // Three nodes into one PostgreSQL log.
    let dir = tempfile::Builder::new()
        .prefix("actseal-bench-fleet-")
        .tempdir()
        .unwrap();
    let exe = std::path::PathBuf::from(env!("CARGO_BIN_EXE_actseal"));
    let mut fleet = Fleet::create(
        &exe,
        dir.path(),
        3,
        "lease_ms = 3000\nintegrate_interval_ms = 5",
    )
    .expect("fleet set-up");
    fleet.start_all().expect("fleet start");
    for (n, node) in fleet.nodes.iter().enumerate() {
        create_key(node, &format!("{ACTOR}-{n}")).await;
    }
    let from = newest_queue_id(&fleet);
    let actors: Vec<String> = (0..3).map(|n| format!("{ACTOR}-{n}")).collect();
    let (a, b, c) = tokio::join!(
        support::daemon_rate(&fleet.nodes[0], &actors[0], clients),
        support::daemon_rate(&fleet.nodes[1], &actors[1], clients),
        support::daemon_rate(&fleet.nodes[2], &actors[2], clients),
    );
    let fleet_rate = a.0 + b.0 + c.0;
    let p99s = [a.2, b.2, c.2];
    let (lag50, lag99, integrated) = lag_ms(&fleet, from);
    println!(
        "3 nodes, PostgreSQL : {fleet_rate:8.0} receipts/s  Sign p99 per node {p99s:?}  ({:.2}x one SQLite node)",
        fleet_rate / single_rate
    );
    println!(
        "integration lag     : p50 {lag50:.1} ms  p99 {lag99:.1} ms  over {integrated} entries"
    );

    // Failover: SIGKILL the integrator under load; time to the next integration elsewhere.
    let holder = fleet.holder().unwrap().expect("a lease holder");
    let pids: Vec<u32> = fleet
        .nodes
        .iter()
        .map(|n| n.daemon_pid().unwrap())
        .collect();
    let load_node = (holder + 1) % 3;
    let load_actor = format!("{ACTOR}-{load_node}");
    let load_lab = &fleet.nodes[load_node];
    let load = support::daemon_rate(load_lab, &load_actor, 2);
    let watch = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (_, epoch, published) = fleet.lease().unwrap().unwrap();
        let killed = Instant::now();
        // The integrator's pid, killed from here: the lab itself is borrowed by the load.
        let _ = std::process::Command::new("kill")
            .args(["-KILL", &pids[holder].to_string()])
            .status();
        loop {
            let (who, now, size) = fleet.lease().unwrap().unwrap();
            if now > epoch && who != format!("node-{holder}") && size > published {
                break killed.elapsed();
            }
            assert!(killed.elapsed() < Duration::from_secs(30), "no failover");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    let (_, failover) = tokio::join!(load, watch);
    println!(
        "failover            : {failover:?} (lease 3 s; SIGKILL -> next integration by another node)"
    );
}
