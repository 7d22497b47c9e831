//! The proof bundle: everything an auditor needs to check one action offline.

use super::lineage::EncodeError;
use serde::{Deserialize, Serialize};

use super::{dsse::Envelope, lineage::Lineage};
use crate::ledger::merkle::Hash;

pub const BUNDLE_MEDIA_TYPE: &str = "application/vnd.actseal.bundle.v1+json";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ActorKeyInBundle {
    pub key_id: String,
    /// Base64 SubjectPublicKeyInfo DER.
    pub public_key: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Bundle {
    pub media_type: String,
    pub receipt: Envelope,
    pub actor_key: ActorKeyInBundle,
    pub lineage: Lineage,
    /// Where the receipt is in the log, proved against a signed checkpoint.
    pub log: LogProof,
    /// A batch receipt's statement and path (its `receipt` has no signature of its own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<super::batch::BatchInBundle>,
}

/// The log key: its public half and its lineage (attested like an actor key whose actor is
/// the log's origin).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct LogKeyInBundle {
    /// The signed-note key name (the log's origin).
    pub key_name: String,
    pub key_id: String,
    /// Base64 SubjectPublicKeyInfo DER.
    pub public_key: String,
    pub lineage: Lineage,
}

/// A receipt's inclusion in the log.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct LogProof {
    pub index: u64,
    pub tree_size: u64,
    /// RFC 9162 inclusion proof, hex hashes, leaf side first.
    pub inclusion_proof: Vec<String>,
    /// The signed checkpoint (C2SP signed note) of `tree_size`.
    pub checkpoint: String,
    pub log_key: LogKeyInBundle,
}

impl LogProof {
    pub fn new(
        index: u64,
        tree_size: u64,
        proof: &[Hash],
        checkpoint: String,
        log_key: LogKeyInBundle,
    ) -> Self {
        LogProof {
            index,
            tree_size,
            inclusion_proof: proof.iter().map(hex::encode).collect(),
            checkpoint,
            log_key,
        }
    }
}

impl Bundle {
    /// The bundle as pretty JSON; an error rather than an empty bundle if it cannot be encoded.
    pub fn to_json(&self) -> Result<String, EncodeError> {
        serde_json::to_string_pretty(self).map_err(|e| EncodeError::new("bundle", e))
    }
}
