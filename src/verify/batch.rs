//! Batch receipts (FORMAT.md §12): receipts whose actor key signed one statement over the root
//! of a Merkle tree of their payloads instead of each payload on its own.
//!
//! A batch receipt carries no signature of its own. What makes its payload the signer's is the
//! chain: the batch statement verifies under the actor key, and the payload's leaf hash leads
//! by the inclusion proof to the root the statement's subject digest names. Only then is the
//! payload parsed, and it must agree with the statement member by member (actor, key, time,
//! sequence and log index at its leaf), so that a leaf can neither move nor change meaning.
//!
//! The log entry of a batch receipt carries the *batch seal* in the signature slot: the leaf
//! index, the path and the signed statement, so that `audit` checks every entry on its own.

use serde::Deserialize;

use super::digest::require_sha256_hex;
use super::dsse::{Envelope, IN_TOTO_PAYLOAD_TYPE};
use super::merkle::{self, Hash};
use super::statement::{self, Receipt};

/// The predicate type of a batch statement.
pub(crate) const BATCH_PREDICATE: &str = "https://actseal.dev/receipt-batch/v1";
/// The first bytes of a batch seal in a log entry's signature slot. A DER signature begins
/// with 0x30 (`SEQUENCE`), so the two kinds of slot can never be mistaken for each other.
pub(crate) const SEAL_MAGIC: &[u8] = b"actseal-batch-seal/v1\n";
/// A batch is at most this large (the daemon's bound is far lower); a proof in such a tree
/// has at most 32 hashes.
const MAX_BATCH_SIZE: u64 = 1 << 32;
const MAX_PATH: usize = 32;
/// The receipt mode of each kind of seal (FORMAT.md §3 `predicate.mode`).
pub(crate) const MODE_SINGLE: &str = "single";
pub(crate) const MODE_BATCH: &str = "batch";

/// A bundle's `batch` member, or a log entry's batch seal, decoded.
#[derive(Debug, Clone)]
pub(crate) struct BatchMember {
    /// The batch statement, a DSSE envelope signed by the actor key.
    pub(crate) statement: Envelope,
    /// The receipt's leaf in the batch tree.
    pub(crate) leaf_index: u64,
    /// RFC 9162 inclusion proof of the leaf in the batch tree, leaf side first.
    pub(crate) proof: Vec<Hash>,
}

/// What a batch statement signs, once checked.
#[derive(Debug, Clone)]
pub(crate) struct BatchStatement {
    pub(crate) actor: String,
    pub(crate) key_id: String,
    pub(crate) key_version: u64,
    pub(crate) backend: String,
    pub(crate) size: u64,
    pub(crate) first_sequence: u64,
    /// `None` for a fleet batch (FORMAT.md §12.1): its leaves carry no log index either.
    pub(crate) first_log_index: Option<u64>,
    pub(crate) signed_at: String,
    pub(crate) root: Hash,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct BatchPredicate {
    actor: String,
    key: KeyJson,
    size: u64,
    first_sequence: u64,
    /// Required, and may be `null` (a fleet batch).
    #[serde(deserialize_with = "statement::present_or_null")]
    first_log_index: Option<u64>,
    signed_at: String,
}

#[derive(Deserialize)]
struct KeyJson {
    id: String,
    version: u64,
    backend: String,
}

/// The batch statement's contents (the `receipt.batch` check, first half): its type, subject
/// and predicate, signed by the key `key_id` (the caller verified the signature).
pub(crate) fn check_statement(envelope: &Envelope, key_id: &str) -> Result<BatchStatement, String> {
    let (name, digest, p) = statement::parse_statement_parts::<BatchPredicate>(
        &envelope.payload_type,
        &envelope.payload,
        BATCH_PREDICATE,
    )?;
    if p.key.id != key_id {
        return Err(format!(
            "the batch statement's predicate.key.id {:?} is not the actor key id {key_id}",
            p.key.id
        ));
    }
    if p.key.version == 0 || p.first_sequence == 0 {
        return Err("the batch statement's key version and firstSequence start at 1".into());
    }
    if p.size == 0 || p.size > MAX_BATCH_SIZE {
        return Err(format!(
            "the batch statement's size {} is out of range",
            p.size
        ));
    }
    let want = format!(
        "receipt-batch:{}#{}/{}",
        p.actor, p.key.version, p.first_sequence
    );
    if name != want {
        return Err(format!(
            "the batch statement's subject name is {name:?}, expected {want:?}"
        ));
    }
    require_sha256_hex("the batch statement's subject digest", &digest)?;
    let mut root = [0u8; 32];
    hex::decode_to_slice(&digest, &mut root).map_err(|e| format!("subject digest: {e}"))?;
    statement::parse_time("the batch statement's predicate.signedAt", &p.signed_at)?;
    Ok(BatchStatement {
        actor: p.actor,
        key_id: p.key.id,
        key_version: p.key.version,
        backend: p.key.backend,
        size: p.size,
        first_sequence: p.first_sequence,
        first_log_index: p.first_log_index,
        signed_at: p.signed_at,
        root,
    })
}

/// The receipt payload is leaf `leaf_index` of the signed batch tree (the `receipt.batch`
/// check, second half): leaf hash SHA-256(0x00 || payload), RFC 9162 inclusion.
pub(crate) fn check_leaf(
    batch: &BatchStatement,
    member: &BatchMember,
    payload: &[u8],
) -> Result<(), String> {
    if member.leaf_index >= batch.size {
        return Err(format!(
            "batch.leafIndex {} is not in a batch of {}",
            member.leaf_index, batch.size
        ));
    }
    let leaf = merkle::leaf_hash(payload);
    merkle::verify_inclusion(
        &leaf,
        member.leaf_index,
        batch.size,
        &member.proof,
        &batch.root,
    )
    .map_err(|e| {
        format!(
            "the receipt is not leaf {} of the signed batch: {e}",
            member.leaf_index
        )
    })
}

/// The verified receipt is the one the batch statement places at `leaf_index` (part of
/// `receipt.statement`): same actor, key and time; sequence and log index at their offsets.
pub(crate) fn check_agrees(
    batch: &BatchStatement,
    leaf_index: u64,
    receipt: &Receipt,
) -> Result<(), String> {
    let same = |what: &str, ok: bool| {
        if ok {
            Ok(())
        } else {
            Err(format!("the receipt's {what} is not the batch statement's"))
        }
    };
    same("actor", receipt.actor == batch.actor)?;
    same("key version", receipt.key_version == batch.key_version)?;
    same("key backend", receipt.backend == batch.backend)?;
    same("signedAt", receipt.signed_at == batch.signed_at)?;
    let at = |first: u64, what: &str| {
        first
            .checked_add(leaf_index)
            .ok_or_else(|| format!("the batch's {what} overflows"))
    };
    let sequence = at(batch.first_sequence, "sequence")?;
    if receipt.sequence != sequence {
        return Err(format!(
            "predicate.sequence {} is not firstSequence + leafIndex ({sequence})",
            receipt.sequence
        ));
    }
    // A batch is indexed or a fleet's as a whole: its leaves' indices are its own plus their
    // offsets, or all null (then each leaf's index is what its log proof proves).
    match (batch.first_log_index, receipt.log_index) {
        (Some(first), Some(index)) => {
            let want = at(first, "log index")?;
            if index != want {
                return Err(format!(
                    "predicate.logIndex {index} is not firstLogIndex + leafIndex ({want})"
                ));
            }
            Ok(())
        }
        (None, None) => Ok(()),
        (Some(first), None) => Err(format!(
            "predicate.logIndex is null, but the batch statement's firstLogIndex is {first}"
        )),
        (None, Some(index)) => Err(format!(
            "predicate.logIndex is {index}, but the batch statement's firstLogIndex is null (a fleet batch)"
        )),
    }
}

/// The batch seal written in a batch receipt's log entry (FORMAT.md §12.3):
/// `magic || u32be(leafIndex) || u8(len(path)) || path || u32be(len(statementPayload)) ||
/// statementPayload || u32be(len(statementSig)) || statementSig`.
pub(crate) fn seal_bytes(member: &BatchMember) -> Result<Vec<u8>, String> {
    let index = u32::try_from(member.leaf_index).map_err(|_| "leafIndex exceeds 32 bits")?;
    let path_len = u8::try_from(member.proof.len()).map_err(|_| "the batch path is too long")?;
    let payload = &member.statement.payload;
    let sig = &member.statement.signature_der;
    let mut out = Vec::new();
    out.extend_from_slice(SEAL_MAGIC);
    out.extend_from_slice(&index.to_be_bytes());
    out.push(path_len);
    for hash in &member.proof {
        out.extend_from_slice(hash);
    }
    for field in [payload.as_slice(), sig.as_slice()] {
        let len = u32::try_from(field.len()).map_err(|_| "a seal field exceeds 4 GiB")?;
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(field);
    }
    Ok(out)
}

/// True when a log entry's signature slot holds a batch seal rather than a DER signature.
pub(crate) fn is_seal(slot: &[u8]) -> bool {
    slot.starts_with(SEAL_MAGIC)
}

/// Reads a batch seal back (the inverse of [`seal_bytes`]); nothing may follow it.
pub(crate) fn parse_seal(slot: &[u8]) -> Result<BatchMember, String> {
    let rest = slot
        .strip_prefix(SEAL_MAGIC)
        .ok_or("the signature slot does not hold a batch seal")?;
    let (index, rest) = rest
        .split_first_chunk::<4>()
        .ok_or("the seal is truncated")?;
    let (path_len, mut rest) = rest.split_first().ok_or("the seal is truncated")?;
    if usize::from(*path_len) > MAX_PATH {
        return Err("the seal's path is longer than any batch tree is tall".into());
    }
    let mut proof = Vec::with_capacity(usize::from(*path_len));
    for _ in 0..*path_len {
        let (hash, tail) = rest
            .split_first_chunk::<32>()
            .ok_or("the seal is truncated")?;
        proof.push(*hash);
        rest = tail;
    }
    let (payload, rest) = length_prefixed(rest)?;
    let (sig, rest) = length_prefixed(rest)?;
    if !rest.is_empty() {
        return Err("the seal has trailing bytes".into());
    }
    let signature = p256::ecdsa::Signature::from_der(sig)
        .map_err(|_| "the seal's statement signature is not DER ECDSA P-256")?;
    Ok(BatchMember {
        statement: Envelope {
            payload_type: IN_TOTO_PAYLOAD_TYPE.to_string(),
            payload: payload.to_vec(),
            keyid: String::new(),
            signature,
            signature_der: sig.to_vec(),
        },
        leaf_index: u64::from(u32::from_be_bytes(*index)),
        proof,
    })
}

fn length_prefixed(bytes: &[u8]) -> Result<(&[u8], &[u8]), String> {
    let (len, rest) = bytes
        .split_first_chunk::<4>()
        .ok_or("the seal is truncated")?;
    let len = usize::try_from(u32::from_be_bytes(*len)).map_err(|_| "seal field too large")?;
    if rest.len() < len {
        return Err("the seal is truncated".into());
    }
    Ok(rest.split_at(len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_round_trips_and_refuses_damage() {
        let key = p256::ecdsa::SigningKey::from_bytes(&[9u8; 32].into())
            .unwrap_or_else(|_| unreachable!());
        let sig: p256::ecdsa::Signature =
            p256::ecdsa::signature::Signer::sign(&key, b"statement".as_slice());
        let member = BatchMember {
            statement: Envelope {
                payload_type: IN_TOTO_PAYLOAD_TYPE.into(),
                payload: b"{\"x\":1}".to_vec(),
                keyid: String::new(),
                signature: sig,
                signature_der: sig.to_der().as_bytes().to_vec(),
            },
            leaf_index: 5,
            proof: vec![[1u8; 32], [2u8; 32], [3u8; 32]],
        };
        let seal = seal_bytes(&member).unwrap_or_default();
        assert!(is_seal(&seal));
        assert!(!is_seal(&member.statement.signature_der));
        let back = parse_seal(&seal).unwrap_or_else(|_| unreachable!());
        assert_eq!(back.leaf_index, 5);
        assert_eq!(back.proof, member.proof);
        assert_eq!(back.statement.payload, member.statement.payload);
        for cut in [0, SEAL_MAGIC.len(), seal.len().saturating_sub(1)] {
            assert!(parse_seal(seal.get(..cut).unwrap_or_default()).is_err());
        }
        let mut longer = seal.clone();
        longer.push(0);
        assert!(parse_seal(&longer).is_err());
    }
}
