//! `actseal verify-log`: an older checkpoint's tree is a prefix of a newer one's.

use serde::Deserialize;

use super::anchors::TrustAnchors;
use super::bundle;
use super::checkpoint::{ParsedCheckpoint, verify_checkpoint};
use super::merkle::verify_consistency;

/// A consistency proof as `actseal log consistency` writes it.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ProofJson {
    old_size: u64,
    new_size: u64,
    hashes: Vec<String>,
    old_checkpoint: String,
    new_checkpoint: String,
}

/// What was proved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsistencyReport {
    pub origin: String,
    pub old_size: u64,
    pub new_size: u64,
}

impl std::fmt::Display for ConsistencyReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "OK: log {}: the signed tree of {} entries is a prefix of the signed tree of {}",
            self.origin.escape_default(),
            self.old_size,
            self.new_size
        )
    }
}

/// Checks both checkpoints under the log key of `bundle_json` (itself verified in full against
/// the anchors, which attests the log key) and the consistency proof between them; the bundle's
/// own checkpoint must be one of the two (same size, same root), so the proof says something
/// about the tree the bundle's receipt is in. A checkpoint of the bundle's size with another
/// root is a split view, and named as one.
pub fn verify_log_consistency(
    proof_json: &[u8],
    bundle_json: &[u8],
    anchors: &TrustAnchors,
) -> Result<ConsistencyReport, String> {
    super::verify_bundle(bundle_json, anchors, None)
        .map_err(|e| format!("the bundle naming the log key does not verify: {e}"))?;
    let parsed = bundle::parse(bundle_json)?;
    let log = bundle::decode_log_key_text(parsed.log.log_key_json)?;
    let proof: ProofJson =
        serde_json::from_slice(proof_json).map_err(|e| format!("not a consistency proof: {e}"))?;
    let old = verify_checkpoint(
        proof.old_checkpoint.as_bytes(),
        &log.key_name,
        &log.key.spki_der,
    )
    .map_err(|e| format!("old checkpoint: {e}"))?;
    let new = verify_checkpoint(
        proof.new_checkpoint.as_bytes(),
        &log.key_name,
        &log.key.spki_der,
    )
    .map_err(|e| format!("new checkpoint: {e}"))?;
    if old.size != proof.old_size || new.size != proof.new_size {
        return Err("the proof's sizes are not the checkpoints' sizes".into());
    }
    if old.origin != log.key_name || new.origin != log.key_name {
        return Err("a checkpoint is of another log".into());
    }
    check_bundle_checkpoint(&parsed.log.checkpoint, &log, &old, &new)?;
    let hashes = super::fork::decode_hashes(&proof.hashes)?;
    verify_consistency(old.size, new.size, &old.root, &new.root, &hashes)
        .map_err(|e| format!("consistency: {e}"))?;
    Ok(ConsistencyReport {
        origin: log.key_name,
        old_size: old.size,
        new_size: new.size,
    })
}

/// The bundle's checkpoint is one end of the proof: same size, same root.
fn check_bundle_checkpoint(
    checkpoint: &str,
    log: &bundle::LogKey,
    old: &ParsedCheckpoint,
    new: &ParsedCheckpoint,
) -> Result<(), String> {
    let own = verify_checkpoint(checkpoint.as_bytes(), &log.key_name, &log.key.spki_der)
        .map_err(|e| format!("the bundle's checkpoint: {e}"))?;
    let Some(end) = [old, new].into_iter().find(|c| c.size == own.size) else {
        return Err(format!(
            "the proof ({} → {}) is not about the bundle's checkpoint (size {})",
            old.size, new.size, own.size
        ));
    };
    if end.root != own.root {
        return Err(format!(
            "SPLIT VIEW: the log key signed two checkpoints of size {} with different roots, the bundle's ({}) and the proof's ({}); `actseal monitor` writes them as fork evidence",
            own.size,
            hex::encode(own.root),
            hex::encode(end.root)
        ));
    }
    Ok(())
}
