//! Signed checkpoints (FORMAT.md §10): the C2SP `tlog-checkpoint` note text, signed as a C2SP
//! `signed-note` with the ECDSA signature type (0x02) by the log key in hardware.
//!
//! TPMs and most HSMs cannot sign Ed25519, so the note uses the ECDSA type that the
//! transparency-dev witness and Sigstore's Rekor use: an ASN.1 DER ECDSA P-256 signature over
//! SHA-256 of the note text, with a key id taken from the key's DER SubjectPublicKeyInfo.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use p256::ecdsa::signature::hazmat::PrehashVerifier;
use p256::ecdsa::{Signature, VerifyingKey};
use p256::pkcs8::DecodePublicKey;
use sha2::{Digest, Sha256};

use super::merkle::Hash;

/// Why a checkpoint could not be made or signed.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// The origin line must be non-empty text without control characters (it is one line).
    #[error("checkpoint origin {0:?} is empty or contains control characters")]
    InvalidOrigin(String),
    /// signed-note key names are non-empty, without spaces, `+` or control characters.
    #[error("note key name {0:?} is empty or contains a space, '+' or a control character")]
    InvalidKeyName(String),
    /// The key given is not a P-256 SubjectPublicKeyInfo.
    #[error("the log key is not a DER P-256 SubjectPublicKeyInfo: {0}")]
    InvalidKey(String),
    /// The signer returned a signature the log key does not verify: the wrong key signed, or
    /// the hardware misbehaved. Publishing it would make a checkpoint nobody can verify.
    #[error("the signature returned does not verify under the log key")]
    BadSignature,
}

/// The head of the log at one size: what a checkpoint commits to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    origin: String,
    size: u64,
    root: Hash,
}

/// The signed-note ECDSA signature type byte. It appears nowhere in the note; it is recorded
/// here because C2SP signed-note assigns it and FORMAT.md names it.
pub const SIGNATURE_TYPE_ECDSA: u8 = 0x02;

/// The signed-note key id of an ECDSA (type 0x02) key: the first four bytes of SHA-256 of its
/// DER SubjectPublicKeyInfo.
///
/// C2SP signed-note recommends `SHA-256(name || 0x0A || type || key)[:4]` in general, but says
/// for type 0x02 that the key id *is* the truncated SHA-256 of the SPKI DER, as the
/// transparency-dev witness and Rekor compute it; following that keeps our notes verifiable by
/// their tools. The key name therefore does not enter the id.
pub fn key_id(spki_der: &[u8]) -> [u8; 4] {
    let digest = Sha256::digest(spki_der);
    [digest[0], digest[1], digest[2], digest[3]]
}

fn is_valid_key_name(name: &str) -> bool {
    !name.is_empty()
        && !name
            .chars()
            .any(|c| c.is_whitespace() || c == '+' || c.is_control())
}

impl Checkpoint {
    /// A checkpoint of the tree of `size` leaves whose MTH is `root`. The origin (the log's
    /// name, conventionally also the log key's name) must be one non-empty line.
    pub fn new(origin: impl Into<String>, size: u64, root: Hash) -> Result<Self, CheckpointError> {
        let origin = origin.into();
        if origin.is_empty() || origin.chars().any(char::is_control) {
            return Err(CheckpointError::InvalidOrigin(origin));
        }
        Ok(Checkpoint { origin, size, root })
    }

    /// The log's origin line.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The number of leaves.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The RFC 9162 root hash of the first `size` leaves.
    pub fn root(&self) -> &Hash {
        &self.root
    }

    /// The note text: `<origin>\n<size>\n<base64 root>\n`. These are exactly the signed bytes.
    pub fn body(&self) -> String {
        format!(
            "{}\n{}\n{}\n",
            self.origin,
            self.size,
            STANDARD.encode(self.root)
        )
    }

    /// The signed note: the body, a blank line, and one signature line
    /// `— <key_name> base64(key_id || DER signature)`.
    ///
    /// `sign` receives SHA-256 of the body, because hardware (PKCS#11 `CKM_ECDSA`, TPM2_Sign)
    /// signs a digest, not a message. The signature it returns is checked against `spki_der`
    /// before the note is returned, so a misconfigured key never yields a published checkpoint
    /// nobody can verify.
    pub fn signed_note<E>(
        &self,
        key_name: &str,
        spki_der: &[u8],
        sign: impl FnOnce(&[u8; 32]) -> Result<Signature, E>,
    ) -> Result<String, E>
    where
        E: From<CheckpointError>,
    {
        if !is_valid_key_name(key_name) {
            return Err(CheckpointError::InvalidKeyName(key_name.to_string()).into());
        }
        let key = VerifyingKey::from_public_key_der(spki_der)
            .map_err(|e| CheckpointError::InvalidKey(e.to_string()))?;
        let body = self.body();
        let digest: [u8; 32] = Sha256::digest(body.as_bytes()).into();
        let signature = sign(&digest)?;
        key.verify_prehash(&digest, &signature)
            .map_err(|_| CheckpointError::BadSignature)?;

        let mut blob = key_id(spki_der).to_vec();
        blob.extend_from_slice(signature.to_der().as_bytes());
        Ok(format!(
            "{body}\n\u{2014} {key_name} {}\n",
            STANDARD.encode(blob)
        ))
    }
}

impl Checkpoint {
    /// The signed note, where `sign` receives the body (the signed message) and returns a
    /// signature it has already checked against the key (`signed_note` checks once more).
    pub fn signed_note_checked<E>(
        &self,
        key_name: &str,
        spki_der: &[u8],
        sign: impl FnOnce(&[u8]) -> Result<Signature, E>,
    ) -> Result<String, E>
    where
        E: From<CheckpointError>,
    {
        if !is_valid_key_name(key_name) {
            return Err(CheckpointError::InvalidKeyName(key_name.to_string()).into());
        }
        let body = self.body();
        let signature = sign(body.as_bytes())?;
        let mut blob = key_id(spki_der).to_vec();
        blob.extend_from_slice(signature.to_der().as_bytes());
        Ok(format!(
            "{body}\n\u{2014} {key_name} {}\n",
            STANDARD.encode(blob)
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use p256::ecdsa::SigningKey;
    use p256::ecdsa::signature::hazmat::PrehashSigner;
    use p256::pkcs8::EncodePublicKey;

    fn key() -> SigningKey {
        SigningKey::from_bytes(&Sha256::digest(b"actseal checkpoint unit test")).unwrap()
    }

    #[test]
    fn body_format() {
        let c = Checkpoint::new("example.com/log", 20852163, [0xab; 32]).unwrap();
        assert_eq!(
            c.body(),
            "example.com/log\n20852163\nq6urq6urq6urq6urq6urq6urq6urq6urq6urq6urq6s=\n"
        );
        assert_eq!(
            Checkpoint::new("x", 0, [0; 32])
                .unwrap()
                .body()
                .lines()
                .nth(1),
            Some("0")
        );
    }

    #[test]
    fn rejects_bad_origin_and_key_name() {
        assert!(Checkpoint::new("", 1, [0; 32]).is_err());
        assert!(Checkpoint::new("a\nb", 1, [0; 32]).is_err());
        let c = Checkpoint::new("log", 1, [0; 32]).unwrap();
        let spki = key().verifying_key().to_public_key_der().unwrap();
        for name in ["", "a b", "a+b", "a\tb"] {
            let r: Result<String, CheckpointError> = c.signed_note(name, spki.as_bytes(), |d| {
                Ok(key().sign_prehash(d).unwrap())
            });
            assert!(
                matches!(r, Err(CheckpointError::InvalidKeyName(_))),
                "{name:?}"
            );
        }
    }

    #[test]
    fn rejects_signature_by_another_key() {
        let c = Checkpoint::new("log", 1, [0; 32]).unwrap();
        let other = SigningKey::from_bytes(&Sha256::digest(b"other")).unwrap();
        let spki = key().verifying_key().to_public_key_der().unwrap();
        let r: Result<String, CheckpointError> = c.signed_note("log", spki.as_bytes(), |d| {
            Ok(other.sign_prehash(d).unwrap())
        });
        assert!(matches!(r, Err(CheckpointError::BadSignature)));
    }

    #[test]
    fn key_id_matches_rekor() {
        // Sigstore Rekor's log key and its published note key hash c0d23d6a (as in
        // transparency-dev/formats note/note_verifier_test.go).
        let spki = STANDARD
            .decode("MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE2G2Y+2tabdTV5BcGiBIx0a9fAFwrkBbmLSGtks4L3qX6yYY0zufBnhC8Ur/iy55GhWP/9A/bY2LhC30M9+RYtw==")
            .unwrap();
        assert_eq!(hex::encode(key_id(&spki)), "c0d23d6a");
    }
}
