//! The log head record (`crate::ledger::head`) on the token, in two private token data objects
//! (CKO_DATA, CKA_PRIVATE, CKA_TOKEN: readable and writable only after login with the user
//! PIN, so a copy or loss of the state database cannot take it along) used in turn.
//!
//! Why two, and why in CKA_LABEL: SoftHSM keeps a data object's CKA_VALUE read-only, so a new
//! record once meant a new object and the old one destroyed (a file created and one unlinked,
//! each a journal commit: 10–35 ms on an ext4 mounted with `discard`). CKA_LABEL stays
//! modifiable, and rewriting it rewrites the object's file in place (one truncate and one
//! write, ~3 ms there). But SoftHSM truncates the file before it writes it: a crash in between
//! leaves an empty object. So each write goes to the slot that does *not* hold the newest
//! record, and each slot's label is `generation (8 bytes BE) || record || SHA-256(generation
//! || record)[..16]`: a torn or emptied slot fails its check and the other slot (the previous
//! record) counts. A crash at any point leaves the old record or the new one, never none.

use std::sync::Mutex;

use cryptoki::{
    object::{Attribute, AttributeType, ObjectClass, ObjectHandle},
    session::Session,
};
use sha2::{Digest, Sha256};

use super::{BackendError, Pkcs11Backend, classify, pool::Objects};
use crate::backend::{HeadCheck, HeadWrite};

/// CKA_LABEL prefix of the objects of the earlier layout (one object, a new one per record).
pub const LOG_HEAD_LABEL: &str = "actseal-log-head";
/// CKA_APPLICATION of the earlier layout's objects.
const LEGACY_APPLICATION: &str = "actseal";
/// CKA_APPLICATION of the two slots; their CKA_VALUE names which slot each is.
const SLOT_APPLICATION: &str = "actseal-log-head-slot";
const SLOT_NAMES: [&[u8]; 2] = [b"a", b"b"];
const CHECK_LEN: usize = 16;

/// The slots' object handles, valid in every session of the process: looked up once, since
/// a C_FindObjects makes SoftHSM re-read every object file of the token (33 files a head
/// write on the lab's token, more with every actor key). Only handles: the slots' contents
/// are read before every write, as another process sharing the token may have written them.
/// Handles of an earlier library epoch (a re-initialisation) are not used.
#[derive(Default)]
pub(super) struct SlotCache(Mutex<(u64, Vec<ObjectHandle>)>);

impl SlotCache {
    fn get(&self) -> Vec<ObjectHandle> {
        let cached = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if cached.0 == super::pool::library_epoch() {
            cached.1.clone()
        } else {
            Vec::new()
        }
    }

    fn set(&self, handles: Vec<ObjectHandle>) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = (super::pool::library_epoch(), handles);
    }
}

/// One slot object as found on the token.
struct Slot {
    handle: ObjectHandle,
    name: Vec<u8>,
    /// Its generation and record, `None` if the label is torn or unreadable.
    content: Option<(u64, Vec<u8>)>,
}

fn check(generation: u64, record: &[u8]) -> [u8; CHECK_LEN] {
    let digest = Sha256::new()
        .chain_update(generation.to_be_bytes())
        .chain_update(record)
        .finalize();
    let mut out = [0u8; CHECK_LEN];
    out.copy_from_slice(&digest[..CHECK_LEN]);
    out
}

fn encode_slot(generation: u64, record: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + record.len() + CHECK_LEN);
    out.extend_from_slice(&generation.to_be_bytes());
    out.extend_from_slice(record);
    out.extend_from_slice(&check(generation, record));
    out
}

fn decode_slot(label: &[u8]) -> Option<(u64, Vec<u8>)> {
    if label.len() < 8 + CHECK_LEN {
        return None;
    }
    let (generation, rest) = label.split_at(8);
    let (record, sum) = rest.split_at(rest.len() - CHECK_LEN);
    let generation = u64::from_be_bytes(generation.try_into().ok()?);
    (check(generation, record) == sum).then(|| (generation, record.to_vec()))
}

/// The record, `None` if the token holds none yet.
pub(super) fn read(backend: &Pkcs11Backend) -> Result<Option<Vec<u8>>, BackendError> {
    backend.pool.run("read log head", Objects::Read, |s| {
        if let Some((_, record)) = newest(&slots(&s.session, &backend.head_slots)?) {
            return Ok(Some(record.clone()));
        }
        read_legacy(&s.session)
    })
}

/// Replaces the record; on the token when it returns. One label rewrite of the slot that
/// does not hold the newest record (the first write also makes the slots and removes the
/// earlier layout's objects).
pub(super) fn write(backend: &Pkcs11Backend, record: &[u8]) -> Result<(), BackendError> {
    replace(backend, record, &|_| Ok(())).map(|_| ())
}

/// [`write`] if `allow` accepts the newest record on the token, read in the same session
/// right before the label rewrite (a token has no compare-and-swap: this is as close as it
/// gets to one).
pub(super) fn replace(
    backend: &Pkcs11Backend,
    record: &[u8],
    allow: &HeadCheck<'_>,
) -> Result<HeadWrite, BackendError> {
    backend.pool.run("write log head", Objects::Write, |s| {
        let slots = slots(&s.session, &backend.head_slots)?;
        let current = match newest(&slots) {
            Some((_, record)) => Some(record.clone()),
            None => read_legacy(&s.session)?,
        };
        if let Err(reason) = allow(current.as_deref()) {
            return Ok(HeadWrite::Refused(reason));
        }
        let (generation, newest_name) = match newest(&slots) {
            Some((generation, _)) => (generation.wrapping_add(1), newest_name(&slots)),
            None => (1, None),
        };
        let label = encode_slot(generation, record);
        // Never the newest valid slot: it is what counts if this write is torn.
        let target = slots
            .iter()
            .filter(|slot| Some(&slot.name) != newest_name.as_ref())
            .min_by_key(|slot| slot.content.as_ref().map_or(0, |(g, _)| *g));
        match target {
            Some(slot) if slot.content.is_some() => s
                .session
                .update_attributes(slot.handle, &[Attribute::Label(label)])
                .map_err(|e| classify("C_SetAttributeValue", e))?,
            // A torn slot (a crash inside an earlier rewrite; its name may be unreadable too):
            // made again under the name the intact one does not have.
            Some(slot) => {
                s.session
                    .destroy_object(slot.handle)
                    .map_err(|e| classify("C_DestroyObject", e))?;
                backend.head_slots.set(Vec::new());
                create_slot(&s.session, free_name(&slots, Some(slot.handle))?, label)?;
            }
            None => {
                backend.head_slots.set(Vec::new());
                create_slot(&s.session, free_name(&slots, None)?, label)?;
            }
        }
        if newest_name.is_none() {
            remove_legacy(&s.session)?;
        }
        Ok(HeadWrite::Written)
    })
}

/// A slot name no intact slot but `replacing` has.
fn free_name(
    slots: &[Slot],
    replacing: Option<ObjectHandle>,
) -> Result<&'static [u8], BackendError> {
    let taken = |name: &[u8]| {
        slots.iter().any(|slot| {
            Some(slot.handle) != replacing && slot.content.is_some() && slot.name == name
        })
    };
    SLOT_NAMES
        .into_iter()
        .find(|name| !taken(name))
        .ok_or_else(|| BackendError::Failed {
            operation: "write log head",
            detail: "the token holds more log head slots than actseal makes".into(),
        })
}

fn newest(slots: &[Slot]) -> Option<(u64, &Vec<u8>)> {
    slots
        .iter()
        .filter_map(|slot| slot.content.as_ref().map(|(g, r)| (*g, r)))
        .max_by_key(|(g, _)| *g)
}

fn newest_name(slots: &[Slot]) -> Option<Vec<u8>> {
    slots
        .iter()
        .filter(|slot| slot.content.is_some())
        .max_by_key(|slot| slot.content.as_ref().map(|(g, _)| *g))
        .map(|slot| slot.name.clone())
}

fn create_slot(session: &Session, name: &[u8], label: Vec<u8>) -> Result<(), BackendError> {
    session
        .create_object(&[
            Attribute::Class(ObjectClass::DATA),
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Modifiable(true),
            Attribute::Application(SLOT_APPLICATION.as_bytes().to_vec()),
            Attribute::Value(name.to_vec()),
            Attribute::Label(label),
        ])
        .map(|_| ())
        .map_err(|e| classify("C_CreateObject", e))
}

/// Both slots through the cached handles when they still name two intact slots; otherwise
/// found on the token again (and the handles cached).
fn slots(session: &Session, cache: &SlotCache) -> Result<Vec<Slot>, BackendError> {
    let cached = cache.get();
    if cached.len() == SLOT_NAMES.len() {
        let slots: Vec<Slot> = cached
            .iter()
            .filter_map(|&handle| read_slot(session, handle))
            .collect();
        let intact = slots.len() == SLOT_NAMES.len()
            && slots.iter().all(|slot| slot.content.is_some())
            && slots[0].name != slots[1].name;
        if intact {
            return Ok(slots);
        }
    }
    let slots = find_slots(session)?;
    cache.set(slots.iter().map(|slot| slot.handle).collect());
    Ok(slots)
}

/// A slot by its handle; `None` if the handle names no slot (any more).
fn read_slot(session: &Session, handle: ObjectHandle) -> Option<Slot> {
    let wanted = [
        AttributeType::Application,
        AttributeType::Value,
        AttributeType::Label,
    ];
    let (mut application, mut name, mut content) = (None, None, None);
    for attribute in session.get_attributes(handle, &wanted).ok()? {
        match attribute {
            Attribute::Application(value) => application = Some(value),
            Attribute::Value(value) => name = Some(value),
            Attribute::Label(label) => content = decode_slot(&label),
            _ => {}
        }
    }
    (application.as_deref() == Some(SLOT_APPLICATION.as_bytes())).then(|| Slot {
        handle,
        name: name.unwrap_or_default(),
        content,
    })
}

/// The slots on the token; one whose attributes cannot be read counts as torn.
fn find_slots(session: &Session) -> Result<Vec<Slot>, BackendError> {
    let handles = session
        .find_objects(&[
            Attribute::Class(ObjectClass::DATA),
            Attribute::Application(SLOT_APPLICATION.as_bytes().to_vec()),
        ])
        .map_err(|e| classify("C_FindObjects", e))?;
    Ok(handles
        .into_iter()
        .map(|handle| {
            read_slot(session, handle).unwrap_or(Slot {
                handle,
                name: Vec::new(),
                content: None,
            })
        })
        .collect())
}

/// The earlier layout's objects with their generations, oldest first.
fn find_legacy(session: &Session) -> Result<Vec<(ObjectHandle, u64)>, BackendError> {
    let handles = session
        .find_objects(&[
            Attribute::Class(ObjectClass::DATA),
            Attribute::Application(LEGACY_APPLICATION.as_bytes().to_vec()),
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

fn read_legacy(session: &Session) -> Result<Option<Vec<u8>>, BackendError> {
    let Some(&(handle, _)) = find_legacy(session)?.last() else {
        return Ok(None);
    };
    let attributes = session
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
}

/// Once a slot holds the record, the earlier layout's objects are stale: removed.
fn remove_legacy(session: &Session) -> Result<(), BackendError> {
    for (handle, _) in find_legacy(session)? {
        session
            .destroy_object(handle)
            .map_err(|e| classify("C_DestroyObject", e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slot_label_round_trips_and_any_tear_or_flip_is_refused() {
        let record = vec![7u8; 288];
        let label = encode_slot(42, &record);
        assert_eq!(decode_slot(&label), Some((42, record.clone())));
        for cut in [0, 1, 8, 23, label.len() / 2, label.len() - 1] {
            assert_eq!(decode_slot(&label[..cut]), None, "cut at {cut}");
        }
        for at in [0, 7, 8, 100, label.len() - 1] {
            let mut flipped = label.clone();
            flipped[at] ^= 1;
            assert_eq!(decode_slot(&flipped), None, "flip at {at}");
        }
    }
}
