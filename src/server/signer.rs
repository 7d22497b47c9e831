//! The `Signer` service: what services and agents call.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::{DaemonState, blocking, keys::to_api, validate};
use crate::api::{ActorKey, GetActorKeyRequest, SignRequest, SignResponse, signer_server::Signer};

pub struct SignerService {
    pub(crate) state: Arc<DaemonState>,
}

#[tonic::async_trait]
impl Signer for SignerService {
    async fn sign(&self, request: Request<SignRequest>) -> Result<Response<SignResponse>, Status> {
        let action = validate::sign_request(request.get_ref())?;
        let signed = self.state.sequencer.sign(action).await?;
        Ok(Response::new(SignResponse {
            bundle_json: signed.bundle_json,
            log_index: signed.log_index,
            sequence: signed.sequence,
            key_id: signed.key_id,
        }))
    }

    async fn get_actor_key(
        &self,
        request: Request<GetActorKeyRequest>,
    ) -> Result<Response<ActorKey>, Status> {
        let GetActorKeyRequest { actor, version } = request.into_inner();
        validate::actor(&actor)?;
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
