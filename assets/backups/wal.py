"""``wal_archive_status``: archiving health and the RPO, measured every 15 minutes."""

import dagster as dg
from dagster_aws.s3 import S3Resource

from assets.backups.base_backup import postgres_basebackup
from assets.backups.common import GROUP, WAL_STATUS_FRESHNESS, check_result, push_gauges, wal_check_automation
from cqox_platform.backup.archive.cluster import cluster_archive
from cqox_platform.backup.archive.records import list_backups
from cqox_platform.backup.verify.checks import archiving_failing, wal_verdicts
from cqox_platform.backup.verify.gauges import wal_samples
from cqox_platform.backup.verify.proof import checkpoint_restore_point
from cqox_platform.backup.wal.status import measure
from cqox_platform.resources.backups import BackupStorageResource
from cqox_platform.resources.postgres import PostgresResource
from cqox_platform.resources.vault import VaultResource


class WalCheckConfig(dg.Config):
    #: RPO target in seconds (the roadmap checks WAL every 15 minutes; its DR target is < 1 hour).
    rpo_target_seconds: float = 900.0
    #: Push out an unarchived WAL tail older than this with pg_switch_wal (an idle cluster is not stale).
    switch_after_seconds: float = 60.0
    #: Capture a restore point with table checksums each run (what the daily random drill restores to).
    capture_restore_point: bool = True


@dg.asset(
    group_name=GROUP,
    kinds={"postgres", "s3"},
    # Continuity is anchored at the oldest backup, so in a run with both the backup comes first.
    deps=["vault_config", "cqox_schema", postgres_basebackup],
    automation_condition=wal_check_automation,
    freshness_policy=WAL_STATUS_FRESHNESS,
    description="WAL archiving health: archive_mode, pg_stat_archiver, the newest archived segment's age, and "
    "continuity from the oldest backup to now and the RPO in seconds and bytes, both along the current timeline.",
    check_specs=[
        dg.AssetCheckSpec(
            "wal_rpo_within_target",
            asset="wal_archive_status",
            blocking=True,
            description="Archiving is on and the oldest WAL not yet archived on the current timeline is younger than "
            "the RPO target: what a restore now would lose.",
        ),
        dg.AssetCheckSpec(
            "wal_archive_continuous",
            asset="wal_archive_status",
            blocking=True,
            description="Every WAL segment from the oldest backup's start to the newest archived one is in the "
            "archive, along the current timeline's history: no gap a restore would stop at.",
        ),
        dg.AssetCheckSpec(
            "wal_archiver_healthy",
            asset="wal_archive_status",
            description="PostgreSQL archives (archive_mode on) and archive_command has not failed since its last "
            "success.",
        ),
    ],
)
def wal_archive_status(
    context: dg.AssetExecutionContext,
    config: WalCheckConfig,
    postgres_admin: PostgresResource,
    vault: VaultResource,
    s3: S3Resource,
    backups: BackupStorageResource,
) -> dg.MaterializeResult:
    provider = vault.key_provider(backups.transit_key)
    with postgres_admin.connect(autocommit=True) as conn:
        archive = cluster_archive(conn, s3.get_client(), backups.bucket)
        point = checkpoint_restore_point(conn) if config.capture_restore_point else None
        records = list_backups(archive)
        status = measure(
            conn, archive, provider, records[0] if records else None, switch_after=config.switch_after_seconds
        )
    samples = wal_samples(
        archive.system_id, status, failing=archiving_failing(status), oldest=records[0] if records else None
    )
    push_gauges(context, archive.system_id, samples)
    verdicts = wal_verdicts(status, has_backup=bool(records), rpo_target_seconds=config.rpo_target_seconds)
    metadata = {k: v for k, v in status.as_dict().items() if k != "gaps" and v is not None}
    metadata["gaps"] = dg.MetadataValue.json(status.gaps[:50])
    metadata["timelines"] = dg.MetadataValue.json(status.timelines)
    metadata["archived_on_timeline"] = status.archived_on_timeline
    if point is not None:
        metadata["restore_point"] = point.name
    return dg.MaterializeResult(metadata=metadata, check_results=[check_result(v) for v in verdicts])
