//! The `StreamSigner` service: many actions over one stream, each answered on its own.
//!
//! Every action is handed to `Signer::sign` itself, with the stream's connection identity in
//! its extensions, so a streamed action is authenticated, validated, authorised, deduplicated
//! by request id, signed, made durable and counted exactly as a `Sign` call is: there is one
//! sign path. What the stream adds is correlation (each answer carries the id its request
//! chose), per-action errors (a refused action is answered with its status and the stream goes
//! on) and a bound: a caller (its principal, over all its streams and connections) has at most
//! `server.limits.max_stream_actions_in_flight` actions being signed; one more is answered
//! RESOURCE_EXHAUSTED at once and nothing of it is signed, so no client can make the daemon
//! hold an unbounded backlog on its behalf.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_stream::{Stream, StreamExt, wrappers::ReceiverStream};
use tonic::{Request, Response, Status, Streaming};

use super::auth::Caller;
use super::listen::ConnInfo;
use super::signer::SignerService;
use crate::api::{
    ActionError, SignRequest, SignStreamRequest, SignStreamResponse, sign_stream_response,
    signer_server::Signer, stream_signer_server::StreamSigner,
};

/// Answers buffered per stream before the daemon waits for the client to read them.
const ANSWER_BUFFER: usize = 64;

/// The `StreamSigner` service.
pub struct StreamSignerService {
    pub(crate) signer: Arc<SignerService>,
    pub(crate) bounds: Arc<InFlight>,
}

/// How many streamed actions each caller has in flight.
pub struct InFlight {
    per_caller: usize,
    callers: Mutex<HashMap<String, Arc<Semaphore>>>,
}

impl InFlight {
    /// At most `per_caller` actions in flight per caller principal (at least 1).
    pub fn new(per_caller: usize) -> Self {
        InFlight {
            per_caller: per_caller.max(1),
            callers: Mutex::new(HashMap::new()),
        }
    }

    /// A slot for one more action of `principal`, or None when it has its bound in flight.
    fn try_acquire(&self, principal: &str) -> Option<OwnedSemaphorePermit> {
        let mut callers = self.callers.lock().unwrap_or_else(|p| p.into_inner());
        // Forget callers with nothing in flight, so the table holds only active callers.
        callers.retain(|_, s| s.available_permits() < self.per_caller);
        let semaphore = callers
            .entry(principal.to_owned())
            .or_insert_with(|| Arc::new(Semaphore::new(self.per_caller)));
        Arc::clone(semaphore).try_acquire_owned().ok()
    }
}

type AnswerStream = Pin<Box<dyn Stream<Item = Result<SignStreamResponse, Status>> + Send>>;

#[tonic::async_trait]
impl StreamSigner for StreamSignerService {
    type SignStreamStream = AnswerStream;

    async fn sign_stream(
        &self,
        request: Request<Streaming<SignStreamRequest>>,
    ) -> Result<Response<Self::SignStreamStream>, Status> {
        let caller = Caller::of(&request)?;
        let principal = caller.to_receipt().principal();
        let identity = Identity::of(&request);
        let mut incoming = request.into_inner();
        let (answers, rx) = mpsc::channel(ANSWER_BUFFER);
        let (signer, bounds) = (Arc::clone(&self.signer), Arc::clone(&self.bounds));
        tokio::spawn(async move {
            while let Some(item) = incoming.next().await {
                let item = match item {
                    Ok(item) => item,
                    Err(status) => {
                        tracing::debug!(error = %status, "sign stream ended by the client");
                        break;
                    }
                };
                let id = item.correlation_id;
                let Some(permit) = bounds.try_acquire(&principal) else {
                    let refused = Status::resource_exhausted(format!(
                        "{} streamed actions of this caller are in flight; wait for answers",
                        bounds.per_caller
                    ));
                    signer.state.metrics.failed("SignStream", &refused);
                    if answers.send(Ok(error_answer(id, &refused))).await.is_err() {
                        break;
                    }
                    continue;
                };
                let (signer, answers, identity) =
                    (Arc::clone(&signer), answers.clone(), identity.clone());
                tokio::spawn(async move {
                    let answer = sign_one(&signer, &identity, id, item.request).await;
                    // A client that went away just misses its answer; the receipt is stored.
                    let _ = answers.send(Ok(answer)).await;
                    // Held until the answer is queued: a client that does not read its answers
                    // keeps its slots, so what waits for it stays bounded too.
                    drop(permit);
                });
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// Signs one streamed action through `Signer::sign`.
async fn sign_one(
    signer: &SignerService,
    identity: &Identity,
    id: u64,
    request: Option<SignRequest>,
) -> SignStreamResponse {
    let Some(request) = request else {
        return error_answer(id, &Status::invalid_argument("request: missing"));
    };
    match signer.sign(identity.request(request)).await {
        Ok(response) => SignStreamResponse {
            correlation_id: id,
            result: Some(sign_stream_response::Result::Signed(response.into_inner())),
        },
        Err(status) => error_answer(id, &status),
    }
}

fn error_answer(id: u64, status: &Status) -> SignStreamResponse {
    SignStreamResponse {
        correlation_id: id,
        result: Some(sign_stream_response::Result::Error(ActionError {
            code: status.code() as i32,
            message: status.message().to_owned(),
        })),
    }
}

/// What `Caller::of` reads from a request: the connection's identity, copied from the stream
/// onto each action's request.
#[derive(Clone)]
struct Identity {
    conn: Option<ConnInfo>,
    tls: Option<tonic::transport::server::TlsConnectInfo<ConnInfo>>,
}

impl Identity {
    fn of<T>(request: &Request<T>) -> Self {
        let extensions = request.extensions();
        Identity {
            conn: extensions.get::<ConnInfo>().cloned(),
            tls: extensions
                .get::<tonic::transport::server::TlsConnectInfo<ConnInfo>>()
                .cloned(),
        }
    }

    fn request(&self, body: SignRequest) -> Request<SignRequest> {
        let mut request = Request::new(body);
        if let Some(conn) = &self.conn {
            request.extensions_mut().insert(conn.clone());
        }
        if let Some(tls) = &self.tls {
            request.extensions_mut().insert(tls.clone());
        }
        request
    }
}
