//! Offline verification of actseal proof bundles (FORMAT.md §7).
//!
//! This module shares no code with the signing side: it reads the bundle with its own structs
//! and checks it with external crates only, so a bug in how the daemon builds a bundle cannot be
//! mirrored by the same bug in how it is checked.
//!
//! The checks run in the order of §7 and the first failure is returned. Each step below returns
//! a plain detail string; [`verify_bundle`] alone decides which check a step belongs to.

#![deny(
    unsafe_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::arithmetic_side_effects
)]

mod anchors;
mod attestation;
pub mod audit;
mod batch;
mod bundle;
mod cache;
pub mod checkpoint;
pub mod consistency;
pub mod cosignature;
mod digest;
mod dsse;
mod ecdsa;
mod error;
pub mod fork;
mod log;
pub mod merkle;
mod roles;
mod rotation;
mod statement;
mod summary;
mod time_order;
pub mod timestamp;
pub mod tlog_proof;
pub mod tpm;
pub mod witness_policy;
mod x509;

use p256::ecdsa::VerifyingKey;
use p256::pkcs8::DecodePublicKey;

pub use anchors::TrustAnchors;
pub use attestation::AttestationError;
pub use cache::BundleVerifier;
pub use error::{Check, VerifyError};
pub use roles::{
    ACTSEAL_KP_LOG_KEY_ATTESTER, ACTSEAL_KP_PKCS11_DEVICE, DeviceRole, EvidenceRole,
    TCG_KP_AIK_CERTIFICATE,
};
pub use summary::Verified;

use error::under;
use statement::{KeySubject, LineageFacts};

/// Verifies a proof bundle offline. `document`: the action document, if the auditor has it.
///
/// Without a document, `receipt.document` is skipped and [`Verified::document_checked`] is false:
/// the bundle then proves who signed *a* document with that digest, not which one. To verify
/// many bundles, use one [`BundleVerifier`]: it checks what they share once.
pub fn verify_bundle(
    bundle_json: &[u8],
    anchors: &TrustAnchors,
    document: Option<&[u8]>,
) -> Result<Verified, VerifyError> {
    BundleVerifier::new(anchors).verify(bundle_json, document)
}

/// `log.timestamp` (FORMAT.md §15): after [`verify_bundle`] accepted the bundle (`verified`),
/// at least one of its `log.timestamps` verifies under the auditor's TSA anchors over its
/// checkpoint and is not earlier than the receipt's `signedAt` (within
/// [`timestamp::SIGNED_AT_TOLERANCE_SECONDS`] and the token's accuracy).
pub fn verify_bundle_timestamps(
    bundle_json: &[u8],
    verified: &Verified,
    tsa: &timestamp::TsaAnchors,
) -> Result<timestamp::BundleStamps, VerifyError> {
    let bundle = bundle::parse(bundle_json).map_err(under(Check::BundleParse))?;
    let signed_at = time::OffsetDateTime::parse(
        &verified.signed_at,
        &time::format_description::well_known::Rfc3339,
    )
    .map_err(|e| VerifyError::new(Check::ReceiptStatement, format!("signedAt: {e}")))?;
    timestamp::check_tokens(
        &bundle.log.timestamps,
        &bundle.log.checkpoint,
        tsa,
        signed_at.unix_timestamp(),
    )
    .map_err(under(Check::LogTimestamp))
}

/// What a verified key attestation (the answer to `Attest`) proves.
#[derive(Debug, Clone)]
pub struct AttestationVerified {
    pub backend: String,
    pub key_id: String,
    pub device_subject: String,
    pub anchor_subject: String,
    /// What the hardware states: the token serial, or the TPM's firmware and clock.
    pub hardware: String,
    /// The nonce the attestation binds (TPM2_Certify extraData, or the device's statement).
    pub nonce: Option<Vec<u8>>,
}

/// Verifies a key attestation offline (FORMAT.md §4): `attestation_json` as `Attest`
/// returns it, for `actor`'s key `version` with the public key `public_key_der` (DER
/// SubjectPublicKeyInfo), certified under an anchor at `at_unix` (the verifier's "now", Unix
/// seconds). With `nonce`, the attestation must bind exactly that nonce, and a PKCS#11 device's
/// fresh statement must have been made within five minutes of `at_unix`.
pub fn verify_attestation(
    attestation_json: &[u8],
    anchors: &TrustAnchors,
    actor: &str,
    version: u64,
    public_key_der: &[u8],
    nonce: Option<&[u8]>,
    at_unix: i64,
) -> Result<AttestationVerified, VerifyError> {
    let lineage = bundle::parse_attestation(attestation_json).map_err(under(Check::BundleParse))?;
    VerifyingKey::from_public_key_der(public_key_der)
        .map_err(|e| format!("the key is not an EC P-256 key: {e}"))
        .map_err(under(Check::BundleParse))?;
    let key_id = digest::key_id(public_key_der);
    let claim = statement::KeyClaim {
        subject: KeySubject::Actor { actor, version },
        key_id: &key_id,
        backend: &lineage.backend,
    };
    let attested =
        attestation::check(&lineage, anchors, &claim, at_unix).map_err(attestation_failure)?;
    let (anchor, facts) = (attested.anchor, attested.facts);
    check_freshness(&facts, nonce, at_unix).map_err(under(Check::LineageStatement))?;
    Ok(AttestationVerified {
        backend: lineage.backend.clone(),
        key_id,
        device_subject: lineage.device.subject(),
        anchor_subject: anchor.subject(),
        hardware: facts.token_serial,
        nonce: facts.nonce,
    })
}

/// The actor key is P-256 and both key ids agree with its hash (part of `receipt.signature`).
/// Returns the key id and the key.
fn check_actor_key(actor: &bundle::ActorKey) -> Result<(String, VerifyingKey), String> {
    let key = VerifyingKey::from_public_key_der(&actor.spki_der)
        .map_err(|e| format!("actorKey.publicKey is not an EC P-256 key: {e}"))?;
    let key_id = digest::key_id(&actor.spki_der);
    if actor.key_id != key_id {
        return Err(format!(
            "actorKey.keyId {:?} is not the SHA-256 of actorKey.publicKey ({key_id})",
            actor.key_id
        ));
    }
    Ok((key_id, key))
}

/// An envelope's `keyid` names the actor key (compared before the signature so that a bundle
/// pairing a receipt with the wrong key says so plainly).
fn check_keyid(what: &str, keyid: &str, key_id: &str) -> Result<(), String> {
    if keyid == key_id {
        Ok(())
    } else {
        Err(format!(
            "{what} keyid {keyid:?} is not the actor key id {key_id}"
        ))
    }
}

/// `receipt.document`: the document the auditor holds is the one the receipt names.
fn check_document(document: &[u8], expected: &str) -> Result<(), String> {
    let actual = digest::sha256_hex(document);
    if actual == expected {
        Ok(())
    } else {
        Err(format!(
            "the document's SHA-256 is {actual}, the receipt names {expected}"
        ))
    }
}

/// The system clock as Unix seconds: the "now" of checks that are not dated by a receipt.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Files a failed attestation under the check of FORMAT.md §7 it stands for.
fn attestation_failure(e: AttestationError) -> VerifyError {
    match e {
        AttestationError::Certificate(d) => VerifyError::new(
            Check::LineageCertificate,
            format!("device certificate: {d}"),
        ),
        AttestationError::Signature(d) => VerifyError::new(Check::LineageSignature, d),
        AttestationError::Statement(d) => VerifyError::new(Check::LineageStatement, d),
    }
}

/// How far a fresh PKCS#11 attestation's `attestedAt` may be from the verifier's clock.
const FRESHNESS_TOLERANCE_SECONDS: i64 = 300;

/// An `Attest` answer binds the caller's nonce (TPM: in extraData; PKCS#11: in the device's
/// statement, with the time it was made, which must be near `now`).
fn check_freshness(facts: &LineageFacts, nonce: Option<&[u8]>, now: i64) -> Result<(), String> {
    let Some(expected) = nonce else {
        return Ok(());
    };
    if facts.nonce.as_deref() != Some(expected) {
        return Err(
            "the attestation does not bind the expected nonce (tpm2Certify.nonce / extraData, or predicate.freshness.nonce)"
                .into(),
        );
    }
    if let Some(at) = facts.attested_at_unix
        && at.abs_diff(now) > FRESHNESS_TOLERANCE_SECONDS.unsigned_abs()
    {
        return Err(format!(
            "the device made this statement at {at}, more than {FRESHNESS_TOLERANCE_SECONDS} s from now ({now})"
        ));
    }
    Ok(())
}
