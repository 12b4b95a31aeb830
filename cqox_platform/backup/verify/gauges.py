"""The backup gauges pushed to the Pushgateway, as samples built from results (pure; pushing is the caller's).

``deploy/prometheus/backup-alerts.yml`` alerts on these names; keep the two in step.
"""

from __future__ import annotations

from cqox_platform.backup.archive.records import BackupRecord
from cqox_platform.backup.dr_copy import DrCopyResult
from cqox_platform.backup.verify.drill import DrillResult
from cqox_platform.backup.wal.status import WalStatus
from cqox_platform.pushgateway import Sample

#: The Pushgateway job every backup gauge is grouped under (grouping key: ``system_id``).
JOB = "cqox-backups"
#: Pushed as the RPO when nothing was ever archived: far above any alert threshold.
NEVER_ARCHIVED_SECONDS = 1e9


def base_backup_samples(system_id: str, record: BackupRecord) -> list[Sample]:
    labels = {"system_id": system_id}
    return [
        ("cqox_backup_last_success_timestamp_seconds", labels, record.stop_datetime.timestamp()),
        ("cqox_backup_stored_bytes", labels, record.stored_bytes),
        ("cqox_backup_database_bytes", labels, record.database_bytes),
        ("cqox_backup_duration_seconds", labels, record.duration_seconds),
    ]


def wal_samples(system_id: str, status: WalStatus, *, failing: bool) -> list[Sample]:
    labels = {"system_id": system_id}
    rpo = status.rpo_seconds if status.rpo_seconds is not None else NEVER_ARCHIVED_SECONDS
    return [
        ("cqox_wal_rpo_seconds", labels, rpo),
        ("cqox_wal_rpo_bytes", labels, status.rpo_bytes),
        ("cqox_wal_archive_failed_count", labels, status.failed_count),
        ("cqox_wal_archive_failing", labels, 1.0 if failing else 0.0),
        ("cqox_wal_archive_gaps", labels, len(status.gaps)),
        ("cqox_wal_newest_archived_age_seconds", labels, status.newest_archived_age_seconds),
    ]


def drill_samples(system_id: str, result: DrillResult) -> list[Sample]:
    labels = {"system_id": system_id}
    finished = result.finished_at.timestamp() if result.finished_at else 0.0
    return [
        ("cqox_restore_drill_rto_seconds", labels, result.rto_seconds),
        ("cqox_restore_drill_success", labels, 1.0 if result.passed else 0.0),
        ("cqox_restore_drill_last_timestamp_seconds", labels, finished),
    ]


def dr_copy_samples(system_id: str, result: DrCopyResult) -> list[Sample]:
    labels = {"system_id": system_id}
    return [
        ("cqox_backup_dr_lag_seconds", labels, 0.0 if not result.mismatched else result.lag_seconds),
        ("cqox_backup_dr_pending_objects", labels, len(result.mismatched)),
    ]
