//! Offline verification throughput: bundles a second on one core (one thread), for bundles of
//! one log, through `BundleVerifier` as `actseal verify A.json B.json …` uses it.
//!
//! The bundles are made by the tests' independent builder (tests/support) with software keys:
//! 2^14 single receipts of one actor in one log of 2^14 entries, each proved against the same
//! checkpoint (as `GetInclusionProof` or an export gives them); and the same number of batch
//! receipts in batches of 64. Each bundle is a separate JSON text, parsed and checked in full:
//! the cache keeps what bundles share (lineage, log key, checkpoint, batch statement) by their
//! bytes, never a bundle's own receipt, signature, leaf or proof. For comparison the same
//! bundles are also verified with a fresh verifier each (`verify_bundle`, nothing shared).
//!
//! Run: `cargo bench --bench verify_throughput` (ACTSEAL_BENCH_BUNDLES=n, a power of two,
//! changes the count; default 16384).

#[allow(dead_code, clippy::all)]
#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use actseal::verify::{BundleVerifier, TrustAnchors, verify_bundle};
use serde_json::{Value, json};
use support::make_batch::{BatchOptions, generate_batch};
use support::make_bundle::*;

/// The levels of a perfect tree over `leaves` (a power of two), leaves first.
fn levels(leaves: Vec<Hash>) -> Vec<Vec<Hash>> {
    let mut out = vec![leaves];
    while out.last().unwrap().len() > 1 {
        let next = out
            .last()
            .unwrap()
            .chunks(2)
            .map(|p| node_hash(&p[0], &p[1]))
            .collect();
        out.push(next);
    }
    out
}

fn path(levels: &[Vec<Hash>], index: usize) -> Vec<String> {
    levels[..levels.len() - 1]
        .iter()
        .enumerate()
        .map(|(l, level)| hex::encode(level[(index >> l) ^ 1]))
        .collect()
}

/// `n` single receipts of the default actor, logIndex 0…n-1, one checkpoint of size n.
fn single_bundles(n: usize) -> (Vec<Vec<u8>>, String) {
    let g = default_bundle();
    let template: Value = serde_json::from_slice(&g.receipt_payload).unwrap();
    let mut previous: Option<String> = None;
    let mut envelopes = Vec::with_capacity(n);
    for i in 0..n {
        let mut r = template.clone();
        r["subject"][0]["digest"]["sha256"] = json!(sha256_hex(format!("document {i}").as_bytes()));
        r["predicate"]["sequence"] = json!(i + 1);
        r["predicate"]["logIndex"] = json!(i);
        r["predicate"]["previousReceipt"] = previous
            .take()
            .map_or(Value::Null, |h| json!({"sha256": h}));
        let payload = serde_json::to_vec(&r).unwrap();
        previous = Some(sha256_hex(&payload));
        envelopes.push(envelope(&g.actor_key, &payload));
    }
    let tree = levels(
        envelopes
            .iter()
            .map(|e| leaf_hash(&entry_bytes(e)))
            .collect(),
    );
    let root = tree.last().unwrap()[0];
    let note = signed_note(
        &checkpoint_body(LOG_ORIGIN, n as u64, &root),
        LOG_ORIGIN,
        &g.log_key,
        &g.log_key,
    );
    let bundles = envelopes
        .into_iter()
        .enumerate()
        .map(|(i, receipt)| {
            let mut b = g.bundle.clone();
            b["receipt"] = receipt;
            b["log"]["index"] = json!(i);
            b["log"]["treeSize"] = json!(n);
            b["log"]["inclusionProof"] = json!(path(&tree, i));
            b["log"]["checkpoint"] = json!(note);
            serde_json::to_vec(&b).unwrap()
        })
        .collect();
    (bundles, g.anchor_pem)
}

/// `n` batch receipts in batches of 64, the batches' entries filling one log of n entries.
fn batch_bundles(n: usize) -> (Vec<Vec<u8>>, String) {
    const SIZE: usize = 64;
    let mut batches = Vec::new();
    let mut previous = None;
    for k in 0..n / SIZE {
        let g = generate_batch(&BatchOptions {
            size: SIZE as u64,
            first_sequence: (k * SIZE + 1) as u64,
            first_log_index: (k * SIZE) as u64,
            previous_of_first: previous.take(),
            base: Options {
                mode: "batch".into(),
                log_tree_size: 1,
                ..Options::default()
            },
            ..BatchOptions::default()
        });
        previous = Some(sha256_hex(g.payloads.last().unwrap()));
        batches.push(g);
    }
    let entries: Vec<&Vec<u8>> = batches.iter().flat_map(|g| &g.batch_entries).collect();
    let tree = levels(entries.iter().map(|e| leaf_hash(e)).collect());
    let root = tree.last().unwrap()[0];
    let single = &batches[0].single;
    let note = signed_note(
        &checkpoint_body(LOG_ORIGIN, n as u64, &root),
        LOG_ORIGIN,
        &single.log_key,
        &single.log_key,
    );
    let mut out = Vec::with_capacity(n);
    for (k, g) in batches.iter().enumerate() {
        for (j, b) in g.bundles.iter().enumerate() {
            let i = k * SIZE + j;
            let mut b = b.clone();
            b["log"]["index"] = json!(i);
            b["log"]["treeSize"] = json!(n);
            b["log"]["inclusionProof"] = json!(path(&tree, i));
            b["log"]["checkpoint"] = json!(note);
            out.push(serde_json::to_vec(&b).unwrap());
        }
    }
    (out, batches[0].anchor_pem.clone())
}

/// CPU time of this thread.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid out-pointer to a timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

fn run(what: &str, bundles: &[Vec<u8>], pem: &str) {
    let anchors = TrustAnchors::from_pem(pem.as_bytes()).unwrap();
    let bytes: usize = bundles.iter().map(Vec::len).sum();
    let (wall, cpu) = (Instant::now(), thread_cpu());
    let mut verifier = BundleVerifier::new(&anchors);
    for b in bundles {
        verifier.verify(b, None).unwrap();
    }
    let (wall, cpu) = (wall.elapsed(), thread_cpu() - cpu);
    println!(
        "{what}: {} bundles ({} bytes avg): {:.0} bundles/s on one core ({:.0}/s of thread CPU time), {:.1} µs each",
        bundles.len(),
        bytes / bundles.len(),
        bundles.len() as f64 / wall.as_secs_f64(),
        bundles.len() as f64 / cpu.as_secs_f64(),
        cpu.as_secs_f64() * 1e6 / bundles.len() as f64,
    );
    let sample = &bundles[..bundles.len().min(512)];
    let t = thread_cpu();
    for b in sample {
        verify_bundle(b, &anchors, None).unwrap();
    }
    let each = (thread_cpu() - t).as_secs_f64() / sample.len() as f64;
    println!(
        "{what}, nothing shared (verify_bundle each): {:.0} bundles/s, {:.1} µs each",
        1.0 / each,
        each * 1e6
    );
}

/// ECDSA P-256 verifications a second with `ring` alone: the floor of a single receipt's cost.
fn ring_alone() {
    use p256::ecdsa::signature::Signer;
    let key = p256::ecdsa::SigningKey::from_bytes(&[7u8; 32].into()).unwrap();
    let point = key.verifying_key().to_encoded_point(false);
    let message = vec![0x42u8; 1200];
    let sig: p256::ecdsa::Signature = key.sign(&message);
    let der = sig.to_der();
    let public = ring::signature::UnparsedPublicKey::new(
        &ring::signature::ECDSA_P256_SHA256_ASN1,
        point.as_bytes(),
    );
    let n = 4000;
    let t = thread_cpu();
    for _ in 0..n {
        public.verify(&message, der.as_bytes()).unwrap();
    }
    let each = (thread_cpu() - t).as_secs_f64() / n as f64;
    println!(
        "ring ECDSA P-256 verify alone (1.2 KB message): {:.0}/s, {:.1} µs each",
        1.0 / each,
        each * 1e6
    );
}

fn main() {
    ring_alone();
    let n: usize = std::env::var("ACTSEAL_BENCH_BUNDLES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(16_384);
    assert!(
        n.is_power_of_two() && n >= 64,
        "ACTSEAL_BENCH_BUNDLES must be a power of two ≥ 64"
    );
    let (single, pem) = single_bundles(n);
    run("single receipts, one log, one checkpoint", &single, &pem);
    let (batch, pem) = batch_bundles(n);
    run(
        "batch receipts (batches of 64), one log, one checkpoint",
        &batch,
        &pem,
    );
}
