//! The TPM backend against a private swtpm: keys, signatures, TPM2_Certify, and keys that
//! survive a new connection (daemon restart) and a TPM restart.

use actseal::{
    backend::{
        Backend, KeyEvidence,
        tpm::{EkKind, TpmBackend, TpmSettings, name_of},
    },
    lab_tpm::Swtpm,
    pki::enroll::{EkPublic, make_credential},
};
use p256::ecdsa::{VerifyingKey, signature::hazmat::PrehashVerifier};
use sha2::{Digest, Sha256};

fn verifies(key: &p256::PublicKey, digest: &[u8; 32], sig: &p256::ecdsa::Signature) -> bool {
    VerifyingKey::from(key).verify_prehash(digest, sig).is_ok()
}

#[test]
fn keys_sign_certify_and_survive_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let mut tpm = Swtpm::create(&dir.path().join("tpm")).expect("swtpm");
    let settings = TpmSettings::new(tpm.tcti());
    let backend = TpmBackend::open(&settings).expect("open");
    let digest: [u8; 32] = Sha256::digest(b"action").into();

    // More keys than swtpm has object slots: each is loaded only while it signs.
    let keys: Vec<_> = (0..5)
        .map(|i| backend.create_key(&format!("k{i}")).expect("create"))
        .collect();
    // Twice round, so loaded keys are both reused and evicted.
    for key in keys.iter().chain(keys.iter()).chain(keys.iter().rev()) {
        let sig = backend.sign_digest(key, &digest).expect("sign");
        assert!(verifies(&key.public_key, &digest, &sig));
    }

    let KeyEvidence::Tpm(facts) = backend.key_evidence(&keys[0].key_ref).unwrap() else {
        panic!("not TPM evidence")
    };
    assert!(facts.attributes.unfit_reasons().is_empty(), "{facts:?}");

    let ak = backend.device_key(false).expect("ak");
    let certified = backend
        .certify(&keys[0].key_ref, b"extra")
        .expect("certify");
    assert_eq!(
        &certified.attest[..6],
        &[0xff, 0x54, 0x43, 0x47, 0x80, 0x17]
    );
    let name = name_of(&certified.public_area);
    assert!(
        certified
            .attest
            .windows(name.len())
            .any(|w| w == name.as_slice()),
        "certified name in TPMS_ATTEST"
    );
    let attest_digest: [u8; 32] = Sha256::digest(&certified.attest).into();
    assert!(verifies(
        &ak.public_key,
        &attest_digest,
        &certified.signature
    ));
    // The AK is the same key each time.
    assert_eq!(backend.device_key(false).unwrap().public_key, ak.public_key);

    // Certify (key and AK loaded together) between signatures with cached keys.
    backend.sign_digest(&keys[3], &digest).unwrap();
    backend
        .certify(&keys[4].key_ref, b"again")
        .expect("certify with keys cached");
    backend.sign_digest(&keys[3], &digest).unwrap();

    // A second connection (a restarted daemon) with the stored blobs.
    drop(backend);
    let backend = TpmBackend::open(&settings).expect("reopen");
    let sig = backend
        .sign_digest(&keys[1], &digest)
        .expect("sign after reopen");
    assert!(verifies(&keys[1].public_key, &digest, &sig));

    // The TPM restarts under the running backend: it reconnects and the keys still work,
    // the one that was loaded (a stale handle) as well as another.
    tpm.restart().expect("restart swtpm");
    let sig = backend
        .sign_digest(&keys[1], &digest)
        .expect("sign cached key after TPM restart");
    assert!(verifies(&keys[1].public_key, &digest, &sig));
    let sig = backend
        .sign_digest(&keys[2], &digest)
        .expect("sign after TPM restart");
    assert!(verifies(&keys[2].public_key, &digest, &sig));
    assert_eq!(backend.device_key(false).unwrap().public_key, ak.public_key);
    backend.health().expect("health");
}

#[test]
fn rejects_foreign_key_refs() {
    let dir = tempfile::tempdir().unwrap();
    let tpm = Swtpm::create(&dir.path().join("tpm")).expect("swtpm");
    let backend = TpmBackend::open(&TpmSettings::new(tpm.tcti())).expect("open");
    let key = actseal::backend::KeyRef("0a0b0c".into());
    assert!(backend.key_evidence(&key).is_err());
    assert!(
        backend
            .adopt_key(&actseal::backend::KeySelector::Label("x".into()))
            .is_err()
    );
}

/// The EK public key as the TPM derives it, in the form enrollment uses.
fn ek_public(backend: &TpmBackend, kind: EkKind) -> EkPublic {
    use tss_esapi::{structures::Public, traits::UnMarshall};
    let area = backend.ek_public(kind).expect("EK public");
    match Public::unmarshall(&area).unwrap() {
        Public::Rsa { unique, .. } => EkPublic::Rsa(
            rsa::RsaPublicKey::new(
                rsa::BigUint::from_bytes_be(unique.value()),
                rsa::BigUint::from(65537u32),
            )
            .unwrap(),
        ),
        Public::Ecc { unique, .. } => {
            let mut sec1 = vec![4u8];
            sec1.extend_from_slice(unique.x().value());
            sec1.extend_from_slice(unique.y().value());
            EkPublic::P256(p256::PublicKey::from_sec1_bytes(&sec1).unwrap())
        }
        _ => panic!("unexpected EK type"),
    }
}

/// Software MakeCredential against the TPM's own ActivateCredential, for both default EKs:
/// the TPM recovers the secret for the AK's Name, and refuses a credential for another Name.
#[test]
fn credentials_activate_for_rsa_and_ecc_eks() {
    let dir = tempfile::tempdir().unwrap();
    let tpm = Swtpm::create(&dir.path().join("tpm")).expect("swtpm");
    let backend = TpmBackend::open(&TpmSettings::new(tpm.tcti())).expect("open");
    let (_, ak_area) = backend.attestation_key().unwrap();
    for kind in [EkKind::Rsa2048, EkKind::EccP256] {
        let ek = ek_public(&backend, kind);
        let secret = [0x42u8; 32];
        let credential = make_credential(&ek, &name_of(&ak_area), &secret).unwrap();
        let recovered = backend
            .activate_credential(kind, &credential.id_object, &credential.encrypted_secret)
            .unwrap_or_else(|e| panic!("{kind}: {e}"));
        assert_eq!(recovered, secret, "{kind}");

        let other_name = name_of(b"some other object");
        let wrong = make_credential(&ek, &other_name, &secret).unwrap();
        assert!(
            backend
                .activate_credential(kind, &wrong.id_object, &wrong.encrypted_secret)
                .is_err(),
            "{kind}: a credential for another Name must not activate"
        );
    }
}

/// The EK certificate checks out against the maker's CA, and fails when its signature or the
/// CA file is not the maker's.
#[test]
fn ek_certificate_chains_to_the_maker_ca_only() {
    use actseal::pki::enroll::check_ek_certificate;
    let dir = tempfile::tempdir().unwrap();
    let tpm = Swtpm::create(&dir.path().join("tpm")).expect("swtpm");
    let backend = TpmBackend::open(&TpmSettings::new(tpm.tcti())).expect("open");
    let maker = tpm.ek_ca_pem().unwrap();
    let ek = backend
        .ek_certificate(EkKind::Rsa2048)
        .expect("EK certificate");
    assert!(matches!(
        check_ek_certificate(&ek, &maker),
        Ok(EkPublic::Rsa(_))
    ));
    // The signature is the DER's last bytes: change one.
    let mut forged = ek.clone();
    let last = forged.len() - 1;
    forged[last] ^= 0x01;
    let error = check_ek_certificate(&forged, &maker)
        .err()
        .expect("forged signature");
    assert!(error.to_string().contains("is not signed by"), "{error}");
    // Only the root: the intermediate that issued the EK certificate is missing.
    let root_only = maker
        .split_inclusive("-----END CERTIFICATE-----\n")
        .next()
        .unwrap();
    let error = check_ek_certificate(&ek, root_only)
        .err()
        .expect("incomplete CA file");
    assert!(error.to_string().contains("maker's CA"), "{error}");
}
