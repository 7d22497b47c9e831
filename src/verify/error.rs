//! The names of the checks (FORMAT.md §7) and the single error type the verifier returns.

use std::fmt;

/// One of the checks of FORMAT.md §7, in the order they run.
///
/// The `Display` form is the check's name in the specification, so a failure reads the same in
/// the CLI output, in logs and in the document an auditor follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// `bundle.parse`: the bundle is JSON of the right shape; base64 and DER decode.
    BundleParse,
    /// `receipt.signature`: the receipt's DSSE signature verifies under the actor key.
    ReceiptSignature,
    /// `receipt.batch`: (batch receipts) the batch statement names this key and the receipt's
    /// payload is the leaf it claims under the signed batch root.
    ReceiptBatch,
    /// `receipt.statement`: the receipt payload is a well-formed actseal receipt.
    ReceiptStatement,
    /// `receipt.document`: the action document hashes to the receipt's subject digest.
    ReceiptDocument,
    /// `lineage.certificate`: the device certificate chains to a trust anchor at `signedAt`.
    LineageCertificate,
    /// `lineage.signature`: the lineage statement verifies under the device certificate's key.
    LineageSignature,
    /// `lineage.statement`: the lineage statement vouches for this actor key as non-extractable.
    LineageStatement,
    /// `lineage.rotation`: every earlier key version is attested and signed over to the next,
    /// back to version 1, with no break and no fork.
    LineageRotation,
    /// `log.key`: the log key is a P-256 key attested by a device under a trust anchor.
    LogKey,
    /// `log.checkpoint`: the checkpoint is a signed note by the log key for the claimed size.
    LogCheckpoint,
    /// `log.inclusion`: the receipt is the leaf at its log index under the checkpoint's root.
    LogInclusion,
    /// `log.timestamp` (with `--tsa-trust`): an RFC 3161 token over the checkpoint, from an
    /// authority the auditor trusts, dates it no earlier than the receipt's `signedAt`.
    LogTimestamp,
}

impl Check {
    /// The check's name exactly as FORMAT.md §7 spells it.
    pub const fn name(self) -> &'static str {
        match self {
            Check::BundleParse => "bundle.parse",
            Check::ReceiptSignature => "receipt.signature",
            Check::ReceiptBatch => "receipt.batch",
            Check::ReceiptStatement => "receipt.statement",
            Check::ReceiptDocument => "receipt.document",
            Check::LineageCertificate => "lineage.certificate",
            Check::LineageSignature => "lineage.signature",
            Check::LineageStatement => "lineage.statement",
            Check::LineageRotation => "lineage.rotation",
            Check::LogKey => "log.key",
            Check::LogCheckpoint => "log.checkpoint",
            Check::LogInclusion => "log.inclusion",
            Check::LogTimestamp => "log.timestamp",
        }
    }
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The first check that failed, and why.
#[derive(Debug, thiserror::Error)]
#[error("{check} failed: {detail}")]
pub struct VerifyError {
    /// Which check of FORMAT.md §7 failed.
    pub check: Check,
    /// A human-readable reason, naming the offending member where there is one.
    pub detail: String,
}

impl VerifyError {
    pub(crate) fn new(check: Check, detail: impl Into<String>) -> Self {
        VerifyError {
            check,
            detail: detail.into(),
        }
    }
}

/// Builds the `map_err` closure that files a step's failure detail under `check`.
///
/// Each step returns `Result<_, String>`; the orchestrator in `mod.rs` decides which check a step
/// belongs to, so the order of §7 is visible in one place.
pub(crate) fn under(check: Check) -> impl FnOnce(String) -> VerifyError {
    move |detail| VerifyError::new(check, detail)
}
