//! Time only moves forward in the log (FORMAT.md §11.4): the daemon on a real SoftHSM token with
//! its clock stepped back (a debug-build test clock, `ACTSEAL_TEST_CLOCK_OFFSET_FILE`) keeps
//! entries' times non-decreasing, across a restart too, or refuses to sign past its bound; and
//! `actseal audit` refuses a log with a backdated entry.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;
mod support;

use actseal::api::{RetireKeyRequest, RotateKeyRequest, SignResponse};
use actseal::verify::{TrustAnchors, audit::audit_log};
use base64::{Engine, engine::general_purpose::STANDARD as B64};
use common::*;
use tonic::Code;

const HOUR: i64 = 3600;

/// A lab whose daemon will date entries by the system clock shifted by what `clock` holds.
struct ShiftedLab {
    lab: TestLab,
    clock: std::path::PathBuf,
}

impl ShiftedLab {
    fn new(ledger_lines: &str) -> Self {
        let lab = new_lab();
        common::configure_ledger(&lab, ledger_lines);
        let clock = lab.dir.join("clock-offset");
        let shifted = ShiftedLab { lab, clock };
        shifted.shift(0);
        shifted
    }

    /// Sets the daemon's clock to the system clock plus `seconds`.
    fn shift(&self, seconds: i64) {
        std::fs::write(&self.clock, seconds.to_string()).unwrap();
    }

    fn start(&mut self) {
        let clock = self.clock.clone();
        self.lab
            .start_daemon_with(|command| {
                command.env("ACTSEAL_TEST_CLOCK_OFFSET_FILE", clock);
            })
            .expect("daemon start");
    }

    fn restart(&mut self) {
        self.lab.stop_daemon().expect("daemon stop");
        self.start();
    }
}

async fn sign(lab: &TestLab) -> Result<SignResponse, tonic::Status> {
    signer(lab)
        .await
        .sign(sign_request(ACTOR, DOCUMENT))
        .await
        .map(tonic::Response::into_inner)
}

fn unix(text: &str) -> i64 {
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .unwrap()
        .unix_timestamp()
}

fn signed_at(bundle_json: &str) -> i64 {
    unix(
        receipt_statement(bundle_json)["predicate"]["signedAt"]
            .as_str()
            .unwrap(),
    )
}

/// `rotatedAt` of the newest rotation in a bundle's lineage.
fn rotated_at(bundle_json: &str) -> i64 {
    let bundle: serde_json::Value = serde_json::from_str(bundle_json).unwrap();
    let rotation = bundle["lineage"]["rotations"]
        .as_array()
        .unwrap()
        .last()
        .unwrap();
    let payload = B64.decode(rotation["payload"].as_str().unwrap()).unwrap();
    let statement: serde_json::Value = serde_json::from_slice(&payload).unwrap();
    unix(statement["predicate"]["rotatedAt"].as_str().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clock_stepped_back_an_hour_keeps_times_forward_across_rotation_and_restart() {
    let mut lab = ShiftedLab::new("max_clock_step_back_s = 7200");
    lab.start();
    create_key(&lab.lab, ACTOR).await;

    // The clock runs half an hour ahead, then steps back an hour.
    lab.shift(HOUR / 2);
    let first = sign(&lab.lab).await.expect("sign").bundle_json;
    lab.shift(-HOUR / 2);
    let second = sign(&lab.lab)
        .await
        .expect("sign after the step back")
        .bundle_json;
    admin(&lab.lab)
        .await
        .rotate_key(RotateKeyRequest {
            actor: ACTOR.into(),
        })
        .await
        .expect("rotate after the step back");
    let third = sign(&lab.lab).await.expect("sign with v2").bundle_json;

    // The restarted daemon knows the newest time only from the log (the clock is still back).
    lab.restart();
    let fourth = sign(&lab.lab)
        .await
        .expect("sign after restart")
        .bundle_json;

    let times = [
        signed_at(&first),
        signed_at(&second),
        rotated_at(&third),
        signed_at(&third),
        signed_at(&fourth),
    ];
    assert!(
        times.windows(2).all(|w| w[0] <= w[1]),
        "times decrease: {times:?}"
    );
    // The clock stayed behind since the step back, so every later entry, the restarted
    // daemon's too, holds the first one's time (the restarted one had only its clock and the
    // log: the new key's createdAt is half an hour earlier).
    assert!(times.iter().all(|t| *t == times[0]), "{times:?}");
    for bundle in [&first, &second, &third, &fourth] {
        verify(&lab.lab, bundle, Some(DOCUMENT)).expect("every bundle verifies");
    }
    let audit = export_and_audit(&lab.lab, "log-export.json");
    assert!(
        audit.contains("4 receipts of 1 actors, 1 rotations"),
        "{audit}"
    );
    let log = std::fs::read_to_string(lab.lab.daemon_log()).unwrap();
    assert!(
        log.contains("the clock is behind the log") && log.contains("behind_s"),
        "the step back is logged with its size:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_back_past_the_bound_is_refused_until_the_clock_catches_up() {
    // The default bound: 300 s.
    let mut lab = ShiftedLab::new("");
    lab.start();
    create_key(&lab.lab, ACTOR).await;
    let first = sign(&lab.lab).await.expect("sign").bundle_json;

    lab.shift(-HOUR);
    let refused = sign(&lab.lab).await.expect_err("an hour back is refused");
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert!(
        refused.message().contains("max_clock_step_back_s"),
        "{refused:?}"
    );
    let retire = admin(&lab.lab)
        .await
        .retire_key(RetireKeyRequest {
            actor: ACTOR.into(),
            version: 1,
            keep_key: false,
        })
        .await
        .expect_err("retirement is an entry too");
    assert_eq!(retire.code(), Code::Unavailable, "{retire:?}");
    assert_eq!(receipt_count(&lab.lab), 1, "nothing was appended");

    // A restart does not forget: the newest time is read from the log.
    lab.restart();
    let refused = sign(&lab.lab).await.expect_err("still an hour back");
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");

    lab.shift(0);
    let next = sign(&lab.lab)
        .await
        .expect("the clock caught up")
        .bundle_json;
    assert!(signed_at(&next) >= signed_at(&first));
    verify(&lab.lab, &next, Some(DOCUMENT)).expect("verifies");
    export_and_audit(&lab.lab, "log-export.json");
}

#[test]
fn audit_refuses_a_log_with_a_backdated_entry() {
    let audit = |times: &[&str]| {
        let (export, anchor) = support::make_bundle::receipts_export(times);
        let anchors = TrustAnchors::from_pem(anchor.as_bytes()).unwrap();
        audit_log(export.as_bytes(), &anchors)
    };
    let honest = audit(&[
        "2026-11-26T18:00:00Z",
        "2026-11-26T18:00:00Z",
        "2026-11-26T18:05:00Z",
    ]);
    assert!(honest.is_ok(), "equal and later times pass: {honest:?}");

    let backdated = audit(&[
        "2026-11-26T18:00:00Z",
        "2026-11-26T18:05:00Z",
        "2026-11-26T18:04:59Z",
        "2026-11-26T18:06:00Z",
    ])
    .expect_err("a backdated entry is refused");
    // Entry 0 registers the key; the backdated receipt is entry 3.
    assert_eq!(backdated.index, Some(3), "{backdated}");
    assert_eq!(
        backdated.step,
        actseal::verify::audit::AuditStep::TimeOrder,
        "{backdated}"
    );
    assert!(
        backdated.to_string().contains("1 s before entry 2"),
        "{backdated}"
    );
}
