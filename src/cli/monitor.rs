//! `actseal monitor`: keeps every checkpoint it is shown, per log, in a state directory, and
//! reports any two that cannot both be views of one append-only log, writing the fork evidence
//! (FORMAT.md §16) that `actseal verify-log --fork-evidence` checks.
//!
//! State: `DIR/<first 16 hex of SHA-256(origin)>/` holds `origin`, `bundle.json` (the first
//! bundle seen: it attests the log key) and `checkpoints/<size>-<root hex>.txt`, one note per
//! size and root (later notes of the same size and root, e.g. with more cosignatures, are not
//! kept). Every note is verified under the attested log key before it is kept.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use sha2::{Digest, Sha256};

use crate::cli::out::outln;
use crate::verify::checkpoint::{ParsedCheckpoint, parse_checkpoint, verify_checkpoint};
use crate::verify::fork;
use crate::verify::{TrustAnchors, verify_bundle};

/// One log's directory in the state.
struct LogState {
    dir: PathBuf,
    origin: String,
    bundle: Vec<u8>,
    spki: Vec<u8>,
}

/// The monitor over one state directory.
pub struct Monitor {
    state: PathBuf,
    anchors: TrustAnchors,
    /// Problems that are not forks (a proof the log could not give, a bad proof file).
    pub warnings: Vec<String>,
}

/// A fork found: its report and where its evidence was written.
pub struct Found {
    pub report: fork::ForkReport,
    pub evidence: PathBuf,
}

fn log_dir_name(origin: &str) -> String {
    hex::encode(Sha256::digest(origin.as_bytes()))
        .get(..16)
        .unwrap_or_default()
        .to_string()
}

impl Monitor {
    pub fn open(state: &Path, anchors: TrustAnchors) -> Result<Monitor, String> {
        fs::create_dir_all(state).map_err(|e| format!("state {}: {e}", state.display()))?;
        Ok(Monitor {
            state: state.to_owned(),
            anchors,
            warnings: Vec::new(),
        })
    }

    /// The log of `origin`, if the monitor has a bundle attesting its key.
    fn log(&self, origin: &str) -> Result<Option<LogState>, String> {
        let dir = self.state.join(log_dir_name(origin));
        let Ok(bundle) = fs::read(dir.join("bundle.json")) else {
            return Ok(None);
        };
        verify_bundle(&bundle, &self.anchors, None)
            .map_err(|e| format!("the stored bundle of {origin:?} no longer verifies: {e}"))?;
        let spki = log_key(&bundle)?;
        Ok(Some(LogState {
            dir,
            origin: origin.to_string(),
            bundle,
            spki,
        }))
    }

    /// Adds one input file: a bundle, a consistency proof (`actseal log consistency`) or a
    /// checkpoint note.
    pub fn add_file(&mut self, path: &Path) -> Result<(), String> {
        let bytes = fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let what = |e: String| format!("{}: {e}", path.display());
        let json: Option<serde_json::Value> = serde_json::from_slice(&bytes).ok();
        match json {
            Some(v) if v.get("receipt").is_some() => self.add_bundle(&bytes).map_err(what),
            Some(v) if v.get("oldCheckpoint").is_some() => {
                for member in ["oldCheckpoint", "newCheckpoint"] {
                    let note = v[member]
                        .as_str()
                        .ok_or_else(|| what(format!("{member} is not text")))?;
                    self.add_note(note).map_err(what)?;
                }
                Ok(())
            }
            _ => {
                let note = std::str::from_utf8(&bytes).map_err(|_| what("not UTF-8".into()))?;
                self.add_note(note).map_err(what)
            }
        }
    }

    /// A bundle: verified in full; the first of its log attests the log key; its checkpoint is
    /// kept.
    pub fn add_bundle(&mut self, bundle: &[u8]) -> Result<(), String> {
        let verified = verify_bundle(bundle, &self.anchors, None).map_err(|e| e.to_string())?;
        let dir = self.state.join(log_dir_name(&verified.log_origin));
        if !dir.join("bundle.json").exists() {
            fs::create_dir_all(dir.join("checkpoints")).map_err(|e| e.to_string())?;
            fs::write(dir.join("origin"), &verified.log_origin).map_err(|e| e.to_string())?;
            write_atomic(&dir.join("bundle.json"), bundle).map_err(|e| e.to_string())?;
        }
        let value: serde_json::Value = serde_json::from_slice(bundle).map_err(|e| e.to_string())?;
        let note = value["log"]["checkpoint"]
            .as_str()
            .ok_or("no log.checkpoint")?;
        self.add_note(note)
    }

    /// A checkpoint note of a log the monitor knows: verified, then kept.
    pub fn add_note(&mut self, note: &str) -> Result<(), String> {
        let parsed = parse_checkpoint(note.as_bytes()).map_err(|e| e.to_string())?;
        let log = self.log(&parsed.origin)?.ok_or_else(|| {
            format!(
                "no bundle of log {:?} yet: give one first (it attests the log key)",
                parsed.origin
            )
        })?;
        verify_checkpoint(note.as_bytes(), &log.origin, &log.spki).map_err(|e| e.to_string())?;
        let file = log.dir.join("checkpoints").join(format!(
            "{}-{}.txt",
            parsed.size,
            hex::encode(parsed.root)
        ));
        if !file.exists() {
            write_atomic(&file, note.as_bytes()).map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// The origins of the logs in the state.
    pub fn origins(&self) -> Vec<String> {
        let Ok(entries) = fs::read_dir(&self.state) else {
            return Vec::new();
        };
        let mut out: Vec<String> = entries
            .flatten()
            .filter_map(|e| fs::read_to_string(e.path().join("origin")).ok())
            .collect();
        out.sort();
        out
    }

    /// The kept checkpoints of a log by size (each size: its notes, one per root).
    pub fn checkpoints(&self, origin: &str) -> BTreeMap<u64, Vec<(ParsedCheckpoint, String)>> {
        let mut out: BTreeMap<u64, Vec<(ParsedCheckpoint, String)>> = BTreeMap::new();
        let dir = self.state.join(log_dir_name(origin)).join("checkpoints");
        for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
            if let Ok(note) = fs::read_to_string(entry.path())
                && let Ok(parsed) = parse_checkpoint(note.as_bytes())
            {
                out.entry(parsed.size).or_default().push((parsed, note));
            }
        }
        out
    }

    /// Every size with two roots is a fork: writes its evidence (checked before it is
    /// written) into the log's directory and returns the forks found.
    pub fn scan(&self) -> Result<Vec<Found>, String> {
        let mut found = Vec::new();
        for origin in self.origins() {
            let Some(log) = self.log(&origin)? else {
                continue;
            };
            for (size, notes) in self.checkpoints(&origin) {
                let [(a, a_note), (b, b_note), ..] = notes.as_slice() else {
                    continue;
                };
                let evidence = fork::same_size_evidence(&origin, &log.bundle, a_note, b_note)?;
                let report = fork::verify_fork_evidence(evidence.as_bytes(), &self.anchors)?;
                let path = log.dir.join(format!(
                    "fork-{size}-{}-{}.json",
                    hex::encode(a.root).get(..8).unwrap_or_default(),
                    hex::encode(b.root).get(..8).unwrap_or_default()
                ));
                write_atomic(&path, evidence.as_bytes()).map_err(|e| e.to_string())?;
                found.push(Found {
                    report,
                    evidence: path,
                });
            }
        }
        Ok(found)
    }
}

/// Writes through a temporary file and a rename, so a crash leaves the old file or the new.
fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, bytes)?;
    fs::rename(&tmp, path)
}

/// The bundle's log key (SPKI DER).
fn log_key(bundle: &[u8]) -> Result<Vec<u8>, String> {
    let value: serde_json::Value = serde_json::from_slice(bundle).map_err(|e| e.to_string())?;
    let b64 = value["log"]["logKey"]["publicKey"]
        .as_str()
        .ok_or("no log.logKey.publicKey")?;
    base64::Engine::decode(&base64::engine::general_purpose::STANDARD, b64)
        .map_err(|e| e.to_string())
}

/// `actseal monitor`: 0 no fork, 1 a fork (evidence written), 2 unreadable or unverifiable
/// input.
pub fn run(
    state: &Path,
    trust: &Path,
    inputs: &[PathBuf],
    evidence_out: Option<&Path>,
    fetch: impl FnOnce(&mut Monitor) -> Result<(), String>,
) -> ExitCode {
    let anchors = match fs::read(trust)
        .map_err(|e| e.to_string())
        .and_then(|pem| TrustAnchors::from_pem(&pem).map_err(|e| e.to_string()))
    {
        Ok(a) => a,
        Err(e) => {
            eprintln!("actseal monitor: trust anchor: {e}");
            return ExitCode::from(2);
        }
    };
    let mut monitor = match Monitor::open(state, anchors) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("actseal monitor: {e}");
            return ExitCode::from(2);
        }
    };
    for input in inputs {
        if let Err(e) = monitor.add_file(input) {
            eprintln!("actseal monitor: {e}");
            return ExitCode::from(2);
        }
    }
    if let Err(e) = fetch(&mut monitor) {
        eprintln!("actseal monitor: {e}");
        return ExitCode::from(2);
    }
    report(&monitor, evidence_out)
}

fn report(monitor: &Monitor, evidence_out: Option<&Path>) -> ExitCode {
    for warning in &monitor.warnings {
        outln!("WARNING: {warning}");
    }
    let found = match monitor.scan() {
        Ok(found) => found,
        Err(e) => {
            eprintln!("actseal monitor: {e}");
            return ExitCode::from(2);
        }
    };
    for origin in monitor.origins() {
        let seen = monitor.checkpoints(&origin);
        let (low, high) = (seen.keys().next(), seen.keys().next_back());
        outln!(
            "log {}: {} checkpoint(s) seen, sizes {}..{}",
            origin.escape_default(),
            seen.values().map(Vec::len).sum::<usize>(),
            low.copied().unwrap_or(0),
            high.copied().unwrap_or(0)
        );
    }
    for f in &found {
        outln!("{}\n  evidence: {}", f.report, f.evidence.display());
    }
    if let (Some(out), Some(first)) = (evidence_out, found.first())
        && let Err(e) = fs::copy(&first.evidence, out)
    {
        eprintln!("actseal monitor: cannot write {}: {e}", out.display());
        return ExitCode::from(2);
    }
    if found.is_empty() {
        outln!("no fork: every two checkpoints of one size have one root");
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// `--fetch`: the daemon's newest checkpoint, and for every size the monitor has seen below
/// it, the daemon's own checkpoint of that size with the consistency proof to the newest (a
/// fork shows as two roots for one size; a proof that fails is reported too).
#[cfg(feature = "daemon")]
pub fn fetch(monitor: &mut Monitor, connection: &super::Connection) -> Result<(), String> {
    use crate::api::{
        GetCheckpointRequest, GetConsistencyProofRequest, signer_client::SignerClient,
    };
    let rt = super::client::runtime().map_err(|e| e.to_string())?;
    rt.block_on(async {
        let channel = super::client::connect(connection)
            .await
            .map_err(|e| format!("{e:#}"))?;
        let mut client = SignerClient::new(channel);
        let newest = client
            .get_checkpoint(GetCheckpointRequest {})
            .await
            .map_err(|s| format!("GetCheckpoint: {}", s.message()))?
            .into_inner();
        monitor.add_note(&newest.note)?;
        let origin = parse_checkpoint(newest.note.as_bytes())
            .map_err(|e| e.to_string())?
            .origin;
        let sizes: Vec<u64> = monitor.checkpoints(&origin).into_keys().collect();
        for size in sizes.into_iter().filter(|s| *s < newest.size && *s > 0) {
            let answer = client
                .get_consistency_proof(GetConsistencyProofRequest {
                    old_size: size,
                    new_size: newest.size,
                })
                .await;
            let proof = match answer {
                Ok(p) => p.into_inner(),
                Err(status) => {
                    monitor.warnings.push(format!(
                        "the log gave no consistency proof from size {size} to {}: {}",
                        newest.size,
                        status.message()
                    ));
                    continue;
                }
            };
            monitor.add_note(&proof.old_checkpoint)?;
            let old =
                parse_checkpoint(proof.old_checkpoint.as_bytes()).map_err(|e| e.to_string())?;
            let hashes: Vec<[u8; 32]> = proof
                .hashes
                .iter()
                .filter_map(|h| <[u8; 32]>::try_from(h.as_slice()).ok())
                .collect();
            let new =
                parse_checkpoint(proof.new_checkpoint.as_bytes()).map_err(|e| e.to_string())?;
            if crate::verify::merkle::verify_consistency(
                old.size, new.size, &old.root, &new.root, &hashes,
            )
            .is_err()
            {
                monitor.warnings.push(format!(
                    "the log's consistency proof from size {size} to {} does not verify",
                    new.size
                ));
            }
        }
        Ok(())
    })
}
