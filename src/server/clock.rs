//! Where log entries get their times. Time only moves forward in the log (FORMAT.md §11.4):
//! each entry is dated `max(wall clock, the previous entry's time, its key's createdAt)`, so a
//! clock that steps back cannot make an honest proof predate its key, and a held-forward time
//! stays within `ledger.max_clock_step_back_s` of the clock, past which the daemon refuses to
//! sign rather than date entries in what the clock calls the future.

use time::{OffsetDateTime, format_description::well_known::Rfc3339};

use crate::ledger::{Store, StoreError, entry};

/// How far the clock may be behind the log before the daemon stops signing, by default.
pub const DEFAULT_MAX_STEP_BACK_S: u64 = 300;

/// The predicate members that date an entry, one per kind (receipt, rotation, retirement).
const TIME_MEMBERS: [&str; 5] = [
    "signedAt",
    "rotatedAt",
    "retiredAt",
    "registeredAt",
    "startedAt",
];

/// A source of wall-clock time, in Unix seconds. Production reads the system clock; tests
/// inject one they can step back.
pub trait Clock: Send + 'static {
    fn now_unix(&self) -> i64;
}

/// The system's real-time clock.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_unix(&self) -> i64 {
        OffsetDateTime::now_utc().unix_timestamp()
    }
}

/// Debug builds only (never a release build): the system clock shifted by the number of
/// seconds written in the file named by this variable, re-read at every reading, so that a
/// test can step the daemon's clock back while it runs.
#[cfg(debug_assertions)]
pub const TEST_CLOCK_OFFSET_FILE: &str = "ACTSEAL_TEST_CLOCK_OFFSET_FILE";

#[cfg(debug_assertions)]
struct ShiftedClock(std::path::PathBuf);

#[cfg(debug_assertions)]
impl Clock for ShiftedClock {
    fn now_unix(&self) -> i64 {
        let offset = std::fs::read_to_string(&self.0)
            .ok()
            .and_then(|text| text.trim().parse::<i64>().ok())
            .unwrap_or(0);
        SystemClock.now_unix().saturating_add(offset)
    }
}

/// The clock the daemon dates log entries by: the system clock (or, in a debug build and
/// when the test variable is set, the test's shifted clock).
pub fn daemon_clock() -> Box<dyn Clock> {
    #[cfg(debug_assertions)]
    if let Some(path) = std::env::var_os(TEST_CLOCK_OFFSET_FILE) {
        tracing::warn!(file = ?path, "debug build: log entries are dated by a test clock");
        return Box::new(ShiftedClock(path.into()));
    }
    Box::new(SystemClock)
}

#[derive(Debug, thiserror::Error)]
pub enum ClockError {
    #[error(
        "the clock is {behind_s} s behind the newest time in the log (more than \
         ledger.max_clock_step_back_s = {bound_s}): nothing is signed until the clock catches \
         up or the bound is raised"
    )]
    TooFarBehind { behind_s: i64, bound_s: i64 },
    #[error("time {0} (Unix seconds) cannot be written in RFC 3339")]
    Unrepresentable(i64),
}

/// RFC 3339 UTC with second precision, as entries carry it.
pub fn rfc3339(unix: i64) -> Result<String, ClockError> {
    OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .ok_or(ClockError::Unrepresentable(unix))
}

/// Unix seconds of an RFC 3339 time; `None` if it is not one.
pub fn parse_rfc3339(text: &str) -> Option<i64> {
    OffsetDateTime::parse(text, &Rfc3339)
        .ok()
        .map(OffsetDateTime::unix_timestamp)
}

/// The time of a log entry: its predicate's `signedAt`, `rotatedAt` or `retiredAt`.
fn entry_time(bytes: &[u8]) -> Option<i64> {
    let parts = entry::decode(bytes)?;
    let statement: serde_json::Value = serde_json::from_slice(&parts.payload).ok()?;
    let predicate = statement.get("predicate")?;
    TIME_MEMBERS
        .iter()
        .find_map(|member| predicate.get(member)?.as_str())
        .and_then(parse_rfc3339)
}

/// The time of the newest dated entry of the first `size` entries, read from the log itself
/// (not from memory), so that a restart after a step back cannot go backwards either.
pub fn newest_entry_time(store: &Store, size: u64) -> Result<Option<i64>, StoreError> {
    for index in (0..size).rev() {
        let bytes = store
            .entry(index)?
            .ok_or_else(|| StoreError::Corrupt(format!("log entry {index} is missing")))?;
        if let Some(time) = entry_time(&bytes) {
            return Ok(Some(time));
        }
    }
    Ok(None)
}

/// Dates log entries in log order: never earlier than the entry before, nor than the floors
/// the caller gives (the signing key's createdAt).
pub struct EntryClock {
    clock: Box<dyn Clock>,
    max_step_back: i64,
    /// The newest time given to an entry (or read from the log); `i64::MIN` for an empty log.
    last: i64,
    /// How far the clock was behind at the last dated entry (0: it was not).
    behind: i64,
    /// Whether the last request was refused (the refusal is logged once, not per request).
    refusing: bool,
}

impl EntryClock {
    pub fn new(clock: Box<dyn Clock>, max_step_back_s: u64) -> Self {
        EntryClock {
            clock,
            max_step_back: i64::try_from(max_step_back_s).unwrap_or(i64::MAX),
            last: i64::MIN,
            behind: 0,
            refusing: false,
        }
    }

    /// Takes the newest time in the log into account (at start and after a failed batch).
    pub fn resume(&mut self, newest_in_log: Option<i64>) {
        if let Some(time) = newest_in_log {
            self.last = self.last.max(time);
        }
    }

    /// The next entry's time: `max(now, last, not_before…)`, or an error when the clock is
    /// behind that by more than the bound.
    pub fn next(&mut self, not_before: &[i64]) -> Result<String, ClockError> {
        let now = self.clock.now_unix();
        let floor = not_before.iter().copied().fold(self.last, i64::max);
        let behind = floor.saturating_sub(now).max(0);
        if behind > self.max_step_back {
            if !self.refusing {
                tracing::error!(
                    behind_s = behind,
                    bound_s = self.max_step_back,
                    "the clock stepped back further than ledger.max_clock_step_back_s; refusing to sign"
                );
            }
            self.refusing = true;
            return Err(ClockError::TooFarBehind {
                behind_s: behind,
                bound_s: self.max_step_back,
            });
        }
        let time = now.max(floor);
        let text = rfc3339(time)?;
        if behind > self.behind {
            tracing::warn!(
                behind_s = behind,
                dated = %text,
                "the clock is behind the log: entries keep the newest time until it catches up"
            );
        } else if behind == 0 && self.behind > 0 {
            tracing::info!("the clock has caught up with the log");
        }
        self.behind = behind;
        self.refusing = false;
        self.last = time;
        Ok(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{
        Arc,
        atomic::{AtomicI64, Ordering},
    };

    /// A clock the test sets.
    struct Manual(Arc<AtomicI64>);

    impl Clock for Manual {
        fn now_unix(&self) -> i64 {
            self.0.load(Ordering::SeqCst)
        }
    }

    const T: i64 = 1_790_000_000;

    fn clock(bound: u64) -> (EntryClock, Arc<AtomicI64>) {
        let now = Arc::new(AtomicI64::new(T));
        (
            EntryClock::new(Box::new(Manual(Arc::clone(&now))), bound),
            now,
        )
    }

    #[test]
    fn a_step_back_within_the_bound_holds_the_time_forward() {
        let (mut dates, now) = clock(3600);
        let first = dates.next(&[]).unwrap();
        now.store(T - 3600, Ordering::SeqCst);
        assert_eq!(dates.next(&[]).unwrap(), first);
        now.store(T + 5, Ordering::SeqCst);
        assert_eq!(dates.next(&[]).unwrap(), rfc3339(T + 5).unwrap());
    }

    #[test]
    fn a_step_back_past_the_bound_is_refused_until_the_clock_catches_up() {
        let (mut dates, now) = clock(300);
        dates.next(&[]).unwrap();
        now.store(T - 301, Ordering::SeqCst);
        assert!(matches!(
            dates.next(&[]),
            Err(ClockError::TooFarBehind {
                behind_s: 301,
                bound_s: 300
            })
        ));
        now.store(T - 300, Ordering::SeqCst);
        assert_eq!(dates.next(&[]).unwrap(), rfc3339(T).unwrap());
    }

    #[test]
    fn an_entry_is_never_dated_before_its_key_was_created() {
        let (mut dates, _) = clock(300);
        assert_eq!(dates.next(&[T + 60]).unwrap(), rfc3339(T + 60).unwrap());
        assert!(dates.next(&[T + 400]).is_err());
    }

    #[test]
    fn the_newest_time_in_the_log_is_a_floor_after_a_restart() {
        let (mut dates, _) = clock(300);
        dates.resume(Some(T + 100));
        assert_eq!(dates.next(&[]).unwrap(), rfc3339(T + 100).unwrap());
    }

    #[test]
    fn entries_are_dated_by_their_predicate() {
        let payload = br#"{"predicate":{"actor":"a","rotatedAt":"2026-11-26T17:51:36Z"}}"#;
        let mut bytes = Vec::new();
        for field in [&b"t"[..], payload, b"sig"] {
            bytes.extend_from_slice(&u32::try_from(field.len()).unwrap().to_be_bytes());
            bytes.extend_from_slice(field);
        }
        assert_eq!(entry_time(&bytes), parse_rfc3339("2026-11-26T17:51:36Z"));
        assert_eq!(entry_time(b"not an entry"), None);
    }
}
