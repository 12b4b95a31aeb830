"""Backup verdicts that must fail closed, on a stack of their own: WAL checks along the timeline a promoted
restore is on, a prefetch spool a killed restore of another cluster left in the same path, the WAL digest in
the DR copy, and retention reading the drill of the newest backup.

The stack has no Dagster daemon; assets are materialized in process. Tests that branch a timeline remove what
the branch archived, so each test can run alone and in any order.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path
from unittest import mock

import boto3
import dagster as dg
import psycopg
import pytest

from assets import backups as backup_assets
from cqox_platform.archiver_clients import load_archiver_clients
from cqox_platform.backup.archive.records import BackupRecord, find_backup, list_backups
from cqox_platform.backup.archive.store import Archive
from cqox_platform.pgserver import ScratchCluster, as_pg_user, free_port, pg_bindir, stop_immediately
from cqox_platform.schema import MigrationRunner
from cqox_platform.stack.s3 import client_config
from tests.helpers import (
    backup_resources,
    dr_s3_client,
    make_world_traversable_tmpdir,
    materialize_vault_config,
    postgres_admin,
    running_stack,
)

CLI = [sys.executable, "-m", "cqox_platform.cli"]
SEGMENT = 16 * 1024 * 1024


@pytest.fixture(scope="module")
def stack():
    with running_stack("cqox-test-failclosed-", with_dagster=False) as st:
        yield st


@pytest.fixture(scope="module")
def env(stack):
    with mock.patch.dict(os.environ, stack.env()):
        assert materialize_vault_config(stack).success
        with postgres_admin(stack).connect(autocommit=True) as conn:
            MigrationRunner().migrate(conn)
            conn.execute("CREATE TABLE IF NOT EXISTS payload (id int PRIMARY KEY, body text)")
            conn.execute(
                "INSERT INTO payload SELECT g, md5(g::text) FROM generate_series(1, 5000) g ON CONFLICT DO NOTHING"
            )
        yield stack.env()


def _cli(env, *args, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], env={**os.environ, **env}, capture_output=True, text=True, timeout=timeout)


def _conn(stack) -> psycopg.Connection:
    return psycopg.connect(**postgres_admin(stack).conninfo(), autocommit=True)


def _s3(env):
    return boto3.session.Session().client("s3", endpoint_url=env["CQOX_S3_ENDPOINT"], config=client_config())


def _settings(env) -> Path:
    return Path(env["CQOX_WAL_ARCHIVER_CONFIG"])


def _clients(env):
    return load_archiver_clients(_settings(env))


def _materialize(stack, env, assets, config=None) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        assets, resources=backup_resources(stack, env), run_config={"ops": config or {}}, raise_on_error=False
    )


def _meta(result, node) -> dict:
    (event,) = result.asset_materializations_for_node(node)
    return {k: v.value for k, v in event.metadata.items()}


def _checks(result) -> dict[str, bool]:
    return {e.check_name: e.passed for e in result.get_asset_check_evaluations()}


def _wait_for(predicate, timeout: float = 120.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


def _new_backup(env) -> BackupRecord:
    created = _cli(env, "backup", "create")
    assert created.returncode == 0, created.stderr[-3000:]
    return find_backup(_s3(env), env["CQOX_S3_BUCKET"], created.stdout.split()[0])


@pytest.fixture(scope="module")
def backup(env) -> BackupRecord:
    return _new_backup(env)


def _archive_segments(stack, archive: Archive, count: int) -> None:
    """Write, switch and wait until S3 holds the segment, ``count`` times: timeline 1 grows in the archive."""
    with _conn(stack) as conn:
        for _ in range(count):
            conn.execute("UPDATE payload SET body = md5(body) WHERE id % 7 = 0")
            name = conn.execute("SELECT pg_walfile_name(pg_current_wal_lsn())").fetchone()[0]
            conn.execute("SELECT pg_switch_wal()")
            _wait_for(lambda n=name: n in archive.archived_wal(), what=f"{name} in S3")


# --- WAL verdicts along the current timeline -----------------------------------------------------------------


@contextlib.contextmanager
def _promoted_copy(env, record: BackupRecord, point: str, archiving: dict[str, str]):
    """``record`` restored to restore point ``point`` and promoted (a new timeline), archiving as ``archiving``."""
    from cqox_platform.backup.restore.files import restore_files
    from cqox_platform.backup.restore.recovery import RecoveryTarget, configure_recovery, restore_command_for
    from cqox_platform.installation import platform_cli

    clients = _clients(env)
    archive = Archive(clients.s3, clients.bucket, record.system_id)
    base = make_world_traversable_tmpdir("cqox-failclosed-copy-")
    pgdata = base / "pgdata"
    pgdata.mkdir(mode=0o700)
    bindir = pg_bindir()
    cluster = ScratchCluster(pgdata, base / "sock", free_port(), base / "server.log", bindir)
    try:
        restore_files(archive, clients.provider, record, pgdata, lambda _m: None, bindir)
        configure_recovery(
            pgdata,
            port=cluster.port,
            socket_dir=cluster.socket_dir,
            restore_command=restore_command_for(platform_cli(), _settings(env), None, 0),
            target=RecoveryTarget("restore_point", point),
            extra=archiving,
        )
        cluster.start()
        cluster.wait_promoted(600, lambda _m: None)
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(base, ignore_errors=True)


def _forget_timeline(archive: Archive, timeline: int) -> None:
    """Remove what a branch archived, so later restores (target timeline 'latest') stay on timeline 1."""
    prefix = f"{timeline:08X}"
    for name in archive.archived_wal():
        if name.startswith(prefix):
            archive.delete(archive.wal_manifest_key(name))
            archive.delete(archive.wal_key(name))


def test_a_promoted_copy_that_archives_nothing_on_its_new_timeline_fails_every_wal_check(stack, env, backup):
    """The reproduction: a primary on TL2, and an archive whose TL1 runs far past TL2's switch point."""
    from cqox_platform.backup.verify.checks import wal_verdicts
    from cqox_platform.backup.wal.spool import sync_archive_command
    from cqox_platform.backup.wal.status import measure
    from cqox_platform.installation import platform_cli

    clients = _clients(env)
    archive = Archive(clients.s3, clients.bucket, backup.system_id)
    with _conn(stack) as conn:
        conn.execute("SELECT pg_create_restore_point('before-the-branch')")
    _archive_segments(stack, archive, 4)  # timeline 1 in S3 now ends well past the branch point
    try:
        # PostgreSQL reports every file archived, none reaches S3: what an archive_command pointing elsewhere does.
        pretend = {"archive_mode": "on", "archive_command": "true"}
        with _promoted_copy(env, backup, "before-the-branch", pretend) as copy, copy.connect() as conn:
            status = measure(conn, archive, clients.provider, backup, wait_for_archive=10)
        rpo, continuity, archiver = wal_verdicts(status, has_backup=True, rpo_target_seconds=900)
        assert status.timeline == 2 and status.rpo_bytes > 0, status
        assert not rpo.passed, rpo.description
        assert not continuity.passed, continuity.description
        assert "00000002.history" in continuity.description
        assert archiver.passed  # PostgreSQL itself saw no failure: the archive says what is protected

        # The same branch archiving for real through wal-push: every check passes, across the switch.
        archiving = {"archive_mode": "on", "archive_command": sync_archive_command(platform_cli(), _settings(env))}
        with _promoted_copy(env, backup, "before-the-branch", archiving) as copy, copy.connect() as conn:
            _wait_for(lambda: "00000002.history" in archive.archived_wal(), what="00000002.history in S3")
            status = measure(conn, archive, clients.provider, backup)
        verdicts = wal_verdicts(status, has_backup=True, rpo_target_seconds=900)
        assert [v.passed for v in verdicts] == [True, True, True], [v.description for v in verdicts]
        assert status.newest_archived_segment.startswith("00000002") and status.continuity_to.startswith("00000002")
        assert status.continuity_from == backup.start_wal and status.gaps == []

        # The primary, still on timeline 1, is judged by its own timeline: the branch in the archive is not it.
        result = _materialize(stack, env, [backup_assets.wal_archive_status])
        assert _checks(result) == dict.fromkeys(
            ["wal_rpo_within_target", "wal_archive_continuous", "wal_archiver_healthy"], True
        ), _meta(result, "wal_archive_status")
        assert _meta(result, "wal_archive_status")["newest_archived_segment"].startswith("00000001")
    finally:
        _forget_timeline(archive, 2)


# --- the restore_command's prefetch spool ---------------------------------------------------------------------


def _first_page(sysid: int, segno: int) -> bytes:
    """A 16 MiB timeline-1 segment of cluster ``sysid`` whose first page header names segment ``segno``."""
    header = struct.pack("<HHIQI4xQII", 0xD110, 0x0002, 1, segno * SEGMENT, 0, sysid, SEGMENT, 8192)
    return header + b"\0" * (SEGMENT - len(header))


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


def test_a_spool_left_by_a_killed_restore_of_another_cluster_is_not_served_to_the_next(stack, env, backup):
    from cqox_platform.backup.archive.wal_names import Segment, segment_name
    from cqox_platform.backup.wal.segment import push_wal
    from cqox_platform.installation import platform_cli

    clients = _clients(env)
    other = 7_313_000 + int.from_bytes(os.urandom(2), "big")
    other_archive = Archive(clients.s3, clients.bucket, str(other))
    start = Segment.parse(backup.start_wal).segno
    base = make_world_traversable_tmpdir("cqox-failclosed-spool-")
    pgdata = base / "pg"
    prefetch_root = _settings(env).parent / "prefetch"
    try:
        # A restore of cluster `other` into base/pg: its WAL uses the names this backup's replay will ask for.
        (pgdata / "global").mkdir(parents=True)
        (pgdata / "pg_wal").mkdir()
        (pgdata / "global" / "pg_control").write_bytes(struct.pack("<Q", other) + b"\0" * 8184)
        for segno in range(start - 1, start + 3):
            path = pgdata / "pg_wal" / segment_name(1, segno)
            path.write_bytes(_first_page(other, segno))
            push_wal(other_archive, clients.provider, path)
        subprocess.run(["chown", "-R", "postgres", str(pgdata)], check=True)
        # As PostgreSQL runs it: the postgres OS user, in the data directory (its prefetcher is that user's too).
        fetch = [str(platform_cli()), "wal-fetch", segment_name(1, start - 1), "pg_wal/RECOVERYXLOG"]
        fetch += ["--config", str(_settings(env)), "--pgdata", str(pgdata), "--prefetch", "8"]
        fetch += ["--bucket", env["CQOX_S3_BUCKET"]]  # as `restore` writes it: the bucket named explicitly
        fetched = subprocess.run(as_pg_user(fetch), cwd=pgdata, capture_output=True, text=True, timeout=120)
        assert fetched.returncode == 0, fetched.stderr
        _wait_for(lambda: any(prefetch_root.glob(f"*/ready/{backup.start_wal}")), what="the prefetcher to verify ahead")
        for pid in _prefetch_daemons(pgdata):  # killed mid-restore: no cleanup runs
            os.kill(pid, signal.SIGKILL)
        shutil.rmtree(pgdata)
        assert any(prefetch_root.glob(f"*/ready/{backup.start_wal}"))  # what it left behind

        # The next restore into the same path is of this cluster: it must replay this cluster's WAL.
        restored = _cli(env, "restore", "--backup", backup.backup_id, "--pgdata", str(pgdata))
        assert restored.returncode == 0, restored.stderr[-3000:]
        conf = (pgdata / "postgresql.auto.conf").read_text().splitlines()
        port = [line for line in conf if line.startswith("port ")][-1].split("'")[1]
        socket_dir = [line for line in conf if line.startswith("unix_socket_directories ")][-1].split("'")[1]
        with psycopg.connect(host=socket_dir, port=port, user="postgres", dbname=env["CQOX_PG_DB"]) as conn:
            assert conn.execute("SELECT count(*) FROM payload").fetchone()[0] == 5000
            restored_id = conn.execute("SELECT system_identifier FROM pg_control_system()").fetchone()[0]
        assert str(restored_id) == backup.system_id
    finally:
        stop_immediately(pgdata)
        for pid in _prefetch_daemons(pgdata):
            os.kill(pid, signal.SIGKILL)
        shutil.rmtree(base, ignore_errors=True)
        other_archive.purge(other_archive.root + "/")


# --- the DR copy carries the WAL digest ----------------------------------------------------------------------------


def test_the_dr_copy_keeps_the_wal_digest_so_a_re_pointed_archiver_pushes_again_without_conflict(env, tmp_path):
    from cqox_platform.backup.dr_copy import copy_to_dr
    from cqox_platform.backup.wal.segment import SHA_META, push_wal, read_wal

    provider = _clients(env).provider
    sysid = 7_414_000 + int.from_bytes(os.urandom(2), "big")
    primary = Archive(_s3(env), env["CQOX_S3_BUCKET"], str(sysid))
    dr = Archive(dr_s3_client(env, "writer"), env["CQOX_S3_DR_BUCKET"], str(sysid))
    segment = tmp_path / "000000010000000000000005"
    segment.write_bytes(os.urandom(1 << 20))
    digest = hashlib.sha256(segment.read_bytes()).hexdigest()
    try:
        push_wal(primary, provider, segment)
        result = copy_to_dr(primary, dr)
        assert result.mismatched == [] and primary.wal_manifest_key(segment.name) in result.copied
        copied = (dr.head(dr.wal_manifest_key(segment.name)) or {}).get("Metadata") or {}
        assert copied.get(SHA_META) == digest, copied  # what a fetch from DR checks after decryption
        assert read_wal(dr, provider, segment.name) == segment.read_bytes()
        # The archiver re-pointed at the DR bucket during a primary outage pushes a file DR already holds.
        again = push_wal(dr, provider, segment)
        assert again.uploaded is False

        # A copy made without the digest (before the DR copy carried it) is made again by a reverify run.
        key = dr.wal_manifest_key(segment.name)
        dr.put_bytes(key, dr.get_bytes(key), metadata={k: v for k, v in copied.items() if k != SHA_META})
        healed = copy_to_dr(primary, dr, reverify=True)
        assert key in healed.copied
        assert ((dr.head(key) or {}).get("Metadata") or {}).get(SHA_META) == digest
    finally:
        primary.purge(primary.root + "/")
        dr.purge(dr.root + "/")


# --- retention reads the drill of the newest backup ------------------------------------------------------------


def test_retention_deletes_nothing_until_the_newest_backup_has_a_passing_drill_and_names_it(stack, env, backup):
    drill = _materialize(
        stack, env, [backup_assets.restore_drill], {"restore_drill": {"config": {"backup_id": backup.backup_id}}}
    )
    assert _meta(drill, "restore_drill")["status"] == "passed", _meta(drill, "restore_drill").get("error")
    assert _checks(drill)["latest_backup_verified_restorable"]  # the check retention's automation reads
    newer = _new_backup(env)  # taken outside Dagster after that check: no drill yet
    archive = Archive(_s3(env), env["CQOX_S3_BUCKET"], backup.system_id)
    before = [r.backup_id for r in list_backups(archive)]

    refused = _materialize(stack, env, [backup_assets.backup_retention])
    assert not refused.success
    error = str(refused.get_step_failure_events()[0].event_specific_data.error)
    assert f"newest backup {newer.backup_id} has no passing drill" in error, error
    assert [r.backup_id for r in list_backups(archive)] == before

    drilled = _materialize(
        stack, env, [backup_assets.restore_drill], {"restore_drill": {"config": {"backup_id": newer.backup_id}}}
    )
    assert _meta(drilled, "restore_drill")["status"] == "passed", _meta(drilled, "restore_drill").get("error")
    done = _materialize(stack, env, [backup_assets.backup_retention])
    assert done.success
    meta = _meta(done, "backup_retention")
    assert meta["gate_drill_id"] == _meta(drilled, "restore_drill")["drill_id"]
    assert newer.backup_id in meta["gate"]


# --- scratch space ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _small_volume(size_bytes: int):
    """A tmpfs of ``size_bytes``, the way a run pod's size-limited (or memory-backed) scratch volume looks to
    statvfs; writing past it fails with ENOSPC (memory-backed in a pod: an OOM kill)."""
    where = make_world_traversable_tmpdir("cqox-failclosed-small-")
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_bytes},mode=0755", "tmpfs", str(where)], check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", "--lazy", str(where)], check=False)
        shutil.rmtree(where, ignore_errors=True)


def _drill_in_small_volume(env, backup, size: int, target_kind: str):
    """A drill of ``backup`` whose scratch directory is a ``size``-byte volume: its result, its progress
    messages, and what it left in the volume."""
    from cqox_platform.backup.restore.recovery import RecoveryTarget
    from cqox_platform.backup.verify.drill import run_drill
    from cqox_platform.installation import platform_cli

    clients = _clients(env)
    messages: list[str] = []
    with _small_volume(size) as scratch:
        result = run_drill(
            Archive(clients.s3, clients.bucket, backup.system_id),
            clients.provider,
            backup,
            RecoveryTarget(target_kind),
            expected=None,
            cli=platform_cli(),
            settings_file=_settings(env),
            workdir=scratch,
            progress=messages.append,
        )
        left = list(scratch.iterdir())
    return result, scratch, messages, left


def test_a_drill_whose_scratch_volume_is_smaller_than_the_database_fails_before_downloading(env, backup):
    from cqox_platform.backup.verify.drill import FAILED

    result, scratch, messages, left = _drill_in_small_volume(env, backup, backup.database_bytes // 4, "backup_end")
    assert result.status == FAILED
    assert str(scratch) in result.error and "scratch" in result.error, result.error
    assert f"{backup.database_bytes / 2**20:.0f} MiB" in result.error, result.error  # what it needs, in MiB
    assert not any("downloading" in m for m in messages), messages  # refused before the first byte
    assert left == [], left  # and removed what it created


def test_a_drill_whose_scratch_holds_the_database_but_not_the_wal_replay_keeps_fails_before_downloading(
    stack, env, backup
):
    """The room check used to allow 4 segments for replay, but a recovering server keeps what it restored in
    pg_wal until a restartpoint: a volume that held the database passed, and filled mid-replay (ENOSPC; an OOM
    kill on a memory-backed pod volume)."""
    from cqox_platform.backup.verify.drill import FAILED

    clients = _clients(env)
    _archive_segments(stack, Archive(clients.s3, clients.bucket, backup.system_id), 12)  # 192 MiB after the backup
    # Room for the data directory, its slack, 4 segments and the 8-segment prefetch spool, and 2 segments more.
    size = int(backup.database_bytes * 1.03) + 14 * 16 * 2**20
    result, scratch, messages, left = _drill_in_small_volume(env, backup, size, "end_of_archive")
    assert result.status == FAILED
    assert str(scratch) in result.error and "MiB of WAL" in result.error, result.error
    assert "pg_wal" in result.error and "max_wal_size of 4096 MiB" in result.error, result.error
    assert not any("downloading" in m for m in messages), messages  # refused before the first byte
    assert left == [], left


def test_a_restore_into_a_volume_smaller_than_the_database_is_refused_before_downloading(env, backup):
    with _small_volume(backup.database_bytes // 4) as volume:
        restored = _cli(env, "restore", "--backup", backup.backup_id, "--pgdata", str(volume / "pg"), "--no-start")
        left = list(volume.iterdir())
    assert restored.returncode == 1, restored.stdout + restored.stderr
    assert str(volume) in restored.stderr and "free" in restored.stderr, restored.stderr
    assert "download" not in restored.stdout.lower(), restored.stdout
    assert left == [], left
