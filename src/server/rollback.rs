//! Start-up against the log head the hardware keeps (`crate::ledger::head`): the stored log
//! must reach the newest acknowledged tree head, a lost database is not taken for a new log,
//! and a declared fresh start (`actseal log recover --declare-fresh-start`) is the only way
//! to begin another log on the same token or TPM.

use base64::{Engine, engine::general_purpose::STANDARD as B64};
use serde::{Deserialize, Serialize};

use super::{META_KEY_REF, META_LINEAGE, META_ORIGIN, META_PUBLIC_KEY, StartError, sequencer};
use crate::{
    backend::Backend,
    ledger::{
        Store,
        head::{self, HeadError, LogBinding, LogHead, PreviousLog},
        integrity::{self, CheckMode, Checks, LogStatus},
    },
};

/// Meta row of a new database made by `actseal log recover --declare-fresh-start`: the new
/// log's origin and the hardware record of the log it replaces.
pub const META_FRESH_START: &str = "log.fresh_start";

/// A fresh start the operator declared, waiting for the daemon to carry it out.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FreshStart {
    pub origin: String,
    /// Hex of the hardware's log head record at the declaration.
    pub replaces: String,
}

/// The log head record the hardware holds, decoded. `backend` is the one that holds the log
/// key ([`sequencer::LogIdentity::backend`], the log token's with `[log_token]`).
pub fn read_head(backend: &dyn Backend) -> Result<Option<(LogHead, Vec<u8>)>, StartError> {
    if !backend.keeps_log_head() {
        return Ok(None);
    }
    let Some(bytes) = backend.read_log_head()? else {
        return Ok(None);
    };
    let head = LogHead::decode(&bytes).map_err(head_error)?;
    Ok(Some((head, bytes)))
}

pub(super) fn head_error(e: HeadError) -> StartError {
    StartError::Rollback(e.to_string())
}

/// The declared fresh start this database carries, if it replaces exactly the log whose
/// record the hardware holds (a declaration about another record is stale: refused).
pub(super) fn pending_fresh_start(
    store: &Store,
    hardware: Option<&(LogHead, Vec<u8>)>,
) -> Result<Option<(FreshStart, PreviousLog)>, StartError> {
    let (Some(text), Some((head, bytes))) = (store.meta(META_FRESH_START)?, hardware) else {
        return Ok(None);
    };
    let declared: FreshStart = serde_json::from_str(&text).map_err(|e| {
        StartError::Rollback(format!("the declared fresh start is unreadable: {e}"))
    })?;
    if declared.replaces != hex::encode(bytes) {
        return Ok(None);
    }
    Ok(Some((
        declared,
        PreviousLog {
            size: head.size,
            root: head.root,
            log_key_id: head.binding.log_key_id,
            origin_sha256: head.binding.origin_sha256,
        },
    )))
}

/// The binding of the stored log identity, from the meta rows byte for byte.
fn stored_binding(store: &Store) -> Result<LogBinding, StartError> {
    let get = |name: &str| -> Result<String, StartError> {
        store
            .meta(name)?
            .ok_or_else(|| StartError::LogKey(format!("the stored log identity lacks {name}")))
    };
    let spki = B64
        .decode(get(META_PUBLIC_KEY)?)
        .map_err(|_| StartError::LogKey("stored public key is unreadable".into()))?;
    Ok(LogBinding::new(
        &get(META_ORIGIN)?,
        &spki,
        &get(META_KEY_REF)?,
        &get(META_LINEAGE)?,
    ))
}

/// The start-up check (incremental from a watermark the hardware's record vouches for), then
/// the comparison with the hardware's record; on success the watermark and the record are
/// brought up to date. `fresh` is the replaced log of a fresh start not yet begun: the
/// hardware's record is of that log, not this one.
pub(super) fn check_start(
    store: &Store,
    log: &sequencer::LogIdentity,
    hardware: Option<&LogHead>,
    fresh: Option<PreviousLog>,
) -> Result<(LogStatus, Option<LogHead>), StartError> {
    let backend = log.backend.as_ref();
    let spki = log.spki_der();
    let checkpoint_ok = |note: &str| {
        crate::verify::checkpoint::verify_checkpoint(note.as_bytes(), &log.origin, &spki)
            .map(|_| ())
            .map_err(|e| e.to_string())
    };
    let own = if fresh.is_some() { None } else { hardware };
    let checks = Checks {
        origin: &log.origin,
        checkpoint_ok: &checkpoint_ok,
        request_fingerprint: &super::validate::fingerprint_of_receipt,
        trusted_watermark: own.map(|h| h.watermark_sha256),
    };
    let status = integrity::check(store, &checks, CheckMode::Incremental)?;
    if !backend.keeps_log_head() {
        tracing::warn!(backend = %backend.kind(), "this backend keeps no log head: a lost or restored database cannot be detected");
        integrity::save_watermark(store, &status.watermark)?;
        return Ok((status, None));
    }
    let stored = head::StoredHead {
        binding: stored_binding(store)?,
        size: status.size,
        root: status.root,
        requests: status.requests,
    };
    let (mut record, _) = head::reconcile(store, &stored, own).map_err(head_error)?;
    if let Some(previous) = fresh {
        record.previous = Some(previous);
    }
    // The watermark first: a crash before the record names it only costs a full check.
    integrity::save_watermark(store, &status.watermark)?;
    record.watermark_sha256 = integrity::watermark_sha256(&status.watermark);
    write_record(backend, &record, fresh.is_none())?;
    Ok((status, Some(record)))
}

/// Writes the start-up record; unless it starts a declared fresh log, only over no newer
/// head (in a fleet, another holder may have written one since it was read).
fn write_record(backend: &dyn Backend, record: &LogHead, guarded: bool) -> Result<(), StartError> {
    if !guarded {
        return Ok(backend.write_log_head(&record.encode())?);
    }
    match head::replace_guarded(backend, record)? {
        crate::backend::HeadWrite::Written => Ok(()),
        crate::backend::HeadWrite::Refused(reason) => Err(StartError::Rollback(reason)),
    }
}
