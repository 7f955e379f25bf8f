#!/usr/bin/env bash
# Runs Baton's whole test suite: formatting, lints, unit and integration
# tests (real `baton` processes over gRPC on loopback). Installs protoc,
# etcd and python3-venv first when they are missing, and the Python SDK's
# pinned grpcio/grpcio-tools from PyPI into target/python-sdk-venv.
set -euo pipefail
cd "$(dirname "$0")/.."
. deploy/lib/deps.sh
ensure_protoc
ensure_etcd
ensure_python_sdk

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== build"
# The integration tests run the real `baton` binary.
cargo build --workspace --bins --locked
echo "== tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast
  # nextest does not run doctests.
  cargo test --workspace --locked --doc
else
  cargo test --workspace --locked --no-fail-fast
fi
