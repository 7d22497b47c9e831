//! A key rotated 200 times on a real SoftHSM token through the real daemon: bundles grow
//! linearly with the versions, the stored rows and ListKeys answers stay small, and ListKeys
//! pages through every version (issue 8 item 7).

mod common;

use actseal::api::{GetActorKeyRequest, ListKeysRequest, RotateKeyRequest};
use common::*;
use prost::Message;

const VERSIONS: u32 = 200;

/// Bundle sizes measured at these versions.
const MEASURED: [u32; 4] = [1, 10, 100, 200];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_rotated_200_times_keeps_bundles_linear_and_listing_paged() {
    let mut lab = started_lab();
    let v1 = create_key(&lab, ACTOR).await;
    let mut signer = signer(&lab).await;
    let mut admin = admin(&lab).await;
    let mut sizes = Vec::new();
    let mut first_bundle = String::new();
    let started = std::time::Instant::now();
    let mut rotation_times = Vec::new();
    for version in 1..=VERSIONS {
        if version > 1 {
            let rotating = std::time::Instant::now();
            let key = admin
                .rotate_key(RotateKeyRequest {
                    actor: ACTOR.into(),
                })
                .await
                .expect("rotate")
                .into_inner();
            assert_eq!(key.version, version);
            rotation_times.push(rotating.elapsed());
        }
        if MEASURED.contains(&version) {
            let document = format!("action at v{version}");
            let bundle = signer
                .sign(sign_request(ACTOR, document.as_bytes()))
                .await
                .expect("sign")
                .into_inner()
                .bundle_json;
            let verified = verify(&lab, &bundle, Some(document.as_bytes()))
                .unwrap_or_else(|e| panic!("bundle of v{version} does not verify: {e}"));
            assert_eq!(verified.key_version, u64::from(version));
            sizes.push((version, bundle.len()));
            if version == 1 {
                first_bundle = bundle;
            }
        }
    }
    let elapsed = started.elapsed();
    for (version, size) in &sizes {
        println!("bundle size at {version:>3} versions: {size:>7} bytes");
    }
    println!("{VERSIONS} versions (rotations and 4 signs) in {elapsed:.1?}");
    let mean = |times: &[std::time::Duration]| times.iter().sum::<std::time::Duration>() / 20;
    println!(
        "RotateKey: {:.1?} on average for the first 20, {:.1?} for the last 20",
        mean(&rotation_times[..20]),
        mean(&rotation_times[rotation_times.len() - 20..])
    );

    // Linear: the growth per version from 100 to 200 is that from 1 to 100 (each version adds
    // one predecessor and one rotation statement of the same size), within 2 %.
    let size = |v: u32| sizes.iter().find(|(at, _)| *at == v).unwrap().1 as f64;
    let early = (size(100) - size(1)) / 99.0;
    let late = (size(200) - size(100)) / 100.0;
    println!("growth per version: {early:.0} bytes (1..100), {late:.0} bytes (100..200)");
    assert!(
        (late - early).abs() < early * 0.02,
        "not linear: {early} then {late}"
    );
    let at_10 = size(1) + 9.0 * early;
    assert!((size(10) - at_10).abs() < early, "size(10) off the line");
    // The most versions a key may have (plan_rotation's MAX_VERSIONS) must still make a
    // bundle that the verifier and a default gRPC client accept (4 MiB each).
    let at_max = size(1) + 999.0 * late;
    println!("bundle size at 1000 versions (extrapolated): {at_max:.0} bytes");
    assert!(at_max < (4 * 1024 - 64) as f64 * 1024.0, "{at_max}");

    // The first bundle stays valid, and the full lineage is one GetActorKey away.
    verify(&lab, &first_bundle, None).expect("the v1 bundle still verifies");
    let full = signer
        .get_actor_key(GetActorKeyRequest {
            actor: ACTOR.into(),
            version: VERSIONS,
        })
        .await
        .unwrap()
        .into_inner();
    let lineage: serde_json::Value = serde_json::from_str(&full.lineage_json).unwrap();
    assert_eq!(
        lineage["predecessors"].as_array().unwrap().len(),
        VERSIONS as usize - 1
    );
    assert_eq!(
        lineage["rotations"].as_array().unwrap().len(),
        VERSIONS as usize - 1
    );

    // ListKeys pages through all 200 versions in order; each answer stays small.
    let mut listed = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = admin
            .list_keys(ListKeysRequest {
                actor: String::new(),
                page_size: 64,
                page_token: token,
            })
            .await
            .expect("list keys")
            .into_inner();
        pages += 1;
        assert!(page.keys.len() <= 64);
        let bytes = page.encoded_len();
        assert!(
            bytes <= 64 * 8 * 1024,
            "a page of {} keys is {bytes} bytes",
            page.keys.len()
        );
        listed.extend(page.keys.into_iter().map(|k| k.version));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(pages, 4);
    assert_eq!(listed, (1..=VERSIONS).collect::<Vec<_>>());
    let default_page = admin
        .list_keys(ListKeysRequest {
            actor: ACTOR.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(default_page.keys.len(), 100, "the default page size");
    let huge = admin
        .list_keys(ListKeysRequest {
            actor: ACTOR.into(),
            page_size: 1_000_000,
            page_token: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        huge.keys.len(),
        VERSIONS as usize,
        "capped at 500, not refused"
    );
    let bad = admin
        .list_keys(ListKeysRequest {
            actor: String::new(),
            page_size: 0,
            page_token: "not a token".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument, "{bad:?}");

    // The stored row of v200 holds its own attestation only: not v1's.
    let v1_attestation: serde_json::Value = serde_json::from_str(&v1.lineage_json).unwrap();
    let v1_statement = v1_attestation["statement"]["payload"].as_str().unwrap();
    // Either engine (ACTSEAL_TEST_LEDGER): the SQL is valid on both.
    let mut db = common::LedgerDb::open(&lab);
    let attestation = |db: &mut common::LedgerDb, version: u32| -> String {
        db.one(&format!(
            "SELECT attestation FROM actor_keys WHERE actor = '{ACTOR}' AND version = {version}"
        ))
    };
    let (row_v1, row_v200) = (attestation(&mut db, 1), attestation(&mut db, VERSIONS));
    assert!(row_v1.contains(v1_statement));
    assert!(
        !row_v200.contains(v1_statement),
        "v200's row embeds v1's attestation"
    );
    let largest: i64 = db.one("SELECT CAST(MAX(length(attestation)) AS BIGINT) FROM actor_keys");
    assert!(largest < 8 * 1024, "a stored key row holds {largest} bytes");
    drop(db);

    // After a restart the sequencer assembles the lineage from the store: same bundles.
    let mut retry = sign_request(ACTOR, b"after restart");
    retry.request_id = "after-restart-1".into();
    drop(signer);
    drop(admin);
    lab.stop_daemon().unwrap();
    lab.start_daemon().unwrap();
    let mut signer = common::signer(&lab).await;
    let fresh = signer.sign(retry.clone()).await.unwrap().into_inner();
    verify(&lab, &fresh.bundle_json, Some(b"after restart")).expect("verifies after restart");
    let again = signer.sign(retry).await.unwrap().into_inner();
    assert_eq!(
        again.bundle_json, fresh.bundle_json,
        "a stored bundle is assembled byte for byte as the fresh one"
    );
    assert!(export_and_audit(&lab, "export.json").contains("199 rotations"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_keys_reads_only_the_actors_the_caller_may_read() {
    let lab = started_lab();
    let actors = [
        "spiffe://acme.example/agents/pay-a",
        "spiffe://acme.example/agents/pay-b",
        "spiffe://acme.example/agents/reports",
        "spiffe://other.example/pay-c",
    ];
    for actor in actors {
        create_key(&lab, actor).await;
    }
    let mut admin = admin(&lab).await;
    for _ in 0..2 {
        admin
            .rotate_key(RotateKeyRequest {
                actor: actors[0].into(),
            })
            .await
            .unwrap();
    }
    write_policy(
        &lab,
        &format!(
            r#"
[[sign]]
callers = ["uid:{}"]
actors = ["spiffe://acme.example/agents/pay-*"]
actions = ["*"]
"#,
            own_uid()
        ),
    );
    lab.signal_daemon("HUP").unwrap();
    wait_for_log(&lab, "policy reloaded", 1);
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = admin
            .list_keys(ListKeysRequest {
                actor: String::new(),
                page_size: 2,
                page_token: token,
            })
            .await
            .unwrap()
            .into_inner();
        assert!(page.keys.len() <= 2);
        seen.extend(page.keys.into_iter().map(|k| (k.actor, k.version)));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    let expected: Vec<(String, u32)> = [
        (actors[0], 1),
        (actors[0], 2),
        (actors[0], 3),
        (actors[1], 1),
    ]
    .iter()
    .map(|(a, v)| (a.to_string(), *v))
    .collect();
    assert_eq!(seen, expected);
    let denied = admin
        .list_keys(ListKeysRequest {
            actor: actors[2].into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(denied.code(), tonic::Code::PermissionDenied, "{denied:?}");
}
