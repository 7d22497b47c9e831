//! The bytes of a log entry: a DSSE envelope in a length-prefixed binary form, so the leaf
//! hash is computed over exact signed bytes with no JSON canonicalisation.

use base64::{Engine, engine::general_purpose::STANDARD as B64};

use crate::proof::dsse::Envelope;

fn put(out: &mut Vec<u8>, field: &[u8]) {
    // Every field is far below 4 GiB (the daemon bounds documents and contexts).
    out.extend_from_slice(&u32::try_from(field.len()).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(field);
}

/// `u32be(len(type)) || type || u32be(len(payload)) || payload || u32be(len(sig)) || sig`,
/// with the payload and signature decoded from the envelope's base64.
pub fn encode(envelope: &Envelope) -> Result<Vec<u8>, base64::DecodeError> {
    let payload = envelope.payload_bytes()?;
    let mut out = Vec::with_capacity(payload.len() + 128);
    put(&mut out, envelope.payload_type.as_bytes());
    put(&mut out, &payload);
    let signature = match envelope.signatures.first() {
        Some(s) => B64.decode(&s.sig)?,
        None => Vec::new(),
    };
    put(&mut out, &signature);
    Ok(out)
}
