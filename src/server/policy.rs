//! Who may sign as whom: the policy file (TOML), its patterns, and the decisions.
//!
//! ```toml
//! [[sign]]
//! callers = ["uid:1000", "spiffe://acme.example/agents/*"]
//! actors  = ["spiffe://acme.example/agents/payments"]
//! actions = ["payment.*"]
//!
//! [[sign]]                      # batch mode for what this rule allows
//! callers = ["uid:1001"]
//! actors  = ["spiffe://acme.example/agents/bulk"]
//! actions = ["*"]
//! batch_window_ms = 5           # 0: single receipts, whatever [[ledger.batch]] says
//!
//! [[admin]]
//! callers = ["uid:0"]
//! actors  = ["*"]
//! ```
//!
//! Default deny: a request is allowed only when one rule allows it. A `sign` rule allows a
//! caller matching any of its `callers` to sign as any of its `actors` any of its `actions`.
//! An `admin` rule allows creating and adopting (later rotating and retiring) keys of its
//! `actors`; it grants no signing, and a `sign` rule grants no administration. Reading an
//! actor's public key (GetActorKey, ListKeys) or a fresh attestation of it (Attest) needs
//! either. The full description is in `docs/CONFIG.md`.

use std::{fmt, path::Path};

use serde::Deserialize;
use toml::Spanned;

use super::auth::Caller;

/// A policy file that cannot be used, with the line it is about.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}{}: {message}", line.map(|l| format!(" line {l}")).unwrap_or_default())]
pub struct PolicyError {
    pub path: String,
    pub line: Option<usize>,
    pub message: String,
}

/// A string pattern: `*` matches one or more characters other than `/`, `**` one or more of
/// any character; a pattern that is only `*` or `**` matches everything. Everything else is
/// literal and case-sensitive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    text: String,
    tokens: Vec<Token>,
    /// Bytes no wildcard matches: `/` always; for certificate subjects also the RFC 4514
    /// separators and escapes (`,` `+` `\\`), so that `CN=*,O=Acme` cannot be matched by a
    /// single CN that merely contains `,O=Acme`.
    stops: &'static [u8],
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Literal(String),
    /// One or more characters other than `/`.
    Star,
    /// One or more characters.
    DoubleStar,
}

/// Most wildcards in one pattern.
const MAX_WILDCARDS: usize = 16;

impl Pattern {
    pub fn parse(text: &str) -> Result<Pattern, String> {
        if text.is_empty() {
            return Err("empty pattern".into());
        }
        if text.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(format!(
                "pattern {text:?} contains white space or control characters"
            ));
        }
        if text.contains("***") {
            return Err(format!(
                "pattern {text:?}: use * (within a path segment) or ** (across segments)"
            ));
        }
        let tokens = if text == "*" || text == "**" {
            vec![Token::DoubleStar]
        } else {
            let mut tokens = Vec::new();
            let mut rest = text;
            while !rest.is_empty() {
                if let Some(after) = rest.strip_prefix("**") {
                    tokens.push(Token::DoubleStar);
                    rest = after;
                } else if let Some(after) = rest.strip_prefix('*') {
                    tokens.push(Token::Star);
                    rest = after;
                } else {
                    let end = rest.find('*').unwrap_or(rest.len());
                    tokens.push(Token::Literal(rest[..end].to_owned()));
                    rest = &rest[end..];
                }
            }
            tokens
        };
        let wildcards = tokens
            .iter()
            .filter(|t| !matches!(t, Token::Literal(_)))
            .count();
        if wildcards > MAX_WILDCARDS {
            return Err(format!(
                "pattern {text:?} has {wildcards} wildcards; at most {MAX_WILDCARDS}"
            ));
        }
        Ok(Pattern {
            text: text.to_owned(),
            tokens,
            stops: b"/",
        })
    }

    /// A pattern over RFC 4514 subjects: wildcards never cross attribute boundaries or escapes.
    pub fn parse_subject(text: &str) -> Result<Pattern, String> {
        let mut pattern = Pattern::parse(text)?;
        pattern.stops = b"/,+\\";
        Ok(pattern)
    }

    /// Whether `value` matches the whole pattern. The set of reachable positions is carried
    /// from token to token, and each token is applied in one sweep: O(tokens × length), with
    /// no backtracking, whatever the pattern and the caller-supplied value.
    pub fn matches(&self, value: &str) -> bool {
        let bytes = value.as_bytes();
        let n = bytes.len();
        let stop = |b: u8| self.stops.contains(&b);
        let mut reach = vec![false; n + 1];
        reach[0] = true;
        for token in &self.tokens {
            let mut next = vec![false; n + 1];
            match token {
                Token::Literal(lit) => {
                    for start in (0..=n).filter(|&p| reach[p]) {
                        if bytes[start..].starts_with(lit.as_bytes()) {
                            next[start + lit.len()] = true;
                        }
                    }
                }
                // One or more bytes, none a stop (for subjects, `**` stops there too).
                Token::Star | Token::DoubleStar => {
                    let crosses_segments = matches!(token, Token::DoubleStar) && self.stops == b"/";
                    let mut active = false;
                    for (p, &byte) in bytes.iter().enumerate() {
                        active |= reach[p];
                        if !active {
                            continue;
                        }
                        if !crosses_segments && stop(byte) {
                            active = false;
                        } else {
                            next[p + 1] = true;
                        }
                    }
                }
            }
            reach = next;
        }
        reach[n]
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// What every value it matches starts with: the text before its first wildcard.
    pub fn literal_prefix(&self) -> &str {
        match self.tokens.first() {
            Some(Token::Literal(literal)) => literal,
            _ => "",
        }
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Who a rule is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallerPattern {
    /// `uid:N`: a Unix-socket caller whose user id (from the kernel) is N.
    Uid(u32),
    /// `gid:N`: a Unix-socket caller whose group id (from the kernel) is N.
    Gid(u32),
    /// `spiffe://trust-domain/path`: an mTLS caller whose certificate's SPIFFE ID matches;
    /// wildcards only in the path.
    SpiffeId(Pattern),
    /// `subject:CN=…,O=…`: an mTLS caller whose certificate subject (RFC 4514) matches.
    Subject(Pattern),
    /// `insecure-tcp`: any caller of the plain loopback TCP listener (development only).
    InsecureTcp,
}

impl CallerPattern {
    pub fn parse(text: &str) -> Result<CallerPattern, String> {
        let number = |what: &str, n: &str| {
            n.parse::<u32>()
                .map_err(|_| format!("{what}:{n:?}: a {what} is a decimal number"))
        };
        if let Some(n) = text.strip_prefix("uid:") {
            Ok(CallerPattern::Uid(number("uid", n)?))
        } else if let Some(n) = text.strip_prefix("gid:") {
            Ok(CallerPattern::Gid(number("gid", n)?))
        } else if let Some(rest) = text.strip_prefix("spiffe://") {
            let domain_end = rest.find('/').unwrap_or(rest.len());
            let domain = &rest[..domain_end];
            if domain.is_empty() {
                return Err(format!("{text:?}: a SPIFFE ID names a trust domain"));
            }
            if domain.contains('*') {
                return Err(format!(
                    "{text:?}: the trust domain of a SPIFFE ID cannot be a wildcard"
                ));
            }
            Ok(CallerPattern::SpiffeId(Pattern::parse(text)?))
        } else if let Some(subject) = text.strip_prefix("subject:") {
            Ok(CallerPattern::Subject(Pattern::parse_subject(subject)?))
        } else if text == "insecure-tcp" {
            Ok(CallerPattern::InsecureTcp)
        } else {
            Err(format!(
                "unknown caller {text:?}: expected uid:N, gid:N, spiffe://…, subject:… or insecure-tcp"
            ))
        }
    }

    pub fn matches(&self, caller: &Caller) -> bool {
        match (self, caller) {
            (CallerPattern::Uid(want), Caller::Unix { uid, .. }) => want == uid,
            (CallerPattern::Gid(want), Caller::Unix { gid, .. }) => want == gid,
            (
                CallerPattern::SpiffeId(pattern),
                Caller::X509 {
                    spiffe_id: Some(id),
                    ..
                },
            ) => pattern.matches(id),
            (CallerPattern::Subject(pattern), Caller::X509 { subject, .. }) => {
                pattern.matches(subject)
            }
            (CallerPattern::InsecureTcp, Caller::InsecureTcp { .. }) => true,
            _ => false,
        }
    }
}

#[derive(Debug, Clone)]
pub struct SignRule {
    pub line: usize,
    pub callers: Vec<CallerPattern>,
    pub actors: Vec<Pattern>,
    pub actions: Vec<Pattern>,
    /// `batch_window_ms`: the batch window of the requests this rule allows (zero: single
    /// receipts); `None` leaves it to `[[ledger.batch]]`.
    pub batch_window: Option<std::time::Duration>,
}

/// Most milliseconds a rule's batch window may be (as `[[ledger.batch]]` `window_ms`).
pub const MAX_RULE_WINDOW_MS: u64 = 1000;

#[derive(Debug, Clone)]
pub struct AdminRule {
    pub line: usize,
    pub callers: Vec<CallerPattern>,
    pub actors: Vec<Pattern>,
}

/// A loaded policy. The empty policy allows nothing.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    pub sign: Vec<SignRule>,
    pub admin: Vec<AdminRule>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    #[serde(default)]
    sign: Vec<Spanned<RawSign>>,
    #[serde(default)]
    admin: Vec<Spanned<RawAdmin>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSign {
    callers: Spanned<Vec<Spanned<String>>>,
    actors: Spanned<Vec<Spanned<String>>>,
    actions: Spanned<Vec<Spanned<String>>>,
    #[serde(default)]
    batch_window_ms: Option<Spanned<u64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    callers: Spanned<Vec<Spanned<String>>>,
    actors: Spanned<Vec<Spanned<String>>>,
}

/// Most bytes in a policy file.
const MAX_POLICY_LEN: u64 = 1 << 20;

impl Policy {
    /// Reads and checks a policy file.
    pub fn load(path: &Path) -> Result<Policy, PolicyError> {
        let error = |message: String| PolicyError {
            path: path.display().to_string(),
            line: None,
            message,
        };
        let size = std::fs::metadata(path)
            .map_err(|e| error(format!("cannot read: {e}")))?
            .len();
        if size > MAX_POLICY_LEN {
            return Err(error(format!("is {size} bytes; at most {MAX_POLICY_LEN}")));
        }
        let text = std::fs::read_to_string(path).map_err(|e| error(format!("cannot read: {e}")))?;
        Policy::parse(&text, path)
    }

    /// Parses policy text; every error names its line.
    pub fn parse(text: &str, path: &Path) -> Result<Policy, PolicyError> {
        let line_of = |offset: usize| text[..offset.min(text.len())].matches('\n').count() + 1;
        let at = |offset: usize, message: String| PolicyError {
            path: path.display().to_string(),
            line: Some(line_of(offset)),
            message,
        };
        let raw: RawPolicy = toml::from_str(text).map_err(|e| PolicyError {
            path: path.display().to_string(),
            line: e.span().map(|s| line_of(s.start)),
            message: e.message().trim().to_owned(),
        })?;
        let list = |name: &str,
                    list: &Spanned<Vec<Spanned<String>>>|
         -> Result<Vec<(usize, String)>, PolicyError> {
            if list.get_ref().is_empty() {
                return Err(at(
                    list.span().start,
                    format!("{name} must name at least one entry"),
                ));
            }
            Ok(list
                .get_ref()
                .iter()
                .map(|s| (s.span().start, s.get_ref().clone()))
                .collect())
        };
        let callers = |raw: &Spanned<Vec<Spanned<String>>>| {
            list("callers", raw)?
                .into_iter()
                .map(|(offset, text)| CallerPattern::parse(&text).map_err(|e| at(offset, e)))
                .collect::<Result<Vec<_>, _>>()
        };
        let patterns = |name: &str, raw: &Spanned<Vec<Spanned<String>>>| {
            list(name, raw)?
                .into_iter()
                .map(|(offset, text)| {
                    Pattern::parse(&text).map_err(|e| at(offset, format!("{name}: {e}")))
                })
                .collect::<Result<Vec<_>, _>>()
        };
        let mut policy = Policy::default();
        for rule in &raw.sign {
            let line = line_of(rule.span().start);
            let rule = rule.get_ref();
            let batch_window = match &rule.batch_window_ms {
                Some(ms) if *ms.get_ref() > MAX_RULE_WINDOW_MS => {
                    return Err(at(
                        ms.span().start,
                        format!("batch_window_ms must be 0 to {MAX_RULE_WINDOW_MS}"),
                    ));
                }
                Some(ms) => Some(std::time::Duration::from_millis(*ms.get_ref())),
                None => None,
            };
            policy.sign.push(SignRule {
                line,
                callers: callers(&rule.callers)?,
                actors: patterns("actors", &rule.actors)?,
                actions: patterns("actions", &rule.actions)?,
                batch_window,
            });
        }
        for rule in &raw.admin {
            let line = line_of(rule.span().start);
            let rule = rule.get_ref();
            policy.admin.push(AdminRule {
                line,
                callers: callers(&rule.callers)?,
                actors: patterns("actors", &rule.actors)?,
            });
        }
        Ok(policy)
    }

    /// Whether `caller` may sign `action_type` as `actor`.
    pub fn may_sign(&self, caller: &Caller, actor: &str, action_type: &str) -> bool {
        self.sign_rule(caller, actor, action_type).is_some()
    }

    /// The first rule (in file order) that lets `caller` sign `action_type` as `actor`: its
    /// `batch_window_ms` is the one that applies to the request.
    pub fn sign_rule(&self, caller: &Caller, actor: &str, action_type: &str) -> Option<&SignRule> {
        self.sign.iter().find(|rule| {
            rule.callers.iter().any(|c| c.matches(caller))
                && rule.actors.iter().any(|p| p.matches(actor))
                && rule.actions.iter().any(|p| p.matches(action_type))
        })
    }

    /// Whether `caller` may create, adopt, rotate and retire `actor`'s keys.
    pub fn may_administer(&self, caller: &Caller, actor: &str) -> bool {
        self.admin.iter().any(|rule| {
            rule.callers.iter().any(|c| c.matches(caller))
                && rule.actors.iter().any(|p| p.matches(actor))
        })
    }

    /// Whether `caller` may read `actor`'s keys: it signs as the actor or administers it.
    pub fn may_read(&self, caller: &Caller, actor: &str) -> bool {
        self.may_administer(caller, actor)
            || self.sign.iter().any(|rule| {
                rule.callers.iter().any(|c| c.matches(caller))
                    && rule.actors.iter().any(|p| p.matches(actor))
            })
    }

    /// Prefixes that every actor `caller` may read starts with, sorted, none a prefix of
    /// another: where to look for them (each actor found must still pass [`Self::may_read`]).
    /// Empty when the caller may read no actor.
    pub fn readable_prefixes(&self, caller: &Caller) -> Vec<String> {
        let sign = self.sign.iter().map(|r| (&r.callers, &r.actors));
        let admin = self.admin.iter().map(|r| (&r.callers, &r.actors));
        let mut prefixes: Vec<&str> = sign
            .chain(admin)
            .filter(|(callers, _)| callers.iter().any(|c| c.matches(caller)))
            .flat_map(|(_, actors)| actors.iter().map(Pattern::literal_prefix))
            .collect();
        prefixes.sort_unstable();
        let mut kept: Vec<String> = Vec::new();
        for prefix in prefixes {
            if !kept.last().is_some_and(|k| prefix.starts_with(k.as_str())) {
                kept.push(prefix.to_owned());
            }
        }
        kept
    }

    /// The number of rules, for the log.
    pub fn rule_counts(&self) -> (usize, usize) {
        (self.sign.len(), self.admin.len())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn readable_prefixes_are_the_callers_patterns_literal_starts_without_overlap() {
        let policy = Policy::parse(
            r#"
[[sign]]
callers = ["uid:1"]
actors = ["spiffe://a/agents/pay-*", "spiffe://a/agents/exact", "spiffe://b/*/x"]
actions = ["*"]

[[admin]]
callers = ["uid:1"]
actors = ["spiffe://a/agents/**"]

[[admin]]
callers = ["uid:2"]
actors = ["*"]
"#,
            Path::new("p.toml"),
        )
        .unwrap();
        let caller = |uid| Caller::Unix {
            uid,
            gid: 100,
            pid: 1,
        };
        assert_eq!(
            policy.readable_prefixes(&caller(1)),
            ["spiffe://a/agents/", "spiffe://b/"]
        );
        assert_eq!(policy.readable_prefixes(&caller(2)), [""]);
        assert!(policy.readable_prefixes(&caller(3)).is_empty());
    }

    use super::*;

    fn p(text: &str) -> Pattern {
        Pattern::parse(text).unwrap()
    }

    #[test]
    fn wildcards_match_within_and_across_segments() {
        let agents = p("spiffe://acme.example/agents/*");
        assert!(agents.matches("spiffe://acme.example/agents/payments"));
        assert!(!agents.matches("spiffe://acme.example/agents/"));
        assert!(!agents.matches("spiffe://acme.example/agents/a/b"));
        assert!(!agents.matches("spiffe://acme.example/agent/x"));
        assert!(!agents.matches("spiffe://acme.example/agents"));
        let deep = p("spiffe://acme.example/agents/**");
        assert!(deep.matches("spiffe://acme.example/agents/a/b"));
        assert!(!deep.matches("spiffe://acme.example/agents/"));
        for any in ["*", "**"] {
            assert!(p(any).matches("spiffe://x/y/z"));
            assert!(p(any).matches("a"));
        }
        let actions = p("payment.*");
        assert!(actions.matches("payment.initiate"));
        assert!(!actions.matches("payment."));
        assert!(!actions.matches("payments.initiate"));
        assert!(!actions.matches("refund.payment.initiate"));
        let middle = p("a*b*c");
        assert!(middle.matches("aXbYc"));
        assert!(middle.matches("abbbc") && !middle.matches("abc"));
        assert!(p("exact").matches("exact") && !p("exact").matches("exactly"));
        assert!(!p("Exact").matches("exact"), "case-sensitive");
        // Many stars against a long value stays fast (no exponential backtracking).
        let many = p(&format!("{}b", "*a".repeat(MAX_WILDCARDS)));
        let started = std::time::Instant::now();
        assert!(!many.matches(&"a".repeat(1000)));
        assert!(many.matches(&format!("{}b", "a".repeat(1000))));
        assert!(started.elapsed() < std::time::Duration::from_secs(2));
        assert!(Pattern::parse("").is_err());
        assert!(Pattern::parse("a b").is_err());
        assert!(Pattern::parse("a***").is_err());
        assert!(Pattern::parse(&"*x".repeat(MAX_WILDCARDS + 1)).is_err());
    }

    #[test]
    fn subject_wildcards_stop_at_attribute_boundaries_and_escapes() {
        let pattern = CallerPattern::parse("subject:CN=*,O=Acme").unwrap();
        let subject = |s: &str| Caller::X509 {
            spiffe_id: None,
            subject: s.into(),
        };
        assert!(pattern.matches(&subject("CN=payments,O=Acme")));
        // One CN that contains ",O=Acme" (escaped), and no O at all.
        assert!(!pattern.matches(&subject("CN=evil\\,O=Acme")));
        assert!(!pattern.matches(&subject("CN=a+UID=x,O=Acme")));
        let double = CallerPattern::parse("subject:CN=**,O=Acme").unwrap();
        assert!(!double.matches(&subject("CN=evil\\,O=Acme")));
    }

    #[test]
    fn matching_is_linear_in_the_value() {
        let pattern = Pattern::parse(&"*a".repeat(MAX_WILDCARDS)).unwrap();
        // 16 wildcards over 64 KiB: about a million steps linearly, tens of billions if the
        // matcher were quadratic (this test would then not finish).
        let long = "a".repeat(64 * 1024);
        assert!(pattern.matches(&long));
        assert!(!pattern.matches(&format!("{long}b")));
    }

    #[test]
    fn caller_patterns() {
        let unix = Caller::Unix {
            uid: 1000,
            gid: 2000,
            pid: 7,
        };
        let svid = Caller::X509 {
            spiffe_id: Some("spiffe://acme.example/agents/payments".into()),
            subject: "CN=payments,O=Acme".into(),
        };
        let no_svid = Caller::X509 {
            spiffe_id: None,
            subject: "CN=ops,O=Acme".into(),
        };
        let insecure = Caller::InsecureTcp {
            address: "127.0.0.1:5".into(),
        };
        let c = |t: &str| CallerPattern::parse(t).unwrap();
        assert!(c("uid:1000").matches(&unix) && !c("uid:1001").matches(&unix));
        assert!(c("gid:2000").matches(&unix) && !c("gid:1000").matches(&unix));
        assert!(!c("uid:1000").matches(&svid));
        assert!(c("spiffe://acme.example/agents/*").matches(&svid));
        assert!(!c("spiffe://acme.example/agents/*").matches(&no_svid));
        assert!(!c("spiffe://acme.example/agents/*").matches(&unix));
        assert!(c("subject:CN=*,O=Acme").matches(&no_svid));
        assert!(c("subject:CN=ops,O=Acme").matches(&no_svid));
        assert!(!c("subject:CN=ops,O=Acme").matches(&svid));
        assert!(c("insecure-tcp").matches(&insecure) && !c("insecure-tcp").matches(&unix));
        for bad in [
            "uid:alice",
            "uid:-1",
            "gid:",
            "spiffe://*/agents",
            "spiffe:///agents",
            "user:alice",
            "*",
            "subject:",
        ] {
            assert!(CallerPattern::parse(bad).is_err(), "{bad} accepted");
        }
    }

    const GOOD: &str = r#"# comment
[[sign]]
callers = ["uid:1000", "spiffe://acme.example/agents/*"]
actors = ["spiffe://acme.example/agents/payments"]
actions = ["payment.*"]

[[sign]]
callers = ["gid:3000"]
actors = ["spiffe://acme.example/pipelines/**"]
actions = ["*"]

[[admin]]
callers = ["uid:0"]
actors = ["*"]
"#;

    fn parse(text: &str) -> Result<Policy, PolicyError> {
        Policy::parse(text, Path::new("policy.toml"))
    }

    #[test]
    fn decisions_follow_the_rules_and_default_deny() {
        let policy = parse(GOOD).unwrap();
        assert_eq!(policy.rule_counts(), (2, 1));
        assert_eq!(policy.sign[1].line, 7);
        let alice = Caller::Unix {
            uid: 1000,
            gid: 1000,
            pid: 1,
        };
        let root = Caller::Unix {
            uid: 0,
            gid: 0,
            pid: 1,
        };
        let builders = Caller::Unix {
            uid: 4000,
            gid: 3000,
            pid: 1,
        };
        let payments = "spiffe://acme.example/agents/payments";
        assert!(policy.may_sign(&alice, payments, "payment.initiate"));
        assert!(!policy.may_sign(&alice, payments, "refund.create"));
        assert!(!policy.may_sign(&alice, "spiffe://acme.example/agents/other", "payment.x"));
        assert!(!policy.may_administer(&alice, payments));
        assert!(policy.may_read(&alice, payments));
        assert!(!policy.may_read(&alice, "spiffe://acme.example/agents/other"));
        assert!(policy.may_administer(&root, payments));
        assert!(
            !policy.may_sign(&root, payments, "payment.initiate"),
            "admin is not signer"
        );
        assert!(policy.may_sign(&builders, "spiffe://acme.example/pipelines/a/b", "deploy"));
        assert!(!policy.may_sign(&builders, payments, "payment.initiate"));
        let nobody = Policy::default();
        assert!(!nobody.may_sign(&alice, payments, "payment.initiate"));
        assert!(!nobody.may_administer(&root, payments));
    }

    #[track_caller]
    fn fails_at(text: &str, line: usize, needle: &str) {
        let err = parse(text).unwrap_err();
        assert_eq!(err.line, Some(line), "{err}");
        assert!(err.to_string().contains(needle), "{err}");
        assert!(
            err.to_string()
                .starts_with(&format!("policy.toml line {line}: ")),
            "{err}"
        );
    }

    #[test]
    fn errors_name_their_line() {
        fails_at(
            &GOOD.replace("\"uid:0\"", "\"uid:root\""),
            13,
            "a uid is a decimal number",
        );
        fails_at(
            &GOOD.replace("actions = [\"*\"]", "actions = [\"*\"]\nactons = [\"x\"]"),
            11,
            "unknown field `actons`",
        );
        fails_at(
            &GOOD.replace("actions = [\"*\"]", "actions = []"),
            10,
            "at least one",
        );
        fails_at(
            &GOOD.replace("actions = [\"*\"]\n", ""),
            7,
            "missing field `actions`",
        );
        fails_at(
            &GOOD.replace("[\"payment.*\"]", "[\"pay ment\"]"),
            5,
            "white space",
        );
        fails_at(&GOOD.replace("[[admin]]", "[[admin]"), 12, "");
        fails_at(
            &GOOD.replace("spiffe://acme.example/agents/*\"", "spiffe://*/agents\""),
            3,
            "trust domain",
        );
        fails_at("[[signers]]\ncallers = []\n", 1, "unknown field `signers`");
        fails_at("\n\ncallers = \"uid:1\"\n", 3, "unknown field `callers`");
        assert!(parse("").unwrap().rule_counts() == (0, 0));
    }

    #[test]
    fn the_first_allowing_rule_gives_the_batch_window() {
        let policy = Policy::parse(
            "[[sign]]\ncallers = [\"uid:1\"]\nactors = [\"*\"]\nactions = [\"bulk.*\"]\n\
             batch_window_ms = 5\n\n\
             [[sign]]\ncallers = [\"uid:1\"]\nactors = [\"*\"]\nactions = [\"urgent.*\"]\n\
             batch_window_ms = 0\n\n\
             [[sign]]\ncallers = [\"uid:1\"]\nactors = [\"*\"]\nactions = [\"*\"]\n",
            Path::new("p.toml"),
        )
        .unwrap();
        let caller = Caller::Unix {
            uid: 1,
            gid: 1,
            pid: 1,
        };
        let window = |action: &str| {
            policy
                .sign_rule(&caller, "spiffe://a/b", action)
                .map(|r| r.batch_window)
        };
        assert_eq!(
            window("bulk.x"),
            Some(Some(std::time::Duration::from_millis(5)))
        );
        assert_eq!(window("urgent.x"), Some(Some(std::time::Duration::ZERO)));
        assert_eq!(window("other"), Some(None));
        let stranger = Caller::Unix {
            uid: 2,
            gid: 1,
            pid: 1,
        };
        assert!(
            policy
                .sign_rule(&stranger, "spiffe://a/b", "bulk.x")
                .is_none()
        );
        let error = Policy::parse(
            "[[sign]]\ncallers = [\"uid:1\"]\nactors = [\"*\"]\nactions = [\"*\"]\nbatch_window_ms = 1001\n",
            Path::new("p.toml"),
        )
        .unwrap_err();
        assert_eq!(error.line, Some(5));
        assert!(
            error.message.contains("batch_window_ms must be 0 to 1000"),
            "{error}"
        );
        let error = Policy::parse(
            "[[sign]]\ncallers = [\"uid:1\"]\nactors = [\"*\"]\nactions = [\"*\"]\nbatch_window_ms = -1\n",
            Path::new("p.toml"),
        )
        .unwrap_err();
        assert_eq!(error.line, Some(5), "{error}");
    }
}
