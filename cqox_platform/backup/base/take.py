"""Take a base backup of a live cluster: one at a time, recorded in ``backups``, with a restore point after it.

The connection is the platform's admin connection to the CQOX database (autocommit): pg_basebackup, restore
points and ``pg_switch_wal`` need a superuser or replication role.
"""

from __future__ import annotations

from collections.abc import Callable

import psycopg

from cqox_platform.backup.archive.records import BackupRecord, upsert_backup
from cqox_platform.backup.archive.store import Archive
from cqox_platform.backup.base.create import create_base_backup
from cqox_platform.backup.verify.proof import RestorePoint, backup_point_name, capture_restore_point
from cqox_platform.crypto.keys import DataKeyProvider
from cqox_platform.errors import BackupError

#: Session advisory lock held for the whole base backup: one backup per cluster at a time.
BACKUP_LOCK_KEY = 0x0C0_B4C4

Progress = Callable[[str], None]


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
        # A restore's room check bounds the WAL its replay keeps in pg_wal by this (backup.restore.space).
        max_wal_size = int(conn.execute("SELECT pg_size_bytes(current_setting('max_wal_size'))").fetchone()[0])
        record = create_base_backup(
            archive,
            provider,
            dsn=dsn,
            pg_basebackup=pg_basebackup,
            pg_version=version,
            estimate_bytes=estimate,
            max_wal_size_bytes=max_wal_size,
            progress=progress,
        )
        upsert_backup(conn, record)
        point = capture_restore_point(conn, backup_point_name(record.backup_id))
        conn.execute("SELECT pg_switch_wal()")  # archive the restore point now, not at archive_timeout
        return record, point
    finally:
        conn.execute("SELECT pg_advisory_unlock(%s)", [BACKUP_LOCK_KEY])
