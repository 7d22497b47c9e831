//! Sign throughput through the daemon over its Unix socket (1 and 8 concurrent clients),
//! beside the token's raw ECDSA P-256 sign rate measured in the same run.
//!
//! Run: `cargo bench --bench sign_throughput` (set ACTSEAL_BENCH_SECONDS to change the
//! duration of each phase; default 5).

#[path = "support/mod.rs"]
mod support;

use std::path::Path;

use actseal::{
    api::{CreateKeyRequest, key_admin_client::KeyAdminClient},
    lab::SOFTHSM_MODULE,
};

const ACTOR: &str = "spiffe://acme.example/agents/bench";

fn main() {
    // `cargo bench` passes --bench; nothing else to parse.
    let (_dir, mut lab) = support::started_softhsm_lab("actseal-bench-");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let key = runtime.block_on(async {
        let channel = actseal::cli::connect_unix(&lab.socket()).await.unwrap();
        KeyAdminClient::new(channel)
            .create_key(CreateKeyRequest {
                actor: ACTOR.into(),
            })
            .await
            .unwrap()
            .into_inner()
    });
    let lineage: serde_json::Value = serde_json::from_str(&key.lineage_json).unwrap();
    let payload = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD
            .decode(lineage["statement"]["payload"].as_str().unwrap())
            .unwrap()
    };
    let statement: serde_json::Value = serde_json::from_slice(&payload).unwrap();
    let cka_id = hex::decode(statement["predicate"]["attributes"]["id"].as_str().unwrap()).unwrap();

    let ctx = actseal::backend::pkcs11::load_module(Path::new(SOFTHSM_MODULE)).unwrap();
    println!(
        "phase length: {:?}; cores: {}",
        support::phase_seconds(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let raw1 = support::raw::token_rate(&lab, &ctx, &cka_id, 1);
    println!("token raw C_Sign (ECDSA P-256), 1 session : {raw1:>8.0} signs/s");
    let raw2 = support::raw::token_rate(&lab, &ctx, &cka_id, 2);
    println!("token raw C_Sign (ECDSA P-256), 2 sessions: {raw2:>8.0} signs/s");
    for clients in [1, 8] {
        let (rate, p50, p99) = runtime.block_on(support::daemon_rate(&lab, ACTOR, clients));
        println!(
            "daemon Sign over Unix socket, {clients} client(s): {rate:>8.0} calls/s  (p50 {:.2} ms, p99 {:.2} ms; {:.1}% of raw 1-session rate)",
            p50.as_secs_f64() * 1e3,
            p99.as_secs_f64() * 1e3,
            100.0 * rate / raw1
        );
    }
    lab.stop_daemon().unwrap();
}
