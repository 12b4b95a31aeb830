"""The archive_command side of asynchronous archiving: the spool's markers, the fast check, the fallback wait.

The pusher (``wal_async``) works ahead of PostgreSQL and leaves one marker per archived file in the spool. A
marker says: *this name, this very file, archived with its manifest durable in S3*. It is therefore a **hard
link to the WAL file the pusher read** (``ok/<name>``, checked against the descriptor the bytes were read from,
after checking the file did not change while it was uploaded): same inode means same file, same size and the
content that was hashed into the manifest's ``wal-sha256``. That makes the check a shell builtin:
``[ pg_wal/X -ef SPOOL/ok/X ]`` (device and inode equal), so ``archive_command`` for a segment the pusher
already sent costs one ``/bin/sh`` (which PostgreSQL starts anyway) and two ``stat`` calls, no interpreter.
A recycled segment (PostgreSQL renames old files to future names) never matches, because the marker's name is
the segment's name; a different file under the same name never matches, because its inode differs.

When the spool is on another filesystem than ``pg_wal`` (no hard links), the marker is a small JSON file with
the file's device, inode, size, mtime and SHA-256 instead, and the shell check falls through to the Python
fallback (``wal-push --async``), which verifies all of it.

Markers are consumed by the pusher: once ``archive_status/<name>.ready`` is gone (PostgreSQL recorded the
success), ``ok/<name>`` is removed, so the spool holds only what PostgreSQL has not yet asked about.

Only the standard library is imported here: the fallback runs once per segment the pusher had not finished.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import subprocess
import time
from pathlib import Path

from cqox_platform.backup.archive.wal_names import check_wal_name
from cqox_platform.backup.wal.spool import ERROR, OK, spool_dir
from cqox_platform.errors import CqoxError

JSON_MARKER_MAX = 4096
LOG_ROTATE_BYTES = 16 * 2**20


def marker(spool: Path, kind: str, name: str) -> Path:
    return spool / kind / name


def write_marker(spool: Path, kind: str, name: str, text: str = "") -> None:
    directory = spool / kind
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / f".{name}.tmp"
    tmp.write_text(text)
    os.replace(tmp, directory / name)


def identity(st: os.stat_result) -> dict[str, int]:
    return {"dev": st.st_dev, "ino": st.st_ino, "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def write_ok_marker(spool: Path, path: Path, fd: int, sha256: str) -> str:
    """Mark ``path`` archived, bound to the open file ``fd`` whose bytes were uploaded; returns the marker kind.

    A hard link to that very inode when the spool and ``pg_wal`` share a filesystem (the shell can check it),
    else a JSON identity record (the Python fallback checks it). Linked by name, then checked against ``fd``:
    if the name meanwhile points at another file, nothing is marked.
    """
    name = Path(path).name
    directory = spool / OK
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / f".{name}.tmp"
    tmp.unlink(missing_ok=True)
    read = os.fstat(fd)
    try:
        os.link(path, tmp, follow_symlinks=False)
        kind = "link"
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
            raise
        tmp.write_text(json.dumps({"name": name, "sha256": sha256, **identity(read)}, sort_keys=True))
        kind = "json"
    if kind == "link" and not os.path.samestat(os.stat(tmp), read):
        tmp.unlink(missing_ok=True)
        raise CqoxError(f"{path} was replaced while it was archived; not marked, it is pushed again.")
    os.replace(tmp, directory / name)
    return kind


def marker_matches(spool: Path, wal_path: Path, *, verify_content: bool = False) -> bool:
    """True when ``ok/<name>`` is a trustworthy marker for the file at ``wal_path`` right now."""
    name = Path(wal_path).name
    ok = marker(spool, OK, name)
    try:
        if os.path.samefile(wal_path, ok):
            return True
        with open(ok, "rb") as fh:
            head = fh.read(JSON_MARKER_MAX + 1)
        st = os.stat(wal_path)
    except OSError:
        return False
    if not head.startswith(b"{") or len(head) > JSON_MARKER_MAX:
        return False  # a hard link to another file: stale
    try:
        record = json.loads(head)
    except ValueError:
        return False
    if record.get("name") != name or any(record.get(k) != v for k, v in identity(st).items()):
        return False
    if verify_content:
        digest = hashlib.sha256()
        try:
            with open(wal_path, "rb") as fh:
                while chunk := fh.read(1 << 20):
                    digest.update(chunk)
        except OSError:
            return False
        return digest.hexdigest() == record.get("sha256")
    return True


def push_async(settings_path: Path, pgdata: Path, wal_path: Path, cli: Path, wait: float = 60.0) -> bool:
    """archive_command's fallback: True when the pusher archived ``wal_path``; raises with the pusher's error."""
    spool = spool_dir(settings_path, pgdata)
    name = check_wal_name(Path(wal_path).name)
    full = Path(wal_path) if Path(wal_path).is_absolute() else Path(pgdata) / wal_path
    deadline = time.monotonic() + wait
    called_at_ns = time.time_ns()
    started_daemon = False
    stale_checked = False
    delay = 0.005
    while True:
        if marker_matches(spool, full, verify_content=True):
            return True
        message = _error_since(marker(spool, ERROR, name), called_at_ns)
        if message is not None:
            raise CqoxError(message)
        if not stale_checked:
            # A marker that exists but does not match is from another file under this name: drop it so the
            # pusher looks at this file (and refuses it loudly if S3 holds different content).
            stale_checked = True
            if marker(spool, OK, name).exists() and not marker_matches(spool, full, verify_content=True):
                with contextlib.suppress(OSError):
                    marker(spool, OK, name).unlink()
        if not started_daemon:
            ensure_daemon(settings_path, pgdata, cli)
            started_daemon = True
        if time.monotonic() > deadline:
            raise CqoxError(
                f"{name} is still queued for the asynchronous pusher after {wait:.0f} s (its log: {spool}/daemon.log)"
            )
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


def _error_since(error: Path, called_at_ns: int) -> str | None:
    """The pusher's error for this file if it was recorded after this call began, consumed; else None.

    An older error (S3 was down a minute ago) is the verdict on an attempt the pusher has been retrying since,
    every ``RETRY_AFTER`` s: reporting it would fail PostgreSQL's call for an outage that may be over (and
    cost it a 60 s back-off after three failures). The fallback waits for the outcome of the next attempt.
    """
    try:
        if error.stat().st_mtime_ns < called_at_ns:
            return None
        message = error.read_text()
    except OSError:
        return None
    error.unlink(missing_ok=True)
    return message


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
    log_path = spool / "daemon.log"
    with contextlib.suppress(OSError):
        if log_path.stat().st_size > LOG_ROTATE_BYTES:  # one line per segment: keep one old generation only
            os.replace(log_path, spool / "daemon.log.1")
    with open(log_path, "ab") as log:
        subprocess.Popen(
            [str(cli), "wal-push-daemon", "--config", str(settings_path), "--pgdata", str(pgdata)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
            cwd=str(pgdata),
        )
