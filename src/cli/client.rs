//! gRPC clients of the daemon: `actseal key …` and `actseal sign`.

use super::out::{out, outln};
use std::collections::HashMap;

use anyhow::{Context, Result, bail};
use hyper_util::rt::TokioIo;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity, Uri};

use super::{Connection, KeyCommand, LogCommand, SignArgs};
use crate::api::{
    ActorKey, AdoptKeyRequest, CreateKeyRequest, GetActorKeyRequest, GetCheckpointRequest,
    GetConsistencyProofRequest, GetInclusionProofRequest, ListKeysRequest, RetireKeyRequest,
    RotateKeyRequest, SignRequest, adopt_key_request::Selector, key_admin_client::KeyAdminClient,
    sign_request::Action, signer_client::SignerClient,
};

/// Opens a channel to the daemon over its Unix socket or a TCP endpoint.
pub async fn connect(connection: &Connection) -> Result<Channel> {
    if let Some(endpoint) = &connection.endpoint {
        let mut channel = Endpoint::from_shared(endpoint.clone()).context("bad --endpoint")?;
        if endpoint.starts_with("https://") {
            channel = channel
                .tls_config(client_tls(connection)?)
                .context("TLS settings")?;
        }
        return channel
            .connect()
            .await
            .with_context(|| format!("cannot reach the daemon at {endpoint}"));
    }
    connect_unix(&connection.socket)
        .await
        .with_context(|| format!("cannot reach the daemon at {}", connection.socket.display()))
}

/// The client side of mTLS: the CA to check the daemon with, and our certificate and key.
fn client_tls(connection: &Connection) -> Result<ClientTlsConfig> {
    let read = |what: &str, path: &Option<std::path::PathBuf>| -> Result<Vec<u8>> {
        let Some(path) = path else {
            bail!(
                "an https endpoint needs --{what} (or ACTSEAL_{})",
                what.to_uppercase().replace('-', "_")
            );
        };
        std::fs::read(path).with_context(|| format!("cannot read --{what} {}", path.display()))
    };
    let ca = read("tls-ca", &connection.tls_ca)?;
    let cert = read("tls-cert", &connection.tls_cert)?;
    let key = zeroize::Zeroizing::new(read("tls-key", &connection.tls_key)?);
    Ok(ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .identity(Identity::from_pem(cert, key.as_slice())))
}

/// Opens a channel to the daemon's Unix socket.
pub async fn connect_unix(path: &std::path::Path) -> Result<Channel, tonic::transport::Error> {
    let path = path.to_owned();
    // The URI is required by the API but unused: the connector always dials the socket.
    Endpoint::from_static("http://actseal.invalid")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(path).await?))
            }
        }))
        .await
}

pub(super) fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

pub(super) fn status_error(status: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{:?}: {}", status.code(), status.message())
}

pub(super) fn print_key(key: &ActorKey) {
    outln!(
        "{}  v{}  {}  {}  {}  {}  created {}",
        key.actor,
        key.version,
        key.backend,
        key.state,
        key.origin,
        key.key_id,
        key.created_at
    );
}

pub fn key(command: KeyCommand) -> Result<()> {
    runtime()?.block_on(async move {
        match command {
            KeyCommand::Create { actor, connection } => {
                let mut client = KeyAdminClient::new(connect(&connection).await?);
                let key = client
                    .create_key(CreateKeyRequest { actor })
                    .await
                    .map_err(status_error)?
                    .into_inner();
                print_key(&key);
            }
            KeyCommand::List { actor, connection } => {
                let mut client = KeyAdminClient::new(connect(&connection).await?);
                let mut page_token = String::new();
                loop {
                    let page = client
                        .list_keys(ListKeysRequest {
                            actor: actor.clone().unwrap_or_default(),
                            page_size: 0,
                            page_token,
                        })
                        .await
                        .map_err(status_error)?
                        .into_inner();
                    page.keys.iter().for_each(print_key);
                    if page.next_page_token.is_empty() {
                        break;
                    }
                    page_token = page.next_page_token;
                }
            }
            KeyCommand::Show {
                actor,
                version,
                connection,
            } => {
                let mut client = SignerClient::new(connect(&connection).await?);
                let key = client
                    .get_actor_key(GetActorKeyRequest { actor, version })
                    .await
                    .map_err(status_error)?
                    .into_inner();
                print_key(&key);
                let lineage: serde_json::Value =
                    serde_json::from_str(&key.lineage_json).unwrap_or_default();
                outln!(
                    "{}",
                    serde_json::to_string_pretty(&lineage).unwrap_or_default()
                );
            }
            KeyCommand::Attest {
                actor,
                version,
                nonce,
                trust,
                key_id,
                out,
                connection,
            } => {
                let nonce = match nonce {
                    Some(text) => hex::decode(text.trim()).context("--nonce is not hex")?,
                    None => Vec::new(),
                };
                let channel = connect(&connection).await?;
                // What the answer must be about, settled before asking: the key table's key.
                let expected = match &trust {
                    Some(_) => Some(
                        expected_key(channel.clone(), &actor, version, key_id.as_deref()).await?,
                    ),
                    None => None,
                };
                let answer = SignerClient::new(channel)
                    .attest(crate::api::AttestRequest {
                        actor: actor.clone(),
                        version,
                        nonce: nonce.clone(),
                    })
                    .await
                    .map_err(status_error)?
                    .into_inner();
                outln!(
                    "{} v{} ({}) key {}",
                    answer.actor,
                    answer.version,
                    answer.backend,
                    answer.key_id
                );
                if let Some(out) = &out {
                    std::fs::write(out, &answer.attestation_json)
                        .with_context(|| format!("cannot write {}", out.display()))?;
                    outln!("attestation written to {}", out.display());
                }
                if let (Some(trust), Some(expected)) = (trust, expected) {
                    let pem = std::fs::read(&trust)
                        .with_context(|| format!("cannot read {}", trust.display()))?;
                    let anchors = crate::verify::TrustAnchors::from_pem(&pem)
                        .map_err(|e| anyhow::anyhow!("{}: {e}", trust.display()))?;
                    let nonce = (!nonce.is_empty()).then_some(nonce.as_slice());
                    let verified = check_attestation(&answer, &expected, &anchors, nonce)?;
                    outln!(
                        "attestation verified: {} v{} {} key {} attested by \"{}\" under \"{}\"; {}{}",
                        expected.actor,
                        expected.version,
                        verified.backend,
                        verified.key_id,
                        verified.device_subject,
                        verified.anchor_subject,
                        verified.hardware,
                        verified
                            .nonce
                            .map(|n| format!("; nonce {}", hex::encode(n)))
                            .unwrap_or_default()
                    );
                }
            }
            KeyCommand::Rotate { actor, connection } => {
                let mut client = KeyAdminClient::new(connect(&connection).await?);
                let key = client
                    .rotate_key(RotateKeyRequest { actor })
                    .await
                    .map_err(status_error)?
                    .into_inner();
                print_key(&key);
            }
            KeyCommand::Retire {
                actor,
                version,
                keep_key,
                connection,
            } => {
                let mut client = KeyAdminClient::new(connect(&connection).await?);
                let key = client
                    .retire_key(RetireKeyRequest {
                        actor,
                        version,
                        keep_key,
                    })
                    .await
                    .map_err(status_error)?
                    .into_inner();
                print_key(&key);
            }
            KeyCommand::Adopt {
                actor,
                label,
                id,
                connection,
            } => {
                let selector = match (label, id) {
                    (Some(label), None) => Selector::Label(label),
                    (None, Some(id)) => {
                        Selector::CkaId(hex::decode(&id).context("--id must be hex")?)
                    }
                    _ => bail!("give exactly one of --label and --id"),
                };
                let mut client = KeyAdminClient::new(connect(&connection).await?);
                let key = client
                    .adopt_key(AdoptKeyRequest {
                        actor,
                        selector: Some(selector),
                    })
                    .await
                    .map_err(status_error)?
                    .into_inner();
                print_key(&key);
            }
        }
        Ok(())
    })
}

/// The key an `Attest` answer must be about: the actor and version the caller asked for, and
/// the public key from somewhere other than the answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpectedKey {
    pub actor: String,
    pub version: u32,
    /// DER SubjectPublicKeyInfo.
    pub public_key_der: Vec<u8>,
}

/// Settles the key `Attest` must attest before asking it: `actor` as asked, `version` as asked
/// (the active one for 0) and its public key, from the daemon's key table (GetActorKey), which
/// must be `key_id` when the caller gave one.
pub async fn expected_key(
    channel: Channel,
    actor: &str,
    version: u32,
    key_id: Option<&str>,
) -> Result<ExpectedKey> {
    let key = SignerClient::new(channel)
        .get_actor_key(GetActorKeyRequest {
            actor: actor.to_owned(),
            version,
        })
        .await
        .map_err(status_error)?
        .into_inner();
    if key.actor != actor || (version != 0 && key.version != version) {
        bail!(
            "the daemon answered GetActorKey for {} v{}, not for {actor} v{version}",
            key.actor,
            key.version
        );
    }
    let table_id = spki_key_id(&key.public_key_der);
    if let Some(wanted) = key_id
        && !wanted.trim().eq_ignore_ascii_case(&table_id)
    {
        bail!(
            "{actor} v{} has key {table_id} in the daemon's key table, not --key-id {}",
            key.version,
            wanted.trim()
        );
    }
    Ok(ExpectedKey {
        actor: actor.to_owned(),
        version: key.version,
        public_key_der: key.public_key_der,
    })
}

/// Checks an `Attest` answer against `expected`, never against itself: its attestation must
/// verify under `anchors` for the expected actor, version and key (binding `nonce` if given),
/// and its own labels must name that key too.
pub fn check_attestation(
    answer: &crate::api::AttestResponse,
    expected: &ExpectedKey,
    anchors: &crate::verify::TrustAnchors,
    nonce: Option<&[u8]>,
) -> Result<crate::verify::AttestationVerified> {
    let verified = crate::verify::verify_attestation(
        answer.attestation_json.as_bytes(),
        anchors,
        &expected.actor,
        u64::from(expected.version),
        &expected.public_key_der,
        nonce,
        crate::verify::unix_now(),
    )
    .map_err(|e| {
        anyhow::anyhow!(
            "attestation REJECTED for {} v{} key {}: {e}",
            expected.actor,
            expected.version,
            spki_key_id(&expected.public_key_der)
        )
    })?;
    if answer.actor != expected.actor
        || answer.version != expected.version
        || answer.public_key_der != expected.public_key_der
        || answer.key_id != verified.key_id
    {
        bail!(
            "attestation REJECTED: the answer is labelled {} v{} key {}, not {} v{} key {}",
            answer.actor,
            answer.version,
            answer.key_id,
            expected.actor,
            expected.version,
            verified.key_id
        );
    }
    Ok(verified)
}

/// A key id as bundles write it: hex SHA-256 of the SubjectPublicKeyInfo DER.
fn spki_key_id(spki_der: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(spki_der))
}

fn write_out(out: &std::path::Path, text: &str) -> Result<()> {
    std::fs::write(out, text).with_context(|| format!("cannot write {}", out.display()))
}

pub fn log(command: LogCommand) -> Result<()> {
    runtime()?.block_on(async move {
        match command {
            LogCommand::Checkpoint { connection } => {
                let mut client = SignerClient::new(connect(&connection).await?);
                let checkpoint = client
                    .get_checkpoint(GetCheckpointRequest {})
                    .await
                    .map_err(status_error)?
                    .into_inner();
                out!("{}", checkpoint.note);
            }
            LogCommand::Proof {
                index,
                size,
                out,
                tlog_proof,
                connection,
            } => {
                let mut client = SignerClient::new(connect(&connection).await?);
                let proof = client
                    .get_inclusion_proof(GetInclusionProofRequest {
                        log_index: index,
                        tree_size: size,
                    })
                    .await
                    .map_err(status_error)?
                    .into_inner();
                if let Some(path) = &tlog_proof {
                    let hashes = proof
                        .hashes
                        .iter()
                        .map(|h| <[u8; 32]>::try_from(h.as_slice()))
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(|_| anyhow::anyhow!("the daemon sent a hash of another length"))?;
                    let text = crate::verify::tlog_proof::format(
                        proof.log_index,
                        &hashes,
                        &proof.checkpoint,
                        None,
                    );
                    write_out(path, &text)?;
                }
                let text = if proof.bundle_json.is_empty() {
                    serde_json::json!({
                        "logIndex": proof.log_index,
                        "treeSize": proof.tree_size,
                        "inclusionProof": proof.hashes.iter().map(hex::encode).collect::<Vec<_>>(),
                        "checkpoint": proof.checkpoint,
                    })
                    .to_string()
                } else {
                    proof.bundle_json
                };
                write_out(&out, &text)?;
                outln!(
                    "entry {} proved in the tree of {} entries; written to {}",
                    proof.log_index,
                    proof.tree_size,
                    out.display()
                );
            }
            LogCommand::Consistency {
                old,
                new,
                out,
                connection,
            } => {
                let mut client = SignerClient::new(connect(&connection).await?);
                let proof = client
                    .get_consistency_proof(GetConsistencyProofRequest {
                        old_size: old,
                        new_size: new,
                    })
                    .await
                    .map_err(status_error)?
                    .into_inner();
                let text = serde_json::json!({
                    "oldSize": proof.old_size,
                    "newSize": proof.new_size,
                    "hashes": proof.hashes.iter().map(hex::encode).collect::<Vec<_>>(),
                    "oldCheckpoint": proof.old_checkpoint,
                    "newCheckpoint": proof.new_checkpoint,
                })
                .to_string();
                write_out(&out, &text)?;
                outln!(
                    "consistency of {} → {} written to {}",
                    proof.old_size,
                    proof.new_size,
                    out.display()
                );
            }
            LogCommand::Export { .. }
            | LogCommand::Recover { .. }
            | LogCommand::Head { .. }
            | LogCommand::Check { .. }
            | LogCommand::Migrate { .. }
            | LogCommand::Vkey { .. } => {
                unreachable!("export, check and recover run offline")
            }
        }
        Ok(())
    })
}

pub(super) fn parse_context(entries: &[String]) -> Result<HashMap<String, String>> {
    let mut context = HashMap::new();
    for entry in entries {
        let Some((key, value)) = entry.split_once('=') else {
            bail!("--context {entry:?}: expected KEY=VALUE");
        };
        context.insert(key.to_owned(), value.to_owned());
    }
    Ok(context)
}

pub fn sign(args: SignArgs) -> Result<()> {
    if args.stream {
        return super::stream::sign_stream(&args);
    }
    let given = |value: &Option<String>, name: &str| {
        value
            .clone()
            .with_context(|| format!("{name} is required without --stream"))
    };
    let action = match (&args.document, &args.digest) {
        (Some(path), None) => Action::Document(
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?,
        ),
        (None, Some(digest)) => {
            Action::DocumentSha256(hex::decode(digest).context("--digest must be hex")?)
        }
        _ => bail!("give exactly one of --document and --digest"),
    };
    let parent_action_sha256 = match &args.parent {
        Some(parent) => hex::decode(parent).context("--parent must be hex")?,
        None => Vec::new(),
    };
    let request = SignRequest {
        actor: given(&args.actor, "--actor")?,
        action_type: given(&args.action_type, "--type")?,
        target: given(&args.target, "--target")?,
        action: Some(action),
        context: parse_context(&args.context)?,
        parent_action_sha256,
        request_id: args.request_id.clone().unwrap_or_default(),
    };
    let response = runtime()?.block_on(async {
        let mut client = SignerClient::new(connect(&args.connection).await?);
        client.sign(request).await.map_err(status_error)
    })?;
    let response = response.into_inner();
    match &args.out {
        Some(out) => {
            std::fs::write(out, &response.bundle_json)
                .with_context(|| format!("cannot write {}", out.display()))?;
            outln!(
                "signed: log index {}, sequence {}, key {}; bundle in {}",
                response.log_index,
                response.sequence,
                response.key_id,
                out.display()
            );
        }
        None => outln!("{}", response.bundle_json),
    }
    Ok(())
}
