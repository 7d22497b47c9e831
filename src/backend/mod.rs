//! Hardware backends that hold actor keys.
//!
//! The rest of the daemon sees only [`Backend`]: keys are named by an opaque [`KeyRef`],
//! and the backend signs SHA-256 digests with them. A key's private half never crosses
//! this boundary.

pub mod outage;
pub mod pkcs11;
pub mod throttle;
pub mod tpm;

use std::fmt;

use p256::ecdsa::Signature;
use serde::Serialize;

/// Which kind of hardware holds a key. Its name appears in receipts and bundles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    Pkcs11,
    Tpm,
}

impl BackendKind {
    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::Pkcs11 => "pkcs11",
            BackendKind::Tpm => "tpm",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "pkcs11" => Some(BackendKind::Pkcs11),
            "tpm" => Some(BackendKind::Tpm),
            _ => None,
        }
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A backend-specific name for a key (for PKCS#11, the hex CKA_ID), as stored in the
/// daemon's state. Not secret.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KeyRef(pub String);

impl fmt::Display for KeyRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A key held by a backend, with its public half.
#[derive(Debug, Clone)]
pub struct HardwareKey {
    pub key_ref: KeyRef,
    pub public_key: p256::PublicKey,
}

/// How an operator names a key that already exists on the hardware.
#[derive(Debug, Clone)]
pub enum KeySelector {
    Label(String),
    Id(Vec<u8>),
}

impl fmt::Display for KeySelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeySelector::Label(label) => write!(f, "label {label:?}"),
            KeySelector::Id(id) => write!(f, "id {}", hex::encode(id)),
        }
    }
}

/// What the hardware says about a key, read back from it: the raw material of lineage.
#[derive(Debug, Clone)]
pub enum KeyEvidence {
    Pkcs11(pkcs11::Pkcs11KeyFacts),
    Tpm(tpm::TpmKeyFacts),
}

/// Errors from a backend. Messages name the token and key, never a PIN.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The hardware cannot be reached now (token absent or removed, device error). The
    /// request may succeed later.
    #[error("backend unavailable: {0}")]
    Unavailable(String),
    /// The token rejected the PIN or is locked: operator action needed.
    #[error("login refused: {0}")]
    Login(String),
    /// The PIN's source is unfit (a file others can read, a malformed PIN): operator action.
    #[error(transparent)]
    Pin(#[from] crate::secret::PinError),
    #[error("no such key: {0}")]
    KeyNotFound(String),
    /// The key exists but is unfit for actseal; the reason says which property failed.
    #[error("key refused: {0}")]
    KeyRefused(String),
    /// The hardware signed, but the signature does not verify under the key's public key:
    /// the key reference names another key, or the hardware is faulty.
    #[error("sign failed: the hardware returned a signature that does not verify under the key")]
    SignatureMismatch,
    #[error("{operation} failed: {detail}")]
    Failed {
        operation: &'static str,
        detail: String,
    },
}

impl BackendError {
    /// Whether the error means the hardware is down or not ours (rather than the request
    /// being wrong): such errors end as UNAVAILABLE and start a backend's recovery.
    pub fn is_fault(&self) -> bool {
        matches!(self, BackendError::Unavailable(_) | BackendError::Login(_))
    }
}

/// Whether a new log head may replace the record the hardware holds (`None`: none yet);
/// `Err` says why not.
pub type HeadCheck<'a> = dyn Fn(Option<&[u8]>) -> Result<(), String> + 'a;

/// What [`Backend::replace_log_head`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeadWrite {
    Written,
    /// The check refused the record the hardware holds; nothing was written.
    Refused(String),
}

/// A hardware key store that signs SHA-256 digests with P-256 keys it never releases.
///
/// Implementations are blocking and thread-safe; callers on an async runtime use
/// `spawn_blocking`. Each call may take a few milliseconds on real hardware.
pub trait Backend: Send + Sync {
    fn kind(&self) -> BackendKind;

    /// Generates a new non-extractable P-256 signing key inside the hardware.
    fn create_key(&self, label: &str) -> Result<HardwareKey, BackendError>;

    /// Finds an existing key, checks that it is fit to be an actor key (generated in the
    /// hardware, never extractable, able to sign) and proves it works by signing with it.
    fn adopt_key(&self, selector: &KeySelector) -> Result<HardwareKey, BackendError>;

    /// Signs a SHA-256 digest with a key; the signature is checked against the key's public
    /// half before it is returned, so a faulty token cannot hand out a bad signature.
    fn sign_digest(&self, key: &HardwareKey, digest: &[u8; 32]) -> Result<Signature, BackendError>;

    /// Signs a SHA-256 digest and returns the signature as the hardware gave it, unchecked:
    /// the caller must check it before relying on it (the sequencer does, with `ring`, on
    /// its signing threads, over the message whose digest this is). Where the check fails,
    /// call [`sign_digest`](Backend::sign_digest), which also recovers the connection.
    fn sign_digest_unchecked(
        &self,
        key: &HardwareKey,
        digest: &[u8; 32],
    ) -> Result<Signature, BackendError> {
        self.sign_digest(key, digest)
    }

    /// Reads back what the hardware states about a key.
    fn key_evidence(&self, key: &KeyRef) -> Result<KeyEvidence, BackendError>;

    /// Destroys a key; used to undo a creation whose registration failed.
    fn destroy_key(&self, key: &KeyRef) -> Result<(), BackendError>;

    /// The backend's own device key, which signs lineage statements. Created on first use
    /// when `create` is true.
    fn device_key(&self, create: bool) -> Result<HardwareKey, BackendError>;

    /// Has the hardware attest a key it holds (TPM2_Certify by the attestation key, with
    /// `qualifying_data` as extraData). Only a TPM can.
    fn certify(
        &self,
        key: &KeyRef,
        qualifying_data: &[u8],
    ) -> Result<tpm::Certification, BackendError> {
        let _ = (key, qualifying_data);
        Err(BackendError::KeyRefused(format!(
            "{} keys are attested by attribute statements, not TPM2_Certify",
            self.kind()
        )))
    }

    /// Checks that the hardware answers; cheap enough for a health probe.
    fn health(&self) -> Result<(), BackendError>;

    /// Whether this backend keeps the log's newest acknowledged tree head
    /// ([`read_log_head`](Backend::read_log_head)): without it, a lost or restored database
    /// cannot be told from a good one.
    fn keeps_log_head(&self) -> bool {
        false
    }

    /// The log head record kept in the hardware (`crate::ledger::head`), `None` if none was
    /// written yet.
    fn read_log_head(&self) -> Result<Option<Vec<u8>>, BackendError> {
        Ok(None)
    }

    /// Replaces the log head record; durable in the hardware when this returns.
    fn write_log_head(&self, record: &[u8]) -> Result<(), BackendError> {
        let _ = record;
        Err(BackendError::Failed {
            operation: "write log head",
            detail: format!("the {} backend keeps no log head", self.kind()),
        })
    }

    /// Replaces the log head record only if `allow` accepts the record the hardware holds
    /// now, read right before the write (in the same session where the backend can), so that
    /// a writer that fell behind does not put an older head over a newer one.
    fn replace_log_head(
        &self,
        record: &[u8],
        allow: &HeadCheck<'_>,
    ) -> Result<HeadWrite, BackendError> {
        if let Err(reason) = allow(self.read_log_head()?.as_deref()) {
            return Ok(HeadWrite::Refused(reason));
        }
        self.write_log_head(record).map(|()| HeadWrite::Written)
    }
}

/// Checks a signature from the hardware before anyone relies on it.
pub(crate) fn check_signature(
    public_key: &p256::PublicKey,
    digest: &[u8; 32],
    signature: &Signature,
) -> Result<(), BackendError> {
    use p256::ecdsa::{VerifyingKey, signature::hazmat::PrehashVerifier};
    VerifyingKey::from(public_key)
        .verify_prehash(digest, signature)
        .map_err(|_| BackendError::SignatureMismatch)
}

/// Checks a hardware signature over `message` (the hardware signed its SHA-256) with `ring`:
/// constant-time P-256 and several times faster here than pure-Rust `p256`, whose prehash
/// verify the hot path cannot afford. `ring` hashes the message itself (it has no prehash
/// verify), so this is for callers that still hold the message.
pub(crate) fn check_message_signature(
    public_key: &p256::PublicKey,
    message: &[u8],
    signature: &Signature,
) -> Result<(), BackendError> {
    use p256::elliptic_curve::sec1::ToEncodedPoint;
    let point = public_key.to_encoded_point(false);
    ring::signature::UnparsedPublicKey::new(
        &ring::signature::ECDSA_P256_SHA256_FIXED,
        point.as_bytes(),
    )
    .verify(message, &signature.to_bytes())
    .map_err(|_| BackendError::SignatureMismatch)
}

/// A stand-in for commands that read the log and sign nothing (`log vkey`, `export`, `log
/// check`): every hardware call answers UNAVAILABLE instead of opening a token.
pub fn offline() -> std::sync::Arc<dyn Backend> {
    std::sync::Arc::new(Offline)
}

struct Offline;

impl Offline {
    fn refuse<T>(&self) -> Result<T, BackendError> {
        Err(BackendError::Unavailable(
            "this command opens no hardware".into(),
        ))
    }
}

impl Backend for Offline {
    fn kind(&self) -> BackendKind {
        BackendKind::Pkcs11
    }
    fn create_key(&self, _: &str) -> Result<HardwareKey, BackendError> {
        self.refuse()
    }
    fn adopt_key(&self, _: &KeySelector) -> Result<HardwareKey, BackendError> {
        self.refuse()
    }
    fn sign_digest(&self, _: &HardwareKey, _: &[u8; 32]) -> Result<Signature, BackendError> {
        self.refuse()
    }
    fn key_evidence(&self, _: &KeyRef) -> Result<KeyEvidence, BackendError> {
        self.refuse()
    }
    fn destroy_key(&self, _: &KeyRef) -> Result<(), BackendError> {
        self.refuse()
    }
    fn device_key(&self, _: bool) -> Result<HardwareKey, BackendError> {
        self.refuse()
    }
    fn health(&self) -> Result<(), BackendError> {
        self.refuse()
    }
}
