"""The room check a restore and a drill make before the first byte: what a backup needs (its data directory and
the WAL replay keeps in pg_wal), and which file system a directory that does not exist yet will live on."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest

from cqox_platform.backup.restore.recovery import RecoveryTarget
from cqox_platform.backup.restore.space import (
    KEPT_WAL_FACTOR,
    WAL_HEADROOM_SEGMENTS,
    WAL_SEGMENT_BYTES,
    ScratchSpaceError,
    bytes_needed,
    check_room_for,
    free_bytes,
    replay_wal_bytes,
)
from cqox_platform.errors import RestoreError
from tests.helpers import backup_record

GiB = 2**30
HEADROOM = WAL_HEADROOM_SEGMENTS * WAL_SEGMENT_BYTES


def _record(database_bytes: int, max_wal_size: int | None = 4 * GiB, backup_id: str = "b1"):
    record = dataclasses.replace(backup_record(backup_id), database_bytes=database_bytes)
    if max_wal_size is not None:
        record.extra["max_wal_size_bytes"] = max_wal_size
    return record


def test_a_backup_needs_its_data_directory_plus_the_wal_replay_restores() -> None:
    record = _record(10 * GiB)
    needed = bytes_needed(record, wal_bytes=GiB)
    assert needed > record.database_bytes + GiB + HEADROOM
    assert needed < record.database_bytes * 1.1 + GiB + HEADROOM


def test_the_wal_replay_keeps_is_counted_up_to_twice_the_servers_max_wal_size() -> None:
    """Restored segments stay in pg_wal until a restartpoint removes them, and a restartpoint waits for the
    primary's next checkpoint: so pg_wal holds at most about two checkpoint distances, each under max_wal_size."""
    record = _record(GiB, max_wal_size=GiB)
    assert bytes_needed(record, wal_bytes=50 * GiB) == bytes_needed(record, wal_bytes=KEPT_WAL_FACTOR * GiB)
    assert bytes_needed(record, wal_bytes=50 * GiB) < GiB * 1.1 + KEPT_WAL_FACTOR * GiB + HEADROOM
    assert bytes_needed(record, wal_bytes=GiB // 2) < bytes_needed(record, wal_bytes=GiB)


def test_without_the_servers_max_wal_size_every_segment_replay_restores_is_counted() -> None:
    """A record older than the setting's capture: the only bound left is what the archive holds."""
    record = _record(GiB, max_wal_size=None)
    assert bytes_needed(record, wal_bytes=50 * GiB) > 51 * GiB


def _names(first: int, last: int, timeline: int = 1) -> list[str]:
    return [f"{timeline:08X}00000000{n:08X}" for n in range(first, last + 1)]


def test_the_wal_to_replay_runs_from_the_backups_first_segment_to_what_the_target_needs() -> None:
    record = dataclasses.replace(backup_record("b"), start_wal=_names(2, 2)[0], stop_wal=_names(3, 3)[0])
    archived = ["00000001.history", *_names(1, 20), "000000010000000000000002.00000028.backup"]
    to_end = replay_wal_bytes(archived, record, RecoveryTarget("end_of_archive"))
    assert to_end == 19 * WAL_SEGMENT_BYTES  # segments 2..20: the one before the backup is not replayed
    assert replay_wal_bytes(archived, record, RecoveryTarget("backup_end")) == 2 * WAL_SEGMENT_BYTES
    assert replay_wal_bytes(archived, record, RecoveryTarget("lsn", "0/5000010")) == 4 * WAL_SEGMENT_BYTES
    assert replay_wal_bytes(archived, record, RecoveryTarget("time", "2026-12-04 10:00:00+00")) == to_end
    later_timeline = [*archived, *_names(10, 12, timeline=2)]
    assert replay_wal_bytes(later_timeline, record, RecoveryTarget("end_of_archive")) == 22 * WAL_SEGMENT_BYTES


def test_a_directory_not_made_yet_is_measured_on_its_nearest_existing_parent(tmp_path: Path) -> None:
    where, free = free_bytes(tmp_path / "not" / "yet" / "pgdata")
    assert where == tmp_path and free == shutil.disk_usage(tmp_path).free


def test_a_backup_larger_than_the_free_space_is_refused_naming_both_numbers_and_the_directory(tmp_path: Path) -> None:
    free = shutil.disk_usage(tmp_path).free
    record = _record(free * 2, backup_id="b-too-big")
    with pytest.raises(ScratchSpaceError) as refused:
        check_room_for(record, tmp_path / "pgdata", "--pgdata", wal_bytes=0)
    message = str(refused.value)
    assert isinstance(refused.value, RestoreError)
    assert f"--pgdata {tmp_path / 'pgdata'}" in message and "b-too-big" in message
    assert f"{record.database_bytes / 2**20:.0f} MiB" in message and "nothing was downloaded" in message


def test_a_volume_that_holds_the_database_but_not_the_wal_replay_keeps_is_refused(tmp_path: Path) -> None:
    """The drill that used to pass this check and then fill its volume mid-replay (ENOSPC, or an OOM kill on a
    memory-backed pod volume)."""
    free = shutil.disk_usage(tmp_path).free
    record = _record(int((free - 2 * GiB) / 1.03), backup_id="b-wal")
    with pytest.raises(ScratchSpaceError) as refused:
        check_room_for(record, tmp_path, "the drill's scratch directory", wal_bytes=3 * GiB)
    message = str(refused.value)
    assert "3072 MiB of WAL" in message and "max_wal_size" in message, message


def test_a_backup_that_fits_passes(tmp_path: Path) -> None:
    record = _record(100)
    assert bytes_needed(record, wal_bytes=GiB) < free_bytes(tmp_path)[1]
    assert check_room_for(record, tmp_path, "the drill's scratch directory", wal_bytes=GiB) is None
