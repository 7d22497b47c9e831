//! PLACEHOLDER until the independent verifier lands.
use std::collections::BTreeMap;
pub struct TrustAnchors;
impl TrustAnchors { pub fn from_pem(_pem: &[u8]) -> Result<Self, VerifyError> { Ok(TrustAnchors) } }
pub fn verify_bundle(_b: &[u8], _a: &TrustAnchors, _d: Option<&[u8]>) -> Result<Verified, VerifyError> { Err(VerifyError { check: Check::BundleParse, detail: "x".into() }) }
#[derive(Debug, Clone)]
pub struct Verified { pub actor: String, pub action_type: String, pub target: String, pub document_sha256: String, pub document_checked: bool, pub key_id: String, pub key_version: u64, pub backend: String, pub sequence: u64, pub log_index: u64, pub signed_at: String, pub device_subject: String, pub anchor_subject: String, pub token_serial: String, pub origin: String, pub context: BTreeMap<String, String> }
impl std::fmt::Display for Verified { fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result { write!(f, "{}", self.actor) } }
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check { BundleParse }
impl std::fmt::Display for Check { fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result { write!(f, "bundle.parse") } }
#[derive(Debug, thiserror::Error)]
#[error("{check} failed: {detail}")]
pub struct VerifyError { pub check: Check, pub detail: String }
