//! The signed documents actseal produces: DSSE envelopes, receipts, lineage statements and
//! the proof bundle that carries them (byte layout in `docs/FORMAT.md`).

pub mod bundle;
pub mod dsse;
pub mod lineage;
pub mod receipt;

use sha2::{Digest, Sha256};
use spki::EncodePublicKey;

/// The in-toto Statement v1 type URI.
pub const IN_TOTO_STATEMENT_V1: &str = "https://in-toto.io/Statement/v1";
/// DSSE payload type of in-toto statements.
pub const IN_TOTO_PAYLOAD_TYPE: &str = "application/vnd.in-toto+json";

/// SubjectPublicKeyInfo DER of a P-256 public key.
pub fn spki_der(public_key: &p256::PublicKey) -> Vec<u8> {
    public_key
        .to_public_key_der()
        .map(|doc| doc.as_bytes().to_vec())
        // Encoding a valid P-256 point into a fixed-shape SPKI cannot fail.
        .unwrap_or_default()
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
