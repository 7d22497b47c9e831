//! Key lineage: the evidence that an actor key lives in hardware, signed by the device.

use serde::{Deserialize, Serialize};

use super::{
    IN_TOTO_STATEMENT_V1, dsse::Envelope, receipt::CallerInReceipt, receipt::Digest,
    receipt::Subject,
};
use crate::backend::pkcs11::{KeyAttributes, TokenFacts};

/// Predicate type URI of the PKCS#11 attribute statement.
pub const PKCS11_LINEAGE_PREDICATE_TYPE: &str = "https://actseal.dev/lineage/pkcs11-attributes/v2";

/// A signed payload could not be encoded. Nothing is signed then: a payload never falls back to
/// an empty or partial value.
#[derive(Debug, thiserror::Error)]
#[error("cannot encode the {what} statement: {reason}")]
pub struct EncodeError {
    what: &'static str,
    reason: String,
}

impl EncodeError {
    pub(crate) fn new(what: &'static str, reason: impl std::fmt::Display) -> Self {
        EncodeError {
            what,
            reason: reason.to_string(),
        }
    }
}

fn encode<T: Serialize>(what: &'static str, statement: &T) -> Result<Vec<u8>, EncodeError> {
    serde_json::to_vec(statement).map_err(|e| EncodeError::new(what, e))
}

/// Whose key an attestation is about (FORMAT.md §4.3). The subject name is what the evidence
/// binds, so an actor's key can never pass for the log key or the other way round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeySubject<'a> {
    /// Version `version` of `actor`'s key.
    Actor { actor: &'a str, version: u32 },
    /// The key of the log named `origin`.
    Log { origin: &'a str },
}

impl KeySubject<'_> {
    /// `actor-key:<actor>#<version>` or `log-key:<origin>`.
    pub fn name(&self) -> String {
        match self {
            KeySubject::Actor { actor, version } => format!("actor-key:{actor}#{version}"),
            KeySubject::Log { origin } => format!("log-key:{origin}"),
        }
    }
}

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

/// What a PKCS#11 device states about one of its keys.
#[derive(Debug, Clone)]
pub struct Pkcs11Statement<'a> {
    pub subject: KeySubject<'a>,
    pub key_id: &'a str,
    pub origin: KeyOrigin,
    pub created_at: &'a str,
    pub token: &'a TokenFacts,
    pub attributes: &'a KeyAttributes,
    /// An `Attest` answer: the caller's nonce and when the device made the statement.
    pub freshness: Option<Freshness<'a>>,
}

/// What makes an `Attest` answer fresh (FORMAT.md §4.1).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Freshness<'a> {
    /// Base64 of the caller's nonce.
    pub nonce: String,
    pub attested_at: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Pkcs11Predicate<'a> {
    key_role: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    actor: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    key_version: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    log_origin: Option<&'a str>,
    key_id: &'a str,
    origin: KeyOrigin,
    created_at: &'a str,
    token: &'a TokenFacts,
    attributes: &'a KeyAttributes,
    #[serde(skip_serializing_if = "Option::is_none")]
    freshness: Option<&'a Freshness<'a>>,
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

/// The payload bytes of a PKCS#11 attribute statement about a key.
pub fn pkcs11_statement_payload(s: &Pkcs11Statement<'_>) -> Result<Vec<u8>, EncodeError> {
    let (key_role, actor, key_version, log_origin) = match s.subject {
        KeySubject::Actor { actor, version } => ("actor-key", Some(actor), Some(version), None),
        KeySubject::Log { origin } => ("log-key", None, None, Some(origin)),
    };
    let statement = Statement {
        statement_type: IN_TOTO_STATEMENT_V1,
        subject: vec![Subject {
            name: s.subject.name(),
            digest: Digest {
                sha256: s.key_id.to_owned(),
            },
        }],
        predicate_type: PKCS11_LINEAGE_PREDICATE_TYPE,
        predicate: Pkcs11Predicate {
            key_role,
            actor,
            key_version,
            log_origin,
            key_id: s.key_id,
            origin: s.origin,
            created_at: s.created_at,
            token: s.token,
            attributes: s.attributes,
            freshness: s.freshness.as_ref(),
        },
    };
    encode("lineage", &statement)
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
    /// The attestation key's marshalled TPMT_PUBLIC: its Qualified Name is the TPMS_ATTEST's
    /// qualifiedSigner.
    pub ak_public_area: String,
    /// When the key was created (RFC 3339), bound by extraData.
    pub created_at: String,
    /// The caller's nonce, when the certification answers an `Attest` call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nonce: Option<String>,
}

/// Domain separator of the TPM2_Certify extraData (FORMAT.md §4.2).
pub const TPM2_CERTIFY_DOMAIN: &[u8] = b"actseal/tpm2-certify/v2";

/// The extraData (qualifyingData) of a TPM2_Certify: SHA-256(domain || 0x00 ||
/// u32be(len(subject)) || subject || u32be(len(createdAt)) || createdAt || nonce), where subject
/// is the key's subject name.
pub fn tpm2_certify_extra_data(
    subject: &KeySubject<'_>,
    created_at: &str,
    nonce: &[u8],
) -> Result<[u8; 32], EncodeError> {
    use sha2::{Digest as _, Sha256};
    let name = subject.name();
    let len = |text: &str| {
        u32::try_from(text.len()).map_err(|_| EncodeError {
            what: "TPM2_Certify extraData",
            reason: "a member is longer than 4 GiB".into(),
        })
    };
    let mut h = Sha256::new();
    h.update(TPM2_CERTIFY_DOMAIN);
    h.update([0u8]);
    h.update(len(&name)?.to_be_bytes());
    h.update(name.as_bytes());
    h.update(len(created_at)?.to_be_bytes());
    h.update(created_at.as_bytes());
    h.update(nonce);
    Ok(h.finalize().into())
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
) -> Result<Vec<u8>, EncodeError> {
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
    encode("rotation", &statement)
}

/// What the daemon did with a retired key in the hardware (FORMAT.md §11.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyDisposition {
    /// Destroyed in the token or TPM: it can sign nothing more.
    Destroyed,
    /// Kept, because the operator asked: the log says so.
    Kept,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
struct RetirementPredicate<'a> {
    actor: &'a str,
    version: u32,
    key_id: &'a str,
    retired_at: &'a str,
    key_disposition: KeyDisposition,
}

/// The payload of a retirement statement, which the log key signs.
pub fn retirement_payload(
    actor: &str,
    version: u32,
    key_id: &str,
    retired_at: &str,
    key_disposition: KeyDisposition,
) -> Result<Vec<u8>, EncodeError> {
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
            key_disposition,
        },
    };
    encode("retirement", &statement)
}

/// Predicate type URI of key registrations.
pub const REGISTRATION_PREDICATE_TYPE: &str = "https://actseal.dev/key-registration/v1";

/// A key version entering the log (FORMAT.md §11.2): which key belongs to which actor is
/// decided here, in the log, and nowhere else.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Registration<'a> {
    pub actor: &'a str,
    pub version: u32,
    pub key_id: &'a str,
    /// Base64 SubjectPublicKeyInfo DER.
    pub public_key: String,
    pub backend: &'a str,
    pub origin: KeyOrigin,
    pub registered_at: &'a str,
    /// The admin caller who asked, as the daemon authenticated it.
    pub requested_by: &'a CallerInReceipt,
    pub attestation: &'a Attestation,
}

/// The payload of a key registration, which the log key signs.
pub fn registration_payload(r: &Registration<'_>) -> Result<Vec<u8>, EncodeError> {
    let statement = Statement {
        statement_type: IN_TOTO_STATEMENT_V1,
        subject: vec![Subject {
            name: format!("{}#{}", r.actor, r.version),
            digest: Digest {
                sha256: r.key_id.to_owned(),
            },
        }],
        predicate_type: REGISTRATION_PREDICATE_TYPE,
        predicate: r,
    };
    encode("registration", &statement)
}

/// Predicate type URI of a log's first entry after a declared fresh start (FORMAT.md §11.5).
pub const LOG_START_PREDICATE_TYPE: &str = "https://actseal.dev/log-start/v1";

/// The head of the log a declared fresh start replaced, as the new log's first entry names it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReplacedLog {
    /// Hex SHA-256 of the replaced log's origin (the hardware record keeps only the digest).
    pub origin_sha256: String,
    /// Hex key id (SHA-256 of the SPKI DER) of the replaced log's key.
    pub log_key_id: String,
    /// The newest tree size acknowledged in the replaced log.
    pub size: u64,
    /// Hex Merkle root at that size.
    pub root_hash: String,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
struct LogStartPredicate<'a> {
    origin: &'a str,
    replaces: &'a ReplacedLog,
    reason: &'static str,
    started_at: &'a str,
}

/// The payload of a log-start entry, signed by the new log's key: this log replaces that one,
/// by the operator's declaration (`actseal log recover --declare-fresh-start`).
pub fn log_start_payload(
    origin: &str,
    replaces: &ReplacedLog,
    started_at: &str,
) -> Result<Vec<u8>, EncodeError> {
    let statement = Statement {
        statement_type: IN_TOTO_STATEMENT_V1,
        subject: vec![Subject {
            name: format!("replaced-log:{}", replaces.log_key_id),
            digest: Digest {
                sha256: replaces.root_hash.clone(),
            },
        }],
        predicate_type: LOG_START_PREDICATE_TYPE,
        predicate: LogStartPredicate {
            origin,
            replaces,
            reason: "declared fresh start",
            started_at,
        },
    };
    encode("log start", &statement)
}
