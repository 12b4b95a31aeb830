"""``postgres_basebackup``: the daily base backup, and its restore point for the drill to prove."""

import dagster as dg
from dagster_aws.s3 import S3Resource

from assets.backups.common import (
    BASE_BACKUP_FRESHNESS,
    BASE_BACKUP_POOL,
    GROUP,
    base_backup_automation,
    dsn,
    mib,
    push_gauges,
)
from cqox_platform.backup.archive.cluster import cluster_archive
from cqox_platform.backup.base.take import take_backup
from cqox_platform.backup.verify.gauges import base_backup_samples
from cqox_platform.pgserver import pg_bindir
from cqox_platform.resources.backups import BackupStorageResource
from cqox_platform.resources.postgres import PostgresResource
from cqox_platform.resources.vault import VaultResource


@dg.asset(
    group_name=GROUP,
    kinds={"postgres", "s3"},
    deps=["vault_config", "cqox_schema"],
    pool=BASE_BACKUP_POOL,
    automation_condition=base_backup_automation,
    freshness_policy=BASE_BACKUP_FRESHNESS,
    description="A base backup (pg_basebackup, zstd, envelope-encrypted, S3 multipart) with its record written "
    "last, and a restore point with captured table checksums right after it for the drill to prove.",
)
def postgres_basebackup(
    context: dg.AssetExecutionContext,
    postgres_admin: PostgresResource,
    vault: VaultResource,
    s3: S3Resource,
    backups: BackupStorageResource,
) -> dg.MaterializeResult:
    provider = vault.key_provider(backups.transit_key)
    with postgres_admin.connect(autocommit=True) as conn:
        archive = cluster_archive(conn, s3.get_client(), backups.bucket)
        record, point = take_backup(
            conn,
            archive,
            provider,
            dsn(postgres_admin),
            pg_basebackup=str(pg_bindir() / "pg_basebackup"),
            progress=context.log.info,
        )
    push_gauges(context, archive.system_id, base_backup_samples(archive.system_id, record))
    return dg.MaterializeResult(
        metadata={
            "backup_id": record.backup_id,
            "object": archive.where(record.object_key),
            "timeline": record.timeline,
            "start_lsn": record.start_lsn,
            "stop_lsn": record.stop_lsn,
            "start_wal": record.start_wal,
            "database_mib": mib(record.database_bytes),
            "stored_mib": mib(record.stored_bytes),
            "compression_ratio": round(record.database_bytes / max(record.compressed_bytes, 1), 2),
            "duration_seconds": record.duration_seconds,
            "throughput_mib_s": record.throughput_mib_s,
            "key": f"{record.key_name} v{record.key_version}",
            "restore_point": point.name,
            "restore_point_lsn": point.lsn,
            "tables_captured": len(point.tables),
        }
    )
