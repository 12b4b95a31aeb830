"""How well WAL archiving protects the cluster right now: failures, freshness, continuity and the real RPO.

RPO is measured, not configured: the bytes between ``pg_current_wal_lsn()`` and the end of the newest segment
in S3, and how long ago that segment was archived if anything newer is unarchived (an upper bound on the age
of the oldest unprotected write). An idle cluster writes almost nothing, so a small unarchived tail that is
older than ``switch_after`` is pushed out with ``pg_switch_wal()`` instead of being reported as stale.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import psycopg

from cqox_platform.backup.archive.records import BackupRecord
from cqox_platform.backup.archive.store import Archive
from cqox_platform.backup.archive.wal_names import (
    HISTORY_RE,
    SEGMENT_RE,
    Segment,
    find_gaps,
    parse_history,
    parse_lsn,
    required_segments,
)
from cqox_platform.backup.wal.segment import read_wal
from cqox_platform.crypto.keys import DataKeyProvider


@dataclass
class WalStatus:
    archived_count: int
    failed_count: int
    last_archived_wal: str | None
    last_archived_time: datetime | None
    last_failed_wal: str | None
    last_failed_time: datetime | None
    timeline: int
    current_lsn: str
    newest_archived_segment: str | None
    newest_archived_age_seconds: float | None
    rpo_bytes: int
    rpo_seconds: float | None
    forced_switch: bool
    segments_in_archive: int
    continuity_from: str | None = None
    continuity_to: str | None = None
    required_segments: int = 0
    gaps: list[str] = field(default_factory=list)
    timelines: list[int] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for key, value in out.items():
            if isinstance(value, datetime):
                out[key] = value.isoformat()
        return out


def _archiver_row(conn: psycopg.Connection) -> dict[str, Any]:
    row = conn.execute(
        "SELECT archived_count, failed_count, last_archived_wal, last_archived_time, last_failed_wal, "
        "last_failed_time, pg_current_wal_lsn()::text, "
        "('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int FROM pg_stat_archiver"
    ).fetchone()
    keys = [
        "archived_count",
        "failed_count",
        "last_archived_wal",
        "last_archived_time",
        "last_failed_wal",
        "last_failed_time",
        "current_lsn",
        "timeline",
    ]
    return dict(zip(keys, row, strict=True))


def _newest_segment(archived: dict[str, int]) -> Segment | None:
    segments = [Segment.parse(n) for n in archived if SEGMENT_RE.match(n)]
    return max(segments, key=lambda s: (s.segno, s.timeline)) if segments else None


def measure(
    conn: psycopg.Connection,
    archive: Archive,
    provider: DataKeyProvider,
    oldest_backup: BackupRecord | None,
    *,
    switch_after: float = 60.0,
    wait_for_archive: float = 30.0,
) -> WalStatus:
    row = _archiver_row(conn)
    archived = archive.archived_wal()
    newest = _newest_segment(archived)
    current = parse_lsn(row["current_lsn"])
    forced = False
    last_time = row["last_archived_time"]
    unarchived = current - newest.end_lsn if newest else current
    age = (datetime.now(UTC) - last_time).total_seconds() if last_time else None
    if unarchived > 0 and (age is None or age > switch_after):
        # An idle tail: push it out rather than report an idle cluster as stale.
        conn.execute("SELECT pg_switch_wal()")
        forced = True
        deadline = time.monotonic() + wait_for_archive
        target_lsn = current
        while time.monotonic() < deadline:
            archived = archive.archived_wal()
            newest = _newest_segment(archived)
            if newest and newest.end_lsn >= target_lsn:
                break
            time.sleep(1)
        row = _archiver_row(conn)
        current = parse_lsn(row["current_lsn"])
        last_time = row["last_archived_time"]
    archived_end = newest.end_lsn if newest else 0
    rpo_bytes = max(0, current - archived_end)
    now = datetime.now(UTC)
    # None: WAL exists that was never archived at all - unbounded, and every check treats it as failing.
    rpo_seconds = (now - last_time).total_seconds() if rpo_bytes and last_time else (None if rpo_bytes else 0.0)
    newest_age = None
    if newest is not None:
        head = archive.head(archive.wal_manifest_key(newest.name))
        if head and head.get("LastModified"):
            newest_age = (now - head["LastModified"]).total_seconds()
    status = WalStatus(
        archived_count=row["archived_count"],
        failed_count=row["failed_count"],
        last_archived_wal=row["last_archived_wal"],
        last_archived_time=last_time,
        last_failed_wal=row["last_failed_wal"],
        last_failed_time=row["last_failed_time"],
        timeline=row["timeline"],
        current_lsn=row["current_lsn"],
        newest_archived_segment=newest.name if newest else None,
        newest_archived_age_seconds=newest_age,
        rpo_bytes=rpo_bytes,
        rpo_seconds=rpo_seconds,
        forced_switch=forced,
        segments_in_archive=sum(1 for n in archived if SEGMENT_RE.match(n)),
    )
    if oldest_backup is not None and newest is not None:
        histories = {
            int(name[:8], 16): parse_history(read_wal(archive, provider, name).decode(), where=archive.where(name))
            for name in archived
            if HISTORY_RE.match(name)
        }
        status.timelines = sorted({1, *histories})
        required = required_segments(
            oldest_backup.timeline,
            parse_lsn(oldest_backup.start_lsn),
            newest.timeline,
            newest.end_lsn - 1,
            histories,
        )
        if required:  # empty when nothing was archived since the backup started: the check fails on that
            status.continuity_from = required[0].name
            status.continuity_to = required[-1].name
            status.required_segments = len(required)
            status.gaps = find_gaps(required, set(archived))
    return status
