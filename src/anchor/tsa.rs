//! RFC 3161 client: asks a timestamp authority for a token over a checkpoint's note text.
//!
//! The request (DER TimeStampReq, RFC 3161 §2.4.1) carries a SHA-256 imprint of the note text,
//! a fresh 64-bit nonce, `certReq` (so the token carries the authority's certificate and the
//! verifier needs only the anchor) and, when configured, the policy. It is POSTed as
//! `application/timestamp-query` over plain HTTP/1.1 (RFC 3161 §3.4: the token is signed, so
//! the transport adds no integrity). The answer must be granted, and its token must carry the
//! request's imprint, nonce and (when asked) policy; with a trust anchor configured the token's
//! signature and chain are checked too before it is kept. The token is returned as the DER bytes
//! received, never re-encoded.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::http::{self, HttpError};
use crate::verify::timestamp::{self, TsaAnchors};
use der::asn1::{Int, ObjectIdentifier, OctetString};
use der::{Decode, Encode, Header, Reader, SliceReader};
use sha2::{Digest, Sha256};

/// SHA-256 (the imprint's algorithm).
const ID_SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.1");

/// One `[[anchor.tsa]]` entry (CONFIG.md).
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TsaConfig {
    /// `http://host[:port]/path` the TimeStampReq is POSTed to.
    pub url: String,
    /// The TSA policy (dotted OID) to ask for; the authority's default if unset.
    #[serde(default)]
    pub policy: Option<String>,
    /// PEM anchors (the authority's CA) each token must verify under before it is kept.
    #[serde(default)]
    pub trust: Option<PathBuf>,
}

impl TsaConfig {
    /// The client for this entry (reads `trust`).
    pub fn client(&self, timeout: Duration) -> Result<TsaClient, TsaError> {
        let pem = match &self.trust {
            Some(path) => Some(std::fs::read(path).map_err(|e| TsaError::Config {
                url: self.url.clone(),
                detail: format!("trust {}: {e}", path.display()),
            })?),
            None => None,
        };
        TsaClient::new(&self.url, self.policy.as_deref(), pem.as_deref(), timeout)
    }
}

/// The anchor task's hook: a token from `tsa` over `note_text` (a checkpoint's note text),
/// checked against the request (and the configured anchor), as the DER bytes received.
pub async fn timestamp(
    tsa: &TsaConfig,
    note_text: &[u8],
    timeout: Duration,
) -> Result<Vec<u8>, TsaError> {
    let stamped = tsa.client(timeout)?.stamp(note_text).await?;
    tracing::debug!(tsa = %tsa.url, ms = stamped.elapsed.as_millis() as u64, "timestamp token");
    Ok(stamped.token)
}

/// Why no token was obtained from an authority.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TsaError {
    #[error("TSA {url}: bad configuration: {detail}")]
    Config { url: String, detail: String },
    #[error("TSA {url}: {detail}")]
    Transport { url: String, detail: String },
    #[error("TSA {url}: no answer within {timeout:?}")]
    Timeout { url: String, timeout: Duration },
    #[error("TSA {url}: HTTP status {status}")]
    Http { url: String, status: u16 },
    #[error("TSA {url}: refused the request (PKIStatus {status})")]
    Refused { url: String, status: u8 },
    #[error("TSA {url}: the reply does not answer the request: {detail}")]
    Mismatch { url: String, detail: String },
    #[error("TSA {url}: the token does not verify under the configured anchor: {detail}")]
    Untrusted { url: String, detail: String },
}

/// One configured timestamp authority.
#[derive(Debug, Clone)]
pub struct TsaClient {
    url: String,
    /// `http://HOST:PORT` (the port made explicit) and the path, as `http::post` takes them.
    base: String,
    path: String,
    policy: Option<ObjectIdentifier>,
    trust: Option<TsaAnchors>,
    timeout: Duration,
}

/// A token and how long it took to get.
#[derive(Debug, Clone)]
pub struct Stamped {
    /// The DER TimeStampToken (CMS ContentInfo) exactly as the authority sent it.
    pub token: Vec<u8>,
    pub elapsed: Duration,
}

impl TsaClient {
    /// `url`: `http://HOST[:PORT]/PATH`; `policy`: the TSA policy OID to ask for (dotted), if
    /// any; `trust_pem`: anchors to check each token against before it is kept, if any.
    pub fn new(
        url: &str,
        policy: Option<&str>,
        trust_pem: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<Self, TsaError> {
        let config = |detail: String| TsaError::Config {
            url: url.to_string(),
            detail,
        };
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| config("the URL must start with http://".into()))?;
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) => (h, p.parse().map_err(|_| config(format!("bad port {p:?}")))?),
            None => (authority, 80),
        };
        if host.is_empty() {
            return Err(config("no host".into()));
        }
        let policy = policy
            .map(|p| ObjectIdentifier::new(p).map_err(|e| config(format!("policy {p:?}: {e}"))))
            .transpose()?;
        let trust = trust_pem
            .map(TsaAnchors::from_pem)
            .transpose()
            .map_err(config)?;
        Ok(TsaClient {
            url: url.to_string(),
            base: format!("http://{host}:{port}"),
            path: if path.is_empty() {
                "/".into()
            } else {
                path.into()
            },
            policy,
            trust,
            timeout,
        })
    }

    /// The authority's URL, as configured.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Asks for a token over `note_text` (a checkpoint's signed text, FORMAT.md §15).
    pub async fn stamp(&self, note_text: &[u8]) -> Result<Stamped, TsaError> {
        let started = Instant::now();
        let imprint = Sha256::digest(note_text).to_vec();
        let nonce = fresh_nonce();
        let request = self.request(&imprint, &nonce)?;
        let reply = self.post(request).await?;
        let token = self.check_reply(&reply, &imprint, &nonce)?;
        if let Some(trust) = &self.trust {
            timestamp::verify_token(&token, note_text, trust).map_err(|detail| {
                TsaError::Untrusted {
                    url: self.url.clone(),
                    detail,
                }
            })?;
        }
        Ok(Stamped {
            token,
            elapsed: started.elapsed(),
        })
    }

    fn request(&self, imprint: &[u8], nonce: &[u8]) -> Result<Vec<u8>, TsaError> {
        let config = |e: der::Error| TsaError::Config {
            url: self.url.clone(),
            detail: e.to_string(),
        };
        let req = x509_tsp::TimeStampReq {
            version: x509_tsp::TspVersion::V1,
            message_imprint: x509_tsp::MessageImprint {
                hash_algorithm: spki::AlgorithmIdentifier {
                    oid: ID_SHA256,
                    parameters: Some(der::asn1::Null.into()),
                },
                hashed_message: OctetString::new(imprint).map_err(config)?,
            },
            req_policy: self.policy,
            nonce: Some(Int::new(nonce).map_err(config)?),
            cert_req: true,
            extensions: None,
        };
        req.to_der().map_err(config)
    }

    /// One POST (`anchor::http`, bounded and under the timeout); the body of a 200
    /// `application/timestamp-reply` answer.
    async fn post(&self, request: Vec<u8>) -> Result<Vec<u8>, TsaError> {
        let content_type = "application/timestamp-query";
        let answer = http::post(&self.base, &self.path, content_type, request, self.timeout)
            .await
            .map_err(|e| match e {
                HttpError::Timeout(..) => TsaError::Timeout {
                    url: self.url.clone(),
                    timeout: self.timeout,
                },
                other => TsaError::Transport {
                    url: self.url.clone(),
                    detail: other.to_string(),
                },
            })?;
        if answer.status != 200 {
            return Err(TsaError::Http {
                url: self.url.clone(),
                status: answer.status,
            });
        }
        let reply_type = answer.content_type.map(|t| t.to_ascii_lowercase());
        if reply_type.as_deref() != Some("application/timestamp-reply") {
            return Err(TsaError::Transport {
                url: self.url.clone(),
                detail: "the reply is not application/timestamp-reply".into(),
            });
        }
        Ok(answer.body)
    }

    /// The reply grants a token for this imprint, nonce and policy; returns the token's bytes.
    fn check_reply(&self, reply: &[u8], imprint: &[u8], nonce: &[u8]) -> Result<Vec<u8>, TsaError> {
        let mismatch = |detail: String| TsaError::Mismatch {
            url: self.url.clone(),
            detail,
        };
        let resp = x509_tsp::TimeStampResp::from_der(reply)
            .map_err(|e| mismatch(format!("not a DER TimeStampResp: {e}")))?;
        let status = resp.status.status as u8;
        if status > 1 {
            return Err(TsaError::Refused {
                url: self.url.clone(),
                status,
            });
        }
        let token = raw_token(reply).map_err(|e| mismatch(format!("no token: {e}")))?;
        let info = timestamp::token_info(&token).map_err(mismatch)?;
        if info.imprint_algorithm != ID_SHA256.to_string() || info.imprint != imprint {
            return Err(mismatch("the token's imprint is not the request's".into()));
        }
        if info.nonce.as_deref() != Some(nonce) {
            return Err(mismatch(
                "the token's nonce is not the request's (a replay?)".into(),
            ));
        }
        if let Some(policy) = &self.policy
            && info.policy != policy.to_string()
        {
            return Err(mismatch(format!(
                "the token's policy {} is not the one asked for ({policy})",
                info.policy
            )));
        }
        Ok(token)
    }
}

/// The second element of `TimeStampResp ::= SEQUENCE { status, timeStampToken OPTIONAL }`,
/// as the bytes received.
fn raw_token(reply: &[u8]) -> der::Result<Vec<u8>> {
    let mut r = SliceReader::new(reply)?;
    Header::decode(&mut r)?;
    r.tlv_bytes()?;
    Ok(r.tlv_bytes()?.to_vec())
}

/// 64 random bits as a positive INTEGER's minimal content octets (first byte 0x40..0x7f).
fn fresh_nonce() -> Vec<u8> {
    use rand_core::{OsRng, RngCore};
    let mut nonce = [0u8; 8];
    OsRng.fill_bytes(&mut nonce);
    nonce[0] = (nonce[0] & 0x7f) | 0x40;
    nonce.to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let c = TsaClient::new(
            "http://127.0.0.1:3180/tsa",
            None,
            None,
            Duration::from_secs(1),
        );
        assert!(matches!(c, Ok(c) if c.base == "http://127.0.0.1:3180" && c.path == "/tsa"));
        let c = TsaClient::new("http://tsa.example", None, None, Duration::from_secs(1));
        assert!(matches!(c, Ok(c) if c.base == "http://tsa.example:80" && c.path == "/"));
        for bad in [
            "https://tsa.example/",
            "http://:80/",
            "http://h:x/",
            "ftp://h/",
        ] {
            assert!(
                TsaClient::new(bad, None, None, Duration::from_secs(1)).is_err(),
                "{bad}"
            );
        }
        assert!(
            TsaClient::new(
                "http://h/",
                Some("not.an.oid"),
                None,
                Duration::from_secs(1)
            )
            .is_err()
        );
    }

    #[test]
    fn nonces_are_positive_and_minimal() {
        for _ in 0..100 {
            let n = fresh_nonce();
            assert!(Int::new(&n).is_ok());
            assert!((0x40..0x80).contains(&n[0]));
        }
    }
}
