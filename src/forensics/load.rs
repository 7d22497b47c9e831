//! Reading the investigator's inputs: single bundles, JSON Lines or arrays of bundles, folders
//! of them, and log exports. Each receipt found becomes an [`Item`]; what cannot be read at all
//! is a [`Note`], never a silent skip.

use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::Serialize;
use serde_json::Value;

use super::{ForensicsError, export};

/// The bundle media type (FORMAT.md §5).
const BUNDLE_MEDIA_TYPE: &str = "application/vnd.actseal.bundle.v1+json";

/// Files in a folder are read to this depth, so a link loop or a huge tree cannot hang the tool.
const MAX_DEPTH: usize = 8;

/// One receipt as found: where, its bundle (or why none could be had), its payload bytes.
pub struct Item {
    pub source: String,
    pub bundle: Result<Vec<u8>, String>,
    /// The receipt's decoded DSSE payload, read without trusting it (to show what it claims).
    pub payload: Option<Vec<u8>>,
    /// The action document when the record that held the bundle carries it (`document` as a
    /// JSON string, or `documentBase64`: the JSON Lines records of `actseal mcp-proxy`).
    pub document: Option<Vec<u8>>,
}

impl Item {
    pub fn new(source: String, bundle: Result<Vec<u8>, String>, payload: Option<Vec<u8>>) -> Self {
        Item {
            source,
            bundle,
            payload,
            document: None,
        }
    }

    fn from_bundle(source: String, bytes: Vec<u8>, json: &Value) -> Self {
        let payload = json["receipt"]["payload"]
            .as_str()
            .and_then(|p| STANDARD.decode(p).ok());
        Item::new(source, Ok(bytes), payload)
    }
}

/// Something about an input that is not one receipt: an export's audit, an unreadable line.
#[derive(Debug, Clone, Serialize)]
pub struct Note {
    pub source: String,
    pub ok: bool,
    pub text: String,
}

/// What was read from all inputs.
#[derive(Default)]
pub struct Loaded {
    pub items: Vec<Item>,
    pub notes: Vec<Note>,
    /// The exports themselves, for their log-wide audit.
    pub exports: Vec<(String, Vec<u8>)>,
}

impl Loaded {
    fn note(&mut self, source: &str, ok: bool, text: impl Into<String>) {
        self.notes.push(Note {
            source: source.to_string(),
            ok,
            text: text.into(),
        });
    }
}

/// Reads every input path (files or folders).
pub fn load(paths: &[impl AsRef<Path>]) -> Result<Loaded, ForensicsError> {
    let mut loaded = Loaded::default();
    for path in paths {
        load_path(path.as_ref(), 0, &mut loaded)?;
    }
    Ok(loaded)
}

fn load_path(path: &Path, depth: usize, loaded: &mut Loaded) -> Result<(), ForensicsError> {
    let read_err = |source| ForensicsError::Read {
        path: path.display().to_string(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(read_err)?;
    if !meta.is_dir() {
        let bytes = std::fs::read(path).map_err(read_err)?;
        load_file(&path.display().to_string(), bytes, loaded);
        return Ok(());
    }
    if depth >= MAX_DEPTH {
        loaded.note(
            &path.display().to_string(),
            false,
            "folder too deep: not read",
        );
        return Ok(());
    }
    let mut children: Vec<_> = std::fs::read_dir(path)
        .map_err(read_err)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .collect();
    children.sort();
    for child in children {
        let wanted = child.is_dir()
            || child
                .extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| matches!(e, "json" | "jsonl" | "ndjson"));
        if wanted {
            load_path(&child, depth + 1, loaded)?;
        }
    }
    Ok(())
}

/// One file: a bundle, an export, a JSON array of bundles, or JSON Lines.
pub fn load_file(source: &str, bytes: Vec<u8>, loaded: &mut Loaded) {
    if let Ok(json) = serde_json::from_slice::<Value>(&bytes) {
        if export::is_export(&json) {
            match export::bundles(&json, source) {
                Ok(items) => loaded.items.extend(items),
                Err(e) => loaded.note(source, false, format!("not a readable export: {e}")),
            }
            loaded.exports.push((source.to_string(), bytes));
            return;
        }
        if let Value::Array(members) = &json {
            for (i, member) in members.iter().enumerate() {
                load_value(&format!("{source} [{i}]"), None, member, loaded);
            }
            return;
        }
        load_value(source, Some(bytes), &json, loaded);
        return;
    }
    for (n, line) in bytes.split(|b| *b == b'\n').enumerate() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let at = format!("{source} line {}", n + 1);
        match serde_json::from_slice::<Value>(line) {
            Ok(json) => load_value(&at, Some(line.to_vec()), &json, loaded),
            Err(e) => loaded.note(&at, false, format!("not JSON: {e}")),
        }
    }
}

/// One JSON value: a bundle, or an object that holds one (e.g. a record of a proxy's log whose
/// member is the bundle). `raw`: the value's own bytes, verified as given when it is the bundle.
fn load_value(source: &str, raw: Option<Vec<u8>>, json: &Value, loaded: &mut Loaded) {
    if json["mediaType"].as_str() == Some(BUNDLE_MEDIA_TYPE) {
        let bytes = raw.unwrap_or_else(|| json.to_string().into_bytes());
        loaded
            .items
            .push(Item::from_bundle(source.to_string(), bytes, json));
        return;
    }
    let inner: Vec<(&String, &Value)> = json
        .as_object()
        .map(|m| {
            m.iter()
                .filter(|(_, v)| v["mediaType"].as_str() == Some(BUNDLE_MEDIA_TYPE))
                .collect()
        })
        .unwrap_or_default();
    if inner.is_empty() {
        loaded.note(source, true, "holds no proof bundle: skipped");
    }
    let document = match (&json["document"], &json["documentBase64"]) {
        (Value::String(text), _) => Some(text.clone().into_bytes()),
        (_, Value::String(b64)) => STANDARD.decode(b64).ok(),
        _ => None,
    };
    for (name, bundle) in inner {
        let bytes = bundle.to_string().into_bytes();
        let mut item = Item::from_bundle(format!("{source} .{name}"), bytes, bundle);
        item.document.clone_from(&document);
        loaded.items.push(item);
    }
}
