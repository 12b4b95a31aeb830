"""``backup_retention``: what the window no longer needs goes; never while the newest backup is unproven.

The rules (count and time, as pgBackRest) are the core's: ``cqox_platform.backup.retention``.
"""

from datetime import UTC, datetime

import dagster as dg
from dagster_aws.s3 import S3Resource

from assets.backups.common import GROUP, retention_automation
from assets.backups.drill import restore_drill
from assets.metadata import md_table
from cqox_platform.backup.archive.cluster import cluster_archive
from cqox_platform.backup.archive.history import retire_backups
from cqox_platform.backup.archive.records import list_backups
from cqox_platform.backup.retention import (
    DEFAULT_KEEP_DAYS,
    DEFAULT_KEEP_FULL,
    RetentionError,
    apply_retention,
    archived_wal_names,
    check_retention,
    plan_retention,
)
from cqox_platform.backup.verify.checks import retention_gate
from cqox_platform.backup.verify.drill import latest_drill, verified_backup_ids
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
    "only while the newest backup's drill check passes, and deletes only if the newest backup in the archive at "
    "that moment has a passing drill (its metadata names the drill it relied on).",
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
        archive = cluster_archive(conn, s3.get_client(), backups.bucket)
        records = list_backups(archive)
        # The automation condition read restore_drill's last check, which may predate the newest backup.
        newest = records[-1].backup_id if records else None
        gate = retention_gate(newest, latest_drill(conn, newest, passed_only=True) if newest else None)
        context.log.info(f"retention gate: {gate.description}")
        if not gate.passed and not config.dry_run:
            raise dg.Failure(description=f"retention deleted nothing: {gate.description}", metadata=gate.metadata)
        plan = plan_retention(
            records,
            verified_backup_ids(conn),
            archived_wal_names(archive),
            now=datetime.now(UTC),
            keep_days=config.keep_days,
            keep_full=config.keep_full,
        )
        deleted = 0
        if not config.dry_run:
            deleted = apply_retention(archive, plan)
            retire_backups(conn, records, plan.delete)
    verb = "would delete" if config.dry_run else "deleted"
    context.log.info(f"retention {verb} {len(plan.delete)} backup(s) and {len(plan.wal_delete)} WAL file(s)")
    summary = plan.summary()
    return dg.MaterializeResult(
        metadata={
            "dry_run": config.dry_run,
            "gate": gate.description,
            "gate_drill_id": gate.metadata["drill_id"],
            "keep_days": config.keep_days,
            "keep_full": config.keep_full,
            "plan": md_table(
                ["backup", "action", "reason"], [[r["backup_id"], r["action"], r["reason"]] for r in plan.rows()]
            ),
            "backups_kept": dg.MetadataValue.json(summary["keep"]),
            "backups_deleted": dg.MetadataValue.json(summary["delete"]),
            "reasons": dg.MetadataValue.json(plan.reasons),
            "wal_files_deleted": len(plan.wal_delete),
            "wal_kept_from": plan.wal_keep_from or "",
            "objects_deleted": deleted,
        }
    )
