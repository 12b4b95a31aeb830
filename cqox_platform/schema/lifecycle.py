"""Partitions ahead, retention behind: the life cycle of ``metrics`` in both dialects.

Plain PostgreSQL delegates to pg_partman (daily native partitions, premade a week ahead, retention in
``partman.part_config``); TimescaleDB to its own chunks and policies, run on demand with ``CALL run_job``. The
retention period lives in the database either way (part_config or the policy), not in this code, so the
scheduled job and an operator's manual run enforce the same rule.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import psycopg

from cqox_platform.schema.dialect import Dialect

PARENT = "public.metrics"


@dataclass(frozen=True)
class PartitionSummary:
    """Partitions (plain) or chunks (TimescaleDB) of ``metrics``."""

    dialect: Dialect
    count: int
    oldest_start: datetime | None
    newest_end: datetime | None
    compressed: int = 0
    rows_in_default: int = 0

    @property
    def days_ahead(self) -> float:
        if self.newest_end is None:
            return 0.0
        return (self.newest_end - datetime.now(self.newest_end.tzinfo)) / timedelta(days=1)


@dataclass(frozen=True)
class MaintenanceResult:
    summary: PartitionSummary
    rows_moved_from_default: int


@dataclass(frozen=True)
class RetentionResult:
    retention: timedelta
    dropped: list[str]
    oldest_row: datetime | None
    summary: PartitionSummary


def partition_names(conn: psycopg.Connection, dialect: Dialect) -> list[str]:
    if dialect is Dialect.TIMESCALEDB:
        rows = conn.execute(
            "SELECT chunk_schema || '.' || chunk_name FROM timescaledb_information.chunks "
            "WHERE hypertable_name = 'metrics' ORDER BY range_start"
        ).fetchall()
    else:
        rows = conn.execute(
            "SELECT partition_schemaname || '.' || partition_tablename FROM partman.show_partitions(%s)", (PARENT,)
        ).fetchall()
    return [r[0] for r in rows]


def summarize_partitions(conn: psycopg.Connection, dialect: Dialect) -> PartitionSummary:
    if dialect is Dialect.TIMESCALEDB:
        count, oldest, newest, compressed = conn.execute(
            "SELECT count(*), min(range_start), max(range_end), count(*) FILTER (WHERE is_compressed) "
            "FROM timescaledb_information.chunks WHERE hypertable_name = 'metrics'"
        ).fetchone()
        return PartitionSummary(dialect, count, oldest, newest, compressed=compressed)
    count, oldest, newest = conn.execute(
        """
        SELECT count(*), min(i.child_start_time), max(i.child_end_time)
          FROM partman.show_partitions(%(parent)s) p,
               LATERAL partman.show_partition_info(p.partition_schemaname || '.' || p.partition_tablename,
                                                   p_parent_table => %(parent)s) i
        """,
        {"parent": PARENT},
    ).fetchone()
    in_default = conn.execute("SELECT count(*) FROM public.metrics_default").fetchone()[0]
    return PartitionSummary(dialect, count, oldest, newest, rows_in_default=in_default)


def maintain_partitions(conn: psycopg.Connection, dialect: Dialect) -> MaintenanceResult:
    """Create partitions ahead and move rows that landed in the default partition into real ones.

    TimescaleDB creates chunks on insert, so there it only reports. ``conn`` should be in autocommit mode.
    """
    moved = 0
    if dialect is Dialect.PLAIN:
        if conn.execute("SELECT EXISTS (SELECT 1 FROM public.metrics_default)").fetchone()[0]:
            # Rows older or newer than the premade range: pg_partman creates their partitions and moves them.
            moved = (
                conn.execute(
                    "SELECT partman.partition_data_time(%s, p_batch_count => 100000, p_analyze => false)", (PARENT,)
                ).fetchone()[0]
                or 0
            )
        conn.execute("SELECT partman.run_maintenance(%s, p_analyze => false)", (PARENT,))
    return MaintenanceResult(summarize_partitions(conn, dialect), moved)


def configured_retention(conn: psycopg.Connection, dialect: Dialect) -> timedelta:
    if dialect is Dialect.TIMESCALEDB:
        row = conn.execute(
            "SELECT (config->>'drop_after')::interval FROM timescaledb_information.jobs "
            "WHERE proc_name = 'policy_retention' AND hypertable_name = 'metrics'"
        ).fetchone()
    else:
        row = conn.execute(
            "SELECT retention::interval FROM partman.part_config WHERE parent_table = %s", (PARENT,)
        ).fetchone()
    if row is None or row[0] is None:
        raise LookupError("no retention policy is configured for metrics; re-run the schema migrations.")
    return row[0]


def enforce_retention(conn: psycopg.Connection, dialect: Dialect) -> RetentionResult:
    """Drop whole partitions/chunks past the configured retention (and compress old chunks on TimescaleDB)."""
    before = set(partition_names(conn, dialect))
    if dialect is Dialect.TIMESCALEDB:
        jobs = conn.execute(
            "SELECT job_id FROM timescaledb_information.jobs WHERE hypertable_name = 'metrics' "
            "AND proc_name IN ('policy_retention', 'policy_compression') ORDER BY proc_name DESC"
        ).fetchall()
        for (job_id,) in jobs:  # retention first: never compress a chunk that is about to be dropped
            conn.execute("CALL run_job(%s)", (job_id,))
    else:
        conn.execute("SELECT partman.drop_partition_time(%s)", (PARENT,))
    after = set(partition_names(conn, dialect))
    oldest = conn.execute("SELECT min(time) FROM metrics").fetchone()[0]
    return RetentionResult(
        retention=configured_retention(conn, dialect),
        dropped=sorted(before - after),
        oldest_row=oldest,
        summary=summarize_partitions(conn, dialect),
    )
