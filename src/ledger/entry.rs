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

/// The parts of an entry: payload type, payload bytes, DER signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryParts {
    pub payload_type: String,
    pub payload: Vec<u8>,
    pub signature_der: Vec<u8>,
}

/// Splits an entry written by [`encode`]; `None` if it is not one.
pub fn decode(entry: &[u8]) -> Option<EntryParts> {
    let mut rest = entry;
    let mut take = || {
        let (len, tail) = rest.split_first_chunk::<4>()?;
        let len = usize::try_from(u32::from_be_bytes(*len)).ok()?;
        let (field, tail) = tail.split_at_checked(len)?;
        rest = tail;
        Some(field.to_vec())
    };
    let payload_type = String::from_utf8(take()?).ok()?;
    let payload = take()?;
    let signature_der = take()?;
    rest.is_empty().then_some(EntryParts {
        payload_type,
        payload,
        signature_der,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_and_garbage_is_refused() {
        let envelope = Envelope {
            payload_type: "application/vnd.in-toto+json".into(),
            payload: B64.encode(b"{\"a\":1}"),
            signatures: vec![crate::proof::dsse::EnvelopeSignature {
                keyid: "k".into(),
                sig: B64.encode([0x30, 0x06, 0x02, 0x01, 0x01, 0x02, 0x01, 0x01]),
            }],
        };
        let bytes = encode(&envelope).unwrap();
        let parts = decode(&bytes).unwrap();
        assert_eq!(parts.payload, b"{\"a\":1}");
        assert_eq!(parts.payload_type, envelope.payload_type);
        assert!(decode(&bytes[..bytes.len() - 1]).is_none());
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(decode(&longer).is_none());
        assert!(decode(&[0xff; 3]).is_none());
    }
}
