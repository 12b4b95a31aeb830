"""The Dagster daemon's heartbeat: a gauge pushed every 30 s by a sensor, so a dead daemon pages.

A daemon that stopped runs no schedule, sensor or backup, and the gauges it used to push keep their last good
values; nothing else would notice. ``CqoxDagsterHeartbeatMissing`` (``platform-alerts.yml``) fires when
the Pushgateway's ``push_time_seconds`` of this job is over 100 s old for 30 s, or absent. With Alertmanager's
30 s group_wait that pages at most 175 s after the last heartbeat, and a restart (stop, start, first sensor tick)
with up to 115 s between two heartbeats does not page. The timing and the restart are promtool tests
(``alert-rules.test.yml``); ``benchmarks/daemon_heartbeat.py`` measures real restarts and the time to page.
"""

from __future__ import annotations

import time

from cqox_platform.pushgateway import Pushgateway, push

HEARTBEAT_JOB = "cqox-dagster-heartbeat"
HEARTBEAT_METRIC = "cqox_dagster_heartbeat_timestamp_seconds"
#: The sensor's interval: the first term of a restart's heartbeat gap, which the alert rule tolerates up to 115 s.
HEARTBEAT_PERIOD_SECONDS = 30


def push_heartbeat(gateway: Pushgateway, now: float | None = None, timeout: float = 5) -> float:
    """Replace the heartbeat group with the current time; returns the time pushed."""
    at = time.time() if now is None else now
    push(gateway, HEARTBEAT_JOB, {}, [(HEARTBEAT_METRIC, {}, at)], replace=True, timeout=timeout)
    return at
