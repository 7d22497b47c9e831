//! The independent verifier: `scripts/verify-with-openssl.sh` (FORMAT.md §8), which checks a
//! bundle with jq, coreutils and the `openssl` CLI, never with the crate. Tests run the script
//! itself, so what they check is exactly what an auditor runs.

use std::path::Path;
use std::process::Command;

/// The script, from the source tree.
pub const SCRIPT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/scripts/verify-with-openssl.sh"
);

/// Panics with a clear message when the `openssl` binary cannot be run: the cross-check tests
/// must fail, not skip, on a machine without it.
pub fn require_openssl() {
    match Command::new("openssl").arg("version").output() {
        Ok(out) if out.status.success() => {}
        Ok(out) => panic!(
            "`openssl version` failed ({}): the openssl cross-check needs a working openssl CLI",
            out.status
        ),
        Err(e) => panic!(
            "the `openssl` binary is required by this test and could not be run ({e}); \
             install it (e.g. `apt-get install -y openssl`)"
        ),
    }
}

/// Why the script refused a bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// The FORMAT.md §7 check the script names (`FAILED <check>: …`), if it named one.
    pub check: Option<String>,
    /// Its exit status.
    pub status: Option<i32>,
    pub stderr: String,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit {:?}: {}", self.status, self.stderr.trim_end())
    }
}

/// Runs the script on `bundle_json` (written into `workdir`) with the anchor and, if given, the
/// action document. Ok(stdout) when it says "bundle verified".
pub fn verify_with_openssl(
    bundle_json: &str,
    anchor_pem_path: &Path,
    document: Option<&[u8]>,
    workdir: &Path,
) -> Result<String, Refused> {
    let bundle = workdir.join("bundle-under-test.json");
    std::fs::write(&bundle, bundle_json).expect("write the bundle");
    let mut command = Command::new("sh");
    command.arg(SCRIPT).arg(&bundle).arg(anchor_pem_path);
    if let Some(document) = document {
        let path = workdir.join("document-under-test");
        std::fs::write(&path, document).expect("write the document");
        command.arg(path);
    }
    let out = command.output().expect("sh runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if out.status.success() && stdout.ends_with("bundle verified\n") {
        return Ok(stdout);
    }
    let check = stderr
        .lines()
        .find_map(|l| l.strip_prefix("FAILED "))
        .and_then(|l| l.split(':').next())
        .map(str::to_string);
    Err(Refused {
        check,
        status: out.status.code(),
        stderr,
    })
}
