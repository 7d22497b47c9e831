//! The proof bundle: everything an auditor needs to check one action offline.

use serde::{Deserialize, Serialize};

use super::{dsse::Envelope, lineage::Lineage};

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
}

impl Bundle {
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }
}
