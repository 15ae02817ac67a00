#!/usr/bin/env bash
# Validates the Kubernetes manifests in config/kubernetes/: every resource against the
# Kubernetes schemas with kubernetes-validate (strict), plus what the schemas cannot see: the
# ServiceMonitor's shape, the grace period against drain_timeout_secs, the probes, and the
# ConfigMap's cascade.toml through `cascade --check-config`. Fails loudly on any problem.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=target/tools-venv
if [ ! -x "$venv/bin/kubernetes-validate" ]; then
    echo "kubernetes-validate is missing; run scripts/prepare.sh" >&2
    exit 1
fi
manifests=()
for file in config/kubernetes/*.yaml; do
    [ "$(basename "$file")" = kustomization.yaml ] && continue
    manifests+=("$file")
done
"$venv/bin/kubernetes-validate" --strict "${manifests[@]}"

toml=$(mktemp --suffix=.toml)
trap 'rm -f "$toml"' EXIT
"$venv/bin/python" - "$toml" "${manifests[@]}" <<'PY'
import sys, tomllib, yaml

out, files = sys.argv[1], sys.argv[2:]
docs = {}
for name in files:
    with open(name) as f:
        for doc in yaml.safe_load_all(f):
            if doc:
                docs[doc["kind"]] = doc
problems = []
for kind in ["ConfigMap", "Secret", "Service", "StatefulSet", "PodDisruptionBudget", "ServiceMonitor"]:
    if kind not in docs:
        problems.append(f"no {kind}")
if problems:
    sys.exit("kubernetes manifests: " + "; ".join(problems))
config_text = docs["ConfigMap"]["data"]["cascade.toml"]
config = tomllib.loads(config_text)
with open(out, "w") as f:
    f.write(config_text)
drain = config.get("server", {}).get("drain_timeout_secs", 600)
pod = docs["StatefulSet"]["spec"]["template"]["spec"]
grace = pod.get("terminationGracePeriodSeconds", 30)
if grace <= drain:
    problems.append(f"terminationGracePeriodSeconds {grace} is not above drain_timeout_secs {drain}")
container = pod["containers"][0]
if container["livenessProbe"]["httpGet"]["path"] != "/healthz":
    problems.append("the liveness probe is not /healthz")
if container["readinessProbe"]["httpGet"]["path"] != "/readyz":
    problems.append("the readiness probe is not /readyz")
env = {e["name"] for e in container.get("env", [])}
for name in ["CASCADE_MATRIX__DEVICE_ID", "CASCADE_MATRIX__PASSWORD", "CASCADE_RTC__PUBLIC_IPS"]:
    if name not in env:
        problems.append(f"the container does not set {name}")
monitor = docs["ServiceMonitor"]
if monitor["apiVersion"] != "monitoring.coreos.com/v1":
    problems.append("the ServiceMonitor's apiVersion is not monitoring.coreos.com/v1")
service = docs["Service"]
ports = {p["name"] for p in service["spec"]["ports"]}
for endpoint in monitor["spec"]["endpoints"]:
    if endpoint.get("port") not in ports:
        problems.append(f"the ServiceMonitor scrapes port {endpoint.get('port')!r}, not a port of the Service")
    if endpoint.get("path", "/metrics") != "/metrics":
        problems.append("the ServiceMonitor does not scrape /metrics")
labels = service["metadata"]["labels"]
if any(labels.get(k) != v for k, v in monitor["spec"]["selector"]["matchLabels"].items()):
    problems.append("the ServiceMonitor's selector does not match the Service")
if problems:
    sys.exit("kubernetes manifests:\n  - " + "\n  - ".join(problems))
print("manifests: grace period, probes, environment and ServiceMonitor are consistent")
PY

# The binary where cargo puts it (CARGO_TARGET_DIR or the configured target dir included),
# built as the test command builds it: `cargo build -p cascade` alone unifies the
# dependencies' features differently and built many of them a second time (five minutes of a
# clean run of the test command).
cargo test -q --workspace --all-targets --no-run
target_dir=$(cargo metadata --format-version 1 --no-deps |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
binary="$target_dir/debug/cascade"
CASCADE_MATRIX__PASSWORD=placeholder "$binary" --check-config "$toml"
