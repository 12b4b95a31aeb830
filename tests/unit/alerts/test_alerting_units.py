"""Alerting without services: the receiver's Events v2 validation, routing render and amtool route tests, the
CLI's durations and matchers."""

from __future__ import annotations

import dataclasses

import click
import pytest

from cqox_platform.alerts import ROUTING_SPEC
from cqox_platform.alerts.client import AlertmanagerError, Matcher
from cqox_platform.alerts.routing import (
    RouteCase,
    RoutingError,
    load_spec,
    render,
    route_cases,
    shipped_alerts,
    validate,
)
from cqox_platform.cli.alerts import parse_duration, parse_since
from cqox_platform.stack.alert_receiver import key_fingerprint, pagerduty_record, validate_event

KEY = "0123456789abcdef0123456789abcdef"
HEARTBEAT_URL = "http://127.0.0.1:1/heartbeat/watchdog?within=180"
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
        heartbeat_url=HEARTBEAT_URL,
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
        if case.labels["alertname"] == "Watchdog":
            assert case.receivers == ("heartbeat",)
        elif case.labels.get("severity") == "page":
            assert case.receivers == ("pagerduty",)
        else:
            assert case.receivers == ("tickets",)


def test_rendered_routing_passes_amtool_check_config_and_route_tests():
    validated = validate(load_spec(), _render(), secrets=(KEY,))
    assert len(validated.cases) == len(route_cases(load_spec()))
    assert 'severity="page"' in validated.tree and "pagerduty" in validated.tree and KEY not in validated.tree


def test_the_watchdog_reaches_only_the_heartbeat_receiver_about_once_a_minute():
    """The dead man's switch: shipped production intervals, checked by amtool's route tests like every route."""
    import yaml

    spec = load_spec()
    assert ({"alertname": "Watchdog", "service": "cqox-platform", "severity": "heartbeat"}, "platform-alerts.yml") in (
        shipped_alerts()
    )
    validated = validate(spec, _render(), secrets=(KEY, HEARTBEAT_URL))
    assert any(c.labels["alertname"] == "Watchdog" and c.receivers == ("heartbeat",) for c in validated.cases)
    config = yaml.safe_load(_render())
    (route,) = [r for r in config["route"]["routes"] if r["receiver"] == "heartbeat"]
    assert route["matchers"] == ['alertname="Watchdog"'] and config["route"]["routes"][0] is route
    assert (route["group_wait"], route["group_interval"], route["repeat_interval"]) == ("0s", "1m", "50s")
    (receiver,) = [r for r in config["receivers"] if r["name"] == "heartbeat"]
    assert receiver["webhook_configs"] == [{"url": HEARTBEAT_URL, "send_resolved": False}]
    assert spec.heartbeat.expect_within_seconds == 180
    assert HEARTBEAT_URL not in validated.tree


def test_a_heartbeat_that_one_lost_notification_would_page_is_refused(tmp_path):
    text = ROUTING_SPEC.read_text().replace("expect_within: 3m", "expect_within: 90s")
    (tmp_path / "routing.yaml").write_text(text)
    with pytest.raises(RoutingError, match="heartbeat"):
        load_spec(tmp_path / "routing.yaml")


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
    assert "SUCCESS: 5 rules found" in checked.check_output and "SUCCESS" in checked.test_output


def test_a_rule_test_that_fails_stops_the_rules(tmp_path):
    from cqox_platform.alerts import ALERT_RULE_TESTS, PLATFORM_ALERT_RULES
    from cqox_platform.alerts.rules import AlertRulesError, check_and_test

    rules = tmp_path / "platform-alerts.yml"
    rules.write_text(PLATFORM_ALERT_RULES.read_text().replace("> 100)", "> 300)"))  # a heartbeat alarm too slow
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


def _wait_records(store, ready, timeout: float = 20.0) -> list[dict]:
    import time

    deadline = time.monotonic() + timeout
    while not ready(records := store.since(0)):
        assert time.monotonic() < deadline, f"not recorded within {timeout} s: {records}"
        time.sleep(0.1)
    return records


def _deadman(records: list[dict], action: str) -> list[dict]:
    return [r for r in records if r["kind"] == "deadman" and r["event_action"] == action]


def test_the_receiver_pages_itself_when_a_heartbeat_stops_and_resolves_when_it_returns(tmp_path):
    """The stand-in for a dead man's snitch: silence longer than the heartbeat's allowance is a page."""
    import requests

    from cqox_platform.pgserver import free_port
    from cqox_platform.stack.alert_receiver import ReceivedStore, serve

    store, port = ReceivedStore(tmp_path / "received.jsonl"), free_port()
    server = serve(store, KEY, "127.0.0.1", port, heartbeats_path=tmp_path / "heartbeats.json")
    url = f"http://127.0.0.1:{port}"
    try:
        beat = requests.post(f"{url}/heartbeat/watchdog?within=2", json={"status": "firing", "alerts": []}, timeout=5)
        assert beat.status_code == 200
        assert not store.since(0), "a heartbeat is not itself something that paged"
        watched = requests.get(f"{url}/v1/heartbeats", timeout=5).json()
        assert watched["watchdog"]["within_seconds"] == 2 and not watched["watchdog"]["paging"]
        records = _wait_records(store, lambda rs: _deadman(rs, "trigger"))
        (page,) = _deadman(records, "trigger")
        assert page["name"] == "watchdog" and "watchdog" in page["body"]["summary"]
        requests.post(f"{url}/heartbeat/watchdog?within=2", json={}, timeout=5)
        records = _wait_records(store, lambda rs: _deadman(rs, "resolve"))
        assert len(_deadman(records, "trigger")) == 1, "one page per silence, not one per check"
    finally:
        server.shutdown()
        server.server_close()
    # A restarted receiver still watches what it was watching: the silence pages again without a new heartbeat.
    server = serve(store, KEY, "127.0.0.1", port, heartbeats_path=tmp_path / "heartbeats.json")
    try:
        _wait_records(store, lambda rs: len(_deadman(rs, "trigger")) == 2)
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("query", ["", "?within=0", "?within=abc", "?within=-5"])
def test_a_heartbeat_without_a_positive_allowance_is_refused(tmp_path, query):
    import requests

    from cqox_platform.pgserver import free_port
    from cqox_platform.stack.alert_receiver import ReceivedStore, serve

    port = free_port()
    server = serve(ReceivedStore(tmp_path / "r.jsonl"), KEY, "127.0.0.1", port, heartbeats_path=tmp_path / "h.json")
    try:
        answer = requests.post(f"http://127.0.0.1:{port}/heartbeat/watchdog{query}", json={}, timeout=5)
        assert answer.status_code == 400 and "within" in answer.json()["error"]
    finally:
        server.shutdown()
        server.server_close()
