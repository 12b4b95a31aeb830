#!/usr/bin/env bash
# The test command: install what is missing, lint, then unit, integration and end-to-end tests. The tests
# start their own stack of real services in a temporary directory with free ports (tests/conftest.py).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/bootstrap.sh
VENV="${CQOX_VENV:-.venv}"
# The code-location image tests/integration/test_image.py runs (skipped without it): built on request, its
# downloads and layers cached in /var/cache/cqox-platform/image like the Kubernetes build.
if [ "${CQOX_BUILD_IMAGE:-0}" = 1 ] || [ "${CQOX_KUBE_NODE:-0}" = 1 ]; then
  ./scripts/build-image.sh
fi
# CQOX_KUBE_NODE=1: tests/integration/test_kube_node.py runs pods on a real node (kubelet and kube-scheduler built
# from Go modules into the same cache, about a minute with a warm Go build cache; containerd from Debian).
if [ "${CQOX_KUBE_NODE:-0}" = 1 ]; then
  ./scripts/build-node.sh
fi
"$VENV/bin/ruff" check .
"$VENV/bin/lint-imports"
# Two workers (CQOX_TEST_WORKERS; 0 runs in this process): most real-service tests wait on timers (alerts,
# failovers, drills), so two of them share the two cores; a module, or all of the HA stack's modules, per worker.
exec "$VENV/bin/pytest" -p no:cacheprovider -n "${CQOX_TEST_WORKERS:-2}" --dist loadgroup "$@"
