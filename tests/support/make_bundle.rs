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
    pub log_index: u64,
    pub mode: String,
    /// Lineage fields; `None` means "the receipt's".
    pub lineage_actor: Option<String>,
    pub lineage_key_version: Option<u64>,
    pub origin: String,
    pub created_at: String,
    /// Overrides of `predicate.attributes` members, e.g. `("extractable", json!(true))`.
    pub attribute_overrides: Vec<(String, Value)>,
}

pub const DOCUMENT: &[u8] = b"{\"tool\":\"payments.initiate\",\"amount\":\"125.00\",\"currency\":\"EUR\",\"creditor\":\"acct:DE89370400440532013000\",\"reason\":\"invoice 2026-1142\"}\n";

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
            log_index: 0,
            mode: "single".into(),
            lineage_actor: None,
            lineage_key_version: None,
            origin: "generated".into(),
            created_at: "2026-11-26T17:51:30Z".into(),
            attribute_overrides: Vec::new(),
        }
    }
}

/// A generated bundle and the material behind it.
pub struct Generated {
    /// Pretty-printed bundle with a trailing newline (the committed vector's bytes).
    pub bundle_json: String,
    pub bundle: Value,
    pub anchor_pem: String,
    pub document: Vec<u8>,
    pub receipt_payload: Vec<u8>,
    pub lineage_payload: Vec<u8>,
    pub actor_key: SoftKey,
    pub device_key: SoftKey,
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

/// The PKI: (anchor PEM, intermediate DERs device side first, device DER).
fn make_pki(o: &Options, device_key: &SoftKey) -> (String, Vec<Vec<u8>>, Vec<u8>) {
    let root_key = SoftKey::from_label(&o.ca.label);
    let root_params = ca_params(&o.ca, &root_key, None);
    let root_cert = root_params
        .self_signed(&root_key)
        .expect("root certificate");
    let root_issuer = Issuer::new(root_params, &root_key);

    let mut device = CertificateParams::default();
    device.distinguished_name = distinguished_name("actseal device softhsm-0001");
    device.serial_number = Some(SerialNumber::from(o.device_serial));
    device.not_before = o.device_not_before;
    device.not_after = o.device_not_after;
    device.is_ca = if o.device_is_ca {
        IsCa::Ca(BasicConstraints::Unconstrained)
    } else {
        IsCa::ExplicitNoCa
    };
    device.key_usages = o.device_key_usage.clone();
    device.use_authority_key_identifier_extension = true;
    device.key_identifier_method = KeyIdMethod::PreSpecified(device_key.ski());

    let (chain, device_der) = match &o.intermediate {
        None => {
            let cert = device
                .signed_by(device_key, &root_issuer)
                .expect("device certificate");
            (Vec::new(), cert.der().to_vec())
        }
        Some(spec) => {
            let mid_key = SoftKey::from_label(&spec.label);
            let mut mid_params = ca_params(spec, &mid_key, Some(0));
            mid_params.use_authority_key_identifier_extension = true;
            let mid_cert = mid_params
                .signed_by(&mid_key, &root_issuer)
                .expect("intermediate");
            let mid_issuer = Issuer::new(mid_params, &mid_key);
            let cert = device
                .signed_by(device_key, &mid_issuer)
                .expect("device certificate");
            (vec![mid_cert.der().to_vec()], cert.der().to_vec())
        }
    };
    (root_cert.pem(), chain, device_der)
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
            "logIndex": o.log_index,
            "mode": o.mode,
        }
    })
}

fn lineage_statement(o: &Options, actor_key_id: &str) -> Value {
    let actor = o.lineage_actor.clone().unwrap_or_else(|| o.actor.clone());
    let version = o.lineage_key_version.unwrap_or(o.key_version);
    let mut attributes = json!({
        "keyType": "EC", "curve": "P-256",
        "id": "a1b2c3d4", "label": format!("actseal:{actor}#{version}"),
        "token": true, "private": true, "sensitive": true, "alwaysSensitive": true,
        "extractable": false, "neverExtractable": true, "local": true, "sign": true
    });
    for (name, value) in &o.attribute_overrides {
        attributes[name.as_str()] = value.clone();
    }
    json!({
        "_type": "https://in-toto.io/Statement/v1",
        "subject": [{"name": format!("{actor}#{version}"), "digest": {"sha256": actor_key_id}}],
        "predicateType": "https://actseal.dev/lineage/pkcs11-attributes/v1",
        "predicate": {
            "actor": actor,
            "keyVersion": version,
            "keyId": actor_key_id,
            "origin": o.origin,
            "createdAt": o.created_at,
            "token": {"manufacturer": "SoftHSM project", "model": "SoftHSM v2",
                      "serial": "5a1e2b3c4d5e6f70", "label": "actseal-test"},
            "attributes": attributes,
        }
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

/// The bundle JSON in FORMAT.md §5 member order, pretty-printed.
pub fn to_pretty(bundle: &Value) -> String {
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Ordered<'a> {
        media_type: &'a Value,
        receipt: &'a Value,
        actor_key: &'a Value,
        lineage: &'a Value,
    }
    let ordered = Ordered {
        media_type: &bundle["mediaType"],
        receipt: &bundle["receipt"],
        actor_key: &bundle["actorKey"],
        lineage: &bundle["lineage"],
    };
    let mut text = serde_json::to_string_pretty(&ordered).unwrap();
    text.push('\n');
    text
}

/// Builds a bundle per FORMAT.md from `o`.
pub fn generate(o: &Options) -> Generated {
    let actor_key = SoftKey::from_label(&o.actor_key_label);
    let device_key = SoftKey::from_label(&o.device_key_label);
    let actor_key_id = actor_key.key_id();

    let receipt_payload = serde_json::to_vec(&receipt_statement(o, &actor_key_id)).unwrap();
    let lineage_payload = serde_json::to_vec(&lineage_statement(o, &actor_key_id)).unwrap();
    let (anchor_pem, chain, device_der) = make_pki(o, &device_key);

    let bundle = json!({
        "mediaType": MEDIA_TYPE,
        "receipt": envelope(&actor_key, &receipt_payload),
        "actorKey": {"keyId": actor_key_id, "publicKey": b64(&actor_key.spki_der())},
        "lineage": {
            "backend": o.backend,
            "statement": envelope(&device_key, &lineage_payload),
            "deviceCertificate": b64(&device_der),
            "certificateChain": chain.iter().map(|c| b64(c)).collect::<Vec<_>>(),
        }
    });
    Generated {
        bundle_json: to_pretty(&bundle),
        bundle,
        anchor_pem,
        document: o.document.clone(),
        receipt_payload,
        lineage_payload,
        actor_key,
        device_key,
    }
}

/// The default bundle (the committed vector).
pub fn default_bundle() -> Generated {
    generate(&Options::default())
}
