"""What sets the backup chain (and the daily SLO report) in motion: automation sensors and two drill schedules.

The chain's order is the asset graph, not the clock: each backup asset carries an automation condition
(``assets/backups/common.py``) and ``backup_automation_sensor`` evaluates them, so one 03:00 tick requests the base
backup, its drill, the WAL check and the DR copy as one run in graph order, and retention at 05:00 waits for the
newest backup's blocking drill check. ``slo_automation_sensor`` does the same for ``slo_report`` and its
per-version companion ``slo_version_report`` (yesterday's partition, every day). Each sensor targets only its own
assets, so switching one on never starts unrelated assets that happen to carry conditions.

The random-point drill stays a schedule because it needs run config (``mode: random``), which automation cannot
pass; so does the daily drill from the DR copy (``source: dr``, 04:00 UTC, after the 03:00 backup's DR copy).

The drill of each new backup is ``new_backup_drill_sensor``: it reads the ``backups`` table, not materializations,
so a backup from ``cqox-platform backup create`` (or any tool that records its backup there) is drilled as surely as
one from Dagster, even when the CLI could not reach Dagster. Exactly once: the run key is the backup id (Dagster
never launches a run key twice for a sensor), a backup with any recorded drill is not requested, and nothing is
requested while a drill is queued or running (a run that backs up and drills together has not recorded its drill
yet).
"""

from datetime import UTC, datetime, timedelta

import dagster as dg

from cqox_platform.backup.archive.cluster import system_id
from cqox_platform.backup.archive.history import undrilled_backups
from cqox_platform.resources.postgres import PostgresResource

#: The platform's own backup chain and the repositories of other engines (``assets/backups/repositories.py``).
BACKUP_ASSETS = dg.AssetSelection.groups("backups", "backup_repositories")
SLO_REPORT = dg.AssetSelection.assets("slo_report", "slo_version_report")

restore_drill_job = dg.define_asset_job(
    "restore_drill_job", selection=dg.AssetSelection.assets("restore_drill"), description="One restore drill."
)

daily_restore_drill_schedule = dg.ScheduleDefinition(
    job=restore_drill_job,
    cron_schedule="30 4 * * *",
    execution_timezone="UTC",
    run_config={"ops": {"restore_drill": {"config": {"mode": "random"}}}},
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="A drill to a random captured point inside the retention window (the whole window gets proven).",
)

dr_restore_drill_schedule = dg.ScheduleDefinition(
    name="dr_restore_drill_schedule",
    job=restore_drill_job,
    cron_schedule="0 4 * * *",
    execution_timezone="UTC",
    run_config={"ops": {"restore_drill": {"config": {"mode": "for_backup", "source": "dr"}}}},
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="A drill from the DR region's copy alone (its read-only key, its WAL): the newest backup there, "
    "restored to the point captured after it, so losing the primary site is rehearsed every day.",
)

#: Backups older than this are not drilled by the sensor (switching it on over a long history would queue a
#: drill for every old backup); the daily random drill covers the window they are in.
DRILL_LOOKBACK = timedelta(days=3)
_ACTIVE = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
]


def drill_run_key(backup_id: str) -> str:
    return f"drill-{backup_id}"


@dg.sensor(
    job=restore_drill_job,
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Requests the drill of each backup in the backups table that has none (Dagster's or the CLI's), "
    "newest first, one at a time; run key = backup id, so each backup is drilled once.",
)
def new_backup_drill_sensor(context: dg.SensorEvaluationContext, postgres_admin: PostgresResource) -> dg.SensorResult:
    active = context.instance.get_runs(filters=dg.RunsFilter(statuses=_ACTIVE), limit=100)
    busy = [r.run_id for r in active if dg.AssetKey("restore_drill") in (r.asset_selection or ())]
    if busy:
        return dg.SensorResult(skip_reason=f"a drill is queued or running (run {busy[0]}); one at a time")
    with postgres_admin.connect(autocommit=True) as conn:
        waiting = undrilled_backups(conn, system_id(conn), since=datetime.now(UTC) - DRILL_LOOKBACK)
    if not waiting:
        return dg.SensorResult(skip_reason="every backup of the last 3 days has a drill")
    backup_id = waiting[0]
    return dg.SensorResult(
        run_requests=[
            dg.RunRequest(
                run_key=drill_run_key(backup_id),
                run_config={"ops": {"restore_drill": {"config": {"backup_id": backup_id, "mode": "for_backup"}}}},
                tags={"cqox/backup_id": backup_id},
            )
        ]
    )


backup_automation_sensor = dg.AutomationConditionSensorDefinition(
    "backup_automation_sensor",
    target=BACKUP_ASSETS,
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=30,
    description="Evaluates the backup chain's automation conditions: base backup 03:00, WAL check and DR copy "
    "every 15 min, retention 05:00 once the newest backup is verified restorable; other engines' repositories: "
    "their WAL status every 15 min, their drill 04:00.",
)

slo_automation_sensor = dg.AutomationConditionSensorDefinition(
    "slo_automation_sensor",
    target=SLO_REPORT,
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=60,
    description="Requests yesterday's slo_report and slo_version_report partitions every day (their on_cron "
    "conditions).",
)

defs = dg.Definitions(
    jobs=[restore_drill_job],
    schedules=[daily_restore_drill_schedule, dr_restore_drill_schedule],
    sensors=[new_backup_drill_sensor, backup_automation_sensor, slo_automation_sensor],
)
