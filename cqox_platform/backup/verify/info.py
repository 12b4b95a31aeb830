"""``backup info``: per copy of the archive, its backups, the WAL each needs, whether a drill verified them, and
the recovery window, with one verdict that cron and monitoring can act on.

The window of a copy runs from the oldest backup's end (the first instant a restore can reach; and, proven, the end
of the oldest backup there that a drill verified and whose own WAL the copy holds) to the newest instant whose WAL
that copy holds, measured like the RPO (``wal.status.unprotected``): "now" when everything
the cluster wrote is archived, else the time the newest archived segment on the current timeline's path was
sealed (its manifest's ``created_at``, which the DR copy carries unchanged, so a DR copy that lags shows an
older end), and no end at all on a timeline with nothing archived. Unlike ``wal_archive_status`` this never
switches WAL: a read command changes nothing; ``archive_timeout`` bounds how stale an idle tail looks.

The verdict fails closed: a copy with no backup, a newest backup without a passing drill, a newest backup
whose own WAL is missing from the copy, a gap in the WAL from the oldest backup on, and a window whose end is
further behind than the RPO target each fail it, with one reason each. A copy that cannot be read is an error
of the caller's (it raises), never a copy with no backups.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from cqox_platform.backup.archive.cluster import cluster_archive
from cqox_platform.backup.archive.records import BackupRecord, list_backups
from cqox_platform.backup.archive.store import Archive, ArchiveError
from cqox_platform.backup.archive.wal_names import (
    HISTORY_RE,
    SEGMENT_RE,
    Segment,
    TimelineSwitch,
    WalNameError,
    find_gaps,
    newest_on_path,
    parse_history,
    parse_lsn,
    required_segments,
)
from cqox_platform.backup.verify.drill import latest_drill, verified_backup_ids
from cqox_platform.backup.wal.segment import read_wal
from cqox_platform.backup.wal.status import unprotected
from cqox_platform.crypto.envelope import Manifest
from cqox_platform.crypto.keys import DataKeyProvider
from cqox_platform.errors import CqoxError

#: The version of the JSON ``backup info --json`` prints; raised on any change a reader could trip over.
INFO_SCHEMA_VERSION = 1
#: The version of the JSON ``backup list --json`` prints.
LIST_SCHEMA_VERSION = 1


@dataclass(frozen=True)
class ClusterPosition:
    """Where the cluster writes now: what a restore to ``latest`` would have to reach."""

    timeline: int
    current_lsn: str


@dataclass(frozen=True)
class BackupEntry:
    """One backup as ``backup info`` shows it."""

    record: BackupRecord
    #: The backup's own WAL (start to stop segment) missing from this copy: without it the backup never becomes
    #: consistent, whatever else the copy holds.
    wal_missing: list[str]
    #: The newest drill that verified this backup (status "passed", from any copy), or None.
    verified_by: dict[str, Any] | None
    #: The newest drill of this backup whatever its status, or None.
    last_drill: dict[str, Any] | None

    @property
    def verified(self) -> bool:
        return self.verified_by is not None

    @property
    def wal_needed(self) -> tuple[str, str]:
        return self.record.start_wal, self.record.stop_wal


@dataclass(frozen=True)
class RecoveryWindow:
    """The instants a restore from this copy can reach, and the WAL behind them."""

    earliest: datetime | None
    latest: datetime | None
    as_of: datetime
    #: The newest archived segment on the current timeline's path, and when it was sealed.
    newest_segment: str | None
    newest_segment_at: datetime | None
    #: WAL the cluster wrote past the newest archived segment (not in this copy).
    unarchived_bytes: int
    #: Segments a restore of the oldest backup replays up to the newest archived one, and those missing.
    wal_from: str | None = None
    wal_to: str | None = None
    gaps: list[str] = field(default_factory=list)
    #: Why the WAL from the oldest backup on could not be walked (no history file, another branch).
    continuity_error: str | None = None
    #: The earliest recoverable instant that is proven: the end of the oldest backup in this copy that a drill
    #: verified and whose own WAL the copy holds (None: no such backup). A backup's end, not its start: PostgreSQL
    #: refuses a recovery target before the backup became consistent, which is at its end.
    earliest_verified: datetime | None = None

    @property
    def lag_seconds(self) -> float | None:
        """How far the window's end is behind ``as_of`` (None: it has no end)."""
        return None if self.latest is None else max(0.0, (self.as_of - self.latest).total_seconds())


@dataclass(frozen=True)
class CopyInfo:
    """One copy of the archive: ``primary`` or ``dr``, where it is, its backups oldest first, and its window."""

    name: str
    where: str
    backups: list[BackupEntry]
    window: RecoveryWindow
    segments_in_archive: int


@dataclass(frozen=True)
class UnreadableCopy:
    """A copy that could not be read: never shown as a copy without backups."""

    name: str
    where: str
    error: str


@dataclass(frozen=True)
class InfoVerdict:
    passed: bool
    reasons: list[str]


def backup_wal_missing(record: BackupRecord, archived: set[str]) -> list[str]:
    """Segments from the backup's start to its stop WAL (one timeline: a backup never spans a switch) not in
    ``archived``."""
    first, last = Segment.parse(record.start_wal), Segment.parse(record.stop_wal)
    names = (Segment(record.timeline, n).name for n in range(first.segno, last.segno + 1))
    return [name for name in names if name not in archived]


def window_end(
    position: ClusterPosition, newest: Segment | None, newest_at: datetime | None, as_of: datetime
) -> tuple[datetime | None, int]:
    """``(latest recoverable instant, unarchived bytes)`` of a copy whose newest segment on the path is ``newest``.

    ``as_of`` when nothing is unarchived; the segment's seal time when something is; None when nothing of the
    current timeline itself was ever archived (every write since its switch point is unprotected), or when the
    seal time is unknown.
    """
    # A segment S3 received after ``as_of`` (the listing comes after it) is no older than "just now".
    age = None if newest_at is None else max(0.0, (as_of - newest_at).total_seconds())
    rpo_bytes, rpo_seconds = unprotected(parse_lsn(position.current_lsn), position.timeline, newest, age)
    if rpo_bytes == 0:
        return as_of, 0
    if rpo_seconds is None:
        return None, rpo_bytes
    return as_of - timedelta(seconds=rpo_seconds), rpo_bytes


def recovery_window(
    records: list[BackupRecord],
    position: ClusterPosition,
    archived: set[str],
    histories: dict[int, list[TimelineSwitch]],
    newest_at: datetime | None,
    as_of: datetime,
) -> RecoveryWindow:
    """The window of a copy holding ``records`` (oldest first) and the WAL files ``archived``.

    ``histories[t]`` is the parsed ``t.history`` file; ``newest_at`` is when the newest segment on the current
    timeline's path (``newest_on_path``) was sealed.
    """
    newest = newest_on_path(archived, position.timeline, histories.get(position.timeline, []))
    latest, unarchived = window_end(position, newest, newest_at, as_of)
    if latest is not None and records and newest is not None and newest.end_lsn > parse_lsn(records[-1].stop_lsn):
        # A manifest's seal time has whole seconds: the segment sealed just after the newest backup stopped can
        # read as sealed before it, yet that backup restores to its stop.
        latest = max(latest, records[-1].stop_datetime)
    window = RecoveryWindow(
        earliest=records[0].stop_datetime if records else None,
        latest=latest,
        as_of=as_of,
        newest_segment=newest.name if newest else None,
        newest_segment_at=newest_at if newest else None,
        unarchived_bytes=unarchived,
    )
    if not records or newest is None:
        return window
    oldest = records[0]
    start_lsn = parse_lsn(oldest.start_lsn)
    if newest.end_lsn - 1 < start_lsn:
        return _with(window, continuity_error=f"no WAL archived since the oldest backup {oldest.backup_id} started")
    try:
        required = required_segments(oldest.timeline, start_lsn, position.timeline, newest.end_lsn - 1, histories)
    except WalNameError as exc:
        return _with(window, continuity_error=str(exc))
    return _with(window, wal_from=required[0].name, wal_to=required[-1].name, gaps=find_gaps(required, archived))


def with_earliest_verified(window: RecoveryWindow, backups: list[BackupEntry]) -> RecoveryWindow:
    """``window`` with its proven start: the end of the oldest backup (``backups`` oldest first) that a drill
    verified and whose own WAL the copy holds."""
    proven = next((b.record for b in backups if b.verified and not b.wal_missing), None)
    return _with(window, earliest_verified=proven.stop_datetime if proven else None)


def _with(window: RecoveryWindow, **changes: Any) -> RecoveryWindow:
    return replace(window, **changes)


def info_verdict(copies: list[CopyInfo], rpo_target_seconds: float) -> InfoVerdict:
    """Passed only when every copy's newest backup is verified and restorable from that copy, its WAL has no
    gap, and its window ends within ``rpo_target_seconds`` of now; one reason per failure otherwise."""
    reasons: list[str] = []
    for copy in copies:
        where = f"{copy.name} copy ({copy.where})"
        if not copy.backups:
            reasons.append(f"{where} holds no backup: nothing restores from it")
            continue
        newest = copy.backups[-1]
        backup_id = newest.record.backup_id
        if not newest.verified:
            last = newest.last_drill
            why = "no drill yet" if last is None else f"its last drill {last['drill_id']} is {last['status']}"
            reasons.append(
                f"newest backup {backup_id} in the {where} is not verified ({why}); materialize restore_drill "
                f"with backup_id {backup_id}"
            )
        if newest.wal_missing:
            reasons.append(
                f"newest backup {backup_id} in the {where} lacks its own WAL ({', '.join(newest.wal_missing[:5])}): "
                "it cannot become consistent from this copy"
            )
        window = copy.window
        if window.continuity_error:
            reasons.append(f"the WAL of the {where} cannot be walked from the oldest backup: {window.continuity_error}")
        elif window.gaps:
            reasons.append(
                f"{len(window.gaps)} WAL segment(s) missing from the {where} between {window.wal_from} and "
                f"{window.wal_to} (first {window.gaps[0]}): no restore replays across them"
            )
        lag = window.lag_seconds
        if lag is None:
            reasons.append(
                f"the recovery window of the {where} has no end: nothing of timeline {_timeline(window)} is "
                "archived there, so every write since it began would be lost"
            )
        elif lag > rpo_target_seconds:
            reasons.append(
                f"the recovery window of the {where} ends at {window.latest.isoformat()}, {lag:.0f} s ago: behind "
                f"the RPO target of {rpo_target_seconds:.0f} s (newest segment there: {window.newest_segment})"
            )
    return InfoVerdict(not reasons, reasons)


def _timeline(window: RecoveryWindow) -> str:
    return "the current timeline" if window.newest_segment is None else f"{int(window.newest_segment[:8], 16)}"


# --- reading a copy ---------------------------------------------------------------------------------------------


def cluster_position(conn: psycopg.Connection) -> ClusterPosition:
    lsn, timeline = conn.execute(
        "SELECT pg_current_wal_lsn()::text, ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int"
    ).fetchone()
    return ClusterPosition(timeline, lsn)


def _histories(archive: Archive, provider: DataKeyProvider, names: set[str]) -> dict[int, list[TimelineSwitch]]:
    return {
        int(name[:8], 16): parse_history(read_wal(archive, provider, name).decode(), where=archive.where(name))
        for name in names
        if HISTORY_RE.match(name)
    }


def _sealed_at(archive: Archive, name: str) -> datetime:
    key = archive.wal_manifest_key(name)
    text = archive.get_bytes(key)
    if text is None:
        raise ArchiveError(f"{archive.where(key)} disappeared while reading the recovery window; run it again.")
    sealed = datetime.fromisoformat(Manifest.from_json(text, where=archive.where(key)).created_at)
    return sealed if sealed.tzinfo else sealed.replace(tzinfo=UTC)


def read_copy(
    conn: psycopg.Connection,
    name: str,
    archive: Archive,
    provider: DataKeyProvider,
    position: ClusterPosition,
    *,
    as_of: datetime | None = None,
) -> CopyInfo:
    """Everything ``backup info`` shows of one copy; raises (``ArchiveError`` naming the bucket) when the copy
    cannot be read, so an unreachable copy is never mistaken for an empty one."""
    records = list_backups(archive)
    archived = set(archive.archived_wal())
    histories = _histories(archive, provider, archived)
    newest = newest_on_path(archived, position.timeline, histories.get(position.timeline, []))
    newest_at = _sealed_at(archive, newest.name) if newest else None
    verified = verified_backup_ids(conn)
    backups = [
        BackupEntry(
            record=r,
            wal_missing=backup_wal_missing(r, archived),
            verified_by=latest_drill(conn, r.backup_id, passed_only=True) if r.backup_id in verified else None,
            last_drill=latest_drill(conn, r.backup_id),
        )
        for r in records
    ]
    window = recovery_window(records, position, archived, histories, newest_at, as_of or datetime.now(UTC))
    window = with_earliest_verified(window, backups)
    return CopyInfo(
        name=name,
        where=archive.where(archive.root + "/"),
        backups=backups,
        window=window,
        segments_in_archive=sum(1 for n in archived if SEGMENT_RE.match(n)),
    )


def read_copies(
    conn: psycopg.Connection,
    sources: list[tuple[str, Any, str]],
    provider: DataKeyProvider,
    *,
    as_of: datetime,
) -> tuple[ClusterPosition, list[CopyInfo], list[UnreadableCopy]]:
    """Every copy in ``sources`` (``(name, S3 client, bucket)``, primary first: each copy is read with its own
    region's client) at ``as_of``: those read, and those that could not be (each with the error naming the copy),
    so a caller's verdict can fail on the second kind."""
    position = cluster_position(conn)
    read: list[CopyInfo] = []
    unreadable: list[UnreadableCopy] = []
    for name, s3, bucket in sources:
        archive = cluster_archive(conn, s3, bucket)
        try:
            read.append(read_copy(conn, name, archive, provider, position, as_of=as_of))
        except CqoxError as exc:
            where = archive.where(archive.root + "/")
            error = " ".join(f"the {name} copy ({where}) cannot be read: {exc}".split())
            unreadable.append(UnreadableCopy(name, where, error))
    return position, read, unreadable


# --- JSON -------------------------------------------------------------------------------------------------------


def _iso(value: datetime | str | None) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return value.isoformat()


def drill_json(drill: dict[str, Any] | None) -> dict[str, Any] | None:
    if drill is None:
        return None
    return {
        "drill_id": drill["drill_id"],
        "status": drill["status"],
        "rto_seconds": None if drill.get("rto_seconds") is None else float(drill["rto_seconds"]),
        "finished_at": _iso(drill.get("finished_at")),
    }


def backup_json(record: BackupRecord, *, verified_by: dict | None, last_drill: dict | None) -> dict[str, Any]:
    """One backup as both ``backup list --json`` and ``backup info --json`` print it."""
    return {
        "backup_id": record.backup_id,
        "timeline": record.timeline,
        "start_time": record.start_time,
        "stop_time": record.stop_time,
        "start_lsn": record.start_lsn,
        "stop_lsn": record.stop_lsn,
        "wal_start": record.start_wal,
        "wal_stop": record.stop_wal,
        "database_bytes": record.database_bytes,
        "stored_bytes": record.stored_bytes,
        "verified": verified_by is not None,
        "verified_by": drill_json(verified_by),
        "last_drill": drill_json(last_drill),
    }


def copy_json(copy: CopyInfo) -> dict[str, Any]:
    w = copy.window
    return {
        "name": copy.name,
        "where": copy.where,
        "error": None,
        "segments_in_archive": copy.segments_in_archive,
        "backups": [
            {
                **backup_json(b.record, verified_by=b.verified_by, last_drill=b.last_drill),
                "wal_missing": b.wal_missing,
            }
            for b in copy.backups
        ],
        "window": {
            "earliest": _iso(w.earliest),
            "earliest_verified": _iso(w.earliest_verified),
            "latest": _iso(w.latest),
            "lag_seconds": w.lag_seconds,
            "newest_segment": w.newest_segment,
            "newest_segment_at": _iso(w.newest_segment_at),
            "unarchived_bytes": w.unarchived_bytes,
            "wal_from": w.wal_from,
            "wal_to": w.wal_to,
            "gaps": w.gaps[:50],
            "gap_count": len(w.gaps),
            "continuity_error": w.continuity_error,
        },
    }


def unreadable_copy_json(name: str, where: str, error: str) -> dict[str, Any]:
    """A copy that could not be read: its error, and no backups or window (not an empty list: nothing is known)."""
    return {
        "name": name,
        "where": where,
        "error": error,
        "segments_in_archive": None,
        "backups": None,
        "window": None,
    }


def position_json(position: ClusterPosition) -> dict[str, Any]:
    return {"timeline": position.timeline, "current_lsn": position.current_lsn}
