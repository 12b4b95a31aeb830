"""Schedules keeping the metrics life cycle running: rollups every 5 minutes, partitions and retention daily."""

import dagster as dg

metrics_rollup_job = dg.define_asset_job(
    "metrics_rollup_job",
    selection=dg.AssetSelection.assets("metrics_rollups"),
    description="Refresh metrics_5min and metrics_1h.",
)
metrics_maintenance_job = dg.define_asset_job(
    "metrics_maintenance_job",
    selection=dg.AssetSelection.assets("metrics_partitions", "metrics_retention"),
    description="Premake partitions, re-home stray rows, drop what is past retention.",
)

metrics_rollup_schedule = dg.ScheduleDefinition(
    job=metrics_rollup_job,
    cron_schedule="*/5 * * * *",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Every 5 minutes: refreshes metrics_5min and metrics_1h, so dashboards trail the raw metrics by "
    "at most a bucket or two.",
)
metrics_maintenance_schedule = dg.ScheduleDefinition(
    job=metrics_maintenance_job,
    cron_schedule="15 2 * * *",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Daily at 02:15 UTC: creates the metrics partitions of the week ahead and drops those past the "
    "90-day retention.",
)

defs = dg.Definitions(
    jobs=[metrics_rollup_job, metrics_maintenance_job],
    schedules=[metrics_rollup_schedule, metrics_maintenance_schedule],
)
