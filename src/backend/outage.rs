//! What a backend remembers while its hardware is down: why, since when, and when it may
//! next try to bring it back. Between attempts requests fail fast with the fault, so a dead
//! token or TPM costs a request nothing but a lock; one caller at a time makes the attempt,
//! and the delay doubles from [`FIRST_DELAY`] up to [`MAX_DELAY`] while attempts fail.

use std::time::{Duration, Instant};

use super::BackendError;

/// Delay before the first recovery attempt after a fault.
pub const FIRST_DELAY: Duration = Duration::from_millis(100);
/// Longest delay between two recovery attempts: a fault that has ended is noticed within
/// this much time (plus one attempt).
pub const MAX_DELAY: Duration = Duration::from_secs(5);

/// A fault in progress.
#[derive(Debug)]
pub struct Outage {
    reason: String,
    since: Instant,
    next_attempt: Instant,
    delay: Duration,
    attempts: u32,
    /// A caller is making an attempt now: others fail fast rather than pile up behind it.
    attempting: bool,
    /// No automatic attempt will be made (e.g. the token refused the PIN: each try would
    /// count against its retry limit).
    permanent: bool,
}

impl Outage {
    /// A fault just seen; the first attempt is due after [`FIRST_DELAY`].
    pub fn new(reason: String) -> Self {
        let now = Instant::now();
        Outage {
            reason,
            since: now,
            next_attempt: now + FIRST_DELAY,
            delay: FIRST_DELAY,
            attempts: 0,
            attempting: false,
            permanent: false,
        }
    }

    /// A fault that only an operator can end; `reason` says what to do.
    pub fn permanent(reason: String) -> Self {
        Outage {
            permanent: true,
            ..Outage::new(reason)
        }
    }

    /// Claims the next attempt if it is due; otherwise the error to answer at once.
    pub fn claim(&mut self) -> Result<(), BackendError> {
        let now = Instant::now();
        if self.permanent {
            // The reason says what the operator must do (see `permanent`).
            return Err(BackendError::Unavailable(self.reason.clone()));
        }
        if self.attempting || now < self.next_attempt {
            let wait = self.next_attempt.saturating_duration_since(now);
            return Err(BackendError::Unavailable(format!(
                "{} (down for {} ms; next recovery attempt in {} ms)",
                self.reason,
                self.since.elapsed().as_millis(),
                wait.as_millis()
            )));
        }
        self.attempting = true;
        self.attempts += 1;
        Ok(())
    }

    /// The claimed attempt failed: wait twice as long before the next one.
    pub fn failed(&mut self, reason: String) {
        self.delay = (self.delay * 2).min(MAX_DELAY);
        self.next_attempt = Instant::now() + self.delay;
        self.attempting = false;
        self.reason = reason;
    }

    pub fn reason(&self) -> &str {
        &self.reason
    }

    /// How long the backend has been down.
    pub fn duration(&self) -> Duration {
        self.since.elapsed()
    }

    /// Recovery attempts made so far.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attempts_are_spaced_and_exclusive() {
        let mut outage = Outage::new("token gone".into());
        let early = outage.claim().unwrap_err().to_string();
        assert!(early.contains("token gone"), "{early}");
        std::thread::sleep(FIRST_DELAY);
        outage.claim().expect("due after the first delay");
        assert!(outage.claim().is_err(), "one attempt at a time");
        outage.failed("still gone".into());
        assert_eq!(outage.delay, FIRST_DELAY * 2);
        assert!(
            outage
                .claim()
                .unwrap_err()
                .to_string()
                .contains("still gone")
        );
        for _ in 0..20 {
            outage.failed("still gone".into());
        }
        assert_eq!(outage.delay, MAX_DELAY, "the delay is bounded");
    }

    #[test]
    fn a_permanent_outage_is_never_retried() {
        let mut outage = Outage::permanent("PIN refused: fix it and restart".into());
        std::thread::sleep(FIRST_DELAY * 2);
        let err = outage.claim().unwrap_err().to_string();
        assert!(err.contains("PIN refused: fix it and restart"), "{err}");
        assert!(outage.claim().is_err(), "never claimed");
    }
}
