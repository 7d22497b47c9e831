//! `Signer.Attest` on TPM keys and the verifier's TPM2_Certify checks, with the negative
//! cases: a key that is not fixedTPM (created outside the TPM and loaded with LoadExternal,
//! or duplicable), a wrong nonce, a TPMS_ATTEST with any byte changed, an AK certificate from
//! another CA, and enrollment against the wrong maker CA.

mod common;

use actseal::{
    api::AttestRequest,
    backend::tpm::{ak_template, storage_template},
    proof::lineage::tpm2_certify_extra_data,
    verify::{Check, TrustAnchors, VerifyError, verify_attestation},
};
use base64::{Engine, engine::general_purpose::STANDARD as B64};
use common::*;
use p256::{elliptic_curve::sec1::ToEncodedPoint, pkcs8::EncodePublicKey};
use tss_esapi::{
    Context, TctiNameConf,
    attributes::ObjectAttributesBuilder,
    handles::ObjectHandle,
    interface_types::{
        algorithm::{HashingAlgorithm, PublicAlgorithm},
        ecc::EccCurve,
        resource_handles::Hierarchy,
        session_handles::AuthSession,
    },
    structures::{
        Auth, Data, Digest, EccParameter, EccPoint, EccScheme, HashScheme, Public, PublicBuilder,
        PublicEccParametersBuilder, Sensitive, SignatureScheme,
    },
    traits::Marshall,
};

fn anchors(lab: &actseal::lab::Lab) -> TrustAnchors {
    TrustAnchors::from_pem(&std::fs::read(lab.anchor()).unwrap()).unwrap()
}

fn check_of(result: Result<actseal::verify::AttestationVerified, VerifyError>) -> (Check, String) {
    let e = result.expect_err("must be rejected");
    (e.check, e.to_string())
}

/// A key that is not the TPM's own, certified by the real AK.
enum Foreign {
    /// Generated in software and loaded with TPM2_LoadExternal.
    External,
    /// Generated in the TPM, but fixedTPM and fixedParent clear (duplicable).
    Duplicable,
}

/// Certifies a foreign key with the TPM's AK. Returns (attest, DER signature, TPMT_PUBLIC,
/// the key's SPKI DER).
fn certify_foreign(
    tcti: &str,
    kind: Foreign,
    extra: [u8; 32],
) -> (Vec<u8>, Vec<u8>, Vec<u8>, Vec<u8>) {
    let mut ctx = Context::new(tcti.parse::<TctiNameConf>().unwrap()).unwrap();
    let scheme = EccScheme::EcDsa(HashScheme::new(HashingAlgorithm::Sha256));
    let params =
        PublicEccParametersBuilder::new_unrestricted_signing_key(scheme, EccCurve::NistP256)
            .build()
            .unwrap();
    let handle = match kind {
        Foreign::External => {
            let secret = p256::SecretKey::random(&mut rand_core::OsRng);
            let point = secret.public_key().to_encoded_point(false);
            let attributes = ObjectAttributesBuilder::new()
                .with_user_with_auth(true)
                .with_sign_encrypt(true)
                .build()
                .unwrap();
            let public = PublicBuilder::new()
                .with_public_algorithm(PublicAlgorithm::Ecc)
                .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
                .with_object_attributes(attributes)
                .with_ecc_parameters(params)
                .with_ecc_unique_identifier(EccPoint::new(
                    EccParameter::try_from(point.x().unwrap().to_vec()).unwrap(),
                    EccParameter::try_from(point.y().unwrap().to_vec()).unwrap(),
                ))
                .build()
                .unwrap();
            let sensitive = Sensitive::Ecc {
                auth_value: Auth::default(),
                seed_value: Digest::default(),
                sensitive: EccParameter::try_from(secret.to_bytes().to_vec()).unwrap(),
            };
            ctx.execute_without_session(|ctx| ctx.load_external(sensitive, public, Hierarchy::Null))
                .expect("load external")
        }
        Foreign::Duplicable => {
            let primary = ctx
                .execute_with_nullauth_session(|ctx| {
                    ctx.create_primary(
                        Hierarchy::Owner,
                        storage_template().unwrap(),
                        None,
                        None,
                        None,
                        None,
                    )
                })
                .unwrap()
                .key_handle;
            let attributes = ObjectAttributesBuilder::new()
                .with_fixed_tpm(false)
                .with_fixed_parent(false)
                .with_sensitive_data_origin(true)
                .with_user_with_auth(true)
                .with_sign_encrypt(true)
                .build()
                .unwrap();
            let template = PublicBuilder::new()
                .with_public_algorithm(PublicAlgorithm::Ecc)
                .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
                .with_object_attributes(attributes)
                .with_ecc_parameters(params)
                .with_ecc_unique_identifier(EccPoint::default())
                .build()
                .unwrap();
            let created = ctx
                .execute_with_nullauth_session(|ctx| {
                    ctx.create(primary, template, None, None, None, None)
                })
                .expect("create duplicable key");
            let handle = ctx
                .execute_with_nullauth_session(|ctx| {
                    ctx.load(
                        primary,
                        created.out_private.clone(),
                        created.out_public.clone(),
                    )
                })
                .unwrap();
            ctx.flush_context(ObjectHandle::from(primary)).unwrap();
            handle
        }
    };
    let (public, _, _) = ctx
        .execute_without_session(|ctx| ctx.read_public(handle))
        .unwrap();
    let ak = ctx
        .execute_with_nullauth_session(|ctx| {
            ctx.create_primary(
                Hierarchy::Endorsement,
                ak_template().unwrap(),
                None,
                None,
                None,
                None,
            )
        })
        .unwrap()
        .key_handle;
    let (attest, signature) = ctx
        .execute_with_sessions(
            (
                Some(AuthSession::Password),
                Some(AuthSession::Password),
                None,
            ),
            |ctx| {
                ctx.certify(
                    ObjectHandle::from(handle),
                    ak,
                    Data::try_from(extra.to_vec()).unwrap(),
                    SignatureScheme::Null,
                )
            },
        )
        .expect("certify");
    ctx.flush_context(ObjectHandle::from(ak)).unwrap();
    ctx.flush_context(ObjectHandle::from(handle)).unwrap();
    let tss_esapi::structures::Signature::EcDsa(sig) = signature else {
        panic!("not ECDSA")
    };
    let pad = |v: &[u8]| {
        let mut out = [0u8; 32];
        out[32 - v.len()..].copy_from_slice(v);
        out
    };
    let mut rs = pad(sig.signature_r().value()).to_vec();
    rs.extend_from_slice(&pad(sig.signature_s().value()));
    let der = p256::ecdsa::Signature::from_slice(&rs)
        .unwrap()
        .to_der()
        .as_bytes()
        .to_vec();
    let Public::Ecc { unique, .. } = &public else {
        panic!("not ECC")
    };
    let mut sec1 = vec![4u8];
    sec1.extend_from_slice(&pad(unique.x().value()));
    sec1.extend_from_slice(&pad(unique.y().value()));
    let spki = p256::PublicKey::from_sec1_bytes(&sec1)
        .unwrap()
        .to_public_key_der()
        .unwrap()
        .as_bytes()
        .to_vec();
    (
        attest.marshall().unwrap(),
        der,
        public.marshall().unwrap(),
        spki,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attest_binds_the_nonce_and_every_forgery_is_rejected() {
    let mut lab = new_tpm_lab();
    lab.start_daemon().expect("daemon start");
    let key = create_key(&lab, ACTOR).await;
    let nonce = b"auditor-nonce-20261126".to_vec();
    let answer = signer(&lab)
        .await
        .attest(AttestRequest {
            actor: ACTOR.into(),
            version: 0,
            nonce: nonce.clone(),
        })
        .await
        .expect("attest")
        .into_inner();
    assert_eq!(answer.backend, "tpm");
    assert_eq!(answer.key_id, key.key_id);
    let anchors = anchors(&lab);
    let json = answer.attestation_json.as_bytes();
    let pk = &answer.public_key_der;
    let ok = verify_attestation(
        json,
        &anchors,
        ACTOR,
        1,
        pk,
        Some(&nonce),
        actseal::verify::unix_now(),
    )
    .expect("verifies");
    assert_eq!(ok.nonce.as_deref(), Some(nonce.as_slice()));
    assert!(ok.hardware.contains("TPM firmware"), "{}", ok.hardware);

    // Nonces are bound: another nonce, or a different actor or version, fails.
    let (check, message) = check_of(verify_attestation(
        json,
        &anchors,
        ACTOR,
        1,
        pk,
        Some(b"other"),
        actseal::verify::unix_now(),
    ));
    assert_eq!(check, Check::LineageStatement, "{message}");
    assert!(message.contains("nonce"), "{message}");
    let (check, message) = check_of(verify_attestation(
        json,
        &anchors,
        "spiffe://x/y",
        1,
        pk,
        None,
        actseal::verify::unix_now(),
    ));
    assert_eq!(check, Check::LineageStatement);
    assert!(message.contains("extraData"), "{message}");
    let (check, _) = check_of(verify_attestation(
        json,
        &anchors,
        ACTOR,
        2,
        pk,
        None,
        actseal::verify::unix_now(),
    ));
    assert_eq!(check, Check::LineageStatement);
    // Rewriting the nonce member does not help: extraData no longer matches.
    let mut value: serde_json::Value = serde_json::from_slice(json).unwrap();
    value["tpm2Certify"]["nonce"] = B64.encode(b"other").into();
    let rewritten = serde_json::to_vec(&value).unwrap();
    let (check, message) = check_of(verify_attestation(
        &rewritten,
        &anchors,
        ACTOR,
        1,
        pk,
        Some(b"other"),
        actseal::verify::unix_now(),
    ));
    assert_eq!(check, Check::LineageStatement);
    assert!(message.contains("extraData"), "{message}");

    // Any byte of TPMS_ATTEST changed: the AK signature fails.
    let attest = B64
        .decode(value["tpm2Certify"]["attest"].as_str().unwrap())
        .unwrap();
    let mut original: serde_json::Value = serde_json::from_slice(json).unwrap();
    for i in 0..attest.len() {
        let mut changed = attest.clone();
        changed[i] ^= 0x01;
        original["tpm2Certify"]["attest"] = B64.encode(&changed).into();
        let bytes = serde_json::to_vec(&original).unwrap();
        let (check, _) = check_of(verify_attestation(
            &bytes,
            &anchors,
            ACTOR,
            1,
            pk,
            Some(&nonce),
            actseal::verify::unix_now(),
        ));
        assert_eq!(check, Check::LineageSignature, "byte {i}");
    }

    // An AK certificate for the same AK from another CA.
    let other = tempfile::tempdir().unwrap();
    let other_ca = other.path().join("ca");
    std::fs::create_dir_all(&other_ca).unwrap();
    actseal::pki::ca::init(
        &other_ca,
        "another operator CA",
        30,
        actseal::pki::ca::NewCaKey::File(other.path().join("ca.key")),
    )
    .unwrap();
    let ak_public = {
        let pem = std::fs::read_to_string(lab.dir.join("state/device.crt")).unwrap();
        let cert = actseal::pki::parse_pem_certificates(&pem)
            .unwrap()
            .remove(0);
        use spki::DecodePublicKey;
        p256::PublicKey::from_public_key_der(&actseal::pki::certificate_spki(&cert).unwrap())
            .unwrap()
    };
    let foreign_pem = actseal::pki::ca::issue_for_key(
        &other_ca,
        "forged AK",
        &ak_public,
        30,
        actseal::pki::ca::CertProfile {
            role: actseal::pki::ca::CertRole::TpmAttestationKey,
            attests_log_key: true,
        },
    )
    .unwrap();
    let foreign = actseal::pki::parse_pem_certificates(&foreign_pem)
        .unwrap()
        .remove(0);
    let mut forged: serde_json::Value = serde_json::from_slice(json).unwrap();
    use der::Encode;
    forged["deviceCertificate"] = B64.encode(foreign.to_der().unwrap()).into();
    let bytes = serde_json::to_vec(&forged).unwrap();
    let (check, message) = check_of(verify_attestation(
        &bytes,
        &anchors,
        ACTOR,
        1,
        pk,
        Some(&nonce),
        actseal::verify::unix_now(),
    ));
    assert_eq!(check, Check::LineageCertificate, "{message}");

    // Keys that are not fixedTPM, certified by the genuine AK: swtpm serves one connection,
    // so the daemon steps aside.
    lab.stop_daemon().unwrap();
    let tcti = lab.tpm().unwrap().tcti();
    for (kind, name) in [
        (Foreign::External, "external"),
        (Foreign::Duplicable, "duplicable"),
    ] {
        let original: serde_json::Value = serde_json::from_slice(json).unwrap();
        let created_at = original["tpm2Certify"]["createdAt"].as_str().unwrap();
        let subject = actseal::proof::lineage::KeySubject::Actor {
            actor: ACTOR,
            version: 1,
        };
        let extra = tpm2_certify_extra_data(&subject, created_at, &nonce).unwrap();
        let (attest, signature, public_area, spki) = certify_foreign(&tcti, kind, extra);
        let mut value: serde_json::Value = serde_json::from_slice(json).unwrap();
        value["tpm2Certify"]["attest"] = B64.encode(&attest).into();
        value["tpm2Certify"]["signature"] = B64.encode(&signature).into();
        value["tpm2Certify"]["publicArea"] = B64.encode(&public_area).into();
        let bytes = serde_json::to_vec(&value).unwrap();
        let (check, message) = check_of(verify_attestation(
            &bytes,
            &anchors,
            ACTOR,
            1,
            &spki,
            Some(&nonce),
            actseal::verify::unix_now(),
        ));
        assert_eq!(check, Check::LineageStatement, "{name}: {message}");
        assert!(message.contains("fixedTPM is clear"), "{name}: {message}");
    }
}

#[test]
fn enroll_refuses_an_ek_certificate_from_another_maker() {
    let lab = new_tpm_lab();
    // The operator CA is not the TPM maker's CA.
    let output = lab
        .run(&[
            "enroll",
            "--config",
            &lab.path("actseal.toml"),
            "--ca-dir",
            &lab.path("ca"),
            "--ek-ca",
            &lab.path("ca/ca.crt"),
        ])
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("maker's CA"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attest_on_pkcs11_returns_a_fresh_attribute_statement() {
    let lab = started_lab();
    let key = create_key(&lab, ACTOR).await;
    let request = |nonce: &[u8]| AttestRequest {
        actor: ACTOR.into(),
        version: 1,
        nonce: nonce.to_vec(),
    };
    let answer = signer(&lab)
        .await
        .attest(request(b""))
        .await
        .expect("attest")
        .into_inner();
    assert_eq!(answer.backend, "pkcs11");
    let verified = verify_attestation(
        answer.attestation_json.as_bytes(),
        &anchors(&lab),
        ACTOR,
        1,
        &answer.public_key_der,
        None,
        actseal::verify::unix_now(),
    )
    .expect("verifies");
    assert_eq!(verified.key_id, key.key_id);
    // Fresh: the device signs the caller's nonce and the time into the statement.
    let nonce = b"auditor nonce 7f3a";
    let fresh = signer(&lab)
        .await
        .attest(request(nonce))
        .await
        .expect("attest with a nonce")
        .into_inner();
    let check = |expected: &[u8], at: i64| {
        verify_attestation(
            fresh.attestation_json.as_bytes(),
            &anchors(&lab),
            ACTOR,
            1,
            &fresh.public_key_der,
            Some(expected),
            at,
        )
    };
    let verified = check(nonce, actseal::verify::unix_now()).expect("binds the nonce");
    assert_eq!(verified.nonce.as_deref(), Some(&nonce[..]));
    let (which, message) = check_of(check(b"another nonce", actseal::verify::unix_now()));
    assert_eq!(which, Check::LineageStatement, "{message}");
    // A replayed answer: made an hour before "now".
    let (which, message) = check_of(check(nonce, actseal::verify::unix_now() + 3600));
    assert_eq!(which, Check::LineageStatement, "{message}");
    assert!(message.contains("from now"), "{message}");
    let missing = signer(&lab)
        .await
        .attest(AttestRequest {
            actor: "spiffe://acme.example/agents/nobody".into(),
            version: 0,
            nonce: vec![],
        })
        .await
        .unwrap_err();
    assert!(
        matches!(
            missing.code(),
            tonic::Code::NotFound | tonic::Code::PermissionDenied
        ),
        "{missing:?}"
    );
}

/// The forgery of issue 8, item 1, built for real: the enrolled attestation key is restricted,
/// but it signs any digest the TPM hashed itself (a `TPM2_Hash` ticket) as long as the data does
/// not start with TPM_GENERATED_VALUE. Anyone who can use the AK can so make it sign a PKCS#11
/// attribute statement for a *software* key. The signature is genuine; the verifier refuses it
/// because the AK certificate is certified for TPMS_ATTEST only (tcg-kp-AIKCertificate), not as
/// a PKCS#11 device.
#[test]
fn an_attestation_key_signing_a_pkcs11_statement_through_a_hash_ticket_is_refused() {
    use p256::ecdsa::{VerifyingKey, signature::hazmat::PrehashVerifier};
    use sha2::{Digest as _, Sha256};
    use tss_esapi::structures::{MaxBuffer, Signature as TpmSignature};

    let mut lab = new_tpm_lab();
    let software = p256::SecretKey::random(&mut rand_core::OsRng);
    let spki = software
        .public_key()
        .to_public_key_der()
        .unwrap()
        .into_vec();
    let key_id = hex::encode(Sha256::digest(&spki));
    let statement = serde_json::json!({
        "_type": "https://in-toto.io/Statement/v1",
        "subject": [{"name": format!("actor-key:{ACTOR}#1"), "digest": {"sha256": key_id}}],
        "predicateType": "https://actseal.dev/lineage/pkcs11-attributes/v2",
        "predicate": {"keyRole": "actor-key", "actor": ACTOR, "keyVersion": 1, "keyId": key_id,
            "origin": "generated", "createdAt": "2026-01-01T00:00:00Z",
            "token": {"manufacturer": "m", "model": "m", "serial": "s", "label": "l"},
            "attributes": {"keyType": "EC", "curve": "P-256", "id": "01", "label": "l",
                "token": true, "private": true, "sensitive": true, "alwaysSensitive": true,
                "extractable": false, "neverExtractable": true, "local": true, "sign": true}}
    });
    let payload = serde_json::to_vec(&statement).unwrap();
    let payload_type = "application/vnd.in-toto+json";
    let mut pae = format!(
        "DSSEv1 {} {payload_type} {} ",
        payload_type.len(),
        payload.len()
    )
    .into_bytes();
    pae.extend_from_slice(&payload);
    assert!(pae.len() <= 1024, "TPM2_Hash takes at most 1024 bytes");

    // The AK the daemon uses: the same template, in the endorsement hierarchy.
    let tcti = lab.tpm().unwrap().tcti();
    let mut ctx = Context::new(tcti.parse::<TctiNameConf>().unwrap()).unwrap();
    let ak = ctx
        .execute_with_nullauth_session(|ctx| {
            ctx.create_primary(
                Hierarchy::Endorsement,
                ak_template().unwrap(),
                None,
                None,
                None,
                None,
            )
        })
        .unwrap();
    let (digest, ticket) = ctx
        .execute_without_session(|ctx| {
            ctx.hash(
                MaxBuffer::try_from(pae.clone()).unwrap(),
                HashingAlgorithm::Sha256,
                Hierarchy::Endorsement,
            )
        })
        .expect("TPM2_Hash");
    let signature = ctx
        .execute_with_sessions((Some(AuthSession::Password), None, None), |ctx| {
            ctx.sign(ak.key_handle, digest.clone(), SignatureScheme::Null, ticket)
        })
        .expect("the restricted AK signs a digest with a hash ticket");
    let _ = ctx.flush_context(ObjectHandle::from(ak.key_handle));
    let TpmSignature::EcDsa(ecdsa) = signature else {
        panic!("an ECDSA signature")
    };
    let pad = |v: &[u8]| {
        let mut out = [0u8; 32];
        out[32 - v.len()..].copy_from_slice(v);
        out
    };
    let raw = [
        pad(ecdsa.signature_r().value()),
        pad(ecdsa.signature_s().value()),
    ]
    .concat();
    let signature = p256::ecdsa::Signature::from_slice(&raw).unwrap();

    // The AK certificate the lab enrolled: the signature is genuine under its key.
    let ak_pem = std::fs::read_to_string(lab.dir.join("state/device.crt")).unwrap();
    let ak_cert = actseal::pki::parse_pem_certificates(&ak_pem)
        .unwrap()
        .remove(0);
    let ak_spki = actseal::pki::certificate_spki(&ak_cert).unwrap();
    let ak_key = {
        use spki::DecodePublicKey;
        VerifyingKey::from_public_key_der(&ak_spki).unwrap()
    };
    let pae_digest: [u8; 32] = Sha256::digest(&pae).into();
    ak_key
        .verify_prehash(&pae_digest, &signature)
        .expect("the forged statement carries a valid AK signature");

    use der::Encode;
    let attestation = serde_json::json!({
        "backend": "pkcs11",
        "statement": {"payloadType": payload_type, "payload": B64.encode(&payload),
            "signatures": [{"keyid": hex::encode(Sha256::digest(&ak_spki)),
                            "sig": B64.encode(signature.to_der().as_bytes())}]},
        "deviceCertificate": B64.encode(ak_cert.to_der().unwrap()),
        "certificateChain": [],
    });
    let (check, message) = check_of(verify_attestation(
        &serde_json::to_vec(&attestation).unwrap(),
        &anchors(&lab),
        ACTOR,
        1,
        &spki,
        None,
        actseal::verify::unix_now(),
    ));
    assert_eq!(check, Check::LineageCertificate, "{message}");
    assert!(message.contains("PKCS#11 device"), "{message}");
}
