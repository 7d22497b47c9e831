//! The log head record (`crate::ledger::head`) on the token: one private token data object
//! (CKO_DATA, CKA_PRIVATE, CKA_TOKEN), readable and writable only after login with the user
//! PIN, so a copy or loss of the state database cannot take it along. Kept apart from the
//! session code: only `with_session` is borrowed from it.

use std::sync::atomic::{AtomicBool, Ordering};

use cryptoki::{
    error::RvError,
    object::{Attribute, AttributeType, ObjectClass, ObjectHandle},
    session::Session,
};

use super::{BackendError, Pkcs11Backend, classify};

/// CKA_LABEL prefix of the data objects holding the log's newest acknowledged tree head.
pub const LOG_HEAD_LABEL: &str = "actseal-log-head";
/// CKA_APPLICATION of that object.
const LOG_HEAD_APPLICATION: &str = "actseal";

/// The record, `None` if the token holds none yet.
pub(super) fn read(backend: &Pkcs11Backend) -> Result<Option<Vec<u8>>, BackendError> {
    backend.pool.run("read log head", |s| {
        let Some(&(handle, _)) = find(&s.session)?.last() else {
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

/// Set once the token refused to change a data object's CKA_VALUE (SoftHSM keeps it read-only).
static VALUE_READ_ONLY: AtomicBool = AtomicBool::new(false);

/// Replaces the record; on the token when it returns. Where the token lets CKA_VALUE change
/// (PKCS#11 allows it for data objects) the newest object is rewritten in place: one write.
/// Where it does not (SoftHSM: AttributeReadOnly), each record is a new object with the next
/// generation in its label (`actseal-log-head/<n>`), and the older ones are destroyed after it
/// exists: a crash between leaves two, and the newer (complete) one counts.
pub(super) fn write(backend: &Pkcs11Backend, record: &[u8]) -> Result<(), BackendError> {
    backend.pool.run("write log head", |s| {
        let older = find(&s.session)?;
        if let Some(&(newest, _)) = older.last()
            && !VALUE_READ_ONLY.load(Ordering::Relaxed)
        {
            match s
                .session
                .update_attributes(newest, &[Attribute::Value(record.to_vec())])
            {
                Ok(()) => return Ok(()),
                Err(cryptoki::error::Error::Pkcs11(
                    RvError::AttributeReadOnly | RvError::ActionProhibited,
                    _,
                )) => VALUE_READ_ONLY.store(true, Ordering::Relaxed),
                Err(e) => return Err(classify("C_SetAttributeValue", e)),
            }
        }
        let generation = older.last().map_or(0, |&(_, g)| g.wrapping_add(1));
        s.session
            .create_object(&[
                Attribute::Class(ObjectClass::DATA),
                Attribute::Token(true),
                Attribute::Private(true),
                Attribute::Label(format!("{LOG_HEAD_LABEL}/{generation}").into_bytes()),
                Attribute::Application(LOG_HEAD_APPLICATION.as_bytes().to_vec()),
                Attribute::Value(record.to_vec()),
            ])
            .map_err(|e| classify("C_CreateObject", e))?;
        for (handle, _) in older {
            s.session
                .destroy_object(handle)
                .map_err(|e| classify("C_DestroyObject", e))?;
        }
        Ok(())
    })
}

/// The token's log head objects with their generations, oldest first.
fn find(session: &Session) -> Result<Vec<(ObjectHandle, u64)>, BackendError> {
    let handles = session
        .find_objects(&[
            Attribute::Class(ObjectClass::DATA),
            Attribute::Application(LOG_HEAD_APPLICATION.as_bytes().to_vec()),
        ])
        .map_err(|e| classify("C_FindObjects", e))?;
    let mut found = Vec::with_capacity(handles.len());
    for handle in handles {
        let attributes = session
            .get_attributes(handle, &[AttributeType::Label])
            .map_err(|e| classify("C_GetAttributeValue", e))?;
        let generation = attributes.into_iter().find_map(|a| match a {
            Attribute::Label(label) => String::from_utf8(label)
                .ok()?
                .strip_prefix(LOG_HEAD_LABEL)?
                .strip_prefix('/')?
                .parse::<u64>()
                .ok(),
            _ => None,
        });
        // Other data objects of the application are not log heads.
        if let Some(generation) = generation {
            found.push((handle, generation));
        }
    }
    found.sort_by_key(|&(_, g)| g);
    Ok(found)
}
