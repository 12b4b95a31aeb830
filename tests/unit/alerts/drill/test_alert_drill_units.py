"""The alert drill's pure parts: bounds from loaded rules and routing, the fault journal and its recovery (on
real files), matching a received notification, and how failed runs become alerts."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime

import pytest

from cqox_platform.alerts.drill.bounds import Bound, find_rule, group_wait, parse_duration, scrape_interval
from cqox_platform.alerts.drill.faults import UNDOERS, UNREACHABLE_S3, archiver_endpoint, inject_archiving
from cqox_platform.alerts.drill.journal import FaultJournal, recover
from cqox_platform.alerts.drill.runner import arrived
from cqox_platform.alerts.run_failures import ALERT_LIFETIME, FailedRun, classify, failed_run_alert, run_url


@pytest.mark.parametrize(("text", "seconds"), [("15s", 15), ("1m30s", 90), ("2h", 7200), ("500ms", 0.5), (30, 30)])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


def test_parse_duration_refuses_garbage():
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration("5 minutes")


def test_the_bound_adds_every_stage_and_says_how():
    bound = Bound(30, "3 x 10 s", scrape=15, evaluation=15, for_=60, group_wait=30)
    assert bound.seconds == 30 + 15 + 2 * 15 + 60 + 30 + 10
    assert bound.formula().endswith("= 175 s") and "for 60 s" in bound.formula()


def test_loaded_rules_routing_and_scrape_config_are_read_as_prometheus_and_alertmanager_give_them():
    groups = {
        "g": {
            "name": "g",
            "interval": 30,
            "rules": [
                {"type": "recording", "name": "x"},
                {"type": "alerting", "name": "A", "duration": 120, "labels": {"service": "s1"}, "query": "q"},
                {"type": "alerting", "name": "A", "duration": 60, "labels": {"service": "s2"}, "query": "q2"},
            ],
        }
    }
    assert find_rule(groups, "A", {"service": "s2"}).for_seconds == 60
    assert find_rule(groups, "A").interval_seconds == 30
    assert find_rule(groups, "Missing") is None
    config = {"global": {"scrape_interval": "15s"}, "scrape_configs": [{"job_name": "j", "scrape_interval": "5s"}]}
    assert scrape_interval(config) == 15 and scrape_interval(config, "j") == 5
    assert group_wait({"config": {"original": "route:\n  group_wait: 45s\n"}}) == 45
    assert group_wait({"config": {"original": "route: {}\n"}}) == 30


def _archiver_file(tmp_path):
    path = tmp_path / "archiver.json"
    path.write_text(json.dumps({"s3_endpoint": "https://s3.local:9000", "secret_id": "s3cr3t", "bucket": "b"}))
    path.chmod(0o600)
    return path


def test_a_fault_left_by_a_killed_drill_is_undone_by_recovery_and_the_journal_holds_no_secret(tmp_path):
    settings = _archiver_file(tmp_path)
    journal = FaultJournal(tmp_path / "run" / "journal.json")
    inject_archiving(journal, settings)  # ... and the drill dies here: no finally
    assert archiver_endpoint(settings) == UNREACHABLE_S3
    assert "s3cr3t" not in journal.path.read_text()
    assert os.stat(settings).st_mode & 0o777 == 0o600
    lines = recover(journal, UNDOERS)
    assert len(lines) == 1 and "undone" in lines[0]
    assert archiver_endpoint(settings) == "https://s3.local:9000"
    assert json.loads(settings.read_text())["secret_id"] == "s3cr3t"
    assert journal.pending() == {}
    # Injecting twice is refused (an undone-less earlier fault would be recorded as "original").
    inject_archiving(journal, settings)
    with pytest.raises(Exception, match="already points"):
        inject_archiving(journal, settings)


def test_an_undo_that_fails_keeps_its_entry_for_the_next_recovery(tmp_path):
    journal = FaultJournal(tmp_path / "journal.json")
    journal.record("archiving", {"settings_file": str(tmp_path / "gone.json"), "s3_endpoint": "x"})
    journal.record("from-the-future", {})
    lines = recover(journal, UNDOERS)
    assert any("NOT undone" in line for line in lines) and any("no undo known" in line for line in lines)
    assert len(journal.pending()) == 2


def test_a_notification_matches_by_alertname_and_labels():
    webhook = {
        "kind": "webhook",
        "body": {"alerts": [{"status": "firing", "labels": {"alertname": "A", "service": "s", "x": "1"}}]},
    }
    pagerduty = {
        "kind": "pagerduty",
        "event_action": "trigger",
        "body": {"payload": {"custom_details": {"firing": "Labels:\n - alertname = B\n - service = t\n"}}},
    }
    assert arrived([webhook], "A", {"service": "s"}) is webhook
    assert arrived([webhook], "A", {"service": "other"}) is None
    assert arrived([pagerduty, webhook], "B", {"service": "t"}) is pagerduty
    assert arrived([{**pagerduty, "event_action": "resolve"}], "B", {}) is None


def test_failed_runs_are_classified_by_job_or_asset_and_the_most_severe_wins():
    assert classify("__ASSET_JOB", ["postgres_basebackup", "backup_retention"]) == ("backup", "page")
    assert classify("__ASSET_JOB", ["backup_retention"]) == ("retention", "ticket")
    assert classify("ha_switchover_job", []) == ("ha", "page")
    assert classify("canary_abort_job", []) == ("canary", "ticket")
    assert classify("metrics_rollup_job", ["metrics_rollup"]) is None


def test_a_failed_run_alert_carries_the_run_url_and_ends_a_day_later():
    run = FailedRun(
        "r1", "restore_drill_job", ("restore_drill",), "drill", "page", "x" * 900, run_url("http://d/", "r1")
    )
    now = datetime(2026, 1, 1, tzinfo=UTC)
    alert = failed_run_alert(run, now)
    assert alert["labels"] == {
        "alertname": "CqoxDagsterRunFailed",
        "severity": "page",
        "service": "cqox-platform",
        "family": "drill",
        "job": "restore_drill_job",
        "run_id": "r1",
    }
    assert alert["generatorURL"] == alert["annotations"]["run_url"] == "http://d/runs/r1"
    assert datetime.fromisoformat(alert["endsAt"]) - datetime.fromisoformat(alert["startsAt"]) == ALERT_LIFETIME
    assert len(alert["annotations"]["description"]) == 500


def test_the_drill_is_refused_on_production_before_any_fault(monkeypatch, tmp_path):
    import dagster as dg

    from assets.alert_drill import alert_drill
    from cqox_platform.resources.alertmanager import AlertmanagerResource
    from cqox_platform.resources.postgres import PostgresResource
    from cqox_platform.resources.prometheus import PrometheusResource

    monkeypatch.setenv("CQOX_ENVIRONMENT", "production")
    monkeypatch.setenv("CQOX_STACK_DIR", str(tmp_path))
    result = dg.materialize(
        [alert_drill],
        resources={
            "prometheus": PrometheusResource(url="http://127.0.0.1:9"),
            "alertmanager": AlertmanagerResource(url="https://127.0.0.1:9"),
            "postgres_admin": PostgresResource(),
        },
        raise_on_error=False,
    )
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert "refused where CQOX_ENVIRONMENT=production" in str(failure.event_specific_data.error)
    assert not (tmp_path / "run").exists()  # no journal: nothing was injected
