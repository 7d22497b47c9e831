//! The witness policy (FORMAT.md §14.3): which witnesses a verifier trusts and how many of
//! them must have cosigned a checkpoint, in the line format of C2SP `tlog-policy` (as Sigsum's
//! policy files):
//!
//! ```text
//! log     <vkey> [<url>]                 # optional; the bundle's log key is checked anyway
//! witness <name> <vkey> [<url>]          # a cosignature/v1 key
//! group   <name> <N|all|any> <member>…   # members: witnesses or earlier groups
//! quorum  <name>                         # the witness or group that must be satisfied
//! ```
//!
//! `#` starts a comment. Names are unique across witnesses and groups; a group's members are
//! defined before it; exactly one `quorum` line.

#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::collections::{BTreeMap, BTreeSet};

use super::cosignature::{CosignatureError, NoteKey, SIGNATURE_TYPE_COSIGNATURE, parse_vkey};

/// Most witnesses and groups a policy may name (a bound on input, far above real policies).
const MAX_ENTRIES: usize = 256;

/// A witness the policy names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyWitness {
    pub name: String,
    pub key: NoteKey,
    pub url: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Group {
    threshold: usize,
    members: Vec<String>,
}

/// A parsed witness policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WitnessPolicy {
    witnesses: BTreeMap<String, PolicyWitness>,
    groups: BTreeMap<String, Group>,
    quorum: String,
}

/// What a checkpoint's cosignatures satisfy of a policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WitnessOutcome {
    /// The witnesses whose cosignature verified, with its time (Unix seconds).
    pub cosigned: BTreeMap<String, u64>,
    /// The policy's witnesses with no cosignature on the note.
    pub missing: Vec<String>,
    /// Whether the quorum is met.
    pub satisfied: bool,
}

fn parse_threshold(word: &str, members: usize) -> Result<usize, String> {
    match word {
        "all" => Ok(members),
        "any" => Ok(1),
        n => match n.parse::<usize>() {
            Ok(n) if n >= 1 && n <= members => Ok(n),
            _ => Err(format!("threshold {n:?} is not all, any or 1 to {members}")),
        },
    }
}

impl WitnessPolicy {
    /// Parses a policy; the error names the line.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut policy = WitnessPolicy {
            witnesses: BTreeMap::new(),
            groups: BTreeMap::new(),
            quorum: String::new(),
        };
        let mut quorum = None;
        for (number, raw) in (1usize..).zip(text.lines()) {
            let line = raw.split('#').next().unwrap_or_default().trim();
            let words: Vec<&str> = line.split_whitespace().collect();
            let at = |e: String| format!("line {number}: {e}");
            match words.as_slice() {
                [] => {}
                ["log", _key] | ["log", _key, _] => {}
                ["witness", name, vkey, rest @ ..] if rest.len() <= 1 => {
                    policy.add_witness(name, vkey, rest.first()).map_err(at)?
                }
                ["group", name, threshold, members @ ..] if !members.is_empty() => {
                    policy.add_group(name, threshold, members).map_err(at)?
                }
                ["quorum", name] => {
                    if quorum.replace(name.to_string()).is_some() {
                        return Err(at("a second quorum line".into()));
                    }
                }
                _ => return Err(at(format!("not a policy line: {line:?}"))),
            }
            if policy.witnesses.len().saturating_add(policy.groups.len()) > MAX_ENTRIES {
                return Err(at(format!("more than {MAX_ENTRIES} witnesses and groups")));
            }
        }
        let quorum = quorum.ok_or("no quorum line")?;
        if !policy.knows(&quorum) {
            return Err(format!("quorum {quorum:?} is no witness or group"));
        }
        policy.quorum = quorum;
        Ok(policy)
    }

    /// A policy of `threshold` of the given witnesses (the daemon's `[anchor]` configuration).
    pub fn threshold_of(witnesses: Vec<PolicyWitness>, threshold: usize) -> Result<Self, String> {
        let mut policy = WitnessPolicy {
            witnesses: BTreeMap::new(),
            groups: BTreeMap::new(),
            quorum: "quorum".into(),
        };
        let mut members = Vec::new();
        for w in witnesses {
            if policy.witnesses.contains_key(&w.name) {
                return Err(format!("witness {:?} is named twice", w.name));
            }
            members.push(w.name.clone());
            policy.witnesses.insert(w.name.clone(), w);
        }
        if members.contains(&policy.quorum) {
            return Err("a witness may not be named \"quorum\"".into());
        }
        if threshold == 0 || threshold > members.len() {
            return Err(format!(
                "quorum {threshold} is not between 1 and the {} witnesses",
                members.len()
            ));
        }
        policy
            .groups
            .insert(policy.quorum.clone(), Group { threshold, members });
        Ok(policy)
    }

    fn knows(&self, name: &str) -> bool {
        self.witnesses.contains_key(name) || self.groups.contains_key(name)
    }

    fn add_witness(&mut self, name: &str, vkey: &str, url: Option<&&str>) -> Result<(), String> {
        if self.knows(name) {
            return Err(format!("{name:?} is named twice"));
        }
        let key = parse_vkey(vkey).map_err(|e| e.to_string())?;
        if key.kind != SIGNATURE_TYPE_COSIGNATURE {
            return Err(format!("witness {name:?}: not a cosignature/v1 (0x04) key"));
        }
        self.witnesses.insert(
            name.to_string(),
            PolicyWitness {
                name: name.to_string(),
                key,
                url: url.map(|u| u.to_string()),
            },
        );
        Ok(())
    }

    fn add_group(&mut self, name: &str, threshold: &str, members: &[&str]) -> Result<(), String> {
        if self.knows(name) {
            return Err(format!("{name:?} is named twice"));
        }
        let unique: BTreeSet<&str> = members.iter().copied().collect();
        if unique.len() != members.len() {
            return Err(format!("group {name:?} names a member twice"));
        }
        if let Some(unknown) = members.iter().find(|m| !self.knows(m)) {
            return Err(format!(
                "group {name:?}: {unknown:?} is not defined before it"
            ));
        }
        let threshold = parse_threshold(threshold, members.len())?;
        self.groups.insert(
            name.to_string(),
            Group {
                threshold,
                members: members.iter().map(|m| m.to_string()).collect(),
            },
        );
        Ok(())
    }

    /// The policy's witnesses.
    pub fn witnesses(&self) -> impl Iterator<Item = &PolicyWitness> {
        self.witnesses.values()
    }

    /// Whether the witnesses in `cosigned` satisfy the quorum. Groups only name earlier
    /// entries, so the recursion ends.
    pub fn satisfied_by(&self, cosigned: &BTreeSet<String>) -> bool {
        self.holds(&self.quorum, cosigned, 0)
    }

    fn holds(&self, name: &str, cosigned: &BTreeSet<String>, depth: usize) -> bool {
        if depth > MAX_ENTRIES {
            return false;
        }
        if self.witnesses.contains_key(name) {
            return cosigned.contains(name);
        }
        let Some(group) = self.groups.get(name) else {
            return false;
        };
        let met = group
            .members
            .iter()
            .filter(|m| self.holds(m, cosigned, depth.saturating_add(1)))
            .count();
        met >= group.threshold
    }

    /// Checks every policy witness's cosignature on `note`. A cosignature line of a policy
    /// witness that does not verify is an error (the note or the line was altered), not a
    /// missing witness.
    pub fn check(&self, note: &[u8]) -> Result<WitnessOutcome, CosignatureError> {
        let (text, parsed) = super::checkpoint::parse_with_text(note)?;
        let mut cosigned = BTreeMap::new();
        let mut missing = Vec::new();
        for witness in self.witnesses.values() {
            match super::cosignature::verify_in(text, &parsed.signatures, &witness.key) {
                Ok(time) => {
                    cosigned.insert(witness.name.clone(), time);
                }
                Err(CosignatureError::Missing(_)) => missing.push(witness.name.clone()),
                Err(e) => return Err(e),
            }
        }
        let names: BTreeSet<String> = cosigned.keys().cloned().collect();
        Ok(WitnessOutcome {
            satisfied: self.satisfied_by(&names),
            cosigned,
            missing,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::cosignature::format_vkey;

    fn vkey(name: &str, seed: u8) -> String {
        let key = ed25519_dalek::SigningKey::from_bytes(&[seed; 32]);
        format_vkey(
            name,
            SIGNATURE_TYPE_COSIGNATURE,
            key.verifying_key().as_bytes(),
        )
    }

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn groups_and_thresholds() {
        let text = format!(
            "# two of three, or the auditor's own\nwitness a {} http://a.example\nwitness b {}\nwitness c {}\nwitness own {}\ngroup three 2 a b c\ngroup top any three own\nquorum top\n",
            vkey("a", 1),
            vkey("b", 2),
            vkey("c", 3),
            vkey("own", 4)
        );
        let policy = WitnessPolicy::parse(&text);
        assert!(policy.is_ok(), "{policy:?}");
        let Ok(policy) = policy else { return };
        assert!(policy.satisfied_by(&set(&["a", "c"])));
        assert!(policy.satisfied_by(&set(&["own"])));
        assert!(!policy.satisfied_by(&set(&["b"])));
        assert!(!policy.satisfied_by(&set(&[])));
    }

    #[test]
    fn refuses_bad_policies() {
        let a = vkey("a", 1);
        for bad in [
            format!("witness a {a}\n"),
            format!("witness a {a}\nquorum b\n"),
            format!("witness a {a}\nwitness a {a}\nquorum a\n"),
            format!("witness a {a}\ngroup g 2 a\nquorum g\n"),
            format!("witness a {a}\ngroup g 1 a x\nquorum g\n"),
            format!("witness a {a}\ngroup g 1 a a\nquorum g\n"),
            format!("witness a {a}\nquorum a\nquorum a\n"),
            format!("witness a {}\nquorum a\n", a.replace('+', "-")),
            "bogus line\nquorum a\n".to_string(),
        ] {
            assert!(WitnessPolicy::parse(&bad).is_err(), "{bad:?}");
        }
    }
}
