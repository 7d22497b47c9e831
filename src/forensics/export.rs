//! Proof bundles rebuilt from a log export (FORMAT.md §11.3), so that each receipt of an export
//! is checked by the same verifier as a bundle a caller kept (`verify_bundle`).
//!
//! Everything a bundle needs is in the export: the receipt is an entry; its key, the key's
//! attestation and the earlier versions come from the log's key registrations; the rotations
//! are entries; the inclusion proof is recomputed from the entries (RFC 9162 §2.1.3.1) and the
//! checkpoint and log key are the export's. Nothing is trusted here: a wrong reconstruction
//! only makes the verifier fail.

use std::collections::HashMap;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};

use crate::verify::audit::EXPORT_MEDIA_TYPE;
use crate::verify::merkle::leaf_hash;

use super::load::Item;

const RECEIPT: &str = "https://actseal.dev/receipt/v1";
const REGISTRATION: &str = "https://actseal.dev/key-registration/v1";
const ROTATION: &str = "https://actseal.dev/rotation/v1";

/// One log entry, decoded (§11.1).
struct Entry {
    payload_type: String,
    payload: Vec<u8>,
    sig: Vec<u8>,
}

/// Reads `u32be(len) || bytes` at `at`, moving `at` past it.
fn take<'a>(bytes: &'a [u8], at: &mut usize) -> Result<&'a [u8], String> {
    let head = bytes
        .get(*at..at.saturating_add(4))
        .ok_or("entry truncated in a length")?;
    let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
    let start = at.saturating_add(4);
    let end = start.saturating_add(len);
    let body = bytes.get(start..end).ok_or("entry truncated in a field")?;
    *at = end;
    Ok(body)
}

fn decode_entry(bytes: &[u8]) -> Result<Entry, String> {
    let mut at = 0;
    let payload_type = String::from_utf8(take(bytes, &mut at)?.to_vec())
        .map_err(|_| "payloadType is not UTF-8")?;
    let payload = take(bytes, &mut at)?.to_vec();
    let sig = take(bytes, &mut at)?.to_vec();
    if at != bytes.len() {
        return Err("bytes after the signature".into());
    }
    Ok(Entry {
        payload_type,
        payload,
        sig,
    })
}

/// The DSSE envelope of an entry, as bundles carry it.
fn envelope(entry: &Entry, keyid: &str) -> Value {
    json!({
        "payloadType": entry.payload_type,
        "payload": STANDARD.encode(&entry.payload),
        "signatures": [{"keyid": keyid, "sig": STANDARD.encode(&entry.sig)}],
    })
}

/// The tree over an export's leaves, with each subtree's root (RFC 9162 MTH) computed once:
/// the audit paths of all receipts share their subtrees, so an export of n entries costs O(n)
/// hashes in all rather than O(n) for each receipt.
struct Tree<'a> {
    leaves: &'a [[u8; 32]],
    roots: HashMap<(usize, usize), [u8; 32]>,
}

impl<'a> Tree<'a> {
    fn new(leaves: &'a [[u8; 32]]) -> Self {
        Tree {
            leaves,
            roots: HashMap::new(),
        }
    }

    /// MTH of the `len` leaves from `start` (len ≥ 1).
    fn root(&mut self, start: usize, len: usize) -> [u8; 32] {
        use sha2::{Digest, Sha256};
        if len == 1 {
            return self.leaves[start];
        }
        if let Some(r) = self.roots.get(&(start, len)) {
            return *r;
        }
        let k = split(len);
        let (left, right) = (self.root(start, k), self.root(start + k, len - k));
        let mut h = Sha256::new();
        h.update([0x01u8]);
        h.update(left);
        h.update(right);
        let r: [u8; 32] = h.finalize().into();
        self.roots.insert((start, len), r);
        r
    }

    /// RFC 9162 §2.1.3.1 PATH(m, D[start..start+len]): leaf `m`'s audit path, leaf first.
    fn path(&mut self, m: usize, start: usize, len: usize) -> Vec<[u8; 32]> {
        if len <= 1 {
            return Vec::new();
        }
        let k = split(len);
        let (mut proof, sibling) = if m < k {
            (self.path(m, start, k), self.root(start + k, len - k))
        } else {
            (self.path(m - k, start + k, len - k), self.root(start, k))
        };
        proof.push(sibling);
        proof
    }
}

/// The largest power of two smaller than `n` (n ≥ 2).
fn split(n: usize) -> usize {
    let mut k = 1;
    while k * 2 < n {
        k *= 2;
    }
    k
}

/// A registered key version: its id, public key and attestation (§11.2).
struct Registered {
    key_id: String,
    public_key: String,
    attestation: Value,
}

/// The export's state as it is replayed: registrations and rotation envelopes per actor.
#[derive(Default)]
struct Keys {
    registered: HashMap<(String, u64), Registered>,
    rotations: HashMap<(String, u64), Value>,
}

impl Keys {
    fn learn(&mut self, entry: &Entry, statement: &Value) {
        let p = &statement["predicate"];
        let actor = p["actor"].as_str().unwrap_or_default().to_string();
        match statement["predicateType"].as_str() {
            Some(REGISTRATION) => {
                let version = p["version"].as_u64().unwrap_or(0);
                self.registered
                    .entry((actor, version))
                    .or_insert(Registered {
                        key_id: p["keyId"].as_str().unwrap_or_default().into(),
                        public_key: p["publicKey"].as_str().unwrap_or_default().into(),
                        attestation: p["attestation"].clone(),
                    });
            }
            Some(ROTATION) => {
                let from = p["previous"]["version"].as_u64().unwrap_or(0);
                let keyid = p["previous"]["keyId"].as_str().unwrap_or_default();
                self.rotations
                    .entry((actor, from))
                    .or_insert_with(|| envelope(entry, keyid));
            }
            _ => {}
        }
    }

    /// The `lineage` of `actor`'s key `version`: its attestation, with every earlier version
    /// and rotation.
    fn lineage(&self, actor: &str, version: u64) -> Result<(&Registered, Value), String> {
        let key = |v: u64| {
            self.registered
                .get(&(actor.to_string(), v))
                .ok_or_else(|| format!("the export registers no key {actor}#{v}"))
        };
        let own = key(version)?;
        let mut lineage = own.attestation.clone();
        let mut predecessors = Vec::new();
        let mut rotations = Vec::new();
        for v in 1..version {
            let earlier = key(v)?;
            let mut p = earlier.attestation.clone();
            if let Value::Object(map) = &mut p {
                map.insert("version".into(), json!(v));
                map.insert("keyId".into(), json!(earlier.key_id));
                map.insert("publicKey".into(), json!(earlier.public_key));
            }
            predecessors.push(p);
            let rotation = self
                .rotations
                .get(&(actor.to_string(), v))
                .ok_or_else(|| format!("the export holds no rotation {actor}#{v}→{}", v + 1))?;
            rotations.push(rotation.clone());
        }
        if let Value::Object(map) = &mut lineage {
            map.insert("predecessors".into(), Value::Array(predecessors));
            map.insert("rotations".into(), Value::Array(rotations));
        }
        Ok((own, lineage))
    }
}

/// True when `json` is a log export.
pub fn is_export(json: &Value) -> bool {
    json["mediaType"].as_str() == Some(EXPORT_MEDIA_TYPE)
}

/// Every receipt of the export as a bundle, in log order; `source` names the export file.
pub fn bundles(export: &Value, source: &str) -> Result<Vec<Item>, String> {
    let entries = export["entries"]
        .as_array()
        .ok_or("the export has no entries array")?;
    let mut decoded = Vec::with_capacity(entries.len());
    for (i, e) in entries.iter().enumerate() {
        let bytes = e
            .as_str()
            .and_then(|s| STANDARD.decode(s).ok())
            .ok_or_else(|| format!("entry {i} is not base64"))?;
        decoded.push((
            leaf_hash(&bytes),
            decode_entry(&bytes).map_err(|d| format!("entry {i}: {d}"))?,
        ));
    }
    let leaves: Vec<[u8; 32]> = decoded.iter().map(|(leaf, _)| *leaf).collect();
    let mut keys = Keys::default();
    let mut tree = Tree::new(&leaves);
    let mut items = Vec::new();
    for (index, (_, entry)) in decoded.iter().enumerate() {
        let Ok(statement) = serde_json::from_slice::<Value>(&entry.payload) else {
            continue;
        };
        keys.learn(entry, &statement);
        if statement["predicateType"].as_str() != Some(RECEIPT) {
            continue;
        }
        let at = format!("{source} entry {index}");
        let bundle = receipt_bundle(export, &keys, &mut tree, index, entry, &statement);
        items.push(Item::new(
            at,
            bundle.map(|b| b.to_string().into_bytes()),
            Some(entry.payload.clone()),
        ));
    }
    Ok(items)
}

/// The bundle of the receipt at `index`.
fn receipt_bundle(
    export: &Value,
    keys: &Keys,
    tree: &mut Tree<'_>,
    index: usize,
    entry: &Entry,
    statement: &Value,
) -> Result<Value, String> {
    let p = &statement["predicate"];
    let actor = p["actor"].as_str().ok_or("the receipt names no actor")?;
    let version = p["key"]["version"]
        .as_u64()
        .ok_or("the receipt names no key version")?;
    let (key, lineage) = keys.lineage(actor, version)?;
    let size = tree.leaves.len();
    let proof: Vec<String> = tree.path(index, 0, size).iter().map(hex::encode).collect();
    Ok(json!({
        "mediaType": "application/vnd.actseal.bundle.v1+json",
        "receipt": envelope(entry, p["key"]["id"].as_str().unwrap_or_default()),
        "actorKey": {"keyId": key.key_id, "publicKey": key.public_key},
        "lineage": lineage,
        "log": {
            "index": index,
            "treeSize": size,
            "inclusionProof": proof,
            "checkpoint": export["checkpoint"],
            "logKey": export["logKey"],
        },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::merkle::verify_inclusion;

    #[test]
    fn every_path_leads_to_the_root() {
        for n in 1..20usize {
            let leaves: Vec<[u8; 32]> = (0..n).map(|i| leaf_hash(&[i as u8])).collect();
            let mut tree = Tree::new(&leaves);
            let r = tree.root(0, n);
            for (m, leaf) in leaves.iter().enumerate() {
                let proof = tree.path(m, 0, n);
                assert!(
                    verify_inclusion(leaf, m as u64, n as u64, &proof, &r).is_ok(),
                    "leaf {m} of {n}"
                );
            }
        }
    }
}
