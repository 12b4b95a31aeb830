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
from typing import Any

import psycopg

from cqox_platform.backup.archive.wal_names import parse_lsn, segment_name, segment_number
from cqox_platform.backup.repository.base import Repository, RepositoryBackup
from cqox_platform.backup.verify.proof import RestorePoint, capture_restore_point
from cqox_platform.backup.wal.status import WalStatus, measure_repository
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


def latest_repository_drill(ledger: psycopg.Connection, repository: str) -> dict[str, Any] | None:
    """The newest drill recorded for ``repository``, whatever its status."""
    row = ledger.execute(
        "SELECT drill_id, backup_id, status, error, rto_seconds, finished_at FROM restore_drills "
        "WHERE repository = %s ORDER BY finished_at DESC LIMIT 1",
        [repository],
    ).fetchone()
    if row is None:
        return None
    return dict(zip(["drill_id", "backup_id", "status", "error", "rto_seconds", "finished_at"], row, strict=True))


def repository_summary(
    repository: Repository,
    source: psycopg.Connection,
    ledger: psycopg.Connection,
    rpo_target_seconds: float,
    now: datetime | None = None,
) -> dict[str, Any]:
    """One repository side by side with the platform's own copies: its backups, latest drill and RTO, RPO,
    WAL continuity and recovery window, and why it is at risk (``reasons``, empty when it is not).

    Read-only: no WAL switch is forced on the source (``switch_after`` infinite), so an idle tail shows as RPO.
    """
    now = now or datetime.now(UTC)
    backups = repository.list_backups()
    status = measure_repository(source, repository, backups[0] if backups else None, switch_after=float("inf"))
    window = recovery_window(backups, status, now)
    drill = latest_repository_drill(ledger, repository.name)
    reasons = []
    if not backups:
        reasons.append(f"{repository.name}: no backup in {repository.where}")
    if drill is None or drill["status"] != "passed":
        state = "never drilled" if drill is None else f"last drill {drill['status']}"
        reasons.append(f"{repository.name}: {state}")
    elif backups and drill["backup_id"] != backups[-1].backup_id:
        reasons.append(f"{repository.name}: newest backup {backups[-1].backup_id} not drilled yet")
    if status.gaps:
        reasons.append(f"{repository.name}: {len(status.gaps)} WAL segment(s) missing, first {status.gaps[0]}")
    if status.rpo_seconds is None or status.rpo_seconds > rpo_target_seconds:
        rpo = "unbounded" if status.rpo_seconds is None else f"{status.rpo_seconds:.0f} s"
        reasons.append(f"{repository.name}: RPO {rpo} above the {rpo_target_seconds:.0f} s target")
    return {
        "name": repository.name,
        "engine": repository.engine,
        "where": repository.where,
        "backups": len(backups),
        "newest_backup": backups[-1].backup_id if backups else None,
        "latest_drill": None
        if drill is None
        else {**drill, "finished_at": drill["finished_at"].isoformat() if drill["finished_at"] else None},
        "rpo_seconds": status.rpo_seconds,
        "rpo_bytes": status.rpo_bytes,
        "wal_gaps": status.gaps[:50],
        "recovery_window": {
            "start": window.start.isoformat() if window.start else None,
            "end": window.end.isoformat() if window.end else None,
        },
        "reasons": reasons,
    }
