"""How well WAL archiving protects the cluster right now: failures, freshness, continuity and the real RPO.

Everything is measured along the cluster's *current* timeline, as a restore with ``recovery_target_timeline =
'latest'`` would replay it: its ancestors up to their switch points (its ``.history`` file in the archive), then
its own segments. Segments of an old timeline archived past the switch (a promoted restore, or an old leader that
went on archiving after a failover) and other branches protect nothing written now, however high their numbers.

RPO is measured, not configured: the bytes between ``pg_current_wal_lsn()`` and the end of the newest segment
on that path in S3, and how long ago S3 received that segment if anything newer is unarchived (an upper bound
on the age of the oldest unprotected write). WAL of the current timeline with nothing of it in S3 has no bound
at all. An idle cluster writes almost nothing, so a small unarchived tail whose newest archived segment is
older than ``switch_after`` is pushed out with ``pg_switch_wal()`` instead of being reported as stale.
"""

from __future__ import annotations

import time
from collections.abc import Callable
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
    TimelineSwitch,
    WalNameError,
    find_gaps,
    format_lsn,
    newest_on_path,
    parse_history,
    parse_lsn,
    required_segments,
)
from cqox_platform.backup.repository.base import Repository, RepositoryBackup
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
    #: PostgreSQL's ``archive_mode``: with "off" nothing is archived, whatever the archive holds.
    archive_mode: str
    #: Where the current timeline branched off its parent (``0/0`` on timeline 1).
    timeline_start_lsn: str
    #: The current timeline's ``.history`` file is in the archive (always true on timeline 1): without it a
    #: restore cannot follow the cluster onto its timeline.
    timeline_history_archived: bool
    continuity_from: str | None = None
    continuity_to: str | None = None
    required_segments: int = 0
    gaps: list[str] = field(default_factory=list)
    timelines: list[int] = field(default_factory=list)
    #: Why continuity could not be walked (the oldest backup is not on the current timeline's path, say).
    continuity_error: str | None = None

    @property
    def archived_on_timeline(self) -> bool:
        """Some segment of the current timeline itself is in the archive (not only its ancestors')."""
        newest = self.newest_archived_segment
        return newest is not None and Segment.parse(newest).timeline == self.timeline

    @property
    def archiving_enabled(self) -> bool:
        return self.archive_mode in ("on", "always")

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
        "('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int, "
        "current_setting('archive_mode') FROM pg_stat_archiver"
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
        "archive_mode",
    ]
    return dict(zip(keys, row, strict=True))


def unprotected(
    current_lsn: int, timeline: int, newest: Segment | None, newest_age: float | None
) -> tuple[int, float | None]:
    """``(rpo_bytes, rpo_seconds)``: WAL written up to ``current_lsn`` on ``timeline`` that S3 does not hold.

    ``newest`` is the newest archived segment on ``timeline``'s path (``newest_on_path``), ``newest_age`` the
    seconds since S3 received it. Seconds are None (unbounded) when unarchived WAL exists and nothing of
    ``timeline`` itself was ever archived: every write since its switch point is unprotected, for however
    long the timeline has existed.
    """
    rpo_bytes = max(0, current_lsn - (newest.end_lsn if newest else 0))
    if not rpo_bytes:
        return 0, 0.0
    if newest is None or newest.timeline != timeline:
        return rpo_bytes, None
    return rpo_bytes, newest_age


def _histories(
    archive: Archive, provider: DataKeyProvider, archived: dict[str, int]
) -> dict[int, list[TimelineSwitch]]:
    return {
        int(name[:8], 16): parse_history(read_wal(archive, provider, name).decode(), where=archive.where(name))
        for name in archived
        if HISTORY_RE.match(name)
    }


def _age(archive: Archive, segment: Segment | None) -> float | None:
    """Seconds since S3 stored ``segment``'s manifest (what makes it count as archived), None if unknown."""
    if segment is None:
        return None
    head = archive.head(archive.wal_manifest_key(segment.name))
    if not head or not head.get("LastModified"):
        return None
    # S3's clock may run ahead of ours: a segment stored "in the future" was stored just now, not -2 s ago.
    return max(0.0, (datetime.now(UTC) - head["LastModified"]).total_seconds())


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
    timeline = row["timeline"]
    archived = archive.archived_wal()
    histories = _histories(archive, provider, archived)
    ancestry: list[TimelineSwitch] = histories.get(timeline, [])
    newest = newest_on_path(archived, timeline, ancestry)
    newest_age = _age(archive, newest)
    current = parse_lsn(row["current_lsn"])
    own_age = newest_age if newest is not None and newest.timeline == timeline else None
    forced = (
        row["archive_mode"] in ("on", "always")
        and current > (newest.end_lsn if newest else 0)
        and (own_age is None or own_age > switch_after)
    )
    if forced:  # an idle tail, or a timeline with nothing archived yet: push it out rather than guess
        conn.execute("SELECT pg_switch_wal()")
        archived, newest = _wait_archived(archive.archived_wal, timeline, ancestry, current, wait_for_archive)
        row = _archiver_row(conn)
        current = parse_lsn(row["current_lsn"])
        newest_age = _age(archive, newest)
    rpo_bytes, rpo_seconds = unprotected(current, timeline, newest, newest_age)
    status = WalStatus(
        archived_count=row["archived_count"],
        failed_count=row["failed_count"],
        last_archived_wal=row["last_archived_wal"],
        last_archived_time=row["last_archived_time"],
        last_failed_wal=row["last_failed_wal"],
        last_failed_time=row["last_failed_time"],
        timeline=timeline,
        current_lsn=row["current_lsn"],
        newest_archived_segment=newest.name if newest else None,
        newest_archived_age_seconds=newest_age,
        rpo_bytes=rpo_bytes,
        rpo_seconds=rpo_seconds,
        forced_switch=forced,
        segments_in_archive=sum(1 for n in archived if SEGMENT_RE.match(n)),
        archive_mode=row["archive_mode"],
        timeline_start_lsn=format_lsn(ancestry[-1].switch_lsn if ancestry else 0),
        timeline_history_archived=timeline == 1 or timeline in histories,
        timelines=sorted({1, *histories}),
    )
    if oldest_backup is not None and newest is not None:
        _walk_continuity(status, oldest_backup, newest, histories, set(archived))
    return status


def _wait_archived(
    list_archived: Callable[[], dict[str, Any]],
    timeline: int,
    ancestry: list[TimelineSwitch],
    target_lsn: int,
    timeout: float,
) -> tuple[dict[str, Any], Segment | None]:
    """The listing (``list_archived``: an archive's or a repository's) and the newest segment on the path once it
    reaches ``target_lsn`` (or at ``timeout``)."""
    deadline = time.monotonic() + timeout
    while True:
        archived = list_archived()
        newest = newest_on_path(archived, timeline, ancestry)
        if (newest and newest.end_lsn >= target_lsn) or time.monotonic() >= deadline:
            return archived, newest
        time.sleep(1)


def measure_repository(
    conn: psycopg.Connection,
    repository: Repository,
    oldest_backup: RepositoryBackup | None,
    *,
    switch_after: float = 60.0,
    wait_for_archive: float = 30.0,
) -> WalStatus:
    """``measure`` for another engine's repository: the same RPO and continuity along the current timeline, from
    the names and storage times its engine lists (``Repository.archived_wal``) and the history files it fetches.

    ``conn`` reaches the cluster that archives there (its ``pg_stat_archiver`` and current LSN).
    """
    row = _archiver_row(conn)
    timeline = row["timeline"]
    archived = repository.archived_wal()
    histories = _repository_histories(repository, archived)
    ancestry: list[TimelineSwitch] = histories.get(timeline, [])
    newest = newest_on_path(archived, timeline, ancestry)
    current = parse_lsn(row["current_lsn"])
    own_age = _stored_age(archived, newest) if newest is not None and newest.timeline == timeline else None
    forced = (
        row["archive_mode"] in ("on", "always")
        and current > (newest.end_lsn if newest else 0)
        and (own_age is None or own_age > switch_after)
    )
    if forced:  # an idle tail: push it out rather than report it as stale
        conn.execute("SELECT pg_switch_wal()")
        archived, newest = _wait_archived(repository.archived_wal, timeline, ancestry, current, wait_for_archive)
        row = _archiver_row(conn)
        current = parse_lsn(row["current_lsn"])
    rpo_bytes, rpo_seconds = unprotected(current, timeline, newest, _stored_age(archived, newest))
    status = WalStatus(
        archived_count=row["archived_count"],
        failed_count=row["failed_count"],
        last_archived_wal=row["last_archived_wal"],
        last_archived_time=row["last_archived_time"],
        last_failed_wal=row["last_failed_wal"],
        last_failed_time=row["last_failed_time"],
        timeline=timeline,
        current_lsn=row["current_lsn"],
        newest_archived_segment=newest.name if newest else None,
        newest_archived_age_seconds=_stored_age(archived, newest),
        rpo_bytes=rpo_bytes,
        rpo_seconds=rpo_seconds,
        forced_switch=forced,
        segments_in_archive=sum(1 for n in archived if SEGMENT_RE.match(n)),
        archive_mode=row["archive_mode"],
        timeline_start_lsn=format_lsn(ancestry[-1].switch_lsn if ancestry else 0),
        timeline_history_archived=timeline == 1 or timeline in histories,
        timelines=sorted({1, *histories}),
    )
    if oldest_backup is not None and newest is not None:
        _walk_continuity(status, oldest_backup, newest, histories, set(archived))
    return status


def _repository_histories(repository: Repository, archived: dict[str, datetime]) -> dict[int, list[TimelineSwitch]]:
    return {
        int(name[:8], 16): parse_history(repository.read_history(name), where=f"{repository.where} {name}")
        for name in archived
        if HISTORY_RE.match(name)
    }


def _stored_age(archived: dict[str, datetime], segment: Segment | None) -> float | None:
    """Seconds since the repository stored ``segment`` (never negative: S3's clock may run ahead of ours)."""
    if segment is None or segment.name not in archived:
        return None
    return max(0.0, (datetime.now(UTC) - archived[segment.name]).total_seconds())


def _walk_continuity(
    status: WalStatus,
    oldest_backup: BackupRecord | RepositoryBackup,
    newest: Segment,
    histories: dict[int, list[TimelineSwitch]],
    archived: set[str],
) -> None:
    """Fill in the segments a restore of the oldest backup replays to ``newest``, and which of them are missing."""
    start_lsn = parse_lsn(oldest_backup.start_lsn)
    if newest.end_lsn - 1 < start_lsn:
        return  # nothing archived since the backup started: the continuity check fails on that
    try:
        required = required_segments(oldest_backup.timeline, start_lsn, status.timeline, newest.end_lsn - 1, histories)
    except WalNameError as exc:  # e.g. the backup is on a branch the current timeline does not descend from
        status.continuity_error = str(exc)
        return
    status.continuity_from = required[0].name
    status.continuity_to = required[-1].name
    status.required_segments = len(required)
    status.gaps = find_gaps(required, archived)
