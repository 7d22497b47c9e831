//! The operator's certificate authority: a key in a PKCS#11 token of its own (or, only when
//! the operator asks for it, in a key file) that issues device certificates.

use std::path::{Path, PathBuf};

use der::{DecodePem, Encode, Tagged};
use p256::ecdsa::{Signature, VerifyingKey, signature::Verifier};
use serde::{Deserialize, Serialize};
use spki::DecodePublicKey;
use time::{Duration, OffsetDateTime};
use x509_cert::request::CertReq;

use super::{
    HardwareSigner, PkiError, SoftwareSigner, SubjectKey, parse_pem_certificates, random_serial,
    read_file, write_file,
};
use crate::{
    backend::{
        Backend, HardwareKey, KeyRef,
        pkcs11::{Pkcs11Backend, Pkcs11Settings, TokenSelector, load_module},
    },
    files,
    secret::PinSource,
};

const CA_CONFIG: &str = "ca.toml";
const CA_CERT: &str = "ca.crt";
/// OID ecdsa-with-SHA256.
const ECDSA_WITH_SHA256: der::asn1::ObjectIdentifier =
    der::asn1::ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.2");

/// Where the CA key lives, as recorded in the CA directory.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum CaKey {
    Pkcs11 {
        module: PathBuf,
        token_label: String,
        pin: PinSource,
        /// Hex CKA_ID of the CA key.
        key_id: String,
    },
    File {
        path: PathBuf,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct CaConfig {
    subject: String,
    key: CaKey,
}

/// Where a new CA's key should be made.
pub enum NewCaKey {
    Pkcs11 {
        module: PathBuf,
        token_label: String,
        pin: PinSource,
    },
    /// A key file: the operator asked for a CA key outside hardware explicitly.
    File(PathBuf),
}

/// Key identifier (SKI/AKI): the first 20 bytes of SHA-256 over the SubjectPublicKeyInfo DER
/// (RFC 7093 §2, method 1).
fn key_identifier(public_key: &p256::PublicKey) -> rcgen::KeyIdMethod {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(crate::proof::spki_der(public_key));
    rcgen::KeyIdMethod::PreSpecified(digest[..20].to_vec())
}

fn ca_params(subject: &str, public_key: &p256::PublicKey) -> rcgen::CertificateParams {
    let mut params = rcgen::CertificateParams::default();
    params.key_identifier_method = key_identifier(public_key);
    let mut name = rcgen::DistinguishedName::new();
    name.push(rcgen::DnType::CommonName, subject);
    params.distinguished_name = name;
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    params
}

fn validity(params: &mut rcgen::CertificateParams, days: u32) {
    let now = OffsetDateTime::now_utc();
    // A little slack for clocks that lag the CA's.
    params.not_before = now - Duration::minutes(5);
    params.not_after = now + Duration::days(i64::from(days));
    params.serial_number = Some(random_serial());
}

fn pkcs11_backend(
    module: &Path,
    token_label: &str,
    pin: &PinSource,
) -> Result<Pkcs11Backend, PkiError> {
    let settings = Pkcs11Settings {
        module: module.to_owned(),
        token: TokenSelector::Label(token_label.to_owned()),
        pin: pin.clone(),
        sessions: 1,
        device_key_label: String::new(),
    };
    Ok(Pkcs11Backend::open(load_module(module)?, &settings)?)
}

/// Creates a CA in `dir`: its key, its self-signed certificate (`ca.crt`, the trust anchor
/// verifiers get) and `ca.toml`. Returns the certificate's path.
pub fn init(dir: &Path, subject: &str, days: u32, key: NewCaKey) -> Result<PathBuf, PkiError> {
    let config_path = dir.join(CA_CONFIG);
    if config_path.exists() {
        return Err(PkiError::Invalid(format!(
            "{} exists: a CA is already set up there",
            config_path.display()
        )));
    }
    files::private_dir(dir).map_err(|e| PkiError::Io {
        path: dir.display().to_string(),
        reason: e.to_string(),
    })?;
    let (cert, recorded) = match key {
        NewCaKey::Pkcs11 {
            module,
            token_label,
            pin,
        } => {
            let backend = pkcs11_backend(&module, &token_label, &pin)?;
            let ca_key = backend.create_key("actseal-ca")?;
            let mut params = ca_params(subject, &ca_key.public_key);
            validity(&mut params, days);
            let cert = params.self_signed(&HardwareSigner::new(&backend, &ca_key))?;
            let recorded = CaKey::Pkcs11 {
                module,
                token_label,
                pin,
                key_id: ca_key.key_ref.0,
            };
            (cert, recorded)
        }
        NewCaKey::File(path) => {
            if path.exists() {
                return Err(PkiError::Invalid(format!(
                    "{} exists already",
                    path.display()
                )));
            }
            let secret = p256::SecretKey::random(&mut rand_core::OsRng);
            let pem = {
                use p256::pkcs8::EncodePrivateKey;
                secret
                    .to_pkcs8_pem(p256::pkcs8::LineEnding::LF)
                    .map_err(|e| PkiError::Invalid(format!("cannot encode CA key: {e}")))?
            };
            write_file(&path, pem.as_bytes(), files::PRIVATE_FILE)?;
            let mut params = ca_params(subject, &secret.public_key());
            validity(&mut params, days);
            let cert = params.self_signed(&SoftwareSigner::new(secret.into()))?;
            (cert, CaKey::File { path })
        }
    };
    let config = CaConfig {
        subject: subject.to_owned(),
        key: recorded,
    };
    let toml = toml::to_string(&config)
        .map_err(|e| PkiError::Invalid(format!("cannot write CA config: {e}")))?;
    let cert_path = dir.join(CA_CERT);
    // The trust anchor, for verifiers: the one file actseal writes readable by others.
    write_file(&cert_path, cert.pem().as_bytes(), files::PUBLIC_FILE)?;
    write_file(&config_path, toml.as_bytes(), files::PRIVATE_FILE)?;
    Ok(cert_path)
}

/// Checks a PKCS#10 request: well-formed, P-256, signed by the key it names.
fn checked_request(csr_pem: &str) -> Result<(x509_cert::name::Name, Vec<u8>), PkiError> {
    let request = CertReq::from_pem(csr_pem.trim())
        .map_err(|e| PkiError::Invalid(format!("not a PEM certificate request: {e}")))?;
    if request.algorithm.oid != ECDSA_WITH_SHA256 {
        return Err(PkiError::Invalid(format!(
            "request is signed with {}, expected ecdsa-with-SHA256",
            request.algorithm.oid
        )));
    }
    let spki = request
        .info
        .public_key
        .to_der()
        .map_err(|e| PkiError::Invalid(format!("request key: {e}")))?;
    let key = VerifyingKey::from_public_key_der(&spki)
        .map_err(|_| PkiError::Invalid("the requested key is not a P-256 key".into()))?;
    let info = request
        .info
        .to_der()
        .map_err(|e| PkiError::Invalid(format!("request info: {e}")))?;
    let signature = Signature::from_der(request.signature.raw_bytes())
        .map_err(|_| PkiError::Invalid("request signature is not DER ECDSA".into()))?;
    key.verify(&info, &signature).map_err(|_| {
        PkiError::Invalid(
            "the request's signature does not verify: the requester does not hold the key".into(),
        )
    })?;
    let point = request
        .info
        .public_key
        .subject_public_key
        .as_bytes()
        .ok_or_else(|| PkiError::Invalid("request key has unused bits".into()))?
        .to_vec();
    Ok((request.info.subject, point))
}

/// Copies the CN and OU of a request's subject; anything else stays out of the certificate.
fn rcgen_name(subject: &x509_cert::name::Name) -> rcgen::DistinguishedName {
    const CN: der::asn1::ObjectIdentifier = der::asn1::ObjectIdentifier::new_unwrap("2.5.4.3");
    const OU: der::asn1::ObjectIdentifier = der::asn1::ObjectIdentifier::new_unwrap("2.5.4.11");
    let mut name = rcgen::DistinguishedName::new();
    for attribute in subject.0.iter().flat_map(|rdn| rdn.0.iter()) {
        let kind = match attribute.oid {
            CN => rcgen::DnType::CommonName,
            OU => rcgen::DnType::OrganizationalUnitName,
            _ => continue,
        };
        let text = match attribute.value.tag() {
            der::Tag::Utf8String | der::Tag::PrintableString | der::Tag::Ia5String => {
                String::from_utf8_lossy(attribute.value.value()).into_owned()
            }
            _ => continue,
        };
        name.push(kind, text);
    }
    name
}

/// Issues a device certificate for a request. Returns the certificate (PEM).
/// What a device certificate's key may vouch for (FORMAT.md §6.1). The CA issues exactly one
/// evidence role per certificate, so a TPM attestation key can never pass for a PKCS#11 device
/// key or the other way round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertRole {
    /// A PKCS#11 token's device key: signs attribute statements (`id-kp-pkcs11Device`).
    Pkcs11Device,
    /// A TPM attestation key: signs TPMS_ATTEST (`tcg-kp-AIKCertificate`).
    TpmAttestationKey,
}

/// A certificate profile: the evidence role, and whether the key may also attest the log key
/// (`id-kp-logKeyAttester`; a fleet's signing nodes get certificates without it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CertProfile {
    pub role: CertRole,
    pub attests_log_key: bool,
}

/// DER contents of the role OIDs (FORMAT.md §6.1). The project arc is a UUID arc whose 128-bit
/// component no common OID type holds, so the bytes are written out; a test checks them.
const TCG_KP_AIK_CERTIFICATE: &[u8] = &[0x67, 0x81, 0x05, 0x08, 0x03];
const ACTSEAL_KP_PKCS11_DEVICE: &[u8] = &[
    0x69, 0x82, 0xec, 0xbb, 0xf0, 0xdb, 0xc5, 0x9a, 0x9a, 0x96, 0xd5, 0x88, 0xcb, 0x9e, 0xd2, 0x99,
    0xf1, 0x96, 0xe7, 0x40, 0x01, 0x01,
];
const ACTSEAL_KP_LOG_KEY_ATTESTER: &[u8] = &[
    0x69, 0x82, 0xec, 0xbb, 0xf0, 0xdb, 0xc5, 0x9a, 0x9a, 0x96, 0xd5, 0x88, 0xcb, 0x9e, 0xd2, 0x99,
    0xf1, 0x96, 0xe7, 0x40, 0x01, 0x02,
];

impl CertProfile {
    /// The extKeyUsage extension of this profile (non-critical, RFC 5280 §4.2.1.12).
    fn ext_key_usage(&self) -> rcgen::CustomExtension {
        let mut purposes: Vec<&[u8]> = vec![match self.role {
            CertRole::Pkcs11Device => ACTSEAL_KP_PKCS11_DEVICE,
            CertRole::TpmAttestationKey => TCG_KP_AIK_CERTIFICATE,
        }];
        if self.attests_log_key {
            purposes.push(ACTSEAL_KP_LOG_KEY_ATTESTER);
        }
        let mut body = Vec::new();
        for oid in purposes {
            body.push(0x06);
            body.push(oid.len() as u8);
            body.extend_from_slice(oid);
        }
        let mut content = vec![0x30, body.len() as u8];
        content.extend_from_slice(&body);
        rcgen::CustomExtension::from_oid_content(&[2, 5, 29, 37], content)
    }
}

pub fn issue(
    dir: &Path,
    csr_pem: &str,
    days: u32,
    attests_log_key: bool,
) -> Result<String, PkiError> {
    let (subject, point) = checked_request(csr_pem)?;
    let subject_public = p256::PublicKey::from_sec1_bytes(&point)
        .map_err(|_| PkiError::Invalid("the requested key is not a P-256 point".into()))?;
    let name = rcgen_name(&subject);
    if name.iter().next().is_none() {
        return Err(PkiError::Invalid(format!(
            "request subject \"{subject}\" has no CN"
        )));
    }
    let profile = CertProfile {
        role: CertRole::Pkcs11Device,
        attests_log_key,
    };
    sign_certificate(dir, name, &subject_public, days, profile)
}

/// Issues a device certificate for a key whose holder was proven otherwise than by a
/// request signature: a TPM attestation key after credential activation (`actseal enroll`),
/// which as a restricted key cannot sign a request.
pub fn issue_for_key(
    dir: &Path,
    common_name: &str,
    public_key: &p256::PublicKey,
    days: u32,
    profile: CertProfile,
) -> Result<String, PkiError> {
    let mut name = rcgen::DistinguishedName::new();
    name.push(rcgen::DnType::CommonName, common_name);
    sign_certificate(dir, name, public_key, days, profile)
}

fn sign_certificate(
    dir: &Path,
    name: rcgen::DistinguishedName,
    subject_public: &p256::PublicKey,
    days: u32,
    profile: CertProfile,
) -> Result<String, PkiError> {
    use p256::elliptic_curve::sec1::ToEncodedPoint;
    let point = subject_public.to_encoded_point(false).as_bytes().to_vec();
    let config: CaConfig = toml::from_str(&read_file(&dir.join(CA_CONFIG))?)
        .map_err(|e| PkiError::Invalid(format!("{}: {e}", dir.join(CA_CONFIG).display())))?;
    let ca_cert_pem = read_file(&dir.join(CA_CERT))?;
    let ca_cert = parse_pem_certificates(&ca_cert_pem)?.remove(0);
    let ca_public = p256::PublicKey::from_public_key_der(&super::certificate_spki(&ca_cert)?)
        .map_err(|_| PkiError::Invalid("CA certificate key is not P-256".into()))?;

    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = name;
    params.is_ca = rcgen::IsCa::ExplicitNoCa;
    params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    params.custom_extensions = vec![profile.ext_key_usage()];
    params.use_authority_key_identifier_extension = true;
    params.key_identifier_method = key_identifier(subject_public);
    validity(&mut params, days);
    let subject_key = SubjectKey(point);

    let cert = match &config.key {
        CaKey::Pkcs11 {
            module,
            token_label,
            pin,
            key_id,
        } => {
            let backend = pkcs11_backend(module, token_label, pin)?;
            let ca_key = HardwareKey {
                key_ref: KeyRef(key_id.clone()),
                public_key: ca_public,
            };
            let issuer = rcgen::Issuer::new(
                ca_params(&config.subject, &ca_public),
                HardwareSigner::new(&backend, &ca_key),
            );
            params.signed_by(&subject_key, &issuer)?
        }
        CaKey::File { path } => {
            use p256::pkcs8::DecodePrivateKey;
            let pem = zeroize::Zeroizing::new(read_file(path)?);
            let secret = p256::SecretKey::from_pkcs8_pem(&pem)
                .map_err(|_| PkiError::Invalid(format!("{} is not a P-256 key", path.display())))?;
            if secret.public_key() != ca_public {
                return Err(PkiError::Invalid(format!(
                    "{} does not match the CA certificate",
                    path.display()
                )));
            }
            let issuer = rcgen::Issuer::new(
                ca_params(&config.subject, &ca_public),
                SoftwareSigner::new(secret.into()),
            );
            params.signed_by(&subject_key, &issuer)?
        }
    };
    Ok(cert.pem())
}
