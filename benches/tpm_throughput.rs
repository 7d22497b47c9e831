//! TPM figures in one run against a private swtpm: raw TPM2_Sign per second (key loaded
//! once, password session), the backend's sign (cached key, signature checked), and daemon
//! `Sign` calls per second over its Unix socket with 1 and 8 concurrent clients.
//!
//! Run: `cargo bench --bench tpm_throughput` (ACTSEAL_BENCH_SECONDS sets each phase's
//! length; default 5).

#[path = "support/mod.rs"]
mod support;

use std::time::Instant;

use actseal::{
    api::{CreateKeyRequest, key_admin_client::KeyAdminClient},
    backend::{
        Backend,
        tpm::{TpmBackend, TpmSettings},
    },
};

const ACTOR: &str = "spiffe://acme.example/agents/tpm-bench";

/// The backend's sign_digest: the key stays loaded; a software check of each signature.
fn backend_sign_rate(tcti: &str) -> f64 {
    let backend = TpmBackend::open(&TpmSettings::new(tcti)).unwrap();
    let key = backend.create_key("bench").unwrap();
    let duration = support::phase_seconds();
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < duration {
        backend.sign_digest(&key, &[0x5a; 32]).unwrap();
        n += 1;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    let (_dir, mut lab) = support::tpm_lab("actseal-tpm-bench-");
    let tcti = lab.tpm().unwrap().tcti();
    println!(
        "swtpm at {tcti}; phase length: {:?}; cores: {}",
        support::phase_seconds(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    // swtpm serves one connection at a time: raw figures first, then the daemon.
    let raw = support::raw::tpm_rate(&tcti);
    println!("raw TPM2_Sign (ECDSA P-256, key loaded once):    {raw:>8.0} signs/s");
    let backend = backend_sign_rate(&tcti);
    println!("backend sign_digest (cached key, checked):       {backend:>8.0} signs/s");

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
    });
    for clients in [1, 8] {
        let (rate, p50, p99) = runtime.block_on(support::daemon_rate(&lab, ACTOR, clients));
        println!(
            "daemon Sign over Unix socket, {clients} client(s):     {rate:>8.0} calls/s  (p50 {:.2} ms, p99 {:.2} ms; {:.1}% of raw TPM2_Sign)",
            p50.as_secs_f64() * 1e3,
            p99.as_secs_f64() * 1e3,
            100.0 * rate / raw
        );
    }
    lab.stop_daemon().unwrap();
}
