//! PKCS#11 backend (any module; SoftHSM2 in tests) through `cryptoki`.
//!
//! One login per token, a bounded pool of sessions ([`pool`], which also recovers from token
//! faults), and key handles cached per session:
//! nothing on the signing path touches the PIN or searches the token more than once.

mod pool;

use std::path::PathBuf;

use cryptoki::{
    context::{CInitializeArgs, CInitializeFlags, Pkcs11},
    error::{Error as CkError, RvError},
    mechanism::Mechanism,
    object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle},
    session::{Session, UserType},
    slot::Slot,
    types::AuthPin,
};
use der::{Decode, asn1::OctetString};
use p256::ecdsa::Signature;
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::{
    Backend, BackendError, BackendKind, HardwareKey, KeyEvidence, KeyRef, KeySelector,
    check_signature,
};
use crate::secret::PinSource;
use pool::{Objects, PooledSession, SessionPool};

mod log_head;
pub use log_head::LOG_HEAD_LABEL;

/// DER of the OID prime256v1 / secp256r1 (1.2.840.10045.3.1.7), as CKA_EC_PARAMS holds it.
const P256_EC_PARAMS: [u8; 10] = [0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
/// Length of the random CKA_ID given to keys the daemon generates.
const KEY_ID_LEN: u32 = 16;

/// Which token to use. Slot ids change when tokens are initialised, so never by slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSelector {
    Label(String),
    Serial(String),
}

impl std::fmt::Display for TokenSelector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TokenSelector::Label(label) => write!(f, "token labelled {label:?}"),
            TokenSelector::Serial(serial) => write!(f, "token with serial {serial:?}"),
        }
    }
}

/// Everything needed to open a token.
#[derive(Debug, Clone)]
pub struct Pkcs11Settings {
    pub module: PathBuf,
    pub token: TokenSelector,
    pub pin: PinSource,
    /// Upper bound on open sessions (and so on concurrent token operations).
    pub sessions: usize,
    /// CKA_LABEL of the token's device key, which signs lineage statements.
    pub device_key_label: String,
}

/// The token as it describes itself.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct TokenFacts {
    pub manufacturer: String,
    pub model: String,
    pub serial: String,
    pub label: String,
}

/// A private key's attributes as read back from the token.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct KeyAttributes {
    pub key_type: String,
    pub curve: String,
    pub id: String,
    pub label: String,
    pub token: bool,
    pub private: bool,
    pub sensitive: bool,
    pub always_sensitive: bool,
    pub extractable: bool,
    pub never_extractable: bool,
    pub local: bool,
    pub sign: bool,
}

impl KeyAttributes {
    /// The properties an actor key must have, each with the attribute that fails it.
    /// Together they mean: generated on the token, never readable outside it, able to sign.
    pub fn unfit_reasons(&self) -> Vec<&'static str> {
        let checks = [
            (self.key_type == "EC", "CKA_KEY_TYPE is not CKK_EC"),
            (self.curve == "P-256", "CKA_EC_PARAMS is not P-256"),
            (self.token, "CKA_TOKEN is false (session object)"),
            (self.private, "CKA_PRIVATE is false"),
            (self.sensitive, "CKA_SENSITIVE is false"),
            (self.always_sensitive, "CKA_ALWAYS_SENSITIVE is false"),
            (!self.extractable, "CKA_EXTRACTABLE is true"),
            (self.never_extractable, "CKA_NEVER_EXTRACTABLE is false"),
            (
                self.local,
                "CKA_LOCAL is false (not generated on the token)",
            ),
            (self.sign, "CKA_SIGN is false"),
        ];
        checks
            .into_iter()
            .filter(|(ok, _)| !ok)
            .map(|(_, why)| why)
            .collect()
    }
}

/// What a PKCS#11 token states about one of its keys.
#[derive(Debug, Clone, Serialize)]
pub struct Pkcs11KeyFacts {
    pub token: TokenFacts,
    pub attributes: KeyAttributes,
}

/// The PKCS#11 backend for one token.
pub struct Pkcs11Backend {
    token: TokenFacts,
    device_key_label: String,
    pool: SessionPool,
    /// The log head slots' object handles (`log_head`).
    head_slots: log_head::SlotCache,
}

impl std::fmt::Debug for Pkcs11Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pkcs11Backend")
            .field("token", &self.token)
            .field("capacity", &self.pool.capacity())
            .finish_non_exhaustive()
    }
}

/// Loads and initialises a PKCS#11 module. Do this once per process and module.
pub fn load_module(module: &std::path::Path) -> Result<Pkcs11, BackendError> {
    let ctx = Pkcs11::new(module).map_err(|e| {
        BackendError::Unavailable(format!(
            "cannot load PKCS#11 module {}: {e}",
            module.display()
        ))
    })?;
    ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .map_err(|e| {
            BackendError::Unavailable(format!(
                "C_Initialize of {} failed: {e} (for SoftHSM2, check SOFTHSM2_CONF and its tokendir)",
                module.display()
            ))
        })?;
    Ok(ctx)
}

fn trimmed(s: &str) -> String {
    s.trim_end_matches([' ', '\0']).to_owned()
}

/// Finds the one token matching `selector`.
pub(crate) fn find_token(
    ctx: &Pkcs11,
    selector: &TokenSelector,
) -> Result<(Slot, TokenFacts), BackendError> {
    let slots = ctx
        .get_slots_with_initialized_token()
        .map_err(|e| BackendError::Unavailable(format!("cannot list PKCS#11 slots: {e}")))?;
    let mut found = Vec::new();
    for slot in slots {
        let Ok(info) = ctx.get_token_info(slot) else {
            continue;
        };
        let facts = TokenFacts {
            manufacturer: trimmed(info.manufacturer_id()),
            model: trimmed(info.model()),
            serial: trimmed(info.serial_number()),
            label: trimmed(info.label()),
        };
        let matches = match selector {
            TokenSelector::Label(label) => &facts.label == label,
            TokenSelector::Serial(serial) => &facts.serial == serial,
        };
        if matches {
            found.push((slot, facts));
        }
    }
    match found.len() {
        0 => Err(BackendError::Unavailable(format!(
            "no {selector} is present"
        ))),
        1 => Ok(found.remove(0)),
        n => Err(BackendError::Unavailable(format!(
            "{n} tokens match: {selector} is ambiguous; select the token by serial"
        ))),
    }
}

/// Maps a PKCS#11 error to what it means for the caller.
fn classify(operation: &'static str, err: CkError) -> BackendError {
    match &err {
        CkError::Pkcs11(rv, _) => match rv {
            RvError::PinIncorrect
            | RvError::PinLocked
            | RvError::PinExpired
            | RvError::PinLenRange
            | RvError::PinInvalid => BackendError::Login(format!("{operation}: {rv}")),
            RvError::TokenNotPresent
            | RvError::TokenNotRecognized
            | RvError::DeviceRemoved
            | RvError::DeviceError
            | RvError::DeviceMemory
            | RvError::SessionHandleInvalid
            | RvError::SessionClosed
            | RvError::SessionCount
            | RvError::SlotIdInvalid
            | RvError::UserNotLoggedIn
            | RvError::CryptokiNotInitialized
            | RvError::GeneralError => {
                BackendError::Unavailable(format!("{operation}: token error {rv:?}"))
            }
            _ => BackendError::Failed {
                operation,
                detail: format!("{rv:?}"),
            },
        },
        _ => BackendError::Failed {
            operation,
            detail: err.to_string(),
        },
    }
}

/// Decodes CKA_EC_POINT, which tokens return either bare (`04 || X || Y`) or wrapped in a
/// DER OCTET STRING as the standard says (`04 41 04 || X || Y`).
pub fn decode_ec_point(raw: &[u8]) -> Result<p256::PublicKey, String> {
    let point = if raw.len() == 65 {
        raw.to_vec()
    } else {
        OctetString::from_der(raw)
            .map_err(|e| format!("CKA_EC_POINT is neither a bare point nor DER: {e}"))?
            .into_bytes()
    };
    p256::PublicKey::from_sec1_bytes(&point)
        .map_err(|_| "CKA_EC_POINT is not a valid P-256 point".to_owned())
}

/// Turns a token's raw `r || s` into a signature; some tokens return DER instead.
fn decode_signature(raw: &[u8]) -> Result<Signature, BackendError> {
    Signature::from_slice(raw)
        .or_else(|_| Signature::from_der(raw))
        .map_err(|_| BackendError::Failed {
            operation: "sign",
            detail: format!(
                "token returned a {}-byte signature that is not P-256",
                raw.len()
            ),
        })
}

/// The templates of a token signing key pair: the private half sensitive, never extractable and
/// able only to sign; both halves token objects under `label` and `id`. Actor, log and device
/// keys (P-256) and the witness's key (Ed25519) are made from these.
pub(crate) fn signing_key_pair_templates(
    key_type: KeyType,
    ec_params: &[u8],
    label: &[u8],
    id: &[u8],
) -> ([Attribute; 7], [Attribute; 7]) {
    let public = [
        Attribute::Token(true),
        Attribute::Private(false),
        Attribute::KeyType(key_type),
        Attribute::Verify(true),
        Attribute::EcParams(ec_params.to_vec()),
        Attribute::Label(label.to_vec()),
        Attribute::Id(id.to_vec()),
    ];
    let private = [
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Sign(true),
        Attribute::Label(label.to_vec()),
        Attribute::Id(id.to_vec()),
    ];
    (public, private)
}

impl Pkcs11Backend {
    /// Opens the token, reads the PIN from its source and logs in once, so that a missing
    /// token or a wrong PIN is reported at start-up rather than on the first request.
    pub fn open(ctx: Pkcs11, settings: &Pkcs11Settings) -> Result<Self, BackendError> {
        let (slot, token) = find_token(&ctx, &settings.token)?;
        let pin = settings.pin.read()?;
        let pool = SessionPool::new(
            ctx,
            slot,
            settings.token.clone(),
            token.clone(),
            AuthPin::from(pin.as_str().to_owned()),
            settings.sessions,
        );
        let backend = Pkcs11Backend {
            token,
            device_key_label: settings.device_key_label.clone(),
            pool,
            head_slots: log_head::SlotCache::default(),
        };
        // Log in now; the session goes back to the pool and keeps the login alive.
        backend.pool.run("login", Objects::Read, |_| Ok(()))?;
        tracing::info!(
            token.label = %backend.token.label,
            token.serial = %backend.token.serial,
            token.model = %backend.token.model,
            sessions = backend.pool.capacity(),
            "PKCS#11 token opened"
        );
        Ok(backend)
    }

    pub fn token(&self) -> &TokenFacts {
        &self.token
    }

    fn find_private_keys(
        session: &Session,
        selector: &KeySelector,
    ) -> Result<Vec<ObjectHandle>, BackendError> {
        let mut template = vec![Attribute::Class(ObjectClass::PRIVATE_KEY)];
        template.push(match selector {
            KeySelector::Label(label) => Attribute::Label(label.as_bytes().to_vec()),
            KeySelector::Id(id) => Attribute::Id(id.clone()),
        });
        session
            .find_objects(&template)
            .map_err(|e| classify("C_FindObjects", e))
    }

    fn private_key_handle(
        session: &mut PooledSession,
        key: &KeyRef,
    ) -> Result<ObjectHandle, BackendError> {
        if let Some(handle) = session.handles.get(&key.0) {
            return Ok(*handle);
        }
        let id = key_ref_to_id(key)?;
        let found = Self::find_private_keys(&session.session, &KeySelector::Id(id))?;
        let [handle] = found[..] else {
            return Err(if found.is_empty() {
                BackendError::KeyNotFound(format!("no private key with CKA_ID {key} on the token"))
            } else {
                BackendError::KeyRefused(format!("{} private keys share CKA_ID {key}", found.len()))
            });
        };
        session.handles.insert(key.0.clone(), handle);
        Ok(handle)
    }

    fn public_key_for(session: &Session, id: &[u8]) -> Result<p256::PublicKey, BackendError> {
        let found = session
            .find_objects(&[
                Attribute::Class(ObjectClass::PUBLIC_KEY),
                Attribute::Id(id.to_vec()),
            ])
            .map_err(|e| classify("C_FindObjects", e))?;
        let [handle] = found[..] else {
            return Err(BackendError::KeyRefused(format!(
                "expected one public key object with CKA_ID {}, found {}",
                hex::encode(id),
                found.len()
            )));
        };
        let attrs = session
            .get_attributes(handle, &[AttributeType::EcPoint])
            .map_err(|e| classify("C_GetAttributeValue", e))?;
        let point = attrs
            .into_iter()
            .find_map(|a| match a {
                Attribute::EcPoint(p) => Some(p),
                _ => None,
            })
            .ok_or_else(|| BackendError::KeyRefused("public key has no CKA_EC_POINT".into()))?;
        decode_ec_point(&point).map_err(BackendError::KeyRefused)
    }

    fn read_attributes(
        session: &Session,
        handle: ObjectHandle,
    ) -> Result<KeyAttributes, BackendError> {
        let wanted = [
            AttributeType::KeyType,
            AttributeType::EcParams,
            AttributeType::Id,
            AttributeType::Label,
            AttributeType::Token,
            AttributeType::Private,
            AttributeType::Sensitive,
            AttributeType::AlwaysSensitive,
            AttributeType::Extractable,
            AttributeType::NeverExtractable,
            AttributeType::Local,
            AttributeType::Sign,
        ];
        let attrs = session
            .get_attributes(handle, &wanted)
            .map_err(|e| classify("C_GetAttributeValue", e))?;
        // Tokens silently omit attributes they will not reveal: anything missing reads as
        // the unsafe answer, so a key can only pass on what the token affirms.
        let mut out = KeyAttributes {
            key_type: "unknown".into(),
            curve: "unknown".into(),
            id: String::new(),
            label: String::new(),
            token: false,
            private: false,
            sensitive: false,
            always_sensitive: false,
            extractable: true,
            never_extractable: false,
            local: false,
            sign: false,
        };
        for attr in attrs {
            match attr {
                Attribute::KeyType(t) if t == KeyType::EC => out.key_type = "EC".into(),
                Attribute::KeyType(t) => out.key_type = format!("{t}"),
                Attribute::EcParams(p) if p == P256_EC_PARAMS => out.curve = "P-256".into(),
                Attribute::EcParams(p) => out.curve = format!("other ({})", hex::encode(p)),
                Attribute::Id(id) => out.id = hex::encode(id),
                Attribute::Label(l) => out.label = String::from_utf8_lossy(&l).into_owned(),
                Attribute::Token(b) => out.token = b,
                Attribute::Private(b) => out.private = b,
                Attribute::Sensitive(b) => out.sensitive = b,
                Attribute::AlwaysSensitive(b) => out.always_sensitive = b,
                Attribute::Extractable(b) => out.extractable = b,
                Attribute::NeverExtractable(b) => out.never_extractable = b,
                Attribute::Local(b) => out.local = b,
                Attribute::Sign(b) => out.sign = b,
                _ => {}
            }
        }
        Ok(out)
    }

    /// Signs a fixed probe with a key and checks it under the public key found beside it,
    /// proving the pair belongs together and the key works.
    fn prove_pair(
        session: &Session,
        handle: ObjectHandle,
        public_key: &p256::PublicKey,
    ) -> Result<(), BackendError> {
        let digest: [u8; 32] = Sha256::digest(b"actseal key pair probe").into();
        let raw = session
            .sign(&Mechanism::Ecdsa, handle, &digest)
            .map_err(|e| classify("C_Sign", e))?;
        let signature = decode_signature(&raw)?;
        check_signature(public_key, &digest, &signature).map_err(|_| {
            BackendError::KeyRefused(
                "the private key's signature does not verify under the public key with the same CKA_ID"
                    .into(),
            )
        })
    }

    fn generate(&self, session: &Session, label: &str) -> Result<HardwareKey, BackendError> {
        let id = session
            .generate_random_vec(KEY_ID_LEN)
            .map_err(|e| classify("C_GenerateRandom", e))?;
        let (public_template, private_template) =
            signing_key_pair_templates(KeyType::EC, &P256_EC_PARAMS, label.as_bytes(), &id);
        let (public_handle, private_handle) = session
            .generate_key_pair(
                &Mechanism::EccKeyPairGen,
                &public_template,
                &private_template,
            )
            .map_err(|e| classify("C_GenerateKeyPair", e))?;
        let point = session
            .get_attributes(public_handle, &[AttributeType::EcPoint])
            .map_err(|e| classify("C_GetAttributeValue", e))?
            .into_iter()
            .find_map(|a| match a {
                Attribute::EcPoint(p) => Some(p),
                _ => None,
            })
            .ok_or_else(|| BackendError::Failed {
                operation: "C_GenerateKeyPair",
                detail: "new public key has no CKA_EC_POINT".into(),
            })?;
        let public_key = decode_ec_point(&point).map_err(|detail| BackendError::Failed {
            operation: "C_GenerateKeyPair",
            detail,
        })?;
        Self::prove_pair(session, private_handle, &public_key)?;
        Ok(HardwareKey {
            key_ref: KeyRef(hex::encode(id)),
            public_key,
        })
    }
}

fn key_ref_to_id(key: &KeyRef) -> Result<Vec<u8>, BackendError> {
    hex::decode(&key.0)
        .map_err(|_| BackendError::KeyNotFound(format!("{key} is not a PKCS#11 key reference")))
}

impl Backend for Pkcs11Backend {
    fn kind(&self) -> BackendKind {
        BackendKind::Pkcs11
    }

    fn create_key(&self, label: &str) -> Result<HardwareKey, BackendError> {
        self.pool.run("create key", Objects::Write, |s| {
            self.generate(&s.session, label)
        })
    }

    fn adopt_key(&self, selector: &KeySelector) -> Result<HardwareKey, BackendError> {
        if matches!(selector, KeySelector::Label(l) if *l == self.device_key_label) {
            return Err(BackendError::KeyRefused(
                "that is the token's device key, which signs lineage; it cannot be an actor key"
                    .into(),
            ));
        }
        self.pool.run("adopt key", Objects::Read, |s| {
            let found = Self::find_private_keys(&s.session, selector)?;
            let handle = match found[..] {
                [] => {
                    return Err(BackendError::KeyNotFound(format!(
                        "no private key with {selector} on token {:?}",
                        self.token.label
                    )));
                }
                [one] => one,
                _ => {
                    return Err(BackendError::KeyRefused(format!(
                        "{} private keys match {selector}; name the key by CKA_ID",
                        found.len()
                    )));
                }
            };
            let attributes = Self::read_attributes(&s.session, handle)?;
            let reasons = attributes.unfit_reasons();
            if !reasons.is_empty() {
                return Err(BackendError::KeyRefused(reasons.join("; ")));
            }
            if attributes.label == self.device_key_label {
                return Err(BackendError::KeyRefused(
                    "that is the token's device key; it cannot be an actor key".into(),
                ));
            }
            let id = hex::decode(&attributes.id).unwrap_or_default();
            if id.is_empty() {
                return Err(BackendError::KeyRefused(
                    "the key has no CKA_ID; actseal names keys by CKA_ID".into(),
                ));
            }
            // The CKA_ID must name this key alone, or signing could pick another one.
            let same_id = Self::find_private_keys(&s.session, &KeySelector::Id(id.clone()))?;
            if same_id.len() != 1 {
                return Err(BackendError::KeyRefused(format!(
                    "{} private keys share CKA_ID {}",
                    same_id.len(),
                    attributes.id
                )));
            }
            let public_key = Self::public_key_for(&s.session, &id)?;
            Self::prove_pair(&s.session, handle, &public_key)?;
            Ok(HardwareKey {
                key_ref: KeyRef(attributes.id),
                public_key,
            })
        })
    }

    fn sign_digest(&self, key: &HardwareKey, digest: &[u8; 32]) -> Result<Signature, BackendError> {
        let signature = self.sign_digest_unchecked(key, digest)?;
        check_signature(&key.public_key, digest, &signature)?;
        Ok(signature)
    }

    fn sign_digest_unchecked(
        &self,
        key: &HardwareKey,
        digest: &[u8; 32],
    ) -> Result<Signature, BackendError> {
        self.pool.run("sign", Objects::Read, |s| {
            // A registered key that cannot be found means the token is gone or was swapped:
            // a fault of the hardware, not of the caller's request.
            let vanished = |e: BackendError| match e {
                BackendError::KeyNotFound(detail) => BackendError::Unavailable(format!(
                    "{detail} (token {:?} removed or replaced?)",
                    self.token.label
                )),
                other => other,
            };
            let handle = Self::private_key_handle(s, &key.key_ref).map_err(vanished)?;
            let raw = match s.session.sign(&Mechanism::Ecdsa, handle, digest) {
                Err(CkError::Pkcs11(
                    RvError::ObjectHandleInvalid | RvError::KeyHandleInvalid,
                    _,
                )) => {
                    // The cached handle went stale (the object was re-created): look again.
                    s.handles.remove(&key.key_ref.0);
                    let handle = Self::private_key_handle(s, &key.key_ref).map_err(vanished)?;
                    s.session.sign(&Mechanism::Ecdsa, handle, digest)
                }
                other => other,
            }
            .map_err(|e| classify("C_Sign", e))?;
            decode_signature(&raw)
        })
    }

    fn key_evidence(&self, key: &KeyRef) -> Result<KeyEvidence, BackendError> {
        self.pool.run("read key attributes", Objects::Read, |s| {
            let handle = Self::private_key_handle(s, key)?;
            let attributes = Self::read_attributes(&s.session, handle)?;
            Ok(KeyEvidence::Pkcs11(Pkcs11KeyFacts {
                token: self.token.clone(),
                attributes,
            }))
        })
    }

    fn destroy_key(&self, key: &KeyRef) -> Result<(), BackendError> {
        let id = key_ref_to_id(key)?;
        self.pool.run("destroy key", Objects::Write, |s| {
            s.handles.remove(&key.0);
            let objects = s
                .session
                .find_objects(&[Attribute::Id(id)])
                .map_err(|e| classify("C_FindObjects", e))?;
            for object in objects {
                s.session
                    .destroy_object(object)
                    .map_err(|e| classify("C_DestroyObject", e))?;
            }
            Ok(())
        })
    }

    fn device_key(&self, create: bool) -> Result<HardwareKey, BackendError> {
        self.pool.run("device key", Objects::Write, |s| {
            let label = KeySelector::Label(self.device_key_label.clone());
            let found = Self::find_private_keys(&s.session, &label)?;
            match found[..] {
                [] if create => {
                    tracing::info!(label = %self.device_key_label, "generating the token's device key");
                    self.generate(&s.session, &self.device_key_label)
                }
                [] => Err(BackendError::KeyNotFound(format!(
                    "token {:?} has no device key labelled {:?}; run `actseal device csr` first",
                    self.token.label, self.device_key_label
                ))),
                [handle] => {
                    let attributes = Self::read_attributes(&s.session, handle)?;
                    let id = hex::decode(&attributes.id).unwrap_or_default();
                    let public_key = Self::public_key_for(&s.session, &id)?;
                    Ok(HardwareKey {
                        key_ref: KeyRef(attributes.id),
                        public_key,
                    })
                }
                _ => Err(BackendError::KeyRefused(format!(
                    "{} keys are labelled {:?}; the device key must be unique",
                    found.len(),
                    self.device_key_label
                ))),
            }
        })
    }

    fn health(&self) -> Result<(), BackendError> {
        self.pool.health()
    }

    fn keeps_log_head(&self) -> bool {
        true
    }

    fn read_log_head(&self) -> Result<Option<Vec<u8>>, BackendError> {
        log_head::read(self)
    }

    fn write_log_head(&self, record: &[u8]) -> Result<(), BackendError> {
        log_head::write(self, record)
    }

    fn replace_log_head(
        &self,
        record: &[u8],
        allow: &super::HeadCheck<'_>,
    ) -> Result<super::HeadWrite, BackendError> {
        log_head::replace(self, record, allow)
    }
}

/// Initialises a fresh token on a free slot and sets its user PIN: what `softhsm2-util
/// --init-token` does, without putting either PIN on a command line.
pub fn init_token(
    ctx: &Pkcs11,
    label: &str,
    so_pin: &str,
    user_pin: &str,
) -> Result<TokenFacts, BackendError> {
    if find_token(ctx, &TokenSelector::Label(label.to_owned())).is_ok() {
        return Err(BackendError::KeyRefused(format!(
            "a token labelled {label:?} already exists"
        )));
    }
    let slots = ctx
        .get_slots_with_token()
        .map_err(|e| classify("C_GetSlotList", e))?;
    let free = slots
        .into_iter()
        .find(|slot| {
            ctx.get_token_info(*slot)
                .is_ok_and(|info| !info.token_initialized())
        })
        .ok_or_else(|| BackendError::Unavailable("no slot holds an uninitialised token".into()))?;
    let so_pin = AuthPin::from(so_pin.to_owned());
    ctx.init_token(free, &so_pin, label)
        .map_err(|e| classify("C_InitToken", e))?;
    // Slot ids may change once a token is initialised: find it again by label.
    let (slot, facts) = find_token(ctx, &TokenSelector::Label(label.to_owned()))?;
    let session = ctx
        .open_rw_session(slot)
        .map_err(|e| classify("C_OpenSession", e))?;
    session
        .login(UserType::So, Some(&so_pin))
        .map_err(|e| classify("C_Login (SO)", e))?;
    session
        .init_pin(&AuthPin::from(user_pin.to_owned()))
        .map_err(|e| classify("C_InitPIN", e))?;
    session.logout().map_err(|e| classify("C_Logout", e))?;
    Ok(facts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use p256::elliptic_curve::sec1::ToEncodedPoint;

    fn sample_point() -> (p256::PublicKey, Vec<u8>) {
        let secret = p256::SecretKey::from_slice(&[7u8; 32]).unwrap();
        let public = secret.public_key();
        let bare = public.to_encoded_point(false).as_bytes().to_vec();
        (public, bare)
    }

    #[test]
    fn ec_point_is_accepted_bare_and_der_wrapped() {
        let (public, bare) = sample_point();
        assert_eq!(decode_ec_point(&bare).unwrap(), public);
        let mut wrapped = vec![0x04, 0x41];
        wrapped.extend_from_slice(&bare);
        assert_eq!(decode_ec_point(&wrapped).unwrap(), public);
    }

    #[test]
    fn ec_point_garbage_is_an_error_not_a_panic() {
        for raw in [
            &[][..],
            &[0x04][..],
            &[0x04, 0x41, 0x04][..],
            &[0u8; 65][..],
            &[0xff; 67][..],
        ] {
            assert!(decode_ec_point(raw).is_err());
        }
    }

    #[test]
    fn unfit_reasons_name_each_failed_attribute() {
        let good = KeyAttributes {
            key_type: "EC".into(),
            curve: "P-256".into(),
            id: "0a".into(),
            label: "k".into(),
            token: true,
            private: true,
            sensitive: true,
            always_sensitive: true,
            extractable: false,
            never_extractable: true,
            local: true,
            sign: true,
        };
        assert!(good.unfit_reasons().is_empty());
        let extractable = KeyAttributes {
            extractable: true,
            never_extractable: false,
            ..good.clone()
        };
        assert_eq!(
            extractable.unfit_reasons(),
            vec!["CKA_EXTRACTABLE is true", "CKA_NEVER_EXTRACTABLE is false"]
        );
    }

    #[test]
    fn raw_and_der_signatures_decode() {
        let mut raw = [0u8; 64];
        raw[31] = 1;
        raw[63] = 2;
        let sig = decode_signature(&raw).unwrap();
        assert_eq!(decode_signature(sig.to_der().as_bytes()).unwrap(), sig);
        assert!(decode_signature(&[0u8; 63]).is_err());
    }
}
