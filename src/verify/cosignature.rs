//! Witness cosignatures (FORMAT.md §14): C2SP `tlog-cosignature` `cosignature/v1` lines on a
//! checkpoint note, and the C2SP vkey form `name+hash+base64(type || key)` of witness keys.
//!
//! A cosignature is an Ed25519 signature by the witness key over
//! `cosignature/v1\ntime <seconds>\n` followed by the checkpoint's note text; its signature line
//! is `— <witness name> base64(key id || 8-byte big-endian time || 64-byte signature)`, with the
//! key id SHA-256(name || 0x0A || 0x04 || public key)[:4].

#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::{Signature, Verifier, VerifyingKey};
use sha2::{Digest, Sha256};

use super::checkpoint::{CheckpointError, NoteSignature, parse_with_text};

/// The signed-note signature type of `cosignature/v1`.
pub const SIGNATURE_TYPE_COSIGNATURE: u8 = 0x04;
/// The signed-note signature type of a plain Ed25519 note key.
pub const SIGNATURE_TYPE_ED25519: u8 = 0x01;
/// The signed-note signature type of an ECDSA note key (the actseal log key).
pub const SIGNATURE_TYPE_ECDSA: u8 = 0x02;

/// Why a witness key or a cosignature was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CosignatureError {
    /// The vkey is not `name+hash+base64`, or its hash is not its key id.
    #[error("invalid verifier key {0:?}: {1}")]
    InvalidKey(String, String),
    /// The note is not a checkpoint note.
    #[error(transparent)]
    Note(#[from] CheckpointError),
    /// No line of this witness's name and key id.
    #[error("no cosignature by witness {0:?}")]
    Missing(String),
    /// A line of this witness does not verify: the note or the line was altered.
    #[error("the cosignature by witness {0:?} does not verify")]
    Bad(String),
}

/// A verifier key of the C2SP vkey form, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoteKey {
    /// The key name (for a witness, a schema-less URL such as `witness.example.com/w1`).
    pub name: String,
    /// The signed-note key id.
    pub key_id: [u8; 4],
    /// The signature type byte (0x04 cosignature, 0x01 Ed25519, 0x02 ECDSA).
    pub kind: u8,
    /// The key after the type byte: 32 bytes (Ed25519), or a DER SPKI (ECDSA).
    pub key: Vec<u8>,
}

/// The signed-note key id SHA-256(name || 0x0A || type || key)[:4] (Ed25519 and cosignature
/// keys; ECDSA keys use the SPKI hash, see `ledger::checkpoint::key_id`).
pub fn key_id(name: &str, kind: u8, key: &[u8]) -> [u8; 4] {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update([b'\n', kind]);
    h.update(key);
    first_four(&h.finalize())
}

fn first_four(digest: &[u8]) -> [u8; 4] {
    let mut id = [0u8; 4];
    for (out, byte) in id.iter_mut().zip(digest) {
        *out = *byte;
    }
    id
}

/// The key id of a key of any of the three types.
fn id_of(name: &str, kind: u8, key: &[u8]) -> [u8; 4] {
    if kind == SIGNATURE_TYPE_ECDSA {
        first_four(&Sha256::digest(key))
    } else {
        key_id(name, kind, key)
    }
}

/// Writes a verifier key as `name+hex(key id)+base64(type || key)`.
pub fn format_vkey(name: &str, kind: u8, key: &[u8]) -> String {
    let mut blob = vec![kind];
    blob.extend_from_slice(key);
    format!(
        "{name}+{}+{}",
        hex::encode(id_of(name, kind, key)),
        STANDARD.encode(blob)
    )
}

/// Parses a verifier key `name+hash+base64(type || key)`; the hash must be the key id.
pub fn parse_vkey(vkey: &str) -> Result<NoteKey, CosignatureError> {
    let bad = |why: &str| CosignatureError::InvalidKey(vkey.to_string(), why.to_string());
    let mut parts = vkey.trim().splitn(3, '+');
    let (Some(name), Some(hash), Some(b64)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(bad("not name+hash+base64"));
    };
    if name.is_empty() || name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad("the name is empty or has spaces"));
    }
    let blob = STANDARD
        .decode(b64)
        .map_err(|_| bad("the key is not base64"))?;
    let (kind, key) = blob.split_first().ok_or_else(|| bad("the key is empty"))?;
    let fits = match *kind {
        SIGNATURE_TYPE_ED25519 | SIGNATURE_TYPE_COSIGNATURE => key.len() == 32,
        SIGNATURE_TYPE_ECDSA => !key.is_empty(),
        _ => false,
    };
    if !fits {
        return Err(bad(
            "not an Ed25519 (0x01), ECDSA (0x02) or cosignature (0x04) key",
        ));
    }
    let key_id = id_of(name, *kind, key);
    if hash != hex::encode(key_id) {
        return Err(bad("the hash is not the key's id"));
    }
    Ok(NoteKey {
        name: name.to_string(),
        key_id,
        kind: *kind,
        key: key.to_vec(),
    })
}

/// The bytes a `cosignature/v1` signs: the header lines, then the note text.
pub fn signed_message(note_text: &str, timestamp: u64) -> Vec<u8> {
    let mut message = format!("cosignature/v1\ntime {timestamp}\n").into_bytes();
    message.extend_from_slice(note_text.as_bytes());
    message
}

/// The signature line of a cosignature.
pub fn cosignature_line(name: &str, key_id: [u8; 4], timestamp: u64, signature: &[u8]) -> String {
    let mut blob = key_id.to_vec();
    blob.extend_from_slice(&timestamp.to_be_bytes());
    blob.extend_from_slice(signature);
    format!("\u{2014} {name} {}\n", STANDARD.encode(blob))
}

/// Checks one cosignature line against a witness key; returns its time.
fn check_line(
    text: &str,
    line: &NoteSignature,
    key: &VerifyingKey,
    name: &str,
) -> Result<u64, CosignatureError> {
    let bad = || CosignatureError::Bad(name.to_string());
    let (time, signature) = line.signature.split_first_chunk::<8>().ok_or_else(bad)?;
    let signature = Signature::from_slice(signature).map_err(|_| bad())?;
    let timestamp = u64::from_be_bytes(*time);
    key.verify(&signed_message(text, timestamp), &signature)
        .map_err(|_| bad())?;
    Ok(timestamp)
}

/// Verifies the cosignature of `witness` (a `cosignature/v1` key) on a checkpoint note and
/// returns its time (Unix seconds). Every line of the witness's name and key id must verify.
pub fn verify_cosignature(note: &[u8], witness: &NoteKey) -> Result<u64, CosignatureError> {
    let (text, parsed) = parse_with_text(note)?;
    verify_in(text, &parsed.signatures, witness)
}

/// [`verify_cosignature`] on a note already split.
pub fn verify_in(
    text: &str,
    signatures: &[NoteSignature],
    witness: &NoteKey,
) -> Result<u64, CosignatureError> {
    let key_bytes: [u8; 32] =
        witness.key.as_slice().try_into().map_err(|_| {
            CosignatureError::InvalidKey(witness.name.clone(), "not 32 bytes".into())
        })?;
    if witness.kind != SIGNATURE_TYPE_COSIGNATURE {
        return Err(CosignatureError::InvalidKey(
            witness.name.clone(),
            "not a cosignature/v1 (0x04) key".into(),
        ));
    }
    let key = VerifyingKey::from_bytes(&key_bytes)
        .map_err(|_| CosignatureError::InvalidKey(witness.name.clone(), "bad point".into()))?;
    let mut newest = None;
    for line in signatures {
        if line.key_name != witness.name || line.key_id != witness.key_id {
            continue;
        }
        let time = check_line(text, line, &key, &witness.name)?;
        newest = Some(newest.map_or(time, |t: u64| t.max(time)));
    }
    newest.ok_or_else(|| CosignatureError::Missing(witness.name.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::{Signer, SigningKey};

    fn witness() -> (SigningKey, NoteKey) {
        let signing = SigningKey::from_bytes(&[7u8; 32]);
        let vkey = format_vkey(
            "witness.example/w1",
            SIGNATURE_TYPE_COSIGNATURE,
            signing.verifying_key().as_bytes(),
        );
        let key = parse_vkey(&vkey);
        assert!(key.is_ok(), "{key:?}");
        (
            signing,
            key.unwrap_or_else(|_| NoteKey {
                name: String::new(),
                key_id: [0; 4],
                kind: 0,
                key: Vec::new(),
            }),
        )
    }

    const NOTE: &str = "example.com/log\n5\nq6urq6urq6urq6urq6urq6urq6urq6urq6urq6urq6s=\n\n\u{2014} example.com/log AAAAAEYwRAIgAQ==\n";

    #[test]
    fn cosign_and_verify() {
        let (signing, key) = witness();
        let text = "example.com/log\n5\nq6urq6urq6urq6urq6urq6urq6urq6urq6urq6urq6s=\n";
        let sig = signing.sign(&signed_message(text, 1700000000));
        let note = format!(
            "{NOTE}{}",
            cosignature_line(&key.name, key.key_id, 1700000000, &sig.to_bytes())
        );
        assert_eq!(verify_cosignature(note.as_bytes(), &key), Ok(1700000000));
        // Any altered byte of the line fails, as does another time.
        let line = note.lines().last().unwrap_or_default().to_string();
        let b64 = line.rsplit(' ').next().unwrap_or_default();
        let mut blob = STANDARD.decode(b64).unwrap_or_default();
        for at in [4usize, 11, 12, 50, 75] {
            if let Some(byte) = blob.get_mut(at) {
                *byte ^= 1;
            }
            let altered = note.replace(b64, &STANDARD.encode(&blob));
            assert!(
                matches!(
                    verify_cosignature(altered.as_bytes(), &key),
                    Err(CosignatureError::Bad(_))
                ),
                "byte {at}"
            );
            if let Some(byte) = blob.get_mut(at) {
                *byte ^= 1;
            }
        }
        assert!(matches!(
            verify_cosignature(NOTE.as_bytes(), &key),
            Err(CosignatureError::Missing(_))
        ));
    }

    #[test]
    fn vkey_rules() {
        let (_, key) = witness();
        let vkey = format_vkey(&key.name, key.kind, &key.key);
        assert_eq!(parse_vkey(&vkey), Ok(key.clone()));
        let wrong_hash = vkey.replacen(&hex::encode(key.key_id), "00000000", 1);
        assert!(parse_vkey(&wrong_hash).is_err());
        assert!(parse_vkey("name+0000").is_err());
        assert!(parse_vkey("+00000000+BA==").is_err());
    }

    /// The vector of C2SP tlog-cosignature / the Go sumdb note package: the key id of an
    /// Ed25519 note key is SHA-256(name || 0x0A || 0x01 || key)[:4].
    #[test]
    fn ed25519_vkey_of_go_sumdb() {
        // sum.golang.org's published verifier key.
        let vkey = "sum.golang.org+033de0ae+Ac4zctda0e5eza+HJyk9SxEdh+s3Ux18htTTAD8OuAn8";
        let key = parse_vkey(vkey);
        assert!(
            matches!(&key, Ok(k) if k.kind == SIGNATURE_TYPE_ED25519 && hex::encode(k.key_id) == "033de0ae"),
            "{key:?}"
        );
    }
}
