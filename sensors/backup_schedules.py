"""What sets the backup chain (and the daily SLO report) in motion: one automation sensor and one schedule.

The chain's order is the asset graph, not the clock: each backup asset carries an automation condition
(``assets/backups/common.py``) and ``backup_automation_sensor`` evaluates them, so one 03:00 tick requests the base
backup, its drill, the WAL check and the DR copy as one run in graph order, and retention at 05:00 waits for the
newest backup's blocking drill check. ``slo_automation_sensor`` does the same for ``slo_report``
(yesterday's partition, every day). Each sensor targets only its own assets, so switching one on never starts
unrelated assets that happen to carry conditions.

The random-point drill stays a schedule because it needs run config (``mode: random``), which automation cannot
pass; the drill of each new backup is automation (``eager`` on ``restore_drill``), replacing the old asset sensor.
Backups taken outside Dagster (``cqox-platform backup create``) are not materializations and get no automatic
drill; the 04:30 random drill still covers the window they are in.
"""

import dagster as dg

BACKUP_ASSETS = dg.AssetSelection.groups("backups")
SLO_REPORT = dg.AssetSelection.assets("slo_report")

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

backup_automation_sensor = dg.AutomationConditionSensorDefinition(
    "backup_automation_sensor",
    target=BACKUP_ASSETS,
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=30,
    description="Evaluates the backup chain's automation conditions: base backup 03:00, drill of each new backup, "
    "WAL check and DR copy every 15 min, retention 05:00 once the newest backup is verified restorable.",
)

slo_automation_sensor = dg.AutomationConditionSensorDefinition(
    "slo_automation_sensor",
    target=SLO_REPORT,
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=60,
    description="Requests yesterday's slo_report partition every day (its on_cron condition).",
)

defs = dg.Definitions(
    jobs=[restore_drill_job],
    schedules=[daily_restore_drill_schedule],
    sensors=[backup_automation_sensor, slo_automation_sensor],
)
