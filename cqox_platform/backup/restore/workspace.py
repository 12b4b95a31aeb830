"""A restore into a new data directory: its input checks, the undo of what it created, and its signal handling.

``restore_backup`` is the whole of ``cqox-platform restore`` (the command only parses its options and builds the
clients) and reads as the restore's checklist, as pgBackRest's ``cmdRestore`` does. Everything that can be
checked is checked before the download, which may take hours: the target (its form, and that it lies after
the backup's end), the backup id or the choice of a verified one, PGDATA, that the postgres OS user can reach
it, the archiver settings, the backup's record. The backup streams straight into
PGDATA (no staging copy); side files (the server's socket directory and log) go into a fresh private directory
beside PGDATA, never under predictable names.

A failed or interrupted (SIGINT, SIGTERM, SIGHUP) restore removes what it created and nothing else
(``CreatedPaths``); a SIGKILL leaves PGDATA marked ``CQOX_RESTORE_INCOMPLETE`` without ``global/pg_control``, so
no server starts on it, and ``check_pgdata`` refuses it until it is removed.
"""

from __future__ import annotations

import contextlib
import os
import re
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
from cqox_platform.backup.archive.wal_names import format_lsn, parse_lsn
from cqox_platform.backup.restore.files import restore_files
from cqox_platform.backup.restore.recovery import (
    DEFAULT_WAL_PREFETCH,
    RecoveryTarget,
    configure_recovery,
    restore_command_for,
    start_prefetcher,
)
from cqox_platform.backup.restore.space import check_room_to_restore
from cqox_platform.backup.restore.stream import INCOMPLETE_MARKER
from cqox_platform.crypto.keys import DataKeyProvider
from cqox_platform.errors import RestoreError
from cqox_platform.installation import platform_cli
from cqox_platform.pgserver import ScratchCluster, as_pg_user, free_port, pg_bindir, postgres_cannot_reach

#: How long a started restore may take to replay its WAL and promote, pause or shut down at its target.
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

    backup_id: str | None  # None: the newest verified backup that precedes the target
    pgdata: Path  # a new or empty directory
    target_time: str | None = None  # ISO 8601 with a UTC offset
    target_name: str | None = None  # a named restore point
    target_lsn: str | None = None  # PostgreSQL's X/X hex form
    target_xid: str | None = None  # a transaction id (32-bit)
    target_immediate: bool = False  # stop as soon as the backup is consistent
    target_action: str = "promote"  # pause | promote | shutdown
    target_timeline: str = "latest"  # latest | current | a timeline id
    bucket: str | None = None  # another bucket than the primary one (the DR copy)
    port: int | None = None  # of the restored server; default a free one
    start: bool = True  # start it and wait until recovery reached its target and did what its action says
    wal_prefetch: int | None = None  # segments the restore_command fetches ahead (None: the default, 0: off)


@dataclass(frozen=True)
class BackupCatalog:
    """The backups of the cluster in a bucket (oldest first) and which of them a drill verified."""

    records: list[BackupRecord]
    verified: set[str]
    where: str  # the archive prefix, for messages


class RestoreSources(Protocol):
    """Where a restore reads from, built by the caller from its settings.

    Asked only once the inputs that need no settings passed their checks, and in this order, so a mistyped
    option is reported before a missing setting.
    """

    def archiver_config(self) -> Path:
        """The archiver settings file the restored server's restore_command reads (as the postgres OS user)."""
        ...

    def archive_clients(self, bucket: str | None) -> ArchiveClients:
        """S3, the backup key provider and the primary bucket; S3 is the client that reads ``bucket`` when one is
        given (the DR region's, with its read-only key, for the DR copy)."""
        ...

    def fetch_config(self, archiver_config: Path, bucket: str, directory: Path) -> Path:
        """The settings file the restored server's restore_command reads to fetch WAL from ``bucket``:
        ``archiver_config`` for the primary; for the DR copy a file written into ``directory`` (beside PGDATA,
        kept with the restored server) that reaches the DR region with its read-only key."""
        ...

    def backup_catalog(self, clients: ArchiveClients, bucket: str) -> BackupCatalog:
        """The cluster's backups in ``bucket`` and the drills' verdicts, asked only to choose a backup (no
        ``--backup``); raises ``RestoreInputError`` naming what it could not reach."""
        ...

    def xid_status(self, system_id: str, xid: int) -> str | None:
        """The live cluster's word on ``xid`` ("committed", "aborted", "in progress", "future", "unknown" when
        too old to tell), or None when the cluster behind the backup is not reachable (then replay tells)."""
        ...


@dataclass(frozen=True)
class RestoredCluster:
    """A restored data directory and, when it was started, how to reach its private server."""

    pgdata: Path
    socket_dir: Path
    port: int
    log: Path
    started: bool
    backup_id: str
    outcome: str  # "promoted" | "paused" | "shut down" | "not started": what the server did, as it said so
    stopped_at: str = ""  # PostgreSQL's line on where recovery stopped ("" at the end of the archive)


def restore_backup(request: RestoreRequest, sources: RestoreSources, say: Say) -> RestoredCluster:
    """Restore a backup into ``request.pgdata`` and recover it (to the end of the archive or a target), then wait
    for what the target's action means: promoted, paused at the target, or shut down there.

    Without ``request.backup_id`` the newest backup a drill verified that precedes the target is chosen and the
    choice said (``choose_backup``); an unverified one never is.

    The restored server listens on a private unix socket and does not archive, so no client or archive mixes
    it up with the primary; a person opens it by editing ``listen_addresses``. Installs SIGTERM and SIGHUP
    handlers while it works, so call it from the main thread. Raises ``RestoreInputError`` before anything is
    created, ``RestoreInterrupted`` after undoing what it created.
    """
    pgdata = Path(os.path.abspath(request.pgdata))
    target = recovery_target(
        time=request.target_time,
        name=request.target_name,
        lsn=request.target_lsn,
        xid=request.target_xid,
        immediate=request.target_immediate,
        action=request.target_action,
        timeline=request.target_timeline,
    )
    if request.backup_id is None:
        check_backup_choosable(target)
    else:
        check_backup_id(request.backup_id)
    check_pgdata(pgdata)
    archiver_config = sources.archiver_config()
    check_archiver_config(archiver_config)
    bindir = pg_bindir()
    clients = sources.archive_clients(request.bucket)
    bucket = request.bucket or clients.bucket
    if request.backup_id is None:
        catalog = sources.backup_catalog(clients, bucket)
        record, why = choose_backup(target, catalog)
        say(f"chose backup {record.backup_id}: {why}")
    else:
        record = find_backup(clients.s3, bucket, request.backup_id)
    check_target_after_backup(target, record)
    archive = Archive(clients.s3, bucket, record.system_id)
    prefetch = DEFAULT_WAL_PREFETCH if request.wal_prefetch is None else request.wal_prefetch
    check_room_to_restore(archive, record, target, pgdata, "--pgdata", prefetch=prefetch)
    if target.kind == "xid":
        status = sources.xid_status(record.system_id, int(target.value))
        if status is None:
            say(
                f"--target-xid {target.value} not checked against the live cluster (it did not answer, or it is not "
                f"the cluster of backup {record.backup_id}); replay will tell whether it committed"
            )
        check_xid_status(int(target.value), status)

    created = CreatedPaths(pgdata)
    cluster: ScratchCluster | None = None
    outcome = "not started"
    with terminations_interrupt():
        try:
            early = request.start and bool(prefetch)
            if early:
                # The prefetcher starts, logs in and verifies the first segments while the files stream in, so
                # the server's first requests find them ready (it exits if this process dies before the end).
                pgdata.parent.mkdir(parents=True, exist_ok=True)
                created.side = _side_directory(pgdata)
                fetch_config = sources.fetch_config(archiver_config, bucket, created.side)
                start_prefetcher(
                    platform_cli(),
                    fetch_config,
                    bucket,
                    prefetch,
                    pgdata,
                    record.start_wal,
                    system_id=int(record.system_id),
                    restore_pid=os.getpid(),
                )
            _stream_backup(archive, clients.provider, record, pgdata, bindir, say)
            if created.side is None:
                created.side = _side_directory(pgdata)
                fetch_config = sources.fetch_config(archiver_config, bucket, created.side)
            socket_dir = created.side / "sock"
            port = request.port or free_port()
            restore_command = restore_command_for(
                platform_cli(), fetch_config, bucket, prefetch, pgdata, clear=not early
            )
            configure_recovery(pgdata, port=port, socket_dir=socket_dir, restore_command=restore_command, target=target)
            cluster = ScratchCluster(pgdata, socket_dir, port, created.side / "server.log", bindir)
            if request.start:
                cluster.start()
                outcome = _wait_for_action(cluster, target, say)
            else:
                cluster.start_files()
        except BaseException as exc:
            if cluster is not None:
                cluster.stop()
            created.undo()
            if isinstance(exc, RestoreInterrupted):
                raise RestoreInterrupted(f"{exc}; removed what it had created ({pgdata}).") from None
            raise
    stopped_at = cluster.stop_point() if request.start else ""
    return RestoredCluster(pgdata, socket_dir, port, cluster.log, request.start, record.backup_id, outcome, stopped_at)


def _wait_for_action(cluster: ScratchCluster, target: RecoveryTarget, say: Say) -> str:
    """Wait for what the target's action means, as the server reports it, and name it: never "promoted" for a
    server that paused or shut down. Without a target PostgreSQL always promotes at the end of the archive."""
    if target.kind == "end_of_archive" or target.action == "promote":
        cluster.wait_promoted(PROMOTE_TIMEOUT, say)
        return "promoted"
    if target.action == "pause":
        cluster.wait_paused(PROMOTE_TIMEOUT, say)
        return "paused"
    cluster.wait_shut_down_at_target(PROMOTE_TIMEOUT, say)
    return "shut down"


# --- input checks: before anything is downloaded or created --------------------------------------------------


#: The options that name a recovery target: at most one may be given.
TARGET_OPTIONS = ("--target-time", "--target-name", "--target-lsn", "--target-xid", "--target-immediate")
TARGET_ACTIONS = ("pause", "promote", "shutdown")
#: PostgreSQL's LSN text form: two hex numbers of at most 32 bits each (``pg_lsn``).
LSN_FORM = re.compile(r"^[0-9A-Fa-f]{1,8}/[0-9A-Fa-f]{1,8}$")
#: xids below 3 are reserved (invalid, bootstrap, frozen): no transaction commits with them.
FIRST_NORMAL_XID = 3
MAX_XID = 2**32 - 1
MAX_TIMELINE = 2**32 - 1


def recovery_target(
    *,
    time: str | None = None,
    name: str | None = None,
    lsn: str | None = None,
    xid: str | None = None,
    immediate: bool = False,
    action: str = "promote",
    timeline: str = "latest",
) -> RecoveryTarget:
    """The recovery target from the operator's options: at most one of a time with its UTC offset, a named
    point, an LSN, an xid or ``immediate`` (none: the end of the archive), with its action and timeline."""
    given = [
        option
        for option, value in zip(TARGET_OPTIONS, (time, name, lsn, xid, immediate), strict=True)
        if value not in (None, "", False)
    ]
    if len(given) > 1:
        raise RestoreInputError(
            f"give one recovery target, not {' and '.join(given)}: recovery stops at a single point "
            f"({', '.join(TARGET_OPTIONS)}; none recovers to the end of the archive)."
        )
    if action not in TARGET_ACTIONS:
        raise RestoreInputError(f"--target-action {action!r} is not one of {', '.join(TARGET_ACTIONS)}.")
    timeline = check_timeline(timeline)
    if not given:
        if action != "promote":
            raise RestoreInputError(
                f"--target-action {action} needs a recovery target ({', '.join(TARGET_OPTIONS)}): without one "
                f"recovery replays to the end of the archive and PostgreSQL always promotes there."
            )
        return RecoveryTarget("end_of_archive", action=action, timeline=timeline)
    if name:
        return RecoveryTarget("restore_point", name, action, timeline)
    if lsn:
        return RecoveryTarget("lsn", check_lsn(lsn), action, timeline)
    if xid:
        return RecoveryTarget("xid", str(check_xid(xid)), action, timeline)
    if immediate:
        return RecoveryTarget("backup_end", action=action, timeline=timeline)
    return RecoveryTarget("time", check_time(time or "").isoformat(sep=" "), action, timeline)


def check_time(target_time: str) -> datetime:
    """An ISO 8601 time with a UTC offset (a time without one would be read in the server's time zone)."""
    try:
        when = datetime.fromisoformat(target_time)
    except ValueError:
        when = None
    if when is None or when.tzinfo is None:
        raise RestoreInputError(
            f"--target-time {target_time!r} is not an ISO 8601 time with a UTC offset "
            f"(e.g. '2026-11-26 06:30:00+00'); a time without one would be read in the server's time zone."
        )
    return when


def check_lsn(lsn: str) -> str:
    """An LSN in PostgreSQL's form, two hex numbers of at most 8 digits (``pg_current_wal_lsn()`` prints it)."""
    if not LSN_FORM.match(lsn.strip()):
        raise RestoreInputError(
            f"--target-lsn {lsn!r} is not an LSN: PostgreSQL writes one as two hex numbers of at most 8 digits "
            f"separated by '/' (e.g. '0/3000148', as pg_current_wal_lsn() prints it)."
        )
    return format_lsn(parse_lsn(lsn.strip()))


def check_xid(xid: str) -> int:
    """A transaction id recovery can stop at: an integer from 3 (the first normal xid) to 2^32-1.

    PostgreSQL compares the 32-bit xid of each commit with it. ``txid_current()`` adds an epoch above 2^32 once
    xids wrapped around; such a value is refused with the 32-bit xid to give instead, never truncated silently.
    """
    try:
        value = int(xid.strip(), 10)
    except ValueError:
        raise RestoreInputError(
            f"--target-xid {xid!r} is not a transaction id: give the decimal xid (e.g. what txid_current() or "
            f"pg_stat_activity.backend_xid showed)."
        ) from None
    if value > MAX_XID and value < 2**64:
        raise RestoreInputError(
            f"--target-xid {value} is above 2^32-1: it carries an epoch (txid_current() after wraparound); "
            f"recovery_target_xid is the 32-bit xid, here --target-xid {value % 2**32} (check it is the one meant)."
        )
    if not FIRST_NORMAL_XID <= value <= MAX_XID:
        raise RestoreInputError(
            f"--target-xid {value} is out of range: transactions have xids from {FIRST_NORMAL_XID} to {MAX_XID}."
        )
    return value


def check_timeline(timeline: str) -> str:
    """``latest``, ``current`` or a timeline id (a positive integer, as in the WAL file names' first 8 digits)."""
    text = timeline.strip().lower()
    if text in ("latest", "current"):
        return text
    if text.isdigit() and 1 <= int(text) <= MAX_TIMELINE:
        return str(int(text))
    raise RestoreInputError(
        f"--target-timeline {timeline!r} is not 'latest', 'current' or a timeline id (a positive integer, e.g. 2)."
    )


def check_xid_status(xid: int, status: str | None) -> None:
    """Recovery stops at an xid only when it finds that transaction's commit: one the cluster has not assigned
    yet, one that aborted or one still running would replay the whole archive after hours of download and fail
    ("recovery ended before configured recovery target was reached")."""
    why = {
        "future": "is in the future: the cluster has not assigned it yet",
        "aborted": "aborted: recovery only stops at a commit",
        "in progress": "has not committed yet: recovery would not find its commit in the archive",
    }.get(status or "")
    if why:
        raise RestoreInputError(
            f"--target-xid {xid} {why}. Check the xid (txid_current(), pg_stat_activity.backend_xid, the log), "
            f"or use --target-time or --target-lsn."
        )


def check_backup_choosable(target: RecoveryTarget) -> None:
    """Without ``--backup`` the backup is chosen from the target; an xid or a restore point's name says nothing
    about which backups precede it, so those need ``--backup``."""
    if target.kind in ("xid", "restore_point"):
        option = "--target-xid" if target.kind == "xid" else "--target-name"
        raise RestoreInputError(
            f"{option} needs --backup: a {'transaction id' if target.kind == 'xid' else 'restore point name'} "
            f"does not say which backups precede it (backups record times and LSNs, not xids or names), so no "
            f"backup can be chosen safely. Give --backup with a verified backup that ended before it "
            f"(`cqox-platform backup list`)."
        )


def choose_backup(target: RecoveryTarget, catalog: BackupCatalog) -> tuple[BackupRecord, str]:
    """The newest verified backup that precedes the target, and why it was chosen.

    A time target needs a backup that ended at or before it, an LSN target one whose end LSN is at or before it
    (recovery must reach the backup's consistent point first); ``immediate`` and no target take the newest
    verified backup. An integer timeline rules out backups on a later timeline. Fails closed: an unverified
    backup is never chosen, and the error names the ones that would have fitted.
    """
    records = catalog.records
    if not records:
        raise RestoreInputError(f"no backups in {catalog.where}: nothing to restore (`cqox-platform backup create`).")
    oldest = records[0]
    if target.kind == "time":
        when = datetime.fromisoformat(target.value)
        if when < min(r.stop_datetime for r in records):
            first = min(records, key=lambda r: r.stop_datetime)
            raise RestoreInputError(
                f"--target-time {target.value} is before the oldest backup ({first.backup_id}, ended "
                f"{first.stop_time}): no backup in {catalog.where} can recover to it."
            )
        fits = [r for r in records if r.stop_datetime <= when]
        key, rule = (lambda r: r.stop_datetime), f"ended at or before the target time {target.value}"
    elif target.kind == "lsn":
        lsn = parse_lsn(target.value)
        if lsn < min(parse_lsn(r.stop_lsn) for r in records):
            first = min(records, key=lambda r: parse_lsn(r.stop_lsn))
            raise RestoreInputError(
                f"--target-lsn {target.value} is before the end of the oldest backup ({first.backup_id}, end LSN "
                f"{first.stop_lsn}): no backup in {catalog.where} can recover to it."
            )
        fits = [r for r in records if parse_lsn(r.stop_lsn) <= lsn]
        key, rule = (lambda r: parse_lsn(r.stop_lsn)), f"has its end LSN at or before the target LSN {target.value}"
    elif target.kind in ("backup_end", "end_of_archive"):
        fits = list(records)
        key, rule = (lambda r: parse_lsn(r.stop_lsn)), ""
    else:
        check_backup_choosable(target)
        raise RestoreInputError(f"cannot choose a backup for a {target.kind} target; give --backup.")
    if target.timeline.isdigit():
        fits = [r for r in fits if r.timeline <= int(target.timeline)]
        rule += f"{' and ' if rule else ''}is on timeline {target.timeline} or an earlier one"
    verified = [r for r in fits if r.backup_id in catalog.verified]
    if not verified:
        unverified = ", ".join(r.backup_id for r in sorted(fits, key=key, reverse=True)) or "none"
        raise RestoreInputError(
            f"no verified backup in {catalog.where}{' that ' + rule if rule else ''} (backups that fit but no drill "
            f"verified: {unverified}; oldest backup {oldest.backup_id}). An unverified backup is never chosen: "
            f"drill one (materialize restore_drill with its backup_id), or name it with --backup to restore it "
            f"unverified on purpose."
        )
    chosen = max(verified, key=key)
    skipped = [r.backup_id for r in fits if key(r) > key(chosen)]
    later = [r.backup_id for r in records if r not in fits]
    why = f"the newest backup verified by a drill{' that ' + rule if rule else ''}"
    why += f" (ended {chosen.stop_time}, end LSN {chosen.stop_lsn})"
    if skipped:
        why += f"; skipped newer unverified {', '.join(skipped)}"
    if later and target.kind in ("time", "lsn"):
        why += f"; {len(later)} backup(s) end after the target"
    return chosen, why


def check_target_after_backup(target: RecoveryTarget, record: BackupRecord) -> None:
    """The target lies at or after the backup's end, on a timeline it can reach: recovery must first replay to
    the backup's consistent point, so an earlier target would only fail after the whole download."""
    if target.kind == "lsn" and parse_lsn(target.value) < parse_lsn(record.stop_lsn):
        raise RestoreInputError(
            f"--target-lsn {target.value} is before the end of backup {record.backup_id} (end LSN "
            f"{record.stop_lsn}): recovery cannot stop before the backup is consistent. Choose an older backup "
            f"(`cqox-platform backup list`), or leave out --backup to have one chosen."
        )
    if target.kind == "time" and datetime.fromisoformat(target.value) < record.stop_datetime:
        raise RestoreInputError(
            f"--target-time {target.value} is before the end of backup {record.backup_id} (ended "
            f"{record.stop_time}): recovery cannot stop before the backup is consistent. Choose an older backup "
            f"(`cqox-platform backup list`), or leave out --backup to have one chosen."
        )
    if target.timeline.isdigit() and int(target.timeline) < record.timeline:
        raise RestoreInputError(
            f"--target-timeline {target.timeline} is older than backup {record.backup_id}'s timeline "
            f"{record.timeline}: recovery cannot go back to an earlier timeline. Give {record.timeline} or later, "
            f"'latest', or a backup taken on that timeline."
        )


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
    """A fresh directory beside PGDATA for the server's socket and log. Only root writes it (0711: postgres may
    reach the socket directory and log inside). With ``--no-start`` it is made only once the files are in, so a
    restore killed while streaming leaves nothing beside PGDATA; a restore that starts its server makes it
    first, for the WAL prefetcher that starts with the download (a SIGKILL then leaves it too)."""
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
