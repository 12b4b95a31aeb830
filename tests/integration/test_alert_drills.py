"""Nothing fails silently, proven on the real stack: a stale pushed RPO gauge pages, a failed backup-family run
reaches Alertmanager and the receiver, and ``alert_drill`` measures each family's time to detect and undoes
every fault, even when its process is killed mid-way (the journal, recovered by ``stack up``).

The alert tests share one wait where they can: the drill runs its families concurrently (about five minutes).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from unittest import mock

import dagster as dg
import pytest
import requests

from assets import alert_drill as drill_asset
from assets import alerting, ha, slo
from cqox_platform.alerts.client import ReceiverClient
from cqox_platform.alerts.drill.faults import UNREACHABLE_S3, archiver_endpoint
from cqox_platform.alerts.drill.journal import FaultJournal, journal_path
from cqox_platform.alerts.drill.runner import arrived
from cqox_platform.pushgateway import BACKUP_STALE_SEVERITY, Pushgateway, delete_group, expected_period_sample, push
from cqox_platform.resources.alertmanager import AlertmanagerResource
from cqox_platform.resources.patroni import PatroniResource
from cqox_platform.resources.postgres import PostgresResource
from cqox_platform.resources.prometheus import PrometheusResource
from cqox_platform.settings import get_settings
from cqox_platform.stack import Stack
from sensors.run_failure_sensor import run_failure_alert_sensor
from tests.helpers import alertmanager_client

ROOT = Path(__file__).resolve().parents[2]


def _prometheus(env: dict[str, str]) -> PrometheusResource:
    return PrometheusResource(
        url=env["CQOX_PROMETHEUS_URL"],
        rules_dir=env["CQOX_PROMETHEUS_RULES_DIR"],
        pid_file=env["CQOX_PROMETHEUS_PID_FILE"],
    )


@pytest.fixture(scope="module")
def platform_rules(stack, alertmanager_routed):
    env = stack.env()
    with mock.patch.dict(os.environ, env):
        assert dg.materialize([alerting.platform_alert_rules], resources={"prometheus": _prometheus(env)}).success
    return env


def _wait_received(receiver: ReceiverClient, since: float, alertname: str, matchers: dict, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        records = receiver.received(since)
        found = arrived(records, alertname, matchers)
        if found:
            return found
        assert time.monotonic() < deadline, f"{alertname} {matchers} not received in {timeout}s: {records[-3:]}"
        time.sleep(2)


def _archiver_stats(stack) -> tuple[int, int]:
    with PostgresResource.from_settings().connect(autocommit=True) as conn:
        return conn.execute("SELECT archived_count, failed_count FROM pg_stat_archiver").fetchone()


def _archiving_works(stack, timeout: float = 120) -> None:
    with mock.patch.dict(os.environ, stack.env()):
        archived, _ = _archiver_stats(stack)
        with PostgresResource.from_settings().connect(autocommit=True) as conn:
            conn.execute("SELECT pg_logical_emit_message(false, 'test', 'x')")
            conn.execute("SELECT pg_switch_wal()")
        deadline = time.monotonic() + timeout
        while _archiver_stats(stack)[0] <= archived:
            assert time.monotonic() < deadline, "WAL archiving did not resume"
            time.sleep(1)


def _gateway(env: dict[str, str]) -> Pushgateway:
    """The Pushgateway as the platform's pushers reach it (their credentials, from the stack's settings)."""
    with mock.patch.dict(os.environ, env):
        gateway = Pushgateway.from_settings(get_settings())
    assert gateway is not None
    return gateway


def test_a_stale_rpo_gauge_group_pages(stack, platform_rules):
    """The real backup group's labels and severity with a short declared period (the real one is 15 minutes)."""
    env = platform_rules
    system_id = f"stale-test-{uuid.uuid4().hex[:6]}"
    grouping = {"system_id": system_id}
    samples = [("cqox_wal_rpo_seconds", {}, 60.0), expected_period_sample(5, BACKUP_STALE_SEVERITY)]
    started = time.time()
    gateway = _gateway(env)
    push(gateway, "cqox-backups", grouping, samples)
    try:
        page = _wait_received(
            ReceiverClient(env["CQOX_ALERT_RECEIVER_URL"]),
            started,
            "CqoxPushedMetricsStale",
            {"system_id": system_id, "exported_job": "cqox-backups"},
            timeout=240,
        )
        print(f"\nRPO gauge group stale -> page at the receiver: {page['received_at'] - started:.1f} s")
        assert page["kind"] == "pagerduty"  # severity page, from the group's declared severity
        (alert,) = alertmanager_client(env).alerts(
            filter=['alertname="CqoxPushedMetricsStale"', f'system_id="{system_id}"']
        )
        assert alert["labels"]["severity"] == "page" and alert["labels"]["service"] == "cqox-platform"
    finally:
        delete_group(gateway, "cqox-backups", grouping)


def test_a_failed_ha_run_is_posted_to_alertmanager_and_pages(stack, alertmanager_routed):
    env = stack.env()
    with mock.patch.dict(os.environ, env), dg.instance_for_test() as instance:
        # A real failure of a watched job: a switchover on a single node (no Patroni) fails, naming what to do.
        result = ha.ha_switchover_job.execute_in_process(
            run_config={"ops": {"ha_switchover": {"config": {"candidate": "node2"}}}},
            resources={"patroni": PatroniResource.from_settings(), "postgres_admin": PostgresResource.from_settings()},
            instance=instance,
            raise_on_error=False,
        )
        assert not result.success
        context = dg.build_run_status_sensor_context(
            sensor_name="run_failure_alert_sensor",
            dagster_event=result.get_run_failure_event(),
            dagster_instance=instance,
            dagster_run=result.dagster_run,
            resources={"alertmanager": AlertmanagerResource.from_settings()},
        ).for_run_failure()
        started = time.time()
        run_failure_alert_sensor(context)
    run_id = result.run_id
    (alert,) = alertmanager_client(env).alerts(filter=['alertname="CqoxDagsterRunFailed"', f'run_id="{run_id}"'])
    assert alert["labels"]["severity"] == "page" and alert["labels"]["family"] == "ha"
    assert alert["annotations"]["run_url"] == f"{env['CQOX_DAGSTER_URL']}/runs/{run_id}"
    assert alert["generatorURL"] == alert["annotations"]["run_url"]
    page = _wait_received(
        ReceiverClient(env["CQOX_ALERT_RECEIVER_URL"]), started, "CqoxDagsterRunFailed", {"run_id": run_id}, 120
    )
    assert page["kind"] == "pagerduty" and run_id in json.dumps(page["body"])


@pytest.fixture
def with_traffic(stack):
    stack.config.with_traffic = True
    extended = Stack(stack.config)
    try:
        extended.up()
        yield extended.env()
    finally:
        extended.service("traffic").stop()
        stack.config.with_traffic = False
        stack.config.save()


def test_alert_drill_measures_time_to_detect_per_family_and_undoes_every_fault(stack, platform_rules, with_traffic):
    env = with_traffic
    prometheus = _prometheus(env)
    deadline = time.monotonic() + 90
    while not prometheus.query('up{job="cqox-traffic"} == 1'):
        assert time.monotonic() < deadline, "the traffic exporter is not scraped"
        time.sleep(3)
    settings_file = Path(env["CQOX_WAL_ARCHIVER_CONFIG"])
    endpoint = archiver_endpoint(settings_file)
    canary = json.loads(requests.get(f"{env['CQOX_TRAFFIC_URL']}/config", timeout=5).text)["canary"]
    try:
        with mock.patch.dict(os.environ, env), dg.instance_for_test() as instance:
            assert dg.materialize([slo.slo_alert_rules], resources={"prometheus": prometheus}).success
            result = dg.materialize(
                [drill_asset.alert_drill],
                resources={
                    "prometheus": prometheus,
                    "alertmanager": AlertmanagerResource.from_settings(),
                    "postgres_admin": PostgresResource.from_settings(),
                },
                run_config={"ops": {"alert_drill": {"config": {"families": ["stale_push", "slo_burn", "archiving"]}}}},
                instance=instance,
                raise_on_error=False,
            )
        assert result.success, result.all_events
        (event,) = result.asset_materializations_for_node("alert_drill")
        results = {r["family"]: r for r in event.metadata["results"].value}
        print("\n" + json.dumps(results, indent=1))
        for family in ("stale_push", "slo_burn", "archiving"):
            assert results[family]["status"] in ("detected", "late"), results[family]
            assert results[family]["time_to_detect"] > 0 and results[family]["bound_seconds"] > 0
            assert "group_wait 30 s" in results[family]["bound_formula"]
        # Archiving broken is seen by the exporter's CqoxPostgresArchiverFailing, and proven working after the undo.
        assert results["archiving"]["alertname"] == "CqoxPostgresArchiverFailing"
        assert "archiving works again" in results["archiving"]["detail"]
        (check,) = result.get_asset_check_evaluations()
        assert check.passed == all(r["status"] == "detected" for r in results.values()), check.description
        assert (
            "time_to_detect_chart" in event.metadata
            and "data:image/svg+xml" in event.metadata["time_to_detect_chart"].value
        )
    finally:
        Path(env["CQOX_PROMETHEUS_RULES_DIR"], slo.RULES_FILE).unlink(missing_ok=True)
        prometheus.client().reload()
    # Every fault undone: nothing left in the journal, the archiver and the canary as before.
    assert FaultJournal(journal_path(Path(env["CQOX_STACK_DIR"]))).pending() == {}
    assert archiver_endpoint(settings_file) == endpoint
    after = json.loads(requests.get(f"{env['CQOX_TRAFFIC_URL']}/config", timeout=5).text)["canary"]
    assert after == canary


def test_a_killed_drill_leaves_its_fault_to_the_journal_and_stack_up_undoes_it(stack, platform_rules):
    env = {**os.environ, **stack.env()}
    settings_file = Path(env["CQOX_WAL_ARCHIVER_CONFIG"])
    endpoint = archiver_endpoint(settings_file)
    journal = FaultJournal(journal_path(Path(env["CQOX_STACK_DIR"])))
    config = {"ops": {"alert_drill": {"config": {"families": ["archiving"]}}}}
    proc = subprocess.Popen(
        [sys.executable, "-m", "dagster", "asset", "materialize", "-m", "cqox_platform.definitions",
         "--select", "alert_drill", "--config-json", json.dumps(config)],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 180
        while archiver_endpoint(settings_file) != UNREACHABLE_S3:
            assert proc.poll() is None, f"the drill ended before injecting: {proc.stderr.read().decode()[-2000:]}"
            assert time.monotonic() < deadline, "the drill never injected its archiving fault"
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)  # no finally runs: only the journal knows
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert archiver_endpoint(settings_file) == UNREACHABLE_S3
    (entry,) = journal.pending().values()
    assert entry["fault"] == "archiving" and entry["undo"] == {
        "settings_file": str(settings_file),
        "s3_endpoint": endpoint,
    }
    assert "secret_id" not in json.dumps(entry)

    lines: list[str] = []
    Stack(stack.config).up(progress=lines.append)  # services already run: only the journal recovery acts
    assert any("alert drill journal" in line and "undone" in line for line in lines), lines
    assert journal.pending() == {}
    assert archiver_endpoint(settings_file) == endpoint
    _archiving_works(stack)


def test_replica_paused_stops_and_resumes_a_replicas_replay_on_the_ha_stack(ha_stack, tmp_path):
    """Without the exporter rules (CqoxReplicaLagHigh) the family still injects, confirms and undoes its fault."""
    import psycopg

    from cqox_platform.alerts.client import AlertmanagerClient
    from cqox_platform.alerts.drill.faults import process_state
    from cqox_platform.alerts.drill.runner import DrillEnv, ReplicaPaused, _Loaded, run_family
    from cqox_platform.metrics.prometheus import PrometheusClient
    from cqox_platform.slo.spec import DEFAULT_SPEC, load_spec

    env = ha_stack.env()
    with mock.patch.dict(os.environ, env):
        admin = PostgresResource.from_settings()
        replicas = {**admin.conninfo(), "port": int(env["CQOX_PG_REPLICAS_PORT"])}
        journal = FaultJournal(tmp_path / "journal.json")
        drill_env = DrillEnv(
            prometheus=PrometheusClient(env["CQOX_PROMETHEUS_URL"]),
            alertmanager=AlertmanagerClient(env["CQOX_ALERTMANAGER_URL"]),
            receiver=None,
            journal=journal,
            spec=load_spec(DEFAULT_SPEC),
            drill_id="ha-test",
            connect=lambda: admin.connect(autocommit=True),
            connect_replica=lambda: psycopg.connect(**replicas, autocommit=True),
        )
        family = ReplicaPaused(drill_env)
        result = run_family(drill_env, family, _Loaded(groups={}, scrape=15, group_wait=30))
    assert result.status == "alert rule not loaded", result
    assert "resumed" in result.detail and "replayed past" in result.detail
    assert process_state(family._pid) not in ("T", None)
    assert journal.pending() == {}
