//! The log head record (`crate::ledger::head`) on the token: one private token data object
//! (CKO_DATA, CKA_PRIVATE, CKA_TOKEN), readable and writable only after login with the user
//! PIN, so a copy or loss of the state database cannot take it along. Kept apart from the
//! session code: only `with_session` is borrowed from it.

use cryptoki::{
    object::{Attribute, AttributeType, ObjectClass, ObjectHandle},
    session::Session,
};

use super::{BackendError, Pkcs11Backend, classify};

/// CKA_LABEL of the data object holding the log's newest acknowledged tree head.
pub const LOG_HEAD_LABEL: &str = "actseal-log-head";
/// CKA_APPLICATION of that object.
const LOG_HEAD_APPLICATION: &str = "actseal";

/// The record, `None` if the token holds none yet.
pub(super) fn read(backend: &Pkcs11Backend) -> Result<Option<Vec<u8>>, BackendError> {
    backend.with_session("read log head", |s| {
        let Some(handle) = find(backend, &s.session)? else {
            return Ok(None);
        };
        let attributes = s
            .session
            .get_attributes(handle, &[AttributeType::Value])
            .map_err(|e| classify("C_GetAttributeValue", e))?;
        // Tokens omit what they will not reveal: match on the type.
        attributes
            .into_iter()
            .find_map(|a| match a {
                Attribute::Value(value) => Some(Some(value)),
                _ => None,
            })
            .ok_or_else(|| BackendError::Failed {
                operation: "read log head",
                detail: "the token does not reveal the log head object's value".into(),
            })
    })
}

/// Replaces the record (creating the object the first time); on the token when it returns.
pub(super) fn write(backend: &Pkcs11Backend, record: &[u8]) -> Result<(), BackendError> {
    backend.with_session("write log head", |s| match find(backend, &s.session)? {
        Some(handle) => s
            .session
            .update_attributes(handle, &[Attribute::Value(record.to_vec())])
            .map_err(|e| classify("C_SetAttributeValue", e)),
        None => s
            .session
            .create_object(&[
                Attribute::Class(ObjectClass::DATA),
                Attribute::Token(true),
                Attribute::Private(true),
                Attribute::Modifiable(true),
                Attribute::Label(LOG_HEAD_LABEL.as_bytes().to_vec()),
                Attribute::Application(LOG_HEAD_APPLICATION.as_bytes().to_vec()),
                Attribute::Value(record.to_vec()),
            ])
            .map(|_| ())
            .map_err(|e| classify("C_CreateObject", e)),
    })
}

/// The token's log head object, if there is one; two are refused (which would be ours?).
fn find(backend: &Pkcs11Backend, session: &Session) -> Result<Option<ObjectHandle>, BackendError> {
    let found = session
        .find_objects(&[
            Attribute::Class(ObjectClass::DATA),
            Attribute::Label(LOG_HEAD_LABEL.as_bytes().to_vec()),
            Attribute::Application(LOG_HEAD_APPLICATION.as_bytes().to_vec()),
        ])
        .map_err(|e| classify("C_FindObjects", e))?;
    match found[..] {
        [] => Ok(None),
        [handle] => Ok(Some(handle)),
        _ => Err(BackendError::KeyRefused(format!(
            "token {:?} holds {} log head objects labelled {LOG_HEAD_LABEL:?}; one daemon's log per token",
            backend.token.label,
            found.len()
        ))),
    }
}
