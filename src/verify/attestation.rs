//! One key's attestation (FORMAT.md §4), checked for one role at one time.
//!
//! Every place that trusts a key because hardware vouched for it — the receipt's actor key, each
//! earlier version, the log key, the keys an audit replays, an `Attest` answer — goes through
//! [`check`], so the certificate → signature → statement sequence and the role binding between
//! them exist once.

use super::anchors::TrustAnchors;
use super::bundle::{Evidence, Lineage};
use super::roles::{DeviceRole, EvidenceRole};
use super::statement::{self, KeyClaim, LineageFacts};
use super::x509::{self, ParsedCert};
use super::{digest, dsse, tpm};
use p256::ecdsa::VerifyingKey;
use p256::pkcs8::DecodePublicKey;

/// Which of the three attestation checks of FORMAT.md §7 failed, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AttestationError {
    /// `lineage.certificate`: the device certificate does not chain to an anchor at the time,
    /// or is not certified for the role the evidence needs.
    #[error("device certificate: {0}")]
    Certificate(String),
    /// `lineage.signature`: the evidence is not signed by the certified key.
    #[error("{0}")]
    Signature(String),
    /// `lineage.statement`: the evidence is not about this key, in this role, from hardware.
    #[error("{0}")]
    Statement(String),
}

/// What a checked attestation established.
#[derive(Debug)]
pub(crate) struct Attested<'a> {
    pub(crate) anchor: &'a ParsedCert,
    pub(crate) facts: LineageFacts,
}

/// The role a device certificate needs to vouch for `evidence` about `claim`'s key.
fn role_for(evidence: &Evidence, claim: &KeyClaim<'_>) -> DeviceRole {
    DeviceRole {
        evidence: match evidence {
            Evidence::Statement(_) => EvidenceRole::Pkcs11Device,
            Evidence::Tpm2Certify(_) => EvidenceRole::TpmAttestationKey,
        },
        log_key: claim.subject.is_log_key(),
    }
}

/// Checks that `lineage` attests `claim`'s key: the device certificate chains to an anchor at
/// `at` (Unix seconds) and is certified for the evidence's role, the evidence is signed by it,
/// and it states that hardware holds exactly this key for exactly this subject.
pub(crate) fn check<'a>(
    lineage: &Lineage,
    anchors: &'a TrustAnchors,
    claim: &KeyClaim<'_>,
    at: i64,
) -> Result<Attested<'a>, AttestationError> {
    let role = role_for(&lineage.evidence, claim);
    let anchor = x509::verify_path(&lineage.device, &lineage.chain, &anchors.certs, at, &role)
        .map_err(AttestationError::Certificate)?;
    check_signature(lineage).map_err(AttestationError::Signature)?;
    let facts = statement::check_lineage(&lineage.evidence, &lineage.backend, claim)
        .map_err(AttestationError::Statement)?;
    Ok(Attested { anchor, facts })
}

/// `lineage.signature`: the evidence verifies under the device certificate's key.
///
/// FORMAT.md §2 defines `keyid` as the signing key's id for every envelope. It is not covered by
/// the signature, so it is checked rather than left as a member anyone could rewrite unnoticed.
fn check_signature(lineage: &Lineage) -> Result<(), String> {
    let device_spki = lineage
        .device
        .public_key_der()
        .map_err(|e| format!("device certificate: {e}"))?;
    let key = VerifyingKey::from_public_key_der(&device_spki)
        .map_err(|e| format!("device certificate: public key is not an EC P-256 key: {e}"))?;
    let statement = match &lineage.evidence {
        Evidence::Statement(statement) => statement,
        Evidence::Tpm2Certify(certify) => return tpm::check_ak_signature(certify, &key),
    };
    let device_key_id = digest::key_id(&device_spki);
    if statement.keyid != device_key_id {
        return Err(format!(
            "lineage statement keyid {:?} is not the device key id {device_key_id}",
            statement.keyid
        ));
    }
    dsse::verify(statement, &key)
}

/// The times at which [`check`] of `lineage`, closed by `anchor`, gives the same answer: the
/// intersection of the validity periods of the device certificate, its chain and the anchor.
/// Nothing else in an attestation depends on the time it is checked at.
pub(crate) fn validity(lineage: &Lineage, anchor: &ParsedCert) -> Result<(i64, i64), String> {
    let mut window = (i64::MIN, i64::MAX);
    for cert in std::iter::once(&lineage.device)
        .chain(&lineage.chain)
        .chain(std::iter::once(anchor))
    {
        let (from, to) = x509::validity(cert)?;
        window = (window.0.max(from), window.1.min(to));
    }
    Ok(window)
}
