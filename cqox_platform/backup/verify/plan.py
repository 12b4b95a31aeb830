"""Which backup a drill restores and to which point: the three drill modes, decided before anything is restored.

- ``for_backup``: a backup (default the newest) to the restore point captured right after it; what every new
  backup gets.
- ``random``: a random captured point inside the retention window from the newest backup before it; the daily
  drill, so over time every part of the window is proven, not only the newest backup's first minutes.
- ``latest_point``: the newest captured point (after a failover: across the timeline switch), from ``backup_id``
  or the newest backup before it.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import Enum

import psycopg

from cqox_platform.backup.archive.records import BackupRecord
from cqox_platform.backup.archive.store import Archive
from cqox_platform.backup.archive.wal_names import parse_lsn, segment_name, segment_number
from cqox_platform.backup.restore.recovery import RecoveryTarget
from cqox_platform.backup.verify.proof import RestorePoint, backup_point_name, load_restore_point
from cqox_platform.errors import BackupError


class DrillMode(Enum):
    # Member names equal their values: Dagster run config names enum members.
    for_backup = "for_backup"
    random = "random"
    latest_point = "latest_point"


class DrillSource(Enum):
    primary = "primary"
    dr = "dr"


class DrillPlanError(BackupError):
    """No drill can be planned from what is in the archive and the restore points table."""


@dataclass(frozen=True)
class DrillPlan:
    record: BackupRecord
    target: RecoveryTarget
    #: The captured point the restored cluster must match (None: restore to the backup's end, prove it starts).
    expected: RestorePoint | None


def select_backup(records: list[BackupRecord], backup_id: str = "") -> BackupRecord:
    """``backup_id`` among the listed backups, or the newest one (records are listed oldest first)."""
    if not records:
        raise DrillPlanError("no base backup in the archive to drill; materialize postgres_basebackup first.")
    if not backup_id:
        return records[-1]
    for record in records:
        if record.backup_id == backup_id:
            return record
    raise DrillPlanError(f"backup {backup_id} is not in the bucket (deleted by retention?).")


def choose_drill(
    conn: psycopg.Connection,
    records: list[BackupRecord],
    mode: DrillMode,
    *,
    backup_id: str = "",
    retention_days: int = 30,
    rng: random.Random | None = None,
) -> DrillPlan:
    if mode is DrillMode.random:
        plan = plan_random_drill(conn, records, window_days=retention_days, rng=rng or random.Random())
        if plan is None:
            raise DrillPlanError(
                "no captured restore point inside the retention window follows a backup; "
                "materialize wal_archive_status (it captures one per run)."
            )
        return plan
    if mode is DrillMode.latest_point:
        plan = plan_latest_point_drill(conn, records, backup_id)
        if plan is None:
            raise DrillPlanError(
                "no captured restore point follows "
                + (f"backup {backup_id}" if backup_id else "any backup")
                + "; materialize wal_archive_status (it captures one per run)."
            )
        return plan
    return plan_for_backup(conn, select_backup(records, backup_id))


def plan_for_backup(conn: psycopg.Connection, record: BackupRecord) -> DrillPlan:
    """The drill of a new backup: restore to the point captured right after it, else to the backup's end."""
    point = load_restore_point(conn, backup_point_name(record.backup_id))
    if point is None:
        return DrillPlan(record, RecoveryTarget("backup_end"), None)
    return DrillPlan(record, RecoveryTarget("restore_point", point.name), point)


def plan_random_drill(
    conn: psycopg.Connection,
    records: list[BackupRecord],
    *,
    window_days: int,
    rng: random.Random | None = None,
) -> DrillPlan | None:
    """A random captured restore point inside the retention window, and the newest backup before it."""
    rng = rng or random.Random()
    since = datetime.now(UTC) - timedelta(days=window_days)
    rows = conn.execute(
        "SELECT name FROM restore_points WHERE created_at >= %s AND database = current_database() "
        "AND repository = 'cqox' ORDER BY created_at",
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
    return DrillPlan(record, RecoveryTarget("restore_point", point.name), point)


def backups_before(records: list[BackupRecord], point: RestorePoint) -> list[BackupRecord]:
    """Backups a restore to ``point`` can start from: finished before it, on its timeline or an ancestor's."""
    return [r for r in records if parse_lsn(r.stop_lsn) <= point.lsn_int and r.timeline <= point.timeline]


def plan_latest_point_drill(
    conn: psycopg.Connection, records: list[BackupRecord], backup_id: str = ""
) -> DrillPlan | None:
    """The newest captured restore point, from ``backup_id`` (or the newest backup before it).

    After a failover this is the drill that proves a restore crosses the timeline switch: an old timeline's
    backup replayed through the history file to a point on the new timeline.
    """
    row = conn.execute(
        "SELECT name FROM restore_points WHERE database = current_database() AND repository = 'cqox' "
        "ORDER BY created_at DESC LIMIT 1"
    ).fetchone()
    point = load_restore_point(conn, row[0]) if row else None
    if point is None:
        return None
    usable = [r for r in backups_before(records, point) if not backup_id or r.backup_id == backup_id]
    if not usable:
        return None
    record = max(usable, key=lambda r: parse_lsn(r.stop_lsn))
    return DrillPlan(record, RecoveryTarget("restore_point", point.name), point)


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
