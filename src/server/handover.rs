//! The `AcceptActor` and `HandOverActor` calls: moving an actor between fleet nodes
//! (`crate::fleet::handover`). Accept runs on the target, hand-over on the actor's node.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::{
    DaemonState,
    auth::Caller,
    blocking,
    keys::{plan_rotation, to_api},
    sequencer::{FleetNode, SequencerError},
    validate,
};
use crate::{
    api::{AcceptActorRequest, ActorKey, HandOverActorRequest},
    fleet::{FleetError, handover},
    ledger::{KeyRecord, KeyState},
};

fn status(e: FleetError) -> Status {
    match e {
        FleetError::Unavailable(m) => Status::unavailable(m),
        FleetError::Store(s) => s.into(),
        FleetError::Refused(m) => Status::failed_precondition(m),
        e @ FleetError::Fenced { .. } => Status::unavailable(e.to_string()),
    }
}

fn fleet_node(state: &DaemonState) -> Result<FleetNode, Status> {
    state.fleet_node.clone().ok_or_else(|| {
        Status::failed_precondition("this daemon is not a fleet node ([fleet] is not configured)")
    })
}

/// Runs `f` on a connection of its own to the fleet's database (an operator's rare call).
async fn with_db<T: Send + 'static>(
    node: &FleetNode,
    f: impl FnOnce(&mut postgres::Client, &str) -> Result<T, FleetError> + Send + 'static,
) -> Result<T, Status> {
    try_db(node, f).await?.map_err(status)
}

/// [`with_db`] with the database's own error, for a caller that must tell a refusal (nothing
/// written) from an outcome it cannot know (the connection lost, perhaps during a commit).
async fn try_db<T: Send + 'static>(
    node: &FleetNode,
    f: impl FnOnce(&mut postgres::Client, &str) -> Result<T, FleetError> + Send + 'static,
) -> Result<Result<T, FleetError>, Status> {
    let node = node.clone();
    blocking(move || {
        let mut client = crate::ledger::store::postgres::connect(&node.pg)?;
        f(&mut client, &node.settings.node)
    })
    .await
}

/// The actor's active key in the log.
async fn active_key(state: &Arc<DaemonState>, actor: &str) -> Result<KeyRecord, Status> {
    let lookup = actor.to_owned();
    let state = Arc::clone(state);
    let keys = blocking(move || state.keys(Some(&lookup))).await??;
    keys.into_iter()
        .find(|k| k.state == KeyState::Active)
        .ok_or_else(|| Status::failed_precondition(format!("actor {actor:?} has no active key")))
}

/// On the target: the actor's next key version made in this node's hardware, attested by
/// its device, and recorded as a pending handover to this node.
pub(super) async fn accept(
    state: &Arc<DaemonState>,
    request: Request<AcceptActorRequest>,
) -> Result<Response<ActorKey>, Status> {
    let caller = Caller::of(&request)?;
    let actor = request.into_inner().actor;
    validate::actor(&actor)?;
    state.authorize_admin(&caller, &actor, "accept")?;
    let node = fleet_node(state)?;
    let previous = active_key(state, &actor).await?;
    let planner = Arc::clone(state);
    let requested_by = caller.to_receipt();
    let plan = blocking(move || plan_rotation(&planner, previous, requested_by)).await??;
    let key = plan.new_key;
    let record = key.clone();
    match try_db(&node, move |client, name| {
        handover::accept(client, name, &record)
    })
    .await?
    {
        Ok(()) => {}
        // Refused before anything was written: the new key is no one's.
        Err(e @ (FleetError::Refused(_) | FleetError::Store(_))) => {
            let destroyer = Arc::clone(state);
            let key_ref = key.key_ref.clone();
            let _ = blocking(move || destroyer.backend.destroy_key(&key_ref)).await;
            return Err(status(e));
        }
        // The commit may have landed: a pending handover may name the key, so it stays (an
        // unused key costs a token slot; a destroyed one would strand the actor).
        Err(e) => {
            tracing::warn!(actor = %actor, version = key.version, key_id = %key.key_id, error = %e,
                "accept: the database's answer was lost; the new key is kept");
            return Err(status(e));
        }
    }
    tracing::info!(actor = %actor, version = key.version, key_id = %key.key_id, caller = %caller,
        "actor accepted: its handover to this node is pending");
    Ok(Response::new(to_api(&key)))
}

/// On the actor's node: checks the pending handover names `to` and a next version of the
/// actor's key, then has the sequencer hand the actor over (answered once integrated).
pub(super) async fn hand_over(
    state: &Arc<DaemonState>,
    request: Request<HandOverActorRequest>,
) -> Result<Response<ActorKey>, Status> {
    let caller = Caller::of(&request)?;
    let HandOverActorRequest { actor, to } = request.into_inner();
    validate::actor(&actor)?;
    state.authorize_admin(&caller, &actor, "hand over")?;
    let node = fleet_node(state)?;
    if to == node.settings.node {
        return Err(Status::invalid_argument(
            "to: that is this node; hand the actor over to another",
        ));
    }
    let lookup = actor.clone();
    let pending = with_db(&node, move |client, _| handover::pending(client, &lookup)).await?;
    let pending = match pending {
        Some(p) if p.target == to => p,
        Some(p) => {
            return Err(Status::failed_precondition(format!(
                "node {to:?} has not accepted actor {actor:?} (node {:?} has)",
                p.target
            )));
        }
        None => {
            return Err(Status::failed_precondition(format!(
                "node {to:?} has not accepted actor {actor:?}: run `actseal actor accept` there first"
            )));
        }
    };
    let previous = active_key(state, &actor).await?;
    check_accepted(&previous, &pending.key)?;
    let plan = crate::server::sequencer::RotationPlan {
        requested_by: caller.to_receipt(),
        previous_version: previous.version,
        new_key: pending.key.clone(),
    };
    if let Err(e) = state.sequencer.hand_over(plan, to.clone()).await {
        // Serve the actor here again if the database shows the rotation did not go through
        // (the sequencer keeps refusing it while it is queued; integrated, it is the
        // target's); `Pending` leaves it to the next Sign to find out the same way.
        if !matches!(e, SequencerError::Pending(_) | SequencerError::Stopped) {
            let _ = state.sequencer.reclaim(actor.clone()).await;
        }
        return Err(e.into());
    }
    tracing::info!(actor = %actor, to = %to, version = pending.key.version, caller = %caller,
        "actor handed over");
    Ok(Response::new(to_api(&pending.key)))
}

/// The accepted version must be the actor's next, named by its own public key.
fn check_accepted(previous: &KeyRecord, key: &KeyRecord) -> Result<(), Status> {
    let next = previous.version.checked_add(1);
    if key.actor != previous.actor || Some(key.version) != next {
        return Err(Status::failed_precondition(format!(
            "the accepted key is v{} of {:?}, not the next version of {:?} (v{}): accept again",
            key.version, key.actor, previous.actor, previous.version
        )));
    }
    if key.key_id != crate::proof::key_id(&key.public_key) {
        return Err(Status::failed_precondition(
            "the accepted key's id does not name its public key",
        ));
    }
    Ok(())
}
