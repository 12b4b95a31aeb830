"""Fail-safe WAL fetch, least-privilege file writes and the restore command's input checks (issue 13, items
3, 9, 12 and 13), against a real stack of their own: full tmpfs, S3 killed mid-download, planted symlinks.

The stack has no Dagster daemon (only ``vault_config`` is materialized, in process), and its directory is a
world-traversable temporary one, as every test stack's is.
"""

from __future__ import annotations

import contextlib
import io
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
import psycopg
import pytest

from cqox_platform.backup.archive.store import Archive
from cqox_platform.pgserver import stop_immediately
from cqox_platform.stack.s3 import client_config
from tests.helpers import make_world_traversable_tmpdir, materialize_vault_config, postgres_admin, running_stack

CLI = [sys.executable, "-m", "cqox_platform.cli"]
SEGMENT = 16 * 1024 * 1024
SYSTEM_ID = 7313


@pytest.fixture(scope="module")
def stack():
    with running_stack("cqox-test-walfs-", with_dagster=False) as st:
        yield st


@pytest.fixture(scope="module")
def env(stack):
    with mock.patch.dict(os.environ, stack.env()):
        assert materialize_vault_config(stack).success
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
            assert materialize_vault_config(stack).success
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

    with postgres_admin(stack).connect(autocommit=True) as conn:
        MigrationRunner().migrate(conn)
    created = _cli(env, "backup", "create")
    assert created.returncode == 0, created.stderr
    return created.stdout.split()[0]


def _damaged_copy(env, backup_id: str, new_id: str, damage: str) -> None:
    """A copy of ``backup_id`` under ``new_id`` whose data object is corrupted mid-way or missing."""
    from cqox_platform.backup.archive.records import find_backup

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


@pytest.fixture
def shared_tmp():
    """A directory like /tmp: world-writable and sticky, where anyone can plant names."""
    path = make_world_traversable_tmpdir("cqox-shared-")
    path.chmod(0o1777)
    yield path
    stop_immediately(path / "pg")
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


# --- the asynchronous pusher's data keys: one cached key with a key derived per object, or one key per object -----


@pytest.mark.parametrize(("window", "keys", "flags"), [(900, 1, 0x01), (0, 8, 0x00)], ids=["cached", "window-off"])
def test_async_pusher_derives_a_key_per_object_from_its_cached_key_or_wraps_one_per_object(env, window, keys, flags):
    """With the data-key cache (the default) the 8 segments share one Vault key and each is sealed under a key
    derived for it alone (header flag 0x01); with the window set to 0 every segment gets its own Vault key."""
    from cqox_platform.archiver_clients import load_archiver_clients
    from cqox_platform.backup.wal.pusher import run_daemon
    from cqox_platform.crypto.stream import read_header

    base = make_world_traversable_tmpdir("cqox-walfs-async-")
    try:
        pgdata = base / "pgdata"
        (pgdata / "global").mkdir(parents=True)
        system_id = SYSTEM_ID + 1 + window  # a cluster of its own per case
        (pgdata / "global" / "pg_control").write_bytes(struct.pack("<Q", system_id) + b"\0" * 8184)
        status = pgdata / "pg_wal" / "archive_status"
        status.mkdir(parents=True)
        names = [f"0000000100000000000000{i:02X}" for i in range(1, 9)]
        for name in names:
            (pgdata / "pg_wal" / name).write_bytes(os.urandom(64 * 1024))
            (status / f"{name}.ready").touch()
        settings = base / "archiver" / "archiver.json"
        settings.parent.mkdir()
        data = json.loads(Path(env["CQOX_WAL_ARCHIVER_CONFIG"]).read_text())
        settings.write_text(json.dumps({**data, "data_key_max_age_seconds": window}))
        run_daemon(settings, pgdata, lambda: load_archiver_clients(settings), idle_exit=2.0, log=lambda m: None)
        archive = Archive(_s3(env), env["CQOX_S3_BUCKET"], str(system_id))
        manifests = [json.loads(archive.get_bytes(archive.wal_manifest_key(n))) for n in names]
        assert len({m["wrapped_dek"] for m in manifests}) == keys
        headers = [read_header(io.BytesIO(archive.get_bytes(archive.wal_key(n)))) for n in names]
        assert {h.flags for h in headers} == {flags}
    finally:
        shutil.rmtree(base, ignore_errors=True)


# --- issue 15 item 3: WAL prefetch for replay ----------------------------------------------------------------------


def _page(tli: int, segno: int, sysid: int) -> bytes:
    """A segment's first page header (XLogLongPageHeaderData) and a distinct random body."""
    header = struct.pack("<HHIQI4xQII", 0xD110, 0x0002, tli, segno * SEGMENT, 0, sysid, SEGMENT, 8192)
    return header + os.urandom(64 * 1024)


@pytest.fixture
def fake_cluster(env):
    """A fake data directory with its own system identifier, and a function that archives a WAL file for it."""
    from cqox_platform.archiver_clients import load_archiver_clients
    from cqox_platform.backup.wal.segment import push_wal

    sysid = SYSTEM_ID * 1000 + int.from_bytes(os.urandom(2), "big")
    base = make_world_traversable_tmpdir("cqox-walfs-prefetch-")
    pgdata = base / "pgdata"
    (pgdata / "global").mkdir(parents=True)
    (pgdata / "pg_wal").mkdir()
    (pgdata / "global" / "pg_control").write_bytes(struct.pack("<Q", sysid) + b"\0" * 8184)
    clients = load_archiver_clients(Path(env["CQOX_WAL_ARCHIVER_CONFIG"]))
    archive = Archive(clients.s3, clients.bucket, str(sysid))

    def archive_file(name: str, body: bytes) -> bytes:
        (pgdata / "pg_wal" / name).write_bytes(body)
        push_wal(archive, clients.provider, pgdata / "pg_wal" / name)
        return body

    yield pgdata, sysid, archive, archive_file
    shutil.rmtree(base, ignore_errors=True)  # the prefetcher sees its data directory gone and exits
    archive.purge(archive.root + "/")


def _fetch(env, pgdata: Path, name: str, dest: Path, depth: int = 8) -> subprocess.CompletedProcess:
    args = ["--config", env["CQOX_WAL_ARCHIVER_CONFIG"], "--pgdata", str(pgdata), "--prefetch", str(depth)]
    return _cli(env, "wal-fetch", name, str(dest), *args)


def _spool(env, pgdata: Path) -> Path:
    from cqox_platform.backup.wal.prefetch_client import spool_for

    return spool_for(Path(env["CQOX_WAL_ARCHIVER_CONFIG"]), pgdata, None)


def _wait_for(predicate, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_prefetch_never_serves_a_segment_of_another_timeline(env, fake_cluster, tmp_path):
    pgdata, sysid, _archive, archive_file = fake_cluster
    tl1 = {s: archive_file(f"00000001000000000000{s:04X}", _page(1, s, sysid)) for s in range(0x10, 0x19)}
    first = _fetch(env, pgdata, "000000010000000000000010", tmp_path / "RECOVERYXLOG")
    assert first.returncode == 0 and (tmp_path / "RECOVERYXLOG").read_bytes() == tl1[0x10], first.stderr
    ready = _spool(env, pgdata) / "ready"
    _wait_for(lambda: (ready / "000000010000000000000018").exists())  # timeline 1 prefetched to its end

    # Meanwhile the primary was promoted: timeline 2 branches off inside segment 0x14, and recovery (target
    # timeline 'latest') asks for timeline 1 up to 0x13, then timeline 2. Every segment body is distinct, so a
    # prefetched timeline-1 file handed over for a timeline-2 name would show.
    archive_file("00000002.history", b"1\t0/14800000\tno recovery target specified\n")
    tl2 = {
        s: archive_file(f"00000002000000000000{s:04X}", _page(1 if s == 0x14 else 2, s, sysid))
        for s in range(0x14, 0x1A)
    }
    wanted = [(1, s, tl1[s]) for s in range(0x11, 0x14)] + [(2, s, tl2[s]) for s in range(0x14, 0x1A)]
    prefetched = 0
    for tli, segno, body in wanted:
        name = f"{tli:08X}00000000{segno:08X}"
        dest = tmp_path / f"got-{name}"
        result = _fetch(env, pgdata, name, dest)
        assert result.returncode == 0, result.stderr
        assert dest.read_bytes() == body, f"{name} was answered with another file's content"
        prefetched += "prefetched" in result.stderr
        if tli == 2:  # nothing of the timeline recovery has left stays in the spool
            assert not [p.name for p in ready.iterdir() if p.name.startswith("00000001")]
    assert prefetched >= 3  # the prefetcher did serve (ahead on timeline 1, then ahead on timeline 2)
    assert _fetch(env, pgdata, "00000002000000000000001A", tmp_path / "end").returncode == 1  # end of archive


def test_a_prefetched_corrupt_segment_stops_recovery_with_255(env, fake_cluster, tmp_path):
    pgdata, sysid, archive, archive_file = fake_cluster
    bodies = {s: archive_file(f"00000001000000000000{s:04X}", _page(1, s, sysid)) for s in range(0x30, 0x33)}
    archive_file("000000010000000000000033", _page(2, 0x33, sysid))  # authentic, but not timeline 1's page
    key = archive.wal_key("000000010000000000000032")
    damaged = bytearray(archive.get_bytes(key))
    damaged[len(damaged) // 2] ^= 0xFF
    archive.put_bytes(key, bytes(damaged))

    assert _fetch(env, pgdata, "000000010000000000000030", tmp_path / "a").returncode == 0
    errors = _spool(env, pgdata) / "error"
    _wait_for(lambda: (errors / "000000010000000000000032").exists() and (errors / "000000010000000000000033").exists())
    good = _fetch(env, pgdata, "000000010000000000000031", tmp_path / "b")
    assert good.returncode == 0 and (tmp_path / "b").read_bytes() == bodies[0x31], good.stderr
    assert "prefetched" in good.stderr
    for name, why in (("000000010000000000000032", "authentication"), ("000000010000000000000033", "timeline 2")):
        result = _fetch(env, pgdata, name, tmp_path / name)
        assert result.returncode == 255, result.stderr  # never 1: that would end recovery and promote early
        line = _one_clear_line(result)
        assert name in line and why in line and "stopping recovery" in line
        assert not (tmp_path / name).exists()


def _relay(env, pgdata: Path, name: str) -> subprocess.CompletedProcess:
    """The restore_command's relay as PostgreSQL runs it (in the data directory), with a fallback that says so."""
    from cqox_platform.backup.wal import fetch_relay
    from cqox_platform.backup.wal.prefetch_client import relay_socket

    sock = relay_socket(_spool(env, pgdata))
    fallback = ["/bin/sh", "-c", "echo fallback ran >&2; exit 7"]
    argv = [sys.executable, "-I", "-S", fetch_relay.__file__, str(sock), name, "pg_wal/RECOVERYXLOG", *fallback]
    return subprocess.run(argv, cwd=pgdata, capture_output=True, text=True, timeout=120)


def test_the_prefetcher_answers_the_relay_with_the_clis_checks_and_exit_codes(env, fake_cluster):
    """Probes, misses and the first segments are answered by the running prefetcher (no CLI start, no Vault
    login), with the CLI's outcomes: the verified file, 1 only for what S3 proves absent, 255 for a corrupt one."""
    from cqox_platform.backup.wal.prefetch_client import relay_socket

    pgdata, sysid, archive, archive_file = fake_cluster
    bodies = {s: archive_file(f"00000001000000000000{s:04X}", _page(1, s, sysid)) for s in range(0x40, 0x43)}
    history = archive_file("00000002.history", b"1\t0/42800000\tno recovery target specified\n")
    key = archive.wal_key("000000010000000000000042")
    damaged = bytearray(archive.get_bytes(key))
    damaged[len(damaged) // 2] ^= 0xFF
    archive.put_bytes(key, bytes(damaged))
    restored = pgdata / "pg_wal" / "RECOVERYXLOG"

    first = _fetch(env, pgdata, "000000010000000000000040", restored)  # starts the prefetcher, as replay does
    assert first.returncode == 0 and restored.read_bytes() == bodies[0x40], first.stderr
    _wait_for(lambda: relay_socket(_spool(env, pgdata)).exists())

    for name, body in (("000000010000000000000041", bodies[0x41]), ("00000002.history", history)):
        got = _relay(env, pgdata, name)
        assert got.returncode == 0, got.stderr
        assert "fallback ran" not in got.stderr and f"restored {name}" in got.stderr
        assert restored.read_bytes() == body
    for absent in ("00000003.history", "000000010000000000000050"):
        end = _relay(env, pgdata, absent)
        assert end.returncode == 1 and "fallback ran" not in end.stderr, end.stderr  # S3 said so, now
    corrupt = _relay(env, pgdata, "000000010000000000000042")
    assert corrupt.returncode == 255, corrupt.stderr  # never 1: that would end recovery and promote early
    assert "fallback ran" not in corrupt.stderr
    assert "000000010000000000000042" in corrupt.stderr and "stopping recovery" in corrupt.stderr
    assert restored.read_bytes() == history  # nothing unverified was put in its place


# --- issue 15 item 2: a streamed restore killed midway leaves nothing half-open --------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_a_restore_killed_midway_leaves_nothing_half_open(env, backup_id, shared_tmp, sig):
    from cqox_platform.backup.restore.stream import INCOMPLETE_MARKER

    pgdata = shared_tmp / "pg"
    proc = subprocess.Popen(
        [*CLI, "restore", "--backup", backup_id, "--pgdata", str(pgdata), "--no-start"],
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # Kill it once files are being extracted (base/ appears) and before global/pg_control (written last).
        _wait_for(
            lambda: ((pgdata / INCOMPLETE_MARKER).exists() and (pgdata / "base").is_dir()) or proc.poll() is not None
        )
        proc.send_signal(sig)
        _out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == (-9 if sig == signal.SIGKILL else 143), err
    if sig == signal.SIGTERM:  # unwound: everything it created is gone
        assert sorted(p.name for p in shared_tmp.iterdir()) == [], err
        return
    # SIGKILL: no cleanup could run. Only PGDATA remains, marked, and no server starts on it.
    assert sorted(p.name for p in shared_tmp.iterdir()) == ["pg"]
    assert (pgdata / INCOMPLETE_MARKER).exists() and not (pgdata / "global" / "pg_control").exists()
    subprocess.run(["chown", "-R", "postgres", str(pgdata)], check=True)
    started = subprocess.run(
        [
            "runuser",
            "-u",
            "postgres",
            "--",
            "/usr/lib/postgresql/15/bin/pg_ctl",
            "-D",
            str(pgdata),
            "-w",
            "-t",
            "20",
            "start",
        ],
        capture_output=True,
        text=True,
    )
    assert started.returncode != 0 and not (pgdata / "postmaster.pid").exists(), started.stdout + started.stderr
    again = _cli(env, "restore", "--backup", backup_id, "--pgdata", str(pgdata))
    assert again.returncode == 1
    line = _one_clear_line(again)
    assert INCOMPLETE_MARKER in line and str(pgdata) in line


# --- the prefetcher starts with the download; the restored server syncs its files with syncfs ---------------------


def _prefetch_daemons(pgdata: Path) -> list[int]:
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        if b"wal-prefetch-daemon" in argv and str(pgdata).encode() in argv:
            found.append(int(cmdline.parent.name))
    return found


def _start_early_prefetcher(env, pgdata: Path, sysid: int, start_at: str, restore_pid: int) -> Path:
    """The prefetcher as `restore` starts it before streaming the files; returns its spool."""
    from cqox_platform.backup.restore.recovery import start_prefetcher
    from cqox_platform.backup.wal.prefetch_client import prefetch_spool
    from cqox_platform.installation import platform_cli

    settings = Path(env["CQOX_WAL_ARCHIVER_CONFIG"])
    start_prefetcher(platform_cli(), settings, None, 8, pgdata, start_at, system_id=sysid, restore_pid=restore_pid)
    return prefetch_spool(settings, pgdata.resolve(), None, sysid)


def test_a_prefetcher_started_with_the_download_verifies_ahead_and_leaves_with_the_restore(env, fake_cluster):
    """While the files stream in, the data directory is root's and has no pg_control: the prefetcher checks each
    segment against the backup's system id, keeps what passes for the server's first requests, refuses another
    cluster's segment, and exits when the restore is gone before the files are in."""
    pgdata, sysid, _archive, archive_file = fake_cluster
    names = [f"00000001000000000000{s:04X}" for s in range(0x60, 0x64)]
    for segno, name in zip(range(0x60, 0x64), names, strict=True):
        archive_file(name, _page(1, segno, sysid))
    foreign = archive_file("000000010000000000000064", _page(1, 0x64, sysid + 1))  # authentic, another cluster's
    (pgdata / "global" / "pg_control").unlink()  # mid-download: pg_control is written last
    pgdata.chmod(0o700)  # and the directory is root's until the end
    restore = subprocess.Popen(["sleep", "600"])  # stands in for the restore process
    try:
        spool = _start_early_prefetcher(env, pgdata, sysid, names[0], restore.pid)
        _wait_for(lambda: all((spool / "ready" / name).exists() for name in names))
        _wait_for(lambda: (spool / "error" / "000000010000000000000064").exists())
        assert f"belongs to system {sysid + 1}" in (spool / "error" / "000000010000000000000064").read_text()
        assert foreign and not (pgdata / "global" / "pg_control").exists()
        assert _prefetch_daemons(pgdata)  # still there: the restore is still running
    finally:
        restore.kill()
        restore.wait()
    _wait_for(lambda: not _prefetch_daemons(pgdata))  # the restore died before its files were in
    assert not spool.exists()


def test_an_early_prefetcher_leaves_when_the_restored_pg_control_names_another_cluster(env, fake_cluster):
    pgdata, sysid, _archive, archive_file = fake_cluster
    archive_file("000000010000000000000070", _page(1, 0x70, sysid))
    (pgdata / "global" / "pg_control").unlink()
    restore = subprocess.Popen(["sleep", "600"])
    try:
        spool = _start_early_prefetcher(env, pgdata, sysid, "000000010000000000000070", restore.pid)
        _wait_for(lambda: (spool / "ready" / "000000010000000000000070").exists())
        (pgdata / "global" / "pg_control").write_bytes(struct.pack("<Q", sysid + 1) + b"\0" * 8184)
        _wait_for(lambda: not _prefetch_daemons(pgdata))  # nothing it verified is served to another cluster
        assert f"holds cluster {sysid + 1}, not {sysid}" in (spool / "daemon.log").read_text()
        assert not (spool / "ready").exists()
    finally:
        restore.kill()
        restore.wait()


def test_a_restored_server_syncs_its_files_with_syncfs_and_replays_from_an_early_prefetcher(env, backup_id, shared_tmp):
    from cqox_platform.backup.archive.records import find_backup
    from cqox_platform.backup.wal.prefetch_client import prefetch_spool

    record = find_backup(_s3(env), env["CQOX_S3_BUCKET"], backup_id)
    pgdata = shared_tmp / "pg"
    result = _cli(env, "restore", "--backup", backup_id, "--pgdata", str(pgdata))
    assert result.returncode == 0, result.stderr
    conf = (pgdata / "postgresql.auto.conf").read_text().splitlines()
    port = [line for line in conf if line.startswith("port ")][-1].split("'")[1]
    socket_dir = [line for line in conf if line.startswith("unix_socket_directories ")][-1].split("'")[1]
    with psycopg.connect(host=socket_dir, port=port, user="postgres", dbname="postgres") as conn:
        assert conn.execute("SHOW recovery_init_sync_method").fetchone()[0] == "syncfs"
        assert conn.execute("SELECT pg_is_in_recovery()").fetchone()[0] is False
    # The prefetcher was started with the backup's system id, before any pg_control was there to read.
    settings = Path(env["CQOX_WAL_ARCHIVER_CONFIG"])
    spool = prefetch_spool(settings, pgdata.resolve(), env["CQOX_S3_BUCKET"], int(record.system_id))
    log = (spool / "daemon.log").read_text()
    assert f"started for cluster {record.system_id} while {pgdata.resolve()} is restored" in log
    assert f"wal-prefetch: {record.start_wal} ready" in log
