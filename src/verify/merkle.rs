//! Merkle proof verification, RFC 9162 §2.1.3.2 (inclusion) and §2.1.4.2 (consistency),
//! following the RFC's iterative algorithms step by step (FORMAT.md §10).
//!
//! Written apart from the daemon's proof generator (`ledger::merkle`), which follows the RFC's
//! recursive definitions instead: the two agreeing on the published test vectors and on random
//! trees is the evidence that both are right.

#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use sha2::{Digest, Sha256};

/// A SHA-256 hash.
pub type Hash = [u8; 32];

/// Why a proof did not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    /// The leaf index is not below the tree size (step 1 of §2.1.3.2).
    #[error("leaf index {index} is not in a tree of size {size}")]
    IndexOutOfRange { index: u64, size: u64 },
    /// The old size is 0 or larger than the new size: there is nothing to prove.
    #[error("no consistency proof exists from size {old_size} to size {new_size}")]
    InvalidSizes { old_size: u64, new_size: u64 },
    /// The proof has more or fewer hashes than the sizes call for.
    #[error("the proof has the wrong number of hashes ({0})")]
    WrongLength(usize),
    /// The hashes recomputed from the proof are not the roots given.
    #[error("the proof does not lead to the given root")]
    RootMismatch,
}

/// `HASH(0x01 || left || right)`, RFC 9162 §2.1.1.
fn hash_children(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([0x01u8]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// The RFC 9162 leaf hash of an entry, `HASH(0x00 || entry)`, for callers that hold the entry.
pub fn leaf_hash(entry: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0x00u8]);
    h.update(entry);
    h.finalize().into()
}

/// "Right-shift both fn and sn equally until either LSB(fn) is set or fn is 0."
fn shift_until_odd_or_zero(fn_: &mut u64, sn: &mut u64) {
    while *fn_ != 0 && *fn_ & 1 == 0 {
        *fn_ >>= 1u32;
        *sn >>= 1u32;
    }
}

/// RFC 9162 §2.1.3.2: `leaf_hash` is leaf `index` of the tree of `size` leaves whose root is
/// `root`, by the audit path `proof` (sibling hashes, leaf first).
pub fn verify_inclusion(
    leaf_hash: &Hash,
    index: u64,
    size: u64,
    proof: &[Hash],
    root: &Hash,
) -> Result<(), ProofError> {
    // 1. leaf_index >= tree_size fails.
    if index >= size {
        return Err(ProofError::IndexOutOfRange { index, size });
    }
    // 2. fn = leaf_index, sn = tree_size - 1 (size > index >= 0, so size >= 1).
    let mut fn_ = index;
    let mut sn = size.saturating_sub(1);
    // 3. r = hash.
    let mut r = *leaf_hash;
    // 4. For each p in the path.
    for p in proof {
        // a. sn == 0: the path is longer than the tree is tall.
        if sn == 0 {
            return Err(ProofError::WrongLength(proof.len()));
        }
        // b.
        if fn_ & 1 == 1 || fn_ == sn {
            r = hash_children(p, &r);
            if fn_ & 1 == 0 {
                shift_until_odd_or_zero(&mut fn_, &mut sn);
            }
        } else {
            r = hash_children(&r, p);
        }
        // c.
        fn_ >>= 1u32;
        sn >>= 1u32;
    }
    // 5. sn must be 0 (the whole path was used) and r the root.
    if sn != 0 {
        return Err(ProofError::WrongLength(proof.len()));
    }
    if r != *root {
        return Err(ProofError::RootMismatch);
    }
    Ok(())
}

/// RFC 9162 §2.1.4.2: the tree of `old_size` leaves with root `old_root` is a prefix of the
/// tree of `new_size` leaves with root `new_root`.
///
/// The RFC defines proofs for `0 < old_size < new_size`. Equal sizes are accepted with an empty
/// proof when the roots are equal (a log at one size has one root); `old_size == 0` is refused,
/// as there is no old root to check.
pub fn verify_consistency(
    old_size: u64,
    new_size: u64,
    old_root: &Hash,
    new_root: &Hash,
    proof: &[Hash],
) -> Result<(), ProofError> {
    if old_size == 0 || old_size > new_size {
        return Err(ProofError::InvalidSizes { old_size, new_size });
    }
    if old_size == new_size {
        if !proof.is_empty() {
            return Err(ProofError::WrongLength(proof.len()));
        }
        if old_root != new_root {
            return Err(ProofError::RootMismatch);
        }
        return Ok(());
    }
    // 1. An empty path fails.
    let Some((first_given, rest)) = proof.split_first() else {
        return Err(ProofError::WrongLength(0));
    };
    // 2. If first is an exact power of 2, prepend first_hash to the path.
    let (start, path): (&Hash, &[Hash]) = if old_size.is_power_of_two() {
        (old_root, proof)
    } else {
        (first_given, rest)
    };
    // 3. fn = first - 1, sn = second - 1 (both sizes are at least 1 here).
    let mut fn_ = old_size.saturating_sub(1);
    let mut sn = new_size.saturating_sub(1);
    // 4. If LSB(fn) is set, right-shift both until it is not.
    while fn_ & 1 == 1 {
        fn_ >>= 1u32;
        sn >>= 1u32;
    }
    // 5. fr = sr = the first value of the path.
    let mut fr = *start;
    let mut sr = *start;
    // 6. For each subsequent value c.
    for c in path {
        // a.
        if sn == 0 {
            return Err(ProofError::WrongLength(proof.len()));
        }
        // b.
        if fn_ & 1 == 1 || fn_ == sn {
            fr = hash_children(c, &fr);
            sr = hash_children(c, &sr);
            if fn_ & 1 == 0 {
                shift_until_odd_or_zero(&mut fn_, &mut sn);
            }
        } else {
            sr = hash_children(&sr, c);
        }
        // c.
        fn_ >>= 1u32;
        sn >>= 1u32;
    }
    // 7. fr = first_hash, sr = second_hash, sn = 0.
    if sn != 0 {
        return Err(ProofError::WrongLength(proof.len()));
    }
    if fr != *old_root || sr != *new_root {
        return Err(ProofError::RootMismatch);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_leaf_tree() {
        let h = leaf_hash(b"data");
        assert_eq!(verify_inclusion(&h, 0, 1, &[], &h), Ok(()));
        assert_eq!(
            verify_inclusion(&h, 0, 1, &[h], &h),
            Err(ProofError::WrongLength(1))
        );
        assert_eq!(
            verify_inclusion(&h, 1, 1, &[], &h),
            Err(ProofError::IndexOutOfRange { index: 1, size: 1 })
        );
        assert_eq!(
            verify_inclusion(&h, 0, 0, &[], &h),
            Err(ProofError::IndexOutOfRange { index: 0, size: 0 })
        );
    }

    #[test]
    fn trivial_consistency() {
        let (a, b) = ([1u8; 32], [2u8; 32]);
        assert_eq!(verify_consistency(3, 3, &a, &a, &[]), Ok(()));
        assert!(verify_consistency(3, 3, &a, &b, &[]).is_err());
        assert!(verify_consistency(3, 3, &a, &a, &[a]).is_err());
        assert!(verify_consistency(0, 3, &a, &b, &[]).is_err());
        assert!(verify_consistency(4, 3, &a, &b, &[a]).is_err());
        assert!(verify_consistency(1, 2, &a, &b, &[]).is_err());
        // Extreme sizes do not overflow.
        assert!(verify_consistency(u64::MAX - 1, u64::MAX, &a, &b, &[a; 70]).is_err());
        assert!(verify_inclusion(&a, u64::MAX - 1, u64::MAX, &[a; 70], &b).is_err());
    }
}
