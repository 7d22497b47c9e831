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

/// The first bytes of a batch receipt's signature slot; a DER signature begins with 0x30.
pub const BATCH_SEAL_MAGIC: &[u8] = b"actseal-batch-seal/v1\n";

/// What a batch receipt's entry holds in place of a signature: its leaf index and path in
/// the batch tree and the signed batch statement (FORMAT.md §11.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchSeal {
    pub leaf_index: u32,
    pub path: Vec<[u8; 32]>,
    pub statement_payload: Vec<u8>,
    pub statement_signature_der: Vec<u8>,
}

impl BatchSeal {
    /// `magic || u32be(leafIndex) || u8(len(path)) || path || u32be(len(statement)) ||
    /// statement || u32be(len(sig)) || sig`.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(
            BATCH_SEAL_MAGIC.len() + 13 + 32 * self.path.len() + self.statement_payload.len() + 72,
        );
        out.extend_from_slice(BATCH_SEAL_MAGIC);
        out.extend_from_slice(&self.leaf_index.to_be_bytes());
        // A path has at most 32 hashes (batches are far smaller than 2^32 leaves).
        out.push(u8::try_from(self.path.len()).unwrap_or(u8::MAX));
        for hash in &self.path {
            out.extend_from_slice(hash);
        }
        put(&mut out, &self.statement_payload);
        put(&mut out, &self.statement_signature_der);
        out
    }

    /// Reads a seal written by [`encode`](Self::encode); `None` if `slot` is not one.
    pub fn decode(slot: &[u8]) -> Option<Self> {
        let rest = slot.strip_prefix(BATCH_SEAL_MAGIC)?;
        let (leaf_index, rest) = rest.split_first_chunk::<4>()?;
        let (&count, mut rest) = rest.split_first()?;
        let mut path = Vec::with_capacity(usize::from(count));
        for _ in 0..count {
            let (hash, tail) = rest.split_first_chunk::<32>()?;
            path.push(*hash);
            rest = tail;
        }
        let mut take = || {
            let (len, tail) = rest.split_first_chunk::<4>()?;
            let len = usize::try_from(u32::from_be_bytes(*len)).ok()?;
            let (field, tail) = tail.split_at_checked(len)?;
            rest = tail;
            Some(field.to_vec())
        };
        let statement_payload = take()?;
        let statement_signature_der = take()?;
        rest.is_empty().then_some(BatchSeal {
            leaf_index: u32::from_be_bytes(*leaf_index),
            path,
            statement_payload,
            statement_signature_der,
        })
    }
}

/// A batch receipt's entry: the receipt's payload type and payload, and its seal.
pub fn encode_batch(payload_type: &str, payload: &[u8], seal: &BatchSeal) -> Vec<u8> {
    let seal = seal.encode();
    let mut out = Vec::with_capacity(payload.len() + seal.len() + 48);
    put(&mut out, payload_type.as_bytes());
    put(&mut out, payload);
    put(&mut out, &seal);
    out
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
    fn batch_seals_round_trip_and_are_never_a_der_signature() {
        let seal = BatchSeal {
            leaf_index: 3,
            path: vec![[1; 32], [2; 32]],
            statement_payload: b"{}".to_vec(),
            statement_signature_der: vec![0x30, 0x06, 2, 1, 1, 2, 1, 1],
        };
        let bytes = encode_batch("application/vnd.in-toto+json", b"{\"a\":1}", &seal);
        let parts = decode(&bytes).unwrap();
        assert_ne!(parts.signature_der[0], 0x30);
        assert_eq!(BatchSeal::decode(&parts.signature_der), Some(seal.clone()));
        let encoded = seal.encode();
        assert!(BatchSeal::decode(&encoded[..encoded.len() - 1]).is_none());
        let mut longer = encoded.clone();
        longer.push(0);
        assert!(BatchSeal::decode(&longer).is_none());
        assert!(BatchSeal::decode(&seal.statement_signature_der).is_none());
    }

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
