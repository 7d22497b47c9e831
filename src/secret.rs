//! Where secrets (token PINs, the database password) come from: a file or an environment
//! variable, never argv.
//!
//! A secret file must be the daemon's own (owned by the user it runs as, no access for group
//! or others), and its content is the secret exactly: one line, a final line ending optional.
//! Anything else is refused rather than guessed at, so the token never sees a PIN the
//! operator did not mean and a file others can read never holds one. Errors name what the
//! secret is for (its [`SecretKind`]) and where it was read from, never its content.

use std::{
    fmt,
    fs::{self, File},
    io::Read,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

/// The longest secret file read; PKCS#11 tokens allow far shorter PINs.
const MAX_PIN_BYTES: usize = 1024;

/// What a secret is for: its errors say so.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretKind {
    /// A token's user PIN.
    Pin,
    /// The password of the ledger's database (`[ledger] password_file`).
    DatabasePassword,
}

impl fmt::Display for SecretKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SecretKind::Pin => "PIN",
            SecretKind::DatabasePassword => "database password",
        })
    }
}

/// Names where a secret (a PIN unless read [`as`](PinSource::read_as) another kind) is read from. Holds no secret itself, so it can be logged.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum PinSource {
    /// A file holding the PIN on one line (a final `\n` or `\r\n` is not part of it).
    File(PathBuf),
    /// An environment variable holding the PIN (the same rules as a file's content).
    Env(String),
}

impl fmt::Display for PinSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PinSource::File(path) => write!(f, "file {}", path.display()),
            PinSource::Env(name) => write!(f, "environment variable {name}"),
        }
    }
}

/// Why a file may not hold a secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Exposure {
    #[error("it is not a regular file")]
    NotAFile,
    #[error(
        "it is readable or writable by group or others (mode {mode:04o}); make it owner-only (chmod 600)"
    )]
    OpenToOthers { mode: u32 },
    #[error("it is owned by uid {owner}, not by uid {user} that actseal runs as")]
    OwnedByOther { owner: u32, user: u32 },
}

/// Why a secret's text is not taken as one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    #[error("is empty or only whitespace")]
    Empty,
    #[error("has more than one line")]
    SeveralLines,
    #[error("begins or ends with whitespace (it is taken exactly as written)")]
    EdgeWhitespace,
    #[error("is longer than {MAX_PIN_BYTES} bytes")]
    TooLong,
    #[error("is not UTF-8")]
    NotUtf8,
}

/// Why a secret could not be read. Names its kind and source, never carries the secret.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("cannot read {kind} from {source_name}: {reason}")]
    Unreadable {
        kind: SecretKind,
        source_name: String,
        reason: String,
    },
    #[error("refusing the {kind} {source_name}: {exposure}")]
    Unprotected {
        kind: SecretKind,
        source_name: String,
        exposure: Exposure,
    },
    #[error("{kind} from {source_name} {problem}")]
    Malformed {
        kind: SecretKind,
        source_name: String,
        problem: Malformed,
    },
}

/// The error of a PIN's read (the name the backends know it by).
pub type PinError = SecretError;

impl PinSource {
    /// Reads the PIN. The returned buffer is wiped when dropped.
    pub fn read(&self) -> Result<Zeroizing<String>, SecretError> {
        self.read_as(SecretKind::Pin)
    }

    /// Reads a secret of `kind` (the same rules for all; errors name the kind).
    pub fn read_as(&self, kind: SecretKind) -> Result<Zeroizing<String>, SecretError> {
        let raw = match self {
            PinSource::File(path) => self.read_file(path, kind)?,
            PinSource::Env(name) => {
                Zeroizing::new(std::env::var(name).map_err(|_| SecretError::Unreadable {
                    kind,
                    source_name: self.to_string(),
                    reason: "not set or not UTF-8".into(),
                })?)
            }
        };
        parse_pin(&raw).map_err(|problem| self.malformed(kind, problem))
    }

    fn malformed(&self, kind: SecretKind, problem: Malformed) -> SecretError {
        SecretError::Malformed {
            kind,
            source_name: self.to_string(),
            problem,
        }
    }

    /// Opens the file, checks on the open file that it is the daemon's own, then reads it.
    fn read_file(&self, path: &Path, kind: SecretKind) -> Result<Zeroizing<String>, SecretError> {
        let unreadable = |e: std::io::Error| SecretError::Unreadable {
            kind,
            source_name: self.to_string(),
            reason: e.kind().to_string(),
        };
        let unprotected = |exposure| SecretError::Unprotected {
            kind,
            source_name: self.to_string(),
            exposure,
        };
        // Checked before opening too: opening a FIFO would block.
        if !fs::metadata(path).map_err(unreadable)?.is_file() {
            return Err(unprotected(Exposure::NotAFile));
        }
        let file = File::open(path).map_err(unreadable)?;
        let meta = file.metadata().map_err(unreadable)?;
        file_exposure(&meta, effective_uid()).map_or(Ok(()), |e| Err(unprotected(e)))?;
        let mut bytes = Zeroizing::new(Vec::with_capacity(MAX_PIN_BYTES + 1));
        file.take(MAX_PIN_BYTES as u64 + 1)
            .read_to_end(&mut bytes)
            .map_err(unreadable)?;
        if bytes.len() > MAX_PIN_BYTES {
            return Err(self.malformed(kind, Malformed::TooLong));
        }
        let text =
            std::str::from_utf8(&bytes).map_err(|_| self.malformed(kind, Malformed::NotUtf8))?;
        Ok(Zeroizing::new(text.to_owned()))
    }
}

fn effective_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// What makes a file unfit to hold a secret for the user `user`, if anything.
fn file_exposure(meta: &fs::Metadata, user: u32) -> Option<Exposure> {
    let mode = meta.mode() & 0o7777;
    if !meta.is_file() {
        Some(Exposure::NotAFile)
    } else if meta.uid() != user {
        Some(Exposure::OwnedByOther {
            owner: meta.uid(),
            user,
        })
    } else if mode & 0o077 != 0 {
        Some(Exposure::OpenToOthers { mode })
    } else {
        None
    }
}

/// The secret in `raw`: one line, one final line ending dropped, nothing else changed.
fn parse_pin(raw: &str) -> Result<Zeroizing<String>, Malformed> {
    if raw.len() > MAX_PIN_BYTES {
        return Err(Malformed::TooLong);
    }
    let line = raw
        .strip_suffix("\r\n")
        .or_else(|| raw.strip_suffix('\n'))
        .unwrap_or(raw);
    if line.trim().is_empty() {
        return Err(Malformed::Empty);
    }
    if line.contains(['\n', '\r']) {
        return Err(Malformed::SeveralLines);
    }
    if line.trim() != line {
        return Err(Malformed::EdgeWhitespace);
    }
    Ok(Zeroizing::new(line.to_owned()))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    const PIN: &str = "s3cret-pin";

    fn pin_file(dir: &Path, content: &str, mode: u32) -> PinSource {
        let path = dir.join("pin");
        fs::write(&path, content).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
        PinSource::File(path)
    }

    #[test]
    fn a_pin_file_is_one_line_taken_exactly_and_errors_never_echo_it() {
        let dir = tempfile::tempdir().unwrap();
        for content in [PIN, "s3cret-pin\n", "s3cret-pin\r\n"] {
            let source = pin_file(dir.path(), content, 0o600);
            assert_eq!(source.read().unwrap().as_str(), PIN, "{content:?}");
        }
        // Inner spaces are part of the PIN.
        let source = pin_file(dir.path(), "two words\n", 0o400);
        assert_eq!(source.read().unwrap().as_str(), "two words");

        for (content, problem) in [
            ("", Malformed::Empty),
            ("\n", Malformed::Empty),
            (" \t \n", Malformed::Empty),
            ("s3cret-pin\n\n", Malformed::SeveralLines),
            ("s3cret-pin\nother\n", Malformed::SeveralLines),
            ("s3cret-pin \n", Malformed::EdgeWhitespace),
            (" s3cret-pin", Malformed::EdgeWhitespace),
            ("s3cret-pin\t", Malformed::EdgeWhitespace),
        ] {
            let source = pin_file(dir.path(), content, 0o600);
            let err = source.read().unwrap_err();
            assert!(
                matches!(&err, PinError::Malformed { problem: p, .. } if *p == problem),
                "{content:?}: {err}"
            );
            let text = err.to_string();
            assert!(text.contains("pin") && !text.contains(PIN), "{text}");
        }
        let long = "x".repeat(MAX_PIN_BYTES + 1);
        let err = pin_file(dir.path(), &long, 0o600).read().unwrap_err();
        assert!(matches!(
            err,
            PinError::Malformed {
                problem: Malformed::TooLong,
                ..
            }
        ));

        let missing = PinSource::Env("ACTSEAL_TEST_PIN_THAT_IS_NOT_SET".into());
        assert!(missing.read().is_err());
    }

    #[test]
    fn each_error_names_the_kind_of_secret_and_never_its_content() {
        let dir = tempfile::tempdir().unwrap();
        let open = pin_file(dir.path(), "s3cret-pin\n", 0o644);
        let pin = open.read().unwrap_err().to_string();
        let password = open
            .read_as(SecretKind::DatabasePassword)
            .unwrap_err()
            .to_string();
        assert!(pin.starts_with("refusing the PIN file "), "{pin}");
        assert!(
            password.starts_with("refusing the database password file "),
            "{password}"
        );
        let bad = pin_file(dir.path(), "s3cret-pin \n", 0o600);
        let missing = PinSource::File(dir.path().join("absent"));
        for (source, start) in [
            (&bad, "database password from file "),
            (&missing, "cannot read database password from file "),
        ] {
            let text = source
                .read_as(SecretKind::DatabasePassword)
                .unwrap_err()
                .to_string();
            assert!(text.starts_with(start), "{text}");
            assert!(!text.contains("PIN") && !text.contains(PIN), "{text}");
        }
        for text in [pin, password] {
            assert!(!text.contains(PIN), "{text}");
        }
    }

    #[test]
    fn a_pin_file_others_can_reach_is_refused_naming_the_path_not_the_pin() {
        let dir = tempfile::tempdir().unwrap();
        for mode in [0o644, 0o640, 0o604, 0o620, 0o602, 0o660, 0o666] {
            let source = pin_file(dir.path(), "s3cret-pin\n", mode);
            let err = source.read().unwrap_err();
            assert!(
                matches!(err, PinError::Unprotected { exposure: Exposure::OpenToOthers { mode: m }, .. } if m == mode),
                "{mode:o}: {err}"
            );
            let text = err.to_string();
            assert!(
                text.contains(&dir.path().join("pin").display().to_string()),
                "{text}"
            );
            assert!(!text.contains(PIN), "{text}");
        }
        let err = PinSource::File(dir.path().to_owned()).read().unwrap_err();
        assert!(
            matches!(
                err,
                PinError::Unprotected {
                    exposure: Exposure::NotAFile,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn a_pin_file_owned_by_another_user_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let source = pin_file(dir.path(), "s3cret-pin\n", 0o600);
        let PinSource::File(path) = &source else {
            unreachable!()
        };
        let me = effective_uid();
        let meta = fs::metadata(path).unwrap();
        assert_eq!(file_exposure(&meta, me), None);
        assert_eq!(
            file_exposure(&meta, me + 1),
            Some(Exposure::OwnedByOther {
                owner: me,
                user: me + 1
            })
        );
        // As root (CI), the real thing: a file of another user, though root could read it.
        assert!(
            me == 0 || std::env::var("CI").map_or(true, |v| v != "true"),
            "CI=true and this test cannot chown: it needs root"
        );
        if me == 0 {
            std::os::unix::fs::chown(path, Some(65534), None).unwrap();
            let err = source.read().unwrap_err();
            assert!(
                matches!(
                    err,
                    PinError::Unprotected {
                        exposure: Exposure::OwnedByOther {
                            owner: 65534,
                            user: 0
                        },
                        ..
                    }
                ),
                "{err}"
            );
        }
    }
}
