//! The witness's Ed25519 key in a PKCS#11 token (`CKM_EC_EDWARDS_KEY_PAIR_GEN`, `CKM_EDDSA`;
//! SoftHSM 2.6 has both). The private key never leaves the token.

use std::sync::Mutex;

use cryptoki::{
    context::Pkcs11,
    error::{Error as CkError, RvError},
    mechanism::{
        Mechanism,
        eddsa::{EddsaParams, EddsaSignatureScheme},
    },
    object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle},
    session::{Session, UserType},
    types::AuthPin,
};

use super::{WitnessError, config::WitnessPkcs11};
use crate::backend::pkcs11::{TokenSelector, find_token, load_module, signing_key_pair_templates};

/// DER of the OID id-Ed25519 (1.3.101.112), as CKA_EC_PARAMS holds it.
const ED25519_EC_PARAMS: [u8; 5] = [0x06, 0x03, 0x2b, 0x65, 0x70];

/// A logged-in session on the witness's token and its key.
pub struct TokenKey {
    // Dropped before the context: the session's handle belongs to it.
    session: Mutex<Session>,
    private: ObjectHandle,
    public: [u8; 32],
    _ctx: Pkcs11,
}

fn failed(operation: &str, e: CkError) -> WitnessError {
    WitnessError::Token(format!("{operation}: {e}"))
}

fn open(config: &WitnessPkcs11) -> Result<(Pkcs11, Session), WitnessError> {
    let ctx = load_module(&config.module).map_err(|e| WitnessError::Token(e.to_string()))?;
    let (slot, _) = find_token(&ctx, &TokenSelector::Label(config.token_label.clone()))
        .map_err(|e| WitnessError::Token(e.to_string()))?;
    let session = ctx
        .open_rw_session(slot)
        .map_err(|e| failed("C_OpenSession", e))?;
    let pin = config
        .pin
        .read()
        .map_err(|e| WitnessError::Token(format!("witness PIN ({}): {e}", config.pin)))?;
    match session.login(
        UserType::User,
        Some(&AuthPin::from(pin.as_str().to_owned())),
    ) {
        Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
        Err(e) => return Err(failed("C_Login", e)),
    }
    Ok((ctx, session))
}

fn find(
    session: &Session,
    class: ObjectClass,
    label: &str,
) -> Result<Vec<ObjectHandle>, WitnessError> {
    session
        .find_objects(&[
            Attribute::Class(class),
            Attribute::KeyType(KeyType::EC_EDWARDS),
            Attribute::Label(label.as_bytes().to_vec()),
        ])
        .map_err(|e| failed("C_FindObjects", e))
}

/// CKA_EC_POINT of an Ed25519 key: the 32 bytes, bare or in a DER OCTET STRING.
fn decode_point(raw: &[u8]) -> Result<[u8; 32], WitnessError> {
    let bare = match raw {
        [0x04, 0x20, rest @ ..] if rest.len() == 32 => rest,
        _ => raw,
    };
    bare.try_into().map_err(|_| {
        WitnessError::Token(format!(
            "CKA_EC_POINT of {} bytes is no Ed25519 key",
            raw.len()
        ))
    })
}

impl TokenKey {
    /// Generates the witness key (label `config.key_label`) in the token; refuses if one is
    /// there already (a witness's key is its identity: it is never replaced silently).
    pub fn generate(config: &WitnessPkcs11) -> Result<[u8; 32], WitnessError> {
        let (_ctx, session) = open(config)?;
        if !find(&session, ObjectClass::PUBLIC_KEY, &config.key_label)?.is_empty() {
            return Err(WitnessError::Token(format!(
                "the token already holds a witness key labelled {:?}",
                config.key_label
            )));
        }
        let (public, private) = signing_key_pair_templates(
            KeyType::EC_EDWARDS,
            &ED25519_EC_PARAMS,
            config.key_label.as_bytes(),
            b"actseal-witness",
        );
        let (public, _) = session
            .generate_key_pair(&Mechanism::EccEdwardsKeyPairGen, &public, &private)
            .map_err(|e| failed("C_GenerateKeyPair (Ed25519)", e))?;
        public_point(&session, public)
    }

    /// Opens the token and finds the witness key.
    pub fn open(config: &WitnessPkcs11) -> Result<Self, WitnessError> {
        let (ctx, session) = open(config)?;
        let one = |class, what: &str| -> Result<ObjectHandle, WitnessError> {
            let found = find(&session, class, &config.key_label)?;
            match found.as_slice() {
                [handle] => Ok(*handle),
                [] => Err(WitnessError::Token(format!(
                    "no Ed25519 {what} labelled {:?} in the token (run `actseal witness init`)",
                    config.key_label
                ))),
                _ => Err(WitnessError::Token(format!(
                    "several Ed25519 {what}s labelled {:?}",
                    config.key_label
                ))),
            }
        };
        let public_handle = one(ObjectClass::PUBLIC_KEY, "public key")?;
        let private = one(ObjectClass::PRIVATE_KEY, "private key")?;
        let public = public_point(&session, public_handle)?;
        let key = TokenKey {
            session: Mutex::new(session),
            private,
            public,
            _ctx: ctx,
        };
        // A key that signs what its public half does not verify must not cosign anything.
        let probe = key.sign(b"actseal witness start-up check")?;
        let verifying = ed25519_dalek::VerifyingKey::from_bytes(&key.public)
            .map_err(|_| WitnessError::Token("the public key is not a valid point".into()))?;
        verifying
            .verify_strict(
                b"actseal witness start-up check",
                &ed25519_dalek::Signature::from_bytes(&probe),
            )
            .map_err(|_| WitnessError::Token("the token's signature does not verify".into()))?;
        Ok(key)
    }

    /// The raw Ed25519 public key.
    pub fn public(&self) -> [u8; 32] {
        self.public
    }

    /// Signs `message` (pure Ed25519).
    pub fn sign(&self, message: &[u8]) -> Result<[u8; 64], WitnessError> {
        let session = self.session.lock().unwrap_or_else(|p| p.into_inner());
        let signature = session
            .sign(
                &Mechanism::Eddsa(EddsaParams::new(EddsaSignatureScheme::Pure)),
                self.private,
                message,
            )
            .map_err(|e| failed("C_Sign (EdDSA)", e))?;
        signature
            .try_into()
            .map_err(|_| WitnessError::Token("the token's EdDSA signature is not 64 bytes".into()))
    }
}

fn public_point(session: &Session, handle: ObjectHandle) -> Result<[u8; 32], WitnessError> {
    let attrs = session
        .get_attributes(handle, &[AttributeType::EcPoint])
        .map_err(|e| failed("C_GetAttributeValue", e))?;
    let raw = attrs
        .into_iter()
        .find_map(|a| match a {
            Attribute::EcPoint(p) => Some(p),
            _ => None,
        })
        .ok_or_else(|| WitnessError::Token("the witness key has no CKA_EC_POINT".into()))?;
    decode_point(&raw)
}
