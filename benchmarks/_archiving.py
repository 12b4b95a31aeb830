"""The stack PostgreSQL's WAL archiving as the backup benchmark drives it: its archive_command, its backlog.

The benchmark never assumes what the platform's ``archive_command`` is (``wal-push %p``, a cheap client of a
spool, anything else): it reads it from the server and runs that, so a change of the default plugs in.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg

from benchmarks._pgbackrest import as_pg
from cqox_platform.backup.wal.spool import fast_archive_command
from cqox_platform.installation import platform_cli
from cqox_platform.pgserver import chown_tree
from cqox_platform.settings import get_settings

SEGMENT = 16 * 2**20


def configured_archive_command(conn: psycopg.Connection) -> str:
    """The server's archive_command, refusing one left in postgresql.auto.conf (a crashed benchmark's?)."""
    command, source = conn.execute(
        "SELECT setting, coalesce(sourcefile, '') FROM pg_settings WHERE name = 'archive_command'"
    ).fetchone()
    if source.endswith("postgresql.auto.conf"):
        raise SystemExit(
            f"archive_command comes from {source} ({command!r}), not the stack's configuration: a benchmark may have "
            "died while overriding it. Check it, then `ALTER SYSTEM RESET archive_command; SELECT pg_reload_conf();`."
        )
    return command


@contextmanager
def archive_command_override(conn: psycopg.Connection, command: str) -> Iterator[None]:
    """``ALTER SYSTEM SET archive_command`` for the block, reset afterwards whatever happens."""
    configured_archive_command(conn)
    conn.execute(psycopg.sql.SQL("ALTER SYSTEM SET archive_command = {}").format(psycopg.sql.Literal(command)))
    conn.execute("SELECT pg_reload_conf()")
    try:
        yield
    finally:
        conn.execute("ALTER SYSTEM RESET archive_command")
        conn.execute("SELECT pg_reload_conf()")


def wait_archived(conn: psycopg.Connection, timeout: float = 3600) -> None:
    """Switch WAL and wait until every segment up to the current one has been archived."""
    current = conn.execute("SELECT pg_walfile_name(pg_current_wal_lsn())").fetchone()[0]
    conn.execute("SELECT pg_switch_wal()")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        last = conn.execute("SELECT last_archived_wal FROM pg_stat_archiver").fetchone()[0]
        if last and last[:24] >= current:
            return
        time.sleep(0.5)
    raise SystemExit("the WAL archiver did not catch up: is the archive_command failing? (pg_stat_archiver)")


def ready_count(pgdata: Path) -> int:
    """Segments PostgreSQL has finished but not yet archived (``.ready`` files): the archiving backlog."""
    return sum(1 for name in os.listdir(pgdata / "pg_wal" / "archive_status") if name.endswith(".ready"))


def fake_pgdata(work: Path, pgdata: Path, names: list[str], sources: list[Path], sysid: bytes | None) -> Path:
    """A data directory with copies of real segments and their .ready files, for one tool's run."""
    fake = work / f"fake-pgdata-{secrets.token_hex(4)}"
    (fake / "global").mkdir(parents=True)
    (fake / "pg_wal" / "archive_status").mkdir(parents=True)
    control = (pgdata / "global" / "pg_control").read_bytes()
    (fake / "global" / "pg_control").write_bytes((sysid + control[8:]) if sysid else control)
    shutil.copyfile(pgdata / "PG_VERSION", fake / "PG_VERSION")
    for name, src in zip(names, sources, strict=True):
        shutil.copyfile(src, fake / "pg_wal" / name)
        (fake / "pg_wal" / "archive_status" / f"{name}.ready").touch()
    chown_tree(fake)
    fake.chmod(0o755)
    return fake


def command_for_copy(configured: str, fake: Path) -> str:
    """The server's archive_command as it reads for the copy ``fake``: the default (async) command names its data
    directory, whose ``.ready`` files the pusher watches and whose path its spool is derived from, so it is
    rebuilt for the copy; a sync command names no data directory and is used as it is."""
    if "--async" not in configured:
        return configured
    settings = get_settings().require("wal_archiver_config")
    return fast_archive_command(platform_cli(), Path(settings), fake)


def push_all(fake: Path, names: list[str], archive_command: str) -> list[float]:
    """Run ``archive_command`` for each segment in order as PostgreSQL does (``sh -c`` in the data directory,
    ``%p`` relative to it), marking each ``.done`` afterwards; returns seconds per call."""
    times = []
    status = fake / "pg_wal" / "archive_status"
    archive_command = command_for_copy(archive_command, fake)
    for name in names:
        command = archive_command.replace("%p", f"pg_wal/{name}").replace("%f", name)
        started = time.perf_counter()
        result = as_pg(["sh", "-c", command], cwd=fake)
        times.append(time.perf_counter() - started)
        if result.returncode != 0:
            raise SystemExit(f"archive_command for {name} failed ({command}): {result.stderr or result.stdout}")
        os.replace(status / f"{name}.ready", status / f"{name}.done")
    return times


def stop_cluster(pgdata: Path, bindir: Path) -> None:
    """Stop a restored server (immediate: it is thrown away)."""
    if (pgdata / "postmaster.pid").exists():
        as_pg([str(bindir / "pg_ctl"), "-D", str(pgdata), "-m", "immediate", "-w", "stop"])


def pgbench(dsn: str, clients: int, seconds: int) -> subprocess.Popen:
    """pgbench flat out (no rate limit) in the background."""
    return subprocess.Popen(
        ["pgbench", "-c", str(clients), "-j", "2", "-T", str(seconds), "-n", dsn],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
