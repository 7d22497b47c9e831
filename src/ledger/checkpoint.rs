//! TEMPORARY stand-in (replaced by the real module).
use base64::{Engine, engine::general_purpose::STANDARD as B64};
use sha2::{Digest, Sha256};
use super::merkle::Hash;
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub origin: String,
    pub size: u64,
    pub root: Hash,
}
pub fn key_id(key_name: &str, spki_der: &[u8]) -> [u8; 4] {
    let mut h = Sha256::new();
    h.update(key_name.as_bytes());
    h.update([0x0a, 0x02]);
    h.update(spki_der);
    let d = h.finalize();
    [d[0], d[1], d[2], d[3]]
}
impl Checkpoint {
    pub fn body(&self) -> String {
        format!("{}\n{}\n{}\n", self.origin, self.size, B64.encode(self.root))
    }
    pub fn signed_note<E>(&self, key_name: &str, spki_der: &[u8], sign: impl FnOnce(&[u8; 32]) -> Result<p256::ecdsa::Signature, E>) -> Result<String, E> {
        let body = self.body();
        let digest: [u8; 32] = Sha256::digest(body.as_bytes()).into();
        let sig = sign(&digest)?;
        let mut blob = key_id(key_name, spki_der).to_vec();
        blob.extend_from_slice(sig.to_der().as_bytes());
        Ok(format!("{body}\n\u{2014} {key_name} {}\n", B64.encode(blob)))
    }
}
