//! Key lineage: the evidence that an actor key lives in hardware, signed by the device.

use serde::{Deserialize, Serialize};

use super::{IN_TOTO_STATEMENT_V1, dsse::Envelope, receipt::Digest, receipt::Subject};
use crate::backend::pkcs11::{KeyAttributes, TokenFacts};

/// Predicate type URI of the PKCS#11 attribute statement.
pub const PKCS11_LINEAGE_PREDICATE_TYPE: &str = "https://actseal.dev/lineage/pkcs11-attributes/v1";

/// How a key came to be an actor key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyOrigin {
    Generated,
    Adopted,
}

impl KeyOrigin {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyOrigin::Generated => "generated",
            KeyOrigin::Adopted => "adopted",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Pkcs11LineagePredicate<'a> {
    pub actor: &'a str,
    pub key_version: u32,
    pub key_id: &'a str,
    pub origin: KeyOrigin,
    pub created_at: &'a str,
    pub token: &'a TokenFacts,
    pub attributes: &'a KeyAttributes,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
struct Statement<'a, P> {
    #[serde(rename = "_type")]
    statement_type: &'a str,
    subject: Vec<Subject>,
    predicate_type: &'a str,
    predicate: P,
}

/// The payload bytes of a PKCS#11 attribute statement about an actor key.
pub fn pkcs11_statement_payload(predicate: &Pkcs11LineagePredicate<'_>) -> Vec<u8> {
    let statement = Statement {
        statement_type: IN_TOTO_STATEMENT_V1,
        subject: vec![Subject {
            name: format!("{}#{}", predicate.actor, predicate.key_version),
            digest: Digest {
                sha256: predicate.key_id.to_owned(),
            },
        }],
        predicate_type: PKCS11_LINEAGE_PREDICATE_TYPE,
        predicate,
    };
    serde_json::to_vec(&statement).unwrap_or_default()
}

/// A key's lineage as carried in bundles.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Lineage {
    pub backend: String,
    pub statement: Envelope,
    /// Base64 DER of the device certificate.
    pub device_certificate: String,
    /// Base64 DER of intermediate CA certificates, device side first.
    pub certificate_chain: Vec<String>,
}
