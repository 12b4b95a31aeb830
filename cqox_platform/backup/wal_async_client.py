"""The archive_command side of ``wal-push --async``: report the background pusher's result, start it if needed.

Only the standard library is imported here: this runs once per WAL segment, and its start-up time is the
whole cost of archiving a segment the pusher has already sent (see ``wal_async`` for the pusher).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import subprocess
import time
from pathlib import Path

from cqox_platform.backup.walnames import check_wal_name
from cqox_platform.errors import CqoxError


def spool_dir(settings_path: Path, pgdata: Path) -> Path:
    """One spool (and so one pusher) per data directory, beside the archiver's settings."""
    digest = hashlib.sha256(str(Path(pgdata).resolve()).encode()).hexdigest()[:16]
    return Path(settings_path).parent / "spool" / digest


def marker(spool: Path, kind: str, name: str) -> Path:
    return spool / kind / name


def write_marker(spool: Path, kind: str, name: str, text: str = "") -> None:
    directory = spool / kind
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / f".{name}.tmp"
    tmp.write_text(text)
    os.replace(tmp, directory / name)


def push_async(settings_path: Path, pgdata: Path, wal_path: Path, cli: Path, wait: float = 60.0) -> bool:
    """archive_command's side: True when the daemon archived ``wal_path``; raises with the daemon's error."""
    spool = spool_dir(settings_path, pgdata)
    name = check_wal_name(Path(wal_path).name)
    deadline = time.monotonic() + wait
    started_daemon = False
    while True:
        ok, error = marker(spool, "ok", name), marker(spool, "error", name)
        if ok.exists():
            ok.unlink(missing_ok=True)
            return True
        if error.exists():
            message = error.read_text()
            error.unlink(missing_ok=True)
            raise CqoxError(message)
        if not started_daemon:
            ensure_daemon(settings_path, pgdata, cli)
            started_daemon = True
        if time.monotonic() > deadline:
            raise CqoxError(
                f"{name} is still queued for the asynchronous pusher after {wait:.0f} s (its log: {spool}/daemon.log)"
            )
        time.sleep(0.05)


def ensure_daemon(settings_path: Path, pgdata: Path, cli: Path) -> None:
    """Start the pusher unless one holds the lock (it is cheap to try: the loser exits at once)."""
    spool = spool_dir(settings_path, pgdata)
    spool.mkdir(parents=True, exist_ok=True)
    with open(spool / "daemon.lock", "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return  # running
        fcntl.flock(lock, fcntl.LOCK_UN)
    with open(spool / "daemon.log", "ab") as log:
        subprocess.Popen(
            [str(cli), "wal-push-daemon", "--config", str(settings_path), "--pgdata", str(pgdata)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
            cwd=str(pgdata),
        )
