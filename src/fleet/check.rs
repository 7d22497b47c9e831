//! What the integrator checks of each queued entry before it enters the shared log: it
//! decodes, its statement says what its queue row says, and its signature verifies (the
//! actor key for receipts, the log key for registrations). A node's bug must not poison
//! the log: an entry that fails is refused, never integrated.

use std::collections::HashMap;

use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::queue::QueuedReceipt;
use crate::{
    backend::check_message_signature,
    ledger::{EntryKind, KeyRecord, KeyState, entry},
    proof::dsse::pae,
};

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Statement {
    predicate_type: String,
    #[serde(default)]
    subject: Vec<Subject>,
    predicate: serde_json::Value,
}

#[derive(Deserialize)]
struct Subject {
    digest: HashMap<String, String>,
}

/// Keys a check may need: those in the store and those this integration registers.
pub trait Keys {
    fn key(&self, key_id: &str) -> Result<Option<KeyRecord>, String>;
}

fn signature_ok(key: &p256::PublicKey, payload_type: &str, payload: &[u8], der: &[u8]) -> bool {
    let Ok(signature) = p256::ecdsa::Signature::from_der(der) else {
        return false;
    };
    check_message_signature(key, &pae(payload_type, payload), &signature).is_ok()
}

/// Checks a receipt entry against its row's facts, its actor's key, and its actor's chain in
/// the log: `head` is the actor's newest receipt so far (sequence, payload digest), which this
/// one must follow (a duplicate or a gap would break the chain, or a unique key of the log).
pub fn receipt(
    bytes: &[u8],
    actor: &str,
    facts: &QueuedReceipt,
    keys: &dyn Keys,
    head: Option<(u64, [u8; 32])>,
) -> Result<(), String> {
    let parts = entry::decode(bytes).ok_or("not an entry")?;
    let statement: Statement =
        serde_json::from_slice(&parts.payload).map_err(|e| format!("not a statement: {e}"))?;
    if statement.predicate_type != crate::proof::receipt::RECEIPT_PREDICATE_TYPE {
        return Err("not a receipt".into());
    }
    let p = &statement.predicate;
    let same = p["actor"] == actor
        && p["key"]["id"] == facts.key_id.as_str()
        && p["sequence"].as_u64() == Some(facts.sequence)
        && p["signedAt"] == facts.signed_at.as_str()
        && p["logIndex"].is_null();
    if !same {
        return Err(
            "its statement does not say what its queue row says (or names a log index)".into(),
        );
    }
    if <[u8; 32]>::from(Sha256::digest(&parts.payload)) != facts.payload_sha256 {
        return Err("its payload digest differs from its queue row's".into());
    }
    let previous = p["previousReceipt"]["sha256"].as_str();
    let follows = match head {
        None => facts.sequence == 1 && previous.is_none(),
        Some((sequence, digest)) => {
            facts.sequence == sequence + 1 && previous == Some(hex::encode(digest).as_str())
        }
    };
    if !follows {
        return Err(format!(
            "sequence {} does not continue {actor:?}'s chain in the log (at {})",
            facts.sequence,
            head.map_or(0, |h| h.0)
        ));
    }
    let key = keys
        .key(&facts.key_id)?
        .ok_or_else(|| format!("key {} is not registered", facts.key_id))?;
    if key.actor != actor {
        return Err(format!("key {} is not {actor:?}'s", facts.key_id));
    }
    if key.state != KeyState::Active {
        return Err(format!("key {} is retired in the log", facts.key_id));
    }
    if let Some(seal) = entry::BatchSeal::decode(&parts.signature_der) {
        return batch_seal(&parts.payload_type, &parts.payload, &seal, &key.public_key);
    }
    if !signature_ok(
        &key.public_key,
        &parts.payload_type,
        &parts.payload,
        &parts.signature_der,
    ) {
        return Err("the actor key's signature does not verify".into());
    }
    Ok(())
}

/// A batch receipt: the statement is signed by the key and its root is reached from the
/// receipt's payload along the seal's path.
fn batch_seal(
    payload_type: &str,
    payload: &[u8],
    seal: &entry::BatchSeal,
    key: &p256::PublicKey,
) -> Result<(), String> {
    if !signature_ok(
        key,
        payload_type,
        &seal.statement_payload,
        &seal.statement_signature_der,
    ) {
        return Err("the batch statement's signature does not verify".into());
    }
    let statement: Statement = serde_json::from_slice(&seal.statement_payload)
        .map_err(|e| format!("batch statement: {e}"))?;
    if !statement.predicate["firstLogIndex"].is_null() {
        return Err("a fleet batch statement names a log index".into());
    }
    let size = statement.predicate["size"].as_u64().ok_or("batch size")?;
    let root_hex = statement
        .subject
        .first()
        .and_then(|s| s.digest.get("sha256"))
        .ok_or("batch statement subject")?;
    let mut root = [0u8; 32];
    hex::decode_to_slice(root_hex, &mut root).map_err(|e| format!("batch root: {e}"))?;
    crate::verify::merkle::verify_inclusion(
        &crate::ledger::merkle::leaf_hash(payload),
        u64::from(seal.leaf_index),
        size,
        &seal.path,
        &root,
    )
    .map_err(|e| format!("the receipt is not in its signed batch: {e}"))
}

/// A log-key statement (registration): signed by the log key; a registration names the key
/// version its queue row enters.
pub fn log_statement(
    bytes: &[u8],
    kind: EntryKind,
    log_key: &p256::PublicKey,
    key: Option<&KeyRecord>,
) -> Result<(), String> {
    let parts = entry::decode(bytes).ok_or("not an entry")?;
    if !signature_ok(
        log_key,
        &parts.payload_type,
        &parts.payload,
        &parts.signature_der,
    ) {
        return Err("the log key's signature does not verify".into());
    }
    let statement: Statement =
        serde_json::from_slice(&parts.payload).map_err(|e| format!("not a statement: {e}"))?;
    match (kind, key) {
        (EntryKind::Registration, Some(key)) => {
            let p = &statement.predicate;
            if p["keyId"] != key.key_id.as_str()
                || p["actor"] != key.actor.as_str()
                || p["version"].as_u64() != Some(u64::from(key.version))
            {
                return Err("the registration names another key than its queue row".into());
            }
            Ok(())
        }
        (EntryKind::Registration, None) => Err("a registration without its key record".into()),
        _ => Err(format!(
            "{} entries are not queued in a fleet",
            kind.as_str()
        )),
    }
}

/// The statement of an entry signed by `key`, if the signature verifies and it is of
/// `predicate_type`.
fn signed_statement(
    bytes: &[u8],
    key: &p256::PublicKey,
    predicate_type: &str,
    signer: &str,
) -> Result<serde_json::Value, String> {
    let parts = entry::decode(bytes).ok_or("not an entry")?;
    if !signature_ok(
        key,
        &parts.payload_type,
        &parts.payload,
        &parts.signature_der,
    ) {
        return Err(format!("the {signer}'s signature does not verify"));
    }
    let statement: Statement =
        serde_json::from_slice(&parts.payload).map_err(|e| format!("not a statement: {e}"))?;
    if statement.predicate_type != predicate_type {
        return Err(format!("not a {predicate_type} statement"));
    }
    Ok(statement.predicate)
}

/// A rotation entry: signed by the actor's active key `active` (the version the log holds),
/// naming it as the previous version and `next` as its successor. Its `rotatedAt`.
pub fn rotation(
    bytes: &[u8],
    actor: &str,
    active: &KeyRecord,
    next: &KeyRecord,
) -> Result<String, String> {
    let p = signed_statement(
        bytes,
        &active.public_key,
        crate::proof::lineage::ROTATION_PREDICATE_TYPE,
        "actor's active key",
    )?;
    let names = |v: &serde_json::Value, key: &KeyRecord| {
        v["version"].as_u64() == Some(u64::from(key.version)) && v["keyId"] == key.key_id.as_str()
    };
    if p["actor"] != actor
        || next.actor != actor
        || !names(&p["previous"], active)
        || !names(&p["next"], next)
        || next.version <= active.version
    {
        return Err(format!(
            "the rotation does not name {actor:?}'s active key (v{}) and the key its queue row makes active",
            active.version
        ));
    }
    p["rotatedAt"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| "the rotation has no rotatedAt".into())
}

/// A retirement entry: signed by the log key, naming the actor's active key `active`. Its
/// `retiredAt`.
pub fn retirement(
    bytes: &[u8],
    actor: &str,
    log_key: &p256::PublicKey,
    active: &KeyRecord,
) -> Result<String, String> {
    let p = signed_statement(
        bytes,
        log_key,
        crate::proof::lineage::RETIREMENT_PREDICATE_TYPE,
        "log key",
    )?;
    if p["actor"] != actor
        || p["version"].as_u64() != Some(u64::from(active.version))
        || p["keyId"] != active.key_id.as_str()
    {
        return Err(format!(
            "the retirement does not name {actor:?}'s active key (v{})",
            active.version
        ));
    }
    p["retiredAt"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| "the retirement has no retiredAt".into())
}
