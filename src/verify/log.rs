//! `log.key`, `log.checkpoint` and `log.inclusion`: the receipt is in the daemon's
//! tamper-evident log, under a checkpoint signed by a hardware-attested log key.

use p256::ecdsa::VerifyingKey;
use p256::pkcs8::DecodePublicKey;
use sha2::{Digest, Sha256};

use super::anchors::TrustAnchors;
use super::bundle::{Bundle, Log};
use super::checkpoint::{ParsedCheckpoint, verify_checkpoint};
use super::dsse::Envelope;
use super::statement::{KeyClaim, KeySubject, Receipt};
use super::{attestation, digest, merkle};

/// `log.key`: a P-256 key whose id matches, attested as the key of the log named by the
/// checkpoint key name, by a device certified to attest log keys, under a trust anchor.
pub(crate) fn check_log_key(log: &Log, anchors: &TrustAnchors, at_unix: i64) -> Result<(), String> {
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
    attestation::check(&log.key_lineage, anchors, &claim, at_unix).map_err(|e| e.to_string())?;
    Ok(())
}

/// `log.checkpoint`: the note is signed by the log key under its name, for this origin and the
/// tree size the proof claims.
pub(crate) fn check_checkpoint(log: &Log) -> Result<ParsedCheckpoint, String> {
    let parsed = verify_checkpoint(log.checkpoint.as_bytes(), &log.key_name, &log.key.spki_der)
        .map_err(|e| e.to_string())?;
    if parsed.origin != log.key_name {
        return Err(format!(
            "checkpoint origin {:?} is not the log key's name {:?}",
            parsed.origin, log.key_name
        ));
    }
    if parsed.size != log.tree_size {
        return Err(format!(
            "checkpoint is for {} entries, log.treeSize says {}",
            parsed.size, log.tree_size
        ));
    }
    Ok(parsed)
}

/// The log entry of an envelope (FORMAT.md §10): each field with a 4-byte big-endian length.
pub(crate) fn entry_bytes(envelope: &Envelope) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    for field in [
        envelope.payload_type.as_bytes(),
        &envelope.payload,
        &envelope.signature_der,
    ] {
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
/// tree.
pub(crate) fn check_inclusion(
    bundle: &Bundle,
    receipt: &Receipt,
    checkpoint: &ParsedCheckpoint,
) -> Result<(), String> {
    let log = &bundle.log;
    if log.index != receipt.log_index {
        return Err(format!(
            "log.index {} is not the receipt's logIndex {}",
            log.index, receipt.log_index
        ));
    }
    let leaf = leaf_hash(&entry_bytes(&bundle.receipt)?);
    merkle::verify_inclusion(
        &leaf,
        log.index,
        checkpoint.size,
        &log.inclusion_proof,
        &checkpoint.root,
    )
    .map_err(|e| e.to_string())
}
