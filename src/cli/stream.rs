//! `actseal sign --stream`: many actions over one `SignStream`, read as JSON lines from
//! standard input, one result line each on standard output (in the order the answers come;
//! each names its input line). At most `--in-flight` actions are outstanding: the next line is
//! read only once an answer has freed a slot, so a long input never makes a backlog in the
//! daemon or here. A line that is not a valid action gets its own error line and is not sent;
//! an action the daemon refuses gets its status; the others are signed regardless.
//!
//! Input line (every field optional where the command line gives a default):
//! `{"id": <any JSON>, "actor": "…", "type": "…", "target": "…", "document": "text" |
//! "document_base64": "…" | "digest": "hex", "context": {"k": "v"}, "parent": "hex",
//! "request_id": "…"}`.
//! Result line: `{"line": N, "id": …, "log_index": …, "sequence": …, "key_id": "…",
//! "bundle_json": "…"}` or `{"line": N, "id": …, "error": {"code": "…", "message": "…"}}`.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use anyhow::{Context, Result, bail};
use base64::{Engine, engine::general_purpose::STANDARD as B64};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt};
use tokio::sync::{Semaphore, mpsc};
use tokio_stream::StreamExt;

use super::SignArgs;
use super::client::{connect, parse_context, runtime};
use super::out::outln;
use crate::api::{
    SignRequest, SignStreamRequest, sign_request::Action, sign_stream_response::Result as Answer,
    stream_signer_client::StreamSignerClient,
};

/// Most bytes of one input line (a document inline in it included).
const MAX_LINE: usize = 4 << 20;

/// One input line.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    #[serde(default)]
    id: Option<Value>,
    actor: Option<String>,
    #[serde(rename = "type")]
    action_type: Option<String>,
    target: Option<String>,
    document: Option<String>,
    document_base64: Option<String>,
    digest: Option<String>,
    context: Option<HashMap<String, String>>,
    parent: Option<String>,
    request_id: Option<String>,
}

/// The command line's values, for fields a line leaves out.
struct Defaults {
    actor: Option<String>,
    action_type: Option<String>,
    target: Option<String>,
    context: HashMap<String, String>,
}

impl Defaults {
    fn of(args: &SignArgs) -> Result<Self> {
        if args.document.is_some() || args.digest.is_some() || args.parent.is_some() {
            bail!("with --stream, documents, digests and parents come from the input lines");
        }
        if args.request_id.is_some() || args.out.is_some() {
            bail!("with --stream, request ids come from the input lines and results go to stdout");
        }
        Ok(Defaults {
            actor: args.actor.clone(),
            action_type: args.action_type.clone(),
            target: args.target.clone(),
            context: parse_context(&args.context)?,
        })
    }

    /// The request a line asks for, or why it cannot be sent.
    fn request(&self, line: Line) -> Result<SignRequest, String> {
        let pick = |own: Option<String>, default: &Option<String>, name: &str| {
            own.or_else(|| default.clone())
                .ok_or_else(|| format!("{name}: missing (in the line and on the command line)"))
        };
        let action = match (line.document, line.document_base64, line.digest) {
            (Some(text), None, None) => Action::Document(text.into_bytes()),
            (None, Some(b64), None) => Action::Document(
                B64.decode(b64)
                    .map_err(|e| format!("document_base64: {e}"))?,
            ),
            (None, None, Some(hex)) => Action::DocumentSha256(
                hex::decode(hex).map_err(|e| format!("digest: not hex: {e}"))?,
            ),
            _ => return Err("give exactly one of document, document_base64 and digest".into()),
        };
        let parent_action_sha256 = match line.parent {
            Some(parent) => hex::decode(parent).map_err(|e| format!("parent: not hex: {e}"))?,
            None => Vec::new(),
        };
        let mut context = self.context.clone();
        context.extend(line.context.unwrap_or_default());
        Ok(SignRequest {
            actor: pick(line.actor, &self.actor, "actor")?,
            action_type: pick(line.action_type, &self.action_type, "type")?,
            target: pick(line.target, &self.target, "target")?,
            action: Some(action),
            context: context.into_iter().collect(),
            parent_action_sha256,
            request_id: line.request_id.unwrap_or_default(),
        })
    }
}

/// What is known of the lines sent and not yet answered: their ids, by line number.
type Pending = Arc<Mutex<HashMap<u64, Value>>>;

fn error_line(line: u64, id: &Value, code: &str, message: &str) {
    outln!(
        "{}",
        json!({"line": line, "id": id, "error": {"code": code, "message": message}})
    );
}

/// Runs `actseal sign --stream`; fails (after every answer is written) if any action failed.
pub fn sign_stream(args: &SignArgs) -> Result<()> {
    let defaults = Defaults::of(args)?;
    if !(1..=4096).contains(&args.in_flight) {
        bail!("--in-flight must be 1 to 4096");
    }
    let (sent, failed) = runtime()?.block_on(run(args, defaults))?;
    if failed > 0 {
        bail!("{failed} of {sent} actions failed");
    }
    Ok(())
}

async fn run(args: &SignArgs, defaults: Defaults) -> Result<(u64, u64)> {
    let channel = connect(&args.connection).await?;
    let slots = Arc::new(Semaphore::new(args.in_flight));
    let pending: Pending = Arc::default();
    let (tx, rx) = mpsc::channel(args.in_flight);
    let reader = tokio::spawn(read_lines(
        defaults,
        tx,
        Arc::clone(&slots),
        Arc::clone(&pending),
    ));
    let mut answers = StreamSignerClient::new(channel)
        .sign_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .map_err(|s| anyhow::anyhow!("{:?}: {}", s.code(), s.message()))?
        .into_inner();
    let mut failed = 0;
    while let Some(answer) = answers.next().await {
        let answer =
            answer.map_err(|s| anyhow::anyhow!("stream ended: {:?}: {}", s.code(), s.message()))?;
        let line = answer.correlation_id;
        let id = pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&line)
            .unwrap_or(Value::Null);
        slots.add_permits(1);
        match answer.result {
            Some(Answer::Signed(signed)) => outln!(
                "{}",
                json!({"line": line, "id": id, "log_index": signed.log_index,
                    "sequence": signed.sequence, "key_id": signed.key_id,
                    "bundle_json": signed.bundle_json})
            ),
            Some(Answer::Error(e)) => {
                failed += 1;
                let code = format!("{:?}", tonic::Code::from(e.code));
                error_line(line, &id, &code, &e.message);
            }
            None => {
                failed += 1;
                error_line(line, &id, "Unknown", "the daemon sent an empty answer");
            }
        }
    }
    let (lines, refused) = reader.await.context("the input reader failed")??;
    let unanswered = pending.lock().unwrap_or_else(|p| p.into_inner()).len();
    if unanswered > 0 {
        bail!("the stream ended with {unanswered} actions unanswered");
    }
    Ok((lines, failed + refused))
}

/// Reads stdin line by line, sending each valid action once a slot is free; answers bad lines
/// itself. Returns the number of actions read and how many of them were bad.
async fn read_lines(
    defaults: Defaults,
    tx: mpsc::Sender<SignStreamRequest>,
    slots: Arc<Semaphore>,
    pending: Pending,
) -> Result<(u64, u64)> {
    let mut input = tokio::io::BufReader::new(tokio::io::stdin());
    let (mut number, mut read, mut refused) = (0u64, 0u64, 0u64);
    let mut text = Vec::new();
    loop {
        text.clear();
        let n = (&mut input)
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut text)
            .await
            .context("cannot read standard input")?;
        if n == 0 {
            break;
        }
        number += 1;
        if text.len() > MAX_LINE && !text.ends_with(b"\n") {
            bail!("input line {number} is longer than {MAX_LINE} bytes");
        }
        if text.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        read += 1;
        let parsed = serde_json::from_slice::<Line>(&text).map_err(|e| e.to_string());
        let id = parsed
            .as_ref()
            .ok()
            .and_then(|l| l.id.clone())
            .unwrap_or(Value::Null);
        let request = match parsed.and_then(|line| defaults.request(line)) {
            Ok(request) => request,
            Err(message) => {
                refused += 1;
                error_line(number, &id, "InvalidArgument", &message);
                continue;
            }
        };
        slots.acquire().await.context("slots closed")?.forget();
        pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(number, id);
        let action = SignStreamRequest {
            correlation_id: number,
            request: Some(request),
        };
        if tx.send(action).await.is_err() {
            bail!("the stream closed before line {number} was sent");
        }
    }
    Ok((read, refused))
}
