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

/// What the hardware and the operator's PKI say about one key.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Attestation {
    pub backend: String,
    /// The device's statement about the key (PKCS#11: its attributes). Absent for TPM keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub statement: Option<Envelope>,
    /// TPM keys: the TPM's own TPM2_Certify of the key by the attestation key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpm2_certify: Option<Tpm2Certify>,
    /// Base64 DER of the device certificate.
    pub device_certificate: String,
    /// Base64 DER of intermediate CA certificates, device side first.
    pub certificate_chain: Vec<String>,
}

/// TPM2_Certify of an actor key by the TPM's attestation key (FORMAT.md §4.2): all base64.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Tpm2Certify {
    /// The marshalled TPMS_ATTEST, exactly the bytes the AK signed.
    pub attest: String,
    /// ASN.1 DER ECDSA signature by the AK over SHA-256(attest).
    pub signature: String,
    /// The certified key's marshalled TPMT_PUBLIC.
    pub public_area: String,
    /// The caller's nonce, when the certification answers an `Attest` call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nonce: Option<String>,
}

/// Domain separator of the TPM2_Certify extraData (FORMAT.md §4.2).
pub const TPM2_CERTIFY_DOMAIN: &[u8] = b"actseal/tpm2-certify/v1";

/// The extraData (qualifyingData) of a TPM2_Certify: SHA-256(domain || 0x00 ||
/// u32be(len(actor)) || actor || u32be(version) || nonce).
pub fn tpm2_certify_extra_data(actor: &str, version: u32, nonce: &[u8]) -> [u8; 32] {
    use sha2::{Digest as _, Sha256};
    let mut h = Sha256::new();
    h.update(TPM2_CERTIFY_DOMAIN);
    h.update([0u8]);
    h.update((actor.len() as u32).to_be_bytes());
    h.update(actor.as_bytes());
    h.update(version.to_be_bytes());
    h.update(nonce);
    h.finalize().into()
}

/// An earlier version of the actor's key, as the lineage of a rotated key carries it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PredecessorKey {
    pub version: u32,
    pub key_id: String,
    /// Base64 SubjectPublicKeyInfo DER.
    pub public_key: String,
    #[serde(flatten)]
    pub attestation: Attestation,
}

/// A key's lineage as carried in bundles: its own attestation and, for a rotated key, every
/// earlier version with the rotation statements that link them (version 1 first).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Lineage {
    #[serde(flatten)]
    pub attestation: Attestation,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub predecessors: Vec<PredecessorKey>,
    /// Rotation statements, each signed by the version it retires: 1→2, 2→3, …
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rotations: Vec<Envelope>,
}

/// Predicate type URI of rotation statements.
pub const ROTATION_PREDICATE_TYPE: &str = "https://actseal.dev/rotation/v1";
/// Predicate type URI of retirement statements.
pub const RETIREMENT_PREDICATE_TYPE: &str = "https://actseal.dev/retirement/v1";

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VersionRef<'a> {
    pub version: u32,
    pub key_id: &'a str,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
struct RotationPredicate<'a> {
    actor: &'a str,
    previous: VersionRef<'a>,
    next: VersionRef<'a>,
    next_backend: &'a str,
    rotated_at: &'a str,
}

/// The payload of a rotation statement: the previous version names its successor.
pub fn rotation_payload(
    actor: &str,
    previous: VersionRef<'_>,
    next: VersionRef<'_>,
    next_backend: &str,
    rotated_at: &str,
) -> Vec<u8> {
    let statement = Statement {
        statement_type: IN_TOTO_STATEMENT_V1,
        subject: vec![Subject {
            name: format!("{actor}#{}", next.version),
            digest: Digest {
                sha256: next.key_id.to_owned(),
            },
        }],
        predicate_type: ROTATION_PREDICATE_TYPE,
        predicate: RotationPredicate {
            actor,
            previous,
            next,
            next_backend,
            rotated_at,
        },
    };
    serde_json::to_vec(&statement).unwrap_or_default()
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
struct RetirementPredicate<'a> {
    actor: &'a str,
    version: u32,
    key_id: &'a str,
    retired_at: &'a str,
}

/// The payload of a retirement statement, which the log key signs.
pub fn retirement_payload(actor: &str, version: u32, key_id: &str, retired_at: &str) -> Vec<u8> {
    let statement = Statement {
        statement_type: IN_TOTO_STATEMENT_V1,
        subject: vec![Subject {
            name: format!("{actor}#{version}"),
            digest: Digest {
                sha256: key_id.to_owned(),
            },
        }],
        predicate_type: RETIREMENT_PREDICATE_TYPE,
        predicate: RetirementPredicate {
            actor,
            version,
            key_id,
            retired_at,
        },
    };
    serde_json::to_vec(&statement).unwrap_or_default()
}
