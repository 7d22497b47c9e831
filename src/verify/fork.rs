//! Fork evidence (FORMAT.md §16): proof, checkable by anyone with the operator's trust anchor,
//! that a log's key signed two checkpoints that cannot both be views of one append-only log.
//!
//! Two kinds: `same-size` (two checkpoints of one size with different roots: conclusive on its
//! face) and `inconsistent-proof` (checkpoints of sizes m < n and a consistency path that leads
//! to the size-n root yet gives, at size m, a root other than the one the log signed for m:
//! conclusive as long as SHA-256 is collision resistant, since the path fixes the size-m
//! prefix of the tree whose root the log signed at n).

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::anchors::TrustAnchors;
use super::bundle;
use super::checkpoint::{ParsedCheckpoint, verify_checkpoint};
use super::merkle::Hash;

/// The evidence file's media type.
pub const FORK_EVIDENCE_TYPE: &str = "application/vnd.actseal.fork-evidence.v1+json";

/// Which kind of fork the evidence shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ForkKind {
    SameSize,
    InconsistentProof,
}

/// The evidence file (FORMAT.md §16).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ForkEvidence {
    pub media_type: String,
    pub kind: ForkKind,
    /// The log's origin (its key name).
    pub origin: String,
    /// A bundle of the log: it attests the log key (verified in full against the anchor).
    pub bundle: serde_json::Value,
    /// The two signed checkpoint notes; for `inconsistent-proof` the smaller size first.
    pub checkpoints: Vec<String>,
    /// For `inconsistent-proof`: the consistency path from the first checkpoint's size to the
    /// second's, lowercase hex, with the size-m subtree root first when m is a power of two.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<Vec<String>>,
}

/// What verified evidence shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForkReport {
    pub origin: String,
    pub kind: ForkKind,
    pub sizes: (u64, u64),
    pub roots: (Hash, Hash),
    /// For `inconsistent-proof`: the root at the smaller size of the tree the log signed at
    /// the larger one.
    pub prefix_root: Option<Hash>,
}

impl std::fmt::Display for ForkReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let origin = self.origin.escape_default();
        let hex = hex::encode;
        match (self.kind, self.prefix_root) {
            (ForkKind::SameSize, _) | (_, None) => write!(
                f,
                "FORK: log {origin} signed two checkpoints of size {} with different roots {} and {}",
                self.sizes.0,
                hex(self.roots.0),
                hex(self.roots.1)
            ),
            (ForkKind::InconsistentProof, Some(prefix)) => write!(
                f,
                "FORK: log {origin} signed size {} with root {}, and size {} with root {} whose tree has root {} at size {} (consistency path)",
                self.sizes.0,
                hex(self.roots.0),
                self.sizes.1,
                hex(self.roots.1),
                hex(prefix),
                self.sizes.0
            ),
        }
    }
}

/// Builds `same-size` evidence from two notes of one log (not checked here: see
/// [`verify_fork_evidence`]).
pub fn same_size_evidence(
    origin: &str,
    bundle_json: &[u8],
    a: &str,
    b: &str,
) -> Result<String, String> {
    evidence(ForkEvidence {
        media_type: FORK_EVIDENCE_TYPE.into(),
        kind: ForkKind::SameSize,
        origin: origin.into(),
        bundle: serde_json::from_slice(bundle_json).map_err(|e| e.to_string())?,
        checkpoints: vec![a.into(), b.into()],
        path: None,
    })
}

/// Builds `inconsistent-proof` evidence: `old` (size m) and `new` (size n > m) and the path
/// from m to n of the tree that `new` signs, as RFC 9162 §2.1.4.1 writes it; `prefix_root` is
/// that tree's root at size m, needed (and put first) when m is a power of two.
pub fn proof_evidence(
    origin: &str,
    bundle_json: &[u8],
    old: &str,
    new: &str,
    rfc_path: &[Hash],
    prefix_root: &Hash,
) -> Result<String, String> {
    let m = super::checkpoint::parse_checkpoint(old.as_bytes())
        .map_err(|e| e.to_string())?
        .size;
    let mut path: Vec<String> = Vec::new();
    if m.is_power_of_two() {
        path.push(hex::encode(prefix_root));
    }
    path.extend(rfc_path.iter().map(hex::encode));
    evidence(ForkEvidence {
        media_type: FORK_EVIDENCE_TYPE.into(),
        kind: ForkKind::InconsistentProof,
        origin: origin.into(),
        bundle: serde_json::from_slice(bundle_json).map_err(|e| e.to_string())?,
        checkpoints: vec![old.into(), new.into()],
        path: Some(path),
    })
}

fn evidence(e: ForkEvidence) -> Result<String, String> {
    serde_json::to_string_pretty(&e).map_err(|e| e.to_string())
}

/// Checks fork evidence: the bundle verifies against `anchors` and attests the log key of
/// `origin`; both checkpoints are signed by it; and they show a fork of the named kind.
pub fn verify_fork_evidence(json: &[u8], anchors: &TrustAnchors) -> Result<ForkReport, String> {
    let e: ForkEvidence =
        serde_json::from_slice(json).map_err(|e| format!("not fork evidence: {e}"))?;
    if e.media_type != FORK_EVIDENCE_TYPE {
        return Err(format!("mediaType is not {FORK_EVIDENCE_TYPE}"));
    }
    let bundle_json = serde_json::to_vec(&e.bundle).map_err(|e| e.to_string())?;
    super::verify_bundle(&bundle_json, anchors, None)
        .map_err(|e| format!("the bundle naming the log key does not verify: {e}"))?;
    let log = bundle::decode_log_key_text(bundle::parse(&bundle_json)?.log.log_key_json)?;
    if log.key_name != e.origin {
        return Err(format!(
            "the bundle is of log {:?}, not {:?}",
            log.key_name, e.origin
        ));
    }
    let [a, b] = e.checkpoints.as_slice() else {
        return Err("fork evidence holds exactly two checkpoints".into());
    };
    let check = |note: &str, which: &str| -> Result<ParsedCheckpoint, String> {
        let c = verify_checkpoint(note.as_bytes(), &log.key_name, &log.key.spki_der)
            .map_err(|err| format!("{which} checkpoint: {err}"))?;
        if c.origin != e.origin {
            return Err(format!("{which} checkpoint is of log {:?}", c.origin));
        }
        Ok(c)
    };
    let (a, b) = (check(a, "the first")?, check(b, "the second")?);
    let mut report = ForkReport {
        origin: e.origin.clone(),
        kind: e.kind,
        sizes: (a.size, b.size),
        roots: (a.root, b.root),
        prefix_root: None,
    };
    match e.kind {
        ForkKind::SameSize => {
            if a.size != b.size {
                return Err("not a fork: the checkpoints are of different sizes".into());
            }
            if a.root == b.root {
                return Err("not a fork: the two checkpoints have the same root".into());
            }
        }
        ForkKind::InconsistentProof => {
            let path = e
                .path
                .as_deref()
                .ok_or("inconsistent-proof evidence needs a path")?;
            let path = decode_hashes(path)?;
            let (prefix, full) = roots_from_path(a.size, b.size, &path)?;
            if full != b.root {
                return Err(
                    "the path does not lead to the second checkpoint's root: it proves nothing"
                        .into(),
                );
            }
            if prefix == a.root {
                return Err("not a fork: the path shows the first checkpoint's tree is a prefix of the second's".into());
            }
            report.prefix_root = Some(prefix);
        }
    }
    Ok(report)
}

/// Lowercase hex hashes of 32 bytes.
pub(crate) fn decode_hashes(hashes: &[String]) -> Result<Vec<Hash>, String> {
    hashes
        .iter()
        .map(|h| {
            hex::decode(h)
                .ok()
                .and_then(|b| <Hash>::try_from(b.as_slice()).ok())
                .ok_or_else(|| "proof hashes must be 32-byte hex".to_string())
        })
        .collect()
}

fn node(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([0x01u8]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// RFC 9162 §2.1.4.2 steps 3–7 over a path that already starts with the size-m subtree root
/// when m is a power of two (step 2): returns the roots at sizes m and n it leads to.
pub fn roots_from_path(m: u64, n: u64, path: &[Hash]) -> Result<(Hash, Hash), String> {
    if m == 0 || m >= n {
        return Err(format!(
            "no consistency path exists from size {m} to size {n}"
        ));
    }
    let (first, rest) = path.split_first().ok_or("the path is empty")?;
    let mut fn_ = m.saturating_sub(1);
    let mut sn = n.saturating_sub(1);
    while fn_ & 1 == 1 {
        fn_ >>= 1u32;
        sn >>= 1u32;
    }
    let (mut fr, mut sr) = (*first, *first);
    for c in rest {
        if sn == 0 {
            return Err("the path is longer than the sizes call for".into());
        }
        if fn_ & 1 == 1 || fn_ == sn {
            fr = node(c, &fr);
            sr = node(c, &sr);
            if fn_ & 1 == 0 {
                while fn_ != 0 && fn_ & 1 == 0 {
                    fn_ >>= 1u32;
                    sn >>= 1u32;
                }
            }
        } else {
            sr = node(&sr, c);
        }
        fn_ >>= 1u32;
        sn >>= 1u32;
    }
    if sn != 0 {
        return Err("the path is shorter than the sizes call for".into());
    }
    Ok((fr, sr))
}
