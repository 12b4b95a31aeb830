"""Site-loss RTO and RPO at ~1 GB: the platform recovered from the DR copy and the unseal key file alone.

Run on the local stack after the main job (``./scripts/run-main.sh``, or ``stack up`` then ``vault_config``) with
its environment (``eval "$(cqox-platform stack env)"``):

    .venv/bin/python -m benchmarks.site_loss --scale 68     # ~1 GB of pgbench data in schema ``bench``

It loads pgbench data into the platform's database (schema ``bench``, dropped afterwards unless ``--keep``),
takes a base backup (which captures a restore point), writes ``--write-seconds`` of pgbench traffic after it,
copies to the DR region, takes a Vault snapshot, and runs ``site_loss_drill``. It prints the Vault snapshot's
size and time, the drill's RTO per phase and its achieved RPO, each against the roadmap's targets (RTO 4 h,
RPO 1 h) as ratios, and the projection to 1 TiB plus a day (50 GiB) of WAL.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import time

import dagster as dg
from psycopg.conninfo import make_conninfo

from assets import backups as backup_assets
from assets import site_loss, vault_recovery
from cqox_platform.backup.archive.cluster import cluster_archive
from cqox_platform.backup.verify.plan import ensure_point_archived
from cqox_platform.backup.verify.proof import load_restore_point
from cqox_platform.definitions import defs
from cqox_platform.pgserver import pg_bindir
from cqox_platform.site_loss.recovery import ROADMAP_RTO_SECONDS

RPO_TARGET_SECONDS = 3600


def _resources() -> dict:
    return dict(defs.resources or {})


def _materialize(assets: list, config: dict | None = None) -> dict:
    result = dg.materialize(assets, resources=_resources(), run_config={"ops": config or {}}, raise_on_error=False)
    out = {}
    for event in result.get_asset_materialization_events():
        materialization = event.event_specific_data.materialization
        out[materialization.asset_key.to_user_string()] = {k: v.value for k, v in materialization.metadata.items()}
    if not result.success:
        raise SystemExit(f"materializing {[a.key.to_user_string() for a in assets]} failed; see the log above")
    return out


def _pgbench(*args: str) -> float:
    started = time.monotonic()
    env = {**os.environ, "PGOPTIONS": "-c search_path=bench"}
    subprocess.run([str(pg_bindir() / "pgbench"), *args], check=True, env=env, capture_output=True)
    return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=int, default=68, help="pgbench scale (68: ~1 GB)")
    parser.add_argument("--write-seconds", type=int, default=30, help="pgbench traffic after the backup")
    parser.add_argument("--keep", action="store_true", help="keep schema bench afterwards")
    args = parser.parse_args()
    postgres = _resources()["postgres_admin"]
    database = make_conninfo(**{k: str(v) for k, v in postgres.conninfo().items()})
    with postgres.connect(autocommit=True) as conn:
        conn.execute("CREATE SCHEMA IF NOT EXISTS bench")
        name = conn.info.dbname
    try:
        print(f"loading pgbench scale {args.scale} into {name}.bench ...", flush=True)
        load = _pgbench("-i", "-q", "-s", str(args.scale), database)
        with postgres.connect(autocommit=True) as conn:
            size = int(conn.execute("SELECT pg_database_size(current_database())").fetchone()[0])
        print(f"loaded in {load:.0f} s; database {size / 2**30:.2f} GiB", flush=True)
        backup = _materialize([backup_assets.postgres_basebackup])["postgres_basebackup"]
        print(f"base backup {backup.get('backup_id')} in {backup.get('duration_seconds')} s", flush=True)
        _pgbench("-n", "-T", str(args.write_seconds), "-c", "2", database)
        with postgres.connect(autocommit=True) as conn:
            (point,) = conn.execute("SELECT name FROM restore_points ORDER BY created_at DESC LIMIT 1").fetchone()
            s3 = _resources()["s3"].get_client()
            archive = cluster_archive(conn, s3, _resources()["backups"].bucket)
            ensure_point_archived(conn, archive, load_restore_point(conn, point))
            conn.execute("SELECT pg_switch_wal()")
        time.sleep(5)
        copied = _materialize([backup_assets.backups_dr_copy])["backups_dr_copy"]
        print(f"DR copy: {copied.get('copied_objects')} object(s) copied", flush=True)
        snap = _materialize([vault_recovery.vault_snapshot])["vault_snapshot"]
        drill = _materialize([site_loss.site_loss_drill])["site_loss_drill"]
    finally:
        if not args.keep:
            with postgres.connect(autocommit=True) as conn:
                conn.execute("DROP SCHEMA IF EXISTS bench CASCADE")
    print()
    print(
        f"Vault snapshot: {snap['size_bytes'] / 2**20:.2f} MiB, taken in {snap['snapshot_seconds']:.2f} s, stored "
        f"in both regions in {snap['upload_seconds']:.2f} s"
    )
    print(f"site-loss drill: {drill['status']} {drill.get('error', '')}")
    rows = drill["phases"].records if hasattr(drill["phases"], "records") else []
    print("| phase | seconds | projected (1 TiB + 50 GiB WAL) |\n|---|---|---|")
    for row in rows:
        data = row.data
        print(f"| {data['phase']} | {data['seconds']:.1f} | {data['projected_seconds'] / 60:.1f} min |")
    print(f"replay legs: {drill.get('replay_phases')}; the proof (checks) is not part of the RTO")
    rto, projected = drill["rto_seconds"], drill["projected_rto_seconds"]
    print(
        f"RTO {rto:.1f} s at {drill['database_bytes'] / 2**30:.2f} GiB + {drill['wal_bytes_replayed'] / 2**20:.0f} "
        f"MiB WAL = {rto / ROADMAP_RTO_SECONDS:.4f}x the 4 h target; projected {projected / 3600:.2f} h = "
        f"{projected / ROADMAP_RTO_SECONDS:.2f}x"
    )
    print(
        f"achieved RPO {drill['rpo_seconds']:.1f} s / {drill['rpo_bytes']} bytes of WAL = "
        f"{drill['rpo_seconds'] / RPO_TARGET_SECONDS:.3f}x the 1 h target; {drill['rows_checked']} rows, "
        f"{drill['indexes_checked']} indexes checked"
    )


if __name__ == "__main__":
    main()
