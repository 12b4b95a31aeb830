"""The daemon's heartbeat: pushed every minute, so ``CqoxDagsterHeartbeatMissing`` pages when the daemon stops."""

import time

import dagster as dg

from cqox_platform.alerts.heartbeat import HEARTBEAT_JOB, push_heartbeat
from cqox_platform.errors import CqoxError
from cqox_platform.settings import get_settings


@dg.sensor(
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Pushes the Dagster daemon's heartbeat to the Pushgateway every minute (alert: "
    "CqoxDagsterHeartbeatMissing); never requests a run.",
)
def dagster_heartbeat_sensor(context: dg.SensorEvaluationContext) -> dg.SkipReason:
    url = get_settings().pushgateway_url
    if not url:
        return dg.SkipReason("no Pushgateway configured (CQOX_PUSHGATEWAY_URL): no heartbeat pushed")
    try:
        at = push_heartbeat(url)
    except CqoxError as exc:
        # Not raised: a failing sensor tick is what the missing heartbeat alert reports anyway, with a page.
        return dg.SkipReason(f"heartbeat not pushed: {exc}")
    stamp = time.strftime("%H:%M:%SZ", time.gmtime(at))
    return dg.SkipReason(f"heartbeat pushed at {stamp} (job {HEARTBEAT_JOB})")


defs = dg.Definitions(sensors=[dagster_heartbeat_sensor])
