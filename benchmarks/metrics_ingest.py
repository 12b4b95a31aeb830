"""Metrics ingest: rows/s through COPY against executemany on the same server, in one run.

Target (issue 2): COPY at least 10x executemany and at least 200,000 rows/s. Every path writes the same shape
of rows into the real partitioned ``metrics`` table of a scratch database; the anchors are measured in the
same run because absolute times on a shared 2-core machine mean little. Two anchors are printed: psycopg 3's
``executemany`` (which pipelines, so it is much faster than a naive loop) and one ``execute`` per row with a
round trip each, the row-by-row pattern the platform forbids.

    eval "$(cqox-platform stack env)" && python benchmarks/metrics_ingest.py [--copy-rows N] [--anchor-rows N]
"""

from __future__ import annotations

import argparse
import random
import time
from datetime import UTC, datetime, timedelta

import psycopg

from benchmarks._scratch import scratch_database
from cqox_platform.schema.metrics import copy_metrics

METRIC_NAMES = [f"cqox_http_requests_{i}" for i in range(50)]


def make_rows(n: int, offset: int) -> list[tuple]:
    """Unique (time, metric_name) rows inside the premade partitions (the last 6 days)."""
    start = datetime.now(UTC) - timedelta(days=6)
    rnd = random.Random(offset)
    return [
        (
            start + timedelta(milliseconds=(offset + i) // len(METRIC_NAMES) * 10),
            METRIC_NAMES[(offset + i) % 50],
            rnd.random() * 100,
            {"route": "/estimate", "code": "200"},
        )
        for i in range(n)
    ]


def bench_copy(conninfo: dict, rows: list[tuple]) -> float:
    with psycopg.connect(**conninfo) as conn:
        started = time.perf_counter()
        with conn.transaction():
            copy_metrics(conn, rows)
        return time.perf_counter() - started


def bench_executemany(conninfo: dict, rows: list[tuple]) -> float:
    import json

    params = [(t, n, v, json.dumps(lbl)) for t, n, v, lbl in rows]
    with psycopg.connect(**conninfo) as conn:
        started = time.perf_counter()
        with conn.transaction(), conn.cursor() as cur:
            cur.executemany("INSERT INTO metrics (time, metric_name, value, labels) VALUES (%s, %s, %s, %s)", params)
        return time.perf_counter() - started


def bench_row_by_row(conninfo: dict, rows: list[tuple]) -> float:
    import json

    with psycopg.connect(**conninfo) as conn:
        started = time.perf_counter()
        with conn.transaction(), conn.cursor() as cur:
            for t, n, v, lbl in rows:
                cur.execute(
                    "INSERT INTO metrics (time, metric_name, value, labels) VALUES (%s, %s, %s, %s)",
                    (t, n, v, json.dumps(lbl)),
                )
        return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--copy-rows", type=int, default=1_000_000)
    parser.add_argument("--anchor-rows", type=int, default=50_000)
    parser.add_argument("--row-rows", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3, help="best of N for each path")
    args = parser.parse_args()

    with scratch_database() as conninfo:
        copy_times, anchor_times, row_times = [], [], []
        offset = 0

        def take(n: int) -> list[tuple]:
            nonlocal offset
            rows = make_rows(n, offset)
            offset += n
            return rows

        for attempt in range(args.repeat):
            row_times.append(bench_row_by_row(conninfo, take(args.row_rows)))
            anchor_times.append(bench_executemany(conninfo, take(args.anchor_rows)))
            copy_times.append(bench_copy(conninfo, take(args.copy_rows)))
            print(
                f"  round {attempt + 1}: row-by-row {args.row_rows / row_times[-1]:,.0f} rows/s, "
                f"executemany {args.anchor_rows / anchor_times[-1]:,.0f} rows/s, "
                f"COPY {args.copy_rows / copy_times[-1]:,.0f} rows/s",
                flush=True,
            )
    copy_rate = args.copy_rows / min(copy_times)
    anchor_rate = args.anchor_rows / min(anchor_times)
    row_rate = args.row_rows / min(row_times)
    print(f"row-by-row execute:         {row_rate:,.0f} rows/s")
    print(f"executemany (anchor):       {anchor_rate:,.0f} rows/s")
    print(
        f"COPY:                       {copy_rate:,.0f} rows/s "
        f"(target >= 200,000: {'met' if copy_rate >= 200_000 else 'NOT met'})"
    )
    print(
        f"ratio COPY/executemany:     {copy_rate / anchor_rate:.1f}x (target >= 10x: "
        f"{'met' if copy_rate / anchor_rate >= 10 else 'NOT met'})"
    )
    print(f"ratio COPY/row-by-row:      {copy_rate / row_rate:.1f}x")


if __name__ == "__main__":
    main()
