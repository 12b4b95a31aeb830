"""The code-location image that ``scripts/build-image.sh`` writes, run with podman as a cluster would run it.

Skipped unless the archive is in the image cache (building it takes minutes cold; CI builds it only when
``CQOX_BUILD_IMAGE=1``). podman runs it with runc and explicit file and process limits: this machine's sandbox
refuses crun on its hybrid cgroup hierarchy and refuses to raise the limits podman sets by default.

What a run pod needs of the image: the CLI and its version, the default command serving the code location over
gRPC (checked from inside and from outside the container), and a drill's programs, runnable by the non-root user:
PostgreSQL 15's server and client binaries (a scratch cluster is initialised, started and stopped), promtool,
amtool and setpriv.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

CACHE = Path(os.environ.get("CQOX_IMAGE_CACHE", "/var/cache/cqox-platform/image"))
ARCHIVE = CACHE / "cqox-platform.oci.tar"
SUMMARY = CACHE / "cqox-platform.oci.json"
PODMAN = ["podman", "--runtime", "runc"]
RUN_FLAGS = ["--ulimit", "nofile=4096:4096", "--ulimit", "nproc=4096:4096", "--network", "host"]
APP_UID = 10001

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not ARCHIVE.exists(), reason=f"no image archive at {ARCHIVE}: run ./scripts/build-image.sh"),
]


def _podman(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([*PODMAN, *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def image() -> str:
    if shutil.which("podman") is None or shutil.which("runc") is None:
        pytest.skip("podman and runc are not installed: apt-get install podman runc")
    summary = json.loads(SUMMARY.read_text())
    loaded = _podman("load", "--input", str(ARCHIVE), timeout=900)
    assert loaded.returncode == 0, f"podman load {ARCHIVE} failed: {loaded.stderr}"
    reference = f"localhost/{summary['tag']}"
    inspected = _podman("image", "inspect", "--format", "{{.Digest}}", reference)
    assert inspected.returncode == 0, f"{reference} is not in podman's store after the load: {inspected.stderr}"
    return reference


def _run(image: str, *argv: str) -> subprocess.CompletedProcess:
    return _podman("run", "--rm", *RUN_FLAGS, image, *argv)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_the_cli_names_the_version_the_image_was_built_from(image):
    result = _run(image, "cqox-platform", "--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"cqox-platform {json.loads(SUMMARY.read_text())['version']}"


def test_the_image_runs_as_the_non_root_user_with_the_platform_on_path(image):
    config = json.loads(_podman("image", "inspect", image).stdout)[0]["Config"]
    assert config["User"] == f"{APP_UID}:{APP_UID}"
    assert config["Cmd"][:5] == ["dagster", "api", "grpc", "-m", "cqox_platform.definitions"]
    result = _run(image, "sh", "-c", "id -u; for b in cqox-platform dagster; do command -v $b; done")
    assert result.stdout.split() == [str(APP_UID), "/opt/cqox/venv/bin/cqox-platform", "/opt/cqox/venv/bin/dagster"]


@pytest.fixture
def grpc_server(image) -> Iterator[tuple[int, str]]:
    """The image's default command, on a free port of the host's network."""
    cmd = json.loads(_podman("image", "inspect", image).stdout)[0]["Config"]["Cmd"]
    port = _free_port()
    cmd[cmd.index("-p") + 1] = str(port)
    cmd[cmd.index("-h") + 1] = "127.0.0.1"
    name = f"cqox-grpc-{uuid.uuid4().hex[:8]}"
    started = _podman("run", "--detach", "--name", name, *RUN_FLAGS, image, *cmd)
    assert started.returncode == 0, started.stderr
    try:
        yield port, name
    finally:
        _podman("rm", "--force", name)


def test_the_default_command_serves_the_code_location_over_grpc(grpc_server):
    port, name = grpc_server
    # Loading the definitions takes a while on a busy machine: wait for the server, bounded.
    deadline = time.monotonic() + 240
    while True:
        inside = _podman("exec", name, "dagster", "api", "grpc-health-check", "-p", str(port))
        if inside.returncode == 0 or time.monotonic() > deadline:
            break
        time.sleep(2)
    logs = _podman("logs", name)
    assert inside.returncode == 0, f"no healthy gRPC server: {inside.stdout}{inside.stderr}\n{logs.stderr[-3000:]}"
    assert "Started Dagster code server for module cqox_platform.definitions" in logs.stdout + logs.stderr
    # From outside the container, as the daemon and webserver reach it.
    dagster = Path(os.environ.get("VIRTUAL_ENV", ".venv")) / "bin" / "dagster"
    outside = subprocess.run(
        [str(dagster) if dagster.exists() else "dagster", "api", "grpc-health-check", "-p", str(port)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert outside.returncode == 0, outside.stdout + outside.stderr


def test_a_drills_programs_run_as_the_non_root_user(image):
    script = """
set -e
for b in pg_basebackup pg_verifybackup initdb pg_ctl promtool amtool setpriv; do command -v $b; done
promtool --version >/dev/null
amtool --version >/dev/null
pg_verifybackup --version
initdb --pgdata "$TMPDIR/pg" --username postgres --auth trust >/dev/null
pg_ctl --pgdata "$TMPDIR/pg" --wait --options "-c listen_addresses='' -k $TMPDIR" --log "$TMPDIR/pg.log" start \
  >/dev/null
psql --host "$TMPDIR" --username postgres --tuples-only --no-align \
  --command 'select current_setting($$server_version_num$$)'
pg_ctl --pgdata "$TMPDIR/pg" --wait --mode fast stop >/dev/null
"""
    result = _run(image, "sh", "-c", script)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.split("\n")
    assert [Path(p).name for p in lines[:7]] == [
        "pg_basebackup",
        "pg_verifybackup",
        "initdb",
        "pg_ctl",
        "promtool",
        "amtool",
        "setpriv",
    ]
    assert lines[7].startswith("pg_verifybackup (PostgreSQL) 15.")
    assert lines[8].startswith("15")
