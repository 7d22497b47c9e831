//! `actseal … | head -1`: every command that prints keeps its documented exit code when its
//! standard output is a pipe nobody reads any more, instead of panicking (exit 101).

mod common;

use std::process::{Command, Output, Stdio};

use common::*;

/// Runs `command` with its stdout a pipe whose reading end is already closed.
fn with_closed_stdout(mut command: Command) -> Output {
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    command
        .stdout(Stdio::from(writer))
        .stderr(Stdio::piped())
        .output()
        .expect("run actseal")
}

/// The command exits with `expected` and says nothing about a panic or the pipe.
fn exits_with(lab: &actseal::lab::Lab, args: &[&str], expected: i32) {
    let output = with_closed_stdout(lab.command(args));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        output.status.code(),
        Some(expected),
        "`actseal {}` with a closed stdout: {stderr}",
        args.join(" ")
    );
    assert!(
        !stderr.contains("panicked") && !stderr.contains("Broken pipe"),
        "`actseal {}`: {stderr}",
        args.join(" ")
    );
}

#[test]
fn every_printing_command_keeps_its_exit_code_on_a_closed_pipe() {
    let mut lab = started_lab();
    let config = lab.config().display().to_string();
    let anchor = lab.anchor().display().to_string();
    let document = lab.dir.join("document.json");
    std::fs::write(&document, DOCUMENT).unwrap();
    let document = document.display().to_string();
    lab.run_ok(&["key", "create", "--actor", ACTOR]).unwrap();
    let bundle = lab
        .run_ok(&[
            "sign",
            "--actor",
            ACTOR,
            "--type",
            "payment.initiate",
            "--target",
            "acct:1",
            "--document",
            &document,
        ])
        .unwrap();
    let bundle_path = lab.path("bundle.json");
    std::fs::write(&bundle_path, bundle).unwrap();
    let other = lab.path("other.json");
    std::fs::write(&other, b"another document").unwrap();

    // Client commands, on the running daemon.
    let sign = [
        "sign",
        "--actor",
        ACTOR,
        "--type",
        "payment.initiate",
        "--target",
        "acct:1",
        "--document",
        &document,
    ];
    exits_with(&lab, &sign, 0);
    exits_with(&lab, &["key", "list"], 0);
    exits_with(&lab, &["key", "show", "--actor", ACTOR], 0);
    exits_with(&lab, &["log", "checkpoint"], 0);
    exits_with(
        &lab,
        &["key", "show", "--actor", "spiffe://acme.example/nobody"],
        1,
    );

    // Offline commands: the verdict decides the code, not the pipe.
    exits_with(&lab, &["verify", &bundle_path, "--trust", &anchor], 0);
    exits_with(
        &lab,
        &[
            "verify",
            &bundle_path,
            "--trust",
            &anchor,
            "--document",
            &other,
        ],
        1,
    );
    exits_with(
        &lab,
        &["verify", &lab.path("missing.json"), "--trust", &anchor],
        2,
    );
    lab.stop_daemon().unwrap();
    let export = lab.path("export.json");
    exits_with(
        &lab,
        &["log", "export", "--config", &config, "--out", &export],
        0,
    );
    exits_with(&lab, &["audit", &export, "--trust", &anchor], 0);
    exits_with(&lab, &["serve", "--config", &config, "--check-config"], 0);
    exits_with(&lab, &["--help"], 0);
}
