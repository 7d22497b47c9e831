//! The `Signer` service: what services and agents call.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::{DaemonState, auth::Caller, blocking, keys::to_api, validate};
use crate::api::{ActorKey, GetActorKeyRequest, SignRequest, SignResponse, signer_server::Signer};

pub struct SignerService {
    pub(crate) state: Arc<DaemonState>,
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
}

impl SignerService {
    /// Authenticates, validates, authorizes, signs: returns the actor and backend (for the
    /// metrics) with the answer.
    async fn sign_as_caller(
        &self,
        request: Request<SignRequest>,
    ) -> Result<(String, String, SignResponse), Status> {
        let caller = Caller::of(&request)?;
        let action = validate::sign_request(request.get_ref(), caller.to_receipt())?;
        self.state
            .authorize_sign(&caller, &action.actor, &action.action_type)?;
        let actor = action.actor.clone();
        let signed = self.state.sequencer.sign(action).await?;
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
        let keys = blocking(move || state.keys(Some(&lookup))).await??;
        let key = if version == 0 {
            keys.iter()
                .filter(|k| k.state == crate::ledger::KeyState::Active)
                .max_by_key(|k| k.version)
        } else {
            keys.iter().find(|k| k.version == version)
        };
        match key {
            Some(key) => Ok(Response::new(to_api(key))),
            None if keys.is_empty() => {
                Err(Status::not_found(format!("actor {actor:?} has no key")))
            }
            None => Err(Status::not_found(format!(
                "actor {actor:?} has no key version {version}"
            ))),
        }
    }
}
