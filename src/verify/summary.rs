//! What a verified bundle proves, and its short human summary.

use std::collections::BTreeMap;
use std::fmt;

/// What a verified bundle proves (for the human summary).
///
/// Every string comes from signed content or from the certificates, but several (the target,
/// the context) were supplied by the caller the daemon signed for: `Display` escapes them so a
/// summary printed to a terminal cannot be forged with newlines or control sequences.
#[derive(Debug, Clone)]
pub struct Verified {
    pub actor: String,
    pub action_type: String,
    pub target: String,
    pub document_sha256: String,
    /// True when the auditor supplied the action document and its digest matched.
    pub document_checked: bool,
    pub key_id: String,
    pub key_version: u64,
    pub backend: String,
    pub sequence: u64,
    /// Where the receipt is in the log, as its inclusion proof proves it.
    pub log_index: u64,
    /// True when the receipt itself names that index; false for a fleet receipt (`logIndex`
    /// null, FORMAT.md §3), whose index only the proof fixes.
    pub log_index_signed: bool,
    pub signed_at: String,
    pub device_subject: String,
    pub anchor_subject: String,
    pub token_serial: String,
    pub origin: String,
    pub context: BTreeMap<String, String>,
    /// The log's origin (and checkpoint key name).
    pub log_origin: String,
    /// Size of the tree the receipt was proved to be in.
    pub tree_size: u64,
    /// Who obtained the receipt from the daemon, e.g. `unix uid=1000 gid=1000 pid=4242` or
    /// `x509 spiffe://acme.example/agents/payments (subject "CN=payments")`.
    pub caller: String,
    /// `single`, or `batch` for a receipt sealed by a batch statement (FORMAT.md §12).
    pub mode: String,
    /// For a batch receipt: its leaf index and the batch's size.
    pub batch: Option<(u64, u64)>,
}

/// Writes a string with control characters, quotes and non-ASCII escaped.
struct Esc<'a>(&'a str);

impl fmt::Display for Esc<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0.escape_default())
    }
}

impl fmt::Display for Verified {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "OK: {} performed {} on {}",
            Esc(&self.actor),
            Esc(&self.action_type),
            Esc(&self.target)
        )?;
        let index = if self.log_index_signed {
            format!("log index {}", self.log_index)
        } else {
            format!(
                "log index {} by its inclusion proof: signed by a fleet node before ordering",
                self.log_index
            )
        };
        writeln!(
            f,
            "  receipt #{} ({index}) signed at {} by key {} v{} ({})",
            self.sequence,
            Esc(&self.signed_at),
            Esc(&self.key_id),
            self.key_version,
            Esc(&self.backend)
        )?;
        let checked = if self.document_checked {
            "matches the given document"
        } else {
            "NOT checked: no document given"
        };
        writeln!(
            f,
            "  document sha256 {} ({checked})",
            Esc(&self.document_sha256)
        )?;
        writeln!(f, "  requested by {}", Esc(&self.caller))?;
        if let Some((leaf, size)) = self.batch {
            writeln!(
                f,
                "  sealed in a batch: leaf {leaf} of {size} under one signed batch root"
            )?;
        }
        if self.backend == "tpm" {
            write!(
                f,
                "  key {} in a TPM, certified by its attestation key ({}); AK certificate \"{}\" under anchor \"{}\"",
                Esc(&self.origin),
                Esc(&self.token_serial),
                Esc(&self.device_subject),
                Esc(&self.anchor_subject)
            )?;
        } else {
            write!(
                f,
                "  key {} in token serial {}; device certificate \"{}\" under anchor \"{}\"",
                Esc(&self.origin),
                Esc(&self.token_serial),
                Esc(&self.device_subject),
                Esc(&self.anchor_subject)
            )?;
        }
        write!(
            f,
            "\n  in log {} at index {} of a signed tree of {} entries",
            Esc(&self.log_origin),
            self.log_index,
            self.tree_size
        )?;
        for (key, value) in &self.context {
            write!(f, "\n  context {} = {}", Esc(key), Esc(value))?;
        }
        Ok(())
    }
}
