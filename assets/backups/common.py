"""What every backup asset shares: the group, its automation and freshness, the DSN, pushing gauges."""

from datetime import timedelta

import dagster as dg
import psycopg

from cqox_platform.backup.verify.checks import RPO_TARGET_SECONDS, CheckVerdict
from cqox_platform.backup.verify.gauges import JOB
from cqox_platform.errors import CqoxError
from cqox_platform.pushgateway import (
    BACKUP_PUSH_PERIOD_SECONDS,
    BACKUP_STALE_SEVERITY,
    Pushgateway,
    Sample,
    expected_period_sample,
    push,
)
from cqox_platform.resources.postgres import PostgresResource
from cqox_platform.settings import get_settings

GROUP = "backups"
#: Dagster concurrency pool of the base backup: a second one requested while one runs waits for the slot
#: (dagster.yaml ``concurrency.pools.default_limit: 1``) instead of failing on the advisory lock.
BASE_BACKUP_POOL = "cqox_base_backup"

# --- the backup chain's order (the asset graph; evaluated by sensors/backup_schedules.py's automation sensor) --
#
#   03:00  postgres_basebackup ─┬─► restore_drill (for_backup; new_backup_drill_sensor, from the backups table)
#                               ├─► backups_dr_copy   (once per new backup; and every 15 min for new WAL)
#                               └─► wal_archive_status (every 15 min; anchored at the oldest backup)
#   05:00  backup_retention: only when the newest backup's drill check passed and no drill is running
#
# All of one tick's requests go into one run, so at 03:00 the backup, the WAL check and the DR copy run once
# each, in graph order; the drill sensor then sees the new row in ``backups`` and requests its drill.

DAILY_BACKUP_CRON = "0 3 * * *"
WAL_CHECK_CRON = "*/15 * * * *"
RETENTION_CRON = "0 5 * * *"

#: Daily at 03:00 UTC (cron_tick_passed, not on_cron: on_cron would also wait for vault_config and cqox_schema
#: to be updated after each tick, and they change only on deploys).
base_backup_automation = (
    dg.AutomationCondition.cron_tick_passed(DAILY_BACKUP_CRON, "UTC").since_last_handled()
    & ~dg.AutomationCondition.in_progress()
).with_label("daily at 03:00 UTC, unless one is running")

wal_check_automation = (
    dg.AutomationCondition.cron_tick_passed(WAL_CHECK_CRON, "UTC").since_last_handled()
    & ~dg.AutomationCondition.in_progress()
).with_label("every 15 minutes")

# The drill of each new backup is not an automation condition: ``new_backup_drill_sensor``
# (sensors/backup_schedules.py) requests it from the ``backups`` table, so a backup taken outside Dagster
# (`cqox-platform backup create`) is drilled too, exactly once (run key = backup id).

dr_copy_automation = (
    (
        dg.AutomationCondition.any_deps_updated() | dg.AutomationCondition.cron_tick_passed(WAL_CHECK_CRON, "UTC")
    ).since_last_handled()
    & ~dg.AutomationCondition.any_deps_missing()
    & ~dg.AutomationCondition.any_deps_in_progress()
    & ~dg.AutomationCondition.in_progress()
).with_label("after each new backup, and every 15 minutes for new WAL")

#: Retention deletes backups: never while the newest backup's drill check is failing (or a drill is running).
#: Blocked at 05:00, it runs as soon as the check passes (``since_last_handled`` keeps the tick pending).
retention_automation = (
    dg.AutomationCondition.cron_tick_passed(RETENTION_CRON, "UTC").since_last_handled()
    & dg.AutomationCondition.all_deps_blocking_checks_passed()
    & ~dg.AutomationCondition.any_deps_in_progress()
    & ~dg.AutomationCondition.in_progress()
).with_label("daily at 05:00 UTC, once the newest backup is verified restorable")

# --- freshness: staleness here means risk ---------------------------------------------------------------------

#: One backup a day plus two hours of slack: a missed night fails.
BASE_BACKUP_FRESHNESS = dg.FreshnessPolicy.time_window(fail_window=timedelta(hours=26), warn_window=timedelta(hours=25))
DRILL_FRESHNESS = dg.FreshnessPolicy.time_window(fail_window=timedelta(hours=26), warn_window=timedelta(hours=25))
#: The WAL check runs every 15 minutes; an hour without one means the RPO is not being measured.
WAL_STATUS_FRESHNESS = dg.FreshnessPolicy.time_window(
    fail_window=timedelta(seconds=RPO_TARGET_SECONDS), warn_window=timedelta(minutes=30)
)


def dsn(postgres_admin: PostgresResource) -> str:
    return psycopg.conninfo.make_conninfo(**{k: str(v) for k, v in postgres_admin.conninfo().items()})


def push_gauges(context: dg.AssetExecutionContext, system_id: str, samples: list[Sample]) -> None:
    gateway = Pushgateway.from_settings(get_settings())
    if gateway is None:
        context.log.info("no Pushgateway configured (CQOX_PUSHGATEWAY_URL): gauges not pushed")
        return
    try:
        # Every push declares the group's period, so CqoxPushedMetricsStale pages when the pushes stop.
        declared = expected_period_sample(BACKUP_PUSH_PERIOD_SECONDS, BACKUP_STALE_SEVERITY)
        sent = push(gateway, JOB, {"system_id": system_id}, [*samples, declared])
        context.log.info(f"pushed {sent} gauge(s) to the Pushgateway")
    except CqoxError as exc:
        context.log.warning(f"gauges not pushed: {exc}")


def check_result(verdict: CheckVerdict) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(
        check_name=verdict.name,
        passed=verdict.passed,
        description=verdict.description,
        severity=dg.AssetCheckSeverity.WARN if verdict.warn_only else dg.AssetCheckSeverity.ERROR,
        # An empty value (no drill yet, no error) is left out: the UI would show a blank field.
        metadata={k: _metadata_value(v) for k, v in verdict.metadata.items() if v not in ("", None)},
    )


def _metadata_value(value: object) -> object:
    return dg.MetadataValue.json(value) if isinstance(value, list | dict) else value


def mib(n: float) -> float:
    return round(n / 2**20, 2)
