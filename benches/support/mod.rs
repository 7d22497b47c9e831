//! What the benches share: a SoftHSM lab with its daemon, phase length and the daemon load
//! generator.
// Each bench uses some of these.
#![allow(dead_code)]

pub mod raw;

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use actseal::{
    api::{SignRequest, sign_request::Action, signer_client::SignerClient},
    lab::Lab,
};

/// A SoftHSM lab in a temporary directory (`prefix`), its module told where the lab's tokens
/// are (for a backend opened in the bench process too), and its daemon started.
pub fn started_softhsm_lab(prefix: &str) -> (tempfile::TempDir, Lab) {
    let dir = tempfile::Builder::new().prefix(prefix).tempdir().unwrap();
    let mut lab = Lab::create(
        std::path::Path::new(env!("CARGO_BIN_EXE_actseal")),
        &dir.path().join("lab"),
        false,
    )
    .expect("lab set-up");
    // SAFETY: set before any thread is started; the module reads it at C_Initialize.
    unsafe { std::env::set_var("SOFTHSM2_CONF", lab.dir.join("softhsm2.conf")) };
    lab.start_daemon().unwrap();
    (dir, lab)
}

/// The daemon binary the labs run: `ACTSEAL_BENCH_DAEMON` (e.g. a copy of an earlier build,
/// for a before/after comparison in one run), else this build's.
pub fn daemon_binary() -> std::path::PathBuf {
    std::env::var_os("ACTSEAL_BENCH_DAEMON")
        .map_or_else(|| env!("CARGO_BIN_EXE_actseal").into(), Into::into)
}

/// A TPM lab (its own swtpm) in a new temporary directory, the daemon not yet started: swtpm
/// serves one client at a time, so raw TPM figures come first.
pub fn tpm_lab(prefix: &str) -> (tempfile::TempDir, Lab) {
    let dir = tempfile::Builder::new().prefix(prefix).tempdir().unwrap();
    let lab = Lab::create_with_backend(
        &daemon_binary(),
        &dir.path().join("lab"),
        false,
        actseal::lab::LabBackend::Tpm,
    )
    .expect("TPM lab set-up");
    (dir, lab)
}

/// Length of each measured phase: `ACTSEAL_BENCH_SECONDS`, 5 s by default.
pub fn phase_seconds() -> Duration {
    let secs = std::env::var("ACTSEAL_BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5.0);
    Duration::from_secs_f64(secs)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// `Sign` calls per second as `actor` with `clients` concurrent clients, each on its own
/// connection and waiting for each answer; with the p50 and p99 latency.
pub async fn daemon_rate(lab: &Lab, actor: &str, clients: usize) -> (f64, Duration, Duration) {
    let duration = phase_seconds();
    let document = Arc::new(vec![b'x'; 512]);
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let channel = actseal::cli::connect_unix(&lab.socket()).await.unwrap();
        let document = Arc::clone(&document);
        let actor = actor.to_owned();
        tasks.push(tokio::spawn(async move {
            let mut client = SignerClient::new(channel);
            let mut latencies = Vec::new();
            let start = Instant::now();
            while start.elapsed() < duration {
                let t = Instant::now();
                client
                    .sign(SignRequest {
                        actor: actor.clone(),
                        action_type: "bench.action".into(),
                        target: "bench:target".into(),
                        action: Some(Action::Document(document.to_vec())),
                        context: Default::default(),
                        parent_action_sha256: vec![],
                        request_id: String::new(),
                    })
                    .await
                    .unwrap();
                latencies.push(t.elapsed());
            }
            latencies
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    all.sort();
    (
        all.len() as f64 / duration.as_secs_f64(),
        percentile(&all, 0.5),
        percentile(&all, 0.99),
    )
}

/// `SignStream` actions per second as `actor` with `clients` concurrent streams, each on its
/// own connection keeping `in_flight` actions outstanding (sending the next as an answer
/// comes); with the p50 and p99 latency from sending an action to its answer. Panics on any
/// per-action error.
pub async fn stream_rate(
    lab: &Lab,
    actor: &str,
    clients: usize,
    in_flight: usize,
) -> (f64, Duration, Duration) {
    use actseal::api::{
        SignStreamRequest, sign_stream_response::Result as Answer,
        stream_signer_client::StreamSignerClient,
    };
    use tokio_stream::StreamExt;
    let duration = phase_seconds();
    let document = vec![b'x'; 512];
    let request = SignRequest {
        actor: actor.to_owned(),
        action_type: "bench.action".into(),
        target: "bench:target".into(),
        action: Some(Action::Document(document)),
        context: Default::default(),
        parent_action_sha256: vec![],
        request_id: String::new(),
    };
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let channel = actseal::cli::connect_unix(&lab.socket()).await.unwrap();
        let request = request.clone();
        tasks.push(tokio::spawn(async move {
            let (tx, rx) = tokio::sync::mpsc::channel(in_flight);
            let mut answers = StreamSignerClient::new(channel)
                .sign_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await
                .unwrap()
                .into_inner();
            let mut sent_at = std::collections::HashMap::new();
            let mut next = 0u64;
            let start = Instant::now();
            for _ in 0..in_flight {
                sent_at.insert(next, Instant::now());
                tx.send(SignStreamRequest {
                    correlation_id: next,
                    request: Some(request.clone()),
                })
                .await
                .unwrap();
                next += 1;
            }
            let mut latencies = Vec::new();
            while let Some(answer) = answers.next().await {
                let answer = answer.unwrap();
                match answer.result {
                    Some(Answer::Signed(_)) => {}
                    other => panic!("stream action failed: {other:?}"),
                }
                let sent = sent_at.remove(&answer.correlation_id).unwrap();
                // Only actions sent within the phase count.
                if start.elapsed() < duration {
                    latencies.push(sent.elapsed());
                    sent_at.insert(next, Instant::now());
                    tx.send(SignStreamRequest {
                        correlation_id: next,
                        request: Some(request.clone()),
                    })
                    .await
                    .unwrap();
                    next += 1;
                } else if sent_at.is_empty() {
                    break;
                }
            }
            latencies
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    all.sort();
    (
        all.len() as f64 / duration.as_secs_f64(),
        percentile(&all, 0.5),
        percentile(&all, 0.99),
    )
}

/// The daemon's resident set (VmRSS) and its peak (VmHWM), in KiB, from /proc.
pub fn daemon_rss_kib(lab: &Lab) -> (u64, u64) {
    let pid = lab.daemon_pid().expect("the daemon runs");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// The daemon's CPU time so far (user + system, all its threads), from /proc.
pub fn daemon_cpu(lab: &Lab) -> Duration {
    let pid = lab.daemon_pid().expect("the daemon runs");
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which may hold spaces): utime and stime are 14 and 15.
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<u64> = after
        .split_whitespace()
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    // SAFETY: sysconf reads a constant of the system.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Duration::from_secs_f64((fields[11] + fields[12]) as f64 / ticks)
}

/// Runs `phase` while watching the daemon: its result, the daemon's CPU time meanwhile and its
/// largest resident set (VmRSS, KiB) sampled every 20 ms.
pub fn watching_daemon<T>(lab: &Lab, phase: impl FnOnce() -> T) -> (T, Duration, u64) {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let (stop, peak) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicU64::new(0)),
    );
    let pid = lab.daemon_pid().expect("the daemon runs");
    let sampler = {
        let (stop, peak) = (Arc::clone(&stop), Arc::clone(&peak));
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
                    let rss = status
                        .lines()
                        .find_map(|l| l.strip_prefix("VmRSS:"))
                        .and_then(|v| v.split_whitespace().next())
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0);
                    peak.fetch_max(rss, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let before = daemon_cpu(lab);
    let result = phase();
    let cpu = daemon_cpu(lab).saturating_sub(before);
    stop.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    (result, cpu, peak.load(Ordering::Relaxed))
}
