//! `actseal actions` and `actseal report` against a real daemon on SoftHSM: receipts found in
//! kept bundles and in a log export, each verified; a real gap (a bundle set missing a receipt,
//! an export with an entry removed); retained documents matched by SHA-256; a tampered receipt
//! shown as failed; and the HTML report read back through headless Chromium, with a hostile
//! actor name and context value shown as text, never as markup.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use actseal::api::{RotateKeyRequest, SignRequest};
use base64::{Engine, engine::general_purpose::STANDARD as B64};
use common::*;
use serde_json::Value;

/// An actor name that is markup if anyone prints it unescaped (no white space: it is valid).
const HOSTILE_ACTOR: &str =
    "spiffe://evil.example/\"><img/src=x/onerror=alert(1)><script>alert(2)</script>";
const HOSTILE_CONTEXT: &str = "<script>alert('ctx')</script><b>bold</b>&amp;";

fn request(actor: &str, action_type: &str, document: &[u8]) -> SignRequest {
    let mut r = sign_request(actor, document);
    r.action_type = action_type.into();
    r
}

/// Signs `n` actions of `actor`; returns each (document, bundle JSON).
async fn sign_many(lab: &actseal::lab::Lab, actor: &str, n: usize) -> Vec<(Vec<u8>, String)> {
    let mut signer = signer(lab).await;
    let mut out = Vec::new();
    for i in 0..n {
        let document = format!("{actor} action document {i}").into_bytes();
        let action_type = if i % 2 == 0 {
            "payment.initiate"
        } else {
            "payment.approve"
        };
        let answer = signer
            .sign(request(actor, action_type, &document))
            .await
            .expect("sign")
            .into_inner();
        out.push((document, answer.bundle_json));
    }
    out
}

/// The bundle with its receipt's context value changed and re-encoded (the signature stays).
fn tampered(bundle_json: &str) -> String {
    let mut bundle: Value = serde_json::from_str(bundle_json).unwrap();
    let payload = B64
        .decode(bundle["receipt"]["payload"].as_str().unwrap())
        .unwrap();
    let text = String::from_utf8(payload).unwrap();
    assert!(text.contains("FIN-8812"));
    let forged = text.replace("FIN-8812", "FIN-0000");
    bundle["receipt"]["payload"] = Value::String(B64.encode(forged));
    bundle.to_string()
}

fn run(lab: &actseal::lab::Lab, args: &[&str]) -> (Option<i32>, String) {
    let out = lab.run(args).unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.code() != Some(2),
        "actseal {args:?}: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

fn actions_json(lab: &actseal::lab::Lab, args: &[&str]) -> (Option<i32>, Value) {
    let anchor = lab.anchor().display().to_string();
    let mut all = vec!["actions", "--json", "--trust", &anchor];
    all.extend_from_slice(args);
    let (code, text) = run(lab, &all);
    (
        code,
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}")),
    )
}

fn sequences(findings: &Value) -> Vec<u64> {
    findings["actions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["claims"]["sequence"].as_u64().unwrap())
        .collect()
}

/// A folder of kept bundles for ACTOR: receipts 1, 2, 4, 5 (3 is missing), 5 tampered; and a
/// folder of retained documents for 1, 2 and 4, with one file no receipt names.
fn kept_set(lab: &actseal::lab::Lab, signed: &[(Vec<u8>, String)]) -> (PathBuf, PathBuf) {
    let kept = lab.dir.join("kept");
    let docs = lab.dir.join("documents");
    std::fs::create_dir_all(&kept).unwrap();
    std::fs::create_dir_all(docs.join("sub")).unwrap();
    for (i, (document, bundle)) in signed.iter().enumerate() {
        let seq = i + 1;
        match seq {
            3 => continue,
            5 => std::fs::write(kept.join(format!("b{seq}.json")), tampered(bundle)).unwrap(),
            _ => std::fs::write(kept.join(format!("b{seq}.json")), bundle).unwrap(),
        }
        if seq != 5 {
            std::fs::write(docs.join("sub").join(format!("doc{seq}.txt")), document).unwrap();
        }
    }
    std::fs::write(docs.join("unrelated.txt"), b"no receipt names this").unwrap();
    (kept, docs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actions_verify_each_receipt_report_gaps_and_match_documents() {
    let lab = started_lab();
    create_key(&lab, ACTOR).await;
    create_key(&lab, HOSTILE_ACTOR).await;
    let signed = sign_many(&lab, ACTOR, 5).await;
    sign_many(&lab, HOSTILE_ACTOR, 2).await;
    let (kept, docs) = kept_set(&lab, &signed);
    let (kept_s, docs_s) = (kept.display().to_string(), docs.display().to_string());

    // Kept bundles: 4 found, the tampered one failed, receipt 3 reported missing.
    let (code, f) = actions_json(&lab, &[&kept_s, "--actor", ACTOR, "--documents", &docs_s]);
    assert_eq!(code, Some(1), "a failure and a gap: exit 1");
    assert_eq!(sequences(&f), vec![1, 2, 4, 5]);
    let actions = f["actions"].as_array().unwrap();
    for a in &actions[..3] {
        assert!(a["proof"].is_object(), "{a}");
        assert_eq!(a["proof"]["documentChecked"], true, "{a}");
        assert_eq!(a["documents"].as_array().unwrap().len(), 1, "{a}");
        assert_eq!(a["claims"]["context"]["ticket"], "FIN-8812");
    }
    assert!(actions[3]["proof"].is_null());
    assert_eq!(actions[3]["failure"]["check"], "receipt.signature");
    let gaps = f["gaps"].as_array().unwrap();
    assert_eq!(gaps.len(), 1, "{gaps:?}");
    assert_eq!(
        (
            gaps[0]["kind"].as_str(),
            gaps[0]["first"].as_u64(),
            gaps[0]["last"].as_u64()
        ),
        (Some("missing"), Some(3), Some(3))
    );
    let unmatched: Vec<&str> = f["unmatchedDocuments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_str().unwrap())
        .collect();
    assert_eq!(unmatched.len(), 1);
    assert!(unmatched[0].ends_with("unrelated.txt"));

    // The same in text.
    let anchor = lab.anchor().display().to_string();
    let (_, text) = run(
        &lab,
        &["actions", &kept_s, "--trust", &anchor, "--actor", ACTOR],
    );
    assert!(text.contains("FAILED receipt.signature"), "{text}");
    assert!(
        text.contains("GAP spiffe://acme.example/agents/payments missing 3..3"),
        "{text}"
    );
    assert!(
        text.contains("4 action(s): 3 proved, 1 failed; 1 gap(s)"),
        "{text}"
    );

    // JSON Lines records that carry their document (as `actseal mcp-proxy` writes them): the
    // carried document is checked; a record whose document was swapped fails receipt.document.
    let records = lab.dir.join("records.jsonl");
    let mut lines = String::new();
    for (i, (document, bundle)) in signed.iter().enumerate().take(2) {
        let doc = if i == 0 {
            String::from_utf8(document.clone()).unwrap()
        } else {
            "swapped".into()
        };
        let record = serde_json::json!({"kind": "intent", "document": doc, "bundle": serde_json::from_str::<Value>(bundle).unwrap()});
        lines.push_str(&format!("{record}\n"));
    }
    std::fs::write(&records, lines).unwrap();
    let (code, f) = actions_json(&lab, &[&records.display().to_string()]);
    assert_eq!(code, Some(1), "{f}");
    assert_eq!(f["actions"][0]["proof"]["documentChecked"], true, "{f}");
    assert_eq!(
        f["actions"][1]["failure"]["check"], "receipt.document",
        "{f}"
    );

    // Two rotations, then receipt 6 by key version 3: its bundle rebuilt from the export must
    // carry versions 1 and 2 and both rotations.
    for _ in 0..2 {
        admin(&lab)
            .await
            .rotate_key(RotateKeyRequest {
                actor: ACTOR.into(),
            })
            .await
            .expect("rotate");
    }
    sign_many(&lab, ACTOR, 1).await;

    // The whole log export: every receipt proved, no gap, the log audits clean; filters apply.
    let export = export_log(&lab, "export.json");
    let (code, f) = actions_json(&lab, &[&export, "--actor", ACTOR]);
    assert_eq!(code, Some(0), "{f}");
    assert_eq!(sequences(&f), vec![1, 2, 3, 4, 5, 6]);
    assert_eq!(f["actions"][5]["proof"]["keyVersion"], 3, "{f}");
    assert!(f["gaps"].as_array().unwrap().is_empty());
    assert_eq!(f["notes"][0]["ok"], true, "{f}");
    let (_, f) = actions_json(
        &lab,
        &[&export, "--actor", ACTOR, "--type", "payment.approve"],
    );
    assert_eq!(sequences(&f), vec![2, 4]);
    let (_, f) = actions_json(&lab, &[&export, "--from", "2100-01-01T00:00:00Z"]);
    assert_eq!(sequences(&f), Vec::<u64>::new());
    let (_, f) = actions_json(&lab, &[&export]);
    assert_eq!(f["actions"].as_array().unwrap().len(), 8, "both actors");

    // The daemon's own proof RPCs: the same six, proved against its newest checkpoint.
    let (code, f) = actions_json(&lab, &["--daemon", "--actor", ACTOR]);
    assert_eq!(code, Some(0), "{f}");
    assert_eq!(sequences(&f), vec![1, 2, 3, 4, 5, 6]);
    assert!(
        f["actions"][0]["sources"][0]
            .as_str()
            .unwrap()
            .starts_with("daemon log entry")
    );

    // Export and kept bundles together: one action per receipt, found in both.
    let (_, f) = actions_json(&lab, &[&export, &kept_s, "--actor", ACTOR]);
    assert_eq!(sequences(&f), vec![1, 2, 3, 4, 5, 5, 6]);
    assert_eq!(f["actions"][0]["sources"].as_array().unwrap().len(), 2);

    // An export with receipt 3's entry removed: the audit fails, receipt 3 is a gap, and the
    // other receipts, signed by the actor's key, no longer match the checkpoint.
    let mut json: Value = serde_json::from_slice(&std::fs::read(&export).unwrap()).unwrap();
    let third = signed[2].1.clone();
    let index = receipt_statement(&third)["predicate"]["logIndex"]
        .as_u64()
        .unwrap() as usize;
    json["entries"].as_array_mut().unwrap().remove(index);
    let cut = lab.path("cut-export.json");
    std::fs::write(&cut, json.to_string()).unwrap();
    let (code, f) = actions_json(&lab, &[&cut, "--actor", ACTOR]);
    assert_eq!(code, Some(1));
    assert_eq!(sequences(&f), vec![1, 2, 4, 5, 6]);
    assert_eq!(f["notes"][0]["ok"], false, "{f}");
    assert_eq!(f["gaps"][0]["first"], 3, "{f}");
    assert_eq!(f["gaps"][0]["last"], 3, "{f}");
    for a in f["actions"].as_array().unwrap() {
        assert!(
            a["failure"]["check"].as_str().unwrap().starts_with("log."),
            "{a}"
        );
    }
}

/// Headless Chromium, or `None` (skipped; a failure under CI=true).
fn chromium() -> Option<&'static str> {
    let found = ["chromium", "chromium-browser"].into_iter().find(|c| {
        Command::new(c)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    });
    can_run(
        found.is_some(),
        "chromium (scripts/install-deps.sh installs it)",
    )
    .then_some(found?)
}

/// The DOM Chromium built from the report, serialized.
fn dump_dom(browser: &str, report: &Path, profile: &Path) -> String {
    let out = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg("--dump-dom")
        .arg(format!("file://{}", report.display()))
        .output()
        .expect("run chromium");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The text a reader sees: tags dropped, the five entities decoded.
fn visible_text(dom: &str) -> String {
    let mut text = String::new();
    let mut in_tag = false;
    for c in dom.chars() {
        match c {
            '<' => in_tag = true,
            '>' if in_tag => {
                in_tag = false;
                text.push(' ');
            }
            c if !in_tag => text.push(c),
            _ => {}
        }
    }
    text.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&amp;", "&")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn report_in_headless_chromium_shows_every_action_and_failure() {
    let Some(browser) = chromium() else { return };
    let lab = started_lab();
    create_key(&lab, ACTOR).await;
    create_key(&lab, HOSTILE_ACTOR).await;
    let signed = sign_many(&lab, ACTOR, 5).await;
    let mut hostile = request(HOSTILE_ACTOR, "tool.call", b"hostile document");
    hostile
        .context
        .insert("note".into(), HOSTILE_CONTEXT.into());
    hostile.target = "<i>target</i>".into();
    let answer = signer(&lab)
        .await
        .sign(hostile)
        .await
        .expect("sign")
        .into_inner();
    let (kept, docs) = kept_set(&lab, &signed);
    std::fs::write(kept.join("hostile.json"), &answer.bundle_json).unwrap();

    let anchor = lab.anchor().display().to_string();
    let report = lab.dir.join("report.html");
    let (code, _) = run(
        &lab,
        &[
            "report",
            &kept.display().to_string(),
            "--trust",
            &anchor,
            "--documents",
            &docs.display().to_string(),
            "--out",
            &report.display().to_string(),
        ],
    );
    assert_eq!(code, Some(1));
    let html = std::fs::read_to_string(&report).unwrap();
    // Self-contained: nothing to fetch, no script.
    for needle in [
        "<script", "<link", "<img", "<iframe", "url(", "@import", " src=",
    ] {
        assert!(!html.contains(needle), "the report holds {needle:?}");
    }

    let dom = dump_dom(browser, &report, &lab.dir.join("chromium-profile"));
    assert!(
        !dom.contains("<script") && !dom.contains("<img") && !dom.contains("<i>"),
        "markup injected: {dom}"
    );
    let text = visible_text(&dom);
    assert!(text.contains("Not everything holds"), "{text}");
    assert!(
        text.contains("5 action(s): 4 proved, 1 failed; 1 gap(s)"),
        "{text}"
    );
    for seq in [1, 2, 4, 5] {
        assert!(
            text.contains(&format!("receipt #{seq} ")),
            "receipt {seq}: {text}"
        );
    }
    assert!(text.contains("payment.initiate") && text.contains("payment.approve"));
    assert!(
        text.contains("FAILED") && text.contains("receipt.signature"),
        "{text}"
    );
    assert!(
        text.contains("GAP") && text.contains("receipt 3 is missing"),
        "{text}"
    );
    assert!(text.contains("PKCS#11 token serial"), "{text}");
    assert!(
        text.contains("retained file") && text.contains("doc1.txt matches"),
        "{text}"
    );
    assert!(text.contains("unrelated.txt"), "{text}");
    assert!(
        text.contains("witnesses") && text.contains("none on this checkpoint"),
        "{text}"
    );
    // The hostile values are shown, as text.
    assert!(text.contains(&format!("Actor {HOSTILE_ACTOR}")), "{text}");
    assert!(text.contains(HOSTILE_CONTEXT), "{text}");
    assert!(text.contains("<i>target</i>"), "{text}");

    // One bundle's report: it holds. The bundle also carries what later formats add (a second
    // signature line on the checkpoint, `log.timestamps`, an unknown member): shown, marked as
    // not checked here, and the receipt still proved.
    let mut bundle: Value = serde_json::from_str(&signed[0].1).unwrap();
    let note = bundle["log"]["checkpoint"].as_str().unwrap().to_string();
    bundle["log"]["checkpoint"] =
        format!("{note}\u{2014} witness.example/w1 AAAAAAAAAAA=\n").into();
    bundle["log"]["timestamps"] = serde_json::json!([{"token": "MAA="}]);
    bundle["later"] = serde_json::json!({});
    let witnessed = lab.dir.join("witnessed.json");
    std::fs::write(&witnessed, bundle.to_string()).unwrap();
    let one = lab.dir.join("one.html");
    let (code, _) = run(
        &lab,
        &[
            "report",
            &witnessed.display().to_string(),
            "--trust",
            &anchor,
            "--out",
            &one.display().to_string(),
        ],
    );
    assert_eq!(code, Some(0));
    let text = visible_text(&dump_dom(
        browser,
        &one,
        &lab.dir.join("chromium-profile-2"),
    ));
    assert!(
        text.contains("Everything shown holds") && text.contains("receipt #1 "),
        "{text}"
    );
    assert!(
        text.contains("1 action(s): 1 proved, 0 failed; 0 gap(s)"),
        "{text}"
    );
}

/// A measurement, not a check of behaviour: `actions` over an export of many receipts
/// (`cargo test --release --test forensics -- --ignored soak --nocapture`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn soak_actions_over_a_large_export() {
    let n: usize = std::env::var("FORENSICS_RECEIPTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(400);
    let lab = started_lab();
    create_key(&lab, ACTOR).await;
    let mut tasks = Vec::new();
    for c in 0..4 {
        let mut signer = signer(&lab).await;
        tasks.push(tokio::spawn(async move {
            for i in 0..n / 4 {
                let doc = format!("client {c} action {i}");
                signer
                    .sign(sign_request(ACTOR, doc.as_bytes()))
                    .await
                    .expect("sign");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let export = export_log(&lab, "large.json");
    let started = std::time::Instant::now();
    let (code, f) = actions_json(&lab, &[&export, "--actor", ACTOR]);
    let took = started.elapsed();
    assert_eq!(code, Some(0));
    assert_eq!(f["actions"].as_array().unwrap().len(), n / 4 * 4);
    println!(
        "actions over an export of {} receipts: {:.2} s ({:.2} ms a receipt)",
        n / 4 * 4,
        took.as_secs_f64(),
        took.as_secs_f64() * 1000.0 / (n / 4 * 4) as f64
    );
}
