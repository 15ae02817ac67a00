#!/usr/bin/env bash
# Installs what the tests and the demo need beyond the Rust toolchain: a Python with venv
# (for the Synapse virtualenv, which the test-support crate creates under target/ on first use).
set -euo pipefail
if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
    echo "installing python3-venv with apt-get"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 python3-venv >/dev/null
fi
