//! Is the TPM at the configured address the enrolled one? `actseal enroll` records the Names
//! of its attestation key (AK) and endorsement key (EK); every connection must show both
//! again before the daemon creates or loads a key in it or flushes its leftovers. The AK, re-created from
//! its fixed template, must also sign a fresh challenge (TPM2_Certify of itself over a random
//! nonce): a TPM that merely returns the recorded public area cannot.
//!
//! Both keys are derived from the TPM's endorsement seed, so another TPM (another swtpm state,
//! a re-pointed TCTI, a replaced chip) shows other Names.

use rand_core::{OsRng, RngCore};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use tss_esapi::{
    Context,
    handles::{KeyHandle, ObjectHandle},
    interface_types::{resource_handles::Hierarchy, session_handles::AuthSession},
    structures::{Data, Public, SignatureScheme},
    traits::Marshall,
};

use super::{EkKind, ak_template, name_of, public_key_of, signature_of};
use crate::backend::{BackendError, check_signature};

/// Start of the message of every refusal of a TPM that is not the enrolled one.
pub const MISMATCH: &str = "TPM identity mismatch";

/// The EK an identity names: which of the TCG default EKs, and its Name (hex).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EkName {
    pub kind: EkKind,
    pub name: String,
}

/// What makes a TPM ours, as `actseal enroll` recorded it (`tpm-identity.json` in the state
/// directory). Names are `000b || SHA-256(TPMT_PUBLIC)`, hex.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TpmIdentity {
    pub ak_name: String,
    /// Absent only for a TPM enrolled before EK Names were recorded: then the AK alone
    /// (pinned at start-up against the installed AK certificate) identifies it.
    pub ek: Option<EkName>,
}

impl TpmIdentity {
    /// Parses a recorded identity, checking that both Names are SHA-256 Names.
    pub fn from_json(text: &str) -> Result<Self, String> {
        let identity: TpmIdentity =
            serde_json::from_str(text).map_err(|e| format!("not a TPM identity record: {e}"))?;
        let names = std::iter::once(&identity.ak_name).chain(identity.ek.as_ref().map(|e| &e.name));
        for name in names {
            let sha256_name = name.len() == 68
                && name.starts_with("000b")
                && name.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
            if !sha256_name {
                return Err(format!(
                    "{name:?} is not a SHA-256 TPM Name (000b + 64 hex digits)"
                ));
            }
        }
        Ok(identity)
    }
}

/// The first 16 hex digits of a Name after its algorithm: enough to tell two apart.
fn short(name: &str) -> &str {
    name.get(4..20).unwrap_or(name)
}

fn tpm_error(operation: &'static str) -> impl Fn(tss_esapi::Error) -> BackendError {
    move |e| BackendError::Unavailable(format!("checking the TPM's identity: {operation}: {e}"))
}

/// Checks the TPM on `ctx` against `expected`: `Ok` if it is ours, UNAVAILABLE naming the
/// mismatch if not. TPM errors (a killed client's objects filling the TPM) get one retry
/// after flushing transient objects; a mismatch changes nothing in the other TPM.
pub(super) fn check(
    ctx: &mut Context,
    expected: &TpmIdentity,
    tcti: &str,
) -> Result<(), BackendError> {
    let verdict = match verdict(ctx, expected) {
        Ok(verdict) => verdict,
        Err(e) => {
            tracing::debug!(error = %e, "TPM identity check failed; flushing leftovers and retrying");
            super::flush_transient(ctx);
            verdict(ctx, expected)?
        }
    };
    verdict.map_err(|why| {
        BackendError::Unavailable(format!(
            "{MISMATCH}: the TPM at {tcti} is not the enrolled one ({why}); nothing is done with it until the enrolled TPM answers there"
        ))
    })
}

/// Whether an error is a refusal of a TPM that is not ours.
pub fn is_mismatch(e: &BackendError) -> bool {
    matches!(e, BackendError::Unavailable(m) if m.starts_with(MISMATCH))
}

/// The comparison: `Err` for TPM errors, `Ok(Err(why))` for another TPM.
fn verdict(ctx: &mut Context, expected: &TpmIdentity) -> Result<Result<(), String>, BackendError> {
    if let Err(why) = ak_matches(ctx, &expected.ak_name)? {
        return Ok(Err(why));
    }
    match &expected.ek {
        Some(ek) => ek_matches(ctx, ek),
        None => Ok(Ok(())),
    }
}

fn ak_matches(ctx: &mut Context, expected: &str) -> Result<Result<(), String>, BackendError> {
    let template = ak_template()?;
    let ak = ctx
        .execute_with_session(Some(AuthSession::Password), |ctx| {
            ctx.create_primary(Hierarchy::Endorsement, template, None, None, None, None)
        })
        .map_err(tpm_error("create attestation key"))?;
    let result = ak
        .out_public
        .marshall()
        .map_err(tpm_error("read attestation key"))
        .and_then(|area| {
            let name = hex::encode(name_of(&area));
            if name != expected {
                return Ok(Err(format!(
                    "its AK Name is {}…, enrollment recorded {}…",
                    short(&name),
                    short(expected)
                )));
            }
            proves_possession(ctx, ak.key_handle, &ak.out_public)
        });
    let _ = ctx.flush_context(ObjectHandle::from(ak.key_handle));
    result
}

/// Has the AK certify itself over a fresh nonce and checks the signature under its public key.
fn proves_possession(
    ctx: &mut Context,
    ak: KeyHandle,
    public: &Public,
) -> Result<Result<(), String>, BackendError> {
    let mut nonce = [0u8; 16];
    OsRng.fill_bytes(&mut nonce);
    let data = Data::try_from(nonce.to_vec()).map_err(tpm_error("challenge"))?;
    let (attest, signature) = ctx
        .execute_with_sessions(
            (
                Some(AuthSession::Password),
                Some(AuthSession::Password),
                None,
            ),
            |ctx| {
                ctx.certify(
                    ObjectHandle::from(ak),
                    ak,
                    data.clone(),
                    SignatureScheme::Null,
                )
            },
        )
        .map_err(tpm_error("certify a challenge"))?;
    let unproven = || Ok(Err("its AK did not sign a fresh challenge".to_owned()));
    if attest.extra_data().value() != nonce {
        return unproven();
    }
    let (Ok(bytes), Ok(signature)) = (attest.marshall(), signature_of(signature)) else {
        return unproven();
    };
    let digest: [u8; 32] = Sha256::digest(&bytes).into();
    match check_signature(&public_key_of(public)?, &digest, &signature) {
        Ok(()) => Ok(Ok(())),
        Err(_) => unproven(),
    }
}

fn ek_matches(ctx: &mut Context, expected: &EkName) -> Result<Result<(), String>, BackendError> {
    let ek = tss_esapi::abstraction::ek::create_ek_object_2(ctx, expected.kind.selection(), None)
        .map_err(tpm_error("create EK"))?;
    let public = ctx.execute_without_session(|ctx| ctx.read_public(ek));
    let _ = ctx.flush_context(ObjectHandle::from(ek));
    let area = public
        .map_err(tpm_error("read EK"))?
        .0
        .marshall()
        .map_err(tpm_error("read EK"))?;
    let name = hex::encode(name_of(&area));
    if name != expected.name {
        return Ok(Err(format!(
            "its {} Name is {}…, enrollment recorded {}…",
            expected.kind,
            short(&name),
            short(&expected.name)
        )));
    }
    Ok(Ok(()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_parse_and_bad_names_are_refused() {
        let name = format!("000b{}", "ab".repeat(32));
        let good = format!(r#"{{"akName":"{name}","ek":{{"kind":"ecc-p256","name":"{name}"}}}}"#);
        let identity = TpmIdentity::from_json(&good).unwrap();
        assert_eq!(identity.ek.unwrap().kind, EkKind::EccP256);
        for bad in [
            r#"{"akName":"000b12"}"#.to_owned(),
            format!(r#"{{"akName":"{}"}}"#, name.to_uppercase()),
            format!(r#"{{"akName":"{name}","extra":1}}"#),
            format!(r#"{{"akName":"{name}","ek":{{"kind":"dsa","name":"{name}"}}}}"#),
        ] {
            assert!(TpmIdentity::from_json(&bad).is_err(), "{bad}");
        }
    }
}
