"""Restore-point capture under write load: the worst writer stall and the capture's duration, before and after.

The anchor is the former capture, measured in the same run: SHARE locks on every proof table held while every
row is md5'd. The capture under test holds the lock only to export a snapshot and write the restore point, and
computes the checksums on a second connection that imported the snapshot. Writers are pgbench-style
single-row UPDATE transactions on ``pgbench_accounts`` from two threads; a writer's stall is the latency of its
slowest transaction that overlapped the capture.

    eval "$(cqox-platform stack env)" && python -m benchmarks.restore_point_stall [--scale 70]

Scale 70 is about 1 GB of ``pgbench_accounts`` (``pgbench -i`` writes ~15 MB per unit of scale).
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import threading
import time
from datetime import UTC, datetime

import psycopg
from psycopg import sql

from benchmarks._scratch import scratch_database
from cqox_platform.backup.verify.proof import capture_restore_point, proof_tables, table_checksums
from cqox_platform.pgserver import pg_bindir


def legacy_capture(conn: psycopg.Connection, name: str) -> None:
    """The former capture, as the anchor: every proof table SHARE-locked while all rows are checksummed."""
    with conn.transaction():
        conn.execute("SET LOCAL lock_timeout = '600s'")
        tables = proof_tables(conn)
        idents = [sql.Identifier(*t.replace('"', "").split(".", 1)) for t in tables]
        conn.execute(sql.SQL("LOCK TABLE {} IN SHARE MODE").format(sql.SQL(", ").join(idents)))
        table_checksums(conn, tables)
        conn.execute("SELECT pg_create_restore_point(%s)", [name])


class Writers:
    """Two threads of single-row UPDATE transactions, each latency recorded with its start time."""

    def __init__(self, info: dict[str, str], accounts: int) -> None:
        self.info, self.accounts = info, accounts
        self.samples: list[tuple[float, float]] = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(seed,), daemon=True) for seed in range(2)]

    def _run(self, seed: int) -> None:
        rnd = random.Random(seed)
        with psycopg.connect(**self.info, autocommit=True) as conn:
            while not self.stop.is_set():
                started = time.monotonic()
                conn.execute(
                    "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = %s",
                    [rnd.randint(1, self.accounts)],
                )
                self.samples.append((started, time.monotonic() - started))

    def __enter__(self) -> Writers:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join()

    def worst_during(self, start: float, end: float) -> float:
        overlapping = [lat for began, lat in self.samples if began <= end and began + lat >= start]
        return max(overlapping, default=0.0)

    def median_before(self, start: float) -> float:
        return statistics.median(lat for began, lat in self.samples if began < start)


def measure(info: dict[str, str], accounts: int, capture) -> tuple[float, float, float]:
    """(capture seconds, worst writer stall during it, median writer latency before it)."""
    with Writers(info, accounts) as writers, psycopg.connect(**info, autocommit=True) as conn:
        time.sleep(3)  # a baseline of writer latencies
        start = time.monotonic()
        capture(conn, f"bench-{datetime.now(UTC):%H%M%S%f}")
        end = time.monotonic()
        time.sleep(1)
    return end - start, writers.worst_during(start, end), writers.median_before(start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=int, default=70, help="pgbench scale (about 15 MB each)")
    args = parser.parse_args()
    with scratch_database() as info:
        env = {
            **os.environ,
            "PGHOST": info["host"],
            "PGPORT": str(info["port"]),
            "PGUSER": info["user"],
            "PGDATABASE": info["dbname"],
            "PGSSLMODE": info.get("sslmode", "prefer"),
            "PGSSLROOTCERT": info.get("sslrootcert", ""),
            "PGPASSFILE": info.get("passfile", ""),
        }
        started = time.monotonic()
        subprocess.run(
            [str(pg_bindir() / "pgbench"), "-i", "-q", "-s", str(args.scale)], env=env, check=True, capture_output=True
        )
        with psycopg.connect(**info, autocommit=True) as conn:
            size = conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]
            conn.execute("VACUUM ANALYZE")
        print(
            f"database: {size / 2**30:.2f} GiB (pgbench scale {args.scale}, loaded in "
            f"{time.monotonic() - started:.0f} s)"
        )
        accounts = args.scale * 100_000
        rows = {}
        for label, capture in (
            ("anchor: lock while checksumming", legacy_capture),
            ("snapshot hand-over", capture_restore_point),
        ):
            seconds, stall, median = measure(info, accounts, capture)
            rows[label] = (seconds, stall)
            print(
                f"{label:34s} capture {seconds:7.2f} s   worst writer stall {stall * 1000:9.1f} ms   "
                f"(median writer latency before: {median * 1000:.2f} ms)"
            )
        anchor, new = rows["anchor: lock while checksumming"], rows["snapshot hand-over"]
        print(
            f"worst-stall ratio (new / anchor): {new[1] / anchor[1]:.4f}   capture-time ratio: {new[0] / anchor[0]:.2f}"
        )


if __name__ == "__main__":
    main()
