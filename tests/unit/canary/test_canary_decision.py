"""The canary decision function, branch by branch, and policy validation."""

from __future__ import annotations

from pathlib import Path

import pytest

from cqox_platform.canary.decision import (
    COMPLETE,
    HOLD,
    NONE,
    PROMOTE,
    PROMOTED,
    ROLLBACK,
    ROLLED_BACK,
    Evidence,
    MetricValue,
    RolloutState,
    decide,
)
from cqox_platform.canary.policy import POLICY_DIR, PolicyError, load_policy, parse_policy
from tests.helpers import CANARY_POLICY, good_evidence

CASES = [
    # (name, state, evidence, action, weight_after, state after, reason fragment)
    ("promote from first step", RolloutState(0), good_evidence(), PROMOTE, 50, RolloutState(1), "10 % -> 50 %"),
    ("promote to last step", RolloutState(1), good_evidence(), PROMOTE, 100, RolloutState(2), "50 % -> 100 %"),
    ("complete at 100", RolloutState(2), good_evidence(), COMPLETE, 100, RolloutState(2, status=PROMOTED), "complete"),
    (
        "finished rollout",
        RolloutState(1, status=ROLLED_BACK),
        good_evidence(),
        NONE,
        50,
        RolloutState(1, status=ROLLED_BACK),
        "already",
    ),
    (
        "prometheus down holds, uncounted",
        RolloutState(1, failures=1, consecutive_holds=2),
        Evidence(None, None, prometheus_ok=False, error="Prometheus unavailable: refused"),
        HOLD,
        50,
        RolloutState(1, failures=1, consecutive_holds=2),
        "Prometheus unavailable",
    ),
    (
        "too few requests holds",
        RolloutState(0),
        good_evidence(requests=10),
        HOLD,
        10,
        RolloutState(0, consecutive_holds=1),
        "insufficient evidence",
    ),
    (
        "no canary data holds",
        RolloutState(0, consecutive_holds=1),
        Evidence(5000, 5000, (MetricValue("error_ratio", None, 0.001), MetricValue("latency_p99", 0.2, 0.2)), 0.9),
        HOLD,
        10,
        RolloutState(0, consecutive_holds=2),
        "no data for error_ratio",
    ),
    (
        "holds past the limit roll back",
        RolloutState(1, consecutive_holds=3),
        good_evidence(requests=0),
        ROLLBACK,
        0,
        RolloutState(1, consecutive_holds=3, status=ROLLED_BACK),
        "insufficient evidence for 4",
    ),
    (
        "absolute threshold fails once: hold",
        RolloutState(1),
        good_evidence(err=0.02, err_stable=0.019),
        HOLD,
        50,
        RolloutState(1, failures=1),
        "> max 0.01",
    ),
    (
        "relative threshold fails",
        RolloutState(1),
        good_evidence(err=0.008, err_stable=0.001),
        HOLD,
        50,
        RolloutState(1, failures=1),
        "exceeds stable",
    ),
    (
        "ratio to stable fails",
        RolloutState(1),
        good_evidence(p99=0.9, p99_stable=0.3),
        HOLD,
        50,
        RolloutState(1, failures=1),
        "3.00x stable",
    ),
    (
        "second failure rolls back",
        RolloutState(1, failures=1),
        good_evidence(err=0.05),
        ROLLBACK,
        0,
        RolloutState(1, failures=1, status=ROLLED_BACK),
        "failed 2 time(s)",
    ),
    (
        "low budget stops at the first step",
        RolloutState(0),
        good_evidence(budget=0.1),
        HOLD,
        10,
        RolloutState(0),
        "error budget of availability",
    ),
    (
        "unknown budget stops at the first step",
        RolloutState(0),
        good_evidence(budget=None),
        HOLD,
        10,
        RolloutState(0),
        "unknown",
    ),
    # Issue 13 item 2: the gate guards every promotion, not only the first (10 % -> 50 % -> 100 % all move traffic).
    (
        "low budget stops every promotion",
        RolloutState(1),
        good_evidence(budget=0.1),
        HOLD,
        50,
        RolloutState(1),
        "error budget of availability",
    ),
    (
        "unknown budget stops every promotion",
        RolloutState(1),
        good_evidence(budget=None),
        HOLD,
        50,
        RolloutState(1),
        "unknown",
    ),
    # A relative threshold with nothing to compare to is no data (hold), never a pass.
    (
        "no stable data: relative thresholds cannot pass",
        RolloutState(1),
        Evidence(5000, None, (MetricValue("error_ratio", 0.002, None), MetricValue("latency_p99", 0.3, None)), 0.9),
        HOLD,
        50,
        RolloutState(1, consecutive_holds=1),
        "no data for error_ratio, latency_p99",
    ),
    (
        "stable p99 of zero: the ratio cannot be judged",
        RolloutState(1),
        good_evidence(p99_stable=0.0),
        HOLD,
        50,
        RolloutState(1, consecutive_holds=1),
        "no data for latency_p99",
    ),
    (
        "passing analysis resets holds",
        RolloutState(0, consecutive_holds=2),
        good_evidence(),
        PROMOTE,
        50,
        RolloutState(1),
        "passed",
    ),
]


@pytest.mark.parametrize(
    ("name", "state", "evidence", "action", "weight", "after", "reason"), CASES, ids=[c[0] for c in CASES]
)
def test_decide(name, state, evidence, action, weight, after, reason):
    decision = decide(CANARY_POLICY, state, evidence)
    assert decision.action == action
    assert decision.weight_after == weight
    assert decision.state == after
    assert reason in decision.reason


def test_verdicts_carry_values_and_reasons():
    decision = decide(CANARY_POLICY, RolloutState(1), good_evidence(err=0.03, err_stable=0.001))
    (err, p99) = decision.verdicts
    assert err.passed is False and err.canary == 0.03 and len(err.reasons) == 2
    assert p99.passed is True


def test_policy_renders_queries_per_version():
    q = CANARY_POLICY.render(CANARY_POLICY.metrics[0].query, "canary")
    assert 'version="canary"' in q and "[600s]" in q and "{" not in q.replace("{job", "").split("sum(rate(")[0]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"steps": [10, 50]}, "end at 100"),
        ({"steps": [50, 10, 100]}, "rise strictly"),
        ({"metrics": [{"name": "x", "query": "up"}]}, "at least one threshold"),
        ({"metrics": [{"name": "x", "query": "rate(x[{windw}])", "max": 1}]}, "bad placeholder"),
        ({"failure_limit": 0}, "failure_limit"),
        ({"metrics": []}, "at least one metric"),  # nothing to judge would promote on request counts alone
        # A quoted number parsed, then every decision raised TypeError comparing float > str.
        ({"metrics": [{"name": "x", "query": "up", "max": "0.01"}]}, r"metrics\[0\] \(x\): `max` must be a number"),
        # NaN compares False with everything: a NaN threshold let every value pass.
        ({"metrics": [{"name": "x", "query": "up", "max": float("nan")}]}, r"`max` must be a finite number"),
        (
            {"metrics": [{"name": "x", "query": "up", "max_over_stable": float("inf")}]},
            "`max_over_stable` must be a fin",
        ),
        ({"metrics": [{"name": "x", "query": "up", "max_ratio_to_stable": True}]}, "`max_ratio_to_stable` must be a n"),
        ({"budget_gate": {"slo": "availability", "min_remaining": float("nan")}}, "budget_gate.min_remaining must"),
        ({"budget_gate": {"slo": "availability", "min_remaining": "0.25"}}, "budget_gate.min_remaining must"),
    ],
)
def test_policy_validation_names_the_problem(change, message):
    import yaml

    data = {**yaml.safe_load((POLICY_DIR / "cqox-engine.yaml").read_text()), **change}
    with pytest.raises(PolicyError, match=message):
        parse_policy(data, where="test.yaml")


def test_missing_policy_file_is_named(tmp_path: Path):
    with pytest.raises(PolicyError, match="cannot read"):
        load_policy(tmp_path / "nope.yaml")


def test_repository_policy_matches_the_roadmap():
    assert (
        CANARY_POLICY.steps == (10, 50, 100) and CANARY_POLICY.interval_seconds == 600
    )  # 10 % -> 50 % -> 100 %, ten minutes


def test_backtest_replays_intervals_until_the_rollout_ends():
    from cqox_platform.canary.rollout import backtest

    def query(expr: str, at=None):
        # A canary that turns bad after its second interval: 5000 requests per interval, p99 300 ms.
        if "increase(" in expr:
            return [{"value": [at, "5000"]}]
        if "histogram_quantile" in expr:
            return [{"value": [at, "0.3"]}]
        bad = 'version="canary"' in expr and at > 1_000_000 + 2 * CANARY_POLICY.interval_seconds
        return [{"value": [at, "0.2" if bad else "0.001"]}]

    steps = backtest(
        CANARY_POLICY, query, 1_000_000, 1_000_000 + 10 * CANARY_POLICY.interval_seconds, budget_at=lambda _t: 0.9
    )
    assert [s.decision.action for s in steps] == ["promote", "promote", "hold", "rollback"]
    assert steps[-1].decision.state.status == "rolled_back"
    assert [s.at - 1_000_000 for s in steps] == [600, 1200, 1800, 2400]


def test_a_query_answering_several_series_is_an_error_and_holds():
    """``scalar`` used to take the first of several series: an arbitrary one could promote the canary."""
    from cqox_platform.canary.analysis import gather_evidence

    def query(expr: str, at=None):
        if "histogram_quantile" in expr:  # e.g. a `sum by (le, pod)` left in by mistake
            return [{"metric": {"pod": "a"}, "value": [0, "0.3"]}, {"metric": {"pod": "b"}, "value": [0, "9"]}]
        return [{"metric": {}, "value": [0, "5000" if "increase(" in expr else "0.001"]}]

    evidence = gather_evidence(CANARY_POLICY, query, budget_remaining=lambda: 0.9)
    assert evidence.prometheus_ok is False and "2 series" in evidence.error
    decision = decide(CANARY_POLICY, RolloutState(0), evidence)
    assert decision.action == HOLD and "2 series" in decision.reason and decision.state == RolloutState(0)
