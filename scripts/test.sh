#!/usr/bin/env bash
# The whole test suite on a fresh Debian machine: installs what it needs
# (scripts/setup.sh), checks formatting and lints, validates the manifests
# offline, then runs unit and integration tests against real containerd
# 1.7 and 2.x and a real registry. Needs root (containerd).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/setup.sh
echo "== fmt and clippy"
cargo fmt --check
cargo clippy --all-targets --locked -- -D warnings
echo "== manifests"
bash scripts/validate-manifests.sh
echo "== alerts and dashboard (promtool)"
bash scripts/test-monitoring.sh
echo "== supply chain"
# deny.toml's license, duplicate and source rules and digest-pinned base
# images; the self-test first shows that each check can fail.
python3 scripts/supply-chain.py --self-test
python3 scripts/supply-chain.py
echo "== tests"
# Each integration test starts its own containerd and registry; two at a
# time keeps a 2-core machine responsive.
# Benches are built (by clippy above) but not run: timings belong in benches/.
# The in-memory API server records which shipped RBAC grants the scenarios
# used; the report afterwards fails on grants no scenario needed.
export PREWARM_RBAC_USAGE_DIR="$PWD/target/rbac-usage"
rm -rf "$PREWARM_RBAC_USAGE_DIR"
cargo test --locked --lib --bins --tests -- --test-threads="${PREWARM_TEST_THREADS:-2}"
echo "== RBAC grants used by the scenarios"
cargo test --locked --test it rbac:: -- --ignored
