//! `actseal mcp-proxy`: a Model Context Protocol proxy on the stdio transport that has the
//! daemon seal every `tools/call` an agent makes.
//!
//! The agent host starts the proxy in place of the MCP server; the proxy starts the server
//! and copies newline-delimited JSON-RPC messages both ways, byte for byte. Before it
//! forwards a `tools/call` request whose tool the policy names, it has the daemon sign the
//! *intent* (the request message's exact bytes); when the server's response to it comes back,
//! it has the daemon sign the *outcome* (the response message's exact bytes, with the intent's
//! document digest as parent) before forwarding it. Messages are handled in the order they
//! arrive in each direction, so sealing never reorders them.

pub mod message;
pub mod seal;
pub mod store;

use std::{collections::HashMap, path::PathBuf, sync::Arc, time::Duration};

use anyhow::{Context, Result, bail};
use tokio::{
    io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader},
    process::Command,
    sync::Mutex,
};

use message::{ClientInfo, FromClient};
use seal::{INTENT_TYPE, OUTCOME_TYPE, Seal, SealError, Sealer};
use store::{Record, Store};

/// What to do with a call whose intent could not be sealed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OnSealFailure {
    /// Answer the agent with a JSON-RPC error; the server never sees the call.
    Refuse,
    /// Forward the call anyway and log a warning.
    Warn,
}

/// Which tools' calls are sealed: exact names, or a prefix ending in `*` (`*` is every tool).
#[derive(Debug, Clone)]
pub struct ToolPolicy(Vec<String>);

impl ToolPolicy {
    pub fn new(patterns: Vec<String>) -> Self {
        ToolPolicy(patterns)
    }

    /// Whether calls of `tool` must be sealed.
    pub fn seals(&self, tool: &str) -> bool {
        self.0.iter().any(|p| match p.strip_suffix('*') {
            Some(prefix) => tool.starts_with(prefix),
            None => p == tool,
        })
    }
}

/// A proxy's settings (the `mcp-proxy` command line).
pub struct ProxyConfig {
    pub actor: String,
    pub connection: crate::cli::Connection,
    pub store: Store,
    pub tools: ToolPolicy,
    pub on_failure: OnSealFailure,
    pub seal_timeout: Duration,
    /// The MCP server's command and arguments.
    pub command: Vec<String>,
}

/// An intent waiting for its response.
struct Pending {
    tool: String,
    call: u64,
    intent_sha256: [u8; 32],
    intent_log_index: Option<u64>,
}

/// State shared by the two directions.
struct Session {
    id: String,
    sealer: Sealer,
    store: Store,
    tools: ToolPolicy,
    on_failure: OnSealFailure,
    client_info: Mutex<Option<ClientInfo>>,
    pending: Mutex<HashMap<String, Pending>>,
    calls: std::sync::atomic::AtomicU64,
}

/// Runs the proxy on this process's stdin and stdout until the server's output ends; returns
/// the server's exit code.
pub async fn run(config: ProxyConfig) -> Result<i32> {
    let Some((program, args)) = config.command.split_first() else {
        bail!("no MCP server command given (after --)");
    };
    if let Store::Dir(dir) = &config.store {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let mut child = Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot start the MCP server {program:?}"))?;
    let (Some(server_in), Some(server_out)) = (child.stdin.take(), child.stdout.take()) else {
        bail!("the MCP server's standard streams are not pipes");
    };
    let id = session_id();
    tracing::info!(session = %id, actor = %config.actor, server = %program, "mcp proxy started");
    let session = Arc::new(Session {
        sealer: Sealer::new(
            config.connection,
            config.actor,
            id.clone(),
            config.seal_timeout,
        ),
        id,
        store: config.store,
        tools: config.tools,
        on_failure: config.on_failure,
        client_info: Mutex::new(None),
        pending: Mutex::new(HashMap::new()),
        calls: 0.into(),
    });
    let client_out = Arc::new(Mutex::new(tokio::io::stdout()));
    let upstream = tokio::spawn(upstream(
        session.clone(),
        tokio::io::stdin(),
        server_in,
        client_out.clone(),
    ));
    let downstream = downstream(session.clone(), server_out, client_out).await;
    upstream.abort();
    let status = child.wait().await.context("waiting for the MCP server")?;
    downstream?;
    let unanswered = session.pending.lock().await.len();
    if unanswered > 0 {
        tracing::warn!(session = %session.id, unanswered, "tool calls without a response: no outcome sealed");
    }
    Ok(status.code().unwrap_or(1))
}

/// A random 128-bit session id, hex.
fn session_id() -> String {
    use rand_core::{OsRng, RngCore};
    let mut bytes = [0u8; 16];
    OsRng.fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// The message without its delimiting newline: the bytes a document is.
fn document(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\n").unwrap_or(line)
}

/// Client to server: seal each `tools/call`, then forward the line unchanged (or refuse it).
async fn upstream(
    session: Arc<Session>,
    client_in: impl AsyncRead + Unpin,
    mut server_in: impl AsyncWrite + Unpin,
    client_out: Arc<Mutex<tokio::io::Stdout>>,
) -> Result<()> {
    let mut reader = BufReader::new(client_in);
    let mut line = Vec::new();
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line).await? == 0 {
            break; // the client closed: close the server's input too
        }
        if let Some(found) = message::from_client(document(&line))
            && let Some(refusal) = session.before_forwarding(&line, found).await
        {
            write_line(&mut *client_out.lock().await, &refusal).await?;
            continue;
        }
        write_line(&mut server_in, &line).await?;
    }
    server_in.shutdown().await?;
    Ok(())
}

/// Server to client: seal the outcome of each answered intent, then forward the line unchanged.
async fn downstream(
    session: Arc<Session>,
    server_out: impl AsyncRead + Unpin,
    client_out: Arc<Mutex<tokio::io::Stdout>>,
) -> Result<()> {
    let mut reader = BufReader::new(server_out);
    let mut line = Vec::new();
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line).await? == 0 {
            return Ok(());
        }
        // Only a line that may answer a pending intent is worth parsing.
        if !session.pending.lock().await.is_empty() {
            session.after_response(&line).await;
        }
        write_line(&mut *client_out.lock().await, &line).await?;
    }
}

async fn write_line(out: &mut (impl AsyncWrite + Unpin), line: &[u8]) -> Result<()> {
    out.write_all(line).await?;
    out.flush().await?;
    Ok(())
}

impl Session {
    /// Seals the intents of a client message; the refusal to send instead, if refused.
    async fn before_forwarding(&self, line: &[u8], found: FromClient) -> Option<Vec<u8>> {
        if let Some(info) = found.client_info {
            tracing::info!(session = %self.id, client = %info.name, version = %info.version, "mcp client");
            *self.client_info.lock().await = Some(info);
        }
        for call in found
            .tool_calls
            .iter()
            .filter(|c| self.tools.seals(&c.tool))
        {
            if let Err(e) = self.seal_intent(line, call).await {
                match self.on_failure {
                    OnSealFailure::Refuse => {
                        tracing::error!(session = %self.id, tool = %call.tool, id = %call.id, error = %e, "intent not sealed: call refused");
                        // Intents already sealed for this batch stay in the log, answered by
                        // no outcome: the batch never reached the server.
                        let mut pending = self.pending.lock().await;
                        for c in &found.tool_calls {
                            pending.remove(&c.id);
                        }
                        return Some(message::refusal(
                            &found.request_ids,
                            found.batch,
                            &e.to_string(),
                        ));
                    }
                    OnSealFailure::Warn => {
                        tracing::warn!(session = %self.id, tool = %call.tool, id = %call.id, error = %e, "intent not sealed: call forwarded (on-seal-failure = warn)");
                    }
                }
            }
        }
        None
    }

    /// Seals one intent and records it as pending; it stays pending (unsealed) on failure, so
    /// that its outcome still names it.
    async fn seal_intent(&self, line: &[u8], call: &message::ToolCall) -> Result<(), SealFailure> {
        let document = document(line);
        let number = self
            .calls
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1;
        let mut pending = Pending {
            tool: call.tool.clone(),
            call: number,
            intent_sha256: seal::digest(document),
            intent_log_index: None,
        };
        let result = self
            .seal_and_store(Kind::Intent, document, call, number, None, vec![])
            .await;
        if let Ok(index) = &result {
            pending.intent_log_index = Some(*index);
        }
        self.pending.lock().await.insert(call.id.clone(), pending);
        result.map(|_| ())
    }

    /// Seals the outcome of every pending intent this server message answers. An outcome
    /// that cannot be sealed is logged and the response forwarded all the same: the tool has
    /// run, and withholding its result would undo nothing.
    async fn after_response(&self, line: &[u8]) {
        for response in message::responses(document(line)) {
            let Some(pending) = self.pending.lock().await.remove(&response.id) else {
                continue;
            };
            let mut extra = vec![("mcp.outcome", response.outcome.as_str().to_owned())];
            if let Some(index) = pending.intent_log_index {
                extra.push(("mcp.intent.logIndex", index.to_string()));
            }
            let call = message::ToolCall {
                id: response.id.clone(),
                tool: pending.tool.clone(),
            };
            let result = self
                .seal_and_store(
                    Kind::Outcome,
                    document(line),
                    &call,
                    pending.call,
                    Some(pending.intent_sha256),
                    extra,
                )
                .await;
            if let Err(e) = result {
                tracing::error!(session = %self.id, tool = %call.tool, id = %call.id, error = %e, "outcome not sealed: response forwarded");
            }
        }
    }

    async fn seal_and_store(
        &self,
        kind: Kind,
        document: &[u8],
        call: &message::ToolCall,
        number: u64,
        parent: Option<[u8; 32]>,
        extra: Vec<(&'static str, String)>,
    ) -> Result<u64, SealFailure> {
        let info = self.client_info.lock().await.clone();
        let seal = Seal {
            action_type: kind.action_type(),
            tool: &call.tool,
            request_id: &call.id,
            document,
            parent,
            extra,
        };
        let sealed = self.sealer.seal(seal, info.as_ref()).await?;
        let kind = kind.as_str();
        self.store.put(&Record {
            kind,
            session: &self.id,
            call: number,
            tool: &call.tool,
            request_id: &call.id,
            log_index: sealed.log_index,
            document,
            bundle_json: &sealed.bundle_json,
        })?;
        tracing::info!(session = %self.id, kind, tool = %call.tool, id = %call.id, log_index = sealed.log_index, "sealed");
        Ok(sealed.log_index)
    }
}

/// Which of a call's two receipts.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Intent,
    Outcome,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Intent => "intent",
            Kind::Outcome => "outcome",
        }
    }

    fn action_type(self) -> &'static str {
        match self {
            Kind::Intent => INTENT_TYPE,
            Kind::Outcome => OUTCOME_TYPE,
        }
    }
}

/// Why an intent or outcome was not sealed and stored.
#[derive(Debug, thiserror::Error)]
enum SealFailure {
    #[error(transparent)]
    Seal(#[from] SealError),
    #[error(transparent)]
    Store(#[from] store::StoreError),
}

/// Where the bundles go, from the command line's two exclusive options.
pub fn store(dir: Option<PathBuf>, jsonl: Option<PathBuf>) -> Result<Store> {
    match (dir, jsonl) {
        (Some(dir), None) => Ok(Store::Dir(dir)),
        (None, Some(file)) => Ok(Store::Jsonl(file)),
        _ => bail!("give exactly one of --bundles-dir and --bundles-jsonl"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tool_policy_takes_names_and_prefixes() {
        let policy = ToolPolicy::new(vec!["bank.*".into(), "send_mail".into()]);
        assert!(policy.seals("bank.transfer"));
        assert!(policy.seals("send_mail"));
        assert!(!policy.seals("send_mail2"));
        assert!(!policy.seals("read_file"));
        assert!(ToolPolicy::new(vec!["*".into()]).seals(""));
    }

    #[test]
    fn a_document_is_the_line_without_its_newline() {
        assert_eq!(document(b"{\"a\":1}\r\n"), b"{\"a\":1}\r");
        assert_eq!(document(b"{\"a\":1}"), b"{\"a\":1}");
    }
}
