//! Checkpoint verification (FORMAT.md §10): a C2SP `signed-note` whose text is a C2SP
//! `tlog-checkpoint`, signed with the note ECDSA signature type (0x02).
//!
//! Parsing is strict: anything that is not exactly the format is refused, and no input panics.
//! Written apart from the daemon's `ledger::checkpoint`.

#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use p256::ecdsa::{Signature, VerifyingKey};
use p256::pkcs8::DecodePublicKey;
use sha2::{Digest, Sha256};

/// An actseal checkpoint is a few hundred bytes, but C2SP signed-note sets no size limit and
/// 100 post-quantum signatures (ML-DSA-87: 4.6 KiB each, base64) make about 650 KiB; larger
/// input is refused before parsing.
pub const MAX_NOTE_BYTES: usize = 1024 * 1024;

/// signed-note asks verifiers to accept at least 16 signatures and to bound them.
pub const MAX_SIGNATURES: usize = 100;

/// The em dash (U+2014) and space that open a signature line.
const SIG_PREFIX: &str = "\u{2014} ";

/// Why a checkpoint note was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckpointError {
    /// The note is not a well-formed signed note or checkpoint; the string says where.
    #[error("malformed checkpoint note: {0}")]
    Malformed(String),
    /// The public key given is not a DER P-256 SubjectPublicKeyInfo.
    #[error("the log key is not a DER P-256 SubjectPublicKeyInfo")]
    InvalidKey,
    /// No signature line carries this key's name and key id.
    #[error("no signature by key {key_name:?} (key id {key_id})")]
    NoSignature { key_name: String, key_id: String },
    /// A signature line for this key is there but does not verify.
    #[error("the signature by key {key_name:?} does not verify")]
    BadSignature { key_name: String },
}

fn malformed(detail: impl Into<String>) -> CheckpointError {
    CheckpointError::Malformed(detail.into())
}

/// One signature line of a note, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoteSignature {
    /// The key name as written on the line.
    pub key_name: String,
    /// The first four bytes of the decoded signature: the key id.
    pub key_id: [u8; 4],
    /// The rest: for ECDSA keys, the DER signature.
    pub signature: Vec<u8>,
}

/// A checkpoint note, parsed. Nothing in it is trusted until [`verify_checkpoint`] says so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedCheckpoint {
    /// The log's origin line.
    pub origin: String,
    /// The tree size.
    pub size: u64,
    /// The RFC 9162 root hash at that size.
    pub root: [u8; 32],
    /// The extension lines after the root (C2SP tlog-checkpoint allows them; actseal writes
    /// none), in order.
    pub extensions: Vec<String>,
    /// Every signature line, in order.
    pub signatures: Vec<NoteSignature>,
}

/// The signed-note ECDSA key id: the first four bytes of SHA-256 of the SPKI DER.
fn ecdsa_key_id(spki_der: &[u8]) -> [u8; 4] {
    let digest = Sha256::digest(spki_der);
    let mut id = [0u8; 4];
    for (out, byte) in id.iter_mut().zip(digest.iter()) {
        *out = *byte;
    }
    id
}

/// Splits a note into its text (with its final newline) and the signature lines, as
/// signed-note says: the text ends at the last blank line.
fn split_note(note: &str) -> Result<(&str, &str), CheckpointError> {
    let at = note
        .rfind("\n\n")
        .ok_or_else(|| malformed("no blank line between the text and the signatures"))?;
    let text = note
        .get(..at.saturating_add(1))
        .ok_or_else(|| malformed("bad text boundary"))?;
    let sigs = note
        .get(at.saturating_add(2)..)
        .ok_or_else(|| malformed("bad signature boundary"))?;
    Ok((text, sigs))
}

fn parse_signature_line(line: &str) -> Result<NoteSignature, CheckpointError> {
    let rest = line.strip_prefix(SIG_PREFIX).ok_or_else(|| {
        malformed(format!(
            "signature line {line:?} does not start with \"— \""
        ))
    })?;
    let (name, b64) = rest
        .split_once(' ')
        .ok_or_else(|| malformed(format!("signature line {line:?} has no signature")))?;
    if name.is_empty() || name.chars().any(|c| c.is_whitespace() || c == '+') {
        return Err(malformed(format!("invalid key name {name:?}")));
    }
    let blob = STANDARD
        .decode(b64)
        .map_err(|_| malformed(format!("signature of {name:?} is not base64")))?;
    let (id, signature) = blob
        .split_first_chunk::<4>()
        .ok_or_else(|| malformed(format!("signature of {name:?} is too short")))?;
    if signature.is_empty() {
        return Err(malformed(format!("signature of {name:?} is empty")));
    }
    Ok(NoteSignature {
        key_name: name.to_string(),
        key_id: *id,
        signature: signature.to_vec(),
    })
}

/// The checkpoint text: origin, size, root, and any extension lines (each non-empty).
type Body = (String, u64, [u8; 32], Vec<String>);

/// Parses the checkpoint text: the three lines origin, size, root, then extension lines.
fn parse_body(text: &str) -> Result<Body, CheckpointError> {
    let body = text
        .strip_suffix('\n')
        .ok_or_else(|| malformed("the note text does not end in a newline"))?;
    let lines: Vec<&str> = body.split('\n').collect();
    let [origin, size, root, extensions @ ..] = lines.as_slice() else {
        return Err(malformed(format!(
            "the checkpoint text has {} lines, expected at least 3 (origin, size, root)",
            lines.len()
        )));
    };
    if extensions.iter().any(|line| line.is_empty()) {
        return Err(malformed("empty extension line"));
    }
    if origin.is_empty() {
        return Err(malformed("empty origin"));
    }
    let size_ok = !size.is_empty()
        && size.bytes().all(|b| b.is_ascii_digit())
        && (*size == "0" || !size.starts_with('0'));
    if !size_ok {
        return Err(malformed(format!(
            "tree size {size:?} is not a decimal number"
        )));
    }
    let size: u64 = size
        .parse()
        .map_err(|_| malformed(format!("tree size {size:?} does not fit in 64 bits")))?;
    let root_bytes = STANDARD
        .decode(root)
        .map_err(|_| malformed(format!("root hash {root:?} is not base64")))?;
    let root: [u8; 32] = root_bytes
        .try_into()
        .map_err(|_| malformed("root hash is not 32 bytes"))?;
    let extensions = extensions.iter().map(|line| line.to_string()).collect();
    Ok((origin.to_string(), size, root, extensions))
}

/// Parses a checkpoint note without checking any signature.
///
/// Refused: more than 1 MiB; not UTF-8; ASCII control characters other than newline (so
/// CRLF line ends too); no blank line before the signatures; a text without origin, size and
/// root lines or with an empty extension line after them; a size with a sign or
/// leading zeros; a root that is not canonical base64 of 32 bytes; no signature lines, or more
/// than 100; a signature line that is not `— <name> <base64>` with a key name free of spaces
/// and `+` and a signature of more than the 4-byte key id.
pub fn parse_checkpoint(note: &[u8]) -> Result<ParsedCheckpoint, CheckpointError> {
    parse(note).map(|(_, parsed)| parsed)
}

/// Parses and returns the signed text alongside.
fn parse(note: &[u8]) -> Result<(&str, ParsedCheckpoint), CheckpointError> {
    if note.len() > MAX_NOTE_BYTES {
        return Err(malformed(format!(
            "note longer than {MAX_NOTE_BYTES} bytes"
        )));
    }
    let note = std::str::from_utf8(note).map_err(|_| malformed("note is not UTF-8"))?;
    if note.bytes().any(|b| b < 0x20 && b != b'\n') {
        return Err(malformed("note contains an ASCII control character"));
    }
    let (text, sigs) = split_note(note)?;
    let sig_lines = sigs
        .strip_suffix('\n')
        .ok_or_else(|| malformed("the signatures do not end in a newline"))?;
    if sig_lines.is_empty() {
        return Err(malformed("no signature lines"));
    }
    let signatures = sig_lines
        .split('\n')
        .map(parse_signature_line)
        .collect::<Result<Vec<_>, _>>()?;
    if signatures.len() > MAX_SIGNATURES {
        return Err(malformed(format!("more than {MAX_SIGNATURES} signatures")));
    }
    let (origin, size, root, extensions) = parse_body(text)?;
    Ok((
        text,
        ParsedCheckpoint {
            origin,
            size,
            root,
            extensions,
            signatures,
        },
    ))
}

/// Splits a signed note into its text (the signed bytes, with the final newline) and its
/// parsed checkpoint, checking no signature: what cosignatures are verified over.
pub fn parse_with_text(note: &[u8]) -> Result<(&str, ParsedCheckpoint), CheckpointError> {
    parse(note)
}

/// Verifies a checkpoint note signed by the log key `key_name` whose public key is the P-256
/// SubjectPublicKeyInfo `spki_der`, and returns it parsed.
///
/// As signed-note requires, lines from other keys (another name or another key id) are
/// ignored; every line naming this key and its id must verify (ECDSA P-256, SHA-256 of the note
/// text, DER signature), and there must be at least one. Whether the origin is the expected log
/// is for the caller to compare.
pub fn verify_checkpoint(
    note: &[u8],
    key_name: &str,
    spki_der: &[u8],
) -> Result<ParsedCheckpoint, CheckpointError> {
    let key =
        VerifyingKey::from_public_key_der(spki_der).map_err(|_| CheckpointError::InvalidKey)?;
    let key_id = ecdsa_key_id(spki_der);
    let (text, parsed) = parse(note)?;
    let mut found = false;
    for line in &parsed.signatures {
        if line.key_name != key_name || line.key_id != key_id {
            continue;
        }
        found = true;
        let bad = || CheckpointError::BadSignature {
            key_name: key_name.to_string(),
        };
        let signature = Signature::from_der(&line.signature).map_err(|_| bad())?;
        if !super::ecdsa::verify(&key, text.as_bytes(), &signature) {
            return Err(bad());
        }
    }
    if !found {
        return Err(CheckpointError::NoSignature {
            key_name: key_name.to_string(),
            key_id: hex::encode(key_id),
        });
    }
    Ok(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Real checkpoints from Sigstore's Rekor and the Pixel 6 transparency log, with their
    // log keys, as used in transparency-dev/formats note/note_verifier_test.go: evidence that
    // this verifier reads ECDSA notes the way the witness ecosystem writes them.
    const REKOR_SPKI: &str = "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE2G2Y+2tabdTV5BcGiBIx0a9fAFwrkBbmLSGtks4L3qX6yYY0zufBnhC8Ur/iy55GhWP/9A/bY2LhC30M9+RYtw==";
    const REKOR_NOTE: &str = "Rekor\n798034\nf+7CoKgXKE/tNys9TTXcr/ad6U/K3xvznmzew9y6SP0=\n\n\u{2014} rekor.sigstore.dev wNI9ajBEAiARInWIWyCdyG27CO6LPnPekyw20qO0YJfoaPaowGp/XgIgc+qEHS3+GKVClgqq20uDLet7MCoTURUCRdxwWBHHufk=\n";
    const PIXEL_SPKI: &str = "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE37jHQmTXJPC8sUj0Dg0N0ZlxfRqJZV1YzlclXLQzhVYPcC/JblDoez0DSZwOSlShiCf4oo83MULQfec3erolDw==";
    const PIXEL_NOTE: &str = "DEFAULT\n10\nbsWRucJU5xJPHb5eBdOm6+DM+VelCZBuvtI3sHERJ9Y=\n\n\u{2014} pixel6_transparency_log kcFuMDBFAiEAhqMAP8P6qf6QxtUJhzMhbN+MbZ9dwfUHzGQJmffJHtoCIGD0cNe47dHWBoPwYdgBCepB06/+g5O1FmYjXl06owL4\n";

    fn der(b64: &str) -> Vec<u8> {
        STANDARD.decode(b64).unwrap_or_default()
    }

    #[test]
    fn verifies_rekor_and_pixel_checkpoints() {
        let rekor = verify_checkpoint(
            REKOR_NOTE.as_bytes(),
            "rekor.sigstore.dev",
            &der(REKOR_SPKI),
        );
        assert!(
            matches!(&rekor, Ok(c) if c.origin == "Rekor" && c.size == 798034),
            "{rekor:?}"
        );
        let pixel = verify_checkpoint(
            PIXEL_NOTE.as_bytes(),
            "pixel6_transparency_log",
            &der(PIXEL_SPKI),
        );
        assert!(matches!(&pixel, Ok(c) if c.size == 10), "{pixel:?}");
        // Another name with the right key id is not this key.
        assert!(matches!(
            verify_checkpoint(
                REKOR_NOTE.as_bytes(),
                "bananas.sigstore.dev",
                &der(REKOR_SPKI)
            ),
            Err(CheckpointError::NoSignature { .. })
        ));
        // The right name with another key (so another key id) is not this key either.
        assert!(matches!(
            verify_checkpoint(
                REKOR_NOTE.as_bytes(),
                "rekor.sigstore.dev",
                &der(PIXEL_SPKI)
            ),
            Err(CheckpointError::NoSignature { .. })
        ));
        let altered = REKOR_NOTE.replace("798034", "798035");
        assert!(matches!(
            verify_checkpoint(altered.as_bytes(), "rekor.sigstore.dev", &der(REKOR_SPKI)),
            Err(CheckpointError::BadSignature { .. })
        ));
    }

    #[test]
    fn body_rules() {
        let root = "f+7CoKgXKE/tNys9TTXcr/ad6U/K3xvznmzew9y6SP0=";
        assert!(parse_body(&format!("o\n0\n{root}\n")).is_ok());
        // Extension lines are allowed (C2SP tlog-checkpoint), empty ones are not.
        assert!(
            matches!(parse_body(&format!("o\n1\n{root}\next\nx y\n")), Ok((_, _, _, e)) if e == ["ext", "x y"])
        );
        for bad in [
            format!("o\n01\n{root}\n"),
            format!("o\n+1\n{root}\n"),
            format!("o\n-1\n{root}\n"),
            format!("o\n\n{root}\n"),
            format!("o\n18446744073709551616\n{root}\n"),
            format!("\n1\n{root}\n"),
            format!("o\n1\n{root}"),
            format!("o\n1\n{root}\n\next\n"),
            "o\n1\nAAAA\n".to_string(),
            format!("o\n1\n{}\n", root.trim_end_matches('=')),
            format!("o\n1\n{}\n", root.replace("SP0=", "SP1=")),
        ] {
            assert!(parse_body(&bad).is_err(), "{bad:?}");
        }
    }
}
