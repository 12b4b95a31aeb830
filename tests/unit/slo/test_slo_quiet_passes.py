"""SLO checks that used to pass quietly: a wrong code label read as a perfect SLI, and alerts that cannot fire.

The PromQL is evaluated by Prometheus's own engine (``promtool test rules`` with ``promql_expr_test``), not
compared as strings.
"""

from __future__ import annotations

import pytest

from cqox_platform.slo.rules import unfireable_alerts
from cqox_platform.slo.spec import DEFAULT_SPEC, RatioSlo, load_spec, parse_spec
from tests.unit.promql import evaluate

SERVICE_SPEC = """
service: quiet-probe
selector: {{job: probe}}
metrics: {{code_label: {label}}}
slos:
  - {{name: availability, kind: ratio, objective: 0.999}}
"""


def _ratio(label: str) -> str:
    spec = parse_spec(SERVICE_SPEC.format(label=label))
    (slo,) = spec.budgeted
    assert isinstance(slo, RatioSlo)
    return spec.error_ratio_query(slo, "5m")


OK_ONLY = [{"series": 'http_requests_total{job="probe",code="200"}', "values": "0+600x20"}]


def test_no_errors_with_the_right_code_label_is_a_zero_error_ratio(tmp_path):
    code, output = evaluate(tmp_path, _ratio("code"), OK_ONLY, [{"labels": "{}", "value": 0}])
    assert code == 0, output


def test_a_wrong_code_label_is_no_data_not_a_perfect_sli(tmp_path):
    """Failed before: ``or vector(0)`` turned the missing series into 0 errors, a 100 % SLI."""
    code, output = evaluate(tmp_path, _ratio("status"), OK_ONLY, [])
    assert code == 0, output


def test_errors_still_count(tmp_path):
    series = [*OK_ONLY, {"series": 'http_requests_total{job="probe",code="503"}', "values": "0+600x20"}]
    code, output = evaluate(tmp_path, _ratio("code"), series, [{"labels": "{}", "value": 0.5}])
    assert code == 0, output


def test_every_slo_of_the_shipped_spec_can_page():
    """Failed before: latency-p50 (objective 0.5) could not page, 14.4 x 0.5 > 1, so a fresh main job ended with
    the check ``slo_alerts_can_fire`` failed."""
    assert unfireable_alerts(load_spec(DEFAULT_SPEC)) == []


def test_a_request_based_p50_in_a_users_spec_is_still_flagged():
    spec = parse_spec("service: s\nslos:\n  - {name: p50, kind: latency, objective: 0.5, threshold_seconds: 0.1}\n")
    problems = unfireable_alerts(spec)
    assert any("page alert over 1h/5m" in p and "can never fire" in p for p in problems), problems


P50_SPEC = """
service: probe
selector: {job: probe}
slos:
  - {name: latency-p50, kind: quantile, quantile: 0.5, threshold_seconds: 0.1, objective: 0.99}
"""


def _p50_ratio() -> str:
    spec = parse_spec(P50_SPEC)
    (slo,) = spec.budgeted
    return spec.error_ratio_query(slo, "5m")


def _histogram(within_100ms: str, total: str) -> list[dict[str, str]]:
    """Bucket series of a histogram with boundaries 0.05, 0.1, 0.25 and +Inf (promtool values, one a minute)."""
    name = "http_request_duration_seconds_bucket"
    return [
        {"series": f'{name}{{job="probe",le="0.05"}}', "values": "0x20"},
        {"series": f'{name}{{job="probe",le="0.1"}}', "values": within_100ms},
        {"series": f'{name}{{job="probe",le="0.25"}}', "values": total},
        {"series": f'{name}{{job="probe",le="+Inf"}}', "values": total},
    ]


@pytest.mark.parametrize(
    ("within", "expected"),
    [
        ("0+600x20", [{"labels": "{}", "value": 0}]),  # every request within 100 ms: every minute good
        ("0+100x20", [{"labels": "{}", "value": 1}]),  # a sixth within 100 ms: the median is slower, minutes bad
    ],
    ids=["fast", "slow"],
)
def test_a_quantile_slo_counts_minutes_whose_quantile_broke_the_threshold(tmp_path, within, expected):
    code, output = evaluate(tmp_path, _p50_ratio(), _histogram(within, "0+600x20"), expected)
    assert code == 0, output


def test_a_quantile_slo_has_no_data_for_minutes_without_requests(tmp_path):
    """An idle service has no median: its minutes are neither good nor bad (not a perfect SLI, not a page)."""
    code, output = evaluate(tmp_path, _p50_ratio(), _histogram("0x20", "0x20"), [])
    assert code == 0, output


@pytest.mark.parametrize(("objective", "cannot_fire"), [(0.999, 0), (0.9, 1), (0.5, 3), (0.05, 3)])
def test_unfireable_count_follows_the_objective(objective, cannot_fire):
    spec = parse_spec(f"service: s\nslos:\n  - {{name: a, kind: ratio, objective: {objective}}}\n", source="<test>")
    assert len(unfireable_alerts(spec)) == cannot_fire
