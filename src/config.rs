//! The daemon's configuration file (TOML). Secrets are never in it: only where to read them.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
};

use serde::Deserialize;

use crate::{
    backend::{
        pkcs11::{Pkcs11Settings, TokenSelector},
        tpm::TpmSettings,
    },
    secret::PinSource,
};

/// Where the daemon looks for its configuration unless told otherwise.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/actseal/actseal.toml";
/// Where clients look for the daemon's socket unless told otherwise.
pub const DEFAULT_SOCKET_PATH: &str = "/run/actseal/actseal.sock";
/// Where the daemon reads its policy unless the configuration names another file.
pub const DEFAULT_POLICY_PATH: &str = "/etc/actseal/policy.toml";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: ServerConfig,
    pub state: StateConfig,
    /// Exactly one of `pkcs11` and `tpm` names the backend that holds actor keys.
    #[serde(default)]
    pub pkcs11: Option<Pkcs11Config>,
    #[serde(default)]
    pub tpm: Option<TpmConfig>,
    /// A separate token for the log key and the log head (docs/CONFIG.md `[log_token]`).
    #[serde(default)]
    pub log_token: Option<LogTokenConfig>,
    #[serde(default)]
    pub ledger: LedgerConfig,
    #[serde(default)]
    pub log: LogConfig,
    /// Witnesses and timestamp authorities (docs/CONFIG.md `[anchor]`).
    #[serde(default)]
    pub anchor: crate::anchor::AnchorConfig,
    /// Benchmark aids (docs/CONFIG.md `[testing]`); never for production.
    #[serde(default)]
    pub testing: TestingConfig,
    /// Fleet mode: this daemon is one signing node of a shared PostgreSQL log
    /// (docs/CONFIG.md `[fleet]`).
    #[serde(default)]
    pub fleet: Option<FleetConfig>,
}

/// `[fleet]`: one signing node of several queueing into one PostgreSQL log (issue 12).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetConfig {
    /// This node's name, unique in the fleet.
    pub node: String,
    /// How long the integrator lease lasts unless renewed (the failover bound), ms.
    #[serde(default = "default_lease_ms")]
    pub lease_ms: u64,
    /// How often the lease holder integrates (a queue insert wakes it sooner), ms.
    #[serde(default = "default_integrate_interval_ms")]
    pub integrate_interval_ms: u64,
    /// Most queued entries integrated in one transaction.
    #[serde(default = "default_max_integration_batch")]
    pub max_integration_batch: usize,
    /// How long a Sign waits for its entry to be integrated before UNAVAILABLE, ms.
    #[serde(default = "default_answer_timeout_ms")]
    pub answer_timeout_ms: u64,
}

fn default_lease_ms() -> u64 {
    3000
}

fn default_integrate_interval_ms() -> u64 {
    5
}

fn default_max_integration_batch() -> usize {
    4096
}

fn default_answer_timeout_ms() -> u64 {
    30_000
}

impl FleetConfig {
    /// The settings the fleet code runs on.
    pub fn settings(&self) -> crate::fleet::FleetSettings {
        use std::time::Duration;
        crate::fleet::FleetSettings {
            node: self.node.clone(),
            lease: Duration::from_millis(self.lease_ms),
            integrate_interval: Duration::from_millis(self.integrate_interval_ms),
            max_batch: self.max_integration_batch,
            answer_timeout: Duration::from_millis(self.answer_timeout_ms),
        }
    }

    fn check(&self) -> Result<(), String> {
        let name_ok = !self.node.is_empty()
            && self.node.len() <= 64
            && self
                .node
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
        if !name_ok {
            return Err(format!(
                "fleet.node {:?} must be 1 to 64 letters, digits, '-', '_' or '.'",
                self.node
            ));
        }
        if !(300..=60_000).contains(&self.lease_ms) {
            return Err("fleet.lease_ms must be between 300 and 60000".into());
        }
        if self.integrate_interval_ms == 0 || self.integrate_interval_ms > self.lease_ms / 3 {
            return Err(
                "fleet.integrate_interval_ms must be at least 1 and at most lease_ms / 3".into(),
            );
        }
        if self.max_integration_batch == 0 || self.max_integration_batch > 100_000 {
            return Err("fleet.max_integration_batch must be between 1 and 100000".into());
        }
        if self.answer_timeout_ms < self.lease_ms {
            return Err(
                "fleet.answer_timeout_ms must be at least lease_ms (a failover must fit in it)"
                    .into(),
            );
        }
        Ok(())
    }
}

/// `[testing]`: benchmark aids that change how fast the hardware is, never what is signed.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestingConfig {
    /// Limit the backend to this many signatures a second, one at a time: an emulated
    /// discrete TPM (`backend::throttle`). Absent: the backend's own speed.
    #[serde(default)]
    pub emulate_signatures_per_second: Option<u32>,
    /// With `[log_token]`: limit only the actors' token, not the log token (in a fleet a
    /// network HSM, not the host's TPM). Default false: both.
    #[serde(default)]
    pub emulate_actors_token_only: bool,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LedgerConfig {
    /// The log's origin line in checkpoints (and the checkpoint key's name), fixed for the
    /// life of the log. Default: `actseal/<token serial>`.
    #[serde(default)]
    pub origin: Option<String>,
    /// How long the sequencer gathers requests into one batch (one commit, one checkpoint)
    /// after the first arrives: 0 (default) takes only what is already waiting. At most 1000,
    /// so a checkpoint is signed at least every second while entries arrive.
    #[serde(default)]
    pub batch_window_ms: u64,
    /// How far (seconds) the clock may step back behind the log's newest entry time before the
    /// daemon refuses to sign (UNAVAILABLE); within it, entries keep the newest time
    /// (FORMAT.md §11.4). Default 300.
    #[serde(default)]
    pub max_clock_step_back_s: Option<u64>,
    /// Threads that make hardware signing calls in parallel (1–64, default 4).
    #[serde(default)]
    pub signing_threads: Option<usize>,
    /// How long (ms) a hardware call may take before its request is answered UNAVAILABLE
    /// (100–60000, default 5000).
    #[serde(default)]
    pub hardware_timeout_ms: Option<u64>,
    /// Most receipts under one batch statement (1–4096, default 256).
    #[serde(default)]
    pub max_batch_size: Option<usize>,
    /// Actors whose requests are signed in batch mode (`[[ledger.batch]]`); default none.
    #[serde(default)]
    pub batch: Vec<BatchRuleConfig>,
    /// The log on PostgreSQL: `postgres://user@host:port/database` (no password in it).
    /// Absent: SQLite in the state directory (docs/CONFIG.md `[ledger]`).
    #[serde(default)]
    pub url: Option<String>,
    /// The file holding the PostgreSQL password (owner-only, one line).
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// PEM CA certificate(s) the PostgreSQL server's certificate must chain to; set, the
    /// connection requires TLS and verifies the server's name.
    #[serde(default)]
    pub tls_ca_file: Option<PathBuf>,
}

/// `[[ledger.batch]]`: the requests for these actors that arrive within `window_ms` of the
/// first are signed as one batch (one hardware signature over a Merkle root).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchRuleConfig {
    /// Actor patterns, as in the policy's `actors`.
    pub actors: Vec<String>,
    /// How long a window stays open after its first request (1–1000 ms).
    pub window_ms: u64,
}

impl LedgerConfig {
    /// Checks the PostgreSQL keys: they need `url`, and the url no password.
    fn check_location(&self) -> Result<(), String> {
        match &self.url {
            None if self.password_file.is_some() || self.tls_ca_file.is_some() => Err(
                "ledger.password_file and ledger.tls_ca_file need ledger.url (PostgreSQL)".into(),
            ),
            None => Ok(()),
            Some(url) if !url.starts_with("postgres://") && !url.starts_with("postgresql://") => {
                Err("ledger.url must be a postgres:// URL".into())
            }
            Some(url) => match url.parse::<postgres::Config>() {
                Err(e) => Err(format!("ledger.url does not parse: {e}")),
                Ok(parsed) if parsed.get_password().is_some() => Err(
                    "ledger.url holds a password: put it in ledger.password_file instead".into(),
                ),
                Ok(_) => Ok(()),
            },
        }
    }

    /// The sequencer's signing settings, defaults filled in.
    pub fn signing_settings(&self) -> crate::server::sequencer::SigningSettings {
        crate::server::sequencer::SigningSettings {
            fleet: None,
            batch_window: std::time::Duration::from_millis(self.batch_window_ms),
            threads: self.signing_threads.unwrap_or(4),
            hardware_timeout: std::time::Duration::from_millis(
                self.hardware_timeout_ms.unwrap_or(5000),
            ),
            batching: crate::server::sequencer::BatchRules {
                rules: self
                    .batch
                    .iter()
                    .map(|rule| {
                        let patterns = rule
                            .actors
                            .iter()
                            .filter_map(|a| crate::server::policy::Pattern::parse(a).ok())
                            .collect();
                        (patterns, std::time::Duration::from_millis(rule.window_ms))
                    })
                    .collect(),
                max_size: self.max_batch_size.unwrap_or(256),
            },
        }
    }

    fn check_signing(&self) -> Result<(), String> {
        if self.signing_threads.is_some_and(|n| !(1..=64).contains(&n)) {
            return Err("ledger.signing_threads must be 1 to 64".into());
        }
        if self
            .hardware_timeout_ms
            .is_some_and(|ms| !(100..=60_000).contains(&ms))
        {
            return Err("ledger.hardware_timeout_ms must be 100 to 60000".into());
        }
        if self
            .max_batch_size
            .is_some_and(|n| !(1..=4096).contains(&n))
        {
            return Err("ledger.max_batch_size must be 1 to 4096".into());
        }
        for rule in &self.batch {
            if !(1..=1000).contains(&rule.window_ms) {
                return Err("ledger.batch.window_ms must be 1 to 1000".into());
            }
            if rule.actors.is_empty() {
                return Err("ledger.batch.actors must name at least one actor pattern".into());
            }
            for actor in &rule.actors {
                crate::server::policy::Pattern::parse(actor)
                    .map_err(|e| format!("ledger.batch.actors: {e}"))?;
            }
        }
        Ok(())
    }

    pub fn max_clock_step_back_s(&self) -> u64 {
        self.max_clock_step_back_s
            .unwrap_or(crate::server::clock::DEFAULT_MAX_STEP_BACK_S)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Unix socket to listen on.
    #[serde(default = "default_socket")]
    pub socket: PathBuf,
    /// Permission bits of the socket file.
    #[serde(default = "default_socket_mode")]
    pub socket_mode: u32,
    /// Optional TCP listener: mTLS (`tls`) unless `tcp_insecure_loopback`.
    #[serde(default)]
    pub tcp: Option<SocketAddr>,
    /// Serve `tcp` without TLS or caller authentication: loopback development only.
    #[serde(default)]
    pub tcp_insecure_loopback: bool,
    /// TLS of the TCP listener: server certificate and key, the CAs of client certificates.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// The policy file: who may sign as which actor, and who administers keys.
    #[serde(default = "default_policy")]
    pub policy: PathBuf,
    /// Prometheus metrics over plain HTTP, on a loopback address.
    #[serde(default)]
    pub metrics: Option<SocketAddr>,
    /// Connection and stream limits, timeouts (each listener has its own counts).
    #[serde(default)]
    pub limits: LimitsConfig,
}

/// What one caller, or all of them, may hold of the daemon (docs/CONFIG.md, `server.limits`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Open connections per listener; default: the open-files limit less a reserve.
    #[serde(default)]
    pub max_connections: Option<usize>,
    /// Open connections per caller (uid on the Unix socket, IP address on TCP).
    #[serde(default = "default_per_caller")]
    pub max_connections_per_caller: usize,
    /// Concurrent requests (HTTP/2 streams) per connection.
    #[serde(default = "default_streams")]
    pub max_concurrent_streams: u32,
    /// Time from accept to the first complete request (TLS handshake and headers included).
    #[serde(default = "default_header_timeout")]
    pub header_timeout_ms: u64,
    /// Time a connection may stay open with no request in flight.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout_ms: u64,
    /// Actions of `SignStream` in flight per caller, over all its streams.
    #[serde(default = "default_stream_actions")]
    pub max_stream_actions_in_flight: usize,
}

fn default_stream_actions() -> usize {
    64
}

fn default_per_caller() -> usize {
    64
}

fn default_streams() -> u32 {
    32
}

fn default_header_timeout() -> u64 {
    10_000
}

fn default_idle_timeout() -> u64 {
    120_000
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_connections: None,
            max_connections_per_caller: default_per_caller(),
            max_concurrent_streams: default_streams(),
            header_timeout_ms: default_header_timeout(),
            idle_timeout_ms: default_idle_timeout(),
            max_stream_actions_in_flight: default_stream_actions(),
        }
    }
}

impl LimitsConfig {
    fn check(&self) -> Result<(), String> {
        let positive = [
            ("max_connections", self.max_connections.unwrap_or(1) as u64),
            (
                "max_connections_per_caller",
                self.max_connections_per_caller as u64,
            ),
            (
                "max_concurrent_streams",
                u64::from(self.max_concurrent_streams),
            ),
            ("header_timeout_ms", self.header_timeout_ms),
            ("idle_timeout_ms", self.idle_timeout_ms),
            (
                "max_stream_actions_in_flight",
                self.max_stream_actions_in_flight as u64,
            ),
        ];
        match positive.iter().find(|(_, v)| *v == 0) {
            Some((key, _)) => Err(format!("server.limits.{key} must be at least 1")),
            None => Ok(()),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The server's certificate (PEM), followed by its intermediates.
    pub cert: PathBuf,
    /// The server's private key (PEM, PKCS#8 or SEC1). Keep it mode 0600.
    pub key: PathBuf,
    /// CA certificates (PEM files) that client certificates must chain to.
    pub client_ca: Vec<PathBuf>,
}

fn default_policy() -> PathBuf {
    PathBuf::from(DEFAULT_POLICY_PATH)
}

fn default_socket() -> PathBuf {
    PathBuf::from(DEFAULT_SOCKET_PATH)
}

fn default_socket_mode() -> u32 {
    0o660
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            socket: default_socket(),
            socket_mode: default_socket_mode(),
            tcp: None,
            tcp_insecure_loopback: false,
            tls: None,
            policy: default_policy(),
            metrics: None,
            limits: LimitsConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateConfig {
    /// Holds `actseal.db` (keys and receipts) and `device.crt`.
    pub dir: PathBuf,
}

impl StateConfig {
    pub fn database(&self) -> PathBuf {
        self.dir.join("actseal.db")
    }

    pub fn device_certificate(&self) -> PathBuf {
        self.dir.join("device.crt")
    }

    /// The enrolled TPM's identity (EK and AK Names), written by `actseal enroll`.
    pub fn tpm_identity(&self) -> PathBuf {
        self.dir.join("tpm-identity.json")
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pkcs11Config {
    pub module: PathBuf,
    #[serde(default)]
    pub token_label: Option<String>,
    #[serde(default)]
    pub token_serial: Option<String>,
    pub pin: PinSource,
    #[serde(default = "default_sessions")]
    pub sessions: usize,
    #[serde(default = "default_device_key_label")]
    pub device_key_label: String,
}

/// `[log_token]`: a token of the `[pkcs11]` module that holds the log key and the log head
/// instead of the actors' token; several daemons may share it (a network HSM partition).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogTokenConfig {
    #[serde(default)]
    pub token_label: Option<String>,
    #[serde(default)]
    pub token_serial: Option<String>,
    pub pin: PinSource,
    #[serde(default = "default_sessions")]
    pub sessions: usize,
}

impl LogTokenConfig {
    pub fn token_selector(&self) -> Result<TokenSelector, String> {
        match (&self.token_label, &self.token_serial) {
            (Some(label), None) => Ok(TokenSelector::Label(label.clone())),
            (None, Some(serial)) => Ok(TokenSelector::Serial(serial.clone())),
            _ => Err("log_token: set exactly one of token_label and token_serial".into()),
        }
    }

    /// The settings to open it with, on the `[pkcs11]` module. It has no device key: the
    /// actors' token's device key attests the log key.
    pub fn settings(&self, pkcs11: &Pkcs11Config) -> Result<Pkcs11Settings, String> {
        Ok(Pkcs11Settings {
            module: pkcs11.module.clone(),
            token: self.token_selector()?,
            pin: self.pin.clone(),
            sessions: self.sessions,
            device_key_label: pkcs11.device_key_label.clone(),
        })
    }

    fn check(&self, backend: &BackendConfig<'_>) -> Result<(), String> {
        self.token_selector()?;
        if self.sessions == 0 || self.sessions > 256 {
            return Err("log_token.sessions must be between 1 and 256".into());
        }
        match backend {
            BackendConfig::Pkcs11(_) => Ok(()),
            BackendConfig::Tpm(_) => Err(
                "[log_token] is a token of the [pkcs11] module; a TPM daemon keeps its log key in the TPM"
                    .into(),
            ),
        }
    }
}

/// A TPM 2.0 reached through a TCTI.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TpmConfig {
    /// `device:/dev/tpmrm0` (production: the kernel's resource manager) or
    /// `swtpm:host=127.0.0.1,port=N` (tests). A `swtpm:path=` socket is not supported.
    pub tcti: String,
    /// Transient objects the daemon may keep loaded at once, the storage primary included
    /// (at least 3; swtpm holds 3, `/dev/tpmrm0` swaps objects so more is fine there).
    #[serde(default = "default_max_objects")]
    pub max_objects: usize,
}

fn default_max_objects() -> usize {
    3
}

impl TpmConfig {
    pub fn settings(&self) -> Result<TpmSettings, String> {
        let tcti = self.tcti.trim();
        let ok = match tcti.split_once(':') {
            Some(("device", path)) => !path.is_empty(),
            Some(("swtpm", rest)) => !rest.contains("path="),
            _ => false,
        };
        if !ok {
            return Err(format!(
                "tpm.tcti {tcti:?}: use \"device:/dev/tpmrm0\" or \"swtpm:host=127.0.0.1,port=N\""
            ));
        }
        if !(3..=64).contains(&self.max_objects) {
            return Err("tpm.max_objects must be between 3 and 64".into());
        }
        Ok(TpmSettings {
            tcti: tcti.into(),
            max_objects: self.max_objects,
            identity: None,
        })
    }
}

/// The configured backend.
pub enum BackendConfig<'a> {
    Pkcs11(&'a Pkcs11Config),
    Tpm(&'a TpmConfig),
}

impl Config {
    /// The one configured backend.
    pub fn backend(&self) -> Result<BackendConfig<'_>, String> {
        match (&self.pkcs11, &self.tpm) {
            (Some(p), None) => Ok(BackendConfig::Pkcs11(p)),
            (None, Some(t)) => Ok(BackendConfig::Tpm(t)),
            _ => Err("configure exactly one backend: [pkcs11] or [tpm]".into()),
        }
    }

    /// The PKCS#11 section, for commands that only a PKCS#11 token serves.
    pub fn pkcs11(&self) -> Result<&Pkcs11Config, String> {
        self.pkcs11
            .as_ref()
            .ok_or_else(|| "this needs a [pkcs11] backend".into())
    }
}

fn default_sessions() -> usize {
    4
}

fn default_device_key_label() -> String {
    "actseal-device".into()
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    #[serde(default)]
    pub format: LogFormat,
    /// A `tracing` filter such as `info` or `actseal=debug`.
    #[serde(default = "default_log_level")]
    pub level: String,
}

fn default_log_level() -> String {
    "info".into()
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Text,
            level: default_log_level(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("{path}: {reason}")]
    Invalid { path: String, reason: String },
}

impl Config {
    /// Where the ledger lives: PostgreSQL when `[ledger] url` is set, else SQLite in the
    /// state directory.
    pub fn ledger_location(&self) -> crate::ledger::store::LedgerLocation {
        use crate::ledger::store::{LedgerLocation, PgSettings};
        match &self.ledger.url {
            None => LedgerLocation::Sqlite(self.state.database()),
            Some(url) => LedgerLocation::Postgres(PgSettings {
                tls_ca_file: self.ledger.tls_ca_file.clone(),
                ..PgSettings::new(url, self.ledger.password_file.clone())
            }),
        }
    }

    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        Self::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let invalid = |reason: String| ConfigError::Invalid {
            path: path.display().to_string(),
            reason,
        };
        let config: Config = toml::from_str(text).map_err(|e| invalid(e.to_string()))?;
        if let Some(log_token) = &config.log_token {
            log_token
                .check(&config.backend().map_err(invalid)?)
                .map_err(invalid)?;
        }
        match config.backend().map_err(invalid)? {
            BackendConfig::Pkcs11(pkcs11) => {
                pkcs11.token_selector().map_err(invalid)?;
                if pkcs11.sessions == 0 || pkcs11.sessions > 256 {
                    return Err(invalid("pkcs11.sessions must be between 1 and 256".into()));
                }
            }
            BackendConfig::Tpm(tpm) => {
                tpm.settings().map_err(invalid)?;
            }
        }
        if config.ledger.batch_window_ms > 1000 {
            return Err(invalid(
                "ledger.batch_window_ms must be at most 1000 (a checkpoint at least every second)"
                    .into(),
            ));
        }
        config.ledger.check_signing().map_err(invalid)?;
        config.ledger.check_location().map_err(invalid)?;
        config.server.check().map_err(invalid)?;
        config.anchor.check().map_err(invalid)?;
        if let Some(fleet) = &config.fleet {
            fleet.check().map_err(invalid)?;
            if config.log_token.is_none() {
                return Err(invalid(
                    "[fleet] needs a [log_token]: the log key every node's integrator signs with"
                        .into(),
                ));
            }
        }
        Ok(config)
    }
}

impl ServerConfig {
    /// The listener rules: TCP is mTLS, or plain on loopback when explicitly asked for;
    /// metrics only on loopback.
    fn check(&self) -> Result<(), String> {
        self.limits.check()?;
        if self.socket_mode & !0o777 != 0 {
            return Err(format!(
                "server.socket_mode {:#o} holds more than permission bits",
                self.socket_mode
            ));
        }
        match (&self.tcp, &self.tls, self.tcp_insecure_loopback) {
            (None, Some(_), _) => {
                return Err("server.tls is set but server.tcp is not: name the address".into());
            }
            (None, None, true) => {
                return Err("server.tcp_insecure_loopback is set but server.tcp is not".into());
            }
            (Some(_), Some(_), true) => {
                return Err(
                    "server.tcp_insecure_loopback and server.tls exclude each other: \
                     the TCP listener is either mTLS or plain loopback development"
                        .into(),
                );
            }
            (Some(addr), None, false) => {
                return Err(format!(
                    "server.tcp = \"{addr}\" needs server.tls (mTLS: cert, key, client_ca); \
                     plain TCP without caller authentication only with \
                     server.tcp_insecure_loopback = true on a loopback address"
                ));
            }
            (Some(addr), None, true) if !addr.ip().is_loopback() => {
                return Err(format!(
                    "server.tcp = \"{addr}\" is not a loopback address: \
                     server.tcp_insecure_loopback serves only 127.0.0.0/8 or ::1"
                ));
            }
            _ => {}
        }
        if let Some(tls) = &self.tls
            && tls.client_ca.is_empty()
        {
            return Err("server.tls.client_ca must name at least one CA file".into());
        }
        if let Some(addr) = &self.metrics
            && !addr.ip().is_loopback()
        {
            return Err(format!(
                "server.metrics = \"{addr}\" is not a loopback address (metrics name actors)"
            ));
        }
        Ok(())
    }
}

impl Pkcs11Config {
    pub fn token_selector(&self) -> Result<TokenSelector, String> {
        match (&self.token_label, &self.token_serial) {
            (Some(label), None) => Ok(TokenSelector::Label(label.clone())),
            (None, Some(serial)) => Ok(TokenSelector::Serial(serial.clone())),
            _ => Err("pkcs11: set exactly one of token_label and token_serial".into()),
        }
    }

    pub fn settings(&self) -> Result<Pkcs11Settings, String> {
        Ok(Pkcs11Settings {
            module: self.module.clone(),
            token: self.token_selector()?,
            pin: self.pin.clone(),
            sessions: self.sessions,
            device_key_label: self.device_key_label.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
        [server]
        socket = "/tmp/a.sock"
        [state]
        dir = "/tmp/state"
        [pkcs11]
        module = "/usr/lib/softhsm/libsofthsm2.so"
        token_label = "actseal"
        pin = { file = "/etc/actseal/pin" }
    "#;

    const LOG_TOKEN: &str =
        "[log_token]\ntoken_label = \"log\"\npin = { file = \"/etc/actseal/log.pin\" }\n";

    #[test]
    fn fleet_mode_needs_a_log_token_and_a_sane_lease() {
        let parse = |extra: &str| Config::parse(&format!("{GOOD}\n{extra}"), Path::new("t.toml"));
        let fleet = "[fleet]\nnode = \"signer-a\"\n";
        let e = parse(fleet).unwrap_err().to_string();
        assert!(e.contains("[log_token]"), "{e}");
        let config = parse(&format!("{fleet}{LOG_TOKEN}")).unwrap();
        let settings = config.fleet.unwrap().settings();
        assert_eq!(settings.lease, std::time::Duration::from_millis(3000));
        assert_eq!(
            settings.integrate_interval,
            std::time::Duration::from_millis(5)
        );
        for bad in [
            "[fleet]\nnode = \"a b\"\n",
            "[fleet]\nnode = \"\"\n",
            "[fleet]\nnode = \"a\"\nlease_ms = 100\n",
            "[fleet]\nnode = \"a\"\nlease_ms = 3000\nintegrate_interval_ms = 2000\n",
            "[fleet]\nnode = \"a\"\nmax_integration_batch = 0\n",
            "[fleet]\nnode = \"a\"\nlease_ms = 3000\nanswer_timeout_ms = 1000\n",
        ] {
            let e = parse(&format!("{bad}{LOG_TOKEN}")).unwrap_err().to_string();
            assert!(e.contains("fleet."), "{bad}: {e}");
        }
    }

    #[test]
    fn parses_a_minimal_config_with_defaults() {
        let config = Config::parse(GOOD, Path::new("t.toml")).unwrap();
        let pkcs11 = config.pkcs11.as_ref().unwrap();
        assert_eq!(pkcs11.sessions, 4);
        assert_eq!(pkcs11.pin, PinSource::File("/etc/actseal/pin".into()));
        assert_eq!(config.server.socket_mode, 0o660);
    }

    #[test]
    fn limits_have_defaults_and_none_may_be_zero() {
        let config = Config::parse(GOOD, Path::new("t.toml")).unwrap();
        let limits = &config.server.limits;
        assert_eq!(limits.max_connections, None);
        assert_eq!(limits.max_connections_per_caller, 64);
        assert_eq!(limits.max_concurrent_streams, 32);
        assert_eq!(
            (limits.header_timeout_ms, limits.idle_timeout_ms),
            (10_000, 120_000)
        );
        let set = format!("{GOOD}\n[server.limits]\nmax_connections = 10\nidle_timeout_ms = 5\n");
        let limits = Config::parse(&set, Path::new("t.toml"))
            .unwrap()
            .server
            .limits;
        assert_eq!(
            (limits.max_connections, limits.idle_timeout_ms),
            (Some(10), 5)
        );
        for key in [
            "max_connections",
            "max_connections_per_caller",
            "header_timeout_ms",
        ] {
            let zero = format!("{GOOD}\n[server.limits]\n{key} = 0\n");
            let err = Config::parse(&zero, Path::new("t.toml"))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(&format!("server.limits.{key} must be at least 1")),
                "{err}"
            );
        }
    }

    #[test]
    fn batch_rules_signing_threads_and_timeouts_are_checked() {
        let ok = format!(
            "{GOOD}\n[ledger]\nsigning_threads = 8\nhardware_timeout_ms = 800\nmax_batch_size = 64\n\
             [[ledger.batch]]\nactors = [\"spiffe://acme.example/agents/*\"]\nwindow_ms = 5\n"
        );
        let settings = Config::parse(&ok, Path::new("t.toml"))
            .unwrap()
            .ledger
            .signing_settings();
        assert_eq!(settings.threads, 8);
        assert_eq!(settings.hardware_timeout.as_millis(), 800);
        assert_eq!(settings.batching.max_size, 64);
        let window = settings.batching.window("spiffe://acme.example/agents/pay");
        assert_eq!(window.map(|w| w.as_millis()), Some(5));
        assert!(
            settings
                .batching
                .window("spiffe://other.example/x")
                .is_none()
        );
        let defaults = Config::parse(GOOD, Path::new("t.toml"))
            .unwrap()
            .ledger
            .signing_settings();
        assert_eq!((defaults.threads, defaults.batching.max_size), (4, 256));
        assert!(
            defaults
                .batching
                .window("spiffe://acme.example/agents/pay")
                .is_none()
        );
        for (bad, says) in [
            ("signing_threads = 0", "signing_threads"),
            ("hardware_timeout_ms = 10", "hardware_timeout_ms"),
            ("max_batch_size = 5000", "max_batch_size"),
            (
                "[[ledger.batch]]\nactors = [\"a\"]\nwindow_ms = 0",
                "window_ms",
            ),
            ("[[ledger.batch]]\nactors = []\nwindow_ms = 5", "actors"),
            (
                "[[ledger.batch]]\nactors = [\"a***\"]\nwindow_ms = 5",
                "actors",
            ),
        ] {
            let text = format!("{GOOD}\n[ledger]\n{bad}\n");
            let err = Config::parse(&text, Path::new("t.toml"))
                .unwrap_err()
                .to_string();
            assert!(err.contains(says), "{bad}: {err}");
        }
    }

    #[test]
    fn batch_window_is_bounded_by_a_second() {
        let ok = format!("{GOOD}\n[ledger]\nbatch_window_ms = 1000\n");
        assert_eq!(
            Config::parse(&ok, Path::new("t.toml"))
                .unwrap()
                .ledger
                .batch_window_ms,
            1000
        );
        let too_long = format!("{GOOD}\n[ledger]\nbatch_window_ms = 1001\n");
        let err = Config::parse(&too_long, Path::new("t.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("at most 1000"), "{err}");
    }

    #[test]
    fn rejects_unknown_keys_and_both_token_selectors() {
        let unknown = GOOD.replace("[state]", "[state]\nbogus = 1");
        assert!(Config::parse(&unknown, Path::new("t.toml")).is_err());
        let both = GOOD.replace("token_label", "token_serial = \"1\"\ntoken_label");
        let err = Config::parse(&both, Path::new("t.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("exactly one"), "{err}");
    }

    #[test]
    fn exactly_one_backend_and_a_tcp_tcti() {
        let tpm = r#"
            [state]
            dir = "/tmp/state"
            [tpm]
            tcti = "swtpm:host=127.0.0.1,port=2321"
        "#;
        let config = Config::parse(tpm, Path::new("t.toml")).unwrap();
        assert!(matches!(config.backend(), Ok(BackendConfig::Tpm(_))));
        let both = format!("{GOOD}\n[tpm]\ntcti = \"device:/dev/tpmrm0\"\n");
        let err = Config::parse(&both, Path::new("t.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("exactly one backend"), "{err}");
        let unix = tpm.replace("host=127.0.0.1,port=2321", "path=/tmp/s");
        assert!(Config::parse(&unix, Path::new("t.toml")).is_err());
    }

    fn server_error(extra: &str) -> String {
        let text = GOOD.replace("[server]", &format!("[server]\n{extra}"));
        match Config::parse(&text, Path::new("t.toml")) {
            Ok(_) => String::new(),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn tcp_is_mtls_or_explicit_loopback_development() {
        let tls = "[server.tls]\ncert = \"/c\"\nkey = \"/k\"\nclient_ca = [\"/ca\"]\n[state]";
        let with_tls = |extra: &str| {
            let text = GOOD
                .replace("[server]", &format!("[server]\n{extra}"))
                .replace("[state]", tls);
            Config::parse(&text, Path::new("t.toml")).map(|_| ())
        };
        assert!(with_tls("tcp = \"0.0.0.0:7443\"").is_ok());
        assert!(
            with_tls("")
                .unwrap_err()
                .to_string()
                .contains("server.tcp is not")
        );
        assert!(
            with_tls("tcp = \"127.0.0.1:1\"\ntcp_insecure_loopback = true")
                .unwrap_err()
                .to_string()
                .contains("exclude each other")
        );
        assert!(server_error("tcp = \"127.0.0.1:7443\"").contains("needs server.tls"));
        assert!(server_error("tcp = \"127.0.0.1:7443\"\ntcp_insecure_loopback = true").is_empty());
        assert!(server_error("tcp = \"[::1]:7443\"\ntcp_insecure_loopback = true").is_empty());
        assert!(
            server_error("tcp = \"0.0.0.0:7443\"\ntcp_insecure_loopback = true")
                .contains("not a loopback address")
        );
        assert!(server_error("tcp_insecure_loopback = true").contains("server.tcp is not"));
        assert!(server_error("metrics = \"10.0.0.1:9464\"").contains("not a loopback"));
        assert!(server_error("metrics = \"127.0.0.1:9464\"").is_empty());
        assert!(server_error("socket_mode = 0o4777").contains("permission bits"));
    }

    #[test]
    fn log_token_needs_one_selector_a_session_bound_and_a_pkcs11_backend() {
        let with = |section: &str, base: &str| {
            Config::parse(
                &format!("{base}\n[log_token]\n{section}"),
                Path::new("t.toml"),
            )
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
        };
        let pin = "pin = { file = \"/etc/actseal/log.pin\" }";
        assert!(with(&format!("token_label = \"log\"\n{pin}"), GOOD).is_empty());
        let config = Config::parse(
            &format!("{GOOD}\n[log_token]\ntoken_serial = \"42\"\n{pin}"),
            Path::new("t.toml"),
        )
        .unwrap();
        let log_token = config.log_token.as_ref().unwrap();
        let settings = log_token.settings(config.pkcs11.as_ref().unwrap()).unwrap();
        assert_eq!(settings.token, TokenSelector::Serial("42".into()));
        assert_eq!(settings.module, config.pkcs11.as_ref().unwrap().module);
        assert!(with(pin, GOOD).contains("exactly one of token_label and token_serial"));
        assert!(
            with(
                &format!("token_label = \"a\"\ntoken_serial = \"b\"\n{pin}"),
                GOOD
            )
            .contains("exactly one")
        );
        assert!(
            with(&format!("token_label = \"a\"\nsessions = 0\n{pin}"), GOOD)
                .contains("log_token.sessions")
        );
        assert!(with("token_label = \"a\"", GOOD).contains("pin"));
        let tpm = GOOD.replace(
            "[pkcs11]\n        module = \"/usr/lib/softhsm/libsofthsm2.so\"\n        token_label = \"actseal\"\n        pin = { file = \"/etc/actseal/pin\" }",
            "[tpm]\n        tcti = \"device:/dev/tpmrm0\"",
        );
        assert!(tpm.contains("[tpm]"), "{tpm}");
        assert!(
            with(&format!("token_label = \"a\"\n{pin}"), &tpm)
                .contains("[log_token] is a token of the [pkcs11] module")
        );
    }
}
