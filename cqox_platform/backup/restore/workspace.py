"""A restore into a new data directory: its input checks, the undo of what it created, and its signal handling.

``restore_backup`` is the whole of ``cqox-platform restore`` (the command only parses its options and builds the
clients) and reads as the restore's checklist, as pgBackRest's ``cmdRestore`` does. Everything that can be
checked is checked before the download, which may take hours: the target, the backup id, PGDATA, that the
postgres OS user can reach it, the archiver settings, the backup's record. The backup streams straight into
PGDATA (no staging copy); side files (the server's socket directory and log) go into a fresh private directory
beside PGDATA, never under predictable names.

A failed or interrupted (SIGINT, SIGTERM, SIGHUP) restore removes what it created and nothing else
(``CreatedPaths``); a SIGKILL leaves PGDATA marked ``CQOX_RESTORE_INCOMPLETE`` without ``global/pg_control``, so
no server starts on it, and ``check_pgdata`` refuses it until it is removed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Protocol

from cqox_platform.backup.archive.records import BackupRecord, find_backup
from cqox_platform.backup.archive.store import Archive, ArchiveClients, check_backup_id
from cqox_platform.backup.restore.files import restore_files
from cqox_platform.backup.restore.recovery import (
    DEFAULT_WAL_PREFETCH,
    RecoveryTarget,
    configure_recovery,
    restore_command_for,
)
from cqox_platform.backup.restore.stream import INCOMPLETE_MARKER
from cqox_platform.crypto.keys import DataKeyProvider
from cqox_platform.errors import RestoreError
from cqox_platform.installation import platform_cli
from cqox_platform.pgserver import ScratchCluster, as_pg_user, free_port, pg_bindir, postgres_cannot_reach

#: How long a started restore may take to replay its WAL and promote.
PROMOTE_TIMEOUT = 24 * 3600

Say = Callable[[str], None]


class RestoreInputError(RestoreError):
    """Bad input to a restore: named and refused before anything is downloaded or created."""


class RestoreInterrupted(BaseException):
    """SIGTERM or SIGHUP during a restore: unwinds through the undo instead of dying with files half-written.

    A ``BaseException``, like ``KeyboardInterrupt``, so no ``except Exception`` on the way stops it.
    """


@dataclass(frozen=True)
class RestoreRequest:
    """What to restore where, as the operator gave it (checked by ``restore_backup``, not here)."""

    backup_id: str
    pgdata: Path  # a new or empty directory
    target_time: str | None = None  # ISO 8601 with a UTC offset
    target_name: str | None = None  # a named restore point
    bucket: str | None = None  # another bucket than the primary one (the DR copy)
    port: int | None = None  # of the restored server; default a free one
    start: bool = True  # start it and wait until recovery has promoted it
    wal_prefetch: int | None = None  # segments the restore_command fetches ahead (None: the default, 0: off)


class RestoreSources(Protocol):
    """Where a restore reads from, built by the caller from its settings.

    Asked only once the inputs that need no settings passed their checks, and in this order, so a mistyped
    option is reported before a missing setting.
    """

    def archiver_config(self) -> Path:
        """The archiver settings file the restored server's restore_command reads (as the postgres OS user)."""
        ...

    def archive_clients(self) -> ArchiveClients:
        """S3, the backup key provider and the primary bucket."""
        ...


@dataclass(frozen=True)
class RestoredCluster:
    """A restored data directory and, when it was started, how to reach its private server."""

    pgdata: Path
    socket_dir: Path
    port: int
    log: Path
    started: bool


def restore_backup(request: RestoreRequest, sources: RestoreSources, say: Say) -> RestoredCluster:
    """Restore ``request.backup_id`` into ``request.pgdata`` and recover it (to the end of the archive or a target).

    The restored server listens on a private unix socket and does not archive, so no client or archive mixes
    it up with the primary; a person opens it by editing ``listen_addresses``. Installs SIGTERM and SIGHUP
    handlers while it works, so call it from the main thread. Raises ``RestoreInputError`` before anything is
    created, ``RestoreInterrupted`` after undoing what it created.
    """
    pgdata = Path(os.path.abspath(request.pgdata))
    target = recovery_target(request.target_time, request.target_name)
    check_backup_id(request.backup_id)
    check_pgdata(pgdata)
    archiver_config = sources.archiver_config()
    check_archiver_config(archiver_config)
    bindir = pg_bindir()
    clients = sources.archive_clients()
    bucket = request.bucket or clients.bucket
    record = find_backup(clients.s3, bucket, request.backup_id)

    created = CreatedPaths(pgdata)
    cluster: ScratchCluster | None = None
    with terminations_interrupt():
        try:
            _stream_backup(Archive(clients.s3, bucket, record.system_id), clients.provider, record, pgdata, bindir, say)
            created.side = _side_directory(pgdata)
            socket_dir = created.side / "sock"
            port = request.port or free_port()
            prefetch = DEFAULT_WAL_PREFETCH if request.wal_prefetch is None else request.wal_prefetch
            restore_command = restore_command_for(platform_cli(), archiver_config, bucket, prefetch, pgdata)
            configure_recovery(pgdata, port=port, socket_dir=socket_dir, restore_command=restore_command, target=target)
            cluster = ScratchCluster(pgdata, socket_dir, port, created.side / "server.log", bindir)
            if request.start:
                cluster.start()
                cluster.wait_promoted(PROMOTE_TIMEOUT, say)
            else:
                cluster.start_files()
        except BaseException as exc:
            if cluster is not None:
                cluster.stop()
            created.undo()
            if isinstance(exc, RestoreInterrupted):
                raise RestoreInterrupted(f"{exc}; removed what it had created ({pgdata}).") from None
            raise
    return RestoredCluster(pgdata, socket_dir, port, cluster.log, request.start)


# --- input checks: before anything is downloaded or created --------------------------------------------------


def recovery_target(target_time: str | None, target_name: str | None) -> RecoveryTarget:
    """The recovery target from the operator's options: a named point, a time with its UTC offset, or the end."""
    if target_time and target_name:
        raise RestoreInputError("give --target-time or --target-name, not both.")
    if target_name:
        return RecoveryTarget("restore_point", target_name)
    if not target_time:
        return RecoveryTarget("end_of_archive")
    try:
        when = datetime.fromisoformat(target_time)
    except ValueError:
        when = None
    if when is None or when.tzinfo is None:
        raise RestoreInputError(
            f"--target-time {target_time!r} is not an ISO 8601 time with a UTC offset "
            f"(e.g. '2026-11-26 06:30:00+00'); a time without one would be read in the server's time zone."
        )
    return RecoveryTarget("time", when.isoformat(sep=" "))


def check_pgdata(pgdata: Path) -> None:
    """PGDATA is a new or empty directory, not left by an interrupted restore, that postgres can reach."""
    if pgdata.is_symlink() or (pgdata.exists() and not pgdata.is_dir()):
        raise RestoreInputError(f"--pgdata {pgdata} exists and is not a directory; restore into a new directory.")
    if (pgdata / INCOMPLETE_MARKER).exists():
        raise RestoreInputError(
            f"--pgdata {pgdata} holds an interrupted restore ({INCOMPLETE_MARKER}): it is not a usable data "
            f"directory; remove it (rm -rf {pgdata}) and restore again."
        )
    if pgdata.exists() and any(pgdata.iterdir()):
        raise RestoreInputError(f"--pgdata {pgdata} is not empty; restore into a new directory.")
    blocked = postgres_cannot_reach(pgdata.parent)
    if blocked is not None:
        raise RestoreInputError(
            f"the postgres OS user cannot traverse {blocked}, so it could not use --pgdata {pgdata}: "
            f"`chmod o+x {blocked}` (and each parent), or choose a --pgdata under a directory it can reach."
        )


def check_archiver_config(path: Path) -> None:
    """The restored server's restore_command reads this file as postgres: it must exist now, not after hours."""
    if not path.is_file():
        raise RestoreInputError(
            f"the archiver settings {path} (CQOX_WAL_ARCHIVER_CONFIG) do not exist: the restored server could "
            f"not fetch WAL. Materialize `vault_config`, or point CQOX_WAL_ARCHIVER_CONFIG at the file."
        )
    if subprocess.run(as_pg_user(["test", "-r", str(path)]), capture_output=True).returncode != 0:
        raise RestoreInputError(f"the postgres OS user cannot read the archiver settings {path}.")


# --- the steps that create things -----------------------------------------------------------------------------


def _stream_backup(
    archive: Archive, provider: DataKeyProvider, record: BackupRecord, pgdata: Path, bindir: Path, say: Say
) -> None:
    """The backup's files, streamed straight into a private PGDATA."""
    pgdata.mkdir(parents=True, exist_ok=True)
    pgdata.chmod(0o700)
    files = restore_files(archive, provider, record, pgdata, say, bindir)
    say("restored files: " + ", ".join(f"{phase} {secs:.1f} s" for phase, secs in files.seconds.items()))


def _side_directory(pgdata: Path) -> Path:
    """A fresh directory beside PGDATA for the server's socket and log, made only once the files are in, so a
    restore killed while streaming leaves nothing beside PGDATA. Only root writes it (0711: postgres may reach
    the socket directory and log inside)."""
    side = Path(tempfile.mkdtemp(prefix=f".{pgdata.name}.restore-", dir=pgdata.parent))
    side.chmod(0o711)
    return side


# --- undo and signals -----------------------------------------------------------------------------------------


class CreatedPaths:
    """What a restore created, so a failed one removes exactly that and never a file that was there before."""

    def __init__(self, pgdata: Path) -> None:
        self.pgdata = pgdata
        self.top = pgdata  # the highest directory this restore creates
        while not self.top.parent.exists():
            self.top = self.top.parent
        self.stat = pgdata.stat() if pgdata.exists() else None  # None: the restore creates PGDATA itself
        self.side: Path | None = None

    def undo(self) -> None:
        if self.side is not None:
            shutil.rmtree(self.side, ignore_errors=True)
        if self.stat is None:
            shutil.rmtree(self.top, ignore_errors=True)
            return
        for entry in self.pgdata.iterdir():  # it was empty before the restore: everything inside is ours
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            os.chown(self.pgdata, self.stat.st_uid, self.stat.st_gid, follow_symlinks=False)
            os.chmod(self.pgdata, self.stat.st_mode & 0o7777, follow_symlinks=False)


@contextlib.contextmanager
def terminations_interrupt() -> Iterator[None]:
    """While inside, SIGTERM and SIGHUP raise ``RestoreInterrupted`` (SIGINT already raises KeyboardInterrupt)."""

    def _raise(signum: int, _frame: object) -> None:
        raise RestoreInterrupted(f"restore interrupted by signal {signum}")

    previous = {sig: signal.signal(sig, _raise) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
