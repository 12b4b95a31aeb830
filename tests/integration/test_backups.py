"""Backups, WAL archiving, drills, retention and the DR copy against the real stack, faults included.

The module shares one cluster and one archive, yet every test passes when run alone: each makes what it needs
through fixtures (a backup, a drilled backup, its own fake cluster's WAL), a test that breaks an object puts it
back, and what a test counts it counts relative to what it made.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

import dagster as dg
import psycopg
import pytest
from psycopg.types.json import Jsonb

from assets import backups as backup_assets
from cqox_platform.backup.archive.cluster import cluster_archive
from cqox_platform.backup.archive.records import list_backups
from cqox_platform.backup.archive.store import Archive
from cqox_platform.backup.wal.pusher import PUSH_WORKERS
from cqox_platform.fsutil import write_file
from cqox_platform.pgserver import PG_OS_USER, stop_immediately
from cqox_platform.resources.prometheus import PrometheusResource
from cqox_platform.schema import MigrationRunner
from tests.helpers import (
    assert_drill_passed,
    asset_metadata,
    check_results,
    dr_s3_client,
    make_world_traversable_tmpdir,
    materialize_backups,
    materialize_vault_config,
    postgres_admin,
    s3_client,
    table_rows,
    vault_admin,
)

CLI = [sys.executable, "-m", "cqox_platform.cli"]
SEGMENT = 16 * 1024 * 1024


@pytest.fixture(scope="module")
def env(stack):
    with mock.patch.dict(os.environ, stack.env()):
        assert materialize_vault_config(stack).success
        with postgres_admin(stack).connect(autocommit=True) as conn:
            MigrationRunner().migrate(conn)
            # Enough data that a backup takes a moment (the kill -9 test needs time to aim).
            conn.execute("CREATE TABLE IF NOT EXISTS backup_payload (id int PRIMARY KEY, body text)")
            conn.execute(
                "INSERT INTO backup_payload SELECT g, repeat(md5(g::text), 20) FROM generate_series(1, 60000) g "
                "ON CONFLICT DO NOTHING"
            )
            # What tests write to make WAL (and so a segment to switch and archive).
            conn.execute("CREATE TABLE IF NOT EXISTS wal_probe (at timestamptz)")
        yield stack.env()


def _conn(stack) -> psycopg.Connection:
    return psycopg.connect(**postgres_admin(stack).conninfo(), autocommit=True)


def _archive(stack, env, bucket=None) -> Archive:
    """The cluster's archive in ``bucket``: the DR bucket through the DR region's writer key (tests alter it)."""
    client = dr_s3_client(env, "writer") if bucket == env["CQOX_S3_DR_BUCKET"] else s3_client(env)
    with _conn(stack) as conn:
        return cluster_archive(conn, client, bucket or env["CQOX_S3_BUCKET"])


def _cli(env, *args, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], env={**os.environ, **env}, capture_output=True, text=True, timeout=timeout)


def _archived_count(stack) -> tuple[int, int]:
    with _conn(stack) as conn:
        return conn.execute("SELECT archived_count, failed_count FROM pg_stat_archiver").fetchone()


def _switch_and_wait(stack, timeout=60) -> str:
    """Write a little, switch segments, and wait until PostgreSQL reports that segment archived."""
    with _conn(stack) as conn:
        conn.execute("INSERT INTO wal_probe VALUES (now())")
        name = conn.execute("SELECT pg_walfile_name(pg_current_wal_lsn())").fetchone()[0]
        conn.execute("SELECT pg_switch_wal()")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            last = conn.execute("SELECT last_archived_wal FROM pg_stat_archiver").fetchone()[0]
            if last and last >= name:
                return name
            time.sleep(0.5)
    raise AssertionError(f"{name} was not archived within {timeout} s")


def _fake_pgdata(tmp_path: Path, system_id: int) -> Path:
    pgdata = tmp_path / "pgdata"
    (pgdata / "global").mkdir(parents=True)
    (pgdata / "pg_wal").mkdir()
    (pgdata / "global" / "pg_control").write_bytes(struct.pack("<Q", system_id) + b"\0" * 8184)
    return pgdata


# --- WAL archiving -------------------------------------------------------------------------------------------


def test_postgres_archives_through_wal_push_into_s3(stack, env):
    name = _switch_and_wait(stack)
    archive = _archive(stack, env)
    assert name in archive.archived_wal()
    raw = archive.get_bytes(archive.wal_key(name))
    assert raw[:4] != b"\xd1\x00" and b"wal_probe" not in raw  # stored encrypted, not as a WAL page


def test_wal_push_is_idempotent_refuses_other_content_and_fetch_verifies(stack, env, tmp_path):
    pgdata = _fake_pgdata(tmp_path, 4242)
    seg = pgdata / "pg_wal" / "000000010000000000000001"
    seg.write_bytes(os.urandom(1024) * (SEGMENT // 1024))
    args = ["--config", env["CQOX_WAL_ARCHIVER_CONFIG"], "--pgdata", str(pgdata)]
    first = _cli(env, "wal-push", "pg_wal/000000010000000000000001", *args)
    assert first.returncode == 0, first.stderr
    again = _cli(env, "wal-push", "pg_wal/000000010000000000000001", *args)
    assert again.returncode == 0 and "already archived" in again.stderr
    original = seg.read_bytes()
    seg.write_bytes(b"\1" * SEGMENT)
    conflict = _cli(env, "wal-push", "pg_wal/000000010000000000000001", *args)
    assert conflict.returncode == 1 and "different content" in conflict.stderr
    out = tmp_path / "fetched"
    fetched = _cli(env, "wal-fetch", "000000010000000000000001", str(out), *args)
    assert fetched.returncode == 0, fetched.stderr
    assert out.read_bytes() == original
    missing = _cli(env, "wal-fetch", "000000010000000000000002", str(tmp_path / "none"), *args)
    assert missing.returncode == 1 and not (tmp_path / "none").exists()
    # A corrupted object is not "missing": recovery must stop (exit > 125), naming the object.
    archive = Archive(s3_client(env), env["CQOX_S3_BUCKET"], "4242")
    key = archive.wal_key("000000010000000000000001")
    data = bytearray(archive.get_bytes(key))
    data[len(data) // 2] ^= 0xFF
    archive.put_bytes(key, bytes(data))
    corrupt = _cli(env, "wal-fetch", "000000010000000000000001", str(tmp_path / "bad"), *args)
    assert corrupt.returncode == 255 and key in corrupt.stderr and not (tmp_path / "bad").exists()
    bad_name = _cli(env, "wal-push", "../etc/passwd", *args)
    assert bad_name.returncode == 1 and "not a WAL" in bad_name.stderr


def test_s3_down_during_archiving_fails_then_catches_up_without_gap(stack, env, tmp_path):
    pgdata = _fake_pgdata(tmp_path, 4343)
    (pgdata / "pg_wal" / "000000010000000000000007").write_bytes(b"\0" * SEGMENT)
    args = ["--config", env["CQOX_WAL_ARCHIVER_CONFIG"], "--pgdata", str(pgdata)]
    s3 = stack.service("s3")
    _, failed_before = _archived_count(stack)
    s3.stop()
    try:
        down = _cli(env, "wal-push", "pg_wal/000000010000000000000007", *args)
        assert down.returncode == 1 and "unreachable" in down.stderr
        with _conn(stack) as conn:
            conn.execute("INSERT INTO wal_probe VALUES (now())")
            stuck = conn.execute("SELECT pg_walfile_name(pg_current_wal_lsn())").fetchone()[0]
            conn.execute("SELECT pg_switch_wal()")
        deadline = time.monotonic() + 60
        while _archived_count(stack)[1] <= failed_before and time.monotonic() < deadline:
            time.sleep(0.5)
        assert _archived_count(stack)[1] > failed_before, "PostgreSQL should have seen wal-push fail"
        ready = Path(env["CQOX_PG_DATA"]) / "pg_wal" / "archive_status" / f"{stuck}.ready"
        assert ready.exists(), "PostgreSQL keeps the segment until it is archived"
    finally:
        s3.start()
        s3.after_start()
    _switch_and_wait(stack, timeout=120)
    assert stuck in _archive(stack, env).archived_wal()


def _set_key_window(settings_file: Path, seconds: float) -> None:
    """The operator's edit of the archiver settings: the pusher's data-key cache window."""
    data = json.loads(settings_file.read_text())
    data["data_key_max_age_seconds"] = seconds
    write_file(settings_file, json.dumps(data, indent=2, sort_keys=True) + "\n", mode=0o600, owner=PG_OS_USER)


def _switch(stack, count: int) -> list[str]:
    """Write a little and switch segments ``count`` times; the names of the segments closed."""
    names = []
    with _conn(stack) as conn:
        for _ in range(count):
            conn.execute("INSERT INTO wal_probe VALUES (now())")
            names.append(conn.execute("SELECT pg_walfile_name(pg_current_wal_lsn())").fetchone()[0])
            conn.execute("SELECT pg_switch_wal()")
    return names


def test_a_sealed_vault_costs_no_archiving_within_the_key_window_and_loses_no_wal_after_it(stack, env, tmp_path):
    """The pusher's cached data key carries archiving through a Vault outage shorter than its window (shortened
    to 30 s here; 15 minutes shipped): segments reach S3 while OpenBao is sealed and archive_command never fails.
    Past the window the key is gone, segments are held by PostgreSQL (never let go unarchived) and reach S3 after
    the unseal. The synchronous ``wal-push``, one process per segment, has no cache and fails naming the seal."""
    window = 30
    settings_file = Path(env["CQOX_WAL_ARCHIVER_CONFIG"])
    shipped = settings_file.read_text()
    pgdata = _fake_pgdata(tmp_path, 4444)
    (pgdata / "pg_wal" / "000000010000000000000009").write_bytes(b"\0" * SEGMENT)
    args = ["--config", str(settings_file), "--pgdata", str(pgdata)]
    status = Path(env["CQOX_PG_DATA"]) / "pg_wal" / "archive_status"
    _set_key_window(settings_file, window)
    try:
        _switch_and_wait(stack, timeout=120)  # the pusher reloads the file and holds a key while Vault answers
        vault_admin(stack).client().sys.seal()
        sealed_at = time.monotonic()
        try:
            _, failed_before = _archived_count(stack)
            within = _switch(stack, 2 * PUSH_WORKERS)  # more than the keys a pusher without a cache holds
            deadline = time.monotonic() + 60
            while not set(within) <= set(_archive(stack, env).archived_wal()):
                assert time.monotonic() < deadline, "with Vault sealed, the cached key should have archived these"
                time.sleep(0.5)
            assert time.monotonic() - sealed_at < window, "the machine was too slow to stay inside the window"
            assert _archived_count(stack)[1] == failed_before, "archive_command failed while the key was cached"
            sealed = _cli(env, "wal-push", "pg_wal/000000010000000000000009", *args)
            assert sealed.returncode == 1 and "sealed" in sealed.stderr

            time.sleep(max(0.0, sealed_at + window + 1 - time.monotonic()))  # the key is now past its window
            past = _switch(stack, 3)
            deadline = time.monotonic() + 90
            while _archived_count(stack)[1] <= failed_before:
                assert time.monotonic() < deadline, "past the window, archive_command should fail while sealed"
                time.sleep(0.5)
            ready = {name for name in past if (status / f"{name}.ready").exists()}  # read before the archive:
            held = set(past) - set(_archive(stack, env).archived_wal())  # S3 only grows, so this is sound
            assert held, "past the key's window, a sealed Vault should hold segments back"
            assert held <= ready, "PostgreSQL let go of a segment that is not in S3"
        finally:
            stack.service("openbao").after_start()  # unseals
    finally:
        write_file(settings_file, shipped, mode=0o600, owner=PG_OS_USER)
    _switch_and_wait(stack, timeout=120)
    assert set(within + past) <= set(_archive(stack, env).archived_wal())


def test_async_push_reports_the_pushers_results_and_recovers_after_s3_returns(stack, env, tmp_path):
    pgdata = make_world_traversable_tmpdir("cqox-async-") / "pgdata"
    fake = _fake_pgdata(pgdata.parent, 4545)
    status = fake / "pg_wal" / "archive_status"
    status.mkdir()
    names = [f"0000000100000000000000{n:02X}" for n in range(1, 4)]
    for name in names:
        (fake / "pg_wal" / name).write_bytes(os.urandom(4096) * (SEGMENT // 4096))
        (status / f"{name}.ready").touch()
    subprocess.run(["chown", "-R", "postgres", str(fake.parent)], check=True)
    cli = str(Path(sys.executable).parent / "cqox-platform")

    def push(name: str) -> subprocess.CompletedProcess:
        # As PostgreSQL runs it: the postgres OS user, the console script, inside the data directory.
        done = subprocess.run(
            [
                "runuser",
                "-u",
                "postgres",
                "--",
                cli,
                "wal-push",
                f"pg_wal/{name}",
                "--async",
                "--config",
                env["CQOX_WAL_ARCHIVER_CONFIG"],
                "--pgdata",
                str(fake),
            ],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=fake,
        )
        if done.returncode == 0:
            os.replace(status / f"{name}.ready", status / f"{name}.done")
        return done

    first = push(names[0])
    assert first.returncode == 0, first.stderr
    archive = Archive(s3_client(env), env["CQOX_S3_BUCKET"], "4545")
    assert names[0] in archive.archived_wal()
    s3 = stack.service("s3")
    s3.stop()
    try:
        time.sleep(1.5)  # the pusher may have sent names[1] already; names[2] arrives while S3 is down
        (fake / "pg_wal" / "0000000100000000000000AA").write_bytes(b"\0" * SEGMENT)
        (status / "0000000100000000000000AA.ready").touch()
        subprocess.run(["chown", "-R", "postgres", str(fake)], check=True)
        down = push("0000000100000000000000AA")
        assert down.returncode == 1 and "NOT archived" in down.stderr
    finally:
        s3.start()
        s3.after_start()
    for name in [*names[1:], "0000000100000000000000AA"]:
        deadline = time.monotonic() + 60
        while (done := push(name)).returncode != 0 and time.monotonic() < deadline:
            time.sleep(1)
        assert done.returncode == 0, done.stderr
    assert set(names) | {"0000000100000000000000AA"} <= set(archive.archived_wal())
    archive.purge(f"{archive.root}/")


def test_the_default_archive_command_checks_the_pushers_marker_and_the_spool_is_consumed(stack, env):
    from cqox_platform.backup.wal.spool import OK, spool_dir

    with _conn(stack) as conn:
        command = conn.execute("SHOW archive_command").fetchone()[0]
    assert command.startswith("[ %p -ef ") and "wal-push %p --async" in command
    _, failed_before = _archived_count(stack)
    names = [_switch_and_wait(stack, timeout=120) for _ in range(3)]
    assert set(names) <= set(_archive(stack, env).archived_wal())
    assert _archived_count(stack)[1] == failed_before
    # Markers go once PostgreSQL has recorded the success (.ready -> .done): the spool keeps nothing archived.
    ok = spool_dir(Path(env["CQOX_WAL_ARCHIVER_CONFIG"]), Path(env["CQOX_PG_DATA"])) / OK
    deadline = time.monotonic() + 10
    while (left := set(os.listdir(ok)) & set(names)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not left, f"markers of archived segments were not consumed: {sorted(left)}"


def test_a_pusher_killed_mid_push_marks_nothing_unarchived_and_the_next_one_finishes(stack, env):
    from cqox_platform.backup.wal.push_client import marker_matches
    from cqox_platform.backup.wal.spool import spool_dir

    base = make_world_traversable_tmpdir("cqox-async-kill-")
    fake = _fake_pgdata(base, 4646)
    status = fake / "pg_wal" / "archive_status"
    status.mkdir()
    names = [f"0000000100000000000000{n:02X}" for n in range(1, 13)]
    for name in names:
        (fake / "pg_wal" / name).write_bytes(os.urandom(SEGMENT))
        (status / f"{name}.ready").touch()
    subprocess.run(["chown", "-R", "postgres", str(base)], check=True)
    config = env["CQOX_WAL_ARCHIVER_CONFIG"]
    cli = str(Path(sys.executable).parent / "cqox-platform")
    as_postgres = ["runuser", "-u", "postgres", "--", cli]
    daemon = subprocess.Popen(
        [*as_postgres, "wal-push-daemon", "--config", config, "--pgdata", str(fake)],
        cwd=fake,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    archive = Archive(s3_client(env), env["CQOX_S3_BUCKET"], "4646")
    try:
        deadline = time.monotonic() + 60
        while not archive.archived_wal() and time.monotonic() < deadline:
            time.sleep(0.05)
        os.killpg(daemon.pid, signal.SIGKILL)  # the pusher and runuser: mid-way through the batch
        daemon.wait()
        spool = spool_dir(Path(config), fake)
        archived = set(archive.archived_wal())
        marked = {n for n in names if marker_matches(spool, fake / "pg_wal" / n)}
        assert marked <= archived, f"marked but not archived: {sorted(marked - archived)}"
        # PostgreSQL's retries (archive_command in order) start a new pusher, which finishes the rest.
        for name in names:
            done = subprocess.run(
                [*as_postgres, "wal-push", f"pg_wal/{name}", "--async", "--config", config, "--pgdata", str(fake)],
                cwd=fake,
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert done.returncode == 0, done.stderr
            os.replace(status / f"{name}.ready", status / f"{name}.done")
        assert set(names) <= set(archive.archived_wal())
    finally:
        if daemon.poll() is None:
            os.killpg(daemon.pid, signal.SIGKILL)
        archive.purge(f"{archive.root}/")
        subprocess.run(["rm", "-rf", str(base)], check=False)


def test_parallel_multipart_upload_stores_the_written_bytes_and_aborts_cleanly(stack, env):
    from cqox_platform.backup.archive.multipart import MIN_PART, MultipartWriter

    archive = Archive(s3_client(env), env["CQOX_S3_BUCKET"], "4747")
    body = os.urandom(5 * MIN_PART + 12345)
    key = f"{archive.root}/multipart/parallel"
    logged: list[str] = []
    try:
        with MultipartWriter(archive, key, part_size=MIN_PART, parallel=3, progress=logged.append) as writer:
            for at in range(0, len(body), 1 << 20):  # written in 1 MiB pieces, as the compressor does
                writer.write(body[at : at + (1 << 20)])
        assert archive.get_bytes(key) == body  # parts finish in any order; the object is the stream
        assert writer.stats is not None and writer.stats.parts == 6 and writer.stats.bytes == len(body)
        assert 1 <= writer.stats.peak_in_flight <= 3
        assert "6 part(s)" in writer.stats.describe()

        failed_key = f"{archive.root}/multipart/failed"
        with (
            pytest.raises(RuntimeError, match="producer failed"),
            MultipartWriter(archive, failed_key, part_size=MIN_PART, parallel=3) as writer,
        ):
            writer.write(body[: 3 * MIN_PART])
            raise RuntimeError("producer failed")
        assert archive.head(failed_key) is None
        uploads = archive.s3.list_multipart_uploads(Bucket=archive.bucket, Prefix=failed_key).get("Uploads", [])
        assert uploads == [], "the failed upload's parts stayed behind"
    finally:
        archive.purge(f"{archive.root}/")


def test_catchup_after_failover_archives_the_old_timelines_unpushed_segments(stack, env, tmp_path):
    # A promoted standby's pg_wal: TL1 segments the killed leader completed but never archived (the standby's
    # walreceiver marked them .done), the switch segment in both timelines, and the new timeline's history.
    from cqox_platform.archiver_clients import load_archiver_clients
    from cqox_platform.backup.wal.segment import read_wal

    system_id = int.from_bytes(os.urandom(8), "little")
    pgdata = _fake_pgdata(tmp_path, system_id)
    pg_wal = pgdata / "pg_wal"
    old = [f"0000000100000000000000{n:02X}" for n in range(1, 5)]
    switch_tl1, switch_tl2 = "000000010000000000000005", "000000020000000000000005"
    contents = {name: os.urandom(4096) * (SEGMENT // 4096) for name in [*old, switch_tl1, switch_tl2]}
    for name, body in contents.items():
        (pg_wal / name).write_bytes(body)
    (pg_wal / f"{switch_tl1}.partial").write_bytes(os.urandom(SEGMENT))
    (pg_wal / "00000002.history").write_text("1\t0/5000100\tno recovery target specified\n")
    args = ["--config", env["CQOX_WAL_ARCHIVER_CONFIG"]]
    archive = Archive(s3_client(env), env["CQOX_S3_BUCKET"], str(system_id))
    cli = str(Path(sys.executable).parent / "cqox-platform")

    def push_history() -> subprocess.CompletedProcess:
        # As PostgreSQL runs archive_command: the console script, %p relative, inside the data directory.
        return subprocess.run(
            [cli, "wal-push", "pg_wal/00000002.history", *args],
            env={**os.environ, **env},
            cwd=pgdata,
            capture_output=True,
            text=True,
            timeout=300,
        )

    try:
        # The old leader did archive one of them.
        before = _cli(env, "wal-push", f"pg_wal/{old[1]}", *args, "--pgdata", str(pgdata))
        assert before.returncode == 0, before.stderr
        etags = {k: archive.head(k)["ETag"] for k in (archive.wal_key(old[1]), archive.wal_manifest_key(old[1]))}
        pushed = push_history()
        assert pushed.returncode == 0, pushed.stderr
        for name in (old[0], old[2], old[3]):
            assert f"catch-up: archived {name}" in pushed.stderr, pushed.stderr
        assert "3 unarchived segment(s) of timeline(s) 1" in pushed.stderr and "1 already archived" in pushed.stderr
        archived = set(archive.archived_wal())
        assert {*old, "00000002.history"} <= archived
        assert not {switch_tl1, switch_tl2, f"{switch_tl1}.partial"} & archived
        provider = load_archiver_clients(Path(env["CQOX_WAL_ARCHIVER_CONFIG"])).provider
        for name in old:
            assert read_wal(archive, provider, name) == contents[name]
        assert etags == {k: archive.head(k)["ETag"] for k in etags}, "an archived segment was uploaded again"
        # PostgreSQL retrying the history file (say after a failed catch-up) pushes nothing twice.
        again = push_history()
        assert again.returncode == 0 and "0 unarchived segment(s)" in again.stderr, again.stderr
    finally:
        archive.purge(f"{archive.root}/")


def test_the_pusher_catches_up_the_old_timeline_when_it_archives_a_history_file(env):
    """The async default after a failover: only the history file is .ready (the standby marked the old timeline's
    segments .done); the pusher archives it and what the old leader never pushed, then marks the history file."""
    from cqox_platform.archiver_clients import load_archiver_clients
    from cqox_platform.backup.wal.push_client import marker_matches
    from cqox_platform.backup.wal.pusher import run_daemon
    from cqox_platform.backup.wal.spool import spool_dir

    system_id = int.from_bytes(os.urandom(8), "little")
    base = make_world_traversable_tmpdir("cqox-async-catchup-")
    pgdata = _fake_pgdata(base, system_id)
    status = pgdata / "pg_wal" / "archive_status"
    status.mkdir()
    old = [f"0000000100000000000000{n:02X}" for n in range(1, 4)]
    for name in old:
        (pgdata / "pg_wal" / name).write_bytes(os.urandom(4096) * (SEGMENT // 4096))
        (status / f"{name}.done").touch()
    (pgdata / "pg_wal" / "000000020000000000000004").write_bytes(os.urandom(4096) * (SEGMENT // 4096))
    (pgdata / "pg_wal" / "00000002.history").write_text("1\t0/4000100\tno recovery target specified\n")
    (status / "00000002.history.ready").touch()
    settings = base / "archiver" / "archiver.json"
    settings.parent.mkdir()
    settings.write_bytes(Path(env["CQOX_WAL_ARCHIVER_CONFIG"]).read_bytes())
    archive = Archive(s3_client(env), env["CQOX_S3_BUCKET"], str(system_id))
    logged: list[str] = []
    try:
        run_daemon(settings, pgdata, lambda: load_archiver_clients(settings), idle_exit=1.0, log=logged.append)
        assert {*old, "00000002.history"} <= set(archive.archived_wal()), logged
        assert marker_matches(spool_dir(settings, pgdata), pgdata / "pg_wal" / "00000002.history")
        assert any("catch-up" in line for line in logged), logged
    finally:
        archive.purge(f"{archive.root}/")
        subprocess.run(["rm", "-rf", str(base)], check=False)


# --- base backups and drills ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def first_backup(stack, env):
    """A base backup taken through the asset (its restore point captured) and the instance that ran it."""
    with dg.instance_for_test() as instance:
        result = materialize_backups(stack, env, [backup_assets.postgres_basebackup], instance=instance)
        assert result.success
        yield asset_metadata(result, "postgres_basebackup"), instance


@pytest.fixture
def new_backup(stack, env) -> dict:
    """A base backup taken through the asset for this test: the newest in the archive, its point captured."""
    result = materialize_backups(stack, env, [backup_assets.postgres_basebackup])
    assert result.success
    return asset_metadata(result, "postgres_basebackup")


def test_base_backup_is_recorded_in_s3_and_the_table(stack, env, first_backup):
    meta, _ = first_backup
    archive = _archive(stack, env)
    (record,) = [r for r in list_backups(archive) if r.backup_id == meta["backup_id"]]
    assert record.stored_bytes < record.database_bytes and record.key_name == "cqox-backups"
    assert record.start_wal <= record.stop_wal and record.timeline == 1
    with _conn(stack) as conn:
        row = conn.execute("SELECT stop_lsn::text, stored_bytes FROM backups WHERE backup_id = %s", [record.backup_id])
        assert row.fetchone() == (record.stop_lsn, record.stored_bytes)
    # Sizes are numbers the asset's Plots view charts across backups (no SVG of its own).
    assert meta["database_mib"] > 0 and 0 < meta["stored_mib"] < meta["database_mib"] and "size_history" not in meta
    listed = _cli(env, "backup", "list")
    assert listed.returncode == 0 and record.backup_id in listed.stdout


def test_each_new_backup_gets_one_drill_from_the_sensor(stack, env, first_backup):
    _, instance = first_backup
    backup = materialize_backups(stack, env, [backup_assets.postgres_basebackup], instance=instance)
    assert backup.success
    backup_id = asset_metadata(backup, "postgres_basebackup")["backup_id"]
    requests, _ = _sensor_requests(stack, env, instance)
    assert [r.run_key for r in requests] == [f"drill-{backup_id}"]  # the newest backup first
    # A run that backs up and drills together (the main job, timeline_backup_job) needs no second drill.
    both = materialize_backups(
        stack, env, [backup_assets.postgres_basebackup, backup_assets.restore_drill], instance=instance
    )
    assert both.success
    # What that run drilled with the default config is its own, newest backup.
    assert (
        asset_metadata(both, "restore_drill")["backup_id"] == asset_metadata(both, "postgres_basebackup")["backup_id"]
    )
    requests, _ = _sensor_requests(stack, env, instance)
    assert asset_metadata(both, "postgres_basebackup")["backup_id"] not in [r.run_key[6:] for r in requests]


def test_drill_restores_proves_data_and_reports_rto(stack, env, first_backup):
    meta, _ = first_backup
    result = materialize_backups(
        stack, env, [backup_assets.restore_drill], {"restore_drill": {"config": {"backup_id": meta["backup_id"]}}}
    )
    drill = asset_metadata(result, "restore_drill")
    assert drill["status"] == "passed", drill.get("error")
    assert check_results(result) == {"drill_passed": True, "latest_backup_verified_restorable": True}
    assert drill["tables_checked"] >= 10 and drill["indexes_checked"] >= 10 and drill["rows_checked"] >= 60000
    assert drill["rto_seconds"] > 0 and drill["rto_history"].startswith("![RTO history](data:image/svg+xml")
    phases = {r["phase"]: r["seconds"] for r in table_rows(drill["rto_breakdown"])}
    for phase in ("download", "decrypt", "extract", "verify", "replay", "checks"):
        assert phases[phase] >= 0 and drill[f"{phase}_seconds"] == phases[phase]
    assert phases["total (RTO)"] == drill["rto_seconds"]
    with _conn(stack) as conn:
        row = conn.execute("SELECT passed, replay_seconds FROM restore_drills WHERE drill_id = %s", [drill["drill_id"]])
        passed, replay = row.fetchone()
    assert passed and replay > 0


def test_wal_status_reports_rpo_continuity_and_an_idle_cluster_is_not_stale(stack, env, first_backup):
    result = materialize_backups(stack, env, [backup_assets.wal_archive_status])
    meta = asset_metadata(result, "wal_archive_status")
    assert check_results(result) == {
        "wal_rpo_within_target": True,
        "wal_archive_continuous": True,
        "wal_archiver_healthy": True,
    }
    assert meta["required_segments"] >= 1 and meta["gaps"] == []
    assert meta["rpo_seconds"] < 900
    # A fresh unarchived tail (younger than switch_after, so no forced switch) against a tiny target fails.
    with _conn(stack) as conn:
        conn.execute("INSERT INTO wal_probe VALUES (now())")
    time.sleep(1.1)
    failing = materialize_backups(
        stack,
        env,
        [backup_assets.wal_archive_status],
        {
            "wal_archive_status": {
                "config": {"rpo_target_seconds": 0.5, "switch_after_seconds": 3600, "capture_restore_point": False}
            }
        },
    )
    assert check_results(failing)["wal_rpo_within_target"] is False
    assert asset_metadata(failing, "wal_archive_status")["rpo_bytes"] > 0


def test_wal_gap_fails_the_continuity_check(stack, env, first_backup):
    # Two segments archived after the backup started, so the victim lies inside what a restore of it replays.
    _switch_and_wait(stack)
    _switch_and_wait(stack)
    archive = _archive(stack, env)
    names = sorted(n for n in archive.archived_wal() if len(n) == 24)
    victim = names[-2]
    manifest = archive.get_bytes(archive.wal_manifest_key(victim))
    head = archive.head(archive.wal_manifest_key(victim))
    archive.delete(archive.wal_manifest_key(victim))
    try:
        result = materialize_backups(
            stack,
            env,
            [backup_assets.wal_archive_status],
            {"wal_archive_status": {"config": {"capture_restore_point": False}}},
        )
        assert check_results(result)["wal_archive_continuous"] is False
        assert victim in asset_metadata(result, "wal_archive_status")["gaps"]
    finally:
        archive.put_bytes(archive.wal_manifest_key(victim), manifest, metadata=head["Metadata"])


def test_corrupted_or_truncated_backup_fails_the_drill_naming_the_object(stack, env, first_backup):
    meta, _ = first_backup
    archive = _archive(stack, env)
    (record,) = [r for r in list_backups(archive) if r.backup_id == meta["backup_id"]]
    original = archive.get_bytes(record.object_key)
    try:
        flipped = bytearray(original)
        flipped[len(flipped) // 2] ^= 0x01
        for broken in (bytes(flipped), original[: len(original) // 2]):
            archive.put_bytes(record.object_key, broken)
            result = materialize_backups(
                stack,
                env,
                [backup_assets.restore_drill],
                {"restore_drill": {"config": {"backup_id": record.backup_id}}},
            )
            drill = asset_metadata(result, "restore_drill")
            assert drill["status"] == "failed" and record.object_key in drill["error"]
            assert check_results(result)["drill_passed"] is False
    finally:
        archive.put_bytes(record.object_key, original)


def test_corrupted_wal_segment_stops_recovery_naming_it(stack, env, first_backup):
    meta, _ = first_backup
    archive = _archive(stack, env)
    (record,) = [r for r in list_backups(archive) if r.backup_id == meta["backup_id"]]
    key = archive.wal_key(record.stop_wal)
    original = archive.get_bytes(key)
    try:
        broken = bytearray(original)
        broken[-100] ^= 0x01
        archive.put_bytes(key, bytes(broken))
        result = materialize_backups(
            stack, env, [backup_assets.restore_drill], {"restore_drill": {"config": {"backup_id": record.backup_id}}}
        )
        drill = asset_metadata(result, "restore_drill")
        assert drill["status"] == "failed" and key in drill["error"]
    finally:
        archive.put_bytes(key, original)


def test_kill_9_mid_backup_leaves_no_backup_and_no_stray_upload(stack, env):
    archive = _archive(stack, env)
    before = {r.backup_id for r in list_backups(archive)}
    proc = subprocess.Popen([*CLI, "backup", "create"], env={**os.environ, **env}, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        uploads = archive.s3.list_multipart_uploads(Bucket=archive.bucket, Prefix=f"{archive.root}/base/")
        if uploads.get("Uploads"):
            break
        time.sleep(0.05)
    else:
        pytest.fail("the backup never started its multipart upload")
    children = _children(proc.pid)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    time.sleep(1)
    assert {r.backup_id for r in list_backups(archive)} == before
    # pg_basebackup died with it (pdeathsig): nothing goes on writing the compressed backup to local disk.
    assert any("pg_basebackup" in cmd for cmd in children.values()), children
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in children) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [pid for pid in children if _alive(pid)]
    workdirs = set(Path(tempfile.gettempdir()).glob("cqox-basebackup-*"))
    assert workdirs  # what the killed backup left (no finally ran)
    # The next backup (it holds the backup lock) aborts what the killed one left; nothing stays half-written.
    result = materialize_backups(stack, env, [backup_assets.postgres_basebackup])
    assert result.success
    leftover = archive.s3.list_multipart_uploads(Bucket=archive.bucket, Prefix=f"{archive.root}/base/")
    assert not leftover.get("Uploads")
    assert not workdirs & set(Path(tempfile.gettempdir()).glob("cqox-basebackup-*"))


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for init to reap it is dead)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _children(pid: int) -> dict[int, str]:
    """Descendants of ``pid`` with their command lines (setpriv execs pg_basebackup in place)."""
    found: dict[int, str] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            cmd = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, IndexError, ValueError):
            continue
        if ppid == pid:
            found[int(stat.parent.name)] = cmd
    return found


def test_point_in_time_restore_lands_exactly_at_the_target(stack, env, new_backup):
    backup_id = new_backup["backup_id"]
    with _conn(stack) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS pitr_probe (label text)")
        conn.execute("INSERT INTO pitr_probe VALUES ('before')")
        target = conn.execute("SELECT now()::text").fetchone()[0]
        time.sleep(0.5)
        conn.execute("INSERT INTO pitr_probe VALUES ('after')")
    _switch_and_wait(stack)
    pgdata = make_world_traversable_tmpdir("cqox-pitr-") / "restored"  # the postgres user must reach it
    done = _cli(env, "restore", "--backup", backup_id, "--target-time", target, "--pgdata", str(pgdata))
    assert done.returncode == 0, done.stderr[-3000:]
    conf = (pgdata / "postgresql.auto.conf").read_text().splitlines()

    def setting(name: str) -> str:
        return [line for line in conf if line.startswith(f"{name} ")][-1].split("'")[1]

    # The socket lives in the restore's private side directory (never a predictable name beside PGDATA).
    port, socket_dir = int(setting("port")), setting("unix_socket_directories")
    assert Path(socket_dir).parent.name.startswith(f".{pgdata.name}.restore-")
    try:
        with psycopg.connect(host=socket_dir, port=port, user="postgres", dbname=env["CQOX_PG_DB"]) as conn:
            labels = {r[0] for r in conn.execute("SELECT label FROM pitr_probe")}
    finally:
        stop_immediately(pgdata)
    assert "before" in labels and "after" not in labels


# --- backups made outside Dagster, drills that prove nothing (issue 13 items 4 and 8) ----------------------------


def _sensor_requests(stack, env, instance, cursor=None):
    from sensors.backup_schedules import new_backup_drill_sensor

    resources = {"postgres_admin": postgres_admin(stack)}
    with dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources) as context:
        result = new_backup_drill_sensor(context)
        return list(result.run_requests or []), context.cursor


def test_a_backup_from_the_cli_gets_exactly_one_drill(stack, env):
    """Item 8: drills are driven by the backups table, so `backup create` (no Dagster) is drilled too, once."""
    created = _cli(env, "backup", "create")
    assert created.returncode == 0, created.stderr[-2000:]
    backup_id = created.stdout.split()[0]
    requested: list[str] = []
    with dg.instance_for_test() as instance:
        for _ in range(8):  # as the daemon would: one drill per tick until every recent backup has one
            requests, _ = _sensor_requests(stack, env, instance)
            if not requests:
                break
            (request,) = requests
            drilled = request.run_config["ops"]["restore_drill"]["config"]["backup_id"]
            assert request.run_key == f"drill-{drilled}" and drilled not in requested
            requested.append(drilled)
            materialize_backups(stack, env, [backup_assets.restore_drill], request.run_config["ops"])
        assert requested and requested[0] == backup_id, requested  # the newest first, exactly once
        assert _sensor_requests(stack, env, instance)[0] == []
    listed = _cli(env, "backup", "list")
    line = next(line for line in listed.stdout.splitlines() if line.startswith(backup_id))
    assert "passed" in line, line


def test_a_backup_from_the_cli_is_the_newest_on_postgres_basebackup_in_the_stacks_instance(stack, env):
    """`backup create` records its backup on the asset (a runless materialization in DAGSTER_HOME's instance), so the
    asset's page shows the real newest backup, not the last one Dagster made."""
    created = _cli(env, "backup", "create")
    assert created.returncode == 0, created.stderr[-2000:]
    backup_id = created.stdout.split()[0]
    with dg.DagsterInstance.from_config(env["DAGSTER_HOME"]) as instance:
        event = instance.get_latest_materialization_event(dg.AssetKey("postgres_basebackup"))
    assert event is not None, "no materialization of postgres_basebackup in the stack's instance"
    metadata = {k: v.value for k, v in event.asset_materialization.metadata.items()}
    assert metadata["backup_id"] == backup_id, metadata  # the CLI's backup is the newest on the asset
    assert metadata["made_by"] == "CLI" and metadata["stored_mib"] > 0 and metadata["stop_time"] > 0
    assert not event.run_id  # runless: reported, not run by Dagster
    assert f"recorded base backup {backup_id} on postgres_basebackup" in created.stderr


def test_a_backup_from_the_cli_without_a_dagster_instance_succeeds_with_a_warning(stack, env):
    without = {k: v for k, v in {**os.environ, **env}.items() if k != "DAGSTER_HOME"}
    created = subprocess.run([*CLI, "backup", "create"], env=without, capture_output=True, text=True, timeout=300)
    assert created.returncode == 0, created.stderr[-2000:]
    backup_id = created.stdout.split()[0]
    assert backup_id in [r.backup_id for r in list_backups(_archive(stack, env))]
    warning = next(line for line in created.stderr.splitlines() if line.startswith("warning:"))
    assert backup_id in warning and "not recorded on postgres_basebackup" in warning and "DAGSTER_HOME" in warning


def test_a_drill_without_a_captured_point_is_partial_and_verifies_nothing(stack, env):
    """Item 4: without a restore point a drill checks the `postgres` database only: no proof of the backup."""
    from cqox_platform.backup.verify.drill import verified_backup_ids
    from cqox_platform.backup.verify.proof import backup_point_name

    created = _cli(env, "backup", "create")
    assert created.returncode == 0, created.stderr[-2000:]
    backup_id = created.stdout.split()[0]
    with _conn(stack) as conn:
        (point,) = conn.execute(
            "DELETE FROM restore_points WHERE name = %s RETURNING name, lsn, timeline, created_at, database, tables",
            [backup_point_name(backup_id)],
        ).fetchall()
    try:
        result = materialize_backups(
            stack, env, [backup_assets.restore_drill], {"restore_drill": {"config": {"backup_id": backup_id}}}
        )
        drill = asset_metadata(result, "restore_drill")
        assert drill["status"] == "partial", drill
        assert check_results(result)["latest_backup_verified_restorable"] is False
        with _conn(stack) as conn:
            assert backup_id not in verified_backup_ids(conn)
            status = conn.execute("SELECT status FROM restore_drills WHERE drill_id = %s", [drill["drill_id"]])
            assert status.fetchone()[0] == "partial"
    finally:
        with _conn(stack) as conn:  # the point back, as the backup captured it
            conn.execute("INSERT INTO restore_points VALUES (%s, %s, %s, %s, %s, %s)", [*point[:5], Jsonb(point[5])])


# --- second region, metrics ----------------------------------------------------------------------------------


def test_dr_copy_verifies_by_hash_retries_a_corrupted_copy_and_never_lists_it(stack, env, monkeypatch):
    """Item 5: a copy whose bytes differ (same size) is caught by SHA-256; its manifest and record are not
    copied, the check fails, and the next run copies it again."""
    import hashlib

    from cqox_platform.backup import dr_copy

    primary, dr = _archive(stack, env), _archive(stack, env, env["CQOX_S3_DR_BUCKET"])
    created = _cli(env, "backup", "create")
    assert created.returncode == 0, created.stderr[-2000:]
    backup_id = created.stdout.split()[0]
    victim = primary.backup_data_key(backup_id)
    real_copy = dr_copy.copy_object

    def corrupting_copy(src, dst, key, size):
        sent = real_copy(src, dst, key, size)
        if key == victim:  # the bytes that arrived differ from those sent, size unchanged
            body = bytearray(dst.get_bytes(key))
            body[len(body) // 2] ^= 0x01
            head = dst.head(key) or {}
            dst.put_bytes(key, bytes(body), metadata=head.get("Metadata"))
        return sent

    monkeypatch.setattr(dr_copy, "copy_object", corrupting_copy)
    bad = materialize_backups(stack, env, [backup_assets.backups_dr_copy])
    assert check_results(bad) == {"dr_copy_verified": False}
    assert victim in asset_metadata(bad, "backups_dr_copy")["mismatched"]
    assert dr.head(dr.backup_record_key(backup_id)) is None  # the DR bucket does not list it
    assert dr.head(dr.backup_manifest_key(backup_id)) is None
    assert backup_id not in {r.backup_id for r in list_backups(dr)}
    monkeypatch.setattr(dr_copy, "copy_object", real_copy)
    good = materialize_backups(stack, env, [backup_assets.backups_dr_copy])
    assert check_results(good) == {"dr_copy_verified": True}, asset_metadata(good, "backups_dr_copy")
    assert asset_metadata(good, "backups_dr_copy")["mismatched"] == []
    assert hashlib.sha256(dr.get_bytes(victim)).digest() == hashlib.sha256(primary.get_bytes(victim)).digest()
    assert backup_id in {r.backup_id for r in list_backups(dr)}
    # A copy corrupted later in the DR bucket (same size) is found and replaced too.
    body = bytearray(dr.get_bytes(victim))
    body[10] ^= 0x01
    dr.put_bytes(victim, bytes(body), metadata=(dr.head(victim) or {}).get("Metadata"))
    healed = materialize_backups(
        stack, env, [backup_assets.backups_dr_copy], {"backups_dr_copy": {"config": {"reverify": True}}}
    )
    assert check_results(healed) == {"dr_copy_verified": True}
    assert dr.get_bytes(victim) == primary.get_bytes(victim)


def test_dr_copy_verifies_and_a_drill_runs_from_the_dr_bucket(stack, env, new_backup):
    result = materialize_backups(stack, env, [backup_assets.backups_dr_copy])
    assert check_results(result) == {"dr_copy_verified": True}
    assert asset_metadata(result, "backups_dr_copy")["mismatched"] == []
    again = materialize_backups(stack, env, [backup_assets.backups_dr_copy])
    assert asset_metadata(again, "backups_dr_copy")["copied_objects"] == 0
    drill = materialize_backups(
        stack, env, [backup_assets.restore_drill], {"restore_drill": {"config": {"source": "dr"}}}
    )
    meta = asset_metadata(drill, "restore_drill")
    assert meta["status"] == "passed", meta.get("error")
    assert env["CQOX_S3_DR_BUCKET"] in meta["source"] and meta["backup_id"] == new_backup["backup_id"]


def test_the_cli_restores_from_the_dr_copy_with_the_dr_regions_reader_key(stack, env, new_backup):
    """``restore --bucket <DR bucket>`` reads the backup and its WAL from the DR region with its read-only key: the
    primary's key is unknown to the DR server, and the restored server keeps fetching WAL after the command ends
    (a paused target resumed later), so its restore_command's settings live beside PGDATA with it."""
    assert materialize_backups(stack, env, [backup_assets.backups_dr_copy]).success
    root = make_world_traversable_tmpdir("cqox-dr-restore-")
    pgdata = root / "pgdata"
    try:
        done = _cli(
            env,
            *("restore", "--bucket", env["CQOX_S3_DR_BUCKET"], "--backup", new_backup["backup_id"]),
            *("--target-immediate", "--pgdata", str(pgdata)),
        )
        assert done.returncode == 0, done.stderr[-3000:]
        assert f"restored backup {new_backup['backup_id']} and promoted" in done.stdout, done.stdout
        fetch_settings = list(root.glob(".pgdata.restore-*/*.json"))
        assert len(fetch_settings) == 1, fetch_settings
        settings = json.loads(fetch_settings[0].read_text())
        assert settings["s3_endpoint"] == env["CQOX_S3_DR_ENDPOINT"] and settings["bucket"] == env["CQOX_S3_DR_BUCKET"]
        assert fetch_settings[0].stat().st_mode & 0o777 == 0o600
    finally:
        stop_immediately(pgdata)
        shutil.rmtree(root, ignore_errors=True)


def test_backup_gauges_reach_prometheus_and_alert_rules_load(stack, env):
    # The assets that push the gauges: a backup, its drill, the WAL status, the DR copy and the recoverability view
    # (each copy's recovery window).
    pushed = materialize_backups(
        stack,
        env,
        [
            backup_assets.postgres_basebackup,
            backup_assets.restore_drill,
            backup_assets.wal_archive_status,
            backup_assets.backups_dr_copy,
            backup_assets.recoverability,
        ],
    )
    assert pushed.success
    result = materialize_backups(stack, env, [backup_assets.backup_alert_rules])
    assert result.success
    prometheus = PrometheusResource(url=env["CQOX_PROMETHEUS_URL"])
    assert any(g == "cqox-backups" for g in asset_metadata(result, "backup_alert_rules")["loaded_groups"])
    deadline = time.monotonic() + 90
    found: dict[str, bool] = {}
    names = [
        "cqox_backup_last_success_timestamp_seconds",
        "cqox_wal_rpo_seconds",
        "cqox_restore_drill_rto_seconds",
        "cqox_wal_archive_failed_count",
        "cqox_backup_dr_lag_seconds",
    ]
    window = ["cqox_recovery_window_earliest_timestamp_seconds", "cqox_recovery_window_latest_timestamp_seconds"]
    copies: dict[str, set[str]] = {}
    while time.monotonic() < deadline and not (
        all(found.get(n) for n in names) and all(copies.get(n) == {"primary", "dr"} for n in window)
    ):
        for name in names:
            found[name] = bool(prometheus.query(name))
        for name in window:
            copies[name] = {r["metric"].get("copy") for r in prometheus.query(name)}
        time.sleep(2)
    assert all(found.values()), found
    assert all(copies.get(n) == {"primary", "dr"} for n in window), copies  # labelled by copy, both copies
    # The DR copy was just copied: its window ends within the RPO target, so its page is not firing.
    behind = prometheus.query('time() - cqox_recovery_window_latest_timestamp_seconds{copy="dr"}')
    assert behind and float(behind[0]["value"][1]) < 3600, behind


# --- retention ------------------------------------------------------------------------------------------------


@pytest.fixture
def drilled_backups(stack, env) -> list[str]:
    """Four base backups taken for this test, the newest drilled (retention deletes nothing until it passes)."""
    taken = []
    for _ in range(3):
        result = materialize_backups(stack, env, [backup_assets.postgres_basebackup])
        assert result.success
        taken.append(asset_metadata(result, "postgres_basebackup")["backup_id"])
    last = materialize_backups(stack, env, [backup_assets.postgres_basebackup, backup_assets.restore_drill])
    assert_drill_passed(last)
    return [*taken, asset_metadata(last, "postgres_basebackup")["backup_id"]]


def _age_backups(archive: Archive, records, days: int) -> None:
    """Make backups look ``days`` older (their records' times); their ids and objects stay as they are."""
    import json
    from datetime import datetime, timedelta

    for record in records:
        key = archive.backup_record_key(record.backup_id)
        data = json.loads(archive.get_bytes(key))
        for field in ("start_time", "stop_time"):
            data[field] = (datetime.fromisoformat(data[field]) - timedelta(days=days)).isoformat()
        archive.put_bytes(key, json.dumps(data).encode())


def test_dr_retention_keeps_what_pitr_in_the_window_needs_and_deletes_the_rest(stack, env, drilled_backups):
    from cqox_platform.backup.archive.wal_names import Segment
    from cqox_platform.backup.retention import archived_wal_names

    copied = materialize_backups(stack, env, [backup_assets.backups_dr_copy])
    assert check_results(copied) == {"dr_copy_verified": True}, asset_metadata(copied, "backups_dr_copy")
    primary, dr = _archive(stack, env), _archive(stack, env, env["CQOX_S3_DR_BUCKET"])
    primary_before = [r.backup_id for r in list_backups(primary)]
    primary_wal = archived_wal_names(primary)
    before = list_backups(dr)
    assert [r.backup_id for r in before[-4:]] == drilled_backups
    _age_backups(dr, before[:-1], days=100)  # in the DR copy only: all but the newest fall outside the window
    wal_before = archived_wal_names(dr)
    result = materialize_backups(
        stack,
        env,
        [backup_assets.backups_dr_retention],
        {"backups_dr_retention": {"config": {"keep_days": 1, "keep_full": 1}}},
    )
    assert result.success
    meta = asset_metadata(result, "backups_dr_retention")
    assert env["CQOX_S3_DR_BUCKET"] in meta["copy"]
    # Kept: the newest (newest 1, and the newest verified) and the newest before the window (restores its start).
    newest, second = before[-1].backup_id, before[-2].backup_id
    after = list_backups(dr)
    assert [r.backup_id for r in after] == [second, newest], meta["reasons"]
    for gone in {r.backup_id for r in before} - {second, newest}:
        assert not list(dr.list(dr.backup_prefix(gone)))
    # WAL: everything before the oldest kept backup's start goes, everything from it on (and history) stays.
    keep_from = Segment.parse(after[0].start_wal).segno
    wal_after = archived_wal_names(dr)
    gone_wal = sorted(set(wal_before) - set(wal_after))
    assert gone_wal and all(Segment.parse(n[:24]).segno < keep_from for n in gone_wal)
    assert all(Segment.parse(n[:24]).segno >= keep_from for n in wal_after if not n.endswith(".history"))
    assert meta["wal_files_deleted"] == len(gone_wal) and meta["backups_deleted_count"] == len(before) - 2
    # The primary is another copy: untouched.
    assert [r.backup_id for r in list_backups(primary)] == primary_before and archived_wal_names(primary) == primary_wal
    # What is left in the DR copy still restores, from the DR copy alone (its read-only key, WAL included).
    drill = materialize_backups(
        stack, env, [backup_assets.restore_drill], {"restore_drill": {"config": {"source": "dr", "backup_id": second}}}
    )
    assert_drill_passed(drill)
    assert env["CQOX_S3_DR_BUCKET"] in asset_metadata(drill, "restore_drill")["source"]


def test_retention_refuses_a_zero_day_window(stack, env):
    archive = _archive(stack, env)
    before = list_backups(archive)
    result = materialize_backups(
        stack, env, [backup_assets.backup_retention], {"backup_retention": {"config": {"keep_days": 0}}}
    )
    assert not result.success and list_backups(archive) == before
    cli = _cli(env, "backup", "expire", "--keep-days", "0")
    assert cli.returncode == 2 and "keep-days" in cli.stderr


def test_retention_keeps_the_newest_backups_and_the_wal_they_need(stack, env, drilled_backups):
    archive = _archive(stack, env)
    before = list_backups(archive)
    assert [r.backup_id for r in before[-4:]] == drilled_backups
    _age_backups(archive, before[:-1], days=100)  # all but the newest fall outside any window
    dry = _cli(env, "backup", "expire", "--dry-run", "--json", "--keep-days", "1", "--keep-full", "1")
    assert dry.returncode == 0, dry.stderr
    import json

    plan = json.loads(dry.stdout)
    assert len(list_backups(archive)) == len(before)  # a dry run deletes nothing
    rows = {r["backup_id"]: r for r in plan["backups"]}
    assert set(rows) == {r.backup_id for r in before} and all(r["reason"] for r in rows.values())
    newest, second = before[-1].backup_id, before[-2].backup_id
    assert rows[newest]["action"] == "keep" and "newest 1" in rows[newest]["reason"]
    assert rows[second]["action"] == "keep" and "before the 1-day window" in rows[second]["reason"]
    assert plan["delete"], plan  # the older ones go
    real = materialize_backups(
        stack,
        env,
        [backup_assets.backup_retention],
        {"backup_retention": {"config": {"keep_days": 1, "keep_full": 1}}},
    )
    assert real.success
    after = list_backups(archive)
    assert [r.backup_id for r in after] == plan["keep"]
    for gone in plan["delete"]:
        assert not list(archive.list(archive.backup_prefix(gone)))  # every object of it, by its id
    # What is left still restores: the kept backups' WAL survived.
    drill = materialize_backups(
        stack, env, [backup_assets.restore_drill], {"restore_drill": {"config": {"backup_id": after[0].backup_id}}}
    )
    assert_drill_passed(drill)
