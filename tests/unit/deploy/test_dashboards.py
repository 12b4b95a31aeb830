"""The Grafana dashboards: shipped as generated, every query valid PromQL, every source imported, not copied."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from grafana_foundation_sdk.cog.encoder import JSONEncoder

from cqox_platform.alerts import BACKUP_ALERT_RULES
from cqox_platform.backup.verify import gauges
from cqox_platform.cli.app import main
from cqox_platform.deploy import dashboards as gen
from cqox_platform.deploy.manifests import render
from cqox_platform.slo.burn import BUDGET_REMAINING_METRIC
from cqox_platform.slo.rules import WINDOWS, record_name
from cqox_platform.slo.spec import DEFAULT_SPEC, load_spec
from tests.unit.promql import evaluate

SPEC = load_spec(DEFAULT_SPEC)


@pytest.fixture(scope="module")
def models() -> dict[str, dict]:
    return {m["uid"]: m for m in gen.shipped_models()}


def test_the_shipped_files_are_what_the_generator_builds_now():
    stale = gen.stale_files(gen.rendered_files(gen.shipped_models()))
    assert stale == [], f"out of date (run `cqox-platform dashboards render`): {stale}"


def test_the_check_command_agrees_and_out_writes_elsewhere(tmp_path: Path):
    runner = CliRunner()
    checked = runner.invoke(main, ["dashboards", "render", "--check"])
    assert checked.exit_code == 0, checked.output
    written = runner.invoke(main, ["dashboards", "render", "--out", str(tmp_path)])
    assert written.exit_code == 0, written.output
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["cqox-slos.json", "cqox-backups.json", "cqox-canary.json", "grafana-dashboards.yaml"]
    )
    (tmp_path / "cqox-slos.json").write_text("{}\n")
    stale = runner.invoke(main, ["dashboards", "render", "--check", "--out", str(tmp_path)])
    assert stale.exit_code == 3 and "cqox-slos.json" in stale.output and "dashboards render" in stale.output


def _all_expressions(models: dict[str, dict]) -> list[tuple[str, str, str]]:
    return [(uid, title, expr) for uid, m in models.items() for title, expr in gen.expressions(m)]


def test_every_expression_parses_with_promtool(models: dict[str, dict], tmp_path: Path):
    """promtool has no command that parses a bare expression: each one becomes a recording rule, checked."""
    found = _all_expressions(models)
    assert len(found) > 80
    rules = [{"record": f"dashboard:expr_{i}", "expr": expr} for i, (_, _, expr) in enumerate(found)]
    path = tmp_path / "dashboard-expressions.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}, width=1000))
    proc = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"{len(rules)} rules found" in proc.stdout + proc.stderr


def test_promtool_refuses_a_broken_expression(tmp_path: Path):
    """The check above can fail: an expression with an unbalanced parenthesis is refused, naming the rule."""
    path = tmp_path / "bad.yml"
    rules = [{"record": "dashboard:expr_0", "expr": "sum(rate(http_requests_total[5m])"}]
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    proc = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True, text=True, check=False)
    assert proc.returncode != 0 and "dashboard:expr_0" in proc.stdout + proc.stderr


def test_no_grafana_variable_in_any_expression(models: dict[str, dict]):
    """Queries are plain PromQL (only the data source is a variable), so promtool and Prometheus take them as-is."""
    assert [e for _, _, e in _all_expressions(models) if "$" in e] == []


def test_every_budgeted_slo_has_its_sli_budget_and_burn_per_window(models: dict[str, dict]):
    exprs = [e for _, _, e in _all_expressions({"s": models["cqox-slos"]})]
    for slo in SPEC.budgeted:
        sel = f'{{service="{SPEC.service}",slo="{slo.name}"}}'
        assert f"{BUDGET_REMAINING_METRIC}{sel}" in exprs
        for window in WINDOWS:
            assert f"{record_name(window)}{sel} / {1 - slo.objective:.10g}" in exprs
        for window in gen.SLI_WINDOWS:
            assert f"1 - {record_name(window)}{sel}" in exprs
    rows = [p["title"] for p in models["cqox-slos"]["panels"] if p["type"] == "row"]
    assert len(rows) == len(SPEC.slos)


def test_the_recording_rules_the_dashboards_read_are_the_generated_ones():
    from cqox_platform.slo.rules import generate_rules

    recorded = {r["record"] for r in generate_rules(SPEC)["groups"][0]["rules"]}
    assert {record_name(w) for w in WINDOWS} == recorded


def test_burn_thresholds_are_the_alerts_factors():
    steps = json.loads(JSONEncoder().encode(gen.burn_thresholds(SPEC).build()))["steps"]
    assert [(s["value"], s["color"]) for s in steps] == [(None, "green"), (1.0, "orange"), (6.0, "red")]


def test_backup_panels_chart_the_pushed_gauges_with_the_alert_thresholds(models: dict[str, dict]):
    backups = models["cqox-backups"]
    text = json.dumps(backups)
    pushed = [v for k, v in vars(gauges).items() if k.isupper() and isinstance(v, str) and v.startswith("cqox_")]
    charted = [name for name in pushed if name in text]
    assert len(pushed) == 18 and sorted(set(pushed) - set(charted)) == []
    thresholds = gen.alert_thresholds()
    assert thresholds["CqoxWalRpoCritical"].value == 3600 and thresholds["CqoxBaseBackupTooOld"].value == 26 * 3600
    rpo = next(p for p in backups["panels"] if p["title"] == "RPO")
    values = [s["value"] for s in rpo["fieldConfig"]["defaults"]["thresholds"]["steps"]]
    assert values == [None, thresholds["CqoxWalRpoAboveTarget"].value, thresholds["CqoxWalRpoCritical"].value]
    behind = next(p for p in backups["panels"] if p["title"] == "Recovery window end behind now, by copy")
    steps = [s["value"] for s in behind["fieldConfig"]["defaults"]["thresholds"]["steps"]]
    assert thresholds["CqoxDrRecoveryWindowBehindRpo"].value == 3600 and steps == [None, 3600]


def test_a_changed_alert_rule_fails_the_build_naming_it(tmp_path: Path):
    raw = yaml.safe_load(BACKUP_ALERT_RULES.read_text())
    for rule in raw["groups"][0]["rules"]:
        if rule["alert"] == "CqoxRestoreDrillRtoAboveTarget":
            rule["expr"] = "max_over_time(cqox_restore_drill_rto_seconds[1d]) > 14400"
    changed = tmp_path / "backup-alerts.yml"
    changed.write_text(yaml.safe_dump(raw))
    with pytest.raises(gen.DashboardError, match="CqoxRestoreDrillRtoAboveTarget no longer compares"):
        gen.backup_dashboard(changed)


def test_the_recovery_window_is_now_minus_the_rpo_minus_the_oldest_backups_end(tmp_path: Path):
    window = next(p for p in gen.to_json(gen.backup_dashboard())["panels"] if p["title"] == "Recovery window")
    (target,) = window["targets"]
    series = [
        {"series": f'{gauges.RECOVERY_WINDOW_START}{{system_id="7",job="pushgateway"}}', "values": "100x20"},
        {"series": f'{gauges.WAL_RPO_SECONDS}{{system_id="7",job="pushgateway"}}', "values": "60x20"},
    ]
    # At 10 minutes: (600 - 60) - 100.
    code, out = evaluate(tmp_path, target["expr"], series, [{"labels": '{system_id="7"}', "value": 440}])
    assert code == 0, out


def test_the_canary_dashboard_shows_both_versions_of_every_policy_metric(models: dict[str, dict]):
    policies = gen.load_policies()
    canary = models["cqox-canary"]
    for policy in policies:
        p = policy.prometheus
        exprs = [e for _, e in gen.expressions(canary)]
        for metric in policy.metrics:
            for version in (p.stable_version, p.canary_version):
                assert policy.render(metric.query, version) in exprs
    titles = [p["title"] for p in canary["panels"]]
    assert "SLI availability by version" in titles and "SLI latency-p95 by version" in titles


def test_the_configmaps_carry_the_sidecar_label_and_the_dashboards_byte_for_byte(models: dict[str, dict]):
    objects = render(gen.CONFIGMAP_FILE, {"NAMESPACE": "cqox-test"})
    assert [o["metadata"]["name"] for o in objects] == [f"grafana-dashboard-{uid}" for uid in models]
    for obj in objects:
        assert obj["kind"] == "ConfigMap" and obj["metadata"]["namespace"] == "cqox-test"
        assert obj["metadata"]["labels"]["grafana_dashboard"] == "1"
        ((key, text),) = obj["data"].items()
        assert text == (gen.DASHBOARD_DIR / key).read_text()
        assert json.loads(text)["templating"]["list"][0]["name"] == gen.DATASOURCE_VARIABLE
        # Far below the 1 MiB an object may hold.
        assert len(json.dumps(obj)) < 256 * 1024


def test_the_generator_imports_without_dagster():
    code = "import sys, cqox_platform.deploy.dashboards; print('dagster' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "False"
