//! The log's Merkle tree (FORMAT.md §10): the daemon's proof generator (`ledger::merkle`) and
//! the offline verifier (`verify::merkle`), two independent implementations, against the
//! published RFC 6962 test tree, against each other on random trees, and against a naive MTH;
//! and the generator's read count on a tree of a million leaves.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::cell::Cell;
use std::collections::HashMap;

use actseal::ledger::merkle::{
    Frontier, Hash, MerkleError, NodeReader, consistency_proof, inclusion_proof, leaf_hash,
    node_hash, root_at, subtree_root,
};
use actseal::verify::merkle::{self as verifier, verify_consistency, verify_inclusion};
use proptest::prelude::*;
use sha2::{Digest, Sha256};

type Store = HashMap<(u8, u64), Hash>;

/// Appends `leaves` one by one, storing every completed node as the daemon does.
fn build(leaves: &[Hash]) -> (Frontier, Store) {
    let mut frontier = Frontier::default();
    let mut store = Store::new();
    for leaf in leaves {
        for (level, index, hash) in frontier.append(*leaf) {
            assert!(
                store.insert((level, index), hash).is_none(),
                "node stored twice"
            );
        }
    }
    (frontier, store)
}

fn numbered_leaves(n: u64) -> Vec<Hash> {
    (0..n).map(|i| leaf_hash(&i.to_be_bytes())).collect()
}

/// RFC 9162 §2.1.1 MTH, straight from the definition.
fn naive_mth(leaves: &[Hash]) -> Hash {
    match leaves.len() {
        0 => Sha256::digest([]).into(),
        1 => leaves[0],
        n => {
            let mut k = 1; // the largest power of two below n
            while k * 2 < n {
                k *= 2;
            }
            node_hash(&naive_mth(&leaves[..k]), &naive_mth(&leaves[k..]))
        }
    }
}

fn h(hex_str: &str) -> Hash {
    hex::decode(hex_str).unwrap().try_into().unwrap()
}

// ---------------------------------------------------------------------------------------------
// The RFC 6962 test tree.
//
// Entries, roots and proofs as published in transparency-dev/merkle, proof/verify_test.go
// (`leaves`, `roots`, `inclusionProofs`, `consistencyProofs`), which carries them over from the
// certificate-transparency reference implementation's merkle tree tests. The published
// inclusion vectors number leaves from 1; they are converted to 0-based indices here.

const ENTRIES: [&str; 8] = [
    "",
    "00",
    "10",
    "2021",
    "3031",
    "40414243",
    "5051525354555657",
    "606162636465666768696a6b6c6d6e6f",
];

const ROOTS: [&str; 8] = [
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
];

/// (0-based leaf index, tree size, audit path).
const INCLUSION: &[(u64, u64, &[&str])] = &[
    (0, 1, &[]),
    (
        0,
        8,
        &[
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ],
    ),
    (
        5,
        8,
        &[
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
    (
        2,
        3,
        &["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"],
    ),
    (
        1,
        5,
        &[
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ],
    ),
];

/// (old size, new size, proof).
const CONSISTENCY: &[(u64, u64, &[&str])] = &[
    (1, 1, &[]),
    (
        1,
        8,
        &[
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ],
    ),
    (
        6,
        8,
        &[
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
    (
        2,
        5,
        &[
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ],
    ),
    (
        6,
        7,
        &[
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
];

fn rfc_leaves() -> Vec<Hash> {
    ENTRIES
        .iter()
        .map(|e| leaf_hash(&hex::decode(e).unwrap()))
        .collect()
}

#[test]
fn rfc6962_roots_for_every_size() {
    let leaves = rfc_leaves();
    // The verifier's own leaf hash agrees.
    for e in ENTRIES {
        let entry = hex::decode(e).unwrap();
        assert_eq!(verifier::leaf_hash(&entry), leaf_hash(&entry));
    }
    let (_, store) = build(&leaves);
    let mut frontier = Frontier::default();
    for (n, leaf) in (1u64..).zip(&leaves) {
        frontier.append(*leaf);
        let want = h(ROOTS[n as usize - 1]);
        assert_eq!(frontier.root(), want, "frontier root at size {n}");
        assert_eq!(root_at(&store, n).unwrap(), want, "root_at({n})");
        assert_eq!(subtree_root(&store, 0, n).unwrap(), want);
        assert_eq!(
            naive_mth(&leaves[..n as usize]),
            want,
            "naive MTH at size {n}"
        );
        assert_eq!(Frontier::from_reader(&store, n).unwrap(), frontier);
    }
}

#[test]
fn rfc6962_inclusion_proofs() {
    let leaves = rfc_leaves();
    let (_, store) = build(&leaves);
    for &(index, size, path) in INCLUSION {
        let want: Vec<Hash> = path.iter().map(|p| h(p)).collect();
        assert_eq!(
            inclusion_proof(&store, index, size).unwrap(),
            want,
            "PATH({index}, {size})"
        );
        let root = h(ROOTS[size as usize - 1]);
        let leaf = leaves[index as usize];
        verify_inclusion(&leaf, index, size, &want, &root).unwrap();
        assert_inclusion_tampering_fails(&leaf, index, size, &want, &root);
    }
}

#[test]
fn rfc6962_consistency_proofs() {
    let (_, store) = build(&rfc_leaves());
    for &(old, new, path) in CONSISTENCY {
        let want: Vec<Hash> = path.iter().map(|p| h(p)).collect();
        assert_eq!(
            consistency_proof(&store, old, new).unwrap(),
            want,
            "PROOF({old}, {new})"
        );
        let (r1, r2) = (h(ROOTS[old as usize - 1]), h(ROOTS[new as usize - 1]));
        verify_consistency(old, new, &r1, &r2, &want).unwrap();
        if old != new {
            assert_consistency_tampering_fails(old, new, &r1, &r2, &want);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Tampering: the probes transparency-dev/merkle applies to every known-good proof, and more.

const SOME_HASH: Hash = [0x5a; 32];

#[track_caller]
fn assert_inclusion_tampering_fails(
    leaf: &Hash,
    index: u64,
    size: u64,
    proof: &[Hash],
    root: &Hash,
) {
    let fails = |leaf: &Hash, index: u64, size: u64, proof: &[Hash], root: &Hash, what: &str| {
        assert!(
            verify_inclusion(leaf, index, size, proof, root).is_err(),
            "inclusion ({index}, {size}) verified with {what}"
        );
    };
    fails(leaf, index.wrapping_sub(1), size, proof, root, "index - 1");
    fails(leaf, index + 1, size, proof, root, "index + 1");
    fails(leaf, index ^ 2, size, proof, root, "index ^ 2");
    fails(leaf, index, size * 2, proof, root, "size * 2");
    if size / 2 != size {
        fails(leaf, index, size / 2, proof, root, "size / 2");
    }
    fails(&SOME_HASH, index, size, proof, root, "another leaf");
    fails(leaf, index, size, proof, &SOME_HASH, "another root");
    let with = |f: &dyn Fn(&mut Vec<Hash>), what: &str| {
        let mut p = proof.to_vec();
        f(&mut p);
        fails(leaf, index, size, &p, root, what);
    };
    with(&|p| p.push(SOME_HASH), "a hash appended");
    with(&|p| p.push(*root), "the root appended");
    with(&|p| p.insert(0, SOME_HASH), "a hash prepended");
    if !proof.is_empty() {
        with(
            &|p| {
                p.pop();
            },
            "the last hash removed",
        );
        with(
            &|p| {
                p.remove(0);
            },
            "the first hash removed",
        );
    }
    for i in 0..proof.len() {
        with(&|p| p[i][i % 32] ^= 0x08, "one bit flipped");
    }
}

#[track_caller]
fn assert_consistency_tampering_fails(old: u64, new: u64, r1: &Hash, r2: &Hash, proof: &[Hash]) {
    let fails = |old: u64, new: u64, r1: &Hash, r2: &Hash, proof: &[Hash], what: &str| {
        assert!(
            verify_consistency(old, new, r1, r2, proof).is_err(),
            "consistency ({old}, {new}) verified with {what}"
        );
    };
    fails(old - 1, new, r1, r2, proof, "old - 1");
    fails(old + 1, new, r1, r2, proof, "old + 1");
    fails(old ^ 2, new, r1, r2, proof, "old ^ 2");
    fails(old, new * 2, r1, r2, proof, "new * 2");
    fails(old, new / 2, r1, r2, proof, "new / 2");
    fails(old, new, &SOME_HASH, r2, proof, "another old root");
    fails(old, new, r1, &SOME_HASH, proof, "another new root");
    fails(old, new, r2, r1, proof, "swapped roots");
    fails(old, new, r1, r2, &[], "an empty proof");
    let with = |f: &dyn Fn(&mut Vec<Hash>), what: &str| {
        let mut p = proof.to_vec();
        f(&mut p);
        fails(old, new, r1, r2, &p, what);
    };
    for extra in [SOME_HASH, *r1, *r2, proof[0]] {
        with(&|p| p.push(extra), "a hash appended");
        with(&|p| p.insert(0, extra), "a hash prepended");
    }
    with(
        &|p| {
            p.pop();
        },
        "the last hash removed",
    );
    for i in 0..proof.len() {
        with(&|p| p[i][i % 32] ^= 0x10, "one bit flipped");
    }
}

// ---------------------------------------------------------------------------------------------
// Generator and verifier against each other.

/// Every inclusion proof of a tree of `n` leaves verifies and resists tampering; consistency
/// proofs from every `step`-th old size (and the sizes around powers of two) do too.
fn check_tree(n: u64, step: u64, tamper: bool) {
    let leaves = numbered_leaves(n);
    let (frontier, store) = build(&leaves);
    let root = root_at(&store, n).unwrap();
    assert_eq!(frontier.root(), root);
    for index in 0..n {
        let proof = inclusion_proof(&store, index, n).unwrap();
        let leaf = &leaves[index as usize];
        verify_inclusion(leaf, index, n, &proof, &root).unwrap();
        if tamper {
            assert_inclusion_tampering_fails(leaf, index, n, &proof, &root);
        }
    }
    let mut olds: Vec<u64> = (1..=n).step_by(step as usize).collect();
    for b in 0..63 {
        let p = 1u64 << b;
        olds.extend([p - 1, p, p + 1].into_iter().filter(|&m| m >= 1 && m <= n));
    }
    olds.push(n);
    for old in olds {
        let proof = consistency_proof(&store, old, n).unwrap();
        let old_root = root_at(&store, old).unwrap();
        verify_consistency(old, n, &old_root, &root, &proof).unwrap();
        if tamper && old != n {
            assert_consistency_tampering_fails(old, n, &old_root, &root, &proof);
        }
    }
}

#[test]
fn every_small_tree() {
    for n in 1..=64 {
        check_tree(n, 1, true);
    }
}

#[test]
fn a_few_large_trees() {
    for n in [1000, 2048, 2049, 4095, 5003] {
        check_tree(n, 97, false);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn random_trees_prove_and_verify(n in 1u64..300, step in 1u64..20) {
        check_tree(n, step, true);
    }

    #[test]
    fn all_consistency_pairs_below(n in 2u64..120) {
        let (_, store) = build(&numbered_leaves(n));
        for new in 1..=n {
            let new_root = root_at(&store, new).unwrap();
            for old in 1..=new {
                let proof = consistency_proof(&store, old, new).unwrap();
                let old_root = root_at(&store, old).unwrap();
                prop_assert!(verify_consistency(old, new, &old_root, &new_root, &proof).is_ok());
            }
        }
    }

    #[test]
    fn frontier_from_reader_equals_incremental(n in 0u64..600) {
        let leaves = numbered_leaves(n);
        let (_, store) = build(&leaves);
        let mut incremental = Frontier::default();
        for (size, leaf) in (1u64..).zip(&leaves) {
            incremental.append(*leaf);
            if size % 7 == 0 || size == n {
                prop_assert_eq!(&Frontier::from_reader(&store, size).unwrap(), &incremental);
            }
        }
        prop_assert_eq!(Frontier::from_reader(&store, n).unwrap(), incremental);
    }

    #[test]
    fn root_at_equals_naive_mth(n in 0u64..400) {
        let leaves = numbered_leaves(n);
        let (_, store) = build(&leaves);
        for size in 0..=n {
            prop_assert_eq!(root_at(&store, size).unwrap(), naive_mth(&leaves[..size as usize]));
        }
    }

    #[test]
    fn verifier_never_panics(
        index in any::<u64>(), size in any::<u64>(), old in any::<u64>(),
        proof in proptest::collection::vec(any::<[u8; 32]>(), 0..80),
    ) {
        let _ = verify_inclusion(&SOME_HASH, index, size, &proof, &SOME_HASH);
        let _ = verify_consistency(old, size, &SOME_HASH, &SOME_HASH, &proof);
        let _ = verify_consistency(old % 1000, size % 1000, &SOME_HASH, &SOME_HASH, &proof);
    }
}

// ---------------------------------------------------------------------------------------------
// Read counts on a large tree.

/// A stand-in for the daemon's SQLite store over a tree of `size` leaves: node hashes are
/// synthetic (SHA-256 of the coordinates), which is enough to count and check reads.
struct SyntheticReader {
    size: u64,
    reads: Cell<u64>,
}

impl NodeReader for SyntheticReader {
    fn node(&self, level: u8, index: u64) -> Result<Hash, MerkleError> {
        self.reads.set(self.reads.get() + 1);
        let end = (index + 1).checked_shl(u32::from(level));
        if level > 63 || end.is_none_or(|end| end > self.size) {
            return Err(MerkleError::OutOfRange { level, index });
        }
        let mut h = Sha256::new();
        h.update([level]);
        h.update(index.to_be_bytes());
        Ok(h.finalize().into())
    }
}

#[test]
fn proofs_read_o_log_squared_nodes() {
    let n: u64 = (1 << 20) + 12345;
    let log2 = 64 - u64::from(n.leading_zeros()); // 21
    let bound = 64 * log2;
    let reader = SyntheticReader {
        size: n,
        reads: Cell::new(0),
    };
    let count = |f: &dyn Fn(&SyntheticReader)| {
        reader.reads.set(0);
        f(&reader);
        reader.reads.get()
    };

    let mut worst = 0;
    for index in [0, 1, 12344, 12345, n / 2, 1 << 20, n - 2, n - 1] {
        let reads = count(&|r| {
            let proof = inclusion_proof(r, index, n).unwrap();
            assert!(proof.len() as u64 <= log2);
        });
        worst = worst.max(reads);
    }
    for old in [1, 2, 3, 1000, 12345, 1 << 19, (1 << 20) - 1, 1 << 20, n - 1] {
        let reads = count(&|r| {
            consistency_proof(r, old, n).unwrap();
        });
        worst = worst.max(reads);
    }
    eprintln!("most nodes read by one proof at size {n}: {worst}");
    assert!(worst <= bound, "a proof read {worst} nodes, bound {bound}");
    // In fact O(log n): both proofs read fewer than 3 nodes per level.
    assert!(worst <= 3 * log2, "a proof read {worst} nodes");

    // Roots and frontiers: one read per set bit of the size.
    assert_eq!(
        count(&|r| assert_ne!(root_at(r, n).unwrap(), [0; 32])),
        u64::from(n.count_ones())
    );
    assert_eq!(
        count(&|r| drop(Frontier::from_reader(r, n).unwrap())),
        u64::from(n.count_ones())
    );
    // Appending reads nothing (`append` is given no reader): the reader's count stays put.
    let mut frontier = Frontier::from_reader(&reader, n).unwrap();
    let before = reader.reads.get();
    for i in 0..1000u64 {
        frontier.append(leaf_hash(&i.to_be_bytes()));
    }
    assert_eq!(reader.reads.get(), before);
    assert_eq!(frontier.size(), n + 1000);

    // Past the tree: an error, not a wrong answer.
    assert!(matches!(
        inclusion_proof(&reader, 0, n + 1),
        Err(MerkleError::OutOfRange { .. })
    ));
    assert!(matches!(
        consistency_proof(&reader, 5, n + 1),
        Err(MerkleError::OutOfRange { .. })
    ));
}
