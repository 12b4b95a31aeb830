"""Room for a restore, checked before the first byte is downloaded.

A restore writes the whole data directory, then replays WAL into it. When the volume is too small the restore
used to find out hours later, mid-stream, with ENOSPC; on a run pod whose scratch volume is memory-backed the
same overflow is an OOM kill, with nothing in the drill's record to say why. So the space a restore needs is
compared with what the volume has free first, and the refusal says both numbers and what to change.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from cqox_platform.backup.archive.records import BackupRecord
from cqox_platform.errors import RestoreError

#: A WAL segment (PostgreSQL's default size): replay restores segments into pg_wal one or two at a time.
WAL_SEGMENT_BYTES = 16 * 2**20
#: Room beyond the backup's own bytes: the segments replay holds in pg_wal at once, plus a slack for files the
#: server writes while it recovers (pg_stat, a new timeline's history, the recovery signal).
WAL_HEADROOM_SEGMENTS = 4
SLACK_RATIO = 0.02


class ScratchSpaceError(RestoreError):
    """The volume a restore writes to has less room than the backup needs."""


def bytes_needed(record: BackupRecord) -> int:
    """What restoring ``record`` writes: its data directory (the tar's bytes) plus replay's headroom."""
    return int(record.database_bytes * (1 + SLACK_RATIO)) + WAL_HEADROOM_SEGMENTS * WAL_SEGMENT_BYTES


def free_bytes(directory: Path) -> tuple[Path, int]:
    """Free bytes of the file system ``directory`` will live on (its nearest existing ancestor's)."""
    existing = Path(directory)
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    return existing, shutil.disk_usage(existing).free


def check_room_for(record: BackupRecord, directory: Path, what: str) -> None:
    """Refuse, before any download, a restore of ``record`` into ``directory`` that cannot fit.

    ``what`` names the directory for the person reading the error (e.g. "the drill's scratch directory").
    """
    needed = bytes_needed(record)
    where, free = free_bytes(directory)
    if free < needed:
        raise ScratchSpaceError(
            f"{what} {directory} has {free / 2**20:.0f} MiB free (on the file system of {where}), but backup "
            f"{record.backup_id} needs {needed / 2**20:.0f} MiB: its {record.database_bytes / 2**20:.0f} MiB data "
            f"directory plus {needed - record.database_bytes:,} bytes for replay. Give it a larger volume (a run "
            f"pod's scratch volume size in the Helm values; TMPDIR or the drill directory elsewhere), or free space; "
            f"nothing was downloaded."
        )
