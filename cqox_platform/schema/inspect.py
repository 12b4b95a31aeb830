"""What a DBA wants to see about the schema: row counts and on-disk sizes per table, in either dialect."""

from __future__ import annotations

from dataclasses import dataclass

import psycopg
from psycopg import sql

from cqox_platform.schema.dialect import Dialect

TABLES = ("metrics", "metrics_5min", "metrics_1h", "audit_log", "datasets", "analysis_results", "encryption_keys")


@dataclass(frozen=True)
class TableStats:
    name: str
    rows: int
    total_bytes: int


def table_stats(conn: psycopg.Connection, dialect: Dialect, tables: tuple[str, ...] = TABLES) -> list[TableStats]:
    stats = []
    for name in tables:
        rows = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(name))).fetchone()[0]
        stats.append(TableStats(name, rows, _size(conn, dialect, name)))
    return stats


def _size(conn: psycopg.Connection, dialect: Dialect, name: str) -> int:
    """Bytes including indexes and TOAST, summed over partitions, chunks or a cagg's materialization."""
    if dialect is Dialect.TIMESCALEDB:
        if name == "metrics":
            return conn.execute("SELECT COALESCE(hypertable_size('metrics'), 0)").fetchone()[0]
        row = conn.execute(
            "SELECT format('%%I.%%I', materialization_hypertable_schema, materialization_hypertable_name) "
            "FROM timescaledb_information.continuous_aggregates WHERE view_name = %s",
            (name,),
        ).fetchone()
        if row:
            return conn.execute("SELECT COALESCE(hypertable_size(%s::regclass), 0)", (row[0],)).fetchone()[0]
    return conn.execute(
        # pg_partition_tree is empty for a table that is not partitioned.
        "SELECT COALESCE((SELECT sum(pg_total_relation_size(relid)) FROM pg_partition_tree(%(t)s::regclass)),"
        " pg_total_relation_size(%(t)s::regclass))::bigint",
        {"t": name},
    ).fetchone()[0]
