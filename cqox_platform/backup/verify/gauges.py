"""The backup gauges pushed to the Pushgateway, as samples built from results (pure; pushing is the caller's).

``cqox_platform/alerts/backup-alerts.yml`` alerts on these names and ``cqox_platform/dashboards`` charts them;
the names are constants here so the dashboards import them instead of copying them.
"""

from __future__ import annotations

from collections.abc import Sequence

from cqox_platform.backup.archive.records import BackupRecord
from cqox_platform.backup.dr_copy import DrCopyResult
from cqox_platform.backup.verify.drill import DrillResult
from cqox_platform.backup.verify.info import CopyInfo
from cqox_platform.backup.wal.status import WalStatus
from cqox_platform.pushgateway import Sample

#: The Pushgateway job every backup gauge is grouped under (grouping key: ``system_id``).
JOB = "cqox-backups"
#: Pushed as the RPO when nothing was ever archived: far above any alert threshold.
NEVER_ARCHIVED_SECONDS = 1e9

BACKUP_LAST_SUCCESS = "cqox_backup_last_success_timestamp_seconds"
BACKUP_STORED_BYTES = "cqox_backup_stored_bytes"
BACKUP_DATABASE_BYTES = "cqox_backup_database_bytes"
BACKUP_DURATION = "cqox_backup_duration_seconds"
WAL_RPO_SECONDS = "cqox_wal_rpo_seconds"
WAL_RPO_BYTES = "cqox_wal_rpo_bytes"
WAL_ARCHIVE_FAILED_COUNT = "cqox_wal_archive_failed_count"
WAL_ARCHIVE_FAILING = "cqox_wal_archive_failing"
WAL_ARCHIVE_GAPS = "cqox_wal_archive_gaps"
WAL_NEWEST_ARCHIVED_AGE = "cqox_wal_newest_archived_age_seconds"
#: The first instant a restore can reach: the oldest retained backup's end (the recovery window's start, as
#: ``backup info`` measures it; its end is "now minus the RPO").
RECOVERY_WINDOW_START = "cqox_recovery_window_start_timestamp_seconds"
#: Per copy (label ``copy``: ``primary`` or ``dr``), as ``backup info`` shows them: the first instant a restore from
#: that copy alone reaches (the oldest kept backup a drill verified whose own WAL the copy holds) and the last (the
#: end of the newest WAL archived there on the current timeline's path). The latest is 0 when the copy's window has
#: no end, so "how far behind" reads as decades and alerts; the earliest is left out when no backup qualifies.
RECOVERY_WINDOW_EARLIEST = "cqox_recovery_window_earliest_timestamp_seconds"
RECOVERY_WINDOW_LATEST = "cqox_recovery_window_latest_timestamp_seconds"
DRILL_RTO_SECONDS = "cqox_restore_drill_rto_seconds"
DRILL_SUCCESS = "cqox_restore_drill_success"
DRILL_LAST_TIMESTAMP = "cqox_restore_drill_last_timestamp_seconds"
DR_LAG_SECONDS = "cqox_backup_dr_lag_seconds"
DR_PENDING_OBJECTS = "cqox_backup_dr_pending_objects"


def base_backup_samples(system_id: str, record: BackupRecord) -> list[Sample]:
    labels = {"system_id": system_id}
    return [
        (BACKUP_LAST_SUCCESS, labels, record.stop_datetime.timestamp()),
        (BACKUP_STORED_BYTES, labels, record.stored_bytes),
        (BACKUP_DATABASE_BYTES, labels, record.database_bytes),
        (BACKUP_DURATION, labels, record.duration_seconds),
    ]


def wal_samples(
    system_id: str, status: WalStatus, *, failing: bool, oldest: BackupRecord | None = None
) -> list[Sample]:
    """The WAL gauges, and the recovery window's start when there is a backup (``oldest``, the oldest retained);
    without one nothing is pushed for it, so the window reads as "no data", not as a window from 1970."""
    labels = {"system_id": system_id}
    rpo = status.rpo_seconds if status.rpo_seconds is not None else NEVER_ARCHIVED_SECONDS
    samples: list[Sample] = [
        (WAL_RPO_SECONDS, labels, rpo),
        (WAL_RPO_BYTES, labels, status.rpo_bytes),
        (WAL_ARCHIVE_FAILED_COUNT, labels, status.failed_count),
        (WAL_ARCHIVE_FAILING, labels, 1.0 if failing else 0.0),
        (WAL_ARCHIVE_GAPS, labels, len(status.gaps)),
        (WAL_NEWEST_ARCHIVED_AGE, labels, status.newest_archived_age_seconds),
    ]
    if oldest is not None:
        samples.append((RECOVERY_WINDOW_START, labels, oldest.stop_datetime.timestamp()))
    return samples


def drill_samples(system_id: str, result: DrillResult) -> list[Sample]:
    labels = {"system_id": system_id}
    finished = result.finished_at.timestamp() if result.finished_at else 0.0
    return [
        (DRILL_RTO_SECONDS, labels, result.rto_seconds),
        (DRILL_SUCCESS, labels, 1.0 if result.passed else 0.0),
        (DRILL_LAST_TIMESTAMP, labels, finished),
    ]


def dr_copy_samples(system_id: str, result: DrCopyResult) -> list[Sample]:
    labels = {"system_id": system_id}
    return [
        (DR_LAG_SECONDS, labels, 0.0 if not result.mismatched else result.lag_seconds),
        (DR_PENDING_OBJECTS, labels, len(result.mismatched)),
    ]


def for_repository(repository: str, samples: list[Sample]) -> list[Sample]:
    """``samples`` labelled with the repository they measure: the same names, so the same alerts and dashboards
    cover every repository, one series each (the platform's own archive carries no label, as before)."""
    return [(name, {**labels, "repository": repository}, value) for name, labels, value in samples]


def recovery_window_samples(system_id: str, copies: list[CopyInfo], unreadable: Sequence[str] = ()) -> list[Sample]:
    """The recovery window of each copy (``backup info``'s), labelled by copy.

    A copy that could not be read (``unreadable``, by name) gets a latest instant of 0: a push replaces every series
    of a metric name in the group, so leaving it out would delete its series and silence its alert; nothing known
    about a copy reads as a window that ends nowhere, which pages.
    """
    samples: list[Sample] = []
    for copy in copies:
        labels = {"system_id": system_id, "copy": copy.name}
        window = copy.window
        if window.earliest_verified is not None:
            samples.append((RECOVERY_WINDOW_EARLIEST, labels, window.earliest_verified.timestamp()))
        samples.append((RECOVERY_WINDOW_LATEST, labels, window.latest.timestamp() if window.latest else 0.0))
    for name in unreadable:
        samples.append((RECOVERY_WINDOW_LATEST, {"system_id": system_id, "copy": name}, 0.0))
    return samples
