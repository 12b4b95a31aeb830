"""The error-budget sensor on live synthetic traffic scraped by the stack's Prometheus."""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path
from unittest import mock

import dagster as dg
import psycopg
import pytest
import requests
import yaml

from cqox_platform.pgserver import free_port
from cqox_platform.resources.prometheus import PrometheusResource
from cqox_platform.schema import MigrationRunner
from cqox_platform.slo.spec import DEFAULT_SPEC
from cqox_platform.slo.traffic import TrafficModel, VersionTraffic, serve
from cqox_platform.stack import Stack
from sensors.slo_sensor import error_budget_sensor, slo_incident_job
from tests.helpers import postgres_admin

SPEC = DEFAULT_SPEC


def _spec_for(stack, job: str) -> str:
    raw = yaml.safe_load(SPEC.read_text())
    raw["selector"] = {"job": job}
    path = Path(stack.config.root) / f"{job}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def _scraped(prometheus: PrometheusResource, job: str) -> bool:
    result = prometheus.query(f'sum(rate(http_requests_total{{job="{job}"}}[5m]))')
    return bool(result) and float(result[0]["value"][1]) > 0


@pytest.fixture(scope="module")
def burning(stack):
    """Live traffic failing half its requests, scraped by Prometheus under a job of its own."""
    job = f"burn-{uuid.uuid4().hex[:8]}"
    port = free_port()
    server = serve(TrafficModel({"stable": VersionTraffic(rps=100, error_ratio=0.5)}), "127.0.0.1", port)
    target = stack.service("prometheus").home / "targets" / f"{job}.json"
    target.write_text(json.dumps([{"targets": [f"127.0.0.1:{port}"], "labels": {"job": job}}]))
    prometheus = PrometheusResource(url=stack.env()["CQOX_PROMETHEUS_URL"])
    deadline = time.monotonic() + 120
    while not _scraped(prometheus, job):
        assert time.monotonic() < deadline, "Prometheus never scraped the test exporter"
        time.sleep(3)
    yield {"job": job, "spec": _spec_for(stack, job), "prometheus": prometheus}
    target.unlink()
    server.shutdown()


def _evaluate(stack, prometheus, spec_path):
    pushers = (
        "CQOX_PUSHGATEWAY_URL",
        "CQOX_PUSHGATEWAY_USER",
        "CQOX_PUSHGATEWAY_PASSWORD_FILE",
        "CQOX_PUSHGATEWAY_CACERT",
    )
    env = {"CQOX_SLO_SPEC": spec_path, **{name: stack.env()[name] for name in pushers}}
    with mock.patch.dict(os.environ, env), dg.instance_for_test() as instance:
        context = dg.build_sensor_context(instance=instance, resources={"prometheus": prometheus})
        return error_budget_sensor(context)


def test_page_burn_requests_incident_runs_and_pushes_gauges(stack, burning):
    result = _evaluate(stack, burning["prometheus"], burning["spec"])
    assert isinstance(result, dg.SensorResult)
    by_slo = {r.tags["cqox/slo"]: r for r in result.run_requests}
    assert set(by_slo) == {"availability", "error-rate"}  # 50 % errors; latency is fine
    assert by_slo["availability"].run_key.startswith("slo-incident:availability:")
    burn = by_slo["availability"].run_config["ops"]["record_slo_incident"]["config"]["burn_rates"]
    assert burn["5m"] == pytest.approx(5000, rel=0.05)  # 0.5 / 0.0001

    gateway = stack.service("pushgateway")
    pushed = requests.get(f"{gateway.url}/metrics", auth=gateway.auth(), verify=gateway.ca_cert, timeout=5).text
    assert 'slo_burn_rate{instance="",job="cqox-slo",service="cqox-engine",slo="availability",window="5m"}' in pushed
    assert "slo_error_budget_remaining{" in pushed
    # The group declares its period, so CqoxPushedMetricsStale tickets once the sensor stops pushing.
    assert (
        'cqox_push_expected_period_seconds{instance="",job="cqox-slo",service="cqox-engine",severity="ticket"} 300'
        in pushed
    )

    # The requested run records the incident; it pages no one itself: paging is the burn-rate rule's, through
    # Alertmanager (tests/integration/test_alerting.py), so one burn cannot page twice or bypass a silence.
    with postgres_admin(stack).connect(autocommit=True) as conn:
        MigrationRunner().migrate(conn)
    config = by_slo["availability"].run_config
    assert set(config["ops"]["record_slo_incident"]["config"]) == {
        "slo",
        "severity",
        "burn_rates",
        "budget_remaining",
        "window_start",
    }
    with dg.instance_for_test() as instance:
        run = slo_incident_job.execute_in_process(
            run_config=config, resources={"postgres": postgres_admin(stack)}, instance=instance
        )
        logged = " ".join(entry.message for entry in instance.all_logs(run.run_id))
    assert run.success
    assert "the page goes out through Alertmanager" in logged
    with psycopg.connect(**postgres_admin(stack).conninfo()) as conn:
        row = conn.execute(
            "SELECT details FROM audit_log WHERE action = 'slo.incident' AND resource = 'availability' "
            "ORDER BY id DESC LIMIT 1"
        ).fetchone()
    assert row[0]["severity"] == "page" and row[0]["run_id"] == run.run_id


def test_missing_series_is_no_data_not_a_healthy_skip(stack, burning):
    result = _evaluate(stack, burning["prometheus"], _spec_for(stack, f"silent-{uuid.uuid4().hex[:6]}"))
    assert isinstance(result, dg.SkipReason)
    assert "no data for" in result.skip_message and "availability" in result.skip_message


def test_stack_traffic_exporter_is_scraped(stack):
    stack.config.with_traffic = True
    with_traffic = Stack(stack.config)
    try:
        with_traffic.up()
        traffic = with_traffic.service("traffic")
        assert traffic.target_file.exists()
        settings = requests.put(f"{traffic.url}/config", json={"canary": {"error_ratio": 0.2}}, timeout=5).json()
        assert settings["canary"]["error_ratio"] == 0.2 and settings["stable"]["rps"] > 0
        assert requests.put(f"{traffic.url}/config", data="not json", timeout=5).status_code == 400
        prometheus = PrometheusResource(url=stack.env()["CQOX_PROMETHEUS_URL"])
        deadline = time.monotonic() + 90
        while not prometheus.query('up{job="cqox-traffic"} == 1'):
            assert time.monotonic() < deadline, "the stack's Prometheus never scraped the traffic exporter"
            time.sleep(3)
        metrics = requests.get(f"{traffic.url}/metrics", timeout=5).text
        assert 'version="canary"' in metrics and "http_request_duration_seconds_bucket{" in metrics
    finally:
        with_traffic.service("traffic").stop()
        stack.config.with_traffic = False
        stack.config.save()  # `up` recorded the exporter in stack.json; the session stack runs without it
