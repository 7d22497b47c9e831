//! Bundle members beyond §5 that later formats add: witness cosignatures on the checkpoint,
//! RFC 3161 timestamps (`log.timestamps`), batch receipts (`batch`). They are shown where
//! present, read by their documented names; unknown members are listed, never guessed at.

use serde::Serialize;
use serde_json::Value;

/// The members of a bundle known to §5; anything else is listed as unknown.
const KNOWN_TOP: [&str; 6] = [
    "mediaType",
    "receipt",
    "actorKey",
    "lineage",
    "log",
    "batch",
];
const KNOWN_LOG: [&str; 6] = [
    "index",
    "treeSize",
    "inclusionProof",
    "checkpoint",
    "logKey",
    "timestamps",
];

/// What a bundle carries beyond the checks `actseal verify` made.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Extras {
    /// Key names of the checkpoint's signature lines other than the log key's: witnesses.
    pub cosigners: Vec<String>,
    /// How many timestamp tokens `log.timestamps` holds (absent: none).
    pub timestamps: usize,
    /// The `batch` member's own member names, when the receipt came from batch mode.
    pub batch: Option<Vec<String>>,
    /// Members this version does not know (`log.x` for those inside `log`).
    pub unknown_members: Vec<String>,
    /// With a witness policy: the policy witnesses whose cosignatures verified (the policy is
    /// met). `None`: not checked.
    pub witnesses_checked: Option<Vec<String>>,
    /// With TSA anchors: the timestamp tokens that verified, as `actseal verify` prints them.
    /// `None`: not checked.
    pub stamps_checked: Option<String>,
}

/// Reads the extras of a bundle; anything unreadable is simply not there.
pub fn of_bundle(bytes: &[u8]) -> Extras {
    let Ok(json) = serde_json::from_slice::<Value>(bytes) else {
        return Extras::default();
    };
    let log = &json["log"];
    let log_name = log["logKey"]["keyName"].as_str().unwrap_or_default();
    let mut extras = Extras {
        cosigners: cosigners(log["checkpoint"].as_str().unwrap_or_default(), log_name),
        timestamps: match &log["timestamps"] {
            Value::Array(a) => a.len(),
            Value::Null => 0,
            _ => 1,
        },
        batch: json.get("batch").map(|b| {
            b.as_object()
                .map(|m| m.keys().cloned().collect())
                .unwrap_or_default()
        }),
        unknown_members: Vec::new(),
        witnesses_checked: None,
        stamps_checked: None,
    };
    if let Some(top) = json.as_object() {
        for name in top.keys().filter(|k| !KNOWN_TOP.contains(&k.as_str())) {
            extras.unknown_members.push(name.clone());
        }
    }
    if let Some(members) = log.as_object() {
        for name in members.keys().filter(|k| !KNOWN_LOG.contains(&k.as_str())) {
            extras.unknown_members.push(format!("log.{name}"));
        }
    }
    extras
}

/// The names on a signed note's signature lines (`— name base64`) other than `log_name`.
fn cosigners(note: &str, log_name: &str) -> Vec<String> {
    let Some((_, signatures)) = note.split_once("\n\n") else {
        return Vec::new();
    };
    let mut names: Vec<String> = signatures
        .lines()
        .filter_map(|l| l.strip_prefix("\u{2014} "))
        .filter_map(|l| l.rsplit_once(' ').map(|(name, _)| name.to_string()))
        .filter(|name| name != log_name)
        .collect();
    names.dedup();
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn witness_lines_are_told_from_the_log_key() {
        let note =
            "log.example\n3\nabc=\n\n\u{2014} log.example AAAA\n\u{2014} witness.example/w1 BBBB\n";
        assert_eq!(cosigners(note, "log.example"), vec!["witness.example/w1"]);
    }
}
