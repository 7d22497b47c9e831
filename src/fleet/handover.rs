//! Moving an actor between nodes: a key rotation whose new key lives on the target node.
//!
//! 1. The target accepts the actor ([`accept`]): it makes the actor's next key version in its
//!    own hardware, with its device's attestation, and records a pending handover (one per
//!    actor: a second node's accept is refused while one is pending).
//! 2. The owner hands the actor over to the node named in that record ([`pending`]): it stops
//!    signing for the actor and queues the registration of the new version and the rotation
//!    statement signed by the actor's current key, as a local rotation, after the actor's
//!    receipts. The integrator checks and integrates the pair as any rotation; in that
//!    transaction, once the rotation's signature is checked, it moves the actor to the
//!    target and sets its head to its newest receipt in the log ([`complete`]).
//! 3. The target signs on at the next sequence once it finds the actor is its own, that the
//!    log's active key for it is one its hardware holds (a forged ownership row names a node
//!    that does not hold the key: it is refused there), and that the key's rotation entry in
//!    the log is a rotation of the actor to that key signed by its previous key (a key row
//!    written straight into the database is refused there too).
//!
//! The old key is rotated away: the integrator refuses anything it signs after the rotation,
//! and the verifier follows the rotation as for any other (FORMAT.md §11.2, unchanged).

use postgres::Client;

use super::{FleetError, queue};
use crate::ledger::KeyRecord;

/// A handover accepted by a target and not yet integrated.
#[derive(Debug, Clone)]
pub struct Pending {
    /// The node that accepted the actor.
    pub target: String,
    /// The actor's next key version, in the target's hardware.
    pub key: KeyRecord,
}

/// Records that `node` accepts `key.actor` with the new version `key` (the actor's next).
/// Refused when the actor is not in the fleet, is this node's already, or has a handover
/// pending; a pending one for another version is stale (the actor's key moved on since it was
/// accepted, so no rotation can go to it) and is replaced. The key a stale accept made stays
/// in its node's hardware, never registered.
pub fn accept(client: &mut Client, node: &str, key: &KeyRecord) -> Result<(), FleetError> {
    let record = queue::key_to_json(key)?;
    let mut tx = client.transaction()?;
    let owner: Option<String> = tx
        .query_opt(
            "SELECT node FROM fleet_actors WHERE actor = $1 FOR UPDATE",
            &[&key.actor],
        )?
        .map(|r| r.get(0));
    match owner {
        None => {
            return Err(FleetError::Refused(format!(
                "actor {:?} is not in the fleet",
                key.actor
            )));
        }
        Some(owner) if owner == node => {
            return Err(FleetError::Refused(format!(
                "actor {:?} belongs to this node ({node:?}) already",
                key.actor
            )));
        }
        Some(_) => {}
    }
    let inserted = tx.execute(
        "INSERT INTO fleet_handovers (actor, target, key_id, key_record) VALUES ($1, $2, $3, $4)
         ON CONFLICT DO NOTHING",
        &[&key.actor, &node, &key.key_id, &record],
    )?;
    if inserted != 1 {
        replace_stale(&mut tx, node, key, &record)?;
    }
    tx.commit()?;
    Ok(())
}

/// Replaces the pending handover of `key.actor` if it is for another version than `key`'s
/// (stale); refuses otherwise.
fn replace_stale(
    tx: &mut postgres::Transaction<'_>,
    node: &str,
    key: &KeyRecord,
    record: &str,
) -> Result<(), FleetError> {
    let row = tx.query_opt(
        "SELECT target, key_record FROM fleet_handovers WHERE actor = $1 FOR UPDATE",
        &[&key.actor],
    )?;
    let Some(row) = row else {
        // Its key id is another actor's pending one: a key made twice cannot be.
        return Err(FleetError::Refused(format!(
            "key {} is pending for another handover",
            key.key_id
        )));
    };
    let target: String = row.get(0);
    let version = queue::key_from_json(row.get(1))?.version;
    if version == key.version {
        return Err(FleetError::Refused(format!(
            "a handover of actor {:?} to node {target:?} is pending already",
            key.actor
        )));
    }
    tracing::warn!(actor = %key.actor, stale_target = %target, stale_version = version,
        "a stale pending handover (its version is not the actor's next) is replaced");
    tx.execute(
        "UPDATE fleet_handovers SET target = $2, key_id = $3, key_record = $4,
         accepted_at = clock_timestamp() WHERE actor = $1",
        &[&key.actor, &node, &key.key_id, &record],
    )?;
    Ok(())
}

/// The pending handover of `actor`, if any.
pub fn pending(client: &mut Client, actor: &str) -> Result<Option<Pending>, FleetError> {
    let Some(row) = client.query_opt(
        "SELECT target, key_record FROM fleet_handovers WHERE actor = $1",
        &[&actor],
    )?
    else {
        return Ok(None);
    };
    let key = queue::key_from_json(row.get(1))?;
    if key.actor != actor {
        return Err(FleetError::Refused(format!(
            "the pending handover of {actor:?} names another actor's key"
        )));
    }
    Ok(Some(Pending {
        target: row.get(0),
        key,
    }))
}

/// The handovers `node` has queued the rotation of and the integrator has not yet taken:
/// (actor, target, the version handed over). A node restarted meanwhile serves none of them.
pub fn queued_by(
    client: &mut Client,
    node: &str,
) -> Result<Vec<(String, String, u32)>, FleetError> {
    let rows = client.query(
        "SELECT h.actor, h.target, h.key_record FROM fleet_handovers h
         WHERE EXISTS (SELECT 1 FROM fleet_queue q WHERE q.node = $1 AND q.kind = 'rotation'
                       AND q.actor = h.actor AND q.key_record::json ->> 'key_id' = h.key_id)",
        &[&node],
    )?;
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let key = queue::key_from_json(row.get(2))?;
        out.push((row.get(0), row.get(1), key.version));
    }
    Ok(out)
}

/// Completes the handovers of `rotated` ((actor, new key id) of rotations this integration
/// has checked and staged, its receipts written): each actor whose pending handover is for
/// that key becomes its target's, its head the newest receipt of it in the log. Runs in the
/// integration's transaction, so ownership moves exactly when the rotation is logged.
pub fn complete(
    tx: &mut postgres::Transaction<'_>,
    rotated: &[(String, String)],
) -> Result<(), FleetError> {
    for (actor, key_id) in rotated {
        let target = tx.query_opt(
            "UPDATE fleet_actors a SET node = h.target FROM fleet_handovers h
             WHERE a.actor = $1 AND h.actor = $1 AND h.key_id = $2 RETURNING h.target",
            &[actor, key_id],
        )?;
        let Some(target) = target else {
            continue;
        };
        tx.execute("DELETE FROM fleet_handovers WHERE actor = $1", &[actor])?;
        tx.execute("DELETE FROM fleet_actor_heads WHERE actor = $1", &[actor])?;
        tx.execute(
            "INSERT INTO fleet_actor_heads (actor, sequence, payload_sha256)
             SELECT actor, sequence, payload_sha256 FROM receipts WHERE actor = $1
             ORDER BY sequence DESC LIMIT 1",
            &[actor],
        )?;
        let target: String = target.get(0);
        tracing::info!(actor = %actor, target = %target, key_id = %key_id,
            "handover integrated: the actor is the target's");
    }
    Ok(())
}

/// Whether `node` has a rotation of `actor` queued, not yet taken by the integrator (while
/// an actor is being handed over its node queues nothing else for it).
pub fn rotation_queued(client: &mut Client, node: &str, actor: &str) -> Result<bool, FleetError> {
    Ok(client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM fleet_queue
                            WHERE node = $1 AND actor = $2 AND kind = 'rotation')",
            &[&node, &actor],
        )?
        .get(0))
}
