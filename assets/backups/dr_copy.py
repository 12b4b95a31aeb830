"""``backups_dr_copy``: the second region kept current, once per new backup and every 15 minutes for WAL."""

import time

import dagster as dg
from dagster_aws.s3 import S3Resource

from assets.backups.base_backup import postgres_basebackup
from assets.backups.common import GROUP, check_result, dr_copy_automation, mib, push_gauges
from cqox_platform.backup.archive.cluster import cluster_archive
from cqox_platform.backup.archive.store import Archive
from cqox_platform.backup.dr_copy import copy_to_dr
from cqox_platform.backup.verify.checks import dr_copy_verified
from cqox_platform.backup.verify.gauges import dr_copy_samples
from cqox_platform.resources.backups import BackupStorageResource
from cqox_platform.resources.postgres import PostgresResource


class DrCopyConfig(dg.Config):
    #: Also re-read every complete copy in the DR bucket and re-copy any whose SHA-256 no longer matches the one
    #: recorded at copy time (reads the whole DR copy: for a weekly or on-demand run, not every 15 minutes).
    reverify: bool = False


@dg.asset(
    group_name=GROUP,
    kinds={"s3"},
    deps=[postgres_basebackup],
    automation_condition=dr_copy_automation,
    description="Copies new backups and WAL to the DR bucket, each as a unit (data, then manifest, then record; "
    "stopped at the first SHA-256 mismatch and retried next run), and reports lag.",
    check_specs=[
        dg.AssetCheckSpec(
            "dr_copy_verified",
            asset="backups_dr_copy",
            description="Every object copied to the DR bucket matches its source by SHA-256; a mismatch is copied "
            "again by the next run.",
        )
    ],
)
def backups_dr_copy(
    context: dg.AssetExecutionContext,
    config: DrCopyConfig,
    postgres_admin: PostgresResource,
    s3: S3Resource,
    backups: BackupStorageResource,
) -> dg.MaterializeResult:
    with postgres_admin.connect(autocommit=True) as conn:
        primary = cluster_archive(conn, s3.get_client(), backups.bucket)
    # The DR region is another endpoint and account: the writer's key, which nothing on the primary side holds.
    dr = Archive(backups.dr_client("writer"), backups.dr_bucket, primary.system_id)
    started = time.monotonic()
    result = copy_to_dr(primary, dr, progress=context.log.info, reverify=config.reverify)
    seconds = time.monotonic() - started
    context.log.info(
        f"DR copy: {len(result.copied)} object(s), {mib(result.copied_bytes)} MiB copied and verified; "
        f"lag before this run {result.lag_seconds:.0f} s; took {seconds:.1f} s"
    )
    push_gauges(context, primary.system_id, dr_copy_samples(primary.system_id, result))
    return dg.MaterializeResult(
        metadata={
            "copied_objects": len(result.copied),
            "copied_mib": mib(result.copied_bytes),
            "copy_seconds": round(seconds, 2),
            "pending_before": result.pending_before,
            "lag_before_seconds": round(result.lag_seconds, 1),
            "primary_objects": result.primary_objects,
            "dr_objects": result.dr_objects,
            "mismatched": dg.MetadataValue.json(result.mismatched),
        },
        check_results=[check_result(dr_copy_verified(result))],
    )
