"""Backup schedules from the roadmap's crontab, and the sensor that drills every new base backup.

Roadmap crontab: base backup daily at 03:00, WAL archive check every 15 minutes, verification at 04:30 (UTC).
The sensor makes verification continuous: each new backup gets its own drill (run key = backup id), and the
04:30 drill restores to a random captured point inside the retention window.
"""

import dagster as dg

base_backup_job = dg.define_asset_job(
    "base_backup_job",
    selection=dg.AssetSelection.assets("postgres_basebackup", "backups_dr_copy"),
    description="Daily base backup, then its copy to the DR bucket.",
)
wal_check_job = dg.define_asset_job(
    "wal_check_job",
    selection=dg.AssetSelection.assets("wal_archive_status", "backups_dr_copy"),
    description="WAL archiving health and RPO; new WAL to the DR bucket.",
)
restore_drill_job = dg.define_asset_job(
    "restore_drill_job", selection=dg.AssetSelection.assets("restore_drill"), description="One restore drill."
)
backup_retention_job = dg.define_asset_job(
    "backup_retention_job", selection=dg.AssetSelection.assets("backup_retention"), description="Backup retention."
)

daily_base_backup_schedule = dg.ScheduleDefinition(
    job=base_backup_job,
    cron_schedule="0 3 * * *",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
)
wal_check_schedule = dg.ScheduleDefinition(
    job=wal_check_job,
    cron_schedule="*/15 * * * *",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
)
daily_restore_drill_schedule = dg.ScheduleDefinition(
    job=restore_drill_job,
    cron_schedule="30 4 * * *",
    execution_timezone="UTC",
    run_config={"ops": {"restore_drill": {"config": {"mode": "random"}}}},
    default_status=dg.DefaultScheduleStatus.RUNNING,
)
daily_retention_schedule = dg.ScheduleDefinition(
    job=backup_retention_job,
    cron_schedule="0 5 * * *",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
)


def _planned_assets(context: dg.SensorEvaluationContext, run_id: str) -> set[dg.AssetKey]:
    """The assets a run planned to materialize (its ASSET_MATERIALIZATION_PLANNED events)."""
    records = context.instance.get_records_for_run(
        run_id=run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION_PLANNED, limit=1000
    ).records
    return {r.event_log_entry.dagster_event.asset_key for r in records if r.event_log_entry.dagster_event}


@dg.asset_sensor(
    asset_key=dg.AssetKey("postgres_basebackup"),
    job=restore_drill_job,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Requests a restore drill of every new base backup (run key = backup id).",
)
def new_backup_drill_sensor(context: dg.SensorEvaluationContext, asset_event: dg.EventLogEntry):
    materialization = asset_event.asset_materialization
    backup_id = materialization.metadata.get("backup_id") if materialization else None
    if backup_id is None:
        return dg.SkipReason("the materialization carries no backup_id")
    backup_id = backup_id.value
    if asset_event.run_id and dg.AssetKey("restore_drill") in _planned_assets(context, asset_event.run_id):
        # The main job and timeline_backup_job drill in the same run; a second drill would prove nothing new.
        return dg.SkipReason(f"backup {backup_id} is drilled by its own run {asset_event.run_id}")
    return dg.RunRequest(
        run_key=f"drill:{backup_id}",
        run_config={"ops": {"restore_drill": {"config": {"backup_id": backup_id, "mode": "for_backup"}}}},
        tags={"cqox/backup_id": backup_id},
    )


defs = dg.Definitions(
    jobs=[base_backup_job, wal_check_job, restore_drill_job, backup_retention_job],
    schedules=[daily_base_backup_schedule, wal_check_schedule, daily_restore_drill_schedule, daily_retention_schedule],
    sensors=[new_backup_drill_sensor],
)
