//! `actseal audit`: replays a whole exported log offline and confirms every entry.
//!
//! The tree is recomputed from the entries and must equal the newest checkpoint, signed by the
//! attested log key. Every receipt must verify under a registered, attested key of its actor
//! that was in service at its position in the log; each actor's receipts must form one hash
//! chain with sequence numbers 1, 2, 3, … (no gap, no fork); rotations must be signed by the
//! version they retire and retirements by the log key.

use std::collections::HashMap;

use p256::ecdsa::VerifyingKey;
use p256::pkcs8::DecodePublicKey;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::anchors::TrustAnchors;
use super::bundle::{self, ActorKey, LineageJson, LogKeyJson};
use super::checkpoint::verify_checkpoint;
use super::dsse::{self, Envelope};
use super::statement::{self, KeyClaim};
use super::{check_attestation_signature, digest, log, x509};

/// Media type of a log export (`actseal log export`).
pub const EXPORT_MEDIA_TYPE: &str = "application/vnd.actseal.log-export.v1+json";

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ExportJson {
    media_type: String,
    log_key: LogKeyJson,
    checkpoint: String,
    entries: Vec<String>,
    keys: Vec<ExportKeyJson>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ExportKeyJson {
    actor: String,
    version: u64,
    key_id: String,
    public_key: String,
    lineage: LineageJson,
}

/// Where the audit stopped, and why.
#[derive(Debug, thiserror::Error)]
#[error("{}{detail}", match .index { Some(i) => format!("entry {i}: "), None => String::new() })]
pub struct AuditError {
    /// The log index of the offending entry, if the failure is about one.
    pub index: Option<u64>,
    pub detail: String,
}

fn fail(index: Option<u64>, detail: impl Into<String>) -> AuditError {
    AuditError {
        index,
        detail: detail.into(),
    }
}

/// What a successful audit confirmed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditReport {
    pub origin: String,
    pub size: u64,
    pub root_hex: String,
    pub receipts: u64,
    pub actors: u64,
    pub rotations: u64,
    pub retirements: u64,
}

impl std::fmt::Display for AuditReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "OK: log {} of {} entries (root {}) replayed: {} receipts of {} actors, {} rotations, {} retirements; \
             every signature, chain and sequence checked",
            self.origin.escape_default(),
            self.size,
            self.root_hex,
            self.receipts,
            self.actors,
            self.rotations,
            self.retirements
        )
    }
}

struct Key {
    actor: String,
    version: u64,
    verifying: VerifyingKey,
    lineage: bundle::Lineage,
    /// When the key was first seen signing: its attestation must be valid then.
    first_use: Option<i64>,
}

#[derive(Default)]
struct ActorState {
    /// Key id of the version in service; `None` before registration is seen or after retirement.
    active: Option<String>,
    retired: bool,
    sequence: u64,
    previous_sha256: Option<String>,
}

/// Splits a log entry into its envelope (FORMAT.md §10).
fn decode_entry(entry: &[u8]) -> Result<Envelope, String> {
    let mut rest = entry;
    let mut fields: Vec<&[u8]> = Vec::with_capacity(3);
    for _ in 0..3 {
        let (len, tail) = rest.split_first_chunk::<4>().ok_or("entry is truncated")?;
        let len = usize::try_from(u32::from_be_bytes(*len)).map_err(|_| "entry field too large")?;
        if tail.len() < len {
            return Err("entry is truncated".into());
        }
        let (field, tail) = tail.split_at(len);
        fields.push(field);
        rest = tail;
    }
    if !rest.is_empty() {
        return Err("entry has trailing bytes".into());
    }
    let [payload_type, payload, sig] = <[&[u8]; 3]>::try_from(fields).map_err(|_| "entry shape")?;
    let payload_type =
        String::from_utf8(payload_type.to_vec()).map_err(|_| "payload type is not UTF-8")?;
    let signature =
        p256::ecdsa::Signature::from_der(sig).map_err(|_| "signature is not DER ECDSA P-256")?;
    Ok(Envelope {
        payload_type,
        payload: payload.to_vec(),
        keyid: String::new(),
        signature,
        signature_der: sig.to_vec(),
    })
}

fn root_of(leaves: &[[u8; 32]]) -> [u8; 32] {
    match leaves.len() {
        0 => Sha256::digest([]).into(),
        1 => leaves.first().copied().unwrap_or_default(),
        n => {
            // The largest power of two below n (RFC 9162 MTH split).
            let k = n.checked_next_power_of_two().map_or(n, |p| p / 2);
            let (left, right) = leaves.split_at(k);
            let mut h = Sha256::new();
            h.update([1u8]);
            h.update(root_of(left));
            h.update(root_of(right));
            h.finalize().into()
        }
    }
}

/// Times never decrease in log order (FORMAT.md §11.4): an entry dated before the one ahead of
/// it was backdated, or signed by a daemon whose clock stepped back. `previous` is the index
/// and time of the last dated entry.
fn check_time_order(
    envelope: &Envelope,
    kind: &str,
    index: u64,
    previous: &mut Option<(u64, i64)>,
) -> Result<(), AuditError> {
    let at = Some(index);
    let member = match kind {
        statement::RECEIPT_PREDICATE_TYPE => "signedAt",
        statement::ROTATION_PREDICATE_TYPE => "rotatedAt",
        statement::RETIREMENT_PREDICATE_TYPE => "retiredAt",
        other => return Err(fail(at, format!("no time rule for entry type {other:?}"))),
    };
    let statement: serde_json::Value =
        serde_json::from_slice(&envelope.payload).map_err(|e| fail(at, format!("payload: {e}")))?;
    let text = statement
        .get("predicate")
        .and_then(|p| p.get(member))
        .and_then(|t| t.as_str())
        .ok_or_else(|| fail(at, format!("predicate.{member} is missing")))?;
    let time =
        statement::parse_time(&format!("predicate.{member}"), text).map_err(|e| fail(at, e))?;
    if let Some((earlier, earlier_time)) = *previous
        && time < earlier_time
    {
        return Err(fail(
            at,
            format!(
                "dated {text}, {} s before entry {earlier}: times go backwards in the log",
                earlier_time.saturating_sub(time)
            ),
        ));
    }
    *previous = Some((index, time));
    Ok(())
}

/// Replays an exported log. The first problem found is returned.
pub fn audit_log(export_json: &[u8], anchors: &TrustAnchors) -> Result<AuditReport, AuditError> {
    let export: ExportJson = serde_json::from_slice(export_json)
        .map_err(|e| fail(None, format!("not a log export: {e}")))?;
    if export.media_type != EXPORT_MEDIA_TYPE {
        return Err(fail(None, format!("mediaType is {:?}", export.media_type)));
    }
    let (origin, log_key, log_key_lineage) =
        bundle::decode_log_key(export.log_key).map_err(|e| fail(None, e))?;
    let log_verifying = VerifyingKey::from_public_key_der(&log_key.spki_der)
        .map_err(|e| fail(None, format!("log key: {e}")))?;
    let log_key_id = digest::key_id(&log_key.spki_der);

    // The newest checkpoint commits to exactly these entries.
    let checkpoint = verify_checkpoint(export.checkpoint.as_bytes(), &origin, &log_key.spki_der)
        .map_err(|e| fail(None, format!("checkpoint: {e}")))?;
    let mut entries = Vec::with_capacity(export.entries.len());
    for (i, text) in export.entries.iter().enumerate() {
        entries.push(bundle::base64(&format!("entries[{i}]"), text).map_err(|e| fail(None, e))?);
    }
    let leaves: Vec<[u8; 32]> = entries.iter().map(|e| log::leaf_hash(e)).collect();
    let size = u64::try_from(entries.len()).unwrap_or(u64::MAX);
    if checkpoint.size != size {
        return Err(fail(
            None,
            format!(
                "{size} entries, but the checkpoint covers {}",
                checkpoint.size
            ),
        ));
    }
    let root = root_of(&leaves);
    if root != checkpoint.root {
        return Err(fail(
            None,
            "the entries' Merkle root is not the checkpoint's root",
        ));
    }

    let mut keys: HashMap<String, Key> = HashMap::new();
    for k in export.keys {
        let at = format!("keys[{} v{}]", k.actor, k.version);
        let key: ActorKey =
            bundle::decode_actor_key(&at, k.key_id, &k.public_key).map_err(|e| fail(None, e))?;
        let verifying = VerifyingKey::from_public_key_der(&key.spki_der)
            .map_err(|e| fail(None, format!("{at}: {e}")))?;
        if key.key_id != digest::key_id(&key.spki_der) {
            return Err(fail(
                None,
                format!("{at}: keyId is not the hash of its key"),
            ));
        }
        let lineage = bundle::decode_lineage(&at, k.lineage).map_err(|e| fail(None, e))?;
        keys.insert(
            key.key_id,
            Key {
                actor: k.actor,
                version: k.version,
                verifying,
                lineage,
                first_use: None,
            },
        );
    }

    let mut actors: HashMap<String, ActorState> = HashMap::new();
    // When each key last signed a receipt, and when it was retired (rotation or retirement):
    // no key may sign after its retirement, whatever order the entries are in.
    let mut last_signed: HashMap<String, i64> = HashMap::new();
    let mut retired_at: HashMap<String, i64> = HashMap::new();
    let (mut receipts, mut rotations, mut retirements) = (0u64, 0u64, 0u64);
    let mut last_time = i64::MIN;
    let mut previous_time: Option<(u64, i64)> = None;
    for (position, entry) in entries.iter().enumerate() {
        let index = u64::try_from(position).unwrap_or(u64::MAX);
        let at = Some(index);
        let envelope = decode_entry(entry).map_err(|e| fail(at, e))?;
        let kind = statement::predicate_type(&envelope).map_err(|e| fail(at, e))?;
        match kind.as_str() {
            statement::RECEIPT_PREDICATE_TYPE => {
                // The signer is named inside the payload; find it, then check the signature.
                let claimed: serde_json::Value = serde_json::from_slice(&envelope.payload)
                    .map_err(|e| fail(at, format!("receipt payload: {e}")))?;
                let key_id = claimed
                    .pointer("/predicate/key/id")
                    .and_then(|v| v.as_str())
                    .ok_or_else(|| fail(at, "receipt names no key"))?
                    .to_owned();
                let key = keys
                    .get_mut(&key_id)
                    .ok_or_else(|| fail(at, format!("receipt signed by unknown key {key_id}")))?;
                dsse::verify(&envelope, &key.verifying).map_err(|e| fail(at, e))?;
                let receipt =
                    statement::check_receipt(&envelope, &key_id).map_err(|e| fail(at, e))?;
                if receipt.actor != key.actor || receipt.key_version != key.version {
                    return Err(fail(at, "receipt's actor or key version is not its key's"));
                }
                if receipt.log_index != index {
                    return Err(fail(
                        at,
                        format!("receipt says logIndex {}", receipt.log_index),
                    ));
                }
                key.first_use.get_or_insert(receipt.signed_at_unix);
                let last = last_signed.entry(key_id.clone()).or_insert(i64::MIN);
                *last = (*last).max(receipt.signed_at_unix);
                last_time = last_time.max(receipt.signed_at_unix);
                let state = actors.entry(receipt.actor.clone()).or_default();
                if state.retired {
                    return Err(fail(at, "signed by a retired key after its retirement"));
                }
                match &state.active {
                    None if key.version == 1 => state.active = Some(key_id.clone()),
                    None => {
                        return Err(fail(
                            at,
                            format!("key version {} was never rotated in", key.version),
                        ));
                    }
                    Some(active) if *active != key_id => {
                        return Err(fail(
                            at,
                            "signed by a key version that is not in service: a retired key after its retirement, or a fork",
                        ));
                    }
                    Some(_) => {}
                }
                let expected = state
                    .sequence
                    .checked_add(1)
                    .ok_or_else(|| fail(at, "sequence overflow"))?;
                if receipt.sequence != expected {
                    return Err(fail(
                        at,
                        format!(
                            "{}: sequence {} where {expected} was due (a gap or a fork)",
                            receipt.actor, receipt.sequence
                        ),
                    ));
                }
                if receipt.previous_sha256 != state.previous_sha256 {
                    return Err(fail(
                        at,
                        format!(
                            "{}: previousReceipt does not name the previous receipt",
                            receipt.actor
                        ),
                    ));
                }
                state.sequence = expected;
                state.previous_sha256 = Some(digest::sha256_hex(&envelope.payload));
                receipts = receipts.saturating_add(1);
            }
            statement::ROTATION_PREDICATE_TYPE => {
                let actor: String = serde_json::from_slice::<serde_json::Value>(&envelope.payload)
                    .ok()
                    .and_then(|v| {
                        v.pointer("/predicate/actor")
                            .and_then(|a| a.as_str())
                            .map(str::to_owned)
                    })
                    .ok_or_else(|| fail(at, "rotation names no actor"))?;
                let rotation =
                    statement::check_rotation(&envelope, &actor).map_err(|e| fail(at, e))?;
                let previous = keys
                    .get_mut(&rotation.from_key_id)
                    .ok_or_else(|| fail(at, "rotation from an unknown key"))?;
                if previous.actor != actor || previous.version != rotation.from_version {
                    return Err(fail(
                        at,
                        "rotation signed by a key of another actor or version",
                    ));
                }
                dsse::verify(&envelope, &previous.verifying).map_err(|e| {
                    fail(
                        at,
                        format!("rotation not signed by the version it retires: {e}"),
                    )
                })?;
                previous.first_use.get_or_insert(rotation.rotated_at_unix);
                retired_at.insert(rotation.from_key_id.clone(), rotation.rotated_at_unix);
                let next = keys
                    .get(&rotation.to_key_id)
                    .ok_or_else(|| fail(at, "rotation to an unknown key"))?;
                if next.actor != actor || next.version != rotation.to_version {
                    return Err(fail(at, "rotation names a key of another actor or version"));
                }
                let state = actors.entry(actor).or_default();
                match &state.active {
                    Some(active) if *active == rotation.from_key_id && !state.retired => {}
                    None if rotation.from_version == 1 && !state.retired => {}
                    _ => {
                        return Err(fail(
                            at,
                            "rotation from a version that is not in service (a fork)",
                        ));
                    }
                }
                state.active = Some(rotation.to_key_id.clone());
                last_time = last_time.max(rotation.rotated_at_unix);
                rotations = rotations.saturating_add(1);
            }
            statement::RETIREMENT_PREDICATE_TYPE => {
                dsse::verify(&envelope, &log_verifying)
                    .map_err(|e| fail(at, format!("retirement not signed by the log key: {e}")))?;
                let retirement = statement::check_retirement(&envelope).map_err(|e| fail(at, e))?;
                let state = actors.entry(retirement.actor.clone()).or_default();
                let in_service = match &state.active {
                    Some(active) => *active == retirement.key_id,
                    None => retirement.version == 1,
                };
                if !in_service || state.retired {
                    return Err(fail(at, "retirement of a version that is not in service"));
                }
                state.active = None;
                state.retired = true;
                retired_at.insert(retirement.key_id.clone(), retirement.retired_at_unix);
                last_time = last_time.max(retirement.retired_at_unix);
                retirements = retirements.saturating_add(1);
            }
            other => return Err(fail(at, format!("unknown entry type {other:?}"))),
        }
        check_time_order(&envelope, &kind, index, &mut previous_time)?;
    }

    for (key_id, retired) in &retired_at {
        if last_signed.get(key_id).is_some_and(|last| last > retired) {
            return Err(fail(
                None,
                format!("key {key_id} signed a receipt dated after its retirement"),
            ));
        }
    }

    // Every key that signed anything was attested by a device under the anchor when it did.
    for (key_id, key) in &keys {
        let Some(when) = key.first_use else { continue };
        let lineage = &key.lineage;
        x509::verify_path(&lineage.device, &lineage.chain, &anchors.certs, when)
            .map_err(|e| fail(None, format!("key {key_id}: device certificate: {e}")))?;
        check_attestation_signature(lineage)
            .map_err(|e| fail(None, format!("key {key_id}: {e}")))?;
        statement::check_lineage(
            &lineage.evidence,
            &lineage.backend,
            &KeyClaim {
                actor: &key.actor,
                version: key.version,
                key_id,
                backend: &lineage.backend,
            },
        )
        .map_err(|e| fail(None, format!("key {key_id}: {e}")))?;
    }
    // And so was the log key.
    let when = if last_time == i64::MIN { 0 } else { last_time };
    x509::verify_path(
        &log_key_lineage.device,
        &log_key_lineage.chain,
        &anchors.certs,
        when,
    )
    .map_err(|e| fail(None, format!("log key: device certificate: {e}")))?;
    check_attestation_signature(&log_key_lineage)
        .map_err(|e| fail(None, format!("log key: {e}")))?;
    statement::check_lineage(
        &log_key_lineage.evidence,
        &log_key_lineage.backend,
        &KeyClaim {
            actor: &origin,
            version: 1,
            key_id: &log_key_id,
            backend: &log_key_lineage.backend,
        },
    )
    .map_err(|e| fail(None, format!("log key: {e}")))?;

    Ok(AuditReport {
        origin,
        size,
        root_hex: hex::encode(root),
        receipts,
        actors: u64::try_from(actors.len()).unwrap_or(u64::MAX),
        rotations,
        retirements,
    })
}
