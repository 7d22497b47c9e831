//! ECDSA P-256 with SHA-256 verification (FORMAT.md §1), done by `ring`.
//!
//! Every signature the verifier checks goes through [`verify`]. Keys and signatures are still
//! parsed by the RustCrypto types (`p256`), which decide what is well-formed; `ring` only does
//! the arithmetic, about four times faster than the pure-Rust code (its P-256 is
//! assembly-backed and constant-time), which is what lets `actseal verify` check tens of
//! thousands of bundles a second. Like `p256`, `ring` accepts high-S signatures, as §1
//! requires.

use p256::ecdsa::{Signature, VerifyingKey};
use ring::signature::{ECDSA_P256_SHA256_ASN1, UnparsedPublicKey};

/// True when `signature` is `key`'s ECDSA P-256 signature over SHA-256(`message`).
pub(crate) fn verify(key: &VerifyingKey, message: &[u8], signature: &Signature) -> bool {
    let point = key.to_encoded_point(false);
    let der = signature.to_der();
    UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, point.as_bytes())
        .verify(message, der.as_bytes())
        .is_ok()
}

#[cfg(test)]
mod tests {
    use p256::ecdsa::SigningKey;
    use p256::ecdsa::signature::{Signer, Verifier};

    use super::*;

    /// `ring` and `p256` agree on good, high-S and altered signatures.
    #[test]
    fn agrees_with_p256() {
        let key = SigningKey::from_bytes(&[7u8; 32].into()).unwrap_or_else(|_| unreachable!());
        let public = *key.verifying_key();
        for message in [&b""[..], b"actseal", &[0u8; 300]] {
            let sig: Signature = key.sign(message);
            let high = sig.normalize_s().map_or_else(
                || {
                    let (r, s) = sig.split_scalars();
                    Signature::from_scalars(r, -*s).unwrap_or_else(|_| unreachable!())
                },
                |_| sig,
            );
            for candidate in [sig, high] {
                assert!(public.verify(message, &candidate).is_ok());
                assert!(verify(&public, message, &candidate));
                assert!(!verify(&public, b"other", &candidate));
            }
        }
    }
}
