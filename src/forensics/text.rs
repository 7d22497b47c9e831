//! The plain-text form of [`Findings`], for a terminal: every value from the log escaped, so a
//! hostile actor name or context value cannot forge lines or send control sequences.

use std::fmt;

use super::actions::{Action, Findings};

/// Control characters, quotes and non-ASCII escaped (as `actseal verify` prints).
struct Esc<'a>(&'a str);

impl fmt::Display for Esc<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0.escape_default())
    }
}

fn action(f: &mut fmt::Formatter<'_>, a: &Action) -> fmt::Result {
    let c = &a.claims;
    let verdict = match (&a.proof, &a.failure) {
        (Some(_), _) => "PROVED".to_string(),
        (None, Some(fail)) => format!("FAILED {}: {}", fail.check, Esc(&fail.detail)),
        (None, None) => "FAILED".to_string(),
    };
    let seq = c.sequence.map_or("?".into(), |s| s.to_string());
    writeln!(
        f,
        "{} #{seq} {} {} on {}: {verdict}",
        Esc(&c.signed_at),
        Esc(&c.actor),
        Esc(&c.action_type),
        Esc(&c.target)
    )?;
    if let Some(p) = &a.proof {
        writeln!(
            f,
            "  key {} v{} ({}, {}) hardware {}; device \"{}\" under \"{}\"",
            Esc(&p.key_id),
            p.key_version,
            Esc(&p.backend),
            Esc(&p.key_origin),
            Esc(&p.hardware),
            Esc(&p.device_subject),
            Esc(&p.anchor_subject)
        )?;
        writeln!(
            f,
            "  log {} index {}{} of {}; requested by {}",
            Esc(&p.log_origin),
            p.log_index,
            if p.log_index_signed {
                ""
            } else {
                " (proven; the receipt does not sign it)"
            },
            p.tree_size,
            Esc(&p.caller)
        )?;
    } else if let Some(position) = a.log_index {
        writeln!(f, "  log index {} claimed, not proven", position.index)?;
    }
    let doc = match (
        a.documents.first(),
        a.proof.as_ref().is_some_and(|p| p.document_checked),
    ) {
        (Some(path), true) => format!("matches {}", Esc(path)),
        (Some(path), false) => format!("same digest as {} (not proved)", Esc(path)),
        (None, true) => "matches the document kept with the bundle".into(),
        (None, false) if a.document_carried => {
            "the document kept with the bundle does not match".into()
        }
        (None, false) => "no retained document".into(),
    };
    writeln!(f, "  document sha256 {}: {doc}", Esc(&c.document_sha256))?;
    if let Some(parent) = &c.parent_sha256 {
        writeln!(f, "  parent sha256 {}", Esc(parent))?;
    }
    match &a.extras.witnesses_checked {
        Some(names) => writeln!(
            f,
            "  witness policy met: cosigned by {}",
            Esc(&names.join(", "))
        )?,
        None => {
            for w in &a.extras.cosigners {
                writeln!(
                    f,
                    "  checkpoint cosigned by {} (carried, not checked: no --witness-policy)",
                    Esc(w)
                )?;
            }
        }
    }
    match &a.extras.stamps_checked {
        Some(stamps) => writeln!(f, "  {}", Esc(stamps))?,
        None if a.extras.timestamps > 0 => writeln!(
            f,
            "  {} timestamp token(s) carried, not checked: no --tsa-trust",
            a.extras.timestamps
        )?,
        None => {}
    }
    for (k, v) in &c.context {
        writeln!(f, "  context {} = {}", Esc(k), Esc(v))?;
    }
    writeln!(f, "  found in {}", Esc(&a.sources.join(", ")))
}

impl fmt::Display for Findings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for a in &self.actions {
            action(f, a)?;
        }
        for g in &self.gaps {
            writeln!(
                f,
                "GAP {} {} {}..{}: {}",
                Esc(&g.actor),
                g.kind,
                g.first,
                g.last,
                Esc(&g.detail)
            )?;
        }
        for n in &self.notes {
            let mark = if n.ok { "OK" } else { "PROBLEM" };
            writeln!(f, "{mark} {}: {}", Esc(&n.source), Esc(&n.text))?;
        }
        for d in &self.unmatched_documents {
            writeln!(
                f,
                "UNMATCHED document {} (no receipt names its digest)",
                Esc(d)
            )?;
        }
        let proved = self.actions.iter().filter(|a| a.proved()).count();
        write!(
            f,
            "{} action(s): {proved} proved, {} failed; {} gap(s)",
            self.actions.len(),
            self.actions.len() - proved,
            self.gaps.len()
        )
    }
}
