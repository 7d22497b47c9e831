//! The receipt log's Merkle tree: RFC 9162 hashing, the right-edge frontier the daemon appends
//! to, and inclusion and consistency proofs built from stored nodes (FORMAT.md §10).
//!
//! The tree is never held in memory. Every *complete* node — the root of a perfect subtree — is
//! stored once, when it becomes complete, and never changes: node `(level, index)` is the hash
//! of the `2^level` leaves `[index << level, (index + 1) << level)`. Appending returns the nodes
//! that became complete, so the daemon writes them in the same transaction as the receipt.
//! Everything else (the root of any size, the subtree roots a proof needs) is the hash of a few
//! stored perfect subtrees, found by binary decomposition: O(log n) reads each, never a scan.
//!
//! The offline verifier (`crate::verify::merkle`) is a separate implementation on purpose.

use sha2::{Digest, Sha256};

/// A SHA-256 hash: a leaf hash, a node hash or a tree root.
pub type Hash = [u8; 32];

/// The largest level a node can have: a tree holds fewer than 2^64 leaves.
const MAX_LEVEL: u8 = 63;

/// RFC 9162 §2.1.1 leaf hash, `SHA-256(0x00 || entry)`. The 0x00 prefix keeps a leaf from ever
/// being read as an interior node (second-preimage resistance).
pub fn leaf_hash(entry: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0x00]);
    h.update(entry);
    h.finalize().into()
}

/// RFC 9162 §2.1.1 interior node hash, `SHA-256(0x01 || left || right)`.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([0x01]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// MTH of the empty tree: SHA-256 of the empty string (RFC 9162 §2.1.1).
pub fn empty_root() -> Hash {
    Sha256::digest([]).into()
}

/// Why a tree operation failed. Each variant names the sizes or node involved, so a log line
/// says which request was wrong.
#[derive(Debug, thiserror::Error)]
pub enum MerkleError {
    /// An inclusion proof was asked for a leaf the tree of that size does not have.
    #[error("leaf index {index} is not in a tree of size {size}")]
    IndexOutOfRange { index: u64, size: u64 },
    /// A consistency proof was asked from a larger tree to a smaller one.
    #[error("no consistency proof from size {old_size} to the smaller size {new_size}")]
    OldSizeAfterNew { old_size: u64, new_size: u64 },
    /// RFC 9162 §2.1.4.1 defines consistency proofs for `0 < old_size`: the empty tree has no
    /// root hash to be consistent with.
    #[error("no consistency proof from the empty tree (to size {new_size})")]
    EmptyOldTree { new_size: u64 },
    /// The node is not (yet) in the log: the size asked for is past the tree. Readers return
    /// this for a node they do not store.
    #[error("node (level {level}, index {index}) is past the end of the tree")]
    OutOfRange { level: u8, index: u64 },
    /// `[start, end)` is empty, overflows, or is not a range the RFC's recursion produces (its
    /// start must be a multiple of the largest power of two not above its length).
    #[error("leaf range [{start}, {end}) is not a subtree of the log")]
    InvalidRange { start: u64, end: u64 },
    /// The storage behind the reader failed.
    #[error("reading node (level {level}, index {index}): {source}")]
    Reader {
        level: u8,
        index: u64,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// Read access to the stored complete nodes. The daemon implements it over SQLite.
pub trait NodeReader {
    /// The hash of node `(level, index)`, which covers leaves `[index << level, (index + 1) <<
    /// level)`. A node not stored is [`MerkleError::OutOfRange`].
    fn node(&self, level: u8, index: u64) -> Result<Hash, MerkleError>;
}

/// An in-memory node store, for tests and tools.
impl NodeReader for std::collections::HashMap<(u8, u64), Hash> {
    fn node(&self, level: u8, index: u64) -> Result<Hash, MerkleError> {
        self.get(&(level, index))
            .copied()
            .ok_or(MerkleError::OutOfRange { level, index })
    }
}

impl<R: NodeReader + ?Sized> NodeReader for &R {
    fn node(&self, level: u8, index: u64) -> Result<Hash, MerkleError> {
        (**self).node(level, index)
    }
}

/// The perfect subtrees `(level, index)` whose concatenation is leaves `[start, end)`, largest
/// (leftmost) first. `None` unless every piece is a stored-node shape, i.e. `start` is a
/// multiple of the first piece's width.
fn decompose(start: u64, end: u64) -> Option<Vec<(u8, u64)>> {
    if start >= end {
        return None;
    }
    let mut pieces = Vec::new();
    let mut at = start;
    let mut left = end - start;
    while left > 0 {
        let level = (63 - left.leading_zeros()) as u8; // largest 2^level <= left
        let width = 1u64 << level;
        if !at.is_multiple_of(width) {
            return None;
        }
        pieces.push((level, at >> level));
        at += width;
        left -= width;
    }
    Some(pieces)
}

/// The hash of perfect subtrees laid side by side, largest first: RFC 9162's MTH for their
/// concatenated leaves, since MTH splits at the largest power of two below the size.
fn fold_right(hashes: &[Hash]) -> Hash {
    let mut iter = hashes.iter().rev();
    let Some(last) = iter.next() else {
        return empty_root();
    };
    iter.fold(*last, |acc, left| node_hash(left, &acc))
}

/// MTH of leaves `[start, end)` from stored nodes, in O(log n) reads.
///
/// Works for every range RFC 9162's PATH and SUBPROOF recursion visits (those start at a
/// multiple of a power of two at least their length); other ranges are
/// [`MerkleError::InvalidRange`].
pub fn subtree_root(reader: &impl NodeReader, start: u64, end: u64) -> Result<Hash, MerkleError> {
    let pieces = decompose(start, end).ok_or(MerkleError::InvalidRange { start, end })?;
    let hashes = pieces
        .into_iter()
        .map(|(level, index)| reader.node(level, index))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(fold_right(&hashes))
}

/// MTH of the first `size` leaves: the root a checkpoint of that size signs.
pub fn root_at(reader: &impl NodeReader, size: u64) -> Result<Hash, MerkleError> {
    if size == 0 {
        return Ok(empty_root());
    }
    subtree_root(reader, 0, size)
}

/// The largest power of two strictly below `n` (RFC 9162's `k`); `n` must be at least 2.
fn split_point(n: u64) -> u64 {
    1u64 << (63 - (n - 1).leading_zeros())
}

/// RFC 9162 §2.1.3.1 `PATH(index, D[0:size])`: the sibling hashes from the leaf up to the root.
///
/// The recursion is walked top-down, collecting each sibling's range, and the list reversed:
/// at most one sibling is not a perfect subtree (once the path enters a left half, everything
/// below is perfect), so this is O(log n) reads.
pub fn inclusion_proof(
    reader: &impl NodeReader,
    index: u64,
    size: u64,
) -> Result<Vec<Hash>, MerkleError> {
    if index >= size {
        return Err(MerkleError::IndexOutOfRange { index, size });
    }
    let (mut start, mut end) = (0u64, size);
    let mut siblings = Vec::new();
    while end - start > 1 {
        let k = split_point(end - start);
        if index < start + k {
            siblings.push((start + k, end));
            end = start + k;
        } else {
            siblings.push((start, start + k));
            start += k;
        }
    }
    siblings
        .into_iter()
        .rev()
        .map(|(s, e)| subtree_root(reader, s, e))
        .collect()
}

/// RFC 9162 §2.1.4.1 `PROOF(old_size, D[0:new_size])`: the hashes proving the tree of
/// `old_size` is a prefix of the tree of `new_size`.
///
/// Equal sizes give the empty proof (the roots must simply be equal); the RFC defines proofs
/// only for `0 < old_size < new_size`, and an empty old tree is an error. SUBPROOF is walked
/// top-down like PATH; each step adds one subtree root, so at most O(log² n) reads.
pub fn consistency_proof(
    reader: &impl NodeReader,
    old_size: u64,
    new_size: u64,
) -> Result<Vec<Hash>, MerkleError> {
    if old_size > new_size {
        return Err(MerkleError::OldSizeAfterNew { old_size, new_size });
    }
    if old_size == 0 {
        return Err(MerkleError::EmptyOldTree { new_size });
    }
    if old_size == new_size {
        return Ok(Vec::new());
    }
    // SUBPROOF(m, D[start:end], b), with m counted from `start`.
    let (mut start, mut end, mut m, mut complete) = (0u64, new_size, old_size, true);
    let mut ranges = Vec::new();
    loop {
        let n = end - start;
        if m == n {
            // The old tree's root is this subtree: known to the verifier when `complete`.
            if !complete {
                ranges.push((start, end));
            }
            break;
        }
        let k = split_point(n);
        if m <= k {
            ranges.push((start + k, end));
            end = start + k;
        } else {
            ranges.push((start, start + k));
            start += k;
            m -= k;
            complete = false;
        }
    }
    ranges
        .into_iter()
        .rev()
        .map(|(s, e)| subtree_root(reader, s, e))
        .collect()
}

/// The compact range of the tree's right edge: the roots of the perfect subtrees that make up
/// the first `size` leaves, largest first (one per set bit of `size`).
///
/// It is all the daemon keeps in memory to append and to compute the current root; it is
/// rebuilt at start-up from stored nodes with [`Frontier::from_reader`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Frontier {
    size: u64,
    hashes: Vec<Hash>,
}

impl Frontier {
    /// The frontier of the stored tree at `size`, in one read per set bit of `size`.
    pub fn from_reader(reader: &impl NodeReader, size: u64) -> Result<Self, MerkleError> {
        let mut hashes = Vec::new();
        let mut start = 0u64;
        for level in (0..=MAX_LEVEL).rev() {
            if size & (1u64 << level) != 0 {
                hashes.push(reader.node(level, start >> level)?);
                start += 1u64 << level;
            }
        }
        Ok(Frontier { size, hashes })
    }

    /// Appends one leaf hash without reading anything. Returns every node that became complete,
    /// the leaf `(0, size)` first, then each parent it completed, for the caller to store.
    ///
    /// # Panics
    /// When the tree already holds `u64::MAX` leaves.
    pub fn append(&mut self, leaf: Hash) -> Vec<(u8, u64, Hash)> {
        let old = self.size;
        self.size = old
            .checked_add(1)
            .expect("the log holds fewer than 2^64 leaves");
        let mut hash = leaf;
        let mut level = 0u8;
        let mut completed = vec![(0, old, leaf)];
        // Each trailing 1 bit of the old size is a perfect subtree of that level waiting on the
        // right edge for a sibling of the same size: merge it.
        while (old >> level) & 1 == 1 {
            let left = self
                .hashes
                .pop()
                .expect("one frontier hash per set bit of the size");
            hash = node_hash(&left, &hash);
            level += 1;
            completed.push((level, old >> level, hash));
        }
        self.hashes.push(hash);
        completed
    }

    /// The number of leaves.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// RFC 9162 MTH of the tree at its current size.
    pub fn root(&self) -> Hash {
        fold_right(&self.hashes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn build(n: u64) -> (Frontier, HashMap<(u8, u64), Hash>) {
        let mut f = Frontier::default();
        let mut store = HashMap::new();
        for i in 0..n {
            for (level, index, hash) in f.append(leaf_hash(&i.to_be_bytes())) {
                assert!(store.insert((level, index), hash).is_none());
            }
        }
        (f, store)
    }

    #[test]
    fn empty_tree() {
        let f = Frontier::default();
        assert_eq!(
            hex::encode(f.root()),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(root_at(&HashMap::new(), 0).unwrap(), f.root());
    }

    #[test]
    fn append_stores_each_complete_node_once() {
        let (f, store) = build(13);
        // 13 leaves: 13 + 6 + 3 + 1 complete nodes.
        assert_eq!(store.len(), 23);
        assert_eq!(f.size(), 13);
        assert_eq!(f.root(), root_at(&store, 13).unwrap());
    }

    #[test]
    fn decompose_rejects_unaligned_ranges() {
        assert_eq!(decompose(0, 7), Some(vec![(2, 0), (1, 2), (0, 6)]));
        assert_eq!(decompose(4, 7), Some(vec![(1, 2), (0, 6)]));
        assert_eq!(decompose(2, 6), None);
        assert_eq!(decompose(3, 3), None);
    }

    #[test]
    fn errors() {
        let (_, store) = build(5);
        assert!(matches!(
            inclusion_proof(&store, 5, 5),
            Err(MerkleError::IndexOutOfRange { index: 5, size: 5 })
        ));
        assert!(matches!(
            inclusion_proof(&store, 0, 0),
            Err(MerkleError::IndexOutOfRange { .. })
        ));
        assert!(matches!(
            consistency_proof(&store, 4, 3),
            Err(MerkleError::OldSizeAfterNew { .. })
        ));
        assert!(matches!(
            consistency_proof(&store, 0, 3),
            Err(MerkleError::EmptyOldTree { new_size: 3 })
        ));
        assert!(matches!(
            inclusion_proof(&store, 2, 6),
            Err(MerkleError::OutOfRange { .. })
        ));
        assert!(matches!(
            consistency_proof(&store, 2, 9),
            Err(MerkleError::OutOfRange { .. })
        ));
        assert!(matches!(
            root_at(&store, 6),
            Err(MerkleError::OutOfRange { .. })
        ));
        assert!(consistency_proof(&store, 5, 5).unwrap().is_empty());
    }
}
