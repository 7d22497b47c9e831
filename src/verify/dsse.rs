//! DSSE v1 (FORMAT.md §2): the pre-authentication encoding and the signature check.
//!
//! The verifier signs nothing and re-serialises nothing: it rebuilds the PAE from the payload
//! type and the *decoded* payload bytes exactly as carried in the bundle.

use p256::ecdsa::{Signature, VerifyingKey};

/// The only payload type actseal envelopes carry: an in-toto Statement.
pub(crate) const IN_TOTO_PAYLOAD_TYPE: &str = "application/vnd.in-toto+json";

/// A decoded DSSE envelope with its single signature.
#[derive(Debug, Clone)]
pub(crate) struct Envelope {
    pub(crate) payload_type: String,
    /// The decoded payload: these are the bytes that were signed (inside the PAE).
    pub(crate) payload: Vec<u8>,
    /// The signature's `keyid` hint, as given.
    pub(crate) keyid: String,
    /// The DER `Ecdsa-Sig-Value`, decoded.
    pub(crate) signature: Signature,
    /// The signature's DER bytes exactly as carried (they are part of the log entry).
    pub(crate) signature_der: Vec<u8>,
}

/// `PAE(type, body) = "DSSEv1" SP LEN(type) SP type SP LEN(body) SP body`.
///
/// `LEN` is the byte length in ASCII decimal; `usize` formatting never adds leading zeros.
pub(crate) fn pae(payload_type: &str, body: &[u8]) -> Vec<u8> {
    let header = format!(
        "DSSEv1 {} {} {} ",
        payload_type.len(),
        payload_type,
        body.len()
    );
    let mut out = Vec::with_capacity(header.len().saturating_add(body.len()));
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(body);
    out
}

/// Verifies the envelope's signature: ECDSA P-256 over SHA-256(PAE).
///
/// High-S signatures are accepted, as §1 requires (the hardware does not normalise S).
pub(crate) fn verify(envelope: &Envelope, key: &VerifyingKey) -> Result<(), String> {
    verify_parts(
        &envelope.payload_type,
        &envelope.payload,
        &envelope.signature,
        key,
    )
}

/// [`verify`] for a payload and signature held apart from an [`Envelope`].
pub(crate) fn verify_parts(
    payload_type: &str,
    payload: &[u8],
    signature: &Signature,
    key: &VerifyingKey,
) -> Result<(), String> {
    if super::ecdsa::verify(key, &pae(payload_type, payload), signature) {
        Ok(())
    } else {
        Err("the ECDSA P-256 signature over the DSSE PAE does not verify".to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The DSSE specification's own test vector (FORMAT.md §2).
    #[test]
    fn pae_matches_the_dsse_vector() {
        let got = pae("http://example.com/HelloWorld", b"hello world");
        assert_eq!(
            got,
            b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
        );
        // FORMAT.md §2 once said "46-byte"; the string is 54 bytes long.
        assert_eq!(got.len(), 54);
    }

    #[test]
    fn pae_of_empty_type_and_body() {
        assert_eq!(pae("", b""), b"DSSEv1 0  0 ");
    }

    #[test]
    fn pae_counts_bytes_not_chars() {
        // "é" is two bytes in UTF-8; the payload type length is its byte length.
        assert_eq!(pae("é", b"\x00\xff"), b"DSSEv1 2 \xc3\xa9 2 \x00\xff");
    }
}
