//! The TPM backend against a private swtpm: keys, signatures, TPM2_Certify, and keys that
//! survive a new connection (daemon restart) and a TPM restart.

use actseal::{
    backend::{
        Backend, KeyEvidence,
        tpm::{TpmBackend, TpmSettings, name_of},
    },
    lab_tpm::Swtpm,
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
