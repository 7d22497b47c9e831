//! Commands an operator or auditor runs on the machine itself: the daemon, the CA, the
//! device certificate, token set-up and offline verification.

use super::out::outln;
use std::{path::Path, process::ExitCode};

#[cfg(feature = "daemon")]
use anyhow::{Context, Result, bail};

#[cfg(feature = "daemon")]
use super::{CaCommand, DeviceCommand, TokenCommand};
use crate::verify::{BundleVerifier, TrustAnchors, verify_bundle};
#[cfg(feature = "daemon")]
use crate::{
    backend::{Backend, pkcs11},
    config::{Config, LogFormat},
    pki::{self, ca::NewCaKey},
    secret::PinSource,
    server,
};

#[cfg(feature = "daemon")]
pub fn serve(config_path: &Path, check_only: bool) -> Result<()> {
    let config = Config::load(config_path)?;
    if check_only {
        let policy = server::check(&config)?;
        let (sign, admin) = policy.rule_counts();
        outln!("{}: OK", config_path.display());
        outln!(
            "{}: OK ({sign} sign rules, {admin} admin rules)",
            config.server.policy.display()
        );
        return Ok(());
    }
    super::init_logging(&config.log.level, config.log.format == LogFormat::Json);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("actseal-worker")
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(server::run(config))?;
    Ok(())
}

/// Runs an offline check on files: exit code 0 when `check` passes (its report printed), 1 when
/// it fails (the reason printed), 2 when an input cannot be read or the anchor is unusable.
/// `paths` are the inputs; the trust anchor is the last of them.
fn offline_check<const N: usize, R: std::fmt::Display>(
    command: &str,
    paths: [&Path; N],
    check: impl FnOnce(&[Vec<u8>], &TrustAnchors) -> Result<R, String>,
) -> ExitCode {
    let mut inputs = Vec::with_capacity(N);
    for path in paths {
        match std::fs::read(path) {
            Ok(bytes) => inputs.push(bytes),
            Err(e) => {
                eprintln!("actseal {command}: cannot read {}: {e}", path.display());
                return ExitCode::from(2);
            }
        }
    }
    let Some((anchor_pem, rest)) = inputs.split_last() else {
        return ExitCode::from(2);
    };
    let anchors = match TrustAnchors::from_pem(anchor_pem) {
        Ok(anchors) => anchors,
        Err(e) => {
            eprintln!("actseal {command}: trust anchor: {e}");
            return ExitCode::from(2);
        }
    };
    match check(rest, &anchors) {
        Ok(report) => {
            outln!("{report}");
            ExitCode::SUCCESS
        }
        Err(reason) => {
            outln!("FAILED: {reason}");
            ExitCode::from(1)
        }
    }
}

/// `actseal verify`. With `log_origin`, the bundle must also come from that log: any key the
/// anchor attests could otherwise pose as a log key for an origin of its choosing.
pub fn verify(
    bundle: &Path,
    trust: &Path,
    document: Option<&Path>,
    log_origin: Option<&str>,
    at: Option<i64>,
    tsa_trust: Option<&Path>,
    witness_policy: Option<&Path>,
) -> ExitCode {
    let document = match document.map(std::fs::read).transpose() {
        Ok(document) => document,
        Err(e) => {
            eprintln!("actseal verify: cannot read the document: {e}");
            return ExitCode::from(2);
        }
    };
    let anchoring = match Anchoring::read(tsa_trust, witness_policy) {
        Ok(anchoring) => anchoring,
        Err(e) => {
            eprintln!("actseal verify: {e}");
            return ExitCode::from(2);
        }
    };
    offline_check("verify", [bundle, trust], |inputs, anchors| {
        let [bundle_bytes] = inputs else {
            return Err("internal: wrong inputs".into());
        };
        let verified =
            verify_bundle(bundle_bytes, anchors, document.as_deref()).map_err(|e| e.to_string())?;
        check_origin_and_time(&verified, log_origin, at)?;
        let anchored = anchoring.check(bundle_bytes, &verified)?;
        Ok(format!(
            "VERIFIED {}\n{verified}{anchored}",
            bundle.display()
        ))
    })
}

/// What `--tsa-trust` and `--witness-policy` ask of a bundle beyond `verify_bundle`.
struct Anchoring {
    tsa: Option<crate::verify::timestamp::TsaAnchors>,
    policy: Option<crate::verify::witness_policy::WitnessPolicy>,
}

impl Anchoring {
    fn read(tsa_trust: Option<&Path>, witness_policy: Option<&Path>) -> Result<Self, String> {
        let tsa = tsa_trust
            .map(|p| {
                std::fs::read(p)
                    .map_err(|e| format!("cannot read {}: {e}", p.display()))
                    .and_then(|pem| crate::verify::timestamp::TsaAnchors::from_pem(&pem))
                    .map_err(|e| format!("--tsa-trust: {e}"))
            })
            .transpose()?;
        let policy = witness_policy.map(read_witness_policy).transpose()?;
        Ok(Anchoring { tsa, policy })
    }

    /// `log.witnesses` and `log.timestamp` on a bundle `verify_bundle` accepted: the lines
    /// they add to the report (empty when neither was asked for).
    fn check(&self, bundle: &[u8], verified: &crate::verify::Verified) -> Result<String, String> {
        let mut report = match &self.policy {
            Some(policy) => witness_report(policy, bundle)?,
            None => String::new(),
        };
        if let Some(tsa) = &self.tsa {
            let stamps = crate::verify::verify_bundle_timestamps(bundle, verified, tsa)
                .map_err(|e| e.to_string())?
                .to_string();
            report.push('\n');
            report.push_str(stamps.trim_end());
        }
        Ok(report)
    }
}

fn read_witness_policy(
    path: &Path,
) -> Result<crate::verify::witness_policy::WitnessPolicy, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the witness policy {}: {e}", path.display()))?;
    crate::verify::witness_policy::WitnessPolicy::parse(&text)
        .map_err(|e| format!("witness policy {}: {e}", path.display()))
}

/// `log.witnesses`: the bundle's checkpoint carries cosignatures meeting the policy.
fn witness_report(
    policy: &crate::verify::witness_policy::WitnessPolicy,
    bundle: &[u8],
) -> Result<String, String> {
    let checkpoint = serde_json::from_slice::<serde_json::Value>(bundle)
        .ok()
        .and_then(|b| b["log"]["checkpoint"].as_str().map(str::to_owned))
        .ok_or("log.witnesses: the bundle has no log.checkpoint")?;
    let outcome = policy
        .check(checkpoint.as_bytes())
        .map_err(|e| format!("log.witnesses: {e}"))?;
    let cosigned: Vec<&str> = outcome.cosigned.keys().map(String::as_str).collect();
    if !outcome.satisfied {
        return Err(format!(
            "log.witnesses: the witness policy is not met: cosigned by [{}], missing [{}]",
            cosigned.join(", "),
            outcome.missing.join(", ")
        ));
    }
    Ok(format!(
        "\n  witnesses:    {} (policy met)",
        cosigned.join(", ")
    ))
}

/// `--log-origin` and `--at`, checked on a verified bundle.
fn check_origin_and_time(
    verified: &crate::verify::Verified,
    log_origin: Option<&str>,
    at: Option<i64>,
) -> Result<(), String> {
    if let Some(origin) = log_origin
        && verified.log_origin != origin
    {
        return Err(format!(
            "log.origin: the bundle is from log {:?}, not {origin:?}",
            verified.log_origin
        ));
    }
    if let Some(at) = at {
        let signed = time::OffsetDateTime::parse(
            &verified.signed_at,
            &time::format_description::well_known::Rfc3339,
        )
        .map_err(|e| format!("receipt.statement: signedAt: {e}"))?;
        if signed.unix_timestamp() > at {
            return Err(format!(
                "receipt.statement: signed at {}, after the time given with --at",
                verified.signed_at
            ));
        }
    }
    Ok(())
}

/// `actseal verify` of several bundles (without a document): one line each, `VERIFIED` or
/// `FAILED`, then a count. What the bundles share (lineage, log key, checkpoints, batch
/// statements) is checked once ([`BundleVerifier`]). 0 all verified, 1 any failed, 2 an
/// unreadable file.
pub fn verify_many(
    bundles: &[std::path::PathBuf],
    trust: &Path,
    log_origin: Option<&str>,
    at: Option<i64>,
    tsa_trust: Option<&Path>,
    witness_policy: Option<&Path>,
) -> ExitCode {
    let anchoring = match Anchoring::read(tsa_trust, witness_policy) {
        Ok(anchoring) => anchoring,
        Err(e) => {
            eprintln!("actseal verify: {e}");
            return ExitCode::from(2);
        }
    };
    let anchors = match std::fs::read(trust)
        .map_err(|e| format!("cannot read {}: {e}", trust.display()))
        .and_then(|pem| TrustAnchors::from_pem(&pem).map_err(|e| e.to_string()))
    {
        Ok(anchors) => anchors,
        Err(e) => {
            eprintln!("actseal verify: trust anchor: {e}");
            return ExitCode::from(2);
        }
    };
    let mut verifier = BundleVerifier::new(&anchors);
    let (mut good, mut unreadable) = (0usize, false);
    for path in bundles {
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) => {
                eprintln!("actseal verify: cannot read {}: {e}", path.display());
                unreadable = true;
                continue;
            }
        };
        let result = verifier
            .verify(&bytes, None)
            .map_err(|e| e.to_string())
            .and_then(|v| check_origin_and_time(&v, log_origin, at).map(|()| v))
            .and_then(|v| anchoring.check(&bytes, &v).map(|_| v));
        match result {
            Ok(v) => {
                good = good.saturating_add(1);
                outln!(
                    "VERIFIED {}: {} receipt #{} (log index {}, {})",
                    path.display(),
                    v.actor.escape_default(),
                    v.sequence,
                    v.log_index,
                    v.mode
                );
            }
            Err(reason) => outln!("FAILED {}: {reason}", path.display()),
        }
    }
    outln!("{good} of {} bundles verified", bundles.len());
    if unreadable {
        ExitCode::from(2)
    } else if good == bundles.len() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// `actseal verify-log`: 0 consistent, 1 not, 2 unreadable inputs.
pub fn verify_log(proof: &Path, bundle: &Path, trust: &Path) -> ExitCode {
    offline_check("verify-log", [proof, bundle, trust], |inputs, anchors| {
        let [proof, bundle] = inputs else {
            return Err("internal: wrong inputs".into());
        };
        crate::verify::consistency::verify_log_consistency(proof, bundle, anchors)
    })
}

/// `actseal verify-log --fork-evidence`: 0 the evidence proves a fork, 1 it does not, 2
/// unreadable inputs.
pub fn verify_fork(evidence: &Path, trust: &Path) -> ExitCode {
    offline_check("verify-log", [evidence, trust], |inputs, anchors| {
        let [evidence] = inputs else {
            return Err("internal: wrong inputs".into());
        };
        crate::verify::fork::verify_fork_evidence(evidence, anchors)
    })
}

/// `actseal audit`: 0 the log checks out, 1 a problem (named), 2 unreadable inputs.
pub fn audit(export: &Path, trust: &Path) -> ExitCode {
    offline_check("audit", [export, trust], |inputs, anchors| {
        let [export] = inputs else {
            return Err("internal: wrong inputs".into());
        };
        crate::verify::audit::audit_log(export, anchors).map_err(|e| e.to_string())
    })
}

/// `actseal log vkey`: the log key in the C2SP vkey form.
#[cfg(feature = "daemon")]
pub fn log_vkey(config: &Path) -> Result<()> {
    let config = Config::load(config)?;
    let store = crate::ledger::Store::open_at(&config.ledger_location())?;
    let log = server::stored_log_identity(&store, crate::backend::offline())?
        .ok_or_else(|| anyhow::anyhow!("this daemon has no log yet"))?;
    outln!(
        "{}",
        crate::verify::cosignature::format_vkey(
            &log.origin,
            crate::verify::cosignature::SIGNATURE_TYPE_ECDSA,
            &log.spki_der()
        )
    );
    Ok(())
}

#[cfg(feature = "daemon")]
pub fn export_log(config: &Path, out: &Path) -> Result<()> {
    let config = Config::load(config)?;
    let store = crate::ledger::Store::open_at(&config.ledger_location())?;
    let log = server::stored_log_identity(&store, crate::backend::offline())?
        .ok_or_else(|| anyhow::anyhow!("this daemon has no log yet"))?;
    let json = crate::ledger::export::export(&store, log.in_bundle())?;
    crate::files::write_atomic(out, json.as_bytes(), crate::files::PRIVATE_FILE)?;
    outln!("log exported to {}", out.display());
    Ok(())
}

/// `actseal log check`: the start-up check from the first entry, without the hardware and
/// without moving the watermark.
#[cfg(feature = "daemon")]
pub fn check_log(config_path: &Path) -> Result<()> {
    let config = Config::load(config_path)?;
    let store = crate::ledger::Store::open_at(&config.ledger_location())?;
    let (origin, status) = check_whole_log(&store)?;
    println!(
        "log {origin} checked: {} entries, root {}, {} request ids",
        status.size,
        hex::encode(status.root),
        status.requests
    );
    Ok(())
}

/// The start-up check from the first entry over `store` (no hardware, no watermark moved):
/// the log's origin and what was checked.
#[cfg(feature = "daemon")]
pub(crate) fn check_whole_log(
    store: &crate::ledger::Store,
) -> Result<(String, crate::ledger::integrity::LogStatus)> {
    use crate::ledger::integrity::{self, CheckMode, Checks};
    let log = server::stored_log_identity(store, crate::backend::offline())?
        .ok_or_else(|| anyhow::anyhow!("the state database holds no log"))?;
    let spki = log.spki_der();
    let checkpoint_ok = |note: &str| {
        crate::verify::checkpoint::verify_checkpoint(note.as_bytes(), &log.origin, &spki)
            .map(|_| ())
            .map_err(|e| e.to_string())
    };
    let checks = Checks {
        origin: &log.origin,
        checkpoint_ok: &checkpoint_ok,
        request_fingerprint: &server::validate::fingerprint_of_receipt,
        trusted_watermark: None,
    };
    let status = integrity::check(store, &checks, CheckMode::Full)?;
    Ok((log.origin.clone(), status))
}

/// `actseal log head`: the hardware's log head record, once or at each change (`--follow`,
/// one open token: what a second process sharing a log token sees of the first's writes).
#[cfg(feature = "daemon")]
pub fn log_head(config_path: &Path, follow: bool) -> Result<()> {
    use std::io::Write;
    let config = Config::load(config_path)?;
    let backends = server::open_backends(&config)?;
    let mut last: Option<Option<Vec<u8>>> = None;
    loop {
        let head = server::rollback::read_head(backends.log.as_ref())?;
        let bytes = head.as_ref().map(|(_, bytes)| bytes.clone());
        if last.as_ref() != Some(&bytes) {
            match &head {
                None => println!("no log head in the hardware"),
                Some((head, _)) => println!(
                    "size {} root {} requests {}",
                    head.size,
                    hex::encode(head.root),
                    head.requests
                ),
            }
            std::io::stdout().flush()?;
            last = Some(bytes);
        }
        if !follow {
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// `actseal log recover --declare-fresh-start`: moves the state database aside and leaves a
/// new one that tells the daemon to begin a new log replacing the one whose head the hardware
/// holds (the daemon's next start does the rest and records the replaced head).
#[cfg(feature = "daemon")]
pub fn recover_log(config_path: &Path, declare_fresh_start: bool, origin: &str) -> Result<()> {
    use sha2::{Digest, Sha256};
    if !declare_fresh_start {
        bail!(
            "nothing done: recovery begins a new log and needs --declare-fresh-start. If you have \
             a copy of the database at least as new as the last acknowledged receipt, restore \
             it instead (README, \"When things go wrong\")"
        );
    }
    let config = Config::load(config_path)?;
    if std::os::unix::net::UnixStream::connect(&config.server.socket).is_ok() {
        bail!(
            "a daemon answers on {}: stop it first",
            config.server.socket.display()
        );
    }
    server::check_origin(origin)?;
    if let Some(configured) = &config.ledger.origin
        && configured != origin
    {
        bail!("ledger.origin is {configured:?} in the configuration: set it to {origin:?} first");
    }
    let backends = server::open_backends(&config)?;
    let Some((head, record)) = server::rollback::read_head(backends.log.as_ref())? else {
        bail!(
            "the hardware holds no log head: nothing to recover (the daemon begins a log by itself)"
        );
    };
    if <[u8; 32]>::from(Sha256::digest(origin.as_bytes())) == head.binding.origin_sha256 {
        bail!(
            "{origin:?} is the replaced log's origin: the new log needs another, or bundles of the \
             two logs would pass as one log's"
        );
    }
    let store = if config.ledger.url.is_some() {
        // On PostgreSQL the replaced log stays in its database: the new log needs a new one.
        let store = crate::ledger::Store::open_at(&config.ledger_location())?;
        if store.next_log_index()? != 0 {
            bail!(
                "ledger.url names a database that holds a log: a fresh start begins in a new, \
                 empty database; create one, point ledger.url at it and run this again"
            );
        }
        store
    } else {
        let database = config.state.database();
        let stamp = time::OffsetDateTime::now_utc().unix_timestamp();
        for suffix in ["", "-wal", "-shm"] {
            let from = std::path::PathBuf::from(format!("{}{suffix}", database.display()));
            if from.exists() {
                let to = format!("{}.replaced-{stamp}{suffix}", database.display());
                std::fs::rename(&from, &to)
                    .with_context(|| format!("cannot move {} aside", from.display()))?;
                println!("moved {} to {to}", from.display());
            }
        }
        crate::ledger::Store::open(&database)?
    };
    let declared = server::rollback::FreshStart {
        origin: origin.to_owned(),
        replaces: hex::encode(&record),
    };
    store.set_meta(
        server::rollback::META_FRESH_START,
        &serde_json::to_string(&declared)?,
    )?;
    println!(
        "declared a fresh start: the next start begins log {origin:?} with a new log key; its \
         first entry names the replaced log (log key {}, {} entries, root {})",
        hex::encode(head.binding.log_key_id),
        head.size,
        hex::encode(head.root)
    );
    Ok(())
}

#[cfg(feature = "daemon")]
pub fn ca(command: CaCommand) -> Result<()> {
    match command {
        CaCommand::Init {
            dir,
            subject,
            days,
            module,
            token_label,
            pin_file,
            pin_env,
            key_file,
        } => {
            let key = match (key_file, module, token_label) {
                (Some(path), _, _) => {
                    eprintln!(
                        "warning: the CA key will be a software key in {}; a token is safer",
                        path.display()
                    );
                    NewCaKey::File(path)
                }
                (None, Some(module), Some(token_label)) => NewCaKey::Pkcs11 {
                    module,
                    token_label,
                    pin: pin_source(pin_file, pin_env)?,
                },
                _ => bail!("give --module and --token-label (or --key-file)"),
            };
            let cert = pki::ca::init(&dir, &subject, days, key)?;
            outln!("CA created; trust anchor: {}", cert.display());
            Ok(())
        }
        CaCommand::Issue {
            dir,
            csr,
            out,
            days,
            no_log_key,
        } => {
            let request = std::fs::read_to_string(&csr)
                .with_context(|| format!("cannot read {}", csr.display()))?;
            let cert = pki::ca::issue(&dir, &request, days, !no_log_key)?;
            crate::files::write_atomic(&out, cert.as_bytes(), crate::files::PRIVATE_FILE)?;
            outln!("device certificate written to {}", out.display());
            Ok(())
        }
    }
}

#[cfg(feature = "daemon")]
fn pin_source(file: Option<std::path::PathBuf>, env: Option<String>) -> Result<PinSource> {
    match (file, env) {
        (Some(file), None) => Ok(PinSource::File(file)),
        (None, Some(env)) => Ok(PinSource::Env(env)),
        _ => bail!("give exactly one of --pin-file and --pin-env"),
    }
}

#[cfg(feature = "daemon")]
pub fn enroll(
    config: &std::path::Path,
    ca_dir: &std::path::Path,
    ek_ca: &std::path::Path,
    days: u32,
    attests_log_key: bool,
) -> Result<()> {
    let config = Config::load(config)?;
    let Some(tpm) = &config.tpm else {
        bail!("enroll needs a [tpm] backend in the configuration");
    };
    let settings = tpm.settings().map_err(anyhow::Error::msg)?;
    let backend = crate::backend::tpm::TpmBackend::open(&settings)?;
    let maker_ca = std::fs::read_to_string(ek_ca)
        .with_context(|| format!("cannot read {}", ek_ca.display()))?;
    let enrolled = pki::enroll::enroll(&backend, &maker_ca, ca_dir, days, attests_log_key)?;
    let device_key = backend.device_key(false)?;
    crate::files::private_dir(&config.state.dir)?;
    let destination = config.state.device_certificate();
    let subject =
        pki::device::install_certificate(&enrolled.ak_certificate_pem, &device_key, &destination)?;
    let identity = serde_json::to_string_pretty(&enrolled.identity)?;
    crate::files::write_atomic(
        &config.state.tpm_identity(),
        identity.as_bytes(),
        crate::files::PRIVATE_FILE,
    )?;
    outln!(
        "EK certificate \"{}\" checked; credential activated; AK certificate \"{subject}\" installed at {}; TPM identity (EK and AK Names) recorded in {}",
        enrolled.ek_subject,
        destination.display(),
        config.state.tpm_identity().display()
    );
    Ok(())
}

#[cfg(feature = "daemon")]
pub fn device(command: DeviceCommand) -> Result<()> {
    match command {
        DeviceCommand::Csr { config, out } => {
            let config = Config::load(&config)?;
            let backend = server::open_pkcs11_backend(&config)?;
            let device_key = backend.device_key(true)?;
            let request = pki::device::certificate_request(&backend, &device_key, backend.token())?;
            crate::files::write_atomic(&out, request.as_bytes(), crate::files::PRIVATE_FILE)?;
            outln!(
                "certificate request for device key {} written to {}",
                crate::proof::key_id(&device_key.public_key),
                out.display()
            );
            Ok(())
        }
        DeviceCommand::Install {
            config,
            certificate,
        } => {
            let config = Config::load(&config)?;
            let pem = std::fs::read_to_string(&certificate)
                .with_context(|| format!("cannot read {}", certificate.display()))?;
            // The token's device key, or the TPM's attestation key (a renewed AK certificate).
            let (backend, _) = server::open_backend(&config)?;
            let device_key = backend.device_key(false)?;
            crate::files::private_dir(&config.state.dir)?;
            let destination = config.state.device_certificate();
            let subject = pki::device::install_certificate(&pem, &device_key, &destination)?;
            outln!(
                "installed device certificate \"{subject}\" at {}",
                destination.display()
            );
            Ok(())
        }
    }
}

#[cfg(feature = "daemon")]
pub fn token(command: TokenCommand) -> Result<()> {
    match command {
        TokenCommand::Init {
            module,
            label,
            so_pin_file,
            pin_file,
        } => {
            let so_pin = PinSource::File(so_pin_file).read()?;
            let pin = PinSource::File(pin_file).read()?;
            let ctx = pkcs11::load_module(&module)?;
            let facts = pkcs11::init_token(&ctx, &label, &so_pin, &pin)?;
            outln!(
                "token {:?} initialised (serial {})",
                facts.label,
                facts.serial
            );
            Ok(())
        }
    }
}
