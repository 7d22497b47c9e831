//! `[testing] emulate_signatures_per_second` (src/backend/throttle.rs), the benchmark aid that
//! makes SoftHSM as slow as a discrete TPM: the daemon says so at start, signs no faster than
//! the rate with any number of clients, and what it signs still verifies.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_emulated_tpm_signs_no_faster_than_its_rate() {
    let mut lab = new_lab();
    let config = std::fs::read_to_string(lab.config()).unwrap();
    std::fs::write(
        lab.config(),
        format!("{config}\n[testing]\nemulate_signatures_per_second = 20\n"),
    )
    .unwrap();
    lab.start_daemon().unwrap();
    wait_for_log(&lab, "BENCHMARK AID", 1);
    create_key(&lab, ACTOR).await;
    // 8 concurrent Signs: each needs its receipt signature, and their commits at least one
    // checkpoint signature: at least 9 signatures, 1/20 s apart.
    let start = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..8u8 {
        let mut client = signer(&lab).await;
        tasks.push(tokio::spawn(async move {
            client
                .sign(sign_request(ACTOR, &[b'd', i]))
                .await
                .unwrap()
                .into_inner()
        }));
    }
    for (i, task) in tasks.into_iter().enumerate() {
        let signed = task.await.unwrap();
        verify(&lab, &signed.bundle_json, Some(&[b'd', i as u8])).unwrap();
    }
    let elapsed = start.elapsed();
    assert!(
        elapsed >= Duration::from_millis(8 * 50),
        "9 signatures at 20/s took only {elapsed:?}"
    );
}
