//! Shared set-up of the fleet tests: three daemons on one PostgreSQL log sharing one log
//! token, their actors, and callers signing as them under load.

use std::{
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use actseal::lab_fleet::Fleet;
use tempfile::TempDir;

/// The tests' `[fleet]` lines: a short lease so that failovers fit a test; integration
/// every 5 ms.
pub const FLEET: &str = "lease_ms = 1500\nintegrate_interval_ms = 5\nanswer_timeout_ms = 20000";

/// A temporary directory for a fleet (`prefix` names it); `None` where PostgreSQL is
/// missing (SKIPPED; a failure under CI=true).
pub fn fleet_dir(prefix: &str) -> Option<TempDir> {
    if !super::can_run(
        actseal::lab_postgres::server_bin().is_some(),
        "PostgreSQL (initdb, pg_ctl) is not installed",
    ) {
        return None;
    }
    Some(
        tempfile::Builder::new()
            .prefix(prefix)
            .tempdir()
            .expect("temp dir"),
    )
}

/// [`fleet_dir`], and what `set_up` makes in it from the daemon binary (run off the async
/// workers: it starts processes and waits for them).
pub async fn set_up_in<T: Send + 'static>(
    prefix: &str,
    set_up: impl FnOnce(&Path, &Path) -> T + Send + 'static,
) -> Option<(T, TempDir)> {
    let dir = fleet_dir(prefix)?;
    let path = dir.path().to_owned();
    let made = tokio::task::spawn_blocking(move || {
        set_up(&PathBuf::from(env!("CARGO_BIN_EXE_actseal")), &path)
    })
    .await
    .unwrap();
    Some((made, dir))
}

/// Three nodes with `[fleet]` lines `config`, `prepare`d (their configuration, before the
/// first start), then started.
pub async fn started(
    prefix: &str,
    config: &'static str,
    prepare: impl FnOnce(&mut Fleet) + Send + 'static,
) -> Option<(Fleet, TempDir)> {
    set_up_in(prefix, move |exe, dir| {
        let mut fleet = Fleet::create(exe, dir, 3, config).expect("fleet set-up");
        prepare(&mut fleet);
        fleet.start_all().expect("fleet start");
        fleet
    })
    .await
}

/// The `n`th actor of `node`.
pub fn actor(node: usize, n: usize) -> String {
    format!("spiffe://acme.example/node-{node}/agent-{n}")
}

/// The action document of a request.
pub fn document(request_id: &str) -> Vec<u8> {
    format!(r#"{{"tool_call":"bank.transfer","request":"{request_id}"}}"#).into_bytes()
}

/// Registers `per_node` actors ([`actor`]) on each node.
pub async fn create_actors(fleet: &mut Fleet, per_node: usize) {
    for (n, node) in fleet.nodes.iter_mut().enumerate() {
        for a in 0..per_node {
            super::create_key(node, &actor(n, a)).await;
        }
    }
}

/// What a caller was told: its request, actor, bundle and the bundle's log index.
#[derive(Clone)]
pub struct Acked {
    pub request_id: String,
    pub actor: String,
    pub bundle: String,
    pub log_index: u64,
}

/// A load's callers, and how many UNAVAILABLE answers they met on the way.
pub type Load = (Vec<tokio::task::JoinHandle<Vec<Acked>>>, Arc<Mutex<u64>>);

/// `workers` callers per node, the `w`th signing as actor `w` of its node, `count` actions
/// each or until `stop`; each retries an action up to `patience` ([`super::sign_until_acked`]).
pub fn spawn_load(
    fleet: &Fleet,
    workers: usize,
    count: usize,
    tag: &str,
    stop: &Arc<AtomicBool>,
    patience: Duration,
) -> Load {
    let unavailable = Arc::new(Mutex::new(0));
    let mut tasks = Vec::new();
    for (n, node) in fleet.nodes.iter().enumerate() {
        for w in 0..workers {
            let (socket, tag, stop) = (node.socket(), tag.to_owned(), Arc::clone(stop));
            let unavailable = Arc::clone(&unavailable);
            tasks.push(tokio::spawn(async move {
                let mut acked = Vec::new();
                for k in 0..count {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let request_id = format!("{tag}-{n}-{w}-{k}");
                    let mut request = super::sign_request(&actor(n, w), &document(&request_id));
                    request.request_id = request_id.clone();
                    let (bundle, log_index) =
                        super::sign_until_acked(&socket, request, patience, Some(&unavailable))
                            .await
                            .unwrap_or_else(|e| panic!("{request_id}: {e}"));
                    acked.push(Acked {
                        request_id,
                        actor: actor(n, w),
                        bundle,
                        log_index,
                    });
                }
                acked
            }));
        }
    }
    (tasks, unavailable)
}

/// Every caller's answers, once all have ended.
pub async fn collect(tasks: Vec<tokio::task::JoinHandle<Vec<Acked>>>) -> Vec<Acked> {
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.expect("load task"));
    }
    all
}
