//! The proof bundle's JSON shape (FORMAT.md §5) and its decoding: the `bundle.parse` check.
//!
//! These serde structs are the verifier's own: they require every member §5 lists, ignore
//! unknown ones, and reject duplicate members (serde's derive does), so the bundle has one
//! meaning whoever reads it. Everything base64 and DER is decoded here, once; later checks only
//! see bytes and decoded values.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use der::Decode;
use p256::ecdsa::Signature;
use serde::Deserialize;
use spki::SubjectPublicKeyInfoRef;

use super::dsse::Envelope;
use super::x509::ParsedCert;

/// The bundle format this verifier implements.
pub(crate) const MEDIA_TYPE: &str = "application/vnd.actseal.bundle.v1+json";

/// A bundle is a few kilobytes; anything this large is not one, and is refused before parsing.
const MAX_BUNDLE_BYTES: usize = 4 * 1024 * 1024;

/// Bounds the work spent on intermediates; real deployments have zero or one.
const MAX_CHAIN_LEN: usize = 8;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct BundleJson {
    media_type: String,
    receipt: EnvelopeJson,
    actor_key: ActorKeyJson,
    lineage: LineageJson,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct EnvelopeJson {
    payload_type: String,
    payload: String,
    signatures: Vec<SignatureJson>,
}

#[derive(Deserialize)]
struct SignatureJson {
    keyid: String,
    sig: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ActorKeyJson {
    key_id: String,
    public_key: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct LineageJson {
    backend: String,
    statement: EnvelopeJson,
    device_certificate: String,
    certificate_chain: Vec<String>,
}

/// A bundle with every blob decoded.
#[derive(Debug)]
pub(crate) struct Bundle {
    pub(crate) receipt: Envelope,
    pub(crate) actor_key: ActorKey,
    pub(crate) lineage: Lineage,
}

/// `actorKey`: the claimed key id and the SubjectPublicKeyInfo DER it should be the hash of.
#[derive(Debug)]
pub(crate) struct ActorKey {
    pub(crate) key_id: String,
    pub(crate) spki_der: Vec<u8>,
}

/// `lineage`, decoded.
#[derive(Debug)]
pub(crate) struct Lineage {
    pub(crate) backend: String,
    pub(crate) statement: Envelope,
    pub(crate) device: ParsedCert,
    pub(crate) chain: Vec<ParsedCert>,
}

/// Parses and decodes a bundle; the error is the `bundle.parse` detail.
pub(crate) fn parse(bytes: &[u8]) -> Result<Bundle, String> {
    if bytes.len() > MAX_BUNDLE_BYTES {
        return Err(format!(
            "bundle is {} bytes, more than the {MAX_BUNDLE_BYTES} accepted",
            bytes.len()
        ));
    }
    let json: BundleJson =
        serde_json::from_slice(bytes).map_err(|e| format!("not a bundle JSON document: {e}"))?;
    if json.media_type != MEDIA_TYPE {
        return Err(format!(
            "mediaType is {:?}, expected {MEDIA_TYPE:?}",
            json.media_type
        ));
    }
    Ok(Bundle {
        receipt: decode_envelope("receipt", json.receipt)?,
        actor_key: decode_actor_key(json.actor_key)?,
        lineage: decode_lineage(json.lineage)?,
    })
}

/// Standard base64 with padding, canonical (RFC 4648 §4): no whitespace, no loose bits.
fn base64(what: &str, text: &str) -> Result<Vec<u8>, String> {
    STANDARD
        .decode(text)
        .map_err(|e| format!("{what} is not standard padded base64: {e}"))
}

/// Decodes an envelope; it must carry exactly one signature (FORMAT.md §2).
fn decode_envelope(what: &str, json: EnvelopeJson) -> Result<Envelope, String> {
    let [signature] = <[SignatureJson; 1]>::try_from(json.signatures).map_err(|sigs| {
        format!(
            "{what}.signatures must hold exactly one signature, found {}",
            sigs.len()
        )
    })?;
    let payload = base64(&format!("{what}.payload"), &json.payload)?;
    let sig_der = base64(&format!("{what}.signatures[0].sig"), &signature.sig)?;
    let signature_value = Signature::from_der(&sig_der)
        .map_err(|e| format!("{what}.signatures[0].sig is not a DER ECDSA P-256 signature: {e}"))?;
    Ok(Envelope {
        payload_type: json.payload_type,
        payload,
        keyid: signature.keyid,
        signature: signature_value,
    })
}

/// Decodes `actorKey`; the key must at least be a DER SubjectPublicKeyInfo here. That it is a
/// P-256 key is part of `receipt.signature`.
fn decode_actor_key(json: ActorKeyJson) -> Result<ActorKey, String> {
    let spki_der = base64("actorKey.publicKey", &json.public_key)?;
    SubjectPublicKeyInfoRef::from_der(&spki_der)
        .map_err(|e| format!("actorKey.publicKey is not a DER SubjectPublicKeyInfo: {e}"))?;
    Ok(ActorKey {
        key_id: json.key_id,
        spki_der,
    })
}

fn decode_lineage(json: LineageJson) -> Result<Lineage, String> {
    if json.certificate_chain.len() > MAX_CHAIN_LEN {
        return Err(format!(
            "lineage.certificateChain holds {} certificates, more than the {MAX_CHAIN_LEN} accepted",
            json.certificate_chain.len()
        ));
    }
    let statement = decode_envelope("lineage.statement", json.statement)?;
    let device = decode_cert("lineage.deviceCertificate", &json.device_certificate)?;
    let chain = json
        .certificate_chain
        .iter()
        .enumerate()
        .map(|(i, text)| decode_cert(&format!("lineage.certificateChain[{i}]"), text))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Lineage {
        backend: json.backend,
        statement,
        device,
        chain,
    })
}

fn decode_cert(what: &str, text: &str) -> Result<ParsedCert, String> {
    let der = base64(what, text)?;
    ParsedCert::from_der(&der).map_err(|e| format!("{what}: {e}"))
}
