//! Assembling a receipt's proof bundle from what is stored once: the log entry, the key's
//! lineage, the log key and the checkpoint. Fresh bundles (the sequencer) and stored ones
//! (retries, `GetInclusionProof`) come out of the same function, byte for byte.

use base64::{Engine, engine::general_purpose::STANDARD as B64};

use super::sequencer::{LogIdentity, SignedReceipt};
use crate::{
    ledger::{KeyRecord, Store, StoreError, entry, merkle::Hash},
    proof::{
        bundle::{ActorKeyInBundle, BUNDLE_MEDIA_TYPE, Bundle, LogProof},
        dsse::{Envelope, EnvelopeSignature},
        lineage::EncodeError,
        spki_der,
    },
};

/// The bundle of a receipt whose parts are at hand.
pub fn bundle_json(
    receipt: Envelope,
    key: &KeyRecord,
    log: &LogIdentity,
    log_index: u64,
    tree_size: u64,
    proof: &[Hash],
    checkpoint_note: String,
) -> Result<String, EncodeError> {
    Bundle {
        media_type: BUNDLE_MEDIA_TYPE.into(),
        receipt,
        actor_key: ActorKeyInBundle {
            key_id: key.key_id.clone(),
            public_key: B64.encode(spki_der(&key.public_key)),
        },
        lineage: key.lineage.clone(),
        log: LogProof::new(
            log_index,
            tree_size,
            proof,
            checkpoint_note,
            log.in_bundle(),
        ),
    }
    .to_json()
}

/// The stored receipt at `log_index`, proved against `proof` (tree size and hashes) or, if
/// `None`, against the checkpoint of its own batch. `Ok(None)` if the entry is not a receipt.
pub fn stored(
    store: &Store,
    log: &LogIdentity,
    log_index: u64,
    proof: Option<(u64, Vec<Hash>)>,
) -> Result<Option<SignedReceipt>, StoreError> {
    let Some(receipt) = store.receipt(log_index)? else {
        return Ok(None);
    };
    let corrupt = |what: &str| StoreError::Corrupt(format!("receipt {log_index}: {what}"));
    let parts = store
        .entry(log_index)?
        .and_then(|bytes| entry::decode(&bytes))
        .ok_or_else(|| corrupt("its log entry is missing or unreadable"))?;
    let key = store
        .key_by_id(&receipt.key_id)?
        .ok_or_else(|| corrupt("its key is not registered"))?;
    let (tree_size, hashes) = proof.unwrap_or((receipt.proof_size, receipt.proof));
    let note = store
        .checkpoint(tree_size)?
        .ok_or_else(|| corrupt("the checkpoint of its proof is missing"))?
        .note;
    let envelope = Envelope {
        payload_type: parts.payload_type,
        payload: B64.encode(&parts.payload),
        signatures: vec![EnvelopeSignature {
            keyid: receipt.key_id.clone(),
            sig: B64.encode(&parts.signature_der),
        }],
    };
    Ok(Some(SignedReceipt {
        bundle_json: bundle_json(envelope, &key, log, log_index, tree_size, &hashes, note)
            .map_err(|e| StoreError::Corrupt(e.to_string()))?,
        log_index,
        sequence: receipt.sequence,
        key_id: receipt.key_id,
    }))
}
