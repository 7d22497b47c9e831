//! A minimal HTTP/1.1 client for witnesses and timestamp authorities: one POST per
//! connection, a bounded answer, a deadline on the whole exchange.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;

/// Largest answer body read (a cosignature is ~130 bytes, a timestamp token a few KiB).
pub const MAX_RESPONSE_BYTES: usize = 256 * 1024;

/// Why an HTTP exchange failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum HttpError {
    #[error("URL {0:?} is not http://host:port/path")]
    Url(String),
    #[error("cannot connect to {0}: {1}")]
    Connect(String, String),
    #[error("{0}: no answer within {1} ms")]
    Timeout(String, u128),
    #[error("{0}: {1}")]
    Exchange(String, String),
}

/// An HTTP answer.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub content_type: Option<String>,
    pub body: Vec<u8>,
}

/// `http://host:port/path` split into the address and the path (no TLS: witnesses and TSAs
/// sign what they return, and what is sent is public).
pub fn split_url(url: &str) -> Result<(String, String), HttpError> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| HttpError::Url(url.to_string()))?;
    let (authority, path) = match rest.find('/') {
        Some(at) => rest.split_at(at),
        None => (rest, "/"),
    };
    if authority.is_empty() || !authority.contains(':') {
        return Err(HttpError::Url(url.to_string()));
    }
    Ok((authority.to_string(), path.to_string()))
}

/// POSTs `body` to `url` (a base URL joined with `path`) and returns the answer.
pub async fn post(
    url: &str,
    path: &str,
    content_type: &str,
    body: Vec<u8>,
    timeout: Duration,
) -> Result<Answer, HttpError> {
    let (authority, base) = split_url(url)?;
    let full_path = format!("{}{path}", base.trim_end_matches('/'));
    let exchange = async {
        let stream = tokio::net::TcpStream::connect(&authority)
            .await
            .map_err(|e| HttpError::Connect(authority.clone(), e.to_string()))?;
        let _ = stream.set_nodelay(true);
        let fail = |e: String| HttpError::Exchange(url.to_string(), e);
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| fail(e.to_string()))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let request = http::Request::post(full_path)
            .header(http::header::HOST, authority.as_str())
            .header(http::header::CONTENT_TYPE, content_type)
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| fail(e.to_string()))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| fail(e.to_string()))?;
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
            .collect()
            .await
            .map_err(|e| fail(e.to_string()))?
            .to_bytes()
            .to_vec();
        Ok(Answer {
            status,
            content_type,
            body,
        })
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| HttpError::Timeout(url.to_string(), timeout.as_millis()))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            split_url("http://127.0.0.1:8080").ok(),
            Some(("127.0.0.1:8080".into(), "/".into()))
        );
        assert_eq!(
            split_url("http://w.example:80/witness/").ok(),
            Some(("w.example:80".into(), "/witness/".into()))
        );
        for bad in ["https://a:1", "http://", "http://host/x", "ftp://a:1/"] {
            assert!(split_url(bad).is_err(), "{bad}");
        }
    }
}
