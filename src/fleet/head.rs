//! The holder's log head write into the shared log token, guarded so that the head never
//! goes backwards. A holder stopped between its commit and its head write (SIGSTOP, a long
//! pause) may resume after another node took the lease and wrote a newer head: it would put
//! its older head over it. Before each write the holder checks it still holds the lease (a
//! cheap query), and the write itself reads the token's newest record in the same session
//! and refuses a smaller size, or another root at the same size.
//!
//! What remains: a token has no compare-and-swap, so a holder stopped between that read and
//! its label rewrite can still write an older head. The new holder's heal
//! (`integrator::heal_head`, and every head write after an integration) finds the head
//! behind its published tree and rewrites it; until then a restart's start-up check reads
//! the store as ahead of the head, which it accepts.

use postgres::GenericClient;

use super::{FleetError, lease, lease::Held};
use crate::{
    backend::{Backend, HeadWrite},
    ledger::head::{self, LogHead},
};

/// Writes `next` into the log token if `node` still holds the lease at `held` and the token
/// holds no newer head (`Fenced`, or `Refused` naming the newer head; nothing written).
pub fn write(
    backend: &dyn Backend,
    client: &mut impl GenericClient,
    node: &str,
    held: Held,
    next: &LogHead,
) -> Result<(), FleetError> {
    lease::check_held(client, node, held)?;
    match head::replace_guarded(backend, next) {
        Ok(HeadWrite::Written) => Ok(()),
        // Logged by the caller, with what it does next.
        Ok(HeadWrite::Refused(reason)) => Err(FleetError::Refused(format!(
            "log head not written: the log token holds a newer one: {reason}"
        ))),
        Err(e) => Err(FleetError::Unavailable(format!("log head: {e}"))),
    }
}
