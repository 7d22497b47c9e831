//! The daemon end to end on a real SoftHSM2 token: gRPC over its Unix socket, proof bundles
//! verified offline, bad input, token faults, restarts.

mod common;

use actseal::api::{
    AdoptKeyRequest, CreateKeyRequest, GetActorKeyRequest, ListKeysRequest, RetireKeyRequest,
    adopt_key_request::Selector, sign_request::Action,
};
use common::*;
use sha2::{Digest, Sha256};
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_returns_a_bundle_that_verifies_offline() {
    sign_returns_a_bundle_that_verifies_offline_on(Engine::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_returns_a_bundle_that_verifies_offline_on_postgres() {
    sign_returns_a_bundle_that_verifies_offline_on(Engine::Postgres).await;
}

async fn sign_returns_a_bundle_that_verifies_offline_on(engine: Engine) {
    let Some(lab) = started_lab_on(engine) else {
        return;
    };
    let key = create_key(&lab, ACTOR).await;
    assert_eq!(key.version, 1);
    assert_eq!(key.backend, "pkcs11");
    assert_eq!(key.origin, "generated");

    let mut signer = signer(&lab).await;
    let response = signer
        .sign(sign_request(ACTOR, DOCUMENT))
        .await
        .expect("sign")
        .into_inner();
    assert_eq!(response.key_id, key.key_id);
    let verified = verify(&lab, &response.bundle_json, Some(DOCUMENT)).expect("bundle verifies");
    assert_eq!(verified.actor, ACTOR);
    assert_eq!(verified.key_id, key.key_id);
    assert_eq!(verified.sequence, 1);
    // Entry 0 is the key's registration.
    assert_eq!(verified.log_index, 1);
    assert_eq!(verified.backend, "pkcs11");
    assert_eq!(verified.origin, "generated");
    assert!(verified.document_checked);
    assert_eq!(
        verified.document_sha256,
        hex::encode(Sha256::digest(DOCUMENT))
    );
    assert_eq!(
        verified.context.get("ticket").map(String::as_str),
        Some("FIN-8812")
    );

    // A different document is not what the receipt is about.
    let wrong = verify(&lab, &response.bundle_json, Some(b"another document")).unwrap_err();
    assert_eq!(wrong.check.to_string(), "receipt.document");

    // Signing a digest, with the document kept by the caller, proves the same thing.
    let mut by_digest = sign_request(ACTOR, DOCUMENT);
    by_digest.action = Some(Action::DocumentSha256(Sha256::digest(DOCUMENT).to_vec()));
    let response = signer
        .sign(by_digest)
        .await
        .expect("sign digest")
        .into_inner();
    let verified = verify(&lab, &response.bundle_json, Some(DOCUMENT)).expect("verifies");
    assert_eq!(verified.sequence, 2);

    // `actseal verify` on the command line: exit 0 and a summary.
    let bundle_path = lab.dir.join("b.json");
    std::fs::write(&bundle_path, &response.bundle_json).unwrap();
    let document_path = lab.dir.join("doc.json");
    std::fs::write(&document_path, DOCUMENT).unwrap();
    let output = lab
        .run(&[
            "verify",
            &bundle_path.display().to_string(),
            "--trust",
            &lab.anchor().display().to_string(),
            "--document",
            &document_path.display().to_string(),
        ])
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    assert!(stdout.contains("VERIFIED"), "{stdout}");
    assert!(stdout.contains(ACTOR), "{stdout}");

    // And a non-zero exit naming the failed check when the document differs.
    std::fs::write(&document_path, b"tampered").unwrap();
    let output = lab
        .run(&[
            "verify",
            &bundle_path.display().to_string(),
            "--trust",
            &lab.anchor().display().to_string(),
            "--document",
            &document_path.display().to_string(),
        ])
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stdout).contains("receipt.document"));

    // Pinning the log: the right origin passes, another fails.
    let bundle = bundle_path.display().to_string();
    let anchor = lab.anchor().display().to_string();
    let origin = verified.log_origin.clone();
    assert!(
        lab.run(&[
            "verify",
            &bundle,
            "--trust",
            &anchor,
            "--log-origin",
            &origin
        ])
        .unwrap()
        .status
        .success()
    );
    let other = lab
        .run(&[
            "verify",
            &bundle,
            "--trust",
            &anchor,
            "--log-origin",
            "log.elsewhere.example",
        ])
        .unwrap();
    assert_eq!(other.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&other.stdout).contains("log.origin"));
    // Unreadable inputs are exit code 2.
    assert_eq!(
        lab.run(&["verify", "/nonexistent.json", "--trust", &anchor])
            .unwrap()
            .status
            .code(),
        Some(2)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receipts_chain_per_actor_and_keys_survive_a_restart() {
    receipts_chain_per_actor_and_keys_survive_a_restart_on(Engine::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receipts_chain_per_actor_and_keys_survive_a_restart_on_postgres() {
    receipts_chain_per_actor_and_keys_survive_a_restart_on(Engine::Postgres).await;
}

async fn receipts_chain_per_actor_and_keys_survive_a_restart_on(engine: Engine) {
    let Some(mut lab) = started_lab_on(engine) else {
        return;
    };
    let other = "spiffe://acme.example/agents/procurement";
    create_key(&lab, ACTOR).await;
    create_key(&lab, other).await;

    let mut signer = signer(&lab).await;
    let mut bundles = Vec::new();
    for i in 0..3 {
        let document = format!("action {i}");
        bundles.push(
            signer
                .sign(sign_request(ACTOR, document.as_bytes()))
                .await
                .unwrap()
                .into_inner()
                .bundle_json,
        );
    }
    let other_bundle = signer
        .sign(sign_request(other, b"other"))
        .await
        .unwrap()
        .into_inner()
        .bundle_json;
    assert_eq!(receipt_statement(&other_bundle)["predicate"]["sequence"], 1);
    // Entries 0 and 1 register the two keys.
    assert_eq!(receipt_statement(&other_bundle)["predicate"]["logIndex"], 5);
    assert!(receipt_statement(&other_bundle)["predicate"]["previousReceipt"].is_null());

    // A graceful restart: the same keys, the chain continues where it stopped.
    lab.stop_daemon().unwrap();
    lab.start_daemon().unwrap();
    let mut signer = common::signer(&lab).await;
    bundles.push(
        signer
            .sign(sign_request(ACTOR, b"after restart"))
            .await
            .expect("sign after restart")
            .into_inner()
            .bundle_json,
    );
    let mut previous: Option<String> = None;
    for (i, bundle) in bundles.iter().enumerate() {
        verify(&lab, bundle, None).expect("verifies");
        let predicate = &receipt_statement(bundle)["predicate"];
        assert_eq!(predicate["sequence"], i as u64 + 1);
        match &previous {
            None => assert!(predicate["previousReceipt"].is_null()),
            Some(digest) => assert_eq!(predicate["previousReceipt"]["sha256"], *digest.as_str()),
        }
        previous = Some(payload_sha256(bundle));
    }
    // After both keys' registrations and the other actor's receipt.
    assert_eq!(receipt_statement(&bundles[3])["predicate"]["logIndex"], 6);

    let key = signer
        .get_actor_key(GetActorKeyRequest {
            actor: ACTOR.into(),
            version: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(key.state, "active");
    let listed = admin(&lab)
        .await
        .list_keys(ListKeysRequest::default())
        .await
        .unwrap()
        .into_inner()
        .keys;
    assert_eq!(listed.len(), 2);
    assert_eq!(receipt_count(&lab), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_precise_statuses_and_change_nothing() {
    bad_requests_get_precise_statuses_and_change_nothing_on(Engine::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_precise_statuses_and_change_nothing_on_postgres() {
    bad_requests_get_precise_statuses_and_change_nothing_on(Engine::Postgres).await;
}

async fn bad_requests_get_precise_statuses_and_change_nothing_on(engine: Engine) {
    let Some(lab) = started_lab_on(engine) else {
        return;
    };
    create_key(&lab, ACTOR).await;
    let mut signer = signer(&lab).await;
    signer.sign(sign_request(ACTOR, DOCUMENT)).await.unwrap();
    let before = receipt_count(&lab);

    let unknown = signer
        .sign(sign_request(
            "spiffe://acme.example/agents/nobody",
            DOCUMENT,
        ))
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound, "{unknown:?}");

    let cases: Vec<(&str, actseal::api::SignRequest)> = vec![
        (
            "actor",
            actseal::api::SignRequest {
                actor: String::new(),
                ..sign_request(ACTOR, DOCUMENT)
            },
        ),
        (
            "action_type",
            actseal::api::SignRequest {
                action_type: String::new(),
                ..sign_request(ACTOR, DOCUMENT)
            },
        ),
        (
            "action_type",
            actseal::api::SignRequest {
                action_type: "x".repeat(129),
                ..sign_request(ACTOR, DOCUMENT)
            },
        ),
        (
            "target",
            actseal::api::SignRequest {
                target: String::new(),
                ..sign_request(ACTOR, DOCUMENT)
            },
        ),
        (
            "target",
            actseal::api::SignRequest {
                target: "t".repeat(1025),
                ..sign_request(ACTOR, DOCUMENT)
            },
        ),
        (
            "action",
            actseal::api::SignRequest {
                action: None,
                ..sign_request(ACTOR, DOCUMENT)
            },
        ),
        ("document", sign_request(ACTOR, b"")),
        ("document", sign_request(ACTOR, &vec![b'a'; (1 << 20) + 1])),
        (
            "document_sha256",
            actseal::api::SignRequest {
                action: Some(Action::DocumentSha256(vec![0xab; 31])),
                ..sign_request(ACTOR, DOCUMENT)
            },
        ),
        (
            "document_sha256",
            actseal::api::SignRequest {
                action: Some(Action::DocumentSha256(vec![])),
                ..sign_request(ACTOR, DOCUMENT)
            },
        ),
        (
            "parent_action_sha256",
            actseal::api::SignRequest {
                parent_action_sha256: vec![1; 20],
                ..sign_request(ACTOR, DOCUMENT)
            },
        ),
        (
            "context",
            actseal::api::SignRequest {
                context: [("k".to_string(), "v".repeat(1025))].into(),
                ..sign_request(ACTOR, DOCUMENT)
            },
        ),
        (
            "context",
            actseal::api::SignRequest {
                context: (0..33)
                    .map(|i| (format!("k{i}"), "v".to_string()))
                    .collect(),
                ..sign_request(ACTOR, DOCUMENT)
            },
        ),
    ];
    for (field, request) in cases {
        let status = signer.sign(request).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{field}: {status:?}");
        assert!(
            status.message().starts_with(&format!("{field}:")),
            "message should name {field}: {}",
            status.message()
        );
    }

    let mut admin = admin(&lab).await;
    let duplicate = admin
        .create_key(CreateKeyRequest {
            actor: ACTOR.into(),
        })
        .await
        .unwrap_err();
    assert_eq!(duplicate.code(), Code::AlreadyExists);
    let bad_actor = admin
        .create_key(CreateKeyRequest {
            actor: "two words".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(bad_actor.code(), Code::InvalidArgument);
    let no_selector = admin
        .adopt_key(AdoptKeyRequest {
            actor: "spiffe://x/y".into(),
            selector: None,
        })
        .await
        .unwrap_err();
    assert_eq!(no_selector.code(), Code::InvalidArgument);
    let no_key = signer
        .get_actor_key(GetActorKeyRequest {
            actor: "spiffe://x/none".into(),
            version: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(no_key.code(), Code::NotFound);
    let no_version = signer
        .get_actor_key(GetActorKeyRequest {
            actor: ACTOR.into(),
            version: 9,
        })
        .await
        .unwrap_err();
    assert_eq!(no_version.code(), Code::NotFound);

    assert_eq!(
        receipt_count(&lab),
        before,
        "rejected requests must write nothing"
    );
    // The log continues without a gap after all those rejections.
    let next = signer
        .sign(sign_request(ACTOR, DOCUMENT))
        .await
        .unwrap()
        .into_inner();
    // One entry before the receipts: the key's registration.
    assert_eq!(next.log_index, before + 1);
    assert_eq!(next.sequence, before + 1);
}

/// Runs pkcs11-tool as an operator would, with the PIN from the environment (not argv).
/// (pkcs11-tool matches --token-label as a prefix, so lab token labels are prefix-free.)
fn pkcs11_tool(lab: &actseal::lab::Lab, extra: &[&str]) -> std::process::Output {
    std::process::Command::new("pkcs11-tool")
        .args([
            "--module",
            actseal::lab::SOFTHSM_MODULE,
            "--token-label",
            actseal::lab::TOKEN_LABEL,
        ])
        .args(["--login", "--pin", "env:ACTSEAL_TEST_PIN"])
        .args(extra)
        .env("SOFTHSM2_CONF", lab.dir.join("softhsm2.conf"))
        .env("ACTSEAL_TEST_PIN", lab.token_pin().unwrap())
        .output()
        .expect("pkcs11-tool (package opensc) must be installed")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adopts_a_key_made_by_pkcs11_tool_and_refuses_unfit_ones() {
    let lab = started_lab();
    let made = pkcs11_tool(
        &lab,
        &[
            "--keypairgen",
            "--key-type",
            "EC:prime256v1",
            "--label",
            "ops-agent",
            "--id",
            "a1b2c3",
            "--usage-sign",
        ],
    );
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let extractable = pkcs11_tool(
        &lab,
        &[
            "--keypairgen",
            "--key-type",
            "EC:prime256v1",
            "--label",
            "leaky",
            "--id",
            "0bad",
            "--usage-sign",
            "--extractable",
        ],
    );
    assert!(
        extractable.status.success(),
        "{}",
        String::from_utf8_lossy(&extractable.stderr)
    );

    let mut admin = admin(&lab).await;
    let adopter = "spiffe://acme.example/pipelines/deploy";
    let adopted = admin
        .adopt_key(AdoptKeyRequest {
            actor: adopter.into(),
            selector: Some(Selector::Label("ops-agent".into())),
        })
        .await
        .expect("adopt a sound key")
        .into_inner();
    assert_eq!(adopted.origin, "adopted");
    let response = signer(&lab)
        .await
        .sign(sign_request(adopter, DOCUMENT))
        .await
        .unwrap()
        .into_inner();
    let verified = verify(&lab, &response.bundle_json, Some(DOCUMENT)).expect("verifies");
    assert_eq!(verified.origin, "adopted");

    let refused = admin
        .adopt_key(AdoptKeyRequest {
            actor: "spiffe://acme.example/agents/leaky".into(),
            selector: Some(Selector::CkaId(vec![0x0b, 0xad])),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(
        refused.message().contains("CKA_EXTRACTABLE is true"),
        "{}",
        refused.message()
    );
    assert!(
        refused.message().contains("CKA_NEVER_EXTRACTABLE is false"),
        "{}",
        refused.message()
    );

    let again = admin
        .adopt_key(AdoptKeyRequest {
            actor: "spiffe://acme.example/agents/second".into(),
            selector: Some(Selector::Label("ops-agent".into())),
        })
        .await
        .unwrap_err();
    assert_eq!(again.code(), Code::AlreadyExists, "{again:?}");
    let missing = admin
        .adopt_key(AdoptKeyRequest {
            actor: "spiffe://acme.example/agents/third".into(),
            selector: Some(Selector::Label("no-such-key".into())),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound, "{missing:?}");
    let device = admin
        .adopt_key(AdoptKeyRequest {
            actor: "spiffe://acme.example/agents/fourth".into(),
            selector: Some(Selector::Label("actseal-device".into())),
        })
        .await
        .unwrap_err();
    assert_eq!(device.code(), Code::FailedPrecondition, "{device:?}");
    let listed = admin
        .list_keys(ListKeysRequest::default())
        .await
        .unwrap()
        .into_inner()
        .keys;
    assert_eq!(listed.len(), 1, "refused adoptions register nothing");
}

fn serve_once(lab: &actseal::lab::Lab) -> (bool, String) {
    let output = lab
        .command(&["serve", "--config", &lab.config().display().to_string()])
        .output()
        .unwrap();
    (
        output.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    )
}

#[test]
fn startup_fails_clearly_without_the_token_or_with_a_wrong_pin() {
    let lab = new_lab();
    let config = std::fs::read_to_string(lab.config()).unwrap();
    let real_pin = lab.token_pin().unwrap();

    std::fs::write(
        lab.config(),
        config.replace("token_label = \"actseal-lab\"", "token_label = \"absent\""),
    )
    .unwrap();
    let (ok, output) = serve_once(&lab);
    assert!(!ok);
    assert!(
        output.contains("no token labelled \"absent\" is present"),
        "{output}"
    );

    std::fs::write(lab.config(), &config).unwrap();
    let pin_file = lab.dir.join("secrets/token.pin");
    std::fs::write(&pin_file, "wrong-pin-4711\n").unwrap();
    let (ok, output) = serve_once(&lab);
    assert!(!ok);
    assert!(output.contains("refused the PIN"), "{output}");
    assert!(
        !output.contains("wrong-pin-4711") && !output.contains(&real_pin),
        "PIN leaked: {output}"
    );

    std::fs::remove_file(&pin_file).unwrap();
    let (ok, output) = serve_once(&lab);
    assert!(!ok);
    assert!(output.contains("cannot read PIN from file"), "{output}");

    let (ok, output) = {
        let out = lab
            .command(&["serve", "--config", "/nonexistent/actseal.toml"])
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    assert!(!ok);
    assert!(output.contains("/nonexistent/actseal.toml"), "{output}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_attest_trust_refuses_an_answer_about_another_actor_version_or_key() {
    use actseal::{
        api::{AttestRequest, RotateKeyRequest},
        cli::{ExpectedKey, check_attestation, expected_key},
    };
    const OTHER: &str = "spiffe://acme.example/agents/other";
    let lab = started_lab();
    let v1 = create_key(&lab, ACTOR).await;
    let other = create_key(&lab, OTHER).await;
    admin(&lab)
        .await
        .rotate_key(RotateKeyRequest {
            actor: ACTOR.into(),
        })
        .await
        .unwrap();
    let anchors =
        actseal::verify::TrustAnchors::from_pem(&std::fs::read(lab.anchor()).unwrap()).unwrap();
    let mut signer = signer(&lab).await;
    let mut attest = async |actor: &str, version: u32| {
        signer
            .attest(AttestRequest {
                actor: actor.into(),
                version,
                nonce: Vec::new(),
            })
            .await
            .unwrap()
            .into_inner()
    };

    // The caller asks about the active key of ACTOR: version 2, the key table's key.
    let asked = expected_key(channel(&lab).await, ACTOR, 0, None)
        .await
        .unwrap();
    assert_eq!((asked.actor.as_str(), asked.version), (ACTOR, 2));
    let honest = attest(ACTOR, 0).await;
    check_attestation(&honest, &asked, &anchors, None).unwrap();

    // Genuine attestations, each valid on its own terms (which is all the old check looked
    // at), but about another actor or another version: refused.
    let for_other = attest(OTHER, 0).await;
    let for_v1 = attest(ACTOR, 1).await;
    for (what, answer) in [("another actor", &for_other), ("another version", &for_v1)] {
        let own_terms = ExpectedKey {
            actor: answer.actor.clone(),
            version: answer.version,
            public_key_der: answer.public_key_der.clone(),
        };
        check_attestation(answer, &own_terms, &anchors, None).unwrap();
        let err = check_attestation(answer, &asked, &anchors, None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("attestation REJECTED"), "{what}: {err}");
    }
    // The right actor and version with another key, in the attestation or only in the labels.
    let wrong_key = ExpectedKey {
        public_key_der: v1.public_key_der.clone(),
        ..asked.clone()
    };
    let err = check_attestation(&honest, &wrong_key, &anchors, None).unwrap_err();
    assert!(err.to_string().contains("REJECTED"), "{err}");
    let mut relabelled = honest.clone();
    relabelled.public_key_der = other.public_key_der.clone();
    relabelled.key_id = other.key_id.clone();
    let err = check_attestation(&relabelled, &asked, &anchors, None).unwrap_err();
    assert!(err.to_string().contains("labelled"), "{err}");

    // A key id from elsewhere (a bundle, an audit) that the key table does not hold: refused
    // before Attest is asked.
    let err = expected_key(channel(&lab).await, ACTOR, 0, Some(&v1.key_id))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not --key-id"), "{err}");
    let v1_asked = expected_key(channel(&lab).await, ACTOR, 1, Some(&v1.key_id))
        .await
        .unwrap();
    check_attestation(&for_v1, &v1_asked, &anchors, None).unwrap();

    // The command line does the same.
    let anchor = lab.anchor().display().to_string();
    let out = lab
        .run_ok(&["key", "attest", "--actor", ACTOR, "--trust", &anchor])
        .unwrap();
    assert!(
        out.contains(&format!("attestation verified: {ACTOR} v2 pkcs11")),
        "{out}"
    );
    let refused = lab
        .run(&[
            "key", "attest", "--actor", ACTOR, "--trust", &anchor, "--key-id", &v1.key_id,
        ])
        .unwrap();
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("not --key-id"),
        "{refused:?}"
    );
}

fn mode(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

fn set_mode(path: &std::path::Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_refuses_a_pin_file_others_can_reach_and_keeps_its_state_owner_only() {
    let mut lab = new_lab();
    let pin_file = lab.dir.join("secrets/token.pin");
    let real_pin = lab.token_pin().unwrap();
    let state = lab.dir.join("state");
    let database = state.join("actseal.db");
    for exposed in [0o644, 0o640, 0o604, 0o620] {
        set_mode(&pin_file, exposed);
        let (ok, output) = serve_once(&lab);
        assert!(!ok, "started with a PIN file of mode {exposed:o}");
        assert!(
            output.contains(&pin_file.display().to_string())
                && output.contains("readable or writable by group or others"),
            "{output}"
        );
        assert!(!output.contains(&real_pin), "PIN leaked: {output}");
        assert!(!database.exists(), "a refused start created the database");
    }

    // A state directory that others may enter (an older daemon, a hand-made one) is narrowed;
    // everything the daemon creates in it is the daemon user's alone.
    set_mode(&pin_file, 0o600);
    set_mode(&state, 0o755);
    lab.start_daemon().unwrap();
    create_key(&lab, ACTOR).await;
    signer(&lab)
        .await
        .sign(sign_request(ACTOR, DOCUMENT))
        .await
        .unwrap();
    assert_eq!(mode(&state), 0o700);
    let wal = state.join("actseal.db-wal");
    let shm = state.join("actseal.db-shm");
    for file in [&database, &wal, &shm, &state.join("device.crt")] {
        assert_eq!(mode(file), 0o600, "{}", file.display());
    }
    // The CA keeps its directory and configuration private; its certificate is the trust
    // anchor that verifiers are given, the one file meant for others.
    assert_eq!(mode(&lab.dir.join("ca")), 0o700);
    assert_eq!(mode(&lab.dir.join("ca/ca.toml")), 0o600);
    assert_eq!(mode(&lab.dir.join("ca/ca.crt")), 0o644);

    // A database left readable by others is narrowed at the next start.
    lab.stop_daemon().unwrap();
    set_mode(&database, 0o644);
    lab.start_daemon().unwrap();
    assert_eq!(mode(&database), 0o600);
    for file in [&wal, &shm] {
        if file.exists() {
            assert_eq!(mode(file), 0o600, "{}", file.display());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vanished_token_gives_unavailable_and_loses_nothing() {
    a_vanished_token_gives_unavailable_and_loses_nothing_on(Engine::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vanished_token_gives_unavailable_and_loses_nothing_on_postgres() {
    a_vanished_token_gives_unavailable_and_loses_nothing_on(Engine::Postgres).await;
}

async fn a_vanished_token_gives_unavailable_and_loses_nothing_on(engine: Engine) {
    let Some(lab) = started_lab_on(engine) else {
        return;
    };
    create_key(&lab, ACTOR).await;
    let mut signer = signer(&lab).await;
    let kept = signer
        .sign(sign_request(ACTOR, DOCUMENT))
        .await
        .unwrap()
        .into_inner();
    let before = receipt_count(&lab);

    // Pull the token: its storage disappears under the running daemon.
    let tokens = lab.dir.join("tokens");
    let away = lab.dir.join("tokens-removed");
    std::fs::rename(&tokens, &away).unwrap();
    for _ in 0..3 {
        let status = signer
            .sign(sign_request(ACTOR, DOCUMENT))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    }
    std::fs::rename(&away, &tokens).unwrap();

    // The daemon is still up and serving reads; nothing was written.
    assert!(lab.daemon_pid().is_some());
    signer
        .get_actor_key(GetActorKeyRequest {
            actor: ACTOR.into(),
            version: 0,
        })
        .await
        .expect("daemon still answers");
    assert_eq!(receipt_count(&lab), before);
    verify(&lab, &kept.bundle_json, Some(DOCUMENT)).expect("earlier proof still verifies");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_reflection_are_served() {
    use tonic_health::pb::{
        HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
    };
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let lab = started_lab();
    let channel = channel(&lab).await;
    let health = HealthClient::new(channel.clone())
        .check(HealthCheckRequest {
            service: "actseal.v1.Signer".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(health.status(), ServingStatus::Serving);

    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = ServerReflectionClient::new(channel)
        .server_reflection_info(tokio_stream::iter(vec![request]))
        .await
        .unwrap()
        .into_inner();
    let response = stream.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reflection answer");
    };
    let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
    for expected in [
        "actseal.v1.Signer",
        "actseal.v1.KeyAdmin",
        "grpc.health.v1.Health",
    ] {
        assert!(names.contains(&expected), "{names:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_listener_serves_when_configured() {
    let mut lab = new_lab();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = std::fs::read_to_string(lab.config()).unwrap();
    std::fs::write(
        lab.config(),
        config.replace(
            "socket_mode = 0o600",
            &format!(
                "socket_mode = 0o600\ntcp = \"127.0.0.1:{port}\"\ntcp_insecure_loopback = true"
            ),
        ),
    )
    .unwrap();
    // Development callers are unauthenticated: the policy must name them to let them sign.
    let mut policy = std::fs::read_to_string(lab.policy()).unwrap();
    policy.push_str(
        "\n[[sign]]\ncallers = [\"insecure-tcp\"]\nactors = [\"*\"]\nactions = [\"*\"]\n",
    );
    std::fs::write(lab.policy(), policy).unwrap();
    lab.start_daemon().unwrap();
    create_key(&lab, ACTOR).await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
        .unwrap()
        .connect()
        .await
        .expect("TCP listener");
    let response = actseal::api::signer_client::SignerClient::new(channel)
        .sign(sign_request(ACTOR, DOCUMENT))
        .await
        .unwrap()
        .into_inner();
    let verified = verify(&lab, &response.bundle_json, Some(DOCUMENT)).unwrap();
    assert!(
        verified.caller.starts_with("insecure-tcp 127.0.0.1:"),
        "{}",
        verified.caller
    );
    let log = std::fs::read_to_string(lab.daemon_log()).unwrap();
    assert!(
        log.contains("INSECURE: plain TCP listener"),
        "the daemon must warn loudly: {log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_reach_logs_outputs_or_command_lines() {
    let mut lab = started_lab();
    create_key(&lab, ACTOR).await;
    signer(&lab)
        .await
        .sign(sign_request(ACTOR, DOCUMENT))
        .await
        .unwrap();
    let pid = lab.daemon_pid().unwrap();
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    lab.stop_daemon().unwrap();

    let mut secrets = vec![lab.token_pin().unwrap()];
    for name in ["token.so-pin", "ca.pin", "ca.so-pin"] {
        secrets.push(
            std::fs::read_to_string(lab.dir.join("secrets").join(name))
                .unwrap()
                .trim()
                .to_owned(),
        );
    }
    let log = std::fs::read_to_string(lab.daemon_log()).unwrap();
    assert!(
        log.contains("receipt signed"),
        "the log records the signing: {log}"
    );
    let cmdline = String::from_utf8_lossy(&cmdline);
    for secret in &secrets {
        assert!(!log.contains(secret.as_str()), "a PIN is in the daemon log");
        assert!(
            !cmdline.contains(secret.as_str()),
            "a PIN is on the daemon's command line"
        );
    }
    // No file outside secrets/ and the token store holds a PIN.
    for entry in ["actseal.toml", "ca/ca.toml", "ca/ca.crt", "device.crt"] {
        let text = std::fs::read_to_string(lab.dir.join(entry)).unwrap();
        for secret in &secrets {
            assert!(!text.contains(secret.as_str()), "a PIN is in {entry}");
        }
    }
}

/// Every leaf of a JSON value, as a path of object keys and array indexes.
fn leaf_paths(value: &serde_json::Value, prefix: Vec<String>, out: &mut Vec<Vec<String>>) {
    match value {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                let mut p = prefix.clone();
                p.push(k.clone());
                leaf_paths(v, p, out);
            }
        }
        serde_json::Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                let mut p = prefix.clone();
                p.push(i.to_string());
                leaf_paths(v, p, out);
            }
        }
        _ => out.push(prefix),
    }
}

fn leaf_mut<'a>(value: &'a mut serde_json::Value, path: &[String]) -> &'a mut serde_json::Value {
    path.iter().fold(value, |v, key| match v {
        serde_json::Value::Array(items) => &mut items[key.parse::<usize>().unwrap()],
        other => &mut other[key.as_str()],
    })
}

fn altered(leaf: &serde_json::Value) -> serde_json::Value {
    match leaf {
        serde_json::Value::String(s) if s.is_empty() => "x".into(),
        serde_json::Value::String(s) => {
            // Change one character, keeping hex hex and the length the same.
            let mut chars: Vec<char> = s.chars().collect();
            let last = chars.len() - 1;
            chars[last] = if chars[last] == '0' { '1' } else { '0' };
            chars.into_iter().collect::<String>().into()
        }
        serde_json::Value::Number(n) => (n.as_u64().unwrap_or(0) + 1).into(),
        serde_json::Value::Bool(b) => (!b).into(),
        serde_json::Value::Null => serde_json::json!({"sha256": "00".repeat(32)}),
        other => other.clone(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_bundles_verify_with_openssl_and_any_tampering_fails() {
    use base64::{Engine, engine::general_purpose::STANDARD as B64};
    let lab = started_lab();
    create_key(&lab, ACTOR).await;
    let mut signer = signer(&lab).await;
    signer.sign(sign_request(ACTOR, b"first")).await.unwrap();
    let mut request = sign_request(ACTOR, DOCUMENT);
    request.parent_action_sha256 = Sha256::digest(b"first").to_vec();
    let bundle_json = signer.sign(request).await.unwrap().into_inner().bundle_json;
    verify(&lab, &bundle_json, Some(DOCUMENT)).expect("untouched bundle verifies");

    // openssl alone, from Rust and with the documented script.
    let work = tempfile::tempdir().unwrap();
    common::openssl::verify_with_openssl(&bundle_json, &lab.anchor(), Some(DOCUMENT), work.path())
        .expect("openssl verifies the real bundle");
    let bundle_path = work.path().join("bundle.json");
    std::fs::write(&bundle_path, &bundle_json).unwrap();
    let document_path = work.path().join("document.json");
    std::fs::write(&document_path, DOCUMENT).unwrap();
    let script = std::process::Command::new("sh")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/scripts/verify-with-openssl.sh"
        ))
        .args([&bundle_path, &lab.anchor(), &document_path])
        .output()
        .unwrap();
    assert!(
        script.status.success(),
        "{}",
        String::from_utf8_lossy(&script.stderr)
    );

    let bundle: serde_json::Value = serde_json::from_str(&bundle_json).unwrap();
    let mut tried = 0;
    let mut expect_failure = |tampered: &serde_json::Value, what: &str| {
        tried += 1;
        let text = serde_json::to_string(tampered).unwrap();
        assert!(
            verify(&lab, &text, Some(DOCUMENT)).is_err(),
            "verifier accepted: {what}"
        );
    };

    // Every field of the bundle itself and of both signed payloads.
    let mut paths = Vec::new();
    leaf_paths(&bundle, vec![], &mut paths);
    for path in &paths {
        let mut tampered = bundle.clone();
        let leaf = leaf_mut(&mut tampered, path);
        *leaf = altered(leaf);
        expect_failure(&tampered, &path.join("."));
    }
    for envelope in [vec!["receipt"], vec!["lineage", "statement"]] {
        let at = |b: &mut serde_json::Value| -> serde_json::Value {
            envelope.iter().fold(b.clone(), |v, k| v[*k].clone())
        };
        let mut copy = bundle.clone();
        let payload = B64
            .decode(at(&mut copy)["payload"].as_str().unwrap())
            .unwrap();
        let statement: serde_json::Value = serde_json::from_slice(&payload).unwrap();
        let mut payload_paths = Vec::new();
        leaf_paths(&statement, vec![], &mut payload_paths);
        assert!(payload_paths.len() > 10);
        for path in payload_paths {
            let mut changed = statement.clone();
            let leaf = leaf_mut(&mut changed, &path);
            *leaf = altered(leaf);
            let mut tampered = bundle.clone();
            let target = envelope.iter().fold(&mut tampered, |v, k| &mut v[*k]);
            target["payload"] = B64.encode(serde_json::to_vec(&changed).unwrap()).into();
            expect_failure(
                &tampered,
                &format!("{}: {}", envelope.join("."), path.join(".")),
            );
        }
    }
    // Byte flips inside every base64 blob.
    for path in [
        vec!["receipt", "signatures", "0", "sig"],
        vec!["actorKey", "publicKey"],
        vec!["lineage", "statement", "signatures", "0", "sig"],
        vec!["lineage", "deviceCertificate"],
        vec!["receipt", "payload"],
        vec!["lineage", "statement", "payload"],
    ] {
        let path: Vec<String> = path.into_iter().map(String::from).collect();
        let original = B64
            .decode(leaf_mut(&mut bundle.clone(), &path).as_str().unwrap())
            .unwrap();
        for position in [0, original.len() / 2, original.len() - 1] {
            let mut bytes = original.clone();
            bytes[position] ^= 0x01;
            let mut tampered = bundle.clone();
            *leaf_mut(&mut tampered, &path) = B64.encode(&bytes).into();
            expect_failure(&tampered, &format!("{} byte {position}", path.join(".")));
        }
    }
    assert!(tried > 60, "tampered {tried} ways");

    // The right bundle under someone else's trust anchor.
    let other_anchor = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/vectors/anchor.pem"
    ))
    .unwrap();
    let anchors = actseal::verify::TrustAnchors::from_pem(&other_anchor).unwrap();
    let err = actseal::verify::verify_bundle(bundle_json.as_bytes(), &anchors, Some(DOCUMENT))
        .unwrap_err();
    assert_eq!(err.check.to_string(), "lineage.certificate");
    // openssl agrees on a tampered receipt.
    let mut tampered = bundle.clone();
    tampered["receipt"]["signatures"][0]["sig"] =
        bundle["lineage"]["statement"]["signatures"][0]["sig"].clone();
    assert!(
        common::openssl::verify_with_openssl(
            &serde_json::to_string(&tampered).unwrap(),
            &lab.anchor(),
            Some(DOCUMENT),
            work.path()
        )
        .is_err()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_while_signing_loses_no_acknowledged_receipt() {
    sigkill_while_signing_loses_no_acknowledged_receipt_on(Engine::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_while_signing_loses_no_acknowledged_receipt_on_postgres() {
    sigkill_while_signing_loses_no_acknowledged_receipt_on(Engine::Postgres).await;
}

async fn sigkill_while_signing_loses_no_acknowledged_receipt_on(engine: Engine) {
    let Some(mut lab) = started_lab_on(engine) else {
        return;
    };
    create_key(&lab, ACTOR).await;
    let mut clients = Vec::new();
    let signed = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    for c in 0..4 {
        let mut signer = signer(&lab).await;
        let signed = signed.clone();
        clients.push(tokio::spawn(async move {
            let mut acknowledged = Vec::new();
            for i in 0.. {
                match signer
                    .sign(sign_request(
                        ACTOR,
                        format!("client {c} action {i}").as_bytes(),
                    ))
                    .await
                {
                    Ok(response) => {
                        acknowledged.push(response.into_inner());
                        signed.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    }
                    Err(_) => break,
                }
            }
            acknowledged
        }));
    }
    // Killed in the middle of signing, once enough have been answered (however loaded the
    // machine is).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while signed.load(std::sync::atomic::Ordering::SeqCst) <= 10 {
        assert!(
            std::time::Instant::now() < deadline,
            "too few signs in 60 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    lab.kill_daemon().unwrap();
    let mut acknowledged = Vec::new();
    for client in clients {
        acknowledged.extend(client.await.unwrap());
    }
    assert!(
        acknowledged.len() > 10,
        "only {} signed before the kill",
        acknowledged.len()
    );

    lab.start_daemon().unwrap();
    let mut signer = common::signer(&lab).await;
    for response in &acknowledged {
        // The stored receipt, proved against the checkpoint its answer carried, is the same
        // bundle byte for byte.
        let bundle: serde_json::Value = serde_json::from_str(&response.bundle_json).unwrap();
        let tree_size = bundle["log"]["treeSize"].as_u64().unwrap();
        let stored = signer
            .get_inclusion_proof(actseal::api::GetInclusionProofRequest {
                log_index: response.log_index,
                tree_size,
            })
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "acknowledged receipt {} is missing: {e}",
                    response.log_index
                )
            })
            .into_inner();
        assert_eq!(stored.bundle_json, response.bundle_json);
    }
    // The chain goes on from what is on disk: no gap, no fork.
    let stored = receipt_count(&lab);
    let next = common::signer(&lab)
        .await
        .sign(sign_request(ACTOR, DOCUMENT))
        .await
        .unwrap()
        .into_inner();
    // Entry 0 is the key's registration.
    assert_eq!(next.log_index, stored + 1);
    assert_eq!(next.sequence, stored + 1);
    let last: Vec<u8> = match &lab.pg {
        Some(_) => {
            // The receipt at `stored` (entry 0 is the key's registration).
            let mut digest = Vec::new();
            common::open_store(&lab)
                .scan_from(stored, |e| {
                    if let Some(r) = e.receipt.filter(|_| digest.is_empty()) {
                        digest = r.payload_sha256.to_vec();
                    }
                    Ok(())
                })
                .unwrap();
            digest
        }
        None => rusqlite::Connection::open_with_flags(
            lab.dir.join("state/actseal.db"),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .unwrap()
        .query_row(
            "SELECT payload_sha256 FROM receipts WHERE log_index = ?1",
            [stored as i64],
            |r| r.get(0),
        )
        .unwrap(),
    };
    assert_eq!(
        receipt_statement(&next.bundle_json)["predicate"]["previousReceipt"]["sha256"],
        *hex::encode(last).as_str()
    );
    // And the whole log, crash and all, replays clean.
    lab.stop_daemon().unwrap();
    let audit = export_and_audit(&lab, "after-crash.json");
    assert!(audit.starts_with("OK"), "{audit}");
}

/// Issue 8, item 3: retiring a key destroys it in the token, so "retired" is not only a row in
/// SQLite; an operator may keep it instead, and the log says which.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retirement_destroys_the_key_in_the_token_unless_asked_to_keep_it() {
    retirement_destroys_the_key_in_the_token_unless_asked_to_keep_it_on(Engine::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retirement_destroys_the_key_in_the_token_unless_asked_to_keep_it_on_postgres() {
    retirement_destroys_the_key_in_the_token_unless_asked_to_keep_it_on(Engine::Postgres).await;
}

async fn retirement_destroys_the_key_in_the_token_unless_asked_to_keep_it_on(engine: Engine) {
    let Some(lab) = started_lab_on(engine) else {
        return;
    };
    let kept_actor = "spiffe://acme.example/agents/archived";
    let destroyed = create_key(&lab, ACTOR).await;
    let kept = create_key(&lab, kept_actor).await;
    let private_keys = || {
        let out = pkcs11_tool(&lab, &["--list-objects", "--type", "privkey"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let listed = private_keys();
    let label_of = |actor: &str| format!("actseal {actor} v1");
    for actor in [ACTOR, kept_actor] {
        assert!(listed.contains(&label_of(actor)), "{listed}");
    }
    let mut admin = admin(&lab).await;
    for (actor, keep_key) in [(ACTOR, false), (kept_actor, true)] {
        admin
            .retire_key(RetireKeyRequest {
                actor: actor.into(),
                version: 1,
                keep_key,
            })
            .await
            .expect("retire");
    }
    let listed = private_keys();
    assert!(!listed.contains(&label_of(ACTOR)), "destroyed: {listed}");
    assert!(listed.contains(&label_of(kept_actor)), "kept: {listed}");
    let audit = export_and_audit(&lab, "log-export.json");
    assert!(
        audit.contains("2 retirements (1 keys kept in hardware)"),
        "{audit}"
    );
    // Both retirement statements say what was done, signed by the log key.
    use base64::{Engine, engine::general_purpose::STANDARD as B64};
    let export: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(export_log(&lab, "again.json")).unwrap())
            .unwrap();
    let mut dispositions = Vec::new();
    for entry in export["entries"].as_array().unwrap() {
        let bytes = B64.decode(entry.as_str().unwrap()).unwrap();
        let text = String::from_utf8_lossy(&bytes);
        for word in [
            "\"keyDisposition\":\"destroyed\"",
            "\"keyDisposition\":\"kept\"",
        ] {
            if text.contains(word) {
                dispositions.push(word);
            }
        }
    }
    assert_eq!(dispositions.len(), 2, "{dispositions:?}");
    let _ = (destroyed, kept);
}
