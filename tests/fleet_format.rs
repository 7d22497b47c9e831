//! The fleet receipt format (FORMAT.md §3, §11.4, §12): receipts and batch statements that a
//! fleet node signs before the integrator orders them carry `"logIndex": null` and
//! `"firstLogIndex": null`. They verify with the crate and with the openssl script, taking their
//! index from the inclusion proof; every way of moving one, re-labelling it or mixing the two
//! kinds is built for real and refused by the check that stands for it; and `audit` replays fleet
//! logs (also after a single-host prefix) by the fleet time rules, refusing what breaks them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

#[path = "common/openssl.rs"]
mod openssl;
mod support;

use actseal::verify::audit::{AuditReport, AuditStep, audit_log};
use actseal::verify::{Check, TrustAnchors, Verified, verify_bundle};
use serde_json::{Value, json};
use support::make_batch::*;
use support::make_bundle::*;

fn anchors(pem: &str) -> TrustAnchors {
    TrustAnchors::from_pem(pem.as_bytes()).unwrap()
}

/// The crate's verdict on `bundle`.
fn by_crate(
    bundle: &Value,
    pem: &str,
    document: Option<&[u8]>,
) -> Result<Verified, (Check, String)> {
    verify_bundle(
        &serde_json::to_vec(bundle).unwrap(),
        &anchors(pem),
        document,
    )
    .map_err(|e| (e.check, e.detail))
}

/// The openssl script's verdict on `bundle`: Ok, or the check it names.
fn by_script(bundle: &Value, pem: &str, document: Option<&[u8]>) -> Result<(), Option<String>> {
    openssl::require_openssl();
    let dir = tempfile::tempdir().unwrap();
    let anchor = dir.path().join("anchor.pem");
    std::fs::write(&anchor, pem).unwrap();
    let text = serde_json::to_string(bundle).unwrap();
    openssl::verify_with_openssl(&text, &anchor, document, dir.path())
        .map(|_| ())
        .map_err(|r| r.check)
}

/// Both verify `bundle`; the crate's answer.
fn accepted(what: &str, bundle: &Value, pem: &str, document: &[u8]) -> Verified {
    by_script(bundle, pem, Some(document))
        .unwrap_or_else(|c| panic!("{what}: the openssl script refused by {c:?}"));
    by_crate(bundle, pem, Some(document))
        .unwrap_or_else(|(c, d)| panic!("{what}: the crate refused by {c}: {d}"))
}

/// Both refuse `bundle`, by check `want`.
fn refused(what: &str, bundle: &Value, pem: &str, want: Check) {
    refused_by_crate(what, bundle, pem, want);
    match by_script(bundle, pem, None) {
        Ok(()) => panic!("{what}: the openssl script accepted"),
        Err(check) => assert_eq!(
            check.as_deref(),
            Some(want.name()),
            "{what}: the openssl script refused by {check:?}, expected {want}"
        ),
    }
}

fn refused_by_crate(what: &str, bundle: &Value, pem: &str, want: Check) -> String {
    match by_crate(bundle, pem, None) {
        Ok(_) => panic!("{what}: accepted"),
        Err((check, detail)) => {
            assert_eq!(
                check, want,
                "{what}: refused by {check} ({detail}), expected {want}"
            );
            detail
        }
    }
}

fn fleet_at(index: u64, size: u64) -> Generated {
    generate(&Options {
        log_index: index,
        log_tree_size: size,
        ..fleet_bundle().options
    })
}

fn payload_of(bundle: &Value) -> Value {
    serde_json::from_slice(&unb64(bundle["receipt"]["payload"].as_str().unwrap())).unwrap()
}

/// `g`'s bundle with its receipt payload replaced by `payload`, signed by the actor key, and
/// the log rebuilt around it at the same place.
fn resigned(g: &Generated, payload: &Value) -> Value {
    let mut b = g.bundle.clone();
    b["receipt"] = envelope(&g.actor_key, &serde_json::to_vec(payload).unwrap());
    relog(g, &mut b);
    b
}

// ---------------------------------------------------------------------------------------------
// verify: single receipts

#[test]
fn a_fleet_receipt_verifies_at_the_index_its_proof_proves() {
    for (index, size) in [(0, 1), (0, 6), (3, 6), (5, 6), (6, 13)] {
        let g = fleet_at(index, size);
        assert_eq!(payload_of(&g.bundle)["predicate"]["logIndex"], Value::Null);
        let v = accepted(
            &format!("fleet receipt {index}/{size}"),
            &g.bundle,
            &g.anchor_pem,
            &g.document,
        );
        assert_eq!((v.log_index, v.tree_size), (index, size));
        assert!(!v.log_index_signed);
        assert!(v.to_string().contains("by its inclusion proof"), "{v}");
    }
    // An indexed receipt still says where it is, and the summary says so.
    let g = default_bundle();
    let v = by_crate(&g.bundle, &g.anchor_pem, Some(&g.document)).unwrap();
    assert!(v.log_index_signed && v.log_index == 3);
    assert!(!v.to_string().contains("inclusion proof"), "{v}");
}

#[test]
fn a_fleet_receipt_cannot_be_moved() {
    let g = fleet_at(3, 6);
    let pem = &g.anchor_pem;
    // Another index with the proof of index 3, or past the tree.
    for index in [0u64, 2, 4, 5, 6, 7] {
        let mut b = g.bundle.clone();
        b["log"]["index"] = json!(index);
        refused(&format!("log.index {index}"), &b, pem, Check::LogInclusion);
    }
    // Index 2 with the true path of index 2: the leaf there is another entry.
    let leaves: Vec<Hash> = g.log_entries.iter().map(|e| leaf_hash(e)).collect();
    let mut b = g.bundle.clone();
    b["log"]["index"] = json!(2);
    b["log"]["inclusionProof"] = json!(
        inclusion_path(2, &leaves)
            .iter()
            .map(hex::encode)
            .collect::<Vec<_>>()
    );
    refused("the path of index 2", &b, pem, Check::LogInclusion);
    // A tree size other than the checkpoint's.
    let mut b = g.bundle.clone();
    b["log"]["treeSize"] = json!(7);
    refused("treeSize 7", &b, pem, Check::LogCheckpoint);
}

#[test]
fn null_or_an_index_is_what_the_actor_key_signed() {
    // The indexed vector's logIndex set to null, and a fleet receipt's set to its place, without
    // re-signing: the signature no longer covers the payload.
    let indexed = default_bundle();
    let fleet = fleet_at(3, 6);
    for (what, g, value) in [
        ("indexed made null", &indexed, Value::Null),
        ("fleet given its index", &fleet, json!(3)),
    ] {
        let mut payload = payload_of(&g.bundle);
        payload["predicate"]["logIndex"] = value;
        let mut b = g.bundle.clone();
        b["receipt"]["payload"] = json!(b64(&serde_json::to_vec(&payload).unwrap()));
        refused(what, &b, &g.anchor_pem, Check::ReceiptSignature);
    }
    // Re-signed by the actor key with its place: an indexed receipt, which verifies as one.
    let mut payload = payload_of(&fleet.bundle);
    payload["predicate"]["logIndex"] = json!(3);
    let b = resigned(&fleet, &payload);
    let v = accepted(
        "re-signed with its index",
        &b,
        &fleet.anchor_pem,
        &fleet.document,
    );
    assert!(v.log_index_signed);
    // Re-signed with another index than its place: refused as for any indexed receipt.
    payload["predicate"]["logIndex"] = json!(2);
    let b = resigned(&fleet, &payload);
    refused(
        "re-signed with index 2 at 3",
        &b,
        &fleet.anchor_pem,
        Check::LogInclusion,
    );
}

#[test]
fn log_index_is_required_and_a_number_or_null() {
    let g = fleet_at(3, 6);
    let pem = &g.anchor_pem;
    let mut missing = payload_of(&g.bundle);
    missing["predicate"]
        .as_object_mut()
        .unwrap()
        .remove("logIndex");
    refused(
        "logIndex missing",
        &resigned(&g, &missing),
        pem,
        Check::ReceiptStatement,
    );
    for value in [
        json!("3"),
        json!("null"),
        json!([]),
        json!({}),
        json!(false),
    ] {
        let mut p = payload_of(&g.bundle);
        p["predicate"]["logIndex"] = value.clone();
        refused(
            &format!("logIndex {value}"),
            &resigned(&g, &p),
            pem,
            Check::ReceiptStatement,
        );
    }
    // The finer number rules are the crate's (FORMAT.md §8 leaves them to it).
    for value in [json!(-1), json!(3.5)] {
        let mut p = payload_of(&g.bundle);
        p["predicate"]["logIndex"] = value.clone();
        refused_by_crate(
            &format!("logIndex {value}"),
            &resigned(&g, &p),
            pem,
            Check::ReceiptStatement,
        );
    }
}

// ---------------------------------------------------------------------------------------------
// verify: batch receipts

#[test]
fn fleet_batch_leaves_verify_wherever_the_log_put_them() {
    let g = generate_batch(&fleet_batch());
    let statement: Value = serde_json::from_slice(&g.statement_payload).unwrap();
    assert_eq!(statement["predicate"]["firstLogIndex"], Value::Null);
    for (i, at) in [1u64, 3, 4].into_iter().enumerate() {
        let v = accepted(
            &format!("leaf {i}"),
            &g.bundles[i],
            &g.anchor_pem,
            &g.documents[i],
        );
        assert_eq!(
            (v.log_index, v.sequence, v.batch),
            (at, 1 + i as u64, Some((i as u64, 3)))
        );
        assert!(!v.log_index_signed);
        // Moved to another leaf's place.
        let mut moved = g.bundles[i].clone();
        moved["log"]["index"] = json!([1, 3, 4][(i + 1) % 3]);
        refused(
            &format!("leaf {i} moved"),
            &moved,
            &g.anchor_pem,
            Check::LogInclusion,
        );
    }
    // A leaf cannot move in the batch either: its leaf index fixes its sequence.
    let mut b = g.bundles[1].clone();
    b["batch"]["leafIndex"] = json!(0);
    refused("leafIndex 0", &b, &g.anchor_pem, Check::ReceiptBatch);
}

#[test]
fn a_batch_is_indexed_or_a_fleets_as_a_whole() {
    // A fleet statement over leaves that name indices, and an indexed statement over leaves
    // that do not.
    let indexed_leaves = BatchOptions {
        leaf_overrides: (0..3)
            .map(|i| (i, "/predicate/logIndex".to_string(), json!([1, 3, 4][i])))
            .collect(),
        ..fleet_batch()
    };
    let null_leaves = BatchOptions {
        leaf_overrides: (0..3)
            .map(|i| (i, "/predicate/logIndex".to_string(), Value::Null))
            .collect(),
        ..BatchOptions::default()
    };
    let null_statement = BatchOptions {
        statement_overrides: vec![("/predicate/firstLogIndex".into(), Value::Null)],
        ..BatchOptions::default()
    };
    for (what, o) in [
        ("indexed leaves under a fleet statement", indexed_leaves),
        ("null leaves under an indexed statement", null_leaves),
        ("indexed leaves, firstLogIndex null", null_statement),
    ] {
        let g = generate_batch(&o);
        refused(what, &g.bundles[1], &g.anchor_pem, Check::ReceiptStatement);
    }
}

#[test]
fn first_log_index_is_required_and_a_number_or_null() {
    let g = generate_batch(&fleet_batch());
    let mut statement: Value = serde_json::from_slice(&g.statement_payload).unwrap();
    let mut cases = vec![("firstLogIndex missing", {
        statement["predicate"]
            .as_object_mut()
            .unwrap()
            .remove("firstLogIndex");
        statement.clone()
    })];
    for value in [json!("1"), json!([]), json!(true)] {
        statement["predicate"]["firstLogIndex"] = value;
        cases.push(("firstLogIndex of another type", statement.clone()));
    }
    for (what, statement) in cases {
        let mut b = g.bundles[1].clone();
        b["batch"]["statement"] = envelope(
            &g.single.actor_key,
            &serde_json::to_vec(&statement).unwrap(),
        );
        refused(what, &b, &g.anchor_pem, Check::ReceiptBatch);
    }
}

#[test]
fn a_fleet_receipt_of_one_mode_cannot_pass_as_the_other() {
    let g = generate_batch(&fleet_batch());
    let pem = &g.anchor_pem;
    let key = &g.single.actor_key;
    // A fleet leaf's payload (mode batch) signed on its own by the actor key.
    let mut single = g.bundles[1].clone();
    single.as_object_mut().unwrap().remove("batch");
    single["receipt"] = envelope(key, &g.payloads[1]);
    refused(
        "fleet leaf as single",
        &single,
        pem,
        Check::ReceiptStatement,
    );
    // A fleet single receipt relabelled batch and re-signed.
    let f = fleet_at(3, 6);
    let mut payload = payload_of(&f.bundle);
    payload["predicate"]["mode"] = json!("batch");
    refused(
        "fleet single relabelled batch",
        &resigned(&f, &payload),
        pem,
        Check::ReceiptStatement,
    );
    // The fleet batch statement as a receipt.
    let mut whole = g.bundles[1].clone();
    whole.as_object_mut().unwrap().remove("batch");
    whole["receipt"] = g.bundles[1]["batch"]["statement"].clone();
    refused(
        "fleet statement as a receipt",
        &whole,
        pem,
        Check::ReceiptStatement,
    );
}

// ---------------------------------------------------------------------------------------------
// audit

/// One actor of a generated log: its name and key label.
#[derive(Clone, Copy)]
struct Who(&'static str, &'static str);

const A: Who = Who(
    "spiffe://acme.example/agents/payments",
    "actseal test actor key payments v1",
);
const B: Who = Who(
    "spiffe://acme.example/agents/billing",
    "actseal test actor key billing v1",
);

/// A log under construction: its entries and each actor's chain.
struct Log {
    entries: Vec<Vec<u8>>,
    heads: std::collections::HashMap<&'static str, (u64, String)>,
    any: Option<Generated>,
}

impl Log {
    fn new() -> Self {
        Log {
            entries: Vec::new(),
            heads: Default::default(),
            any: None,
        }
    }

    fn generate(&self, who: Who, at: &str, fleet: bool, index: u64) -> Generated {
        let (sequence, previous) = self
            .heads
            .get(who.0)
            .map_or((1, None), |(s, p)| (s + 1, Some(p.clone())));
        generate(&Options {
            actor: who.0.into(),
            actor_key_label: who.1.into(),
            signed_at: at.into(),
            sequence,
            previous_receipt: previous,
            fleet,
            log_index: index,
            log_tree_size: index + 1,
            ..Options::default()
        })
    }

    /// Registers `who`'s key (created 17:51:30) at `at`.
    fn register(&mut self, who: Who, at: &str) -> &mut Self {
        let g = self.generate(who, "2026-11-26T17:51:36Z", false, 0);
        self.entries.push(registration_entry(&g, at));
        self.any = Some(g);
        self
    }

    /// Appends `who`'s next receipt, signed at `at`: a fleet one, or one naming its index.
    fn receipt(&mut self, who: Who, at: &str, fleet: bool) -> &mut Self {
        let index = self.entries.len() as u64;
        let g = self.generate(who, at, fleet, index);
        self.entries.push(entry_bytes(&g.bundle["receipt"]));
        let sequence = self.heads.get(who.0).map_or(1, |(s, _)| s + 1);
        self.heads
            .insert(who.0, (sequence, sha256_hex(&g.receipt_payload)));
        self
    }

    /// Appends a batch's entries as the actor's next receipts (the batch must start there).
    fn batch_leaves(&mut self, g: &GeneratedBatch, leaves: &[usize]) -> &mut Self {
        for &i in leaves {
            self.entries.push(g.batch_entries[i].clone());
            let sequence = g.options.first_sequence + i as u64;
            self.heads
                .insert(A.0, (sequence, sha256_hex(&g.payloads[i])));
        }
        self
    }

    fn export(&self) -> String {
        let g = self.any.as_ref().expect("a registration first");
        let leaves: Vec<Hash> = self.entries.iter().map(|e| leaf_hash(e)).collect();
        let body = checkpoint_body(LOG_ORIGIN, leaves.len() as u64, &tree_root(&leaves));
        serde_json::to_string(&json!({
            "mediaType": "application/vnd.actseal.log-export.v1+json",
            "logKey": g.bundle["log"]["logKey"],
            "checkpoint": signed_note(&body, LOG_ORIGIN, &g.log_key, &g.log_key),
            "entries": self.entries.iter().map(|e| b64(e)).collect::<Vec<_>>(),
        }))
        .unwrap()
    }

    fn audit(&self) -> Result<AuditReport, (AuditStep, Option<u64>, String)> {
        let pem = &self.any.as_ref().unwrap().anchor_pem;
        audit_log(self.export().as_bytes(), &anchors(pem)).map_err(|e| (e.step, e.index, e.detail))
    }

    #[track_caller]
    fn refused(&self, step: AuditStep, index: u64) -> String {
        let (got, at, detail) = self.audit().expect_err("the audit accepted");
        assert_eq!((got, at), (step, Some(index)), "{detail}");
        detail
    }
}

fn t(s: u32) -> String {
    format!("2026-11-26T17:51:{s:02}Z")
}

#[test]
fn audit_replays_a_fleet_log_whose_times_differ_across_actors() {
    let mut log = Log::new();
    log.register(A, &t(31)).register(B, &t(31));
    // Two nodes' clocks: B's behind A's. Log order is the integrator's, not time order.
    log.receipt(A, &t(40), true)
        .receipt(B, &t(35), true)
        .receipt(A, &t(41), true)
        .receipt(B, &t(36), true)
        .receipt(B, &t(36), true);
    let report = log.audit().unwrap();
    assert_eq!(
        (report.receipts, report.fleet_receipts, report.actors),
        (5, 5, 2)
    );
    assert!(report.to_string().contains("5 fleet receipts"), "{report}");

    // One actor going back in time is refused, whichever node it is on.
    let mut back = Log::new();
    back.register(A, &t(31)).register(B, &t(31));
    back.receipt(A, &t(40), true)
        .receipt(B, &t(45), true)
        .receipt(A, &t(39), true);
    let detail = back.refused(AuditStep::TimeOrder, 4);
    assert!(detail.contains("same actor"), "{detail}");
    // A registration counts as the actor's entry too.
    let mut early = Log::new();
    early.register(A, &t(38)).receipt(A, &t(37), true);
    early.refused(AuditStep::TimeOrder, 1);
}

#[test]
fn audit_checks_a_single_host_prefix_then_its_fleet_continuation() {
    // As after `ledger migrate`: indexed receipts, then fleet ones (and an indexed one again).
    let mut log = Log::new();
    log.register(A, &t(31))
        .receipt(A, &t(40), false)
        .receipt(A, &t(41), false);
    log.register(B, &t(44))
        .receipt(B, &t(45), true)
        .receipt(A, &t(42), true)
        .receipt(A, &t(43), false);
    let report = log.audit().unwrap();
    assert_eq!((report.receipts, report.fleet_receipts), (5, 2));

    // The prefix keeps the single-host rule: an entry dated before the one ahead of it.
    let mut prefix = Log::new();
    prefix
        .register(A, &t(31))
        .register(B, &t(45))
        .receipt(A, &t(40), false);
    prefix.receipt(B, &t(46), true);
    let detail = prefix.refused(AuditStep::TimeOrder, 2);
    assert!(detail.contains("times go backwards"), "{detail}");
    // The same log with no fleet receipt after it is refused the same way.
    let mut single = Log::new();
    single
        .register(A, &t(31))
        .register(B, &t(45))
        .receipt(A, &t(40), false);
    single.refused(AuditStep::TimeOrder, 2);

    // No fleet entry is dated before the end of the single-host part it follows.
    let mut before = Log::new();
    before
        .register(A, &t(31))
        .register(B, &t(31))
        .receipt(A, &t(40), false);
    before.receipt(B, &t(39), true);
    let detail = before.refused(AuditStep::TimeOrder, 3);
    assert!(detail.contains("single-host part"), "{detail}");

    // An indexed receipt after the fleet ones must still be at its index.
    let mut moved = Log::new();
    moved.register(A, &t(31)).receipt(A, &t(40), true);
    let wrong = moved.generate(A, &t(41), false, 7);
    moved.entries.push(entry_bytes(&wrong.bundle["receipt"]));
    let detail = moved.refused(AuditStep::Receipt, 2);
    assert!(detail.contains("logIndex 7"), "{detail}");
}

#[test]
fn audit_refuses_a_fleet_receipt_integrated_twice_or_dropped() {
    let mut log = Log::new();
    log.register(A, &t(31)).receipt(A, &t(40), true);
    let twice = log.entries[1].clone();
    log.entries.push(twice);
    let detail = log.refused(AuditStep::Receipt, 2);
    assert!(detail.contains("sequence 1 where 2 was due"), "{detail}");
    // Receipt 2 of the chain missing: 3 follows 1.
    let mut gap = Log::new();
    gap.register(A, &t(31))
        .receipt(A, &t(40), true)
        .receipt(A, &t(41), true);
    gap.entries.pop();
    gap.receipt(A, &t(42), true);
    gap.refused(AuditStep::Receipt, 2);
}

/// The default actor's fleet batch of 3 (sequence 1-3), dated 17:51:36.
fn a_fleet_batch() -> GeneratedBatch {
    generate_batch(&fleet_batch())
}

#[test]
fn audit_replays_fleet_batches_with_other_nodes_entries_between_their_leaves() {
    let batch = a_fleet_batch();
    let mut log = Log::new();
    log.register(A, &t(30)).register(B, &t(30));
    log.batch_leaves(&batch, &[0])
        .receipt(B, &t(33), true)
        .batch_leaves(&batch, &[1])
        .receipt(B, &t(34), true)
        .batch_leaves(&batch, &[2])
        .receipt(A, &t(37), true);
    let report = log.audit().unwrap();
    assert_eq!(
        (
            report.receipts,
            report.fleet_receipts,
            report.open_fleet_batches
        ),
        (6, 6, 0)
    );

    // Leaves out of order.
    let mut swapped = Log::new();
    swapped.register(A, &t(30)).batch_leaves(&batch, &[1, 0, 2]);
    swapped.refused(AuditStep::Receipt, 1);
    // A leaf missing: the next leaf is not the one due.
    let mut gap = Log::new();
    gap.register(A, &t(30)).batch_leaves(&batch, &[0, 2]);
    let detail = gap.refused(AuditStep::Receipt, 2);
    assert!(detail.contains("stops at leaf 1"), "{detail}");
    // Another receipt of the batch's actor between its leaves.
    let single = generate(&Options {
        sequence: 2,
        previous_receipt: Some(sha256_hex(&batch.payloads[0])),
        fleet: true,
        log_index: 2,
        log_tree_size: 3,
        ..Options::default()
    });
    let mut between = Log::new();
    between.register(A, &t(30)).batch_leaves(&batch, &[0]);
    between.entries.push(entry_bytes(&single.bundle["receipt"]));
    let detail = between.refused(AuditStep::Receipt, 2);
    assert!(
        detail.contains("nothing of its actor between them"),
        "{detail}"
    );
    // A registration of the batch's actor between its leaves.
    let mut registered = Log::new();
    registered
        .register(A, &t(30))
        .batch_leaves(&batch, &[0])
        .register(A, &t(36));
    registered.refused(AuditStep::Registration, 2);
}

#[test]
fn audit_replays_an_indexed_batch_then_fleet_batches() {
    // A single host's batch at entries 1-3, then the fleet's: a batch of A with B between its
    // leaves.
    let indexed = generate_batch(&BatchOptions {
        first_log_index: 1,
        ..BatchOptions::default()
    });
    let fleet = generate_batch(&BatchOptions {
        first_sequence: 4,
        previous_of_first: Some(sha256_hex(indexed.payloads.last().unwrap())),
        ..fleet_batch()
    });
    let mut log = Log::new();
    log.register(A, &t(30)).batch_leaves(&indexed, &[0, 1, 2]);
    log.register(B, &t(36))
        .batch_leaves(&fleet, &[0])
        .receipt(B, &t(36), true)
        .batch_leaves(&fleet, &[1, 2]);
    let report = log.audit().unwrap();
    assert_eq!((report.receipts, report.fleet_receipts), (7, 4));
    // The indexed batch must still be whole and at its indices: one of its leaves moved past
    // B's registration is refused.
    let mut moved = Log::new();
    moved.register(A, &t(30)).batch_leaves(&indexed, &[0, 1]);
    moved.register(B, &t(36)).batch_leaves(&indexed, &[2]);
    moved.refused(AuditStep::Receipt, 3);
}

#[test]
fn a_fleet_batch_may_still_be_integrating_at_the_end_of_the_log() {
    let batch = a_fleet_batch();
    let mut log = Log::new();
    log.register(A, &t(30))
        .register(B, &t(30))
        .batch_leaves(&batch, &[0, 1]);
    log.receipt(B, &t(33), true);
    let report = log.audit().unwrap();
    assert_eq!((report.receipts, report.open_fleet_batches), (3, 1));
    assert!(
        report
            .to_string()
            .contains("1 fleet batches still being integrated"),
        "{report}"
    );
    // The log grows: the last leaf follows and closes it.
    log.batch_leaves(&batch, &[2]);
    assert_eq!(log.audit().unwrap().open_fleet_batches, 0);
    // An indexed batch, which a single host commits whole, may not end the log open.
    let indexed = generate_batch(&BatchOptions {
        first_log_index: 1,
        ..BatchOptions::default()
    });
    let mut open = Log::new();
    open.register(A, &t(30));
    open.entries
        .extend(indexed.batch_entries[..2].iter().cloned());
    let (step, at, _) = open.audit().unwrap_err();
    assert_eq!((step, at), (AuditStep::Receipt, None));
}

#[test]
fn audit_refuses_a_batch_mixing_the_two_kinds() {
    let mixed = generate_batch(&BatchOptions {
        leaf_overrides: (0..3)
            .map(|i| (i, "/predicate/logIndex".to_string(), json!(1 + i)))
            .collect(),
        ..fleet_batch()
    });
    let mut log = Log::new();
    log.register(A, &t(30)).batch_leaves(&mixed, &[0]);
    let detail = log.refused(AuditStep::Receipt, 1);
    assert!(detail.contains("firstLogIndex is null"), "{detail}");
}

// ---------------------------------------------------------------------------------------------
// verify-log

/// A consistency proof (as `actseal log consistency` writes it) from `g`'s checkpoint to the
/// tree of `grown`, signed by the log key.
fn consistency(g: &Generated, grown: &[Vec<u8>]) -> Value {
    let leaves: Vec<Hash> = grown.iter().map(|e| leaf_hash(e)).collect();
    let mut nodes = std::collections::HashMap::new();
    for level in 0..8u8 {
        let width = 1usize << level;
        for i in 0..leaves.len() / width {
            let root = tree_root(&leaves[i * width..(i + 1) * width]);
            nodes.insert((level, i as u64), root);
        }
    }
    let (old, new) = (g.log_entries.len() as u64, leaves.len() as u64);
    let hashes = actseal::ledger::merkle::consistency_proof(&nodes, old, new).unwrap();
    let body = checkpoint_body(LOG_ORIGIN, new, &tree_root(&leaves));
    json!({
        "oldSize": old, "newSize": new,
        "hashes": hashes.iter().map(hex::encode).collect::<Vec<_>>(),
        "oldCheckpoint": g.bundle["log"]["checkpoint"],
        "newCheckpoint": signed_note(&body, LOG_ORIGIN, &g.log_key, &g.log_key),
    })
}

#[test]
fn verify_log_takes_a_fleet_bundle() {
    use actseal::verify::consistency::verify_log_consistency;
    let g = fleet_at(3, 6);
    let a = anchors(&g.anchor_pem);
    let bundle = serde_json::to_vec(&g.bundle).unwrap();
    let mut grown = g.log_entries.clone();
    grown.extend((6..9).map(filler_entry));
    let proof = serde_json::to_vec(&consistency(&g, &grown)).unwrap();
    let report = verify_log_consistency(&proof, &bundle, &a).unwrap();
    assert_eq!((report.old_size, report.new_size), (6, 9));
    // A newer tree in which the fleet receipt is no longer entry 3 is no extension of it.
    let mut rewritten = grown.clone();
    rewritten.swap(3, 4);
    let mut proof = consistency(&g, &rewritten);
    proof["oldCheckpoint"] = g.bundle["log"]["checkpoint"].clone();
    let e = verify_log_consistency(&serde_json::to_vec(&proof).unwrap(), &bundle, &a).unwrap_err();
    assert!(e.contains("consistency"), "{e}");
}
