"""The room check a restore and a drill make before the first byte: what a backup needs, and which file system
a directory that does not exist yet will live on."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest

from cqox_platform.backup.restore.space import (
    WAL_HEADROOM_SEGMENTS,
    WAL_SEGMENT_BYTES,
    ScratchSpaceError,
    bytes_needed,
    check_room_for,
    free_bytes,
)
from cqox_platform.errors import RestoreError
from tests.helpers import backup_record


def test_a_backup_needs_its_data_directory_plus_replay_headroom() -> None:
    record = dataclasses.replace(backup_record("b1"), database_bytes=10 * 2**30)
    needed = bytes_needed(record)
    assert needed > record.database_bytes + WAL_HEADROOM_SEGMENTS * WAL_SEGMENT_BYTES
    assert needed < record.database_bytes * 1.1 + WAL_HEADROOM_SEGMENTS * WAL_SEGMENT_BYTES


def test_a_directory_not_made_yet_is_measured_on_its_nearest_existing_parent(tmp_path: Path) -> None:
    where, free = free_bytes(tmp_path / "not" / "yet" / "pgdata")
    assert where == tmp_path and free == shutil.disk_usage(tmp_path).free


def test_a_backup_larger_than_the_free_space_is_refused_naming_both_numbers_and_the_directory(tmp_path: Path) -> None:
    free = shutil.disk_usage(tmp_path).free
    record = dataclasses.replace(backup_record("b-too-big"), database_bytes=free * 2)
    with pytest.raises(ScratchSpaceError) as refused:
        check_room_for(record, tmp_path / "pgdata", "--pgdata")
    message = str(refused.value)
    assert isinstance(refused.value, RestoreError)
    assert f"--pgdata {tmp_path / 'pgdata'}" in message and "b-too-big" in message
    assert f"{record.database_bytes / 2**20:.0f} MiB" in message and "nothing was downloaded" in message


def test_a_backup_that_fits_passes(tmp_path: Path) -> None:
    record = backup_record("small")
    assert bytes_needed(record) < free_bytes(tmp_path)[1]
    assert check_room_for(record, tmp_path, "the drill's scratch directory") is None
