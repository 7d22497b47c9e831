#!/usr/bin/env bash
# Every check a change must pass: formatting, lints, and all tests (unit, verifier vectors,
# openssl cross-checks, and the daemon end to end against real SoftHSM tokens).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cargo fmt --all -- --check
cargo clippy --locked --all-targets --quiet -- -D warnings
cargo test --locked
