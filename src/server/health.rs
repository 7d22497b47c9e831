//! The gRPC health service tells the truth about the backend: the signing services are
//! NOT_SERVING while the hardware is down (or not ours), SERVING again once it is back.
//!
//! Asking the backend also drives its recovery when no request does: a backend whose next
//! attempt is due makes it on this probe, so a healed token is noticed without traffic.

use std::{sync::Arc, time::Duration};

use tonic_health::{ServingStatus, server::HealthReporter};

use crate::backend::Backend;

/// How often the backend is asked.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// How long one answer may take before the backend counts as down.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Asks the backend whether it answers; a hung backend counts as down.
pub async fn backend_up(backend: Arc<dyn Backend>) -> Result<(), String> {
    match tokio::time::timeout(
        PROBE_TIMEOUT,
        tokio::task::spawn_blocking(move || backend.health()),
    )
    .await
    {
        Ok(Ok(Ok(()))) => Ok(()),
        Ok(Ok(Err(e))) => Err(e.to_string()),
        Ok(Err(_)) => Err("the health probe failed".into()),
        Err(_) => Err(format!(
            "the backend did not answer within {} ms",
            PROBE_TIMEOUT.as_millis()
        )),
    }
}

/// Marks `services` (and the server as a whole, "") SERVING — the backend answered at
/// start-up — and keeps them in step with the backend's health from then on.
pub async fn follow_backend(
    reporter: HealthReporter,
    backend: Arc<dyn Backend>,
    services: &'static [&'static str],
) -> tokio::task::JoinHandle<()> {
    set_all(&reporter, services, ServingStatus::Serving).await;
    tokio::spawn(async move {
        let mut up = true;
        loop {
            tokio::time::sleep(PROBE_INTERVAL).await;
            let health = backend_up(Arc::clone(&backend)).await;
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
