#!/usr/bin/env bash
# Every check a change must pass: formatting, lints, the verifier built alone, and all tests
# (unit, verifier vectors, openssl cross-checks, and the daemon end to end against real SoftHSM
# tokens).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cargo fmt --all -- --check
cargo clippy --locked --all-targets --quiet -- -D warnings
# The verifier alone (README, "Verifier only"): none of the hardware stack, gRPC or SQLite among
# its dependencies, no warnings, and its `actseal` verifies the committed vector (a rustc build,
# not clippy: a second clippy of the feature-dependent crates would double this step's time).
verifier_deps=$(cargo tree --locked --no-default-features -e normal,build --prefix none)
if grep -E '^(cryptoki|tss-esapi|tonic|prost|rusqlite|postgres|tokio|hyper|tower)(-[a-z0-9-]+)? v' \
    <<<"$verifier_deps"; then
    echo "test.sh: the verifier-only build depends on the crates above" >&2
    exit 1
fi
verifier_build=$(cargo build --locked --no-default-features --bin actseal --message-format short 2>&1) ||
    { echo "$verifier_build" >&2; exit 1; }
if grep -E '(^|: )warning' <<<"$verifier_build"; then
    echo "test.sh: the verifier-only build has warnings" >&2
    exit 1
fi
verifier() { cargo run --locked --no-default-features --quiet -- "$@"; }
verifier verify tests/vectors/bundle-v1.json --trust tests/vectors/anchor.pem \
    --document tests/vectors/document.json
# The fleet vectors (logIndex null, FORMAT.md §3.1), single and batch.
verifier verify tests/vectors/fleet-v1.json --trust tests/vectors/anchor.pem \
    --document tests/vectors/document.json
verifier verify tests/vectors/fleet-batch-v1-leaf1.json --trust tests/vectors/anchor.pem \
    --document tests/vectors/batch-v1-document1.json
# The forensics commands (actions, report) in the verifier alone, on the same vector.
forensics_dir=$(mktemp -d)
cp tests/vectors/document.json "$forensics_dir/"
verifier actions tests/vectors/bundle-v1.json --trust tests/vectors/anchor.pem \
    --documents "$forensics_dir" >/dev/null
verifier report tests/vectors/bundle-v1.json --trust tests/vectors/anchor.pem \
    --out "$forensics_dir/report.html" >/dev/null
rm -rf "$forensics_dir"
# Fleet receipts (logIndex null) in `actions`: the index their inclusion proof proves, marked so
# (the batch vector's receipt is its actor's second, so `actions` also reports receipt 1 missing
# and exits 1: the index is what is checked here).
for vector in fleet-v1.json fleet-batch-v1-leaf1.json; do
    fleet_actions=$(verifier actions "tests/vectors/$vector" --trust tests/vectors/anchor.pem --json ||
        true)
    if ! grep -q '"proven": true' <<<"$fleet_actions"; then
        echo "test.sh: actions must show the proven log index of $vector" >&2
        exit 1
    fi
done
if out=$(verifier serve 2>&1) || ! grep -q 'without the `daemon` feature' <<<"$out"; then
    echo "test.sh: the verifier-only actseal must refuse daemon commands, naming the feature" >&2
    exit 1
fi
cargo test --locked
