//! `actseal report`: one self-contained HTML file (inline CSS, no scripts, no fetches) that a
//! person reads: per actor a timeline of its actions, each with what was proved and any check
//! that failed, the gaps in its sequence, and the audit of any export.
//!
//! Every string taken from the inputs goes through [`esc`]: a hostile actor name, target or
//! context value is shown as text and can never become markup.

use std::collections::BTreeMap;
use std::fmt::Write;

use super::actions::{Action, Findings, Gap};

/// Escapes text for HTML element content and quoted attribute values.
pub fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if c.is_control() && c != '\n' && c != '\t' => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str =
    "body{font-family:system-ui,sans-serif;margin:2em auto;max-width:60em;color:#222}
h1{font-size:1.6em}h2{margin-top:2em;border-bottom:2px solid #ccc;word-break:break-all}
.verdict{padding:1em;border-radius:6px;font-size:1.2em;font-weight:bold}
.good{background:#e3f6e3;border:2px solid #2a7a2a}.bad{background:#fbe4e4;border:2px solid #b22}
.action{border-left:6px solid #2a7a2a;margin:1em 0;padding:.5em 1em;background:#f8f8f8}
.action.failed{border-left-color:#b22;background:#fdf1f1}
.badge{display:inline-block;padding:.1em .5em;border-radius:4px;color:#fff;font-weight:bold}
.ok{background:#2a7a2a}.fail{background:#b22}.gap{background:#c60}
dl{display:grid;grid-template-columns:12em 1fr;gap:.2em 1em;margin:.5em 0}
dt{color:#555}dd{margin:0;word-break:break-all}code{font-size:.9em}
.note{margin:.3em 0}";

/// The whole report. `title` says what it is about (an actor, a bundle file).
pub fn render(findings: &Findings, title: &str, generated_at: &str) -> String {
    let mut h = String::new();
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">\
         <title>actseal report: {t}</title><style>{STYLE}</style></head><body>\n\
         <h1>actseal report: {t}</h1>\n<p>Generated {g} by <code>actseal report</code>. \
         Trust anchor(s): {a}.</p>\n",
        t = esc(title),
        g = esc(generated_at),
        a = esc(&findings.anchors.join("; "))
    );
    summary(&mut h, findings);
    explain(&mut h);
    let mut by_actor: BTreeMap<&str, (Vec<&Action>, Vec<&Gap>)> = BTreeMap::new();
    for a in &findings.actions {
        by_actor.entry(&a.claims.actor).or_default().0.push(a);
    }
    for g in &findings.gaps {
        by_actor.entry(&g.actor).or_default().1.push(g);
    }
    for (actor, (actions, gaps)) in by_actor {
        let _ = writeln!(h, "<h2>Actor {}</h2>", esc(actor));
        for g in gaps {
            let _ = writeln!(
                h,
                "<p class=\"note\"><span class=\"badge gap\">GAP</span> {}: {}</p>",
                esc(&g.kind),
                esc(&g.detail)
            );
        }
        for a in actions {
            action(&mut h, a);
        }
    }
    inputs(&mut h, findings);
    h.push_str("</body></html>\n");
    h
}

fn summary(h: &mut String, f: &Findings) {
    let proved = f.actions.iter().filter(|a| a.proved()).count();
    let failed = f.actions.len() - proved;
    let (class, head) = if f.actions.is_empty() && f.all_hold() {
        ("bad", "No receipt matched: nothing is proved")
    } else if f.all_hold() {
        ("good", "Everything shown holds")
    } else {
        ("bad", "Not everything holds: see the red entries")
    };
    let _ = writeln!(
        h,
        "<div class=\"verdict {class}\">{head}. {} action(s): {proved} proved, {failed} failed; \
         {} gap(s) in sequences.</div>",
        f.actions.len(),
        f.gaps.len()
    );
}

fn explain(h: &mut String) {
    h.push_str(
        "<p>Each action below is a signed receipt. <b>PROVED</b> means every check passed: the \
         actor's key, held in hardware certified under the trust anchor, signed exactly this \
         receipt, and the receipt is at the stated position of a log whose signed checkpoint \
         covers it. <b>FAILED</b> names the first check that did not pass: what the receipt \
         claims is then shown but is not evidence (a receipt whose key is proved but whose log proof failed still counts toward its sequence). A <b>GAP</b> is a receipt number of the actor \
         that no receipt signed by the actor's key carries: a receipt that existed but is not here.</p>\n",
    );
}

fn row(h: &mut String, name: &str, value: &str) {
    let _ = writeln!(h, "<dt>{}</dt><dd>{}</dd>", esc(name), esc(value));
}

fn action(h: &mut String, a: &Action) {
    let c = &a.claims;
    let seq = c.sequence.map_or("?".into(), |s| s.to_string());
    let (class, badge) = if a.proved() {
        ("action", "<span class=\"badge ok\">PROVED</span>")
    } else {
        ("action failed", "<span class=\"badge fail\">FAILED</span>")
    };
    let _ = writeln!(
        h,
        "<div class=\"{class}\"><p>{badge} <b>{}</b> receipt #{} &mdash; <b>{}</b> on <code>{}</code></p><dl>",
        esc(&c.signed_at),
        esc(&seq),
        esc(&c.action_type),
        esc(&c.target)
    );
    if let Some(fail) = &a.failure {
        row(
            h,
            "failed check",
            &format!("{}: {}", fail.check, fail.detail),
        );
        row(
            h,
            "so",
            "what this receipt says below is its claim, not proved",
        );
    }
    if let Some(p) = &a.proof {
        let hw = if p.backend == "tpm" {
            format!(
                "TPM ({}), key {}, certified by the TPM's attestation key",
                p.hardware, p.key_origin
            )
        } else {
            format!("PKCS#11 token serial {}, key {}", p.hardware, p.key_origin)
        };
        row(
            h,
            "signed by",
            &format!("{} key {} version {}", c.actor, p.key_id, p.key_version),
        );
        row(h, "key held in", &hw);
        row(
            h,
            "device certificate",
            &format!("{} under anchor {}", p.device_subject, p.anchor_subject),
        );
        row(
            h,
            "log position",
            &format!(
                "index {}{} of a signed tree of {} entries, log {}",
                p.log_index,
                if p.log_index_signed {
                    ""
                } else {
                    " (proven by the inclusion proof; the receipt does not sign it)"
                },
                p.tree_size,
                p.log_origin
            ),
        );
        row(h, "requested by", &p.caller);
    }
    document_rows(h, a);
    extras_rows(h, a);
    for (k, v) in &c.context {
        row(h, &format!("context {k}"), v);
    }
    row(h, "found in", &a.sources.join(", "));
    h.push_str("</dl></div>\n");
}

fn document_rows(h: &mut String, a: &Action) {
    let c = &a.claims;
    let checked = a.proof.as_ref().is_some_and(|p| p.document_checked);
    let doc = match a.documents.first() {
        Some(path) if checked => format!("{} (retained file {path} matches)", c.document_sha256),
        Some(path) => format!(
            "{} (retained file {path} has this digest; receipt not proved)",
            c.document_sha256
        ),
        None if checked => format!(
            "{} (the document kept with the bundle matches)",
            c.document_sha256
        ),
        None if a.document_carried => format!(
            "{} (the document kept with the bundle does NOT match)",
            c.document_sha256
        ),
        None => format!("{} (no retained document given)", c.document_sha256),
    };
    row(h, "document SHA-256", &doc);
    if let Some(parent) = &c.parent_sha256 {
        let found = a
            .parent_documents
            .first()
            .map_or(String::new(), |p| format!(" (retained file {p})"));
        row(h, "parent action", &format!("{parent}{found}"));
    }
    row(h, "mode", &c.mode);
}

fn extras_rows(h: &mut String, a: &Action) {
    let x = &a.extras;
    match &x.witnesses_checked {
        Some(names) => row(
            h,
            "witnesses",
            &format!(
                "the witness policy is met: cosigned by {} (checked)",
                names.join(", ")
            ),
        ),
        None if x.cosigners.is_empty() => row(h, "witnesses", "none on this checkpoint"),
        None => {
            for w in &x.cosigners {
                row(
                    h,
                    "witness",
                    &format!(
                        "{w} cosigned the checkpoint (carried; not checked: no --witness-policy)"
                    ),
                );
            }
        }
    }
    match &x.stamps_checked {
        Some(stamps) => row(h, "timestamp", &format!("{stamps} (checked)")),
        None if x.timestamps > 0 => row(
            h,
            "timestamps",
            &format!(
                "{} RFC 3161 token(s) carried (not checked: no --tsa-trust)",
                x.timestamps
            ),
        ),
        None => {}
    }
    if let Some(batch) = &x.batch {
        row(
            h,
            "batch",
            &format!("signed in a batch (members: {})", batch.join(", ")),
        );
    }
    if !x.unknown_members.is_empty() {
        row(h, "not understood", &x.unknown_members.join(", "));
    }
}

fn inputs(h: &mut String, f: &Findings) {
    if !f.notes.is_empty() {
        h.push_str("<h2>Inputs</h2>\n");
    }
    for n in &f.notes {
        let badge = if n.ok {
            "<span class=\"badge ok\">OK</span>"
        } else {
            "<span class=\"badge fail\">PROBLEM</span>"
        };
        let _ = writeln!(
            h,
            "<p class=\"note\">{badge} {}: {}</p>",
            esc(&n.source),
            esc(&n.text)
        );
    }
    if !f.unmatched_documents.is_empty() {
        h.push_str("<h2>Retained documents no receipt names</h2>\n<ul>\n");
        for d in &f.unmatched_documents {
            let _ = writeln!(h, "<li>{}</li>", esc(d));
        }
        h.push_str("</ul>\n");
    }
}

#[cfg(test)]
mod tests {
    use super::esc;

    #[test]
    fn markup_is_text() {
        assert_eq!(
            esc("<script>alert('x')</script>&\"\u{1b}"),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&amp;&quot;\\u{1b}"
        );
    }
}
