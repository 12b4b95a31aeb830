"""How a restored cluster recovers: the recovery target, its private configuration and its restore_command.

Shared by real restores and drills: both make the copy private (unix socket only, no archiving) until a person
decides to open it, and both fetch WAL through ``wal-fetch`` with prefetch.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from cqox_platform.backup.wal.prefetch_client import (
    clear_spool,
    fast_restore_command,
    prefetch_spool,
    relay_command,
    spool_for,
)
from cqox_platform.errors import CqoxError, RestoreError
from cqox_platform.fsutil import read_file, write_file
from cqox_platform.pgserver import PG_OS_USER, as_pg_user
from cqox_platform.settings import child_env


@dataclass
class RecoveryTarget:
    """Where recovery stops, what the server does there, and along which timeline it replays.

    ``kind`` is a named restore point, a time, an LSN, a transaction id, the end of the backup (``immediate``) or
    the end of the archive (no target). Time, LSN and xid targets are inclusive, as PostgreSQL defines it: recovery
    stops just after the commit at that time, the record at that LSN, or the commit of that transaction.
    ``action`` (pause, promote, shutdown) applies only where a target is set; without one PostgreSQL replays to
    the end of the archive and promotes.
    """

    kind: str  # "restore_point" | "time" | "lsn" | "xid" | "backup_end" | "end_of_archive"
    value: str = ""
    action: str = "promote"  # recovery_target_action: "pause" | "promote" | "shutdown"
    timeline: str = "latest"  # recovery_target_timeline: "latest" | "current" | a timeline id

    def settings(self) -> dict[str, str]:
        common = {"recovery_target_action": self.action, "recovery_target_timeline": self.timeline}
        if self.kind == "restore_point":
            return {**common, "recovery_target_name": self.value}
        if self.kind == "time":
            return {**common, "recovery_target_time": self.value, "recovery_target_inclusive": "on"}
        if self.kind == "lsn":
            return {**common, "recovery_target_lsn": self.value, "recovery_target_inclusive": "on"}
        if self.kind == "xid":
            return {**common, "recovery_target_xid": self.value, "recovery_target_inclusive": "on"}
        if self.kind == "backup_end":
            return {**common, "recovery_target": "immediate"}
        if self.kind == "end_of_archive":
            return common
        raise RestoreError(f"unknown recovery target kind {self.kind!r}")


#: The first Linux release whose syncfs(2) returns the write-back errors it met (earlier ones always return 0).
SYNCFS_REPORTS_ERRORS = (5, 8)


def syncfs_reports_errors(release: str | None = None) -> bool:
    """Whether this Linux kernel's syncfs(2) reports write-back errors, so a restored server that syncs its data
    directory with it (``recovery_init_sync_method``) still learns of a lost write, as with fsync. Anything
    else, or a release it cannot read: no (the server keeps fsync)."""
    if release is None:
        uname = os.uname()
        if uname.sysname != "Linux":
            return False
        release = uname.release
    try:
        major, minor = (int(part) for part in release.split("-")[0].split(".")[:2])
    except ValueError:
        return False
    return (major, minor) >= SYNCFS_REPORTS_ERRORS


def configure_recovery(
    pgdata: Path,
    *,
    port: int,
    socket_dir: Path,
    restore_command: str,
    target: RecoveryTarget,
    extra: dict[str, str] | None = None,
) -> None:
    """Make ``pgdata`` a private recovering cluster: unix socket only, no archiving, this restore target (with
    its action and timeline).

    Private on purpose, for drills and for real restores alike: clients must not reach a restored copy (and
    write to it, or take it for the primary) until a person decides to open it (``listen_addresses``).
    """
    settings = {
        "port": str(port),
        "listen_addresses": "",
        "unix_socket_directories": str(socket_dir),
        "archive_mode": "off",
        "ssl": "off",
        "restore_command": restore_command,
        "shared_buffers": "256MB",
        "hot_standby": "on",
        # A restored data directory was never shut down cleanly, so before replaying anything the server makes
        # every file durable (SyncDataDirectory). ``fsync`` opens and syncs its files one by one, on recovery's
        # critical path; ``syncfs`` writes back the file systems that hold the data directory, pg_wal and the
        # tablespaces in one call each. The guarantee is the same: every restored file is on disk before the
        # first record is replayed, and a write-back error is logged by either method (PostgreSQL logs, and does
        # not stop on, a failure of this start-up sync whichever method runs it; syncfs reports one only from
        # Linux 5.8, so older kernels keep fsync). What replay writes is synced by the end-of-recovery checkpoint,
        # which stops the server on a failed sync, as always. syncfs may also write back other programs' dirty
        # pages on those file systems.
        **({"recovery_init_sync_method": "syncfs"} if syncfs_reports_errors() else {}),
        # The restore reads the server's log to tell where recovery stopped and whether it paused or shut down
        # at the target (ScratchCluster): in English whatever the primary's lc_messages.
        "lc_messages": "C",
        # A Patroni node's postgresql.conf names its own data directory's files; the copy must use its own.
        "hba_file": str(pgdata / "pg_hba.conf"),
        "ident_file": str(pgdata / "pg_ident.conf"),
        **target.settings(),
        **(extra or {}),
    }
    lines = ["", "# Written by cqox-platform restore: a private recovering copy."]
    lines += [f"{key} = '{value.replace(chr(39), chr(39) * 2)}'" for key, value in settings.items()]
    # pgdata belongs to postgres by now: replace files by name, never write through a link (cqox_platform.fsutil).
    auto_conf = pgdata / "postgresql.auto.conf"
    try:
        current = read_file(auto_conf).decode()
    except FileNotFoundError:
        current = ""
    write_file(auto_conf, current + "\n".join(lines) + "\n", mode=0o600, owner=PG_OS_USER)
    write_file(
        pgdata / "pg_hba.conf",
        "# Restored copy: only local connections through the private socket directory.\nlocal all all trust\n",
        mode=0o600,
        owner=PG_OS_USER,
    )
    write_file(pgdata / "recovery.signal", "", mode=0o600, owner=PG_OS_USER)


#: Segments the restore_command's prefetcher keeps verified ahead of replay (``wal-fetch --prefetch``); 0 is off.
DEFAULT_WAL_PREFETCH = 8


def restore_command_for(
    cli: Path,
    settings_file: Path,
    bucket: str | None = None,
    prefetch: int = DEFAULT_WAL_PREFETCH,
    pgdata: Path | None = None,
    *,
    clear: bool = True,
) -> str:
    """The restore_command of a restored or drilled cluster: prefetching by default (same exit-code contract).

    With ``pgdata`` (the restored data directory: its ``pg_control`` says which cluster it is) a segment already
    prefetched is handed over by the shell (``fast_restore_command``), without starting the CLI. Building it
    empties that cluster's spool for this path: call it before the server starts, so its first request can only
    be answered by this replay's prefetcher or by the archive, never by what an earlier one left. ``clear=False``
    when this replay's prefetcher already runs (``start_prefetcher`` with ``system_id``, which emptied the spool
    before starting it): its verified segments stay.
    """
    command = f"{shlex.quote(str(cli))} wal-fetch %f %p --config {shlex.quote(str(settings_file))}"
    command += f" --bucket {shlex.quote(bucket)}" if bucket else ""
    if not prefetch:
        return command
    command += f" --prefetch {int(prefetch)}"
    if pgdata is None:
        return command
    try:
        spool = spool_for(settings_file, Path(pgdata).resolve(), bucket)
    except CqoxError:
        return command  # no pg_control to key a spool by: every segment goes through the CLI's checks
    if clear:
        clear_spool(spool)
    return fast_restore_command(spool, f"exec {relay_command(spool, Path(sys.executable))} {command}")


def start_prefetcher(
    cli: Path,
    settings_file: Path,
    bucket: str | None,
    prefetch: int,
    pgdata: Path,
    start_at: str,
    *,
    system_id: int | None = None,
    restore_pid: int | None = None,
) -> None:
    """Start the restored cluster's WAL prefetcher now, as the postgres OS user, before its server starts.

    Why: started by the server's first request, its interpreter start and Vault login came before the first
    segment and every probe, on recovery's critical path; started here it logs in and fetches ``start_at`` (the
    backup's first segment) and those after it while the server starts. Call it after ``restore_command_for``
    (which empties the spool). Nothing depends on it: if it fails to start, the first request starts one.

    With ``system_id`` (the backup's) and ``restore_pid`` (this restore) it starts before the files are
    streamed, so its start, its Vault login and the first segments overlap the download instead of following
    it: this empties the spool itself (then build the restore_command with ``clear=False``), and the prefetcher
    checks segments against ``system_id`` until ``pg_control`` arrives, which must name the same cluster.
    """
    if not prefetch:
        return
    resolved = Path(pgdata).resolve()
    try:
        if system_id is None:
            spool = spool_for(settings_file, resolved, bucket)
        else:
            spool = prefetch_spool(settings_file, resolved, bucket, system_id)
            clear_spool(spool)
    except CqoxError:
        return
    argv = [str(cli), "wal-prefetch-daemon", "--config", str(settings_file), "--pgdata", str(resolved)]
    argv += ["--depth", str(int(prefetch)), "--start-at", start_at] + (["--bucket", bucket] if bucket else [])
    if system_id is not None:
        argv += ["--system-id", str(system_id)] + (["--restore-pid", str(restore_pid)] if restore_pid else [])
    # The spool and its log belong to the postgres OS user, as when the server's first request starts it.
    script = 'mkdir -p "$1" && log="$1/daemon.log" && shift && exec "$@" >> "$log" 2>&1'
    launch = ["sh", "-c", script, "sh", str(spool), *argv]
    subprocess.Popen(
        as_pg_user(launch),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        cwd=str(pgdata) if system_id is None else "/",  # a data directory being restored is root's until the end
        env=child_env(drop_prefixes=("AWS_", "PG", "VAULT_", "BAO_", "CQOX_")),
    )
