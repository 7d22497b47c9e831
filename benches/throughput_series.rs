//! The throughput series of issue 10, all in one run: for SoftHSM, swtpm and an emulated
//! discrete TPM (SoftHSM limited to 20 signatures a second, `[testing]
//! emulate_signatures_per_second`: a benchmark aid, docs/CONFIG.md), the raw hardware rate and
//! the daemon's rate at c = 1, 2, 8, 32 clients in three modes:
//!
//! * `per-action`: unary `Sign`, each client waiting for its answer (mode `single`);
//! * `batch`: unary `Sign` as an actor in batch mode (`[[ledger.batch]]`, window
//!   `ACTSEAL_BENCH_WINDOW_MS`, default 5 ms);
//! * `batch+stream`: `SignStream` as that actor, each client keeping `ACTSEAL_BENCH_IN_FLIGHT`
//!   (default 64) actions outstanding.
//!
//! Every client sends a 512-byte document. Each row prints calls/s, p50 and p99 latency and the
//! ratio to the raw rate; after c = 32 the daemon's resident set (VmRSS, VmHWM).
//!
//! Run: `cargo bench --bench throughput_series` (ACTSEAL_BENCH_SECONDS per phase, default 5;
//! ACTSEAL_BENCH_BACKENDS, default "softhsm,swtpm,emulated", picks the series;
//! ACTSEAL_BENCH_MODES, default "per-action,batch,batch+stream", the modes).

#[path = "support/mod.rs"]
mod support;

use std::path::Path;

use actseal::{
    api::{CreateKeyRequest, key_admin_client::KeyAdminClient},
    lab::{Lab, SOFTHSM_MODULE},
};

const SINGLE: &str = "spiffe://acme.example/agents/bench-single";
const BATCH: &str = "spiffe://acme.example/agents/bench-batch";
const CLIENTS: [usize; 4] = [1, 2, 8, 32];
/// The emulated discrete TPM's signatures a second.
const EMULATED_RATE: u32 = 20;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// Batch mode for BATCH, room for the stream clients, and the emulated rate if asked.
fn configure(lab: &Lab, emulated: Option<u32>) {
    let window = env_or("ACTSEAL_BENCH_WINDOW_MS", 5);
    let mut config = std::fs::read_to_string(lab.config()).unwrap();
    config = config.replacen(
        "[server]\n",
        "[server]\nlimits = { max_connections_per_caller = 256, max_stream_actions_in_flight = 8192 }\n",
        1,
    );
    assert!(
        !config.contains("[ledger]"),
        "the lab's config has no [ledger] table yet"
    );
    config.push_str(&format!(
        "\n[ledger]\nmax_batch_size = 4096\n\n[[ledger.batch]]\nactors = [\"{BATCH}\"]\nwindow_ms = {window}\n"
    ));
    if let Some(rate) = emulated {
        config.push_str(&format!(
            "\n[testing]\nemulate_signatures_per_second = {rate}\n"
        ));
    }
    std::fs::write(lab.config(), config).unwrap();
}

async fn create_key(lab: &Lab, actor: &str) -> actseal::api::ActorKey {
    let channel = actseal::cli::connect_unix(&lab.socket()).await.unwrap();
    KeyAdminClient::new(channel)
        .create_key(CreateKeyRequest {
            actor: actor.into(),
        })
        .await
        .unwrap()
        .into_inner()
}

fn row(
    what: &str,
    c: usize,
    (rate, p50, p99): (f64, std::time::Duration, std::time::Duration),
    raw: f64,
) {
    println!(
        "| {what} | {c} | {rate:.0} | {:.2} | {:.2} | {:.1} % |",
        p50.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3,
        100.0 * rate / raw
    );
}

/// Whether ACTSEAL_BENCH_MODES asks for `mode`.
fn wanted(mode: &str) -> bool {
    std::env::var("ACTSEAL_BENCH_MODES")
        .map(|modes| modes.split(',').any(|m| m.trim() == mode))
        .unwrap_or(true)
}

fn series(name: &str, lab: &Lab, runtime: &tokio::runtime::Runtime, raw: f64) {
    let in_flight = env_or("ACTSEAL_BENCH_IN_FLIGHT", 64) as usize;
    println!("\n{name} (raw rate {raw:.0}/s)\n");
    println!(
        "| mode | c | receipts/s | p50 ms | p99 ms | of raw |\n| --- | --- | --- | --- | --- | --- |"
    );
    for (mode, actor) in [("per-action", SINGLE), ("batch", BATCH)] {
        if !wanted(mode) {
            continue;
        }
        for c in CLIENTS {
            row(
                mode,
                c,
                runtime.block_on(support::daemon_rate(lab, actor, c)),
                raw,
            );
        }
        let (rss, hwm) = support::daemon_rss_kib(lab);
        println!(
            "| {mode}: daemon RSS after c=32 | | {:.1} MiB (peak {:.1} MiB) | | | |",
            rss as f64 / 1024.0,
            hwm as f64 / 1024.0
        );
    }
    if !wanted("batch+stream") {
        return;
    }
    for c in CLIENTS {
        row(
            &format!("batch+stream ({in_flight} in flight each)"),
            c,
            runtime.block_on(support::stream_rate(lab, BATCH, c, in_flight)),
            raw,
        );
    }
    let (rss, hwm) = support::daemon_rss_kib(lab);
    println!(
        "| batch+stream: daemon RSS after c=32 | | {:.1} MiB (peak {:.1} MiB) | | | |",
        rss as f64 / 1024.0,
        hwm as f64 / 1024.0
    );
}

fn softhsm(runtime: &tokio::runtime::Runtime, emulated: Option<u32>) {
    let dir = tempfile::Builder::new()
        .prefix("actseal-series-")
        .tempdir()
        .unwrap();
    let mut lab = Lab::create(
        Path::new(env!("CARGO_BIN_EXE_actseal")),
        &dir.path().join("lab"),
        false,
    )
    .expect("lab set-up");
    // SAFETY: set before this process opens the module; it reads it at C_Initialize.
    unsafe { std::env::set_var("SOFTHSM2_CONF", lab.dir.join("softhsm2.conf")) };
    configure(&lab, emulated);
    lab.start_daemon().unwrap();
    let key = runtime.block_on(create_key(&lab, SINGLE));
    runtime.block_on(create_key(&lab, BATCH));
    let raw = match emulated {
        Some(rate) => f64::from(rate),
        None => {
            let ctx = actseal::backend::pkcs11::load_module(Path::new(SOFTHSM_MODULE)).unwrap();
            let id = support::raw::cka_id(&key.lineage_json);
            for sessions in [1, 2, 8] {
                println!(
                    "raw C_Sign, {sessions} session(s): {:.0}/s",
                    support::raw::token_rate(&lab, &ctx, &id, sessions)
                );
            }
            support::raw::token_rate(&lab, &ctx, &id, 8)
        }
    };
    let name = match emulated {
        Some(rate) => {
            format!("Emulated discrete TPM: SoftHSM limited to {rate} signatures/s (benchmark aid)")
        }
        None => "SoftHSM 2 (raw: C_Sign, 8 sessions)".into(),
    };
    series(&name, &lab, runtime, raw);
    lab.stop_daemon().unwrap();
}

fn swtpm(runtime: &tokio::runtime::Runtime) {
    let (_dir, mut lab) = support::tpm_lab("actseal-series-tpm-");
    // The raw rate first: swtpm serves one client at a time.
    let tcti = lab.tpm().unwrap().tcti();
    let raw = support::raw::tpm_rate(&tcti);
    println!("raw TPM2_Sign (password session, key loaded once): {raw:.0}/s");
    configure(&lab, None);
    lab.start_daemon().unwrap();
    runtime.block_on(create_key(&lab, SINGLE));
    runtime.block_on(create_key(&lab, BATCH));
    series(
        "swtpm (raw: TPM2_Sign, password session)",
        &lab,
        runtime,
        raw,
    );
    lab.stop_daemon().unwrap();
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let backends =
        std::env::var("ACTSEAL_BENCH_BACKENDS").unwrap_or_else(|_| "softhsm,swtpm,emulated".into());
    println!(
        "phase {:?}; batch window {} ms; cores {}",
        support::phase_seconds(),
        env_or("ACTSEAL_BENCH_WINDOW_MS", 5),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    for backend in backends.split(',') {
        match backend {
            "softhsm" => softhsm(&runtime, None),
            "swtpm" => swtpm(&runtime),
            "emulated" => softhsm(&runtime, Some(EMULATED_RATE)),
            other => panic!("unknown backend {other:?} in ACTSEAL_BENCH_BACKENDS"),
        }
    }
}
