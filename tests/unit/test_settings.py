"""The settings contract: `stack env` and the settings declare the same variables, and every reader uses them."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest
import yaml

from cqox_platform.settings import LIBRARY_ENV, PORT_SETTINGS, Settings, SettingsError, get_settings, render_stack_env
from cqox_platform.stack import Stack, StackConfig
from cqox_platform.stack.config import DEFAULT_PORTS


def _stack_env(tmp_path: Path, **options) -> dict[str, str]:
    """What `cqox-platform stack env` prints for a stack of these options (no service needs to run for it)."""
    return Stack(StackConfig(root=tmp_path, ports=dict(DEFAULT_PORTS), **options)).env()


@pytest.mark.parametrize(
    "options",
    [{}, {"with_traffic": True}, {"ha": True}, {"with_kube_node": True}],
    ids=["single-node", "traffic", "ha", "kube-node"],
)
def test_stack_env_exports_only_declared_settings(tmp_path, options):
    exported = set(_stack_env(tmp_path, **options))
    declared = set(Settings.env_names()) | set(LIBRARY_ENV)
    assert exported <= declared, f"undeclared: {sorted(exported - declared)}"


def test_stack_env_keys_equal_the_stack_sourced_settings(tmp_path):
    """Every setting marked as coming from the stack is exported by some stack, and nothing else is."""
    exported: set[str] = set()
    for options in ({"with_traffic": True, "with_kube_node": True}, {"ha": True, "with_traffic": True}):
        exported |= set(_stack_env(tmp_path / str(len(exported)), **options))
    assert exported - set(LIBRARY_ENV) == set(Settings.env_names("stack"))
    assert set(LIBRARY_ENV) <= exported


def test_every_setting_says_what_it_means_and_who_sets_it():
    for name, info in Settings.model_fields.items():
        assert info.description and len(info.description) > 10, name
        assert Settings.source(name) in ("stack", "operator"), name


def test_every_port_of_the_stack_has_a_setting():
    assert set(PORT_SETTINGS) == set(DEFAULT_PORTS)
    assert all(f in Settings.model_fields for f in PORT_SETTINGS.values())


def test_settings_load_with_no_environment(monkeypatch):
    for name in Settings.env_names():
        monkeypatch.delenv(name, raising=False)
    settings = get_settings()
    assert settings.pg_host is None and settings.backup_transit_key == "cqox-backups"
    with pytest.raises(SettingsError, match=r"CQOX_PG_HOST is not set .*stack env"):
        settings.require("pg_host")


def test_port_overrides_and_typed_values(monkeypatch):
    monkeypatch.setenv("CQOX_PROMETHEUS_PORT", "49999")
    monkeypatch.setenv("VAULT_ADDR", "https://127.0.0.1:1")
    settings = get_settings()
    assert settings.port_overrides()["prometheus"] == 49999
    assert settings.require("vault_addr") == "https://127.0.0.1:1"
    monkeypatch.setenv("CQOX_PG_PORT", "not-a-port")
    with pytest.raises(ValueError, match="pg_port"):
        get_settings()


def test_a_secret_setting_never_shows_in_its_repr(monkeypatch):
    monkeypatch.setenv("CQOX_ALERT_WEBHOOK_URL", "https://hooks.example.invalid/T000/very-secret")
    settings = get_settings()
    assert "very-secret" not in repr(settings) and "very-secret" not in str(settings.model_dump())
    assert settings.require("alert_webhook_url").endswith("very-secret")


def test_an_undeclared_variable_from_the_stack_is_refused():
    with pytest.raises(SettingsError, match="CQOX_NEW_THING"):
        render_stack_env({"CQOX_PG_PORT": "1", "CQOX_NEW_THING": "x"})
    with pytest.raises(ValueError):
        render_stack_env({"CQOX_PG_PORT": "one"})


class _RecordingPrometheus:
    """Stands in for Prometheus's rule loading: records what would be installed."""

    installed: dict[str, str] = {}


def test_slo_alert_rules_use_the_one_slo_spec_setting(tmp_path, monkeypatch):
    """Drift fixed: rules came from the repository's file while the sensor and gate honoured CQOX_SLO_SPEC."""
    from assets import slo as slo_assets
    from cqox_platform.resources.prometheus import PrometheusResource
    from cqox_platform.slo.spec import DEFAULT_SPEC

    raw = yaml.safe_load(DEFAULT_SPEC.read_text())
    raw["service"] = "drift-probe"
    spec = tmp_path / "slos.yaml"
    spec.write_text(yaml.safe_dump(raw))
    monkeypatch.setenv("CQOX_SLO_SPEC", str(spec))

    class FakePrometheus(PrometheusResource):
        def install_rules(self, name: str, text: str) -> list[str]:
            _RecordingPrometheus.installed[name] = text
            return ["cqox-slo"]

    result = dg.materialize([slo_assets.slo_alert_rules], resources={"prometheus": FakePrometheus(url="http://x")})
    assert result.success
    (event,) = result.asset_materializations_for_node("slo_alert_rules")
    assert event.metadata["spec"].value == str(spec)
    assert 'service="drift-probe"' in _RecordingPrometheus.installed["cqox-slo-rules.yml"]


def test_the_documented_settings_table_is_generated_from_the_settings():
    from cqox_platform.settings import settings_table

    page = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"
    text = page.read_text()
    begin, end = "<!-- settings-table:begin -->\n", "\n<!-- settings-table:end -->"
    assert begin in text and end in text, f"{page} lost its settings-table markers"
    documented = text[text.index(begin) + len(begin) : text.index(end)]
    assert documented == settings_table(), f"{page}'s settings table is stale: paste settings_table() into it"
