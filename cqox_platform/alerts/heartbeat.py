"""The Dagster daemon's heartbeat: a gauge pushed every minute by a sensor, so a dead daemon pages.

A daemon that stopped runs no schedule, sensor or backup, and the gauges it used to push keep their last good
values; nothing else would notice. ``CqoxDagsterHeartbeatMissing`` (``platform-alerts.yml``) fires when
the Pushgateway's ``push_time_seconds`` of this job is over five minutes old, or absent.
"""

from __future__ import annotations

import time

from cqox_platform.pushgateway import push

HEARTBEAT_JOB = "cqox-dagster-heartbeat"
HEARTBEAT_METRIC = "cqox_dagster_heartbeat_timestamp_seconds"


def push_heartbeat(pushgateway_url: str, now: float | None = None, timeout: float = 5) -> float:
    """Replace the heartbeat group with the current time; returns the time pushed."""
    at = time.time() if now is None else now
    push(pushgateway_url, HEARTBEAT_JOB, {}, [(HEARTBEAT_METRIC, {}, at)], replace=True, timeout=timeout)
    return at
