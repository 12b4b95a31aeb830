#!/usr/bin/env bash
# A full canary on the local stack, decided by the canary sensor running in the Dagster daemon:
# a good version is promoted 10 -> 50 -> 100 % and then to stable (the stable Deployment gets its image, traffic
# goes back to stable 100 / canary 0, the canary is scaled to 0), then a bad one (5 % errors) is rolled back,
# starting from the new stable.
# Every decision is a materialization of canary_rollout (see the Dagster UI, asset canary_rollout).
# The policy is the repository's with one analysis per minute instead of ten, so the demo takes ~7 minutes.
# Usage: scripts/canary-demo.sh   (starts the stack with traffic and the daemon if needed)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${CQOX_VENV:-.venv}"
./scripts/bootstrap.sh
POLICY_DIR="$(mktemp -d /tmp/cqox-canary-demo-XXXX)"
"$VENV/bin/python" - "$POLICY_DIR" <<'PY'
import sys, yaml, pathlib
src = pathlib.Path("cqox_platform/canary/policies/cqox-engine.yaml")
raw = yaml.safe_load(src.read_text())
raw.update(interval_seconds=60, min_requests=200)
(pathlib.Path(sys.argv[1]) / "cqox-engine.yaml").write_text(yaml.safe_dump(raw))
PY
export CQOX_CANARY_POLICY_DIR="$POLICY_DIR"   # the daemon inherits it from `stack up`
"$VENV/bin/cqox-platform" stack down >/dev/null 2>&1 || true
"$VENV/bin/cqox-platform" stack up --traffic
eval "$("$VENV/bin/cqox-platform" stack env)"
"$VENV/bin/dagster" asset materialize -m cqox_platform.definitions --select 'vault_config,cqox_schema,group:deploy' >/dev/null
curl -fsS -X PUT "$CQOX_TRAFFIC_URL/config" -d '{"canary": {"error_ratio": 0.00005}}' >/dev/null

wait_for() {  # wait_for STATUS: until the newest rollout has that status
  for _ in $(seq 1 60); do
    "$VENV/bin/cqox-platform" canary status --limit 1 | tail -1 | grep -q " $1 " && return 0
    sleep 10
  done
  echo "the rollout did not reach $1" >&2; return 1
}

show_cluster() {  # the stable and canary Deployments and the VirtualService weights, as the API server has them
  "$VENV/bin/python" - <<'PY'
from cqox_platform.canary.policy import policy_for
from cqox_platform.canary.promotion import read_deployment
from cqox_platform.canary.router import VS
from cqox_platform.cli import context

policy, kube = policy_for("cqox-engine"), context.kubernetes()
t = policy.kubernetes
for name in (policy.promotion.stable_deployment, t.canary_deployment):
    d = read_deployment(kube, t.namespace, name)
    image = d["spec"]["template"]["spec"]["containers"][0]["image"]
    print(f"  Deployment {name:<22} image {image:<22} replicas {d['spec'].get('replicas')}")
vs = kube.get_custom(*VS, t.virtual_service, t.namespace)
route = next(r for r in vs["spec"]["http"] if r["name"] == t.route)
print("  weights", {d["destination"]["subset"]: d.get("weight", 0) for d in route["route"]})
PY
}

echo "== good version: expect 10 -> 50 -> 100 %, then promotion to stable and 'promoted'"
"$VENV/bin/cqox-platform" canary start cqox-engine --image cqox/engine:1.1.0
show_cluster
wait_for promoted
"$VENV/bin/cqox-platform" canary status --limit 1
echo "== after promotion: stable runs cqox/engine:1.1.0, weights stable 100 / canary 0, canary at 0 replicas"
show_cluster

echo "== bad version (5 % errors): expect a failed analysis, then 'rolled_back'"
curl -fsS -X PUT "$CQOX_TRAFFIC_URL/config" -d '{"canary": {"error_ratio": 0.05}}' >/dev/null
sleep 60   # let a whole analysis window see the bad canary
"$VENV/bin/cqox-platform" canary start cqox-engine --image cqox/engine:1.2.0
echo "== the second rollout starts from the new stable (90 % on cqox/engine:1.1.0)"
show_cluster
wait_for rolled_back
show_cluster
"$VENV/bin/cqox-platform" canary status --limit 2
curl -fsS -X PUT "$CQOX_TRAFFIC_URL/config" -d '{"canary": {"error_ratio": 0.00005}}' >/dev/null
echo "decisions: Dagster UI -> asset canary_rollout ($CQOX_DAGSTER_URL)"
