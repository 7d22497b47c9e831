//! Having the daemon seal an intent or an outcome: one gRPC `Sign` per document.

use std::{collections::HashMap, time::Duration};

use sha2::{Digest, Sha256};
use tokio::sync::Mutex;
use tonic::transport::Channel;

use super::message::ClientInfo;
use crate::{
    api::{SignRequest, sign_request::Action, signer_client::SignerClient},
    cli::Connection,
};

/// Action type of an intent receipt.
pub const INTENT_TYPE: &str = "mcp.tool.intent";
/// Action type of an outcome receipt.
pub const OUTCOME_TYPE: &str = "mcp.tool.outcome";

/// Why a document was not sealed.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("cannot reach the daemon: {0:#}")]
    Connect(anyhow::Error),
    #[error("the daemon answered {code:?}: {message}")]
    Refused { code: tonic::Code, message: String },
    #[error("the daemon did not answer within {0:?}")]
    Timeout(Duration),
}

/// What the daemon answered for a sealed document.
pub struct Sealed {
    pub log_index: u64,
    pub bundle_json: String,
}

/// One document to seal.
pub struct Seal<'a> {
    pub action_type: &'static str,
    pub tool: &'a str,
    pub request_id: &'a str,
    pub document: &'a [u8],
    /// For an outcome: SHA-256 of its intent's document.
    pub parent: Option<[u8; 32]>,
    /// Context entries beyond the session's own.
    pub extra: Vec<(&'static str, String)>,
}

/// The daemon connection of one proxy session (connected on first use and again after a
/// failed connect, so a daemon that starts later is used).
pub struct Sealer {
    connection: Connection,
    actor: String,
    session: String,
    timeout: Duration,
    client: Mutex<Option<SignerClient<Channel>>>,
}

/// SHA-256 of a document: the digest its receipt's subject carries.
pub fn digest(document: &[u8]) -> [u8; 32] {
    Sha256::digest(document).into()
}

impl Sealer {
    pub fn new(connection: Connection, actor: String, session: String, timeout: Duration) -> Self {
        Sealer {
            connection,
            actor,
            session,
            timeout,
            client: Mutex::new(None),
        }
    }

    /// Seals one document as the proxy's actor, within the timeout.
    pub async fn seal(
        &self,
        seal: Seal<'_>,
        client_info: Option<&ClientInfo>,
    ) -> Result<Sealed, SealError> {
        let request = self.request(seal, client_info);
        tokio::time::timeout(self.timeout, self.sign(request))
            .await
            .map_err(|_| SealError::Timeout(self.timeout))?
    }

    async fn sign(&self, request: SignRequest) -> Result<Sealed, SealError> {
        let mut client = {
            let mut slot = self.client.lock().await;
            match slot.as_ref() {
                Some(client) => client.clone(),
                None => {
                    let channel = crate::cli::connect(&self.connection)
                        .await
                        .map_err(SealError::Connect)?;
                    // A tonic client is a handle on one channel: clones share it.
                    slot.insert(SignerClient::new(channel)).clone()
                }
            }
        };
        let answer = client
            .sign(request)
            .await
            .map_err(|status| SealError::Refused {
                code: status.code(),
                message: status.message().to_owned(),
            })?
            .into_inner();
        Ok(Sealed {
            log_index: answer.log_index,
            bundle_json: answer.bundle_json,
        })
    }

    fn request(&self, seal: Seal<'_>, client_info: Option<&ClientInfo>) -> SignRequest {
        let mut context: HashMap<String, String> = HashMap::new();
        let mut put = |k: &str, v: String| {
            context.insert(k.to_owned(), v);
        };
        put("mcp.session", self.session.clone());
        put("mcp.tool", seal.tool.to_owned());
        put("mcp.requestId", seal.request_id.to_owned());
        if let Some(info) = client_info {
            put("mcp.client.name", info.name.clone());
            put("mcp.client.version", info.version.clone());
        }
        for (k, v) in seal.extra {
            put(k, v);
        }
        SignRequest {
            actor: self.actor.clone(),
            action_type: seal.action_type.to_owned(),
            target: format!("mcp-tool:{}", seal.tool),
            action: Some(Action::Document(seal.document.to_vec())),
            context,
            parent_action_sha256: seal.parent.map(|p| p.to_vec()).unwrap_or_default(),
            request_id: String::new(),
        }
    }
}
