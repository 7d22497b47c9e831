//! `POST /add-checkpoint` (C2SP tlog-witness): the body is `old <size>`, the consistency
//! proof (one base64 hash a line), a blank line and the checkpoint note. Answers: 200 with the
//! cosignature line; 400 malformed or old size after the checkpoint's; 403 the log's signature
//! does not verify; 404 unknown log; 409 `text/x.tlog.size` with the witness's size when
//! `old` is not it (or, at equal sizes, another root); 422 the consistency proof fails.

use std::{collections::HashMap, sync::Arc};

use base64::{Engine, engine::general_purpose::STANDARD as B64};
use bytes::Bytes;
use http::{Method, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use tokio::sync::Mutex;

use super::{WitnessError, key::TokenKey, state::StateDir};
use crate::verify::{
    checkpoint::{MAX_NOTE_BYTES, ParsedCheckpoint, parse_with_text, verify_checkpoint},
    cosignature::{NoteKey, SIGNATURE_TYPE_COSIGNATURE, cosignature_line, key_id, signed_message},
    merkle::verify_consistency,
};

/// Largest request: a maximal note and a proof of 64 hashes.
const MAX_REQUEST_BYTES: usize = MAX_NOTE_BYTES + 64 * 64;

/// What the handler shares.
pub struct Witness {
    pub name: String,
    pub key: TokenKey,
    pub state: StateDir,
    /// Per log origin: its key and the lock that makes check-and-update one step.
    pub logs: HashMap<String, (NoteKey, Mutex<()>)>,
}

type Answer = Response<Full<Bytes>>;

fn answer(status: StatusCode, content_type: &str, body: String) -> Answer {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(value) = http::HeaderValue::from_str(content_type) {
        response
            .headers_mut()
            .insert(http::header::CONTENT_TYPE, value);
    }
    response
}

fn text(status: StatusCode, body: impl Into<String>) -> Answer {
    let mut body = body.into();
    body.push('\n');
    answer(status, "text/plain; charset=utf-8", body)
}

/// A refusal, as status and text.
type Refusal = (StatusCode, String);

fn bad_request(detail: impl Into<String>) -> Refusal {
    (StatusCode::BAD_REQUEST, detail.into())
}

/// Splits the request body into the old size, the proof and the note.
fn parse_request(body: &[u8]) -> Result<(u64, Vec<[u8; 32]>, &str), Refusal> {
    let body = std::str::from_utf8(body).map_err(|_| bad_request("the body is not UTF-8"))?;
    let (head, note) = body
        .split_once("\n\n")
        .ok_or_else(|| bad_request("no blank line before the checkpoint"))?;
    let mut lines = head.split('\n');
    let old = lines
        .next()
        .and_then(|l| l.strip_prefix("old "))
        .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        .filter(|n| *n == "0" || !n.starts_with('0'))
        .and_then(|n| n.parse::<u64>().ok())
        .ok_or_else(|| bad_request("the first line is not \"old <size>\""))?;
    let proof = lines
        .map(|l| {
            B64.decode(l)
                .ok()
                .and_then(|h| <[u8; 32]>::try_from(h).ok())
                .ok_or_else(|| bad_request("a proof line is not a base64 SHA-256 hash"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if proof.len() > 63 {
        return Err(bad_request(
            "the consistency proof is longer than any can be",
        ));
    }
    Ok((old, proof, note))
}

impl Witness {
    /// The witness's verifier key (`name+hash+base64(0x04 || key)`).
    pub fn vkey(&self) -> String {
        crate::verify::cosignature::format_vkey(
            &self.name,
            SIGNATURE_TYPE_COSIGNATURE,
            &self.key.public(),
        )
    }

    async fn add_checkpoint(self: &Arc<Self>, body: &[u8]) -> Result<String, Refusal> {
        let (old, proof, note) = parse_request(body)?;
        let (_, parsed) = parse_with_text(note.as_bytes())
            .map_err(|e| bad_request(format!("checkpoint: {e}")))?;
        let (log_key, lock) = self.logs.get(&parsed.origin).ok_or_else(|| {
            (
                StatusCode::NOT_FOUND,
                format!("unknown log {:?}", parsed.origin),
            )
        })?;
        verify_checkpoint(note.as_bytes(), &log_key.name, &log_key.key)
            .map_err(|e| (StatusCode::FORBIDDEN, format!("log signature: {e}")))?;
        let _held = lock.lock().await;
        let current = self.current(&parsed.origin)?;
        self.check_consistency(old, &proof, &parsed, current.as_ref())?;
        if current.as_ref().is_none_or(|c| c.size < parsed.size) {
            let (witness, origin, note) =
                (Arc::clone(self), parsed.origin.clone(), note.to_string());
            tokio::task::spawn_blocking(move || witness.state.store(&origin, &note))
                .await
                .map_err(|_| internal("state task failed"))?
                .map_err(|e| internal(&e.to_string()))?;
        }
        self.cosign(note, &parsed).await
    }

    fn current(&self, origin: &str) -> Result<Option<ParsedCheckpoint>, Refusal> {
        let Some(stored) = self
            .state
            .load(origin)
            .map_err(|e| internal(&e.to_string()))?
        else {
            return Ok(None);
        };
        parse_with_text(stored.as_bytes())
            .map(|(_, p)| Some(p))
            .map_err(|e| internal(&format!("stored checkpoint of {origin:?}: {e}")))
    }

    fn check_consistency(
        &self,
        old: u64,
        proof: &[[u8; 32]],
        new: &ParsedCheckpoint,
        current: Option<&ParsedCheckpoint>,
    ) -> Result<(), Refusal> {
        let size = current.map_or(0, |c| c.size);
        let conflict = || (StatusCode::CONFLICT, format!("{size}"));
        if old != size {
            return Err(conflict());
        }
        if old > new.size {
            return Err(bad_request(format!(
                "old size {old} is larger than the checkpoint's {}",
                new.size
            )));
        }
        let Some(current) = current else {
            return if proof.is_empty() {
                Ok(())
            } else {
                Err((
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "a proof from size 0 must be empty".into(),
                ))
            };
        };
        if old == new.size && current.root != new.root {
            // Two checkpoints of one size with different roots: a fork, refused.
            tracing::warn!(origin = %new.origin, size = old, "refused: another root at the size already cosigned (fork)");
            return Err(conflict());
        }
        verify_consistency(old, new.size, &current.root, &new.root, proof).map_err(|e| {
            tracing::warn!(origin = %new.origin, old, new = new.size, error = %e, "refused: not consistent with the cosigned checkpoint");
            (
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("consistency proof from {old} to {}: {e}", new.size),
            )
        })
    }

    async fn cosign(
        self: &Arc<Self>,
        note: &str,
        parsed: &ParsedCheckpoint,
    ) -> Result<String, Refusal> {
        let text_end = note.find("\n\n").map_or(note.len(), |at| at + 1);
        let text = note[..text_end].to_string();
        let timestamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let witness = Arc::clone(self);
        let signature = tokio::task::spawn_blocking(move || {
            witness.key.sign(&signed_message(&text, timestamp))
        })
        .await
        .map_err(|_| internal("signing task failed"))?
        .map_err(|e| internal(&e.to_string()))?;
        tracing::info!(origin = %parsed.origin, size = parsed.size, "cosigned");
        let id = key_id(&self.name, SIGNATURE_TYPE_COSIGNATURE, &self.key.public());
        Ok(cosignature_line(&self.name, id, timestamp, &signature))
    }
}

fn internal(detail: &str) -> Refusal {
    tracing::error!(error = detail, "witness error");
    (StatusCode::INTERNAL_SERVER_ERROR, "internal error".into())
}

async fn handle(
    witness: Arc<Witness>,
    request: http::Request<hyper::body::Incoming>,
) -> Result<Answer, std::convert::Infallible> {
    if request.uri().path() != "/add-checkpoint" {
        return Ok(text(StatusCode::NOT_FOUND, "no such endpoint"));
    }
    if request.method() != Method::POST {
        return Ok(text(StatusCode::METHOD_NOT_ALLOWED, "POST only"));
    }
    let body = match Limited::new(request.into_body(), MAX_REQUEST_BYTES)
        .collect()
        .await
    {
        Ok(body) => body.to_bytes(),
        Err(_) => return Ok(text(StatusCode::PAYLOAD_TOO_LARGE, "request too large")),
    };
    Ok(match witness.add_checkpoint(&body).await {
        Ok(line) => answer(StatusCode::OK, "text/plain; charset=utf-8", line),
        Err((StatusCode::CONFLICT, size)) => answer(
            StatusCode::CONFLICT,
            crate::anchor::witness_client::SIZE_MEDIA_TYPE,
            format!("{size}\n"),
        ),
        Err((status, detail)) => {
            tracing::info!(status = status.as_u16(), detail = %detail, "add-checkpoint refused");
            text(status, detail)
        }
    })
}

/// Serves until `stop` resolves.
pub async fn serve(
    witness: Arc<Witness>,
    listener: tokio::net::TcpListener,
    stop: impl std::future::Future<Output = ()>,
) -> Result<(), WitnessError> {
    tokio::pin!(stop);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => accepted.map_err(|e| WitnessError::Listen(e.to_string()))?,
            () = &mut stop => return Ok(()),
        };
        let witness = Arc::clone(&witness);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |r| handle(Arc::clone(&witness), r));
            let served = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service)
                .await;
            if let Err(e) = served {
                tracing::debug!(peer = %peer, error = %e, "connection ended");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_bodies() {
        let h = B64.encode([1u8; 32]);
        let body = format!("old 5\n{h}\n{h}\n\norigin\n7\nroot\n\n\u{2014} x y\n");
        let parsed = parse_request(body.as_bytes());
        assert!(matches!(&parsed, Ok((5, p, n)) if p.len() == 2 && n.starts_with("origin\n")));
        assert!(matches!(parse_request(b"old 0\n\nnote"), Ok((0, p, _)) if p.is_empty()));
        for bad in [
            "old 05\n\nn".to_string(),
            "old -1\n\nn".to_string(),
            "old 1".to_string(),
            "new 1\n\nn".to_string(),
            format!("old 1\n{h}x\n\nn"),
        ] {
            assert!(parse_request(bad.as_bytes()).is_err(), "{bad:?}");
        }
    }
}
