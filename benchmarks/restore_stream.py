"""Staged vs streamed restore, and wal-fetch with and without prefetch, on one pgbench database (issue 15, 2-3).

Measured in one run against the stack's S3 and Vault:

- restore of files: the former staged path (``download_object`` to a file, then ``unpack_backup``) against
  ``stream_restore`` (parallel ranged GETs -> decrypt -> zstd -> tar); wall time and peak disk of the restore's
  own files (staging file + data directory, sampled every 0.2 s);
- ``wal-fetch`` per segment, called as PostgreSQL does (as postgres, one process per segment, in order, with no
  replay time between calls, which is the least favourable case for prefetch), ``--prefetch 0`` against
  ``--prefetch 8``;
- time to promoted of `cqox-platform restore` (files + replay of the WAL written after the backup), with
  ``--wal-prefetch 0`` and the default.

    eval "$(cqox-platform stack env)"   # stack up + vault_config materialized
    python -m benchmarks.restore_stream --scale 30 --wal-seconds 60 --random-mib 400
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import boto3
import psycopg

from benchmarks._scratch import scratch_database
from benchmarks._staged_restore import download_object, unpack_backup
from cqox_platform.backup.archive.records import find_backup
from cqox_platform.backup.archive.store import Archive
from cqox_platform.backup.restore.files import fetch_backup_manifest
from cqox_platform.backup.restore.stream import stream_restore
from cqox_platform.installation import platform_cli
from cqox_platform.resources.vault import VaultResource
from cqox_platform.stack.s3 import client_config


def _tree_bytes(root: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, name)).st_size
    return total


class _PeakDisk:
    """Largest total size of ``root`` seen while the block runs (sampled)."""

    def __init__(self, root: Path) -> None:
        self.root, self.peak, self._stop = root, 0, threading.Event()

    def __enter__(self):
        def sample():
            while not self._stop.wait(0.2):
                self.peak = max(self.peak, _tree_bytes(self.root))

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _tree_bytes(self.root))


def _cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([str(platform_cli()), *args], capture_output=True, text=True)
    if check and result.returncode != 0:
        raise SystemExit(f"cqox-platform {' '.join(args)} failed: {result.stderr[-2000:]}")
    return result


def _wait_archived(conn: psycopg.Connection) -> str:
    last = conn.execute("SELECT pg_walfile_name(pg_switch_wal())").fetchone()[0]
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        done = conn.execute("SELECT last_archived_wal FROM pg_stat_archiver").fetchone()[0]
        if done and done >= last:
            return last
        time.sleep(0.5)
    raise SystemExit("WAL was not archived within 10 minutes")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=int, default=30)
    parser.add_argument("--wal-seconds", type=int, default=60, help="pgbench run after the backup (WAL to replay)")
    parser.add_argument(
        "--random-mib", type=int, default=0, help="also store this much incompressible data (pgbench compresses ~20x)"
    )
    parser.add_argument("--skip-end-to-end", action="store_true")
    args = parser.parse_args()

    s3 = boto3.session.Session().client("s3", endpoint_url=os.environ["CQOX_S3_ENDPOINT"], config=client_config())
    vault = VaultResource(
        addr=os.environ["VAULT_ADDR"],
        cacert=os.environ["VAULT_CACERT"],
        approle_file=os.environ["CQOX_VAULT_APPROLE_FILE"],
    )
    provider = vault.key_provider("cqox-backups")
    bucket = os.environ["CQOX_S3_BUCKET"]
    settings_file = os.environ["CQOX_WAL_ARCHIVER_CONFIG"]
    work = Path(tempfile.mkdtemp(prefix="cqox-bench-restore-", dir="/tmp"))
    work.chmod(0o755)
    out: list[str] = []
    try:
        with scratch_database() as info:
            dsn = psycopg.conninfo.make_conninfo(**info)
            subprocess.run(["pgbench", "-i", "-q", "-s", str(args.scale), dsn], check=True, capture_output=True)
            with psycopg.connect(**info, autocommit=True) as conn:
                if args.random_mib:
                    conn.execute("CREATE TABLE bench_random (payload bytea) WITH (toast_tuple_target = 8160)")
                    conn.execute("ALTER TABLE bench_random ALTER COLUMN payload SET STORAGE EXTERNAL")
                    conn.execute(
                        "INSERT INTO bench_random SELECT (SELECT decode(string_agg(md5(random()::text || i), ''),"
                        " 'hex') FROM generate_series(1, 64) i WHERE g > 0) FROM generate_series(1, %s) g",
                        [args.random_mib * 1024],
                    )
                size = conn.execute("SELECT sum(pg_database_size(oid)) FROM pg_database").fetchone()[0]
            backup_id = _cli("backup", "create").stdout.split()[0]
            record = find_backup(s3, bucket, backup_id)
            archive = Archive(s3, bucket, record.system_id)
            subprocess.run(
                ["pgbench", "-c", "4", "-T", str(args.wal_seconds), "-n", dsn], check=True, capture_output=True
            )
            with psycopg.connect(**info, autocommit=True) as conn:
                last = _wait_archived(conn)
            out.append(
                f"database {size / 2**20:.0f} MiB (pgbench scale {args.scale}); backup {backup_id}: "
                f"{record.database_bytes / 2**20:.0f} MiB read, {record.stored_bytes / 2**20:.0f} MiB stored"
            )

            # --- restore of files: staged vs streamed -----------------------------------------------------
            manifest = fetch_backup_manifest(archive, record)
            for kind in ("staged", "streamed"):
                area = work / kind
                target = area / "pgdata"
                target.mkdir(parents=True, mode=0o700)
                with _PeakDisk(area) as disk:
                    started = time.perf_counter()
                    if kind == "staged":
                        staged = area / "base.enc"
                        download_object(archive, record.object_key, staged, record.stored_bytes, lambda _m: None)
                        unpack_backup(staged, manifest, provider, target, "bench")
                        staged.unlink()
                    else:
                        stream_restore(archive, record.object_key, record.stored_bytes, manifest, provider, target)
                    seconds = time.perf_counter() - started
                restored = _tree_bytes(target)
                out.append(
                    f"restore of files, {kind:<8}: {seconds:6.1f} s, peak disk {disk.peak / 2**20:6.0f} MiB = "
                    f"{disk.peak / max(restored, 1):.2f}x the restored data directory ({restored / 2**20:.0f} MiB)"
                )
                if kind == "staged":
                    shutil.rmtree(area)
            pgdata_copy = work / "streamed" / "pgdata"

            # --- wal-fetch per segment ------------------------------------------------------------------------
            first_seg = record.stop_wal
            segments = sorted(
                n for n in archive.archived_wal() if len(n) == 24 and first_seg < n <= last and n[:8] == first_seg[:8]
            )
            subprocess.run(["chown", "-R", "postgres", str(work)], check=True)
            for depth in (0, 8):
                dest_dir = work / f"fetch-{depth}"
                dest_dir.mkdir()
                shutil.chown(dest_dir, "postgres")
                times, rss = [], []
                for name in segments:
                    started = time.perf_counter()
                    result = subprocess.run(
                        [
                            "/usr/bin/time", "-f", "%M", "runuser", "-u", "postgres", "--", str(platform_cli()),
                            "wal-fetch", name,
                            str(dest_dir / "RECOVERYXLOG"), "--config", settings_file, "--pgdata", str(pgdata_copy),
                            "--prefetch", str(depth),
                        ],
                        capture_output=True,
                        text=True,
                        env={k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "CQOX_", "VAULT_"))},
                    )  # fmt: skip
                    times.append(time.perf_counter() - started)
                    if result.returncode != 0:
                        raise SystemExit(f"wal-fetch {name} exited {result.returncode}: {result.stderr}")
                    rss.append(int(result.stderr.strip().splitlines()[-1]))
                out.append(
                    f"wal-fetch --prefetch {depth}: {len(segments)} segments in {sum(times):.1f} s, per segment "
                    f"median {statistics.median(times):.3f} s, mean {statistics.mean(times):.3f} s, "
                    f"peak RSS per call {max(rss) / 1024:.0f} MiB"
                )
            shutil.rmtree(work / "streamed")  # the prefetcher sees its data directory gone and exits

            # --- restore + replay, time to promoted ---------------------------------------------------------
            if not args.skip_end_to_end:
                for depth in (0, 8):
                    target = work / f"e2e-{depth}"
                    started = time.perf_counter()
                    argv = ["restore", "--backup", backup_id, "--pgdata", str(target), "--wal-prefetch", str(depth)]
                    result = subprocess.run(
                        ["/usr/bin/time", "-f", "%M", str(platform_cli()), *argv], capture_output=True, text=True
                    )
                    seconds = time.perf_counter() - started
                    if result.returncode != 0:
                        raise SystemExit(f"restore failed: {result.stderr[-2000:]}")
                    peak = int(result.stderr.strip().splitlines()[-1]) / 1024
                    out.append(
                        f"restore + replay of {len(segments)} segments, --wal-prefetch {depth}: {seconds:.1f} s "
                        f"(restore process peak RSS {peak:.0f} MiB)"
                    )
                    subprocess.run(
                        ["runuser", "-u", "postgres", "--", "/usr/lib/postgresql/15/bin/pg_ctl", "-D", str(target),
                         "-m", "immediate", "-w", "stop"],
                        capture_output=True,
                    )  # fmt: skip
                    shutil.rmtree(target)
                    for side in work.glob(f".{target.name}.restore-*"):
                        shutil.rmtree(side, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print("\n".join(out))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
