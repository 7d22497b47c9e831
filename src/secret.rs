//! Where secrets (token PINs) come from: a file or an environment variable, never argv.

use std::{fmt, fs, path::PathBuf};

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

/// Names where a PIN is read from. Holds no secret itself, so it can be logged.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum PinSource {
    /// A file whose first line is the PIN (a trailing newline is ignored).
    File(PathBuf),
    /// An environment variable holding the PIN.
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

/// Why a PIN could not be read. Never carries the PIN.
#[derive(Debug, thiserror::Error)]
pub enum PinError {
    #[error("cannot read PIN from {source_name}: {reason}")]
    Unreadable { source_name: String, reason: String },
    #[error("PIN from {0} is empty")]
    Empty(String),
}

impl PinSource {
    /// Reads the PIN. The returned buffer is wiped when dropped.
    pub fn read(&self) -> Result<Zeroizing<String>, PinError> {
        let raw = match self {
            PinSource::File(path) => {
                Zeroizing::new(fs::read_to_string(path).map_err(|e| PinError::Unreadable {
                    source_name: self.to_string(),
                    reason: e.kind().to_string(),
                })?)
            }
            PinSource::Env(name) => {
                Zeroizing::new(std::env::var(name).map_err(|_| PinError::Unreadable {
                    source_name: self.to_string(),
                    reason: "not set or not UTF-8".into(),
                })?)
            }
        };
        let pin = Zeroizing::new(raw.trim_end_matches(['\r', '\n']).to_owned());
        if pin.is_empty() {
            return Err(PinError::Empty(self.to_string()));
        }
        Ok(pin)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_pin_drops_trailing_newline_and_errors_never_echo_the_pin() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pin");
        fs::write(&path, "s3cret-pin\n").unwrap();
        assert_eq!(
            PinSource::File(path.clone()).read().unwrap().as_str(),
            "s3cret-pin"
        );

        fs::write(&path, "\n").unwrap();
        let err = PinSource::File(path).read().unwrap_err().to_string();
        assert!(err.contains("empty"), "{err}");

        let missing = PinSource::Env("ACTSEAL_TEST_PIN_THAT_IS_NOT_SET".into());
        assert!(missing.read().is_err());
    }
}
