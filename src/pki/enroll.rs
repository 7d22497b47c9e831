//! `actseal enroll`: proves to the operator's CA that the attestation key (AK) lives in the
//! same TPM as an endorsement key (EK) certified by the TPM's maker, then has the CA issue
//! the AK certificate.
//!
//! 1. The EK certificate is read from the TPM's NV and checked against the maker's CA
//!    certificates (signature by signature, up to a self-signed root in that file).
//! 2. The CA side runs TPM2_MakeCredential *in software* (TPM 2.0 Part 1 §24): a random
//!    secret, encrypted to the EK public key *from the certificate* and bound to the AK's
//!    Name. The seed is RSA-OAEP-encrypted (label "IDENTITY") to an RSA 2048 EK (NV
//!    0x01c00002), or shared by ephemeral ECDH and KDFe with an ECC P-256 EK (NV 0x01c0000a). A TPM that does not hold that EK's private key,
//!    or that does not hold an object with that Name, cannot recover it.
//! 3. The TPM runs TPM2_ActivateCredential; only if it returns the secret does the CA issue
//!    the AK certificate.

use std::path::Path;

use aes::cipher::{AsyncStreamCipher, KeyIvInit};
use der::{Decode, Encode};
use hmac::{Hmac, Mac};
use rand_core::{OsRng, RngCore};
use sha2::Sha256;
use x509_cert::Certificate;

use super::PkiError;
use crate::backend::tpm::{EkKind, EkName, TpmBackend, TpmIdentity, name_of};

const RSA_SHA256: der::asn1::ObjectIdentifier =
    der::asn1::ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.11");
const ECDSA_SHA256: der::asn1::ObjectIdentifier =
    der::asn1::ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.2");

fn invalid(message: impl Into<String>) -> PkiError {
    PkiError::Invalid(message.into())
}

/// Verifies `cert`'s signature with `issuer`'s key (RSA PKCS#1 v1.5 or ECDSA P-256, SHA-256).
fn signed_by(cert: &Certificate, issuer: &Certificate) -> Result<(), PkiError> {
    let tbs = cert
        .tbs_certificate
        .to_der()
        .map_err(|e| invalid(format!("certificate: {e}")))?;
    let signature = cert
        .signature
        .as_bytes()
        .ok_or_else(|| invalid("certificate signature has unused bits"))?;
    let spki = issuer
        .tbs_certificate
        .subject_public_key_info
        .to_der()
        .map_err(|e| invalid(format!("issuer key: {e}")))?;
    let oid = cert.signature_algorithm.oid;
    if oid == RSA_SHA256 {
        use rsa::{pkcs1v15, pkcs8::DecodePublicKey, signature::Verifier};
        let key = rsa::RsaPublicKey::from_public_key_der(&spki)
            .map_err(|e| invalid(format!("issuer key is not RSA: {e}")))?;
        let signature = pkcs1v15::Signature::try_from(signature)
            .map_err(|e| invalid(format!("RSA signature: {e}")))?;
        pkcs1v15::VerifyingKey::<Sha256>::new(key)
            .verify(&tbs, &signature)
            .map_err(|_| invalid("RSA signature does not verify"))
    } else if oid == ECDSA_SHA256 {
        use p256::ecdsa::{Signature, VerifyingKey, signature::Verifier};
        use spki::DecodePublicKey;
        let key = VerifyingKey::from_public_key_der(&spki)
            .map_err(|e| invalid(format!("issuer key is not P-256: {e}")))?;
        let signature =
            Signature::from_der(signature).map_err(|e| invalid(format!("ECDSA signature: {e}")))?;
        key.verify(&tbs, &signature)
            .map_err(|_| invalid("ECDSA signature does not verify"))
    } else {
        Err(invalid(format!("unsupported signature algorithm {oid}")))
    }
}

fn valid_now(cert: &Certificate) -> Result<(), PkiError> {
    let now = std::time::SystemTime::now();
    let validity = &cert.tbs_certificate.validity;
    if now < validity.not_before.to_system_time() || now > validity.not_after.to_system_time() {
        return Err(invalid(format!(
            "certificate \"{}\" is not valid now",
            cert.tbs_certificate.subject
        )));
    }
    Ok(())
}

/// Checks the EK certificate up to a self-signed root among `maker_ca_pem`'s certificates.
/// The EK public key an EK certificate names.
pub enum EkPublic {
    Rsa(rsa::RsaPublicKey),
    P256(p256::PublicKey),
}

/// Returns the EK's public key.
pub fn check_ek_certificate(ek_der: &[u8], maker_ca_pem: &str) -> Result<EkPublic, PkiError> {
    let ek = Certificate::from_der(ek_der)
        .map_err(|e| invalid(format!("EK certificate does not parse: {e}")))?;
    let cas = super::parse_pem_certificates(maker_ca_pem)?;
    valid_now(&ek)?;
    let mut current = ek.clone();
    for _ in 0..8 {
        let issuer = cas
            .iter()
            .find(|ca| ca.tbs_certificate.subject == current.tbs_certificate.issuer)
            .ok_or_else(|| {
                invalid(format!(
                    "no certificate for \"{}\" (issuer of \"{}\") in the TPM maker's CA file",
                    current.tbs_certificate.issuer, current.tbs_certificate.subject
                ))
            })?;
        signed_by(&current, issuer).map_err(|e| {
            invalid(format!(
                "\"{}\" is not signed by \"{}\": {e}",
                current.tbs_certificate.subject, issuer.tbs_certificate.subject
            ))
        })?;
        valid_now(issuer)?;
        if issuer.tbs_certificate.subject == issuer.tbs_certificate.issuer {
            signed_by(issuer, issuer)?;
            let spki = ek
                .tbs_certificate
                .subject_public_key_info
                .to_der()
                .map_err(|e| invalid(format!("EK key: {e}")))?;
            use rsa::pkcs8::DecodePublicKey;
            if let Ok(key) = rsa::RsaPublicKey::from_public_key_der(&spki) {
                return Ok(EkPublic::Rsa(key));
            }
            return p256::PublicKey::from_public_key_der(&spki)
                .map(EkPublic::P256)
                .map_err(|_| invalid("the EK certificate's key is neither RSA nor ECC P-256"));
        }
        current = issuer.clone();
    }
    Err(invalid("EK certificate chain longer than 8"))
}

/// KDFa (TPM 2.0 Part 1 §11.4.10.2) with HMAC-SHA-256.
fn kdfa(key: &[u8], label: &str, context_u: &[u8], context_v: &[u8], bits: u32) -> Vec<u8> {
    let mut out = Vec::new();
    let mut counter: u32 = 1;
    while (out.len() as u32) * 8 < bits {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key");
        mac.update(&counter.to_be_bytes());
        mac.update(label.as_bytes());
        mac.update(&[0]);
        mac.update(context_u);
        mac.update(context_v);
        mac.update(&bits.to_be_bytes());
        out.extend_from_slice(&mac.finalize().into_bytes());
        counter += 1;
    }
    out.truncate((bits / 8) as usize);
    out
}

/// KDFe (TPM 2.0 Part 1 §11.4.10.3) with SHA-256, one block (256 bits).
fn kdfe(z: &[u8], label: &str, party_u: &[u8], party_v: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    let mut h = Sha256::new();
    h.update(1u32.to_be_bytes());
    h.update(z);
    h.update(label.as_bytes());
    h.update([0]);
    h.update(party_u);
    h.update(party_v);
    h.finalize().into()
}

fn tpm2b(bytes: &[u8]) -> Vec<u8> {
    let mut out = (bytes.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(bytes);
    out
}

/// A credential made for an EK and an object Name: the contents of TPM2B_ID_OBJECT and
/// TPM2B_ENCRYPTED_SECRET.
pub struct Credential {
    pub id_object: Vec<u8>,
    pub encrypted_secret: Vec<u8>,
}

/// TPM2_MakeCredential in software for the TCG default EK templates (RSA 2048 or ECC P-256:
/// nameAlg SHA-256, AES-128-CFB).
pub fn make_credential(
    ek: &EkPublic,
    object_name: &[u8],
    secret: &[u8],
) -> Result<Credential, PkiError> {
    let (seed, encrypted_secret) = match ek {
        EkPublic::Rsa(ek) => {
            let mut seed = [0u8; 32];
            OsRng.fill_bytes(&mut seed);
            let encrypted = ek
                .encrypt(
                    &mut OsRng,
                    rsa::Oaep::new_with_label::<Sha256, _>("IDENTITY\0"),
                    &seed,
                )
                .map_err(|e| invalid(format!("cannot encrypt to the EK: {e}")))?;
            (seed, encrypted)
        }
        EkPublic::P256(ek) => {
            use p256::elliptic_curve::sec1::ToEncodedPoint;
            let ephemeral = p256::ecdh::EphemeralSecret::random(&mut OsRng);
            let point = ephemeral.public_key().to_encoded_point(false);
            let ek_point = ek.to_encoded_point(false);
            let (Some(x), Some(y), Some(ek_x)) = (point.x(), point.y(), ek_point.x()) else {
                return Err(invalid("EK or ephemeral point is the identity"));
            };
            let shared = ephemeral.diffie_hellman(ek);
            let seed = kdfe(shared.raw_secret_bytes(), "IDENTITY", x, ek_x);
            let mut encrypted = tpm2b(x);
            encrypted.extend_from_slice(&tpm2b(y));
            (seed, encrypted)
        }
    };
    let sym_key = kdfa(&seed, "STORAGE", object_name, &[], 128);
    let mut enc_identity = tpm2b(secret);
    cfb_mode::Encryptor::<aes::Aes128>::new_from_slices(&sym_key, &[0u8; 16])
        .map_err(|e| invalid(format!("AES-128-CFB: {e}")))?
        .encrypt(&mut enc_identity);
    let hmac_key = kdfa(&seed, "INTEGRITY", &[], &[], 256);
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&hmac_key)
        .map_err(|e| invalid(format!("HMAC: {e}")))?;
    mac.update(&enc_identity);
    mac.update(object_name);
    let mut id_object = tpm2b(&mac.finalize().into_bytes());
    id_object.extend_from_slice(&enc_identity);
    Ok(Credential {
        id_object,
        encrypted_secret,
    })
}

/// The key the CA is asked to certify is an attestation key: restricted, sign-only, created in
/// this TPM and bound to it (fixedTPM, fixedParent, sensitiveDataOrigin). Anything else could
/// sign digests that merely look like TPM attestations.
fn check_ak_attributes(public_area: &[u8]) -> Result<(), PkiError> {
    use tss_esapi::{structures::Public, traits::UnMarshall};
    let public = Public::unmarshall(public_area)
        .map_err(|e| invalid(format!("the AK public area does not parse: {e}")))?;
    let a = public.object_attributes();
    let checks = [
        (a.restricted(), "restricted"),
        (a.sign_encrypt(), "sign"),
        (!a.decrypt(), "not decrypt"),
        (a.fixed_tpm(), "fixedTPM"),
        (a.fixed_parent(), "fixedParent"),
        (a.sensitive_data_origin(), "sensitiveDataOrigin"),
    ];
    let missing: Vec<&str> = checks
        .iter()
        .filter(|(ok, _)| !ok)
        .map(|(_, what)| *what)
        .collect();
    if !missing.is_empty() {
        return Err(invalid(format!(
            "the attestation key is not {}: refusing to certify it",
            missing.join(", ")
        )));
    }
    Ok(())
}

/// What enrollment established.
pub struct Enrolled {
    pub ak_certificate_pem: String,
    pub ek_subject: String,
    /// The EK and AK Names the daemon checks on every connection to the TPM.
    pub identity: TpmIdentity,
}

/// Enrolls the TPM's AK with the CA in `ca_dir` (see the module documentation).
pub fn enroll(
    backend: &TpmBackend,
    maker_ca_pem: &str,
    ca_dir: &Path,
    days: u32,
    attests_log_key: bool,
) -> Result<Enrolled, PkiError> {
    // The RSA EK certificate first (PC Client TPMs carry it), then the ECC P-256 one.
    let (kind, ek_der) = match backend.ek_certificate(EkKind::Rsa2048) {
        Ok(der) => (EkKind::Rsa2048, der),
        Err(rsa_error) => match backend.ek_certificate(EkKind::EccP256) {
            Ok(der) => (EkKind::EccP256, der),
            Err(_) => return Err(rsa_error.into()),
        },
    };
    let ek_public = check_ek_certificate(&ek_der, maker_ca_pem)?;
    if matches!(
        (kind, &ek_public),
        (EkKind::Rsa2048, EkPublic::P256(_)) | (EkKind::EccP256, EkPublic::Rsa(_))
    ) {
        return Err(invalid(format!(
            "the certificate at the {kind} index certifies another kind of key"
        )));
    }
    let ek_subject = Certificate::from_der(&ek_der)
        .map(|c| c.tbs_certificate.subject.to_string())
        .unwrap_or_default();
    let (ak, ak_public_area) = backend.attestation_key()?;
    check_ak_attributes(&ak_public_area)?;
    let mut secret = [0u8; 32];
    OsRng.fill_bytes(&mut secret);
    let credential = make_credential(&ek_public, &name_of(&ak_public_area), &secret)?;
    let recovered = backend
        .activate_credential(kind, &credential.id_object, &credential.encrypted_secret)
        .map_err(|e| {
            invalid(format!(
                "the TPM could not activate the credential (its EK is not the certified one, or the AK is not in it): {e}"
            ))
        })?;
    if recovered.as_slice() != secret.as_slice() {
        return Err(invalid("the TPM returned a different credential"));
    }
    let subject = format!(
        "actseal TPM attestation key {}",
        crate::proof::key_id(&ak.public_key)
            .get(..16)
            .unwrap_or_default()
    );
    let profile = super::ca::CertProfile {
        role: super::ca::CertRole::TpmAttestationKey,
        attests_log_key,
    };
    let ak_certificate_pem =
        super::ca::issue_for_key(ca_dir, &subject, &ak.public_key, days, profile)?;
    // The EK the credential was just activated with: the certified one.
    let identity = TpmIdentity {
        ak_name: hex::encode(name_of(&ak_public_area)),
        ek: Some(EkName {
            kind,
            name: hex::encode(name_of(&backend.ek_public(kind)?)),
        }),
    };
    Ok(Enrolled {
        ak_certificate_pem,
        ek_subject,
        identity,
    })
}
