#!/usr/bin/env bash
# Cascade and Janus (Debian's package, VideoRoom plugin) under the same load, one after the
# other, in a network namespace made here: Janus never gathers ICE candidates on a loopback
# interface, so the namespace gets a veth pair (10.99.0.1, 10.99.0.2) besides its own loopback.
# Needs root (ip netns). Arguments go to cascade-loadtest, e.g.:
#   bash scripts/janus-compare.sh --preset video-1x100
#   bash scripts/janus-compare.sh --preset audio-1000
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p cascade -p cascade-loadtest
# Synapse and Janus are installed here, before the namespace: inside it there is no route to
# PyPI or the package mirror (pip then finds "no matching distribution" for Synapse, the load
# tester's apt-get fallback for Janus fails with "Temporary failure resolving").
cargo run --release -q -p cascade-testkit --bin cascade-synapse -- --install-only >/dev/null
if ! command -v janus >/dev/null; then
    echo "installing janus with apt-get"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends janus
fi
ns="cascade-janus-$$"
ip netns add "$ns"
trap 'ip netns del "$ns" 2>/dev/null || true' EXIT
ip -n "$ns" link set lo up
ip -n "$ns" link add v0 type veth peer name v1
ip -n "$ns" addr add 10.99.0.1/24 dev v0
ip -n "$ns" addr add 10.99.0.2/24 dev v1
ip -n "$ns" link set v0 up
ip -n "$ns" link set v1 up
ip netns exec "$ns" target/release/cascade-loadtest --target both --local \
    --janus-ip 10.99.0.1 --no-progress "$@"
