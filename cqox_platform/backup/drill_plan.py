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
from dataclasses import dataclass
from enum import Enum

import psycopg

from cqox_platform.backup.basebackup import BackupError
from cqox_platform.backup.operations import plan_for_backup, plan_latest_point_drill, plan_random_drill
from cqox_platform.backup.proof import RestorePoint
from cqox_platform.backup.records import BackupRecord
from cqox_platform.backup.restore import RecoveryTarget


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
        return DrillPlan(*plan)
    if mode is DrillMode.latest_point:
        plan = plan_latest_point_drill(conn, records, backup_id)
        if plan is None:
            raise DrillPlanError(
                "no captured restore point follows "
                + (f"backup {backup_id}" if backup_id else "any backup")
                + "; materialize wal_archive_status (it captures one per run)."
            )
        return DrillPlan(*plan)
    record = select_backup(records, backup_id)
    target, expected = plan_for_backup(conn, record)
    return DrillPlan(record, target, expected)
