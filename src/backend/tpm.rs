//! TPM 2.0 backend through `tss-esapi` 7.7 (any TCTI; swtpm over TCP in tests).
//!
//! Keys: actor keys are ECDSA P-256 unrestricted signing keys, children of a storage primary
//! key that is re-created from a fixed template (the TPM derives the same key from its owner
//! seed every time). The daemon keeps each key's public and private blobs as its [`KeyRef`]
//! and loads a key only for the command that needs it, flushing it right after: a TPM holds
//! few transient objects (swtpm: three), and blobs, unlike saved contexts, survive a TPM reset.
//!
//! The attestation key (AK) is a restricted ECDSA P-256 signing key, a primary key of the
//! endorsement hierarchy re-created from a fixed template; it certifies actor keys with
//! TPM2_Certify.
//!
//! Concurrency: one [`Context`] (one TCTI connection) behind a mutex. The mutex guards only
//! TPM commands — load, sign or certify, flush — never ledger, network or other work, so it
//! is not a global lock: it serialises what the TPM executes one command at a time anyway.
//! When a command fails the connection is dropped and re-opened once (the TPM may have been
//! restarted, which also clears its transient objects), then the command is retried.
//!
//! Identity: every connection first proves that the TPM is the enrolled one ([`identity`]);
//! a TPM that is not answers UNAVAILABLE: no key is created or loaded in it and none of its
//! objects is flushed (the check's own transient AK and EK are flushed after it).
//! The AK is also checked each time it is re-created, and the health probe checks that the
//! storage primary key is still ours, so a TPM swapped under an open connection is noticed.
//!
//! Authorization: every object and hierarchy here has an empty authValue, so commands use the
//! password session, which takes no TPM memory. An HMAC session would be loaded in the TPM
//! for the command, and a daemon killed in the middle leaves it there: without a resource
//! manager (swtpm over TCP, `/dev/tpm0`) three such kills exhaust the TPM's session slots and
//! no later start can talk to it (found by the soak test).

pub mod identity;

use std::{
    str::FromStr,
    sync::{
        Mutex, MutexGuard, OnceLock,
        atomic::{AtomicBool, Ordering},
    },
};

use p256::ecdsa::Signature;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use tss_esapi::{
    Context, TctiNameConf,
    abstraction::AsymmetricAlgorithmSelection,
    attributes::{ObjectAttributes, ObjectAttributesBuilder},
    constants::{
        CapabilityType, SessionType,
        tss::{TPM2_RH_NULL, TPM2_ST_HASHCHECK, TPM2_TRANSIENT_FIRST},
    },
    handles::{AuthHandle, KeyHandle, ObjectHandle, SessionHandle},
    interface_types::{
        algorithm::{HashingAlgorithm, PublicAlgorithm},
        ecc::EccCurve,
        key_bits::RsaKeyBits,
        resource_handles::Hierarchy,
        session_handles::{AuthSession, PolicySession},
    },
    structures::{
        CapabilityData, Data, Digest, EccPoint, EccScheme, EncryptedSecret, HashScheme,
        HashcheckTicket, IdObject, Private, Public, PublicBuilder, PublicEccParametersBuilder,
        SignatureScheme, SymmetricDefinition, SymmetricDefinitionObject,
    },
    traits::{Marshall, UnMarshall},
    tss2_esys::TPMT_TK_HASHCHECK,
};

use super::{
    Backend, BackendError, BackendKind, HardwareKey, KeyEvidence, KeyRef, KeySelector,
    check_signature,
};
pub use identity::{EkName, TpmIdentity};

mod log_head;
pub use log_head::LOG_HEAD_NV_INDEX;

/// Prefix of a TPM [`KeyRef`]: `tpm:<hex TPMT_PUBLIC>.<hex TPM2B_PRIVATE contents>`.
const KEY_REF_PREFIX: &str = "tpm:";
/// The [`KeyRef`] of the attestation key (a primary key: nothing to store).
pub const AK_KEY_REF: &str = "tpm-ak";

/// Everything needed to reach a TPM.
#[derive(Debug, Clone)]
pub struct TpmSettings {
    /// A TCTI configuration string: `device:/dev/tpmrm0`, `swtpm:host=127.0.0.1,port=2321`.
    pub tcti: String,
    /// How many transient objects the daemon may keep loaded at once (the storage primary
    /// key included); at least 3. swtpm and many TPMs hold exactly 3.
    pub max_objects: usize,
    /// The enrolled TPM's identity, which every connection must show (none while enrolling).
    pub identity: Option<TpmIdentity>,
}

impl TpmSettings {
    /// Settings for a TCTI with the smallest object budget (3), checking no identity.
    pub fn new(tcti: impl Into<String>) -> Self {
        TpmSettings {
            tcti: tcti.into(),
            max_objects: 3,
            identity: None,
        }
    }
}

/// An object's attributes as TPMA_OBJECT states them.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct TpmKeyAttributes {
    pub fixed_tpm: bool,
    pub fixed_parent: bool,
    pub sensitive_data_origin: bool,
    pub user_with_auth: bool,
    pub restricted: bool,
    pub decrypt: bool,
    pub sign: bool,
}

impl TpmKeyAttributes {
    fn of(attributes: ObjectAttributes) -> Self {
        TpmKeyAttributes {
            fixed_tpm: attributes.fixed_tpm(),
            fixed_parent: attributes.fixed_parent(),
            sensitive_data_origin: attributes.sensitive_data_origin(),
            user_with_auth: attributes.user_with_auth(),
            restricted: attributes.restricted(),
            decrypt: attributes.decrypt(),
            sign: attributes.sign_encrypt(),
        }
    }

    /// The properties an actor key must have: made in this TPM, never duplicable, an
    /// unrestricted signing key.
    pub fn unfit_reasons(&self) -> Vec<&'static str> {
        let checks = [
            (
                self.fixed_tpm,
                "fixedTPM is clear (the key may be duplicated)",
            ),
            (self.fixed_parent, "fixedParent is clear"),
            (
                self.sensitive_data_origin,
                "sensitiveDataOrigin is clear (not generated in the TPM)",
            ),
            (self.sign, "sign is clear"),
            (!self.restricted, "restricted is set"),
            (!self.decrypt, "decrypt is set"),
        ];
        checks
            .into_iter()
            .filter(|(ok, _)| !ok)
            .map(|(_, why)| why)
            .collect()
    }
}

/// What the daemon knows about a TPM key from its public area.
#[derive(Debug, Clone, Serialize)]
pub struct TpmKeyFacts {
    /// The marshalled TPMT_PUBLIC.
    #[serde(skip)]
    pub public_area: Vec<u8>,
    /// `000b || SHA-256(TPMT_PUBLIC)`, hex.
    pub name: String,
    pub attributes: TpmKeyAttributes,
}

/// What TPM2_Certify returned: the attestation structure exactly as signed, the AK's
/// signature over SHA-256 of it, and the certified key's public area.
#[derive(Debug, Clone)]
pub struct Certification {
    pub attest: Vec<u8>,
    pub signature: Signature,
    pub public_area: Vec<u8>,
    /// The attestation key's marshalled TPMT_PUBLIC, which the verifier ties to the AK
    /// certificate and to TPMS_ATTEST's qualifiedSigner.
    pub ak_public_area: Vec<u8>,
}

/// The TPM Name of an object whose name algorithm is SHA-256.
pub fn name_of(public_area: &[u8]) -> Vec<u8> {
    let mut name = vec![0x00, 0x0b];
    name.extend_from_slice(&Sha256::digest(public_area));
    name
}

/// Which endorsement key: the TCG default templates and certificate NV indices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EkKind {
    /// RSA 2048 (template L-1), certificate at NV 0x01c00002.
    Rsa2048,
    /// ECC NIST P-256 (template L-2), certificate at NV 0x01c0000a.
    EccP256,
}

impl EkKind {
    fn selection(self) -> AsymmetricAlgorithmSelection {
        match self {
            EkKind::Rsa2048 => AsymmetricAlgorithmSelection::Rsa(RsaKeyBits::Rsa2048),
            EkKind::EccP256 => AsymmetricAlgorithmSelection::Ecc(EccCurve::NistP256),
        }
    }
}

impl std::fmt::Display for EkKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            EkKind::Rsa2048 => "RSA 2048 EK (NV 0x01c00002)",
            EkKind::EccP256 => "ECC P-256 EK (NV 0x01c0000a)",
        })
    }
}

/// An open connection with the storage primary key loaded, and the most recently used keys
/// kept loaded (least recently used first) within the object budget.
struct Open {
    ctx: Context,
    primary: KeyHandle,
    /// The storage primary key's Name: the health probe checks it is still there.
    primary_name: Vec<u8>,
    /// The enrolled AK's Name (hex), checked whenever the AK is re-created.
    ak_name: Option<String>,
    loaded: Vec<([u8; 32], KeyHandle)>,
    /// Keys that may stay loaded: the budget minus the storage primary.
    capacity: usize,
    /// The log head NV index, opened once per connection (ESYS handle, data size): each
    /// record write is then one TPM command rather than four.
    log_head_index: Option<(tss_esapi::handles::NvIndexHandle, usize)>,
}

/// The TPM backend for one TPM.
pub struct TpmBackend {
    tcti: String,
    max_objects: usize,
    open: Mutex<Option<Open>>,
    /// The identity every connection must show (unset while enrolling).
    expected: OnceLock<TpmIdentity>,
    /// The last connection attempt found another TPM (to log changes, not every attempt).
    not_ours: AtomicBool,
}

impl std::fmt::Debug for TpmBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TpmBackend")
            .field("tcti", &self.tcti)
            .finish_non_exhaustive()
    }
}

fn failed(operation: &'static str) -> impl Fn(tss_esapi::Error) -> BackendError {
    move |e| BackendError::Failed {
        operation,
        detail: e.to_string(),
    }
}

fn object_attributes(
    restricted: bool,
    decrypt: bool,
    sign: bool,
) -> Result<ObjectAttributes, BackendError> {
    ObjectAttributesBuilder::new()
        .with_fixed_tpm(true)
        .with_fixed_parent(true)
        .with_sensitive_data_origin(true)
        .with_user_with_auth(true)
        .with_no_da(true)
        .with_restricted(restricted)
        .with_decrypt(decrypt)
        .with_sign_encrypt(sign)
        .build()
        .map_err(failed("template"))
}

fn ecc_template(
    attributes: ObjectAttributes,
    parameters: tss_esapi::structures::PublicEccParameters,
) -> Result<Public, BackendError> {
    PublicBuilder::new()
        .with_public_algorithm(PublicAlgorithm::Ecc)
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_object_attributes(attributes)
        .with_ecc_parameters(parameters)
        .with_ecc_unique_identifier(EccPoint::default())
        .build()
        .map_err(failed("template"))
}

/// The storage primary key: ECC P-256, restricted decryption, AES-128-CFB.
pub fn storage_template() -> Result<Public, BackendError> {
    ecc_template(
        object_attributes(true, true, false)?,
        PublicEccParametersBuilder::new_restricted_decryption_key(
            SymmetricDefinitionObject::AES_128_CFB,
            EccCurve::NistP256,
        )
        .build()
        .map_err(failed("template"))?,
    )
}

fn ecdsa_sha256() -> EccScheme {
    EccScheme::EcDsa(HashScheme::new(HashingAlgorithm::Sha256))
}

/// An actor key: ECDSA P-256, unrestricted signing.
fn actor_template() -> Result<Public, BackendError> {
    ecc_template(
        object_attributes(false, false, true)?,
        PublicEccParametersBuilder::new_unrestricted_signing_key(
            ecdsa_sha256(),
            EccCurve::NistP256,
        )
        .build()
        .map_err(failed("template"))?,
    )
}

/// The attestation key: ECDSA P-256, restricted signing.
pub fn ak_template() -> Result<Public, BackendError> {
    ecc_template(
        object_attributes(true, false, true)?,
        PublicEccParametersBuilder::new()
            .with_ecc_scheme(ecdsa_sha256())
            .with_curve(EccCurve::NistP256)
            .with_is_signing_key(true)
            .with_is_decryption_key(false)
            .with_restricted(true)
            .with_key_derivation_function_scheme(
                tss_esapi::structures::KeyDerivationFunctionScheme::Null,
            )
            .with_symmetric(SymmetricDefinitionObject::Null)
            .build()
            .map_err(failed("template"))?,
    )
}

/// The P-256 public key in an ECC public area.
fn public_key_of(public: &Public) -> Result<p256::PublicKey, BackendError> {
    let Public::Ecc { unique, .. } = public else {
        return Err(BackendError::KeyRefused("not an ECC key".into()));
    };
    let pad = |v: &[u8]| -> Option<[u8; 32]> {
        if v.len() > 32 {
            return None;
        }
        let mut out = [0u8; 32];
        out[32 - v.len()..].copy_from_slice(v);
        Some(out)
    };
    let (Some(x), Some(y)) = (pad(unique.x().value()), pad(unique.y().value())) else {
        return Err(BackendError::KeyRefused("ECC point is not P-256".into()));
    };
    let mut sec1 = vec![0x04];
    sec1.extend_from_slice(&x);
    sec1.extend_from_slice(&y);
    p256::PublicKey::from_sec1_bytes(&sec1)
        .map_err(|_| BackendError::KeyRefused("ECC point is not on P-256".into()))
}

/// An ECDSA signature from the TPM as a P-256 signature (r and s may come back short).
fn signature_of(signature: tss_esapi::structures::Signature) -> Result<Signature, BackendError> {
    let tss_esapi::structures::Signature::EcDsa(ecc) = signature else {
        return Err(BackendError::Failed {
            operation: "sign",
            detail: "the TPM returned a signature that is not ECDSA".into(),
        });
    };
    let mut rs = [0u8; 64];
    let (r, s) = (ecc.signature_r().value(), ecc.signature_s().value());
    if r.len() > 32 || s.len() > 32 {
        return Err(BackendError::Failed {
            operation: "sign",
            detail: "ECDSA r or s longer than 32 bytes".into(),
        });
    }
    rs[32 - r.len()..32].copy_from_slice(r);
    rs[64 - s.len()..].copy_from_slice(s);
    Signature::from_slice(&rs).map_err(|_| BackendError::Failed {
        operation: "sign",
        detail: "the TPM returned a malformed ECDSA signature".into(),
    })
}

fn null_ticket() -> Result<HashcheckTicket, BackendError> {
    HashcheckTicket::try_from(TPMT_TK_HASHCHECK {
        tag: TPM2_ST_HASHCHECK,
        hierarchy: TPM2_RH_NULL,
        digest: Default::default(),
    })
    .map_err(failed("sign"))
}

/// A stored key: its public area and private blob, as named by its [`KeyRef`].
struct Blobs {
    public: Public,
    public_area: Vec<u8>,
    private: Private,
}

fn key_ref_of(public_area: &[u8], private: &Private) -> KeyRef {
    KeyRef(format!(
        "{KEY_REF_PREFIX}{}.{}",
        hex::encode(public_area),
        hex::encode(private.value())
    ))
}

fn blobs_of(key: &KeyRef) -> Result<Blobs, BackendError> {
    let bad = || BackendError::KeyNotFound(format!("{:.24}… is not a TPM key reference", key.0));
    let rest = key.0.strip_prefix(KEY_REF_PREFIX).ok_or_else(bad)?;
    let (public_hex, private_hex) = rest.split_once('.').ok_or_else(bad)?;
    let public_area = hex::decode(public_hex).map_err(|_| bad())?;
    let public = Public::unmarshall(&public_area).map_err(|_| bad())?;
    let private =
        Private::try_from(hex::decode(private_hex).map_err(|_| bad())?).map_err(|_| bad())?;
    Ok(Blobs {
        public,
        public_area,
        private,
    })
}

impl Open {
    /// Connects; checks the TPM's identity (when one is expected) before touching anything
    /// in it; then flushes leftovers and re-creates the storage primary key.
    fn connect(
        tcti: &str,
        max_objects: usize,
        expected: Option<&TpmIdentity>,
    ) -> Result<Self, BackendError> {
        let conf = TctiNameConf::from_str(tcti)
            .map_err(|e| BackendError::Unavailable(format!("TCTI {tcti:?}: {e}")))?;
        let mut ctx = Context::new(conf)
            .map_err(|e| BackendError::Unavailable(format!("cannot open TPM at {tcti}: {e}")))?;
        if let Some(expected) = expected {
            identity::check(&mut ctx, expected, tcti)?;
        }
        flush_transient(&mut ctx);
        let template = storage_template()?;
        let primary = ctx
            .execute_with_session(Some(AuthSession::Password), |ctx| {
                ctx.create_primary(Hierarchy::Owner, template, None, None, None, None)
            })
            .map_err(|e| {
                BackendError::Unavailable(format!("storage primary key on {tcti}: {e}"))
            })?;
        let primary_name = name_of(
            &primary
                .out_public
                .marshall()
                .map_err(failed("storage primary key"))?,
        );
        Ok(Open {
            ctx,
            primary: primary.key_handle,
            primary_name,
            ak_name: expected.map(|e| e.ak_name.clone()),
            loaded: Vec::new(),
            capacity: max_objects.saturating_sub(1).max(1),
            log_head_index: None,
        })
    }

    /// Checks that the storage primary key is still loaded and is ours: after a TPM restart
    /// or swap under this connection it is gone (or another object has its handle).
    fn check_primary(&mut self) -> Result<(), BackendError> {
        let primary = self.primary;
        let (_, name, _) = self
            .ctx
            .execute_without_session(|ctx| ctx.read_public(primary))
            .map_err(|e| BackendError::Unavailable(format!("TPM does not answer: {e}")))?;
        if name.value() != self.primary_name.as_slice() {
            return Err(BackendError::Unavailable(
                "the TPM no longer holds this connection's storage primary key".into(),
            ));
        }
        Ok(())
    }

    /// Flushes every cached key: before commands that need several objects at once.
    fn evict_all(&mut self) {
        for (_, handle) in std::mem::take(&mut self.loaded) {
            let _ = self.ctx.flush_context(ObjectHandle::from(handle));
        }
    }

    /// Runs `f` with a stored key loaded, loading it unless it still is (evicting the least
    /// recently used key when the budget is full). The key stays loaded for the next call.
    fn with_cached_key<T>(
        &mut self,
        blobs: &Blobs,
        f: impl FnOnce(&mut Context, KeyHandle) -> Result<T, BackendError>,
    ) -> Result<T, BackendError> {
        let id: [u8; 32] = Sha256::digest(&blobs.public_area).into();
        let handle = match self.loaded.iter().position(|(k, _)| *k == id) {
            Some(at) => {
                let entry = self.loaded.remove(at);
                self.loaded.push(entry);
                entry.1
            }
            None => {
                if self.loaded.len() >= self.capacity {
                    let (_, oldest) = self.loaded.remove(0);
                    let _ = self.ctx.flush_context(ObjectHandle::from(oldest));
                }
                let primary = self.primary;
                let handle = self
                    .ctx
                    .execute_with_session(Some(AuthSession::Password), |ctx| {
                        ctx.load(primary, blobs.private.clone(), blobs.public.clone())
                    })
                    .map_err(failed("load"))?;
                self.loaded.push((id, handle));
                handle
            }
        };
        f(&mut self.ctx, handle)
    }

    /// Loads a stored key with nothing else cached, runs `f` with it and flushes it whatever
    /// happened: room for the AK beside it.
    fn with_key<T>(
        &mut self,
        blobs: &Blobs,
        f: impl FnOnce(&mut Context, KeyHandle) -> Result<T, BackendError>,
    ) -> Result<T, BackendError> {
        self.evict_all();
        let primary = self.primary;
        let handle = self
            .ctx
            .execute_with_session(Some(AuthSession::Password), |ctx| {
                ctx.load(primary, blobs.private.clone(), blobs.public.clone())
            })
            .map_err(failed("load"))?;
        let result = f(&mut self.ctx, handle);
        let _ = self.ctx.flush_context(ObjectHandle::from(handle));
        result
    }

    /// Creates the AK (a primary key: the same key each time), runs `f`, flushes it.
    fn with_ak<T>(
        &mut self,
        f: impl FnOnce(&mut Context, KeyHandle, &Public) -> Result<T, BackendError>,
    ) -> Result<T, BackendError> {
        self.evict_all();
        let template = ak_template()?;
        let created = self
            .ctx
            .execute_with_session(Some(AuthSession::Password), |ctx| {
                ctx.create_primary(Hierarchy::Endorsement, template, None, None, None, None)
            })
            .map_err(failed("create attestation key"))?;
        let result = check_ak(self.ak_name.as_deref(), &created.out_public)
            .and_then(|()| f(&mut self.ctx, created.key_handle, &created.out_public));
        let _ = self
            .ctx
            .flush_context(ObjectHandle::from(created.key_handle));
        result
    }
}

/// A re-created AK must be the enrolled one (Name `expected`, hex): the TPM may have been
/// swapped since the connection was checked.
fn check_ak(expected: Option<&str>, public: &Public) -> Result<(), BackendError> {
    let Some(expected) = expected else {
        return Ok(());
    };
    let name = hex::encode(name_of(
        &public.marshall().map_err(failed("read attestation key"))?,
    ));
    if name != expected {
        return Err(BackendError::Unavailable(format!(
            "{}: the attestation key is not the enrolled one",
            identity::MISMATCH
        )));
    }
    Ok(())
}

/// Flushes transient objects a killed client left in the TPM (without a resource manager
/// they stay loaded and the TPM soon runs out of object slots).
fn flush_transient(ctx: &mut Context) {
    let Ok((CapabilityData::Handles(handles), _)) = ctx.execute_without_session(|ctx| {
        ctx.get_capability(CapabilityType::Handles, TPM2_TRANSIENT_FIRST, 32)
    }) else {
        return;
    };
    for handle in handles.into_inner() {
        if let Ok(object) = ctx.execute_without_session(|ctx| ctx.tr_from_tpm_public(handle)) {
            let _ = ctx.flush_context(object);
        }
    }
}

impl TpmBackend {
    /// Connects to the TPM and re-creates the storage primary key.
    /// Connects to the TPM (checking its identity when the settings give one) and
    /// re-creates the storage primary key.
    pub fn open(settings: &TpmSettings) -> Result<Self, BackendError> {
        let expected = OnceLock::new();
        if let Some(identity) = &settings.identity {
            let _ = expected.set(identity.clone());
        }
        let backend = TpmBackend {
            tcti: settings.tcti.clone(),
            max_objects: settings.max_objects,
            open: Mutex::new(None),
            expected,
            not_ours: AtomicBool::new(false),
        };
        let open = backend.connect()?;
        *backend.lock() = Some(open);
        Ok(backend)
    }

    /// Pins the identity of the TPM now connected (its AK's Name) for a TPM enrolled before
    /// identities were recorded; the caller checks that AK against the installed AK
    /// certificate. Later connections must show the same AK.
    pub fn pin_identity(&self) -> Result<TpmIdentity, BackendError> {
        let (_, area) = self.attestation_key()?;
        let identity = TpmIdentity {
            ak_name: hex::encode(name_of(&area)),
            ek: None,
        };
        let pinned = self.expected.get_or_init(|| identity.clone()).clone();
        // The next command reconnects, and that connection is checked.
        *self.lock() = None;
        Ok(pinned)
    }

    /// Opens a connection, checking the identity; logs when the TPM stops or starts being ours.
    fn connect(&self) -> Result<Open, BackendError> {
        let result = Open::connect(&self.tcti, self.max_objects, self.expected.get());
        match &result {
            Err(e) if identity::is_mismatch(e) && !self.not_ours.swap(true, Ordering::Relaxed) => {
                tracing::error!(tcti = %self.tcti, error = %e, "not the enrolled TPM: refusing to use it");
            }
            Ok(_) if self.not_ours.swap(false, Ordering::Relaxed) => {
                tracing::info!(tcti = %self.tcti, "the enrolled TPM is back: identity verified");
            }
            _ => {}
        }
        result
    }

    fn lock(&self) -> MutexGuard<'_, Option<Open>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs TPM commands; on failure reconnects once (a restarted TPM has dropped the
    /// connection and its transient objects) and tries again.
    fn run<T>(
        &self,
        mut f: impl FnMut(&mut Open) -> Result<T, BackendError>,
    ) -> Result<T, BackendError> {
        let mut guard = self.lock();
        if let Some(open) = guard.as_mut() {
            match f(open) {
                Ok(value) => return Ok(value),
                Err(e) => {
                    tracing::debug!(error = %e, "TPM command failed; reconnecting once");
                    *guard = None;
                }
            }
        }
        let mut open = self.connect()?;
        let result = f(&mut open);
        *guard = Some(open);
        result
    }

    /// The AK's public key and public area.
    pub fn attestation_key(&self) -> Result<(HardwareKey, Vec<u8>), BackendError> {
        self.run(|open| {
            open.with_ak(|_, _, public| {
                let area = public.marshall().map_err(failed("read attestation key"))?;
                Ok((
                    HardwareKey {
                        key_ref: KeyRef(AK_KEY_REF.into()),
                        public_key: public_key_of(public)?,
                    },
                    area,
                ))
            })
        })
    }

    /// The EK certificate the manufacturer stored in NV for an EK kind.
    pub fn ek_certificate(&self, kind: EkKind) -> Result<Vec<u8>, BackendError> {
        self.run(|open| {
            tss_esapi::abstraction::ek::retrieve_ek_pubcert(&mut open.ctx, kind.selection())
                .map_err(|e| BackendError::Failed {
                    operation: "read EK certificate",
                    detail: format!("{kind}: {e}"),
                })
        })
    }

    /// The public area of the EK of a kind, as the TPM derives it from the default template
    /// (for tests and diagnostics; enrollment trusts the certificate's key, not this).
    pub fn ek_public(&self, kind: EkKind) -> Result<Vec<u8>, BackendError> {
        self.run(|open| {
            open.evict_all();
            let ek = tss_esapi::abstraction::ek::create_ek_object_2(
                &mut open.ctx,
                kind.selection(),
                None,
            )
            .map_err(failed("create EK"))?;
            let public = open
                .ctx
                .execute_without_session(|ctx| ctx.read_public(ek))
                .map_err(failed("read EK"));
            let _ = open.ctx.flush_context(ObjectHandle::from(ek));
            public?.0.marshall().map_err(failed("read EK"))
        })
    }

    /// TPM2_ActivateCredential: the TPM releases the credential only if it holds the EK's
    /// private key and the AK named in the credential. `id_object` is the TPM2B_ID_OBJECT's
    /// contents, `secret` the TPM2B_ENCRYPTED_SECRET's.
    pub fn activate_credential(
        &self,
        kind: EkKind,
        id_object: &[u8],
        secret: &[u8],
    ) -> Result<Vec<u8>, BackendError> {
        let id_object = IdObject::try_from(id_object.to_vec()).map_err(failed("activate"))?;
        let secret = EncryptedSecret::try_from(secret.to_vec()).map_err(failed("activate"))?;
        self.run(|open| {
            open.evict_all();
            let ek = tss_esapi::abstraction::ek::create_ek_object_2(
                &mut open.ctx,
                kind.selection(),
                None,
            )
            .map_err(failed("create EK"))?;
            let result = open.with_ak(|ctx, ak, _| {
                let session = ctx
                    .execute_without_session(|ctx| {
                        ctx.start_auth_session(
                            None,
                            None,
                            None,
                            SessionType::Policy,
                            SymmetricDefinition::AES_128_CFB,
                            HashingAlgorithm::Sha256,
                        )
                    })
                    .map_err(failed("policy session"))?
                    .ok_or_else(|| BackendError::Failed {
                        operation: "policy session",
                        detail: "no session returned".into(),
                    })?;
                let activated = (|| {
                    let policy = PolicySession::try_from(session).map_err(failed("policy"))?;
                    ctx.execute_with_session(Some(AuthSession::Password), |ctx| {
                        ctx.policy_secret(
                            policy,
                            AuthHandle::Endorsement,
                            Default::default(),
                            Default::default(),
                            Default::default(),
                            None,
                        )
                    })
                    .map_err(failed("PolicySecret(endorsement)"))?;
                    ctx.execute_with_sessions(
                        (Some(AuthSession::Password), Some(session), None),
                        |ctx| ctx.activate_credential(ak, ek, id_object.clone(), secret.clone()),
                    )
                    .map_err(failed("activate credential"))
                })();
                let _ = ctx.flush_context(SessionHandle::from(session).into());
                activated
            });
            let _ = open.ctx.flush_context(ObjectHandle::from(ek));
            result.map(|digest| digest.value().to_vec())
        })
    }

    /// TPM2_Certify of a stored key by the AK, with `qualifying_data` as extraData.
    pub fn certify_with_ak(
        &self,
        key: &KeyRef,
        qualifying_data: &[u8],
    ) -> Result<Certification, BackendError> {
        let blobs = blobs_of(key)?;
        let data = Data::try_from(qualifying_data.to_vec()).map_err(failed("certify"))?;
        let (attest, signature, ak_public) = self.run(|open| {
            let enrolled_ak = open.ak_name.clone();
            // Load the key first, then the AK: three objects (primary, key, AK) at most.
            open.with_key(&blobs, |ctx, key_handle| {
                let template = ak_template()?;
                let ak = ctx
                    .execute_with_session(Some(AuthSession::Password), |ctx| {
                        ctx.create_primary(Hierarchy::Endorsement, template, None, None, None, None)
                    })
                    .map_err(failed("create attestation key"))?;
                if let Err(e) = check_ak(enrolled_ak.as_deref(), &ak.out_public) {
                    let _ = ctx.flush_context(ObjectHandle::from(ak.key_handle));
                    return Err(e);
                }
                let certified = ctx
                    .execute_with_sessions(
                        (
                            Some(AuthSession::Password),
                            Some(AuthSession::Password),
                            None,
                        ),
                        |ctx| {
                            ctx.certify(
                                ObjectHandle::from(key_handle),
                                ak.key_handle,
                                data.clone(),
                                SignatureScheme::Null,
                            )
                        },
                    )
                    .map_err(failed("certify"));
                let _ = ctx.flush_context(ObjectHandle::from(ak.key_handle));
                let (attest, signature) = certified?;
                Ok((attest, signature, ak.out_public))
            })
        })?;
        let attest = attest.marshall().map_err(failed("certify"))?;
        let signature = signature_of(signature)?;
        let ak_key = public_key_of(&ak_public)?;
        let digest: [u8; 32] = Sha256::digest(&attest).into();
        check_signature(&ak_key, &digest, &signature)?;
        Ok(Certification {
            attest,
            signature,
            public_area: blobs.public_area,
            ak_public_area: ak_public.marshall().map_err(failed("certify"))?,
        })
    }

    /// TPM2_Sign with the cached key; `check` verifies the signature here (with `p256`), so
    /// that a bad one (another TPM's key under a reused handle) makes `run` reconnect, and
    /// the new connection checks the TPM's identity. Unchecked, the caller checks.
    fn sign_with(
        &self,
        key: &HardwareKey,
        digest: &[u8; 32],
        check: bool,
    ) -> Result<Signature, BackendError> {
        let blobs = blobs_of(&key.key_ref)?;
        let ticket = null_ticket()?;
        let tpm_digest = Digest::try_from(digest.to_vec()).map_err(failed("sign"))?;
        self.run(|open| {
            open.with_cached_key(&blobs, |ctx, handle| {
                ctx.execute_with_session(Some(AuthSession::Password), |ctx| {
                    ctx.sign(
                        handle,
                        tpm_digest.clone(),
                        SignatureScheme::Null,
                        ticket.clone(),
                    )
                })
                .map_err(failed("sign"))
            })
            .and_then(signature_of)
            .and_then(|signature| {
                if check {
                    check_signature(&key.public_key, digest, &signature)?;
                }
                Ok(signature)
            })
        })
    }
}

impl Backend for TpmBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Tpm
    }

    fn create_key(&self, _label: &str) -> Result<HardwareKey, BackendError> {
        let template = actor_template()?;
        let created = self.run(|open| {
            let primary = open.primary;
            let template = template.clone();
            open.ctx
                .execute_with_session(Some(AuthSession::Password), |ctx| {
                    ctx.create(primary, template, None, None, None, None)
                })
                .map_err(failed("create key"))
        })?;
        let public_area = created
            .out_public
            .marshall()
            .map_err(failed("create key"))?;
        Ok(HardwareKey {
            key_ref: key_ref_of(&public_area, &created.out_private),
            public_key: public_key_of(&created.out_public)?,
        })
    }

    fn adopt_key(&self, selector: &KeySelector) -> Result<HardwareKey, BackendError> {
        Err(BackendError::KeyRefused(format!(
            "cannot adopt {selector}: TPM actor keys are created by the daemon (CreateKey)"
        )))
    }

    fn sign_digest(&self, key: &HardwareKey, digest: &[u8; 32]) -> Result<Signature, BackendError> {
        self.sign_with(key, digest, true)
    }

    fn sign_digest_unchecked(
        &self,
        key: &HardwareKey,
        digest: &[u8; 32],
    ) -> Result<Signature, BackendError> {
        self.sign_with(key, digest, false)
    }

    fn key_evidence(&self, key: &KeyRef) -> Result<KeyEvidence, BackendError> {
        let blobs = blobs_of(key)?;
        Ok(KeyEvidence::Tpm(TpmKeyFacts {
            name: hex::encode(name_of(&blobs.public_area)),
            attributes: TpmKeyAttributes::of(blobs.public.object_attributes()),
            public_area: blobs.public_area,
        }))
    }

    fn destroy_key(&self, key: &KeyRef) -> Result<(), BackendError> {
        // The key exists only as blobs in the daemon's state: forgetting them destroys it
        // (once it is no longer loaded).
        let blobs = blobs_of(key)?;
        let id: [u8; 32] = Sha256::digest(&blobs.public_area).into();
        if let Some(open) = self.lock().as_mut()
            && let Some(at) = open.loaded.iter().position(|(k, _)| *k == id)
        {
            let (_, handle) = open.loaded.remove(at);
            let _ = open.ctx.flush_context(ObjectHandle::from(handle));
        }
        Ok(())
    }

    fn certify(&self, key: &KeyRef, qualifying_data: &[u8]) -> Result<Certification, BackendError> {
        self.certify_with_ak(key, qualifying_data)
    }

    fn device_key(&self, _create: bool) -> Result<HardwareKey, BackendError> {
        self.attestation_key().map(|(key, _)| key)
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

    fn health(&self) -> Result<(), BackendError> {
        self.run(Open::check_primary)
    }
}
