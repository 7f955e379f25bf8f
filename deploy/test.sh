#!/usr/bin/env bash
# Runs Baton's whole test suite: formatting, lints, unit and integration
# tests (real `baton` processes over gRPC on loopback), and the log store's
# S3 test against moto. Installs protoc, etcd and python3-venv first when
# they are missing, the Python SDK's pinned grpcio/grpcio-tools from PyPI
# into target/python-sdk-venv, and moto into target/test-tools-venv.
set -euo pipefail
cd "$(dirname "$0")/.."
. deploy/lib/deps.sh
ensure_protoc
ensure_etcd
ensure_python_sdk
ensure_moto

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
echo "== log store on S3 (moto)"
# The S3 backend is a cargo feature (it adds an HTTP and TLS stack); its test
# talks to a moto server it starts on loopback.
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run -p baton-controller --features s3 --locked -E 'test(s3_)'
else
  cargo test -p baton-controller --features s3 --locked s3_
fi
