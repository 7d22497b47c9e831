//! actseal: per-action proof for non-human identities.
//!
//! Actor keys live in hardware ([`backend`]); every action is signed into a receipt
//! ([`proof`]), stored durably in the daemon's log ([`ledger`]) and served over gRPC
//! ([`server`]). [`verify`] checks a proof bundle offline and shares no code with signing.

pub mod backend;
pub mod cli;
pub mod config;
pub mod files;
pub mod lab;
pub mod lab_tpm;
pub mod ledger;
pub mod pki;
pub mod proof;
pub mod secret;
pub mod server;
pub mod verify;

/// Generated gRPC types for `actseal.v1`.
pub mod api {
    tonic::include_proto!("actseal.v1");

    /// Serialized file descriptors, for gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("actseal_descriptor");
}
