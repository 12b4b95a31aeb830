"""The restore starts each written chunk's writeback as it goes (``sync_file_range``), so the restored server's
start-up sync finds little left to write. A hint: it never fails a restore, and the bytes are the same."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cqox_platform.backup.restore import stream, writeback
from cqox_platform.backup.restore.stream import ParallelFileWriter


@pytest.mark.skipif(os.uname().sysname != "Linux", reason="sync_file_range is Linux's")
def test_writeback_is_started_on_a_written_range_here(tmp_path: Path) -> None:
    fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT)
    try:
        os.write(fd, b"x" * 65536)
        assert writeback.start_writeback(fd, 0, 65536) is True
        assert writeback.start_writeback(fd, 0, 0) is False  # nothing to start
    finally:
        os.close(fd)


def test_a_refused_hint_is_reported_not_raised() -> None:
    """A closed descriptor (EBADF) stands for anything the kernel refuses: the restore goes on."""
    fd = os.open("/dev/null", os.O_RDONLY)
    os.close(fd)
    assert writeback.start_writeback(fd, 0, 4096) is False


def test_every_chunk_the_writers_write_has_its_writeback_started(tmp_path: Path, monkeypatch) -> None:
    started: list[tuple[int, int]] = []
    real = stream.start_writeback
    monkeypatch.setattr(stream, "start_writeback", lambda fd, off, n: started.append((off, n)) or real(fd, off, n))
    chunks = [bytes([i]) * (1 << 20) for i in range(3)] + [b"tail"]
    files = ParallelFileWriter()
    files.write(tmp_path / "base" / "1" / "1259", 0o600, chunks)
    files.finish()
    assert (tmp_path / "base" / "1" / "1259").read_bytes() == b"".join(chunks)
    assert sorted(started) == [(0, 1 << 20), (1 << 20, 1 << 20), (2 << 20, 1 << 20), (3 << 20, 4)]


def test_writeback_off_starts_none(tmp_path: Path, monkeypatch) -> None:
    started: list[int] = []
    monkeypatch.setattr(stream, "start_writeback", lambda fd, off, n: started.append(n))
    files = ParallelFileWriter(writeback=False)
    files.write(tmp_path / "f", 0o600, [b"a" * 10])
    files.finish()
    assert started == [] and (tmp_path / "f").read_bytes() == b"a" * 10
