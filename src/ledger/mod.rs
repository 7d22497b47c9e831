//! The daemon's durable state: actor keys and the append-only receipt log (SQLite).

pub mod store;

pub use store::{ActorHead, KeyRecord, KeyState, ReceiptRow, Store, StoreError};
