"""SLO checks that used to pass quietly: a wrong code label read as a perfect SLI, and alerts that cannot fire.

The PromQL is evaluated by Prometheus's own engine (``promtool test rules`` with ``promql_expr_test``), not
compared as strings.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from cqox_platform.slo.rules import unfireable_alerts
from cqox_platform.slo.spec import DEFAULT_SPEC, RatioSlo, load_spec, parse_spec

SERVICE_SPEC = """
service: quiet-probe
selector: {{job: probe}}
metrics: {{code_label: {label}}}
slos:
  - {{name: availability, kind: ratio, objective: 0.999}}
"""


def _evaluate(tmp_path: Path, expr: str, series: list[dict[str, str]], expected: list[dict]) -> tuple[int, str]:
    """promtool's verdict on ``expr`` evaluating to ``expected`` at 10 minutes, given ``series``: (exit, output)."""
    (tmp_path / "empty-rules.yml").write_text("groups: []\n")
    test = {
        "rule_files": ["empty-rules.yml"],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": series,
                "promql_expr_test": [{"expr": expr, "eval_time": "10m", "exp_samples": expected}],
            }
        ],
    }
    path = tmp_path / "test.yml"
    path.write_text(yaml.safe_dump(test, sort_keys=False))
    proc = subprocess.run(["promtool", "test", "rules", str(path)], capture_output=True, text=True, check=False)
    return proc.returncode, proc.stdout + proc.stderr


def _ratio(label: str) -> str:
    spec = parse_spec(SERVICE_SPEC.format(label=label))
    (slo,) = spec.budgeted
    assert isinstance(slo, RatioSlo)
    return spec.error_ratio_query(slo, "5m")


OK_ONLY = [{"series": 'http_requests_total{job="probe",code="200"}', "values": "0+600x20"}]


def test_no_errors_with_the_right_code_label_is_a_zero_error_ratio(tmp_path):
    code, output = _evaluate(tmp_path, _ratio("code"), OK_ONLY, [{"labels": "{}", "value": 0}])
    assert code == 0, output


def test_a_wrong_code_label_is_no_data_not_a_perfect_sli(tmp_path):
    """Failed before: ``or vector(0)`` turned the missing series into 0 errors, a 100 % SLI."""
    code, output = _evaluate(tmp_path, _ratio("status"), OK_ONLY, [])
    assert code == 0, output


def test_errors_still_count(tmp_path):
    series = [*OK_ONLY, {"series": 'http_requests_total{job="probe",code="503"}', "values": "0+600x20"}]
    code, output = _evaluate(tmp_path, _ratio("code"), series, [{"labels": "{}", "value": 0.5}])
    assert code == 0, output


def test_the_repository_p50_latency_slo_is_flagged_as_unable_to_page():
    """Failed before (nothing said it): 14.4 x (1 - 0.5) > 1, so the p50 SLO's page can never fire."""
    problems = unfireable_alerts(load_spec(DEFAULT_SPEC))
    p50 = [p for p in problems if p.startswith("latency-p50:")]
    assert any("page alert over 1h/5m" in p and "can never fire" in p for p in p50)
    assert not any(p.startswith("availability:") for p in problems)


@pytest.mark.parametrize(("objective", "cannot_fire"), [(0.999, 0), (0.9, 1), (0.5, 3), (0.05, 3)])
def test_unfireable_count_follows_the_objective(objective, cannot_fire):
    spec = parse_spec(f"service: s\nslos:\n  - {{name: a, kind: ratio, objective: {objective}}}\n", source="<test>")
    assert len(unfireable_alerts(spec)) == cannot_fire
