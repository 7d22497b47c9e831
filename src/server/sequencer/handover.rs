//! The sequencer's side of moving an actor between fleet nodes (`crate::fleet::handover`):
//! the owner's last act for the actor (the rotation to the target's key), and the target's
//! first (loading the actor once the log says it is its own).

use std::sync::Arc;

use super::{ActiveKey, ActorChain, RotationPlan, Sequencer, SequencerError, Staged, bundles};
use crate::{
    backend::{BackendError, HardwareKey},
    ledger::{KeyRecord, KeyState},
};

/// What the target signs to show that its hardware holds the actor's active key (the
/// signature is checked against the key's public key and dropped).
const POSSESSION: &[u8] = b"actseal fleet handover: the active key is held here";

/// An actor this node is handing over (or has handed over): new Signs for it are refused
/// until the database says how the handover ended.
#[derive(Debug, Clone)]
pub(super) struct Moving {
    target: String,
    /// The key version handed over.
    version: u32,
    /// The `finished_batches` count once the batch with its rotation is finished.
    batch: u64,
}

impl Moving {
    /// One whose rotation was queued before (found in the queue at start-up).
    pub(super) fn settled(target: String, version: u32) -> Self {
        Moving {
            target,
            version,
            batch: 0,
        }
    }
}

/// How a handover stands, read from the database.
enum Outcome {
    /// Its rotation may still be integrated: refuse the actor here.
    Undecided,
    /// Integrated (the actor is another node's), or handed back (this node's again, at a
    /// later key): nothing left to remember.
    Over,
    /// Refused by the integrator, or never queued: the actor is served here again.
    Failed,
}

impl Sequencer {
    /// Refuses anything for an actor this node is handing over while its rotation may still
    /// be integrated; once it is decided, forgets the handover (another node's actor is then
    /// refused as such by the caller, one whose rotation failed is served here again).
    pub(super) fn handover_refusal(&mut self, actor: &str) -> Option<SequencerError> {
        let moving = self.moving.get(actor)?.clone();
        match self.handover_outcome(actor, &moving) {
            Ok(Outcome::Undecided) => Some(SequencerError::Precondition(format!(
                "actor {actor:?} is handed over to fleet node {:?}; sign there",
                moving.target
            ))),
            Ok(Outcome::Over) => {
                self.moving.remove(actor);
                None
            }
            Ok(Outcome::Failed) => {
                self.moving.remove(actor);
                tracing::warn!(actor = %actor, target = %moving.target,
                    "the handover's rotation was not integrated: this node serves the actor again");
                self.load_moved(actor).err()
            }
            Err(e) => Some(e),
        }
    }

    /// Reads how the handover of `actor` stands. Its rotation is looked for in the queue only
    /// once the batch that queued it is settled (committed or failed), and the owner read
    /// after the queue: the integrator takes the rotation from the queue and moves the actor
    /// in one transaction, so a rotation no longer queued has its outcome in the owner row.
    fn handover_outcome(
        &mut self,
        actor: &str,
        moving: &Moving,
    ) -> Result<Outcome, SequencerError> {
        let Some(link) = &self.fleet else {
            return Ok(Outcome::Undecided);
        };
        let settled = self.finished_batches >= moving.batch && self.committer.idle();
        if !settled || link.borrow_mut().rotation_queued(actor)? {
            return Ok(Outcome::Undecided);
        }
        let node = link.borrow().node.settings.node.clone();
        let owner = link.borrow_mut().owner(actor)?;
        if owner.as_deref() != Some(node.as_str()) {
            return Ok(Outcome::Over);
        }
        let handed_back = self
            .store
            .keys(Some(actor))?
            .iter()
            .any(|k| k.state == KeyState::Active && k.version >= moving.version);
        Ok(if handed_back {
            Outcome::Over
        } else {
            Outcome::Failed
        })
    }

    /// Stages the rotation to the target's key as a local rotation (after every receipt of
    /// the actor staged so far; the queue keeps that order) and stops signing for the actor.
    pub(super) fn stage_handover(
        &mut self,
        staged: &mut Staged,
        plan: RotationPlan,
        target: String,
    ) -> Result<(), SequencerError> {
        let actor = plan.new_key.actor.clone();
        if self.windows.is_open(&actor) {
            let requests = self.windows.close(&actor);
            self.place_batch(staged, requests);
        }
        let version = plan.new_key.version;
        self.stage_rotate(staged, plan)?;
        self.actors.remove(&actor);
        tracing::info!(actor = %actor, target = %target, "actor handed over: this node signs nothing more for it");
        let moving = Moving {
            target,
            version,
            // This batch, once finished.
            batch: self.finished_batches + 1,
        };
        self.moving.insert(actor, moving);
        Ok(())
    }

    /// After a hand-over call failed: serves the actor here again if the database shows its
    /// rotation did not go through (refused, or never queued); keeps refusing it while the
    /// rotation may still be integrated (`handover_refusal`).
    pub(super) fn reclaim(&mut self, actor: &str) -> Result<(), SequencerError> {
        self.handover_refusal(actor).map_or(Ok(()), Err)
    }

    /// [`load_moved`](Self::load_moved), its refusal remembered for a second: Signs for a
    /// forged actor (or one whose key this node's hardware does not hold) cost no key reads
    /// and no hardware signature each on the sequencer thread.
    pub(super) fn load_moved_at_most_once_a_second(
        &mut self,
        actor: &str,
    ) -> Result<(), SequencerError> {
        const RECHECK: std::time::Duration = std::time::Duration::from_secs(1);
        if let Some((at, why)) = self.load_refusals.get(actor)
            && at.elapsed() < RECHECK
        {
            return Err(SequencerError::Precondition(why.clone()));
        }
        let loaded = self.load_moved(actor);
        match &loaded {
            Err(SequencerError::Precondition(why)) => {
                if self.load_refusals.len() >= 4096 {
                    self.load_refusals
                        .retain(|_, (at, _)| at.elapsed() < RECHECK);
                }
                if self.load_refusals.len() >= 4096 {
                    self.load_refusals.clear();
                }
                self.load_refusals
                    .insert(actor.to_owned(), (std::time::Instant::now(), why.clone()));
            }
            _ => {
                self.load_refusals.remove(actor);
            }
        }
        loaded
    }

    /// Loads an actor the fleet says is this node's and this node does not serve yet (one
    /// handed over to it): its active key in the log, which this node's hardware must hold,
    /// and its head (the newest receipt in the log, set when the handover was integrated).
    pub(super) fn load_moved(&mut self, actor: &str) -> Result<(), SequencerError> {
        let key = self
            .store
            .keys(Some(actor))?
            .into_iter()
            .find(|k| k.state == KeyState::Active)
            .ok_or_else(|| {
                SequencerError::Precondition(format!(
                    "actor {actor:?} has no active key in the log"
                ))
            })?;
        self.rotated_to(&key)?;
        self.holds(&key)?;
        let head = match &self.fleet {
            Some(link) => link.borrow_mut().own_actor_head(actor)?,
            None => None,
        };
        // Its receipts here are dated no earlier than what the log holds (the rotation to this
        // node's key among it), whatever the other node's clock said.
        let size = self.store.next_log_index()?;
        self.clock
            .resume(super::clock::newest_entry_time(&self.store, size)?);
        let lineage = Arc::new(bundles::lineage(
            &self.store,
            &key,
            &self.certificates.get(),
        )?);
        tracing::info!(actor = %actor, version = key.version, key_id = %key.key_id,
            sequence = head.map_or(0, |h| h.sequence), "fleet actor loaded: this node signs for it");
        self.actors.insert(
            actor.to_owned(),
            ActorChain {
                key: Some(ActiveKey {
                    record: Arc::new(key),
                    lineage,
                }),
                head,
            },
        );
        Ok(())
    }

    /// Refuses an active key `key` the log does not make active: a later version must come
    /// with its rotation entry, a rotation statement of that actor from its previous version
    /// to `key`, signed by that version (a key row written straight into the database names
    /// no entry, or one that is none, e.g. a receipt, or another key's rotation).
    pub(super) fn rotated_to(&self, key: &KeyRecord) -> Result<(), SequencerError> {
        let history = self.store.key_history(&key.actor, key.version)?;
        let forged = |why: &str| {
            tracing::error!(actor = %key.actor, key_id = %key.key_id, reason = %why,
                "the actor's active key is not made active by a rotation in the log: refused");
            SequencerError::Precondition(format!(
                "actor {:?}: its active key {} is not made active by a rotation in the log ({why})",
                key.actor, key.key_id
            ))
        };
        let Some((last, entry)) = history.last() else {
            return Err(forged("no such key version"));
        };
        if last.key_id != key.key_id {
            return Err(forged("another key holds its version"));
        }
        if key.version == 1 {
            return Ok(());
        }
        let entry = entry.as_ref().ok_or_else(|| forged("no rotation entry"))?;
        let previous = history
            .iter()
            .rev()
            .nth(1)
            .map(|(k, _)| k)
            .filter(|k| k.version.checked_add(1) == Some(key.version))
            .ok_or_else(|| forged("no previous version"))?;
        crate::fleet::check::rotation(entry, &key.actor, previous, key)
            .map(drop)
            .map_err(|e| forged(&e))
    }

    /// Whether this node's hardware holds `key`: it signs a fixed message with it, checked
    /// against the key's public key. An ownership row not made by a handover names a node
    /// whose hardware does not hold the actor's key: a precondition failure (and an alarm).
    /// A hardware fault is mapped as on the sign path (UNAVAILABLE). The key is looked up
    /// first: a PKCS#11 sign reports a missing key as a token fault (a registered key that
    /// vanished), the lookup tells a key that is not here from a token that is down.
    fn holds(&self, key: &KeyRecord) -> Result<(), SequencerError> {
        let hardware = HardwareKey {
            key_ref: key.key_ref.clone(),
            public_key: key.public_key,
        };
        // Any other lookup error (e.g. a stale handle) is left to the sign, which recovers.
        let signed = match self.backend.key_evidence(&key.key_ref) {
            Err(e @ (BackendError::KeyNotFound(_) | BackendError::KeyRefused(_))) => Err(e),
            _ => self
                .pool
                .sign(super::SignJob::actor(hardware, POSSESSION.to_vec())),
        };
        let absent = |e: &BackendError| {
            matches!(
                e,
                BackendError::KeyNotFound(_)
                    | BackendError::KeyRefused(_)
                    | BackendError::SignatureMismatch
            )
        };
        match signed {
            Ok(_) => Ok(()),
            Err(e) if absent(&e) => {
                tracing::error!(actor = %key.actor, key_id = %key.key_id, error = %e,
                    "the fleet names this node as the actor's, but its hardware does not hold the actor's key");
                Err(SequencerError::Precondition(format!(
                    "actor {:?} is assigned to this node, but its active key {} is not in this node's hardware (an ownership change not made by a handover?)",
                    key.actor, key.key_id
                )))
            }
            Err(e) => {
                tracing::warn!(actor = %key.actor, key_id = %key.key_id, error = %e,
                    "cannot check that this node's hardware holds the actor's key");
                Err(SequencerError::Backend(e))
            }
        }
    }
}
