//! Checks on everything a caller sends, before anything is signed or stored. Each error
//! names the field it is about.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

use crate::{
    api::{SignRequest, sign_request::Action},
    proof::receipt::CallerInReceipt,
};

pub const MAX_ACTOR_LEN: usize = 256;
pub const MAX_ACTION_TYPE_LEN: usize = 128;
pub const MAX_TARGET_LEN: usize = 1024;
pub const MAX_DOCUMENT_LEN: usize = 1 << 20;
pub const MAX_CONTEXT_ENTRIES: usize = 32;
pub const MAX_CONTEXT_KEY_LEN: usize = 128;
pub const MAX_CONTEXT_VALUE_LEN: usize = 1024;
pub const MAX_CONTEXT_TOTAL: usize = 8 * 1024;
pub const MAX_REQUEST_ID_LEN: usize = 128;

/// A field that failed validation, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct FieldError {
    pub field: &'static str,
    pub reason: String,
}

fn field_error(field: &'static str, reason: impl Into<String>) -> FieldError {
    FieldError {
        field,
        reason: reason.into(),
    }
}

/// A sign request that passed every check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidAction {
    pub actor: String,
    pub action_type: String,
    pub target: String,
    pub document_sha256: [u8; 32],
    pub context: BTreeMap<String, String>,
    pub parent_sha256: Option<[u8; 32]>,
    /// Who asked for it (recorded in the receipt); boxed to keep the sequencer's queue
    /// entries small.
    pub caller: Box<CallerInReceipt>,
    /// The batch window of the policy rule that allowed it (zero: single), set once it is
    /// authorised; `None` leaves it to `[[ledger.batch]]`. Not part of what is signed.
    pub rule_window: Option<std::time::Duration>,
}

impl ValidAction {
    /// A digest of everything the request asks to be signed and of who asks, to tell a retry
    /// (same request id, same content, same caller) from a reuse of the id for something else
    /// or by someone else, who must not be handed another caller's bundle.
    pub fn fingerprint(&self) -> [u8; 32] {
        let mut hash = Sha256::new();
        let mut field = |bytes: &[u8]| {
            hash.update((bytes.len() as u64).to_be_bytes());
            hash.update(bytes);
        };
        field(self.caller.principal().as_bytes());
        field(self.actor.as_bytes());
        field(self.action_type.as_bytes());
        field(self.target.as_bytes());
        field(&self.document_sha256);
        field(self.parent_sha256.as_ref().map_or(&[][..], |p| &p[..]));
        for (key, value) in &self.context {
            field(key.as_bytes());
            field(value.as_bytes());
        }
        hash.finalize().into()
    }
}

/// The fingerprint ([`ValidAction::fingerprint`]) of the request a stored receipt answered,
/// rebuilt from its statement's bytes: a request id whose stored fingerprint differs was made
/// for another request (a re-pointed `requests` row). `None` if the payload is no receipt.
pub fn fingerprint_of_receipt(payload: &[u8]) -> Option<[u8; 32]> {
    let statement: crate::proof::receipt::ReceiptStatement =
        serde_json::from_slice(payload).ok()?;
    let subject = statement.subject.first()?;
    let document_sha256 = <[u8; 32]>::try_from(hex::decode(&subject.digest.sha256).ok()?).ok()?;
    let parent_sha256 = match &statement.predicate.action.parent_sha256 {
        None => None,
        Some(p) => Some(<[u8; 32]>::try_from(hex::decode(p).ok()?).ok()?),
    };
    let p = statement.predicate;
    let action = ValidAction {
        actor: p.actor,
        action_type: p.action.action_type,
        target: p.action.target,
        document_sha256,
        context: p.context,
        parent_sha256,
        caller: Box::new(p.caller),
        rule_window: None,
    };
    Some(action.fingerprint())
}

/// Printable text: no control characters, which would let a caller forge lines in logs and
/// in a human's reading of a receipt.
fn text(field: &'static str, value: &str, max: usize) -> Result<(), FieldError> {
    if value.is_empty() {
        return Err(field_error(field, "must not be empty"));
    }
    if value.len() > max {
        return Err(field_error(
            field,
            format!("is {} bytes; at most {max}", value.len()),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(field_error(field, "must not contain control characters"));
    }
    Ok(())
}

/// An actor name: printable, no spaces (SPIFFE IDs, URIs, service account names).
pub fn actor(value: &str) -> Result<(), FieldError> {
    text("actor", value, MAX_ACTOR_LEN)?;
    if value.chars().any(char::is_whitespace) {
        return Err(field_error("actor", "must not contain white space"));
    }
    Ok(())
}

fn action_type(value: &str) -> Result<(), FieldError> {
    text("action_type", value, MAX_ACTION_TYPE_LEN)?;
    if !value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':' | '/'))
    {
        return Err(field_error(
            "action_type",
            "may hold only ASCII letters, digits and . _ - : /",
        ));
    }
    Ok(())
}

fn digest(field: &'static str, bytes: &[u8]) -> Result<[u8; 32], FieldError> {
    <[u8; 32]>::try_from(bytes).map_err(|_| {
        field_error(
            field,
            format!("a SHA-256 digest is 32 bytes, got {}", bytes.len()),
        )
    })
}

fn context(
    entries: &std::collections::HashMap<String, String>,
) -> Result<BTreeMap<String, String>, FieldError> {
    if entries.len() > MAX_CONTEXT_ENTRIES {
        return Err(field_error(
            "context",
            format!(
                "has {} entries; at most {MAX_CONTEXT_ENTRIES}",
                entries.len()
            ),
        ));
    }
    let mut total = 0;
    for (key, value) in entries {
        if key.is_empty() || key.len() > MAX_CONTEXT_KEY_LEN {
            return Err(field_error(
                "context",
                format!("keys are 1 to {MAX_CONTEXT_KEY_LEN} bytes"),
            ));
        }
        if !key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        {
            return Err(field_error(
                "context",
                "keys may hold only ASCII letters, digits and . _ -",
            ));
        }
        if value.len() > MAX_CONTEXT_VALUE_LEN {
            return Err(field_error(
                "context",
                format!(
                    "value of {key:?} is {} bytes; at most {MAX_CONTEXT_VALUE_LEN}",
                    value.len()
                ),
            ));
        }
        if value
            .chars()
            .any(|c| c.is_control() && c != '\n' && c != '\t')
        {
            return Err(field_error(
                "context",
                format!("value of {key:?} contains control characters"),
            ));
        }
        total += key.len() + value.len();
    }
    if total > MAX_CONTEXT_TOTAL {
        return Err(field_error(
            "context",
            format!("is {total} bytes in all; at most {MAX_CONTEXT_TOTAL}"),
        ));
    }
    Ok(entries
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect())
}

/// The optional client request id: printable ASCII without spaces, at most 128 bytes.
pub fn request_id(value: &str) -> Result<Option<String>, FieldError> {
    if value.is_empty() {
        return Ok(None);
    }
    if value.len() > MAX_REQUEST_ID_LEN || !value.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(field_error(
            "request_id",
            format!("must be 1 to {MAX_REQUEST_ID_LEN} printable ASCII characters without spaces"),
        ));
    }
    Ok(Some(value.to_owned()))
}

/// Checks a sign request and hashes the document if the caller sent it.
pub fn sign_request(
    request: &SignRequest,
    caller: CallerInReceipt,
) -> Result<ValidAction, FieldError> {
    actor(&request.actor)?;
    action_type(&request.action_type)?;
    text("target", &request.target, MAX_TARGET_LEN)?;
    let document_sha256 = match &request.action {
        None => {
            return Err(field_error(
                "action",
                "set either document or document_sha256",
            ));
        }
        Some(Action::Document(document)) => {
            if document.is_empty() {
                return Err(field_error("document", "must not be empty"));
            }
            if document.len() > MAX_DOCUMENT_LEN {
                return Err(field_error(
                    "document",
                    format!(
                        "is {} bytes; at most {MAX_DOCUMENT_LEN} (send document_sha256 for larger documents)",
                        document.len()
                    ),
                ));
            }
            Sha256::digest(document).into()
        }
        Some(Action::DocumentSha256(bytes)) => digest("document_sha256", bytes)?,
    };
    let parent_sha256 = match request.parent_action_sha256.as_slice() {
        [] => None,
        bytes => Some(digest("parent_action_sha256", bytes)?),
    };
    Ok(ValidAction {
        actor: request.actor.clone(),
        action_type: request.action_type.clone(),
        target: request.target.clone(),
        document_sha256,
        context: context(&request.context)?,
        parent_sha256,
        caller: Box::new(caller),
        rule_window: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good() -> SignRequest {
        SignRequest {
            actor: "spiffe://acme.example/agents/payments".into(),
            action_type: "payment.initiate".into(),
            target: "acct:DE89".into(),
            action: Some(Action::Document(b"{}".to_vec())),
            context: [("ticket".to_string(), "OPS-1".to_string())].into(),
            parent_action_sha256: vec![],
            request_id: String::new(),
        }
    }

    fn caller() -> CallerInReceipt {
        CallerInReceipt::Unix {
            uid: 1000,
            gid: 1000,
            pid: 42,
        }
    }

    fn field_of(request: SignRequest) -> &'static str {
        sign_request(&request, caller()).unwrap_err().field
    }

    #[test]
    fn accepts_a_good_request_and_hashes_the_document() {
        let valid = sign_request(&good(), caller()).unwrap();
        assert_eq!(
            valid.document_sha256,
            <[u8; 32]>::from(Sha256::digest(b"{}"))
        );
    }

    #[test]
    fn a_retry_is_the_same_request_from_the_same_principal() {
        let first = sign_request(&good(), caller()).unwrap().fingerprint();
        let restarted = CallerInReceipt::Unix {
            uid: 1000,
            gid: 1000,
            pid: 4242,
        };
        assert_eq!(
            sign_request(&good(), restarted).unwrap().fingerprint(),
            first
        );
        let someone_else = CallerInReceipt::Unix {
            uid: 1001,
            gid: 1000,
            pid: 42,
        };
        assert_ne!(
            sign_request(&good(), someone_else).unwrap().fingerprint(),
            first
        );
        let other_target = SignRequest {
            target: "acct:other".into(),
            ..good()
        };
        assert_ne!(
            sign_request(&other_target, caller()).unwrap().fingerprint(),
            first
        );
    }

    #[test]
    fn each_bad_field_is_named() {
        assert_eq!(
            field_of(SignRequest {
                actor: String::new(),
                ..good()
            }),
            "actor"
        );
        assert_eq!(
            field_of(SignRequest {
                actor: "a b".into(),
                ..good()
            }),
            "actor"
        );
        assert_eq!(
            field_of(SignRequest {
                actor: "x".repeat(MAX_ACTOR_LEN + 1),
                ..good()
            }),
            "actor"
        );
        assert_eq!(
            field_of(SignRequest {
                action_type: "pay ment".into(),
                ..good()
            }),
            "action_type"
        );
        assert_eq!(
            field_of(SignRequest {
                target: "a\nb".into(),
                ..good()
            }),
            "target"
        );
        assert_eq!(
            field_of(SignRequest {
                action: None,
                ..good()
            }),
            "action"
        );
        assert_eq!(
            field_of(SignRequest {
                action: Some(Action::Document(vec![])),
                ..good()
            }),
            "document"
        );
        assert_eq!(
            field_of(SignRequest {
                action: Some(Action::Document(vec![0; MAX_DOCUMENT_LEN + 1])),
                ..good()
            }),
            "document"
        );
        assert_eq!(
            field_of(SignRequest {
                action: Some(Action::DocumentSha256(vec![0; 31])),
                ..good()
            }),
            "document_sha256"
        );
        assert_eq!(
            field_of(SignRequest {
                parent_action_sha256: vec![1; 33],
                ..good()
            }),
            "parent_action_sha256"
        );
        let many = (0..=MAX_CONTEXT_ENTRIES)
            .map(|i| (format!("k{i}"), "v".to_string()))
            .collect();
        assert_eq!(
            field_of(SignRequest {
                context: many,
                ..good()
            }),
            "context"
        );
        let big = [("k".to_string(), "v".repeat(MAX_CONTEXT_VALUE_LEN + 1))].into();
        assert_eq!(
            field_of(SignRequest {
                context: big,
                ..good()
            }),
            "context"
        );
        let bad_key = [("k y".to_string(), "v".to_string())].into();
        assert_eq!(
            field_of(SignRequest {
                context: bad_key,
                ..good()
            }),
            "context"
        );
    }
}
