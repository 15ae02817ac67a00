#!/usr/bin/env bash
# Runs every test: formatting, lints, unit and property tests, and the end-to-end tests against
# a real Synapse and real WebRTC peers on 127.0.0.1. Fails if any test fails or none ran.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/prepare.sh

# A clean clone builds everything once: incremental compilation's caches would only add
# 2 GB of disk and time (CI=true is how CI runs this).
if [ "${CI:-}" = "true" ]; then
    export CARGO_INCREMENTAL=0
fi

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings

echo "== kubernetes manifests"
bash scripts/validate-kubernetes.sh

echo "== cargo test"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
# Synapse is installed into target/synapse-venv by the first test that needs it.
status=0
cargo test --workspace --all-targets --no-fail-fast 2>&1 | tee "$log" || status=$?
passed=$(grep -E '^test result:' "$log" | awk '{sum += $4} END {print sum + 0}')
failed=$(grep -E '^test result:' "$log" | awk '{sum += $6} END {print sum + 0}')
echo
echo "tests: ${passed} passed, ${failed} failed"
if [ "$status" -ne 0 ] || [ "$failed" -ne 0 ]; then
    echo "FAILED: some tests failed (cargo exit status $status)" >&2
    exit 1
fi
if [ "$passed" -eq 0 ]; then
    echo "FAILED: no test ran" >&2
    exit 1
fi

echo "== fuzz smoke run (every parser of network input, a few seconds each)"
bash scripts/fuzz.sh
