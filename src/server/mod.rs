//! The daemon: opens the backend and the state, then serves gRPC on a Unix socket (and on
//! TCP with mTLS when configured) until SIGTERM or SIGINT. Every request is checked against
//! the policy (reloaded on SIGHUP) for the caller the connection authenticated.

pub mod auth;
mod authority;
mod bundles;
pub mod clock;
pub mod codec;
mod fleet;
mod handover;
pub mod health;
mod keys;
pub mod listen;
mod memory;
pub mod metrics;
pub mod policy;
pub mod rollback;
pub mod sequencer;
mod signer;
mod status;
mod stream;
pub mod systemd;
pub mod validate;

use std::{
    os::unix::fs::{MetadataExt, PermissionsExt},
    path::Path,
    sync::{Arc, Mutex, RwLock},
};

use tokio::net::{TcpListener, UnixListener};
use tonic::{
    Status,
    transport::{Certificate, Identity, Server, ServerTlsConfig},
};

pub use keys::build_attestation;

use self::{auth::Caller, metrics::Metrics, policy::Policy};
use crate::{
    api::{key_admin_server::KeyAdminServer, signer_server::SignerServer},
    backend::{
        Backend,
        pkcs11::{Pkcs11Backend, load_module},
        tpm::TpmBackend,
    },
    config::{BackendConfig, Config, TlsConfig},
    ledger::{
        KeyRecord, Store, StoreError,
        head::{LogHead, PreviousLog},
        integrity,
    },
    pki::device::{CertificateHistory, DeviceIdentity, load_identity},
    proof::{
        key_id,
        lineage::{KeyOrigin, KeySubject},
        now_rfc3339,
    },
};

/// Largest gRPC message accepted: a maximal document plus the rest of a request.
const MAX_MESSAGE: usize = validate::MAX_DOCUMENT_LEN + 64 * 1024;

/// How long in-flight requests may take to finish after SIGTERM.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// What every request handler shares.
pub struct DaemonState {
    pub(crate) backend: Arc<dyn Backend>,
    pub(crate) device: DeviceIdentity,
    /// Every device certificate installed for the device key (renewals included).
    pub(crate) certificates: Arc<CertificateHistory>,
    reader: Mutex<Store>,
    pub(crate) sequencer: sequencer::SequencerHandle,
    pub(crate) log: sequencer::LogIdentity,
    policy: RwLock<Arc<Policy>>,
    pub(crate) metrics: Arc<Metrics>,
    /// The anchor task (witnesses, TSAs), if `[anchor]` configures any.
    pub(crate) anchor: Option<crate::anchor::AnchorHandle>,
    /// A fleet node's integrator (`crate::fleet`), stopped with the daemon.
    _integrator: Option<crate::fleet::integrator::Integrator>,
    /// A fleet node's name and database (moving actors between nodes, `handover.rs`).
    pub(crate) fleet_node: Option<sequencer::FleetNode>,
}

impl DaemonState {
    /// The policy in force.
    pub(crate) fn policy(&self) -> Arc<Policy> {
        Arc::clone(&self.policy.read().unwrap_or_else(|p| p.into_inner()))
    }

    fn set_policy(&self, policy: Policy) {
        *self.policy.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(policy);
    }

    /// PERMISSION_DENIED unless the policy lets `caller` sign `action_type` as `actor`; the
    /// allowing rule's batch window (`batch_window_ms`), if it gives one.
    pub(crate) fn authorize_sign(
        &self,
        caller: &Caller,
        actor: &str,
        action_type: &str,
    ) -> Result<Option<std::time::Duration>, Status> {
        if let Some(rule) = self.policy().sign_rule(caller, actor, action_type) {
            return Ok(rule.batch_window);
        }
        tracing::warn!(caller = %caller, actor, action_type, "permission denied: sign");
        Err(Status::permission_denied(format!(
            "{caller} may not sign {action_type:?} as {actor:?}"
        )))
    }

    /// PERMISSION_DENIED unless the policy makes `caller` an admin of `actor`.
    pub(crate) fn authorize_admin(
        &self,
        caller: &Caller,
        actor: &str,
        operation: &str,
    ) -> Result<(), Status> {
        if self.policy().may_administer(caller, actor) {
            return Ok(());
        }
        tracing::warn!(caller = %caller, actor, operation, "permission denied: admin");
        Err(Status::permission_denied(format!(
            "{caller} may not {operation} keys of {actor:?}"
        )))
    }

    /// PERMISSION_DENIED unless `caller` signs as or administers `actor`.
    pub(crate) fn authorize_read(&self, caller: &Caller, actor: &str) -> Result<(), Status> {
        if self.policy().may_read(caller, actor) {
            return Ok(());
        }
        tracing::warn!(caller = %caller, actor, "permission denied: read key");
        Err(Status::permission_denied(format!(
            "{caller} may not read the keys of {actor:?}"
        )))
    }

    fn keys(&self, actor: Option<&str>) -> Result<Vec<KeyRecord>, StoreError> {
        self.reader().keys(actor)
    }

    fn reader(&self) -> std::sync::MutexGuard<'_, Store> {
        self.reader.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Runs blocking work (token calls, SQLite reads) off the async runtime.
pub(crate) async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, Status> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|_| Status::internal("worker task failed"))
}

/// Everything that can stop the daemon from starting, each with what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("backend: {0}")]
    Backend(#[from] crate::backend::BackendError),
    #[error("device identity: {0}")]
    Device(#[from] crate::pki::PkiError),
    #[error("state: {0}")]
    Store(#[from] StoreError),
    /// Not `#[from]`: its text is already in the message, and a source would print it twice.
    #[error("refusing to sign on a damaged log: {0}")]
    Integrity(integrity::IntegrityError),
    #[error("sequencer: {0}")]
    Sequencer(#[from] sequencer::SequencerError),
    #[error("log key: {0}")]
    LogKey(String),
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Anchor(#[from] crate::anchor::AnchorStartError),
    #[error("listener {what}: {reason}")]
    Listen { what: String, reason: String },
    #[error("policy: {0}")]
    Policy(#[from] policy::PolicyError),
    #[error("TLS: {0}")]
    Tls(String),
    /// The stored log is not the one the hardware's log head record vouches for.
    #[error("refusing to sign: {0}")]
    Rollback(String),
}

impl From<integrity::IntegrityError> for StartError {
    fn from(e: integrity::IntegrityError) -> Self {
        StartError::Integrity(e)
    }
}

/// Reads the TLS listener's certificate, key and client CAs. The key's bytes never reach an
/// error message or the log.
pub fn load_tls(tls: &TlsConfig) -> Result<ServerTlsConfig, StartError> {
    let read = |what: &str, path: &Path| {
        std::fs::read(path).map_err(|e| StartError::Tls(format!("{what} {}: {e}", path.display())))
    };
    let cert = read("server.tls.cert", &tls.cert)?;
    if !String::from_utf8_lossy(&cert).contains("-----BEGIN CERTIFICATE-----") {
        return Err(StartError::Tls(format!(
            "server.tls.cert {}: no PEM certificate in it",
            tls.cert.display()
        )));
    }
    let key = zeroize::Zeroizing::new(read("server.tls.key", &tls.key)?);
    if let Ok(meta) = std::fs::metadata(&tls.key)
        && meta.mode() & 0o077 != 0
    {
        tracing::warn!(key = %tls.key.display(), mode = format!("{:o}", meta.mode() & 0o777),
            "the TLS server key is readable by other users; make it mode 0600");
    }
    let mut roots = Vec::new();
    for path in &tls.client_ca {
        let pem = read("server.tls.client_ca", path)?;
        if !String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----") {
            return Err(StartError::Tls(format!(
                "server.tls.client_ca {}: no PEM certificate in it",
                path.display()
            )));
        }
        roots.extend_from_slice(&pem);
        roots.push(b'\n');
    }
    let config = ServerTlsConfig::new()
        .identity(Identity::from_pem(cert, key.as_slice()))
        .client_ca_root(Certificate::from_pem(roots))
        .client_auth_optional(false)
        .timeout(std::time::Duration::from_secs(10));
    // Building the acceptor parses everything now rather than at the first connection.
    Server::builder()
        .tls_config(config.clone())
        .map_err(|e| StartError::Tls(format!("server.tls: {e}")))?;
    Ok(config)
}

/// What `actseal serve --check-config` checks beyond the configuration file's own syntax:
/// the policy and the TLS files.
pub fn check(config: &Config) -> Result<Policy, StartError> {
    let policy = Policy::load(&config.server.policy)?;
    if let Some(tls) = &config.server.tls {
        load_tls(tls)?;
    }
    Ok(policy)
}

/// Opens the configured PKCS#11 token.
pub fn open_pkcs11_backend(config: &Config) -> Result<Pkcs11Backend, StartError> {
    let settings = config
        .pkcs11()
        .and_then(|p| p.settings())
        .map_err(StartError::Config)?;
    Ok(Pkcs11Backend::open(
        load_module(&settings.module)?,
        &settings,
    )?)
}

/// The backends a daemon signs with: the actors' and the one that holds the log key and the
/// log head (the same one unless `[log_token]` names another token).
#[derive(Clone)]
pub struct Backends {
    pub actors: Arc<dyn Backend>,
    pub log: Arc<dyn Backend>,
    /// What makes the default log origin (`actseal/<name>`): the serial of the token that
    /// holds the log key, or `tpm-<AK key id prefix>`.
    pub name: String,
}

/// Opens the configured backend; also returns the name that makes the default log origin
/// (`actseal/<name>`): the token serial, or `tpm-<AK key id prefix>`. The actors' backend
/// only: a daemon opens [`open_backends`].
pub fn open_backend(config: &Config) -> Result<(Arc<dyn Backend>, String), StartError> {
    let (backend, name) = open_hardware(config)?;
    Ok((throttled(config, backend), name))
}

/// Opens the actors' backend and, with `[log_token]`, the log token on the same PKCS#11
/// context (one context per module and process).
pub fn open_backends(config: &Config) -> Result<Backends, StartError> {
    let Some(log_token) = &config.log_token else {
        let (actors, name) = open_backend(config)?;
        return Ok(Backends {
            log: Arc::clone(&actors),
            actors,
            name,
        });
    };
    let pkcs11 = config.pkcs11().map_err(StartError::Config)?;
    let actor_settings = pkcs11.settings().map_err(StartError::Config)?;
    let log_settings = log_token.settings(pkcs11).map_err(StartError::Config)?;
    let ctx = load_module(&actor_settings.module)?;
    let actors = Pkcs11Backend::open(ctx.clone(), &actor_settings)?;
    let log = Pkcs11Backend::open(ctx, &log_settings)?;
    if log.token().serial == actors.token().serial {
        return Err(StartError::Config(format!(
            "[log_token] names the actors' token (serial {:?}); remove [log_token] to keep the log key there",
            log.token().serial
        )));
    }
    tracing::info!(log_token.label = %log.token().label, log_token.serial = %log.token().serial,
        "the log key and the log head are on the log token");
    let name = log.token().serial.clone();
    Ok(Backends {
        actors: throttled(config, Arc::new(actors)),
        // A benchmark aid ([testing]): the log token may keep its own speed.
        log: if config.testing.emulate_actors_token_only {
            Arc::new(log)
        } else {
            throttled(config, Arc::new(log))
        },
        name,
    })
}

/// The backend as configured, or limited by the `[testing]` benchmark aid.
fn throttled(config: &Config, backend: Arc<dyn Backend>) -> Arc<dyn Backend> {
    let Some(rate) = config.testing.emulate_signatures_per_second else {
        return backend;
    };
    // A benchmark aid ([testing] in docs/CONFIG.md): an emulated discrete TPM.
    tracing::warn!(
        signatures_per_second = rate,
        "BENCHMARK AID: the backend is limited to this many signatures a second ([testing] emulate_signatures_per_second)"
    );
    Arc::new(crate::backend::throttle::Throttled::new(backend, rate))
}

fn open_hardware(config: &Config) -> Result<(Arc<dyn Backend>, String), StartError> {
    match config.backend().map_err(StartError::Config)? {
        BackendConfig::Pkcs11(_) => {
            let backend = open_pkcs11_backend(config)?;
            let serial = backend.token().serial.clone();
            Ok((Arc::new(backend), serial))
        }
        BackendConfig::Tpm(tpm) => {
            let mut settings = tpm.settings().map_err(StartError::Config)?;
            settings.identity = recorded_tpm_identity(config)?;
            let backend = TpmBackend::open(&settings)?;
            if settings.identity.is_none() {
                // Enrolled before identities were recorded: the AK in the TPM now (checked
                // against the installed AK certificate at start-up) is the one to insist on.
                let pinned = backend.pin_identity()?;
                tracing::warn!(ak_name = %pinned.ak_name, path = %config.state.tpm_identity().display(),
                    "no TPM identity recorded at enrollment: pinning this TPM's AK; re-run `actseal enroll` to record its EK too");
            }
            let ak = backend.device_key(false)?;
            let id = key_id(&ak.public_key);
            Ok((
                Arc::new(backend),
                format!("tpm-{}", id.get(..16).unwrap_or(&id)),
            ))
        }
    }
}

/// The TPM identity `actseal enroll` recorded, if any.
fn recorded_tpm_identity(
    config: &Config,
) -> Result<Option<crate::backend::tpm::TpmIdentity>, StartError> {
    let path = config.state.tpm_identity();
    match std::fs::read_to_string(&path) {
        Ok(text) => crate::backend::tpm::TpmIdentity::from_json(&text)
            .map(Some)
            .map_err(|e| StartError::Config(format!("{}: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(StartError::Config(format!("{}: {e}", path.display()))),
    }
}

const META_ORIGIN: &str = "log.origin";
const META_KEY_REF: &str = "log.key_ref";
const META_PUBLIC_KEY: &str = "log.public_key";
const META_LINEAGE: &str = "log.lineage";

/// The log identity recorded in the state database, if the log has been set up; `backend`
/// is the one that holds its key (offline commands that sign nothing pass
/// [`crate::backend::offline`]).
pub fn stored_log_identity(
    store: &Store,
    backend: Arc<dyn Backend>,
) -> Result<Option<sequencer::LogIdentity>, StartError> {
    use base64::{Engine, engine::general_purpose::STANDARD as B64};
    use spki::DecodePublicKey;
    let bad = |what: &str| StartError::LogKey(format!("stored {what} is unreadable"));
    let Some(origin) = store.meta(META_ORIGIN)? else {
        return Ok(None);
    };
    let key_ref = store
        .meta(META_KEY_REF)?
        .ok_or_else(|| bad("key reference"))?;
    let spki = B64
        .decode(
            store
                .meta(META_PUBLIC_KEY)?
                .ok_or_else(|| bad("public key"))?,
        )
        .map_err(|_| bad("public key"))?;
    let public_key = p256::PublicKey::from_public_key_der(&spki).map_err(|_| bad("public key"))?;
    let lineage = serde_json::from_str(&store.meta(META_LINEAGE)?.ok_or_else(|| bad("lineage"))?)
        .map_err(|_| bad("lineage"))?;
    Ok(Some(sequencer::LogIdentity {
        origin,
        key_id: key_id(&public_key),
        key: crate::backend::HardwareKey {
            key_ref: crate::backend::KeyRef(key_ref),
            public_key,
        },
        lineage,
        backend,
    }))
}

/// Loads the log's identity, creating the log key (attested by the device like an actor key
/// whose actor is the origin) on first start.
fn open_log(
    store: &Store,
    backends: &Backends,
    device: &DeviceIdentity,
    configured_origin: Option<&str>,
    hardware: Option<&(LogHead, Vec<u8>)>,
) -> Result<(sequencer::LogIdentity, Option<PreviousLog>), StartError> {
    use base64::{Engine, engine::general_purpose::STANDARD as B64};
    let fresh = rollback::pending_fresh_start(store, hardware)?;
    let backend = backends.log.as_ref();
    if let Some(log) = stored_log_identity(store, Arc::clone(&backends.log))? {
        check_log_key_present(backends, &log)?;
        if let Some(configured) = configured_origin
            && configured != log.origin
        {
            return Err(StartError::Config(format!(
                "ledger.origin is {configured:?} but this log's origin is {:?}; a log's origin never changes",
                log.origin
            )));
        }
        // A fresh start interrupted after its log key was made: still this one's to finish.
        let fresh = fresh.filter(|(f, _)| f.origin == log.origin);
        return Ok((log, fresh.map(|(_, previous)| previous)));
    }
    if let (Some((head, _)), None) = (hardware, &fresh) {
        return Err(rollback::head_error(
            crate::ledger::head::HeadError::DatabaseLost {
                size: head.size,
                log_key: hex::encode(head.binding.log_key_id),
            },
        ));
    }
    let origin = match (&fresh, configured_origin) {
        (Some((f, _)), Some(configured)) if f.origin != configured => {
            return Err(StartError::Config(format!(
                "ledger.origin is {configured:?} but the declared fresh start names {:?}; set ledger.origin to it",
                f.origin
            )));
        }
        (Some((f, _)), _) => f.origin.clone(),
        (None, configured) => configured
            .map(str::to_owned)
            .unwrap_or_else(|| format!("actseal/{}", backends.name)),
    };
    check_origin(&origin)?;
    let key = backend.create_key("actseal-log")?;
    let attestation = keys::build_attestation_by(
        backend,
        backends.actors.as_ref(),
        device,
        &key,
        &keys::AttestationRequest {
            subject: KeySubject::Log { origin: &origin },
            origin: KeyOrigin::Generated,
            created_at: &now_rfc3339(),
            nonce: None,
        },
    )?;
    let lineage = keys::first_lineage(attestation);
    store.set_meta(META_KEY_REF, &key.key_ref.0)?;
    store.set_meta(
        META_PUBLIC_KEY,
        &B64.encode(crate::proof::spki_der(&key.public_key)),
    )?;
    store.set_meta(
        META_LINEAGE,
        &serde_json::to_string(&lineage).map_err(|e| StartError::LogKey(e.to_string()))?,
    )?;
    // Written last: its presence means the identity is complete.
    store.set_meta(META_ORIGIN, &origin)?;
    tracing::info!(origin = %origin, key_id = %key_id(&key.public_key), "log key created");
    Ok((
        sequencer::LogIdentity {
            origin,
            key_id: key_id(&key.public_key),
            key,
            lineage,
            backend: Arc::clone(&backends.log),
        },
        fresh.map(|(_, previous)| previous),
    ))
}

/// With a separate log token, the stored log key must be on it: a log never moves to another
/// token (its checkpoints could not be signed, and its head would start from nothing).
fn check_log_key_present(
    backends: &Backends,
    log: &sequencer::LogIdentity,
) -> Result<(), StartError> {
    if Arc::ptr_eq(&backends.actors, &backends.log) {
        return Ok(());
    }
    match backends.log.key_evidence(&log.key.key_ref) {
        Ok(_) => Ok(()),
        Err(crate::backend::BackendError::KeyNotFound(_)) => Err(StartError::LogKey(format!(
            "this log's key ({}) is not on the log token; a log cannot move to another token \
             (was [log_token] added to a daemon whose log key is on the actors' token?)",
            log.key_id
        ))),
        Err(e) => Err(e.into()),
    }
}

/// A log origin doubles as the checkpoint key name: both rules apply.
pub fn check_origin(origin: &str) -> Result<(), StartError> {
    crate::ledger::checkpoint::Checkpoint::new(
        origin.to_owned(),
        0,
        crate::ledger::merkle::empty_root(),
    )
    .map_err(|e| StartError::Config(format!("ledger.origin: {e}")))?;
    if origin.contains([' ', '+']) {
        return Err(StartError::Config(format!(
            "ledger.origin {origin:?} must not contain spaces or '+' (it is also the checkpoint key name)"
        )));
    }
    Ok(())
}

fn bind_unix(path: &Path, mode: u32) -> Result<UnixListener, StartError> {
    let err = |reason: String| StartError::Listen {
        what: path.display().to_string(),
        reason,
    };
    if path.exists() {
        // Only a socket may be replaced, and only one nobody answers on (a stale one from a
        // crash); anything else means a mistake in the configuration or a second daemon.
        let meta = std::fs::symlink_metadata(path).map_err(|e| err(e.to_string()))?;
        use std::os::unix::fs::FileTypeExt;
        if !meta.file_type().is_socket() {
            return Err(err("exists and is not a socket".into()));
        }
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(err("another daemon is listening on it".into()));
        }
        std::fs::remove_file(path).map_err(|e| err(e.to_string()))?;
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| err(e.to_string()))?;
    }
    let listener = UnixListener::bind(path).map_err(|e| err(e.to_string()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| err(e.to_string()))?;
    Ok(listener)
}

/// Reloads the policy on each SIGHUP; a policy with an error is rejected and the old one
/// stays in force.
async fn reload_on_hangup(
    state: Arc<DaemonState>,
    path: std::path::PathBuf,
    mut hup: tokio::signal::unix::Signal,
) {
    while hup.recv().await.is_some() {
        systemd::notify("RELOADING=1");
        let certificates = Arc::clone(&state.certificates);
        match tokio::task::spawn_blocking(move || certificates.reload()).await {
            Ok(Ok(loaded)) => {
                tracing::info!(
                    not_after = loaded.not_after().unwrap_or_default(),
                    "device certificates reloaded"
                )
            }
            Ok(Err(e)) => {
                tracing::error!(error = %e, "device certificate reload rejected; the previous ones stay")
            }
            Err(_) => tracing::error!("device certificate reload failed"),
        }
        let load = path.clone();
        match tokio::task::spawn_blocking(move || Policy::load(&load)).await {
            Ok(Ok(policy)) => {
                let (sign, admin) = policy.rule_counts();
                state.set_policy(policy);
                state.metrics.reload("applied");
                tracing::info!(policy = %path.display(), sign_rules = sign, admin_rules = admin, "policy reloaded");
            }
            Ok(Err(e)) => {
                state.metrics.reload("rejected");
                tracing::error!(error = %e, "policy reload rejected; the previous policy stays in force");
            }
            Err(_) => tracing::error!("policy reload failed; the previous policy stays in force"),
        }
        systemd::notify("READY=1");
    }
}

async fn shutdown_signal(
    mut term: tokio::signal::unix::Signal,
    mut int: tokio::signal::unix::Signal,
) {
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: finishing in-flight requests"),
        _ = int.recv() => tracing::info!("SIGINT: finishing in-flight requests"),
    }
}

/// Refuses to start with no device certificate valid now; warns 30 days ahead of expiry.
fn check_device_certificate(certificates: &CertificateHistory) -> Result<(), StartError> {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    match certificates.get().in_force(now) {
        None => Err(StartError::Config(
            "no installed device certificate is valid now: receipts would not verify; \
             have the CA issue a new one (actseal device csr, actseal ca issue, actseal device install)"
                .into(),
        )),
        Some(cert) if cert.not_after - now < 30 * 24 * 3600 => {
            tracing::warn!(
                days_left = (cert.not_after - now) / 86400,
                "the device certificate expires soon; renew it (actseal device install keeps the old one for older proofs)"
            );
            Ok(())
        }
        Some(_) => Ok(()),
    }
}

/// Opens the state database and the log, checks the log against the head kept in the
/// hardware (refusing a lost, rolled-back or foreign database), and checks what is new in it.
fn open_ledger(
    config: &Config,
    backends: &Backends,
    device: &DeviceIdentity,
) -> Result<(Store, sequencer::LogIdentity, Option<LogHead>), StartError> {
    let reader = Store::open_at(&config.ledger_location())?;
    let hardware = rollback::read_head(backends.log.as_ref())?;
    let (log, fresh) = open_log(
        &reader,
        backends,
        device,
        config.ledger.origin.as_deref(),
        hardware.as_ref(),
    )
    .inspect_err(|e| tracing::error!(error = %e, "refusing to sign"))?;
    let checking = std::time::Instant::now();
    let (status, head) = rollback::check_start(
        &reader,
        &log,
        hardware.as_ref().map(|(head, _)| head),
        fresh,
    )
    .inspect_err(|e| tracing::error!(error = %e, "refusing to sign on a broken log"))?;
    tracing::info!(origin = %log.origin, size = status.size, root = %hex::encode(status.root),
        checked = status.checked, check_ms = checking.elapsed().as_millis() as u64,
        head_in_hardware = head.is_some(), "log verified");
    Ok((reader, log, head))
}

/// Opens the backend, the device identity and the ledger, and starts the sequencer.
fn open_state(
    config: &Config,
    policy: Policy,
) -> Result<(Arc<DaemonState>, std::thread::JoinHandle<()>), StartError> {
    crate::files::private_dir(&config.state.dir)
        .map_err(|e| StartError::Config(format!("state dir: {e}")))?;
    let backends = open_backends(config)?;
    let backend = Arc::clone(&backends.actors);
    let device_key = backend.device_key(false)?;
    let device = load_identity(&config.state.device_certificate(), device_key.clone())?;
    let certificates = Arc::new(CertificateHistory::open(
        &config.state.device_certificate(),
        device_key,
    )?);
    check_device_certificate(&certificates)?;
    let location = config.ledger_location();
    let mut signing = config.ledger.signing_settings();
    let (writer, reader, log, head, mut fleet) = match &config.fleet {
        None => {
            // The writer first: on PostgreSQL it holds the single-host lock, refusing a
            // second daemon before anything is read or signed.
            let writer = Store::open_writer(&location)?;
            tracing::info!(engine = writer.engine(), "ledger opened");
            let (reader, log, head) = open_ledger(config, &backends, &device)?;
            (writer, reader, log, head, None)
        }
        Some(_) => {
            // A fleet node takes no single-host lock: the lease orders its integrators.
            let parts = fleet::open(config, &backends, &device)?;
            signing.fleet = Some(parts.node);
            let writer = Store::open_at(&location)?;
            let fleet = Some((parts.integrator, parts.metrics, parts.anchor));
            (writer, parts.reader, parts.log, None, fleet)
        }
    };
    let fleet_node = signing.fleet.clone();
    let (sequencer, sequencer_thread) = sequencer::start(
        (Store::open_at(&location)?, writer),
        Arc::clone(&backend),
        log.clone(),
        Arc::clone(&certificates),
        signing,
        clock::EntryClock::new(clock::daemon_clock(), config.ledger.max_clock_step_back_s()),
        head,
    )?;
    let fleet_anchor = fleet.as_mut().and_then(|(_, _, anchor)| anchor.take());
    let state = Arc::new(DaemonState {
        backend,
        device,
        certificates,
        reader: Mutex::new(reader),
        sequencer,
        log,
        policy: RwLock::new(Arc::new(policy)),
        metrics: Arc::new(match &fleet {
            Some((_, metrics, _)) => Metrics::with_fleet(Arc::clone(metrics)),
            None => Metrics::default(),
        }),
        anchor: crate::anchor::spawn(&config.anchor, &location, fleet_anchor)?,
        _integrator: fleet.map(|(integrator, _, _)| integrator),
        fleet_node,
    });
    let (sign_rules, admin_rules) = state.policy().rule_counts();
    tracing::info!(policy = %config.server.policy.display(), sign_rules, admin_rules, "policy loaded");
    Ok((state, sequencer_thread))
}

/// A server builder with the configured stream limits and connection-activity tracking.
type Builder =
    Server<tower::layer::util::Stack<listen::ActivityLayer, tower::layer::util::Identity>>;

fn builder(limits: &listen::Limits) -> Builder {
    Server::builder()
        .max_concurrent_streams(limits.max_concurrent_streams)
        // Streams a client opens and resets at once (h2's default, stated).
        .http2_max_pending_accept_reset_streams(Some(20))
        .layer(listen::ActivityLayer)
}

/// Every gRPC service the daemon offers, ready to be added to each listener's router.
async fn routes(
    state: &Arc<DaemonState>,
    probe: &Arc<health::HealthProbe>,
    stream_bound: usize,
) -> Result<tonic::service::Routes, StartError> {
    let (health_reporter, health) = tonic_health::server::health_reporter();
    {
        use tonic::server::NamedService;
        const SERVICES: &[&str] = &[
            <SignerServer<signer::SignerService> as NamedService>::NAME,
            <KeyAdminServer<keys::KeyAdminService> as NamedService>::NAME,
        ];
        health::follow_backend(health_reporter, Arc::clone(probe), SERVICES).await;
    }
    // Both reflection versions: grpcurl and older tools still ask v1alpha.
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(crate::api::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_error =
        |e: tonic_reflection::server::Error| StartError::Config(format!("reflection: {e}"));
    let signer = SignerServer::new(signer::SignerService {
        state: Arc::clone(state),
    })
    .max_decoding_message_size(MAX_MESSAGE);
    let admin = KeyAdminServer::new(keys::KeyAdminService {
        state: Arc::clone(state),
    })
    .max_decoding_message_size(MAX_MESSAGE);
    // SignStream (src/server/stream.rs) hands each action to the same Sign path.
    let streams =
        crate::api::stream_signer_server::StreamSignerServer::new(stream::StreamSignerService {
            signer: Arc::new(signer::SignerService {
                state: Arc::clone(state),
            }),
            bounds: Arc::new(stream::InFlight::new(stream_bound)),
        })
        .max_decoding_message_size(MAX_MESSAGE);
    Ok(tonic::service::Routes::new(health)
        .add_service(reflection().build_v1().map_err(reflection_error)?)
        .add_service(reflection().build_v1alpha().map_err(reflection_error)?)
        .add_service(signer)
        .add_service(admin)
        .add_service(streams))
}

/// The daemon's signal handlers, installed before the socket exists: a client that sees the
/// socket may signal.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> Result<Signals, StartError> {
        use tokio::signal::unix::{SignalKind, signal};
        let install = |kind: SignalKind| {
            signal(kind)
                .map_err(|e| StartError::Config(format!("cannot install a signal handler: {e}")))
        };
        Ok(Signals {
            term: install(SignalKind::terminate())?,
            int: install(SignalKind::interrupt())?,
            hup: install(SignalKind::hangup())?,
        })
    }
}

/// Resolves once a shutdown has been asked for.
async fn stopped(mut stop: tokio::sync::watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

type ServeResult = Result<(), tonic::transport::Error>;

/// Binds the TCP listener (mTLS, or plain on loopback) and serves it in a task.
async fn spawn_tcp(
    addr: std::net::SocketAddr,
    tls: Option<&ServerTlsConfig>,
    routes: &tonic::service::Routes,
    limits: &listen::Limits,
    metrics: &Arc<Metrics>,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Result<tokio::task::JoinHandle<ServeResult>, StartError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| StartError::Listen {
            what: addr.to_string(),
            reason: e.to_string(),
        })?;
    let bound = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let mut builder = match tls {
        Some(tls) => {
            tracing::info!(address = %bound, "mTLS listener: callers are their client certificates");
            builder(limits)
                .tls_config(tls.clone())
                .map_err(|e| StartError::Tls(format!("server.tls: {e}")))?
        }
        None => {
            // Config::parse allows this only with tcp_insecure_loopback on loopback.
            for _ in 0..3 {
                tracing::warn!(address = %bound,
                    "INSECURE: plain TCP listener without TLS or caller authentication \
                     (server.tcp_insecure_loopback): loopback development only");
            }
            builder(limits)
        }
    };
    let router = builder.add_routes(routes.clone());
    let incoming = listen::incoming(listener, "tcp", limits.clone(), Arc::clone(metrics));
    Ok(tokio::spawn(async move {
        router
            .serve_with_incoming_shutdown(incoming, stopped(stop))
            .await
    }))
}

/// Binds the metrics listener, if configured, and serves it in a task.
async fn spawn_metrics(
    config: &Config,
    state: &Arc<DaemonState>,
    probe: &Arc<health::HealthProbe>,
) -> Result<Option<tokio::task::JoinHandle<()>>, StartError> {
    let Some(addr) = config.server.metrics else {
        return Ok(None);
    };
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| StartError::Listen {
            what: format!("metrics {addr}"),
            reason: e.to_string(),
        })?;
    tracing::info!(address = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        "Prometheus metrics at /metrics");
    Ok(Some(tokio::spawn(metrics::serve(
        listener,
        Arc::clone(&state.metrics),
        Arc::clone(probe),
    ))))
}

/// Serves the Unix socket until a shutdown signal, then gives in-flight requests a grace
/// period; a client that keeps its connection open past it is cut off (it was told nothing,
/// so nothing it was told is lost).
async fn serve_unix(
    unix: UnixListener,
    routes: &tonic::service::Routes,
    limits: &listen::Limits,
    metrics: &Arc<Metrics>,
    stop: tokio::sync::watch::Receiver<bool>,
) -> ServeResult {
    let serve = builder(limits)
        .add_routes(routes.clone())
        .serve_with_incoming_shutdown(
            listen::incoming(unix, "unix", limits.clone(), Arc::clone(metrics)),
            stopped(stop.clone()),
        );
    let grace = async {
        stopped(stop).await;
        tokio::time::sleep(SHUTDOWN_GRACE).await;
        tracing::warn!("shutdown grace period over; closing the remaining connections");
    };
    tokio::select! {
        result = serve => result,
        () = grace => Ok(()),
    }
}

/// Starts the daemon and serves until a shutdown signal.
pub async fn run(config: Config) -> Result<(), StartError> {
    let policy = Policy::load(&config.server.policy)?;
    let tls = config.server.tls.as_ref().map(load_tls).transpose()?;
    let (state, sequencer_thread) = tokio::task::block_in_place(|| open_state(&config, policy))?;
    // One prober for gRPC health and /metrics: both say the same, and a hung backend is
    // asked one question at a time.
    let mut probe = health::HealthProbe::new(Arc::clone(&state.backend));
    if !Arc::ptr_eq(&state.backend, &state.log.backend) {
        probe = probe.with_log_token(Arc::clone(&state.log.backend));
    }
    let probe = Arc::new(probe);
    let routes = routes(
        &state,
        &probe,
        config.server.limits.max_stream_actions_in_flight,
    )
    .await?;
    let limits = listen::Limits::new(&config.server.limits);
    let signals = Signals::install()?;
    let unix = bind_unix(&config.server.socket, config.server.socket_mode)?;
    tracing::info!(socket = %config.server.socket.display(), device_key = %state.device.key_id,
        max_connections = limits.max_connections,
        max_connections_per_caller = limits.max_connections_per_caller, "actseal listening");
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let (term, int) = (signals.term, signals.int);
    tokio::spawn(async move {
        shutdown_signal(term, int).await;
        systemd::notify("STOPPING=1");
        let _ = stop_tx.send(true);
    });
    let tcp_task = match config.server.tcp {
        None => None,
        Some(addr) => {
            let (metrics, stop) = (&state.metrics, stop_rx.clone());
            Some(spawn_tcp(addr, tls.as_ref(), &routes, &limits, metrics, stop).await?)
        }
    };
    let metrics_task = spawn_metrics(&config, &state, &probe).await?;
    memory::spawn_trimmer();
    let reload_task = tokio::spawn(reload_on_hangup(
        Arc::clone(&state),
        config.server.policy.clone(),
        signals.hup,
    ));
    // Backend, ledger and listeners are open: the service manager may send traffic.
    systemd::notify("READY=1");
    let result = serve_unix(unix, &routes, &limits, &state.metrics, stop_rx).await;
    if let Some(task) = tcp_task
        && tokio::time::timeout(SHUTDOWN_GRACE, task).await.is_err()
    {
        tracing::warn!("TCP listener did not drain within the grace period");
    }
    // Every holder of the state lets go, so the sequencer sees its last handle dropped.
    reload_task.abort();
    let _ = reload_task.await;
    if let Some(task) = metrics_task {
        task.abort();
        let _ = task.await;
    }
    drop(routes);
    let _ = std::fs::remove_file(&config.server.socket);
    // Dropping the last handles stops the sequencer after it has committed what it holds.
    drop(state);
    let _ = tokio::task::spawn_blocking(move || sequencer_thread.join()).await;
    tracing::info!("actseal stopped");
    result.map_err(|e| StartError::Listen {
        what: "gRPC".into(),
        reason: e.to_string(),
    })
}
