//! The node side of the queue: a node commits its signed entries (with its actors' heads and
//! ownership) in one transaction, then waits until the integrator has integrated them and
//! published a head that covers them.

use std::collections::HashMap;

use base64::{Engine, engine::general_purpose::STANDARD as B64};
use postgres::Client;
use serde::{Deserialize, Serialize};
use spki::DecodePublicKey;

use super::FleetError;
use crate::{
    backend::{BackendKind, KeyRef},
    ledger::{
        ActorHead, CheckpointRow, EntryKind, KeyRecord, KeyState, StoreError,
        merkle::Hash,
        store::{split_proof, to_u64},
    },
    proof::lineage::{Attestation, KeyOrigin},
};

/// A receipt's facts, as the receipts table will hold them.
#[derive(Debug, Clone)]
pub struct QueuedReceipt {
    pub sequence: u64,
    pub key_id: String,
    pub payload_sha256: [u8; 32],
    pub signed_at: String,
}

/// One signed entry for the integrator.
#[derive(Debug, Clone)]
pub struct QueueRow {
    pub kind: EntryKind,
    pub actor: String,
    pub entry: Vec<u8>,
    pub receipt: Option<QueuedReceipt>,
    /// (request id, request fingerprint)
    pub request: Option<(String, [u8; 32])>,
    /// The key version a registration enters (inserted by the integrator with the entry);
    /// for a rotation, the version it makes active.
    pub key: Option<KeyRecord>,
    /// A rotation's new version, on its rotation entry and on the registration of that
    /// version queued with it (the integrator places the two together).
    pub rotates_version: Option<u32>,
}

/// What a node queues in one transaction.
#[derive(Debug, Default)]
pub struct Enqueue {
    pub rows: Vec<QueueRow>,
    /// Each actor's newest receipt after these rows.
    pub heads: Vec<(String, ActorHead)>,
}

/// A key version as a queue row carries it (JSON).
#[derive(Serialize, Deserialize)]
struct KeyJson {
    actor: String,
    version: u32,
    backend: String,
    key_ref: String,
    key_id: String,
    public_key: String,
    origin: String,
    created_at: String,
    attestation: Attestation,
}

/// A registration's key version as text.
pub fn key_to_json(key: &KeyRecord) -> Result<String, FleetError> {
    serde_json::to_string(&KeyJson {
        actor: key.actor.clone(),
        version: key.version,
        backend: key.backend.as_str().into(),
        key_ref: key.key_ref.0.clone(),
        key_id: key.key_id.clone(),
        public_key: B64.encode(crate::proof::spki_der(&key.public_key)),
        origin: key.origin.as_str().into(),
        created_at: key.created_at.clone(),
        attestation: key.attestation.clone(),
    })
    .map_err(|e| FleetError::Refused(format!("key record: {e}")))
}

/// A queued registration's key version, back from text.
pub fn key_from_json(text: &str) -> Result<KeyRecord, StoreError> {
    let corrupt = |what: &str| StoreError::Corrupt(format!("queued key record: {what}"));
    let k: KeyJson = serde_json::from_str(text).map_err(|e| corrupt(&e.to_string()))?;
    let spki = B64
        .decode(&k.public_key)
        .map_err(|_| corrupt("public key"))?;
    Ok(KeyRecord {
        actor: k.actor,
        version: k.version,
        backend: BackendKind::parse(&k.backend).ok_or_else(|| corrupt("backend"))?,
        key_ref: KeyRef(k.key_ref),
        key_id: k.key_id,
        public_key: p256::PublicKey::from_public_key_der(&spki)
            .map_err(|_| corrupt("public key"))?,
        origin: match k.origin.as_str() {
            "generated" => KeyOrigin::Generated,
            "adopted" => KeyOrigin::Adopted,
            _ => return Err(corrupt("origin")),
        },
        state: KeyState::Active,
        created_at: k.created_at,
        attestation: k.attestation,
        retired_at: None,
    })
}

fn i64_of(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// Commits `batch` as queue rows of `node`, with its heads and the ownership of actors it
/// registers, in one transaction; the queue ids, in order. An actor another node owns is
/// refused here (its `fleet_actors` row is the claim).
pub fn enqueue(client: &mut Client, node: &str, batch: &Enqueue) -> Result<Vec<i64>, FleetError> {
    let mut tx = client.transaction()?;
    let insert = tx.prepare(
        "INSERT INTO fleet_queue (node, kind, actor, entry, sequence, key_id, payload_sha256, signed_at, request_id, request_sha256, key_record, rotates_version)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) RETURNING queue_id",
    )?;
    let mut ids = Vec::with_capacity(batch.rows.len());
    for row in &batch.rows {
        // A rotation's registration is of an actor this node owns already.
        if let Some(key) = row
            .key
            .as_ref()
            .filter(|_| row.kind == EntryKind::Registration && row.rotates_version.is_none())
        {
            let claimed = tx.execute(
                "INSERT INTO fleet_actors (actor, node) VALUES ($1, $2) ON CONFLICT (actor) DO NOTHING",
                &[&key.actor, &node],
            )?;
            if claimed != 1 {
                return Err(FleetError::Refused(format!(
                    "actor {:?} belongs to another node already",
                    key.actor
                )));
            }
        }
        let receipt = row.receipt.as_ref();
        let key_record = row.key.as_ref().map(key_to_json).transpose()?;
        let id: i64 = tx
            .query_one(
                &insert,
                &[
                    &node,
                    &row.kind.as_str(),
                    &row.actor,
                    &row.entry,
                    &receipt.map(|r| i64_of(r.sequence)),
                    &receipt.map(|r| r.key_id.as_str()),
                    &receipt.map(|r| r.payload_sha256.to_vec()),
                    &receipt.map(|r| r.signed_at.as_str()),
                    &row.request.as_ref().map(|(id, _)| id.as_str()),
                    &row.request.as_ref().map(|(_, f)| f.to_vec()),
                    &key_record,
                    &row.rotates_version
                        .map(|v| i32::try_from(v).unwrap_or(i32::MAX)),
                ],
            )?
            .get(0);
        ids.push(id);
    }
    for (actor, head) in &batch.heads {
        tx.execute(
            "INSERT INTO fleet_actor_heads (actor, sequence, payload_sha256) VALUES ($1, $2, $3)
             ON CONFLICT (actor) DO UPDATE SET sequence = EXCLUDED.sequence, payload_sha256 = EXCLUDED.payload_sha256",
            &[actor, &i64_of(head.sequence), &head.payload_sha256.to_vec()],
        )?;
    }
    tx.execute(
        &format!("SELECT pg_notify('{}', $1)", super::CHANNEL_QUEUED),
        &[&node],
    )?;
    tx.commit()?;
    Ok(ids)
}

/// The node an actor belongs to, if any.
pub fn owner(client: &mut Client, actor: &str) -> Result<Option<String>, FleetError> {
    Ok(client
        .query_opt("SELECT node FROM fleet_actors WHERE actor = $1", &[&actor])?
        .map(|r| r.get(0)))
}

/// The actors of `node`, each with its newest receipt (queued or integrated), if any.
pub fn own_actors(
    client: &mut Client,
    node: &str,
) -> Result<HashMap<String, Option<ActorHead>>, FleetError> {
    own_actors_where(client, node, None)
}

/// The newest receipt (queued or integrated) of `actor`, if it is `node`'s and has one.
pub fn own_actor_head(
    client: &mut Client,
    node: &str,
    actor: &str,
) -> Result<Option<ActorHead>, FleetError> {
    Ok(own_actors_where(client, node, Some(actor))?
        .remove(actor)
        .flatten())
}

/// [`own_actors`], or only `actor` among them.
fn own_actors_where(
    client: &mut Client,
    node: &str,
    actor: Option<&str>,
) -> Result<HashMap<String, Option<ActorHead>>, FleetError> {
    let rows = client.query(
        "SELECT a.actor, h.sequence, h.payload_sha256 FROM fleet_actors a
         LEFT JOIN fleet_actor_heads h ON h.actor = a.actor
         WHERE a.node = $1 AND ($2::text IS NULL OR a.actor = $2)",
        &[&node, &actor],
    )?;
    let mut actors = HashMap::new();
    for row in rows {
        let actor: String = row.get(0);
        let head = match (
            row.get::<_, Option<i64>>(1),
            row.get::<_, Option<Vec<u8>>>(2),
        ) {
            (Some(sequence), Some(digest)) => Some(ActorHead {
                sequence: u64::try_from(sequence).map_err(|_| {
                    StoreError::Corrupt(format!("head of {actor:?}: negative sequence"))
                })?,
                payload_sha256: <[u8; 32]>::try_from(digest.as_slice())
                    .map_err(|_| StoreError::Corrupt(format!("head of {actor:?}: bad digest")))?,
            }),
            _ => None,
        };
        actors.insert(actor, head);
    }
    Ok(actors)
}

/// A request id queued by `node` and not yet integrated: (queue id, fingerprint).
pub fn queued_request(
    client: &mut Client,
    node: &str,
    request_id: &str,
) -> Result<Option<(i64, [u8; 32])>, FleetError> {
    let Some(row) = client.query_opt(
        "SELECT queue_id, request_sha256 FROM fleet_queue WHERE node = $1 AND request_id = $2 ORDER BY queue_id LIMIT 1",
        &[&node, &request_id],
    )?
    else {
        return Ok(None);
    };
    let digest: Vec<u8> = row.get(1);
    let fingerprint = <[u8; 32]>::try_from(digest.as_slice())
        .map_err(|_| StoreError::Corrupt(format!("queued request {request_id:?}: bad digest")))?;
    Ok(Some((row.get(0), fingerprint)))
}

/// Where queued entries went: queue id → log index, for those integrated so far.
pub fn integrated(client: &mut Client, ids: &[i64]) -> Result<HashMap<i64, u64>, FleetError> {
    let rows = client.query(
        "SELECT queue_id, log_index FROM fleet_integrated WHERE queue_id = ANY($1)",
        &[&ids],
    )?;
    Ok(rows
        .into_iter()
        .map(|r| {
            (
                r.get(0),
                u64::try_from(r.get::<_, i64>(1)).unwrap_or(u64::MAX),
            )
        })
        .collect())
}

/// Of `ids`, those still waiting in the queue (one neither there nor integrated was refused
/// by the integrator).
pub fn still_queued(client: &mut Client, ids: &[i64]) -> Result<Vec<i64>, FleetError> {
    Ok(client
        .query(
            "SELECT queue_id FROM fleet_queue WHERE queue_id = ANY($1)",
            &[&ids],
        )?
        .into_iter()
        .map(|r| r.get(0))
        .collect())
}

/// Entries waiting in the whole queue (a metric).
pub fn depth(client: &mut Client) -> Result<u64, FleetError> {
    let n: i64 = client
        .query_one("SELECT COUNT(*) FROM fleet_queue", &[])?
        .get(0);
    Ok(u64::try_from(n).unwrap_or(0))
}

/// Marks `node` as seen now.
pub fn seen(client: &mut Client, node: &str) -> Result<(), FleetError> {
    client.execute(
        "INSERT INTO fleet_nodes (node, last_seen) VALUES ($1, clock_timestamp())
         ON CONFLICT (node) DO UPDATE SET last_seen = EXCLUDED.last_seen",
        &[&node],
    )?;
    Ok(())
}

/// Where a queued entry went, with its receipt's proof (tree size, hashes) if it is one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placed {
    pub log_index: u64,
    pub proof: Option<(u64, Vec<Hash>)>,
}

/// In one statement (one snapshot): the size the published log head covers, and where each
/// of `ids` integrated so far went, with its receipt's proof. What a node answers from.
pub fn settled(
    client: &mut Client,
    ids: &[i64],
) -> Result<(u64, HashMap<i64, Placed>), FleetError> {
    let rows = client.query(
        "SELECT l.published_size, i.queue_id, i.log_index, r.proof_size, r.proof
         FROM fleet_lease l
         LEFT JOIN (fleet_integrated i LEFT JOIN receipts r ON r.log_index = i.log_index)
           ON i.queue_id = ANY($1)
         WHERE l.id = 1",
        &[&ids],
    )?;
    let mut published = 0;
    let mut placed = HashMap::with_capacity(rows.len());
    for row in rows {
        published = to_u64(row.get(0), "published size")?;
        let (Some(queue_id), Some(index)) = (row.get::<_, Option<i64>>(1), row.get(2)) else {
            continue;
        };
        let log_index = to_u64(index, "log index")?;
        let proof = match (
            row.get::<_, Option<i64>>(3),
            row.get::<_, Option<Vec<u8>>>(4),
        ) {
            (Some(size), Some(hashes)) => Some((
                to_u64(size, "tree size")?,
                split_proof(&hashes, || format!("proof of receipt {log_index}"))?,
            )),
            _ => None,
        };
        placed.insert(queue_id, Placed { log_index, proof });
    }
    Ok((published, placed))
}

/// The stored checkpoints of `sizes`, by size.
pub fn checkpoints(
    client: &mut Client,
    sizes: &[u64],
) -> Result<HashMap<u64, CheckpointRow>, FleetError> {
    let sizes: Vec<i64> = sizes.iter().map(|s| i64_of(*s)).collect();
    let rows = client.query(
        "SELECT size, root, note FROM checkpoints WHERE size = ANY($1)",
        &[&sizes],
    )?;
    let mut found = HashMap::with_capacity(rows.len());
    for row in rows {
        let size = to_u64(row.get(0), "checkpoint size")?;
        let root: Vec<u8> = row.get(1);
        let root = <Hash>::try_from(root.as_slice())
            .map_err(|_| StoreError::Corrupt(format!("checkpoint {size}: bad root")))?;
        found.insert(
            size,
            CheckpointRow {
                size,
                root,
                note: row.get(2),
            },
        );
    }
    Ok(found)
}
