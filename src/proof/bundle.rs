//! The proof bundle: everything an auditor needs to check one action offline.

use super::lineage::EncodeError;
use serde::{Deserialize, Serialize};

use super::{dsse::Envelope, lineage::Lineage};
use crate::ledger::merkle::Hash;

pub const BUNDLE_MEDIA_TYPE: &str = "application/vnd.actseal.bundle.v1+json";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ActorKeyInBundle {
    pub key_id: String,
    /// Base64 SubjectPublicKeyInfo DER.
    pub public_key: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Bundle {
    pub media_type: String,
    pub receipt: Envelope,
    pub actor_key: ActorKeyInBundle,
    pub lineage: Lineage,
    /// Where the receipt is in the log, proved against a signed checkpoint.
    pub log: LogProof,
    /// A batch receipt's statement and path (its `receipt` has no signature of its own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<super::batch::BatchInBundle>,
}

/// The log key: its public half and its lineage (attested like an actor key whose actor is
/// the log's origin).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct LogKeyInBundle {
    /// The signed-note key name (the log's origin).
    pub key_name: String,
    pub key_id: String,
    /// Base64 SubjectPublicKeyInfo DER.
    pub public_key: String,
    pub lineage: Lineage,
}

/// A receipt's inclusion in the log.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct LogProof {
    pub index: u64,
    pub tree_size: u64,
    /// RFC 9162 inclusion proof, hex hashes, leaf side first.
    pub inclusion_proof: Vec<String>,
    /// The signed checkpoint (C2SP signed note) of `tree_size`; once anchored, with the
    /// witnesses' `cosignature/v1` lines after the log's signature (FORMAT.md §14).
    pub checkpoint: String,
    pub log_key: LogKeyInBundle,
    /// RFC 3161 timestamp tokens over the checkpoint's note text (FORMAT.md §15); absent
    /// until the checkpoint is anchored.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub timestamps: Vec<TimestampInBundle>,
}

/// One RFC 3161 timestamp token.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct TimestampInBundle {
    /// Base64 DER TimeStampToken (a CMS ContentInfo).
    pub token: String,
}

impl LogProof {
    pub fn new(
        index: u64,
        tree_size: u64,
        proof: &[Hash],
        checkpoint: String,
        log_key: LogKeyInBundle,
    ) -> Self {
        LogProof {
            index,
            tree_size,
            inclusion_proof: proof.iter().map(hex::encode).collect(),
            checkpoint,
            log_key,
            timestamps: Vec::new(),
        }
    }
}

impl Bundle {
    /// The bundle as pretty JSON; an error rather than an empty bundle if it cannot be encoded.
    pub fn to_json(&self) -> Result<String, EncodeError> {
        serde_json::to_string_pretty(self).map_err(|e| EncodeError::new("bundle", e))
    }
}

/// A member of bundles serialised once (a key's lineage, the log key), as the pretty JSON it
/// is at its depth of nesting in a bundle, so that its bytes can be spliced into many.
#[derive(Debug, Clone)]
pub struct SplicedJson(Box<serde_json::value::RawValue>);

impl SplicedJson {
    /// `value` as [`Bundle::to_json`] writes it `depth` objects deep. Pretty JSON has no line
    /// break inside a string (they are escaped), so indenting every line is exact.
    pub fn new<T: Serialize>(value: &T, depth: usize) -> Result<Self, EncodeError> {
        let pretty =
            serde_json::to_string_pretty(value).map_err(|e| EncodeError::new("bundle", e))?;
        let indented = pretty.replace('\n', &format!("\n{}", "  ".repeat(depth)));
        serde_json::value::RawValue::from_string(indented)
            .map(SplicedJson)
            .map_err(|e| EncodeError::new("bundle", e))
    }
}

/// A bundle whose lineage and log key are serialised already: [`BundleParts::to_json`] gives
/// the same bytes as [`Bundle::to_json`] of the same contents, without cloning or
/// re-serialising what every receipt of a key shares.
pub struct BundleParts<'a> {
    pub receipt: &'a Envelope,
    pub actor_key_id: &'a str,
    /// Base64 SubjectPublicKeyInfo DER.
    pub actor_public_key: &'a str,
    /// The [`Lineage`], at depth 1.
    pub lineage: &'a SplicedJson,
    pub index: u64,
    pub tree_size: u64,
    pub inclusion_proof: &'a [Hash],
    pub checkpoint: &'a str,
    /// The [`LogKeyInBundle`], at depth 2.
    pub log_key: &'a SplicedJson,
    pub batch: Option<BatchParts<'a>>,
}

/// A batch receipt's member of its bundle, its statement (the same for the whole batch)
/// serialised once, at depth 2.
#[derive(Clone, Copy)]
pub struct BatchParts<'a> {
    pub statement: &'a SplicedJson,
    pub leaf_index: u64,
    /// Hex hashes, leaf side first.
    pub inclusion_proof: &'a [String],
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct BatchOut<'a> {
    statement: &'a serde_json::value::RawValue,
    leaf_index: u64,
    inclusion_proof: &'a [String],
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct BundleOut<'a> {
    media_type: &'static str,
    receipt: &'a Envelope,
    actor_key: ActorKeyOut<'a>,
    lineage: &'a serde_json::value::RawValue,
    log: LogOut<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    batch: Option<BatchOut<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ActorKeyOut<'a> {
    key_id: &'a str,
    public_key: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct LogOut<'a> {
    index: u64,
    tree_size: u64,
    inclusion_proof: HexHashes<'a>,
    checkpoint: &'a str,
    log_key: &'a serde_json::value::RawValue,
}

/// Hashes as the list of hex strings bundles carry, without a `String` each.
struct HexHashes<'a>(&'a [Hash]);

impl Serialize for HexHashes<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{Error, SerializeSeq};
        let mut seq = serializer.serialize_seq(Some(self.0.len()))?;
        let mut text = [0u8; 64];
        for hash in self.0 {
            hex::encode_to_slice(hash, &mut text).map_err(S::Error::custom)?;
            seq.serialize_element(std::str::from_utf8(&text).map_err(S::Error::custom)?)?;
        }
        seq.end()
    }
}

impl BundleParts<'_> {
    /// The bundle as pretty JSON, byte for byte as [`Bundle::to_json`] (no timestamps: a
    /// fresh bundle has none).
    pub fn to_json(&self) -> Result<String, EncodeError> {
        let out = BundleOut {
            media_type: BUNDLE_MEDIA_TYPE,
            receipt: self.receipt,
            actor_key: ActorKeyOut {
                key_id: self.actor_key_id,
                public_key: self.actor_public_key,
            },
            lineage: &self.lineage.0,
            log: LogOut {
                index: self.index,
                tree_size: self.tree_size,
                inclusion_proof: HexHashes(self.inclusion_proof),
                checkpoint: self.checkpoint,
                log_key: &self.log_key.0,
            },
            batch: self.batch.map(|b| BatchOut {
                statement: &b.statement.0,
                leaf_index: b.leaf_index,
                inclusion_proof: b.inclusion_proof,
            }),
        };
        let mut json = Vec::with_capacity(12 * 1024);
        serde_json::to_writer_pretty(&mut json, &out).map_err(|e| EncodeError::new("bundle", e))?;
        String::from_utf8(json).map_err(|e| EncodeError::new("bundle", e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proof::{
        batch::BatchInBundle,
        dsse::EnvelopeSignature,
        lineage::{Attestation, PredecessorKey},
    };

    fn envelope(payload: &str, signed: bool) -> Envelope {
        Envelope {
            payload_type: "application/vnd.in-toto+json".into(),
            payload: payload.into(),
            signatures: if signed {
                vec![EnvelopeSignature {
                    keyid: "k\"1".into(),
                    sig: "c2ln\n".into(),
                }]
            } else {
                Vec::new()
            },
        }
    }

    fn attestation(cert: &str, chain: usize) -> Attestation {
        Attestation {
            backend: "pkcs11".into(),
            statement: Some(envelope("c3RhdGVtZW50", true)),
            tpm2_certify: None,
            device_certificate: cert.into(),
            certificate_chain: (0..chain).map(|i| format!("chain-{i}")).collect(),
        }
    }

    fn lineages() -> Vec<Lineage> {
        let plain = Lineage {
            attestation: attestation("ZGV2aWNl", 0),
            predecessors: Vec::new(),
            rotations: Vec::new(),
        };
        let rotated = Lineage {
            attestation: attestation("ZGV2aWNlMg==", 2),
            predecessors: vec![PredecessorKey {
                version: 1,
                key_id: "old".into(),
                public_key: "cHVi".into(),
                attestation: attestation("b2xk\u{e9}", 1),
            }],
            rotations: vec![envelope("cm90YXRpb24=", true)],
        };
        vec![plain, rotated]
    }

    /// The spliced bundle is byte for byte the one `Bundle::to_json` writes, for single and
    /// batch receipts, with and without lineage history, proofs and chains.
    #[test]
    fn spliced_bundles_are_the_bytes_of_the_serialised_bundle() {
        let hashes: Vec<Hash> = (0..5u8).map(|i| [i; 32]).collect();
        for lineage in lineages() {
            for log_lineage in lineages() {
                for (batch, proof) in [(false, 0), (true, 3), (false, 5), (true, 0)] {
                    let log_key = LogKeyInBundle {
                        key_name: "actseal/test".into(),
                        key_id: "logkey".into(),
                        public_key: "bG9n".into(),
                        lineage: log_lineage.clone(),
                    };
                    let member = BatchInBundle {
                        statement: envelope("YmF0Y2g=", true),
                        leaf_index: 7,
                        inclusion_proof: vec!["ab".into(), "cd".into()],
                    };
                    let receipt = envelope("cmVjZWlwdA==", !batch);
                    let checkpoint = "actseal/test\n42\nroot=\n\n\u{2014} actseal/test sig\n";
                    let whole = Bundle {
                        media_type: BUNDLE_MEDIA_TYPE.into(),
                        receipt: receipt.clone(),
                        actor_key: ActorKeyInBundle {
                            key_id: "actor".into(),
                            public_key: "YWN0b3I=".into(),
                        },
                        lineage: lineage.clone(),
                        log: LogProof::new(
                            9,
                            42,
                            &hashes[..proof],
                            checkpoint.into(),
                            log_key.clone(),
                        ),
                        batch: batch.then(|| member.clone()),
                    };
                    let statement = SplicedJson::new(&member.statement, 2).unwrap();
                    let spliced = BundleParts {
                        receipt: &receipt,
                        actor_key_id: "actor",
                        actor_public_key: "YWN0b3I=",
                        lineage: &SplicedJson::new(&lineage, 1).unwrap(),
                        index: 9,
                        tree_size: 42,
                        inclusion_proof: &hashes[..proof],
                        checkpoint,
                        log_key: &SplicedJson::new(&log_key, 2).unwrap(),
                        batch: batch.then_some(BatchParts {
                            statement: &statement,
                            leaf_index: member.leaf_index,
                            inclusion_proof: &member.inclusion_proof,
                        }),
                    };
                    assert_eq!(spliced.to_json().unwrap(), whole.to_json().unwrap());
                }
            }
        }
    }
}
