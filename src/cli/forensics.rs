//! `actseal actions` and `actseal report`: offline, over exports and kept bundles.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Args;

use crate::forensics::{Findings, Query, html, investigate};
use crate::verify::TrustAnchors;

use super::out::outln;

/// What to read and which receipts to show (shared by `actions` and `report`).
#[derive(Args)]
pub struct Selection {
    /// Log exports (`actseal log export`), bundles, JSON Lines or arrays of bundles, or
    /// folders of them.
    inputs: Vec<PathBuf>,
    /// Also every receipt of the daemon's log, each fetched with its inclusion proof
    /// (`GetInclusionProof`) against the newest checkpoint.
    #[cfg(feature = "daemon")]
    #[arg(long)]
    daemon: bool,
    #[cfg(feature = "daemon")]
    #[command(flatten)]
    connection: super::Connection,
    /// The operator's trust anchor: the CA certificate (PEM).
    #[arg(long)]
    trust: PathBuf,
    /// Only this actor's receipts (gaps are found in its whole sequence).
    #[arg(long)]
    actor: Option<String>,
    /// Only receipts of this action type.
    #[arg(long = "type")]
    action_type: Option<String>,
    /// Only receipts signed at or after this time (RFC 3339).
    #[arg(long, value_parser = super::parse_time)]
    from: Option<i64>,
    /// Only receipts signed at or before this time (RFC 3339).
    #[arg(long, value_parser = super::parse_time)]
    until: Option<i64>,
    /// A folder of retained action documents, matched to receipts by SHA-256.
    #[arg(long)]
    documents: Option<PathBuf>,
    /// Require each bundle's checkpoint to meet this witness policy (FORMAT.md §14.3).
    #[arg(long)]
    witness_policy: Option<PathBuf>,
    /// Check each bundle's RFC 3161 timestamp tokens under these TSA anchors (PEM, §15.2).
    #[arg(long)]
    tsa_trust: Option<PathBuf>,
}

impl Selection {
    /// Reads the anchor and inputs and verifies; `Err` is the exit code of a bad input (2).
    fn run(&self, command: &str) -> Result<Findings, ExitCode> {
        let anchors = std::fs::read(&self.trust)
            .map_err(|e| e.to_string())
            .and_then(|pem| TrustAnchors::from_pem(&pem).map_err(|e| e.to_string()))
            .map_err(|e| {
                eprintln!(
                    "actseal {command}: trust anchor {}: {e}",
                    self.trust.display()
                );
                ExitCode::from(2)
            })?;
        let bad = |e: String| {
            eprintln!("actseal {command}: {e}");
            ExitCode::from(2)
        };
        let query = Query {
            actor: self.actor.clone(),
            action_type: self.action_type.clone(),
            from: self.from,
            until: self.until,
            witness_policy: self.witness_policy().map_err(bad)?,
            tsa: self.tsa_anchors().map_err(bad)?,
        };
        let fetched = self.fetch().map_err(|e| {
            eprintln!("actseal {command}: {e:#}");
            ExitCode::from(2)
        })?;
        if self.inputs.is_empty() && fetched.is_empty() && !self.reads_daemon() {
            eprintln!(
                "actseal {command}: no inputs: give exports, bundles or folders (or --daemon)"
            );
            return Err(ExitCode::from(2));
        }
        let documents = self.documents.as_deref();
        investigate(&self.inputs, fetched, &anchors, &query, documents).map_err(|e| {
            eprintln!("actseal {command}: {e}");
            ExitCode::from(2)
        })
    }
}

impl Selection {
    fn witness_policy(
        &self,
    ) -> Result<Option<crate::verify::witness_policy::WitnessPolicy>, String> {
        let Some(path) = &self.witness_policy else {
            return Ok(None);
        };
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read the witness policy {}: {e}", path.display()))?;
        crate::verify::witness_policy::WitnessPolicy::parse(&text)
            .map(Some)
            .map_err(|e| format!("witness policy {}: {e}", path.display()))
    }

    fn tsa_anchors(&self) -> Result<Option<crate::verify::timestamp::TsaAnchors>, String> {
        let Some(path) = &self.tsa_trust else {
            return Ok(None);
        };
        std::fs::read(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))
            .and_then(|pem| crate::verify::timestamp::TsaAnchors::from_pem(&pem))
            .map(Some)
            .map_err(|e| format!("--tsa-trust: {e}"))
    }
}

#[cfg(feature = "daemon")]
impl Selection {
    fn reads_daemon(&self) -> bool {
        self.daemon
    }

    fn fetch(&self) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
        if !self.daemon {
            return Ok(Vec::new());
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(fetch_receipts(&self.connection))
    }
}

#[cfg(not(feature = "daemon"))]
impl Selection {
    fn reads_daemon(&self) -> bool {
        false
    }

    fn fetch(&self) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
        Ok(Vec::new())
    }
}

/// Every receipt of the daemon's log as a bundle proved against one checkpoint (the newest):
/// one `GetInclusionProof` per entry; entries that are not receipts come without a bundle.
#[cfg(feature = "daemon")]
async fn fetch_receipts(connection: &super::Connection) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    use crate::api::{GetCheckpointRequest, GetInclusionProofRequest, signer_client::SignerClient};
    let mut client = SignerClient::new(super::client::connect(connection).await?);
    let rpc = |s: tonic::Status| anyhow::anyhow!("{:?}: {}", s.code(), s.message());
    let size = client
        .get_checkpoint(GetCheckpointRequest {})
        .await
        .map_err(rpc)?
        .into_inner()
        .size;
    let mut out = Vec::new();
    for index in 0..size {
        let proof = client
            .get_inclusion_proof(GetInclusionProofRequest {
                log_index: index,
                tree_size: size,
            })
            .await
            .map_err(rpc)?
            .into_inner();
        if !proof.bundle_json.is_empty() {
            out.push((
                format!("daemon log entry {index}"),
                proof.bundle_json.into_bytes(),
            ));
        }
    }
    Ok(out)
}

/// 0 when everything shown holds, 1 when a receipt failed or a gap was found.
fn verdict(findings: &Findings) -> ExitCode {
    if findings.all_hold() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// `actseal actions`: text, or JSON with `--json`.
pub fn actions(selection: &Selection, json: bool) -> ExitCode {
    let findings = match selection.run("actions") {
        Ok(f) => f,
        Err(code) => return code,
    };
    if json {
        match serde_json::to_string_pretty(&findings) {
            Ok(text) => outln!("{text}"),
            Err(e) => {
                eprintln!("actseal actions: {e}");
                return ExitCode::from(2);
            }
        }
    } else {
        outln!("{findings}");
    }
    verdict(&findings)
}

/// `actseal report`: writes the HTML file `out`.
pub fn report(selection: &Selection, out: &Path) -> ExitCode {
    let findings = match selection.run("report") {
        Ok(f) => f,
        Err(code) => return code,
    };
    let title = match (&selection.actor, selection.inputs.as_slice()) {
        (Some(actor), _) => format!("actor {actor}"),
        (None, []) => "the daemon's log".to_string(),
        (None, [one]) => one.display().to_string(),
        (None, _) => format!("{} inputs", selection.inputs.len()),
    };
    let now = time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default();
    let page = html::render(&findings, &title, &now);
    if let Err(e) = std::fs::write(out, page) {
        eprintln!("actseal report: cannot write {}: {e}", out.display());
        return ExitCode::from(2);
    }
    outln!("report written to {}", out.display());
    outln!(
        "{}",
        findings.to_string().lines().last().unwrap_or_default()
    );
    verdict(&findings)
}
