//! Assembling a receipt's proof bundle from what is stored once: the log entry, the key's
//! lineage, the log key and the checkpoint. Fresh bundles (the sequencer) and stored ones
//! (retries, `GetInclusionProof`) come out of the same function, byte for byte.
//!
//! Lineage is stored by reference: each key version keeps only its own attestation and the
//! log index of the rotation that made it. A bundle's lineage (every earlier version and every
//! rotation statement) is assembled here, once per bundle, so storage grows with the number
//! of versions and not with its square.

use std::collections::HashMap;

use base64::{Engine, engine::general_purpose::STANDARD as B64};

use super::sequencer::{LogIdentity, SignedReceipt};
use crate::{
    ledger::{CheckpointRow, KeyRecord, Store, StoreError, entry, merkle::Hash},
    pki::device::DeviceCertificates,
    proof::{
        batch::BatchInBundle,
        bundle::{BatchParts, Bundle, BundleParts, SplicedJson},
        dsse::{Envelope, EnvelopeSignature},
        lineage::{Attestation, EncodeError, Lineage, PredecessorKey},
        spki_der,
    },
};

/// Unix seconds of an RFC 3339 time as actseal writes them.
pub(crate) fn unix(time: &str) -> Option<i64> {
    time::OffsetDateTime::parse(time, &time::format_description::well_known::Rfc3339)
        .ok()
        .map(|t| t.unix_timestamp())
}

/// A predecessor carries the device certificate in force when it rotated away: the time its
/// certificate is checked at (FORMAT.md §7 `lineage.rotation`).
fn predecessor_at(key: &KeyRecord, rotated_at: &str, certs: &DeviceCertificates) -> PredecessorKey {
    let mut predecessor = predecessor(key);
    if let Some(at) = unix(rotated_at) {
        certs.resolve(&mut predecessor.attestation, at);
    }
    predecessor
}

fn predecessor(key: &KeyRecord) -> PredecessorKey {
    PredecessorKey {
        version: key.version,
        key_id: key.key_id.clone(),
        public_key: B64.encode(spki_der(&key.public_key)),
        attestation: key.attestation.clone(),
    }
}

/// The lineage of the version `rotation` hands over to, from its predecessor's lineage: what
/// [`lineage`] assembles from the store once the rotation is committed.
pub fn successor_lineage(
    previous_lineage: &Lineage,
    previous: &KeyRecord,
    attestation: Attestation,
    (rotation, rotated_at): (Envelope, &str),
    certs: &DeviceCertificates,
) -> Lineage {
    let mut predecessors = Vec::with_capacity(previous_lineage.predecessors.len() + 1);
    predecessors.extend_from_slice(&previous_lineage.predecessors);
    predecessors.push(predecessor_at(previous, rotated_at, certs));
    let mut rotations = Vec::with_capacity(previous_lineage.rotations.len() + 1);
    rotations.extend_from_slice(&previous_lineage.rotations);
    rotations.push(rotation);
    Lineage {
        attestation,
        predecessors,
        rotations,
    }
}

/// A stored log entry as the DSSE envelope it was signed as (its signer's key id given).
fn envelope_of(bytes: &[u8], keyid: &str) -> Option<Envelope> {
    let parts = entry::decode(bytes)?;
    Some(Envelope {
        payload_type: parts.payload_type,
        payload: B64.encode(&parts.payload),
        signatures: vec![EnvelopeSignature {
            keyid: keyid.to_owned(),
            sig: B64.encode(&parts.signature_der),
        }],
    })
}

/// A stored receipt entry as its bundle carries it: a single receipt's envelope with its
/// signature, or a batch receipt's unsigned envelope with its batch member.
fn receipt_of(bytes: &[u8], keyid: &str) -> Option<(Envelope, Option<BatchInBundle>)> {
    let parts = entry::decode(bytes)?;
    if !parts.signature_der.starts_with(entry::BATCH_SEAL_MAGIC) {
        return Some((envelope_of(bytes, keyid)?, None));
    }
    let seal = entry::BatchSeal::decode(&parts.signature_der)?;
    let statement = Envelope {
        payload_type: parts.payload_type.clone(),
        payload: B64.encode(&seal.statement_payload),
        signatures: vec![EnvelopeSignature {
            keyid: keyid.to_owned(),
            sig: B64.encode(&seal.statement_signature_der),
        }],
    };
    let receipt = Envelope {
        payload_type: parts.payload_type,
        payload: B64.encode(&parts.payload),
        signatures: Vec::new(),
    };
    Some((
        receipt,
        Some(BatchInBundle {
            statement,
            leaf_index: u64::from(seal.leaf_index),
            inclusion_proof: seal.path.iter().map(hex::encode).collect(),
        }),
    ))
}

/// The lineage bundles of `key` carry, assembled from the stored versions 1 to `key.version`
/// and the log's rotation entries between them.
pub fn lineage(
    store: &Store,
    key: &KeyRecord,
    certs: &DeviceCertificates,
) -> Result<Lineage, StoreError> {
    let history = store.key_history(&key.actor, key.version)?;
    let corrupt = |what: String| {
        StoreError::Corrupt(format!(
            "lineage of {:?} v{}: {what}",
            key.actor, key.version
        ))
    };
    let mut predecessors = Vec::with_capacity(history.len());
    let mut rotations = Vec::with_capacity(history.len());
    let mut previous: Option<&KeyRecord> = None;
    for (expected, (version, rotation)) in (1..).zip(&history) {
        if version.version != expected {
            return Err(corrupt(format!("version {expected} is missing")));
        }
        match (previous, rotation) {
            (None, None) => {}
            (Some(prev), Some(bytes)) => {
                rotations.push(envelope_of(bytes, &prev.key_id).ok_or_else(|| {
                    corrupt(format!("the rotation to v{expected} is unreadable"))
                })?);
                let rotated_at = prev.retired_at.as_deref().ok_or_else(|| {
                    corrupt(format!("v{} rotated but is not retired", prev.version))
                })?;
                predecessors.push(predecessor_at(prev, rotated_at, certs));
            }
            _ => return Err(corrupt(format!("v{expected} has no rotation entry"))),
        }
        previous = Some(version);
    }
    match previous {
        Some(last) if last.key_id == key.key_id => Ok(Lineage {
            attestation: last.attestation.clone(),
            predecessors,
            rotations,
        }),
        _ => Err(corrupt("the stored versions end elsewhere".into())),
    }
}

/// The key that signed a receipt, with the lineage its bundles carry.
#[derive(Clone, Copy)]
pub struct SigningKey<'a> {
    pub record: &'a KeyRecord,
    pub lineage: &'a Lineage,
}

/// Where a receipt is in the log and the signed checkpoint its proof leads to.
pub struct Inclusion<'a> {
    pub log_index: u64,
    pub tree_size: u64,
    pub proof: &'a [Hash],
    pub checkpoint_note: &'a str,
}

/// What the bundles of one key share under one device certificate, serialised once: the
/// actor key's public key and lineage, and the log key with its lineage. The sequencer keeps
/// one for a batch's bundles; each bundle then costs its own parts only.
#[derive(Default)]
pub struct SharedParts {
    /// By key id: (certificate in force, base64 SPKI, lineage).
    actors: HashMap<String, Vec<(usize, String, SplicedJson)>>,
    /// By certificate in force.
    log: Vec<(usize, SplicedJson)>,
    /// Batch statements, by their signature and payload.
    statements: Vec<(Envelope, SplicedJson)>,
}

/// Which of `certs` is in force at `at`, as an identity valid while `certs` is held.
fn certificate_in_force(certs: &DeviceCertificates, at: i64) -> usize {
    certs
        .in_force(at)
        .map_or(0, |c| std::ptr::from_ref(c) as usize)
}

impl SharedParts {
    /// The bundle of a receipt whose parts are at hand, signed at `signed_at` (Unix seconds):
    /// the actor key's and the log key's attestations carry the device certificate in force
    /// then. `certs` must be the same for every call on one `SharedParts`.
    pub fn bundle_json(
        &mut self,
        (receipt, batch): (&Envelope, Option<&BatchInBundle>),
        key: SigningKey<'_>,
        log: &LogIdentity,
        inclusion: Inclusion<'_>,
        certs: &DeviceCertificates,
        signed_at: i64,
    ) -> Result<String, EncodeError> {
        let cert = certificate_in_force(certs, signed_at);
        let versions = self.actors.entry(key.record.key_id.clone()).or_default();
        let at = match versions.iter().position(|(c, _, _)| *c == cert) {
            Some(at) => at,
            None => {
                let mut lineage = key.lineage.clone();
                certs.resolve(&mut lineage.attestation, signed_at);
                let public_key = B64.encode(spki_der(&key.record.public_key));
                versions.push((cert, public_key, SplicedJson::new(&lineage, 1)?));
                versions.len() - 1
            }
        };
        let (_, public_key, lineage) = &versions[at];
        let log_at = match self.log.iter().position(|(c, _)| *c == cert) {
            Some(at) => at,
            None => {
                let mut log_key = log.in_bundle();
                certs.resolve(&mut log_key.lineage.attestation, signed_at);
                self.log.push((cert, SplicedJson::new(&log_key, 2)?));
                self.log.len() - 1
            }
        };
        let batch = match batch {
            None => None,
            Some(member) => {
                let at = match self
                    .statements
                    .iter()
                    .position(|(s, _)| *s == member.statement)
                {
                    Some(at) => at,
                    None => {
                        let spliced = SplicedJson::new(&member.statement, 2)?;
                        self.statements.push((member.statement.clone(), spliced));
                        self.statements.len() - 1
                    }
                };
                Some(BatchParts {
                    statement: &self.statements[at].1,
                    leaf_index: member.leaf_index,
                    inclusion_proof: &member.inclusion_proof,
                })
            }
        };
        BundleParts {
            receipt,
            actor_key_id: &key.record.key_id,
            actor_public_key: public_key,
            lineage,
            index: inclusion.log_index,
            tree_size: inclusion.tree_size,
            inclusion_proof: inclusion.proof,
            checkpoint: inclusion.checkpoint_note,
            log_key: &self.log[log_at].1,
            batch,
        }
        .to_json()
    }
}

/// A receipt's own parts, as the store or the node that signed it holds them: its log entry,
/// the receipt as its bundle carries it, its signing key and when it was signed (Unix s).
pub struct ReceiptParts<'a> {
    pub entry: &'a [u8],
    pub receipt: (&'a Envelope, Option<&'a BatchInBundle>),
    pub key: SigningKey<'a>,
    pub signed_at: i64,
}

/// Checks a stored checkpoint (`size`, `root`, `note`) is the log key's and states that tree
/// head: once per checkpoint, before the bundles proved against it are built.
pub fn check_checkpoint(
    log: &LogIdentity,
    log_index: u64,
    checkpoint: &CheckpointRow,
) -> Result<(), StoreError> {
    let corrupt = |what: &str| StoreError::Corrupt(format!("receipt {log_index}: {what}"));
    let parsed = crate::verify::checkpoint::verify_checkpoint(
        checkpoint.note.as_bytes(),
        &log.origin,
        &log.spki_der(),
    )
    .map_err(|e| corrupt(&format!("the checkpoint of its proof: {e}")))?;
    if parsed.size == checkpoint.size && parsed.root == checkpoint.root {
        Ok(())
    } else {
        Err(corrupt(
            "the checkpoint of its proof states another tree head",
        ))
    }
}

impl SharedParts {
    /// The bundle of a receipt from its parts, its proof (`inclusion`) checked against the
    /// `root` of the checkpoint it leads to (itself checked by [`check_checkpoint`]). Both
    /// answer paths build here: [`stored`] from the store's rows, a fleet node from its own
    /// receipts and the integrator's proofs, so both give the same bytes.
    pub fn proven_bundle_json(
        &mut self,
        parts: &ReceiptParts<'_>,
        log: &LogIdentity,
        inclusion: Inclusion<'_>,
        root: &Hash,
        certs: &DeviceCertificates,
    ) -> Result<String, StoreError> {
        let index = inclusion.log_index;
        // Checked at use too: rows behind the start-up check's watermark are not re-read at start.
        crate::verify::merkle::verify_inclusion(
            &crate::ledger::merkle::leaf_hash(parts.entry),
            index,
            inclusion.tree_size,
            inclusion.proof,
            root,
        )
        .map_err(|e| {
            StoreError::Corrupt(format!(
                "receipt {index}: its stored inclusion proof does not verify: {e}"
            ))
        })?;
        self.bundle_json(
            parts.receipt,
            parts.key,
            log,
            inclusion,
            certs,
            parts.signed_at,
        )
        .map_err(|e| StoreError::Corrupt(e.to_string()))
    }
}

/// The stored receipt at `log_index`, proved against `proof` (tree size and hashes) or, if
/// `None`, against the checkpoint of its own batch. `Ok(None)` if the entry is not a receipt.
pub fn stored(
    store: &Store,
    log: &LogIdentity,
    certs: &DeviceCertificates,
    log_index: u64,
    proof: Option<(u64, Vec<Hash>)>,
) -> Result<Option<SignedReceipt>, StoreError> {
    let Some(receipt) = store.receipt(log_index)? else {
        return Ok(None);
    };
    let corrupt = |what: &str| StoreError::Corrupt(format!("receipt {log_index}: {what}"));
    let bytes = store
        .entry(log_index)?
        .ok_or_else(|| corrupt("its log entry is missing"))?;
    let envelope = receipt_of(&bytes, &receipt.key_id)
        .ok_or_else(|| corrupt("its log entry is unreadable"))?;
    let key = store
        .key_by_id(&receipt.key_id)?
        .ok_or_else(|| corrupt("its key is not registered"))?;
    let lineage = lineage(store, &key, certs)?;
    let signed_at = unix(&receipt.signed_at).ok_or_else(|| corrupt("its time is unreadable"))?;
    let (tree_size, hashes) = proof.unwrap_or((receipt.proof_size, receipt.proof));
    let checkpoint = store
        .checkpoint(tree_size)?
        .ok_or_else(|| corrupt("the checkpoint of its proof is missing"))?;
    check_checkpoint(log, log_index, &checkpoint)?;
    let parts = ReceiptParts {
        entry: &bytes,
        receipt: (&envelope.0, envelope.1.as_ref()),
        key: SigningKey {
            record: &key,
            lineage: &lineage,
        },
        signed_at,
    };
    let inclusion = Inclusion {
        log_index,
        tree_size,
        proof: &hashes,
        checkpoint_note: &checkpoint.note,
    };
    let bundle_json = SharedParts::default().proven_bundle_json(
        &parts,
        log,
        inclusion,
        &checkpoint.root,
        certs,
    )?;
    Ok(Some(SignedReceipt {
        bundle_json,
        log_index,
        sequence: receipt.sequence,
        key_id: receipt.key_id,
    }))
}

/// The stored receipt at `log_index` proved against an anchored checkpoint: the bundle
/// carries its note (with the witnesses' cosignatures) and its timestamp tokens.
pub fn anchored(
    store: &Store,
    log: &LogIdentity,
    certs: &DeviceCertificates,
    log_index: u64,
    anchored: &crate::anchor::AnchoredCheckpoint,
) -> Result<Option<SignedReceipt>, StoreError> {
    let hashes = crate::ledger::merkle::inclusion_proof(store, log_index, anchored.size)
        .map_err(|e| StoreError::Corrupt(format!("receipt {log_index}: {e}")))?;
    let Some(mut receipt) = stored(store, log, certs, log_index, Some((anchored.size, hashes)))?
    else {
        return Ok(None);
    };
    receipt.bundle_json = with_anchor(&receipt.bundle_json, anchored)?;
    Ok(Some(receipt))
}

/// A bundle with its log-signed checkpoint replaced by the anchored one of the same size.
fn with_anchor(
    bundle_json: &str,
    anchored: &crate::anchor::AnchoredCheckpoint,
) -> Result<String, StoreError> {
    let corrupt = |e: String| StoreError::Corrupt(format!("anchored bundle: {e}"));
    let mut bundle: Bundle =
        serde_json::from_str(bundle_json).map_err(|e| corrupt(e.to_string()))?;
    if bundle.log.tree_size != anchored.size {
        return Err(corrupt("proved against another size".into()));
    }
    bundle.log.checkpoint = anchored.note.clone();
    bundle.log.timestamps = anchored
        .timestamps
        .iter()
        .map(|t| crate::proof::bundle::TimestampInBundle {
            token: B64.encode(t),
        })
        .collect();
    bundle.to_json().map_err(|e| corrupt(e.to_string()))
}
