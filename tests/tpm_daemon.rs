//! The daemon on a TPM (a private swtpm with an EK certificate): enrollment, TPM-held actor
//! keys attested by TPM2_Certify, bundles verified offline, and keys that survive a daemon
//! restart and a TPM restart.

mod common;

use common::*;

async fn sign_and_verify(lab: &actseal::lab::Lab, key_id: &str) -> String {
    let response = signer(lab)
        .await
        .sign(sign_request(ACTOR, DOCUMENT))
        .await
        .expect("sign")
        .into_inner();
    let verified = verify(lab, &response.bundle_json, Some(DOCUMENT)).expect("bundle verifies");
    assert_eq!(verified.backend, "tpm");
    assert_eq!(verified.key_id, key_id);
    assert_eq!(verified.actor, ACTOR);
    assert_eq!(verified.origin, "generated");
    response.bundle_json
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tpm_keys_sign_verify_and_survive_restarts() {
    let mut lab = new_tpm_lab();
    lab.start_daemon().expect("daemon start");
    let key = create_key(&lab, ACTOR).await;
    assert_eq!(key.backend, "tpm");
    let bundle = sign_and_verify(&lab, &key.key_id).await;
    let json: serde_json::Value = serde_json::from_str(&bundle).unwrap();
    let certify = &json["lineage"]["tpm2Certify"];
    assert!(certify["attest"].is_string(), "{}", json["lineage"]);
    assert!(json["lineage"].get("statement").is_none());
    assert!(json["log"]["logKey"]["lineage"]["tpm2Certify"].is_object());

    // swtpm restarts under the running daemon: the next request reconnects.
    lab.tpm().unwrap().restart().expect("swtpm restart");
    sign_and_verify(&lab, &key.key_id).await;

    // With the TPM gone, Sign is UNAVAILABLE and nothing is stored; it comes back by itself.
    let before = receipt_count(&lab);
    lab.tpm().unwrap().stop().expect("swtpm stop");
    let refused = signer(&lab)
        .await
        .sign(sign_request(ACTOR, DOCUMENT))
        .await
        .expect_err("no TPM");
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    assert_eq!(receipt_count(&lab), before);
    lab.tpm().unwrap().start().expect("swtpm start");
    sign_and_verify(&lab, &key.key_id).await;

    // Daemon and TPM both restart: the key (stored as blobs) still signs.
    lab.stop_daemon().expect("daemon stop");
    lab.tpm().unwrap().restart().expect("swtpm restart");
    lab.start_daemon().expect("daemon restart");
    sign_and_verify(&lab, &key.key_id).await;

    // Rotation on the TPM: the new version is certified too, the old one signs the rotation.
    let rotated = admin(&lab)
        .await
        .rotate_key(actseal::api::RotateKeyRequest {
            actor: ACTOR.into(),
        })
        .await
        .expect("rotate")
        .into_inner();
    assert_eq!(rotated.version, 2);
    sign_and_verify(&lab, &rotated.key_id).await;

    // A fresh attestation of the retired version 1, bound to a nonce, after all restarts.
    let nonce = b"after-restarts".to_vec();
    let answer = signer(&lab)
        .await
        .attest(actseal::api::AttestRequest {
            actor: ACTOR.into(),
            version: 1,
            nonce: nonce.clone(),
        })
        .await
        .expect("attest v1")
        .into_inner();
    assert_eq!(answer.key_id, key.key_id);
    let anchors =
        actseal::verify::TrustAnchors::from_pem(&std::fs::read(lab.anchor()).unwrap()).unwrap();
    actseal::verify::verify_attestation(
        answer.attestation_json.as_bytes(),
        &anchors,
        ACTOR,
        1,
        &answer.public_key_der,
        Some(&nonce),
        actseal::verify::unix_now(),
    )
    .expect("attestation of v1 verifies");

    // The whole TPM log replays offline: receipts, the rotation, every TPM2_Certify.
    let audit = common::export_and_audit(&lab, "log-export.json");
    assert!(audit.contains("1 rotations"), "{audit}");
}

/// A daemon killed in the middle of TPM commands leaves nothing in the TPM that stops the next
/// one (swtpm over TCP has no resource manager to clean up after a dead client): ten SIGKILLs
/// under signing load, each followed by a start that signs again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkills_mid_command_leave_the_tpm_usable() {
    let mut lab = new_tpm_lab();
    lab.start_daemon().expect("daemon start");
    let key = create_key(&lab, ACTOR).await;
    for kill in 0..10u64 {
        let mut clients = Vec::new();
        for _ in 0..3 {
            let mut signer = signer(&lab).await;
            clients.push(tokio::spawn(async move {
                while signer.sign(sign_request(ACTOR, DOCUMENT)).await.is_ok() {}
            }));
        }
        // A varying moment, so that some kill lands inside a command.
        tokio::time::sleep(std::time::Duration::from_millis(150 + 37 * kill)).await;
        lab.kill_daemon().unwrap();
        for client in clients {
            client.await.unwrap();
        }
        lab.start_daemon()
            .unwrap_or_else(|e| panic!("start after SIGKILL {}: {e}", kill + 1));
        sign_and_verify(&lab, &key.key_id).await;
    }
}
