"""Does ``wal-push`` keep up with ``pgbench`` running flat out?  (issue 4, WAL archiving)

Runs pgbench against a scratch database on the stack's PostgreSQL for ``--seconds`` and samples, every two
seconds, how much WAL was written and how far the archiver is behind (segments between the insert position
and ``pg_stat_archiver.last_archived_wal``). Prints the WAL write rate, the archive rate, the largest backlog,
and how long the backlog takes to drain after pgbench stops. The archiver keeps up when the archive rate is at
least the write rate, so the backlog stays bounded instead of growing for as long as the load lasts.

    eval "$(cqox-platform stack env)"   # after materializing vault_config
    python -m benchmarks.wal_archive_throughput --seconds 60
"""

from __future__ import annotations

import argparse
import subprocess
import time

import psycopg

from benchmarks._scratch import scratch_database
from cqox_platform.backup.archive.wal_names import Segment, parse_lsn, segment_number

SEGMENT = 16 * 1024 * 1024


def _sample(conn: psycopg.Connection) -> tuple[float, int, int, int]:
    lsn, last, archived = conn.execute(
        "SELECT pg_current_wal_lsn()::text, last_archived_wal, archived_count FROM pg_stat_archiver"
    ).fetchone()
    current = segment_number(parse_lsn(lsn))
    done = Segment.parse(last[:24]).segno if last else 0
    return time.monotonic(), parse_lsn(lsn), max(current - done - 1, 0), archived


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=60)
    parser.add_argument("--scale", type=int, default=20)
    parser.add_argument("--clients", type=int, default=4)
    args = parser.parse_args()
    with scratch_database() as info:
        dsn = psycopg.conninfo.make_conninfo(**info)
        subprocess.run(["pgbench", "-i", "-q", "-s", str(args.scale), dsn], check=True, capture_output=True)
        with psycopg.connect(**info, autocommit=True) as conn:
            conn.execute("SELECT pg_switch_wal()")
            time.sleep(3)
            t0, lsn0, _backlog0, archived0 = _sample(conn)
            bench = subprocess.Popen(
                ["pgbench", "-c", str(args.clients), "-j", "2", "-T", str(args.seconds), "-n", dsn],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            samples = []
            while bench.poll() is None:
                time.sleep(2)
                samples.append(_sample(conn))
                t, lsn, backlog, archived = samples[-1]
                print(
                    f"  t={t - t0:5.1f}s  WAL {(lsn - lsn0) / 2**20:7.0f} MiB  backlog {backlog:3d} segments  "
                    f"archived {archived - archived0}",
                    flush=True,
                )
            output = bench.stdout.read() if bench.stdout else ""
            t1, lsn1, backlog1, _archived1 = _sample(conn)
            drain_start = time.monotonic()
            while _sample(conn)[2] > 0 and time.monotonic() - drain_start < 600:
                time.sleep(0.5)
            drain = time.monotonic() - drain_start
            _, _, _, archived2 = _sample(conn)
    tps = next((line for line in output.splitlines() if line.startswith("tps")), "tps = ?")
    written_mib = (lsn1 - lsn0) / 2**20
    elapsed = t1 - t0
    write_rate = written_mib / elapsed
    archive_rate = (archived2 - archived0) * 16 / (elapsed + drain)
    peak = max((s[2] for s in samples), default=0)
    print(f"pgbench {args.clients} clients, scale {args.scale}, {args.seconds} s: {tps}")
    print(f"WAL written:            {written_mib:.0f} MiB  ({write_rate:.1f} MiB/s, {write_rate / 16:.2f} segments/s)")
    print(f"archived (incl. drain): {archived2 - archived0} segments  ({archive_rate:.1f} MiB/s)")
    print(f"backlog: peak {peak} segments, {backlog1} when pgbench stopped, drained in {drain:.1f} s")
    print(f"ratio archive rate / write rate: {archive_rate / write_rate:.2f}x  (>= 1.0 keeps up)")


if __name__ == "__main__":
    main()
