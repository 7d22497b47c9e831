//! Batch receipts (FORMAT.md §12): every leaf of generated batches verifies, with `actseal
//! verify` and with `audit` over a log that holds them; and every way of passing a receipt of
//! one mode off as the other, or a leaf off as another, is built for real and refused by the
//! check that stands for it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

#[path = "common/openssl.rs"]
mod openssl;
mod support;

use actseal::verify::audit::{AuditStep, audit_log};
use actseal::verify::{BundleVerifier, Check, TrustAnchors, verify_bundle};
use serde_json::{Value, json};
use support::make_batch::*;
use support::make_bundle::*;

/// Replacements in the batch statement: (JSON pointer, value).
type Overrides = Vec<(String, Value)>;

fn anchors(pem: &str) -> TrustAnchors {
    TrustAnchors::from_pem(pem.as_bytes()).unwrap()
}

fn check_of(bundle: &Value, pem: &str, document: Option<&[u8]>) -> Result<(), (Check, String)> {
    let text = serde_json::to_vec(bundle).unwrap();
    verify_bundle(&text, &anchors(pem), document)
        .map(|_| ())
        .map_err(|e| (e.check, e.detail))
}

/// The script of FORMAT.md §8 on `bundle`: Ok, or the check it names.
fn script(bundle: &Value, pem: &str, document: Option<&[u8]>) -> Result<(), Option<String>> {
    openssl::require_openssl();
    let dir = tempfile::tempdir().unwrap();
    let anchor = dir.path().join("anchor.pem");
    std::fs::write(&anchor, pem).unwrap();
    let text = serde_json::to_string(bundle).unwrap();
    openssl::verify_with_openssl(&text, &anchor, document, dir.path())
        .map(|_| ())
        .map_err(|r| r.check)
}

/// The crate and the openssl script both refuse `bundle`, by check `want`.
fn refused(what: &str, bundle: &Value, pem: &str, want: Check) {
    match check_of(bundle, pem, None) {
        Ok(()) => panic!("{what}: accepted"),
        Err((check, detail)) => {
            assert_eq!(
                check, want,
                "{what}: refused by {check} ({detail}), expected {want}"
            )
        }
    }
    match script(bundle, pem, None) {
        Ok(()) => panic!("{what}: the openssl script accepted"),
        Err(check) => assert_eq!(
            check.as_deref(),
            Some(want.name()),
            "{what}: the openssl script refused by {check:?}, expected {want}"
        ),
    }
}

#[test]
fn every_leaf_of_batches_of_any_size_verifies() {
    for size in [1u64, 2, 3, 5, 8, 13] {
        let g = generate_batch(&BatchOptions {
            size,
            ..BatchOptions::default()
        });
        let pem = g.anchor_pem.clone();
        let a = anchors(&pem);
        let mut many = BundleVerifier::new(&a);
        for (i, bundle) in g.bundles.iter().enumerate() {
            let text = serde_json::to_vec(bundle).unwrap();
            let v = verify_bundle(&text, &a, Some(&g.documents[i]))
                .unwrap_or_else(|e| panic!("size {size} leaf {i}: {e}"));
            assert_eq!(v.mode, "batch");
            assert_eq!(v.batch, Some((i as u64, size)));
            assert_eq!(v.sequence, 1 + i as u64);
            assert_eq!(v.log_index, 2 + i as u64);
            assert!(
                v.to_string().contains(&format!("leaf {i} of {size}")),
                "{v}"
            );
            if [(1, 0), (3, 0), (3, 2), (8, 5)].contains(&(size, i)) {
                script(bundle, &pem, Some(&g.documents[i])).unwrap_or_else(|c| {
                    panic!("the openssl script refused size {size} leaf {i}: {c:?}")
                });
            }
            // The same answer from a verifier that remembers what bundles share.
            let again = many.verify(&text, Some(&g.documents[i])).unwrap();
            assert_eq!(again.batch, v.batch);
            // Another leaf's document is not this receipt's.
            let other = &g.documents[(i + 1) % g.documents.len()];
            if size > 1 {
                let e = many.verify(&text, Some(other)).unwrap_err();
                assert_eq!(e.check, Check::ReceiptDocument);
            }
        }
    }
}

/// The committed batch vector (FORMAT.md §12.5) is the generator's output and verifies.
#[test]
fn committed_batch_vector() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors");
    let g = generate_batch(&BatchOptions::default());
    let files = [
        (
            "batch-v1-leaf1.json",
            batch_to_pretty(&g.bundles[1]).into_bytes(),
        ),
        ("batch-v1-document1.json", g.documents[1].clone()),
    ];
    if std::env::var_os("ACTSEAL_REGEN_VECTORS").is_some_and(|v| v == "1") {
        for (name, bytes) in &files {
            std::fs::write(dir.join(name), bytes).unwrap();
        }
    }
    for (name, bytes) in &files {
        let on_disk = std::fs::read(dir.join(name))
            .unwrap_or_else(|e| panic!("{name}: {e} (regenerate with ACTSEAL_REGEN_VECTORS=1)"));
        assert!(
            &on_disk == bytes,
            "tests/vectors/{name} differs from the generator's output"
        );
    }
    let anchor = std::fs::read(dir.join("anchor.pem")).unwrap();
    assert_eq!(
        anchor,
        g.anchor_pem.as_bytes(),
        "the batch vector shares anchor.pem"
    );
    let v = verify_bundle(&files[0].1, &anchors(&g.anchor_pem), Some(&files[1].1)).unwrap();
    assert_eq!((v.sequence, v.log_index, v.batch), (2, 3, Some((1, 3))));
    // The values FORMAT.md §12.5 lists.
    let seal_of_leaf1 = &g.batch_entries[1][4 + IN_TOTO.len() + 4 + g.payloads[1].len() + 4..];
    println!(
        "statement payload sha256 {}",
        sha256_hex(&g.statement_payload)
    );
    println!("statement payload bytes {}", g.statement_payload.len());
    println!("batch root {}", hex::encode(g.root));
    println!("leaf 1 payload sha256 {}", sha256_hex(&g.payloads[1]));
    println!(
        "leaf 1 seal sha256 {} ({} bytes)",
        sha256_hex(seal_of_leaf1),
        seal_of_leaf1.len()
    );
    println!(
        "leaf 1 entry leaf hash {}",
        hex::encode(leaf_hash(&g.batch_entries[1]))
    );
    let doc = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/FORMAT.md"),
    )
    .unwrap();
    for value in [
        sha256_hex(&g.statement_payload),
        hex::encode(g.root),
        sha256_hex(&g.payloads[1]),
        sha256_hex(seal_of_leaf1),
        hex::encode(leaf_hash(&g.batch_entries[1])),
    ] {
        assert!(
            doc.contains(&value),
            "FORMAT.md §12.5 does not list {value}"
        );
    }
}

/// The committed fleet batch vector (FORMAT.md §12.5): leaf 1 of the default batch as a fleet
/// node signs it (`firstLogIndex` and `logIndex` null), at entry 3 of a log whose entries 1, 3
/// and 4 are the batch's.
#[test]
fn committed_fleet_batch_vector() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors");
    let g = generate_batch(&fleet_batch());
    let name = "fleet-batch-v1-leaf1.json";
    let bytes = batch_to_pretty(&g.bundles[1]).into_bytes();
    if std::env::var_os("ACTSEAL_REGEN_VECTORS").is_some_and(|v| v == "1") {
        std::fs::write(dir.join(name), &bytes).unwrap();
    }
    let on_disk = std::fs::read(dir.join(name))
        .unwrap_or_else(|e| panic!("{name}: {e} (regenerate with ACTSEAL_REGEN_VECTORS=1)"));
    assert!(
        on_disk == bytes,
        "tests/vectors/{name} differs from the generator's output"
    );
    // The same leaf documents as the indexed batch vector.
    let document = std::fs::read(dir.join("batch-v1-document1.json")).unwrap();
    assert_eq!(document, g.documents[1]);
    let v = verify_bundle(&on_disk, &anchors(&g.anchor_pem), Some(&document)).unwrap();
    assert_eq!(
        (v.sequence, v.log_index, v.log_index_signed, v.batch),
        (2, 3, false, Some((1, 3)))
    );
    let statement: Value = serde_json::from_slice(&g.statement_payload).unwrap();
    assert_eq!(statement["predicate"]["firstLogIndex"], Value::Null);
    println!(
        "fleet statement payload sha256 {} ({} bytes), root {}, leaf 1 payload sha256 {}, leaf hash {}",
        sha256_hex(&g.statement_payload),
        g.statement_payload.len(),
        hex::encode(g.root),
        sha256_hex(&g.payloads[1]),
        hex::encode(leaf_hash(&g.batch_entries[1]))
    );
    let doc = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/FORMAT.md"),
    )
    .unwrap();
    for value in [
        sha256_hex(&g.statement_payload),
        hex::encode(g.root),
        sha256_hex(&g.payloads[1]),
        hex::encode(leaf_hash(&g.batch_entries[1])),
    ] {
        assert!(
            doc.contains(&value),
            "FORMAT.md §12.5 does not list {value}"
        );
    }
}

/// A valid leaf-1 bundle of the default batch and its anchor.
fn base() -> (GeneratedBatch, Value, String) {
    let g = generate_batch(&BatchOptions::default());
    let b = g.bundles[1].clone();
    let pem = g.anchor_pem.clone();
    (g, b, pem)
}

/// Leaf 1 of a batch generated with `o`.
fn leaf1(o: BatchOptions) -> (Value, String) {
    let g = generate_batch(&o);
    (g.bundles[1].clone(), g.anchor_pem)
}

#[test]
fn a_batch_statement_cannot_pass_as_a_single_receipt() {
    let (g, b, pem) = base();
    // Its signature as the receipt's own: the signature is over another PAE.
    let mut own = b.clone();
    own.as_object_mut().unwrap().remove("batch");
    own["receipt"]["signatures"] =
        json!([{"keyid": g.single.actor_key.key_id(), "sig": b64(&g.statement_sig)}]);
    refused(
        "statement signature as the receipt's",
        &own,
        &pem,
        Check::ReceiptSignature,
    );
    // The statement itself as the receipt: signed by the actor key, but not a receipt.
    let mut whole = b.clone();
    whole.as_object_mut().unwrap().remove("batch");
    whole["receipt"] = b["batch"]["statement"].clone();
    refused(
        "statement as the receipt",
        &whole,
        &pem,
        Check::ReceiptStatement,
    );
}

#[test]
fn a_receipt_is_sealed_one_way_only() {
    let (g, b, pem) = base();
    // Both a signature of its own and a batch member.
    let mut both = b.clone();
    let sig = g.single.actor_key.sign_der(&pae(IN_TOTO, &g.payloads[1]));
    both["receipt"]["signatures"] =
        json!([{"keyid": g.single.actor_key.key_id(), "sig": b64(&sig)}]);
    refused("signature and batch", &both, &pem, Check::BundleParse);
    // Neither.
    let mut neither = b.clone();
    neither.as_object_mut().unwrap().remove("batch");
    refused("no seal", &neither, &pem, Check::BundleParse);
    // A batch payload, signed on its own as a single receipt by the actor key: the payload
    // says batch, the seal says single.
    let mut relabelled = neither.clone();
    relabelled["receipt"]["signatures"] =
        json!([{"keyid": g.single.actor_key.key_id(), "sig": b64(&sig)}]);
    refused(
        "batch payload as single",
        &relabelled,
        &pem,
        Check::ReceiptStatement,
    );
    // A single receipt relabelled batch and re-signed by the actor key.
    let mut single = g.single.bundle.clone();
    let mut payload: Value = serde_json::from_slice(&g.single.receipt_payload).unwrap();
    payload["predicate"]["mode"] = json!("batch");
    let bytes = serde_json::to_vec(&payload).unwrap();
    single["receipt"] = envelope(&g.single.actor_key, &bytes);
    refused(
        "single relabelled batch",
        &single,
        &pem,
        Check::ReceiptStatement,
    );
    // A leaf whose payload says single inside a properly signed batch tree.
    let (b, pem) = leaf1(BatchOptions {
        leaf_overrides: vec![(1, "/predicate/mode".into(), json!("single"))],
        ..BatchOptions::default()
    });
    refused("single leaf in a batch", &b, &pem, Check::ReceiptStatement);
}

#[test]
fn a_leaf_cannot_move() {
    let (_, b, pem) = base();
    for other in [0, 2, 3, 7] {
        let mut moved = b.clone();
        moved["batch"]["leafIndex"] = json!(other);
        let want = Check::ReceiptBatch;
        refused(&format!("leafIndex {other}"), &moved, &pem, want);
    }
    // The tree built with leaves 0 and 1 swapped, signed: the proofs hold, but leaf 1's
    // receipt now sits at tree index 0, which is not its sequence's place.
    let (b, pem) = leaf1(BatchOptions {
        order: Some(vec![1, 0, 2]),
        ..BatchOptions::default()
    });
    assert_eq!(b["batch"]["leafIndex"], json!(0));
    refused("swapped leaves", &b, &pem, Check::ReceiptStatement);
    // An altered payload is not the leaf.
    let (g, b, pem) = base();
    let mut altered = b.clone();
    let mut payload = g.payloads[1].clone();
    let at = payload.len() / 2;
    payload[at] ^= 1;
    altered["receipt"]["payload"] = json!(b64(&payload));
    refused("altered payload", &altered, &pem, Check::ReceiptBatch);
    // A proof hash changed.
    let mut proof = b.clone();
    let mut h = hex::decode(b["batch"]["inclusionProof"][0].as_str().unwrap()).unwrap();
    h[0] ^= 1;
    proof["batch"]["inclusionProof"][0] = json!(hex::encode(h));
    refused("proof hash", &proof, &pem, Check::ReceiptBatch);
}

#[test]
fn the_statement_must_be_this_keys_about_this_batch() {
    let (b, pem) = leaf1(BatchOptions {
        statement_signer: Some("another actor's key".into()),
        ..BatchOptions::default()
    });
    refused(
        "statement by another key",
        &b,
        &pem,
        Check::ReceiptSignature,
    );
    let (_, b, pem) = base();
    let mut keyid = b.clone();
    keyid["batch"]["statement"]["signatures"][0]["keyid"] = json!("00".repeat(32));
    refused("statement keyid", &keyid, &pem, Check::ReceiptSignature);
    let mut altered = b.clone();
    altered["batch"]["statement"]["payload"] =
        json!(b64(&serde_json::to_vec(&json!({"x": 1})).unwrap()));
    refused("statement payload", &altered, &pem, Check::ReceiptSignature);

    let o = BatchOptions::default();
    let actor = o.base.actor.clone();
    let cases: Vec<(&str, Overrides, Check)> = vec![
        (
            "another actor (name and member)",
            vec![
                (
                    "/predicate/actor".into(),
                    json!("spiffe://acme.example/agents/other"),
                ),
                (
                    "/subject/0/name".into(),
                    json!("receipt-batch:spiffe://acme.example/agents/other#1/1"),
                ),
            ],
            Check::ReceiptStatement,
        ),
        (
            "another key id",
            vec![("/predicate/key/id".into(), json!("ab".repeat(32)))],
            Check::ReceiptBatch,
        ),
        (
            "another key version",
            vec![
                ("/predicate/key/version".into(), json!(2)),
                (
                    "/subject/0/name".into(),
                    json!(format!("receipt-batch:{actor}#2/1")),
                ),
            ],
            Check::ReceiptStatement,
        ),
        (
            "another backend",
            vec![("/predicate/key/backend".into(), json!("tpm"))],
            Check::ReceiptStatement,
        ),
        (
            "a subject name of another batch",
            vec![(
                "/subject/0/name".into(),
                json!(format!("receipt-batch:{actor}#1/2")),
            )],
            Check::ReceiptBatch,
        ),
        (
            "a receipt's predicate type",
            vec![(
                "/predicateType".into(),
                json!("https://actseal.dev/receipt/v1"),
            )],
            Check::ReceiptBatch,
        ),
        (
            "a smaller size",
            vec![("/predicate/size".into(), json!(2))],
            Check::ReceiptBatch,
        ),
        (
            "size below the leaf",
            vec![("/predicate/size".into(), json!(1))],
            Check::ReceiptBatch,
        ),
        (
            "size 0",
            vec![("/predicate/size".into(), json!(0))],
            Check::ReceiptBatch,
        ),
        (
            "another time",
            vec![("/predicate/signedAt".into(), json!("2026-11-26T17:51:37Z"))],
            Check::ReceiptStatement,
        ),
        (
            "another first sequence",
            vec![
                ("/predicate/firstSequence".into(), json!(2)),
                (
                    "/subject/0/name".into(),
                    json!(format!("receipt-batch:{actor}#1/2")),
                ),
            ],
            Check::ReceiptStatement,
        ),
        (
            "another first log index",
            vec![("/predicate/firstLogIndex".into(), json!(1))],
            Check::ReceiptStatement,
        ),
        (
            "a non-hex root",
            vec![("/subject/0/digest/sha256".into(), json!("XY".repeat(32)))],
            Check::ReceiptBatch,
        ),
    ];
    for (what, overrides, want) in cases {
        let (b, pem) = leaf1(BatchOptions {
            statement_overrides: overrides,
            ..BatchOptions::default()
        });
        refused(what, &b, &pem, want);
    }
    // A larger size: leaf 1's path in a tree of 3 is also a valid path in a tree of 4 (an
    // inclusion proof alone does not fix the size, FORMAT.md §10), so the last leaf shows it:
    // its path of 1 hash is no path in a tree of 4. That the batch is whole, `audit` checks.
    let g = generate_batch(&BatchOptions {
        statement_overrides: vec![("/predicate/size".into(), json!(4))],
        first_log_index: 1,
        ..BatchOptions::default()
    });
    refused(
        "a larger size",
        &g.bundles[2],
        &g.anchor_pem,
        Check::ReceiptBatch,
    );
    let e = audit(&export_of(&g.single, &g.batch_entries[..2]), &g.anchor_pem).unwrap_err();
    assert_eq!((e.0, e.1), (AuditStep::Receipt, None), "{e:?}");
}

#[test]
fn the_log_entry_holds_the_seal() {
    // The log committed the statement's DER signature in the slot instead of the seal.
    let (b, pem) = leaf1(BatchOptions {
        log_der_slot: true,
        ..BatchOptions::default()
    });
    refused("DER slot in the log", &b, &pem, Check::LogInclusion);
    // log.index that is not the receipt's.
    let (_, b, pem) = base();
    let mut index = b.clone();
    index["log"]["index"] = json!(2);
    refused("log.index", &index, &pem, Check::LogInclusion);
}

fn audit(
    export: &str,
    pem: &str,
) -> Result<actseal::verify::audit::AuditReport, (AuditStep, Option<u64>, String)> {
    audit_log(export.as_bytes(), &anchors(pem)).map_err(|e| (e.step, e.index, e.detail))
}

/// Batches at log indices from 1 (after the key's registration), `sizes` of them in a row.
fn batches(sizes: &[u64]) -> (Vec<GeneratedBatch>, Vec<Vec<u8>>) {
    let mut out = Vec::new();
    let mut entries = Vec::new();
    let (mut sequence, mut index, mut previous) = (1u64, 1u64, None::<String>);
    for &size in sizes {
        let g = generate_batch(&BatchOptions {
            size,
            first_sequence: sequence,
            first_log_index: index,
            previous_of_first: previous.clone(),
            ..BatchOptions::default()
        });
        entries.extend(g.batch_entries.iter().cloned());
        previous = Some(sha256_hex(g.payloads.last().unwrap()));
        sequence += size;
        index += size;
        out.push(g);
    }
    (out, entries)
}

#[test]
fn audit_replays_batches() {
    let (gs, entries) = batches(&[4, 1, 3]);
    let pem = gs[0].anchor_pem.clone();
    let report = audit(&export_of(&gs[0].single, &entries), &pem).unwrap();
    assert_eq!(report.receipts, 8);
    assert_eq!(report.size, 9);
}

#[test]
fn audit_refuses_broken_batches() {
    let (gs, entries) = batches(&[3, 2]);
    let pem = gs[0].anchor_pem.clone();
    let single = &gs[0].single;
    let receipt_fails = |what: &str, entries: &[Vec<u8>], at: Option<u64>| {
        let e = audit(&export_of(single, entries), &pem).expect_err(what);
        assert_eq!((e.0, e.1), (AuditStep::Receipt, at), "{what}: {e:?}");
        e.2
    };
    // A batch receipt's entry with the statement's DER signature in its slot.
    let mut der = entries.clone();
    der[1] = entry_with_slot(&gs[0].payloads[1], &gs[0].statement_sig);
    let detail = receipt_fails("DER slot", &der, Some(2));
    assert!(detail.contains("not a batch seal"), "{detail}");
    // A batch cut short: its last leaf missing (the next batch's first leaf follows).
    let mut short = entries.clone();
    short.remove(2);
    receipt_fails("cut short", &short, Some(3));
    // A batch cut short at the end of the log.
    let e = audit(&export_of(single, &entries[..4]), &pem).unwrap_err();
    assert_eq!((e.0, e.1), (AuditStep::Receipt, None), "{e:?}");
    // Two leaves swapped in the log.
    let mut swapped = entries.clone();
    swapped.swap(0, 1);
    receipt_fails("swapped", &swapped, Some(1));
    // A leaf's seal naming another leaf index with its proof.
    let mut moved = entries.clone();
    let g = &gs[0];
    let leaves: Vec<Hash> = g.payloads.iter().map(|p| leaf_hash(p)).collect();
    moved[1] = entry_with_slot(
        &g.payloads[1],
        &seal(
            2,
            &inclusion_path(2, &leaves),
            &g.statement_payload,
            &g.statement_sig,
        ),
    );
    receipt_fails("moved seal", &moved, Some(2));
    // A single receipt's entry whose slot is a seal.
    let mut sealed_single = entries.clone();
    let s = generate(&Options {
        sequence: 6,
        previous_receipt: Some(sha256_hex(gs[1].payloads.last().unwrap())),
        log_index: 6,
        log_tree_size: 7,
        ..Options::default()
    });
    let seal_of = |e: &Vec<u8>| e[4 + IN_TOTO.len() + 4 + g.payloads[0].len() + 4..].to_vec();
    sealed_single.push(entry_with_slot(&s.receipt_payload, &seal_of(&entries[0])));
    let e = audit(&export_of(single, &sealed_single), &pem).unwrap_err();
    assert_eq!(e.1, Some(6), "{e:?}");
    // The same single receipt with its own signature is fine after the batches.
    let mut fine = entries.clone();
    fine.push(entry_bytes(&s.bundle["receipt"]));
    assert_eq!(audit(&export_of(single, &fine), &pem).unwrap().receipts, 6);
    // A statement signed by a key the log never registered for the actor.
    let (other, _) = {
        let g = generate_batch(&BatchOptions {
            statement_signer: Some("not the actor".into()),
            first_log_index: 1,
            ..BatchOptions::default()
        });
        (g.batch_entries.clone(), ())
    };
    receipt_fails("foreign statement", &other, Some(1));
}
