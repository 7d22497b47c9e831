//! Row decoding both engines share. A result row is read by column position through
//! [`Columns`], which `rusqlite::Row` and `postgres::Row` implement, so that the start-up
//! scan's row and a key row are decoded once, the same way on both.

use super::{
    EntryKind, KeyRecord, RawKey, ScanVisitor, ScannedEntry, ScannedReceipt, StoreError,
    optional_hash, parse_kind, split_proof, to_u64,
};
use crate::ledger::merkle::Hash;

/// A row's columns by position, as the types the schema gives them (integers are 64-bit on
/// both engines); `None` is SQL NULL.
pub(crate) trait Columns {
    fn int(&self, at: usize) -> Result<i64, StoreError>;
    fn text(&self, at: usize) -> Result<Option<String>, StoreError>;
    fn bytes(&self, at: usize) -> Result<Option<Vec<u8>>, StoreError>;

    /// A text column that must not be NULL.
    fn some_text(&self, at: usize) -> Result<String, StoreError> {
        self.text(at)?.ok_or_else(|| null(at))
    }

    /// A byte column that must not be NULL.
    fn some_bytes(&self, at: usize) -> Result<Vec<u8>, StoreError> {
        self.bytes(at)?.ok_or_else(|| null(at))
    }
}

fn null(at: usize) -> StoreError {
    StoreError::Corrupt(format!("column {at} is NULL where a value must be"))
}

impl Columns for rusqlite::Row<'_> {
    fn int(&self, at: usize) -> Result<i64, StoreError> {
        Ok(self.get(at)?)
    }
    fn text(&self, at: usize) -> Result<Option<String>, StoreError> {
        Ok(self.get(at)?)
    }
    fn bytes(&self, at: usize) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.get(at)?)
    }
}

impl Columns for postgres::Row {
    fn int(&self, at: usize) -> Result<i64, StoreError> {
        Ok(self.try_get(at)?)
    }
    fn text(&self, at: usize) -> Result<Option<String>, StoreError> {
        Ok(self.try_get(at)?)
    }
    fn bytes(&self, at: usize) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.try_get(at)?)
    }
}

/// A key row whose first columns are `KEY_COLUMNS`.
pub(crate) fn key_from_row(row: &impl Columns) -> Result<KeyRecord, StoreError> {
    RawKey {
        actor: row.some_text(0)?,
        version: row.int(1)?,
        backend: row.some_text(2)?,
        key_ref: row.some_text(3)?,
        key_id: row.some_text(4)?,
        spki: row.some_bytes(5)?,
        origin: row.some_text(6)?,
        state: row.some_text(7)?,
        created_at: row.some_text(8)?,
        attestation: row.some_text(9)?,
        retired_at: row.text(10)?,
    }
    .decode()
}

/// The start-up scan's query up to its `WHERE` (each engine adds its own, with its
/// placeholders): an entry, its receipt row with the root of its proof's checkpoint, the
/// checkpoint it completes, and its request ids (count, one fingerprint).
pub(crate) const SCAN_SELECT: &str = "SELECT e.log_index, e.kind, e.entry,
        r.actor, r.sequence, r.key_id, r.payload_sha256, r.signed_at, r.proof_size, r.proof, pc.root,
        c.root, c.note,
        (SELECT COUNT(*) FROM requests q WHERE q.log_index = e.log_index),
        (SELECT request_sha256 FROM requests q WHERE q.log_index = e.log_index LIMIT 1)
     FROM log_entries e
     LEFT JOIN receipts r ON r.log_index = e.log_index
     LEFT JOIN checkpoints pc ON pc.size = r.proof_size
     LEFT JOIN checkpoints c ON c.size = e.log_index + 1";

/// One row of [`SCAN_SELECT`], owned: a [`ScannedEntry`] without the borrow.
pub(crate) struct Scanned {
    pub index: u64,
    kind: EntryKind,
    entry: Vec<u8>,
    receipt: Option<ScannedReceipt>,
    checkpoint: Option<(Hash, String)>,
    requests: u64,
    request: Option<[u8; 32]>,
}

impl Scanned {
    /// Decodes a row of [`SCAN_SELECT`].
    pub(crate) fn decode(row: &impl Columns) -> Result<Scanned, StoreError> {
        let index = to_u64(row.int(0)?, "log index")?;
        let corrupt = |what: &str| StoreError::Corrupt(format!("log entry {index}: {what}"));
        let kind = parse_kind(&row.some_text(1)?).ok_or_else(|| corrupt("unknown kind"))?;
        let receipt = match row.text(3)? {
            None => None,
            Some(actor) => Some(receipt(row, index, actor)?),
        };
        let checkpoint = match optional_hash(row.bytes(11)?) {
            Ok(Some(root)) => Some((root, row.some_text(12)?)),
            Ok(None) => None,
            Err(()) => return Err(corrupt("the root of the checkpoint it completes")),
        };
        let request = row
            .bytes(14)?
            .map(|f| <[u8; 32]>::try_from(f.as_slice()))
            .transpose()
            .map_err(|_| corrupt("its request's fingerprint"))?;
        Ok(Scanned {
            index,
            kind,
            entry: row.some_bytes(2)?,
            receipt,
            checkpoint,
            requests: to_u64(row.int(13)?, "count")?,
            request,
        })
    }

    /// Hands the row to `visit` as a [`ScannedEntry`].
    pub(crate) fn visit(self, visit: &mut ScanVisitor<'_>) -> Result<(), StoreError> {
        visit(ScannedEntry {
            index: self.index,
            kind: self.kind,
            entry: &self.entry,
            receipt: self.receipt,
            checkpoint: self.checkpoint,
            requests: self.requests,
            request: self.request,
        })
    }
}

/// The receipt columns of the scan row of entry `index`, whose receipt actor is `actor`.
fn receipt(row: &impl Columns, index: u64, actor: String) -> Result<ScannedReceipt, StoreError> {
    let what = |what: &str| format!("log entry {index}: {what}");
    let corrupt = |what_: &str| StoreError::Corrupt(what(what_));
    let proof = row.some_bytes(9)?;
    Ok(ScannedReceipt {
        actor,
        sequence: to_u64(row.int(4)?, "sequence")?,
        key_id: row.some_text(5)?,
        payload_sha256: <[u8; 32]>::try_from(row.some_bytes(6)?.as_slice())
            .map_err(|_| corrupt("its receipt's digest"))?,
        signed_at: row.some_text(7)?,
        proof_size: to_u64(row.int(8)?, "tree size")?,
        proof: split_proof(&proof, || what("its receipt's proof is not whole hashes"))?,
        proof_root: optional_hash(row.bytes(10)?)
            .map_err(|_| corrupt("the root of its proof's checkpoint"))?,
    })
}
