//! A user's first client must just work: Python's grpcio with no channel options, on the Unix
//! socket (where it sends the percent-encoded socket path as `:authority`) and on the plain
//! loopback TCP listener. Malformed messages sent as raw bytes by that client are answered
//! INVALID_ARGUMENT naming the field, never INTERNAL, and the daemon keeps serving.

mod common;

use std::{collections::HashMap, path::Path, process::Command};

use common::*;

/// Generates the Python stubs from proto/ into `dir`; false if grpcio or grpcio-tools is missing.
fn python_stubs(dir: &Path) -> bool {
    let has_grpc = Command::new("python3")
        .args(["-c", "import grpc, grpc_tools"])
        .status()
        .is_ok_and(|s| s.success());
    if !can_run(
        has_grpc,
        "python3 with grpcio and grpcio-tools (pip install grpcio grpcio-tools)",
    ) {
        return false;
    }
    let proto = Path::new(env!("CARGO_MANIFEST_DIR")).join("proto");
    let status = Command::new("python3")
        .args(["-m", "grpc_tools.protoc", "-I"])
        .arg(&proto)
        .arg(format!("--python_out={}", dir.display()))
        .arg(format!("--grpc_python_out={}", dir.display()))
        .arg(proto.join("actseal/v1/actseal.proto"))
        .status()
        .expect("run grpc_tools.protoc");
    assert!(status.success(), "grpc_tools.protoc failed");
    true
}

/// Runs tests/python/stock_client.py against `target`; returns each call's (code, details).
fn stock_client(stubs: &Path, target: &str, actor: &str) -> HashMap<String, (String, String)> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/stock_client.py");
    let output = Command::new("python3")
        .arg(script)
        .arg(stubs)
        .args([target, actor])
        // No proxy may stand between the client and the daemon.
        .env_remove("http_proxy")
        .env_remove("https_proxy")
        .env_remove("grpc_proxy")
        .output()
        .expect("run python3");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "stock client failed: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
        .lines()
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).expect("a JSON line");
            let text = |k: &str| v[k].as_str().map(str::to_owned).unwrap_or(v[k].to_string());
            (text("call"), (text("code"), text("details")))
        })
        .collect()
}

fn assert_code(results: &HashMap<String, (String, String)>, call: &str, code: &str, names: &str) {
    let (got, details) = &results[call];
    assert_eq!(got, code, "{call}: {details}");
    assert!(
        details.contains(names),
        "{call}: {details:?} does not name {names:?}"
    );
}

fn check_answers(results: &HashMap<String, (String, String)>) {
    for call in ["health", "create_key", "sign", "checkpoint", "sign_after"] {
        assert_code(results, call, "OK", "");
    }
    assert_code(
        results,
        "invalid_utf8_action_type",
        "INVALID_ARGUMENT",
        "SignRequest.action_type",
    );
    assert_code(
        results,
        "invalid_utf8_context",
        "INVALID_ARGUMENT",
        "SignRequest.context",
    );
    assert_code(results, "truncated", "INVALID_ARGUMENT", "SignRequest");
    assert_code(
        results,
        "length_past_end",
        "INVALID_ARGUMENT",
        "SignRequest.actor",
    );
    assert_code(results, "bad_varint", "INVALID_ARGUMENT", "SignRequest");
    assert_code(results, "wire_type_7", "INVALID_ARGUMENT", "SignRequest");
    assert_code(results, "field_zero", "INVALID_ARGUMENT", "SignRequest");
    assert_code(
        results,
        "bad_utf8_oneof_label",
        "INVALID_ARGUMENT",
        "AdoptKeyRequest.selector",
    );
}

#[test]
fn grpcio_without_options_works_on_the_unix_socket() {
    let stubs = tempfile::tempdir().unwrap();
    if !python_stubs(stubs.path()) {
        return;
    }
    let lab = started_lab();
    let target = format!("unix:{}", lab.socket().display());
    let results = stock_client(stubs.path(), &target, ACTOR);
    check_answers(&results);
    // Every accepted Sign is a receipt in the log; no malformed one left anything.
    assert_eq!(receipt_count(&lab), 2);
}

#[test]
fn grpcio_without_options_works_on_the_loopback_tcp_listener() {
    let stubs = tempfile::tempdir().unwrap();
    if !python_stubs(stubs.path()) {
        return;
    }
    let mut lab = new_lab();
    let port = free_port();
    configure_server(
        &lab,
        &format!("tcp = \"127.0.0.1:{port}\"\ntcp_insecure_loopback = true"),
    );
    write_policy(
        &lab,
        "[[sign]]\ncallers = [\"insecure-tcp\"]\nactors = [\"*\"]\nactions = [\"*\"]\n\
         [[admin]]\ncallers = [\"insecure-tcp\"]\nactors = [\"*\"]\n",
    );
    lab.start_daemon().expect("daemon start");
    let results = stock_client(stubs.path(), &format!("127.0.0.1:{port}"), ACTOR);
    check_answers(&results);
}
