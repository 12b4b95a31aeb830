"""Room for a restore, checked before the first byte is downloaded.

A restore writes the whole data directory, then replays WAL into it. When the volume is too small the restore
used to find out hours later, mid-stream, with ENOSPC; on a run pod whose scratch volume is memory-backed the
same overflow is an OOM kill, with nothing in the drill's record to say why. So the space a restore needs is
compared with what the volume has free first, and the refusal says the numbers and what to change.

What replay needs is not a few segments: a recovering server keeps every segment it restored from the archive
in ``pg_wal`` until a restartpoint removes it (measured: +1.1 GiB of ``pg_wal`` after replaying 1.05 GiB). A
restartpoint is requested once replay has gone about ``max_wal_size / (1 + checkpoint_completion_target)`` past
the last one, and can only be made at the next checkpoint record of the primary, which the primary writes at
most about as far apart; with recycled segments kept for reuse, ``pg_wal`` stays under about twice
``max_wal_size``. So the room for replay is the WAL the target needs from the archive, at most twice the
restored server's ``max_wal_size`` (which it inherits from the primary's configuration, captured with each
backup); a record without it counts every segment.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from pathlib import Path

from cqox_platform.backup.archive.records import BackupRecord
from cqox_platform.backup.archive.store import Archive
from cqox_platform.backup.archive.wal_names import SEGMENT_RE, parse_lsn, segment_name, segment_number
from cqox_platform.backup.restore.recovery import DEFAULT_WAL_PREFETCH, RecoveryTarget
from cqox_platform.errors import RestoreError

#: A WAL segment (PostgreSQL's default size).
WAL_SEGMENT_BYTES = 16 * 2**20
#: Room beyond the data directory and the WAL replay keeps: the segment being restored and the ones the server
#: preallocates, plus a slack for files it writes while it recovers (pg_stat, a new timeline's history).
WAL_HEADROOM_SEGMENTS = 4
SLACK_RATIO = 0.02
#: ``pg_wal`` of a recovering server stays under about this many times its ``max_wal_size`` (module docstring).
KEPT_WAL_FACTOR = 2


class ScratchSpaceError(RestoreError):
    """The volume a restore writes to has less room than the backup needs."""


def replay_wal_bytes(archived: Iterable[str], record: BackupRecord, target: RecoveryTarget) -> int:
    """Bytes of the WAL segments replay of ``record`` to ``target`` can restore from an archive holding
    ``archived`` (file names): from the backup's first segment to the backup's last for ``backup_end``, to the
    target's segment for an LSN, to the end of the archive for anything a position cannot tell in advance (a
    time, a name, an xid). Segments of every later timeline count: which one recovery follows is known only
    when it runs."""
    last: str | None = None
    if target.kind == "backup_end":
        last = record.stop_wal
    elif target.kind == "lsn":
        last = segment_name(record.timeline, segment_number(parse_lsn(target.value)))
    segments = 0
    for name in archived:
        if not SEGMENT_RE.match(name) or name < record.start_wal:
            continue
        if last is not None and name[8:] > last[8:]:
            continue
        segments += 1
    return segments * WAL_SEGMENT_BYTES


def archived_replay_wal_bytes(archive: Archive, record: BackupRecord, target: RecoveryTarget) -> int:
    """``replay_wal_bytes`` of what ``archive`` holds now (a listing of its WAL from the backup's first segment:
    the older part of the archive is not read)."""
    prefix = f"{archive.root}/wal/"
    names = (obj["Key"][len(prefix) :] for obj in archive.list(prefix, start_after=prefix + record.start_wal[:-1]))
    return replay_wal_bytes(names, record, target)


def replay_room(record: BackupRecord, wal_bytes: int) -> int:
    """What replay of ``wal_bytes`` keeps in ``pg_wal`` at most, plus the headroom segments."""
    max_wal_size = record.max_wal_size_bytes
    kept = wal_bytes if max_wal_size is None else min(wal_bytes, KEPT_WAL_FACTOR * max_wal_size)
    return kept + WAL_HEADROOM_SEGMENTS * WAL_SEGMENT_BYTES


def bytes_needed(record: BackupRecord, *, wal_bytes: int, prefetch: int = 0) -> int:
    """What restoring ``record`` writes: its data directory (the tar's bytes, plus a slack), what replay of
    ``wal_bytes`` keeps in ``pg_wal``, and the prefetcher's spool of ``prefetch`` segments."""
    data = int(record.database_bytes * (1 + SLACK_RATIO))
    return data + replay_room(record, wal_bytes) + prefetch * WAL_SEGMENT_BYTES


def free_bytes(directory: Path) -> tuple[Path, int]:
    """Free bytes of the file system ``directory`` will live on (its nearest existing ancestor's)."""
    existing = Path(directory)
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    return existing, shutil.disk_usage(existing).free


def check_room_for(
    record: BackupRecord, directory: Path, what: str, *, wal_bytes: int, prefetch: int = DEFAULT_WAL_PREFETCH
) -> None:
    """Refuse, before any download, a restore of ``record`` into ``directory`` that cannot fit its data directory
    and the ``wal_bytes`` of WAL its replay restores (``archived_replay_wal_bytes``).

    ``what`` names the directory for the person reading the error (e.g. "the drill's scratch directory").
    """
    needed = bytes_needed(record, wal_bytes=wal_bytes, prefetch=prefetch)
    where, free = free_bytes(directory)
    if free >= needed:
        return
    max_wal_size = record.max_wal_size_bytes
    bound = (
        f"at most {KEPT_WAL_FACTOR} x its max_wal_size of {max_wal_size / 2**20:.0f} MiB"
        if max_wal_size is not None
        else "all of it: the backup record does not carry the server's max_wal_size"
    )
    raise ScratchSpaceError(
        f"{what} {directory} has {free / 2**20:.0f} MiB free (on the file system of {where}), but backup "
        f"{record.backup_id} needs {needed / 2**20:.0f} MiB: its {record.database_bytes / 2**20:.0f} MiB data "
        f"directory, and room for the {wal_bytes / 2**20:.0f} MiB of WAL its replay restores from the archive, which "
        f"the recovering server keeps in pg_wal until a restartpoint ({bound}), plus headroom and the prefetch spool. "
        f"Give it a larger volume (a run pod's scratch volume size in the Helm values; TMPDIR or the drill directory "
        f"elsewhere), or free space; nothing was downloaded."
    )


def check_room_to_restore(
    archive: Archive,
    record: BackupRecord,
    target: RecoveryTarget,
    directory: Path,
    what: str,
    *,
    prefetch: int = DEFAULT_WAL_PREFETCH,
) -> None:
    """``check_room_for`` with the WAL ``archive`` holds now for replay of ``record`` to ``target``: what the
    restore, the drills and the site-loss drill call before their first download."""
    wal_bytes = archived_replay_wal_bytes(archive, record, target)
    check_room_for(record, directory, what, wal_bytes=wal_bytes, prefetch=prefetch)
