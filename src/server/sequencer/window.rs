//! Batch windows: which actors sign in batch mode, and the requests each open window holds.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use super::{Reply, SignedReceipt};
use crate::server::{policy::Pattern, validate::ValidAction};

/// A Sign request waiting in a window: the action, its request id, its caller's reply.
pub(super) type Request = (ValidAction, Option<String>, Reply<SignedReceipt>);

/// Which actors' requests are batched, and how.
#[derive(Debug, Clone, Default)]
pub struct BatchRules {
    /// (actor patterns, window): the first rule whose pattern matches an actor applies.
    pub rules: Vec<(Vec<Pattern>, Duration)>,
    /// Most receipts under one batch statement; a window that fills closes at once.
    pub max_size: usize,
}

impl BatchRules {
    /// The window of a request for `actor` allowed by a policy rule whose
    /// `batch_window_ms` is `rule`: the rule's if it gives one (zero: single), else the
    /// actor's `[[ledger.batch]]` window; `None`: signed alone (the default).
    pub fn window_of(&self, actor: &str, rule: Option<Duration>) -> Option<Duration> {
        match rule {
            Some(window) if window.is_zero() => None,
            Some(window) => Some(window),
            None => self.window(actor),
        }
    }

    /// The window of `actor`'s requests; `None`: each is signed alone (the default).
    pub fn window(&self, actor: &str) -> Option<Duration> {
        self.rules
            .iter()
            .find(|(patterns, _)| patterns.iter().any(|p| p.matches(actor)))
            .map(|(_, window)| *window)
    }
}

/// One actor's open window.
pub(super) struct Window {
    pub deadline: Instant,
    pub requests: Vec<Request>,
}

/// The open windows, by actor.
#[derive(Default)]
pub(super) struct Windows {
    open: HashMap<String, Window>,
}

impl Windows {
    /// Adds a request to its actor's window (opened now if none is); returns the number of
    /// requests the window holds. Requests of one actor may have different windows (policy
    /// rules): the window closes when the shortest of its requests' windows is up, so none
    /// waits longer than its own.
    pub fn add(&mut self, window: Duration, request: Request) -> usize {
        let due = Instant::now() + window;
        let open = self
            .open
            .entry(request.0.actor.clone())
            .or_insert_with(|| Window {
                deadline: due,
                requests: Vec::new(),
            });
        open.deadline = open.deadline.min(due);
        open.requests.push(request);
        open.requests.len()
    }

    pub fn is_open(&self, actor: &str) -> bool {
        self.open.contains_key(actor)
    }

    /// Closes `actor`'s window: its requests, in arrival order.
    pub fn close(&mut self, actor: &str) -> Vec<Request> {
        self.open
            .remove(actor)
            .map(|w| w.requests)
            .unwrap_or_default()
    }

    /// Closes the windows whose time is up (all of them with `all`), oldest first.
    pub fn close_due(&mut self, all: bool) -> Vec<Vec<Request>> {
        let now = Instant::now();
        let mut due: Vec<(Instant, String)> = self
            .open
            .iter()
            .filter(|(_, w)| all || w.deadline <= now)
            .map(|(actor, w)| (w.deadline, actor.clone()))
            .collect();
        due.sort();
        due.into_iter()
            .map(|(_, actor)| self.close(&actor))
            .collect()
    }

    /// When the next window closes.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.open.values().map(|w| w.deadline).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rule_window_wins_over_the_actors_and_zero_means_single() {
        let rules = BatchRules {
            rules: vec![(
                vec![Pattern::parse("spiffe://a/*").unwrap()],
                Duration::from_millis(5),
            )],
            max_size: 16,
        };
        let ms = Duration::from_millis;
        assert_eq!(rules.window_of("spiffe://a/x", None), Some(ms(5)));
        assert_eq!(rules.window_of("spiffe://a/x", Some(ms(40))), Some(ms(40)));
        assert_eq!(rules.window_of("spiffe://a/x", Some(ms(0))), None);
        assert_eq!(rules.window_of("spiffe://b/x", None), None);
        assert_eq!(rules.window_of("spiffe://b/x", Some(ms(2))), Some(ms(2)));
    }
}
