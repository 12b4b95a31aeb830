"""What "the restore has the right data" means: per-table row counts and content checksums at a known point.

``capture_restore_point`` locks the database's tables against writers (SHARE mode: reads go on), computes
each table's row count and an order-independent checksum of its rows, creates a named restore point in the
WAL, and records all of it in ``restore_points`` - so the captured values are exactly the state at that
point. A drill restores to the point by name and recomputes the same values on the restored cluster.

The platform's own backup bookkeeping tables change while a drill runs, so they are not part of the proof.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from cqox_platform.backup.archive.wal_names import parse_lsn

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


def capture_restore_point(conn: psycopg.Connection, name: str, lock_timeout: str = "10s") -> RestorePoint:
    """Capture checksums and create restore point ``name`` atomically with respect to writers."""
    database = conn.info.dbname
    with conn.transaction():
        conn.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(lock_timeout)))
        tables = proof_tables(conn)
        if tables:
            idents = [sql.Identifier(*t.replace('"', "").split(".", 1)) for t in tables]
            conn.execute(sql.SQL("LOCK TABLE {} IN SHARE MODE").format(sql.SQL(", ").join(idents)))
        checksums = table_checksums(conn, tables)
        lsn, timeline = conn.execute(
            "SELECT lsn::text, ('x' || substr(pg_walfile_name(lsn), 1, 8))::bit(32)::int "
            "FROM pg_create_restore_point(%s) AS lsn",
            [name],
        ).fetchone()
        created = datetime.now(UTC)
        conn.execute(
            "INSERT INTO restore_points (name, lsn, timeline, created_at, database, tables) "
            "VALUES (%s, %s, %s, %s, %s, %s)",
            [name, lsn, timeline, created, database, Jsonb(checksums)],
        )
    return RestorePoint(name, lsn, int(timeline), created, database, checksums)


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

