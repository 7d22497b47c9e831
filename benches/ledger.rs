//! The ledger's cost as the log grows: `Sign` calls per second on a log of a thousand entries
//! and on one of a million (real receipts, signed through the daemon), the daemon's start-up
//! check of the whole log, and the time to verify 100,000 inclusion proofs.
//!
//! Run: `cargo bench --bench ledger`. `ACTSEAL_BENCH_LOG_SIZE` (default 1000000) sets the
//! large log's size, `ACTSEAL_BENCH_SECONDS` (default 5) each measured phase.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use actseal::{
    api::{
        CreateKeyRequest, GetCheckpointRequest, SignRequest, key_admin_client::KeyAdminClient,
        sign_request::Action, signer_client::SignerClient,
    },
    lab::Lab,
    ledger::{Store, merkle},
};

const ACTOR: &str = "spiffe://acme.example/agents/ledger-bench";

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn request(i: u64) -> SignRequest {
    SignRequest {
        actor: ACTOR.into(),
        action_type: "bench.action".into(),
        target: format!("bench:target:{i}"),
        action: Some(Action::Document(
            format!("action document {i} {}", "x".repeat(400)).into_bytes(),
        )),
        context: [("run".to_string(), "ledger-bench".to_string())].into(),
        parent_action_sha256: vec![],
        request_id: String::new(),
    }
}

/// Signs with `clients` concurrent clients until `deadline` or until the log reaches `until`
/// entries; returns the calls made.
async fn sign_load(
    lab: &Lab,
    clients: usize,
    duration: Option<Duration>,
    until: Option<u64>,
) -> u64 {
    let start = Instant::now();
    let counter = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut tasks = Vec::new();
    for c in 0..clients {
        let channel = actseal::cli::connect_unix(&lab.socket()).await.unwrap();
        let counter = counter.clone();
        tasks.push(tokio::spawn(async move {
            let mut client = SignerClient::new(channel);
            let mut i = c as u64 * 1_000_000_000;
            loop {
                if duration.is_some_and(|d| start.elapsed() >= d) {
                    break;
                }
                let response = client.sign(request(i)).await.unwrap().into_inner();
                i += 1;
                counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if until.is_some_and(|u| response.log_index + 1 >= u) {
                    break;
                }
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    counter.load(std::sync::atomic::Ordering::Relaxed)
}

async fn log_size(lab: &Lab) -> u64 {
    let channel = actseal::cli::connect_unix(&lab.socket()).await.unwrap();
    SignerClient::new(channel)
        .get_checkpoint(GetCheckpointRequest {})
        .await
        .map(|c| c.into_inner().size)
        .unwrap_or(0)
}

async fn measure(lab: &Lab, label: &str) {
    let seconds = Duration::from_secs_f64(env_or("ACTSEAL_BENCH_SECONDS", 5.0));
    for clients in [1, 8] {
        let calls = sign_load(lab, clients, Some(seconds), None).await;
        println!(
            "{label}: Sign, {clients} client(s): {:>8.0} calls/s",
            calls as f64 / seconds.as_secs_f64()
        );
    }
}

fn main() {
    let large: u64 = env_or("ACTSEAL_BENCH_LOG_SIZE", 1_000_000);
    let dir = tempfile::Builder::new()
        .prefix("actseal-ledger-bench-")
        .tempdir()
        .unwrap();
    let mut lab = Lab::create(
        Path::new(env!("CARGO_BIN_EXE_actseal")),
        &dir.path().join("lab"),
        false,
    )
    .expect("lab set-up");
    lab.start_daemon().unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let channel = actseal::cli::connect_unix(&lab.socket()).await.unwrap();
        KeyAdminClient::new(channel)
            .create_key(CreateKeyRequest {
                actor: ACTOR.into(),
            })
            .await
            .unwrap();
        sign_load(&lab, 8, None, Some(1000)).await;
        println!("log size {}", log_size(&lab).await);
        measure(&lab, "log of ~1k entries").await;

        let fill = Instant::now();
        let mut last = Instant::now();
        loop {
            let size = log_size(&lab).await;
            if size >= large {
                break;
            }
            sign_load(&lab, 8, Some(Duration::from_secs(30)), Some(large)).await;
            if last.elapsed() > Duration::from_secs(60) {
                eprintln!(
                    "  … {} entries after {:.0} s",
                    log_size(&lab).await,
                    fill.elapsed().as_secs_f64()
                );
                last = Instant::now();
            }
        }
        let size = log_size(&lab).await;
        println!(
            "filled to {size} entries in {:.0} s",
            fill.elapsed().as_secs_f64()
        );
        measure(&lab, &format!("log of ~{}k entries", size / 1000)).await;
    });

    // Start-up re-verifies the whole log (every entry, every node, the checkpoint).
    lab.stop_daemon().unwrap();
    let start = Instant::now();
    lab.start_daemon().unwrap();
    println!(
        "daemon start-up with the full log check: {:.1} s",
        start.elapsed().as_secs_f64()
    );
    lab.stop_daemon().unwrap();

    // 100,000 inclusion proofs against the newest tree, built from the stored nodes, then
    // verified with the offline verifier's independent code.
    let store = Store::open(&lab.dir.join("state/actseal.db")).unwrap();
    let checkpoint = store.latest_checkpoint().unwrap().unwrap();
    let count = 100_000u64;
    let mut leaves = Vec::with_capacity(count as usize);
    let mut proofs = Vec::with_capacity(count as usize);
    let step = (checkpoint.size / count).max(1);
    let build = Instant::now();
    for i in 0..count {
        let index = (i * step) % checkpoint.size;
        proofs.push((
            index,
            merkle::inclusion_proof(&store, index, checkpoint.size).unwrap(),
        ));
    }
    let built = build.elapsed();
    store
        .for_each_entry(|index, _, _, entry| {
            if index % step == 0 && (leaves.len() as u64) < count {
                leaves.push((index, merkle::leaf_hash(entry)));
            }
            Ok(())
        })
        .unwrap();
    let leaf_of: std::collections::HashMap<u64, [u8; 32]> = leaves.into_iter().collect();
    let verify = Instant::now();
    for (index, proof) in &proofs {
        actseal::verify::merkle::verify_inclusion(
            &leaf_of[index],
            *index,
            checkpoint.size,
            proof,
            &checkpoint.root,
        )
        .expect("proof verifies");
    }
    let verified = verify.elapsed();
    println!(
        "{count} inclusion proofs in a tree of {}: built from SQLite in {:.2} s, verified in {:.3} s ({:.1} µs each)",
        checkpoint.size,
        built.as_secs_f64(),
        verified.as_secs_f64(),
        verified.as_secs_f64() * 1e6 / count as f64
    );
    let db_bytes = std::fs::metadata(lab.dir.join("state/actseal.db"))
        .map(|m| m.len())
        .unwrap_or(0);
    println!(
        "state database: {:.0} MiB",
        db_bytes as f64 / (1024.0 * 1024.0)
    );
}
