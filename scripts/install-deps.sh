#!/usr/bin/env bash
# Installs the Debian packages actseal builds, tests and demos with, when any is missing.
# Safe to run repeatedly: it does nothing when everything is present.
set -euo pipefail

packages=(
  softhsm2 opensc            # PKCS#11 test token and pkcs11-tool
  swtpm swtpm-tools libtss2-dev tpm2-tools   # TPM 2.0 simulator and TSS
  protobuf-compiler pkg-config               # build: protoc for the gRPC API
  openssl jq ca-certificates                 # offline verification with openssl alone
  systemd util-linux passwd                  # systemd-analyze (unit tests), setpriv, useradd
  postgresql                                 # the ledger on PostgreSQL (tests/ledger_postgres.rs, fleets)
  golang-go golang-golang-x-mod-dev          # interop: Go sumdb/note reads our checkpoints (tests/witness.rs)
  chromium                                   # the forensics report opened headless (tests/forensics.rs)
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { echo "need root (or sudo) to install: ${missing[*]}" >&2; exit 1; }
    sudo="sudo"
  fi
  echo "installing: ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# The stock-client tests (tests/stock_client.rs) talk to the daemon with Python's grpcio.
if ! python3 -c 'import grpc, grpc_tools' 2>/dev/null; then
  if ! python3 -m pip --version >/dev/null 2>&1; then
    echo "installing: python3-pip"
    sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends python3-pip >/dev/null
  fi
  echo "installing: grpcio grpcio-tools (pip)"
  python3 -m pip install --quiet grpcio grpcio-tools 2>/dev/null ||
    python3 -m pip install --quiet --break-system-packages grpcio grpcio-tools
fi
# The MCP proxy tests (tests/mcp_proxy.rs): the official MCP Python SDK (1.x: FastMCP) and the
# reference time server built on it.
if ! python3 -c 'import mcp.server.fastmcp, mcp.client.stdio, mcp_server_time' 2>/dev/null; then
  echo "installing: mcp mcp-server-time (pip)"
  mcp=("mcp>=1.10,<2" "mcp-server-time<2026.10")
  python3 -m pip install --quiet "${mcp[@]}" 2>/dev/null ||
    python3 -m pip install --quiet --break-system-packages "${mcp[@]}"
fi
command -v cargo >/dev/null || { echo "cargo (Rust 1.88 or newer) is required: https://rustup.rs" >&2; exit 1; }
