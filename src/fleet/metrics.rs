//! A node's fleet metrics, rendered with the daemon's others (`server::metrics`): queue
//! depth, integration lag (queued → integrated and published), the lease holder and epoch,
//! entries integrated.

use std::{
    fmt::Write as _,
    sync::{
        Mutex,
        atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering},
    },
};

/// Upper bounds (seconds) of the integration lag histogram's buckets.
const LAG_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

#[derive(Default)]
struct Lag {
    counts: [u64; LAG_BUCKETS.len()],
    count: u64,
    sum: f64,
}

/// Counters and gauges of one node's part in the fleet.
#[derive(Default)]
pub struct FleetMetrics {
    node: String,
    queue_depth: AtomicU64,
    is_holder: AtomicBool,
    epoch: AtomicI64,
    holder: Mutex<String>,
    integrated: AtomicU64,
    fenced: AtomicU64,
    takeovers: AtomicU64,
    published_size: AtomicU64,
    lag: Mutex<Lag>,
}

impl FleetMetrics {
    pub fn new(node: &str) -> Self {
        FleetMetrics {
            node: node.to_owned(),
            ..Default::default()
        }
    }

    pub fn set_queue_depth(&self, depth: u64) {
        self.queue_depth.store(depth, Ordering::Relaxed);
    }

    /// The lease as last seen: who holds it, at which epoch, and whether it is this node.
    pub fn set_lease(&self, holder: &str, epoch: i64, published_size: u64) {
        *self.holder.lock().unwrap_or_else(|p| p.into_inner()) = holder.to_owned();
        self.epoch.store(epoch, Ordering::Relaxed);
        self.is_holder.store(holder == self.node, Ordering::Relaxed);
        self.published_size.store(published_size, Ordering::Relaxed);
    }

    pub fn took_over(&self) {
        self.takeovers.fetch_add(1, Ordering::Relaxed);
    }

    pub fn was_fenced(&self) {
        self.fenced.fetch_add(1, Ordering::Relaxed);
        self.is_holder.store(false, Ordering::Relaxed);
    }

    /// Entries integrated by this node as holder, each with its lag in seconds.
    pub fn integrated(&self, lags: &[f64]) {
        self.integrated
            .fetch_add(lags.len() as u64, Ordering::Relaxed);
        let mut lag = self.lag.lock().unwrap_or_else(|p| p.into_inner());
        for &seconds in lags {
            for (count, bound) in lag.counts.iter_mut().zip(LAG_BUCKETS) {
                if seconds <= bound {
                    *count += 1;
                }
            }
            lag.count += 1;
            lag.sum += seconds;
        }
    }

    /// Prometheus text of these metrics.
    pub fn render(&self, out: &mut String) {
        let holder = self
            .holder
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let node = &self.node;
        let _ = write!(
            out,
            "# HELP actseal_fleet_queue_depth Signed entries waiting for the integrator (whole fleet).\n\
             # TYPE actseal_fleet_queue_depth gauge\n\
             actseal_fleet_queue_depth{{node=\"{node}\"}} {}\n\
             # HELP actseal_fleet_lease_holder The node holding the integrator lease (value 1).\n\
             # TYPE actseal_fleet_lease_holder gauge\n\
             actseal_fleet_lease_holder{{node=\"{node}\",holder=\"{holder}\"}} 1\n\
             # HELP actseal_fleet_lease_epoch The lease's fencing epoch.\n\
             # TYPE actseal_fleet_lease_epoch gauge\n\
             actseal_fleet_lease_epoch{{node=\"{node}\"}} {}\n\
             # HELP actseal_fleet_is_integrator 1 while this node holds the lease.\n\
             # TYPE actseal_fleet_is_integrator gauge\n\
             actseal_fleet_is_integrator{{node=\"{node}\"}} {}\n\
             # HELP actseal_fleet_published_size Tree size whose head the log token holds.\n\
             # TYPE actseal_fleet_published_size gauge\n\
             actseal_fleet_published_size{{node=\"{node}\"}} {}\n\
             # HELP actseal_fleet_integrated_total Entries this node integrated as holder.\n\
             # TYPE actseal_fleet_integrated_total counter\n\
             actseal_fleet_integrated_total{{node=\"{node}\"}} {}\n\
             # HELP actseal_fleet_takeovers_total Times this node took the lease.\n\
             # TYPE actseal_fleet_takeovers_total counter\n\
             actseal_fleet_takeovers_total{{node=\"{node}\"}} {}\n\
             # HELP actseal_fleet_fenced_total Integrations refused because the lease had moved on.\n\
             # TYPE actseal_fleet_fenced_total counter\n\
             actseal_fleet_fenced_total{{node=\"{node}\"}} {}\n",
            self.queue_depth.load(Ordering::Relaxed),
            self.epoch.load(Ordering::Relaxed),
            u8::from(self.is_holder.load(Ordering::Relaxed)),
            self.published_size.load(Ordering::Relaxed),
            self.integrated.load(Ordering::Relaxed),
            self.takeovers.load(Ordering::Relaxed),
            self.fenced.load(Ordering::Relaxed),
        );
        let lag = self.lag.lock().unwrap_or_else(|p| p.into_inner());
        out.push_str(
            "# HELP actseal_fleet_integration_lag_seconds Queued to integrated and published, per entry this node integrated.\n\
             # TYPE actseal_fleet_integration_lag_seconds histogram\n",
        );
        for (count, bound) in lag.counts.iter().zip(LAG_BUCKETS) {
            let _ = writeln!(
                out,
                "actseal_fleet_integration_lag_seconds_bucket{{node=\"{node}\",le=\"{bound}\"}} {count}"
            );
        }
        let _ = write!(
            out,
            "actseal_fleet_integration_lag_seconds_bucket{{node=\"{node}\",le=\"+Inf\"}} {c}\n\
             actseal_fleet_integration_lag_seconds_sum{{node=\"{node}\"}} {s}\n\
             actseal_fleet_integration_lag_seconds_count{{node=\"{node}\"}} {c}\n",
            c = lag.count,
            s = lag.sum
        );
    }
}
