//! SHA-256 helpers: key ids and document digests are lowercase hex SHA-256 (FORMAT.md
//! conventions), and every comparison in the verifier is between such strings.

use sha2::{Digest, Sha256};

/// Lowercase hex SHA-256 of `bytes`.
pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The key id of a public key: hex SHA-256 of its SubjectPublicKeyInfo DER, as given.
pub(crate) fn key_id(spki_der: &[u8]) -> String {
    sha256_hex(spki_der)
}

/// True for exactly 64 lowercase hex digits, the only spelling FORMAT.md allows.
///
/// Uppercase is rejected on purpose: digests are compared as strings, and two spellings of one
/// digest would let the same statement be written two ways.
pub(crate) fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Fails unless `value` (the member `what`) is a 64-hex SHA-256.
pub(crate) fn require_sha256_hex(what: &str, value: &str) -> Result<(), String> {
    if is_sha256_hex(value) {
        Ok(())
    } else {
        Err(format!(
            "{what} must be 64 lowercase hex digits (a SHA-256), got {value:?}"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_of_empty_input() {
        assert_eq!(
            sha256_hex(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn hex_spelling_is_strict() {
        let good = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        assert!(is_sha256_hex(good));
        assert!(!is_sha256_hex(&good.to_uppercase()));
        assert!(!is_sha256_hex(&good[..63]));
        assert!(!is_sha256_hex(&format!("{good}0")));
        assert!(!is_sha256_hex(""));
    }
}
