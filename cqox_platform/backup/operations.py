"""Backup operations against a live cluster: the glue between a database connection and the archive.

Connections here are the platform's admin connection to the CQOX database (autocommit): pg_basebackup,
restore points and ``pg_switch_wal`` need a superuser or replication role.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from cqox_platform.backup.archive import Archive
from cqox_platform.backup.basebackup import BackupError, create_base_backup
from cqox_platform.backup.proof import RestorePoint, capture_restore_point, load_restore_point
from cqox_platform.backup.records import BackupRecord, upsert_backup
from cqox_platform.backup.restore import RecoveryTarget
from cqox_platform.backup.walnames import parse_lsn, segment_name, segment_number
from cqox_platform.crypto.keys import DataKeyProvider

#: Session advisory lock held for the whole base backup: one backup per cluster at a time.
BACKUP_LOCK_KEY = 0x0C0_B4C4
Progress = Callable[[str], None]


def system_id(conn: psycopg.Connection) -> str:
    return str(conn.execute("SELECT system_identifier FROM pg_control_system()").fetchone()[0])


def cluster_archive(conn: psycopg.Connection, s3: Any, bucket: str) -> Archive:
    return Archive(s3, bucket, system_id(conn))


def backup_point_name(backup_id: str) -> str:
    return f"backup-{backup_id}"


def take_backup(
    conn: psycopg.Connection,
    archive: Archive,
    provider: DataKeyProvider,
    dsn: str,
    *,
    pg_basebackup: str,
    progress: Progress = lambda _m: None,
) -> tuple[BackupRecord, RestorePoint]:
    """Base backup + its row in ``backups`` + a restore point right after it (what its drill restores to)."""
    if not conn.execute("SELECT pg_try_advisory_lock(%s)", [BACKUP_LOCK_KEY]).fetchone()[0]:
        raise BackupError("another base backup of this cluster is running (advisory lock held); try again later.")
    try:
        version = conn.execute("SHOW server_version").fetchone()[0]
        estimate = int(conn.execute("SELECT sum(pg_database_size(oid)) FROM pg_database").fetchone()[0])
        record = create_base_backup(
            archive,
            provider,
            dsn=dsn,
            pg_basebackup=pg_basebackup,
            pg_version=version,
            estimate_bytes=estimate,
            progress=progress,
        )
        upsert_backup(conn, record)
        point = capture_restore_point(conn, backup_point_name(record.backup_id))
        conn.execute("SELECT pg_switch_wal()")  # archive the restore point now, not at archive_timeout
        return record, point
    finally:
        conn.execute("SELECT pg_advisory_unlock(%s)", [BACKUP_LOCK_KEY])


def plan_for_backup(conn: psycopg.Connection, record: BackupRecord) -> tuple[RecoveryTarget, RestorePoint | None]:
    """The drill of a new backup: restore to the point captured right after it, else to the backup's end."""
    point = load_restore_point(conn, backup_point_name(record.backup_id))
    if point is None:
        return RecoveryTarget("backup_end"), None
    return RecoveryTarget("restore_point", point.name), point


def plan_random_drill(
    conn: psycopg.Connection,
    records: list[BackupRecord],
    *,
    window_days: int,
    rng: random.Random | None = None,
) -> tuple[BackupRecord, RecoveryTarget, RestorePoint] | None:
    """A random captured restore point inside the retention window, and the newest backup before it."""
    rng = rng or random.Random()
    since = datetime.now(UTC) - timedelta(days=window_days)
    rows = conn.execute(
        "SELECT name FROM restore_points WHERE created_at >= %s AND database = current_database() ORDER BY created_at",
        [since],
    ).fetchall()
    candidates = []
    for (name,) in rows:
        point = load_restore_point(conn, name)
        if point is None:
            continue
        usable = backups_before(records, point)
        if usable:
            candidates.append((max(usable, key=lambda r: parse_lsn(r.stop_lsn)), point))
    if not candidates:
        return None
    record, point = rng.choice(candidates)
    return record, RecoveryTarget("restore_point", point.name), point


def backups_before(records: list[BackupRecord], point: RestorePoint) -> list[BackupRecord]:
    """Backups a restore to ``point`` can start from: finished before it, on its timeline or an ancestor's."""
    return [r for r in records if parse_lsn(r.stop_lsn) <= point.lsn_int and r.timeline <= point.timeline]


def plan_latest_point_drill(
    conn: psycopg.Connection, records: list[BackupRecord], backup_id: str = ""
) -> tuple[BackupRecord, RecoveryTarget, RestorePoint] | None:
    """The newest captured restore point, from ``backup_id`` (or the newest backup before it).

    After a failover this is the drill that proves a restore crosses the timeline switch: an old timeline's
    backup replayed through the history file to a point on the new timeline.
    """
    row = conn.execute(
        "SELECT name FROM restore_points WHERE database = current_database() ORDER BY created_at DESC LIMIT 1"
    ).fetchone()
    point = load_restore_point(conn, row[0]) if row else None
    if point is None:
        return None
    usable = [r for r in backups_before(records, point) if not backup_id or r.backup_id == backup_id]
    if not usable:
        return None
    return max(usable, key=lambda r: parse_lsn(r.stop_lsn)), RecoveryTarget("restore_point", point.name), point


def ensure_point_archived(
    conn: psycopg.Connection, archive: Archive, point: RestorePoint, timeout: float = 120.0
) -> None:
    """Switch WAL and wait until the segment holding ``point`` is archived, so a restore can reach it.

    A point captured moments ago (the newest, by the WAL check) sits in the segment being written; without
    this a drill to it ends with "recovery ended before the configured recovery target was reached".
    """
    name = segment_name(point.timeline, segment_number(point.lsn_int))
    if archive.head(archive.wal_manifest_key(name)) is not None:
        return
    conn.execute("SELECT pg_switch_wal()")
    deadline = time.monotonic() + timeout
    while archive.head(archive.wal_manifest_key(name)) is None:
        if time.monotonic() > deadline:
            raise BackupError(
                f"{archive.where(archive.wal_key(name))}, which holds restore point {point.name}, was not archived "
                f"within {timeout:.0f} s; check wal_archive_status."
            )
        time.sleep(0.5)


def checkpoint_restore_point(conn: psycopg.Connection, prefix: str = "check") -> RestorePoint:
    """A restore point with captured checksums now (the 15-minute WAL check makes one per run)."""
    name = f"{prefix}-{datetime.now(UTC).strftime('%Y%m%dT%H%M%S%fZ')}"
    return capture_restore_point(conn, name)


def verified_backup_ids(conn: psycopg.Connection) -> set[str]:
    """Backups a drill verified: replayed to a captured point and compared ("partial" drills do not count)."""
    rows = conn.execute("SELECT DISTINCT backup_id FROM restore_drills WHERE status = 'passed'").fetchall()
    return {r[0] for r in rows}


def latest_drill(conn: psycopg.Connection, backup_id: str) -> dict[str, Any] | None:
    row = conn.execute(
        "SELECT drill_id, passed, status, error, rto_seconds, finished_at FROM restore_drills WHERE backup_id = %s "
        "ORDER BY finished_at DESC LIMIT 1",
        [backup_id],
    ).fetchone()
    if row is None:
        return None
    return dict(zip(["drill_id", "passed", "status", "error", "rto_seconds", "finished_at"], row, strict=True))
