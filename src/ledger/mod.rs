//! The daemon's durable state: actor keys and the append-only receipt log (SQLite).

pub mod checkpoint;
pub mod entry;
pub mod export;
pub mod head;
pub mod integrity;
pub mod merkle;
pub mod store;

pub use store::{
    ActorHead, Batch, CheckedTable, CheckpointRow, EntryKind, EntryRow, KeyChange, KeyRecord,
    KeyState, ReceiptRow, ScannedEntry, ScannedReceipt, Store, StoreError, StoredReceipt,
};
