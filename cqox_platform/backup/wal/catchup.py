"""Catch-up after a failover: archive the old timeline's segments that the dead leader never pushed.

With ``archive_mode = on`` only the leader archives. A standby's walreceiver marks every segment it has
streamed as already archived (``XLogWalRcvClose`` -> ``XLogArchiveForceDone`` writes ``.done`` unless
``archive_mode = always``), because the leader is expected to archive it. If the leader is killed after
completing segments but before its archiver pushed them, the promoted standby holds those segments in
``pg_wal`` but never archives them: the archive has a permanent gap just before the timeline switch, and no
restore can cross it.

The first file a newly promoted leader archives is its timeline's history file (``00000002.history``), which
names the parent timelines and their switch points. So after pushing a history file, ``wal-push`` (sync and
async, both through ``catch_up_after``) pushes every complete segment still in ``pg_wal`` that a restore of the
new timeline would read from an ancestor timeline (``walnames.segment_timeline``: the same rule the continuity
check uses) and that the archive does not hold yet. A failure fails the history push: PostgreSQL retries it,
and the catch-up with it (pushing the history file again is idempotent).

Best effort by nature: segments the standby already recycled (restartpoints remove ``.done`` files) are gone,
and the continuity check reports them. ``wal_keep_size`` on the cluster widens the window.
"""

from __future__ import annotations

from collections.abc import Callable, Container, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from cqox_platform.backup.archive.store import Archive
from cqox_platform.backup.archive.wal_names import (
    HISTORY_RE,
    SEGMENT_RE,
    WAL_SEGMENT_SIZE,
    Segment,
    TimelineSwitch,
    WalNameError,
    format_lsn,
    parse_history,
    segment_timeline,
    timeline_ranges,
)
from cqox_platform.backup.wal.segment import PushResult, push_wal
from cqox_platform.crypto.keys import DataKeyProvider
from cqox_platform.errors import BackupError, CqoxError


class CatchUpError(BackupError):
    """Some old-timeline segments could not be archived; the history file push must be retried."""


def history_timeline(history_name: str) -> int:
    """``'00000002.history'`` -> 2."""
    if not HISTORY_RE.match(history_name):
        raise WalNameError(f"{history_name!r} is not a timeline history file name.")
    return int(history_name[:8], 16)


def segments_to_catch_up(
    wal_names: Iterable[str],
    history_name: str,
    history_text: str,
    archived: Container[str] = frozenset(),
) -> list[str]:
    """The segments in ``wal_names`` (a ``pg_wal`` listing) to push after ``history_name`` was archived.

    Those on an ancestor timeline that lie entirely before the point where recovery leaves that timeline
    (the switch segment itself is read from the child), oldest first, minus ``archived``. Partial, backup
    history, temporary and other files are never selected.
    """
    new_timeline = history_timeline(history_name)
    ancestry = parse_history(history_text, where=history_name)
    ranges = timeline_ranges(new_timeline, ancestry)
    ancestors = {switch.parent for switch in ancestry} - {new_timeline}
    chosen = []
    for name in wal_names:
        if not SEGMENT_RE.match(name) or name in archived:
            continue
        segment = Segment.parse(name)
        if segment.timeline in ancestors and segment_timeline(segment.segno, ranges) == segment.timeline:
            chosen.append(segment)
    return [s.name for s in sorted(chosen, key=lambda s: (s.segno, s.timeline))]


@dataclass
class CatchUpResult:
    history: str
    ancestry: list[TimelineSwitch]
    pushed: list[PushResult] = field(default_factory=list)
    already_archived: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # vanished or not a complete segment


def catch_up_ancestors(
    archive: Archive,
    provider: DataKeyProvider,
    history_path: Path,
    log: Callable[[str], None],
) -> CatchUpResult:
    """After ``history_path`` was archived: push the ancestor segments beside it that the archive lacks.

    Logs one line per pushed file and a summary. Raises ``CatchUpError`` naming every segment that failed,
    after trying all of them.
    """
    history_path = Path(history_path)
    history_name = history_path.name
    try:
        text = history_path.read_text()
    except OSError as exc:
        raise CatchUpError(f"cannot read {history_path} to catch up its parent timeline: {exc.strerror}.") from None
    ancestry = parse_history(text, where=str(history_path))
    result = CatchUpResult(history_name, ancestry)
    wal_dir = history_path.parent
    try:
        listing = [p.name for p in wal_dir.iterdir()]
    except OSError as exc:
        raise CatchUpError(f"cannot list {wal_dir} to catch up before {history_name}: {exc.strerror}.") from None
    failures: list[str] = []
    for name in segments_to_catch_up(listing, history_name, text):
        if archive.head(archive.wal_manifest_key(name)) is not None:
            result.already_archived.append(name)
            continue
        path = wal_dir / name
        try:
            size = path.stat().st_size
            if size != WAL_SEGMENT_SIZE:
                log(f"catch-up: {name} is {size} bytes, not a complete segment: NOT archived, a gap remains")
                result.skipped.append(name)
                continue
            pushed = push_wal(archive, provider, path)
        except (CqoxError, OSError) as exc:
            if not path.exists():  # PostgreSQL removed it meanwhile: retrying cannot bring it back
                log(f"catch-up: {name} was removed from {wal_dir} before it was archived: a gap remains")
                result.skipped.append(name)
                continue
            message = str(exc)
            log(f"catch-up: {name} NOT archived: {message}")
            failures.append(f"{name}: {message}")
            continue
        if not pushed.uploaded:  # archived by someone else since the check above
            result.already_archived.append(name)
            continue
        result.pushed.append(pushed)
        log(
            f"catch-up: archived {name} of timeline {Segment.parse(name).timeline} "
            f"({pushed.raw_bytes / 2**20:.1f} MiB -> {pushed.stored_bytes / 2**20:.2f} MiB in {pushed.seconds:.2f} s)"
        )
    log(summary(result))
    if failures:
        raise CatchUpError(
            f"{len(failures)} segment(s) before the switch to timeline {history_timeline(history_name)} "
            f"are not archived (PostgreSQL will retry {history_name}): " + "; ".join(failures)
        )
    return result


def catch_up_after(
    archive: Archive,
    provider: DataKeyProvider,
    pushed: Path,
    log: Callable[[str], None],
) -> CatchUpResult | None:
    """What every push of a WAL file ends with, synchronous or not: after a timeline history file, the catch-up.

    A history file is the first file a newly promoted leader archives, so its push is where the old timeline's
    unpushed segments are caught up (``catch_up_ancestors``); after any other file there is nothing to do and
    None is returned. Raises ``CatchUpError`` when the history file's push must be retried.
    """
    if not HISTORY_RE.match(Path(pushed).name):
        return None
    return catch_up_ancestors(archive, provider, pushed, log)


def summary(result: CatchUpResult) -> str:
    """One line for the PostgreSQL log: what the catch-up after a history file did."""
    timeline = history_timeline(result.history)
    if not result.ancestry:
        return f"catch-up after {result.history}: no parent timeline"
    parents = ", ".join(str(tli) for tli in sorted({s.parent for s in result.ancestry}))
    text = (
        f"catch-up after {result.history}: {len(result.pushed)} unarchived segment(s) of timeline(s) {parents} "
        f"archived from before the switch to timeline {timeline} at {format_lsn(result.ancestry[-1].switch_lsn)}, "
        f"{len(result.already_archived)} already archived"
    )
    return text + (f", {len(result.skipped)} NOT archivable (a gap remains)" if result.skipped else "")
