"""``recoverability``: can we recover? The backups group's page to open first.

One verdict (recoverable, at risk, not recoverable) and one small table: the newest backup and its age, whether
a drill proved it, the last drill's RTO against 4 h, the RPO against 1 h, WAL gaps on the current timeline, the
DR copy's lag and the recovery window. The numbers are plain metadata, so Dagster plots them over time; the
check ``recoverable`` fails whenever the verdict is not "recoverable", saying why and what to do next.

The evidence is read fresh each run, the way ``cqox-platform backup info`` reads it (``backup.verify.info``: both
copies, the drills' verdicts, the window measured like the RPO) and judged by the same verdict, so the command's
exit code and this page agree. Reading never switches WAL or writes anything.

It also pushes each copy's recovery window (earliest and latest recoverable instant) as gauges labelled by copy,
which ``CqoxDrRecoveryWindowBehindRpo`` pages on when the DR copy's end falls behind the RPO target.

When it runs: after anything it summarizes changes (a base backup, including one reported by
``cqox-platform backup create``; a drill; the WAL check; the DR copy), and on the WAL check's 15-minute tick
besides, so the page keeps judging the clock (a backup getting old, a window falling behind) even when the
upstream runs stop. Its freshness policy fails after an hour without a run, so a view nobody refreshes turns
red instead of showing an old "recoverable".
"""

from datetime import UTC, datetime, timedelta

import dagster as dg
from dagster_aws.s3 import S3Resource

from assets.backups.base_backup import postgres_basebackup
from assets.backups.common import GROUP, WAL_CHECK_CRON, push_gauges
from assets.backups.dr_copy import backups_dr_copy
from assets.backups.drill import restore_drill
from assets.backups.wal import wal_archive_status
from cqox_platform.backup.archive.cluster import system_id
from cqox_platform.backup.verify.checks import RPO_TARGET_SECONDS
from cqox_platform.backup.verify.gauges import recovery_window_samples
from cqox_platform.backup.verify.recoverability import Recoverability, Verdict, assess, read_evidence
from cqox_platform.resources.backups import BackupStorageResource
from cqox_platform.resources.postgres import PostgresResource
from cqox_platform.resources.vault import VaultResource

CHECK = "recoverable"

recoverability_automation = (
    (
        dg.AutomationCondition.any_deps_updated() | dg.AutomationCondition.cron_tick_passed(WAL_CHECK_CRON, "UTC")
    ).since_last_handled()
    & ~dg.AutomationCondition.any_deps_in_progress()
    & ~dg.AutomationCondition.in_progress()
).with_label("after each backup, drill, WAL check or DR copy, and every 15 minutes")

#: Runs at least every 15 minutes: an hour without a run means the verdict shown is no longer evidence.
RECOVERABILITY_FRESHNESS = dg.FreshnessPolicy.time_window(
    fail_window=timedelta(hours=1), warn_window=timedelta(minutes=30)
)

SUMMARY_SCHEMA = dg.TableSchema(
    columns=[
        dg.TableColumn("item", "string", description="what is judged"),
        dg.TableColumn("value", "string", description="what was found"),
        dg.TableColumn("seconds", "float", description="the number behind the value, in seconds"),
        dg.TableColumn("target", "string", description="what it must be"),
        dg.TableColumn("ok", "bool", description="within the target"),
    ]
)


@dg.asset(
    group_name=GROUP,
    kinds={"postgres", "s3"},
    deps=[postgres_basebackup, restore_drill, wal_archive_status, backups_dr_copy],
    automation_condition=recoverability_automation,
    freshness_policy=RECOVERABILITY_FRESHNESS,
    description="Open this first: can we recover? A verdict (recoverable, at risk, not recoverable; missing or "
    "stale evidence is never recoverable) and a table: the newest backup and its age, whether a drill proved it, "
    "the last RTO against 4 h, the RPO against 1 h, WAL gaps, DR copy lag, and the recovery window.",
    check_specs=[
        dg.AssetCheckSpec(
            CHECK,
            asset="recoverability",
            description="The verdict is 'recoverable': the newest backup is under 26 h old and proven by a drill, "
            "the last drill passed within 4 h, and both copies hold WAL within 1 h of now with no gap.",
        )
    ],
)
def recoverability(
    context: dg.AssetExecutionContext,
    postgres_admin: PostgresResource,
    vault: VaultResource,
    s3: S3Resource,
    backups: BackupStorageResource,
) -> dg.MaterializeResult:
    provider = vault.key_provider(backups.transit_key)
    with postgres_admin.connect(autocommit=True) as conn:
        evidence = read_evidence(
            conn,
            s3.get_client(),
            provider,
            backups.bucket,
            backups.dr_bucket or None,
            as_of=datetime.now(UTC),
            dr_s3=backups.dr_client("reader") if backups.dr_bucket else None,
        )
        sysid = system_id(conn)
    result = assess(evidence, rpo_target_seconds=RPO_TARGET_SECONDS)
    # Each copy's window as gauges labelled by copy: CqoxDrRecoveryWindowBehindRpo pages on the DR copy's end.
    unreadable = [u.name for u in evidence.unreadable]
    push_gauges(context, sysid, recovery_window_samples(sysid, evidence.copies, unreadable))
    (context.log.info if result.verdict is Verdict.RECOVERABLE else context.log.warning)(result.summary)
    return dg.MaterializeResult(
        metadata=metadata(result),
        check_results=[
            dg.AssetCheckResult(
                check_name=CHECK,
                passed=result.verdict is Verdict.RECOVERABLE,
                severity=dg.AssetCheckSeverity.ERROR,
                description=result.summary,
                metadata={"verdict": str(result.verdict)},
            )
        ],
    )


def metadata(result: Recoverability) -> dict[str, object]:
    """The verdict and the table first (what the page shows on top), then the plotted numbers and timestamps."""
    table = dg.MetadataValue.table(
        records=[
            dg.TableRecord({"item": r.item, "value": r.value, "seconds": r.seconds, "target": r.target, "ok": r.ok})
            for r in result.rows
        ],
        schema=SUMMARY_SCHEMA,
    )
    out: dict[str, object] = {
        "verdict": str(result.verdict),
        "summary": table,
        "newest_backup_id": result.newest_backup_id or "none",
    }
    if result.reasons:
        # Plain text, shown inline (Markdown would sit behind "[Show Markdown]").
        out["why_and_next_step"] = "\n".join(result.reasons)
    out.update(result.numbers)
    for key, value in (
        ("newest_backup_at", result.newest_backup_at),
        ("window_earliest", result.window_earliest),
        ("window_latest", result.window_latest),
    ):
        if value is not None:
            out[key] = dg.MetadataValue.timestamp(value)
    return out


defs = dg.Definitions(assets=[recoverability])
