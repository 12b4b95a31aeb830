"""Writing metrics in bulk: COPY through psycopg 3, never row-by-row INSERTs.

``copy_metrics`` is the path for real servers. ``insert_metrics_batched`` exists only for PGlite-TimescaleDB,
whose wire server crashes on COPY and on batches over ~300 rows; it sends multi-row INSERTs of a bounded size.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from itertools import islice

import psycopg
from psycopg import sql

MetricRow = tuple[datetime, str, float | None, dict | None]

_COLUMNS = ("time", "metric_name", "value", "labels")
# Binary COPY: no text parsing of timestamps and floats on the server, about 1.5x the text format here.
_COPY = sql.SQL("COPY metrics (time, metric_name, value, labels) FROM STDIN (FORMAT BINARY)")
_COPY_TYPES = ["timestamptz", "text", "float8", "jsonb"]


def _labels(value: dict | None) -> str | None:
    return None if value is None else json.dumps(value, separators=(",", ":"), sort_keys=True)


def copy_metrics(
    conn: psycopg.Connection,
    rows: Iterable[MetricRow],
    *,
    progress: Callable[[int], None] | None = None,
    progress_every: int = 100_000,
) -> int:
    """Stream ``rows`` into ``metrics`` with COPY in the caller's transaction; return the row count."""
    count = 0
    with conn.cursor() as cur, cur.copy(_COPY) as copy:
        copy.set_types(_COPY_TYPES)
        for row in rows:
            copy.write_row(row)  # the jsonb dumper serialises the labels dict
            count += 1
            if progress is not None and count % progress_every == 0:
                progress(count)
    return count


def insert_metrics_batched(conn: psycopg.Connection, rows: Iterable[MetricRow], *, batch_rows: int = 200) -> int:
    """Multi-row INSERTs of at most ``batch_rows`` rows, for servers that cannot COPY (PGlite)."""
    count = 0
    iterator: Iterator[MetricRow] = iter(rows)
    while batch := list(islice(iterator, batch_rows)):
        values = sql.SQL(", ").join(sql.SQL("(%s, %s, %s, %s)") for _ in batch)
        query = sql.SQL("INSERT INTO metrics (time, metric_name, value, labels) VALUES {}").format(values)
        params = [p for time_, name, value, labels in batch for p in (time_, name, value, _labels(labels))]
        conn.execute(query, params)
        count += len(batch)
    return count
