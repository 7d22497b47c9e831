//! Batch mode (FORMAT.md "batch receipts"): the receipts of one actor made within a window
//! become the leaves of an RFC 9162 Merkle tree; the actor key signs one statement over its
//! root, and each receipt's bundle carries the statement and its inclusion path.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::{
    IN_TOTO_STATEMENT_V1,
    dsse::Envelope,
    lineage::EncodeError,
    receipt::{Digest, KeyRefInReceipt, Subject},
};
use crate::ledger::merkle::{Hash, leaf_hash, node_hash};

/// Predicate type URI of batch statements.
pub const BATCH_PREDICATE_TYPE: &str = "https://actseal.dev/receipt-batch/v1";

/// What a batch statement states besides its root.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct BatchPredicate {
    pub actor: String,
    pub key: KeyRefInReceipt,
    pub size: u64,
    pub first_sequence: u64,
    /// The first receipt's place in the log; `None` (`"firstLogIndex": null`, always
    /// present) for a batch a fleet node signed before it was ordered (FORMAT.md §12).
    pub first_log_index: Option<u64>,
    pub signed_at: String,
}

/// The in-toto Statement v1 the actor key signs over a batch's root.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct BatchStatement {
    #[serde(rename = "_type")]
    pub statement_type: String,
    pub subject: Vec<Subject>,
    pub predicate_type: String,
    pub predicate: BatchPredicate,
}

impl BatchStatement {
    /// The statement of a batch whose tree has `root`; its subject names the actor's key
    /// version and the batch's first sequence number.
    pub fn new(root: &Hash, predicate: BatchPredicate) -> Self {
        BatchStatement {
            statement_type: IN_TOTO_STATEMENT_V1.into(),
            subject: vec![Subject {
                name: format!(
                    "receipt-batch:{}#{}/{}",
                    predicate.actor, predicate.key.version, predicate.first_sequence
                ),
                digest: Digest {
                    sha256: hex::encode(root),
                },
            }],
            predicate_type: BATCH_PREDICATE_TYPE.into(),
            predicate,
        }
    }

    /// The exact bytes signed.
    pub fn to_payload(&self) -> Result<Vec<u8>, EncodeError> {
        serde_json::to_vec(self).map_err(|e| EncodeError::new("batch statement", e))
    }
}

/// A batch receipt's member of its bundle: the signed statement and the receipt's path.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct BatchInBundle {
    pub statement: Envelope,
    pub leaf_index: u64,
    /// Hex hashes, leaf side first.
    pub inclusion_proof: Vec<String>,
}

/// The tree over a batch's receipt payloads (leaf = SHA-256(0x00 || payload)), every
/// subtree hash of RFC 9162's split computed once, so that all n paths cost O(n log n).
#[derive(Debug, Clone)]
pub struct BatchTree {
    size: usize,
    /// MTH of D[a:b] for every range the split produces.
    nodes: HashMap<(usize, usize), Hash>,
}

/// The largest power of two smaller than `n` (n ≥ 2).
fn split(n: usize) -> usize {
    let mut k = 1;
    while k * 2 < n {
        k *= 2;
    }
    k
}

impl BatchTree {
    /// The tree over `payloads`, in order; `None` for an empty batch.
    pub fn new<P: AsRef<[u8]>>(payloads: &[P]) -> Option<Self> {
        if payloads.is_empty() {
            return None;
        }
        let leaves: Vec<Hash> = payloads.iter().map(|p| leaf_hash(p.as_ref())).collect();
        let mut tree = BatchTree {
            size: leaves.len(),
            nodes: HashMap::with_capacity(2 * leaves.len()),
        };
        tree.fill(&leaves, 0, leaves.len());
        Some(tree)
    }

    fn fill(&mut self, leaves: &[Hash], a: usize, b: usize) -> Hash {
        let hash = if b - a == 1 {
            leaves[a]
        } else {
            let k = split(b - a);
            let left = self.fill(leaves, a, a + k);
            let right = self.fill(leaves, a + k, b);
            node_hash(&left, &right)
        };
        self.nodes.insert((a, b), hash);
        hash
    }

    /// How many leaves.
    pub fn size(&self) -> usize {
        self.size
    }

    /// The root hash.
    pub fn root(&self) -> Hash {
        self.nodes[&(0, self.size)]
    }

    /// The inclusion path of leaf `index` (leaf side first); empty past the end.
    pub fn path(&self, index: usize) -> Vec<Hash> {
        let mut path = Vec::new();
        if index >= self.size {
            return path;
        }
        let (mut a, mut b) = (0, self.size);
        // Walk down from the root, then reverse: RFC 9162 lists the leaf's sibling first.
        while b - a > 1 {
            let k = split(b - a);
            if index < a + k {
                path.push(self.nodes[&(a + k, b)]);
                b = a + k;
            } else {
                path.push(self.nodes[&(a, a + k)]);
                a += k;
            }
        }
        path.reverse();
        path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_path_proves_its_leaf_against_the_root() {
        for n in 1..=40usize {
            let payloads: Vec<Vec<u8>> = (0..n)
                .map(|i| format!("receipt {i}").into_bytes())
                .collect();
            let tree = BatchTree::new(&payloads).unwrap();
            for (i, payload) in payloads.iter().enumerate() {
                let path = tree.path(i);
                crate::verify::merkle::verify_inclusion(
                    &leaf_hash(payload),
                    i as u64,
                    n as u64,
                    &path,
                    &tree.root(),
                )
                .unwrap();
                if n > 1 {
                    // The same path at another index, or in a tree of another size, fails.
                    let other = (i + 1) % n;
                    assert!(
                        crate::verify::merkle::verify_inclusion(
                            &leaf_hash(payload),
                            other as u64,
                            n as u64,
                            &path,
                            &tree.root()
                        )
                        .is_err()
                    );
                }
            }
        }
        assert!(BatchTree::new::<Vec<u8>>(&[]).is_none());
    }

    #[test]
    fn a_fleet_batch_says_first_log_index_null() {
        let statement = |first_log_index| {
            let predicate = BatchPredicate {
                actor: "a".into(),
                key: KeyRefInReceipt {
                    id: "k".into(),
                    version: 1,
                    backend: "pkcs11".into(),
                },
                size: 2,
                first_sequence: 1,
                first_log_index,
                signed_at: "2026-11-26T17:51:36Z".into(),
            };
            let bytes = BatchStatement::new(&[0; 32], predicate)
                .to_payload()
                .unwrap_or_default();
            String::from_utf8(bytes).unwrap_or_default()
        };
        assert!(statement(None).contains(r#""firstLogIndex":null,"#));
        assert!(statement(Some(4)).contains(r#""firstLogIndex":4,"#));
    }

    #[test]
    fn the_root_of_one_leaf_is_its_leaf_hash() {
        let tree = BatchTree::new(&[b"x"]).unwrap();
        assert_eq!(tree.root(), leaf_hash(b"x"));
        assert!(tree.path(0).is_empty());
    }
}
