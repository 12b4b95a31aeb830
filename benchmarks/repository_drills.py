"""Drill RTO per engine at ~1 GB: a Barman Cloud repository (as CloudNativePG's plugin writes it) and a pgBackRest
stanza, each of a cluster with pgbench data, drilled by the platform to a captured restore point.

Run on the local stack (``eval "$(cqox-platform stack env)"``, after ``vault_config``): prints, per engine, the
backup time and the drill's phases (restore by the engine's own tool, its integrity check, WAL replay through its
restore_command, row checksums and amcheck) and the RTO.

    .venv/bin/python -m benchmarks.repository_drills --scale 68     # ~1 GB
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg

from benchmarks._pgbackrest import configure
from benchmarks._scratch import scratch_database
from cqox_platform.backup.repository.base import Repository
from cqox_platform.backup.repository.pgbackrest import PgBackRestRepository
from cqox_platform.backup.repository.s3creds import S3Access
from cqox_platform.backup.restore.recovery import RecoveryTarget
from cqox_platform.backup.verify.drill import DrillResult, run_repository_drill
from cqox_platform.backup.verify.repositories import backup_before, capture_point, ensure_point_archived
from cqox_platform.pgserver import as_pg_user, pg_bindir
from cqox_platform.settings import child_env
from cqox_platform.stack.cnpg import CnpgLikeCluster


def _pgbench(cluster: CnpgLikeCluster, scale: int) -> float:
    started = time.monotonic()
    pgbench = [str(pg_bindir() / "pgbench"), "-i", "-q", "-s", str(scale), "-h", str(cluster.socket_dir)]
    subprocess.run(
        as_pg_user([*pgbench, "-p", str(cluster.port), "postgres"]),
        check=True,
        capture_output=True,
        env=child_env(drop_prefixes=("PG",)),  # the stack's PG* variables name its own server, not this one
    )
    return time.monotonic() - started


def _drill(cluster: CnpgLikeCluster, repository: Repository, ledger: psycopg.Connection) -> DrillResult:
    with cluster.connect() as source:
        source.execute("UPDATE pgbench_branches SET bbalance = bbalance + 1")
        point = capture_point(source, ledger, repository)
        ensure_point_archived(source, repository, point)
    backup = backup_before(repository.list_backups(), point)
    assert backup is not None
    return run_repository_drill(repository, backup, RecoveryTarget("restore_point", point.name), expected=point)


def _report(engine: str, size: int, backup_seconds: float, result: DrillResult) -> None:
    phases = ", ".join(f"{k} {v:.1f} s" for k, v in result.seconds.items())
    print(
        f"{engine}: database {size / 2**30:.2f} GiB, backup {backup_seconds:.1f} s, drill {result.status} "
        f"({result.error or 'rows ' + str(result.details.get('rows_checked'))}), RTO {result.rto_seconds:.1f} s: "
        f"{phases}; integrity: {result.details.get('integrity_check')}"
    )


def _size(cluster: CnpgLikeCluster) -> int:
    with cluster.connect() as conn:
        return int(conn.execute("SELECT pg_database_size('postgres')").fetchone()[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=int, default=68, help="pgbench scale (68: ~1 GB)")
    parser.add_argument("--engines", default="barman-cloud,pgbackrest")
    args = parser.parse_args()
    s3 = S3Access(
        os.environ["CQOX_S3_ENDPOINT"],
        os.environ["AWS_CA_BUNDLE"],
        os.environ["AWS_SHARED_CREDENTIALS_FILE"],
        os.environ.get("AWS_PROFILE", "default"),
    )
    root = Path(tempfile.mkdtemp(prefix="cqox-repo-bench-", dir="/tmp"))
    root.chmod(0o755)
    try:
        with scratch_database() as info, psycopg.connect(**info, autocommit=True) as ledger:
            if "barman-cloud" in args.engines:
                cluster = CnpgLikeCluster(root / "barman", s3, name="bench-barman")
                cluster.init()
                cluster.start()
                try:
                    _pgbench(cluster, args.scale)
                    started = time.monotonic()
                    cluster.base_backup()
                    _report(
                        "barman-cloud",
                        _size(cluster),
                        time.monotonic() - started,
                        _drill(cluster, cluster.repository, ledger),
                    )
                finally:
                    cluster.stop()
            if "pgbackrest" in args.engines:
                cluster = CnpgLikeCluster(root / "pgbackrest-cluster", s3, name="bench-pgbackrest")
                work = root / "pgbackrest"
                work.mkdir()
                conf = configure(work, cluster.pgdata, cluster.port, str(cluster.socket_dir))
                cluster.init()
                cluster.set_archive_command(conf.archive_push(cluster.pgdata), reload=False)
                cluster.start()
                try:
                    conf.run("stanza-create")
                    _pgbench(cluster, args.scale)
                    started = time.monotonic()
                    conf.run("--type=full", "backup")
                    repository = PgBackRestRepository("bench-pgbackrest", conf.conf, "cqox")
                    _report(
                        "pgbackrest", _size(cluster), time.monotonic() - started, _drill(cluster, repository, ledger)
                    )
                finally:
                    cluster.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
