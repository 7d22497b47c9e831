//! The log head record (`crate::ledger::head`) in the TPM: an ordinary NV index of the
//! record's fixed size in the owner hierarchy, written and read with owner authorisation.
//!
//! Why an ordinary index and not an NV counter: the record must say *which* tree head was
//! acknowledged (size, root, the log's binding), not only that the log grew; a counter
//! would still need the rest stored somewhere a restored database cannot reach. The index
//! is not `ORDERLY` (an orderly index loses its newest value on a power cut), so every write
//! reaches the TPM's NV memory: fine for swtpm and firmware TPMs; a discrete TPM's NV
//! wears and rate-limits writes (see docs/CONFIG.md). Whoever holds owner authorisation can
//! rewrite it, as the token's user PIN holder can rewrite the PKCS#11 data object.

use tss_esapi::{
    Context,
    attributes::NvIndexAttributesBuilder,
    constants::CapabilityType,
    handles::{NvIndexHandle, NvIndexTpmHandle, ObjectHandle, TpmHandle},
    interface_types::{
        algorithm::HashingAlgorithm,
        resource_handles::{NvAuth, Provision},
        session_handles::AuthSession,
    },
    structures::{CapabilityData, MaxNvBuffer, NvPublicBuilder},
};

use super::{BackendError, TpmBackend, failed};

/// The NV index holding the record (owner range 0x01000000–0x013FFFFF).
pub const LOG_HEAD_NV_INDEX: u32 = 0x0100_A5E1;

fn index() -> Result<NvIndexTpmHandle, BackendError> {
    NvIndexTpmHandle::new(LOG_HEAD_NV_INDEX).map_err(failed("NV index handle"))
}

/// Whether the index is defined (a capability query: no error to tell from a fault).
fn defined(ctx: &mut Context) -> Result<bool, BackendError> {
    let (data, _) = ctx
        .execute_without_session(|ctx| {
            ctx.get_capability(CapabilityType::Handles, LOG_HEAD_NV_INDEX, 1)
        })
        .map_err(failed("list NV indexes"))?;
    Ok(match data {
        CapabilityData::Handles(handles) => handles
            .into_inner()
            .iter()
            .any(|h| u32::from(*h) == LOG_HEAD_NV_INDEX),
        _ => false,
    })
}

/// Runs `f` with an ESYS handle for the index (defined), closing it afterwards.
fn with_index<T>(
    ctx: &mut Context,
    f: impl FnOnce(&mut Context, NvIndexHandle, usize, bool) -> Result<T, BackendError>,
) -> Result<T, BackendError> {
    let nv = TpmHandle::NvIndex(index()?);
    let mut object = ctx
        .execute_without_session(|ctx| ctx.tr_from_tpm_public(nv))
        .map_err(failed("open NV index"))?;
    let handle = NvIndexHandle::from(object);
    let result = ctx
        .execute_without_session(|ctx| ctx.nv_read_public(handle))
        .map_err(failed("read NV index public area"))
        .and_then(|(public, _)| {
            let written = public.attributes().written();
            f(ctx, handle, public.data_size(), written)
        });
    let _ = ctx.tr_close(&mut object);
    result
}

/// The record, `None` if the index is not defined or not written yet.
pub(super) fn read(backend: &TpmBackend) -> Result<Option<Vec<u8>>, BackendError> {
    backend.run(|open| {
        if !defined(&mut open.ctx)? {
            return Ok(None);
        }
        with_index(&mut open.ctx, |ctx, handle, size, written| {
            if !written {
                return Ok(None);
            }
            let size = u16::try_from(size).map_err(|_| BackendError::Failed {
                operation: "read log head",
                detail: format!("NV index {LOG_HEAD_NV_INDEX:#x} is {size} bytes"),
            })?;
            let data = ctx
                .execute_with_session(Some(AuthSession::Password), |ctx| {
                    ctx.nv_read(NvAuth::Owner, handle, size, 0)
                })
                .map_err(failed("NV read log head"))?;
            Ok(Some(data.to_vec()))
        })
    })
}

/// Writes the record, defining the index (of the record's size) the first time.
pub(super) fn write(backend: &TpmBackend, record: &[u8]) -> Result<(), BackendError> {
    let buffer = MaxNvBuffer::try_from(record.to_vec()).map_err(failed("NV buffer"))?;
    backend.run(|open| {
        let (handle, size) = match open.log_head_index {
            Some(found) => found,
            None => {
                if !defined(&mut open.ctx)? {
                    define(&mut open.ctx, record.len())?;
                }
                let found = open_index(&mut open.ctx)?;
                open.log_head_index = Some(found);
                found
            }
        };
        if size != record.len() {
            return Err(BackendError::KeyRefused(format!(
                "NV index {LOG_HEAD_NV_INDEX:#x} holds {size} bytes, a log head record is {}; \
                 it is not actseal's (undefine it or free the index)",
                record.len()
            )));
        }
        // A failure drops the connection (`run`), and the cached handle with it.
        open.ctx
            .execute_with_session(Some(AuthSession::Password), |ctx| {
                ctx.nv_write(NvAuth::Owner, handle, buffer.clone(), 0)
            })
            .map_err(failed("NV write log head"))
    })
}

/// An ESYS handle for the (defined) index and its data size, kept open for the connection:
/// it holds nothing in the TPM, only in ESYS.
fn open_index(ctx: &mut Context) -> Result<(NvIndexHandle, usize), BackendError> {
    let nv = TpmHandle::NvIndex(index()?);
    let mut object = ctx
        .execute_without_session(|ctx| ctx.tr_from_tpm_public(nv))
        .map_err(failed("open NV index"))?;
    let handle = NvIndexHandle::from(object);
    match ctx.execute_without_session(|ctx| ctx.nv_read_public(handle)) {
        Ok((public, _)) => Ok((handle, public.data_size())),
        Err(e) => {
            let _ = ctx.tr_close(&mut object);
            Err(failed("read NV index public area")(e))
        }
    }
}

fn define(ctx: &mut Context, size: usize) -> Result<(), BackendError> {
    let attributes = NvIndexAttributesBuilder::new()
        .with_owner_write(true)
        .with_owner_read(true)
        .with_no_da(true)
        .build()
        .map_err(failed("NV index attributes"))?;
    let public = NvPublicBuilder::new()
        .with_nv_index(index()?)
        .with_index_name_algorithm(HashingAlgorithm::Sha256)
        .with_index_attributes(attributes)
        .with_data_area_size(size)
        .build()
        .map_err(failed("NV index public area"))?;
    let handle = ctx
        .execute_with_session(Some(AuthSession::Password), |ctx| {
            ctx.nv_define_space(Provision::Owner, None, public)
        })
        .map_err(failed("NV define log head index"))?;
    let mut object = ObjectHandle::from(handle);
    let _ = ctx.tr_close(&mut object);
    tracing::info!(
        index = format!("{LOG_HEAD_NV_INDEX:#x}"),
        size,
        "TPM NV index for the log head defined"
    );
    Ok(())
}
