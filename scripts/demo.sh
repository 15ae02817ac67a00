#!/usr/bin/env bash
# The demo: starts a local Synapse, the focus and a short simulated conference, and prints what
# every simulated device receives. Arguments go to cascade-demo (see `--help`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/prepare.sh
cargo build --quiet -p cascade -p cascade-testkit --bins
target="${CARGO_TARGET_DIR:-target}"
exec "$target/debug/cascade-demo" --focus-binary "$target/debug/cascade" "$@"
