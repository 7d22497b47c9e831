//! The `actseal` command line: the daemon, its clients, the operator's tools, the verifier
//! and the demo. Built without the `daemon` feature, only the offline commands: the verifier.

#[cfg(feature = "daemon")]
mod actor;
#[cfg(feature = "daemon")]
mod client;
#[cfg(feature = "daemon")]
mod demo;
mod forensics;
#[cfg(feature = "daemon")]
mod migrate;
mod monitor;
mod operator;
pub(crate) mod out;
#[cfg(feature = "daemon")]
mod stream;

use std::{path::PathBuf, process::ExitCode};

#[cfg(feature = "daemon")]
use clap::Args;
use clap::{Parser, Subcommand};

#[cfg(feature = "daemon")]
pub(crate) use client::connect;
#[cfg(feature = "daemon")]
pub use client::{ExpectedKey, check_attestation, connect_unix, expected_key};

#[cfg(feature = "daemon")]
use crate::config::{DEFAULT_CONFIG_PATH, DEFAULT_SOCKET_PATH};

#[derive(Parser)]
#[command(
    name = "actseal",
    version,
    about = "Per-action proof for non-human identities"
)]
#[cfg_attr(not(feature = "daemon"), command(after_help = VERIFIER_ONLY))]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the signing daemon.
    #[cfg(feature = "daemon")]
    Serve {
        #[arg(long, default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
        /// Only check the configuration file and exit.
        #[arg(long)]
        check_config: bool,
    },
    /// Manage actor keys through the daemon.
    #[cfg(feature = "daemon")]
    #[command(subcommand)]
    Key(KeyCommand),
    /// Move an actor between fleet nodes (README "fleet").
    #[cfg(feature = "daemon")]
    #[command(subcommand)]
    Actor(actor::ActorCommand),
    /// Sign an action as an actor and write its proof bundle.
    #[cfg(feature = "daemon")]
    Sign(SignArgs),
    /// Stand in for an MCP server (stdio): forward its messages unchanged and have the
    /// daemon seal every tool call's intent and outcome.
    #[cfg(feature = "daemon")]
    McpProxy(McpProxyArgs),
    /// Verify a proof bundle offline.
    Verify {
        /// The bundle (JSON) to verify; several bundles are verified in one run, what they
        /// share checked once (without --document), one line each.
        #[arg(required = true)]
        bundle: Vec<PathBuf>,
        /// The operator's trust anchor: the CA certificate (PEM).
        #[arg(long)]
        trust: PathBuf,
        /// The action document, to check that the receipt is about it.
        #[arg(long)]
        document: Option<PathBuf>,
        /// Require the bundle to come from the log with this origin.
        #[arg(long)]
        log_origin: Option<String>,
        /// Verify as of this time (RFC 3339) instead of the clock: the receipt must be dated
        /// no later. Certificates are still checked when their evidence was made (signedAt).
        #[arg(long, value_parser = parse_time)]
        at: Option<i64>,
        /// A witness policy (FORMAT.md §14.3): the bundle's checkpoint must carry valid
        /// cosignatures of witnesses meeting its quorum.
        #[arg(long)]
        witness_policy: Option<PathBuf>,
        /// Timestamp authorities' anchors (PEM): require an RFC 3161 token in log.timestamps,
        /// under one of them, over the checkpoint and not before the receipt's signedAt.
        #[arg(long)]
        tsa_trust: Option<PathBuf>,
    },
    /// Check that an older signed checkpoint's tree is a prefix of a newer one's, offline; or,
    /// with --fork-evidence, that a log forked.
    VerifyLog {
        /// A consistency proof written by `actseal log consistency`; one end must be the
        /// bundle's own checkpoint.
        #[arg(
            required_unless_present = "fork_evidence",
            conflicts_with = "fork_evidence"
        )]
        proof: Option<PathBuf>,
        /// Any bundle from the log: it names (and attests) the log key.
        #[arg(long, required_unless_present = "fork_evidence")]
        bundle: Option<PathBuf>,
        /// Fork evidence written by `actseal monitor`: exit 0 when it proves a fork.
        #[arg(long)]
        fork_evidence: Option<PathBuf>,
        #[arg(long)]
        trust: PathBuf,
    },
    /// Keep the checkpoints seen per log and report any two that are not consistent, writing
    /// the fork evidence (exit 1 on a fork).
    Monitor {
        /// Directory of the checkpoints seen, per log (created if absent).
        #[arg(long)]
        state: PathBuf,
        #[arg(long)]
        trust: PathBuf,
        /// Bundles, checkpoint notes or consistency proofs to add (a log's first bundle
        /// attests its key).
        inputs: Vec<PathBuf>,
        /// Also copy the first fork's evidence here.
        #[arg(long)]
        evidence: Option<PathBuf>,
        /// Also ask the daemon for its newest checkpoint and, for each size seen, its own
        /// checkpoint of that size with a consistency proof.
        #[cfg(feature = "daemon")]
        #[arg(long)]
        fetch: bool,
        #[cfg(feature = "daemon")]
        #[command(flatten)]
        connection: Connection,
    },
    /// Replay a whole exported log offline and confirm every entry.
    Audit {
        /// A log export written by `actseal log export`.
        export: PathBuf,
        #[arg(long)]
        trust: PathBuf,
    },
    /// Every receipt of an actor, action type or time range in exports and kept bundles,
    /// each verified, with the gaps in each actor's sequence and retained documents matched.
    Actions {
        #[command(flatten)]
        selection: forensics::Selection,
        /// JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Write one self-contained HTML report (a timeline per actor, or of one bundle).
    Report {
        #[command(flatten)]
        selection: forensics::Selection,
        /// The HTML file to write.
        #[arg(long)]
        out: PathBuf,
    },
    /// The daemon's log: checkpoints, proofs, export, recovery (also `actseal ledger …`).
    #[cfg(feature = "daemon")]
    #[command(subcommand, alias = "ledger")]
    Log(LogCommand),
    /// The operator's certificate authority.
    #[cfg(feature = "daemon")]
    #[command(subcommand)]
    Ca(CaCommand),
    /// The token's device key and certificate.
    #[cfg(feature = "daemon")]
    #[command(subcommand)]
    Device(DeviceCommand),
    /// Initialise a PKCS#11 token (PINs from files, never from the command line).
    #[cfg(feature = "daemon")]
    #[command(subcommand)]
    Token(TokenCommand),
    /// Enroll the TPM's attestation key: check the EK certificate against the TPM maker's
    /// CA, prove the AK is in that TPM (MakeCredential/ActivateCredential), have the
    /// operator CA issue the AK certificate and install it as the device certificate.
    #[cfg(feature = "daemon")]
    Enroll {
        #[arg(long, default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
        /// The operator CA directory (`actseal ca init`).
        #[arg(long)]
        ca_dir: PathBuf,
        /// PEM file with the TPM maker's CA certificates (root and intermediates).
        #[arg(long)]
        ek_ca: PathBuf,
        /// Validity of the AK certificate in days.
        #[arg(long, default_value_t = 365)]
        days: u32,
        /// Certify the AK for actor keys only, not for this host's log key (a fleet's signing
        /// node, whose log key lives elsewhere).
        #[arg(long)]
        no_log_key: bool,
    },
    /// A C2SP tlog-witness: cosigns checkpoints of the logs it is configured for.
    #[cfg(feature = "daemon")]
    #[command(subcommand)]
    Witness(WitnessCommand),
    /// Run the whole path on a fresh SoftHSM token: daemon, key, sign, verify.
    #[cfg(feature = "daemon")]
    Demo {
        /// Working directory for the demo's tokens, CA and state (a new temporary one if unset).
        #[arg(long)]
        workdir: Option<PathBuf>,
    },
    /// Any other command: in a verifier-only build, the daemon's, which it does not have.
    #[cfg(not(feature = "daemon"))]
    #[command(external_subcommand)]
    NotBuilt(Vec<String>),
}

/// What `--help` says, and what a daemon command answers, in a verifier-only build.
#[cfg(not(feature = "daemon"))]
const VERIFIER_ONLY: &str = "This actseal is the verifier only (built without the `daemon` feature): \
the daemon, its clients and the operator's tools need the default features \
(`cargo install --path . --locked`).";

/// How a client reaches the daemon.
#[cfg(feature = "daemon")]
#[derive(Args, Clone)]
pub struct Connection {
    /// The daemon's Unix socket.
    #[arg(long, env = "ACTSEAL_SOCKET", default_value = DEFAULT_SOCKET_PATH, global = true)]
    socket: PathBuf,
    /// A TCP endpoint instead: https://HOST:PORT (mTLS), or http://127.0.0.1:PORT for a
    /// development listener.
    #[arg(long, env = "ACTSEAL_ENDPOINT", global = true)]
    endpoint: Option<String>,
    /// CA certificate (PEM) that the daemon's server certificate must chain to (https).
    #[arg(long, env = "ACTSEAL_TLS_CA", global = true)]
    tls_ca: Option<PathBuf>,
    /// This client's certificate (PEM) for mTLS (https).
    #[arg(long, env = "ACTSEAL_TLS_CERT", global = true)]
    tls_cert: Option<PathBuf>,
    /// This client's private key (PEM file; never on the command line) for mTLS (https).
    #[arg(long, env = "ACTSEAL_TLS_KEY", global = true)]
    tls_key: Option<PathBuf>,
}

#[cfg(feature = "daemon")]
#[derive(Subcommand)]
enum KeyCommand {
    /// Generate a new key for an actor inside the backend.
    Create {
        #[arg(long)]
        actor: String,
        #[command(flatten)]
        connection: Connection,
    },
    /// List actor keys.
    List {
        #[arg(long)]
        actor: Option<String>,
        #[command(flatten)]
        connection: Connection,
    },
    /// Show an actor's key and its lineage.
    Show {
        #[arg(long)]
        actor: String,
        /// Key version; the active one if unset.
        #[arg(long, default_value_t = 0)]
        version: u32,
        #[command(flatten)]
        connection: Connection,
    },
    /// Ask for a fresh attestation of an actor key (TPM: TPM2_Certify binding a nonce) and,
    /// with --trust, verify it offline at once.
    Attest {
        #[arg(long)]
        actor: String,
        /// Key version; the active one if unset.
        #[arg(long, default_value_t = 0)]
        version: u32,
        /// A nonce (hex, up to 64 bytes) for the TPM to bind; TPM keys only.
        #[arg(long)]
        nonce: Option<String>,
        /// Trust anchor (PEM) to verify the attestation against. The attestation must be for
        /// --actor, the version asked for, and the key the daemon's key table holds for them
        /// (GetActorKey, a separate query), which must be --key-id when given.
        #[arg(long)]
        trust: Option<PathBuf>,
        /// The key id (hex SHA-256 of the SubjectPublicKeyInfo, as in bundles) expected, e.g.
        /// from a bundle or an audited export; checked with --trust.
        #[arg(long, requires = "trust")]
        key_id: Option<String>,
        /// Write the attestation JSON here.
        #[arg(long)]
        out: Option<PathBuf>,
        #[command(flatten)]
        connection: Connection,
    },
    /// Create the actor's next key version; the previous one signs the hand-over and retires.
    Rotate {
        #[arg(long)]
        actor: String,
        #[command(flatten)]
        connection: Connection,
    },
    /// Retire the actor's active key version: it signs nothing more, and its key is destroyed
    /// in the token or TPM (the retirement statement in the log says so).
    Retire {
        #[arg(long)]
        actor: String,
        #[arg(long)]
        version: u32,
        /// Keep the key in the hardware instead of destroying it (the log records "kept").
        #[arg(long)]
        keep_key: bool,
        #[command(flatten)]
        connection: Connection,
    },
    /// Register a key made on the token with other PKCS#11 tools.
    Adopt {
        #[arg(long)]
        actor: String,
        /// The private key's CKA_LABEL.
        #[arg(long, conflicts_with = "id", required_unless_present = "id")]
        label: Option<String>,
        /// The private key's CKA_ID, hex.
        #[arg(long)]
        id: Option<String>,
        #[command(flatten)]
        connection: Connection,
    },
}

#[cfg(feature = "daemon")]
#[derive(Args)]
struct SignArgs {
    /// The actor (with --stream: for input lines that name none).
    #[arg(long, required_unless_present = "stream")]
    actor: Option<String>,
    /// Action type, e.g. payment.initiate (with --stream: the default).
    #[arg(long = "type", required_unless_present = "stream")]
    action_type: Option<String>,
    /// The resource the action targets (with --stream: the default).
    #[arg(long, required_unless_present = "stream")]
    target: Option<String>,
    /// The action document; the daemon hashes it.
    #[arg(long, conflicts_with = "digest", required_unless_present_any = ["digest", "stream"])]
    document: Option<PathBuf>,
    /// The document's SHA-256 (hex), when the document stays with the caller.
    #[arg(long)]
    digest: Option<String>,
    /// Context entries, KEY=VALUE (repeatable).
    #[arg(long = "context", value_name = "KEY=VALUE")]
    context: Vec<String>,
    /// SHA-256 (hex) of the parent action's document, for a delegated action.
    #[arg(long)]
    parent: Option<String>,
    /// A client request id: retrying with the same id returns the same bundle.
    #[arg(long)]
    request_id: Option<String>,
    /// Where to write the bundle; standard output if unset.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Sign many actions over one stream: JSON lines on stdin, one result line each on
    /// stdout (src/cli/stream.rs, README "Signing many actions").
    #[arg(long)]
    stream: bool,
    /// With --stream: most actions outstanding at once (1–4096; keep it within the daemon's
    /// server.limits.max_stream_actions_in_flight).
    #[arg(long, default_value_t = 64, requires = "stream")]
    in_flight: usize,
    #[command(flatten)]
    connection: Connection,
}

/// `actseal mcp-proxy` (docs/CONFIG.md, "MCP proxy").
#[cfg(feature = "daemon")]
#[derive(Args)]
struct McpProxyArgs {
    /// The actor every tool call is sealed as (the agent's identity).
    #[arg(long)]
    actor: String,
    /// Store each bundle and its document as files in this directory.
    #[arg(long, value_name = "DIR", required_unless_present = "bundles_jsonl")]
    bundles_dir: Option<PathBuf>,
    /// Append each bundle and its document as one line to this JSON Lines file.
    #[arg(long, value_name = "FILE", conflicts_with = "bundles_dir")]
    bundles_jsonl: Option<PathBuf>,
    /// Tools whose calls are sealed: a name, or a prefix ending in `*` (repeatable).
    #[arg(long = "seal", value_name = "TOOL", default_value = "*")]
    seal: Vec<String>,
    /// When a call's intent cannot be sealed: refuse it with a JSON-RPC error, or forward it
    /// with a warning.
    #[arg(long, value_enum, default_value = "refuse")]
    on_seal_failure: crate::mcp::OnSealFailure,
    /// How long one seal may take before it counts as failed, in milliseconds.
    #[arg(long, default_value_t = 5000)]
    seal_timeout_ms: u64,
    #[command(flatten)]
    connection: Connection,
    /// The MCP server's command line, after `--`.
    #[arg(last = true, required = true, value_name = "SERVER")]
    command: Vec<String>,
}

#[cfg(feature = "daemon")]
#[derive(Subcommand)]
enum LogCommand {
    /// Print the newest signed checkpoint.
    Checkpoint {
        #[command(flatten)]
        connection: Connection,
    },
    /// Fetch an inclusion proof; for a receipt, write its bundle proved against the checkpoint.
    Proof {
        #[arg(long)]
        index: u64,
        /// Tree size to prove against (a checkpointed size); the newest if unset.
        #[arg(long, default_value_t = 0)]
        size: u64,
        #[arg(long)]
        out: PathBuf,
        /// Also write the proof as a C2SP tlog-proof@v1 file (index, inclusion proof, the
        /// checkpoint with its cosignatures).
        #[arg(long)]
        tlog_proof: Option<PathBuf>,
        #[command(flatten)]
        connection: Connection,
    },
    /// Fetch a consistency proof between two checkpointed sizes.
    Consistency {
        #[arg(long)]
        old: u64,
        /// The newest if unset.
        #[arg(long, default_value_t = 0)]
        new: u64,
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        connection: Connection,
    },
    /// Export the whole log from the state database (offline; no token needed).
    Export {
        #[arg(long, default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
    /// Copy a single-host SQLite log into an empty PostgreSQL database, byte for byte, and
    /// check the copy (`actseal ledger migrate --from sqlite:<path> --to postgres://…`).
    Migrate {
        /// `sqlite:<path of the state database>`.
        #[arg(long, conflicts_with = "config", required_unless_present = "config")]
        from: Option<String>,
        /// Or the daemon configuration whose SQLite ledger is copied (the daemon stopped).
        #[arg(long)]
        config: Option<PathBuf>,
        /// `postgres://user@host:port/database` of an empty database (no password in it).
        #[arg(long)]
        to: String,
        /// The file holding the PostgreSQL password.
        #[arg(long)]
        password_file: Option<PathBuf>,
        /// PEM CA certificate(s) for TLS to the server (TLS required when given).
        #[arg(long)]
        tls_ca_file: Option<PathBuf>,
    },
    /// Print the log's verifier key, `origin+hash+base64(0x02 || SPKI)` (C2SP signed-note),
    /// for witnesses and note verifiers (offline; no token needed).
    Vkey {
        #[arg(long, default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
    },
    /// Re-check the whole stored log from its first entry, rows behind the start-up check's
    /// watermark included (offline, read-only; no token needed).
    Check {
        #[arg(long, default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
    },
    /// Print the log head record the hardware holds (the log token's with `[log_token]`):
    /// tree size, root, request count (read-only; the daemon may run).
    Head {
        #[arg(long, default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
        /// Keep the token open and print a line each time the record changes.
        #[arg(long)]
        follow: bool,
    },
    /// Begin a new log after the daemon refused a lost, damaged or rolled-back database
    /// (offline, daemon stopped; README "When things go wrong"). Moves the database aside
    /// (never deletes it); the new log's first entry names the replaced log's head.
    Recover {
        #[arg(long, default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
        /// Required: the operator declares that the replaced log ends here.
        #[arg(long)]
        declare_fresh_start: bool,
        /// The new log's origin; it must differ from the replaced log's.
        #[arg(long)]
        origin: String,
    },
}

#[cfg(feature = "daemon")]
#[derive(Subcommand)]
enum WitnessCommand {
    /// Generate the witness's Ed25519 key in its token and print its verifier key.
    Init {
        #[arg(long)]
        config: PathBuf,
    },
    /// Print the witness's verifier key (`name+hash+base64`).
    Key {
        #[arg(long)]
        config: PathBuf,
    },
    /// Serve `add-checkpoint` until SIGTERM or SIGINT.
    Serve {
        #[arg(long)]
        config: PathBuf,
        /// Listen here instead of the configured address.
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
    },
}

#[cfg(feature = "daemon")]
#[derive(Subcommand)]
enum CaCommand {
    /// Create a CA: its key (in a PKCS#11 token, or a key file if asked) and certificate.
    Init {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value = "actseal operator CA")]
        subject: String,
        #[arg(long, default_value_t = 7300)]
        days: u32,
        /// PKCS#11 module holding the CA token.
        #[arg(long, required_unless_present = "key_file")]
        module: Option<PathBuf>,
        /// Label of the CA's own token.
        #[arg(long, required_unless_present = "key_file")]
        token_label: Option<String>,
        /// File holding the CA token's user PIN.
        #[arg(long, conflicts_with = "pin_env")]
        pin_file: Option<PathBuf>,
        /// Environment variable holding the CA token's user PIN.
        #[arg(long)]
        pin_env: Option<String>,
        /// Keep the CA key in this file instead of a token (software key: weaker).
        #[arg(long, conflicts_with_all = ["module", "token_label", "pin_file", "pin_env"])]
        key_file: Option<PathBuf>,
    },
    /// Issue a device certificate for a certificate request.
    Issue {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        csr: PathBuf,
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 1825)]
        days: u32,
        /// Certify the device for actor keys only, not for a log key (a fleet's signing node,
        /// whose log key lives elsewhere).
        #[arg(long)]
        no_log_key: bool,
    },
}

/// An RFC 3339 time as Unix seconds (`--at`).
fn parse_time(text: &str) -> Result<i64, String> {
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .map(|t| t.unix_timestamp())
        .map_err(|e| format!("not an RFC 3339 time such as 2026-11-26T17:51:36Z: {e}"))
}

#[cfg(feature = "daemon")]
#[derive(Subcommand)]
enum DeviceCommand {
    /// Create the device key if needed and write a certificate request signed by it.
    Csr {
        #[arg(long, default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
    /// Install the device certificate the CA issued (or a renewal of it: the certificates
    /// installed before are kept for older proofs; a certificate for another key is refused).
    Install {
        #[arg(long, default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
        certificate: PathBuf,
    },
}

#[cfg(feature = "daemon")]
#[derive(Subcommand)]
enum TokenCommand {
    /// Initialise a free slot's token with a label, SO PIN and user PIN.
    Init {
        #[arg(long)]
        module: PathBuf,
        #[arg(long)]
        label: String,
        #[arg(long)]
        so_pin_file: PathBuf,
        #[arg(long)]
        pin_file: PathBuf,
    },
}

#[cfg(feature = "daemon")]
fn init_logging(level: &str, json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("ACTSEAL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

/// The verifier logs nothing: without the daemon there is no subscriber to set up.
#[cfg(not(feature = "daemon"))]
fn init_logging(_level: &str, _json: bool) {}

#[cfg(feature = "daemon")]
fn witness(command: WitnessCommand) -> anyhow::Result<()> {
    use crate::cli::out::outln;
    match command {
        WitnessCommand::Init { config } => {
            init_logging("warn", false);
            outln!("{}", crate::witness::init(&config)?);
        }
        WitnessCommand::Key { config } => {
            init_logging("warn", false);
            outln!("{}", crate::witness::vkey(&config)?);
        }
        WitnessCommand::Serve { config, listen } => {
            init_logging("info", false);
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .thread_name("actseal-witness")
                .build()?;
            runtime.block_on(crate::witness::serve(&config, listen))?;
        }
    }
    Ok(())
}

/// Runs the MCP proxy; exits with the server's exit code.
#[cfg(feature = "daemon")]
fn mcp_proxy(args: McpProxyArgs) -> ExitCode {
    let result = (|| {
        let config = crate::mcp::ProxyConfig {
            actor: args.actor,
            connection: args.connection,
            store: crate::mcp::store(args.bundles_dir, args.bundles_jsonl)?,
            tools: crate::mcp::ToolPolicy::new(args.seal),
            on_failure: args.on_seal_failure,
            seal_timeout: std::time::Duration::from_millis(args.seal_timeout_ms),
            command: args.command,
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let code = runtime.block_on(crate::mcp::run(config));
        // A read of our stdin may still block a runtime thread: do not wait for it.
        runtime.shutdown_background();
        code
    })();
    match result {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(e) => {
            eprintln!("actseal: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Entry point of the `actseal` binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        #[cfg(feature = "daemon")]
        Command::Serve {
            config,
            check_config,
        } => operator::serve(&config, check_config),
        Command::Verify {
            bundle,
            trust,
            document,
            log_origin,
            at,
            witness_policy,
            tsa_trust,
        } => {
            init_logging("warn", false);
            if let [one] = bundle.as_slice() {
                return operator::verify(
                    one,
                    &trust,
                    document.as_deref(),
                    log_origin.as_deref(),
                    at,
                    tsa_trust.as_deref(),
                    witness_policy.as_deref(),
                );
            }
            if document.is_some() {
                eprintln!(
                    "actseal verify: --document goes with one bundle, not {}",
                    bundle.len()
                );
                return ExitCode::from(2);
            }
            return operator::verify_many(
                &bundle,
                &trust,
                log_origin.as_deref(),
                at,
                tsa_trust.as_deref(),
                witness_policy.as_deref(),
            );
        }
        Command::VerifyLog {
            proof,
            bundle,
            fork_evidence,
            trust,
        } => {
            init_logging("warn", false);
            return match (fork_evidence, proof, bundle) {
                (Some(evidence), _, _) => operator::verify_fork(&evidence, &trust),
                (None, Some(proof), Some(bundle)) => operator::verify_log(&proof, &bundle, &trust),
                _ => {
                    eprintln!("actseal verify-log: give PROOF and --bundle, or --fork-evidence");
                    ExitCode::from(2)
                }
            };
        }
        #[cfg(feature = "daemon")]
        Command::Monitor {
            state,
            trust,
            inputs,
            evidence,
            fetch,
            connection,
        } => {
            init_logging("warn", false);
            return monitor::run(&state, &trust, &inputs, evidence.as_deref(), |m| {
                if fetch {
                    monitor::fetch(m, &connection)
                } else {
                    Ok(())
                }
            });
        }
        #[cfg(not(feature = "daemon"))]
        Command::Monitor {
            state,
            trust,
            inputs,
            evidence,
        } => {
            return monitor::run(&state, &trust, &inputs, evidence.as_deref(), |_| Ok(()));
        }
        Command::Audit { export, trust } => {
            init_logging("warn", false);
            return operator::audit(&export, &trust);
        }
        Command::Actions { selection, json } => {
            init_logging("warn", false);
            return forensics::actions(&selection, json);
        }
        Command::Report { selection, out } => {
            init_logging("warn", false);
            return forensics::report(&selection, &out);
        }
        #[cfg(feature = "daemon")]
        Command::Log(LogCommand::Export { config, out }) => {
            init_logging("warn", false);
            operator::export_log(&config, &out)
        }
        #[cfg(feature = "daemon")]
        Command::Log(LogCommand::Migrate {
            from,
            config,
            to,
            password_file,
            tls_ca_file,
        }) => {
            init_logging("warn", false);
            migrate::migrate(&migrate::MigrateArgs {
                from: from.as_deref(),
                config: config.as_deref(),
                to: &to,
                password_file: password_file.as_deref(),
                tls_ca_file: tls_ca_file.as_deref(),
            })
        }
        #[cfg(feature = "daemon")]
        Command::Log(LogCommand::Vkey { config }) => {
            init_logging("warn", false);
            operator::log_vkey(&config)
        }
        #[cfg(feature = "daemon")]
        Command::Witness(command) => witness(command),
        #[cfg(feature = "daemon")]
        Command::Log(LogCommand::Check { config }) => {
            init_logging("warn", false);
            operator::check_log(&config)
        }
        #[cfg(feature = "daemon")]
        Command::Log(LogCommand::Head { config, follow }) => {
            init_logging("warn", false);
            operator::log_head(&config, follow)
        }
        #[cfg(feature = "daemon")]
        Command::Log(LogCommand::Recover {
            config,
            declare_fresh_start,
            origin,
        }) => {
            init_logging("warn", false);
            operator::recover_log(&config, declare_fresh_start, &origin)
        }
        #[cfg(feature = "daemon")]
        Command::Log(command) => {
            init_logging("warn", false);
            client::log(command)
        }
        #[cfg(feature = "daemon")]
        Command::Key(command) => {
            init_logging("warn", false);
            client::key(command)
        }
        #[cfg(feature = "daemon")]
        Command::Actor(command) => {
            init_logging("warn", false);
            actor::run(command)
        }
        #[cfg(feature = "daemon")]
        Command::Sign(args) => {
            init_logging("warn", false);
            client::sign(args)
        }
        #[cfg(feature = "daemon")]
        Command::McpProxy(args) => {
            init_logging("info", false);
            return mcp_proxy(args);
        }
        #[cfg(feature = "daemon")]
        Command::Ca(command) => {
            init_logging("warn", false);
            operator::ca(command)
        }
        #[cfg(feature = "daemon")]
        Command::Device(command) => {
            init_logging("warn", false);
            operator::device(command)
        }
        #[cfg(feature = "daemon")]
        Command::Token(command) => {
            init_logging("warn", false);
            operator::token(command)
        }
        #[cfg(feature = "daemon")]
        Command::Enroll {
            config,
            ca_dir,
            ek_ca,
            days,
            no_log_key,
        } => {
            init_logging("warn", false);
            operator::enroll(&config, &ca_dir, &ek_ca, days, !no_log_key)
        }
        #[cfg(feature = "daemon")]
        Command::Demo { workdir } => {
            init_logging("warn", false);
            demo::run(workdir)
        }
        #[cfg(not(feature = "daemon"))]
        Command::NotBuilt(args) => Err(anyhow::anyhow!(
            "no command {:?} here (offline: verify, verify-log, audit, actions, report). {VERIFIER_ONLY}",
            args.first().map_or("", String::as_str)
        )),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("actseal: {e:#}");
            ExitCode::FAILURE
        }
    }
}
