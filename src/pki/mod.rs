//! X.509 for the chain of trust: the device's certificate request, and the operator's CA
//! that issues device certificates. Certificates are made with `rcgen`, signed inside the
//! hardware; the offline verifier reads them with different code (`x509-cert`).

pub mod ca;
pub mod device;
pub mod enroll;

use p256::{ecdsa::Signature, elliptic_curve::sec1::ToEncodedPoint};
use sha2::{Digest, Sha256};

use crate::backend::{Backend, HardwareKey};

/// An `rcgen` signing key whose private half is in a backend.
pub struct HardwareSigner<'a> {
    backend: &'a dyn Backend,
    key: &'a HardwareKey,
    point: Vec<u8>,
}

impl<'a> HardwareSigner<'a> {
    pub fn new(backend: &'a dyn Backend, key: &'a HardwareKey) -> Self {
        let point = key.public_key.to_encoded_point(false).as_bytes().to_vec();
        HardwareSigner {
            backend,
            key,
            point,
        }
    }
}

impl rcgen::PublicKeyData for HardwareSigner<'_> {
    fn der_bytes(&self) -> &[u8] {
        &self.point
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        &rcgen::PKCS_ECDSA_P256_SHA256
    }
}

impl rcgen::SigningKey for HardwareSigner<'_> {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        let digest: [u8; 32] = Sha256::digest(msg).into();
        let signature: Signature = self.backend.sign_digest(self.key, &digest).map_err(|e| {
            tracing::error!(error = %e, "hardware signing of a certificate failed");
            rcgen::Error::RemoteKeyError
        })?;
        Ok(signature.to_der().as_bytes().to_vec())
    }
}

/// An `rcgen` signing key held in a file: only for a CA whose operator asked for that.
pub struct SoftwareSigner {
    key: p256::ecdsa::SigningKey,
    point: Vec<u8>,
}

impl SoftwareSigner {
    pub fn new(key: p256::ecdsa::SigningKey) -> Self {
        let point = key
            .verifying_key()
            .to_encoded_point(false)
            .as_bytes()
            .to_vec();
        SoftwareSigner { key, point }
    }
}

impl rcgen::PublicKeyData for SoftwareSigner {
    fn der_bytes(&self) -> &[u8] {
        &self.point
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        &rcgen::PKCS_ECDSA_P256_SHA256
    }
}

impl rcgen::SigningKey for SoftwareSigner {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        use p256::ecdsa::signature::Signer;
        let signature: Signature = self.key.sign(msg);
        Ok(signature.to_der().as_bytes().to_vec())
    }
}

/// A subject's public key for a certificate being issued (no private half needed).
pub(crate) struct SubjectKey(pub(crate) Vec<u8>);

impl rcgen::PublicKeyData for SubjectKey {
    fn der_bytes(&self) -> &[u8] {
        &self.0
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        &rcgen::PKCS_ECDSA_P256_SHA256
    }
}

/// Errors of certificate handling.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{0}")]
    Invalid(String),
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error(transparent)]
    Backend(#[from] crate::backend::BackendError),
    #[error("{path}: {reason}")]
    Io { path: String, reason: String },
}

/// Parses every certificate in a PEM text.
pub fn parse_pem_certificates(pem: &str) -> Result<Vec<x509_cert::Certificate>, PkiError> {
    use der::DecodePem;
    let mut certs = Vec::new();
    let mut rest = pem;
    const END: &str = "-----END CERTIFICATE-----";
    while let Some(start) = rest.find("-----BEGIN CERTIFICATE-----") {
        let end = rest[start..]
            .find(END)
            .ok_or_else(|| PkiError::Invalid("unterminated PEM certificate".into()))?
            + start
            + END.len();
        certs.push(
            x509_cert::Certificate::from_pem(&rest[start..end])
                .map_err(|e| PkiError::Invalid(format!("bad certificate: {e}")))?,
        );
        rest = &rest[end..];
    }
    if certs.is_empty() {
        return Err(PkiError::Invalid("no PEM certificate found".into()));
    }
    Ok(certs)
}

/// The SubjectPublicKeyInfo DER of a certificate.
pub fn certificate_spki(cert: &x509_cert::Certificate) -> Result<Vec<u8>, PkiError> {
    use der::Encode;
    cert.tbs_certificate
        .subject_public_key_info
        .to_der()
        .map_err(|e| PkiError::Invalid(format!("certificate key does not encode: {e}")))
}

/// A random positive 16-byte serial number.
pub(crate) fn random_serial() -> rcgen::SerialNumber {
    use rand_core::{OsRng, RngCore};
    let mut bytes = [0u8; 16];
    OsRng.fill_bytes(&mut bytes);
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01;
    rcgen::SerialNumber::from_slice(&bytes)
}

/// Writes a file the CA or the device tools keep, replacing it atomically with exactly `mode`.
pub(crate) fn write_file(
    path: &std::path::Path,
    contents: &[u8],
    mode: u32,
) -> Result<(), PkiError> {
    crate::files::write_atomic(path, contents, mode).map_err(|e| PkiError::Io {
        path: path.display().to_string(),
        reason: format!("cannot {}: {}", e.action, e.source),
    })
}

pub(crate) fn read_file(path: &std::path::Path) -> Result<String, PkiError> {
    std::fs::read_to_string(path).map_err(|e| PkiError::Io {
        path: path.display().to_string(),
        reason: e.to_string(),
    })
}
