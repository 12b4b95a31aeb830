"""The asynchronous pusher's markers: the shell check archive_command runs, and what it must never accept.

A marker must say "this name, this very file": a recycled segment (renamed to a later name), another file
under the same name, or a stale marker must all fall through to the fallback, which waits for the pusher.
Real /bin/sh, real hard links; the fallback is a stand-in script that records it was called.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time
from pathlib import Path

from cqox_platform.backup.wal.push_client import marker_matches, write_marker, write_ok_marker
from cqox_platform.backup.wal.pusher import consume_markers
from cqox_platform.backup.wal.spool import ERROR, OK, fast_archive_command, spool_dir

NAME = "000000010000000000000003"


def _setup(tmp_path: Path):
    pgdata = tmp_path / "data"
    (pgdata / "pg_wal" / "archive_status").mkdir(parents=True)
    settings = tmp_path / "archiver" / "archiver.json"
    settings.parent.mkdir()
    settings.write_text("{}")
    fallback = tmp_path / "fallback"
    fallback.write_text(f'#!/bin/sh\necho "$@" >> {tmp_path / "fallback.calls"}\nexit 7\n')
    fallback.chmod(0o755)
    return pgdata, settings, fallback, spool_dir(settings, pgdata)


def _archive_command(cli: Path, settings: Path, pgdata: Path, name: str) -> int:
    """Run the command as PostgreSQL does: ``/bin/sh -c`` in the data directory, %p relative, %f the name."""
    command = fast_archive_command(cli, settings, pgdata).replace("%p", f"pg_wal/{name}").replace("%f", name)
    return subprocess.run(["/bin/sh", "-c", command], cwd=pgdata).returncode


def _mark(spool: Path, path: Path) -> str:
    fd = os.open(path, os.O_RDONLY)
    try:
        return write_ok_marker(spool, path, fd, hashlib.sha256(path.read_bytes()).hexdigest())
    finally:
        os.close(fd)


def test_the_shell_check_accepts_only_the_file_the_pusher_marked(tmp_path):
    pgdata, settings, fallback, spool = _setup(tmp_path)
    segment = pgdata / "pg_wal" / NAME
    segment.write_bytes(os.urandom(8192))
    calls = tmp_path / "fallback.calls"

    assert _archive_command(fallback, settings, pgdata, NAME) == 7  # no marker: the fallback waits
    assert _mark(spool, segment) == "link"
    assert _archive_command(fallback, settings, pgdata, NAME) == 0  # marked: no process beyond the shell
    assert len(calls.read_text().splitlines()) == 1

    # PostgreSQL recycles the segment under a later name: that name has no marker of its own.
    later = "000000010000000000000009"
    os.rename(segment, pgdata / "pg_wal" / later)
    assert _archive_command(fallback, settings, pgdata, later) == 7
    # Another file appears under the marked name (a restored or rewound pg_wal): not the marked inode.
    segment.write_bytes(os.urandom(8192))
    assert _archive_command(fallback, settings, pgdata, NAME) == 7
    assert not marker_matches(spool, segment)
    assert f"--pgdata {pgdata.resolve()}" in calls.read_text().splitlines()[-1]


def test_a_json_marker_binds_identity_and_content(tmp_path):
    """The marker used when the spool cannot hard-link into pg_wal (another filesystem)."""
    pgdata, settings, fallback, spool = _setup(tmp_path)
    segment = pgdata / "pg_wal" / NAME
    segment.write_bytes(b"a" * 8192)
    st = segment.stat()
    record = {
        "name": NAME,
        "sha256": hashlib.sha256(segment.read_bytes()).hexdigest(),
        "dev": st.st_dev,
        "ino": st.st_ino,
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
    }
    (spool / OK).mkdir(parents=True)
    (spool / OK / NAME).write_text(json.dumps(record))
    assert marker_matches(spool, segment, verify_content=True)
    assert _archive_command(fallback, settings, pgdata, NAME) == 7  # the shell cannot check it: fallback

    (spool / OK / NAME).write_text(json.dumps({**record, "sha256": "0" * 64}))
    assert marker_matches(spool, segment)  # identity alone (the pusher's cheap look) ...
    assert not marker_matches(spool, segment, verify_content=True)  # ... but archive_command's answer checks content
    (spool / OK / NAME).write_text(json.dumps({**record, "name": "000000010000000000000004"}))
    assert not marker_matches(spool, segment)
    with open(segment, "ab") as fh:  # same inode, grown: not the file that was archived
        fh.write(b"b")
    (spool / OK / NAME).write_text(json.dumps(record))
    assert not marker_matches(spool, segment)


def test_markers_are_consumed_once_postgres_is_done_with_the_file(tmp_path):
    pgdata, _settings, _fallback, spool = _setup(tmp_path)
    status = pgdata / "pg_wal" / "archive_status"
    names = [f"0000000100000000000000{n:02X}" for n in range(1, 4)]
    for name in names:
        (pgdata / "pg_wal" / name).write_bytes(os.urandom(1024))
        (status / f"{name}.ready").touch()
        _mark(spool, pgdata / "pg_wal" / name)
    os.rename(status / f"{names[0]}.ready", status / f"{names[0]}.done")
    assert consume_markers(spool, status) == 1
    assert sorted(p.name for p in (spool / OK).iterdir()) == names[1:]


def _push_async_while(tmp_path: Path, pusher) -> tuple[bool | None, str]:
    """Run archive_command's fallback while ``pusher(spool, segment)`` acts as the daemon in another thread."""
    import threading

    from cqox_platform.backup.wal.push_client import push_async
    from cqox_platform.errors import CqoxError

    pgdata, settings, fallback, spool = _setup(tmp_path)
    segment = pgdata / "pg_wal" / NAME
    segment.write_bytes(os.urandom(4096))
    (pgdata / "pg_wal" / "archive_status" / f"{NAME}.ready").touch()
    write_marker(spool, ERROR, NAME, f"{NAME} NOT archived: S3 unreachable (an hour ago)")
    old = time.time() - 3600
    os.utime(spool / ERROR / NAME, (old, old))
    worker = threading.Thread(target=pusher, args=(spool, segment))
    worker.start()
    try:
        return push_async(settings, pgdata, Path("pg_wal") / NAME, fallback, wait=10.0), ""
    except CqoxError as exc:
        return None, str(exc)
    finally:
        worker.join()


def test_an_error_from_before_the_call_is_not_the_verdict_the_pushers_next_attempt_is(tmp_path):
    """A failure the pusher recorded while S3 was down, and has since retried, must not fail PostgreSQL's call."""

    def succeeds_on_retry(spool, segment):
        time.sleep(0.3)
        (spool / ERROR / NAME).unlink()
        _mark(spool, segment)

    archived, error = _push_async_while(tmp_path, succeeds_on_retry)
    assert archived is True, error


def test_an_error_the_pusher_records_during_the_call_is_reported(tmp_path):
    def fails_again(spool, _segment):
        time.sleep(0.3)
        write_marker(spool, ERROR, NAME, f"{NAME} NOT archived: Vault is sealed")

    archived, error = _push_async_while(tmp_path, fails_again)
    assert archived is None and "Vault is sealed" in error
