//! What the integrator tells a fleet node's anchor task (`crate::anchor`): which lease epoch
//! this node holds, and that it integrated up to a size. The anchor task runs on every node
//! but submits to witnesses and TSAs only while its node holds the lease; it checks the lease
//! row itself before each round, and the anchored checkpoint it stores is written only under
//! that lease (`anchor::store`), so a fenced node's round in flight stores nothing.

use std::sync::{
    Arc,
    atomic::{AtomicI64, Ordering},
};

/// The channel an anchored checkpoint stored in the shared table is announced on (every
/// node's anchor follower listens; the payload is the size).
pub const CHANNEL_ANCHORED: &str = "actseal_fleet_anchored";

/// The integrator's side of the anchor task: a "holding at epoch" flag and an "integrated up
/// to size" call. [`AnchorHook::none`] when nothing is anchored.
#[derive(Clone)]
pub struct AnchorHook {
    /// The epoch this node took the lease at (0: never held since start).
    holding: Arc<AtomicI64>,
    integrated: Arc<dyn Fn(u64) + Send + Sync>,
}

impl AnchorHook {
    /// A hook that calls `integrated` with the size after each takeover and integration.
    pub fn new(integrated: Arc<dyn Fn(u64) + Send + Sync>) -> AnchorHook {
        AnchorHook {
            holding: Arc::new(AtomicI64::new(0)),
            integrated,
        }
    }

    /// A hook nobody listens to.
    pub fn none() -> AnchorHook {
        AnchorHook::new(Arc::new(|_| {}))
    }

    /// The integrator took (or resumed) the lease at `epoch` over a log of `size`.
    pub fn took(&self, epoch: i64, size: u64) {
        self.holding.store(epoch, Ordering::SeqCst);
        (self.integrated)(size);
    }

    /// The integrator committed a tree of `size`.
    pub fn integrated(&self, size: u64) {
        (self.integrated)(size);
    }

    /// The epoch this node last took the lease at, if any (it may be fenced since: the anchor
    /// task checks the lease row).
    pub fn epoch(&self) -> Option<i64> {
        Some(self.holding.load(Ordering::SeqCst)).filter(|e| *e > 0)
    }

    /// Forgets `epoch` (found fenced), unless a newer takeover replaced it meanwhile.
    pub fn fenced(&self, epoch: i64) {
        let _ = self
            .holding
            .compare_exchange(epoch, 0, Ordering::SeqCst, Ordering::SeqCst);
    }
}
