"""The daemon's heartbeat: pushed every 30 s, so ``CqoxDagsterHeartbeatMissing`` pages within 3 minutes of the daemon
stopping (its rule allows 100 s of silence for 30 s, so a restart does not page)."""

import time

import dagster as dg

from cqox_platform.alerts.heartbeat import HEARTBEAT_JOB, HEARTBEAT_PERIOD_SECONDS, push_heartbeat
from cqox_platform.errors import CqoxError
from cqox_platform.pushgateway import Pushgateway
from cqox_platform.settings import get_settings


@dg.sensor(
    minimum_interval_seconds=HEARTBEAT_PERIOD_SECONDS,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Pushes the Dagster daemon's heartbeat to the Pushgateway every 30 s (alert: "
    "CqoxDagsterHeartbeatMissing); never requests a run.",
)
def dagster_heartbeat_sensor(context: dg.SensorEvaluationContext) -> dg.SkipReason:
    gateway = Pushgateway.from_settings(get_settings())
    if gateway is None:
        return dg.SkipReason("no Pushgateway configured (CQOX_PUSHGATEWAY_URL): no heartbeat pushed")
    try:
        at = push_heartbeat(gateway)
    except CqoxError as exc:
        # Not raised: a failing sensor tick is what the missing heartbeat alert reports anyway, with a page.
        return dg.SkipReason(f"heartbeat not pushed: {exc}")
    stamp = time.strftime("%H:%M:%SZ", time.gmtime(at))
    return dg.SkipReason(f"heartbeat pushed at {stamp} (job {HEARTBEAT_JOB})")


defs = dg.Definitions(sensors=[dagster_heartbeat_sensor])
