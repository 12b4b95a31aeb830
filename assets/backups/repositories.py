"""Backup repositories of other engines as assets: one set per repository listed in ``CQOX_BACKUP_REPOSITORIES``.

A factory, because every repository gets the same verdicts under the same check names as the platform's own
archive, labelled by repository (asset names carry it; gauges carry ``repository``), so the same alerts fire:

- ``repository_<name>_wal_status`` (every 15 minutes): RPO in time and bytes, WAL continuity along the current
  timeline naming missing segments, archiver health, the recovery window; captures a restore point with row
  checksums on the source cluster each run;
- ``repository_<name>_restore_drill`` (daily at 04:00 UTC): the newest backup restored by the engine's own tool,
  replayed through its own restore_command to a fresh point, rows compared and amcheck run, RTO per phase;
- ``repository_<name>_base_backup`` (daily at 03:00 UTC), only where the platform takes the backups itself
  (``take_base_backups``: the local stack's CloudNativePG-like cluster; under CloudNativePG the operator does).

Retention stays the engine's (its own expire policy deletes): nothing here deletes anything.
"""

import tempfile
from pathlib import Path

import dagster as dg
import psycopg

from assets.backups.common import (
    BASE_BACKUP_FRESHNESS,
    DRILL_FRESHNESS,
    WAL_STATUS_FRESHNESS,
    base_backup_automation,
    check_result,
    push_gauges,
    wal_check_automation,
)
from assets.metadata import column, table
from cqox_platform.backup.repository.barman_cloud import BarmanCloudRepository
from cqox_platform.backup.repository.config import RepositorySpec, load_repositories
from cqox_platform.backup.restore.recovery import RecoveryTarget
from cqox_platform.backup.verify.checks import (
    archiving_failing,
    drill_passed,
    latest_backup_verified_restorable,
    wal_verdicts,
)
from cqox_platform.backup.verify.drill import latest_drill, record_drill, run_repository_drill, verified_backup_ids
from cqox_platform.backup.verify.gauges import RECOVERY_WINDOW_START, drill_samples, for_repository, wal_samples
from cqox_platform.backup.verify.repositories import (
    backup_before,
    capture_point,
    ensure_point_archived,
    recovery_window,
)
from cqox_platform.backup.wal.status import measure_repository
from cqox_platform.resources.postgres import PostgresResource
from cqox_platform.settings import get_settings

GROUP = "backup_repositories"
DRILL_CRON = "0 4 * * *"

drill_automation = (
    dg.AutomationCondition.cron_tick_passed(DRILL_CRON, "UTC").since_last_handled()
    & ~dg.AutomationCondition.in_progress()
).with_label("daily at 04:00 UTC")


def _system_id(conn: psycopg.Connection) -> str:
    return str(conn.execute("SELECT system_identifier FROM pg_control_system()").fetchone()[0])


def repository_assets(spec: RepositorySpec) -> list[dg.AssetsDefinition]:
    """The assets of one repository (see the module docstring)."""
    prefix = spec.asset_prefix
    assets: list[dg.AssetsDefinition] = []
    wal_deps: list[str] = []

    if spec.take_base_backups and spec.engine == "barman-cloud":

        @dg.asset(
            name=f"{prefix}_base_backup",
            group_name=GROUP,
            kinds={"postgres", "s3"},
            automation_condition=base_backup_automation,
            freshness_policy=BASE_BACKUP_FRESHNESS,
            description=f"barman-cloud-backup of {spec.name}'s source cluster, as CloudNativePG's ScheduledBackup "
            "takes it (compression and server-side encryption as configured).",
        )
        def base_backup(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
            repository = spec.build()
            assert isinstance(repository, BarmanCloudRepository)
            with tempfile.TemporaryDirectory(prefix="cqox-barman-") as tmp:
                Path(tmp).chmod(0o755)
                backup_id = repository.take_backup(spec.source, Path(tmp))
            context.log.info(f"barman-cloud-backup {backup_id} in {repository.where}")
            return dg.MaterializeResult(metadata={"backup_id": backup_id, "repository": spec.name})

        assets.append(base_backup)
        wal_deps.append(base_backup.key.path[-1])

    @dg.asset(
        name=f"{prefix}_wal_status",
        group_name=GROUP,
        kinds={"postgres", "s3"},
        deps=["cqox_schema", *wal_deps],
        automation_condition=wal_check_automation,
        freshness_policy=WAL_STATUS_FRESHNESS,
        description=f"{spec.engine} repository {spec.name}: RPO, WAL continuity along the current timeline, "
        "archiver health and the recovery window, measured from the engine's own listing; a restore point with "
        "row checksums captured on the source cluster.",
        check_specs=[
            dg.AssetCheckSpec(name, asset=f"{prefix}_wal_status", blocking=name != "wal_archiver_healthy")
            for name in ("wal_rpo_within_target", "wal_archive_continuous", "wal_archiver_healthy")
        ],
    )
    def wal_status(context: dg.AssetExecutionContext, postgres_admin: PostgresResource) -> dg.MaterializeResult:
        repository = spec.build()
        with (
            psycopg.connect(spec.source, autocommit=True) as source,
            postgres_admin.connect(autocommit=True) as ledger,
        ):
            backups = repository.list_backups()
            status = measure_repository(source, repository, backups[0] if backups else None)
            point = capture_point(source, ledger, repository)
            system_id = _system_id(source)
        window = recovery_window(backups, status)
        samples = wal_samples(system_id, status, failing=archiving_failing(status))
        if window.start is not None:
            samples.append((RECOVERY_WINDOW_START, {"system_id": system_id}, window.start.timestamp()))
        push_gauges(context, system_id, for_repository(spec.name, samples))
        verdicts = wal_verdicts(status, has_backup=bool(backups), rpo_target_seconds=spec.rpo_target_seconds)
        metadata = {k: v for k, v in status.as_dict().items() if k != "gaps" and v is not None}
        metadata.update(
            repository=spec.name,
            engine=spec.engine,
            where=repository.where,
            gaps=dg.MetadataValue.json(status.gaps[:50]),
            timelines=dg.MetadataValue.json(status.timelines),
            restore_point=point.name,
            backups=len(backups),
            recovery_window_seconds=window.seconds if window.seconds is not None else -1.0,
        )
        return dg.MaterializeResult(metadata=metadata, check_results=[check_result(v) for v in verdicts])

    @dg.asset(
        name=f"{prefix}_restore_drill",
        group_name=GROUP,
        kinds={"postgres", "s3"},
        deps=[wal_status],
        automation_condition=drill_automation,
        freshness_policy=DRILL_FRESHNESS,
        description=f"Restores {spec.name}'s newest backup with {spec.engine}'s own tool into a scratch cluster, "
        "replays its WAL to a fresh restore point, compares row checksums and runs amcheck; RTO per phase.",
        check_specs=[
            dg.AssetCheckSpec("drill_passed", asset=f"{prefix}_restore_drill"),
            dg.AssetCheckSpec("latest_backup_verified_restorable", asset=f"{prefix}_restore_drill", blocking=True),
        ],
    )
    def restore_drill(context: dg.AssetExecutionContext, postgres_admin: PostgresResource) -> dg.MaterializeResult:
        repository = spec.build()
        with (
            psycopg.connect(spec.source, autocommit=True) as source,
            postgres_admin.connect(autocommit=True) as ledger,
        ):
            point = capture_point(source, ledger, repository)
            ensure_point_archived(source, repository, point)
            system_id = _system_id(source)
            backups = repository.list_backups()
            backup = backup_before(backups, point)
            if backup is None:
                raise dg.Failure(f"{repository.where} holds no backup a restore to {point.name} can start from")
            result = run_repository_drill(
                repository,
                backup,
                RecoveryTarget("restore_point", point.name),
                expected=point,
                progress=context.log.info,
            )
            record_drill(ledger, result)
            newest = backups[-1].backup_id
            newest_check = latest_backup_verified_restorable(
                newest,
                verified_backup_ids(ledger, spec.name),
                latest_drill(ledger, newest, repository=spec.name),
            )
        push_gauges(context, system_id, for_repository(spec.name, drill_samples(system_id, result)))
        s = result.seconds
        metadata = {
            "repository": spec.name,
            "engine": spec.engine,
            "drill_id": result.drill_id,
            "backup_id": result.backup_id,
            "status": result.status,
            **({"error": result.error} if result.error else {}),
            "rto_seconds": result.rto_seconds,
            **{f"{phase}_seconds": float(seconds) for phase, seconds in s.items()},
            "rto_breakdown": table(
                [column("phase"), column("seconds", "float", "wall-clock time of the phase")],
                [[phase, s[phase]] for phase in s] + [["total (RTO)", result.rto_seconds]],
            ),
            "integrity_check": result.details.get("integrity_check", ""),
            "tables_checked": result.tables_checked,
            "indexes_checked": result.indexes_checked,
            "rows_checked": result.details.get("rows_checked", 0),
        }
        return dg.MaterializeResult(
            metadata=metadata, check_results=[check_result(drill_passed(result)), check_result(newest_check)]
        )

    return [*assets, wal_status, restore_drill]


def repository_defs(specs: list[RepositorySpec] | None = None) -> dg.Definitions:
    """Every configured repository's assets (none without ``CQOX_BACKUP_REPOSITORIES``)."""
    if specs is None:
        specs = load_repositories(get_settings().backup_repositories)
    return dg.Definitions(assets=[a for spec in specs for a in repository_assets(spec)])


__all__ = ["GROUP", "repository_assets", "repository_defs"]
