"""Retention: which backups and WAL files may go, decided by a pure plan that a dry run prints.

Count and time, as pgBackRest does it (``repo-retention-full`` with ``repo-retention-full-type``), and never
fewer than it promises:

- the newest ``keep_full`` complete backups stay, however old (pgBackRest's count retention; at least 1);
- every backup that finished inside the ``keep_days`` window stays, and so does the newest one that finished
  before the window opened, since only it can restore a point at the window's start (pgBackRest's time
  retention keeps "enough backups to restore to any point in the window" the same way);
- the newest backup a drill verified stays, however old: if every newer one turns out unrestorable, it is the
  one that restores;
- WAL stays from the oldest kept backup's start segment on (on any timeline), and history files always.

``keep_days`` and ``keep_full`` below 1 are refused here, not only in the asset's config: a plan that may delete
every backup is never computed. Objects are deleted by keys derived from the backup id (the record's own
``object_key`` and ``manifest_key`` are never trusted), record first, so a backup stops being listed before
any of its objects disappear.

``expire`` is the one retention run: ``backup_retention`` (the asset) and ``backup expire`` (the CLI) both call
it and differ only in how they show its result. ``backups_dr_retention`` applies the same rules and gate to the
DR region's copy (``expire_archive``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from cqox_platform.backup.archive.cluster import cluster_archive
from cqox_platform.backup.archive.history import retire_backups
from cqox_platform.backup.archive.records import BackupRecord, list_backups
from cqox_platform.backup.archive.store import Archive
from cqox_platform.backup.archive.wal_names import BACKUP_HISTORY_RE, PARTIAL_RE, SEGMENT_RE, Segment
from cqox_platform.backup.verify.checks import CheckVerdict, retention_gate
from cqox_platform.backup.verify.drill import latest_drill, verified_backup_ids
from cqox_platform.crypto.envelope import MANIFEST_SUFFIX
from cqox_platform.errors import BackupError

#: pgBackRest's default is unset (it warns); two full backups is what its documentation's examples keep.
DEFAULT_KEEP_FULL = 2
DEFAULT_KEEP_DAYS = 30


class RetentionError(BackupError):
    """A retention setting would allow deleting every backup; nothing was planned or deleted."""


def check_retention(keep_days: int, keep_full: int) -> None:
    if keep_days < 1:
        raise RetentionError(
            f"keep_days is {keep_days}: it must be at least 1 day (0 or less would put every backup outside the "
            "window); set backup_retention's keep_days (or `backup expire --keep-days`) to 1 or more."
        )
    if keep_full < 1:
        raise RetentionError(
            f"keep_full is {keep_full}: at least 1 complete backup must always stay; set keep_full to 1 or more."
        )


@dataclass
class RetentionPlan:
    keep: list[BackupRecord] = field(default_factory=list)
    delete: list[BackupRecord] = field(default_factory=list)
    reasons: dict[str, str] = field(default_factory=dict)
    wal_delete: list[str] = field(default_factory=list)
    wal_keep_from: str | None = None
    keep_days: int = DEFAULT_KEEP_DAYS
    keep_full: int = DEFAULT_KEEP_FULL

    def rows(self) -> list[dict[str, str]]:
        """One row per backup, oldest first: what happens to it and why (``backup expire`` prints these)."""
        kept = {r.backup_id for r in self.keep}
        every = sorted([*self.keep, *self.delete], key=lambda r: r.backup_id)
        return [
            {
                "backup_id": r.backup_id,
                "stop_time": r.stop_time,
                "action": "keep" if r.backup_id in kept else "delete",
                "reason": self.reasons[r.backup_id],
            }
            for r in every
        ]

    def summary(self) -> dict[str, object]:
        return {
            "keep_days": self.keep_days,
            "keep_full": self.keep_full,
            "keep": [r.backup_id for r in self.keep],
            "delete": [r.backup_id for r in self.delete],
            "reasons": self.reasons,
            "backups": self.rows(),
            "wal_delete_count": len(self.wal_delete),
            "wal_keep_from": self.wal_keep_from,
        }


def _segment_of(name: str) -> Segment | None:
    if SEGMENT_RE.match(name):
        return Segment.parse(name)
    if PARTIAL_RE.match(name) or BACKUP_HISTORY_RE.match(name):
        return Segment.parse(name[:24])
    return None  # history files are always kept


def _keep_reasons(
    records: list[BackupRecord], verified: set[str], cutoff: datetime, keep_days: int, keep_full: int
) -> dict[str, list[str]]:
    """backup id -> every reason it stays (records sorted oldest first)."""
    reasons: dict[str, list[str]] = {}
    for record in records[-keep_full:]:
        reasons.setdefault(record.backup_id, []).append(f"one of the newest {keep_full} complete backups")
    for record in records:
        if record.stop_datetime >= cutoff:
            reasons.setdefault(record.backup_id, []).append(f"finished inside the {keep_days}-day window")
    before = [r for r in records if r.stop_datetime < cutoff]
    if before:
        reasons.setdefault(before[-1].backup_id, []).append(
            f"newest backup before the {keep_days}-day window: restores its first points"
        )
    newest_verified = [r for r in records if r.backup_id in verified]
    if newest_verified:
        reasons.setdefault(newest_verified[-1].backup_id, []).append("newest verified backup (kept whatever its age)")
    return reasons


def plan_retention(
    records: list[BackupRecord],
    verified: set[str],
    archived_wal: list[str],
    *,
    now: datetime,
    keep_days: int,
    keep_full: int = DEFAULT_KEEP_FULL,
) -> RetentionPlan:
    check_retention(keep_days, keep_full)
    plan = RetentionPlan(keep_days=keep_days, keep_full=keep_full)
    cutoff = now - timedelta(days=keep_days)
    ordered = sorted(records, key=lambda r: r.backup_id)
    keeps = _keep_reasons(ordered, verified, cutoff, keep_days, keep_full)
    for record in ordered:
        if record.backup_id in keeps:
            plan.keep.append(record)
            plan.reasons[record.backup_id] = "; ".join(keeps[record.backup_id])
        else:
            plan.delete.append(record)
            plan.reasons[record.backup_id] = (
                f"finished {record.stop_time}, before the window ({cutoff.isoformat()}); not among the newest "
                f"{keep_full}, not the newest verified, and a newer backup covers the window's start"
            )
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
    """Delete what the plan says; returns the number of objects deleted.

    Keys come from the backup id alone (``Archive.backup_*_key`` validate it): a damaged or forged
    ``backup.json`` naming another backup's objects cannot make retention delete them.
    """
    deleted = 0
    for record in plan.delete:
        backup_id = record.backup_id
        for key in (
            archive.backup_record_key(backup_id),
            archive.backup_manifest_key(backup_id),
            archive.backup_data_key(backup_id),
        ):
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


@dataclass(frozen=True)
class Expiry:
    """One retention run: its plan, whether it only planned, and how many objects it deleted from where."""

    plan: RetentionPlan
    #: The verdict on the newest backup in the archive at deletion time, naming the drill that verified it.
    gate: CheckVerdict
    dry_run: bool
    objects_deleted: int
    where: str  # the cluster's archive prefix (s3://bucket/root/)


class RetentionGateError(RetentionError):
    """Retention deleted nothing: the newest backup in the archive has no passing drill yet."""

    def __init__(self, gate: CheckVerdict) -> None:
        super().__init__(f"retention deleted nothing: {gate.description}")
        self.gate = gate


def expire(
    conn: psycopg.Connection,
    s3: Any,
    bucket: str,
    *,
    keep_days: int = DEFAULT_KEEP_DAYS,
    keep_full: int = DEFAULT_KEEP_FULL,
    dry_run: bool = False,
    now: datetime | None = None,
) -> Expiry:
    """Apply retention to the archive of the cluster behind ``conn`` (its admin connection, autocommit).

    Steps: refuse settings that could delete every backup, list the backups, plan against the drills' verdicts
    and the archived WAL, then (unless ``dry_run``) delete what the plan says and record the deletions in the
    ``backups`` table.
    """
    check_retention(keep_days, keep_full)
    archive = cluster_archive(conn, s3, bucket)
    return expire_archive(
        conn, archive, keep_days=keep_days, keep_full=keep_full, dry_run=dry_run, now=now, record_deletions=True
    )


def expire_archive(
    conn: psycopg.Connection,
    archive: Archive,
    *,
    keep_days: int = DEFAULT_KEEP_DAYS,
    keep_full: int = DEFAULT_KEEP_FULL,
    dry_run: bool = False,
    now: datetime | None = None,
    record_deletions: bool = False,
) -> Expiry:
    """``expire`` on one copy of the archive: the primary's, or the DR region's with its writer's client.

    The same rules and the same gate on every copy: the plan is computed from this copy's own backups and WAL
    (a DR copy that lags keeps what it holds of the window) against the drills' verdicts, whichever copy the
    drills restored from. Only the primary's run records deletions in the ``backups`` table (it lists the
    primary's backups); a DR run changes nothing in the database.
    """
    check_retention(keep_days, keep_full)
    records = list_backups(archive)
    # Read at deletion time: a backup taken since the last drill check (by the schedule, or `backup create`
    # outside Dagster) has no drill yet, and nothing may go until one verifies it.
    newest = records[-1].backup_id if records else None
    gate = retention_gate(newest, latest_drill(conn, newest, passed_only=True) if newest else None)
    if not gate.passed and not dry_run:
        raise RetentionGateError(gate)
    plan = plan_retention(
        records,
        verified_backup_ids(conn),
        archived_wal_names(archive),
        now=now or datetime.now(UTC),
        keep_days=keep_days,
        keep_full=keep_full,
    )
    deleted = 0
    if not dry_run:
        deleted = apply_retention(archive, plan)
        if record_deletions:
            retire_backups(conn, records, plan.delete)
    return Expiry(plan, gate, dry_run, deleted, archive.where(archive.root + "/"))
