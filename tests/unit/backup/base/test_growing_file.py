"""Following a file another process writes: every byte in order, disk given back behind the reader."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from cqox_platform.backup.base.growing_file import GrowingFileReader, WriterFailedError

WRITER = """
import os, sys, time
path, chunks, rc = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
time.sleep(0.2)  # the reader starts before the file exists
with open(path, "wb") as fh:
    for i in range(chunks):
        fh.write(bytes([i % 251]) * (1 << 20))
        fh.flush()
        time.sleep(0.05)
sys.exit(rc)
"""


def _writer(path, chunks: int, rc: int = 0) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(chunks), str(rc)])


def test_reads_every_byte_as_written_and_punches_holes_behind(tmp_path):
    path = tmp_path / "base.tar.zst"
    writer = _writer(path, 12)
    reader = GrowingFileReader(path, writer, lambda rc: f"exit {rc}", punch_every=2 << 20)
    got = bytearray()
    while chunk := reader.read(300_000):
        got += chunk
    reader.close()
    assert writer.returncode == 0
    assert bytes(got) == b"".join(bytes([i]) * (1 << 20) for i in range(12))
    assert reader.punched >= 10 << 20  # the disk behind the reader was given back
    assert os.stat(path).st_blocks * 512 <= (2 << 20) + 4096
    assert os.path.getsize(path) == 12 << 20  # the size stays: nothing else reading it is confused


def test_a_writer_that_fails_midway_raises_its_description(tmp_path):
    path = tmp_path / "base.tar.zst"
    reader = GrowingFileReader(path, _writer(path, 3, rc=4), lambda rc: f"pg_basebackup exited with {rc}")
    with pytest.raises(WriterFailedError, match="exited with 4"):
        while reader.read(1 << 20):
            pass


def test_a_writer_that_never_creates_the_file_raises(tmp_path):
    writer = subprocess.Popen([sys.executable, "-c", "import sys; sys.exit(2)"])
    reader = GrowingFileReader(tmp_path / "never", writer, lambda rc: f"exit {rc}: could not connect")
    with pytest.raises(WriterFailedError, match="could not connect"):
        reader.read(10)


def test_a_child_started_to_die_with_its_parent_dies_when_the_parent_is_killed(tmp_path):
    """What keeps pg_basebackup from writing on after its backup process was killed with SIGKILL."""
    import signal
    import time

    from cqox_platform.backup.base.create import DIE_WITH_PARENT

    pidfile = tmp_path / "child.pid"
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import subprocess, sys, time; "
            f"p = subprocess.Popen([*{list(DIE_WITH_PARENT)!r}, 'sleep', '60']); "
            f"open({str(pidfile)!r}, 'w').write(str(p.pid)); time.sleep(60)",
        ]
    )
    deadline = time.monotonic() + 10
    while not (pidfile.exists() and pidfile.read_text()) and time.monotonic() < deadline:
        time.sleep(0.05)
    child = int(pidfile.read_text())
    time.sleep(0.3)  # setpriv has exec'd sleep
    assert _running(child)
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    while _running(child) and time.monotonic() < deadline + 5:
        time.sleep(0.05)
    assert not _running(child)


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
