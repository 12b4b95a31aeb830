"""PostgreSQL server processes on this host: the OS user they run as, their binaries, and a scratch cluster.

One place for what restores, drills, the benchmarks and the local stack all need: ``initdb``, ``pg_ctl`` and
``pg_verifybackup`` refuse to run as root, so every call goes through ``as_pg_user``; Debian keeps those binaries
out of PATH, so ``pg_bindir`` finds them. Production code (``backup/``, ``ha/``) uses this module, never the
local development stack.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import psycopg

from cqox_platform.errors import CqoxError
from cqox_platform.fsutil import make_dir, own, own_tree, write_file
from cqox_platform.settings import child_env

#: The OS user PostgreSQL's files and processes belong to (Debian's packages create it).
PG_OS_USER = "postgres"
#: What the postmaster logs when recovery_target_action = shutdown stopped it at the target.
SHUTDOWN_AT_TARGET = "shutdown at recovery target"
#: What the startup process logs when recovery_target_action = pause holds it at the target (logged before
#: pg_get_wal_replay_pause_state() turns 'paused'); a pause elsewhere (e.g. settings lower than the primary's) says
#: "recovery has paused".
PAUSED_AT_TARGET = "pausing at the end of recovery"
#: What a server logs when the sync of its data directory at start-up (SyncDataDirectory, with
#: ``recovery_init_sync_method`` syncfs or fsync) fails. PostgreSQL only logs these and goes on, so a restored
#: file the kernel failed to write back would be trusted: the restore treats the line as a failed restore.
START_UP_SYNC_FAILURES = ("could not synchronize file system", "could not fsync file")
Progress = Callable[[str], None]


class PgServerError(CqoxError):
    """A PostgreSQL server process could not be found, started or reached; the message names which and why."""


def as_pg_user(argv: list[str]) -> list[str]:
    """``argv`` run as the postgres OS user when we are root (PostgreSQL's tools refuse root)."""
    if os.geteuid() == 0:
        return ["runuser", "-u", PG_OS_USER, "--", *argv]
    return argv


def pg_bindir() -> Path:
    """PostgreSQL 15's binaries (Debian keeps pg_ctl and pg_verifybackup out of PATH)."""
    for candidate in (Path("/usr/lib/postgresql/15/bin"),):
        if (candidate / "pg_ctl").exists():
            return candidate
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).parent
    raise PgServerError("pg_ctl not found: install Debian package postgresql-15.")


def free_port() -> int:
    """Ask the kernel for a free TCP port on 127.0.0.1 (scratch clusters and tests)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def chown_tree(root: Path, user: str = PG_OS_USER) -> None:
    """Hand a restored tree to ``user`` without following any link in it (see ``cqox_platform.fsutil``)."""
    own_tree(root, user)
    own(root, mode=0o700, directory=True)


def postgres_cannot_reach(path: Path) -> Path | None:
    """The first directory on the way to ``path`` the postgres OS user cannot traverse, or None.

    Checked as that user (``runuser ... test -x``), before anything is downloaded: pg_verifybackup and the server
    run as postgres, and would otherwise fail hours later with "Permission denied".
    """
    if os.geteuid() != 0:
        return None
    path = Path(os.path.abspath(path))
    for directory in [*reversed(path.parents), path]:
        if not directory.exists():
            return None  # created by root with the default umask: traversable
        if subprocess.run(as_pg_user(["test", "-x", str(directory)]), capture_output=True).returncode != 0:
            return directory
    return None


def stop_immediately(pgdata: Path, bindir: Path | None = None) -> None:
    """Stop a restored server without a checkpoint (it is thrown away or inspected, never kept running)."""
    subprocess.run(
        as_pg_user([str((bindir or pg_bindir()) / "pg_ctl"), "-D", str(pgdata), "-m", "immediate", "-w", "stop"]),
        capture_output=True,
    )


class ScratchCluster:
    """A restored cluster started by pg_ctl as the postgres user, reachable only through its socket."""

    def __init__(self, pgdata: Path, socket_dir: Path, port: int, log: Path, pg_bindir: Path) -> None:
        self.pgdata, self.socket_dir, self.port, self.log, self.pg_bindir = pgdata, socket_dir, port, log, pg_bindir

    def start_files(self) -> None:
        """The socket directory and the log, owned by postgres (created without following a planted link)."""
        make_dir(self.socket_dir, mode=0o700, owner=PG_OS_USER)
        if not self.log.exists():
            write_file(self.log, "", mode=0o600, owner=PG_OS_USER)
        own(self.log, owner=PG_OS_USER)

    def start(self) -> None:
        self.start_files()
        # A clean environment: the restored server and its restore_command see no client settings of ours.
        env = child_env(drop_prefixes=("AWS_", "PG", "VAULT_", "BAO_", "CQOX_"))
        subprocess.run(
            as_pg_user([str(self.pg_bindir / "pg_ctl"), "-D", str(self.pgdata), "-l", str(self.log), "-W", "start"]),
            check=True,
            capture_output=True,
            env=env,
        )

    def postmaster_alive(self) -> bool:
        pid_file = self.pgdata / "postmaster.pid"
        try:
            pid = int(pid_file.read_text().split()[0])
            os.kill(pid, 0)
            return True
        except (OSError, ValueError, IndexError):
            return False

    def connect(self, dbname: str = "postgres") -> psycopg.Connection:
        return psycopg.connect(
            host=str(self.socket_dir),
            port=self.port,
            user=PG_OS_USER,
            dbname=dbname,
            autocommit=True,
            connect_timeout=5,
        )

    def wait_promoted(self, timeout: float, progress: Progress) -> None:
        """Wait until recovery reached its target and the server promoted; fail fast if it died."""
        started = time.monotonic()
        deadline = started + timeout
        last_note = started
        while time.monotonic() < deadline:
            if not self.postmaster_alive() and time.monotonic() - started > 3:
                raise PgServerError(
                    f"recovery stopped: the restored server exited. Its log ends with:\n{self.log_tail()}"
                )
            try:
                with self.connect() as conn:
                    in_recovery, lsn = conn.execute(
                        "SELECT pg_is_in_recovery(), coalesce(pg_last_wal_replay_lsn(), '0/0')::text"
                    ).fetchone()
                if not in_recovery:
                    self.check_start_up_sync()
                    return
                if time.monotonic() - last_note > 10:
                    last_note = time.monotonic()
                    self.check_start_up_sync()
                    progress(f"replaying WAL: at {lsn}")
            except psycopg.OperationalError as exc:
                if "authentication failed" in str(exc):  # waiting would never end
                    raise PgServerError(f"cannot log in to the restored server: {exc}") from None
                pass  # not accepting connections until consistent
            time.sleep(0.2)
        raise PgServerError(f"recovery did not finish within {timeout:.0f} s. Log tail:\n{self.log_tail()}")

    def wait_paused(self, timeout: float, progress: Progress) -> None:
        """Wait until recovery paused at its target (``recovery_target_action = pause``); fail fast if it died,
        promoted or paused elsewhere. Paused means PostgreSQL says so (``pg_get_wal_replay_pause_state()`` and its
        log), not that replay is slow."""
        started = time.monotonic()
        deadline = started + timeout
        last_note = started
        while time.monotonic() < deadline:
            if not self.postmaster_alive() and time.monotonic() - started > 3:
                raise PgServerError(
                    f"recovery stopped: the restored server exited. Its log ends with:\n{self.log_tail()}"
                )
            try:
                with self.connect() as conn:
                    in_recovery, state, lsn = conn.execute(
                        "SELECT pg_is_in_recovery(), CASE WHEN pg_is_in_recovery() THEN "
                        "pg_get_wal_replay_pause_state() END, coalesce(pg_last_wal_replay_lsn(), '0/0')::text"
                    ).fetchone()
                if not in_recovery:
                    raise PgServerError(
                        "the restored server promoted instead of pausing at the target (recovery_target_action "
                        f"is not pause?). Its log ends with:\n{self.log_tail()}"
                    )
                if state == "paused":
                    if PAUSED_AT_TARGET in self.log_text():
                        self.check_start_up_sync()
                        return
                    raise PgServerError(
                        "recovery paused before reaching its target (not at the end of recovery). Its log ends "
                        f"with:\n{self.log_tail()}"
                    )
                if time.monotonic() - last_note > 10:
                    last_note = time.monotonic()
                    self.check_start_up_sync()
                    progress(f"replaying WAL: at {lsn}")
            except psycopg.OperationalError as exc:
                if "authentication failed" in str(exc):
                    raise PgServerError(f"cannot log in to the restored server: {exc}") from None
            time.sleep(0.2)
        raise PgServerError(f"recovery did not pause within {timeout:.0f} s. Log tail:\n{self.log_tail()}")

    def wait_shut_down_at_target(self, timeout: float, progress: Progress) -> None:
        """Wait until the server shut down at its target (``recovery_target_action = shutdown``): the postmaster
        exited and its log says why. An exit for any other reason (a missing segment, a target never reached) is
        an error with the log's last lines."""
        started = time.monotonic()
        deadline = started + timeout
        last_note = started
        while time.monotonic() < deadline:
            if not self.postmaster_alive() and time.monotonic() - started > 1:
                if SHUTDOWN_AT_TARGET in self.log_text():
                    self.check_start_up_sync()
                    return
                if time.monotonic() - started > 3:
                    raise PgServerError(
                        f"recovery stopped: the restored server exited before its target. Its log ends with:\n"
                        f"{self.log_tail()}"
                    )
            elif time.monotonic() - last_note > 10:
                last_note = time.monotonic()
                self.check_start_up_sync()
                progress("replaying WAL")
            time.sleep(0.2)
        raise PgServerError(f"recovery did not shut down within {timeout:.0f} s. Log tail:\n{self.log_tail()}")

    def check_start_up_sync(self) -> None:
        """Fail closed on a logged failure to sync the restored files at start-up: the copy may have lost writes
        that nothing else would report (the end-of-recovery checkpoint syncs only what replay wrote)."""
        failures = [line for line in self.log_text().splitlines() if any(f in line for f in START_UP_SYNC_FAILURES)]
        if failures:
            raise PgServerError(
                f"the restored server could not sync the restored files to disk at start-up ({len(failures)} "
                f"error(s); the first: {failures[0].strip()}), so the copy may have lost writes. Do not use it: "
                f"check the volume of {self.pgdata} (dmesg, the storage's health) and restore again onto healthy "
                f"storage."
            )

    def stop_point(self) -> str:
        """PostgreSQL's own line on where recovery stopped (``recovery stopping after commit of transaction ...``),
        or "" when it replayed to the end of the archive."""
        lines = [line for line in self.log_text().splitlines() if "recovery stopping " in line]
        return lines[-1].split("recovery stopping ", 1)[1].strip() if lines else ""

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 25) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        if self.postmaster_alive():
            stop_immediately(self.pgdata, self.pg_bindir)
