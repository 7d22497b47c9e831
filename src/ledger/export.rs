//! `actseal log export`: the whole log with what an auditor needs to replay it offline.

use base64::{Engine, engine::general_purpose::STANDARD as B64};
use serde::Serialize;

use super::{Store, StoreError};
use crate::proof::{bundle::LogKeyInBundle, lineage::Attestation, spki_der};

/// Media type of a log export.
pub const EXPORT_MEDIA_TYPE: &str = "application/vnd.actseal.log-export.v1+json";

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ExportKey {
    actor: String,
    version: u32,
    key_id: String,
    public_key: String,
    /// The version's own attestation (a lineage without predecessors); rotations are entries.
    lineage: Attestation,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Export {
    media_type: &'static str,
    log_key: LogKeyInBundle,
    checkpoint: String,
    entries: Vec<String>,
    keys: Vec<ExportKey>,
}

/// Writes the export JSON of the log in `store`, whose log key is `log_key`.
pub fn export(store: &Store, log_key: LogKeyInBundle) -> Result<String, StoreError> {
    let checkpoint = store
        .latest_checkpoint()?
        .ok_or_else(|| StoreError::Conflict("the log is empty: nothing to export".into()))?;
    let mut entries = Vec::new();
    store.for_each_entry(|index, _, _, entry| {
        // Only what the newest checkpoint covers.
        if index < checkpoint.size {
            entries.push(B64.encode(entry));
        }
        Ok(())
    })?;
    let keys = store
        .keys(None)?
        .into_iter()
        .map(|k| ExportKey {
            public_key: B64.encode(spki_der(&k.public_key)),
            actor: k.actor,
            version: k.version,
            key_id: k.key_id,
            lineage: k.attestation,
        })
        .collect();
    serde_json::to_string(&Export {
        media_type: EXPORT_MEDIA_TYPE,
        log_key,
        checkpoint: checkpoint.note,
        entries,
        keys,
    })
    .map_err(|e| StoreError::Corrupt(format!("export does not serialise: {e}")))
}
