//! Witnesses for real (FORMAT.md §14): a daemon and three `actseal witness serve` processes,
//! each with its own SoftHSM token (Ed25519 key, CKM_EDDSA) and state, on loopback.
//!
//! - a 2-of-3 policy signs on with one witness down, and the bundle verifies under the
//!   policy offline; any altered byte of a cosignature fails;
//! - with two down, Sign answers UNAVAILABLE naming them; the receipt is in the log and a
//!   retry with the same request id returns it anchored once a witness is back;
//! - a forked log (an old copy of the database and token restored, other entries signed under
//!   the same log key) is refused by every witness that saw the other branch;
//! - a SIGKILLed witness keeps its state: restarted, it refuses what is inconsistent with it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::time::{Duration, Instant};

use actseal::lab::Lab;
use actseal::lab_witness::{LabWitness, configure_anchor};
use base64::{Engine, engine::general_purpose::STANDARD as B64};
use common::{ACTOR, DOCUMENT, TestLab, create_key, sign_request, signer};

/// A lab whose log exists, with `n` witnesses made for it (not started) and the daemon
/// stopped.
fn lab_with_witnesses(n: usize) -> (TestLab, Vec<LabWitness>) {
    lab_with_witnesses_on(common::Engine::Sqlite, n).unwrap()
}

/// [`lab_with_witnesses`] with the ledger on `engine`; `None` when it is missing.
fn lab_with_witnesses_on(engine: common::Engine, n: usize) -> Option<(TestLab, Vec<LabWitness>)> {
    let mut lab = common::new_lab_on(engine)?;
    lab.start_daemon().unwrap();
    lab.stop_daemon().unwrap();
    let witnesses = (1..=n)
        .map(|i| LabWitness::create(&lab, i).unwrap())
        .collect();
    Some((lab, witnesses))
}

fn start_all(lab: &Lab, witnesses: &mut [LabWitness]) {
    for w in witnesses {
        w.start(lab).unwrap();
    }
}

/// A witness policy of `threshold` of `witnesses`, written into the lab.
fn policy_file(lab: &Lab, witnesses: &[LabWitness], threshold: usize, name: &str) -> String {
    let mut text = String::from("# test policy\n");
    let mut names = Vec::new();
    for w in witnesses {
        text.push_str(&w.policy_line());
        names.push(w.name.clone());
    }
    text.push_str(&format!(
        "group g {threshold} {}\nquorum g\n",
        names.join(" ")
    ));
    let path = lab.path(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// `actseal verify --witness-policy`: (success, stdout+stderr).
fn verify_cli(lab: &Lab, bundle_json: &str, policy: &str) -> (bool, String) {
    let path = lab.path(&format!("bundle-{}.json", rand_suffix()));
    std::fs::write(&path, bundle_json).unwrap();
    let anchor = lab.anchor().display().to_string();
    let out = lab
        .run(&[
            "verify",
            &path,
            "--trust",
            &anchor,
            "--witness-policy",
            policy,
        ])
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

fn checkpoint_of(bundle_json: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(bundle_json).unwrap();
    v["log"]["checkpoint"].as_str().unwrap().to_owned()
}

fn cosigners(note: &str, witnesses: &[LabWitness]) -> Vec<String> {
    witnesses
        .iter()
        .filter(|w| note.contains(&format!("\u{2014} {} ", w.name)))
        .map(|w| w.name.clone())
        .collect()
}

async fn sign(lab: &Lab, document: &[u8], request_id: &str) -> Result<String, tonic::Status> {
    let mut request = sign_request(ACTOR, document);
    request.request_id = request_id.into();
    signer(lab)
        .await
        .sign(request)
        .await
        .map(|r| r.into_inner().bundle_json)
}

#[tokio::test(flavor = "multi_thread")]
async fn two_of_three_signs_with_one_down_and_cosignatures_verify() {
    let (mut lab, mut witnesses) = lab_with_witnesses(3);
    start_all(&lab, &mut witnesses);
    configure_anchor(
        &lab,
        &witnesses,
        2,
        "request_timeout_ms = 1000\nwait_ms = 8000",
    )
    .unwrap();
    lab.start_daemon().unwrap();
    create_key(&lab, ACTOR).await;

    let all_up = sign(&lab, DOCUMENT, "").await.unwrap();
    let note = checkpoint_of(&all_up);
    assert!(cosigners(&note, &witnesses).len() >= 2, "{note}");
    let two_of_three = policy_file(&lab, &witnesses, 2, "policy-2of3.txt");
    let (ok, out) = verify_cli(&lab, &all_up, &two_of_three);
    assert!(ok, "{out}");
    assert!(out.contains("policy met"), "{out}");

    // One witness down: signing goes on, cosigned by the other two.
    witnesses[2].kill().unwrap();
    let started = Instant::now();
    let one_down = sign(&lab, b"second document", "").await.unwrap();
    let note = checkpoint_of(&one_down);
    assert_eq!(
        cosigners(&note, &witnesses),
        vec![witnesses[0].name.clone(), witnesses[1].name.clone()],
        "{note}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    let (ok, out) = verify_cli(&lab, &one_down, &two_of_three);
    assert!(ok, "{out}");
    // A policy that needs the witness that was down fails, naming it.
    let all_three = policy_file(&lab, &witnesses, 3, "policy-3of3.txt");
    let (ok, out) = verify_cli(&lab, &one_down, &all_three);
    assert!(!ok && out.contains(&witnesses[2].name), "{out}");
    // The forensic view checks the cosignatures under a policy too: met (both receipts of the
    // actor, so no gap), and not met.
    let first = lab.path("all-up.json");
    std::fs::write(&first, &all_up).unwrap();
    let kept = lab.path("one-down.json");
    std::fs::write(&kept, &one_down).unwrap();
    let anchor = lab.anchor().display().to_string();
    let out = lab
        .run_ok(&[
            "actions",
            &first,
            &kept,
            "--trust",
            &anchor,
            "--witness-policy",
            &two_of_three,
        ])
        .unwrap();
    assert!(out.contains("witness policy met"), "{out}");
    let out = lab
        .run(&[
            "actions",
            &first,
            &kept,
            "--trust",
            &anchor,
            "--witness-policy",
            &all_three,
        ])
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("log.witnesses") && text.contains(&witnesses[2].name),
        "{text}"
    );

    // Any altered byte of a cosignature (key id, time, signature) fails.
    let line = note
        .lines()
        .find(|l| l.starts_with(&format!("\u{2014} {} ", witnesses[0].name)))
        .unwrap()
        .to_owned();
    let b64 = line.rsplit(' ').next().unwrap();
    let blob = B64.decode(b64).unwrap();
    for at in [0, 3, 4, 11, 12, 40, blob.len() - 1] {
        let mut altered = blob.clone();
        altered[at] ^= 0x01;
        let bundle = one_down.replacen(b64, &B64.encode(&altered), 1);
        let (ok, out) = verify_cli(&lab, &bundle, &two_of_three);
        assert!(!ok, "byte {at} altered still verifies: {out}");
    }
    // The offline verifier without a policy still accepts the bundle (cosignatures are
    // lines of other keys to it).
    common::verify(&lab, &one_down, Some(b"second document")).unwrap();

    // Interop: Go's golang.org/x/mod/sumdb/note reads the note and checks the log's ECDSA
    // signature and both cosignatures (verifiers from Go's standard crypto).
    if common::can_run(
        go_available(),
        "Go with golang.org/x/mod (golang-golang-x-mod-dev)",
    ) {
        let config = lab.config().display().to_string();
        let log_vkey = lab.run_ok(&["log", "vkey", "--config", &config]).unwrap();
        let keys = [
            log_vkey.trim().to_owned(),
            witnesses[0].vkey.clone(),
            witnesses[1].vkey.clone(),
        ];
        let (ok, out) = go_checknote(&lab, &note, &keys);
        assert!(ok, "{out}");
        println!("Go sumdb/note: {out}");
        let size = serde_json::from_str::<serde_json::Value>(&one_down).unwrap()["log"]["treeSize"]
            .as_u64()
            .unwrap();
        assert!(
            out.starts_with(&format!("OK {} {size} ", note.lines().next().unwrap())),
            "{out}"
        );
        let mut altered_blob = blob.clone();
        altered_blob[20] ^= 1;
        let altered = note.replacen(b64, &B64.encode(&altered_blob), 1);
        let (ok, out) = go_checknote(&lab, &altered, &keys);
        assert!(!ok, "Go accepted an altered cosignature: {out}");
        // The witness that was down has no cosignature on it: Go says so too.
        let mut with_third = keys.to_vec();
        with_third.push(witnesses[2].vkey.clone());
        let (ok, out) = go_checknote(&lab, &note, &with_third);
        assert!(!ok && out.contains(&witnesses[2].name), "{out}");
    }
}

fn go_available() -> bool {
    std::process::Command::new("go")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success())
        && std::path::Path::new("/usr/share/gocode/src/golang.org/x/mod/sumdb/note").is_dir()
}

/// Runs tests/interop/checknote.go on `note` with the verifier keys `vkeys`.
fn go_checknote(lab: &Lab, note: &str, vkeys: &[String]) -> (bool, String) {
    let path = lab.path(&format!("note-{}.txt", rand_suffix()));
    std::fs::write(&path, note).unwrap();
    let source = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/checknote.go");
    let cache = concat!(env!("CARGO_MANIFEST_DIR"), "/target/go-build-cache");
    let out = std::process::Command::new("go")
        .args(["run", source, &path])
        .args(vkeys)
        .env("GO111MODULE", "off")
        .env("GOPATH", "/usr/share/gocode")
        .env("GOCACHE", cache)
        .env("GOFLAGS", "")
        .current_dir(&lab.dir)
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn two_down_is_unavailable_and_a_retry_gets_the_anchored_receipt() {
    two_down_is_unavailable_and_a_retry_gets_the_anchored_receipt_on(common::Engine::Sqlite).await;
}

/// The anchored checkpoints and witness sizes in PostgreSQL's tables.
#[tokio::test(flavor = "multi_thread")]
async fn two_down_is_unavailable_and_a_retry_gets_the_anchored_receipt_on_postgres() {
    two_down_is_unavailable_and_a_retry_gets_the_anchored_receipt_on(common::Engine::Postgres)
        .await;
}

async fn two_down_is_unavailable_and_a_retry_gets_the_anchored_receipt_on(engine: common::Engine) {
    let Some((mut lab, mut witnesses)) = lab_with_witnesses_on(engine, 3) else {
        return;
    };
    start_all(&lab, &mut witnesses);
    configure_anchor(
        &lab,
        &witnesses,
        2,
        "request_timeout_ms = 500\nwait_ms = 1500\nretry_ms = 200",
    )
    .unwrap();
    lab.start_daemon().unwrap();
    create_key(&lab, ACTOR).await;
    sign(&lab, DOCUMENT, "").await.unwrap();

    witnesses[1].kill().unwrap();
    witnesses[2].kill().unwrap();
    let refused = sign(&lab, b"while two are down", "retry-1")
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    let message = refused.message();
    assert!(
        message.contains(&witnesses[1].name) && message.contains(&witnesses[2].name),
        "{message}"
    );
    assert!(!message.contains(&witnesses[0].name), "{message}");
    assert!(message.contains("durably in the log"), "{message}");
    assert_eq!(common::receipt_count(&lab), 2);

    // One comes back: the retry returns the same receipt, anchored.
    witnesses[1].start(&lab).unwrap();
    let bundle = sign(&lab, b"while two are down", "retry-1").await.unwrap();
    assert_eq!(common::receipt_count(&lab), 2);
    let note = checkpoint_of(&bundle);
    assert_eq!(
        cosigners(&note, &witnesses),
        vec![witnesses[0].name.clone(), witnesses[1].name.clone()]
    );
    let policy = policy_file(&lab, &witnesses, 2, "policy.txt");
    let (ok, out) = verify_cli(&lab, &bundle, &policy);
    assert!(ok, "{out}");
    if let Some(pg) = &lab.pg {
        let anchored = pg
            .query_i64("ledger", "SELECT COUNT(*) FROM anchored_checkpoints")
            .unwrap();
        assert!(anchored >= 1, "no anchored checkpoint in PostgreSQL");
    }
}

/// The daemon's token directory (SoftHSM keeps one sub-directory per token).
fn daemon_token_dir(lab: &Lab) -> std::path::PathBuf {
    std::fs::read_dir(lab.dir.join("tokens"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            std::fs::read(p.join("token.object"))
                .map(|b| {
                    let label = actseal::lab::TOKEN_LABEL.as_bytes();
                    b.windows(label.len() + 1)
                        .any(|w| &w[..label.len()] == label && w[label.len()] == b' ')
                })
                .unwrap_or(false)
        })
        .expect("the daemon's token directory")
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_forked_log_is_refused_by_the_witnesses_that_saw_the_other_branch() {
    let (mut lab, mut witnesses) = lab_with_witnesses(3);
    configure_anchor(
        &lab,
        &witnesses,
        2,
        "request_timeout_ms = 1000\nwait_ms = 3000\nretry_ms = 300",
    )
    .unwrap();
    lab.start_daemon().unwrap();
    create_key(&lab, ACTOR).await;
    lab.stop_daemon().unwrap();
    // The operator keeps a copy of the database and of the log's token.
    let snapshot = lab.dir.join("snapshot");
    let token = daemon_token_dir(&lab);
    copy_dir(&lab.dir.join("state"), &snapshot.join("state"));
    copy_dir(&token, &snapshot.join("token"));

    // Branch A, seen by witnesses 1 and 2.
    witnesses[0].start(&lab).unwrap();
    witnesses[1].start(&lab).unwrap();
    lab.start_daemon().unwrap();
    let branch_a = sign(&lab, b"branch A", "").await.unwrap();
    assert_eq!(cosigners(&checkpoint_of(&branch_a), &witnesses).len(), 2);
    lab.stop_daemon().unwrap();

    // The fork: the old copy restored, other entries signed under the same log key.
    std::fs::remove_dir_all(lab.dir.join("state")).unwrap();
    copy_dir(&snapshot.join("state"), &lab.dir.join("state"));
    std::fs::remove_dir_all(&token).unwrap();
    copy_dir(&snapshot.join("token"), &token);
    witnesses[2].start(&lab).unwrap();
    lab.start_daemon().unwrap();
    let mut refusals = 0;
    for i in 0..3 {
        match sign(&lab, format!("branch B {i}").as_bytes(), "").await {
            Ok(bundle) => panic!(
                "a forked checkpoint was anchored: {}",
                checkpoint_of(&bundle)
            ),
            Err(status) => {
                assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
                // Only the witness that never saw branch A may cosign branch B.
                assert!(status.message().contains(&witnesses[0].name));
                assert!(status.message().contains(&witnesses[1].name));
                refusals += 1;
            }
        }
    }
    assert_eq!(refusals, 3);
    for w in &witnesses[..2] {
        let log = w.log_text();
        assert!(
            log.contains("refused"),
            "witness {} did not refuse: {log}",
            w.name
        );
    }
    // Witnesses 1 and 2 still hold branch A's checkpoint.
    let a_note = checkpoint_of(&branch_a);
    let a_text = &a_note[..a_note.find("\n\n").unwrap()];
    for w in &witnesses[..2] {
        let held: Vec<String> = std::fs::read_dir(&w.state_dir)
            .unwrap()
            .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap_or_default())
            .collect();
        assert!(held.iter().any(|n| n.starts_with(a_text)), "{held:?}");
    }
}

/// The note with only its first signature line (the log's).
fn log_signed(note: &str) -> String {
    let at = note.find("\n\n").unwrap();
    let first = note[at + 2..].lines().next().unwrap();
    format!("{}\n{first}\n", &note[..=at])
}

/// POSTs a raw add-checkpoint request; returns (status, content type, body).
async fn post(url: &str, body: String) -> (u16, Option<String>, String) {
    let answer = actseal::anchor::http::post(
        url,
        "/add-checkpoint",
        "text/plain",
        body.into_bytes(),
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    (
        answer.status,
        answer.content_type,
        String::from_utf8_lossy(&answer.body).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sigkilled_witness_keeps_its_state() {
    let (mut lab, mut witnesses) = lab_with_witnesses(1);
    start_all(&lab, &mut witnesses);
    configure_anchor(&lab, &witnesses, 1, "request_timeout_ms = 1000").unwrap();
    lab.start_daemon().unwrap();
    create_key(&lab, ACTOR).await;
    let first = sign(&lab, b"one", "").await.unwrap();
    let second = sign(&lab, b"two", "").await.unwrap();
    let second_size =
        serde_json::from_str::<serde_json::Value>(&second).unwrap()["log"]["treeSize"]
            .as_u64()
            .unwrap();

    witnesses[0].kill().unwrap();
    witnesses[0].start(&lab).unwrap();
    // The older checkpoint, as if new (old 0): 409 with the size it holds.
    let old_note = log_signed(&checkpoint_of(&first));
    let (status, content_type, body) =
        post(&witnesses[0].url, format!("old 0\n\n{old_note}")).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(content_type.as_deref(), Some("text/x.tlog.size"));
    assert_eq!(body, format!("{second_size}\n"));
    // A malformed request is 400; a note signed by no configured log 404.
    let (status, _, _) = post(&witnesses[0].url, "old x\n\nnote".into()).await;
    assert_eq!(status, 400);
    let foreign = old_note.replacen(
        &old_note[..old_note.find('\n').unwrap()],
        "other.example/log",
        1,
    );
    let (status, _, _) = post(&witnesses[0].url, format!("old 0\n\n{foreign}")).await;
    assert_eq!(status, 404);

    // Signing goes on from the size the restarted witness kept.
    let third = sign(&lab, b"three", "").await.unwrap();
    assert_eq!(cosigners(&checkpoint_of(&third), &witnesses).len(), 1);
    lab.stop_daemon().unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn logged_mode_answers_at_once_and_proofs_later_carry_the_cosignatures() {
    let (mut lab, mut witnesses) = lab_with_witnesses(2);
    start_all(&lab, &mut witnesses);
    configure_anchor(&lab, &witnesses, 2, "acknowledge = \"logged\"").unwrap();
    lab.start_daemon().unwrap();
    create_key(&lab, ACTOR).await;
    let mut client = signer(&lab).await;
    let signed = client
        .sign(sign_request(ACTOR, DOCUMENT))
        .await
        .unwrap()
        .into_inner();
    // The log-signed checkpoint only.
    assert!(cosigners(&checkpoint_of(&signed.bundle_json), &witnesses).is_empty());
    let policy = policy_file(&lab, &witnesses, 2, "policy.txt");
    let (ok, out) = verify_cli(&lab, &signed.bundle_json, &policy);
    assert!(!ok && out.contains("not met"), "{out}");
    // Soon after, the newest proof is against the anchored checkpoint.
    let deadline = Instant::now() + Duration::from_secs(10);
    let proof = loop {
        let proof = client
            .get_inclusion_proof(actseal::api::GetInclusionProofRequest {
                log_index: signed.log_index,
                tree_size: 0,
            })
            .await
            .unwrap()
            .into_inner();
        if cosigners(&proof.checkpoint, &witnesses).len() == 2 {
            break proof;
        }
        assert!(
            Instant::now() < deadline,
            "never anchored: {}",
            proof.checkpoint
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(checkpoint_of(&proof.bundle_json), proof.checkpoint);
    let (ok, out) = verify_cli(&lab, &proof.bundle_json, &policy);
    assert!(ok, "{out}");
    common::verify(&lab, &proof.bundle_json, Some(DOCUMENT)).unwrap();

    // The same proof as a C2SP tlog-proof@v1 file: the index, the hashes, the cosigned note.
    let (bundle_out, tlog_out) = (lab.path("proof.json"), lab.path("proof.tlog-proof"));
    let index = signed.log_index.to_string();
    lab.run_ok(&[
        "log",
        "proof",
        "--index",
        &index,
        "--out",
        &bundle_out,
        "--tlog-proof",
        &tlog_out,
    ])
    .unwrap();
    let text = std::fs::read_to_string(&tlog_out).unwrap();
    let parsed = actseal::verify::tlog_proof::parse(&text).unwrap();
    let bundle: serde_json::Value = serde_json::from_str(&proof.bundle_json).unwrap();
    assert_eq!(parsed.index, signed.log_index);
    let hex_hashes: Vec<String> = parsed.hashes.iter().map(hex::encode).collect();
    assert_eq!(
        serde_json::json!(hex_hashes),
        bundle["log"]["inclusionProof"]
    );
    assert_eq!(cosigners(&parsed.note, &witnesses).len(), 2, "{text}");
}

/// Sign `count` actions, `concurrency` at a time; returns the rate (signs per second).
async fn sign_rate(lab: &Lab, count: usize, concurrency: usize) -> f64 {
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..concurrency {
        let mut client = signer(lab).await;
        let per = count / concurrency;
        tasks.spawn(async move {
            for i in 0..per {
                let doc = format!("bench {worker} {i}");
                client
                    .sign(sign_request(ACTOR, doc.as_bytes()))
                    .await
                    .unwrap();
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    count as f64 / started.elapsed().as_secs_f64()
}

/// Median latency of `count` single Sign calls, one after another.
async fn sign_latency_ms(lab: &Lab, count: usize) -> f64 {
    let mut client = signer(lab).await;
    let mut times = Vec::new();
    for i in 0..count {
        let started = Instant::now();
        client
            .sign(sign_request(ACTOR, format!("latency {i}").as_bytes()))
            .await
            .unwrap();
        times.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

/// The figures of the closing note: Sign latency and rate with witnessing off and on (two
/// witnesses, 2-of-2, `anchored`), and the anchoring time per checkpoint from the daemon's
/// log, in one run. `cargo test --release --test witness -- --ignored witness_figures --nocapture`
#[tokio::test(flavor = "multi_thread")]
#[ignore]
async fn witness_figures() {
    let (mut lab, mut witnesses) = lab_with_witnesses(2);
    start_all(&lab, &mut witnesses);
    lab.start_daemon().unwrap();
    create_key(&lab, ACTOR).await;
    sign_rate(&lab, 200, 8).await;
    let off_latency = sign_latency_ms(&lab, 100).await;
    let off_rate = sign_rate(&lab, 2000, 32).await;
    lab.stop_daemon().unwrap();
    configure_anchor(&lab, &witnesses, 2, "").unwrap();
    lab.start_daemon().unwrap();
    sign_rate(&lab, 200, 8).await;
    let on_latency = sign_latency_ms(&lab, 100).await;
    let on_rate = sign_rate(&lab, 2000, 32).await;
    let log = std::fs::read_to_string(lab.daemon_log()).unwrap();
    let rounds: Vec<f64> = log
        .lines()
        .filter(|l| l.contains("checkpoint anchored"))
        .filter_map(|l| l.split(" ms=").nth(1))
        .filter_map(|v| v.split_whitespace().next()?.parse().ok())
        .collect();
    let mean = rounds.iter().sum::<f64>() / rounds.len().max(1) as f64;
    println!(
        "witnessing off: Sign median {off_latency:.2} ms sequential, {off_rate:.0} signs/s (32 concurrent)"
    );
    println!(
        "witnessing on (2 witnesses, 2-of-2, anchored): Sign median {on_latency:.2} ms sequential, {on_rate:.0} signs/s (32 concurrent)"
    );
    println!(
        "anchoring rounds: {} (mean {mean:.2} ms per anchored checkpoint)",
        rounds.len()
    );
}

/// The cosignature vector of FORMAT.md §14 (`tests/vectors/cosigned-checkpoint-v1.txt`): the
/// checkpoint vector cosigned by an Ed25519 witness key whose seed is 32 bytes of 0x01, at time
/// 1764547200 (Ed25519 is deterministic, so the line is reproducible). Regenerate with
/// `ACTSEAL_REGEN_VECTORS=1 cargo test --test witness cosignature_vector`.
#[test]
fn cosignature_vector() {
    use actseal::verify::cosignature::*;
    use ed25519_dalek::Signer;
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/vectors");
    let note = std::fs::read_to_string(format!("{dir}/checkpoint-v1.txt")).unwrap();
    let signing = ed25519_dalek::SigningKey::from_bytes(&[1u8; 32]);
    let name = "witness.actseal.example/w1";
    let public = signing.verifying_key().to_bytes();
    let vkey = format_vkey(name, SIGNATURE_TYPE_COSIGNATURE, &public);
    let text = &note[..=note.find("\n\n").unwrap()];
    let time = 1_764_547_200u64;
    let message = signed_message(text, time);
    assert!(message.starts_with(b"cosignature/v1\ntime 1764547200\nlog.actseal.example/test\n"));
    let key = parse_vkey(&vkey).unwrap();
    let line = cosignature_line(name, key.key_id, time, &signing.sign(&message).to_bytes());
    let cosigned = format!("{note}{line}");
    let path = format!("{dir}/cosigned-checkpoint-v1.txt");
    if std::env::var("ACTSEAL_REGEN_VECTORS").is_ok() {
        std::fs::write(&path, format!("{vkey}\n\n{cosigned}")).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap();
    assert_eq!(committed, format!("{vkey}\n\n{cosigned}"));
    assert_eq!(verify_cosignature(cosigned.as_bytes(), &key), Ok(time));
    println!("{vkey}\n{}\n{line}", hex::encode(&message));
}
