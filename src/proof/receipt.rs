//! The receipt: an in-toto Statement v1 about one action, signed as a DSSE envelope.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::IN_TOTO_STATEMENT_V1;
use super::lineage::EncodeError;

/// Predicate type URI of receipts.
pub const RECEIPT_PREDICATE_TYPE: &str = "https://actseal.dev/receipt/v1";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Digest {
    pub sha256: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Subject {
    pub name: String,
    pub digest: Digest,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct KeyRefInReceipt {
    pub id: String,
    pub version: u32,
    pub backend: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Action {
    #[serde(rename = "type")]
    pub action_type: String,
    pub target: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub parent_sha256: Option<String>,
}

/// Who asked the daemon for the receipt, as the daemon authenticated it (FORMAT.md §3).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "kind")]
pub enum CallerInReceipt {
    /// A local process, by its kernel-reported credentials.
    #[serde(rename = "unix")]
    Unix { uid: u32, gid: u32, pid: u32 },
    /// An mTLS client, by its certificate.
    #[serde(rename = "x509")]
    X509 {
        #[serde(rename = "spiffeId")]
        spiffe_id: Option<String>,
        subject: String,
    },
    /// A client of the unauthenticated loopback TCP listener (development only).
    #[serde(rename = "insecure-tcp")]
    InsecureTcp { address: String },
}

impl CallerInReceipt {
    /// The identity without what changes between a client's runs (pid, source port): what
    /// makes a retry "the same caller".
    pub fn principal(&self) -> String {
        // JSON arrays, so that no two different identities print the same.
        let parts = match self {
            CallerInReceipt::Unix { uid, gid, .. } => {
                serde_json::json!(["unix", uid, gid])
            }
            CallerInReceipt::X509 { spiffe_id, subject } => {
                serde_json::json!(["x509", spiffe_id, subject])
            }
            CallerInReceipt::InsecureTcp { .. } => serde_json::json!(["insecure-tcp"]),
        };
        parts.to_string()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ReceiptPredicate {
    pub actor: String,
    pub key: KeyRefInReceipt,
    pub action: Action,
    pub context: BTreeMap<String, String>,
    pub caller: CallerInReceipt,
    pub signed_at: String,
    pub sequence: u64,
    pub previous_receipt: Option<Digest>,
    /// The receipt's place in the log; `None` (`"logIndex": null`, the member is always
    /// present) when a fleet node signed it before the integrator ordered it (FORMAT.md §3).
    pub log_index: Option<u64>,
    pub mode: String,
}

/// The receipt statement, serialised once and signed as those exact bytes.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ReceiptStatement {
    #[serde(rename = "_type")]
    pub statement_type: String,
    pub subject: Vec<Subject>,
    pub predicate_type: String,
    pub predicate: ReceiptPredicate,
}

impl ReceiptStatement {
    pub fn new(document_sha256: &[u8; 32], predicate: ReceiptPredicate) -> Self {
        ReceiptStatement {
            statement_type: IN_TOTO_STATEMENT_V1.into(),
            subject: vec![Subject {
                name: predicate.action.target.clone(),
                digest: Digest {
                    sha256: hex::encode(document_sha256),
                },
            }],
            predicate_type: RECEIPT_PREDICATE_TYPE.into(),
            predicate,
        }
    }

    /// The payload bytes to sign; an error rather than an empty payload if it cannot be
    /// encoded.
    pub fn to_payload(&self) -> Result<Vec<u8>, EncodeError> {
        serde_json::to_vec(self).map_err(|e| EncodeError::new("receipt", e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fleet_receipt_says_log_index_null_and_an_indexed_one_its_index() {
        let predicate = |log_index| ReceiptPredicate {
            actor: "a".into(),
            key: KeyRefInReceipt {
                id: "k".into(),
                version: 1,
                backend: "pkcs11".into(),
            },
            action: Action {
                action_type: "t".into(),
                target: "x".into(),
                parent_sha256: None,
            },
            context: BTreeMap::new(),
            caller: CallerInReceipt::InsecureTcp {
                address: "127.0.0.1:1".into(),
            },
            signed_at: "2026-11-26T17:51:36Z".into(),
            sequence: 1,
            previous_receipt: None,
            log_index,
            mode: "single".into(),
        };
        let payload = |log_index| {
            let bytes = ReceiptStatement::new(&[0; 32], predicate(log_index))
                .to_payload()
                .unwrap_or_default();
            String::from_utf8(bytes).unwrap_or_default()
        };
        assert!(payload(None).contains(r#""logIndex":null,"mode""#));
        assert!(payload(Some(7)).contains(r#""logIndex":7,"mode""#));
    }
}
