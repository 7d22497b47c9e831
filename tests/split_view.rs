//! Split views (FORMAT.md §16): a log forked for real — the operator restores an old copy of
//! the database (and of the token, whose log head would otherwise refuse it) and signs other
//! entries under the same log key. Each bundle of either branch verifies on its own; `actseal
//! monitor` keeps what it has seen and reports the fork with evidence that `actseal verify-log
//! --fork-evidence` checks; `verify-log` refuses a consistency proof that does not fit the
//! bundle's own checkpoint, naming the split view.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::path::Path;
use std::process::Command;

use actseal::lab::Lab;
use common::{ACTOR, create_key, sign_request, signer, started_lab, verify};

async fn sign_all(lab: &Lab, docs: &[&str]) -> Vec<String> {
    let mut client = signer(lab).await;
    let mut out = Vec::new();
    for doc in docs {
        let answer = client
            .sign(sign_request(ACTOR, doc.as_bytes()))
            .await
            .expect("sign")
            .into_inner();
        out.push(answer.bundle_json);
    }
    out
}

fn save(lab: &Lab, name: &str, text: &str) -> String {
    let path = lab.path(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn copy(from: &Path, to: &Path) {
    let _ = std::fs::remove_dir_all(to);
    let status = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap();
    assert!(status.success());
}

/// (size, root line) of a bundle's checkpoint.
fn checkpoint_of(bundle: &str) -> (u64, String) {
    let v: serde_json::Value = serde_json::from_str(bundle).unwrap();
    let note = v["log"]["checkpoint"].as_str().unwrap();
    let lines: Vec<&str> = note.lines().collect();
    (lines[1].parse().unwrap(), lines[2].to_string())
}

fn run(lab: &Lab, args: &[&str]) -> (Option<i32>, String) {
    let out = lab.run(args).unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restored_database_forks_the_log_and_the_monitor_proves_it() {
    let mut lab = started_lab();
    create_key(&lab, ACTOR).await;
    let base = sign_all(&lab, &["base-1", "base-2"]).await;
    // The operator's copy: the database and the token (its log head would refuse the
    // database alone), taken with the daemon stopped.
    lab.stop_daemon().unwrap();
    let snapshot = lab.dir.join("snapshot");
    std::fs::create_dir_all(&snapshot).unwrap();
    copy(&lab.dir.join("state"), &snapshot.join("state"));
    copy(&lab.dir.join("tokens"), &snapshot.join("tokens"));
    lab.start_daemon().unwrap();
    let a = sign_all(&lab, &["A-1", "A-2", "A-3"]).await;
    let anchor = lab.anchor().display().to_string();
    let state = lab.path("monitor");
    let mut files = Vec::new();
    for (i, b) in base.iter().chain(&a).enumerate() {
        files.push(save(&lab, &format!("seen-{i}.json"), b));
    }
    let mut args = vec!["monitor", "--state", &state, "--trust", &anchor];
    args.extend(files.iter().map(String::as_str));
    let (code, out) = run(&lab, &args);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("no fork"), "{out}");

    // The fork: restore the copy under the same log key and sign other entries.
    lab.stop_daemon().unwrap();
    copy(&snapshot.join("state"), &lab.dir.join("state"));
    copy(&snapshot.join("tokens"), &lab.dir.join("tokens"));
    lab.start_daemon().unwrap();
    let b = sign_all(&lab, &["B-1", "B-2"]).await;
    let (a0, b0) = (checkpoint_of(&a[0]), checkpoint_of(&b[0]));
    assert_eq!(a0.0, b0.0, "both branches checkpoint the same size");
    assert_ne!(a0.1, b0.1, "with different roots");
    // Each branch's bundles verify on their own: one bundle cannot show the fork.
    verify(&lab, &a[0], None).unwrap();
    verify(&lab, &b[0], None).unwrap();

    // The monitor, shown one bundle of the other branch, reports the fork.
    let b_file = save(&lab, "other-branch.json", &b[0]);
    let evidence = lab.path("fork.json");
    let (code, out) = run(
        &lab,
        &[
            "monitor",
            "--state",
            &state,
            "--trust",
            &anchor,
            "--evidence",
            &evidence,
            &b_file,
        ],
    );
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("FORK: log"), "{out}");
    assert!(out.contains(&format!("size {}", a0.0)), "{out}");
    // A third party checks the evidence with the anchor alone.
    let (code, out) = run(
        &lab,
        &[
            "verify-log",
            "--fork-evidence",
            &evidence,
            "--trust",
            &anchor,
        ],
    );
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains(&format!("signed two checkpoints of size {}", a0.0)),
        "{out}"
    );

    // Evidence that is not evidence is refused: one checkpoint twice, or a note altered.
    let mut e: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&evidence).unwrap()).unwrap();
    let mut twice = e.clone();
    twice["checkpoints"][1] = twice["checkpoints"][0].clone();
    let twice = save(&lab, "twice.json", &twice.to_string());
    let (code, out) = run(
        &lab,
        &["verify-log", "--fork-evidence", &twice, "--trust", &anchor],
    );
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("not a fork"), "{out}");
    let note = e["checkpoints"][1].as_str().unwrap().to_string();
    let root = note.lines().nth(2).unwrap().to_string();
    let other_root = checkpoint_of(&a[1]).1;
    e["checkpoints"][1] = note.replace(&root, &other_root).into();
    let forged = save(&lab, "forged.json", &e.to_string());
    let (code, out) = run(
        &lab,
        &["verify-log", "--fork-evidence", &forged, "--trust", &anchor],
    );
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("does not verify"), "{out}");

    // verify-log: the daemon's (branch B) consistency proof from the size of A's bundle does
    // not fit that bundle's checkpoint: a split view, named.
    let proof = lab.path("b-consistency.json");
    lab.run_ok(&[
        "log",
        "consistency",
        "--old",
        &a0.0.to_string(),
        "--out",
        &proof,
    ])
    .unwrap();
    let a_file = save(&lab, "a0.json", &a[0]);
    let (code, out) = run(
        &lab,
        &[
            "verify-log",
            &proof,
            "--bundle",
            &a_file,
            "--trust",
            &anchor,
        ],
    );
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("SPLIT VIEW"), "{out}");
    // The same proof with a bundle of its own branch verifies.
    let (code, out) = run(
        &lab,
        &[
            "verify-log",
            &proof,
            "--bundle",
            &b_file,
            "--trust",
            &anchor,
        ],
    );
    assert_eq!(code, Some(0), "{out}");

    // A fresh monitor that saw only branch A asks the daemon (branch B) and finds the fork.
    let fresh = lab.path("monitor-fetch");
    let mut args = vec!["monitor", "--state", &fresh, "--trust", &anchor, "--fetch"];
    args.extend(files.iter().map(String::as_str));
    let (code, out) = run(&lab, &args);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("FORK"), "{out}");

    // Different sizes: A's checkpoint at m and B's at n > m, with B's own consistency path
    // from m to n; the path fixes B's tree at size m, which is not A's.
    let b1 = checkpoint_of(&b[1]);
    assert!(b1.0 > a0.0);
    let proof: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(lab.path("b-consistency.json")).unwrap())
            .unwrap();
    assert_eq!(proof["newSize"].as_u64(), Some(b1.0));
    let hashes: Vec<[u8; 32]> = proof["hashes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            hex::decode(h.as_str().unwrap())
                .unwrap()
                .try_into()
                .unwrap()
        })
        .collect();
    let b_at_m = actseal::verify::checkpoint::parse_checkpoint(
        proof["oldCheckpoint"].as_str().unwrap().as_bytes(),
    )
    .unwrap();
    let a_note = serde_json::from_str::<serde_json::Value>(&a[0]).unwrap()["log"]["checkpoint"]
        .as_str()
        .unwrap()
        .to_string();
    let origin = b_at_m.origin.clone();
    let evidence = actseal::verify::fork::proof_evidence(
        &origin,
        a[0].as_bytes(),
        &a_note,
        proof["newCheckpoint"].as_str().unwrap(),
        &hashes,
        &b_at_m.root,
    )
    .unwrap();
    let path = save(&lab, "fork-sizes.json", &evidence);
    let (code, out) = run(
        &lab,
        &["verify-log", "--fork-evidence", &path, "--trust", &anchor],
    );
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("whose tree has root"), "{out}");
    // The same path with B's own checkpoint at m shows consistency, not a fork.
    let consistent = actseal::verify::fork::proof_evidence(
        &origin,
        b[1].as_bytes(),
        proof["oldCheckpoint"].as_str().unwrap(),
        proof["newCheckpoint"].as_str().unwrap(),
        &hashes,
        &b_at_m.root,
    )
    .unwrap();
    let path = save(&lab, "not-a-fork.json", &consistent);
    let (code, out) = run(
        &lab,
        &["verify-log", "--fork-evidence", &path, "--trust", &anchor],
    );
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("not a fork"), "{out}");
}

/// The committed vector (FORMAT.md §16): `same-size` evidence built from the committed bundle
/// (`bundle-v1.json`, its checkpoint of size 6) and a second checkpoint of size 6 over another
/// root, signed by the same software log key (scalar SHA-256("actseal test log key"), RFC 6979).
/// Regenerate with `ACTSEAL_REGEN_VECTORS=1 cargo test --test split_view committed_vector`.
#[test]
fn committed_vector() {
    use p256::ecdsa::signature::hazmat::PrehashSigner;
    use p256::pkcs8::EncodePublicKey;
    use sha2::{Digest, Sha256};
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors");
    let bundle = std::fs::read(dir.join("bundle-v1.json")).unwrap();
    let v: serde_json::Value = serde_json::from_slice(&bundle).unwrap();
    let origin = v["log"]["logKey"]["keyName"].as_str().unwrap();
    let ours = v["log"]["checkpoint"].as_str().unwrap();
    let key =
        p256::ecdsa::SigningKey::from_bytes(&Sha256::digest(b"actseal test log key")).unwrap();
    let spki = key.verifying_key().to_public_key_der().unwrap().into_vec();
    let other_root: [u8; 32] = Sha256::digest(b"actseal fork vector: another tree").into();
    let other = actseal::ledger::checkpoint::Checkpoint::new(origin, 6, other_root)
        .unwrap()
        .signed_note(origin, &spki, |digest| {
            Ok::<_, actseal::ledger::checkpoint::CheckpointError>(key.sign_prehash(digest).unwrap())
        })
        .unwrap();
    let evidence =
        actseal::verify::fork::same_size_evidence(origin, &bundle, ours, &other).unwrap();
    let path = dir.join("fork-evidence-v1.json");
    if std::env::var_os("ACTSEAL_REGEN_VECTORS").is_some_and(|v| v == "1") {
        std::fs::write(&path, &evidence).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap();
    assert_eq!(
        committed, evidence,
        "tests/vectors/fork-evidence-v1.json differs from the generator's"
    );
    let anchors =
        actseal::verify::TrustAnchors::from_pem(&std::fs::read(dir.join("anchor.pem")).unwrap())
            .unwrap();
    let report =
        actseal::verify::fork::verify_fork_evidence(committed.as_bytes(), &anchors).unwrap();
    eprintln!("{report}");
    assert_eq!(report.sizes, (6, 6));
    assert_eq!(report.roots.1, other_root);
}

/// The inconsistent-proof check (§16.1) on every pair of sizes of trees up to 48 leaves: the
/// daemon's own consistency path (with the power-of-two prefix root first) gives the roots it
/// should; run against a forked tree (another leaf below the old size) it gives at the old size
/// the fork's root, never the original's.
#[test]
fn consistency_paths_fix_the_prefix_root() {
    use actseal::ledger::merkle::{Frontier, Hash, consistency_proof, leaf_hash, root_at};
    use actseal::verify::fork::roots_from_path;
    use std::collections::HashMap;
    fn build(leaves: &[Hash]) -> HashMap<(u8, u64), Hash> {
        let mut frontier = Frontier::default();
        let mut store = HashMap::new();
        for leaf in leaves {
            for (level, index, hash) in frontier.append(*leaf) {
                store.insert((level, index), hash);
            }
        }
        store
    }
    let leaves: Vec<Hash> = (0u64..48).map(|i| leaf_hash(&i.to_be_bytes())).collect();
    let store = build(&leaves);
    for n in 2..=48u64 {
        for m in 1..n {
            let mut forked = leaves[..n as usize].to_vec();
            forked[(m - 1) as usize] = leaf_hash(b"the other branch");
            let fork = build(&forked);
            let proof = consistency_proof(&fork, m, n).unwrap();
            let mut path = Vec::new();
            if m.is_power_of_two() {
                path.push(root_at(&fork, m).unwrap());
            }
            path.extend(proof);
            let (prefix, full) = roots_from_path(m, n, &path).unwrap();
            assert_eq!(full, root_at(&fork, n).unwrap(), "{m} → {n}");
            assert_eq!(prefix, root_at(&fork, m).unwrap(), "{m} → {n}");
            assert_ne!(prefix, root_at(&store, m).unwrap(), "{m} → {n}");
            // A shortened or lengthened path proves nothing.
            assert!(roots_from_path(m, n, &path[..path.len() - 1]).map_or(true, |r| r.1 != full));
        }
    }
}
