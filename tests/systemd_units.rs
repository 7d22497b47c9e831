//! The systemd unit passes `systemd-analyze verify` and keeps its hardening
//! (`systemd-analyze security --offline=true`), rendered with the binary under test.

use std::{path::Path, process::Command};

const UNIT: &str = include_str!("../systemd/actseal.service");
/// The README gives the score; a change that weakens the unit past this fails here.
const MAX_EXPOSURE: f64 = 1.5;

/// The unit with ExecStart pointing at the binary under test, in a directory of its own.
fn rendered() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let exe = env!("CARGO_BIN_EXE_actseal");
    assert!(UNIT.contains("ExecStart=/usr/bin/actseal serve"));
    let path = dir.path().join("actseal.service");
    std::fs::write(&path, UNIT.replace("/usr/bin/actseal", exe)).unwrap();
    (dir, path)
}

fn systemd_analyze(args: &[&str], unit: &Path) -> (bool, String) {
    let out = Command::new("systemd-analyze")
        .args(args)
        .arg(unit)
        .output()
        .expect("systemd-analyze (package systemd; scripts/install-deps.sh installs it)");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn the_unit_verifies() {
    let (_dir, unit) = rendered();
    let (ok, out) = systemd_analyze(&["verify", "--man=no"], &unit);
    assert!(ok, "systemd-analyze verify: {out}");
    assert!(
        !out.contains(&unit.display().to_string()),
        "warnings about the unit: {out}"
    );
    for required in [
        "Type=notify",
        "SupplementaryGroups=tss",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "PrivateTmp=yes",
        "StateDirectory=actseal",
        "RuntimeDirectory=actseal",
        "SystemCallFilter=@system-service",
        "CapabilityBoundingSet=\n",
        "ExecReload=/bin/kill -HUP $MAINPID",
    ] {
        assert!(UNIT.contains(required), "the unit lacks {required:?}");
    }
    assert!(
        !UNIT.lines().any(|l| l.starts_with("PrivateUsers=")),
        "PrivateUsers would map callers' uids (SO_PEERCRED) to nobody"
    );

    // verify really checks: a unit whose binary is missing fails.
    let broken = unit.with_file_name("broken.service");
    std::fs::write(
        &broken,
        UNIT.replace("/usr/bin/actseal", "/nonexistent/actseal"),
    )
    .unwrap();
    let (ok, out) = systemd_analyze(&["verify", "--man=no"], &broken);
    assert!(!ok, "{out}");
}

#[test]
fn the_exposure_score_stays_low() {
    let (_dir, unit) = rendered();
    let (_, out) = systemd_analyze(&["security", "--offline=true", "--no-pager"], &unit);
    let score: f64 = out
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for actseal.service: ")
                .nth(1)
        })
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure score in: {out}"));
    assert!(
        score <= MAX_EXPOSURE,
        "exposure {score} > {MAX_EXPOSURE}: {out}"
    );
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    assert!(
        readme.contains(&format!("exposure level {score:.1}")),
        "README.md must give the score {score:.1}"
    );
}
