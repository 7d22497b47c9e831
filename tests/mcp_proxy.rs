//! `actseal mcp-proxy` between the official MCP Python SDK's stdio client and a FastMCP stdio
//! server (the `mcp` package from PyPI, written by nobody here), sealing through a real daemon
//! on SoftHSM. Both sides of the proxy are recorded with `tee`: what the client sent must be
//! what the server received and the other way round, byte for byte; every intent and outcome
//! bundle must verify with `actseal verify` against its stored document; with the daemon down
//! a sealed call is refused (the server never sees it), or passes under `warn`.

mod common;

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use common::*;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

const AGENT: &str = "spiffe://acme.example/agents/mcp";

/// Whether python3 has the MCP SDK (scripts/install-deps.sh installs it).
fn has_mcp_sdk() -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import mcp.server.fastmcp, mcp.client.stdio"])
        .status()
        .is_ok_and(|s| s.success());
    can_run(ok, "python3 with the MCP SDK (pip install 'mcp>=1.10,<2')")
}

fn script(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/python")
        .join(name)
        .display()
        .to_string()
}

/// The FastMCP server's command line.
fn server() -> Vec<String> {
    vec!["python3".into(), script("mcp_server.py")]
}

/// `command`, with its standard input copied to `input` and its output to `output`.
fn recorded(input: &Path, output: &Path, command: Vec<String>) -> Vec<String> {
    let mut line = vec![
        "sh".into(),
        "-c".into(),
        r#"i=$1; o=$2; shift 2; tee "$i" | "$@" | tee "$o""#.into(),
        "sh".into(),
        input.display().to_string(),
        output.display().to_string(),
    ];
    line.extend(command);
    line
}

/// The proxy's command line in front of `server`.
fn proxy(socket: &Path, options: &[&str], server: Vec<String>) -> Vec<String> {
    let mut line = vec![
        env!("CARGO_BIN_EXE_actseal").to_string(),
        "mcp-proxy".into(),
        "--actor".into(),
        AGENT.into(),
        "--socket".into(),
        socket.display().to_string(),
    ];
    line.extend(options.iter().map(|s| s.to_string()));
    line.push("--".into());
    line.extend(server);
    line
}

/// Runs the SDK's client against `command`; returns each call's answer and the client's
/// standard error (where the proxy's log goes).
fn client(command: Vec<String>, calls: &Value, repeat: usize) -> (Vec<Value>, String) {
    let spec =
        json!({"command": command[0], "args": command[1..], "calls": calls, "repeat": repeat});
    let output = Command::new("python3")
        .arg(script("mcp_client.py"))
        .arg(spec.to_string())
        .output()
        .expect("run python3");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(
        output.status.success(),
        "MCP client failed: {}{stderr}",
        String::from_utf8_lossy(&output.stdout)
    );
    let answers = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    (answers, stderr)
}

fn calls() -> Value {
    json!([
        {"tool": "add", "arguments": {"a": 2, "b": 3}},
        {"tool": "echo", "arguments": {"text": "héllo ✓ \"quoted\" \\ \u{1f50f}"}},
        {"tool": "fail", "arguments": {"reason": "insufficient funds"}},
    ])
}

/// The two sides of the proxy, each recorded by `tee`.
struct Sides {
    client_sent: PathBuf,
    client_got: PathBuf,
    server_got: PathBuf,
    server_sent: PathBuf,
}

impl Sides {
    fn new(dir: &Path) -> Sides {
        Sides {
            client_sent: dir.join("client-sent"),
            client_got: dir.join("client-got"),
            server_got: dir.join("server-got"),
            server_sent: dir.join("server-sent"),
        }
    }

    /// The client's command: the proxy (recorded) in front of the server (recorded).
    fn command(&self, socket: &Path, options: &[&str]) -> Vec<String> {
        self.command_for(server(), socket, options)
    }

    /// The same in front of another server.
    fn command_for(&self, server: Vec<String>, socket: &Path, options: &[&str]) -> Vec<String> {
        let server = recorded(&self.server_got, &self.server_sent, server);
        recorded(
            &self.client_sent,
            &self.client_got,
            proxy(socket, options, server),
        )
    }

    fn read(path: &Path) -> Vec<u8> {
        std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    fn lines(path: &Path) -> Vec<Vec<u8>> {
        Self::read(path)
            .split_inclusive(|&b| b == b'\n')
            .map(<[u8]>::to_vec)
            .collect()
    }

    /// Both directions carried every byte unchanged.
    fn assert_identical(&self) {
        assert_eq!(
            Self::read(&self.client_sent),
            Self::read(&self.server_got),
            "client → server bytes differ"
        );
        assert_eq!(
            Self::read(&self.server_sent),
            Self::read(&self.client_got),
            "server → client bytes differ"
        );
    }
}

fn answer<'a>(answers: &'a [Value], tool: &str) -> &'a Value {
    answers
        .iter()
        .find(|a| a["tool"] == tool)
        .unwrap_or_else(|| panic!("no answer for {tool}: {answers:?}"))
}

fn assert_results(answers: &[Value]) {
    assert_eq!(answer(answers, "add")["text"], "5");
    assert_eq!(
        answer(answers, "echo")["text"],
        calls()[1]["arguments"]["text"]
    );
    assert_eq!(answer(answers, "fail")["isError"], true);
}

/// Verifies a bundle against its document with `actseal verify`, as an investigator would.
fn verify_cli(lab: &TestLab, bundle: &Path, document: &Path) {
    let anchor = lab.anchor().display().to_string();
    let out = lab
        .run_ok(&[
            "verify",
            &bundle.display().to_string(),
            "--trust",
            &anchor,
            "--document",
            &document.display().to_string(),
        ])
        .expect("the bundle verifies against its document");
    assert!(out.contains("OK"), "{out}");
}

fn lab_with_key() -> TestLab {
    let lab = started_lab();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(create_key(&lab, AGENT));
    lab
}

#[test]
fn every_tool_call_is_sealed_verifies_and_crosses_unchanged() {
    if !has_mcp_sdk() {
        return;
    }
    let lab = lab_with_key();
    let work = tempfile::tempdir().unwrap();
    let sides = Sides::new(work.path());
    let jsonl = work.path().join("bundles.jsonl");
    let command = sides.command(&lab.socket(), &["--bundles-jsonl", jsonl.to_str().unwrap()]);
    let (answers, stderr) = client(command, &calls(), 1);
    assert_results(&answers);
    sides.assert_identical();

    let records: Vec<Value> = std::fs::read_to_string(&jsonl)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(records.len(), 6, "an intent and an outcome per call");
    assert_eq!(receipt_count(&lab), 6);
    let sent = Sides::lines(&sides.client_sent);
    let got = Sides::lines(&sides.client_got);
    for (n, pair) in records.chunks(2).enumerate() {
        let (intent, outcome) = (&pair[0], &pair[1]);
        assert_eq!(
            (intent["kind"].as_str(), outcome["kind"].as_str()),
            (Some("intent"), Some("outcome"))
        );
        for record in pair {
            check_record(&lab, work.path(), record, &stderr);
        }
        // The intent is the request as the client sent it, the outcome the response as the
        // client received it: each exactly one whole message line.
        let line = |r: &Value| format!("{}\n", r["document"].as_str().unwrap()).into_bytes();
        assert!(
            sent.contains(&line(intent)),
            "intent {n} is not a sent line"
        );
        assert!(
            got.contains(&line(outcome)),
            "outcome {n} is not a received line"
        );
        let intent_doc: Value = serde_json::from_str(intent["document"].as_str().unwrap()).unwrap();
        assert_eq!(intent_doc["method"], "tools/call");
        assert_eq!(intent_doc["params"]["name"], intent["tool"]);
        let intent_receipt = receipt_statement(&intent["bundle"].to_string());
        let outcome_receipt = receipt_statement(&outcome["bundle"].to_string());
        // The outcome names its intent: parent = the intent's document digest.
        assert_eq!(
            outcome_receipt["predicate"]["action"]["parentSha256"],
            intent["documentSha256"]
        );
        assert_eq!(
            intent_receipt["predicate"]["action"]["type"],
            "mcp.tool.intent"
        );
        assert_eq!(
            outcome_receipt["predicate"]["action"]["type"],
            "mcp.tool.outcome"
        );
        let ctx = &intent_receipt["predicate"]["context"];
        assert_eq!(ctx["mcp.client.name"], "actseal-test-agent");
        assert_eq!(ctx["mcp.client.version"], "0.9.1");
        assert_eq!(ctx["mcp.session"], records[0]["session"]);
        assert_eq!(ctx["mcp.tool"], intent["tool"]);
        let octx = &outcome_receipt["predicate"]["context"];
        assert_eq!(octx["mcp.intent.logIndex"], intent["logIndex"].to_string());
        assert_eq!(octx["mcp.requestId"], ctx["mcp.requestId"]);
    }
    let outcome = |tool: &str| {
        let r = records
            .iter()
            .find(|r| r["kind"] == "outcome" && r["tool"] == tool)
            .unwrap();
        receipt_statement(&r["bundle"].to_string())["predicate"]["context"]["mcp.outcome"].clone()
    };
    assert_eq!(outcome("add"), "result");
    assert_eq!(outcome("fail"), "tool-error");
}

/// One stored record: its digest is its document's, its bundle verifies with `actseal verify`
/// against the document, and the proxy logged its log index.
fn check_record(lab: &TestLab, dir: &Path, record: &Value, proxy_log: &str) {
    let document = record["document"].as_str().unwrap().as_bytes();
    assert_eq!(
        record["documentSha256"].as_str().unwrap(),
        hex::encode(Sha256::digest(document))
    );
    let stem = dir.join(format!(
        "{}-{}",
        record["call"],
        record["kind"].as_str().unwrap()
    ));
    let (bundle, doc) = (
        stem.with_extension("bundle.json"),
        stem.with_extension("document"),
    );
    std::fs::write(&bundle, record["bundle"].to_string()).unwrap();
    std::fs::write(&doc, document).unwrap();
    verify_cli(lab, &bundle, &doc);
    let statement = receipt_statement(&record["bundle"].to_string());
    assert_eq!(statement["predicate"]["actor"], AGENT);
    assert_eq!(statement["predicate"]["logIndex"], record["logIndex"]);
    let logged = format!("log_index={}", record["logIndex"]);
    assert!(
        proxy_log.contains(&logged),
        "the proxy did not log {logged}:\n{proxy_log}"
    );
}

#[test]
fn only_the_named_tools_are_sealed_into_a_directory() {
    if !has_mcp_sdk() {
        return;
    }
    let lab = lab_with_key();
    let work = tempfile::tempdir().unwrap();
    let sides = Sides::new(work.path());
    let dir = work.path().join("bundles");
    let options = [
        "--bundles-dir",
        dir.to_str().unwrap(),
        "--seal",
        "ad*",
        "--seal",
        "fail",
    ];
    let (answers, _) = client(sides.command(&lab.socket(), &options), &calls(), 1);
    assert_results(&answers);
    sides.assert_identical();
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names.len(),
        8,
        "add and fail: intent and outcome, bundle and document: {names:?}"
    );
    assert_eq!(receipt_count(&lab), 4, "echo is not sealed");
    for name in names.iter().filter(|n| n.ends_with(".bundle.json")) {
        let bundle = dir.join(name);
        let doc = dir.join(name.replace(".bundle.json", ".document.json"));
        verify_cli(&lab, &bundle, &doc);
        let statement = receipt_statement(&std::fs::read_to_string(&bundle).unwrap());
        let tool = statement["predicate"]["context"]["mcp.tool"]
            .as_str()
            .unwrap();
        assert!(tool == "add" || tool == "fail", "{tool} was sealed");
    }
}

#[test]
fn with_the_daemon_down_a_call_is_refused_or_passes_with_warn() {
    if !has_mcp_sdk() {
        return;
    }
    let mut lab = lab_with_key();
    lab.stop_daemon().unwrap();
    let work = tempfile::tempdir().unwrap();
    let jsonl = work.path().join("bundles.jsonl");
    let jsonl = jsonl.to_str().unwrap();

    // refuse (the default): the sealed tools never reach the server; echo is not sealed.
    let refused = Sides::new(&work.path().join("refuse"));
    std::fs::create_dir(work.path().join("refuse")).unwrap();
    let options = ["--bundles-jsonl", jsonl, "--seal", "add", "--seal", "fail"];
    let (answers, stderr) = client(refused.command(&lab.socket(), &options), &calls(), 1);
    for tool in ["add", "fail"] {
        let a = answer(&answers, tool);
        assert_eq!(a["ok"], false, "{tool} passed: {a}");
        assert_eq!(a["errorCode"], -32001);
        assert!(
            a["errorMessage"]
                .as_str()
                .unwrap()
                .contains("could not be sealed")
        );
    }
    assert_eq!(
        answer(&answers, "echo")["text"],
        calls()[1]["arguments"]["text"]
    );
    assert!(stderr.contains("call refused"), "{stderr}");
    // The server got every message but the two refused calls; the client got every message
    // of the server's, and the two refusals.
    let sent = Sides::lines(&refused.client_sent);
    let server_got = Sides::lines(&refused.server_got);
    let refused_lines: Vec<_> = sent.iter().filter(|l| !server_got.contains(l)).collect();
    assert_eq!(refused_lines.len(), 2, "{refused_lines:?}");
    for line in &refused_lines {
        let v: Value = serde_json::from_slice(line).unwrap();
        assert_eq!(v["method"], "tools/call");
        assert!(v["params"]["name"] == "add" || v["params"]["name"] == "fail");
    }
    assert_eq!(server_got.len(), sent.len() - 2);
    let server_sent = Sides::lines(&refused.server_sent);
    let client_got = Sides::lines(&refused.client_got);
    assert_eq!(client_got.len(), server_sent.len() + 2);
    assert!(server_sent.iter().all(|l| client_got.contains(l)));
    assert!(
        !Path::new(jsonl).exists(),
        "nothing was sealed, nothing stored"
    );

    // warn: everything passes, unchanged.
    let warned = Sides::new(&work.path().join("warn"));
    std::fs::create_dir(work.path().join("warn")).unwrap();
    let options = ["--bundles-jsonl", jsonl, "--on-seal-failure", "warn"];
    let (answers, stderr) = client(warned.command(&lab.socket(), &options), &calls(), 1);
    assert_results(&answers);
    warned.assert_identical();
    assert_eq!(
        stderr.matches("intent not sealed: call forwarded").count(),
        3,
        "{stderr}"
    );
    assert!(!Path::new(jsonl).exists());

    // The daemon back: the same proxy settings seal again.
    lab.start_daemon().unwrap();
    let again = Sides::new(&work.path().join("again"));
    std::fs::create_dir(work.path().join("again")).unwrap();
    let (answers, _) = client(again.command(&lab.socket(), &options), &calls(), 1);
    assert_results(&answers);
    again.assert_identical();
    assert_eq!(std::fs::read_to_string(jsonl).unwrap().lines().count(), 6);
}

/// A published MCP server (the reference `mcp-server-time` from PyPI) behind the proxy, as
/// README shows it.
#[test]
fn a_published_mcp_server_behind_the_proxy() {
    let ok = Command::new("python3")
        .args(["-c", "import mcp_server_time"])
        .status()
        .is_ok_and(|s| s.success());
    if !has_mcp_sdk() || !can_run(ok, "python3 with mcp-server-time (pip)") {
        return;
    }
    let lab = lab_with_key();
    let work = tempfile::tempdir().unwrap();
    let sides = Sides::new(work.path());
    let dir = work.path().join("bundles");
    let server = vec!["python3".into(), "-m".into(), "mcp_server_time".into()];
    let command = sides.command_for(
        server,
        &lab.socket(),
        &["--bundles-dir", dir.to_str().unwrap()],
    );
    let calls = json!([{"tool": "get_current_time", "arguments": {"timezone": "Europe/Berlin"}}]);
    let (answers, _) = client(command, &calls, 1);
    let text = answers[0]["text"].as_str().unwrap_or_default();
    assert!(text.contains("Europe/Berlin"), "{answers:?}");
    sides.assert_identical();
    let bundles: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".bundle.json"))
        .collect();
    assert_eq!(bundles.len(), 2);
    for bundle in bundles {
        let doc = PathBuf::from(
            bundle
                .to_string_lossy()
                .replace(".bundle.json", ".document.json"),
        );
        verify_cli(&lab, &bundle, &doc);
    }
}

#[test]
fn a_call_the_daemon_does_not_permit_is_refused() {
    if !has_mcp_sdk() {
        return;
    }
    let lab = lab_with_key();
    // The proxy's user may sign for the agent, but no MCP action types.
    write_policy(
        &lab,
        &format!(
            "[[sign]]\ncallers = [\"uid:{}\"]\nactors = [\"*\"]\nactions = [\"payment.*\"]\n",
            own_uid()
        ),
    );
    lab.signal_daemon("HUP").unwrap();
    wait_for_log(&lab, "policy reloaded", 1);
    let work = tempfile::tempdir().unwrap();
    let sides = Sides::new(work.path());
    let jsonl = work.path().join("bundles.jsonl");
    let command = sides.command(&lab.socket(), &["--bundles-jsonl", jsonl.to_str().unwrap()]);
    let (answers, _) = client(command, &calls(), 1);
    for a in &answers {
        assert_eq!(a["errorCode"], -32001, "{a}");
        assert!(
            a["errorMessage"]
                .as_str()
                .unwrap()
                .contains("PermissionDenied"),
            "{a}"
        );
    }
    let server_got = String::from_utf8(Sides::read(&sides.server_got)).unwrap();
    assert!(
        !server_got.contains("tools/call"),
        "a refused call reached the server"
    );
    assert_eq!(receipt_count(&lab), 0);
    assert!(!jsonl.exists());
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

/// Per-call wall times (ms) of `repeat` rounds of calls, sorted, skipping the first round.
fn call_times(command: Vec<String>, calls: &Value, repeat: usize) -> Vec<f64> {
    let (answers, _) = client(command, calls, repeat + 1);
    let per_round = calls.as_array().unwrap().len();
    let mut times: Vec<f64> = answers[per_round..]
        .iter()
        .map(|a| a["seconds"].as_f64().unwrap() * 1000.0)
        .collect();
    times.sort_by(f64::total_cmp);
    times
}

/// `Sign` latencies (ms) of the daemon alone, for `n` documents like the proxy's, sorted.
fn sign_times(lab: &TestLab, n: usize) -> Vec<f64> {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut client = signer(lab).await;
        let mut times = Vec::new();
        for i in 0..n {
            let document = format!(r#"{{"jsonrpc":"2.0","id":{i},"method":"tools/call","params":{{"name":"echo","arguments":{{"text":"measure"}}}}}}"#);
            let start = Instant::now();
            client
                .sign(sign_request(AGENT, document.as_bytes()))
                .await
                .expect("sign");
            times.push(start.elapsed().as_secs_f64() * 1000.0);
        }
        times.sort_by(f64::total_cmp);
        times
    })
}

/// The latency the proxy adds per tool call (an intent and an outcome sealed), against the
/// same server without it; and, to tell the parts apart, the proxy sealing nothing and the
/// daemon's `Sign` alone. `cargo test --release --test mcp_proxy -- --ignored --nocapture`.
#[test]
#[ignore]
fn added_latency_per_tool_call() {
    if !has_mcp_sdk() {
        return;
    }
    let lab = lab_with_key();
    let work = tempfile::tempdir().unwrap();
    let jsonl = work.path().join("bundles.jsonl");
    let rounds: usize = std::env::var("MCP_PROXY_ROUNDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(500);
    let calls = json!([{"tool": "echo", "arguments": {"text": "measure"}}]);
    let started = Instant::now();
    let jsonl_option = ["--bundles-jsonl", jsonl.to_str().unwrap()];
    let unsealed_options = [
        "--bundles-jsonl",
        jsonl.to_str().unwrap(),
        "--seal",
        "none-such",
    ];
    let runs = [
        ("direct", call_times(server(), &calls, rounds)),
        (
            "proxy, sealing nothing",
            call_times(
                proxy(&lab.socket(), &unsealed_options, server()),
                &calls,
                rounds,
            ),
        ),
        (
            "proxy, sealing",
            call_times(
                proxy(&lab.socket(), &jsonl_option, server()),
                &calls,
                rounds,
            ),
        ),
        ("daemon Sign alone", sign_times(&lab, rounds)),
    ];
    println!("{rounds} calls each ({:?} in all)", started.elapsed());
    let (d50, d99) = (percentile(&runs[0].1, 0.5), percentile(&runs[0].1, 0.99));
    for (name, times) in &runs {
        let (p50, p99) = (percentile(times, 0.5), percentile(times, 0.99));
        println!(
            "{name:>24}: p50 {p50:7.2} ms  p99 {p99:7.2} ms   (vs direct: +{:.2} / +{:.2})",
            p50 - d50,
            p99 - d99
        );
    }
    assert_eq!(receipt_count(&lab), 2 * (rounds as u64 + 1) + rounds as u64);
}
