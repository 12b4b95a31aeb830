"""The alerting loop on the real stack: Prometheus rule -> Alertmanager (routing rendered and route-tested by
``alertmanager_config``) -> the local receiver (PagerDuty Events v2 and the ticket webhook).

One rule file fires five alerts of one test service at once, so one wait proves grouping (two SLOs' page alerts
make one page), inhibition (the ticket of a paged SLO never arrives, another SLO's ticket does) and silences (a
silenced page never arrives; expired, the silence releases the alert).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from unittest import mock

import dagster as dg
import jsonschema
import yaml

from assets import alerting
from cqox_platform.alerts.client import ReceiverClient
from cqox_platform.cli.json_schema import load_schema
from cqox_platform.resources.prometheus import PrometheusResource
from tests.helpers import alertmanager_client, received_about, table_rows, wait_for_received

CLI = [sys.executable, "-m", "cqox_platform.cli"]


def _valid_json(command: str, stdout: str) -> dict:
    """The command's --json output, checked against the schema the package ships for it."""
    document = json.loads(stdout)
    jsonschema.Draft202012Validator(load_schema(command), format_checker=jsonschema.FormatChecker()).validate(document)
    return document


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    result = subprocess.run([*CLI, *args], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def _secrets(stack) -> dict[str, str]:
    secrets_dir = stack.config.secrets_dir
    return {
        "routing key": (secrets_dir / "pagerduty-routing-key").read_text().strip(),
        "Alertmanager password": (secrets_dir / "alertmanager-password").read_text().strip(),
    }


def test_alertmanager_config_is_route_tested_loaded_and_keeps_the_key_out_of_metadata(stack, alertmanager_routed):
    metadata = alertmanager_routed["metadata"]
    assert metadata["loaded_receivers"].value == ["heartbeat", "pagerduty", "tickets"]
    assert metadata["route_tests_passed"].value >= 10  # every shipped alert rule plus the spec's own cases
    cases = table_rows(metadata["route_tests"].value)
    assert len(cases) == metadata["route_tests_passed"].value
    assert any("alertname=CqoxWalArchiveFailing" in c["labels"] for c in cases), cases
    routes = {r["match"]: r["receiver"] for r in table_rows(metadata["routes"].value)}
    assert routes["severity=page"] == "pagerduty" and routes["severity=ticket"] == "tickets"
    config_file = Path(alertmanager_routed["env"]["CQOX_ALERTMANAGER_CONFIG_FILE"])
    assert config_file.stat().st_mode & 0o777 == 0o600
    rendered = yaml.safe_load(config_file.read_text())
    secrets = _secrets(stack)
    assert rendered["receivers"][0]["pagerduty_configs"][0]["routing_key"] == secrets["routing key"]
    shown = json.dumps({k: str(v.value) for k, v in metadata.items()}) + alertmanager_routed["logged"]
    for name, secret in secrets.items():
        assert secret not in shown, f"the {name} leaked into metadata or logs"
    # Alertmanager's own status masks it too.
    assert secrets["routing key"] not in alertmanager_client(alertmanager_routed["env"]).status()["config"]["original"]


def _rules(service: str) -> str:
    def alert(name: str, severity: str, **labels: str) -> dict:
        return {"alert": name, "expr": "vector(1)", "labels": {"severity": severity, "service": service, **labels}}

    rules = [
        alert("CqoxTestBurnPage", "page", slo="s1"),
        alert("CqoxTestBurnPage", "page", slo="s2"),
        alert("CqoxTestBurnTicket", "ticket", slo="s1"),  # inhibited: s1 pages
        alert("CqoxTestBurnTicket", "ticket", slo="s3"),  # not inhibited: nothing pages for s3
        alert("CqoxTestSilenced", "page"),
    ]
    return yaml.safe_dump({"groups": [{"name": f"alert-test-{service}", "interval": "5s", "rules": rules}]})


def test_a_firing_rule_pages_once_inhibits_its_ticket_and_a_silence_holds_its_page(stack, alertmanager_routed):
    env = {**os.environ, **alertmanager_routed["env"]}
    service = f"alert-test-{uuid.uuid4().hex[:8]}"
    receiver = ReceiverClient(env["CQOX_ALERT_RECEIVER_URL"])
    am = alertmanager_client(env)
    silence_id = _cli(
        env, "alerts", "silence", "add", "alertname=CqoxTestSilenced", f"service={service}",
        "--duration", "30m", "--comment", "maintenance in a test",
    ).stdout.strip()  # fmt: skip
    prometheus = PrometheusResource(
        url=env["CQOX_PROMETHEUS_URL"],
        rules_dir=env["CQOX_PROMETHEUS_RULES_DIR"],
        pid_file=env["CQOX_PROMETHEUS_PID_FILE"],
    )
    rule_file = f"alert-test-{service}.yml"
    started = time.time()
    prometheus.install_rules(rule_file, _rules(service))
    try:
        records = wait_for_received(
            receiver,
            started,
            lambda rs: (
                received_about(rs, service, "CqoxTestBurnPage") and received_about(rs, service, "CqoxTestBurnTicket")
            ),
        )
        page = received_about(records, service, "CqoxTestBurnPage")[0]
        detected = page["received_at"] - started
        print(f"\nrule installed -> page at the receiver: {detected:.1f} s")
        assert page["event_action"] == "trigger"
        assert page["body"]["payload"]["severity"] == "critical"
        # Both SLOs' page alerts are in one aggregation group: one notification, one PagerDuty incident (the
        # dedup key is the group's). Alerts the group gains after its first flush go out with the same key.
        deadline = time.monotonic() + 60
        while True:
            groups = am.alert_groups(filter=[f'service="{service}"', 'alertname="CqoxTestBurnPage"'])
            slos = sorted(a["labels"]["slo"] for g in groups for a in g["alerts"])
            if slos == ["s1", "s2"] or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert len(groups) == 1 and slos == ["s1", "s2"], groups
        # The ticket of the paged SLO (s1) is inhibited; the other SLO's (s3) arrives at the webhook.
        (ticket,) = received_about(records, service, "CqoxTestBurnTicket")
        assert ticket["kind"] == "webhook" and ticket["name"] == "tickets"
        assert [a["labels"]["slo"] for a in ticket["body"]["alerts"]] == ["s3"]
        inhibited = am.alerts(filter=[f'service="{service}"', 'alertname="CqoxTestBurnTicket"', 'slo="s1"'])
        assert inhibited and inhibited[0]["status"]["inhibitedBy"]
        # The silenced page is held, and Alertmanager says by what.
        (held,) = am.alerts(filter=[f'service="{service}"', 'alertname="CqoxTestSilenced"'])
        assert held["status"]["silencedBy"] == [silence_id]
        assert not received_about(receiver.received(started), service, "CqoxTestSilenced")

        listed = _valid_json("alerts-silence-list", _cli(env, "alerts", "silence", "list", "--json").stdout)
        assert silence_id in {s["id"] for s in listed["silences"]}
        _cli(env, "alerts", "silence", "expire", silence_id)
        # Expired, the alert is active again; its page goes out at the group's next flush (group_interval, 5m),
        # which this test does not wait for.
        deadline = time.monotonic() + 30
        while am.alerts(filter=[f'service="{service}"', 'alertname="CqoxTestSilenced"'])[0]["status"]["silencedBy"]:
            assert time.monotonic() < deadline, "the expired silence still holds the alert"
            time.sleep(1)
        records = receiver.received(started)
        assert not received_about(records, service, "CqoxTestSilenced")

        # Exactly one page for the burn, still (no repeat within group_interval, no duplicate path).
        pages = [r for r in received_about(records, service, "CqoxTestBurnPage") if r["event_action"] == "trigger"]
        assert len(pages) == 1 and pages[0]["dedup_key"] == page["dedup_key"]
        shown = _cli(env, "alerts", "received", "--since", "10m").stdout
        assert "pagerduty/events-v2" in shown and "CqoxTestBurnPage" in shown
        as_json = _valid_json("alerts-received", _cli(env, "alerts", "received", "--since", "10m", "--json").stdout)
        assert page in as_json["received"]
    finally:
        Path(env["CQOX_PROMETHEUS_RULES_DIR"], rule_file).unlink(missing_ok=True)
        prometheus.client().reload()
        if silence_id in {s["id"] for s in am.silences("active")}:
            am.expire_silence(silence_id)


def test_no_routing_key_or_password_in_what_the_receiver_stored_or_logged(stack, alertmanager_routed):
    receiver = stack.service("alert-receiver")
    stored = receiver.store_path.read_text()
    assert stored, "the alerting test above should have left records"
    logs = stored + receiver.log_path.read_text() + stack.service("alertmanager").log_path.read_text()
    for name, secret in _secrets(stack).items():
        assert secret not in logs, f"the {name} is in the receiver's records or a log"
    # What is kept is a fingerprint, enough to tell which integration key was used.
    from cqox_platform.stack.alert_receiver import key_fingerprint

    fingerprints = {json.loads(line).get("routing_key_fingerprint") for line in stored.splitlines()}
    assert key_fingerprint(_secrets(stack)["routing key"]) in fingerprints


def test_the_daemon_heartbeat_reaches_prometheus_and_quiets_its_alarm(stack):
    from sensors.heartbeat_sensor import dagster_heartbeat_sensor

    env = stack.env()
    prometheus = PrometheusResource(
        url=env["CQOX_PROMETHEUS_URL"],
        rules_dir=env["CQOX_PROMETHEUS_RULES_DIR"],
        pid_file=env["CQOX_PROMETHEUS_PID_FILE"],
    )
    with mock.patch.dict(os.environ, env):
        assert dg.materialize([alerting.platform_alert_rules], resources={"prometheus": prometheus}).success
        pushed = dagster_heartbeat_sensor(dg.build_sensor_context())
    assert "heartbeat pushed" in pushed.skip_message

    def alarm_state() -> str | None:
        rules = prometheus.rule_groups().get("cqox-platform", {}).get("rules", [])
        return next((r["state"] for r in rules if r["name"] == "CqoxDagsterHeartbeatMissing"), None)

    deadline = time.monotonic() + 90
    while not (
        prometheus.query('push_time_seconds{exported_job="cqox-dagster-heartbeat"}') and alarm_state() == "inactive"
    ):
        assert time.monotonic() < deadline, f"heartbeat not scraped or alarm still {alarm_state()}"
        time.sleep(2)
    (sample,) = prometheus.query('time() - push_time_seconds{exported_job="cqox-dagster-heartbeat"}')
    assert float(sample["value"][1]) < 90
