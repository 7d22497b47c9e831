//! X.509 chain checking for the device certificate (FORMAT.md §6, §7 `lineage.certificate`).
//!
//! Deliberately small: every certificate must be X.509 v3, signed with ecdsa-with-SHA256 by a
//! P-256 issuer key, valid at the receipt's `signedAt`. Issuers must be CAs; the device
//! certificate must not be one. Names chain by exact DER equality. Unknown critical extensions are
//! rejected (RFC 5280 §4.2), so a constraint this verifier does not understand can never be
//! silently ignored.

use der::asn1::ObjectIdentifier;
use der::{Decode, DecodePem, Encode, Header, Reader, SliceReader, Tag, Tagged};
use p256::ecdsa::{Signature, VerifyingKey};
use p256::pkcs8::DecodePublicKey;
use x509_cert::Certificate;
use x509_cert::certificate::Version;
use x509_cert::ext::pkix::{BasicConstraints, KeyUsage, KeyUsages};

use super::roles::DeviceRole;

/// ecdsa-with-SHA256 (RFC 5758 §3.2); its AlgorithmIdentifier has no parameters.
const ECDSA_WITH_SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.2");
const BASIC_CONSTRAINTS: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.19");
const KEY_USAGE: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.15");
const EXT_KEY_USAGE: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.37");
/// Extensions that carry no constraint this verifier must enforce: key identifiers and names.
/// They may be marked critical without the certificate being rejected.
const TOLERATED_EXTENSIONS: [ObjectIdentifier; 3] = [
    ObjectIdentifier::new_unwrap("2.5.29.14"), // subjectKeyIdentifier
    ObjectIdentifier::new_unwrap("2.5.29.35"), // authorityKeyIdentifier
    ObjectIdentifier::new_unwrap("2.5.29.17"), // subjectAltName
];

/// A decoded certificate together with the exact TBS bytes its signature covers.
#[derive(Debug, Clone)]
pub(crate) struct ParsedCert {
    cert: Certificate,
    /// The `tbsCertificate` TLV exactly as received (never re-encoded).
    tbs_der: Vec<u8>,
}

impl ParsedCert {
    /// DER-decodes a certificate and keeps the raw TBS bytes.
    pub(crate) fn from_der(der: &[u8]) -> Result<Self, String> {
        let cert =
            Certificate::from_der(der).map_err(|e| format!("not an X.509 DER certificate: {e}"))?;
        let tbs_der = raw_tbs(der)
            .map_err(|e| format!("cannot locate tbsCertificate: {e}"))?
            .to_vec();
        Ok(ParsedCert { cert, tbs_der })
    }

    /// PEM-decodes one `CERTIFICATE` block.
    pub(crate) fn from_pem(pem: &str) -> Result<Self, String> {
        let cert = Certificate::from_pem(pem).map_err(|e| format!("not a PEM certificate: {e}"))?;
        let der = cert
            .to_der()
            .map_err(|e| format!("cannot re-encode certificate: {e}"))?;
        Self::from_der(&der)
    }

    /// The subject as an RFC 4514 string, for humans.
    pub(crate) fn subject(&self) -> String {
        self.cert.tbs_certificate.subject.to_string()
    }

    fn subject_der(&self) -> Result<Vec<u8>, String> {
        self.cert
            .tbs_certificate
            .subject
            .to_der()
            .map_err(|e| format!("cannot encode subject name: {e}"))
    }

    fn issuer_der(&self) -> Result<Vec<u8>, String> {
        self.cert
            .tbs_certificate
            .issuer
            .to_der()
            .map_err(|e| format!("cannot encode issuer name: {e}"))
    }

    /// The certificate's SubjectPublicKeyInfo, DER.
    pub(crate) fn public_key_der(&self) -> Result<Vec<u8>, String> {
        self.cert
            .tbs_certificate
            .subject_public_key_info
            .to_der()
            .map_err(|e| format!("cannot encode subjectPublicKeyInfo: {e}"))
    }

    /// The certificate's public key, which must be an EC P-256 key.
    pub(crate) fn public_key(&self) -> Result<VerifyingKey, String> {
        VerifyingKey::from_public_key_der(&self.public_key_der()?)
            .map_err(|e| format!("public key is not an EC P-256 key: {e}"))
    }
}

/// The outer `Certificate` SEQUENCE's first element, as raw TLV bytes.
fn raw_tbs(der: &[u8]) -> der::Result<&[u8]> {
    let mut reader = SliceReader::new(der)?;
    let outer = Header::decode(&mut reader)?;
    outer.tag.assert_eq(Tag::Sequence)?;
    reader.tlv_bytes()
}

/// The extensions that constrain the chain and the device's role, decoded.
struct Constraints {
    basic: Option<BasicConstraints>,
    key_usage: Option<KeyUsage>,
    /// extKeyUsage as the DER contents of each KeyPurposeId: what the certified key may vouch
    /// for (FORMAT.md §6.1).
    ext_key_usage: Option<Vec<Vec<u8>>>,
}

/// Decodes the extensions we enforce and rejects duplicates and unknown critical ones.
fn constraints(cert: &ParsedCert) -> Result<Constraints, String> {
    let mut out = Constraints {
        basic: None,
        key_usage: None,
        ext_key_usage: None,
    };
    let extensions = cert
        .cert
        .tbs_certificate
        .extensions
        .as_deref()
        .unwrap_or_default();
    let mut seen: Vec<ObjectIdentifier> = Vec::new();
    for ext in extensions {
        if seen.contains(&ext.extn_id) {
            return Err(format!("extension {} appears twice", ext.extn_id));
        }
        seen.push(ext.extn_id);
        let value = ext.extn_value.as_bytes();
        if ext.extn_id == BASIC_CONSTRAINTS {
            let bc = BasicConstraints::from_der(value)
                .map_err(|e| format!("malformed basicConstraints: {e}"))?;
            out.basic = Some(bc);
        } else if ext.extn_id == KEY_USAGE {
            let ku = KeyUsage::from_der(value).map_err(|e| format!("malformed keyUsage: {e}"))?;
            out.key_usage = Some(ku);
        } else if ext.extn_id == EXT_KEY_USAGE {
            out.ext_key_usage =
                Some(key_purposes(value).map_err(|e| format!("malformed extKeyUsage: {e}"))?);
        } else if ext.critical && !TOLERATED_EXTENSIONS.contains(&ext.extn_id) {
            return Err(format!("unsupported critical extension {}", ext.extn_id));
        }
    }
    Ok(out)
}

/// `ExtKeyUsageSyntax ::= SEQUENCE SIZE (1..MAX) OF KeyPurposeId`, each OID's contents octets.
/// Read as raw TLVs because the project's UUID arc does not fit common OID types.
fn key_purposes(value: &[u8]) -> der::Result<Vec<Vec<u8>>> {
    let items: Vec<der::asn1::AnyRef<'_>> = Decode::from_der(value)?;
    if items.is_empty() {
        return Err(Tag::Sequence.length_error());
    }
    items
        .iter()
        .map(|item| {
            item.tag().assert_eq(Tag::ObjectIdentifier)?;
            Ok(item.value().to_vec())
        })
        .collect()
}

/// Checks that hold for every certificate in the path, anchor included: v3, ecdsa-with-SHA256
/// (in both places it is named), valid at `at`, and extensions we can process.
fn check_common(cert: &ParsedCert, at: i64) -> Result<Constraints, String> {
    let tbs = &cert.cert.tbs_certificate;
    if tbs.version != Version::V3 {
        return Err("is not an X.509 v3 certificate".to_string());
    }
    let outer = &cert.cert.signature_algorithm;
    if outer.oid != ECDSA_WITH_SHA256 || outer.parameters.is_some() {
        return Err(format!(
            "signature algorithm {} is not ecdsa-with-SHA256",
            outer.oid
        ));
    }
    if tbs.signature != *outer {
        return Err("tbsCertificate.signature differs from signatureAlgorithm".to_string());
    }
    check_validity(cert, at)?;
    constraints(cert)
}

/// A certificate's (notBefore, notAfter) in Unix seconds.
pub(crate) fn validity(cert: &ParsedCert) -> Result<(i64, i64), String> {
    let validity = &cert.cert.tbs_certificate.validity;
    Ok((
        unix_seconds(validity.not_before.to_unix_duration().as_secs())?,
        unix_seconds(validity.not_after.to_unix_duration().as_secs())?,
    ))
}

/// `notBefore <= at <= notAfter` (RFC 5280 §4.1.2.5: both bounds inclusive).
fn check_validity(cert: &ParsedCert, at: i64) -> Result<(), String> {
    let validity = &cert.cert.tbs_certificate.validity;
    let (not_before, not_after) = self::validity(cert)?;
    if at < not_before {
        return Err(format!(
            "not yet valid at signedAt (notBefore {})",
            validity.not_before
        ));
    }
    if at > not_after {
        return Err(format!(
            "expired at signedAt (notAfter {})",
            validity.not_after
        ));
    }
    Ok(())
}

fn unix_seconds(secs: u64) -> Result<i64, String> {
    i64::try_from(secs).map_err(|_| "validity time out of range".to_string())
}

/// The certificate must be allowed to issue certificates with `below` intermediates under it:
/// `basicConstraints cA=TRUE`, `pathLenConstraint` (if any) ≥ `below`, and `keyCertSign` if it
/// has a keyUsage.
fn check_issuer_role(c: &Constraints, below: usize) -> Result<(), String> {
    let Some(bc) = &c.basic else {
        return Err("has no basicConstraints, so it is not a CA".to_string());
    };
    if !bc.ca {
        return Err("has basicConstraints cA=FALSE, so it is not a CA".to_string());
    }
    if let Some(limit) = bc.path_len_constraint
        && below > usize::from(limit)
    {
        return Err(format!(
            "pathLenConstraint {limit} allows fewer than the {below} intermediate(s) below it"
        ));
    }
    if let Some(ku) = &c.key_usage
        && !ku.0.contains(KeyUsages::KeyCertSign)
    {
        return Err("keyUsage lacks keyCertSign".to_string());
    }
    Ok(())
}

/// The device certificate is an end entity that signs: not a CA, `digitalSignature` if it has a
/// keyUsage, and its extKeyUsage grants the role the evidence needs (FORMAT.md §6.1).
fn check_device_role(c: &Constraints, role: &DeviceRole) -> Result<(), String> {
    if c.basic.as_ref().is_some_and(|bc| bc.ca) {
        return Err(
            "is a CA (basicConstraints cA=TRUE); a device certificate must not be".to_string(),
        );
    }
    if let Some(ku) = &c.key_usage
        && !ku.0.contains(KeyUsages::DigitalSignature)
    {
        return Err("keyUsage lacks digitalSignature".to_string());
    }
    let Some(usages) = &c.ext_key_usage else {
        return Err(format!(
            "has no extKeyUsage, so it is not certified as {}",
            role.describe()
        ));
    };
    role.check(usages)
}

/// `child` names `issuer` as its issuer and carries a valid signature by `issuer`'s key.
fn check_issued_by(child: &ParsedCert, issuer: &ParsedCert) -> Result<(), String> {
    if child.issuer_der()? != issuer.subject_der()? {
        return Err(format!(
            "issuer name {:?} is not the next certificate's subject {:?}",
            child.cert.tbs_certificate.issuer.to_string(),
            issuer.subject()
        ));
    }
    let key = issuer.public_key().map_err(|e| format!("issuer {e}"))?;
    let sig_bytes = child
        .cert
        .signature
        .as_bytes()
        .ok_or_else(|| "signature BIT STRING has unused bits".to_string())?;
    let signature = Signature::from_der(sig_bytes)
        .map_err(|e| format!("signature is not a DER ECDSA P-256 signature: {e}"))?;
    if super::ecdsa::verify(&key, &child.tbs_der, &signature) {
        Ok(())
    } else {
        Err(format!(
            "signature does not verify under the key of {:?}",
            issuer.subject()
        ))
    }
}

/// Labels a failure with the certificate it is about.
fn about(label: &str) -> impl Fn(String) -> String + '_ {
    move |e| format!("{label}: {e}")
}

/// Walks device → `chain` (device side first) → one of `anchors`, all at time `at` (Unix
/// seconds), with the device certificate certified for `role`. Returns the anchor that closed
/// the path.
pub(crate) fn verify_path<'a>(
    device: &ParsedCert,
    chain: &[ParsedCert],
    anchors: &'a [ParsedCert],
    at: i64,
    role: &DeviceRole,
) -> Result<&'a ParsedCert, String> {
    let device_constraints = check_common(device, at).map_err(about("device certificate"))?;
    check_device_role(&device_constraints, role).map_err(about("device certificate"))?;

    let mut child = device;
    let mut child_label = "device certificate".to_string();
    for (below, ca) in chain.iter().enumerate() {
        let label = format!("certificateChain[{below}]");
        let c = check_common(ca, at).map_err(about(&label))?;
        check_issuer_role(&c, below).map_err(about(&label))?;
        check_issued_by(child, ca).map_err(about(&child_label))?;
        child = ca;
        child_label = label;
    }
    close_with_anchor(child, &child_label, chain.len(), anchors, at)
}

/// Finds an anchor that issued `top`. Every anchor whose subject matches is tried, so a bundle
/// still verifies when the anchor file also holds an older CA certificate with the same name.
fn close_with_anchor<'a>(
    top: &ParsedCert,
    top_label: &str,
    below: usize,
    anchors: &'a [ParsedCert],
    at: i64,
) -> Result<&'a ParsedCert, String> {
    let mut reasons = Vec::new();
    for anchor in anchors {
        let attempt = check_common(anchor, at)
            .and_then(|c| check_issuer_role(&c, below))
            .and_then(|()| check_issued_by(top, anchor));
        match attempt {
            Ok(()) => return Ok(anchor),
            Err(e) => reasons.push(format!("anchor {:?}: {e}", anchor.subject())),
        }
    }
    Err(format!(
        "{top_label} (issuer {:?}) does not chain to a trust anchor: {}",
        top.cert.tbs_certificate.issuer.to_string(),
        if reasons.is_empty() {
            "no anchors given".to_string()
        } else {
            reasons.join("; ")
        }
    ))
}
