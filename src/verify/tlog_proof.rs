//! C2SP `tlog-proof@v1` files: an entry's index, its inclusion proof and the (cosigned)
//! checkpoint it leads to, in one text a third party checks offline (FORMAT.md §14.4).
//!
//! ```text
//! c2sp.org/tlog-proof@v1
//! [extra <base64>]
//! index <n>
//! <base64 hash>…
//!
//! <checkpoint note>
//! ```

#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use super::checkpoint::{ParsedCheckpoint, parse_checkpoint};

/// The first line of a proof.
pub const HEADER: &str = "c2sp.org/tlog-proof@v1";

/// A parsed proof. The checkpoint is parsed, not verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlogProof {
    pub extra: Option<Vec<u8>>,
    pub index: u64,
    pub hashes: Vec<[u8; 32]>,
    /// The checkpoint note as written.
    pub note: String,
    pub checkpoint: ParsedCheckpoint,
}

/// Writes a proof.
pub fn format(index: u64, hashes: &[[u8; 32]], note: &str, extra: Option<&[u8]>) -> String {
    let mut out = format!("{HEADER}\n");
    if let Some(extra) = extra {
        out.push_str(&format!("extra {}\n", STANDARD.encode(extra)));
    }
    out.push_str(&format!("index {index}\n"));
    for hash in hashes {
        out.push_str(&STANDARD.encode(hash));
        out.push('\n');
    }
    out.push('\n');
    out.push_str(note);
    out
}

/// Parses a proof; the error says what is wrong.
pub fn parse(text: &str) -> Result<TlogProof, String> {
    let (head, note) = text
        .split_once("\n\n")
        .ok_or("no blank line before the checkpoint")?;
    let mut lines = head.split('\n');
    if lines.next() != Some(HEADER) {
        return Err(format!("the first line is not {HEADER:?}"));
    }
    let mut line = lines.next().ok_or("no index line")?;
    let mut extra = None;
    if let Some(b64) = line.strip_prefix("extra ") {
        extra = Some(STANDARD.decode(b64).map_err(|_| "extra is not base64")?);
        line = lines.next().ok_or("no index line")?;
    }
    let index = line
        .strip_prefix("index ")
        .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        .filter(|n| *n == "0" || !n.starts_with('0'))
        .and_then(|n| n.parse::<u64>().ok())
        .ok_or("no \"index <n>\" line")?;
    let hashes = lines
        .map(|l| {
            STANDARD
                .decode(l)
                .ok()
                .and_then(|h| <[u8; 32]>::try_from(h).ok())
                .ok_or_else(|| format!("proof line {l:?} is not a base64 SHA-256 hash"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let checkpoint = parse_checkpoint(note.as_bytes()).map_err(|e| e.to_string())?;
    if index >= checkpoint.size {
        return Err(format!(
            "index {index} is not in the tree of {} entries",
            checkpoint.size
        ));
    }
    Ok(TlogProof {
        extra,
        index,
        hashes,
        note: note.to_string(),
        checkpoint,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let note = "example.com/log\n5\nq6urq6urq6urq6urq6urq6urq6urq6urq6urq6urq6s=\n\n\u{2014} example.com/log AAAAAEYwRAIgAQ==\n";
        let text = format(3, &[[1; 32], [2; 32]], note, Some(b"x"));
        assert!(text.starts_with("c2sp.org/tlog-proof@v1\nextra eA==\nindex 3\n"));
        let parsed = parse(&text);
        assert!(
            matches!(&parsed, Ok(p) if p.index == 3 && p.hashes.len() == 2 && p.note == note && p.extra.as_deref() == Some(b"x".as_slice())),
            "{parsed:?}"
        );
        assert!(parse(&format(5, &[], note, None)).is_err());
        assert!(parse(&text.replacen("index 3", "index 03", 1)).is_err());
        assert!(parse(&text.replacen("@v1", "@v2", 1)).is_err());
    }
}
