//! The signed statements' contents: `receipt.statement` (FORMAT.md §3) and `lineage.statement`
//! (§4).
//!
//! Both payloads are parsed twice on purpose: first only `_type` and `predicateType`, so a
//! statement of another kind is reported as such rather than as a missing member; then in full.
//! Parsing happens only after the signature has verified, so these bytes are the signer's.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use time::PrimitiveDateTime;
use time::format_description::FormatItem;
use time::macros::format_description;

use super::bundle::Evidence;
use super::digest::require_sha256_hex;
use super::dsse::{Envelope, IN_TOTO_PAYLOAD_TYPE};

const STATEMENT_TYPE: &str = "https://in-toto.io/Statement/v1";
const RECEIPT_PREDICATE: &str = "https://actseal.dev/receipt/v1";
const LINEAGE_PREDICATE: &str = "https://actseal.dev/lineage/pkcs11-attributes/v2";
const REGISTRATION_PREDICATE: &str = "https://actseal.dev/key-registration/v1";
const ROTATION_PREDICATE: &str = "https://actseal.dev/rotation/v1";
const RETIREMENT_PREDICATE: &str = "https://actseal.dev/retirement/v1";
const BACKENDS: [&str; 2] = ["pkcs11", "tpm"];
/// The backend whose lineage is a signed attribute statement (FORMAT.md §4.1).
const LINEAGE_BACKEND: &str = "pkcs11";
/// The backend whose lineage is a TPM2_Certify by the attestation key (FORMAT.md §4.2).
const TPM_BACKEND: &str = "tpm";
const ORIGINS: [&str; 2] = ["generated", "adopted"];

/// RFC 3339 UTC with second precision: `2026-11-26T17:51:36Z`, nothing else.
const TIME_FORMAT: &[FormatItem<'static>] =
    format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct StatementHead {
    #[serde(rename = "_type")]
    statement_type: String,
    predicate_type: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Statement<P> {
    #[serde(rename = "_type")]
    _statement_type: IgnoredAny,
    subject: Vec<Subject>,
    #[serde(rename = "predicateType")]
    _predicate_type: IgnoredAny,
    predicate: P,
}

#[derive(Deserialize)]
struct Subject {
    name: String,
    digest: SubjectDigest,
}

#[derive(Deserialize)]
struct SubjectDigest {
    sha256: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ReceiptPredicate {
    actor: String,
    key: KeyRef,
    action: Action,
    context: UniqueStringMap,
    caller: CallerDoc,
    signed_at: String,
    sequence: u64,
    /// Required, and may be `null`: `deserialize_with` stops serde from treating a missing
    /// member as `None`.
    #[serde(deserialize_with = "present_or_null")]
    previous_receipt: Option<PreviousReceipt>,
    /// Required, and `null` in a fleet receipt (FORMAT.md §3): its index is then the one its
    /// inclusion proof proves.
    #[serde(deserialize_with = "present_or_null")]
    log_index: Option<u64>,
    mode: String,
}

#[derive(Deserialize)]
struct KeyRef {
    id: String,
    version: u64,
    backend: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Action {
    #[serde(rename = "type")]
    action_type: String,
    target: String,
    #[serde(default)]
    parent_sha256: Option<String>,
}

/// Who obtained the receipt (FORMAT.md §3), as the daemon authenticated it.
#[derive(Deserialize)]
#[serde(tag = "kind")]
enum CallerDoc {
    #[serde(rename = "unix")]
    Unix { uid: u32, gid: u32, pid: u32 },
    #[serde(rename = "x509")]
    X509 {
        #[serde(rename = "spiffeId", deserialize_with = "present_or_null")]
        spiffe_id: Option<String>,
        subject: String,
    },
    #[serde(rename = "insecure-tcp")]
    InsecureTcp { address: String },
}

impl CallerDoc {
    /// Checks the values and says who it was in one line.
    fn summary(&self) -> Result<String, String> {
        match self {
            CallerDoc::Unix { uid, gid, pid } => Ok(format!("unix uid={uid} gid={gid} pid={pid}")),
            CallerDoc::X509 { spiffe_id, subject } => {
                if let Some(id) = spiffe_id
                    && !id.starts_with("spiffe://")
                {
                    return Err(format!(
                        "predicate.caller.spiffeId {id:?} is not a spiffe:// URI"
                    ));
                }
                match (spiffe_id, subject.is_empty()) {
                    (None, true) => {
                        Err("predicate.caller names neither a SPIFFE ID nor a subject".to_string())
                    }
                    (Some(id), _) => Ok(format!("x509 {id} (subject {subject:?})")),
                    (None, false) => Ok(format!("x509 subject {subject:?}")),
                }
            }
            CallerDoc::InsecureTcp { address } => Ok(format!(
                "insecure-tcp {address} (UNAUTHENTICATED development listener)"
            )),
        }
    }
}

#[derive(Deserialize)]
struct PreviousReceipt {
    sha256: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct LineagePredicate {
    key_role: String,
    #[serde(default)]
    actor: Option<String>,
    #[serde(default)]
    key_version: Option<u64>,
    #[serde(default)]
    log_origin: Option<String>,
    key_id: String,
    origin: String,
    created_at: String,
    token: TokenInfo,
    attributes: Attributes,
    /// Present only in an `Attest` answer: what makes the statement fresh.
    #[serde(default)]
    freshness: Option<FreshnessJson>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct FreshnessJson {
    nonce: String,
    attested_at: String,
}

#[derive(Deserialize)]
struct TokenInfo {
    #[serde(rename = "manufacturer")]
    _manufacturer: String,
    #[serde(rename = "model")]
    _model: String,
    serial: String,
    #[serde(rename = "label")]
    _label: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Attributes {
    key_type: String,
    curve: String,
    #[serde(rename = "id")]
    _id: String,
    #[serde(rename = "label")]
    _label: String,
    #[serde(rename = "token")]
    _token: bool,
    #[serde(rename = "private")]
    _private: bool,
    sensitive: bool,
    always_sensitive: bool,
    extractable: bool,
    never_extractable: bool,
    local: bool,
    sign: bool,
}

/// Reads a member that must be present and may be `null` (serde reads a missing `Option`
/// member as `None` unless told otherwise).
pub(crate) fn present_or_null<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(deserializer)
}

/// A JSON object of strings that rejects duplicate keys, which a plain map would resolve
/// silently (last one wins) and differently from other JSON readers.
struct UniqueStringMap(BTreeMap<String, String>);

impl<'de> Deserialize<'de> for UniqueStringMap {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct UniqueVisitor;
        impl<'de> Visitor<'de> for UniqueVisitor {
            type Value = UniqueStringMap;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object of string values")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut out = BTreeMap::new();
                while let Some((key, value)) = map.next_entry::<String, String>()? {
                    if out.contains_key(&key) {
                        return Err(de::Error::custom(format!("duplicate context key {key:?}")));
                    }
                    out.insert(key, value);
                }
                Ok(UniqueStringMap(out))
            }
        }
        deserializer.deserialize_map(UniqueVisitor)
    }
}

/// What a verified receipt says, for the later checks and the summary.
#[derive(Debug)]
pub(crate) struct Receipt {
    pub(crate) actor: String,
    pub(crate) key_version: u64,
    pub(crate) backend: String,
    pub(crate) action_type: String,
    pub(crate) target: String,
    pub(crate) document_sha256: String,
    pub(crate) context: BTreeMap<String, String>,
    pub(crate) caller: String,
    pub(crate) signed_at: String,
    /// `signedAt` as Unix seconds: the instant certificates must be valid at.
    pub(crate) signed_at_unix: i64,
    pub(crate) sequence: u64,
    /// `predicate.logIndex`; `None` for a fleet receipt, signed before the log ordered it.
    pub(crate) log_index: Option<u64>,
    /// `previousReceipt.sha256`, when there is one.
    pub(crate) previous_sha256: Option<String>,
}

/// What a verified key attestation says.
#[derive(Debug)]
pub(crate) struct LineageFacts {
    /// What the hardware states about itself: the token serial, or the TPM's firmware and clock.
    pub(crate) token_serial: String,
    /// `generated` or `adopted`.
    pub(crate) origin: String,
    /// When the key was created (the statement's or the certification's `createdAt`): the key
    /// cannot have signed before it.
    pub(crate) created_at_unix: i64,
    /// The nonce the attestation binds (an `Attest` answer), if any.
    pub(crate) nonce: Option<Vec<u8>>,
    /// When a PKCS#11 device made a fresh statement (`freshness.attestedAt`).
    pub(crate) attested_at_unix: Option<i64>,
}

/// Parses an RFC 3339 UTC second-precision time into Unix seconds. The text must be the one
/// canonical spelling of that instant (it is formatted back and compared).
pub(crate) fn parse_time(what: &str, text: &str) -> Result<i64, String> {
    let invalid =
        || format!("{what} {text:?} is not an RFC 3339 UTC time like 2026-11-26T17:51:36Z");
    let parsed = PrimitiveDateTime::parse(text, TIME_FORMAT).map_err(|_| invalid())?;
    let canonical = parsed.format(TIME_FORMAT).map_err(|_| invalid())?;
    if canonical != text {
        return Err(invalid());
    }
    Ok(parsed.assume_utc().unix_timestamp())
}

/// The subject of a statement about one key version: named `<actor>#<version>`, its digest
/// the key id.
fn require_key_version_subject(
    subject: &Subject,
    actor: &str,
    version: u64,
    key_id: &str,
) -> Result<(), String> {
    require_eq("subject[0].digest.sha256", &subject.digest.sha256, key_id)?;
    require_eq(
        "subject[0].name",
        &subject.name,
        &format!("{actor}#{version}"),
    )
}

fn require_eq(what: &str, got: &str, want: &str) -> Result<(), String> {
    if got == want {
        Ok(())
    } else {
        Err(format!("{what} is {got:?}, expected {want:?}"))
    }
}

/// Parses an in-toto Statement v1 with the given predicate type and returns its only subject
/// and its predicate.
fn parse_statement<P: for<'de> Deserialize<'de>>(
    envelope: &Envelope,
    predicate_type: &str,
) -> Result<(Subject, P), String> {
    parse_statement_bytes(&envelope.payload_type, &envelope.payload, predicate_type)
}

/// [`parse_statement`] for a payload held apart from an envelope: (subject name, subject
/// digest, predicate).
pub(crate) fn parse_statement_parts<P: for<'de> Deserialize<'de>>(
    payload_type: &str,
    payload: &[u8],
    predicate_type: &str,
) -> Result<(String, String, P), String> {
    let (subject, p) = parse_statement_bytes(payload_type, payload, predicate_type)?;
    Ok((subject.name, subject.digest.sha256, p))
}

fn parse_statement_bytes<P: for<'de> Deserialize<'de>>(
    payload_type: &str,
    payload: &[u8],
    predicate_type: &str,
) -> Result<(Subject, P), String> {
    require_eq("payloadType", payload_type, IN_TOTO_PAYLOAD_TYPE)?;
    let head: StatementHead = serde_json::from_slice(payload)
        .map_err(|e| format!("payload is not an in-toto statement: {e}"))?;
    require_eq("_type", &head.statement_type, STATEMENT_TYPE)?;
    require_eq("predicateType", &head.predicate_type, predicate_type)?;
    let statement: Statement<P> = serde_json::from_slice(payload)
        .map_err(|e| format!("payload is not a valid {predicate_type} statement: {e}"))?;
    let [subject] = <[Subject; 1]>::try_from(statement.subject)
        .map_err(|s| format!("subject must hold exactly one entry, found {}", s.len()))?;
    Ok((subject, statement.predicate))
}

/// The `receipt.statement` check. `key_id` is the actor key id already bound to the signature
/// (or to the batch statement), `mode` the mode its seal stands for (`single` for a receipt's
/// own signature, `batch` for a batch member): a receipt of one mode cannot pass as the other.
pub(crate) fn check_receipt(
    payload_type: &str,
    payload: &[u8],
    key_id: &str,
    mode: &str,
) -> Result<Receipt, String> {
    let (subject, p) =
        parse_statement_bytes::<ReceiptPredicate>(payload_type, payload, RECEIPT_PREDICATE)?;
    require_sha256_hex("subject[0].digest.sha256", &subject.digest.sha256)?;
    require_eq("subject[0].name", &subject.name, &p.action.target)?;
    require_eq("predicate.key.id", &p.key.id, key_id)?;
    if p.key.version == 0 {
        return Err("predicate.key.version must be 1 or more".to_string());
    }
    if !BACKENDS.contains(&p.key.backend.as_str()) {
        return Err(format!(
            "predicate.key.backend {:?} is not one of {BACKENDS:?}",
            p.key.backend
        ));
    }
    if let Some(parent) = &p.action.parent_sha256 {
        require_sha256_hex("predicate.action.parentSha256", parent)?;
    }
    check_sequence(p.sequence, p.previous_receipt.as_ref())?;
    let signed_at_unix = parse_time("predicate.signedAt", &p.signed_at)?;
    if p.mode != mode {
        return Err(format!(
            "predicate.mode is {:?}, but the receipt is sealed as {mode:?} (single: its own signature; batch: a batch member)",
            p.mode
        ));
    }
    let caller = p.caller.summary()?;
    Ok(Receipt {
        actor: p.actor,
        key_version: p.key.version,
        backend: p.key.backend,
        action_type: p.action.action_type,
        target: p.action.target,
        document_sha256: subject.digest.sha256,
        context: p.context.0,
        caller,
        signed_at: p.signed_at,
        signed_at_unix,
        sequence: p.sequence,
        log_index: p.log_index,
        previous_sha256: p.previous_receipt.map(|prev| prev.sha256),
    })
}

/// `sequence` ≥ 1, and `previousReceipt` is `null` exactly when `sequence` is 1.
fn check_sequence(sequence: u64, previous: Option<&PreviousReceipt>) -> Result<(), String> {
    match (sequence, previous) {
        (0, _) => Err("predicate.sequence must be 1 or more".to_string()),
        (1, None) => Ok(()),
        (1, Some(_)) => {
            Err("predicate.previousReceipt must be null when sequence is 1".to_string())
        }
        (_, None) => Err(format!(
            "predicate.previousReceipt is null but sequence is {sequence}"
        )),
        (_, Some(prev)) => require_sha256_hex("predicate.previousReceipt.sha256", &prev.sha256),
    }
}

/// Whose key an attestation must be about (FORMAT.md §4.3). Actor keys and the log key are
/// told apart by the signed subject name, so an actor named like a log origin cannot pass its
/// key off as the log key, nor the other way round.
#[derive(Debug, Clone, Copy)]
pub(crate) enum KeySubject<'a> {
    /// Version `version` of `actor`'s key.
    Actor { actor: &'a str, version: u64 },
    /// The key of the log named `origin`.
    Log { origin: &'a str },
}

impl KeySubject<'_> {
    /// The subject name the evidence binds: `actor-key:<actor>#<version>` or
    /// `log-key:<origin>`.
    pub(crate) fn name(&self) -> String {
        match self {
            KeySubject::Actor { actor, version } => format!("actor-key:{actor}#{version}"),
            KeySubject::Log { origin } => format!("log-key:{origin}"),
        }
    }

    pub(crate) fn is_log_key(&self) -> bool {
        matches!(self, KeySubject::Log { .. })
    }
}

/// Which key an attestation must be about.
#[derive(Debug, Clone, Copy)]
pub(crate) struct KeyClaim<'a> {
    pub(crate) subject: KeySubject<'a>,
    pub(crate) key_id: &'a str,
    /// The backend the claim names (`predicate.key.backend`, or the attestation's own).
    pub(crate) backend: &'a str,
}

/// The `lineage.statement` check: the evidence speaks of this key, for this subject, from the
/// claimed backend, and says the key was generated in the hardware and cannot leave it.
pub(crate) fn check_lineage(
    evidence: &Evidence,
    bundle_backend: &str,
    claim: &KeyClaim<'_>,
) -> Result<LineageFacts, String> {
    require_eq("lineage.backend", bundle_backend, claim.backend)?;
    let envelope = match evidence {
        Evidence::Statement(envelope) => envelope,
        Evidence::Tpm2Certify(certify) => {
            require_eq("lineage.backend", bundle_backend, TPM_BACKEND)?;
            let certified = super::tpm::check_certify(certify, &claim.subject, claim.key_id)?;
            return Ok(LineageFacts {
                token_serial: format!(
                    "TPM firmware {:#018x}, reset {} restart {} clock {} ms",
                    certified.attest.firmware_version,
                    certified.attest.reset_count,
                    certified.attest.restart_count,
                    certified.attest.clock
                ),
                origin: "generated".into(),
                created_at_unix: parse_time("tpm2Certify.createdAt", &certify.created_at)?,
                nonce: certify.nonce.clone(),
                attested_at_unix: None,
            });
        }
    };
    require_eq("lineage.backend", bundle_backend, LINEAGE_BACKEND)?;
    let (subject, p) = parse_statement::<LineagePredicate>(envelope, LINEAGE_PREDICATE)?;
    require_eq(
        "subject[0].digest.sha256",
        &subject.digest.sha256,
        claim.key_id,
    )?;
    require_eq("predicate.keyId", &p.key_id, claim.key_id)?;
    check_lineage_subject(&p, &claim.subject)?;
    require_eq("subject[0].name", &subject.name, &claim.subject.name())?;
    if !ORIGINS.contains(&p.origin.as_str()) {
        return Err(format!(
            "predicate.origin {:?} is not one of {ORIGINS:?}",
            p.origin
        ));
    }
    let created_at_unix = parse_time("predicate.createdAt", &p.created_at)?;
    check_attributes(&p.attributes)?;
    let (nonce, attested_at_unix) = match &p.freshness {
        Some(f) => (
            Some(super::bundle::base64(
                "predicate.freshness.nonce",
                &f.nonce,
            )?),
            Some(parse_time(
                "predicate.freshness.attestedAt",
                &f.attested_at,
            )?),
        ),
        None => (None, None),
    };
    Ok(LineageFacts {
        token_serial: p.token.serial,
        origin: p.origin,
        created_at_unix,
        nonce,
        attested_at_unix,
    })
}

/// The signed `keyRole` and the members that name the key's owner agree with the claim.
fn check_lineage_subject(p: &LineagePredicate, subject: &KeySubject<'_>) -> Result<(), String> {
    match subject {
        KeySubject::Actor { actor, version } => {
            require_eq("predicate.keyRole", &p.key_role, "actor-key")?;
            require_eq(
                "predicate.actor",
                p.actor.as_deref().unwrap_or_default(),
                actor,
            )?;
            if p.key_version != Some(*version) {
                return Err(format!(
                    "predicate.keyVersion is {:?}, expected key version {version}",
                    p.key_version
                ));
            }
            if p.log_origin.is_some() {
                return Err("an actor key's statement names a logOrigin".into());
            }
        }
        KeySubject::Log { origin } => {
            require_eq("predicate.keyRole", &p.key_role, "log-key")?;
            require_eq(
                "predicate.logOrigin",
                p.log_origin.as_deref().unwrap_or_default(),
                origin,
            )?;
            if p.actor.is_some() || p.key_version.is_some() {
                return Err("a log key's statement names an actor or key version".into());
            }
        }
    }
    Ok(())
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RetirementPredicate {
    actor: String,
    version: u64,
    key_id: String,
    retired_at: String,
    key_disposition: String,
}

/// What became of a retired key in the hardware (FORMAT.md §11.2).
const DISPOSITIONS: [&str; 2] = ["destroyed", "kept"];

/// What a retirement statement says (its signature by the log key is checked by the caller).
#[derive(Debug)]
pub(crate) struct Retirement {
    pub(crate) actor: String,
    pub(crate) version: u64,
    pub(crate) key_id: String,
    pub(crate) retired_at_unix: i64,
    pub(crate) key_disposition: String,
}

pub(crate) fn check_retirement(envelope: &Envelope) -> Result<Retirement, String> {
    let (subject, p) = parse_statement::<RetirementPredicate>(envelope, RETIREMENT_PREDICATE)?;
    require_key_version_subject(&subject, &p.actor, p.version, &p.key_id)?;
    if !DISPOSITIONS.contains(&p.key_disposition.as_str()) {
        return Err(format!(
            "predicate.keyDisposition {:?} is not one of {DISPOSITIONS:?}",
            p.key_disposition
        ));
    }
    Ok(Retirement {
        key_disposition: p.key_disposition,
        retired_at_unix: parse_time("predicate.retiredAt", &p.retired_at)?,
        actor: p.actor,
        version: p.version,
        key_id: p.key_id,
    })
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RegistrationPredicate {
    actor: String,
    version: u64,
    key_id: String,
    public_key: String,
    backend: String,
    origin: String,
    registered_at: String,
    requested_by: CallerDoc,
    attestation: super::bundle::LineageJson,
}

/// What a key registration says (its signature by the log key is checked by the caller).
#[derive(Debug)]
pub(crate) struct Registration {
    pub(crate) actor: String,
    pub(crate) version: u64,
    pub(crate) key: super::bundle::ActorKey,
    pub(crate) backend: String,
    pub(crate) registered_at_unix: i64,
    pub(crate) attestation: super::bundle::Lineage,
}

/// Parses a key registration (FORMAT.md §11.2). The key id must be the key's hash; the
/// attestation is decoded here and checked by the caller against the anchors.
pub(crate) fn check_registration(envelope: &Envelope) -> Result<Registration, String> {
    let (subject, p) = parse_statement::<RegistrationPredicate>(envelope, REGISTRATION_PREDICATE)?;
    require_key_version_subject(&subject, &p.actor, p.version, &p.key_id)?;
    if p.version == 0 {
        return Err("predicate.version must be 1 or more".into());
    }
    if !BACKENDS.contains(&p.backend.as_str()) {
        return Err(format!("predicate.backend {:?} is unknown", p.backend));
    }
    if !ORIGINS.contains(&p.origin.as_str()) {
        return Err(format!("predicate.origin {:?} is unknown", p.origin));
    }
    let key = super::bundle::decode_actor_key("predicate", p.key_id, &p.public_key)?;
    if key.key_id != super::digest::key_id(&key.spki_der) {
        return Err("predicate.keyId is not the SHA-256 of predicate.publicKey".into());
    }
    let attestation = super::bundle::decode_lineage("predicate.attestation", p.attestation)?;
    if !attestation.predecessors.is_empty() || !attestation.rotations.is_empty() {
        return Err("predicate.attestation carries no rotations".into());
    }
    // Who asked must be a well-formed caller (§3), though the audit does not judge it.
    p.requested_by.summary()?;
    Ok(Registration {
        registered_at_unix: parse_time("predicate.registeredAt", &p.registered_at)?,
        actor: p.actor,
        version: p.version,
        key,
        backend: p.backend,
        attestation,
    })
}

/// The predicate type of an envelope's statement, to tell log entries apart.
pub(crate) fn predicate_type_of(payload_type: &str, payload: &[u8]) -> Result<String, String> {
    require_eq("payloadType", payload_type, IN_TOTO_PAYLOAD_TYPE)?;
    let head: StatementHead = serde_json::from_slice(payload)
        .map_err(|e| format!("payload is not an in-toto statement: {e}"))?;
    Ok(head.predicate_type)
}

pub(crate) const RECEIPT_PREDICATE_TYPE: &str = RECEIPT_PREDICATE;
pub(crate) const ROTATION_PREDICATE_TYPE: &str = ROTATION_PREDICATE;
pub(crate) const RETIREMENT_PREDICATE_TYPE: &str = RETIREMENT_PREDICATE;
pub(crate) const REGISTRATION_PREDICATE_TYPE: &str = REGISTRATION_PREDICATE;
/// A log's first entry after a declared fresh start (FORMAT.md §11.5).
pub(crate) const LOG_START_PREDICATE_TYPE: &str = "https://actseal.dev/log-start/v1";

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct VersionRefJson {
    version: u64,
    key_id: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RotationPredicate {
    actor: String,
    previous: VersionRefJson,
    next: VersionRefJson,
    next_backend: String,
    rotated_at: String,
}

/// What a rotation statement says: version `from` hands over to version `to`.
#[derive(Debug)]
pub(crate) struct Rotation {
    pub(crate) from_version: u64,
    pub(crate) from_key_id: String,
    pub(crate) to_version: u64,
    pub(crate) to_key_id: String,
    pub(crate) to_backend: String,
    pub(crate) rotated_at_unix: i64,
}

/// Parses a rotation statement about `actor` (its signature is checked by the caller).
pub(crate) fn check_rotation(envelope: &Envelope, actor: &str) -> Result<Rotation, String> {
    let (subject, p) = parse_statement::<RotationPredicate>(envelope, ROTATION_PREDICATE)?;
    require_eq("predicate.actor", &p.actor, actor)?;
    require_key_version_subject(&subject, actor, p.next.version, &p.next.key_id)?;
    if !BACKENDS.contains(&p.next_backend.as_str()) {
        return Err(format!(
            "predicate.nextBackend {:?} is unknown",
            p.next_backend
        ));
    }
    Ok(Rotation {
        rotated_at_unix: parse_time("predicate.rotatedAt", &p.rotated_at)?,
        from_version: p.previous.version,
        from_key_id: p.previous.key_id,
        to_version: p.next.version,
        to_key_id: p.next.key_id,
        to_backend: p.next_backend,
    })
}

/// FORMAT.md §4: sensitive, alwaysSensitive, neverExtractable, local, sign true; extractable
/// false; and the key is the EC P-256 key the receipt was verified with.
fn check_attributes(a: &Attributes) -> Result<(), String> {
    require_eq("predicate.attributes.keyType", &a.key_type, "EC")?;
    require_eq("predicate.attributes.curve", &a.curve, "P-256")?;
    let required = [
        ("sensitive", a.sensitive, true),
        ("alwaysSensitive", a.always_sensitive, true),
        ("extractable", a.extractable, false),
        ("neverExtractable", a.never_extractable, true),
        ("local", a.local, true),
        ("sign", a.sign, true),
    ];
    for (name, got, want) in required {
        if got != want {
            return Err(format!(
                "predicate.attributes.{name} is {got}, must be {want}: the key may have left the token"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_parses_only_the_canonical_form() {
        assert_eq!(parse_time("t", "2026-11-26T17:51:36Z"), Ok(1_795_715_496));
        assert_eq!(parse_time("t", "1970-01-01T00:00:00Z"), Ok(0));
        for bad in [
            "2026-11-26T17:51:36.000Z",
            "2026-11-26T17:51:36+00:00",
            "2026-11-26 17:51:36Z",
            "2026-11-26T17:51:36z",
            "2026-11-26T17:51:60Z",
            "2026-02-30T00:00:00Z",
            "+2026-11-26T17:51:36Z",
            "2026-11-26T17:51:36Z ",
            "",
        ] {
            assert!(parse_time("t", bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn sequence_and_previous_receipt_agree() {
        let prev = PreviousReceipt {
            sha256: "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855".into(),
        };
        assert!(check_sequence(1, None).is_ok());
        assert!(check_sequence(2, Some(&prev)).is_ok());
        assert!(check_sequence(0, None).is_err());
        assert!(check_sequence(1, Some(&prev)).is_err());
        assert!(check_sequence(2, None).is_err());
        let bad = PreviousReceipt {
            sha256: "00".into(),
        };
        assert!(check_sequence(2, Some(&bad)).is_err());
    }

    #[test]
    fn context_rejects_duplicate_keys() {
        let dup: Result<UniqueStringMap, _> = serde_json::from_str(r#"{"a":"1","a":"2"}"#);
        assert!(dup.is_err());
        let ok: Result<UniqueStringMap, _> = serde_json::from_str(r#"{"a":"1","b":"2"}"#);
        assert!(ok.is_ok_and(|m| m.0.len() == 2));
    }
}
