//! Opening a fleet node (`[fleet]`, `crate::fleet`): the integrator starts first (the first
//! one to take the lease of an empty log creates the log key in the shared log token and the
//! log's identity); the node then loads that identity and its sequencer queues into the log.

use std::{sync::Arc, time::Instant};

use super::{Backends, StartError, open_log, rollback, sequencer, stored_log_identity};
use crate::{
    config::Config,
    fleet::{self, integrator, metrics::FleetMetrics},
    ledger::{Store, store::postgres::PgSettings},
    pki::device::DeviceIdentity,
};

/// How long a node waits at start-up for an integrator to set the log up.
const IDENTITY_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// A started fleet node's parts.
pub(super) struct FleetParts {
    pub reader: Store,
    pub log: sequencer::LogIdentity,
    pub node: sequencer::FleetNode,
    pub integrator: integrator::Integrator,
    pub metrics: Arc<FleetMetrics>,
    /// With `[anchor]`: this node's part in anchoring (the hook is in the integrator).
    pub anchor: Option<crate::anchor::FleetRole>,
}

/// The PostgreSQL settings of the shared log (fleet mode requires them).
pub(super) fn pg_settings(config: &Config) -> Result<PgSettings, StartError> {
    match config.ledger_location() {
        crate::ledger::store::LedgerLocation::Postgres(pg) => Ok(PgSettings {
            application_name: format!(
                "actseal-{}",
                config.fleet.as_ref().map_or("", |f| f.node.as_str())
            ),
            ..pg
        }),
        crate::ledger::store::LedgerLocation::Sqlite(_) => Err(StartError::Config(
            "[fleet] needs the log on PostgreSQL: set [ledger] url (and password_file)".into(),
        )),
    }
}

/// Starts the integrator and waits for the log's identity.
pub(super) fn open(
    config: &Config,
    backends: &Backends,
    device: &DeviceIdentity,
) -> Result<FleetParts, StartError> {
    let fleet_config = config
        .fleet
        .as_ref()
        .ok_or_else(|| StartError::Config("no [fleet] section".into()))?;
    let settings = fleet_config.settings();
    let pg = pg_settings(config)?;
    let metrics = Arc::new(FleetMetrics::new(&settings.node));
    let anchor = config
        .anchor
        .enabled()
        .then(|| crate::anchor::FleetRole::new(&settings.node));
    let take_over = {
        let backends = backends.clone();
        let device = device.clone();
        let origin = config.ledger.origin.clone();
        move |store: &Store| take_over(store, &backends, &device, origin.as_deref())
    };
    let integrator = integrator::spawn(integrator::Setup {
        settings: settings.clone(),
        pg: pg.clone(),
        log_backend: Arc::clone(&backends.log),
        take_over: Box::new(take_over),
        metrics: Arc::clone(&metrics),
        anchoring: anchor
            .as_ref()
            .map_or_else(fleet::anchor::AnchorHook::none, |a| a.hook()),
    })
    .map_err(|e| StartError::Config(e.to_string()))?;
    let reader = fleet::open_store(&pg).map_err(|e| StartError::Config(e.to_string()))?;
    let started = Instant::now();
    let log = loop {
        if let Some(log) = stored_log_identity(&reader, Arc::clone(&backends.log))? {
            break log;
        }
        if started.elapsed() > IDENTITY_WAIT {
            return Err(StartError::LogKey(
                "no integrator has set the fleet's log up (is the lease held by a node that cannot start?)".into(),
            ));
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    tracing::info!(node = %settings.node, origin = %log.origin, "fleet node: queueing into the shared log");
    Ok(FleetParts {
        reader,
        log,
        node: sequencer::FleetNode { settings, pg },
        integrator,
        metrics,
        anchor,
    })
}

/// Under the lease: the log identity (made on an empty log, the log key in the log token)
/// and the start-up check of the store against the log token's head, which it brings up to
/// the store. The head to continue from.
fn take_over(
    store: &Store,
    backends: &Backends,
    device: &DeviceIdentity,
    origin: Option<&str>,
) -> Result<(sequencer::LogIdentity, Option<crate::ledger::head::LogHead>), String> {
    let hardware = rollback::read_head(backends.log.as_ref()).map_err(|e| e.to_string())?;
    let (log, _) =
        open_log(store, backends, device, origin, hardware.as_ref()).map_err(|e| e.to_string())?;
    let (status, head) =
        rollback::check_start(store, &log, hardware.as_ref().map(|(h, _)| h), None)
            .map_err(|e| e.to_string())?;
    tracing::info!(
        size = status.size,
        checked = status.checked,
        "integrator: log verified under the lease"
    );
    Ok((log, head))
}
