//! The device identity: the token's device key and the certificate the operator's CA gave it.

use std::path::Path;

use der::{Decode, Encode};
use spki::DecodePublicKey;

use super::{HardwareSigner, PkiError, certificate_spki, parse_pem_certificates, write_file};
use crate::{
    backend::{Backend, HardwareKey, pkcs11::TokenFacts},
    proof::spki_der,
};

/// The device key with its certificate chain (leaf first, anchor excluded).
#[derive(Debug, Clone)]
pub struct DeviceIdentity {
    pub key: HardwareKey,
    pub key_id: String,
    pub certificate_der: Vec<u8>,
    pub chain_der: Vec<Vec<u8>>,
    /// End of the device certificate's validity (Unix seconds): receipts signed later would
    /// not verify, so the daemon stops signing then.
    pub not_after_unix: u64,
}

impl DeviceIdentity {
    /// Seconds until the device certificate expires (0 once it has).
    pub fn seconds_left(&self) -> u64 {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.not_after_unix.saturating_sub(now)
    }
}

/// A PKCS#10 request for the device key, signed inside the token by the device key.
pub fn certificate_request(
    backend: &dyn Backend,
    device_key: &HardwareKey,
    token: &TokenFacts,
) -> Result<String, PkiError> {
    let mut params = rcgen::CertificateParams::default();
    let mut name = rcgen::DistinguishedName::new();
    name.push(
        rcgen::DnType::CommonName,
        format!("actseal device {} {}", token.model, token.serial),
    );
    name.push(rcgen::DnType::OrganizationalUnitName, token.label.clone());
    params.distinguished_name = name;
    let request = params.serialize_request(&HardwareSigner::new(backend, device_key))?;
    Ok(request.pem()?)
}

/// Checks that a certificate (PEM, leaf first, optional intermediates after it) is for
/// the device key, and stores it where the daemon reads it.
pub fn install_certificate(
    pem: &str,
    device_key: &HardwareKey,
    destination: &Path,
) -> Result<String, PkiError> {
    let certs = parse_pem_certificates(pem)?;
    let leaf = &certs[0];
    if certificate_spki(leaf)? != spki_der(&device_key.public_key) {
        return Err(PkiError::Invalid(
            "the certificate is not for this token's device key".into(),
        ));
    }
    write_file(destination, pem.as_bytes(), crate::files::PRIVATE_FILE)?;
    Ok(leaf.tbs_certificate.subject.to_string())
}

/// Loads the installed device certificate and checks that it still matches the device key.
pub fn load_identity(path: &Path, device_key: HardwareKey) -> Result<DeviceIdentity, PkiError> {
    let pem = super::read_file(path).map_err(|_| {
        PkiError::Invalid(format!(
            "no device certificate at {}: run `actseal device csr`, have the CA issue it \
             (`actseal ca issue`) and install it (`actseal device install`)",
            path.display()
        ))
    })?;
    let certs = parse_pem_certificates(&pem)?;
    let mut der = Vec::with_capacity(certs.len());
    for cert in &certs {
        der.push(
            cert.to_der()
                .map_err(|e| PkiError::Invalid(format!("certificate does not encode: {e}")))?,
        );
    }
    let leaf_key = p256::PublicKey::from_public_key_der(&certificate_spki(&certs[0])?)
        .map_err(|_| PkiError::Invalid("device certificate key is not P-256".into()))?;
    if leaf_key != device_key.public_key {
        return Err(PkiError::Invalid(format!(
            "{} is not for this token's device key",
            path.display()
        )));
    }
    // Round-trip check: what we send in bundles must parse as a certificate.
    x509_cert::Certificate::from_der(&der[0])
        .map_err(|e| PkiError::Invalid(format!("device certificate: {e}")))?;
    let not_after_unix = certs[0]
        .tbs_certificate
        .validity
        .not_after
        .to_unix_duration()
        .as_secs();
    let certificate_der = der.remove(0);
    Ok(DeviceIdentity {
        not_after_unix,
        key_id: crate::proof::key_id(&device_key.public_key),
        key: device_key,
        certificate_der,
        chain_der: der,
    })
}
