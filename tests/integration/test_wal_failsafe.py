"""Fail-safe WAL fetch, least-privilege file writes and the restore command's input checks (issue 13, items
3, 9, 12 and 13), against a real stack of their own: full tmpfs, S3 killed mid-download, planted symlinks.

The stack has no Dagster daemon (only ``vault_config`` is materialized, in process), and its directory is a
world-traversable temporary one, as every test stack's is.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
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

from cqox_platform.backup.archive import Archive
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


# --- item 9: root never writes, chmods or chowns through a path the postgres user controls ---------------------


@pytest.fixture
def victim():
    """A root-owned file standing in for /etc/shadow: a planted symlink must not reach it."""
    directory = make_world_traversable_tmpdir("cqox-victim-")
    path = directory / "root-only.conf"
    path.write_text("root's own content\n")
    path.chmod(0o644)
    yield path
    shutil.rmtree(directory, ignore_errors=True)


def _untouched(victim: Path) -> None:
    st = victim.lstat()
    assert victim.read_text() == "root's own content\n"
    assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (0, 0, 0o644)


def test_vault_config_replaces_a_planted_symlink_instead_of_writing_through_it(stack, env, victim):
    settings = Path(env["CQOX_WAL_ARCHIVER_CONFIG"])
    before = settings.read_text()
    settings.unlink()
    settings.symlink_to(victim)  # what the postgres user can do in its own directory
    try:
        with mock.patch.dict(os.environ, env):
            assert _materialize_vault_config(stack).success
        _untouched(victim)
        st = settings.lstat()
        postgres = pwd.getpwnam("postgres")
        assert not settings.is_symlink() and (st.st_uid, st.st_mode & 0o777) == (postgres.pw_uid, 0o600)
        assert json.loads(settings.read_text())["bucket"] == json.loads(before)["bucket"]
    finally:
        if settings.is_symlink():
            settings.unlink()
            settings.write_text(before)


def test_postgres_start_replaces_planted_symlinks_in_its_data_directory(stack, env, victim):
    postgres = stack.service("postgres")
    conf = Path(env["CQOX_PG_DATA"]) / "cqox.conf"
    postgres.stop()
    try:
        conf.unlink()
        conf.symlink_to(victim)
        postgres.start()
    finally:
        if not postgres.running():
            if conf.is_symlink():
                conf.unlink()
            postgres.start()
    _untouched(victim)
    assert not conf.is_symlink() and conf.stat().st_uid == pwd.getpwnam("postgres").pw_uid


# --- items 9 and 13: `restore` validates first, keeps side files private, cleans up what it created -------------


@pytest.fixture(scope="module")
def backup_id(stack, env):
    from cqox_platform.schema import MigrationRunner
    from tests.integration.test_vault import _postgres_admin

    with _postgres_admin(stack).connect(autocommit=True) as conn:
        MigrationRunner().migrate(conn)
    created = _cli(env, "backup", "create")
    assert created.returncode == 0, created.stderr
    return created.stdout.split()[0]


def _damaged_copy(env, backup_id: str, new_id: str, damage: str) -> None:
    """A copy of ``backup_id`` under ``new_id`` whose data object is corrupted mid-way or missing."""
    from cqox_platform.backup.records import find_backup

    s3, bucket = _s3(env), env["CQOX_S3_BUCKET"]
    record = find_backup(s3, bucket, backup_id)
    archive = Archive(s3, bucket, record.system_id)
    data = bytearray(archive.get_bytes(record.object_key))
    if damage == "corrupt":
        data[int(len(data) * 0.6)] ^= 0xFF
        archive.put_bytes(archive.backup_data_key(new_id), bytes(data))
    archive.put_bytes(archive.backup_manifest_key(new_id), archive.get_bytes(record.manifest_key))
    fields = json.loads(archive.get_bytes(archive.backup_record_key(backup_id)))
    fields.update(
        backup_id=new_id,
        object_key=archive.backup_data_key(new_id),
        manifest_key=archive.backup_manifest_key(new_id),
    )
    archive.put_bytes(archive.backup_record_key(new_id), json.dumps(fields).encode())


def _stop_restored(pgdata: Path) -> None:
    subprocess.run(
        [
            "runuser",
            "-u",
            "postgres",
            "--",
            "/usr/lib/postgresql/15/bin/pg_ctl",
            "-D",
            str(pgdata),
            "-m",
            "immediate",
            "-w",
            "stop",
        ],
        capture_output=True,
    )


@pytest.fixture
def shared_tmp():
    """A directory like /tmp: world-writable and sticky, where anyone can plant names."""
    path = make_world_traversable_tmpdir("cqox-shared-")
    path.chmod(0o1777)
    yield path
    _stop_restored(path / "pg")
    shutil.rmtree(path, ignore_errors=True)


def test_restore_keeps_side_files_private_and_never_follows_planted_names(env, backup_id, shared_tmp, victim):
    planted = {".pg.download": victim, "pg.log": victim, "pg.sock": victim.parent}
    for name, target in planted.items():
        (shared_tmp / name).symlink_to(target)
    result = _cli(env, "restore", "--backup", backup_id, "--pgdata", str(shared_tmp / "pg"))
    assert result.returncode == 0, result.stderr
    _untouched(victim)
    assert victim.parent.stat().st_uid == 0
    for name, target in planted.items():  # other people's files are left alone, not followed
        assert (shared_tmp / name).is_symlink() and os.readlink(shared_tmp / name) == str(target)


def test_restore_under_a_directory_postgres_cannot_traverse_fails_before_downloading(env, backup_id, tmp_path):
    closed = tmp_path / "closed"
    closed.mkdir(mode=0o700)
    started = time.monotonic()
    result = _cli(env, "restore", "--backup", backup_id, "--pgdata", str(closed / "pg"))
    assert result.returncode == 1
    line = _one_clear_line(result)
    assert str(closed) in line and "o+x" in line and "download" not in result.stderr
    assert not (closed / "pg").exists() and time.monotonic() - started < 20


@pytest.mark.parametrize(
    ("case", "names"),
    [
        ("target-time", ["--target-time", "yesterday at noon"]),
        ("target-time-without-zone", ["--target-time", "2026-11-26 06:30:00"]),
        ("archiver-config", ["CQOX_WAL_ARCHIVER_CONFIG"]),
        ("pgdata-is-a-file", ["--pgdata"]),
    ],
)
def test_restore_rejects_bad_input_in_one_line_before_anything_happens(env, backup_id, shared_tmp, case, names):
    pgdata = shared_tmp / "pg"
    args = ["restore", "--backup", backup_id, "--pgdata", str(pgdata)]
    extra_env = {}
    if case.startswith("target-time"):
        args += names
    elif case == "archiver-config":
        extra_env = {"CQOX_WAL_ARCHIVER_CONFIG": str(shared_tmp / "missing" / "archiver.json")}
    else:
        pgdata.write_text("not a directory\n")
    result = _cli(env, *args, extra_env=extra_env)
    assert result.returncode != 0
    line = _one_clear_line(result)
    if case == "archiver-config":
        assert str(shared_tmp / "missing" / "archiver.json") in line
    elif case == "pgdata-is-a-file":
        assert str(pgdata) in line and pgdata.read_text() == "not a directory\n"
    else:
        assert "--target-time" in line and names[1] in line
    if case != "pgdata-is-a-file":
        assert not pgdata.exists()
    assert sorted(p.name for p in shared_tmp.iterdir()) == (["pg"] if case == "pgdata-is-a-file" else [])


@pytest.mark.parametrize("damage", ["corrupt", "missing"])
@pytest.mark.parametrize("pre_existing", [False, True])
def test_a_failed_restore_removes_what_it_created_and_nothing_else(env, backup_id, shared_tmp, damage, pre_existing):
    new_id = "20000101T000000Z-" + ("c0" if damage == "corrupt" else "d0") + ("01" if pre_existing else "00")
    _damaged_copy(env, backup_id, new_id, damage)
    pgdata = shared_tmp / "pg"
    if pre_existing:
        pgdata.mkdir(mode=0o755)
    result = _cli(env, "restore", "--backup", new_id, "--pgdata", str(pgdata))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1 and new_id in error_lines[0], result.stderr
    if pre_existing:
        assert pgdata.is_dir() and list(pgdata.iterdir()) == [] and pgdata.stat().st_mode & 0o777 == 0o755
    else:
        assert not pgdata.exists()
    assert sorted(p.name for p in shared_tmp.iterdir()) == (["pg"] if pre_existing else [])


def test_a_database_that_is_down_is_one_line_not_a_traceback(env):
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    result = _cli(env, "backup", "list", extra_env={"CQOX_PG_PORT": str(port)})
    assert result.returncode == 1
    line = _one_clear_line(result)
    assert str(port) in line


# --- item 12: the asynchronous pusher uses one data key per object ----------------------------------------------


def test_async_pusher_wraps_a_distinct_data_key_for_every_object(env):
    from cqox_platform.backup.wal_async import run_daemon

    base = make_world_traversable_tmpdir("cqox-walfs-async-")
    try:
        pgdata = base / "pgdata"
        (pgdata / "global").mkdir(parents=True)
        (pgdata / "global" / "pg_control").write_bytes(struct.pack("<Q", SYSTEM_ID + 1) + b"\0" * 8184)
        status = pgdata / "pg_wal" / "archive_status"
        status.mkdir(parents=True)
        names = [f"0000000100000000000000{i:02X}" for i in range(1, 9)]
        for name in names:
            (pgdata / "pg_wal" / name).write_bytes(os.urandom(64 * 1024))
            (status / f"{name}.ready").touch()
        settings = base / "archiver" / "archiver.json"
        settings.parent.mkdir()
        shutil.copyfile(env["CQOX_WAL_ARCHIVER_CONFIG"], settings)
        run_daemon(settings, pgdata, idle_exit=2.0, log=lambda m: None)
        archive = Archive(_s3(env), env["CQOX_S3_BUCKET"], str(SYSTEM_ID + 1))
        manifests = [json.loads(archive.get_bytes(archive.wal_manifest_key(n))) for n in names]
        assert len({m["wrapped_dek"] for m in manifests}) == len(names)
    finally:
        shutil.rmtree(base, ignore_errors=True)
