//! The signed documents actseal produces: DSSE envelopes, receipts, lineage statements and
//! the proof bundle that carries them (byte layout in `docs/FORMAT.md`).

pub mod batch;
pub mod bundle;
pub mod dsse;
pub mod lineage;
pub mod receipt;

use sha2::{Digest, Sha256};

/// The in-toto Statement v1 type URI.
pub const IN_TOTO_STATEMENT_V1: &str = "https://in-toto.io/Statement/v1";
/// DSSE payload type of in-toto statements.
pub const IN_TOTO_PAYLOAD_TYPE: &str = "application/vnd.in-toto+json";

/// The DER SubjectPublicKeyInfo of every P-256 key up to its uncompressed point: SEQUENCE {
/// SEQUENCE { id-ecPublicKey, prime256v1 }, BIT STRING (66 bytes, 0 unused bits) }.
const P256_SPKI_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];

/// SubjectPublicKeyInfo DER of a P-256 public key. Written out rather than encoded, so it has
/// no failure path (and no fallback value that would be signed in its place).
pub fn spki_der(public_key: &p256::PublicKey) -> Vec<u8> {
    use p256::elliptic_curve::sec1::ToEncodedPoint;
    let point = public_key.to_encoded_point(false);
    let mut der = P256_SPKI_PREFIX.to_vec();
    der.extend_from_slice(point.as_bytes());
    der
}

/// A key's id: hex SHA-256 of its SubjectPublicKeyInfo DER.
pub fn key_id(public_key: &p256::PublicKey) -> String {
    hex::encode(Sha256::digest(spki_der(public_key)))
}

/// The current time as RFC 3339 UTC with second precision, as receipts carry it.
pub fn now_rfc3339() -> String {
    let now = time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .unwrap_or_else(|_| time::OffsetDateTime::now_utc());
    now.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".into())
}

#[cfg(test)]
mod tests {
    use spki::EncodePublicKey;

    #[test]
    fn spki_is_the_standard_encoding() {
        let key = p256::SecretKey::from_slice(&[7u8; 32]).map(|k| k.public_key());
        let Ok(key) = key else {
            panic!("a valid scalar");
        };
        let standard = key.to_public_key_der().map(|d| d.as_bytes().to_vec());
        assert_eq!(standard.ok(), Some(super::spki_der(&key)));
    }
}
