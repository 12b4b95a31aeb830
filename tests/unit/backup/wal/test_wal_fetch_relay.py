"""The restore_command relay: the prefetcher's answer when it gives one, else the fallback CLI, never "absent"
for anything short of the prefetcher saying so."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from cqox_platform.backup.wal import fetch_relay

FALLBACK = ["/bin/sh", "-c", "echo fallback ran >&2; exit 7"]


def _relay(sock: Path, cwd: Path, name: str = "000000010000000000000007", fallback=FALLBACK):
    """The relay as restore_command runs it: an isolated interpreter without site-packages, in the data dir."""
    argv = [sys.executable, "-I", "-S", fetch_relay.__file__, str(sock), name, "pg_wal/RECOVERYXLOG", *fallback]
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=30)


class _Prefetcher:
    """A unix socket that answers each request with ``reply`` and records what it was asked."""

    def __init__(self, path: Path, reply: bytes) -> None:
        self.requests: list[bytes] = []
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(str(path))
        self.server.listen()
        self.reply = reply
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            with conn:
                data = b""
                while chunk := conn.recv(4096):
                    data += chunk
                self.requests.append(data)
                conn.sendall(self.reply)

    def close(self) -> None:
        self.server.close()


@pytest.fixture
def pgdata(tmp_path):
    (tmp_path / "pgdata" / "pg_wal").mkdir(parents=True)
    return tmp_path / "pgdata"


@pytest.mark.parametrize("code", [0, 1, 255])
def test_the_prefetchers_answer_is_the_exit_code_and_the_destination_is_absolute(tmp_path, pgdata, code):
    sock = tmp_path / "fetch.sock"
    prefetcher = _Prefetcher(sock, f"{code} wal-fetch: answered\n".encode())
    try:
        done = _relay(sock, pgdata)
    finally:
        prefetcher.close()
    assert done.returncode == code, done.stderr
    assert "answered" in done.stderr and "fallback ran" not in done.stderr
    name, _, destination = prefetcher.requests[0].decode().rstrip("\n").partition("\0")
    assert name == "000000010000000000000007"
    assert destination == str(pgdata / "pg_wal" / "RECOVERYXLOG")  # resolved in PostgreSQL's working directory


def test_no_prefetcher_listening_runs_the_fallback(tmp_path, pgdata):
    done = _relay(tmp_path / "no-such.sock", pgdata)
    assert done.returncode == 7 and "fallback ran" in done.stderr


@pytest.mark.parametrize("reply", [b"", b"1 cut short", b"2 not a restore_command answer\n", b"absent\n"])
def test_a_dropped_or_malformed_answer_runs_the_fallback_never_reads_as_absent(tmp_path, pgdata, reply):
    sock = tmp_path / "fetch.sock"
    prefetcher = _Prefetcher(sock, reply)
    try:
        done = _relay(sock, pgdata)
    finally:
        prefetcher.close()
    assert done.returncode == 7 and "fallback ran" in done.stderr


def test_a_fallback_that_cannot_run_stops_recovery(tmp_path, pgdata):
    done = _relay(tmp_path / "no-such.sock", pgdata, fallback=[str(tmp_path / "no-such-cli"), "wal-fetch"])
    assert done.returncode == 255
    assert "000000010000000000000007" in done.stderr and "no-such-cli" in done.stderr


def test_the_relay_imports_nothing_outside_the_standard_library():
    """It runs with -I -S: a project or third-party import would fail there, and its start-up is the cost."""
    probe = (
        "import sys, runpy; before = set(sys.modules); "
        f"runpy.run_path({fetch_relay.__file__!r}, run_name='relay'); "
        "print(sorted(m for m in set(sys.modules) - before if m.split('.')[0] in ('cqox_platform', 'click', "
        "'boto3', 'botocore', 'zstandard', 'cryptography')))"
    )
    done = subprocess.run([sys.executable, "-I", "-S", "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_a_restored_clusters_restore_command_goes_through_the_relay_before_the_cli(tmp_path):
    import struct

    from cqox_platform.backup.restore.recovery import restore_command_for
    from cqox_platform.backup.wal.prefetch_client import relay_socket, spool_for

    pgdata, settings = tmp_path / "pgdata", tmp_path / "archiver.json"
    (pgdata / "global").mkdir(parents=True)
    (pgdata / "global" / "pg_control").write_bytes(struct.pack("<Q", 4321) + b"\0" * 100)
    command = restore_command_for(Path("/opt/cqox-platform"), settings, None, 8, pgdata)
    relay = f"{fetch_relay.__file__} {relay_socket(spool_for(settings, pgdata, None))} %f %p"
    assert relay in command
    assert command.index(relay) < command.index("/opt/cqox-platform wal-fetch %f %p")
    assert os.path.isabs(fetch_relay.__file__)
