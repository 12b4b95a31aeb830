"""Where the asynchronous WAL pusher keeps its markers, and the ``archive_command`` lines that read them.

Shared by the stack (which writes ``archive_command`` into PostgreSQL's configuration) and the backup package
(the pusher and its fallback), so both agree on one layout without either importing the other. The marker
semantics are described in ``backup.wal_async_client``. Standard library only: the fallback imports this.
"""

from __future__ import annotations

import hashlib
import shlex
from pathlib import Path

OK, ERROR = "ok", "error"


def spool_dir(settings_path: Path, pgdata: Path) -> Path:
    """One spool (and so one pusher) per data directory, beside the archiver's settings."""
    digest = hashlib.sha256(str(Path(pgdata).resolve()).encode()).hexdigest()[:16]
    return Path(settings_path).parent / "spool" / digest


def fast_archive_command(cli: Path, settings_path: Path, pgdata: Path) -> str:
    """PostgreSQL's ``archive_command`` in async mode: a shell test of the marker, else the Python fallback.

    PostgreSQL runs it with ``/bin/sh -c`` inside the data directory, ``%p`` relative to it; ``-ef`` (same
    device and inode) is a builtin of dash, bash and busybox sh, so a segment the pusher already archived costs
    no process beyond that shell. The fallback waits for the pusher, starting it if needed.
    """
    ok = shlex.quote(str(spool_dir(settings_path, pgdata) / OK))
    fallback = (
        f"exec {shlex.quote(str(cli))} wal-push %p --async --config {shlex.quote(str(settings_path))} "
        f"--pgdata {shlex.quote(str(Path(pgdata).resolve()))}"
    )
    return f"[ %p -ef {ok}/%f ] || {fallback}"


def sync_archive_command(cli: Path, settings_path: Path) -> str:
    """``archive_command`` in sync mode: one process pushes one file and waits for S3."""
    return f"{shlex.quote(str(cli))} wal-push %p --config {shlex.quote(str(settings_path))}"
