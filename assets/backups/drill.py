"""``restore_drill``: a backup restored into a scratch cluster and proven, with its RTO.

Its blocking check ``latest_backup_verified_restorable`` is what retention waits for.
"""

import random
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import dagster as dg
from dagster_aws.s3 import S3Resource

from assets.backups.base_backup import postgres_basebackup
from assets.backups.common import DRILL_FRESHNESS, GROUP, check_result, push_gauges
from assets.metadata import column, table
from cqox_platform.archiver_clients import write_dr_fetch_settings
from cqox_platform.backup.archive.cluster import cluster_archive
from cqox_platform.backup.archive.history import DrillTiming, recent_drill_timings
from cqox_platform.backup.archive.records import BackupRecord, list_backups
from cqox_platform.backup.archive.store import Archive
from cqox_platform.backup.verify.checks import drill_passed, latest_backup_verified_restorable
from cqox_platform.backup.verify.drill import DrillResult, latest_drill, record_drill, run_drill, verified_backup_ids
from cqox_platform.backup.verify.gauges import drill_samples
from cqox_platform.backup.verify.plan import DrillMode, DrillPlanError, DrillSource, choose_drill, ensure_point_archived
from cqox_platform.charts import render_lines_svg, svg_markdown
from cqox_platform.installation import platform_cli
from cqox_platform.resources.backups import BackupStorageResource
from cqox_platform.resources.postgres import PostgresResource
from cqox_platform.resources.vault import VaultResource


class DrillConfig(dg.Config):
    #: Backup to drill; empty: the newest backup (mode "for_backup") or the one before the chosen point ("random").
    backup_id: str = ""
    #: "for_backup": restore to the point captured right after the backup; "random": a random captured point
    #: inside the retention window (the daily schedule); "latest_point": the newest captured point (after a
    #: failover: across the timeline switch), from ``backup_id`` or the newest backup before it.
    mode: DrillMode = DrillMode.for_backup
    #: "primary" or "dr": drill from the second-region copy.
    source: DrillSource = DrillSource.primary
    retention_days: int = 30
    keep_scratch: bool = False


@dg.asset(
    group_name=GROUP,
    kinds={"postgres", "s3"},
    deps=[postgres_basebackup],
    freshness_policy=DRILL_FRESHNESS,
    description="Restores a backup into a scratch cluster (download, decrypt, extract, pg_verifybackup, WAL replay "
    "to a captured restore point), proves row counts, checksums and indexes (amcheck), and records the RTO.",
    check_specs=[
        dg.AssetCheckSpec(
            "drill_passed",
            asset="restore_drill",
            description="This drill restored its backup and proved it: row counts, table checksums and amcheck "
            "match what was captured. A partial drill (nothing compared) warns.",
        ),
        dg.AssetCheckSpec(
            "latest_backup_verified_restorable",
            asset="restore_drill",
            blocking=True,
            description="The newest base backup has a passing drill (backup_retention waits for it).",
        ),
    ],
)
def restore_drill(
    context: dg.AssetExecutionContext,
    config: DrillConfig,
    postgres_admin: PostgresResource,
    vault: VaultResource,
    s3: S3Resource,
    backups: BackupStorageResource,
) -> dg.MaterializeResult:
    provider = vault.key_provider(backups.transit_key)
    from_dr = config.source is DrillSource.dr
    bucket = backups.dr_bucket if from_dr else backups.bucket
    # From the DR copy: the DR region's endpoint with its read-only key, for the listing, the download and the
    # scratch cluster's wal-fetch alike; the primary's S3 client is never asked.
    client = backups.dr_client("reader") if from_dr else s3.get_client()
    with postgres_admin.connect(autocommit=True) as conn, ExitStack() as cleanup:
        archive = cluster_archive(conn, client, bucket)
        settings_file = Path(backups.archiver_settings)
        if from_dr:
            settings_file = cleanup.enter_context(dr_fetch_settings(backups, settings_file, backups.drill_parent()))
        records = list_backups(archive)
        try:
            plan = choose_drill(
                conn,
                records,
                config.mode,
                backup_id=config.backup_id,
                retention_days=config.retention_days,
                rng=random.Random(),
            )
        except DrillPlanError as exc:
            raise dg.Failure(f"{exc} (archive {archive.where(archive.root + '/base/')})") from exc
        if config.mode is DrillMode.latest_point and config.source is DrillSource.primary and plan.expected:
            ensure_point_archived(conn, archive, plan.expected)  # the newest point may sit in the open segment
        context.log.info(
            f"drilling backup {plan.record.backup_id} from {bucket} to {plan.target.kind} {plan.target.value!r}"
        )
        result = run_drill(
            archive,
            provider,
            plan.record,
            plan.target,
            expected=plan.expected,
            cli=platform_cli(),
            settings_file=settings_file,
            workdir=backups.drill_parent(),
            progress=context.log.info,
            keep=config.keep_scratch,
        )
        record_drill(conn, result)
        newest = records[-1].backup_id
        newest_check = latest_backup_verified_restorable(newest, verified_backup_ids(conn), latest_drill(conn, newest))
        history = recent_drill_timings(conn)
    push_gauges(context, archive.system_id, drill_samples(archive.system_id, result))
    if result.passed:
        context.log.info(f"drill passed: RTO {result.rto_seconds:.1f} s {result.seconds}")
    elif result.status == "partial":
        context.log.warning(f"drill PARTIAL (verifies nothing): {result.error}")
    else:
        context.log.error(f"drill FAILED: {result.error}")
    return dg.MaterializeResult(
        metadata=_metadata(result, archive, plan.record, history),
        check_results=[check_result(drill_passed(result)), check_result(newest_check)],
    )


@contextmanager
def dr_fetch_settings(backups: BackupStorageResource, archiver_settings: Path, parent: Path) -> Iterator[Path]:
    """A drill's own archiver settings for its scratch cluster's ``wal-fetch``: the archiver's Vault login (data
    keys) with the DR region's endpoint, CA, bucket and read-only key; owned by the postgres OS user, mode 0600,
    and removed with its directory when the drill ends."""
    directory = Path(tempfile.mkdtemp(prefix="cqox-dr-fetch-", dir=parent))
    try:
        directory.chmod(0o755)  # the postgres OS user reaches its file; the file itself is 0600 and its own
        yield write_dr_fetch_settings(
            archiver_settings,
            directory,
            endpoint=backups.dr_endpoint,
            cacert=backups.dr_cacert,
            bucket=backups.dr_bucket,
            reader_credentials_file=Path(backups.dr_reader_credentials_file),
        )
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _metadata(result: DrillResult, archive: Archive, record: BackupRecord, history: list[DrillTiming]) -> dict:
    chart = render_lines_svg(
        "Restore drills: RTO and its parts, seconds (last 30)",
        {
            "RTO": [h.rto_seconds for h in history],
            "download+decrypt+extract": [h.restore_seconds for h in history],
            "WAL replay": [h.replay_seconds for h in history],
        },
        "s",
    )
    s = result.seconds
    return {
        "drill_id": result.drill_id,
        "backup_id": record.backup_id,
        "source": archive.where(record.object_key),
        "target": f"{result.target.kind} {result.target.value}".strip(),
        # status says passed, partial or failed; a separate passed flag would repeat it.
        "status": result.status,
        **({"error": result.error} if result.error else {}),
        "rto_seconds": result.rto_seconds,
        # Each phase also on its own, so the asset's Plots view charts it across drills.
        **{f"{phase}_seconds": float(seconds) for phase, seconds in s.items()},
        "rto_breakdown": table(
            [column("phase"), column("seconds", "float", "wall-clock time of the phase")],
            [[phase, s.get(phase)] for phase in s] + [["total (RTO)", result.rto_seconds]],
        ),
        "tables_checked": result.tables_checked,
        "indexes_checked": result.indexes_checked,
        "rows_checked": result.details.get("rows_checked", 0),
        "mismatches": dg.MetadataValue.json(result.mismatches),
        "rto_history": dg.MetadataValue.md(svg_markdown(chart, "RTO history")),
    }
