"""Tell the Dagster instance about a backup made outside Dagster, so ``postgres_basebackup`` shows the real newest.

``cqox-platform backup create`` runs this as its own short program once the backup is complete
(``python -m cqox_platform.instance_events backup-created --made-by CLI``, the backup on stdin as ``backup create
--json`` prints it): the CLI never imports Dagster (the ``cli-without-dagster`` contract keeps its start-up and its
failure modes small), and whatever goes wrong here cannot fail a backup that already succeeded.

The event is a runless ``AssetMaterialization`` of ``postgres_basebackup`` in the instance ``DAGSTER_HOME`` names
(``DagsterInstance.get()``), not an observation: the asset's page shows the latest materialization, its freshness
policy counts it, and the assets that follow a new backup (the DR copy, the recoverability view) see it as one.
The metadata uses the keys the asset's own materializations use where they overlap, so plots continue across both.

Exit codes: 0 recorded; 2 no Dagster instance configured (``DAGSTER_HOME`` unset); 1 the instance could not be
loaded or did not take the event. Each failure prints one line saying what to do.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import datetime
from typing import Any

import dagster as dg

BASE_BACKUP_ASSET = dg.AssetKey("postgres_basebackup")
RECORDED, FAILED, NO_INSTANCE = 0, 1, 2


def _mib(n: int) -> float:
    return round(n / 2**20, 2)


def backup_materialization(created: dict[str, Any], made_by: str) -> dg.AssetMaterialization:
    """The materialization of ``postgres_basebackup`` for a backup as ``backup create --json`` describes it."""
    backup = created["backup"]
    stopped = datetime.fromisoformat(backup["stop_time"])
    return dg.AssetMaterialization(
        asset_key=BASE_BACKUP_ASSET,
        description=f"Base backup {backup['backup_id']} made by {made_by}, outside Dagster.",
        metadata={
            "backup_id": backup["backup_id"],
            "made_by": made_by,
            "stop_time": dg.MetadataValue.timestamp(stopped),
            "object": created["where"],
            "timeline": backup["timeline"],
            "start_lsn": backup["start_lsn"],
            "stop_lsn": backup["stop_lsn"],
            "start_wal": backup["wal_start"],
            "database_mib": _mib(backup["database_bytes"]),
            "stored_mib": _mib(backup["stored_bytes"]),
            "restore_point": created["restore_point"]["name"],
        },
    )


def report_backup(instance: dg.DagsterInstance, created: dict[str, Any], made_by: str) -> None:
    instance.report_runless_asset_event(backup_materialization(created, made_by))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cqox_platform.instance_events")
    parser.add_argument("event", choices=["backup-created"])
    parser.add_argument("--made-by", default="CLI")
    args = parser.parse_args(argv)
    created = json.loads(sys.stdin.read())
    backup_id = created["backup"]["backup_id"]
    # Dagster's own variable (settings.LIBRARY_ENV), read here because DagsterInstance.get() reads it too.
    if not os.environ.get("DAGSTER_HOME"):
        print(
            "no Dagster instance configured (DAGSTER_HOME is not set): set it to the instance's directory "
            '(`eval "$(cqox-platform stack env)"` on the local stack) to record backups made outside Dagster',
            file=sys.stderr,
        )
        return NO_INSTANCE
    try:
        instance = dg.DagsterInstance.get()
    except Exception as exc:  # any way the instance fails to load: the caller's backup stands regardless
        print(f"the Dagster instance in DAGSTER_HOME could not be loaded: {_one_line(exc)}", file=sys.stderr)
        return FAILED
    try:
        with instance:
            report_backup(instance, created, args.made_by)
    except Exception as exc:
        print(f"the Dagster instance did not record the event: {_one_line(exc)}", file=sys.stderr)
        return FAILED
    print(f"recorded base backup {backup_id} on {BASE_BACKUP_ASSET.to_user_string()} (made by {args.made_by})")
    return RECORDED


def _one_line(exc: BaseException) -> str:
    return " ".join(f"{type(exc).__name__}: {exc}".split())


if __name__ == "__main__":
    sys.exit(main())
