"""metrics_5min and metrics_1h: refreshing them and measuring how far behind they are.

TimescaleDB keeps continuous aggregates incremental itself (an invalidation log), so a refresh there is
``refresh_continuous_aggregate(view, NULL, NULL)``. Plain PostgreSQL gets the same behaviour from a watermark:
each refresh recomputes complete buckets from ``watermark - late_window`` to the last complete bucket, in one
transaction, so late rows inside the window are picked up and a crash leaves the previous state intact.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import psycopg
from psycopg import sql

from cqox_platform.schema.dialect import Dialect

ROLLUPS: dict[str, timedelta] = {"metrics_5min": timedelta(minutes=5), "metrics_1h": timedelta(hours=1)}
DEFAULT_LATE_WINDOW = timedelta(days=1)


@dataclass(frozen=True)
class RollupRefresh:
    rollup: str
    window_start: datetime | None
    window_end: datetime | None
    rows: int
    duration_s: float


@dataclass(frozen=True)
class RollupLag:
    """How many complete buckets of source data the rollup does not have yet."""

    rollup: str
    newest_source_bucket: datetime | None
    newest_rollup_bucket: datetime | None
    buckets_behind: float


def refresh_rollups(
    conn: psycopg.Connection, dialect: Dialect, *, late_window: timedelta = DEFAULT_LATE_WINDOW
) -> list[RollupRefresh]:
    """Refresh every rollup; ``conn`` must be in autocommit mode (TimescaleDB refuses a transaction)."""
    results = []
    for rollup, width in ROLLUPS.items():
        started = datetime.now()
        if dialect is Dialect.TIMESCALEDB:
            conn.execute(sql.SQL("CALL refresh_continuous_aggregate({}, NULL, NULL)").format(sql.Literal(rollup)))
            window = (None, None)
        else:
            window = _refresh_plain(conn, rollup, width, late_window)
        rows = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(rollup))).fetchone()[0]
        results.append(RollupRefresh(rollup, window[0], window[1], rows, (datetime.now() - started).total_seconds()))
    return results


def _refresh_plain(
    conn: psycopg.Connection, rollup: str, width: timedelta, late_window: timedelta
) -> tuple[datetime | None, datetime | None]:
    with conn.transaction():
        # One refresher per rollup at a time; a second waits instead of double-inserting.
        conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"cqox.rollup.{rollup}",))
        lo, hi = conn.execute(
            """
            SELECT COALESCE(w.watermark - %(late)s,
                            (SELECT date_bin(%(width)s, min(time), TIMESTAMPTZ 'epoch') FROM metrics)),
                   date_bin(%(width)s, now(), TIMESTAMPTZ 'epoch')
              FROM rollup_watermarks w WHERE w.rollup = %(rollup)s
            """,
            {"late": late_window, "width": width, "rollup": rollup},
        ).fetchone()
        if lo is None:  # no data at all yet: everything up to now is (trivially) materialized
            conn.execute("UPDATE rollup_watermarks SET watermark = %s WHERE rollup = %s", (hi, rollup))
            return None, hi
        lo = conn.execute("SELECT date_bin(%s, %s::timestamptz, TIMESTAMPTZ 'epoch')", (width, lo)).fetchone()[0]
        if lo < hi:
            table = sql.Identifier(rollup)
            conn.execute(sql.SQL("DELETE FROM {} WHERE bucket >= %s AND bucket < %s").format(table), (lo, hi))
            conn.execute(
                sql.SQL(
                    """
                    INSERT INTO {} (bucket, metric_name, avg_value, max_value, min_value, count)
                    SELECT date_bin(%s, time, TIMESTAMPTZ 'epoch') AS bucket, metric_name,
                           avg(value), max(value), min(value), count(*)
                      FROM metrics
                     WHERE time >= %s AND time < %s
                     GROUP BY 1, 2
                    """
                ).format(table),
                (width, lo, hi),
            )
        conn.execute("UPDATE rollup_watermarks SET watermark = %s WHERE rollup = %s", (hi, rollup))
        return lo, hi


def rollup_lag(conn: psycopg.Connection, rollup: str) -> RollupLag:
    """Complete buckets present in ``metrics`` but not yet in the rollup (0 when caught up or no data)."""
    width = ROLLUPS[rollup]
    newest_source, newest_rollup = conn.execute(
        sql.SQL(
            """
            SELECT (SELECT date_bin(%(width)s, max(time), TIMESTAMPTZ 'epoch') FROM metrics
                     WHERE time < date_bin(%(width)s, now(), TIMESTAMPTZ 'epoch')),
                   (SELECT max(bucket) FROM {})
            """
        ).format(sql.Identifier(rollup)),
        {"width": width},
    ).fetchone()
    if newest_source is None:
        behind = 0.0
    elif newest_rollup is None:
        behind = float("inf")
    else:
        behind = max(0.0, (newest_source - newest_rollup) / width)
    return RollupLag(rollup, newest_source, newest_rollup, behind)
