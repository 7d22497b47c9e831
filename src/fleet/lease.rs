//! The integrator's lease: one row in `fleet_lease` with a holder, an expiry by the server's
//! clock, and an epoch that grows by one at every takeover (the fencing token). An
//! integration locks the row (`FOR UPDATE`) and checks holder, epoch and expiry before it
//! reads the queue, so a node that lost the lease finds another epoch and signs nothing.

use std::time::Duration;

use postgres::{Client, GenericClient};

use super::{FleetError, seconds};

/// The lease as one node holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Held {
    pub epoch: i64,
}

/// The lease row as anyone reads it (metrics, `status`).
#[derive(Debug, Clone, PartialEq)]
pub struct LeaseState {
    pub holder: String,
    pub epoch: i64,
    pub valid: bool,
    pub published_size: u64,
}

/// Takes the lease if nobody holds it or the holder's expired: the new epoch, or `None`.
pub fn try_take(
    client: &mut Client,
    node: &str,
    lease: Duration,
) -> Result<Option<Held>, FleetError> {
    let row = client.query_opt(
        "INSERT INTO fleet_lease (id, holder, epoch, expires_at)
         VALUES (1, $1, 1, clock_timestamp() + make_interval(secs => $2::float8))
         ON CONFLICT (id) DO UPDATE
            SET holder = EXCLUDED.holder, epoch = fleet_lease.epoch + 1, expires_at = EXCLUDED.expires_at
            WHERE fleet_lease.expires_at < clock_timestamp()
         RETURNING epoch",
        &[&node, &seconds(lease)],
    )?;
    Ok(row.map(|r| Held { epoch: r.get(0) }))
}

/// Extends the lease this node holds at `held.epoch`; `Fenced` if it holds it no longer.
pub fn renew(
    client: &mut impl GenericClient,
    node: &str,
    held: Held,
    lease: Duration,
) -> Result<(), FleetError> {
    let changed = client.execute(
        "UPDATE fleet_lease SET expires_at = clock_timestamp() + make_interval(secs => $3::float8)
         WHERE id = 1 AND holder = $1 AND epoch = $2 AND expires_at > clock_timestamp()",
        &[&node, &held.epoch, &seconds(lease)],
    )?;
    if changed == 1 {
        return Ok(());
    }
    Err(fenced(client)?)
}

/// Inside an integration's transaction: locks the lease row and checks this node holds it,
/// at its epoch, unexpired. Until the transaction ends nobody can take it over.
pub fn lock_held(
    tx: &mut postgres::Transaction<'_>,
    node: &str,
    held: Held,
) -> Result<(), FleetError> {
    read_held(tx, node, held, " FOR UPDATE")
}

/// Checks, without a lock, that this node holds the lease at its epoch, unexpired: the
/// last look before an act outside the database (the head write in the log token).
pub fn check_held(
    client: &mut impl GenericClient,
    node: &str,
    held: Held,
) -> Result<(), FleetError> {
    read_held(client, node, held, "")
}

/// Reads the lease row (`lock`: the row lock clause, if any) and checks it is `node`'s.
fn read_held(
    client: &mut impl GenericClient,
    node: &str,
    held: Held,
    lock: &str,
) -> Result<(), FleetError> {
    let row = client.query_opt(
        &format!(
            "SELECT holder, epoch, expires_at > clock_timestamp() FROM fleet_lease WHERE id = 1{lock}"
        ),
        &[],
    )?;
    held_in(row, node, held)
}

/// Whether the lease row `row` (holder, epoch, valid) is this node's at `held`.
fn held_in(row: Option<postgres::Row>, node: &str, held: Held) -> Result<(), FleetError> {
    let Some(row) = row else {
        return Err(FleetError::Fenced {
            holder: String::new(),
            epoch: 0,
        });
    };
    let (holder, epoch, valid): (String, i64, bool) = (row.get(0), row.get(1), row.get(2));
    if holder == node && epoch == held.epoch && valid {
        return Ok(());
    }
    Err(FleetError::Fenced { holder, epoch })
}

/// Records that the log head in the log token covers `size`, if this node still holds the
/// lease at its epoch (a fenced node publishes nothing), and announces the size published.
pub fn publish(client: &mut Client, node: &str, held: Held, size: u64) -> Result<(), FleetError> {
    publish_as(client, node, held, size, Commit::Synced)
}

/// [`publish`] with a commit that does not wait for the disk (`synchronous_commit = off`,
/// this transaction only): the integrator's answer path, one fsync less per round. Safe
/// because what it records follows durable facts: it runs only after the integration's own
/// (synchronous) commit and the head write in the log token, so whatever a node answers on
/// it is committed and covered by that head. A server crash can lose it: the size published
/// then goes back to an earlier one, never past what is durable, and the holder publishes
/// again at its next integration or take-over (`GREATEST` keeps it from going back while the
/// server runs).
pub fn publish_unsynced(
    client: &mut Client,
    node: &str,
    held: Held,
    size: u64,
) -> Result<(), FleetError> {
    publish_as(client, node, held, size, Commit::Unsynced)
}

/// How a publish commits.
enum Commit {
    Synced,
    Unsynced,
}

fn publish_as(
    client: &mut Client,
    node: &str,
    held: Held,
    size: u64,
    commit: Commit,
) -> Result<(), FleetError> {
    let size = i64::try_from(size).unwrap_or(i64::MAX);
    let mut tx = client.transaction()?;
    if let Commit::Unsynced = commit {
        tx.batch_execute("SET LOCAL synchronous_commit = off")?;
    }
    let notified = tx.query(
        &format!(
            "WITH u AS (UPDATE fleet_lease SET published_size = GREATEST(published_size, $3)
                        WHERE id = 1 AND holder = $1 AND epoch = $2 RETURNING published_size)
             SELECT pg_notify('{}', published_size::text) FROM u",
            super::CHANNEL_PUBLISHED
        ),
        &[&node, &held.epoch, &size],
    )?;
    if notified.len() != 1 {
        return Err(fenced(&mut tx)?);
    }
    tx.commit()?;
    Ok(())
}

/// The lease row, if any.
pub fn state(client: &mut impl GenericClient) -> Result<Option<LeaseState>, FleetError> {
    let row = client.query_opt(
        "SELECT holder, epoch, expires_at > clock_timestamp(), published_size FROM fleet_lease WHERE id = 1",
        &[],
    )?;
    Ok(row.map(|r| LeaseState {
        holder: r.get(0),
        epoch: r.get(1),
        valid: r.get(2),
        published_size: u64::try_from(r.get::<_, i64>(3)).unwrap_or(0),
    }))
}

fn fenced(client: &mut impl GenericClient) -> Result<FleetError, FleetError> {
    Ok(match state(client)? {
        Some(s) => FleetError::Fenced {
            holder: s.holder,
            epoch: s.epoch,
        },
        None => FleetError::Fenced {
            holder: String::new(),
            epoch: 0,
        },
    })
}
