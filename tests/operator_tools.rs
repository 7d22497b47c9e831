//! The operator's tools on real tokens: the CA (token or explicit key file), device
//! certificates, configuration checks.

mod common;

use common::*;

fn fails_with(output: std::process::Output, needle: &str) {
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(!output.status.success(), "should have failed: {text}");
    assert!(text.contains(needle), "expected {needle:?} in: {text}");
}

#[test]
fn a_key_file_ca_issues_a_chain_openssl_accepts_and_csrs_are_checked() {
    let lab = new_lab();
    let ca_dir = lab.dir.join("file-ca");
    let key_file = lab.dir.join("secrets/file-ca.key");
    lab.run_ok(&[
        "ca",
        "init",
        "--dir",
        &ca_dir.display().to_string(),
        "--key-file",
        &key_file.display().to_string(),
        "--subject",
        "file CA",
    ])
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the CA key file must be private");

    let issued = lab.dir.join("device-by-file-ca.crt");
    lab.run_ok(&[
        "ca",
        "issue",
        "--dir",
        &ca_dir.display().to_string(),
        "--csr",
        &lab.path("device.csr"),
        "--out",
        &issued.display().to_string(),
    ])
    .unwrap();
    let verify = std::process::Command::new("openssl")
        .args(["verify", "-x509_strict", "-CAfile"])
        .arg(ca_dir.join("ca.crt"))
        .arg(&issued)
        .output()
        .unwrap();
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stderr)
    );
    // The token CA's chain, too.
    let verify = std::process::Command::new("openssl")
        .args(["verify", "-x509_strict", "-CAfile"])
        .arg(lab.anchor())
        .arg(lab.dir.join("device.crt"))
        .output()
        .unwrap();
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stderr)
    );

    // A second CA in the same place is refused.
    fails_with(
        lab.run(&[
            "ca",
            "init",
            "--dir",
            &ca_dir.display().to_string(),
            "--key-file",
            &lab.path("secrets/other.key"),
        ])
        .unwrap(),
        "already set up",
    );

    // A request whose signature does not match its key is refused (proof of possession).
    let pem = std::fs::read_to_string(lab.dir.join("device.csr")).unwrap();
    let der = {
        use base64::{Engine, engine::general_purpose::STANDARD as B64};
        let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        let mut der = B64.decode(body).unwrap();
        let last = der.len() - 1;
        der[last] ^= 0x01;
        let text = B64.encode(der);
        text.as_bytes()
            .chunks(64)
            .map(|c| String::from_utf8_lossy(c).into_owned())
            .collect::<Vec<_>>()
            .join("\n")
    };
    let forged = lab.dir.join("forged.csr");
    std::fs::write(
        &forged,
        format!("-----BEGIN CERTIFICATE REQUEST-----\n{der}\n-----END CERTIFICATE REQUEST-----\n"),
    )
    .unwrap();
    fails_with(
        lab.run(&[
            "ca",
            "issue",
            "--dir",
            &ca_dir.display().to_string(),
            "--csr",
            &forged.display().to_string(),
            "--out",
            &lab.path("x.crt"),
        ])
        .unwrap(),
        "does not verify",
    );
    fails_with(
        lab.run(&[
            "ca",
            "issue",
            "--dir",
            &ca_dir.display().to_string(),
            "--csr",
            &lab.path("actseal.toml"),
            "--out",
            &lab.path("x.crt"),
        ])
        .unwrap(),
        "not a PEM certificate request",
    );

    // A certificate for another key cannot be installed as the device certificate.
    fails_with(
        lab.run(&[
            "device",
            "install",
            "--config",
            &lab.path("actseal.toml"),
            &ca_dir.join("ca.crt").display().to_string(),
        ])
        .unwrap(),
        "not for this token's device key",
    );
}

#[test]
fn check_config_accepts_good_and_names_the_error_in_bad_files() {
    let lab = new_lab();
    let ok = lab
        .run_ok(&[
            "serve",
            "--config",
            &lab.path("actseal.toml"),
            "--check-config",
        ])
        .unwrap();
    assert!(ok.contains("OK"));
    let config = std::fs::read_to_string(lab.config()).unwrap();
    let bad = lab.dir.join("bad.toml");
    std::fs::write(
        &bad,
        config.replace("sessions = 4", "sessions = 4\nsesions = 2"),
    )
    .unwrap();
    fails_with(
        lab.run(&[
            "serve",
            "--config",
            &bad.display().to_string(),
            "--check-config",
        ])
        .unwrap(),
        "unknown field `sesions`",
    );
    std::fs::write(&bad, config.replace("token_label = \"actseal-lab\"", "")).unwrap();
    fails_with(
        lab.run(&[
            "serve",
            "--config",
            &bad.display().to_string(),
            "--check-config",
        ])
        .unwrap(),
        "exactly one of token_label and token_serial",
    );
}

#[test]
fn an_expired_device_certificate_stops_the_daemon_from_signing() {
    let mut lab = new_lab();
    let short = lab.path("short.crt");
    lab.run_ok(&[
        "ca",
        "issue",
        "--dir",
        &lab.path("ca"),
        "--csr",
        &lab.path("device.csr"),
        "--out",
        &short,
        "--days",
        "0",
    ])
    .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let refused = lab
        .run(&[
            "device",
            "install",
            "--config",
            &lab.path("actseal.toml"),
            &short,
        ])
        .unwrap();
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("the certificate has expired"),
        "{refused:?}"
    );
    // Only an expired certificate installed (put in place by hand, without the history that
    // still holds the valid one): the daemon does not start.
    std::fs::remove_dir_all(lab.dir.join("state/device-certificates")).unwrap();
    std::fs::copy(&short, lab.dir.join("state/device.crt")).unwrap();
    let err = lab
        .start_daemon()
        .expect_err("an expired device certificate");
    assert!(
        err.to_string()
            .contains("no installed device certificate is valid now"),
        "{err}"
    );
}
