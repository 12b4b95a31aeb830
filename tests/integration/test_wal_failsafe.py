"""Fail-safe WAL fetch, least-privilege file writes and the restore command's input checks (issue 13, items
3, 9, 12 and 13), against a real stack of their own: full tmpfs, S3 killed mid-download, planted symlinks.

The stack has no Dagster daemon (only ``vault_config`` is materialized, in process), and its directory is a
world-traversable temporary one, as every test stack's is.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from unittest import mock

import boto3
import pytest

from cqox_platform.stack.s3 import client_config
from tests.conftest import _running_stack, make_world_traversable_tmpdir
from tests.integration.test_vault import _materialize_vault_config

CLI = [sys.executable, "-m", "cqox_platform.cli"]
SEGMENT = 16 * 1024 * 1024
SYSTEM_ID = 7313


@pytest.fixture(scope="module")
def stack():
    with _running_stack("cqox-test-walfs-", with_dagster=False) as st:
        yield st


@pytest.fixture(scope="module")
def env(stack):
    with mock.patch.dict(os.environ, stack.env()):
        assert _materialize_vault_config(stack).success
        yield stack.env()


def _cli(env, *args, timeout=300, extra_env=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*CLI, *args], env={**os.environ, **env, **(extra_env or {})}, capture_output=True, text=True, timeout=timeout
    )


def _s3(env):
    return boto3.session.Session().client("s3", endpoint_url=env["CQOX_S3_ENDPOINT"], config=client_config())


def _one_clear_line(result: subprocess.CompletedProcess) -> str:
    """stderr is one line of explanation: no traceback, nothing else."""
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.fixture(scope="module")
def archived(env, tmp_path_factory):
    """A fake data directory with one segment (16 MiB of random bytes, so it barely compresses) archived."""
    base = make_world_traversable_tmpdir("cqox-walfs-pgdata-")
    pgdata = base / "pgdata"
    (pgdata / "global").mkdir(parents=True)
    (pgdata / "pg_wal").mkdir()
    (pgdata / "global" / "pg_control").write_bytes(struct.pack("<Q", SYSTEM_ID) + b"\0" * 8184)
    name = "000000010000000000000003"
    (pgdata / "pg_wal" / name).write_bytes(os.urandom(SEGMENT))
    args = ["--config", env["CQOX_WAL_ARCHIVER_CONFIG"], "--pgdata", str(pgdata)]
    pushed = _cli(env, "wal-push", f"pg_wal/{name}", *args)
    assert pushed.returncode == 0, pushed.stderr
    yield pgdata, name, args
    shutil.rmtree(base, ignore_errors=True)


# --- item 3: wal-fetch exits 255 on anything but a proven absence ----------------------------------------------


def test_wal_fetch_into_an_unwritable_destination_stops_recovery(env, archived, tmp_path):
    _pgdata, name, args = archived
    result = _cli(env, "wal-fetch", name, str(tmp_path / "no-such-dir" / "RECOVERYXLOG"), *args)
    assert result.returncode == 255, result.stderr
    line = _one_clear_line(result)
    assert name in line and "no-such-dir" in line


def test_wal_fetch_into_a_full_filesystem_stops_recovery_and_leaves_nothing(env, archived, tmp_path):
    _pgdata, name, args = archived
    mount = tmp_path / "full"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], check=True)
    try:
        result = _cli(env, "wal-fetch", name, str(mount / "RECOVERYXLOG"), *args)
        assert result.returncode == 255, result.stderr
        line = _one_clear_line(result)
        assert name in line and "space" in line.lower()
        assert list(mount.iterdir()) == []  # no temporary file left behind
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_a_missing_segment_is_still_the_end_of_the_archive(env, archived, tmp_path):
    _pgdata, _name, args = archived
    result = _cli(env, "wal-fetch", "0000000100000000000000FE", str(tmp_path / "RECOVERYXLOG"), *args)
    assert result.returncode == 1 and not (tmp_path / "RECOVERYXLOG").exists()


class _SlowProxy:
    """A TCP relay in front of the S3 server that paces responses, so a test can kill S3 mid-body."""

    def __init__(self, upstream_port: int, pace: int = 32 * 1024, delay: float = 0.01) -> None:
        self.upstream_port, self.pace, self.delay = upstream_port, pace, delay
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.big_response_flowing = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            threading.Thread(target=self._pump, args=(client, upstream, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, True), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, downstream: bool) -> None:
        sent = 0
        try:
            while True:
                data = src.recv(self.pace)
                if not data:
                    break
                dst.sendall(data)
                sent += len(data)
                if downstream and sent > 2 * 1024 * 1024:
                    self.big_response_flowing.set()
                    time.sleep(self.delay)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()

    def close(self) -> None:
        self.listener.close()


def test_wal_fetch_with_s3_killed_mid_download_stops_recovery(stack, env, archived, tmp_path):
    _pgdata, name, args = archived
    s3 = stack.service("s3")
    proxy = _SlowProxy(s3.port)
    settings = json.loads(Path(env["CQOX_WAL_ARCHIVER_CONFIG"]).read_text())
    settings["s3_endpoint"] = f"https://127.0.0.1:{proxy.port}"
    via_proxy = tmp_path / "archiver.json"
    via_proxy.write_text(json.dumps(settings))
    args = [a if a != env["CQOX_WAL_ARCHIVER_CONFIG"] else str(via_proxy) for a in args]
    fetch = subprocess.Popen(
        [*CLI, "wal-fetch", name, str(tmp_path / "RECOVERYXLOG"), *args],
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proxy.big_response_flowing.wait(60), "the segment's download never started"
        os.kill(s3.read_pid(), signal.SIGKILL)
        _stdout, stderr = fetch.communicate(timeout=120)
    finally:
        proxy.close()
        s3.stop()
        s3.start()
        s3.after_start()
    result = subprocess.CompletedProcess(fetch.args, fetch.returncode, "", stderr)
    assert result.returncode == 255, stderr
    line = _one_clear_line(result)
    assert name in line
    assert not (tmp_path / "RECOVERYXLOG").exists()


def test_wal_fetch_from_a_bucket_that_does_not_exist_is_not_the_end_of_the_archive(env, archived, tmp_path):
    """A 404 for the bucket (a typo in --bucket, a DR bucket never created) proves nothing about the segment."""
    _pgdata, name, args = archived
    result = _cli(env, "wal-fetch", name, str(tmp_path / "RECOVERYXLOG"), *args, "--bucket", "no-such-bucket")
    assert result.returncode == 255, result.stderr
    assert "no-such-bucket" in _one_clear_line(result)
