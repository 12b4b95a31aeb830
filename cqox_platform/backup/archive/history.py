"""The bookkeeping tables as the operator reads them: recent drill RTOs, retired backups, and which backups still
wait for their drill.

The drill timings feed the RTO chart in restore_drill's metadata; ``retire_backups`` is retention's last step in
the database (the objects are already gone from the archive by then, so the table never lists a backup that cannot
restore).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import psycopg

from cqox_platform.backup.archive.records import BackupRecord, sync_backups_table


@dataclass(frozen=True)
class DrillTiming:
    rto_seconds: float
    restore_seconds: float  # download + decrypt + extract
    replay_seconds: float
    passed: bool


def recent_drill_timings(conn: psycopg.Connection, limit: int = 30) -> list[DrillTiming]:
    """The last ``limit`` drills, oldest first."""
    rows = conn.execute(
        "SELECT rto_seconds, download_seconds + decrypt_seconds + extract_seconds, replay_seconds, passed "
        "FROM restore_drills WHERE repository = 'cqox' ORDER BY finished_at DESC LIMIT %s",
        [limit],
    ).fetchall()
    return [DrillTiming(*row) for row in reversed(rows)]


def undrilled_backups(conn: psycopg.Connection, system_id: str, *, since: datetime) -> list[str]:
    """Backups of the cluster in the table (not retired) that finished since ``since`` and have no drill of any
    outcome yet, newest first: what the drill sensor requests, whoever took the backup (Dagster or the CLI)."""
    rows = conn.execute(
        "SELECT b.backup_id FROM backups b WHERE b.system_id = %s AND b.deleted_at IS NULL AND b.stop_time >= %s "
        "AND NOT EXISTS (SELECT 1 FROM restore_drills d WHERE d.backup_id = b.backup_id AND d.repository = 'cqox') "
        "ORDER BY b.backup_id DESC",
        [system_id, since],
    ).fetchall()
    return [r[0] for r in rows]


def retire_backups(conn: psycopg.Connection, listed: list[BackupRecord], deleted: list[BackupRecord]) -> None:
    """After retention deleted ``deleted`` from the archive: the table keeps the rest and dates the deletions."""
    sync_backups_table(conn, [r for r in listed if r not in deleted])
    conn.execute("UPDATE backups SET deleted_at = now() WHERE backup_id = ANY(%s)", [[r.backup_id for r in deleted]])
