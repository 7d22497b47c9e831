//! `actseal actions`: select receipts, verify each, report the gaps in each actor's sequence
//! and match the retained documents to receipts by SHA-256.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::verify::timestamp::TsaAnchors;
use crate::verify::witness_policy::WitnessPolicy;
use crate::verify::{BundleVerifier, TrustAnchors, Verified};

use super::ForensicsError;
use super::extras::{self, Extras};
use super::load::{self, Item, Note};

/// Which receipts to show. Gaps are found over all of an actor's receipts in the inputs, so a
/// type or time filter never hides (or invents) one.
#[derive(Debug, Clone, Default)]
pub struct Query {
    pub actor: Option<String>,
    pub action_type: Option<String>,
    /// Unix seconds, inclusive.
    pub from: Option<i64>,
    /// Unix seconds, inclusive.
    pub until: Option<i64>,
    /// Check each bundle's witness cosignatures against this policy (`log.witnesses`).
    pub witness_policy: Option<WitnessPolicy>,
    /// Check each bundle's RFC 3161 tokens under these TSA anchors (`log.timestamp`).
    pub tsa: Option<TsaAnchors>,
}

/// What a receipt says about itself, read without trusting it.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Claims {
    pub actor: String,
    pub action_type: String,
    pub target: String,
    pub document_sha256: String,
    pub parent_sha256: Option<String>,
    pub sequence: Option<u64>,
    pub previous_receipt: Option<String>,
    pub signed_at: String,
    pub log_index: Option<u64>,
    pub mode: String,
    pub context: BTreeMap<String, String>,
    /// SHA-256 of the payload: what the next receipt's `previousReceipt` must name.
    pub payload_sha256: String,
}

/// What the verifier proved of a receipt.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Proof {
    pub key_id: String,
    pub key_version: u64,
    pub backend: String,
    pub key_origin: String,
    /// Token serial (PKCS#11) or TPM firmware and clock (TPM).
    pub hardware: String,
    pub device_subject: String,
    pub anchor_subject: String,
    pub log_origin: String,
    /// The index the inclusion proof proves.
    pub log_index: u64,
    /// The receipt signs its index too; a fleet receipt (`logIndex` null) does not, and its
    /// index is the proof's alone.
    pub log_index_signed: bool,
    pub tree_size: u64,
    pub caller: String,
    /// The given document's SHA-256 was checked against the receipt (`receipt.document`).
    pub document_checked: bool,
}

impl From<&Verified> for Proof {
    fn from(v: &Verified) -> Self {
        Proof {
            key_id: v.key_id.clone(),
            key_version: v.key_version,
            backend: v.backend.clone(),
            key_origin: v.origin.clone(),
            hardware: v.token_serial.clone(),
            device_subject: v.device_subject.clone(),
            anchor_subject: v.anchor_subject.clone(),
            log_origin: v.log_origin.clone(),
            log_index: v.log_index,
            log_index_signed: v.log_index_signed,
            tree_size: v.tree_size,
            caller: v.caller.clone(),
            document_checked: v.document_checked,
        }
    }
}

/// The check that failed (FORMAT.md §7 name, or `input` when no bundle could be had).
#[derive(Debug, Clone, Serialize)]
pub struct Failure {
    pub check: String,
    pub detail: String,
}

/// A receipt's place in the log, as shown: proven by its inclusion proof, or (nothing
/// proved) what the receipt claims.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LogPosition {
    pub index: u64,
    /// The verifier proved the entry at `index` (its inclusion proof against a checkpoint
    /// signed by the log key), whether or not the receipt names the index.
    pub proven: bool,
}

/// One receipt, as found, claimed and checked.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Action {
    /// Where it was found (file, line, export entry); more than one when found twice.
    pub sources: Vec<String>,
    pub claims: Claims,
    /// Its log index: the proven one, which a fleet receipt (`claims.logIndex` null) does
    /// not carry itself; `None` when neither proved nor claimed.
    pub log_index: Option<LogPosition>,
    pub proof: Option<Proof>,
    pub failure: Option<Failure>,
    /// Retained documents whose SHA-256 is the receipt's subject digest.
    pub documents: Vec<String>,
    /// The record that held the bundle carried the action document, and it was given to the
    /// verifier (when no retained file matched).
    pub document_carried: bool,
    /// Retained documents whose SHA-256 is the receipt's parent digest.
    pub parent_documents: Vec<String>,
    pub extras: Extras,
}

impl Action {
    /// True when the verifier accepted the receipt.
    pub fn proved(&self) -> bool {
        self.proof.is_some()
    }

    /// True when the actor's attested key signed the receipt: it is proved, or only its log
    /// proof failed (`log.*`, e.g. an export with an entry removed no longer matches its
    /// checkpoint). Such a receipt is evidence of its place in the actor's sequence.
    pub fn signed_by_actor(&self) -> bool {
        self.proved()
            || self
                .failure
                .as_ref()
                .is_some_and(|f| f.check.starts_with("log."))
    }
}

/// A hole or a break in an actor's receipts: evidence in its own right.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Gap {
    pub actor: String,
    /// `missing` (sequence numbers not among the proved receipts), `chain` (a receipt's
    /// `previousReceipt` is not its predecessor's hash) or `fork` (two receipts, one number).
    pub kind: String,
    pub first: u64,
    pub last: u64,
    pub detail: String,
}

/// Everything `actions` found.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Findings {
    pub actions: Vec<Action>,
    pub gaps: Vec<Gap>,
    pub notes: Vec<Note>,
    /// Retained documents that no receipt (nor parent) names.
    pub unmatched_documents: Vec<String>,
    pub anchors: Vec<String>,
}

impl Findings {
    /// True when every action shown was proved and nothing is missing.
    pub fn all_hold(&self) -> bool {
        self.actions.iter().all(Action::proved)
            && self.gaps.is_empty()
            && self.notes.iter().all(|n| n.ok)
    }
}

/// Reads `inputs` (files and folders) and `fetched` (named contents of the same kinds, e.g.
/// bundles the daemon served), verifies every receipt and applies `query`. `documents`: a folder
/// of retained documents, matched to receipts by SHA-256.
pub fn investigate(
    inputs: &[PathBuf],
    fetched: Vec<(String, Vec<u8>)>,
    anchors: &TrustAnchors,
    query: &Query,
    documents: Option<&Path>,
) -> Result<Findings, ForensicsError> {
    let read_err = |path: &Path| {
        let path = path.display().to_string();
        move |source| ForensicsError::Read { path, source }
    };
    let mut loaded = load::load(inputs)?;
    for (source, bytes) in fetched {
        load::load_file(&source, bytes, &mut loaded);
    }
    let docs = match documents {
        Some(dir) => hash_documents(dir).map_err(read_err(dir))?,
        None => HashMap::new(),
    };
    for (source, bytes) in &loaded.exports {
        loaded.notes.push(audit_note(source, bytes, anchors));
    }
    // What the receipts of one log share (lineage, log key, checkpoints) is checked once.
    let mut verifier = BundleVerifier::new(anchors);
    let mut all = dedupe(
        loaded
            .items
            .iter()
            .map(|item| check(item, &mut verifier, query, &docs)),
    );
    sort(&mut all);
    let gaps = find_gaps(&all, query.actor.as_deref());
    let unmatched_documents = unmatched(&docs, &all);
    let actions = all.into_iter().filter(|a| selected(a, query)).collect();
    Ok(Findings {
        actions,
        gaps,
        notes: loaded.notes,
        unmatched_documents,
        anchors: anchors.subjects(),
    })
}

/// The log-wide audit of an export (`actseal audit`), as a note.
fn audit_note(source: &str, bytes: &[u8], anchors: &TrustAnchors) -> Note {
    match crate::verify::audit::audit_log(bytes, anchors) {
        Ok(report) => Note {
            source: source.to_string(),
            ok: true,
            text: format!("log audit: {report}"),
        },
        Err(e) => Note {
            source: source.to_string(),
            ok: false,
            text: format!("log audit FAILED: {e}"),
        },
    }
}

/// Verifies one item, with its retained document when one matches.
fn check(
    item: &Item,
    verifier: &mut BundleVerifier<'_>,
    query: &Query,
    docs: &HashMap<String, Vec<PathBuf>>,
) -> Action {
    let claims = item.payload.as_deref().map(claims_of).unwrap_or_default();
    let documents = docs
        .get(&claims.document_sha256)
        .cloned()
        .unwrap_or_default();
    let parent_documents = claims
        .parent_sha256
        .as_ref()
        .and_then(|p| docs.get(p).cloned())
        .unwrap_or_default();
    let document = documents
        .first()
        .and_then(|p| std::fs::read(p).ok())
        .or_else(|| item.document.clone());
    let (proof, failure, extras) = match &item.bundle {
        Ok(bytes) => match verifier.verify(bytes, document.as_deref()) {
            Ok(v) => {
                let mut extras = extras::of_bundle(bytes);
                match check_anchoring(bytes, &v, query, &mut extras) {
                    Ok(()) => (Some(Proof::from(&v)), None, extras),
                    Err(f) => (None, Some(f), extras),
                }
            }
            Err(e) => {
                let f = Failure {
                    check: e.check.to_string(),
                    detail: e.detail,
                };
                (None, Some(f), extras::of_bundle(bytes))
            }
        },
        Err(detail) => {
            let f = Failure {
                check: "input".into(),
                detail: detail.clone(),
            };
            (None, Some(f), Extras::default())
        }
    };
    let shown = |paths: Vec<PathBuf>| paths.iter().map(|p| p.display().to_string()).collect();
    Action {
        sources: vec![item.source.clone()],
        log_index: position(&claims, proof.as_ref()),
        claims,
        proof,
        failure,
        document_carried: documents.is_empty() && item.document.is_some(),
        documents: shown(documents),
        parent_documents: shown(parent_documents),
        extras,
    }
}

/// The proven index, else the claimed one (not proven).
fn position(claims: &Claims, proof: Option<&Proof>) -> Option<LogPosition> {
    match proof {
        Some(p) => Some(LogPosition {
            index: p.log_index,
            proven: true,
        }),
        None => claims.log_index.map(|index| LogPosition {
            index,
            proven: false,
        }),
    }
}

/// `log.witnesses` and `log.timestamp`, when the query asks for them, on a bundle the verifier
/// accepted; what they proved goes into `extras`.
fn check_anchoring(
    bytes: &[u8],
    verified: &Verified,
    query: &Query,
    extras: &mut Extras,
) -> Result<(), Failure> {
    let failure = |check: &str, detail: String| Failure {
        check: check.into(),
        detail,
    };
    if let Some(policy) = &query.witness_policy {
        let note = serde_json::from_slice::<Value>(bytes)
            .ok()
            .and_then(|b| b["log"]["checkpoint"].as_str().map(str::to_owned))
            .unwrap_or_default();
        let outcome = policy
            .check(note.as_bytes())
            .map_err(|e| failure("log.witnesses", e.to_string()))?;
        let cosigned: Vec<String> = outcome.cosigned.keys().cloned().collect();
        if !outcome.satisfied {
            return Err(failure(
                "log.witnesses",
                format!(
                    "the witness policy is not met: cosigned by [{}], missing [{}]",
                    cosigned.join(", "),
                    outcome.missing.join(", ")
                ),
            ));
        }
        extras.witnesses_checked = Some(cosigned);
    }
    if let Some(tsa) = &query.tsa {
        let stamps = crate::verify::verify_bundle_timestamps(bytes, verified, tsa)
            .map_err(|e| failure("log.timestamp", e.detail))?;
        extras.stamps_checked = Some(stamps.to_string().trim_end().to_string());
    }
    Ok(())
}

/// The claims of a receipt payload; members that are missing or of the wrong type are empty.
fn claims_of(payload: &[u8]) -> Claims {
    let payload_sha256 = hex::encode(Sha256::digest(payload));
    let Ok(s) = serde_json::from_slice::<Value>(payload) else {
        return Claims {
            payload_sha256,
            ..Claims::default()
        };
    };
    let p = &s["predicate"];
    let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
    let context = p["context"]
        .as_object()
        .map(|m| m.iter().map(|(k, v)| (k.clone(), text(v))).collect())
        .unwrap_or_default();
    Claims {
        actor: text(&p["actor"]),
        action_type: text(&p["action"]["type"]),
        target: text(&p["action"]["target"]),
        document_sha256: text(&s["subject"][0]["digest"]["sha256"]),
        parent_sha256: p["action"]["parentSha256"].as_str().map(String::from),
        sequence: p["sequence"].as_u64(),
        previous_receipt: p["previousReceipt"]["sha256"].as_str().map(String::from),
        signed_at: text(&p["signedAt"]),
        log_index: p["logIndex"].as_u64(),
        mode: text(&p["mode"]),
        context,
        payload_sha256,
    }
}

/// One action per receipt: the same receipt found twice (a bundle and an export) is one action
/// with two sources, proved if either copy was.
fn dedupe(actions: impl Iterator<Item = Action>) -> Vec<Action> {
    let mut out: Vec<Action> = Vec::new();
    let mut seen: HashMap<String, usize> = HashMap::new();
    for action in actions {
        let key = action.claims.payload_sha256.clone();
        match seen.get(&key) {
            Some(&i) if !key.is_empty() => {
                let kept = &mut out[i];
                kept.sources.extend(action.sources.iter().cloned());
                if !kept.proved() && action.proved() {
                    let sources = std::mem::take(&mut kept.sources);
                    *kept = Action { sources, ..action };
                }
            }
            _ => {
                seen.insert(key, out.len());
                out.push(action);
            }
        }
    }
    out
}

/// Actor, then sequence, then time: the order a timeline reads in.
fn sort(actions: &mut [Action]) {
    actions.sort_by(|a, b| {
        let key = |x: &Action| {
            (
                x.claims.actor.clone(),
                x.claims.sequence.unwrap_or(u64::MAX),
                x.claims.signed_at.clone(),
            )
        };
        key(a).cmp(&key(b))
    });
}

fn unix(time: &str) -> Option<i64> {
    time::OffsetDateTime::parse(time, &time::format_description::well_known::Rfc3339)
        .ok()
        .map(|t| t.unix_timestamp())
}

fn selected(a: &Action, q: &Query) -> bool {
    let at = unix(&a.claims.signed_at);
    q.actor.as_ref().is_none_or(|x| *x == a.claims.actor)
        && q.action_type
            .as_ref()
            .is_none_or(|x| *x == a.claims.action_type)
        && q.from.is_none_or(|from| at.is_some_and(|t| t >= from))
        && q.until.is_none_or(|until| at.is_some_and(|t| t <= until))
}

/// Gaps, chain breaks and forks among the receipts each actor's key is proved to have signed
/// ([`Action::signed_by_actor`]): a receipt whose signature or lineage fails cannot fill a hole,
/// as its claims are not evidence.
fn find_gaps(actions: &[Action], actor: Option<&str>) -> Vec<Gap> {
    let mut by_actor: BTreeMap<&str, Vec<&Action>> = BTreeMap::new();
    for a in actions.iter().filter(|a| a.signed_by_actor()) {
        if actor.is_none_or(|x| x == a.claims.actor) {
            by_actor.entry(&a.claims.actor).or_default().push(a);
        }
    }
    let mut gaps = Vec::new();
    for (actor, list) in by_actor {
        gaps.extend(actor_gaps(actor, &list, actions));
    }
    gaps
}

fn actor_gaps(actor: &str, proved: &[&Action], all: &[Action]) -> Vec<Gap> {
    let gap = |kind: &str, first: u64, last: u64, detail: String| Gap {
        actor: actor.to_string(),
        kind: kind.into(),
        first,
        last,
        detail,
    };
    let mut by_seq: BTreeMap<u64, Vec<&Action>> = BTreeMap::new();
    for a in proved {
        by_seq
            .entry(a.claims.sequence.unwrap_or(0))
            .or_default()
            .push(a);
    }
    let mut gaps = Vec::new();
    let mut expected = 1u64;
    let mut previous: Option<&Action> = None;
    for (&seq, at) in &by_seq {
        if seq > expected {
            let detail = missing_detail(actor, expected, seq - 1, all);
            gaps.push(gap("missing", expected, seq - 1, detail));
            previous = None;
        }
        if at.len() > 1 {
            let detail = format!(
                "{} different signed receipts carry sequence {seq}",
                at.len()
            );
            gaps.push(gap("fork", seq, seq, detail));
        }
        let here = at[0];
        if let Some(prev) = previous
            && here.claims.previous_receipt.as_deref() != Some(prev.claims.payload_sha256.as_str())
        {
            let detail = format!(
                "receipt {seq} names previous receipt {} but receipt {} hashes to {}",
                here.claims.previous_receipt.as_deref().unwrap_or("none"),
                seq - 1,
                prev.claims.payload_sha256
            );
            gaps.push(gap("chain", seq - 1, seq, detail));
        }
        previous = Some(here);
        expected = seq + 1;
    }
    gaps
}

/// Says whether a receipt that failed verification claims a missing number.
fn missing_detail(actor: &str, first: u64, last: u64, all: &[Action]) -> String {
    let claimed: BTreeSet<u64> = all
        .iter()
        .filter(|a| !a.signed_by_actor() && a.claims.actor == actor)
        .filter_map(|a| a.claims.sequence)
        .filter(|s| (first..=last).contains(s))
        .collect();
    let span = if first == last {
        format!("receipt {first} is missing")
    } else {
        format!("receipts {first} to {last} are missing")
    };
    if claimed.is_empty() {
        format!("{span}: no receipt signed by {actor}'s key carries this sequence")
    } else {
        let numbers: Vec<String> = claimed.iter().map(u64::to_string).collect();
        format!(
            "{span}: only receipts whose signature or key failed verification claim {}",
            numbers.join(", ")
        )
    }
}

/// SHA-256 of every regular file under `dir` (to a fixed depth; links are not followed).
fn hash_documents(dir: &Path) -> Result<HashMap<String, Vec<PathBuf>>, std::io::Error> {
    let mut out: HashMap<String, Vec<PathBuf>> = HashMap::new();
    let mut stack = vec![(dir.to_path_buf(), 0usize)];
    while let Some((folder, depth)) = stack.pop() {
        let mut entries: Vec<_> = std::fs::read_dir(&folder)?.filter_map(Result::ok).collect();
        entries.sort_by_key(|e| e.path());
        for entry in entries {
            let kind = entry.file_type()?;
            if kind.is_dir() && depth < 8 {
                stack.push((entry.path(), depth + 1));
            } else if kind.is_file() {
                let digest = hash_file(&entry.path())?;
                out.entry(digest).or_default().push(entry.path());
            }
        }
    }
    Ok(out)
}

fn hash_file(path: &Path) -> Result<String, std::io::Error> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher)?;
    Ok(hex::encode(hasher.finalize()))
}

fn unmatched(docs: &HashMap<String, Vec<PathBuf>>, actions: &[Action]) -> Vec<String> {
    let named: BTreeSet<&str> = actions
        .iter()
        .flat_map(|a| {
            [
                Some(a.claims.document_sha256.as_str()),
                a.claims.parent_sha256.as_deref(),
            ]
        })
        .flatten()
        .collect();
    let mut out: Vec<String> = docs
        .iter()
        .filter(|(d, _)| !named.contains(d.as_str()))
        .flat_map(|(_, paths)| paths.iter().map(|p| p.display().to_string()))
        .collect();
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The committed fleet vectors (FORMAT.md §9): receipts with `logIndex` null show the
    /// index their inclusion proof proves, marked proven; the single-host vector its own.
    #[test]
    fn fleet_receipts_show_the_proven_index() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors");
        let anchors =
            TrustAnchors::from_pem(&std::fs::read(dir.join("anchor.pem")).unwrap()).unwrap();
        let findings = investigate(
            &[
                dir.join("fleet-v1.json"),
                dir.join("fleet-batch-v1-leaf1.json"),
                dir.join("bundle-v1.json"),
            ],
            Vec::new(),
            &anchors,
            &Query::default(),
            None,
        )
        .unwrap();
        let by_source = |name: &str| {
            findings
                .actions
                .iter()
                .find(|a| a.sources.iter().any(|s| s.ends_with(name)))
                .unwrap_or_else(|| panic!("{name} not shown"))
        };
        for name in ["fleet-v1.json", "fleet-batch-v1-leaf1.json"] {
            let action = by_source(name);
            let proof = action.proof.as_ref().expect("proved");
            assert_eq!(action.claims.log_index, None, "{name}");
            assert!(!proof.log_index_signed, "{name}");
            assert_eq!(
                action.log_index,
                Some(LogPosition {
                    index: proof.log_index,
                    proven: true
                }),
                "{name}"
            );
            let json = serde_json::to_value(action).unwrap();
            assert_eq!(json["logIndex"]["index"], proof.log_index, "{name}");
            assert_eq!(json["logIndex"]["proven"], true, "{name}");
        }
        assert_eq!(by_source("fleet-v1.json").log_index.unwrap().index, 3);
        let single = by_source("bundle-v1.json");
        assert_eq!(
            single.log_index.unwrap().index,
            single.claims.log_index.unwrap()
        );
        assert!(single.proof.as_ref().unwrap().log_index_signed);
        let text = findings.to_string();
        assert!(
            text.contains("index 3 (proven; the receipt does not sign it)"),
            "{text}"
        );
    }

    #[test]
    fn an_unproved_receipt_shows_its_claimed_index_as_not_proven() {
        let claims = Claims {
            log_index: Some(7),
            ..Claims::default()
        };
        assert_eq!(
            position(&claims, None),
            Some(LogPosition {
                index: 7,
                proven: false
            })
        );
        assert_eq!(position(&Claims::default(), None), None);
    }

    /// A receipt the verifier accepted, claiming `seq` with `previous` as its predecessor.
    fn proved(seq: u64, payload: &str, previous: Option<&str>) -> Action {
        Action {
            sources: vec![format!("test {seq}")],
            log_index: Some(LogPosition {
                index: seq,
                proven: true,
            }),
            claims: Claims {
                actor: "a".into(),
                sequence: Some(seq),
                previous_receipt: previous.map(String::from),
                payload_sha256: payload.into(),
                ..Claims::default()
            },
            proof: Some(Proof {
                key_id: String::new(),
                key_version: 1,
                backend: "pkcs11".into(),
                key_origin: String::new(),
                hardware: String::new(),
                device_subject: String::new(),
                anchor_subject: String::new(),
                log_origin: String::new(),
                log_index: seq,
                log_index_signed: true,
                tree_size: seq + 1,
                caller: String::new(),
                document_checked: false,
            }),
            failure: None,
            documents: Vec::new(),
            document_carried: false,
            parent_documents: Vec::new(),
            extras: Extras::default(),
        }
    }

    #[test]
    fn holes_forks_and_chain_breaks_are_each_reported() {
        let mut failed = proved(5, "p5", Some("p4"));
        failed.proof = None;
        failed.failure = Some(Failure {
            check: "receipt.signature".into(),
            detail: String::new(),
        });
        let actions = vec![
            proved(2, "p2", Some("p1")),
            proved(3, "p3", Some("p2")),
            proved(3, "p3b", Some("p2")),
            proved(4, "p4", Some("not-p3")),
            failed,
            proved(6, "p6", Some("p5")),
        ];
        let gaps = find_gaps(&actions, None);
        let kinds: Vec<(&str, u64, u64)> = gaps
            .iter()
            .map(|g| (g.kind.as_str(), g.first, g.last))
            .collect();
        assert_eq!(
            kinds,
            vec![
                ("missing", 1, 1),
                ("fork", 3, 3),
                ("chain", 3, 4),
                ("missing", 5, 5)
            ]
        );
        assert!(
            gaps[3].detail.ends_with("failed verification claim 5"),
            "{}",
            gaps[3].detail
        );
    }
}
