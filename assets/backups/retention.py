"""``backup_retention`` and ``backups_dr_retention``: what the window no longer needs goes, from the primary and
from the DR region alike; never while the newest backup is unproven.

The rules (count and time, as pgBackRest) are the core's: ``cqox_platform.backup.retention``. The DR copy would
otherwise grow forever: the DR copy only adds, and the primary's retention never reaches another region.
"""

import dagster as dg
from dagster_aws.s3 import S3Resource

from assets.backups.common import GROUP, retention_automation
from assets.backups.dr_copy import backups_dr_copy
from assets.backups.drill import restore_drill
from assets.metadata import column, table
from cqox_platform.backup.archive.cluster import cluster_archive
from cqox_platform.backup.retention import (
    DEFAULT_KEEP_DAYS,
    DEFAULT_KEEP_FULL,
    Expiry,
    RetentionError,
    RetentionGateError,
    check_retention,
    expire,
    expire_archive,
)
from cqox_platform.resources.backups import BackupStorageResource
from cqox_platform.resources.postgres import PostgresResource


class RetentionConfig(dg.Config):
    #: Backups that finished inside this many days stay, and the newest one before the window (at least 1).
    keep_days: int = DEFAULT_KEEP_DAYS
    #: The newest this many complete backups always stay, however old (pgBackRest repo-retention-full; >= 1).
    keep_full: int = DEFAULT_KEEP_FULL
    dry_run: bool = False


@dg.asset(
    group_name=GROUP,
    kinds={"s3"},
    deps=[restore_drill],
    automation_condition=retention_automation,
    description="Deletes backups outside the window beyond the newest keep_full (never the newest verified one, "
    "nor the one the window's start needs) and WAL no kept backup needs; a dry run lists what would go. Runs "
    "only while the newest backup's drill check passes.",
)
def backup_retention(
    context: dg.AssetExecutionContext,
    config: RetentionConfig,
    postgres_admin: PostgresResource,
    s3: S3Resource,
    backups: BackupStorageResource,
) -> dg.MaterializeResult:
    try:
        check_retention(config.keep_days, config.keep_full)  # before touching anything
    except RetentionError as exc:
        raise dg.Failure(str(exc)) from exc
    with postgres_admin.connect(autocommit=True) as conn:
        try:
            expiry = expire(
                conn,
                s3.get_client(),
                backups.bucket,
                keep_days=config.keep_days,
                keep_full=config.keep_full,
                dry_run=config.dry_run,
            )
        except RetentionGateError as exc:
            context.log.info(f"retention gate: {exc.gate.description}")
            raise dg.Failure(description=str(exc), metadata=exc.gate.metadata) from exc
    return _result(context, config, expiry)


def _result(context: dg.AssetExecutionContext, config: RetentionConfig, expiry: Expiry) -> dg.MaterializeResult:
    """What a retention run shows, the same for every copy: the gate, the plan, what went."""
    plan, gate = expiry.plan, expiry.gate
    context.log.info(f"retention gate: {gate.description}")
    verb = "would delete" if config.dry_run else "deleted"
    context.log.info(f"retention {verb} {len(plan.delete)} backup(s) and {len(plan.wal_delete)} WAL file(s)")
    summary = plan.summary()
    return dg.MaterializeResult(
        metadata={
            "copy": expiry.where,
            "dry_run": config.dry_run,
            "gate": gate.description,
            **({"gate_drill_id": gate.metadata["drill_id"]} if gate.metadata.get("drill_id") else {}),
            "keep_days": config.keep_days,
            "keep_full": config.keep_full,
            "plan": table(
                [
                    column("backup_id"),
                    column("action", description="keep or delete"),
                    column("reason", description="the retention rule that decided"),
                ],
                [[r["backup_id"], r["action"], r["reason"]] for r in plan.rows()],
            ),
            "backups_kept_count": len(plan.keep),
            "backups_deleted_count": len(plan.delete),
            "backups_kept": dg.MetadataValue.json(summary["keep"]),
            "backups_deleted": dg.MetadataValue.json(summary["delete"]),
            "reasons": dg.MetadataValue.json(plan.reasons),
            "wal_files_deleted": len(plan.wal_delete),
            **({"wal_kept_from": plan.wal_keep_from} if plan.wal_keep_from else {}),
            "objects_deleted": expiry.objects_deleted,
        }
    )


@dg.asset(
    group_name=GROUP,
    kinds={"s3"},
    deps=[backups_dr_copy, restore_drill],
    automation_condition=retention_automation,
    description="The same retention rules and gate as backup_retention, on the DR region's copy (with the DR "
    "writer's key): backups outside the window beyond the newest keep_full go, never the newest verified one nor "
    "the one the window's start needs, and WAL no kept backup needs.",
)
def backups_dr_retention(
    context: dg.AssetExecutionContext,
    config: RetentionConfig,
    postgres_admin: PostgresResource,
    backups: BackupStorageResource,
) -> dg.MaterializeResult:
    try:
        check_retention(config.keep_days, config.keep_full)  # before touching anything
    except RetentionError as exc:
        raise dg.Failure(str(exc)) from exc
    with postgres_admin.connect(autocommit=True) as conn:
        archive = cluster_archive(conn, backups.dr_client("writer"), backups.dr_bucket)
        try:
            expiry = expire_archive(
                conn, archive, keep_days=config.keep_days, keep_full=config.keep_full, dry_run=config.dry_run
            )
        except RetentionGateError as exc:
            context.log.info(f"retention gate (DR copy): {exc.gate.description}")
            raise dg.Failure(description=str(exc), metadata=exc.gate.metadata) from exc
    return _result(context, config, expiry)
