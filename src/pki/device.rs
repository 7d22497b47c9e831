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
/// the device key and has not expired, and installs it where the daemon reads it: as the
/// current certificate and, beside it, in the history of every certificate installed for the
/// key (the previous current one is kept there too), so that a renewal never takes away the
/// certificate older bundles need.
pub fn install_certificate(
    pem: &str,
    device_key: &HardwareKey,
    destination: &Path,
) -> Result<String, PkiError> {
    let certs = parse_pem_certificates(pem)?;
    let leaf = &certs[0];
    if certificate_spki(leaf)? != spki_der(&device_key.public_key) {
        return Err(PkiError::Invalid(
            "the certificate is not for this token's device key (or this TPM's attestation key)"
                .into(),
        ));
    }
    let (_, not_after) = validity(leaf);
    if not_after < unix_now() {
        return Err(PkiError::Invalid(
            "the certificate has expired: it would cover no receipt".into(),
        ));
    }
    let history = history_dir(destination);
    create_private_dir(&history)?;
    if let Ok(previous) = super::read_file(destination) {
        // Installed before history was kept: archived as of when it was written.
        let written = std::fs::metadata(destination)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_secs() as i64);
        archive(&history, &previous, written)?;
    }
    archive(&history, pem, unix_now())?;
    write_file(destination, pem.as_bytes(), crate::files::PRIVATE_FILE)?;
    Ok(leaf.tbs_certificate.subject.to_string())
}

/// Where the certificates installed for the device are kept: `device-certificates/` beside
/// the current one, one PEM file per certificate named `<installed at>-<leaf hash>.pem`.
pub fn history_dir(current: &Path) -> std::path::PathBuf {
    current.with_file_name("device-certificates")
}

fn create_private_dir(dir: &Path) -> Result<(), PkiError> {
    crate::files::private_dir(dir).map_err(|e| PkiError::Io {
        path: dir.display().to_string(),
        reason: e.to_string(),
    })
}

/// SHA-256 (hex, first 16 digits) of a PEM text's leaf certificate DER: its name in history.
fn leaf_hash(pem: &str) -> Result<String, PkiError> {
    use sha2::{Digest, Sha256};
    let leaf = parse_pem_certificates(pem)?.remove(0);
    let der = leaf
        .to_der()
        .map_err(|e| PkiError::Invalid(format!("certificate does not encode: {e}")))?;
    Ok(hex::encode(Sha256::digest(der))[..16].to_owned())
}

/// Adds a certificate to the history unless it is there already (re-installing is a no-op).
fn archive(history: &Path, pem: &str, installed_at: i64) -> Result<(), PkiError> {
    let hash = leaf_hash(pem)?;
    let known = std::fs::read_dir(history)
        .map_err(|e| PkiError::Io {
            path: history.display().to_string(),
            reason: e.to_string(),
        })?
        .filter_map(Result::ok)
        .any(|entry| {
            entry
                .file_name()
                .to_string_lossy()
                .ends_with(&format!("-{hash}.pem"))
        });
    if known {
        return Ok(());
    }
    write_file(
        &history.join(format!("{installed_at}-{hash}.pem")),
        pem.as_bytes(),
        crate::files::PRIVATE_FILE,
    )
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// A certificate's validity period in Unix seconds.
fn validity(cert: &x509_cert::Certificate) -> (i64, i64) {
    let v = &cert.tbs_certificate.validity;
    let secs = |t: x509_cert::time::Time| t.to_unix_duration().as_secs() as i64;
    (secs(v.not_before), secs(v.not_after))
}

/// One certificate installed for the device key, in the form lineages carry it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstalledCertificate {
    /// When it was installed (Unix seconds).
    pub installed_at: i64,
    pub not_before: i64,
    pub not_after: i64,
    /// Base64 DER of the leaf, as a lineage's `deviceCertificate`.
    pub certificate: String,
    /// Base64 DER of the intermediates, as a lineage's `certificateChain`.
    pub chain: Vec<String>,
}

impl InstalledCertificate {
    fn valid_at(&self, at: i64) -> bool {
        self.not_before <= at && at <= self.not_after
    }
}

/// Every certificate installed for the device key. The device's signature over a lineage
/// statement (and the AK's over a TPMS_ATTEST) does not cover the certificate, so a bundle
/// can carry whichever certificate of that key was in force when its evidence is checked
/// (FORMAT.md §7: the receipt's signedAt, a predecessor's rotatedAt): old bundles keep their
/// old certificate, new ones get the renewed one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceCertificates {
    /// Oldest installation first.
    installed: Vec<InstalledCertificate>,
}

impl DeviceCertificates {
    /// Reads the current certificate and the history beside it; every one must be for
    /// `device_key`.
    pub fn load(current: &Path, device_key: &HardwareKey) -> Result<Self, PkiError> {
        let mut files = Vec::new();
        if let Ok(dir) = std::fs::read_dir(history_dir(current)) {
            for entry in dir.filter_map(Result::ok) {
                let name = entry.file_name().to_string_lossy().into_owned();
                let Some(stem) = name.strip_suffix(".pem") else {
                    continue;
                };
                let installed_at = stem
                    .split_once('-')
                    .and_then(|(at, _)| at.parse::<i64>().ok())
                    .ok_or_else(|| {
                        PkiError::Invalid(format!(
                            "{}: not named <installed at>-<hash>.pem",
                            entry.path().display()
                        ))
                    })?;
                files.push((entry.path(), installed_at));
            }
        }
        let mut installed = Vec::new();
        for (path, installed_at) in files {
            installed.push(read_installed(&path, device_key, installed_at)?);
        }
        // The current one, if it predates the history (installed before it was kept).
        let current = read_installed(current, device_key, 0)?;
        if !installed
            .iter()
            .any(|c| c.certificate == current.certificate)
        {
            installed.push(current);
        }
        installed.sort_by_key(|c| (c.installed_at, c.not_before));
        Ok(DeviceCertificates { installed })
    }

    /// The certificate in force at `at`: of those valid then, the last installed by then
    /// (what the daemon used at that moment), else the last installed of any.
    pub fn in_force(&self, at: i64) -> Option<&InstalledCertificate> {
        let valid = || self.installed.iter().filter(|c| c.valid_at(at));
        valid()
            .rfind(|c| c.installed_at <= at)
            .or_else(|| valid().next_back())
    }

    /// Gives `attestation` the certificate in force at `at`, if its certificate is one of
    /// this device's (a key attested by another device keeps its own).
    pub fn resolve(&self, attestation: &mut crate::proof::lineage::Attestation, at: i64) {
        if !self
            .installed
            .iter()
            .any(|c| c.certificate == attestation.device_certificate)
        {
            return;
        }
        if let Some(cert) = self.in_force(at) {
            attestation.device_certificate.clone_from(&cert.certificate);
            attestation.certificate_chain.clone_from(&cert.chain);
        }
    }

    /// When the last certificate in force ends: the daemon signs nothing after it.
    pub fn not_after(&self) -> Option<i64> {
        self.installed.iter().map(|c| c.not_after).max()
    }
}

fn read_installed(
    path: &Path,
    device_key: &HardwareKey,
    installed_at: i64,
) -> Result<InstalledCertificate, PkiError> {
    use base64::{Engine, engine::general_purpose::STANDARD as B64};
    let identity = load_identity(path, device_key.clone())?;
    let leaf = x509_cert::Certificate::from_der(&identity.certificate_der)
        .map_err(|e| PkiError::Invalid(format!("{}: {e}", path.display())))?;
    let (not_before, not_after) = validity(&leaf);
    Ok(InstalledCertificate {
        installed_at,
        not_before,
        not_after,
        certificate: B64.encode(&identity.certificate_der),
        chain: identity.chain_der.iter().map(|c| B64.encode(c)).collect(),
    })
}

/// The installed certificates as the daemon holds them: re-read on SIGHUP, and when none is
/// in force at the moment a receipt is to be signed (at most once a second), so that a
/// renewal installed while the daemon runs is picked up without a restart.
pub struct CertificateHistory {
    current: std::path::PathBuf,
    device_key: HardwareKey,
    loaded: std::sync::RwLock<std::sync::Arc<DeviceCertificates>>,
    last_read: std::sync::Mutex<std::time::Instant>,
}

impl CertificateHistory {
    pub fn open(current: &Path, device_key: HardwareKey) -> Result<Self, PkiError> {
        let loaded = DeviceCertificates::load(current, &device_key)?;
        Ok(CertificateHistory {
            current: current.to_owned(),
            device_key,
            loaded: std::sync::RwLock::new(std::sync::Arc::new(loaded)),
            last_read: std::sync::Mutex::new(std::time::Instant::now()),
        })
    }

    /// The certificates as last read.
    pub fn get(&self) -> std::sync::Arc<DeviceCertificates> {
        std::sync::Arc::clone(&self.loaded.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Re-reads them from disk; on an error the ones read before stay.
    pub fn reload(&self) -> Result<std::sync::Arc<DeviceCertificates>, PkiError> {
        *self.last_read.lock().unwrap_or_else(|p| p.into_inner()) = std::time::Instant::now();
        let fresh = std::sync::Arc::new(DeviceCertificates::load(&self.current, &self.device_key)?);
        *self.loaded.write().unwrap_or_else(|p| p.into_inner()) = std::sync::Arc::clone(&fresh);
        Ok(fresh)
    }

    /// The certificates, with one in force at `at` if any is installed (re-reading them when
    /// none of those read before is, at most once a second).
    pub fn covering(&self, at: i64) -> std::sync::Arc<DeviceCertificates> {
        let loaded = self.get();
        if loaded.in_force(at).is_some() {
            return loaded;
        }
        let recently = self
            .last_read
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .elapsed()
            < std::time::Duration::from_secs(1);
        if recently {
            return loaded;
        }
        match self.reload() {
            Ok(fresh) => {
                if fresh.in_force(at).is_some() {
                    tracing::info!("a renewed device certificate was picked up");
                }
                fresh
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot re-read the device certificates");
                loaded
            }
        }
    }
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
