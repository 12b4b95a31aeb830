"""Backups and disaster recovery as assets (group ``backups``).

``postgres_basebackup`` takes a base backup, ``wal_archive_status`` measures archiving and the RPO every 15
minutes, ``restore_drill`` proves a backup restores and measures the RTO, ``backup_retention`` deletes what the
window no longer needs, ``backups_dr_copy`` keeps the second region current, and ``backup_alert_rules`` loads
the alerts on the gauges all of them push. Every result lands in the metadata an operator reads in the UI.
"""

import os
import random
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import psycopg
from dagster_aws.s3 import S3Resource

from assets.metadata import md_table
from cqox_platform.alerts import BACKUP_ALERT_RULES
from cqox_platform.backup.archive import Archive
from cqox_platform.backup.dr_copy import copy_to_dr
from cqox_platform.backup.drill import DrillResult, record_drill, run_drill
from cqox_platform.backup.operations import (
    checkpoint_restore_point,
    cluster_archive,
    ensure_point_archived,
    latest_drill,
    plan_for_backup,
    plan_latest_point_drill,
    plan_random_drill,
    take_backup,
    verified_backup_ids,
)
from cqox_platform.backup.records import BackupRecord, list_backups, sync_backups_table
from cqox_platform.backup.restore import pg_bindir
from cqox_platform.backup.retention import apply_retention, plan_retention
from cqox_platform.backup.wal_status import measure
from cqox_platform.charts import render_lines_svg, svg_markdown
from cqox_platform.crypto.envelope import MANIFEST_SUFFIX
from cqox_platform.errors import CqoxError
from cqox_platform.installation import platform_cli
from cqox_platform.pushgateway import Sample, push
from cqox_platform.resources.backups import BackupStorageResource
from cqox_platform.resources.postgres import PostgresResource
from cqox_platform.resources.prometheus import PrometheusResource
from cqox_platform.resources.vault import VaultResource

GROUP = "backups"
ALERT_RULES = BACKUP_ALERT_RULES

# --- shared helpers ----------------------------------------------------------------------------------------------


def _dsn(postgres_admin: PostgresResource) -> str:
    return psycopg.conninfo.make_conninfo(**{k: str(v) for k, v in postgres_admin.conninfo().items()})


def _push(context: dg.AssetExecutionContext, system_id: str, samples: list[Sample]) -> None:
    url = os.environ.get("CQOX_PUSHGATEWAY_URL")
    if not url:
        context.log.info("CQOX_PUSHGATEWAY_URL not set: gauges not pushed")
        return
    try:
        sent = push(url, "cqox-backups", {"system_id": system_id}, samples)
        context.log.info(f"pushed {sent} gauge(s) to the Pushgateway")
    except CqoxError as exc:
        context.log.warning(f"gauges not pushed: {exc}")


def _mib(n: float) -> float:
    return round(n / 2**20, 2)


# --- base backup ---------------------------------------------------------------------------------------------


@dg.asset(
    group_name=GROUP,
    kinds={"postgres", "s3"},
    deps=["vault_config", "cqox_schema"],
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
            _dsn(postgres_admin),
            pg_basebackup=str(pg_bindir() / "pg_basebackup"),
            progress=context.log.info,
        )
        history = conn.execute(
            "SELECT backup_id, stored_bytes, database_bytes, duration_seconds FROM backups "
            "WHERE system_id = %s ORDER BY backup_id DESC LIMIT 30",
            [archive.system_id],
        ).fetchall()[::-1]
    _push(
        context,
        archive.system_id,
        [
            (
                "cqox_backup_last_success_timestamp_seconds",
                {"system_id": archive.system_id},
                record.stop_datetime.timestamp(),
            ),
            ("cqox_backup_stored_bytes", {"system_id": archive.system_id}, record.stored_bytes),
            ("cqox_backup_database_bytes", {"system_id": archive.system_id}, record.database_bytes),
            ("cqox_backup_duration_seconds", {"system_id": archive.system_id}, record.duration_seconds),
        ],
    )
    chart = render_lines_svg(
        "Base backups: MiB read and stored (last 30)",
        {"read MiB": [_mib(r[2]) for r in history], "stored MiB": [_mib(r[1]) for r in history]},
    )
    return dg.MaterializeResult(
        metadata={
            "backup_id": record.backup_id,
            "object": archive.where(record.object_key),
            "timeline": record.timeline,
            "start_lsn": record.start_lsn,
            "stop_lsn": record.stop_lsn,
            "start_wal": record.start_wal,
            "database_mib": _mib(record.database_bytes),
            "stored_mib": _mib(record.stored_bytes),
            "compression_ratio": round(record.database_bytes / max(record.compressed_bytes, 1), 2),
            "duration_seconds": record.duration_seconds,
            "throughput_mib_s": record.throughput_mib_s,
            "key": f"{record.key_name} v{record.key_version}",
            "restore_point": point.name,
            "restore_point_lsn": point.lsn,
            "tables_captured": len(point.tables),
            "size_history": dg.MetadataValue.md(svg_markdown(chart, "backup sizes")),
        }
    )


# --- WAL archiving and RPO -----------------------------------------------------------------------------------


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
    deps=["vault_config", "cqox_schema", "postgres_basebackup"],
    description="WAL archiving health: pg_stat_archiver, the newest archived segment's age, continuity from the "
    "oldest backup to now across timelines, and the RPO in seconds and bytes.",
    check_specs=[
        dg.AssetCheckSpec("wal_rpo_within_target", asset="wal_archive_status", blocking=True),
        dg.AssetCheckSpec("wal_archive_continuous", asset="wal_archive_status", blocking=True),
        dg.AssetCheckSpec("wal_archiver_healthy", asset="wal_archive_status"),
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
    failing_now = bool(
        status.last_failed_time
        and (not status.last_archived_time or status.last_failed_time > status.last_archived_time)
    )
    sid = archive.system_id
    _push(
        context,
        sid,
        [
            ("cqox_wal_rpo_seconds", {"system_id": sid}, status.rpo_seconds if status.rpo_seconds is not None else 1e9),
            ("cqox_wal_rpo_bytes", {"system_id": sid}, status.rpo_bytes),
            ("cqox_wal_archive_failed_count", {"system_id": sid}, status.failed_count),
            ("cqox_wal_archive_failing", {"system_id": sid}, 1.0 if failing_now else 0.0),
            ("cqox_wal_archive_gaps", {"system_id": sid}, len(status.gaps)),
            ("cqox_wal_newest_archived_age_seconds", {"system_id": sid}, status.newest_archived_age_seconds),
        ],
    )
    rpo_ok = status.rpo_seconds is not None and status.rpo_seconds <= config.rpo_target_seconds
    rpo_text = "never archived" if status.rpo_seconds is None else f"{status.rpo_seconds:.0f} s"
    checks = [
        dg.AssetCheckResult(
            check_name="wal_rpo_within_target",
            passed=rpo_ok,
            description=f"RPO {rpo_text} and {status.rpo_bytes} bytes (target {config.rpo_target_seconds:.0f} s)",
            metadata={
                "rpo_seconds": status.rpo_seconds if status.rpo_seconds is not None else -1.0,
                "rpo_bytes": status.rpo_bytes,
                "target_seconds": config.rpo_target_seconds,
            },
        ),
        dg.AssetCheckResult(
            check_name="wal_archive_continuous",
            passed=bool(records) and not status.gaps,
            description=(
                "no base backup yet: continuity has no anchor"
                if not records
                else f"{len(status.gaps)} gap(s) in {status.required_segments} segments "
                f"{status.continuity_from}..{status.continuity_to}"
            ),
            metadata={"gaps": dg.MetadataValue.json(status.gaps[:50]), "required_segments": status.required_segments},
        ),
        dg.AssetCheckResult(
            check_name="wal_archiver_healthy",
            passed=not failing_now,
            severity=dg.AssetCheckSeverity.WARN,
            description=(
                f"archiving is failing since {status.last_failed_time} at {status.last_failed_wal}"
                if failing_now
                else f"{status.failed_count} failure(s) since stats reset, none since the last success"
            ),
        ),
    ]
    metadata = {k: v for k, v in status.as_dict().items() if k != "gaps" and v is not None}
    metadata["gaps"] = dg.MetadataValue.json(status.gaps[:50])
    metadata["timelines"] = dg.MetadataValue.json(status.timelines)
    if point is not None:
        metadata["restore_point"] = point.name
    return dg.MaterializeResult(metadata=metadata, check_results=checks)


# --- restore drill -------------------------------------------------------------------------------------------


class DrillConfig(dg.Config):
    #: Backup to drill; empty: the newest backup (mode "for_backup") or the one before the chosen point ("random").
    backup_id: str = ""
    #: "for_backup": restore to the point captured right after the backup; "random": a random captured point
    #: inside the retention window (the daily schedule); "latest_point": the newest captured point (after a
    #: failover: across the timeline switch), from ``backup_id`` or the newest backup before it.
    mode: str = "for_backup"
    #: "primary" or "dr": drill from the second-region copy.
    source: str = "primary"
    retention_days: int = 30
    keep_scratch: bool = False


def _drill_chart(conn: psycopg.Connection) -> str:
    rows = conn.execute(
        "SELECT rto_seconds, download_seconds + decrypt_seconds + extract_seconds, replay_seconds, passed "
        "FROM restore_drills ORDER BY finished_at DESC LIMIT 30"
    ).fetchall()[::-1]
    return render_lines_svg(
        "Restore drills: RTO and its parts, seconds (last 30)",
        {
            "RTO": [r[0] for r in rows],
            "download+decrypt+extract": [r[1] for r in rows],
            "WAL replay": [r[2] for r in rows],
        },
        "s",
    )


@dg.asset(
    group_name=GROUP,
    kinds={"postgres", "s3"},
    deps=[postgres_basebackup],
    description="Restores a backup into a scratch cluster (download, decrypt, extract, pg_verifybackup, WAL replay "
    "to a captured restore point), proves row counts, checksums and indexes (amcheck), and records the RTO.",
    check_specs=[
        dg.AssetCheckSpec("drill_passed", asset="restore_drill"),
        dg.AssetCheckSpec(
            "latest_backup_verified_restorable",
            asset="restore_drill",
            blocking=True,
            description="The newest base backup has a passing drill.",
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
    bucket = backups.dr_bucket if config.source == "dr" else backups.bucket
    with postgres_admin.connect(autocommit=True) as conn:
        archive = cluster_archive(conn, s3.get_client(), bucket)
        records = list_backups(archive)
        if not records:
            raise dg.Failure(f"no base backup in {archive.where(archive.root + '/base/')} to drill.")
        record, target, expected = _choose_drill(conn, config, records)
        if config.mode == "latest_point" and config.source == "primary" and expected is not None:
            ensure_point_archived(conn, archive, expected)  # the newest point may sit in the open segment
        context.log.info(f"drilling backup {record.backup_id} from {bucket} to {target.kind} {target.value!r}")
        result = run_drill(
            archive,
            provider,
            record,
            target,
            expected=expected,
            cli=platform_cli(),
            settings_file=Path(backups.archiver_settings),
            workdir=Path(backups.drill_dir),
            progress=context.log.info,
            keep=config.keep_scratch,
        )
        record_drill(conn, result)
        newest = records[-1]
        newest_drill = latest_drill(conn, newest.backup_id)
        newest_verified = newest.backup_id in verified_backup_ids(conn)
        chart = _drill_chart(conn)
    _push(
        context,
        archive.system_id,
        [
            ("cqox_restore_drill_rto_seconds", {"system_id": archive.system_id}, result.rto_seconds),
            ("cqox_restore_drill_success", {"system_id": archive.system_id}, 1.0 if result.passed else 0.0),
            (
                "cqox_restore_drill_last_timestamp_seconds",
                {"system_id": archive.system_id},
                result.finished_at.timestamp() if result.finished_at else 0.0,
            ),
        ],
    )
    if result.passed:
        context.log.info(f"drill passed: RTO {result.rto_seconds:.1f} s {result.seconds}")
    else:
        context.log.error(f"drill FAILED: {result.error}")
    return dg.MaterializeResult(
        metadata=_drill_metadata(result, archive, record, chart),
        check_results=[
            dg.AssetCheckResult(
                check_name="drill_passed",
                passed=result.passed,
                description=result.error or f"restored and proven in {result.rto_seconds:.1f} s",
            ),
            dg.AssetCheckResult(
                check_name="latest_backup_verified_restorable",
                passed=newest_verified,
                description=(
                    f"newest backup {newest.backup_id} has a passing drill"
                    if newest_verified
                    else f"newest backup {newest.backup_id} has no passing drill"
                    + (f" (last: {newest_drill['error']})" if newest_drill else "")
                ),
            ),
        ],
    )


def _choose_drill(conn: psycopg.Connection, config: DrillConfig, records: list[BackupRecord]):
    if config.mode == "random":
        plan = plan_random_drill(conn, records, window_days=config.retention_days, rng=random.Random())
        if plan is None:
            raise dg.Failure(
                "no captured restore point inside the retention window follows a backup; "
                "materialize wal_archive_status (it captures one per run)."
            )
        return plan
    if config.mode == "latest_point":
        plan = plan_latest_point_drill(conn, records, config.backup_id)
        if plan is None:
            raise dg.Failure(
                "no captured restore point follows "
                + (f"backup {config.backup_id}" if config.backup_id else "any backup")
                + "; materialize wal_archive_status (it captures one per run)."
            )
        return plan
    if config.mode != "for_backup":
        raise dg.Failure(f"unknown drill mode {config.mode!r}: use 'for_backup', 'random' or 'latest_point'.")
    if config.backup_id:
        matching = [r for r in records if r.backup_id == config.backup_id]
        if not matching:
            raise dg.Failure(f"backup {config.backup_id} is not in the bucket (deleted by retention?).")
        record = matching[0]
    else:
        record = records[-1]
    target, expected = plan_for_backup(conn, record)
    return record, target, expected


def _drill_metadata(result: DrillResult, archive: Archive, record: BackupRecord, chart: str) -> dict:
    s = result.seconds
    return {
        "drill_id": result.drill_id,
        "backup_id": record.backup_id,
        "source": archive.where(record.object_key),
        "target": f"{result.target.kind} {result.target.value}".strip(),
        "passed": result.passed,
        "error": result.error or "",
        "rto_seconds": result.rto_seconds,
        "rto_breakdown": md_table(
            ["phase", "seconds"], [[phase, s.get(phase)] for phase in s] + [["total (RTO)", result.rto_seconds]]
        ),
        "tables_checked": result.tables_checked,
        "indexes_checked": result.indexes_checked,
        "rows_checked": result.details.get("rows_checked", 0),
        "mismatches": dg.MetadataValue.json(result.mismatches),
        "rto_history": dg.MetadataValue.md(svg_markdown(chart, "RTO history")),
    }


# --- retention ---------------------------------------------------------------------------------------------


class RetentionConfig(dg.Config):
    keep_days: int = 30
    dry_run: bool = False


@dg.asset(
    group_name=GROUP,
    kinds={"s3"},
    deps=[restore_drill],
    description="Deletes backups older than the window (never the newest verified one) and WAL no kept backup "
    "needs; a dry run lists what would go.",
)
def backup_retention(
    context: dg.AssetExecutionContext,
    config: RetentionConfig,
    postgres_admin: PostgresResource,
    s3: S3Resource,
    backups: BackupStorageResource,
) -> dg.MaterializeResult:
    with postgres_admin.connect(autocommit=True) as conn:
        archive = cluster_archive(conn, s3.get_client(), backups.bucket)
        records = list_backups(archive)
        names = {o["Key"].rsplit("/", 1)[1].removesuffix(MANIFEST_SUFFIX) for o in archive.list(f"{archive.root}/wal/")}
        plan = plan_retention(
            records, verified_backup_ids(conn), sorted(names), now=datetime.now(UTC), keep_days=config.keep_days
        )
        deleted = 0
        if not config.dry_run:
            deleted = apply_retention(archive, plan)
            sync_backups_table(conn, [r for r in records if r not in plan.delete])
            conn.execute(
                "UPDATE backups SET deleted_at = now() WHERE backup_id = ANY(%s)", [[r.backup_id for r in plan.delete]]
            )
    verb = "would delete" if config.dry_run else "deleted"
    context.log.info(f"retention {verb} {len(plan.delete)} backup(s) and {len(plan.wal_delete)} WAL file(s)")
    return dg.MaterializeResult(
        metadata={
            "dry_run": config.dry_run,
            "keep_days": config.keep_days,
            "backups_kept": dg.MetadataValue.json(plan.summary()["keep"]),
            "backups_deleted": dg.MetadataValue.json(plan.summary()["delete"]),
            "reasons": dg.MetadataValue.json(plan.reasons),
            "wal_files_deleted": len(plan.wal_delete),
            "wal_kept_from": plan.wal_keep_from or "",
            "objects_deleted": deleted,
        }
    )


# --- second region -------------------------------------------------------------------------------------------


@dg.asset(
    group_name=GROUP,
    kinds={"s3"},
    deps=[postgres_basebackup],
    description="Copies new backups and WAL to the DR bucket (data before manifests before records), verifies "
    "SHA-256 on both sides, reports lag.",
    check_specs=[dg.AssetCheckSpec("dr_copy_verified", asset="backups_dr_copy")],
)
def backups_dr_copy(
    context: dg.AssetExecutionContext,
    postgres_admin: PostgresResource,
    s3: S3Resource,
    backups: BackupStorageResource,
) -> dg.MaterializeResult:
    with postgres_admin.connect(autocommit=True) as conn:
        primary = cluster_archive(conn, s3.get_client(), backups.bucket)
    result = copy_to_dr(primary, primary.with_bucket(backups.dr_bucket), progress=context.log.info)
    context.log.info(
        f"DR copy: {len(result.copied)} object(s), {_mib(result.copied_bytes)} MiB copied and verified; "
        f"lag before this run {result.lag_seconds:.0f} s"
    )
    _push(
        context,
        primary.system_id,
        [
            (
                "cqox_backup_dr_lag_seconds",
                {"system_id": primary.system_id},
                0.0 if not result.mismatched else result.lag_seconds,
            ),
            ("cqox_backup_dr_pending_objects", {"system_id": primary.system_id}, len(result.mismatched)),
        ],
    )
    return dg.MaterializeResult(
        metadata={
            "copied_objects": len(result.copied),
            "copied_mib": _mib(result.copied_bytes),
            "pending_before": result.pending_before,
            "lag_before_seconds": round(result.lag_seconds, 1),
            "primary_objects": result.primary_objects,
            "dr_objects": result.dr_objects,
            "mismatched": dg.MetadataValue.json(result.mismatched),
        },
        check_results=[
            dg.AssetCheckResult(
                check_name="dr_copy_verified",
                passed=not result.mismatched,
                description=f"{result.verified} copied object(s) verified; {len(result.mismatched)} differ",
            )
        ],
    )


# --- alert rules ---------------------------------------------------------------------------------------------


@dg.asset(
    group_name=GROUP,
    kinds={"prometheus"},
    description="Alert rules on the backup gauges (cqox_platform/alerts/backup-alerts.yml), checked with promtool "
    "and loaded into Prometheus.",
)
def backup_alert_rules(context: dg.AssetExecutionContext, prometheus: PrometheusResource) -> dg.MaterializeResult:
    check = subprocess.run(["promtool", "check", "rules", str(ALERT_RULES)], capture_output=True, text=True)
    if check.returncode != 0:
        raise dg.Failure(f"promtool check rules {ALERT_RULES} failed:\n{check.stdout}{check.stderr}")
    groups = prometheus.install_rules("cqox-backup-alerts.yml", ALERT_RULES.read_text())
    context.log.info(check.stdout.strip())
    return dg.MaterializeResult(
        metadata={
            "file": str(ALERT_RULES),
            "promtool": check.stdout.strip(),
            "loaded_groups": dg.MetadataValue.json(groups),
        }
    )


defs = dg.Definitions(
    assets=[
        postgres_basebackup,
        wal_archive_status,
        restore_drill,
        backup_retention,
        backups_dr_copy,
        backup_alert_rules,
    ]
)
