#!/usr/bin/env bash
# The whole path on a fresh machine: install what is missing, build, and run `actseal demo`
# (SoftHSM token, CA, daemon, an agent's key, a signed payment instruction, offline
# verification with actseal and with openssl alone).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cargo build --locked --quiet --bin actseal
exec target/debug/actseal demo "$@"
