"""Rollups, partitions and retention on both dialects, checked against pandas and the clock."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest

from cqox_platform.schema import Dialect, MigrationRunner
from cqox_platform.schema.lifecycle import enforce_retention, maintain_partitions
from cqox_platform.schema.metrics import copy_metrics, insert_metrics_batched
from cqox_platform.schema.rollups import refresh_rollups, rollup_lag


def _write(db, conn, rows) -> None:
    """COPY on PostgreSQL; bounded multi-row INSERTs on PGlite (its wire server cannot take big COPYs)."""
    with conn.transaction():
        if db.dialect is Dialect.PLAIN:
            copy_metrics(conn, rows)
        else:
            insert_metrics_batched(conn, rows)


def _random_metrics(start: datetime, end: datetime, names: list[str], n: int, seed: int) -> list[tuple]:
    rnd = random.Random(seed)
    span_ms = int((end - start).total_seconds() * 1000)
    seen: set[tuple[datetime, str]] = set()
    rows = []
    while len(rows) < n:
        t = start + timedelta(milliseconds=rnd.randrange(span_ms))
        name = rnd.choice(names)
        if (t, name) in seen:
            continue
        seen.add((t, name))
        rows.append((t, name, rnd.uniform(-50, 500), {"version": rnd.choice(["stable", "canary"])}))
    return rows


def _expected(rows: list[tuple], width: str) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=["time", "metric_name", "value", "labels"])
    df["bucket"] = df["time"].dt.floor(width)
    out = df.groupby(["bucket", "metric_name"])["value"].agg(["mean", "max", "min", "count"]).reset_index()
    return out.rename(columns={"mean": "avg_value", "max": "max_value", "min": "min_value"})


def _actual(conn, rollup: str) -> pd.DataFrame:
    rows = conn.execute(
        f"SELECT bucket, metric_name, avg_value, max_value, min_value, count FROM {rollup} ORDER BY 1, 2"
    ).fetchall()
    df = pd.DataFrame(rows, columns=["bucket", "metric_name", "avg_value", "max_value", "min_value", "count"])
    df["bucket"] = pd.to_datetime(df["bucket"], utc=True)
    return df


def _assert_matches(conn, rollup: str, rows: list[tuple], width: str) -> None:
    expected = _expected(rows, width).sort_values(["bucket", "metric_name"]).reset_index(drop=True)
    actual = _actual(conn, rollup).sort_values(["bucket", "metric_name"]).reset_index(drop=True)
    expected["bucket"] = pd.to_datetime(expected["bucket"], utc=True)
    assert len(actual) == len(expected)
    pd.testing.assert_frame_equal(actual, expected, check_dtype=False, rtol=1e-9)


def test_rollups_match_pandas_aggregates(any_db):
    now = datetime.now(UTC)
    names = ["cqox_http_requests", "cqox_latency_ms", "cqox_estimates"]
    rows = _random_metrics(now - timedelta(hours=30), now - timedelta(hours=1), names, 3000, seed=7)
    with any_db.connect() as conn:
        MigrationRunner().migrate(conn)
        _write(any_db, conn, rows)
        maintain_partitions(conn, any_db.dialect)
        refresh_rollups(conn, any_db.dialect)
        _assert_matches(conn, "metrics_5min", rows, "5min")
        _assert_matches(conn, "metrics_1h", rows, "1h")
        for rollup in ("metrics_5min", "metrics_1h"):
            assert rollup_lag(conn, rollup).buckets_behind == 0

        # Late rows inside already-materialized buckets are picked up by the next refresh.
        late = _random_metrics(now - timedelta(hours=3), now - timedelta(hours=2), ["cqox_late"], 200, seed=8)
        _write(any_db, conn, late)
        refresh_rollups(conn, any_db.dialect)
        _assert_matches(conn, "metrics_5min", rows + late, "5min")
        _assert_matches(conn, "metrics_1h", rows + late, "1h")


def test_rollup_lag_counts_missing_buckets(any_db):
    now = datetime.now(UTC)
    rows = _random_metrics(now - timedelta(hours=2), now - timedelta(minutes=10), ["m"], 300, seed=3)
    with any_db.connect() as conn:
        MigrationRunner().migrate(conn)
        _write(any_db, conn, rows)
        assert rollup_lag(conn, "metrics_5min").buckets_behind == float("inf")  # nothing materialized yet
        refresh_rollups(conn, any_db.dialect)
        assert rollup_lag(conn, "metrics_5min").buckets_behind == 0


def test_retention_drops_exactly_what_is_past_the_horizon(any_db):
    """One row every 6 hours for 100 days; afterwards exactly the days wholly older than 90 days are gone."""
    now = datetime.now(UTC)
    rows = [(now - timedelta(hours=6 * i), "cqox_requests", float(i), None) for i in range(400)]
    with any_db.connect() as conn:
        MigrationRunner().migrate(conn)
        _write(any_db, conn, rows)
        result = maintain_partitions(conn, any_db.dialect)
        if any_db.dialect is Dialect.PLAIN:
            assert result.summary.rows_in_default == 0  # old rows were moved into their own partitions
            assert result.rows_moved_from_default > 0
        retention = enforce_retention(conn, any_db.dialect)
        assert retention.retention == timedelta(days=90)
        # Partitions and chunks are whole UTC days: the day that holds the horizon stays, older ones go.
        horizon_day = (now - timedelta(days=90)).replace(hour=0, minute=0, second=0, microsecond=0)
        remaining = {r[0] for r in conn.execute("SELECT value FROM metrics").fetchall()}
        kept = {float(i) for i, (t, *_rest) in enumerate(rows) if t >= horizon_day}
        assert remaining == kept
        assert retention.oldest_row >= horizon_day
        if any_db.dialect is Dialect.PLAIN:
            assert retention.dropped or result.summary.oldest_start >= horizon_day


@pytest.mark.parametrize("n", [0, 1, 450])
def test_batched_insert_and_copy_write_the_same_rows(plain_db, n):
    now = datetime.now(UTC)
    rows = _random_metrics(now - timedelta(hours=5), now, ["a", "b"], n, seed=n)
    with plain_db.connect() as conn:
        MigrationRunner().migrate(conn)
        with conn.transaction():
            assert copy_metrics(conn, rows) == n
        copied = conn.execute("SELECT time, metric_name, value, labels FROM metrics ORDER BY 1, 2").fetchall()
        conn.execute("DELETE FROM metrics")
        with conn.transaction():
            assert insert_metrics_batched(conn, rows, batch_rows=200) == n
        inserted = conn.execute("SELECT time, metric_name, value, labels FROM metrics ORDER BY 1, 2").fetchall()
    assert copied == inserted
    assert len(copied) == n
