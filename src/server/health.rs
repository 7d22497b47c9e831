//! The gRPC health service and `/metrics` tell the truth about the backend: the signing
//! services are NOT_SERVING (and `actseal_backend_up` 0) while the hardware is down or not
//! ours, SERVING again once it is back.
//!
//! Asking the backend also drives its recovery when no request does: a backend whose next
//! attempt is due makes it on this probe, so a healed token is noticed without traffic.

use std::{sync::Arc, time::Duration};

use tokio::{sync::Mutex, task::JoinHandle};
use tonic_health::{ServingStatus, server::HealthReporter};

use crate::backend::Backend;

/// How often the backend is asked.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// How long one answer may take before the backend counts as down.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Asks the backend whether it answers, one question at a time: a backend that hangs
/// costs one blocked thread, however many probes and scrapes come meanwhile.
pub struct HealthProbe {
    backend: Arc<dyn Backend>,
    /// The `[log_token]`'s backend, asked after the actors': without it nothing is logged.
    log_token: Option<Arc<dyn Backend>>,
    in_flight: Mutex<Option<JoinHandle<Result<(), String>>>>,
}

impl HealthProbe {
    pub fn new(backend: Arc<dyn Backend>) -> Self {
        HealthProbe {
            backend,
            log_token: None,
            in_flight: Mutex::new(None),
        }
    }

    /// Also asks the separate log token (`[log_token]`).
    pub fn with_log_token(mut self, log_token: Arc<dyn Backend>) -> Self {
        self.log_token = Some(log_token);
        self
    }

    /// `Ok` if the backend answered and is ours; the reason otherwise. A hung backend
    /// counts as down; its unanswered question is awaited again by the next check.
    pub async fn check(&self) -> Result<(), String> {
        let mut in_flight = self.in_flight.lock().await;
        let task = in_flight.get_or_insert_with(|| {
            let backend = Arc::clone(&self.backend);
            let log_token = self.log_token.clone();
            tokio::task::spawn_blocking(move || {
                backend.health().map_err(|e| e.to_string())?;
                match log_token {
                    Some(log_token) => log_token.health().map_err(|e| format!("log token: {e}")),
                    None => Ok(()),
                }
            })
        });
        match tokio::time::timeout(PROBE_TIMEOUT, task).await {
            Ok(answer) => {
                *in_flight = None;
                answer.unwrap_or_else(|_| Err("the health probe failed".into()))
            }
            Err(_) => Err(format!(
                "the backend did not answer within {} ms",
                PROBE_TIMEOUT.as_millis()
            )),
        }
    }
}

/// Marks `services` (and the server as a whole, "") SERVING — the backend answered at
/// start-up — and keeps them in step with the backend's health from then on.
pub async fn follow_backend(
    reporter: HealthReporter,
    probe: Arc<HealthProbe>,
    services: &'static [&'static str],
) -> JoinHandle<()> {
    set_all(&reporter, services, ServingStatus::Serving).await;
    tokio::spawn(async move {
        let mut up = true;
        loop {
            tokio::time::sleep(PROBE_INTERVAL).await;
            let health = probe.check().await;
            if health.is_ok() == up {
                continue;
            }
            up = health.is_ok();
            match &health {
                Ok(()) => tracing::info!("backend up: health says SERVING again"),
                Err(e) => tracing::warn!(error = %e, "backend down: health says NOT_SERVING"),
            }
            let status = if up {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            };
            set_all(&reporter, services, status).await;
        }
    })
}

async fn set_all(reporter: &HealthReporter, services: &[&str], status: ServingStatus) {
    for service in services.iter().copied().chain([""]) {
        reporter.set_service_status(service, status).await;
    }
}
