//! Where the proxy keeps each bundle and the document it seals: one file pair per receipt in a
//! directory, or one line per receipt in a JSON Lines file.

use std::{
    fs,
    io::Write,
    path::{Path, PathBuf},
};

use serde_json::json;

/// One sealed document and its bundle, as stored.
pub struct Record<'a> {
    /// `intent` or `outcome`.
    pub kind: &'static str,
    pub session: &'a str,
    /// The proxy's count of sealed tool calls in this session, from 1.
    pub call: u64,
    pub tool: &'a str,
    /// The JSON-RPC request id, as JSON text.
    pub request_id: &'a str,
    pub log_index: u64,
    /// The exact document bytes whose SHA-256 the receipt's subject is.
    pub document: &'a [u8],
    pub bundle_json: &'a str,
}

/// A configured bundle store.
#[derive(Debug, Clone)]
pub enum Store {
    /// `<session>-<call>-<kind>.bundle.json` and `….document.json` files in a directory.
    Dir(PathBuf),
    /// One JSON object a line, appended.
    Jsonl(PathBuf),
}

/// A bundle that could not be stored.
#[derive(Debug, thiserror::Error)]
#[error("cannot store the {kind} bundle in {path}: {source}")]
pub struct StoreError {
    kind: &'static str,
    path: String,
    source: std::io::Error,
}

impl Store {
    /// Stores a record; the file (pair) is new or the line is appended whole.
    pub fn put(&self, record: &Record) -> Result<(), StoreError> {
        let (path, result) = match self {
            Store::Dir(dir) => {
                let stem = format!("{}-{:06}-{}", record.session, record.call, record.kind);
                let bundle = dir.join(format!("{stem}.bundle.json"));
                let document = dir.join(format!("{stem}.document.json"));
                let result = create_new(&document, record.document)
                    .and_then(|()| create_new(&bundle, record.bundle_json.as_bytes()));
                (bundle, result)
            }
            Store::Jsonl(path) => (path.clone(), append(path, &jsonl_line(record))),
        };
        result.map_err(|source| StoreError {
            kind: record.kind,
            path: path.display().to_string(),
            source,
        })
    }
}

fn create_new(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)?
        .write_all(bytes)
}

fn append(path: &Path, line: &[u8]) -> std::io::Result<()> {
    // One write of the whole line to an O_APPEND file: proxies sharing the file do not
    // interleave their lines.
    fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?
        .write_all(line)
}

/// The record as one JSON line. The document is a JSON string when it is UTF-8 (an MCP
/// message always is), else base64 in `documentBase64`; the bundle is embedded as the
/// daemon wrote it.
fn jsonl_line(record: &Record) -> Vec<u8> {
    use base64::{Engine, engine::general_purpose::STANDARD};
    use sha2::{Digest, Sha256};
    let mut head = json!({
        "kind": record.kind,
        "session": record.session,
        "call": record.call,
        "tool": record.tool,
        "requestId": record.request_id,
        "logIndex": record.log_index,
        "documentSha256": hex::encode(Sha256::digest(record.document)),
    });
    match std::str::from_utf8(record.document) {
        Ok(text) => head["document"] = json!(text),
        Err(_) => head["documentBase64"] = json!(STANDARD.encode(record.document)),
    }
    let mut line = head.to_string();
    line.pop(); // the closing brace: the bundle goes in as the daemon wrote it
    // Raw newlines in JSON can only be white space (those in strings are escaped).
    let bundle = record.bundle_json.trim().replace(['\n', '\r'], " ");
    line.push_str(",\"bundle\":");
    line.push_str(&bundle);
    line.push_str("}\n");
    line.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_jsonl_line_keeps_the_document_and_the_bundle() {
        let record = Record {
            kind: "intent",
            session: "s",
            call: 1,
            tool: "add",
            request_id: "1",
            log_index: 4,
            document: br#"{"a":"b\nc"}"#,
            bundle_json: "{\n  \"mediaType\": \"x\"\n}\n",
        };
        let line = jsonl_line(&record);
        assert_eq!(line.iter().filter(|&&b| b == b'\n').count(), 1);
        let v: serde_json::Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(v["document"].as_str().unwrap().as_bytes(), record.document);
        assert_eq!(v["bundle"]["mediaType"], "x");
        assert_eq!(v["logIndex"], 4);
    }
}
