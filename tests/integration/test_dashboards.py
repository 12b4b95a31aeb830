"""Every query of the shipped Grafana dashboards returns data from the stack's real Prometheus.

The data is made the way the platform makes it: the backup assets push their gauges (a base backup, its drill,
the WAL status with the recovery window, the DR copy, and ``recoverability`` with each copy's window),
``slo_alert_rules`` loads the recording rules, synthetic traffic of both versions is scraped under the SLO spec's
job, and the error-budget sensor pushes its gauges. No panel is exempt: the canary dashboard's per-version series
come from the traffic's ``version`` label, which the engine exports whether or not a rollout is under way (a
rollout changes the weights, not the series).
"""

from __future__ import annotations

import json
import math
import os
import time
import uuid
from unittest import mock

import dagster as dg
import pytest

from assets import backups as backup_assets
from assets import slo as slo_assets
from cqox_platform.deploy import dashboards as gen
from cqox_platform.pgserver import free_port
from cqox_platform.resources.prometheus import PrometheusResource
from cqox_platform.schema import MigrationRunner
from cqox_platform.slo.spec import DEFAULT_SPEC, load_spec
from cqox_platform.slo.traffic import TrafficModel, VersionTraffic, serve
from sensors.slo_sensor import error_budget_sensor
from tests.helpers import materialize_backups, materialize_vault_config, postgres_admin

#: How long the recording rules (30 s), the scrapes (15 s) and the sensor's pushes may take to show up.
DEADLINE_SECONDS = 300


def _prometheus(env: dict[str, str]) -> PrometheusResource:
    return PrometheusResource(
        url=env["CQOX_PROMETHEUS_URL"],
        rules_dir=env["CQOX_PROMETHEUS_RULES_DIR"],
        pid_file=env["CQOX_PROMETHEUS_PID_FILE"],
    )


def _has_data(prometheus: PrometheusResource, expr: str) -> bool:
    """At least one series with a number (NaN is Prometheus's "no data" of a ratio or a quantile)."""
    return any(math.isfinite(float(r["value"][1])) for r in prometheus.query(expr))


def _push_slo_gauges(stack, prometheus: PrometheusResource) -> None:
    pushers = (
        "CQOX_PUSHGATEWAY_URL",
        "CQOX_PUSHGATEWAY_USER",
        "CQOX_PUSHGATEWAY_PASSWORD_FILE",
        "CQOX_PUSHGATEWAY_CACERT",
    )
    env = {"CQOX_SLO_SPEC": str(DEFAULT_SPEC), **{name: stack.env()[name] for name in pushers}}
    with mock.patch.dict(os.environ, env), dg.instance_for_test() as instance:
        error_budget_sensor(dg.build_sensor_context(instance=instance, resources={"prometheus": prometheus}))


@pytest.fixture(scope="module")
def fed(stack):
    """The stack's Prometheus with everything the dashboards chart; the traffic stops afterwards.

    The stack's environment stays applied throughout, as in a deployment: the assets find the Pushgateway (and
    the archiver its settings) through it.
    """
    env = stack.env()
    spec = load_spec(DEFAULT_SPEC)
    with mock.patch.dict(os.environ, env):
        assert materialize_vault_config(stack).success
        with postgres_admin(stack).connect(autocommit=True) as conn:
            MigrationRunner().migrate(conn)
        pushed = materialize_backups(
            stack,
            env,
            [
                backup_assets.postgres_basebackup,
                backup_assets.restore_drill,
                backup_assets.wal_archive_status,
                backup_assets.backups_dr_copy,
                backup_assets.recoverability,  # the recovery window of each copy
            ],
        )
        assert pushed.success
        prometheus = _prometheus(env)
        assert dg.materialize([slo_assets.slo_alert_rules], resources={"prometheus": prometheus}).success
        port = free_port()
        traffic = TrafficModel({"stable": VersionTraffic(rps=100), "canary": VersionTraffic(rps=40)})
        server = serve(traffic, "127.0.0.1", port)
        target = stack.service("prometheus").home / "targets" / f"dashboards-{uuid.uuid4().hex[:8]}.json"
        target.write_text(json.dumps([{"targets": [f"127.0.0.1:{port}"], "labels": dict(spec.selector)}]))
        try:
            yield prometheus
        finally:
            target.unlink()
            server.shutdown()


def test_every_dashboard_expression_returns_data_from_the_stack(stack, fed):
    found = [(m["uid"], title, expr) for m in gen.shipped_models() for title, expr in gen.expressions(m)]
    assert len(found) > 80
    waiting = list(found)
    deadline = time.monotonic() + DEADLINE_SECONDS
    while waiting and time.monotonic() < deadline:
        # The sensor measures over the rule windows: it pushes burn and budget once traffic has been scraped.
        _push_slo_gauges(stack, fed)
        waiting = [(uid, title, expr) for uid, title, expr in waiting if not _has_data(fed, expr)]
        if waiting:
            time.sleep(10)
    listed = "\n".join(f"{uid} / {title}: {expr}" for uid, title, expr in waiting)
    assert waiting == [], f"{len(waiting)} of {len(found)} expressions returned no data:\n{listed}"
