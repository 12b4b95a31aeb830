"""The platform's verdicts for repositories kept by other engines (Barman Cloud, pgBackRest).

The same proofs as for the platform's own archive, reused rather than rewritten: a restore point with row
checksums captured on the cluster that archives there (recorded in the platform's ``restore_points`` under the
repository's name), a drill to it (``drill.run_repository_drill``), WAL continuity and the RPO along the current
timeline (``wal.status.measure_repository``), and the recovery window. What an engine cannot give is said, not
faked: Barman keeps no ``backup_manifest``, so no pg_verifybackup; pgBackRest's ``verify`` stands in for it.

Retention is the engine's own (its expire policy deletes); the platform only reports it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import psycopg

from cqox_platform.backup.archive.wal_names import parse_lsn, segment_name, segment_number
from cqox_platform.backup.repository.base import Repository, RepositoryBackup
from cqox_platform.backup.verify.proof import RestorePoint, capture_restore_point
from cqox_platform.backup.wal.status import WalStatus
from cqox_platform.errors import BackupError


def capture_point(source: psycopg.Connection, ledger: psycopg.Connection, repository: Repository) -> RestorePoint:
    """A restore point with checksums on ``source`` (the cluster archiving to ``repository``), kept in ``ledger``."""
    name = f"{repository.name}-{datetime.now(UTC).strftime('%Y%m%dT%H%M%S%fZ')}"
    return capture_restore_point(source, name, ledger=ledger, repository=repository.name)


def ensure_point_archived(
    source: psycopg.Connection, repository: Repository, point: RestorePoint, timeout: float = 120.0
) -> None:
    """Switch WAL on ``source`` and wait until ``repository`` holds the segment with ``point``.

    A point captured moments ago sits in the segment being written; a drill to it would otherwise end with
    "recovery ended before configured recovery target was reached".
    """
    name = segment_name(point.timeline, segment_number(point.lsn_int))
    if name in repository.archived_wal():
        return
    source.execute("SELECT pg_switch_wal()")
    deadline = time.monotonic() + timeout
    while name not in repository.archived_wal():
        if time.monotonic() > deadline:
            raise BackupError(
                f"segment {name}, which holds restore point {point.name}, did not reach {repository.where} within "
                f"{timeout:.0f} s: the cluster's archive_command is failing or stopped (see pg_stat_archiver and "
                "its log)."
            )
        time.sleep(0.5)


def backup_before(backups: list[RepositoryBackup], point: RestorePoint) -> RepositoryBackup | None:
    """The newest backup a restore to ``point`` can start from (finished before it, on its timeline or older)."""
    usable = [b for b in backups if parse_lsn(b.begin_lsn) <= point.lsn_int and b.timeline <= point.timeline]
    return max(usable, key=lambda b: parse_lsn(b.begin_lsn)) if usable else None


@dataclass(frozen=True)
class RecoveryWindow:
    """From the oldest backup's end to now minus the RPO; ``end`` None when the RPO is unbounded."""

    start: datetime | None
    end: datetime | None

    @property
    def seconds(self) -> float | None:
        if self.start is None or self.end is None:
            return None
        return max(0.0, (self.end - self.start).total_seconds())


def recovery_window(backups: list[RepositoryBackup], status: WalStatus, now: datetime | None = None) -> RecoveryWindow:
    """What a restore from this repository can reach: continuous WAL from the oldest backup, up to the RPO.

    A gap in the WAL after the oldest backup (``status.gaps``) makes the window start at the first backup after
    the last missing segment: nothing before it can be replayed to the present.
    """
    now = now or datetime.now(UTC)
    if not backups:
        return RecoveryWindow(None, None)
    start_backups = backups
    if status.gaps:
        last_gap = max(status.gaps)
        start_backups = [b for b in backups if b.begin_wal[8:] > last_gap[8:]]
    start = start_backups[0].end_time if start_backups else None
    end = None if status.rpo_seconds is None else now - timedelta(seconds=status.rpo_seconds)
    return RecoveryWindow(start, end)
