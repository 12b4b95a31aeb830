"""Burn-rate rules through the real promtool and the stack's real Prometheus."""

from __future__ import annotations

import subprocess

import dagster as dg
import pytest
import yaml

from assets import slo as slo_assets
from cqox_platform.errors import RuleValidationError
from cqox_platform.resources.prometheus import PrometheusResource
from cqox_platform.slo import rules as rules_mod
from cqox_platform.slo.rules import generate_rule_tests, generate_rules, validate_rules
from cqox_platform.slo.spec import DEFAULT_SPEC, load_spec

SPEC = DEFAULT_SPEC


def test_generated_rules_pass_promtool_check_and_their_alert_tests():
    validated = validate_rules(load_spec(SPEC))
    assert "SUCCESS" in validated.check_output and "50 rules found" in validated.check_output
    assert "SUCCESS" in validated.test_output
    assert validated.tests == 11


def test_alert_tests_expect_real_firing_sets():
    """The generated expectations are not empty lists everywhere: outages page and ticket the right SLOs."""
    tests = generate_rule_tests(load_spec(SPEC), "r.yml")
    outage = next(t for t in tests["tests"] if t["name"] == "outage")
    fired = {
        (c["alertname"], c["eval_time"]): sorted(a["exp_labels"]["slo"] for a in c["exp_alerts"])
        for c in outage["alert_rule_test"]
    }
    assert fired[("SLOErrorBudgetBurnPage", "2m")] == []  # condition true, but `for: 2m` not yet elapsed
    # Every SLO pages, latency-p50 too: counted in minutes (objective 0.99), its budget is 1 % of them.
    assert fired[("SLOErrorBudgetBurnPage", "5m")] == [
        "availability",
        "error-rate",
        "latency-p50",
        "latency-p95",
        "latency-p99",
    ]
    assert fired[("SLOErrorBudgetBurnTicket", "20m")] == [
        "availability",
        "error-rate",
        "latency-p50",
        "latency-p95",
        "latency-p99",
    ]
    healthy = next(t for t in tests["tests"] if t["name"] == "healthy")
    assert all(c["exp_alerts"] == [] for c in healthy["alert_rule_test"])
    assert "SLOMetricAbsent" in {c["alertname"] for c in healthy["alert_rule_test"]}
    no_data = next(t for t in tests["tests"] if t["name"] == "no SLI data")
    cases = no_data["alert_rule_test"]
    absent = {c["eval_time"]: sorted(a["exp_labels"]["slo"] for a in c["exp_alerts"]) for c in cases}
    assert absent == {"4m": [], "7m": ["availability", "error-rate", "latency-p50", "latency-p95", "latency-p99"]}


def test_promtool_catches_an_absent_data_alert_that_never_fires(tmp_path, monkeypatch):
    """An absent-data rule over the wrong series (present even without traffic) fails the no-data test."""
    spec = load_spec(SPEC)
    rules_file, tests_file = tmp_path / "slo-rules.yml", tmp_path / "slo-rules.test.yml"
    tests_file.write_text(yaml.safe_dump(generate_rule_tests(spec, rules_file.name)))
    monkeypatch.setattr(rules_mod, "sli_series_query", lambda spec, slo: "sum(cqox_unrelated_series)")
    rules_file.write_text(yaml.safe_dump(generate_rules(spec)))
    proc = subprocess.run(["promtool", "test", "rules", str(tests_file)], capture_output=True, text=True)
    assert proc.returncode != 0 and "SLOMetricAbsent" in proc.stdout + proc.stderr


def test_promtool_catches_rules_that_would_page_too_late(tmp_path, monkeypatch):
    """Rules that wait 10 minutes before paging fail the generated test that expects a page at 5 minutes."""
    spec = load_spec(SPEC)
    slow = tuple(rules_mod.BurnAlert(a.severity, a.long, a.short, a.budget_fraction, "10m") for a in rules_mod.PAGE)
    rules_file = tmp_path / "slo-rules.yml"
    tests_file = tmp_path / "slo-rules.test.yml"
    tests_file.write_text(yaml.safe_dump(generate_rule_tests(spec, rules_file.name)))
    monkeypatch.setattr(rules_mod, "PAGE", slow)
    rules_file.write_text(yaml.safe_dump(generate_rules(spec)))
    proc = subprocess.run(["promtool", "test", "rules", str(tests_file)], capture_output=True, text=True)
    assert proc.returncode != 0
    assert "SLOErrorBudgetBurnPage" in proc.stdout + proc.stderr


def test_invalid_rules_are_refused_with_promtools_words(monkeypatch):
    monkeypatch.setattr(rules_mod, "record_name", lambda window: f"bad name {window}")
    with pytest.raises(RuleValidationError, match="promtool check rules failed"):
        validate_rules(load_spec(SPEC))


def test_asset_loads_the_rules_into_prometheus(stack):
    env = stack.env()
    prometheus = PrometheusResource(
        url=env["CQOX_PROMETHEUS_URL"],
        rules_dir=env["CQOX_PROMETHEUS_RULES_DIR"],
        pid_file=env["CQOX_PROMETHEUS_PID_FILE"],
    )
    result = dg.materialize([slo_assets.slo_alert_rules], resources={"prometheus": prometheus})
    assert result.success
    groups = prometheus.rule_groups()
    assert len(groups["cqox-engine-slo-recording"]["rules"]) == 35
    alerts = groups["cqox-engine-slo-alerts"]["rules"]
    assert {r["name"] for r in alerts} == {"SLOErrorBudgetBurnPage", "SLOErrorBudgetBurnTicket", "SLOMetricAbsent"}
    assert all(r["health"] in ("ok", "unknown") for r in alerts)


def test_threshold_slos_generate_valid_timeslice_rules():
    raw = yaml.safe_load(SPEC.read_text())
    raw["slos"].append(
        {"name": "scrape-health", "kind": "threshold", "objective": 0.99, "query": "min(up)", "op": "gte", "value": 1}
    )
    from cqox_platform.slo.spec import parse_spec

    validated = validate_rules(parse_spec(yaml.safe_dump(raw)))
    assert validated.recording_rules == 6 * 7 and validated.alerting_rules == 18
    assert "avg_over_time(((min(up)) >= bool 1.0)[1h:1m])" in validated.text
