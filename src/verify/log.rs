//! `log.key`, `log.checkpoint` and `log.inclusion`: the receipt is in the daemon's
//! tamper-evident log, under a checkpoint signed by a hardware-attested log key.

use p256::ecdsa::VerifyingKey;
use p256::pkcs8::DecodePublicKey;
use sha2::{Digest, Sha256};

use super::anchors::TrustAnchors;
use super::bundle::{Bundle, LogKey, LogProof};
use super::checkpoint::ParsedCheckpoint;
use super::statement::{KeyClaim, KeySubject, Receipt};
use super::{attestation, digest, merkle};

/// `log.key`: a P-256 key whose id matches, attested as the key of the log named by the
/// checkpoint key name, by a device certified to attest log keys, under a trust anchor.
pub(crate) fn check_log_key(
    log: &LogKey,
    anchors: &TrustAnchors,
    at_unix: i64,
) -> Result<(i64, i64), String> {
    VerifyingKey::from_public_key_der(&log.key.spki_der)
        .map_err(|e| format!("log key is not an EC P-256 key: {e}"))?;
    let id = digest::key_id(&log.key.spki_der);
    if log.key.key_id != id {
        return Err(format!(
            "log.logKey.keyId is not the SHA-256 of the log key ({id})"
        ));
    }
    let claim = KeyClaim {
        subject: KeySubject::Log {
            origin: &log.key_name,
        },
        key_id: &id,
        backend: &log.key_lineage.backend,
    };
    let attested = attestation::check(&log.key_lineage, anchors, &claim, at_unix)
        .map_err(|e| e.to_string())?;
    attestation::validity(&log.key_lineage, attested.anchor)
}

/// The checkpoint is this log's (its origin is the log key's name) and of the claimed size.
pub(crate) fn check_checkpoint_claims(
    parsed: &ParsedCheckpoint,
    proof: &LogProof<'_>,
    log: &LogKey,
) -> Result<(), String> {
    if parsed.origin != log.key_name {
        return Err(format!(
            "checkpoint origin {:?} is not the log key's name {:?}",
            parsed.origin, log.key_name
        ));
    }
    if parsed.size != proof.tree_size {
        return Err(format!(
            "checkpoint is for {} entries, log.treeSize says {}",
            parsed.size, proof.tree_size
        ));
    }
    Ok(())
}

/// The log entry (FORMAT.md §11.1) of a payload and what fills its signature slot: each field
/// with a 4-byte big-endian length.
pub(crate) fn entry_of(payload_type: &str, payload: &[u8], slot: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(payload.len().saturating_add(slot.len()).saturating_add(64));
    for field in [payload_type.as_bytes(), payload, slot] {
        let len = u32::try_from(field.len()).map_err(|_| "an envelope field exceeds 4 GiB")?;
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(field);
    }
    Ok(out)
}

/// RFC 9162 leaf hash: SHA-256(0x00 || entry).
pub(crate) fn leaf_hash(entry: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(entry);
    h.finalize().into()
}

/// `log.inclusion`: the receipt, as a log entry, is the leaf at its index in the checkpoint's
/// tree (`log.index`, which an indexed receipt's `logIndex` must equal).
pub(crate) fn check_inclusion(
    bundle: &Bundle<'_>,
    receipt: &Receipt,
    checkpoint: &ParsedCheckpoint,
) -> Result<(), String> {
    let log = &bundle.log;
    // A fleet receipt (logIndex null) was signed before the log ordered it: its index is the
    // one this proof proves under the signed checkpoint. An indexed one must be where it says.
    if let Some(signed) = receipt.log_index
        && log.index != signed
    {
        return Err(format!(
            "log.index {} is not the receipt's logIndex {signed}",
            log.index
        ));
    }
    let leaf = leaf_hash(&bundle.receipt.entry_bytes()?);
    merkle::verify_inclusion(
        &leaf,
        log.index,
        checkpoint.size,
        &log.inclusion_proof,
        &checkpoint.root,
    )
    .map_err(|e| e.to_string())
}
