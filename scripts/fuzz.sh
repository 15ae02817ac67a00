#!/usr/bin/env bash
# Runs every fuzz target for FUZZ_SECONDS seconds each (default 5: the smoke run of the test
# command). Long runs: FUZZ_SECONDS=600 bash scripts/fuzz.sh, or one target:
#   RUSTC_BOOTSTRAP=1 cargo fuzz run --fuzz-dir fuzz TARGET -- -max_total_time=3600
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${FUZZ_SECONDS:-5}"
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "installing cargo-fuzz"
    cargo install cargo-fuzz --locked --quiet
fi
# cargo-fuzz passes -Z sanitizer flags, which only nightly compilers accept. This machine has
# the stable toolchain alone (no other can be fetched), so let it accept them.
export RUSTC_BOOTSTRAP=1
targets=$(cargo fuzz list --fuzz-dir fuzz)
cargo fuzz build --fuzz-dir fuzz
for target in $targets; do
    echo "== fuzz $target for ${seconds}s"
    cargo fuzz run --fuzz-dir fuzz "$target" -- -max_total_time="$seconds" -print_final_stats=1 2>&1 \
        | grep -E "^(Done|stat::number_of_executed_units)|ERROR|panicked|SUMMARY" || true
    # libFuzzer exits non-zero and leaves an artifact when it finds a crash.
    if compgen -G "fuzz/artifacts/$target/*" >/dev/null; then
        echo "FAILED: fuzz target $target found a crash: $(ls fuzz/artifacts/"$target"/)" >&2
        exit 1
    fi
done
