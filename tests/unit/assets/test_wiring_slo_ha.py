"""Groups ``slo`` and ``ha`` wired with fakes: rules generated and loaded, burn-rate and timeline sensors.

``slo_report`` stores its days in PostgreSQL (``store_reports``/``history``), and ``postgres_cluster_status``
reads the leader's ``pg_stat_replication``: a fake database is not worth it, the integration tests run those.
"""

from __future__ import annotations

from types import SimpleNamespace

import dagster as dg
import pytest

from assets import slo
from cqox_platform.resources.patroni import PatroniResource
from cqox_platform.resources.postgres import PostgresResource
from cqox_platform.slo.spec import DEFAULT_SPEC, load_spec
from sensors.ha_sensors import timeline_change_sensor
from sensors.slo_sensor import error_budget_sensor, slo_incident_job
from tests.helpers import assert_native_metadata
from tests.unit.fakes import FakePatroni, FakePrometheus


@pytest.fixture(autouse=True)
def _no_pushgateway(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CQOX_PUSHGATEWAY_URL", raising=False)
    monkeypatch.delenv("CQOX_SLO_SPEC", raising=False)
    monkeypatch.delenv("CQOX_ALERT_WEBHOOK_URL", raising=False)


def test_slo_alert_rules_are_checked_by_promtool_and_loaded() -> None:
    FakePrometheus.reset()
    result = dg.materialize([slo.slo_alert_rules], resources={"prometheus": FakePrometheus(url="http://fake")})
    assert result.success
    (event,) = result.asset_materializations_for_node("slo_alert_rules")
    metadata = event.metadata
    assert metadata["spec"].value == str(DEFAULT_SPEC)
    assert metadata["slos"].value == [s.name for s in load_spec(DEFAULT_SPEC).budgeted]
    assert metadata["alerting_rules"].value > 0 and metadata["promtool_test_cases"].value > 0
    assert metadata["loaded_groups"].value == [f"{slo.RULES_FILE}:group"]
    assert "alert:" in FakePrometheus.installed[slo.RULES_FILE]
    # The shipped spec's every SLO can page: the main job's check passes on a fresh installation.
    checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert checks == {"slo_alerts_can_fire": True}, metadata["alerts_that_cannot_fire"].value
    (evaluation,) = result.get_asset_check_evaluations()
    assert evaluation.description.startswith("every burn-rate condition of ")
    factors = [r.data for r in metadata["burn_factors"].value.records]
    assert {r["alert"] for r in factors} == {"SLOErrorBudgetBurnPage", "SLOErrorBudgetBurnTicket"}
    assert all(r["burn factor"] > 0 and 0 < r["budget spent (%)"] < 100 for r in factors), factors
    assert_native_metadata(metadata, "slo_alert_rules")


def burn_tick(error_ratio: float) -> dg.SensorResult | dg.SkipReason:
    FakePrometheus.reset({"": error_ratio})  # every error-ratio query answers this
    context = dg.build_sensor_context(resources={"prometheus": FakePrometheus(url="http://fake")})
    return error_budget_sensor(context)


def test_error_budget_sensor_skips_without_burn() -> None:
    result = burn_tick(0.0)
    assert isinstance(result, dg.SkipReason)
    assert "no page-level burn" in result.skip_message


def test_error_budget_sensor_pages_with_a_valid_incident_run() -> None:
    result = burn_tick(0.5)
    assert isinstance(result, dg.SensorResult)
    # A 50 % bad ratio burns every budget of the roadmap's SLOs at a page rate, the median latency's too: counted
    # in minutes (objective 0.99), half the minutes slow is a 50x burn.
    assert {r.tags["cqox/slo"] for r in result.run_requests} == {
        "availability",
        "error-rate",
        "latency-p50",
        "latency-p95",
        "latency-p99",
    }
    for request in result.run_requests:
        assert request.run_key.startswith(f"slo-incident:{request.tags['cqox/slo']}:")
        config = request.run_config["ops"]["record_slo_incident"]["config"]
        assert config["severity"] == "page"
        # The run config the sensor builds is one the incident job accepts (raises otherwise).
        dg.validate_run_config(slo_incident_job, request.run_config)


def test_incident_job_rejects_an_unknown_severity() -> None:
    config = {"slo": "x", "severity": "pager", "burn_rates": {}, "window_start": "2026-01-01T00:00Z"}
    with pytest.raises(dg.DagsterInvalidConfigError, match="severity"):
        dg.validate_run_config(slo_incident_job, {"ops": {"record_slo_incident": {"config": config}}})


SYSTEM_A, SYSTEM_B = "7300000000000000001", "7400000000000000002"


def timeline_tick(
    cursor: str | None, timeline: int | None, system_id: str = SYSTEM_A
) -> tuple[dg.RunRequest | dg.SkipReason, str | None]:
    FakePatroni.cluster_state = SimpleNamespace(timeline=timeline, leader="node2", answered_by="fake")
    FakePatroni.system_id = system_id
    context = dg.build_sensor_context(cursor=cursor, resources={"patroni": FakePatroni(urls="https://fake:8008")})
    return timeline_change_sensor(context), context.cursor


def test_timeline_sensor_requests_one_backup_per_new_timeline() -> None:
    first, cursor = timeline_tick(None, 3)
    assert isinstance(first, dg.SkipReason) and cursor == f"{SYSTEM_A}:3"
    same, cursor = timeline_tick(cursor, 3)
    assert isinstance(same, dg.SkipReason) and "unchanged" in same.skip_message
    failover, cursor = timeline_tick(cursor, 4)
    assert isinstance(failover, dg.RunRequest)
    assert failover.run_key == f"timeline:{SYSTEM_A}:4" and failover.tags["cqox/timeline_from"] == "3"
    assert failover.tags["cqox/system_id"] == SYSTEM_A
    assert cursor == f"{SYSTEM_A}:4"
    back, cursor = timeline_tick(cursor, 2)
    assert isinstance(back, dg.SkipReason) and cursor == f"{SYSTEM_A}:2"


def test_a_rebuilt_cluster_failing_over_to_a_timeline_seen_before_gets_a_run_key_of_its_own() -> None:
    """Dagster drops a run request whose run key it has seen: the key must name the cluster, not only the timeline."""
    _, cursor = timeline_tick(None, 3)
    before, cursor = timeline_tick(cursor, 4)
    # The cluster is rebuilt (new initdb: a new system identifier) behind the same Patroni URLs ...
    rebuilt, cursor = timeline_tick(cursor, 1, SYSTEM_B)
    assert isinstance(rebuilt, dg.SkipReason)
    # ... and fails over until it reaches timeline 4 again: a backup and a drill are due, under a new key.
    after, cursor = timeline_tick(cursor, 4, SYSTEM_B)
    assert isinstance(before, dg.RunRequest) and isinstance(after, dg.RunRequest)
    assert after.run_key != before.run_key
    assert SYSTEM_B in after.run_key and after.run_key.endswith(":4")


def test_a_cursor_written_before_it_named_the_cluster_still_counts() -> None:
    failover, cursor = timeline_tick("3", 4)
    assert isinstance(failover, dg.RunRequest) and failover.tags["cqox/timeline_from"] == "3"
    assert cursor == f"{SYSTEM_A}:4"


def test_timeline_sensor_skips_without_a_leader_or_a_cluster() -> None:
    no_leader, cursor = timeline_tick(f"{SYSTEM_A}:5", None)
    assert isinstance(no_leader, dg.SkipReason) and cursor == f"{SYSTEM_A}:5"
    context = dg.build_sensor_context(resources={"patroni": PatroniResource()})
    assert "nothing to watch" in timeline_change_sensor(context).skip_message


def test_cluster_status_fails_with_what_to_do_on_a_single_node() -> None:
    from assets import ha

    result = dg.materialize(
        [ha.postgres_cluster_status],
        resources={"patroni": PatroniResource(), "postgres_admin": PostgresResource(host="unused", dbname="unused")},
        raise_on_error=False,
    )
    assert not result.success
    failure = result.failure_data_for_node("postgres_cluster_status")
    assert "CQOX_PATRONI_URLS" in failure.user_failure_data.description
