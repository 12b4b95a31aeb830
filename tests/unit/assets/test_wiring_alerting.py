"""Group ``alerting`` wired with fakes: the routing rendered with the key from Vault, checked by the real amtool,
handed to Alertmanager; metadata that names where the key lives and never holds it."""

from __future__ import annotations

import json
from typing import ClassVar

import dagster as dg
import pytest

from assets import alerting
from cqox_platform.errors import VaultNotFoundError
from cqox_platform.resources.alertmanager import AlertmanagerResource
from cqox_platform.resources.vault import VaultResource

KEY = "fedcba9876543210fedcba9876543210"


class FakeVault(VaultResource):
    secrets: ClassVar[dict[str, dict]] = {}

    def read_secret(self, path: str) -> dict:
        if path not in self.secrets:
            raise VaultNotFoundError(f"no secret at {path}")
        return self.secrets[path]


class FakeAlertmanager(AlertmanagerResource):
    installed: ClassVar[list[str]] = []

    def install_config(self, text: str) -> None:
        self.installed.append(text)

    def client(self):
        text = self.installed[-1].replace(KEY, "<secret>")

        class Client:
            def status(self) -> dict:
                return {"config": {"original": text}}

        return Client()


@pytest.fixture(autouse=True)
def _endpoints(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CQOX_ALERT_WEBHOOK_URL", "https://tickets.example.invalid/hook/T0-secret-path")
    monkeypatch.setenv("CQOX_ALERT_HEARTBEAT_URL", "https://snitch.example.invalid/beat/S3-secret-token")
    monkeypatch.delenv("CQOX_PAGERDUTY_EVENTS_URL", raising=False)
    FakeAlertmanager.installed.clear()


def _materialize() -> dg.ExecuteInProcessResult:
    return dg.materialize(
        [alerting.alertmanager_config],
        resources={"alertmanager": FakeAlertmanager(url="https://am.invalid"), "vault": FakeVault()},
        raise_on_error=False,
    )


def test_alertmanager_config_renders_the_key_from_vault_into_the_file_only():
    FakeVault.secrets = {"cqox/alerting/pagerduty": {"routing_key": KEY}}
    result = _materialize()
    assert result.success
    (text,) = FakeAlertmanager.installed
    assert KEY in text and "https://events.pagerduty.com/v2/enqueue" in text
    (event,) = result.asset_materializations_for_node("alertmanager_config")
    shown = json.dumps({k: str(v.value) for k, v in event.metadata.items()})
    assert KEY not in shown and "T0-secret-path" not in shown and "S3-secret-token" not in shown
    assert "events.pagerduty.com" in shown and "secret/cqox/alerting/pagerduty" in shown
    assert "snitch.example.invalid" in shown
    assert event.metadata["loaded_receivers"].value == ["heartbeat", "pagerduty", "tickets"]


def test_without_a_heartbeat_url_no_routing_is_loaded(monkeypatch):
    """Routing without its dead man's switch would page nobody once Prometheus or Alertmanager died."""
    monkeypatch.delenv("CQOX_ALERT_HEARTBEAT_URL")
    FakeVault.secrets = {"cqox/alerting/pagerduty": {"routing_key": KEY}}
    result = _materialize()
    assert not result.success and not FakeAlertmanager.installed
    (failure,) = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert "CQOX_ALERT_HEARTBEAT_URL is not set" in str(failure.event_specific_data.error)


def test_without_a_routing_key_in_vault_nothing_is_loaded_and_the_failure_says_where_to_put_it():
    FakeVault.secrets = {}
    result = _materialize()
    assert not result.success and not FakeAlertmanager.installed
    (failure,) = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert "bao kv put secret/cqox/alerting/pagerduty routing_key=" in str(failure.event_specific_data.error)


def test_platform_alert_rules_are_tested_then_installed():
    from tests.unit.fakes import FakePrometheus

    FakePrometheus.reset()
    result = dg.materialize([alerting.platform_alert_rules], resources={"prometheus": FakePrometheus(url="http://x")})
    assert result.success
    assert "CqoxDagsterHeartbeatMissing" in FakePrometheus.installed["cqox-platform-alerts.yml"]
    (event,) = result.asset_materializations_for_node("platform_alert_rules")
    assert "SUCCESS" in event.metadata["promtool_tests"].value


def test_heartbeat_sensor_without_a_pushgateway_says_so(monkeypatch):
    from sensors.heartbeat_sensor import dagster_heartbeat_sensor

    monkeypatch.delenv("CQOX_PUSHGATEWAY_URL", raising=False)
    result = dagster_heartbeat_sensor(dg.build_sensor_context())
    assert "no Pushgateway configured" in result.skip_message
    monkeypatch.setenv("CQOX_PUSHGATEWAY_URL", "http://127.0.0.1:9")  # nothing listens: reported, not raised
    assert "heartbeat not pushed" in dagster_heartbeat_sensor(dg.build_sensor_context()).skip_message
