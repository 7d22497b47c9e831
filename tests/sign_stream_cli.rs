//! `actseal sign --stream` against a real daemon on SoftHSM: JSON lines in, one result line per
//! action out (a bundle that verifies against the line's own document, or that action's error
//! while the others are signed), a bad line answered without being sent, a retry inside the
//! stream answered with the first bundle, and the client's in-flight bound kept under the
//! daemon's per-caller bound so that nothing is refused as RESOURCE_EXHAUSTED.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::{collections::BTreeMap, io::Write, process::Stdio};

use base64::{Engine, engine::general_purpose::STANDARD as B64};
use common::*;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// Runs `actseal sign --stream ARGS` with `input` on stdin: (exit success, result lines by
/// input line number, stderr).
fn sign_stream(
    lab: &actseal::lab::Lab,
    args: &[&str],
    input: &str,
) -> (bool, BTreeMap<u64, Value>, String) {
    let mut command = lab.command(&[&["sign", "--stream"], args].concat());
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("actseal runs");
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_owned();
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let output = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    let stdout = String::from_utf8(output.stdout).unwrap();
    let mut by_line = BTreeMap::new();
    for text in stdout.lines() {
        let value: Value = serde_json::from_str(text).expect("each output line is JSON");
        let line = value["line"].as_u64().expect("each result names its line");
        assert!(
            by_line.insert(line, value).is_none(),
            "line {line} answered twice"
        );
    }
    (
        output.status.success(),
        by_line,
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn code(result: &Value) -> &str {
    result["error"]["code"].as_str().unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_lines_in_one_result_each_out_with_per_action_errors() {
    let mut lab = new_lab();
    // The daemon lets this caller have 4 streamed actions in flight; the CLI keeps to 4.
    configure_server(&lab, "limits = { max_stream_actions_in_flight = 4 }");
    lab.start_daemon().expect("daemon start");
    create_key(&lab, ACTOR).await;
    let mut lines = Vec::new();
    let mut documents = BTreeMap::new();
    for i in 0..40u64 {
        let document = format!("{{\"streamed\":{i}}}");
        let line = match i % 4 {
            0 => json!({"id": i, "document": document}),
            1 => json!({"id": format!("a-{i}"), "document_base64": B64.encode(&document),
                "type": "refund.create", "context": {"n": i.to_string()}}),
            2 => json!({"id": i, "digest": hex::encode(Sha256::digest(&document))}),
            _ => json!({"document": document, "target": "acct:other"}),
        };
        documents.insert(lines.len() as u64 + 1, document);
        lines.push(line.to_string());
    }
    let bad = [
        "{not json".to_owned(),
        json!({"id": "two", "document": "x", "digest": "00"}).to_string(),
        json!({"id": "extra", "document": "x", "colour": "red"}).to_string(),
        json!({"id": "hex", "digest": "zz"}).to_string(),
    ];
    let first_bad = lines.len() as u64 + 1;
    lines.extend(bad.iter().cloned());
    lines.push(String::new());
    // Refused by the daemon: an actor without a key, an actor name that is not one.
    let unknown = lines.len() as u64 + 1;
    lines
        .push(json!({"actor": "spiffe://acme.example/agents/nobody", "document": "x"}).to_string());
    lines.push(json!({"actor": "not a spiffe id", "document": "x"}).to_string());
    // A retry inside the stream: the same request id and content.
    let retry = lines.len() as u64 + 1;
    for _ in 0..2 {
        lines.push(json!({"request_id": "cli-retry", "document": "retried"}).to_string());
    }
    let input = lines.join("\n") + "\n";
    let (ok, results, stderr) = sign_stream(
        &lab,
        &[
            "--actor",
            ACTOR,
            "--type",
            "payment.initiate",
            "--target",
            "acct:1",
            "--context",
            "ticket=FIN-1",
            "--in-flight",
            "4",
        ],
        &input,
    );
    assert!(!ok, "some actions failed, so the command fails");
    assert!(stderr.contains("6 of 48 actions failed"), "{stderr}");
    assert_eq!(
        results.len(),
        48,
        "one result per non-empty line: {results:?}"
    );
    for (line, document) in &documents {
        let result = &results[line];
        assert!(result.get("error").is_none(), "line {line}: {result}");
        let bundle = result["bundle_json"].as_str().unwrap();
        let verified = verify(&lab, bundle, Some(document.as_bytes())).expect("bundle verifies");
        let _ = verified;
        let predicate = &receipt_statement(bundle)["predicate"];
        let i = line - 1;
        let (kind, target) = match i % 4 {
            1 => ("refund.create", "acct:1"),
            3 => ("payment.initiate", "acct:other"),
            _ => ("payment.initiate", "acct:1"),
        };
        assert_eq!(predicate["action"]["type"], kind);
        assert_eq!(predicate["action"]["target"], target);
        assert_eq!(
            predicate["context"]["ticket"], "FIN-1",
            "the command line's context"
        );
        if i % 4 == 1 {
            assert_eq!(
                predicate["context"]["n"],
                i.to_string(),
                "the line's context too"
            );
            assert_eq!(result["id"], format!("a-{i}"));
        }
        assert_eq!(result["sequence"], predicate["sequence"]);
        assert_eq!(result["log_index"], predicate["logIndex"]);
    }
    for line in first_bad..first_bad + 4 {
        assert_eq!(
            code(&results[&line]),
            "InvalidArgument",
            "line {line}: {}",
            results[&line]
        );
    }
    assert_eq!(
        results[&(first_bad + 1)]["id"],
        "two",
        "a bad line keeps its id"
    );
    assert!(
        matches!(code(&results[&unknown]), "NotFound" | "FailedPrecondition"),
        "{}",
        results[&unknown]
    );
    assert_eq!(code(&results[&(unknown + 1)]), "InvalidArgument");
    assert_eq!(
        results[&retry]["bundle_json"],
        results[&(retry + 1)]["bundle_json"]
    );
    assert!(
        results.values().all(|r| code(r) != "ResourceExhausted"),
        "the CLI kept within the daemon's bound"
    );
    // 40 actions and one retried: 41 receipts, and nothing of the refused ones.
    assert_eq!(receipt_count(&lab), 41);

    // All good: the command succeeds; an empty input signs nothing.
    let (ok, results, stderr) = sign_stream(
        &lab,
        &["--actor", ACTOR, "--type", "t", "--target", "x"],
        "{\"document\": \"one\"}\n{\"document\": \"two\"}\n",
    );
    assert!(ok, "{stderr}");
    assert_eq!(results.len(), 2);
    let (ok, results, stderr) = sign_stream(&lab, &[], "");
    assert!(ok && results.is_empty(), "{stderr}");
    // Lines naming no actor, with none on the command line, are refused one by one.
    let (ok, results, _) = sign_stream(&lab, &[], "{\"document\": \"x\"}\n");
    assert!(!ok);
    assert_eq!(code(&results[&1]), "InvalidArgument");
}

/// A client asking for more in flight than the daemon allows this caller: what is over the
/// daemon's bound is refused per line (RESOURCE_EXHAUSTED, nothing of it stored), every other
/// line is signed, and every line is answered exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_daemons_bound_lines_are_refused_one_by_one_and_nothing_of_them_is_stored() {
    let mut lab = new_lab();
    configure_server(&lab, "limits = { max_stream_actions_in_flight = 2 }");
    lab.start_daemon().expect("daemon start");
    create_key(&lab, ACTOR).await;
    let input: String = (0..40)
        .map(|i| format!("{{\"id\":{i},\"document\":\"over the bound {i}\"}}\n"))
        .collect();
    let (ok, results, _) = sign_stream(
        &lab,
        &[
            "--actor",
            ACTOR,
            "--type",
            "t",
            "--target",
            "x",
            "--in-flight",
            "16",
        ],
        &input,
    );
    assert_eq!(results.len(), 40, "every line answered once");
    let signed = results
        .values()
        .filter(|r| r.get("error").is_none())
        .count() as u64;
    let refused: Vec<&Value> = results
        .values()
        .filter(|r| r.get("error").is_some())
        .collect();
    assert!(
        refused.iter().all(|r| code(r) == "ResourceExhausted"),
        "{refused:?}"
    );
    assert!(
        !refused.is_empty(),
        "16 sent at once against a bound of 2: some are refused"
    );
    assert!(signed > 0 && !ok);
    assert_eq!(
        receipt_count(&lab),
        signed,
        "nothing of a refused line is stored"
    );
}
