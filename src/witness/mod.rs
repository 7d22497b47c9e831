//! `actseal witness`: a C2SP `tlog-witness` that an organisation other than the log's operator
//! runs on its own host: its own Ed25519 key in a PKCS#11 token, its own durable state of the
//! newest checkpoint per log, refusing anything not consistent with it (FORMAT.md §14).

pub mod config;
pub mod key;
pub mod server;
pub mod state;

use std::{collections::HashMap, path::Path, sync::Arc};

use config::WitnessConfig;

/// Why the witness could not start or answer.
#[derive(Debug, thiserror::Error)]
pub enum WitnessError {
    #[error("witness configuration: {0}")]
    Config(String),
    #[error("witness token: {0}")]
    Token(String),
    #[error("witness state: {0}")]
    State(String),
    #[error("witness listener: {0}")]
    Listen(String),
}

/// `actseal witness init`: generates the witness key in the token; returns its vkey.
pub fn init(config: &Path) -> Result<String, WitnessError> {
    let config = WitnessConfig::load(config)?;
    let public = key::TokenKey::generate(&config.pkcs11)?;
    Ok(crate::verify::cosignature::format_vkey(
        &config.name,
        crate::verify::cosignature::SIGNATURE_TYPE_COSIGNATURE,
        &public,
    ))
}

/// Opens the token, the state and the logs.
fn open(config: &WitnessConfig) -> Result<server::Witness, WitnessError> {
    let key = key::TokenKey::open(&config.pkcs11)?;
    let state = state::StateDir::open(&config.state_dir)?;
    let logs: HashMap<_, _> = config
        .logs()?
        .into_iter()
        .map(|k| (k.name.clone(), (k, tokio::sync::Mutex::new(()))))
        .collect();
    Ok(server::Witness {
        name: config.name.clone(),
        key,
        state,
        logs,
    })
}

/// `actseal witness key`: the witness's verifier key.
pub fn vkey(config: &Path) -> Result<String, WitnessError> {
    let config = WitnessConfig::load(config)?;
    let key = key::TokenKey::open(&config.pkcs11)?;
    Ok(crate::verify::cosignature::format_vkey(
        &config.name,
        crate::verify::cosignature::SIGNATURE_TYPE_COSIGNATURE,
        &key.public(),
    ))
}

/// `actseal witness serve`: serves until SIGTERM or SIGINT.
pub async fn serve(
    config: &Path,
    listen: Option<std::net::SocketAddr>,
) -> Result<(), WitnessError> {
    let config = WitnessConfig::load(config)?;
    let witness = Arc::new(tokio::task::block_in_place(|| open(&config))?);
    let addr = listen.unwrap_or(config.listen);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| WitnessError::Listen(format!("{addr}: {e}")))?;
    let bound = listener
        .local_addr()
        .map_err(|e| WitnessError::Listen(e.to_string()))?;
    use tokio::signal::unix::{SignalKind, signal};
    let mut term =
        signal(SignalKind::terminate()).map_err(|e| WitnessError::Listen(e.to_string()))?;
    let mut int =
        signal(SignalKind::interrupt()).map_err(|e| WitnessError::Listen(e.to_string()))?;
    tracing::info!(address = %bound, name = %witness.name, vkey = %witness.vkey(),
        logs = witness.logs.len(), "witness listening");
    server::serve(witness, listener, async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
    .await
}
