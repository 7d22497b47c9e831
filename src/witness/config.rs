//! The witness's configuration file (TOML; docs/CONFIG.md "Witness").

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
};

use serde::Deserialize;

use super::WitnessError;
use crate::secret::PinSource;
use crate::verify::cosignature::{NoteKey, SIGNATURE_TYPE_ECDSA, parse_vkey};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WitnessConfig {
    /// The witness's key name: a schema-less URL naming it, e.g. `witness.example.com/w1`.
    pub name: String,
    /// Where `add-checkpoint` is served (plain HTTP: everything in it is signed or public).
    pub listen: SocketAddr,
    /// Where the newest cosigned checkpoint of each log is kept.
    pub state_dir: PathBuf,
    pub pkcs11: WitnessPkcs11,
    /// The logs this witness cosigns.
    #[serde(default)]
    pub log: Vec<WitnessedLog>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WitnessPkcs11 {
    pub module: PathBuf,
    pub token_label: String,
    pub pin: PinSource,
    #[serde(default = "default_key_label")]
    pub key_label: String,
}

fn default_key_label() -> String {
    "actseal-witness".into()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WitnessedLog {
    /// The log's verifier key, `origin+hash+base64(0x02 || SPKI)` (`actseal log vkey`); its
    /// name is the checkpoint origin and signature key name.
    pub key: String,
}

impl WitnessConfig {
    pub fn load(path: &Path) -> Result<Self, WitnessError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| WitnessError::Config(format!("{}: {e}", path.display())))?;
        let config: WitnessConfig = toml::from_str(&text)
            .map_err(|e| WitnessError::Config(format!("{}: {e}", path.display())))?;
        if config.name.is_empty()
            || config
                .name
                .chars()
                .any(|c| c.is_whitespace() || c == '+' || c.is_control())
        {
            return Err(WitnessError::Config(format!(
                "name {:?} must be non-empty without spaces or '+'",
                config.name
            )));
        }
        config.logs()?;
        Ok(config)
    }

    /// The logs' keys, each an ECDSA note key.
    pub fn logs(&self) -> Result<Vec<NoteKey>, WitnessError> {
        let mut keys: Vec<NoteKey> = Vec::new();
        for log in &self.log {
            let key =
                parse_vkey(&log.key).map_err(|e| WitnessError::Config(format!("log.key: {e}")))?;
            if key.kind != SIGNATURE_TYPE_ECDSA {
                return Err(WitnessError::Config(format!(
                    "log.key {:?}: actseal logs sign with ECDSA (type 0x02) keys",
                    log.key
                )));
            }
            if keys.iter().any(|k| k.name == key.name) {
                return Err(WitnessError::Config(format!(
                    "log {:?} is listed twice",
                    key.name
                )));
            }
            keys.push(key);
        }
        Ok(keys)
    }
}
