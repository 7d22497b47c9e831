//! DSSE v1 envelopes: the signing side. (The verifier has its own, independent code.)

use base64::{Engine, engine::general_purpose::STANDARD as B64};
use p256::ecdsa::Signature;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// DSSE's pre-authentication encoding: `"DSSEv1" SP LEN(type) SP type SP LEN(body) SP body`.
pub fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload_type.len() + payload.len() + 32);
    out.extend_from_slice(b"DSSEv1 ");
    out.extend_from_slice(payload_type.len().to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(payload_type.as_bytes());
    out.push(b' ');
    out.extend_from_slice(payload.len().to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(payload);
    out
}

/// The digest the hardware signs for a payload: SHA-256 of its PAE.
pub fn signing_digest(payload_type: &str, payload: &[u8]) -> [u8; 32] {
    Sha256::digest(pae(payload_type, payload)).into()
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct EnvelopeSignature {
    pub keyid: String,
    /// Base64 of the DER ECDSA signature.
    pub sig: String,
}

/// A DSSE envelope with one signature.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Envelope {
    pub payload_type: String,
    /// Base64 of the exact signed payload bytes.
    pub payload: String,
    pub signatures: Vec<EnvelopeSignature>,
}

impl Envelope {
    /// Wraps a payload and the signature made over its [`signing_digest`].
    pub fn new(payload_type: &str, payload: &[u8], keyid: &str, signature: &Signature) -> Self {
        Envelope {
            payload_type: payload_type.to_owned(),
            payload: B64.encode(payload),
            signatures: vec![EnvelopeSignature {
                keyid: keyid.to_owned(),
                sig: B64.encode(signature.to_der().as_bytes()),
            }],
        }
    }

    /// The payload bytes as signed.
    pub fn payload_bytes(&self) -> Result<Vec<u8>, base64::DecodeError> {
        B64.decode(&self.payload)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pae_matches_the_dsse_specification_vector() {
        assert_eq!(
            pae("http://example.com/HelloWorld", b"hello world"),
            b"DSSEv1 29 http://example.com/HelloWorld 11 hello world".to_vec()
        );
    }

    #[test]
    fn pae_of_empty_inputs() {
        assert_eq!(pae("", b""), b"DSSEv1 0  0 ".to_vec());
    }
}
