//! actseal: per-action proof for non-human identities.
//!
//! Actor keys live in hardware ([`backend`]); every action is signed into a receipt
//! ([`proof`]), stored durably in the daemon's log ([`ledger`]) and served over gRPC
//! ([`server`]). [`verify`] checks a proof bundle offline and shares no code with signing.
//!
//! Without the default `daemon` feature the crate is [`verify`] and the offline commands of
//! [`cli`] alone: no hardware stack, gRPC or SQLite.

#[cfg(feature = "daemon")]
pub mod anchor;
#[cfg(feature = "daemon")]
pub mod backend;
pub mod cli;
#[cfg(feature = "daemon")]
pub mod config;
#[cfg(feature = "daemon")]
pub mod files;
#[cfg(feature = "daemon")]
pub mod fleet;
pub mod forensics;
#[cfg(feature = "daemon")]
pub mod lab;
#[cfg(feature = "daemon")]
pub mod lab_fleet;
#[cfg(feature = "daemon")]
pub mod lab_postgres;
#[cfg(feature = "daemon")]
pub mod lab_token;
#[cfg(feature = "daemon")]
pub mod lab_tpm;
#[cfg(feature = "daemon")]
pub mod lab_tsa;
#[cfg(feature = "daemon")]
pub mod lab_witness;
#[cfg(feature = "daemon")]
pub mod ledger;
#[cfg(feature = "daemon")]
pub mod mcp;
#[cfg(feature = "daemon")]
pub mod pki;
#[cfg(feature = "daemon")]
pub mod proof;
#[cfg(feature = "daemon")]
pub mod secret;
#[cfg(feature = "daemon")]
pub mod server;
pub mod verify;
#[cfg(feature = "daemon")]
pub mod witness;

/// Generated gRPC types for `actseal.v1`.
#[cfg(feature = "daemon")]
pub mod api {
    tonic::include_proto!("actseal.v1");

    /// Serialized file descriptors, for gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("actseal_descriptor");
}
