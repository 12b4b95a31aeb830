"""Retention: which backups and WAL files may go, decided by a pure plan that a dry run prints.

Rules: keep every backup that finished inside the window; never delete the newest backup a drill verified,
however old; never delete WAL that a kept backup needs (anything from the oldest kept backup's start segment
on, on any timeline) nor any timeline history file. Deleting goes record first, so a backup stops being
listed before any of its objects disappear.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from cqox_platform.backup.archive import Archive
from cqox_platform.backup.records import BackupRecord
from cqox_platform.backup.walnames import BACKUP_HISTORY_RE, PARTIAL_RE, SEGMENT_RE, Segment
from cqox_platform.crypto.envelope import MANIFEST_SUFFIX


@dataclass
class RetentionPlan:
    keep: list[BackupRecord] = field(default_factory=list)
    delete: list[BackupRecord] = field(default_factory=list)
    reasons: dict[str, str] = field(default_factory=dict)
    wal_delete: list[str] = field(default_factory=list)
    wal_keep_from: str | None = None

    def summary(self) -> dict[str, object]:
        return {
            "keep": [r.backup_id for r in self.keep],
            "delete": [r.backup_id for r in self.delete],
            "reasons": self.reasons,
            "wal_delete_count": len(self.wal_delete),
            "wal_keep_from": self.wal_keep_from,
        }


def _segment_of(name: str) -> Segment | None:
    if SEGMENT_RE.match(name):
        return Segment.parse(name)
    if PARTIAL_RE.match(name) or BACKUP_HISTORY_RE.match(name):
        return Segment.parse(name[:24])
    return None  # history files are always kept


def plan_retention(
    records: list[BackupRecord],
    verified: set[str],
    archived_wal: list[str],
    *,
    now: datetime,
    keep_days: int,
) -> RetentionPlan:
    plan = RetentionPlan()
    cutoff = now - timedelta(days=keep_days)
    newest_verified = max((r for r in records if r.backup_id in verified), key=lambda r: r.backup_id, default=None)
    for record in sorted(records, key=lambda r: r.backup_id):
        if record.stop_datetime >= cutoff:
            plan.keep.append(record)
            plan.reasons[record.backup_id] = f"inside the {keep_days}-day window"
        elif newest_verified is not None and record.backup_id == newest_verified.backup_id:
            plan.keep.append(record)
            plan.reasons[record.backup_id] = "newest verified backup (kept whatever its age)"
        else:
            plan.delete.append(record)
            plan.reasons[record.backup_id] = f"finished {record.stop_time}, before {cutoff.isoformat()}"
    if plan.keep:
        oldest = min(plan.keep, key=lambda r: Segment.parse(r.start_wal).segno)
        keep_from = Segment.parse(oldest.start_wal).segno
        plan.wal_keep_from = oldest.start_wal
        for name in sorted(archived_wal):
            segment = _segment_of(name)
            if segment is not None and segment.segno < keep_from:
                plan.wal_delete.append(name)
    return plan


def apply_retention(archive: Archive, plan: RetentionPlan) -> int:
    """Delete what the plan says; returns the number of objects deleted."""
    deleted = 0
    for record in plan.delete:
        for key in (archive.backup_record_key(record.backup_id), record.manifest_key, record.object_key):
            archive.delete(key)
            deleted += 1
    for name in plan.wal_delete:
        archive.delete(archive.wal_manifest_key(name))
        archive.delete(archive.wal_key(name))
        deleted += 2
    return deleted


def archived_wal_names(archive: Archive) -> list[str]:
    """WAL file names in the archive (segments, partials, history files), from their manifests, sorted."""
    keys = (o["Key"] for o in archive.list(f"{archive.root}/wal/"))
    return sorted({key.rsplit("/", 1)[1].removesuffix(MANIFEST_SUFFIX) for key in keys})
