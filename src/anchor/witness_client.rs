//! The daemon's side of C2SP `tlog-witness`: `POST <url>/add-checkpoint` with the size the
//! witness last saw, a consistency proof from it, and the checkpoint; a 200 answer carries the
//! witness's `cosignature/v1` line, a 409 (`text/x.tlog.size`) the size the witness has.

use std::time::Duration;

use base64::{Engine, engine::general_purpose::STANDARD as B64};

use super::http::{self, HttpError};
use crate::ledger::merkle::Hash;
use crate::verify::cosignature::{NoteKey, verify_cosignature};

/// The media type of a 409 answer's body: the witness's size in decimal and a newline.
pub const SIZE_MEDIA_TYPE: &str = "text/x.tlog.size";

/// What a witness answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Submitted {
    /// The cosignature line (`— name base64\n`), verified against the witness's key.
    Cosigned { line: String, timestamp: u64 },
    /// 409 Conflict: the witness has another size than the `old` sent.
    Conflict(u64),
}

/// Why a submission failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum WitnessError {
    #[error(transparent)]
    Http(#[from] HttpError),
    /// A status the protocol gives for a refusal: 403 (log signature), 404 (unknown log),
    /// 422 (consistency proof), 400 (request), or anything else.
    #[error("witness {name} refused the checkpoint: HTTP {status}: {body}")]
    Refused {
        name: String,
        status: u16,
        body: String,
    },
    /// The answer is not what the protocol says, or its cosignature does not verify.
    #[error("witness {name} answered badly: {detail}")]
    BadAnswer { name: String, detail: String },
}

/// The request body: `old N`, one base64 hash a line, a blank line, the checkpoint note.
pub fn request_body(old_size: u64, proof: &[Hash], note: &str) -> Vec<u8> {
    let mut body = format!("old {old_size}\n");
    for hash in proof {
        body.push_str(&B64.encode(hash));
        body.push('\n');
    }
    body.push('\n');
    body.push_str(note);
    body.into_bytes()
}

/// Submits `note` (the log-signed checkpoint) to the witness at `url` whose key is `key`.
pub async fn add_checkpoint(
    url: &str,
    key: &NoteKey,
    old_size: u64,
    proof: &[Hash],
    note: &str,
    timeout: Duration,
) -> Result<Submitted, WitnessError> {
    let answer = http::post(
        url,
        "/add-checkpoint",
        "text/plain; charset=utf-8",
        request_body(old_size, proof, note),
        timeout,
    )
    .await?;
    let name = key.name.clone();
    let text = String::from_utf8_lossy(&answer.body).into_owned();
    let bad = |detail: String| WitnessError::BadAnswer {
        name: name.clone(),
        detail,
    };
    match answer.status {
        200 => {
            let with_line = format!("{note}{text}");
            let timestamp = verify_cosignature(with_line.as_bytes(), key)
                .map_err(|e| bad(format!("its cosignature: {e}")))?;
            // Only the lines of this witness go on the note.
            let line: String = text
                .lines()
                .filter(|l| {
                    l.strip_prefix("\u{2014} ")
                        .and_then(|r| r.split(' ').next())
                        == Some(key.name.as_str())
                })
                .map(|l| format!("{l}\n"))
                .collect();
            Ok(Submitted::Cosigned { line, timestamp })
        }
        409 => {
            if answer.content_type.as_deref() != Some(SIZE_MEDIA_TYPE) {
                return Err(WitnessError::Refused {
                    name,
                    status: 409,
                    body: text.trim().chars().take(200).collect(),
                });
            }
            let size = text
                .trim_end_matches('\n')
                .parse::<u64>()
                .map_err(|_| bad(format!("409 body {text:?} is not a size")))?;
            Ok(Submitted::Conflict(size))
        }
        status => Err(WitnessError::Refused {
            name,
            status,
            body: text.trim().chars().take(200).collect(),
        }),
    }
}
