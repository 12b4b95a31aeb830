#!/usr/bin/env bash
# The test command: install what is missing, lint, then unit, integration and end-to-end tests. The tests
# start their own stack of real services in a temporary directory with free ports (tests/conftest.py).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/bootstrap.sh
VENV="${CQOX_VENV:-.venv}"
"$VENV/bin/ruff" check .
"$VENV/bin/lint-imports"
exec "$VENV/bin/pytest" -p no:cacheprovider "$@"
