//! What the proxy reads out of a JSON-RPC message: only enough to know which messages to seal.
//! The bytes it forwards are always the bytes it read; nothing here re-serialises a message.

use serde_json::Value;

/// A `tools/call` request found in a message from the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolCall {
    /// The request's id as JSON text (`7`, `"abc"`): the key its response is matched by.
    pub id: String,
    /// `params.name`; empty when the request has none (the server will reject it).
    pub tool: String,
}

/// A response found in a message from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub id: String,
    pub outcome: Outcome,
}

/// How a `tools/call` ended, as the response says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A result (the tool ran).
    Result,
    /// A result with `isError: true` (the tool ran and reported an error).
    ToolError,
    /// A JSON-RPC error (the server refused or failed the call).
    Error,
}

impl Outcome {
    /// The value of the outcome receipt's `mcp.outcome` context entry.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Result => "result",
            Outcome::ToolError => "tool-error",
            Outcome::Error => "error",
        }
    }
}

/// `clientInfo` of an `initialize` request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientInfo {
    pub name: String,
    pub version: String,
}

/// A message from the client, as far as the proxy cares.
#[derive(Debug, Default)]
pub struct FromClient {
    /// Every `tools/call` request in it (a batch may hold several).
    pub tool_calls: Vec<ToolCall>,
    /// Every request id in it (for answering a refused batch).
    pub request_ids: Vec<String>,
    /// `clientInfo`, if it is (or holds) an `initialize` request.
    pub client_info: Option<ClientInfo>,
    /// Whether it was a batch (a JSON array).
    pub batch: bool,
}

/// Reads a message line from the client; `None` when it is not JSON (forwarded as it is).
pub fn from_client(line: &[u8]) -> Option<FromClient> {
    let value: Value = serde_json::from_slice(line).ok()?;
    let mut found = FromClient {
        batch: value.is_array(),
        ..FromClient::default()
    };
    for item in items(&value) {
        let Some(method) = item.get("method").and_then(Value::as_str) else {
            continue;
        };
        let Some(id) = item.get("id").filter(|id| !id.is_null()) else {
            continue; // a notification
        };
        found.request_ids.push(id.to_string());
        match method {
            "tools/call" => found.tool_calls.push(ToolCall {
                id: id.to_string(),
                tool: item["params"]["name"].as_str().unwrap_or("").to_owned(),
            }),
            "initialize" => {
                let info = &item["params"]["clientInfo"];
                let text = |k: &str| info[k].as_str().unwrap_or("").to_owned();
                found.client_info = Some(ClientInfo {
                    name: text("name"),
                    version: text("version"),
                });
            }
            _ => {}
        }
    }
    Some(found)
}

/// Reads the responses in a message line from the server (none when it is not JSON).
pub fn responses(line: &[u8]) -> Vec<Response> {
    let Ok(value) = serde_json::from_slice::<Value>(line) else {
        return Vec::new();
    };
    items(&value)
        .filter(|item| item.get("method").is_none())
        .filter_map(|item| {
            let id = item.get("id").filter(|id| !id.is_null())?.to_string();
            let outcome = if item.get("error").is_some() {
                Outcome::Error
            } else if item.get("result")?.get("isError") == Some(&Value::Bool(true)) {
                Outcome::ToolError
            } else {
                Outcome::Result
            };
            Some(Response { id, outcome })
        })
        .collect()
}

fn items(value: &Value) -> Box<dyn Iterator<Item = &Value> + '_> {
    match value {
        Value::Array(items) => Box::new(items.iter()),
        other => Box::new(std::iter::once(other)),
    }
}

/// JSON-RPC error code of a call the proxy refused because its intent could not be sealed
/// (in the range JSON-RPC leaves to implementations).
pub const REFUSED_CODE: i64 = -32001;

/// The proxy's answer to refused requests: one error object for a single request, an array
/// of them for a batch. Ends with the newline that delimits stdio messages.
pub fn refusal(request_ids: &[String], batch: bool, reason: &str) -> Vec<u8> {
    let errors: Vec<Value> = request_ids
        .iter()
        .map(|id| {
            let id: Value = serde_json::from_str(id).unwrap_or(Value::Null);
            serde_json::json!({
                "jsonrpc": "2.0",
                "id": id,
                "error": {
                    "code": REFUSED_CODE,
                    "message": format!(
                        "actseal: refused, the tool call was not forwarded: its intent could not be sealed ({reason})"
                    ),
                },
            })
        })
        .collect();
    let value = match (batch, errors.len()) {
        (false, 1) => errors.into_iter().next().unwrap_or(Value::Null),
        _ => Value::Array(errors),
    };
    let mut line = value.to_string().into_bytes();
    line.push(b'\n');
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_tool_calls_even_when_the_method_is_escaped() {
        let line = br#"{"jsonrpc":"2.0","id":3,"method":"tools\/call","params":{"name":"add"}}"#;
        let found = from_client(line).unwrap();
        assert_eq!(
            found.tool_calls,
            vec![ToolCall {
                id: "3".into(),
                tool: "add".into()
            }]
        );
    }

    #[test]
    fn reads_client_info_and_batches() {
        let line = br#"[{"jsonrpc":"2.0","id":"a","method":"initialize","params":{"clientInfo":{"name":"agent","version":"1.2"}}},{"jsonrpc":"2.0","method":"notifications/initialized"},{"jsonrpc":"2.0","id":"b","method":"tools/call","params":{"name":"x"}}]"#;
        let found = from_client(line).unwrap();
        assert!(found.batch);
        assert_eq!(found.request_ids, vec!["\"a\"", "\"b\""]);
        assert_eq!(found.client_info.unwrap().name, "agent");
        assert_eq!(found.tool_calls[0].id, "\"b\"");
    }

    #[test]
    fn tells_results_tool_errors_and_errors_apart() {
        let r = |l: &[u8]| responses(l)[0].outcome;
        assert_eq!(
            r(br#"{"jsonrpc":"2.0","id":1,"result":{"content":[]}}"#),
            Outcome::Result
        );
        assert_eq!(
            r(br#"{"jsonrpc":"2.0","id":1,"result":{"isError":true}}"#),
            Outcome::ToolError
        );
        assert_eq!(
            r(br#"{"jsonrpc":"2.0","id":1,"error":{"code":-1}}"#),
            Outcome::Error
        );
        assert!(responses(br#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#).is_empty());
        assert!(responses(b"not json").is_empty());
    }

    #[test]
    fn a_refusal_echoes_the_id() {
        let line = refusal(&["\"x-1\"".into()], false, "daemon down");
        let v: Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(v["id"], "x-1");
        assert_eq!(v["error"]["code"], REFUSED_CODE);
        assert_eq!(line.last(), Some(&b'\n'));
    }
}
