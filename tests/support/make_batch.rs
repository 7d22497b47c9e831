//! Builds batch receipts (FORMAT.md §12) with software keys, written from the format text and
//! independently of both the daemon's batch builder (`src/proof/batch.rs`) and the verifier.
//!
//! A batch of `size` receipts by the default actor (version 1): leaf `i` has sequence
//! `first_sequence + i`, log index `first_log_index + i` (`null` in a fleet batch), its own
//! document, and names the receipt before it. The actor key signs one batch statement over the RFC 9162 root of the
//! receipt payloads. The log holds filler entries around the batch's entries, whose signature
//! slot is the batch seal. [`BatchOptions`] lets a test bend each rule to build a forgery.
//!
//! This is test code: it panics on misuse.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde::Serialize;
use serde_json::{Value, json};

use super::make_bundle::*;

pub const BATCH_PREDICATE: &str = "https://actseal.dev/receipt-batch/v1";
pub const SEAL_MAGIC: &[u8] = b"actseal-batch-seal/v1\n";

/// What a test may vary; `BatchOptions::default()` is the committed batch vector.
#[derive(Clone, Debug)]
pub struct BatchOptions {
    /// The single-receipt options the batch shares (keys, lineage, log, `signedAt`, actor…);
    /// `sequence`, `log_index`, `mode`, `document` and `previous_receipt` are per leaf.
    pub base: Options,
    pub size: u64,
    pub first_sequence: u64,
    pub first_log_index: u64,
    /// `previousReceipt` of leaf 0 (hex), `None` for sequence 1.
    pub previous_of_first: Option<String>,
    /// The order of the payloads in the tree: `order[k]` is the leaf (by sequence offset) at
    /// tree index k. Default: identity.
    pub order: Option<Vec<usize>>,
    /// Replacements in the batch statement (JSON pointer, value) before it is signed.
    pub statement_overrides: Vec<(String, Value)>,
    /// Replacements in leaf payloads: (leaf, JSON pointer, value), before the tree is built.
    pub leaf_overrides: Vec<(usize, String, Value)>,
    /// Label of the key that signs the statement; `None`: the actor key.
    pub statement_signer: Option<String>,
    /// Write the statement's DER signature in the log entries' slot instead of the seal.
    pub log_der_slot: bool,
    /// A fleet node's batch (FORMAT.md §12.1): `firstLogIndex` and every leaf's `logIndex`
    /// are `null`; `first_log_index` is then only where the leaves start in the log.
    pub fleet: bool,
    /// Where each leaf (by sequence) sits in the log; `None`: `first_log_index + i`. A fleet's
    /// integrator may put other nodes' entries between a batch's leaves.
    pub log_positions: Option<Vec<u64>>,
}

impl Default for BatchOptions {
    fn default() -> Self {
        BatchOptions {
            base: Options {
                mode: "batch".into(),
                ..Options::default()
            },
            size: 3,
            first_sequence: 1,
            first_log_index: 2,
            previous_of_first: None,
            order: None,
            statement_overrides: Vec::new(),
            leaf_overrides: Vec::new(),
            statement_signer: None,
            log_der_slot: false,
            fleet: false,
            log_positions: None,
        }
    }
}

/// The committed fleet batch (`fleet-batch-v1-leaf1.json`, FORMAT.md §12.5): the default batch
/// as a fleet node signs it, `firstLogIndex` and every `logIndex` null; the integrator put its
/// leaves at entries 1, 3 and 4 of a log of 6, other nodes' entries between them.
pub fn fleet_batch() -> BatchOptions {
    BatchOptions {
        fleet: true,
        log_positions: Some(vec![1, 3, 4]),
        ..BatchOptions::default()
    }
}

/// A generated batch: one bundle per leaf (in sequence order), and what lies behind them.
pub struct GeneratedBatch {
    pub options: BatchOptions,
    pub bundles: Vec<Value>,
    pub documents: Vec<Vec<u8>>,
    pub payloads: Vec<Vec<u8>>,
    pub statement_payload: Vec<u8>,
    pub statement_sig: Vec<u8>,
    pub root: Hash,
    /// The log entries (filler and the batch's).
    pub log_entries: Vec<Vec<u8>>,
    /// The batch's log entries, in sequence order.
    pub batch_entries: Vec<Vec<u8>>,
    pub anchor_pem: String,
    /// The single-receipt bundle the shared material came from (its keys, lineage, log key).
    pub single: Generated,
}

/// The document of leaf `i`.
pub fn leaf_document(i: usize) -> Vec<u8> {
    format!(
        "{{\"tool\":\"payments.initiate\",\"amount\":\"{}.00\",\"leaf\":{i}}}\n",
        100 + i
    )
    .into_bytes()
}

/// The seal of §12.3: magic, u32be(leaf), u8(len(path)), path, u32be-prefixed statement
/// payload and DER signature.
pub fn seal(leaf: u64, path: &[Hash], statement: &[u8], sig: &[u8]) -> Vec<u8> {
    let mut out = SEAL_MAGIC.to_vec();
    out.extend_from_slice(&u32::try_from(leaf).unwrap().to_be_bytes());
    out.push(u8::try_from(path.len()).unwrap());
    for h in path {
        out.extend_from_slice(h);
    }
    for field in [statement, sig] {
        out.extend_from_slice(&u32::try_from(field.len()).unwrap().to_be_bytes());
        out.extend_from_slice(field);
    }
    out
}

/// `u32be(len) || field` for payload type, payload and slot (§11.1).
pub fn entry_with_slot(payload: &[u8], slot: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for field in [IN_TOTO.as_bytes(), payload, slot] {
        out.extend_from_slice(&u32::try_from(field.len()).unwrap().to_be_bytes());
        out.extend_from_slice(field);
    }
    out
}

fn leaf_payload(
    o: &BatchOptions,
    single: &Generated,
    i: usize,
    previous: Option<String>,
) -> Vec<u8> {
    let base = &o.base;
    let mut receipt: Value =
        serde_json::from_slice(&single.receipt_payload).expect("the single receipt is JSON");
    let document = leaf_document(i);
    receipt["subject"][0]["digest"]["sha256"] = json!(sha256_hex(&document));
    let p = &mut receipt["predicate"];
    p["sequence"] = json!(o.first_sequence + i as u64);
    p["logIndex"] = if o.fleet {
        Value::Null
    } else {
        json!(o.first_log_index + i as u64)
    };
    p["previousReceipt"] = match previous {
        Some(h) => json!({"sha256": h}),
        None => Value::Null,
    };
    p["mode"] = json!(base.mode);
    p["context"]["leaf"] = json!(i.to_string());
    for (leaf, pointer, value) in &o.leaf_overrides {
        if *leaf == i {
            *receipt.pointer_mut(pointer).expect("leaf member") = value.clone();
        }
    }
    serde_json::to_vec(&receipt).unwrap()
}

/// The batch statement (§12.1) over `root`.
pub fn batch_statement(o: &BatchOptions, key_id: &str, root: &Hash) -> Value {
    let base = &o.base;
    let mut statement = json!({
        "_type": "https://in-toto.io/Statement/v1",
        "subject": [{
            "name": format!("receipt-batch:{}#{}/{}", base.actor, base.key_version, o.first_sequence),
            "digest": {"sha256": hex::encode(root)},
        }],
        "predicateType": BATCH_PREDICATE,
        "predicate": {
            "actor": base.actor,
            "key": {"id": key_id, "version": base.key_version, "backend": base.backend},
            "size": o.size,
            "firstSequence": o.first_sequence,
            "firstLogIndex": if o.fleet { Value::Null } else { json!(o.first_log_index) },
            "signedAt": base.signed_at,
        }
    });
    for (pointer, value) in &o.statement_overrides {
        *statement.pointer_mut(pointer).expect("statement member") = value.clone();
    }
    statement
}

/// Builds the batch and one bundle per leaf.
pub fn generate_batch(o: &BatchOptions) -> GeneratedBatch {
    let size = usize::try_from(o.size).unwrap();
    let single = generate(&Options {
        log_index: 0,
        log_tree_size: 1,
        ..o.base.clone()
    });
    let key_id = single.actor_key.key_id();

    let mut payloads = Vec::new();
    let mut previous = o.previous_of_first.clone();
    for i in 0..size {
        let payload = leaf_payload(o, &single, i, previous.take());
        previous = Some(sha256_hex(&payload));
        payloads.push(payload);
    }
    let order: Vec<usize> = o.order.clone().unwrap_or_else(|| (0..size).collect());
    let tree_leaves: Vec<Hash> = order.iter().map(|&i| leaf_hash(&payloads[i])).collect();
    let root = tree_root(&tree_leaves);
    let statement_payload = serde_json::to_vec(&batch_statement(o, &key_id, &root)).unwrap();
    let signer = o
        .statement_signer
        .as_deref()
        .map(SoftKey::from_label)
        .unwrap_or_else(|| single.actor_key.clone());
    let statement_sig = signer.sign_der(&pae(IN_TOTO, &statement_payload));
    let statement = envelope_with_sig(&key_id, &statement_payload, &statement_sig);

    // Leaf i (by sequence) sits at tree index position(i).
    let position = |i: usize| order.iter().position(|&k| k == i).unwrap();
    let batch_entries: Vec<Vec<u8>> = (0..size)
        .map(|i| {
            let slot = if o.log_der_slot {
                statement_sig.clone()
            } else {
                let k = position(i);
                seal(
                    k as u64,
                    &inclusion_path(k, &tree_leaves),
                    &statement_payload,
                    &statement_sig,
                )
            };
            entry_with_slot(&payloads[i], &slot)
        })
        .collect();
    let first = usize::try_from(o.first_log_index).unwrap();
    let positions: Vec<usize> = match &o.log_positions {
        Some(at) => at.iter().map(|&n| usize::try_from(n).unwrap()).collect(),
        None => (first..first + size).collect(),
    };
    assert_eq!(positions.len(), size, "one log position per leaf");
    let end = positions.iter().max().map_or(0, |&n| n + 1);
    let log_size = std::cmp::max(o.base.log_tree_size as usize, end);
    let log_entries: Vec<Vec<u8>> = (0..log_size)
        .map(|n| match positions.iter().position(|&at| at == n) {
            Some(i) => batch_entries[i].clone(),
            None => filler_entry(n as u64),
        })
        .collect();
    let log_leaves: Vec<Hash> = log_entries.iter().map(|e| leaf_hash(e)).collect();
    let log_root = tree_root(&log_leaves);
    let note = signed_note(
        &checkpoint_body(&o.base.log_origin, log_size as u64, &log_root),
        &o.base.log_origin,
        &single.log_key,
        &single.log_key,
    );

    let bundles = (0..size)
        .map(|i| {
            let k = position(i);
            json!({
                "mediaType": MEDIA_TYPE,
                "receipt": {"payloadType": IN_TOTO, "payload": b64(&payloads[i]), "signatures": []},
                "actorKey": single.bundle["actorKey"],
                "lineage": single.bundle["lineage"],
                "log": {
                    "index": positions[i],
                    "treeSize": log_size,
                    "inclusionProof": inclusion_path(positions[i], &log_leaves)
                        .iter().map(hex::encode).collect::<Vec<_>>(),
                    "checkpoint": note,
                    "logKey": single.bundle["log"]["logKey"],
                },
                "batch": {
                    "statement": statement,
                    "leafIndex": k,
                    "inclusionProof": inclusion_path(k, &tree_leaves)
                        .iter().map(hex::encode).collect::<Vec<_>>(),
                },
            })
        })
        .collect();
    GeneratedBatch {
        options: o.clone(),
        bundles,
        documents: (0..size).map(leaf_document).collect(),
        payloads,
        statement_payload,
        statement_sig,
        root,
        log_entries,
        batch_entries,
        anchor_pem: single.anchor_pem.clone(),
        single,
    }
}

/// A batch bundle in FORMAT.md §5/§12 member order, pretty-printed with a final newline.
pub fn batch_to_pretty(bundle: &Value) -> String {
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Ordered<'a> {
        media_type: &'a Value,
        receipt: &'a Value,
        actor_key: &'a Value,
        lineage: &'a Value,
        log: &'a Value,
        batch: &'a Value,
    }
    let mut text = serde_json::to_string_pretty(&Ordered {
        media_type: &bundle["mediaType"],
        receipt: &bundle["receipt"],
        actor_key: &bundle["actorKey"],
        lineage: &bundle["lineage"],
        log: &bundle["log"],
        batch: &bundle["batch"],
    })
    .unwrap();
    text.push('\n');
    text
}

/// A log export (§11.3) of `entries` after the actor key's registration (entry 0), under a
/// checkpoint by the log key. Entries must put receipts at their `logIndex`.
pub fn export_of(single: &Generated, entries: &[Vec<u8>]) -> String {
    let mut all = vec![registration_entry(single, &single.options.created_at)];
    all.extend_from_slice(entries);
    let leaves: Vec<Hash> = all.iter().map(|e| leaf_hash(e)).collect();
    let body = checkpoint_body(LOG_ORIGIN, all.len() as u64, &tree_root(&leaves));
    serde_json::to_string(&json!({
        "mediaType": "application/vnd.actseal.log-export.v1+json",
        "logKey": single.bundle["log"]["logKey"],
        "checkpoint": signed_note(&body, LOG_ORIGIN, &single.log_key, &single.log_key),
        "entries": all.iter().map(|e| b64(e)).collect::<Vec<_>>(),
    }))
    .unwrap()
}
