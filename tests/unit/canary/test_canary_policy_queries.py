"""The shipped canary policy's queries, evaluated by Prometheus's engine (promtool) on the series real services
expose, and what the decision makes of the answer.

Client libraries create a labelled series on its first increment: a service that never failed has no
``code="500"`` series at all. The error ratio of such a service is 0, not "no data".
"""

from __future__ import annotations

import pytest

from cqox_platform.canary.decision import PROMOTE, Evidence, MetricValue, RolloutState, decide
from cqox_platform.canary.policy import POLICY_DIR, load_policy
from tests.unit.promql import evaluate

POLICY = load_policy(POLICY_DIR / "cqox-engine.yaml")
ERROR_RATIO = next(m for m in POLICY.metrics if m.name == "error_ratio")
JOB = POLICY.prometheus.selector  # job="cqox-traffic"


def _requests(version: str, code: str, per_minute: int) -> dict[str, str]:
    return {"series": f'http_requests_total{{{JOB},version="{version}",code="{code}"}}', "values": f"0+{per_minute}x20"}


def _error_ratio(version: str) -> str:
    return POLICY.render(ERROR_RATIO.query, version, window="5m")


NO_5XX = [_requests("stable", "200", 6000), _requests("canary", "200", 600)]


@pytest.mark.parametrize("version", ["canary", "stable"])
def test_without_any_5xx_series_the_error_ratio_is_zero_not_no_data(tmp_path, version):
    """Failed before: the query answered an empty vector, read as "no data", so a healthy canary held, then rolled
    back after ``max_consecutive_holds`` intervals."""
    code, output = evaluate(tmp_path, _error_ratio(version), NO_5XX, [{"labels": "{}", "value": 0}])
    assert code == 0, output


def test_5xx_of_one_version_count_for_that_version_only(tmp_path):
    series = [*NO_5XX, _requests("canary", "503", 600)]
    code, output = evaluate(tmp_path, _error_ratio("canary"), series, [{"labels": "{}", "value": 0.5}])
    assert code == 0, output
    code, output = evaluate(tmp_path, _error_ratio("stable"), series, [{"labels": "{}", "value": 0}])
    assert code == 0, output


def test_a_version_without_traffic_is_still_no_data(tmp_path):
    """Zero-filling must not invent a perfect canary: no requests at all stays "no data"."""
    code, output = evaluate(tmp_path, _error_ratio("canary"), [_requests("stable", "200", 6000)], [])
    assert code == 0, output


def test_requests_without_a_code_label_are_no_data_not_zero_errors(tmp_path):
    """As in the SLO spec: a policy whose code label does not match what the service exports must not read as
    a canary without errors."""
    series = [
        {"series": f'http_requests_total{{{JOB},version="canary",status="500"}}', "values": "0+600x20"},
        {"series": f'http_requests_total{{{JOB},version="canary",status="200"}}', "values": "0+600x20"},
    ]
    code, output = evaluate(tmp_path, _error_ratio("canary"), series, [])
    assert code == 0, output


def test_a_zero_error_ratio_on_both_versions_promotes():
    """What the decision makes of the answer promtool proved above (0 for both versions, enough requests)."""
    evidence = Evidence(
        5000, 45000, (MetricValue("error_ratio", 0.0, 0.0), MetricValue("latency_p99", 0.3, 0.3)), budget_remaining=0.9
    )
    assert decide(POLICY, RolloutState(0), evidence).action == PROMOTE
