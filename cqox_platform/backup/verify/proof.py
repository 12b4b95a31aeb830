"""What "the restore has the right data" means: per-table row counts and content checksums at a known point.

``capture_restore_point`` records each table's row count and an order-independent checksum of its rows as
they are at a named restore point in the WAL, in ``restore_points``. A drill restores to the point by name and
recomputes the same values on the restored cluster.

Writers must not wait for the checksums: at 1 TiB an md5 of every row takes hours. So one connection takes
a SHARE lock on the tables only long enough to export a snapshot and write the restore point (no transaction
that changed them is in flight, so the snapshot and the point see the same commits), and commits; a second
connection that imported that snapshot computes the checksums afterwards, at leisure. The lock is tried with
a short ``lock_timeout`` and retried: a long COPY makes the capture wait, never queues every writer behind
the lock request (and never fails the capture after one timeout).

The platform's own backup bookkeeping tables change while a drill runs, so they are not part of the proof.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from cqox_platform.backup.archive.wal_names import parse_lsn
from cqox_platform.errors import BackupError

BOOKKEEPING_TABLES = {"public.backups", "public.restore_points", "public.restore_drills"}
CHECKSUM_SQL = (
    "SELECT count(*), coalesce(sum(('x' || substr(md5(t::text), 1, 15))::bit(60)::bigint), 0)::text FROM {} AS t"
)


@dataclass(frozen=True)
class RestorePoint:
    name: str
    lsn: str
    timeline: int
    created_at: datetime
    database: str
    tables: dict[str, dict[str, Any]]

    @property
    def lsn_int(self) -> int:
        return parse_lsn(self.lsn)


def proof_tables(conn: psycopg.Connection) -> list[str]:
    """User tables (partitioned parents, not their partitions) outside system and extension-owned schemas."""
    rows = conn.execute(
        """
        SELECT format('%I.%I', n.nspname, c.relname)
          FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition
           AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')
           AND n.nspname NOT LIKE 'pg_temp%' AND n.nspname NOT LIKE '\\_timescaledb%'
           AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = c.oid AND d.deptype = 'e')
         ORDER BY 1
        """
    ).fetchall()
    return [r[0] for r in rows if r[0] not in BOOKKEEPING_TABLES]


def table_checksums(conn: psycopg.Connection, tables: list[str]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for qualified in tables:
        schema, _, name = qualified.partition(".")
        ident = sql.Identifier(schema.strip('"'), name.strip('"'))
        count, checksum = conn.execute(sql.SQL(CHECKSUM_SQL).format(ident)).fetchone()
        out[qualified] = {"rows": int(count), "checksum": str(checksum)}
    return out


#: How long one attempt waits for the SHARE lock: also the longest a writer queued behind it waits.
LOCK_ATTEMPT_TIMEOUT = "200ms"
#: How long the capture keeps retrying the lock before it gives up and says who holds it.
LOCK_PATIENCE_SECONDS = 600.0


class RestorePointError(BackupError):
    """A restore point could not be captured; nothing was recorded for it."""


def capture_restore_point(
    conn: psycopg.Connection,
    name: str,
    *,
    attempt_timeout: str = LOCK_ATTEMPT_TIMEOUT,
    patience_seconds: float = LOCK_PATIENCE_SECONDS,
    ledger: psycopg.Connection | None = None,
    repository: str = "cqox",
) -> RestorePoint:
    """Create restore point ``name`` and record the tables' checksums exactly as of that point.

    ``conn`` is an autocommit connection to the database; a second connection with the same parameters reads
    the exported snapshot. Writers wait at most ``attempt_timeout`` per attempt (see the module docstring).
    The point is recorded in ``ledger`` (default ``conn``: the platform's own cluster) under ``repository``:
    a cluster backed up by another engine is proven from the platform's database, never written to.
    """
    database = conn.info.dbname
    tables = proof_tables(conn)
    with _second_connection(conn) as reader:
        lsn, timeline = _point_with_snapshot(conn, reader, name, tables, attempt_timeout, patience_seconds)
        try:
            checksums = table_checksums(reader, tables)
        finally:
            reader.rollback()
    created = datetime.now(UTC)
    (ledger or conn).execute(
        "INSERT INTO restore_points (name, lsn, timeline, created_at, database, tables, repository) "
        "VALUES (%s, %s, %s, %s, %s, %s, %s)",
        [name, lsn, timeline, created, database, Jsonb(checksums), repository],
    )
    return RestorePoint(name, lsn, int(timeline), created, database, checksums)


def _second_connection(conn: psycopg.Connection) -> psycopg.Connection:
    """A connection with ``conn``'s parameters (its DSN never shows the password; ``info.password`` has it)."""
    return psycopg.connect(conn.info.dsn, password=conn.info.password or None, autocommit=False)


def _point_with_snapshot(
    writer_side: psycopg.Connection,
    reader: psycopg.Connection,
    name: str,
    tables: list[str],
    attempt_timeout: str,
    patience_seconds: float,
) -> tuple[str, int]:
    """Lock briefly, hand the snapshot to ``reader``, write the restore point, commit; retry a lock timeout.

    Returns the point's LSN and timeline. ``reader`` is left inside a REPEATABLE READ transaction on the
    snapshot; the caller computes the checksums there and ends it.
    """
    idents = [sql.Identifier(*t.replace('"', "").split(".", 1)) for t in tables]
    deadline = time.monotonic() + patience_seconds
    while True:
        try:
            with writer_side.transaction():
                writer_side.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                writer_side.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(attempt_timeout)))
                if idents:  # before any SELECT: the snapshot below must be taken with the lock held
                    writer_side.execute(sql.SQL("LOCK TABLE {} IN SHARE MODE").format(sql.SQL(", ").join(idents)))
                snapshot = writer_side.execute("SELECT pg_export_snapshot()").fetchone()[0]
                reader.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                reader.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(snapshot)))
                lsn, timeline = writer_side.execute(
                    "SELECT lsn::text, ('x' || substr(pg_walfile_name(lsn), 1, 8))::bit(32)::int "
                    "FROM pg_create_restore_point(%s) AS lsn",
                    [name],
                ).fetchone()
            return lsn, int(timeline)
        except psycopg.errors.LockNotAvailable:
            reader.rollback()
            if time.monotonic() > deadline:
                raise RestorePointError(
                    f"restore point {name}: could not lock {len(tables)} tables for {patience_seconds:.0f} s; "
                    f"{_lock_holders(writer_side)}. Nothing was recorded; the next run tries again."
                ) from None
            time.sleep(0.5)


def _lock_holders(conn: psycopg.Connection) -> str:
    """Who holds write locks on user tables right now (pids and their query's first words), for the error."""
    rows = conn.execute(
        "SELECT DISTINCT a.pid, left(a.query, 60) FROM pg_locks l JOIN pg_stat_activity a USING (pid) "
        "WHERE l.locktype = 'relation' AND l.granted AND l.mode IN ('RowExclusiveLock', 'ShareRowExclusiveLock', "
        "'ExclusiveLock', 'AccessExclusiveLock') AND a.pid <> pg_backend_pid() LIMIT 5"
    ).fetchall()
    if not rows:
        return "no writer holds a lock now"
    return "held by " + "; ".join(f"pid {pid} ({' '.join(str(q).split())})" for pid, q in rows)


def load_restore_point(conn: psycopg.Connection, name: str) -> RestorePoint | None:
    row = conn.execute(
        "SELECT name, lsn::text, timeline, created_at, database, tables FROM restore_points WHERE name = %s", [name]
    ).fetchone()
    return RestorePoint(*row) if row else None


def compare_checksums(expected: dict[str, dict[str, Any]], actual: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Every table whose row count or checksum differs, or that exists on one side only."""
    mismatches = []
    for table in sorted(set(expected) | set(actual)):
        want, got = expected.get(table), actual.get(table)
        if want != got:
            mismatches.append({"table": table, "expected": want, "restored": got})
    return mismatches


def backup_point_name(backup_id: str) -> str:
    return f"backup-{backup_id}"


def checkpoint_restore_point(conn: psycopg.Connection, prefix: str = "check") -> RestorePoint:
    """A restore point with captured checksums now (the 15-minute WAL check makes one per run)."""
    name = f"{prefix}-{datetime.now(UTC).strftime('%Y%m%dT%H%M%S%fZ')}"
    return capture_restore_point(conn, name)
