//! Fleet mode (issue 12): several signing nodes, one log in PostgreSQL.
//!
//! Each node places and signs its own actors' receipts as a single host does (its sequencer,
//! `server::sequencer`), but with no log index in them, and queues the signed entries
//! (`queue.rs`) instead of appending them. One integrator at a time, holding a lease with a
//! fencing epoch (`lease.rs`), takes every queued entry, checks it, extends the tree, signs
//! the checkpoint with the shared log key, writes it all in the transaction that checked the
//! lease, rewrites the log head in the log token and publishes the size it covers
//! (`integrator.rs`). A node answers once its entries are integrated and published.

pub mod anchor;
pub mod check;
pub mod handover;
pub mod head;
pub mod integrator;
pub mod lease;
pub mod metrics;
pub mod queue;

use std::time::Duration;

use crate::ledger::StoreError;

/// The channel a queue insert is announced on (the integrator listens).
pub const CHANNEL_QUEUED: &str = "actseal_fleet_queued";
/// The channel a published size is announced on (the nodes' waiters listen).
pub const CHANNEL_PUBLISHED: &str = "actseal_fleet_published";

/// How a node takes part in a fleet (`[fleet]`, docs/CONFIG.md).
#[derive(Debug, Clone)]
pub struct FleetSettings {
    /// This node's name, unique in the fleet.
    pub node: String,
    /// How long a lease lasts unless renewed: the bound on failover.
    pub lease: Duration,
    /// How often the holder integrates (a queue insert's NOTIFY wakes it sooner).
    pub integrate_interval: Duration,
    /// Most queued entries integrated in one transaction.
    pub max_batch: usize,
    /// How long a node waits for its entries to be integrated before it answers UNAVAILABLE.
    pub answer_timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    /// The database cannot be reached or the connection broke; callers get UNAVAILABLE.
    #[error("the fleet's database is unavailable: {0}")]
    Unavailable(String),
    #[error(transparent)]
    Store(StoreError),
    /// This node no longer holds the lease (another took it over): it stops integrating.
    #[error("fenced: the lease is held by {holder:?} at epoch {epoch}, not by this node")]
    Fenced { holder: String, epoch: i64 },
    #[error("{0}")]
    Refused(String),
}

impl From<postgres::Error> for FleetError {
    fn from(e: postgres::Error) -> Self {
        // The server's message (never a password: none is sent in a statement).
        FleetError::Unavailable(e.to_string())
    }
}

impl From<StoreError> for FleetError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(message) => FleetError::Unavailable(message),
            other => FleetError::Store(other),
        }
    }
}

/// Milliseconds as the `make_interval` seconds PostgreSQL takes.
pub(crate) fn seconds(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// A store on the shared log's database (its own connection, made again when lost; the
/// migrations applied). Never the single-host writer's: a fleet takes no single-host lock.
pub fn open_store(
    pg: &crate::ledger::store::postgres::PgSettings,
) -> Result<crate::ledger::Store, FleetError> {
    let location = crate::ledger::store::LedgerLocation::Postgres(pg.clone());
    Ok(crate::ledger::Store::open_at(&location)?)
}
