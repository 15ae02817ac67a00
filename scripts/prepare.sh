#!/usr/bin/env bash
# Installs what the tests and the demo need beyond the Rust toolchain: a Python with venv
# (for the Synapse virtualenv, which the test-support crate creates under target/ on first use).
set -euo pipefail
if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
    echo "installing python3-venv with apt-get"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 python3-venv >/dev/null
fi
# Headless Chromium for the browser end-to-end test (crates/server/tests/browser.rs).
if [ ! -x /usr/bin/chromium ]; then
    echo "installing chromium with apt-get"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
# Node and npm for the interop tests running released JavaScript clients (matrix-js-sdk in
# crates/server/tests/jssdk.rs, livekit-client in crates/server/tests/livekit_browser.rs); their
# packages come from the npm registry on first use (`npm ci`).
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    echo "installing nodejs and npm with apt-get"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null
fi
# Prometheus (Debian's package) for the test in which a real Prometheus scrapes the focus
# (crates/server/tests/operations.rs); only the binary is used, the service is never started.
if ! command -v prometheus >/dev/null 2>&1 && [ ! -x /usr/bin/prometheus ]; then
    echo "installing prometheus with apt-get"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi
# kubernetes-validate (PyPI) in target/tools-venv, for scripts/validate-kubernetes.sh.
tools_venv="$(cd "$(dirname "$0")/.." && pwd)/target/tools-venv"
if [ ! -x "$tools_venv/bin/kubernetes-validate" ]; then
    echo "installing kubernetes-validate into target/tools-venv"
    python3 -m venv "$tools_venv"
    "$tools_venv/bin/pip" install -q --disable-pip-version-check kubernetes-validate
fi
# A TrueType font for the text of cascade-loadtest's PNG plot (it draws without text otherwise).
if [ ! -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ]; then
    echo "installing fonts-dejavu-core with apt-get"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fonts-dejavu-core >/dev/null
fi
# nftables (Debian's package) for the packet-loss test (loadtest/tests/loss.rs), which drops
# datagrams at random in a network namespace it makes itself.
if ! command -v nft >/dev/null 2>&1 && [ ! -x /usr/sbin/nft ]; then
    echo "installing nftables with apt-get"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nftables >/dev/null
fi
# iproute2 (Debian's package: `ip` and `tc`) for the loss and congestion tests
# (loadtest/tests/loss.rs, congestion.rs), which make their own network namespace and limit a
# device's downlink with tc's HTB and tbf.
if ! command -v tc >/dev/null 2>&1 && [ ! -x /usr/sbin/tc ]; then
    echo "installing iproute2 with apt-get"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends iproute2 >/dev/null
fi
