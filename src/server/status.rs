//! How internal errors become gRPC statuses. Messages are for the caller: they name the
//! field or the key, never a PIN or internal paths of secrets.

use tonic::Status;

use super::{sequencer::SequencerError, validate::FieldError};
use crate::{backend::BackendError, ledger::StoreError};

impl From<FieldError> for Status {
    fn from(e: FieldError) -> Self {
        Status::invalid_argument(e.to_string())
    }
}

impl From<BackendError> for Status {
    fn from(e: BackendError) -> Self {
        match e {
            BackendError::Unavailable(_) | BackendError::Login(_) | BackendError::Pin(_) => {
                tracing::warn!(error = %e, "backend unavailable");
                Status::unavailable(e.to_string())
            }
            BackendError::KeyNotFound(_) => Status::not_found(e.to_string()),
            BackendError::KeyRefused(_) => Status::failed_precondition(e.to_string()),
            BackendError::Failed { .. } | BackendError::SignatureMismatch => {
                tracing::error!(error = %e, "backend operation failed");
                Status::internal(e.to_string())
            }
        }
    }
}

impl From<StoreError> for Status {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict(_) => Status::already_exists(e.to_string()),
            // The PostgreSQL ledger is unreachable for now: the caller may retry.
            StoreError::Unavailable(_) => {
                tracing::warn!(error = %e, "state database unavailable");
                Status::unavailable("the state database is unavailable; retry")
            }
            StoreError::Sqlite(_)
            | StoreError::Corrupt(_)
            | StoreError::Schema { .. }
            | StoreError::NewerSchema { .. }
            | StoreError::Postgres(_)
            | StoreError::Settings(_)
            | StoreError::File(_) => {
                tracing::error!(error = %e, "state database error");
                Status::internal("state database error")
            }
        }
    }
}

impl From<SequencerError> for Status {
    fn from(e: SequencerError) -> Self {
        match e {
            SequencerError::UnknownActor(_) => Status::not_found(e.to_string()),
            SequencerError::Precondition(_) => Status::failed_precondition(e.to_string()),
            SequencerError::Conflict(_) => Status::already_exists(e.to_string()),
            SequencerError::Log(_) | SequencerError::Checkpoint(_) | SequencerError::Encode(_) => {
                tracing::error!(error = %e, "log error");
                Status::internal("log error")
            }
            SequencerError::Backend(b) => b.into(),
            SequencerError::Store(s) => s.into(),
            SequencerError::NotStored(_) => {
                tracing::error!(error = %e, "batch not stored");
                Status::unavailable("the request could not be stored; nothing was done")
            }
            SequencerError::Stopped => Status::unavailable("the daemon is shutting down"),
            SequencerError::Halted(reason) => Status::unavailable(reason),
            SequencerError::Uncertified(reason) => Status::unavailable(reason),
            SequencerError::Clock(_) => Status::unavailable(e.to_string()),
            SequencerError::Pending(reason) => Status::unavailable(reason),
        }
    }
}
