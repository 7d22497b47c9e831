//! Forensics: the actions of an actor, found in exports and kept bundles, each verified, with
//! the gaps in its sequence and the retained documents matched (`actseal actions`), and a
//! report a person reads (`actseal report`).
//!
//! Verifier side only: every receipt is checked by [`crate::verify::verify_bundle`] (a receipt
//! of an export through the bundle rebuilt from the export), so this module builds without the
//! daemon. What a receipt *claims* is read from its payload without trusting it, to show and
//! group receipts that fail; what is *proved* comes from the verifier alone.

mod actions;
mod export;
mod extras;
pub mod html;
mod load;
mod text;

pub use actions::{Action, Claims, Failure, Findings, Gap, LogPosition, Proof, Query, investigate};
pub use extras::Extras;
pub use load::Note;

/// A bad input to `actions` or `report`: nothing was examined.
#[derive(Debug, thiserror::Error)]
pub enum ForensicsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
}
