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
use serde_json::value::RawValue;

use super::tpm::Tpm2Certify;
use spki::SubjectPublicKeyInfoRef;

use super::batch::BatchMember;
use super::dsse::Envelope;
use super::x509::ParsedCert;

/// The bundle format this verifier implements.
pub(crate) const MEDIA_TYPE: &str = "application/vnd.actseal.bundle.v1+json";

/// A bundle is a few kilobytes; anything this large is not one, and is refused before parsing.
const MAX_BUNDLE_BYTES: usize = 4 * 1024 * 1024;

/// Bounds the work spent on intermediates; real deployments have zero or one.
const MAX_CHAIN_LEN: usize = 8;

/// The bundle's members. `lineage` and `log.logKey`, which every bundle of one key and one
/// log repeats, are kept as raw JSON text: [`decode_lineage_text`] and [`decode_log_key_text`]
/// decode them, and a verifier of many bundles does so once per distinct text.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct BundleJson<'a> {
    media_type: String,
    receipt: EnvelopeJson,
    actor_key: ActorKeyJson,
    #[serde(borrow)]
    lineage: &'a RawValue,
    #[serde(borrow)]
    log: LogJson<'a>,
    /// Present exactly in a batch receipt's bundle (FORMAT.md §12).
    #[serde(default)]
    batch: Option<BatchJson>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct LogJson<'a> {
    index: u64,
    tree_size: u64,
    inclusion_proof: Vec<String>,
    checkpoint: String,
    #[serde(borrow)]
    log_key: &'a RawValue,
    /// RFC 3161 tokens over the checkpoint (FORMAT.md §15); checked by `verify::timestamp`.
    #[serde(default)]
    timestamps: Vec<TimestampJson>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TimestampJson {
    token: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct BatchJson {
    statement: EnvelopeJson,
    leaf_index: u64,
    inclusion_proof: Vec<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct LogKeyJson {
    pub(crate) key_name: String,
    pub(crate) key_id: String,
    pub(crate) public_key: String,
    pub(crate) lineage: LineageJson,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct PredecessorJson {
    version: u64,
    key_id: String,
    public_key: String,
    backend: String,
    #[serde(default)]
    statement: Option<EnvelopeJson>,
    #[serde(default)]
    tpm2_certify: Option<Tpm2CertifyJson>,
    device_certificate: String,
    certificate_chain: Vec<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct Tpm2CertifyJson {
    attest: String,
    signature: String,
    public_area: String,
    ak_public_area: String,
    created_at: String,
    #[serde(default)]
    nonce: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct EnvelopeJson {
    payload_type: String,
    payload: String,
    signatures: Vec<SignatureJson>,
}

#[derive(Deserialize)]
pub(crate) struct SignatureJson {
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
pub(crate) struct LineageJson {
    backend: String,
    #[serde(default)]
    statement: Option<EnvelopeJson>,
    #[serde(default)]
    tpm2_certify: Option<Tpm2CertifyJson>,
    device_certificate: String,
    certificate_chain: Vec<String>,
    #[serde(default)]
    predecessors: Vec<PredecessorJson>,
    #[serde(default)]
    rotations: Vec<EnvelopeJson>,
}

/// A bundle with every blob decoded, but for the lineage and the log key, which are held as
/// their JSON text (see [`BundleJson`]).
#[derive(Debug)]
pub(crate) struct Bundle<'a> {
    pub(crate) receipt: SealedReceipt,
    pub(crate) actor_key: ActorKey,
    pub(crate) lineage_json: &'a str,
    pub(crate) log: LogProof<'a>,
}

/// The receipt: its payload and what seals it, its own signature or its place in a batch.
#[derive(Debug)]
pub(crate) struct SealedReceipt {
    pub(crate) payload_type: String,
    pub(crate) payload: Vec<u8>,
    pub(crate) seal: Seal,
}

/// A receipt is sealed by its own signature (`single`) or by a batch (`batch`), never both.
#[derive(Debug)]
pub(crate) enum Seal {
    Single(Envelope),
    Batch(BatchMember),
}

impl SealedReceipt {
    /// The receipt's log entry (FORMAT.md §11.1): the signature slot holds the DER signature
    /// of a single receipt, the batch seal of a batch receipt (§12.3).
    pub(crate) fn entry_bytes(&self) -> Result<Vec<u8>, String> {
        let slot = match &self.seal {
            Seal::Single(envelope) => envelope.signature_der.clone(),
            Seal::Batch(member) => super::batch::seal_bytes(member)?,
        };
        super::log::entry_of(&self.payload_type, &self.payload, &slot)
    }
}

/// `log`, decoded but for the log key (its JSON text).
#[derive(Debug)]
pub(crate) struct LogProof<'a> {
    pub(crate) index: u64,
    pub(crate) tree_size: u64,
    pub(crate) inclusion_proof: Vec<[u8; 32]>,
    pub(crate) checkpoint: String,
    pub(crate) log_key_json: &'a str,
    /// `log.timestamps[].token`, DER (FORMAT.md §15).
    pub(crate) timestamps: Vec<Vec<u8>>,
}

/// The log key, decoded.
#[derive(Debug)]
pub(crate) struct LogKey {
    pub(crate) key_name: String,
    pub(crate) key: ActorKey,
    pub(crate) key_lineage: Lineage,
}

/// An earlier version of the actor's key, decoded.
#[derive(Debug)]
pub(crate) struct Predecessor {
    pub(crate) version: u64,
    pub(crate) key: ActorKey,
    pub(crate) attestation: Lineage,
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
    pub(crate) evidence: Evidence,
    pub(crate) device: ParsedCert,
    pub(crate) chain: Vec<ParsedCert>,
    pub(crate) predecessors: Vec<Predecessor>,
    pub(crate) rotations: Vec<Envelope>,
}

/// What vouches for a key: the device's signed statement (PKCS#11) or the TPM's own
/// certification by its attestation key (TPM).
#[derive(Debug)]
pub(crate) enum Evidence {
    Statement(Envelope),
    Tpm2Certify(Tpm2Certify),
}

/// Parses and decodes one key attestation as `Attest` returns it (a lineage without
/// predecessors).
pub(crate) fn parse_attestation(bytes: &[u8]) -> Result<Lineage, String> {
    if bytes.len() > MAX_BUNDLE_BYTES {
        return Err(format!(
            "attestation is {} bytes, more than the {MAX_BUNDLE_BYTES} accepted",
            bytes.len()
        ));
    }
    let json: LineageJson = serde_json::from_slice(bytes)
        .map_err(|e| format!("not an attestation JSON document: {e}"))?;
    let lineage = decode_lineage("attestation", json)?;
    if !lineage.predecessors.is_empty() || !lineage.rotations.is_empty() {
        return Err("an attestation carries no rotations".into());
    }
    Ok(lineage)
}

/// Parses and decodes a bundle but for its lineage and log key (see [`Bundle`]); the error is
/// the `bundle.parse` detail.
pub(crate) fn parse(bytes: &[u8]) -> Result<Bundle<'_>, String> {
    if bytes.len() > MAX_BUNDLE_BYTES {
        return Err(format!(
            "bundle is {} bytes, more than the {MAX_BUNDLE_BYTES} accepted",
            bytes.len()
        ));
    }
    let json: BundleJson<'_> =
        serde_json::from_slice(bytes).map_err(|e| format!("not a bundle JSON document: {e}"))?;
    if json.media_type != MEDIA_TYPE {
        return Err(format!(
            "mediaType is {:?}, expected {MEDIA_TYPE:?}",
            json.media_type
        ));
    }
    Ok(Bundle {
        receipt: decode_receipt(json.receipt, json.batch)?,
        actor_key: decode_actor_key(
            "actorKey",
            json.actor_key.key_id,
            &json.actor_key.public_key,
        )?,
        lineage_json: json.lineage.get(),
        log: decode_log(json.log)?,
    })
}

/// The receipt and its seal: exactly one signature and no `batch` member, or no signature and
/// a `batch` member (FORMAT.md §12.2).
fn decode_receipt(json: EnvelopeJson, batch: Option<BatchJson>) -> Result<SealedReceipt, String> {
    let Some(batch) = batch else {
        let envelope = decode_envelope("receipt", json)?;
        return Ok(SealedReceipt {
            payload_type: envelope.payload_type.clone(),
            payload: envelope.payload.clone(),
            seal: Seal::Single(envelope),
        });
    };
    if !json.signatures.is_empty() {
        return Err(format!(
            "receipt.signatures must be empty in a batch receipt (it is sealed by its batch), found {}",
            json.signatures.len()
        ));
    }
    let inclusion_proof = decode_proof("batch.inclusionProof", &batch.inclusion_proof)?;
    Ok(SealedReceipt {
        payload_type: json.payload_type,
        payload: base64("receipt.payload", &json.payload)?,
        seal: Seal::Batch(BatchMember {
            statement: decode_envelope("batch.statement", batch.statement)?,
            leaf_index: batch.leaf_index,
            proof: inclusion_proof,
        }),
    })
}

/// Decodes a bundle's `lineage` from its JSON text.
pub(crate) fn decode_lineage_text(text: &str) -> Result<Lineage, String> {
    let json: LineageJson = serde_json::from_str(text)
        .map_err(|e| format!("lineage is not of the shape of §5: {e}"))?;
    decode_lineage("lineage", json)
}

/// Decodes a bundle's `log.logKey` from its JSON text.
pub(crate) fn decode_log_key_text(text: &str) -> Result<LogKey, String> {
    let json: LogKeyJson = serde_json::from_str(text)
        .map_err(|e| format!("log.logKey is not of the shape of §5: {e}"))?;
    let (key_name, key, key_lineage) = decode_log_key(json)?;
    Ok(LogKey {
        key_name,
        key,
        key_lineage,
    })
}

/// Bounds the lineage a bundle may carry: far more key versions than any actor will have.
const MAX_KEY_VERSIONS: usize = 1024;
/// An inclusion proof in a tree of at most 2^64 leaves has at most 64 hashes.
const MAX_PROOF_HASHES: usize = 64;

/// Decodes a log key as bundles and log exports carry it.
pub(crate) fn decode_log_key(json: LogKeyJson) -> Result<(String, ActorKey, Lineage), String> {
    let key_lineage = decode_lineage("logKey.lineage", json.lineage)?;
    if !key_lineage.predecessors.is_empty() || !key_lineage.rotations.is_empty() {
        return Err("logKey.lineage must not carry rotations".into());
    }
    Ok((
        json.key_name,
        decode_actor_key("logKey", json.key_id, &json.public_key)?,
        key_lineage,
    ))
}

fn decode_log(json: LogJson<'_>) -> Result<LogProof<'_>, String> {
    Ok(LogProof {
        index: json.index,
        tree_size: json.tree_size,
        inclusion_proof: decode_proof("log.inclusionProof", &json.inclusion_proof)?,
        checkpoint: json.checkpoint,
        log_key_json: json.log_key.get(),
        timestamps: (0..)
            .zip(&json.timestamps)
            .map(|(i, t)| base64(&format!("log.timestamps[{i}].token"), &t.token))
            .collect::<Result<Vec<_>, _>>()?,
    })
}

/// An inclusion proof: at most 64 lowercase hex SHA-256 hashes.
fn decode_proof(what: &str, hashes: &[String]) -> Result<Vec<[u8; 32]>, String> {
    if hashes.len() > MAX_PROOF_HASHES {
        return Err(format!(
            "{what} holds {} hashes, more than {MAX_PROOF_HASHES}",
            hashes.len()
        ));
    }
    hashes
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let lower = h
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
            let mut out = [0u8; 32];
            match hex::decode_to_slice(h, &mut out) {
                _ if !lower => Err(format!("{what}[{i}] is not lowercase hex")),
                Ok(()) => Ok(out),
                Err(hex::FromHexError::InvalidStringLength) => {
                    Err(format!("{what}[{i}] is not 32 bytes"))
                }
                Err(_) => Err(format!("{what}[{i}] is not lowercase hex")),
            }
        })
        .collect()
}

/// Standard base64 with padding, canonical (RFC 4648 §4): no whitespace, no loose bits.
pub(crate) fn base64(what: &str, text: &str) -> Result<Vec<u8>, String> {
    STANDARD
        .decode(text)
        .map_err(|e| format!("{what} is not standard padded base64: {e}"))
}

/// Decodes an envelope; it must carry exactly one signature (FORMAT.md §2).
pub(crate) fn decode_envelope(what: &str, json: EnvelopeJson) -> Result<Envelope, String> {
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
        signature_der: sig_der,
    })
}

/// Decodes `actorKey`; the key must at least be a DER SubjectPublicKeyInfo here. That it is a
/// P-256 key is part of `receipt.signature`.
pub(crate) fn decode_actor_key(
    what: &str,
    key_id: String,
    public_key: &str,
) -> Result<ActorKey, String> {
    let spki_der = base64(&format!("{what}.publicKey"), public_key)?;
    SubjectPublicKeyInfoRef::from_der(&spki_der)
        .map_err(|e| format!("{what}.publicKey is not a DER SubjectPublicKeyInfo: {e}"))?;
    Ok(ActorKey { key_id, spki_der })
}

/// Decodes one key's attestation: backend, device statement, device certificate and chain.
fn decode_attestation(
    what: &str,
    backend: String,
    statement: Option<EnvelopeJson>,
    tpm2_certify: Option<Tpm2CertifyJson>,
    device_certificate: &str,
    certificate_chain: &[String],
) -> Result<Lineage, String> {
    if certificate_chain.len() > MAX_CHAIN_LEN {
        return Err(format!(
            "{what}.certificateChain holds {} certificates, more than the {MAX_CHAIN_LEN} accepted",
            certificate_chain.len()
        ));
    }
    let evidence = match (statement, tpm2_certify) {
        (Some(statement), None) => {
            Evidence::Statement(decode_envelope(&format!("{what}.statement"), statement)?)
        }
        (None, Some(c)) => Evidence::Tpm2Certify(Tpm2Certify {
            attest: base64(&format!("{what}.tpm2Certify.attest"), &c.attest)?,
            signature: base64(&format!("{what}.tpm2Certify.signature"), &c.signature)?,
            public_area: base64(&format!("{what}.tpm2Certify.publicArea"), &c.public_area)?,
            ak_public_area: base64(
                &format!("{what}.tpm2Certify.akPublicArea"),
                &c.ak_public_area,
            )?,
            created_at: c.created_at,
            nonce: c
                .nonce
                .map(|n| base64(&format!("{what}.tpm2Certify.nonce"), &n))
                .transpose()?,
        }),
        _ => {
            return Err(format!(
                "{what} must carry exactly one of statement and tpm2Certify"
            ));
        }
    };
    let device = decode_cert(&format!("{what}.deviceCertificate"), device_certificate)?;
    let chain = certificate_chain
        .iter()
        .enumerate()
        .map(|(i, text)| decode_cert(&format!("{what}.certificateChain[{i}]"), text))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Lineage {
        backend,
        evidence,
        device,
        chain,
        predecessors: Vec::new(),
        rotations: Vec::new(),
    })
}

pub(crate) fn decode_lineage(what: &str, json: LineageJson) -> Result<Lineage, String> {
    if json.predecessors.len() > MAX_KEY_VERSIONS || json.rotations.len() > MAX_KEY_VERSIONS {
        return Err(format!(
            "{what} carries more than {MAX_KEY_VERSIONS} key versions"
        ));
    }
    let mut lineage = decode_attestation(
        what,
        json.backend,
        json.statement,
        json.tpm2_certify,
        &json.device_certificate,
        &json.certificate_chain,
    )?;
    for (i, p) in json.predecessors.into_iter().enumerate() {
        let at = format!("{what}.predecessors[{i}]");
        lineage.predecessors.push(Predecessor {
            version: p.version,
            key: decode_actor_key(&at, p.key_id, &p.public_key)?,
            attestation: decode_attestation(
                &at,
                p.backend,
                p.statement,
                p.tpm2_certify,
                &p.device_certificate,
                &p.certificate_chain,
            )?,
        });
    }
    for (i, r) in json.rotations.into_iter().enumerate() {
        lineage
            .rotations
            .push(decode_envelope(&format!("{what}.rotations[{i}]"), r)?);
    }
    Ok(lineage)
}

fn decode_cert(what: &str, text: &str) -> Result<ParsedCert, String> {
    let der = base64(what, text)?;
    ParsedCert::from_der(&der).map_err(|e| format!("{what}: {e}"))
}
