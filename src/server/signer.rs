//! The `Signer` service: what services and agents call, and what auditors ask the log.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::sequencer::SignedReceipt;
use super::{
    DaemonState,
    auth::Caller,
    blocking,
    keys::{AttestationRequest, build_attestation, to_api},
    validate,
};
use crate::{
    anchor::Acknowledge,
    api::{
        ActorKey, AttestRequest, AttestResponse, Checkpoint, ConsistencyProof, GetActorKeyRequest,
        GetCheckpointRequest, GetConsistencyProofRequest, GetInclusionProofRequest, InclusionProof,
        SignRequest, SignResponse, signer_server::Signer,
    },
    backend::HardwareKey,
    ledger::{CheckpointRow, Store, merkle},
    proof::{lineage::KeySubject, spki_der},
};

pub struct SignerService {
    pub(crate) state: Arc<DaemonState>,
}

/// The checkpoint a proof is made against: of `size`, or the newest when `size` is 0.
fn checkpoint_for(store: &Store, size: u64, field: &str) -> Result<CheckpointRow, Status> {
    let latest = store
        .latest_checkpoint()?
        .ok_or_else(|| Status::failed_precondition("the log is empty"))?;
    if size == 0 || size == latest.size {
        return Ok(latest);
    }
    if size > latest.size {
        return Err(Status::out_of_range(format!(
            "{field}: {size} is past the newest checkpoint ({})",
            latest.size
        )));
    }
    store.checkpoint(size)?.ok_or_else(|| {
        Status::invalid_argument(format!(
            "{field}: no checkpoint was signed at size {size}; use 0 for the newest"
        ))
    })
}

fn merkle_status(e: merkle::MerkleError) -> Status {
    use merkle::MerkleError as E;
    match e {
        E::IndexOutOfRange { .. } | E::OutOfRange { .. } => Status::out_of_range(e.to_string()),
        E::OldSizeAfterNew { .. } | E::EmptyOldTree { .. } | E::InvalidRange { .. } => {
            Status::invalid_argument(e.to_string())
        }
        other => {
            tracing::error!(error = %other, "proof construction failed");
            Status::internal("proof construction failed")
        }
    }
}

impl SignerService {
    /// The proof carries the entry's bundle, so only callers who may read the entry's actor
    /// get it. The actor is read only once the entry is known to be under a signed checkpoint:
    /// such entries are committed and never change, so the check and the answer agree.
    fn inclusion(
        &self,
        caller: &Caller,
        log_index: u64,
        tree_size: u64,
    ) -> Result<InclusionProof, Status> {
        // The newest: the newest anchored checkpoint, if it includes the entry.
        let anchored = match (&self.state.anchor, tree_size) {
            (Some(anchor), 0) => anchor.latest().filter(|a| a.size > log_index),
            _ => None,
        };
        if let Some(anchored) = anchored {
            return self.anchored_inclusion(caller, log_index, &anchored);
        }
        let store = self.state.reader();
        let checkpoint = checkpoint_for(&store, tree_size, "tree_size")?;
        if log_index >= checkpoint.size {
            return Err(Status::out_of_range(format!(
                "log_index: {log_index} is past the tree of size {}",
                checkpoint.size
            )));
        }
        let actor = store
            .entry_actor(log_index)?
            .ok_or_else(|| Status::internal("a checkpointed log entry is missing"))?;
        self.state.authorize_read(caller, &actor)?;
        let hashes =
            merkle::inclusion_proof(&*store, log_index, checkpoint.size).map_err(merkle_status)?;
        // For a receipt, the refreshed bundle: the same receipt, proved against this checkpoint.
        let bundle_json = super::bundles::stored(
            &store,
            &self.state.log,
            &self.state.certificates.get(),
            log_index,
            Some((checkpoint.size, hashes.clone())),
        )?
        .map(|r| r.bundle_json)
        .unwrap_or_default();
        Ok(InclusionProof {
            log_index,
            tree_size: checkpoint.size,
            hashes: hashes.iter().map(|h| h.to_vec()).collect(),
            checkpoint: checkpoint.note,
            bundle_json,
        })
    }

    /// [`Self::inclusion`] against an anchored checkpoint.
    fn anchored_inclusion(
        &self,
        caller: &Caller,
        log_index: u64,
        anchored: &crate::anchor::AnchoredCheckpoint,
    ) -> Result<InclusionProof, Status> {
        let store = self.state.reader();
        let actor = store
            .entry_actor(log_index)?
            .ok_or_else(|| Status::internal("an anchored log entry is missing"))?;
        self.state.authorize_read(caller, &actor)?;
        let hashes =
            merkle::inclusion_proof(&*store, log_index, anchored.size).map_err(merkle_status)?;
        let bundle_json = super::bundles::anchored(
            &store,
            &self.state.log,
            &self.state.certificates.get(),
            log_index,
            anchored,
        )?
        .map(|r| r.bundle_json)
        .unwrap_or_default();
        Ok(InclusionProof {
            log_index,
            tree_size: anchored.size,
            hashes: hashes.iter().map(|h| h.to_vec()).collect(),
            checkpoint: anchored.note.clone(),
            bundle_json,
        })
    }

    fn consistency(&self, old_size: u64, new_size: u64) -> Result<ConsistencyProof, Status> {
        if old_size == 0 {
            return Err(Status::invalid_argument("old_size: must be at least 1"));
        }
        let store = self.state.reader();
        let new = checkpoint_for(&store, new_size, "new_size")?;
        if old_size > new.size {
            return Err(Status::invalid_argument(format!(
                "old_size: {old_size} is larger than new_size {}",
                new.size
            )));
        }
        let old = checkpoint_for(&store, old_size, "old_size")?;
        let hashes =
            merkle::consistency_proof(&*store, old.size, new.size).map_err(merkle_status)?;
        Ok(ConsistencyProof {
            old_size: old.size,
            new_size: new.size,
            hashes: hashes.iter().map(|h| h.to_vec()).collect(),
            old_checkpoint: old.note,
            new_checkpoint: new.note,
        })
    }
}

#[tonic::async_trait]
impl Signer for SignerService {
    async fn sign(&self, request: Request<SignRequest>) -> Result<Response<SignResponse>, Status> {
        let started = std::time::Instant::now();
        let result = self.sign_as_caller(request).await;
        if let Ok((actor, backend, _)) = &result {
            self.state.metrics.signed(actor, backend, started.elapsed());
        }
        let (_, _, response) = self.state.metrics.observe("Sign", result)?;
        Ok(Response::new(response))
    }

    async fn get_actor_key(
        &self,
        request: Request<GetActorKeyRequest>,
    ) -> Result<Response<ActorKey>, Status> {
        let result = self.get_actor_key_as_caller(request).await;
        self.state.metrics.observe("GetActorKey", result)
    }

    async fn attest(
        &self,
        request: Request<AttestRequest>,
    ) -> Result<Response<AttestResponse>, Status> {
        let result = self.attest_as_caller(request).await;
        self.state.metrics.observe("Attest", result)
    }

    async fn get_checkpoint(
        &self,
        request: Request<GetCheckpointRequest>,
    ) -> Result<Response<Checkpoint>, Status> {
        // Checkpoints are public: any authenticated caller may have them.
        Caller::of(&request)?;
        let state = Arc::clone(&self.state);
        let latest = blocking(move || state.reader().latest_checkpoint()).await??;
        let latest = latest.ok_or_else(|| Status::failed_precondition("the log is empty"))?;
        Ok(Response::new(Checkpoint {
            note: latest.note,
            size: latest.size,
            root_hash: latest.root.to_vec(),
        }))
    }

    async fn get_inclusion_proof(
        &self,
        request: Request<GetInclusionProofRequest>,
    ) -> Result<Response<InclusionProof>, Status> {
        let caller = Caller::of(&request)?;
        let GetInclusionProofRequest {
            log_index,
            tree_size,
        } = request.into_inner();
        let service = SignerService {
            state: Arc::clone(&self.state),
        };
        let result = blocking(move || service.inclusion(&caller, log_index, tree_size)).await?;
        Ok(Response::new(
            self.state.metrics.observe("GetInclusionProof", result)?,
        ))
    }

    async fn get_consistency_proof(
        &self,
        request: Request<GetConsistencyProofRequest>,
    ) -> Result<Response<ConsistencyProof>, Status> {
        Caller::of(&request)?;
        let GetConsistencyProofRequest { old_size, new_size } = request.into_inner();
        let service = SignerService {
            state: Arc::clone(&self.state),
        };
        Ok(Response::new(
            blocking(move || service.consistency(old_size, new_size)).await??,
        ))
    }
}

impl SignerService {
    /// In the `anchored` mode, waits for an anchored checkpoint covering the receipt and
    /// answers with the bundle proved against it; otherwise wakes the anchor task and answers
    /// as signed.
    async fn anchored_answer(&self, signed: SignedReceipt) -> Result<SignedReceipt, Status> {
        let Some(anchor) = &self.state.anchor else {
            return Ok(signed);
        };
        if anchor.acknowledge() != Acknowledge::Anchored {
            anchor.wake();
            return Ok(signed);
        }
        let log_index = signed.log_index;
        let anchored = anchor.wait_covering(log_index).await.map_err(|e| {
            tracing::warn!(log_index, error = %e, "receipt not anchored in time");
            Status::unavailable(e.to_string())
        })?;
        let state = Arc::clone(&self.state);
        blocking(move || {
            super::bundles::anchored(
                &state.reader(),
                &state.log,
                &state.certificates.get(),
                log_index,
                &anchored,
            )
        })
        .await??
        .ok_or_else(|| Status::internal("the anchored receipt is missing"))
    }

    /// Authenticates, validates, authorizes, signs: returns the actor and backend (for the
    /// metrics) with the answer.
    async fn sign_as_caller(
        &self,
        request: Request<SignRequest>,
    ) -> Result<(String, String, SignResponse), Status> {
        let caller = Caller::of(&request)?;
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        if self
            .state
            .certificates
            .covering(now)
            .in_force(now)
            .is_none()
        {
            // A receipt dated when no device certificate is valid would never verify.
            return Err(Status::unavailable(super::sequencer::NO_CERTIFICATE));
        }
        let mut action = validate::sign_request(request.get_ref(), caller.to_receipt())?;
        // Request ids are per caller: two callers' ids never collide.
        let request_id = validate::request_id(&request.get_ref().request_id)?
            .map(|id| format!("{} {id}", action.caller.principal()));
        action.rule_window =
            self.state
                .authorize_sign(&caller, &action.actor, &action.action_type)?;
        let actor = action.actor.clone();
        let signed = self.state.sequencer.sign(action, request_id).await?;
        let signed = self.anchored_answer(signed).await?;
        Ok((
            actor,
            self.state.backend.kind().as_str().to_owned(),
            SignResponse {
                bundle_json: signed.bundle_json,
                log_index: signed.log_index,
                sequence: signed.sequence,
                key_id: signed.key_id,
            },
        ))
    }

    async fn get_actor_key_as_caller(
        &self,
        request: Request<GetActorKeyRequest>,
    ) -> Result<Response<ActorKey>, Status> {
        let caller = Caller::of(&request)?;
        let GetActorKeyRequest { actor, version } = request.into_inner();
        validate::actor(&actor)?;
        self.state.authorize_read(&caller, &actor)?;
        let state = Arc::clone(&self.state);
        let lookup = actor.clone();
        let answer = blocking(move || {
            let keys = state.keys(Some(&lookup))?;
            let key = select_key(&keys, &lookup, version)?;
            // One key: the whole lineage its bundles carry.
            let lineage = super::bundles::lineage(&state.reader(), key, &state.certificates.get())?;
            let mut answer = to_api(key);
            answer.lineage_json = serde_json::to_string(&lineage)
                .map_err(|e| Status::internal(format!("lineage: {e}")))?;
            Ok::<_, Status>(answer)
        })
        .await??;
        Ok(Response::new(answer))
    }

    async fn attest_as_caller(
        &self,
        request: Request<AttestRequest>,
    ) -> Result<Response<AttestResponse>, Status> {
        let caller = Caller::of(&request)?;
        let AttestRequest {
            actor,
            version,
            nonce,
        } = request.into_inner();
        validate::actor(&actor)?;
        if nonce.len() > MAX_NONCE_LEN {
            return Err(Status::invalid_argument(format!(
                "nonce: at most {MAX_NONCE_LEN} bytes"
            )));
        }
        self.state.authorize_read(&caller, &actor)?;
        let state = Arc::clone(&self.state);
        let lookup = actor.clone();
        let keys = blocking(move || state.keys(Some(&lookup))).await??;
        let key = select_key(&keys, &actor, version)?.clone();
        if key.backend != self.state.backend.kind() {
            return Err(Status::failed_precondition(format!(
                "{actor:?} version {} is a {} key; this daemon's backend is {}",
                key.version,
                key.backend,
                self.state.backend.kind()
            )));
        }
        let state = Arc::clone(&self.state);
        let record = key.clone();
        let attestation = blocking(move || {
            let hardware_key = HardwareKey {
                key_ref: record.key_ref.clone(),
                public_key: record.public_key,
            };
            // Always fresh: a TPM2_Certify made now, or a device statement dated now; both
            // bind the caller's nonce (empty when none was given).
            build_attestation(
                state.backend.as_ref(),
                &state.device,
                &hardware_key,
                &AttestationRequest {
                    subject: KeySubject::Actor {
                        actor: &record.actor,
                        version: record.version,
                    },
                    origin: record.origin,
                    created_at: &record.created_at,
                    nonce: Some(&nonce),
                },
            )
        })
        .await??;
        // The certificate in force now, should the one loaded at start have been renewed.
        let mut attestation = attestation;
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        self.state
            .certificates
            .covering(now)
            .resolve(&mut attestation, now);
        Ok(Response::new(AttestResponse {
            actor: key.actor.clone(),
            version: key.version,
            backend: key.backend.as_str().into(),
            key_id: key.key_id.clone(),
            public_key_der: spki_der(&key.public_key),
            attestation_json: serde_json::to_string(&attestation)
                .map_err(|e| Status::internal(e.to_string()))?,
        }))
    }
}

/// Longest nonce an `Attest` call may bind.
const MAX_NONCE_LEN: usize = 64;

/// The actor's active key (`version` 0) or the given version.
fn select_key<'a>(
    keys: &'a [crate::ledger::KeyRecord],
    actor: &str,
    version: u32,
) -> Result<&'a crate::ledger::KeyRecord, Status> {
    let key = if version == 0 {
        keys.iter()
            .filter(|k| k.state == crate::ledger::KeyState::Active)
            .max_by_key(|k| k.version)
    } else {
        keys.iter().find(|k| k.version == version)
    };
    match key {
        Some(key) => Ok(key),
        None if keys.is_empty() => Err(Status::not_found(format!("actor {actor:?} has no key"))),
        None if version == 0 => Err(Status::failed_precondition(format!(
            "actor {actor:?} has no active key: it was retired"
        ))),
        None => Err(Status::not_found(format!(
            "actor {actor:?} has no key version {version}"
        ))),
    }
}
