//! Anchoring in fleet mode (issue 12) against the real thing: one PostgreSQL server, three
//! daemons with their own SoftHSM tokens sharing one log token, two `actseal witness serve`
//! processes (quorum 2) and a test RFC 3161 authority, `acknowledge = "anchored"`.
//!
//! - every node signs; every bundle carries both cosignatures and a token and verifies
//!   offline under the witness policy and the TSA's CA (library and `actseal verify`);
//! - the lease holder is SIGKILLed under load: another node takes over anchoring from the
//!   shared tables, signing goes on; each witness's own log shows the sizes it cosigned only
//!   growing, and no witness cosigned two roots for one size; the export audits clean;
//! - a node in the `logged` mode answers at once and `GetInclusionProof` then gives the
//!   anchored proof.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use common::fleet::{Acked, FLEET, actor, collect, create_actors, document, set_up_in};

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use actseal::{
    api::GetInclusionProofRequest,
    lab_fleet::Fleet,
    lab_tsa::{EssCertId, TestTsa, TsaKey},
    lab_witness::{LabWitness, configure_anchor},
    verify::{
        TrustAnchors, checkpoint::parse_checkpoint, timestamp::TsaAnchors, verify_bundle,
        verify_bundle_timestamps, witness_policy::WitnessPolicy,
    },
};
use tempfile::TempDir;

/// What `[anchor]` says besides the witnesses (the TSA is appended).
const ANCHOR: &str = "acknowledge = \"anchored\"\nrequest_timeout_ms = 2000\nwait_ms = 20000";

struct AnchoredFleet {
    fleet: Fleet,
    witnesses: Vec<LabWitness>,
    tsa: TestTsa,
    /// The verifier's witness policy (both witnesses, quorum 2), as text and as a file.
    policy: String,
    policy_file: PathBuf,
    _dir: TempDir,
}

/// Three nodes, two witnesses and a TSA, every node anchoring (`ANCHOR` + `extra` lines),
/// `actors` actors each; `None` where PostgreSQL is missing (a failure under CI=true).
async fn anchored_fleet(actors: usize) -> Option<AnchoredFleet> {
    let ((mut fleet, witnesses, tsa), dir) = set_up_in("actseal-fleet-anchor-", set_up).await?;
    create_actors(&mut fleet, actors).await;
    let mut policy = String::from("# both witnesses\n");
    for w in &witnesses {
        policy.push_str(&w.policy_line());
    }
    let names: Vec<&str> = witnesses.iter().map(|w| w.name.as_str()).collect();
    policy.push_str(&format!("group g 2 {}\nquorum g\n", names.join(" ")));
    let policy_file = dir.path().join("policy.txt");
    std::fs::write(&policy_file, &policy).unwrap();
    Some(AnchoredFleet {
        fleet,
        witnesses,
        tsa,
        policy,
        policy_file,
        _dir: dir,
    })
}

/// The fleet started once (the log key made), two witnesses made for its log and started, a
/// TSA, and the nodes restarted with `[anchor]`.
fn set_up(exe: &Path, dir: &Path) -> (Fleet, Vec<LabWitness>, TestTsa) {
    let mut fleet = Fleet::create(exe, dir, 3, FLEET).expect("fleet set-up");
    // The log key exists once an integrator set the log up: the witnesses are made for it.
    fleet.start_all().expect("fleet start");
    for node in &mut fleet.nodes {
        node.stop_daemon().unwrap();
    }
    let mut witnesses: Vec<LabWitness> = (1..=2)
        .map(|i| LabWitness::create(&fleet.nodes[0], i).unwrap())
        .collect();
    for w in &mut witnesses {
        w.start(&fleet.nodes[0]).unwrap();
    }
    let tsa = TestTsa::start(
        &dir.join("tsa"),
        "fleet-tsa",
        TsaKey::P256,
        EssCertId::Sha256,
    )
    .expect("test TSA");
    for node in &fleet.nodes {
        configure_anchor(node, &witnesses, 2, ANCHOR).unwrap();
        tsa.add_to_config(&node.config()).unwrap();
    }
    fleet.start_all().expect("fleet restart with [anchor]");
    (fleet, witnesses, tsa)
}

/// [`common::fleet::spawn_load`], each action retried for up to two minutes.
fn spawn_load(
    fleet: &Fleet,
    workers: usize,
    count: usize,
    tag: &str,
    stop: &Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<Vec<Acked>>> {
    common::fleet::spawn_load(fleet, workers, count, tag, stop, Duration::from_secs(120)).0
}

fn checkpoint_of(bundle: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(bundle).unwrap();
    v["log"]["checkpoint"].as_str().unwrap().to_owned()
}

/// Every answer is anchored: it verifies offline under the one trust anchor, its note meets
/// the witness policy (both cosignatures verify) and carries a token the TSA's CA proves;
/// `logIndex` is null and the bundle's index is the one answered; one index each.
fn check_anchored(f: &AnchoredFleet, acked: &[Acked]) {
    let anchors = TrustAnchors::from_pem(&std::fs::read(f.fleet.anchor()).unwrap()).unwrap();
    let policy = WitnessPolicy::parse(&f.policy).unwrap();
    let tsa = TsaAnchors::from_pem(&std::fs::read(f.tsa.ca_cert()).unwrap()).unwrap();
    let mut indices = HashSet::new();
    for a in acked {
        let verified = verify_bundle(
            a.bundle.as_bytes(),
            &anchors,
            Some(&document(&a.request_id)),
        )
        .unwrap_or_else(|e| panic!("{}: bundle does not verify: {e}", a.request_id));
        let note = checkpoint_of(&a.bundle);
        let outcome = policy.check(note.as_bytes()).unwrap();
        assert!(
            outcome.satisfied,
            "{}: policy not met: {outcome:?}",
            a.request_id
        );
        verify_bundle_timestamps(a.bundle.as_bytes(), &verified, &tsa)
            .unwrap_or_else(|e| panic!("{}: timestamps: {e}", a.request_id));
        let statement = common::receipt_statement(&a.bundle);
        assert!(statement["predicate"]["logIndex"].is_null());
        let bundle: serde_json::Value = serde_json::from_str(&a.bundle).unwrap();
        assert_eq!(bundle["log"]["index"].as_u64(), Some(a.log_index));
        assert!(
            !bundle["log"]["timestamps"].as_array().unwrap().is_empty(),
            "{}: no token in the bundle",
            a.request_id
        );
        assert!(indices.insert(a.log_index), "index {} twice", a.log_index);
    }
}

/// `actseal verify --witness-policy --tsa-trust` on one bundle.
fn verify_cli(f: &AnchoredFleet, node: usize, a: &Acked) {
    let lab = &f.fleet.nodes[node];
    let path = lab.path(&format!("bundle-{}.json", a.request_id));
    std::fs::write(&path, &a.bundle).unwrap();
    let (anchor, policy, ca) = (
        f.fleet.anchor().display().to_string(),
        f.policy_file.display().to_string(),
        f.tsa.ca_cert().display().to_string(),
    );
    let out = lab
        .run_ok(&[
            "verify",
            &path,
            "--trust",
            &anchor,
            "--witness-policy",
            &policy,
            "--tsa-trust",
            &ca,
        ])
        .unwrap_or_else(|e| panic!("{}: actseal verify: {e}", a.request_id));
    assert!(out.contains("policy met"), "{out}");
    assert!(out.contains("stamped:"), "{out}");
}

/// The sizes a witness cosigned, in its order (its own log: one line a cosignature).
fn cosigned_sizes(w: &LabWitness) -> Vec<u64> {
    w.log_text()
        .lines()
        .filter(|l| l.contains(" cosigned"))
        .filter_map(|l| {
            let at = l.find("size=")? + 5;
            l[at..]
                .split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()
        })
        .collect()
}

/// Every cosigned note seen (the answers' and the shared table's): for each witness, one
/// root a size; and each witness's log shows the sizes it cosigned never going back.
fn check_witnesses(f: &AnchoredFleet, acked: &[Acked]) {
    let mut notes: Vec<String> = acked.iter().map(|a| checkpoint_of(&a.bundle)).collect();
    let mut client = f.fleet.client().unwrap();
    for row in client
        .query("SELECT note FROM anchored_checkpoints", &[])
        .unwrap()
    {
        notes.push(row.get(0));
    }
    let mut roots: HashMap<(String, u64), [u8; 32]> = HashMap::new();
    for note in &notes {
        let parsed = parse_checkpoint(note.as_bytes()).unwrap();
        for w in &f.witnesses {
            if !note.contains(&format!("\u{2014} {} ", w.name)) {
                continue;
            }
            let root = roots
                .entry((w.name.clone(), parsed.size))
                .or_insert(parsed.root);
            assert_eq!(
                *root, parsed.root,
                "{} cosigned two roots at size {}",
                w.name, parsed.size
            );
        }
    }
    let log_size: i64 = client
        .query_one("SELECT COUNT(*) FROM log_entries", &[])
        .unwrap()
        .get(0);
    for w in &f.witnesses {
        let sizes = cosigned_sizes(w);
        assert!(!sizes.is_empty(), "{} cosigned nothing", w.name);
        assert!(
            sizes.windows(2).all(|p| p[0] <= p[1]),
            "{} cosigned a smaller size after a larger one: {sizes:?}",
            w.name
        );
        let stored: i64 = client
            .query_one(
                "SELECT size FROM witness_sizes WHERE witness = $1",
                &[&w.name],
            )
            .unwrap()
            .get(0);
        let newest = *sizes.last().unwrap();
        assert!(
            stored as u64 <= newest && newest <= log_size as u64,
            "{}: table says {stored}, witness cosigned up to {newest}, log is {log_size}",
            w.name
        );
    }
}

fn lease(fleet: &Fleet) -> (String, i64, i64) {
    tokio::task::block_in_place(|| fleet.lease())
        .unwrap()
        .unwrap()
}

/// The newest anchored size in the shared table.
fn anchored_size(fleet: &Fleet) -> i64 {
    tokio::task::block_in_place(|| {
        fleet
            .client()
            .unwrap()
            .query_one(
                "SELECT COALESCE(MAX(size), 0) FROM anchored_checkpoints",
                &[],
            )
            .unwrap()
            .get(0)
    })
}

/// Waits until another node than `from` holds the lease past `epoch` and anchored a size
/// past `anchored`; how long it took.
async fn wait_for_anchoring_takeover(
    fleet: &Fleet,
    from: usize,
    epoch: i64,
    anchored: i64,
) -> Duration {
    let started = Instant::now();
    loop {
        let (holder, now, _) = lease(fleet);
        if now > epoch && holder != format!("node-{from}") && anchored_size(fleet) > anchored {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no other node took over anchoring from node-{from} (lease {holder} epoch {now}, \
             anchored {} of {anchored} before)",
            anchored_size(fleet)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The holder's index and its epoch, from one read of the lease row.
fn holder(fleet: &Fleet) -> (usize, i64) {
    let (holder, epoch, _) = tokio::task::block_in_place(|| fleet.holder())
        .unwrap()
        .expect("someone holds the lease");
    (holder, epoch)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_node_answers_anchored_and_anchoring_fails_over_with_the_lease() {
    let Some(mut f) = anchored_fleet(2).await else {
        return;
    };
    // Every node signs; every answer is anchored (both cosignatures and a token).
    let none = Arc::new(AtomicBool::new(false));
    let first = collect(spawn_load(&f.fleet, 2, 4, "all", &none)).await;
    assert_eq!(first.len(), 3 * 2 * 4);
    check_anchored(&f, &first);
    let mut by_node: BTreeMap<usize, &Acked> = BTreeMap::new();
    for a in &first {
        let node: usize = a.request_id.split('-').nth(1).unwrap().parse().unwrap();
        by_node.entry(node).or_insert(a);
    }
    tokio::task::block_in_place(|| {
        for (node, a) in &by_node {
            verify_cli(&f, *node, a);
        }
    });
    tokio::task::block_in_place(|| check_anchoring_epochs(&f.fleet));

    // The holder SIGKILLed under load: another node anchors on from the shared tables.
    let stop = Arc::new(AtomicBool::new(false));
    let tasks = spawn_load(&f.fleet, 2, 100_000, "kill", &stop);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (killed, epoch) = holder(&f.fleet);
    let anchored = anchored_size(&f.fleet);
    f.fleet.nodes[killed].kill_daemon().unwrap();
    let took = wait_for_anchoring_takeover(&f.fleet, killed, epoch, anchored).await;
    let (_, _, taken_at) = lease(&f.fleet);
    let (new_holder, _, _) = lease(&f.fleet);
    tokio::task::block_in_place(|| f.fleet.nodes[killed].start_daemon()).unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::SeqCst);
    let load = collect(tasks).await;
    signed_on_after(&load, taken_at);
    check_anchored(&f, &load);
    let new: usize = new_holder.strip_prefix("node-").unwrap().parse().unwrap();
    tokio::task::block_in_place(|| check_anchoring_epochs(&f.fleet));
    let all: Vec<Acked> = first.iter().chain(&load).cloned().collect();
    tokio::task::block_in_place(|| {
        let last = load.last().unwrap();
        let node: usize = last.request_id.split('-').nth(1).unwrap().parse().unwrap();
        verify_cli(&f, node, last);
        check_witnesses(&f, &all);
        let lab = &f.fleet.nodes[new];
        let export = common::export_log(lab, "export-anchor.json");
        let anchor = f.fleet.anchor().display().to_string();
        lab.run_ok(&["audit", &export, "--trust", &anchor])
            .expect("the fleet's log audits clean");
    });
    eprintln!("anchoring taken over in {took:?}");

    // The `logged` mode on one node: answered at once with the log-signed checkpoint (it
    // verifies; no cosignature needed), then proved against the anchored one.
    let logged = (killed + 1) % 3;
    let lab = &mut f.fleet.nodes[logged];
    tokio::task::block_in_place(|| -> anyhow::Result<()> {
        lab.stop_daemon()?;
        let config = std::fs::read_to_string(lab.config())?;
        std::fs::write(
            lab.config(),
            config.replace("acknowledge = \"anchored\"", "acknowledge = \"logged\""),
        )?;
        lab.start_daemon()
    })
    .unwrap();
    let request_id = "logged-1".to_owned();
    let mut request = common::sign_request(&actor(logged, 0), &document(&request_id));
    request.request_id = request_id.clone();
    let (bundle, log_index) = common::sign_until_acked(
        &f.fleet.nodes[logged].socket(),
        request,
        Duration::from_secs(120),
        None,
    )
    .await
    .unwrap();
    let anchors = TrustAnchors::from_pem(&std::fs::read(f.fleet.anchor()).unwrap()).unwrap();
    verify_bundle(bundle.as_bytes(), &anchors, Some(&document(&request_id))).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let proved = loop {
        let proof = common::signer(&f.fleet.nodes[logged])
            .await
            .get_inclusion_proof(GetInclusionProofRequest {
                log_index,
                tree_size: 0,
            })
            .await
            .unwrap()
            .into_inner();
        let policy = WitnessPolicy::parse(&f.policy).unwrap();
        if policy.check(proof.checkpoint.as_bytes()).unwrap().satisfied {
            break proof.bundle_json;
        }
        assert!(
            Instant::now() < deadline,
            "never proved against an anchored checkpoint"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    check_anchored(
        &f,
        &[Acked {
            request_id,
            actor: actor(logged, 0),
            bundle: proved,
            log_index,
        }],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stopped_holder_resumed_after_the_takeover_stores_no_anchored_checkpoint() {
    let Some(f) = anchored_fleet(2).await else {
        return;
    };
    let stop = Arc::new(AtomicBool::new(false));
    let tasks = spawn_load(&f.fleet, 2, 100_000, "stop", &stop);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (stopped, epoch) = holder(&f.fleet);
    let anchored = anchored_size(&f.fleet);
    // Stopped mid-work (a round of its anchor task likely in flight), past its lease: another
    // node takes over integrating and anchoring; then the stopped one resumes, its round and
    // its task still believing it holds the lease. Stopped between two calls on the shared
    // SoftHSM log token, whose file locks it would otherwise hold for every node.
    tokio::task::block_in_place(|| f.fleet.nodes[stopped].stop_daemon_between_token_calls())
        .unwrap();
    wait_for_anchoring_takeover(&f.fleet, stopped, epoch, anchored).await;
    let (_, _, taken_at) = lease(&f.fleet);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stored_before: Vec<(i64, String)> = anchored_rows(&f.fleet);
    f.fleet.nodes[stopped].signal_daemon("CONT").unwrap();
    // It finds itself fenced, in the integrator and in the anchor task (before a round or at
    // the store of one in flight), and stores nothing.
    tokio::task::block_in_place(|| {
        let lab = &f.fleet.nodes[stopped];
        common::wait_for_log(lab, "fenced: the lease moved on", 1);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let log = std::fs::read_to_string(lab.daemon_log()).unwrap();
            if log.contains("not the integrator lease holder (any more)")
                || log.contains("this round's anchored checkpoint is not stored")
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the anchor task never found itself fenced"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    tokio::time::sleep(Duration::from_millis(1000)).await;
    stop.store(true, Ordering::SeqCst);
    let load = collect(tasks).await;
    signed_on_after(&load, taken_at);
    check_anchored(&f, &load);
    tokio::task::block_in_place(|| {
        check_witnesses(&f, &load);
        // What the table held before the resume is still there, with at least as much.
        let after: HashMap<i64, String> = anchored_rows(&f.fleet).into_iter().collect();
        for (size, note) in &stored_before {
            let now = after.get(size).expect("an anchored checkpoint vanished");
            assert!(now.len() >= note.len(), "size {size}: cosignatures lost");
            assert!(now.starts_with(note.split("\n\n").next().unwrap()));
        }
    });
}

/// The anchor task ran only under the lease: each node logs the epochs it anchored at; no
/// epoch is on two nodes (the lease had one holder at each), and the node holding the lease
/// now anchors at its epoch (its task notices a takeover at its next wake-up).
fn check_anchoring_epochs(fleet: &Fleet) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (holder, epoch, _) = fleet.lease().unwrap().unwrap();
        let seen = anchoring_epochs(fleet);
        let holder: usize = holder.strip_prefix("node-").unwrap().parse().unwrap();
        if seen.get(&epoch) == Some(&holder) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "node-{holder} holds the lease at epoch {epoch} but does not anchor: {seen:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The epochs each node's anchor task started anchoring at (from the daemons' logs), checked
/// to be on one node each.
fn anchoring_epochs(fleet: &Fleet) -> HashMap<i64, usize> {
    let mut seen: HashMap<i64, usize> = HashMap::new();
    for (n, node) in fleet.nodes.iter().enumerate() {
        let log = std::fs::read_to_string(node.daemon_log()).unwrap();
        for line in log
            .lines()
            .filter(|l| l.contains("holding the lease: anchoring from the stored state"))
        {
            let at = line.find("epoch=").expect("an epoch") + 6;
            let e: i64 = line[at..]
                .split(|c: char| !c.is_ascii_digit())
                .next()
                .unwrap()
                .parse()
                .unwrap();
            let other = *seen.entry(e).or_insert(n);
            assert_eq!(other, n, "nodes {other} and {n} both anchored at epoch {e}");
        }
    }
    seen
}

/// Signing went on after the takeover: answers (anchored, checked by the caller) for
/// entries past the size published when the next holder had taken over, from each of at
/// least two nodes.
fn signed_on_after(load: &[Acked], published: i64) {
    let nodes: HashSet<&str> = load
        .iter()
        .filter(|a| a.log_index >= published as u64)
        .map(|a| a.request_id.split('-').nth(1).unwrap())
        .collect();
    assert!(
        nodes.len() >= 2,
        "signing did not go on after the takeover at {published} ({} answers in all)",
        load.len()
    );
}

/// The shared table's rows: (size, note).
fn anchored_rows(fleet: &Fleet) -> Vec<(i64, String)> {
    tokio::task::block_in_place(|| {
        fleet
            .client()
            .unwrap()
            .query(
                "SELECT size, note FROM anchored_checkpoints ORDER BY size",
                &[],
            )
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect()
    })
}
