"""Failed runs of the backup, drill, retention, HA and canary jobs go to Alertmanager, with the run's URL.

Alertmanager routes them like every rule (``severity`` page -> PagerDuty, ticket -> webhook); which jobs and
how loud is ``cqox_platform.alerts.run_failures.WATCHED``. A run that is not watched is logged and left.
"""

import dagster as dg

from cqox_platform.alerts.client import AlertmanagerError
from cqox_platform.alerts.run_failures import FailedRun, classify, failed_run_alert, run_url
from cqox_platform.resources.alertmanager import AlertmanagerResource
from cqox_platform.settings import get_settings


@dg.run_failure_sensor(
    name="run_failure_alert_sensor",
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Posts failed runs of the backup, drill, retention, HA and canary jobs to Alertmanager "
    "(alert CqoxDagsterRunFailed, with the run URL); severity page or ticket per job.",
)
def run_failure_alert_sensor(context: dg.RunFailureSensorContext, alertmanager: AlertmanagerResource) -> None:
    run = context.dagster_run
    assets = tuple(sorted(key.to_user_string() for key in (run.asset_selection or ())))
    watched = classify(run.job_name, [key.split("/")[-1] for key in assets])
    if watched is None:
        context.log.info(f"run {run.run_id} of {run.job_name} failed; not a watched job, no alert")
        return
    family, severity = watched
    failed = FailedRun(
        run_id=run.run_id,
        job_name=run.job_name,
        assets=assets,
        family=family,
        severity=severity,
        error=context.failure_event.message or "run failed",
        run_url=run_url(get_settings().dagster_url, run.run_id),
    )
    try:
        alertmanager.client().post_alerts([failed_run_alert(failed)])
    except AlertmanagerError as exc:
        # Raised, so the tick fails visibly in the UI; the daemon heartbeat and stale alerts still page.
        raise dg.Failure(f"failed run {run.run_id} ({family}, {severity}) not sent to Alertmanager: {exc}") from None
    context.log.info(f"run {run.run_id} of {run.job_name} failed: {severity} alert ({family}) sent to Alertmanager")


defs = dg.Definitions(sensors=[run_failure_alert_sensor])
