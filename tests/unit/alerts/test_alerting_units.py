"""Alerting without services: the receiver's Events v2 validation, routing render and amtool route tests, the
CLI's durations and matchers."""

from __future__ import annotations

import dataclasses

import click
import pytest

from cqox_platform.alerts.client import AlertmanagerError, Matcher
from cqox_platform.alerts.routing import RouteCase, RoutingError, load_spec, render, route_cases, validate
from cqox_platform.cli.alerts import parse_duration, parse_since
from cqox_platform.stack.alert_receiver import key_fingerprint, pagerduty_record, validate_event

KEY = "0123456789abcdef0123456789abcdef"
TRIGGER = {
    "routing_key": KEY,
    "event_action": "trigger",
    "payload": {"summary": "WAL archiving failing", "source": "cqox", "severity": "critical"},
}


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({}, None),
        ({"routing_key": "short"}, "32-character"),
        ({"routing_key": "f" * 32}, "not the integration key"),
        ({"event_action": "explode"}, "'event_action'"),
        ({"payload": None}, "'payload' is required"),
        ({"payload": {"summary": "x", "source": "y", "severity": "fatal"}}, "'payload.severity'"),
        ({"payload": {"source": "y", "severity": "info"}}, "'payload.summary'"),
        ({"event_action": "resolve", "payload": None}, "'dedup_key' is required"),
        ({"event_action": "resolve", "payload": None, "dedup_key": "k"}, None),
    ],
)
def test_receiver_validates_events_like_pagerduty(change, problem):
    errors = validate_event({**TRIGGER, **change}, KEY)
    assert (not errors) if problem is None else any(problem in e for e in errors), errors


def test_receiver_stores_a_fingerprint_not_the_routing_key():
    record = pagerduty_record(TRIGGER)
    assert KEY not in repr(record) and record["routing_key_fingerprint"] == key_fingerprint(KEY)


def _render(spec=None) -> str:
    return render(
        spec or load_spec(),
        pagerduty_url="http://127.0.0.1:1/v2/enqueue",
        routing_key=KEY,
        webhook_url="http://127.0.0.1:1/webhook/tickets",
    )


def test_every_shipped_alert_rule_has_a_route_case_by_its_severity():
    spec = load_spec()
    cases = route_cases(spec)
    names = {c.labels["alertname"] for c in cases}
    assert {
        "CqoxWalArchiveFailing",
        "CqoxWalRpoAboveTarget",
        "SLOErrorBudgetBurnPage",
        "SLOErrorBudgetBurnTicket",
    } <= names
    for case in cases:
        if case.labels.get("severity") == "page":
            assert case.receivers == ("pagerduty",)
        else:
            assert case.receivers == ("tickets",)


def test_rendered_routing_passes_amtool_check_config_and_route_tests():
    validated = validate(load_spec(), _render(), secrets=(KEY,))
    assert len(validated.cases) == len(route_cases(load_spec()))
    assert 'severity="page"' in validated.tree and "pagerduty" in validated.tree and KEY not in validated.tree


def test_a_route_test_that_fails_names_the_labels_and_never_the_key():
    spec = load_spec()
    wrong = dataclasses.replace(spec, tests=(RouteCase({"alertname": "X", "severity": "page"}, ("tickets",), "spec"),))
    with pytest.raises(RoutingError, match=r"alertname=X severity=page \(spec\): expected \['tickets'\]") as info:
        validate(wrong, _render(wrong), secrets=(KEY,))
    assert KEY not in str(info.value)


def test_amtool_rejects_a_broken_render_without_echoing_the_key():
    broken = _render().replace("receiver: tickets", "receiver: nobody", 1)
    with pytest.raises(RoutingError, match="check-config") as info:
        validate(load_spec(), broken, secrets=(KEY,))
    assert KEY not in str(info.value)


def test_a_page_inhibits_the_ticket_of_the_same_service_and_slo():
    (rule,) = load_spec().inhibit
    assert rule == {"source": {"severity": "page"}, "target": {"severity": "ticket"}, "equal": ["service", "slo"]}
    assert "inhibit_rules" in _render()


@pytest.mark.parametrize(("text", "seconds"), [("90s", 90), ("15m", 900), ("2h", 7200), ("1d", 86400), ("1h30m", 5400)])
def test_durations(text, seconds):
    assert parse_duration(text).total_seconds() == seconds


def test_since_takes_a_duration_back_or_an_iso_time():
    assert parse_since("10m", now=10_000) == 9_400
    assert parse_since("2026-01-02T00:00:00Z") == 1767312000
    with pytest.raises(click.BadParameter):
        parse_since("yesterday-ish")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("alertname=CqoxWalArchiveFailing", Matcher("alertname", "CqoxWalArchiveFailing")),
        ("service!=x", Matcher("service", "x", False, False)),
        ('slo=~"avail.*"', Matcher("slo", "avail.*", True, True)),
        ("slo!~a|b", Matcher("slo", "a|b", True, False)),
    ],
)
def test_matchers(text, expected):
    assert Matcher.parse(text) == expected


def test_a_matcher_without_a_name_is_refused():
    with pytest.raises(AlertmanagerError, match="not name=value"):
        Matcher.parse("=x")


def test_platform_alert_rules_pass_their_promtool_unit_tests():
    from cqox_platform.alerts import ALERT_RULE_TESTS, PLATFORM_ALERT_RULES
    from cqox_platform.alerts.rules import check_and_test

    checked = check_and_test(PLATFORM_ALERT_RULES, ALERT_RULE_TESTS)
    assert "SUCCESS: 2 rules found" in checked.check_output and "SUCCESS" in checked.test_output


def test_a_rule_test_that_fails_stops_the_rules(tmp_path):
    from cqox_platform.alerts import ALERT_RULE_TESTS, PLATFORM_ALERT_RULES
    from cqox_platform.alerts.rules import AlertRulesError, check_and_test

    rules = tmp_path / "platform-alerts.yml"
    rules.write_text(PLATFORM_ALERT_RULES.read_text().replace("> 300)", "> 3000)"))  # a heartbeat alarm too slow
    tests = tmp_path / "alert-rules.test.yml"
    tests.write_text(ALERT_RULE_TESTS.read_text())
    with pytest.raises(AlertRulesError, match="CqoxDagsterHeartbeatMissing"):
        check_and_test(rules, tests)


def test_the_staleness_and_heartbeat_alerts_are_routed_by_severity():
    names = {c.labels["alertname"]: c.receivers for c in route_cases(load_spec())}
    assert names["CqoxDagsterHeartbeatMissing"] == ("pagerduty",)
    stale = {
        c.labels.get("severity"): c.receivers
        for c in route_cases(load_spec())
        if c.labels["alertname"] == "CqoxPushedMetricsStale"
    }
    assert stale["page"] == ("pagerduty",) and stale["ticket"] == ("tickets",)
    assert names["SLOMetricAbsent"] == ("pagerduty",)


def test_service_alert_rules_pass_their_promtool_unit_tests():
    from cqox_platform.alerts import SERVICE_ALERT_RULE_TESTS, SERVICE_ALERT_RULES
    from cqox_platform.alerts.rules import check_and_test

    checked = check_and_test(SERVICE_ALERT_RULES, SERVICE_ALERT_RULE_TESTS)
    assert "SUCCESS: 11 rules found" in checked.check_output and "SUCCESS" in checked.test_output


@pytest.mark.parametrize(
    ("original", "mutated", "alert"),
    [
        # Each mutation makes an alert too slow or blind; its promtool case must catch it.
        (
            "> 0\n        for: 1m\n        labels: {severity: page, service: postgres}",
            "> 0\n        for: 5m\n        labels: {severity: page, service: postgres}",
            "CqoxPostgresArchiverFailing",
        ),
        ("cqox_replica_replay_lag_seconds > 30", "cqox_replica_replay_lag_seconds > 300", "CqoxReplicaLagHigh"),
        ("== 503\n        for: 30s", "== 500\n        for: 30s", "CqoxVaultSealed"),
        ("(patroni_postgres_timeline > 0)[10m:15s]", "(patroni_postgres_timeline)[10m:15s]", "CqoxPatroniFailover"),
        ("unless on(job) label_replace(", "unless on() label_replace(", "CqoxScrapeTargetDown"),
    ],
)
def test_a_slower_or_blind_service_alert_fails_its_promtool_case(tmp_path, original, mutated, alert):
    from cqox_platform.alerts import SERVICE_ALERT_RULE_TESTS, SERVICE_ALERT_RULES
    from cqox_platform.alerts.rules import AlertRulesError, check_and_test

    text = SERVICE_ALERT_RULES.read_text()
    assert original in text
    (tmp_path / "service-alerts.yml").write_text(text.replace(original, mutated))
    tests = tmp_path / "service-alerts.test.yml"
    tests.write_text(SERVICE_ALERT_RULE_TESTS.read_text())
    with pytest.raises(AlertRulesError, match=alert):
        check_and_test(tmp_path / "service-alerts.yml", tests)


def test_the_service_alerts_the_drills_wait_for_page():
    names = {c.labels["alertname"]: c.receivers for c in route_cases(load_spec())}
    for alert in ("CqoxPostgresArchiverFailing", "CqoxReplicaLagHigh", "CqoxVaultSealed", "CqoxScrapeTargetDown"):
        assert names[alert] == ("pagerduty",), alert
    assert names["CqoxPatroniFailover"] == names["CqoxCertificateExpiringSoon"] == ("tickets",)


def test_every_pusher_declares_its_period_with_a_severity_the_routing_knows():
    from cqox_platform.pushgateway import (
        BACKUP_PUSH_PERIOD_SECONDS,
        BACKUP_STALE_SEVERITY,
        SLO_STALE_SEVERITY,
        expected_period_sample,
    )

    name, labels, value = expected_period_sample(BACKUP_PUSH_PERIOD_SECONDS, BACKUP_STALE_SEVERITY)
    assert name == "cqox_push_expected_period_seconds" and labels == {"severity": "page"} and value == 900
    spec = load_spec()
    assert spec.receiver_for(BACKUP_STALE_SEVERITY) == "pagerduty"
    assert spec.receiver_for(SLO_STALE_SEVERITY) == "tickets"
    with pytest.raises(ValueError):
        expected_period_sample(0, "page")
