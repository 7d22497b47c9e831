//! Builds proof bundles exactly as FORMAT.md specifies, with software P-256 keys.
//!
//! Everything is deterministic: keys are fixed scalars (SHA-256 of a label), ECDSA uses RFC 6979
//! nonces, certificates have explicit serials and fixed validity, and statement payloads are
//! compact JSON with sorted keys (`serde_json` without `preserve_order`). The last point lets a
//! tamper test decode a payload, change one member and re-encode it knowing that nothing else
//! changed.
//!
//! This is test code: it panics on misuse.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use p256::ecdsa::signature::Signer;
use p256::ecdsa::{Signature, SigningKey};
use p256::pkcs8::EncodePublicKey;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyIdMethod,
    KeyUsagePurpose, PublicKeyData, SerialNumber, SignatureAlgorithm,
};
use serde::Serialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use time::{Date, Month, OffsetDateTime, PrimitiveDateTime, Time};

pub const IN_TOTO: &str = "application/vnd.in-toto+json";
pub const MEDIA_TYPE: &str = "application/vnd.actseal.bundle.v1+json";

/// A software P-256 key standing in for a token key.
#[derive(Clone)]
pub struct SoftKey {
    key: SigningKey,
    /// Uncompressed SEC1 point: what rcgen puts in the SubjectPublicKeyInfo.
    point: Vec<u8>,
}

impl SoftKey {
    /// The key whose scalar is SHA-256(`label`).
    pub fn from_label(label: &str) -> Self {
        let scalar = Sha256::digest(label.as_bytes());
        let key = SigningKey::from_bytes(&scalar).expect("SHA-256 of the label is a valid scalar");
        let point = key
            .verifying_key()
            .to_encoded_point(false)
            .as_bytes()
            .to_vec();
        SoftKey { key, point }
    }

    /// SubjectPublicKeyInfo DER.
    pub fn spki_der(&self) -> Vec<u8> {
        self.key
            .verifying_key()
            .to_public_key_der()
            .expect("P-256 SPKI encodes")
            .into_vec()
    }

    /// FORMAT.md key id: hex SHA-256 of the SPKI DER.
    pub fn key_id(&self) -> String {
        hex::encode(Sha256::digest(self.spki_der()))
    }

    /// ECDSA P-256 over SHA-256(`msg`), RFC 6979 nonce, DER encoded.
    pub fn sign_der(&self, msg: &[u8]) -> Vec<u8> {
        let sig: Signature = self.key.sign(msg);
        sig.to_der().as_bytes().to_vec()
    }

    /// A 20-byte key identifier (truncated SHA-256 of the SPKI, RFC 7093 method 1).
    fn ski(&self) -> Vec<u8> {
        Sha256::digest(self.spki_der())[..20].to_vec()
    }
}

impl PublicKeyData for SoftKey {
    fn der_bytes(&self) -> &[u8] {
        &self.point
    }
    fn algorithm(&self) -> &'static SignatureAlgorithm {
        &rcgen::PKCS_ECDSA_P256_SHA256
    }
}

impl rcgen::SigningKey for SoftKey {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        Ok(self.sign_der(msg))
    }
}

/// DSSE PAE, written independently of the verifier's.
pub fn pae(payload_type: &str, body: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "DSSEv1 {} {} {} ",
        payload_type.len(),
        payload_type,
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body);
    out
}

pub fn b64(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}

pub fn unb64(text: &str) -> Vec<u8> {
    STANDARD.decode(text).expect("test base64")
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// A UTC date at midnight.
pub fn day(year: i32, month: u8, d: u8) -> OffsetDateTime {
    let date = Date::from_calendar_date(year, Month::try_from(month).unwrap(), d).unwrap();
    PrimitiveDateTime::new(date, Time::MIDNIGHT).assume_utc()
}

/// A certificate authority in the test PKI.
#[derive(Clone, Debug)]
pub struct CaSpec {
    /// Key label (the key is SHA-256 of it) and common name.
    pub label: String,
    /// Common name override (default: `label`), to make an impostor CA with a known name.
    pub name: Option<String>,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
    /// `basicConstraints cA=TRUE` (false: no basicConstraints at all).
    pub is_ca: bool,
    pub serial: u64,
}

impl CaSpec {
    pub fn new(label: &str, serial: u64) -> Self {
        CaSpec {
            label: label.to_string(),
            name: None,
            not_before: day(2026, 1, 1),
            not_after: day(2036, 1, 1),
            is_ca: true,
            serial,
        }
    }
}

/// A device (a token with its device key and certificate) other than the bundle's main one: the
/// device of an earlier key version, or of the log key.
#[derive(Clone, Debug)]
pub struct DeviceSpec {
    pub key_label: String,
    pub common_name: String,
    pub serial: u64,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
    pub is_ca: bool,
    pub key_usage: Vec<KeyUsagePurpose>,
    /// extKeyUsage purposes (DER contents of each OID); empty: no extKeyUsage at all.
    pub ext_key_usage: Vec<Vec<u8>>,
    /// `token.serial` in the statements this device signs.
    pub token_serial: String,
    /// `None`: issued like the main device (by the intermediate if there is one, else by the
    /// root, with the same `certificateChain`). `Some`: issued by this CA instead, which is not
    /// the bundle's anchor; the chain is then empty.
    pub foreign_ca: Option<CaSpec>,
}

impl DeviceSpec {
    pub fn new(key_label: &str, common_name: &str, serial: u64) -> Self {
        DeviceSpec {
            key_label: key_label.to_string(),
            common_name: common_name.to_string(),
            serial,
            not_before: day(2026, 1, 1),
            not_after: day(2036, 1, 1),
            is_ca: false,
            key_usage: vec![KeyUsagePurpose::DigitalSignature],
            ext_key_usage: device_ekus(),
            token_serial: sha256_hex(key_label.as_bytes())[..16].to_string(),
            foreign_ca: None,
        }
    }

    /// A second token under the same CA.
    pub fn second() -> Self {
        DeviceSpec::new(
            "actseal test device key 2",
            "actseal device softhsm-0002",
            4343,
        )
    }
}

/// An earlier version of the actor's key (version = its position in `Options::predecessors`
/// plus one), and the rotation statement that hands it over to the next version.
#[derive(Clone, Debug)]
pub struct PredecessorSpec {
    pub key_label: String,
    /// The device that holds this version; `None`: the bundle's main device.
    pub device: Option<DeviceSpec>,
    /// Its lineage statement's `createdAt`.
    pub created_at: String,
    /// `rotatedAt` of the rotation from this version to the next.
    pub rotated_at: String,
    /// Label of the key that signs that rotation; `None`: this version's key (the envelope's
    /// `keyid` is this version's key id either way).
    pub rotation_signer: Option<String>,
    /// Replacements in that rotation statement: (JSON pointer, value), applied before signing.
    pub rotation_overrides: Vec<(String, Value)>,
    /// Overrides of this version's lineage `predicate.attributes`.
    pub attribute_overrides: Vec<(String, Value)>,
}

impl PredecessorSpec {
    /// Version `version` of the default actor's key, created on the first of month `version`
    /// of 2026 and rotated a month later (so for versions < 10, before the default `signedAt`).
    pub fn standard(version: u64) -> Self {
        PredecessorSpec {
            key_label: format!("actseal test actor key payments v{version}"),
            device: None,
            created_at: format!("2026-{version:02}-01T09:00:00Z"),
            rotated_at: format!("2026-{:02}-01T09:00:00Z", version + 1),
            rotation_signer: None,
            rotation_overrides: Vec::new(),
            attribute_overrides: Vec::new(),
        }
    }
}

/// Everything a test may vary. `Options::default()` is the committed vector.
#[derive(Clone, Debug)]
pub struct Options {
    pub ca: CaSpec,
    /// An intermediate CA between the root and the device (goes in `certificateChain`).
    pub intermediate: Option<CaSpec>,
    pub device_key_label: String,
    pub device_serial: u64,
    pub device_not_before: OffsetDateTime,
    pub device_not_after: OffsetDateTime,
    pub device_is_ca: bool,
    pub device_key_usage: Vec<KeyUsagePurpose>,
    /// The main device's extKeyUsage purposes (DER OID contents).
    pub device_ext_key_usage: Vec<Vec<u8>>,
    pub actor_key_label: String,
    pub actor: String,
    pub key_version: u64,
    pub backend: String,
    pub action_type: String,
    pub target: String,
    pub parent_sha256: Option<String>,
    pub context: Vec<(String, String)>,
    /// `predicate.caller`: who obtained the receipt.
    pub caller: Value,
    pub document: Vec<u8>,
    pub signed_at: String,
    pub sequence: u64,
    /// `previousReceipt.sha256`; `None` writes `null`.
    pub previous_receipt: Option<String>,
    /// The receipt's `logIndex`, `log.index`, and where the receipt sits in the generated log.
    pub log_index: u64,
    /// A fleet node's receipt (FORMAT.md §3): `logIndex` is `null`, and `log_index` is only its
    /// place in the log.
    pub fleet: bool,
    pub mode: String,
    /// Lineage fields; `None` means "the receipt's".
    pub lineage_actor: Option<String>,
    pub lineage_key_version: Option<u64>,
    pub origin: String,
    pub created_at: String,
    /// Overrides of `predicate.attributes` members, e.g. `("extractable", json!(true))`.
    pub attribute_overrides: Vec<(String, Value)>,
    /// The earlier key versions 1..v-1 (`lineage.predecessors` and `lineage.rotations`). A
    /// valid bundle has `key_version - 1` of them; see [`rotated`].
    pub predecessors: Vec<PredecessorSpec>,
    /// Sign the receipt with the high-S twin of its RFC 6979 signature (and log that).
    pub receipt_high_s: bool,
    /// The log's origin: the checkpoint's first line and the log key's note name.
    pub log_origin: String,
    pub log_key_label: String,
    /// The device that holds the log key; `None`: the bundle's main device.
    pub log_device: Option<DeviceSpec>,
    /// How many entries the generated log holds (the receipt's at `log_index`, the others
    /// filler).
    pub log_tree_size: u64,
    /// The log key's lineage statement; `None` means the log origin and version 1.
    pub log_lineage_actor: Option<String>,
    pub log_lineage_key_version: Option<u64>,
    pub log_attribute_overrides: Vec<(String, Value)>,
    /// The checkpoint's origin line; `None`: `log_origin`.
    pub checkpoint_origin: Option<String>,
    /// The checkpoint's size line; `None`: `log_tree_size` (the root is always that of the
    /// generated tree).
    pub checkpoint_size: Option<u64>,
    /// The key name on the checkpoint's signature line; `None`: `log_origin`.
    pub checkpoint_key_name: Option<String>,
    /// Label of the key that signs the checkpoint; `None`: the log key. The note key id is
    /// always the log key's.
    pub checkpoint_signer: Option<String>,
}

pub const DOCUMENT: &[u8] = b"{\"tool\":\"payments.initiate\",\"amount\":\"125.00\",\"currency\":\"EUR\",\"creditor\":\"acct:DE89370400440532013000\",\"reason\":\"invoice 2026-1142\"}\n";

/// The default log's origin (and its key's note name).
pub const LOG_ORIGIN: &str = "log.acme.example/actseal";

/// The main device's `token.serial`.
pub const TOKEN_SERIAL: &str = "5a1e2b3c4d5e6f70";

impl Default for Options {
    fn default() -> Self {
        Options {
            ca: CaSpec::new("actseal test CA", 1),
            intermediate: None,
            device_key_label: "actseal test device key".into(),
            device_serial: 4242,
            device_not_before: day(2026, 1, 1),
            device_not_after: day(2036, 1, 1),
            device_is_ca: false,
            device_key_usage: vec![KeyUsagePurpose::DigitalSignature],
            device_ext_key_usage: device_ekus(),
            actor_key_label: "actseal test actor key payments v1".into(),
            actor: "spiffe://acme.example/agents/payments".into(),
            key_version: 1,
            backend: "pkcs11".into(),
            action_type: "payment.initiate".into(),
            target: "payments://acme.example/accounts/ops/transfers".into(),
            parent_sha256: None,
            context: vec![
                ("ticket".into(), "OPS-1142".into()),
                ("approvedBy".into(), "alice@acme.example".into()),
            ],
            caller: json!({"kind": "unix", "uid": 1000, "gid": 1000, "pid": 4242}),
            document: DOCUMENT.to_vec(),
            signed_at: "2026-11-26T17:51:36Z".into(),
            sequence: 1,
            previous_receipt: None,
            log_index: 3,
            fleet: false,
            mode: "single".into(),
            lineage_actor: None,
            lineage_key_version: None,
            origin: "generated".into(),
            created_at: "2026-11-26T17:51:30Z".into(),
            attribute_overrides: Vec::new(),
            predecessors: Vec::new(),
            receipt_high_s: false,
            log_origin: LOG_ORIGIN.into(),
            log_key_label: "actseal test log key".into(),
            log_device: None,
            log_tree_size: 6,
            log_lineage_actor: None,
            log_lineage_key_version: None,
            log_attribute_overrides: Vec::new(),
            checkpoint_origin: None,
            checkpoint_size: None,
            checkpoint_key_name: None,
            checkpoint_signer: None,
        }
    }
}

impl Options {
    /// The bundle's main device as a [`DeviceSpec`].
    pub fn main_device(&self) -> DeviceSpec {
        DeviceSpec {
            key_label: self.device_key_label.clone(),
            common_name: "actseal device softhsm-0001".into(),
            serial: self.device_serial,
            not_before: self.device_not_before,
            not_after: self.device_not_after,
            is_ca: self.device_is_ca,
            key_usage: self.device_key_usage.clone(),
            ext_key_usage: self.device_ext_key_usage.clone(),
            token_serial: TOKEN_SERIAL.into(),
            foreign_ca: None,
        }
    }
}

/// The default bundle, but signed by key version `version` of the actor, with the versions
/// before it and the rotations between them (each [`PredecessorSpec::standard`]).
pub fn rotated(version: u64) -> Options {
    Options {
        key_version: version,
        actor_key_label: format!("actseal test actor key payments v{version}"),
        predecessors: (1..version).map(PredecessorSpec::standard).collect(),
        // Created when the last rotation handed over to it, as the daemon does.
        created_at: if version > 1 {
            format!("2026-{version:02}-01T09:00:00Z")
        } else {
            Options::default().created_at
        },
        ..Options::default()
    }
}

/// A generated bundle and the material behind it.
pub struct Generated {
    /// The options it was generated from.
    pub options: Options,
    /// Pretty-printed bundle with a trailing newline (the committed vector's bytes).
    pub bundle_json: String,
    pub bundle: Value,
    pub anchor_pem: String,
    pub document: Vec<u8>,
    pub receipt_payload: Vec<u8>,
    pub lineage_payload: Vec<u8>,
    pub actor_key: SoftKey,
    pub device_key: SoftKey,
    /// Keys of versions 1..v-1, their devices' keys, their lineage payloads, and the payloads
    /// of the rotations away from them.
    pub predecessor_keys: Vec<SoftKey>,
    pub predecessor_device_keys: Vec<SoftKey>,
    pub predecessor_payloads: Vec<Vec<u8>>,
    pub rotation_payloads: Vec<Vec<u8>>,
    pub log_key: SoftKey,
    pub log_device_key: SoftKey,
    pub log_lineage_payload: Vec<u8>,
    /// The log's entries (the receipt's at `options.log_index`).
    pub log_entries: Vec<Vec<u8>>,
}

fn distinguished_name(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "actseal tests");
    dn.push(DnType::CommonName, cn);
    dn
}

fn ca_params(spec: &CaSpec, key: &SoftKey, path_len: Option<u8>) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = distinguished_name(spec.name.as_deref().unwrap_or(&spec.label));
    params.serial_number = Some(SerialNumber::from(spec.serial));
    params.not_before = spec.not_before;
    params.not_after = spec.not_after;
    params.is_ca = if spec.is_ca {
        IsCa::Ca(match path_len {
            Some(n) => BasicConstraints::Constrained(n),
            None => BasicConstraints::Unconstrained,
        })
    } else {
        IsCa::NoCa
    };
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.key_identifier_method = KeyIdMethod::PreSpecified(key.ski());
    params
}

/// A self-signed root: (its PEM, an issuer for it).
fn make_root(spec: &CaSpec) -> (String, Issuer<'static, SoftKey>) {
    let key = SoftKey::from_label(&spec.label);
    let params = ca_params(spec, &key, None);
    let cert = params.self_signed(&key).expect("root certificate");
    (cert.pem(), Issuer::new(params, key))
}

fn device_params(spec: &DeviceSpec, key: &SoftKey) -> CertificateParams {
    let mut device = CertificateParams::default();
    device.distinguished_name = distinguished_name(&spec.common_name);
    device.serial_number = Some(SerialNumber::from(spec.serial));
    device.not_before = spec.not_before;
    device.not_after = spec.not_after;
    device.is_ca = if spec.is_ca {
        IsCa::Ca(BasicConstraints::Unconstrained)
    } else {
        IsCa::ExplicitNoCa
    };
    device.key_usages = spec.key_usage.clone();
    if !spec.ext_key_usage.is_empty() {
        device.custom_extensions = vec![ext_key_usage(&spec.ext_key_usage)];
    }
    device.use_authority_key_identifier_extension = true;
    device.key_identifier_method = KeyIdMethod::PreSpecified(key.ski());
    device
}

/// DER contents of the certificate role OIDs (FORMAT.md §6.1).
pub const EKU_TPM_AK: &[u8] = &[0x67, 0x81, 0x05, 0x08, 0x03];
pub fn eku_actseal(leaf: u8) -> Vec<u8> {
    let mut oid = hex::decode("6982ecbbf0dbc59a9a96d588cb9ed299f196e74001").unwrap();
    oid.push(leaf);
    oid
}
/// `id-kp-pkcs11Device` and `id-kp-logKeyAttester`: a single host's token.
pub fn device_ekus() -> Vec<Vec<u8>> {
    vec![eku_actseal(1), eku_actseal(2)]
}

/// An extKeyUsage extension with these purposes.
pub fn ext_key_usage(purposes: &[Vec<u8>]) -> rcgen::CustomExtension {
    let mut body = Vec::new();
    for oid in purposes {
        body.push(0x06);
        body.push(oid.len() as u8);
        body.extend_from_slice(oid);
    }
    let mut content = vec![0x30, body.len() as u8];
    content.extend_from_slice(&body);
    rcgen::CustomExtension::from_oid_content(&[2, 5, 29, 37], content)
}

/// The test PKI: the anchor, and the CA that issues device certificates.
struct Pki {
    anchor_pem: String,
    issuer: Issuer<'static, SoftKey>,
    /// Intermediates, device side first.
    chain: Vec<Vec<u8>>,
}

impl Pki {
    fn new(o: &Options) -> Self {
        let (anchor_pem, root) = make_root(&o.ca);
        match &o.intermediate {
            None => Pki {
                anchor_pem,
                issuer: root,
                chain: Vec::new(),
            },
            Some(spec) => {
                let mid_key = SoftKey::from_label(&spec.label);
                let mut mid_params = ca_params(spec, &mid_key, Some(0));
                mid_params.use_authority_key_identifier_extension = true;
                let mid_cert = mid_params.signed_by(&mid_key, &root).expect("intermediate");
                Pki {
                    anchor_pem,
                    issuer: Issuer::new(mid_params, mid_key),
                    chain: vec![mid_cert.der().to_vec()],
                }
            }
        }
    }

    /// A device certificate and its `certificateChain`.
    fn issue(&self, spec: &DeviceSpec, key: &SoftKey) -> (Vec<u8>, Vec<Vec<u8>>) {
        let params = device_params(spec, key);
        match &spec.foreign_ca {
            None => {
                let cert = params
                    .signed_by(key, &self.issuer)
                    .expect("device certificate");
                (cert.der().to_vec(), self.chain.clone())
            }
            Some(ca) => {
                let (_, issuer) = make_root(ca);
                let cert = params.signed_by(key, &issuer).expect("device certificate");
                (cert.der().to_vec(), Vec::new())
            }
        }
    }
}

fn receipt_statement(o: &Options, actor_key_id: &str) -> Value {
    let mut action = json!({"type": o.action_type, "target": o.target});
    if let Some(parent) = &o.parent_sha256 {
        action["parentSha256"] = json!(parent);
    }
    let context: serde_json::Map<String, Value> = o
        .context
        .iter()
        .map(|(k, v)| (k.clone(), json!(v)))
        .collect();
    let previous = match &o.previous_receipt {
        Some(h) => json!({"sha256": h}),
        None => Value::Null,
    };
    json!({
        "_type": "https://in-toto.io/Statement/v1",
        "subject": [{"name": o.target, "digest": {"sha256": sha256_hex(&o.document)}}],
        "predicateType": "https://actseal.dev/receipt/v1",
        "predicate": {
            "actor": o.actor,
            "key": {"id": actor_key_id, "version": o.key_version, "backend": o.backend},
            "action": action,
            "context": context,
            "caller": o.caller,
            "signedAt": o.signed_at,
            "sequence": o.sequence,
            "previousReceipt": previous,
            "logIndex": if o.fleet { Value::Null } else { json!(o.log_index) },
            "mode": o.mode,
        }
    })
}

/// What a lineage statement (FORMAT.md §4) says about one key.
struct KeyFacts<'a> {
    /// A log key: `actor` is then the log's origin.
    log_key: bool,
    actor: &'a str,
    version: u64,
    key_id: &'a str,
    origin: &'a str,
    created_at: &'a str,
    token_serial: &'a str,
    attribute_overrides: &'a [(String, Value)],
}

fn lineage_statement(k: &KeyFacts<'_>) -> Value {
    let (actor, version) = (k.actor, k.version);
    let mut attributes = json!({
        "keyType": "EC", "curve": "P-256",
        "id": "a1b2c3d4", "label": format!("actseal:{actor}#{version}"),
        "token": true, "private": true, "sensitive": true, "alwaysSensitive": true,
        "extractable": false, "neverExtractable": true, "local": true, "sign": true
    });
    for (name, value) in k.attribute_overrides {
        attributes[name.as_str()] = value.clone();
    }
    let (name, owner) = if k.log_key {
        (
            format!("log-key:{actor}"),
            json!({"keyRole": "log-key", "logOrigin": actor}),
        )
    } else {
        (
            format!("actor-key:{actor}#{version}"),
            json!({"keyRole": "actor-key", "actor": actor, "keyVersion": version}),
        )
    };
    let mut statement = json!({
        "_type": "https://in-toto.io/Statement/v1",
        "subject": [{"name": name, "digest": {"sha256": k.key_id}}],
        "predicateType": "https://actseal.dev/lineage/pkcs11-attributes/v2",
        "predicate": {
            "keyId": k.key_id,
            "origin": k.origin,
            "createdAt": k.created_at,
            "token": {"manufacturer": "SoftHSM project", "model": "SoftHSM v2",
                      "serial": k.token_serial, "label": "actseal-test"},
            "attributes": attributes,
        }
    });
    for (member, value) in owner.as_object().unwrap() {
        statement["predicate"][member.as_str()] = value.clone();
    }
    statement
}

/// The rotation statement by which version `from` of `actor`'s key names version `from + 1`.
pub fn rotation_statement(
    actor: &str,
    from: (u64, &str),
    to: (u64, &str),
    next_backend: &str,
    rotated_at: &str,
) -> Value {
    json!({
        "_type": "https://in-toto.io/Statement/v1",
        "subject": [{"name": format!("{actor}#{}", to.0), "digest": {"sha256": to.1}}],
        "predicateType": "https://actseal.dev/rotation/v1",
        "predicate": {
            "actor": actor,
            "previous": {"version": from.0, "keyId": from.1},
            "next": {"version": to.0, "keyId": to.1},
            "nextBackend": next_backend,
            "rotatedAt": rotated_at,
        }
    })
}

/// One key's attestation as the bundle carries it: `{backend, statement, deviceCertificate,
/// certificateChain}`.
fn attestation_json(
    backend: &str,
    statement: Value,
    device_der: &[u8],
    chain: &[Vec<u8>],
) -> Value {
    json!({
        "backend": backend,
        "statement": statement,
        "deviceCertificate": b64(device_der),
        "certificateChain": chain.iter().map(|c| b64(c)).collect::<Vec<_>>(),
    })
}

/// The DSSE envelope of `payload`, signed by `key` (keyid = the key's id).
pub fn envelope(key: &SoftKey, payload: &[u8]) -> Value {
    envelope_with_sig(
        &key.key_id(),
        payload,
        &key.sign_der(&pae(IN_TOTO, payload)),
    )
}

pub fn envelope_with_sig(keyid: &str, payload: &[u8], sig_der: &[u8]) -> Value {
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Env<'a> {
        payload_type: &'a str,
        payload: String,
        signatures: [Sig<'a>; 1],
    }
    #[derive(Serialize)]
    struct Sig<'a> {
        keyid: &'a str,
        sig: String,
    }
    serde_json::to_value(Env {
        payload_type: IN_TOTO,
        payload: b64(payload),
        signatures: [Sig {
            keyid,
            sig: b64(sig_der),
        }],
    })
    .unwrap()
}

/// The same signature with `s` replaced by `n - s`: exactly one of the two is high-S.
pub fn other_s(sig_der: &[u8]) -> Vec<u8> {
    use p256::elliptic_curve::ops::Neg;
    let sig = Signature::from_der(sig_der).unwrap();
    let (r, s) = sig.split_scalars();
    let twin = Signature::from_scalars(r, s.as_ref().neg()).unwrap();
    twin.to_der().as_bytes().to_vec()
}

// ---------------------------------------------------------------------------------------------
// the log (RFC 9162 Merkle tree, C2SP checkpoint), written from the RFC's recursive definitions

pub type Hash = [u8; 32];

/// The log entry of a DSSE envelope: `u32be(len) || field` for the payload type, the decoded
/// payload and the decoded DER signature.
pub fn entry_bytes(envelope: &Value) -> Vec<u8> {
    let payload_type = envelope["payloadType"]
        .as_str()
        .unwrap()
        .as_bytes()
        .to_vec();
    let payload = unb64(envelope["payload"].as_str().unwrap());
    let sig = unb64(envelope["signatures"][0]["sig"].as_str().unwrap());
    let mut out = Vec::new();
    for field in [payload_type, payload, sig] {
        out.extend_from_slice(&u32::try_from(field.len()).unwrap().to_be_bytes());
        out.extend_from_slice(&field);
    }
    out
}

/// RFC 9162 §2.1.1: SHA-256(0x00 || entry).
pub fn leaf_hash(entry: &[u8]) -> Hash {
    Sha256::new()
        .chain_update([0u8])
        .chain_update(entry)
        .finalize()
        .into()
}

/// RFC 9162 §2.1.1: SHA-256(0x01 || left || right).
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    Sha256::new()
        .chain_update([1u8])
        .chain_update(left)
        .chain_update(right)
        .finalize()
        .into()
}

/// The largest power of two smaller than `n` (n ≥ 2).
fn split(n: usize) -> usize {
    let mut k = 1;
    while k * 2 < n {
        k *= 2;
    }
    k
}

/// MTH(D[n]) of the leaf hashes.
pub fn tree_root(leaves: &[Hash]) -> Hash {
    match leaves {
        [] => Sha256::digest([]).into(),
        [one] => *one,
        _ => {
            let k = split(leaves.len());
            node_hash(&tree_root(&leaves[..k]), &tree_root(&leaves[k..]))
        }
    }
}

/// PATH(m, D[n]): the inclusion proof of leaf `m`, leaf side first.
pub fn inclusion_path(m: usize, leaves: &[Hash]) -> Vec<Hash> {
    if leaves.len() <= 1 {
        return Vec::new();
    }
    let k = split(leaves.len());
    if m < k {
        let mut path = inclusion_path(m, &leaves[..k]);
        path.push(tree_root(&leaves[k..]));
        path
    } else {
        let mut path = inclusion_path(m - k, &leaves[k..]);
        path.push(tree_root(&leaves[..k]));
        path
    }
}

/// The checkpoint text: `<origin>\n<size>\n<base64 root>\n`.
pub fn checkpoint_body(origin: &str, size: u64, root: &Hash) -> String {
    format!("{origin}\n{size}\n{}\n", b64(root))
}

/// The signed-note key id of an ECDSA (type 0x02) key, as `src/ledger/checkpoint.rs` and
/// `src/verify/checkpoint.rs` compute it: the first 4 bytes of SHA-256 of the SPKI DER.
pub fn note_key_id(spki_der: &[u8]) -> [u8; 4] {
    Sha256::digest(spki_der)[..4].try_into().unwrap()
}

/// A signed note: `body`, a blank line and `— <key_name> base64(key id of `id_key` || DER
/// signature by `signer` over the body)`.
pub fn signed_note(body: &str, key_name: &str, id_key: &SoftKey, signer: &SoftKey) -> String {
    let mut blob = note_key_id(&id_key.spki_der()).to_vec();
    blob.extend_from_slice(&signer.sign_der(body.as_bytes()));
    format!("{body}\n\u{2014} {key_name} {}\n", b64(&blob))
}

/// The filler entry at `index` of the generated log.
pub fn filler_entry(index: u64) -> Vec<u8> {
    format!("actseal test log entry {index}").into_bytes()
}

/// The log's entries with `receipt` at `o.log_index`, and `log`'s members that depend on
/// them: `index`, `treeSize`, `inclusionProof`, `checkpoint`.
fn log_proof(o: &Options, receipt: &Value, log_key: &SoftKey) -> (Vec<Vec<u8>>, Value) {
    assert!(
        o.log_index < o.log_tree_size,
        "the receipt must be in the log"
    );
    let entries: Vec<Vec<u8>> = (0..o.log_tree_size)
        .map(|i| {
            if i == o.log_index {
                entry_bytes(receipt)
            } else {
                filler_entry(i)
            }
        })
        .collect();
    let leaves: Vec<Hash> = entries.iter().map(|e| leaf_hash(e)).collect();
    let root = tree_root(&leaves);
    let proof = inclusion_path(usize::try_from(o.log_index).unwrap(), &leaves);
    let body = checkpoint_body(
        o.checkpoint_origin.as_deref().unwrap_or(&o.log_origin),
        o.checkpoint_size.unwrap_or(o.log_tree_size),
        &root,
    );
    let signer = o.checkpoint_signer.as_deref().map(SoftKey::from_label);
    let note = signed_note(
        &body,
        o.checkpoint_key_name.as_deref().unwrap_or(&o.log_origin),
        log_key,
        signer.as_ref().unwrap_or(log_key),
    );
    let members = json!({
        "index": o.log_index,
        "treeSize": o.log_tree_size,
        "inclusionProof": proof.iter().map(hex::encode).collect::<Vec<_>>(),
        "checkpoint": note,
    });
    (entries, members)
}

/// Rebuilds the log around the bundle's (possibly changed) receipt, at the generator's position
/// and with its options: `index`, `treeSize`, `inclusionProof` and `checkpoint` are replaced,
/// `logKey` is kept. A test that re-signs a receipt uses this so that the receipt is still in
/// the log and the check it aims at is the one reached.
pub fn relog(g: &Generated, bundle: &mut Value) {
    let (_, members) = log_proof(&g.options, &bundle["receipt"], &g.log_key);
    for (name, value) in members.as_object().unwrap() {
        bundle["log"][name] = value.clone();
    }
}

/// The bundle JSON in FORMAT.md §5 member order, pretty-printed.
pub fn to_pretty(bundle: &Value) -> String {
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Ordered<'a> {
        media_type: &'a Value,
        receipt: &'a Value,
        actor_key: &'a Value,
        lineage: &'a Value,
        log: LogOrdered<'a>,
    }
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct LogOrdered<'a> {
        index: &'a Value,
        tree_size: &'a Value,
        inclusion_proof: &'a Value,
        checkpoint: &'a Value,
        log_key: &'a Value,
    }
    let log = &bundle["log"];
    let ordered = Ordered {
        media_type: &bundle["mediaType"],
        receipt: &bundle["receipt"],
        actor_key: &bundle["actorKey"],
        lineage: &bundle["lineage"],
        log: LogOrdered {
            index: &log["index"],
            tree_size: &log["treeSize"],
            inclusion_proof: &log["inclusionProof"],
            checkpoint: &log["checkpoint"],
            log_key: &log["logKey"],
        },
    };
    let mut text = serde_json::to_string_pretty(&ordered).unwrap();
    text.push('\n');
    text
}

/// Builds a bundle per FORMAT.md from `o`.
pub fn generate(o: &Options) -> Generated {
    let pki = Pki::new(o);
    let device = o.main_device();
    let actor_key = SoftKey::from_label(&o.actor_key_label);
    let device_key = SoftKey::from_label(&device.key_label);
    let actor_key_id = actor_key.key_id();

    // The receipt.
    let receipt_payload = serde_json::to_vec(&receipt_statement(o, &actor_key_id)).unwrap();
    let mut receipt_sig = actor_key.sign_der(&pae(IN_TOTO, &receipt_payload));
    let is_high = Signature::from_der(&receipt_sig)
        .unwrap()
        .normalize_s()
        .is_some();
    if o.receipt_high_s && !is_high {
        receipt_sig = other_s(&receipt_sig);
    }
    let receipt = envelope_with_sig(&actor_key_id, &receipt_payload, &receipt_sig);

    // The signing key's lineage.
    let lineage_actor = o.lineage_actor.as_deref().unwrap_or(&o.actor);
    let lineage_payload = serde_json::to_vec(&lineage_statement(&KeyFacts {
        log_key: false,
        actor: lineage_actor,
        version: o.lineage_key_version.unwrap_or(o.key_version),
        key_id: &actor_key_id,
        origin: &o.origin,
        created_at: &o.created_at,
        token_serial: TOKEN_SERIAL,
        attribute_overrides: &o.attribute_overrides,
    }))
    .unwrap();
    let (device_der, chain) = pki.issue(&device, &device_key);
    let mut lineage = attestation_json(
        &o.backend,
        envelope(&device_key, &lineage_payload),
        &device_der,
        &chain,
    );

    // Earlier versions and the rotations between them.
    let predecessor_keys: Vec<SoftKey> = o
        .predecessors
        .iter()
        .map(|p| SoftKey::from_label(&p.key_label))
        .collect();
    let mut predecessor_device_keys = Vec::new();
    let mut predecessor_payloads = Vec::new();
    let mut rotation_payloads = Vec::new();
    let mut predecessors = Vec::new();
    let mut rotations = Vec::new();
    for (i, (p, key)) in o.predecessors.iter().zip(&predecessor_keys).enumerate() {
        let version = i as u64 + 1;
        let key_id = key.key_id();
        let dev = p.device.clone().unwrap_or_else(|| device.clone());
        let dev_key = SoftKey::from_label(&dev.key_label);
        let payload = serde_json::to_vec(&lineage_statement(&KeyFacts {
            log_key: false,
            actor: &o.actor,
            version,
            key_id: &key_id,
            origin: "generated",
            created_at: &p.created_at,
            token_serial: &dev.token_serial,
            attribute_overrides: &p.attribute_overrides,
        }))
        .unwrap();
        let (dev_der, dev_chain) = pki.issue(&dev, &dev_key);
        let mut entry =
            attestation_json("pkcs11", envelope(&dev_key, &payload), &dev_der, &dev_chain);
        entry["version"] = json!(version);
        entry["keyId"] = json!(key_id);
        entry["publicKey"] = json!(b64(&key.spki_der()));
        predecessors.push(entry);
        predecessor_device_keys.push(dev_key);
        predecessor_payloads.push(payload);

        let (next_id, next_backend) = match predecessor_keys.get(i + 1) {
            Some(next) => (next.key_id(), "pkcs11"),
            None => (actor_key_id.clone(), o.backend.as_str()),
        };
        let mut statement = rotation_statement(
            &o.actor,
            (version, &key_id),
            (version + 1, &next_id),
            next_backend,
            &p.rotated_at,
        );
        for (pointer, value) in &p.rotation_overrides {
            *statement.pointer_mut(pointer).expect("rotation member") = value.clone();
        }
        let payload = serde_json::to_vec(&statement).unwrap();
        let signer = p.rotation_signer.as_deref().map(SoftKey::from_label);
        let sig = signer
            .as_ref()
            .unwrap_or(key)
            .sign_der(&pae(IN_TOTO, &payload));
        rotations.push(envelope_with_sig(&key_id, &payload, &sig));
        rotation_payloads.push(payload);
    }
    if !predecessors.is_empty() {
        lineage["predecessors"] = json!(predecessors);
        lineage["rotations"] = json!(rotations);
    }

    // The log key and its lineage, then the log.
    let log_key = SoftKey::from_label(&o.log_key_label);
    let log_device = o.log_device.clone().unwrap_or_else(|| device.clone());
    let log_device_key = SoftKey::from_label(&log_device.key_label);
    let log_lineage_payload = serde_json::to_vec(&lineage_statement(&KeyFacts {
        log_key: o.log_lineage_key_version.is_none(),
        actor: o.log_lineage_actor.as_deref().unwrap_or(&o.log_origin),
        version: o.log_lineage_key_version.unwrap_or(1),
        key_id: &log_key.key_id(),
        origin: "generated",
        created_at: "2026-01-15T08:00:00Z",
        token_serial: &log_device.token_serial,
        attribute_overrides: &o.log_attribute_overrides,
    }))
    .unwrap();
    let (log_dev_der, log_dev_chain) = pki.issue(&log_device, &log_device_key);
    let log_key_lineage = attestation_json(
        "pkcs11",
        envelope(&log_device_key, &log_lineage_payload),
        &log_dev_der,
        &log_dev_chain,
    );
    let (log_entries, mut log) = log_proof(o, &receipt, &log_key);
    log["logKey"] = json!({
        "keyName": o.log_origin,
        "keyId": log_key.key_id(),
        "publicKey": b64(&log_key.spki_der()),
        "lineage": log_key_lineage,
    });

    let bundle = json!({
        "mediaType": MEDIA_TYPE,
        "receipt": receipt,
        "actorKey": {"keyId": actor_key_id, "publicKey": b64(&actor_key.spki_der())},
        "lineage": lineage,
        "log": log,
    });
    Generated {
        options: o.clone(),
        bundle_json: to_pretty(&bundle),
        bundle,
        anchor_pem: pki.anchor_pem,
        document: o.document.clone(),
        receipt_payload,
        lineage_payload,
        actor_key,
        device_key,
        predecessor_keys,
        predecessor_device_keys,
        predecessor_payloads,
        rotation_payloads,
        log_key,
        log_device_key,
        log_lineage_payload,
        log_entries,
    }
}

/// The default bundle (the committed vector).
pub fn default_bundle() -> Generated {
    generate(&Options::default())
}

/// The committed fleet vector (`fleet-v1.json`, FORMAT.md §9): the default bundle as a fleet node
/// signs it, `logIndex` null; the log put it at entry 3 of 6.
pub fn fleet_bundle() -> Generated {
    generate(&Options {
        fleet: true,
        ..Options::default()
    })
}

/// A log export (FORMAT.md §11.3) of receipts by the default actor key (version 1), one per
/// time in `signed_at`, in that order: logIndex 0, 1, …, sequence 1, 2, …, each naming the
/// previous receipt, under a checkpoint signed by the default log key. Returns the export JSON
/// and the anchor PEM. Times are taken as given, so a test can backdate an entry.
pub fn receipts_export(signed_at: &[&str]) -> (String, String) {
    receipts_export_with(signed_at, true)
}

/// The log-key-signed registration of the generated actor key (FORMAT.md §11.2).
pub fn registration_entry(g: &Generated, registered_at: &str) -> Vec<u8> {
    let mut attestation = g.bundle["lineage"].clone();
    let members = attestation.as_object_mut().unwrap();
    members.remove("predecessors");
    members.remove("rotations");
    let statement = json!({
        "_type": "https://in-toto.io/Statement/v1",
        "subject": [{"name": format!("{}#1", g.options.actor),
                     "digest": {"sha256": g.actor_key.key_id()}}],
        "predicateType": "https://actseal.dev/key-registration/v1",
        "predicate": {
            "actor": g.options.actor, "version": 1, "keyId": g.actor_key.key_id(),
            "publicKey": b64(&g.actor_key.spki_der()), "backend": "pkcs11",
            "origin": "generated", "registeredAt": registered_at,
            "requestedBy": {"kind": "unix", "uid": 0, "gid": 0, "pid": 1},
            "attestation": attestation,
        }
    });
    entry_bytes(&envelope(
        &g.log_key,
        &serde_json::to_vec(&statement).unwrap(),
    ))
}

/// An export of a log of one actor's receipts at these times, its key registered in the log
/// first (entry 0) when `registered`; otherwise the key appears only in the export's `keys`
/// table, as exports once carried it. Returns (export JSON, anchor PEM).
pub fn receipts_export_with(signed_at: &[&str], registered: bool) -> (String, String) {
    let offset = u64::from(registered);
    let size = signed_at.len() as u64 + offset;
    let mut previous = None;
    let mut entries = Vec::new();
    let mut generated = None;
    for (i, at) in signed_at.iter().enumerate() {
        let g = generate(&Options {
            signed_at: (*at).into(),
            sequence: i as u64 + 1,
            previous_receipt: previous.take(),
            log_index: i as u64 + offset,
            log_tree_size: size,
            ..Options::default()
        });
        previous = Some(sha256_hex(&g.receipt_payload));
        entries.push(entry_bytes(&g.bundle["receipt"]));
        generated = Some(g);
    }
    let g = generated.expect("at least one receipt");
    if registered {
        entries.insert(0, registration_entry(&g, &g.options.created_at));
    }
    let leaves: Vec<Hash> = entries.iter().map(|e| leaf_hash(e)).collect();
    let body = checkpoint_body(LOG_ORIGIN, size, &tree_root(&leaves));
    let export = json!({
        "mediaType": "application/vnd.actseal.log-export.v1+json",
        "logKey": g.bundle["log"]["logKey"],
        "checkpoint": signed_note(&body, LOG_ORIGIN, &g.log_key, &g.log_key),
        "entries": entries.iter().map(|e| b64(e)).collect::<Vec<_>>(),
        "keys": [{
            "actor": g.options.actor,
            "version": 1,
            "keyId": g.actor_key.key_id(),
            "publicKey": b64(&g.actor_key.spki_der()),
            "lineage": g.bundle["lineage"],
        }],
    });
    (serde_json::to_string(&export).unwrap(), g.anchor_pem)
}
