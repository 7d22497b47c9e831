//! RFC 3161 timestamp authorities: the hook the anchor task calls once per configured TSA
//! and anchored checkpoint.
//!
//! PLACEHOLDER owned by issue 11B (branch `i11-time`), which replaces this file with the real
//! client. Keep the signature of [`timestamp`]: the anchor task calls it with the TSA's
//! configuration and the checkpoint's note text, and stores the DER TimeStampToken returned.

use std::time::Duration;

use serde::Deserialize;

/// One `[[anchor.tsa]]` entry (11B adds what its client needs: policy, CA, …).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TsaConfig {
    /// `http://host:port/path` the TimeStampReq is POSTed to.
    pub url: String,
}

/// Why no token was obtained.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TsaError {
    #[error("timestamp authority {url}: {detail}")]
    Failed { url: String, detail: String },
}

/// Asks `tsa` for a timestamp token whose messageImprint is SHA-256 of `note_text` (the
/// checkpoint's note text, FORMAT.md §15) and returns the DER TimeStampToken (CMS
/// ContentInfo), checked against the request.
pub async fn timestamp(
    tsa: &TsaConfig,
    note_text: &[u8],
    timeout: Duration,
) -> Result<Vec<u8>, TsaError> {
    let _ = (note_text, timeout);
    Err(TsaError::Failed {
        url: tsa.url.clone(),
        detail: "the RFC 3161 client is not in this build".into(),
    })
}
