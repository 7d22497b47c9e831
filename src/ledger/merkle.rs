//! TEMPORARY stand-in (replaced by the real module): same API, naive algorithms.
use sha2::{Digest, Sha256};
pub type Hash = [u8; 32];
#[derive(Debug, thiserror::Error)]
pub enum MerkleError {
    #[error("out of range: {0}")]
    OutOfRange(String),
    #[error("read: {0}")]
    Read(String),
}
pub trait NodeReader {
    fn node(&self, level: u8, index: u64) -> Result<Hash, MerkleError>;
}
pub fn leaf_hash(entry: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(entry);
    h.finalize().into()
}
pub fn node_hash(l: &Hash, r: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(l);
    h.update(r);
    h.finalize().into()
}
#[derive(Debug, Clone, Default)]
pub struct Frontier {
    size: u64,
    nodes: Vec<(u8, u64, Hash)>,
}
impl Frontier {
    pub fn from_reader(reader: &impl NodeReader, size: u64) -> Result<Self, MerkleError> {
        let mut nodes = Vec::new();
        let mut start = 0u64;
        for level in (0..64u8).rev() {
            if size & (1u64 << level) != 0 {
                let index = start >> level;
                nodes.push((level, index, reader.node(level, index)?));
                start += 1u64 << level;
            }
        }
        Ok(Frontier { size, nodes })
    }
    pub fn size(&self) -> u64 {
        self.size
    }
    pub fn append(&mut self, leaf: Hash) -> Vec<(u8, u64, Hash)> {
        let mut out = vec![(0u8, self.size, leaf)];
        let (mut level, mut index, mut hash) = (0u8, self.size, leaf);
        while let Some(&(l, i, h)) = self.nodes.last() {
            if l != level {
                break;
            }
            self.nodes.pop();
            hash = node_hash(&h, &hash);
            level += 1;
            index = i / 2;
            out.push((level, index, hash));
        }
        self.nodes.push((level, index, hash));
        self.size += 1;
        out
    }
    pub fn root(&self) -> Hash {
        let mut iter = self.nodes.iter().rev();
        let Some(&(_, _, mut acc)) = iter.next() else {
            return Sha256::digest([]).into();
        };
        for &(_, _, h) in iter {
            acc = node_hash(&h, &acc);
        }
        acc
    }
}
pub fn subtree_root(reader: &impl NodeReader, start: u64, end: u64) -> Result<Hash, MerkleError> {
    let n = end - start;
    if n.is_power_of_two() && start % n == 0 {
        return reader.node(n.trailing_zeros() as u8, start >> n.trailing_zeros());
    }
    let k = 1u64 << (63 - (n - 1).leading_zeros());
    Ok(node_hash(&subtree_root(reader, start, start + k)?, &subtree_root(reader, start + k, end)?))
}
pub fn root_at(reader: &impl NodeReader, size: u64) -> Result<Hash, MerkleError> {
    if size == 0 {
        return Ok(Sha256::digest([]).into());
    }
    subtree_root(reader, 0, size)
}
fn path(reader: &impl NodeReader, m: u64, start: u64, end: u64, out: &mut Vec<Hash>) -> Result<(), MerkleError> {
    let n = end - start;
    if n <= 1 {
        return Ok(());
    }
    let k = 1u64 << (63 - (n - 1).leading_zeros());
    if m < k {
        path(reader, m, start, start + k, out)?;
        out.push(subtree_root(reader, start + k, end)?);
    } else {
        path(reader, m - k, start + k, end, out)?;
        out.push(subtree_root(reader, start, start + k)?);
    }
    Ok(())
}
pub fn inclusion_proof(reader: &impl NodeReader, index: u64, size: u64) -> Result<Vec<Hash>, MerkleError> {
    if index >= size {
        return Err(MerkleError::OutOfRange(format!("index {index} >= size {size}")));
    }
    let mut out = Vec::new();
    path(reader, index, 0, size, &mut out)?;
    Ok(out)
}
fn subproof(reader: &impl NodeReader, m: u64, start: u64, end: u64, b: bool, out: &mut Vec<Hash>) -> Result<(), MerkleError> {
    let n = end - start;
    if m == n {
        if !b {
            out.push(subtree_root(reader, start, end)?);
        }
        return Ok(());
    }
    let k = 1u64 << (63 - (n - 1).leading_zeros());
    if m <= k {
        subproof(reader, m, start, start + k, b, out)?;
        out.push(subtree_root(reader, start + k, end)?);
    } else {
        subproof(reader, m - k, start + k, end, false, out)?;
        out.push(subtree_root(reader, start, start + k)?);
    }
    Ok(())
}
pub fn consistency_proof(reader: &impl NodeReader, old: u64, new: u64) -> Result<Vec<Hash>, MerkleError> {
    if old == 0 || old > new {
        return Err(MerkleError::OutOfRange(format!("bad sizes {old} {new}")));
    }
    let mut out = Vec::new();
    if old < new {
        subproof(reader, old, 0, new, true, &mut out)?;
    }
    Ok(out)
}
