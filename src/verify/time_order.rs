//! The time rules `actseal audit` checks (FORMAT.md §11.4).
//!
//! A single host dates every entry no earlier than the entry before it, so in its log times never
//! decrease in log order. A fleet's nodes sign with their own clocks before the integrator orders
//! their entries, so across nodes log order is not time order. What holds in every log:
//!
//! * **per actor**: an actor's entries (its key registrations, receipts, rotations, retirement)
//!   never go back in time along the log, since an actor belongs to one node at a time and that
//!   node dates its entries no earlier than its own previous ones;
//! * **the single-host part**: up to the last receipt that names its log index before the log's
//!   first fleet receipt (`logIndex` null), times never decrease in log order, as before;
//! * **after it**: no entry is dated before the end of that part (a node starts dated no
//!   earlier than the log's newest entry).
//!
//! A log without fleet receipts is all single-host part: the rule is the old one, unchanged.

use std::collections::HashMap;

use serde::Deserialize;

use super::statement;

/// The member that dates each kind of entry.
fn time_member(kind: &str) -> Result<&'static str, String> {
    match kind {
        statement::REGISTRATION_PREDICATE_TYPE => Ok("registeredAt"),
        statement::RECEIPT_PREDICATE_TYPE => Ok("signedAt"),
        statement::ROTATION_PREDICATE_TYPE => Ok("rotatedAt"),
        statement::RETIREMENT_PREDICATE_TYPE => Ok("retiredAt"),
        statement::LOG_START_PREDICATE_TYPE => Ok("startedAt"),
        other => Err(format!("no time rule for entry type {other:?}")),
    }
}

/// Where the single-host part of a log ends: the number of leading entries under the log-order
/// rule. `receipts` yields, in log order, each receipt's log index and whether its `logIndex` is
/// null (entries that are not receipts are left out).
pub(crate) fn single_host_len(receipts: impl IntoIterator<Item = (u64, bool)>, size: u64) -> u64 {
    let mut last_indexed = None;
    for (index, fleet) in receipts {
        if fleet {
            return last_indexed.map_or(0, |i: u64| i.saturating_add(1));
        }
        last_indexed = Some(index);
    }
    size
}

/// Whether a receipt payload's `logIndex` is null (a fleet receipt); `false` for anything that
/// does not parse, which the replay refuses on its own.
pub(crate) fn is_fleet_receipt(payload: &[u8]) -> bool {
    #[derive(Deserialize)]
    struct Head {
        predicate: Index,
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Index {
        #[serde(deserialize_with = "statement::present_or_null")]
        log_index: Option<serde::de::IgnoredAny>,
    }
    serde_json::from_slice::<Head>(payload).is_ok_and(|h| h.predicate.log_index.is_none())
}

/// The time rules' state along a replay.
pub(crate) struct TimeOrder {
    /// Entries `0 .. single_host_len` are the single-host part.
    single_host_len: u64,
    /// The index and time of the last entry of the single-host part replayed.
    previous: Option<(u64, i64)>,
    /// Each actor's last entry: its index and time.
    actors: HashMap<String, (u64, i64)>,
}

impl TimeOrder {
    pub(crate) fn new(single_host_len: u64) -> Self {
        TimeOrder {
            single_host_len,
            previous: None,
            actors: HashMap::new(),
        }
    }

    /// Checks the entry at `index` (of type `kind`) against the entries before it.
    pub(crate) fn check(&mut self, payload: &[u8], kind: &str, index: u64) -> Result<(), String> {
        let member = time_member(kind)?;
        let statement: serde_json::Value =
            serde_json::from_slice(payload).map_err(|e| format!("payload: {e}"))?;
        let predicate = statement.get("predicate");
        let text = predicate
            .and_then(|p| p.get(member))
            .and_then(|t| t.as_str())
            .ok_or_else(|| format!("predicate.{member} is missing"))?;
        let time = statement::parse_time(&format!("predicate.{member}"), text)?;
        let backwards = |(earlier, earlier_time): (u64, i64), what: &str| {
            format!(
                "dated {text}, {} s before entry {earlier}{what}",
                earlier_time.saturating_sub(time)
            )
        };
        if let Some(previous) = self.previous
            && time < previous.1
        {
            let what = if index < self.single_host_len {
                ": times go backwards in the log"
            } else {
                ", the end of the single-host part of the log that this fleet part follows"
            };
            return Err(backwards(previous, what));
        }
        if index < self.single_host_len {
            self.previous = Some((index, time));
        }
        if kind == statement::LOG_START_PREDICATE_TYPE {
            return Ok(());
        }
        let actor = predicate
            .and_then(|p| p.get("actor"))
            .and_then(|a| a.as_str())
            .ok_or("predicate.actor is missing")?;
        if let Some(&last) = self.actors.get(actor)
            && time < last.1
        {
            return Err(backwards(
                last,
                &format!(
                    ", an earlier entry of the same actor {}",
                    actor.escape_default()
                ),
            ));
        }
        self.actors.insert(actor.to_owned(), (index, time));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_single_host_part_ends_at_the_last_indexed_receipt_before_the_first_fleet_one() {
        assert_eq!(single_host_len([(1, false), (2, false)], 9), 9);
        assert_eq!(single_host_len([], 4), 4);
        assert_eq!(single_host_len([(1, false), (4, true), (5, false)], 9), 2);
        assert_eq!(single_host_len([(3, true), (4, false)], 9), 0);
    }
}
