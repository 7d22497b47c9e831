//! Device certificate renewal on a real SoftHSM token through the real daemon, with
//! certificates that live a few seconds and expire during the test (issue 8 item 5): old
//! bundles keep the certificate valid at their signedAt, new ones get the renewed one, and
//! once no installed certificate is valid the daemon signs nothing.

mod common;

use std::time::Duration as StdDuration;

use actseal::{
    api::{GetInclusionProofRequest, RotateKeyRequest},
    verify::{TrustAnchors, verify_bundle},
};
use base64::{Engine, engine::general_purpose::STANDARD as B64};
use common::{pki::TestCa, *};
use time::{Duration, OffsetDateTime};

fn verify_under(ca: &TestCa, bundle: &str) {
    let anchors = TrustAnchors::from_pem(ca.cert_pem.as_bytes()).unwrap();
    verify_bundle(bundle.as_bytes(), &anchors, None)
        .unwrap_or_else(|e| panic!("bundle does not verify: {e}"));
}

/// Base64 DER of a PEM certificate, as lineages carry it.
fn b64_der(pem: &str) -> String {
    let body: String = pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect::<Vec<_>>()
        .concat();
    B64.encode(B64.decode(body).unwrap())
}

fn sleep_until(t: OffsetDateTime) {
    let left = t - OffsetDateTime::now_utc();
    if left.is_positive() {
        std::thread::sleep(StdDuration::from_secs_f64(left.as_seconds_f64()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewed_certificates_keep_old_and_new_bundles_valid_and_expiry_stops_signing() {
    let mut lab = new_lab();
    let ca = TestCa::new("actseal renewal test CA");
    // The device key, from the certificate the lab installed; then only the test's
    // short-lived certificates are installed (the lab's would outlive the test).
    let state = lab.dir.join("state");
    let lab_cert = std::fs::read_to_string(state.join("device.crt")).unwrap();
    let spki = {
        use der::{Decode, DecodePem, Encode};
        let cert = x509_cert::Certificate::from_pem(lab_cert.as_bytes()).unwrap();
        let _ = x509_cert::Certificate::from_der(&cert.to_der().unwrap()).unwrap();
        cert.tbs_certificate
            .subject_public_key_info
            .to_der()
            .unwrap()
    };
    std::fs::remove_file(state.join("device.crt")).unwrap();
    std::fs::remove_dir_all(state.join("device-certificates")).unwrap();
    let config = lab.config().display().to_string();
    let install = |lab: &actseal::lab::Lab, name: &str, pem: &str| {
        let path = lab.dir.join(name);
        std::fs::write(&path, pem).unwrap();
        lab.run(&[
            "device",
            "install",
            "--config",
            &config,
            &path.display().to_string(),
        ])
        .unwrap()
    };

    // A certificate for another key is refused and installs nothing.
    let now = OffsetDateTime::now_utc();
    let foreign = ca.device(
        &pki::random_spki(),
        now - Duration::hours(1),
        now + Duration::hours(1),
    );
    let refused = install(&lab, "foreign.crt", &foreign);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("not for this token's device key"),
        "{refused:?}"
    );
    assert!(!state.join("device.crt").exists());

    let a_end = now + Duration::seconds(20);
    let cert_a = ca.device(&spki, now - Duration::minutes(1), a_end);
    assert!(install(&lab, "a.crt", &cert_a).status.success());
    lab.start_daemon().unwrap();
    create_key(&lab, ACTOR).await;
    let mut signer = signer(&lab).await;
    let first = signer
        .sign(sign_request(ACTOR, b"under A"))
        .await
        .unwrap()
        .into_inner();
    verify_under(&ca, &first.bundle_json);
    // Version 1 hands over to version 2 while A is in force.
    admin(&lab)
        .await
        .rotate_key(RotateKeyRequest {
            actor: ACTOR.into(),
        })
        .await
        .unwrap();

    // The renewal, for the same device key, installed while the daemon runs and A is valid.
    let b_start = OffsetDateTime::now_utc() + Duration::seconds(1);
    let b_end = a_end + Duration::seconds(12);
    let cert_b = ca.device(&spki, b_start, b_end);
    let installed = install(&lab, "b.crt", &cert_b);
    assert!(installed.status.success(), "{installed:?}");
    sleep_until(a_end + Duration::seconds(2));

    // A has expired: the daemon picks up B by itself (no restart, no SIGHUP).
    let second = signer
        .sign(sign_request(ACTOR, b"under B"))
        .await
        .expect("signs under the renewed certificate")
        .into_inner();
    verify_under(&ca, &second.bundle_json);
    let bundle: serde_json::Value = serde_json::from_str(&second.bundle_json).unwrap();
    let (a, b) = (b64_der(&cert_a), b64_der(&cert_b));
    assert_eq!(bundle["lineage"]["deviceCertificate"], *b.as_str());
    assert_eq!(
        bundle["log"]["logKey"]["lineage"]["deviceCertificate"],
        *b.as_str()
    );
    assert_eq!(
        bundle["lineage"]["predecessors"][0]["deviceCertificate"],
        *a.as_str(),
        "v1 rotated away under A"
    );
    // The old bundle as it was, and as the daemon assembles it again, still carry A.
    verify_under(&ca, &first.bundle_json);
    let again = signer
        .get_inclusion_proof(GetInclusionProofRequest {
            log_index: first.log_index,
            tree_size: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .bundle_json;
    verify_under(&ca, &again);
    let again: serde_json::Value = serde_json::from_str(&again).unwrap();
    assert_eq!(again["lineage"]["deviceCertificate"], *a.as_str());
    assert_eq!(
        again["log"]["logKey"]["lineage"]["deviceCertificate"],
        *a.as_str()
    );

    // `actseal verify --at`: certificates are checked at signedAt, whatever "now" is.
    let anchor = lab.dir.join("renewal-ca.pem");
    std::fs::write(&anchor, &ca.cert_pem).unwrap();
    let first_path = lab.dir.join("first.json");
    std::fs::write(&first_path, &first.bundle_json).unwrap();
    let verify_at = |at: &str| {
        lab.run(&[
            "verify",
            &first_path.display().to_string(),
            "--trust",
            &anchor.display().to_string(),
            "--at",
            at,
        ])
        .unwrap()
    };
    let later = (b_end + Duration::days(400))
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    assert!(
        verify_at(&later).status.success(),
        "verifies long after A expired"
    );
    let before = verify_at("2020-01-01T00:00:00Z");
    assert_eq!(before.status.code(), Some(1), "not signed by then");
    assert!(String::from_utf8_lossy(&before.stdout).contains("after the time given with --at"));
    let bad = verify_at("yesterday");
    assert_eq!(bad.status.code(), Some(2));

    // B expires without renewal: nothing more is signed, everything signed stays valid.
    sleep_until(b_end + Duration::seconds(2));
    let refused = signer
        .sign(sign_request(ACTOR, b"after B"))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    assert!(
        refused
            .message()
            .contains("no installed device certificate is valid now"),
        "{refused:?}"
    );
    let refused = admin(&lab)
        .await
        .rotate_key(RotateKeyRequest {
            actor: ACTOR.into(),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    verify_under(&ca, &first.bundle_json);
    verify_under(&ca, &second.bundle_json);
    lab.stop_daemon().unwrap();
    let restart = lab
        .start_daemon()
        .expect_err("no valid certificate: no start");
    assert!(
        restart
            .to_string()
            .contains("no installed device certificate is valid now"),
        "{restart}"
    );
}
