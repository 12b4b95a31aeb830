"""The canary decision: a pure function from (policy, rollout state, evidence) to what to do next.

Order of reasoning, each branch a row in the unit tests:

1. a finished rollout is left alone;
2. no usable evidence (Prometheus unreachable, a query answering several series): hold, without counting
   against the canary (the monitoring failed, not the canary);
3. too few canary requests or a metric without data: hold for insufficient evidence; past
   ``max_consecutive_holds`` such holds, roll back (a canary that gets no traffic cannot be judged). A relative
   threshold without stable data to compare to is no data, never a pass;
4. a metric over its absolute or stable-relative threshold: a failed analysis; at ``failure_limit`` roll back,
   otherwise hold;
5. all metrics pass: at the last step, complete; with the error budget unknown or under the gate, hold (not
   counted: the canary is fine, the service is not), at every step, since every promotion moves traffic;
   otherwise promote to the next step.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

from cqox_platform.canary.policy import CanaryPolicy, MetricCheck

PROMOTE, HOLD, ROLLBACK, COMPLETE, NONE = "promote", "hold", "rollback", "complete", "none"
PROGRESSING, PROMOTED, ROLLED_BACK = "progressing", "promoted", "rolled_back"
#: Set by transitions outside the analysis: ``promoting`` once the analysis completed (or an operator forced a
#: promotion) until the stable Deployment runs the canary's version; ``paused`` by an operator.
PROMOTING, PAUSED = "promoting", "paused"
ACTIVE = (PROGRESSING, PROMOTING, PAUSED)  # statuses that own the service (one per service)


@dataclass(frozen=True)
class RolloutState:
    step_index: int = 0
    failures: int = 0
    consecutive_holds: int = 0
    status: str = PROGRESSING


@dataclass(frozen=True)
class MetricValue:
    name: str
    canary: float | None
    stable: float | None
    canary_query: str = ""
    stable_query: str = ""


@dataclass(frozen=True)
class Evidence:
    canary_requests: float | None
    stable_requests: float | None
    metrics: tuple[MetricValue, ...] = ()
    budget_remaining: float | None = None
    prometheus_ok: bool = True
    error: str = ""


@dataclass(frozen=True)
class MetricVerdict:
    name: str
    canary: float | None
    stable: float | None
    passed: bool | None  # None: no data
    reasons: tuple[str, ...] = ()


@dataclass(frozen=True)
class Decision:
    action: str
    reason: str
    weight_before: int
    weight_after: int
    state: RolloutState
    verdicts: tuple[MetricVerdict, ...] = field(default_factory=tuple)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def judge(check: MetricCheck, value: MetricValue) -> MetricVerdict:
    """One metric against its thresholds; no canary value, or no stable value for a relative threshold, means no
    verdict (a comparison with nothing must not pass)."""
    if value.canary is None:
        return MetricVerdict(check.name, None, value.stable, None, ("no data for the canary",))
    relative = check.max_over_stable is not None or check.max_ratio_to_stable is not None
    if relative and value.stable is None:
        return MetricVerdict(check.name, value.canary, None, None, ("no data for stable",))
    if check.max_ratio_to_stable is not None and value.stable is not None and value.stable <= 0:
        return MetricVerdict(check.name, value.canary, value.stable, None, ("stable is 0: no ratio to judge",))
    reasons = []
    if check.max is not None and value.canary > check.max:
        reasons.append(f"{value.canary:.6g} > max {check.max:g}")
    if value.stable is not None:
        if check.max_over_stable is not None and value.canary - value.stable > check.max_over_stable:
            reasons.append(
                f"{value.canary:.6g} exceeds stable {value.stable:.6g} by more than {check.max_over_stable:g}"
            )
        if check.max_ratio_to_stable is not None and value.canary / value.stable > check.max_ratio_to_stable:
            reasons.append(
                f"{value.canary:.6g} is {value.canary / value.stable:.2f}x stable {value.stable:.6g} "
                f"(limit {check.max_ratio_to_stable:g}x)"
            )
    return MetricVerdict(check.name, value.canary, value.stable, not reasons, tuple(reasons))


def decide(policy: CanaryPolicy, state: RolloutState, evidence: Evidence) -> Decision:
    weight = policy.steps[min(state.step_index, len(policy.steps) - 1)]
    if state.status != PROGRESSING:
        return Decision(NONE, f"rollout already {state.status}", weight, weight, state)

    def hold(reason: str, new_state: RolloutState, verdicts=()) -> Decision:
        return Decision(HOLD, reason, weight, weight, new_state, tuple(verdicts))

    def rollback(reason: str, verdicts=()) -> Decision:
        return Decision(ROLLBACK, reason, weight, 0, replace(state, status=ROLLED_BACK), tuple(verdicts))

    if not evidence.prometheus_ok:
        return hold(f"no usable evidence ({evidence.error or 'Prometheus unavailable'}): holding, not judging", state)

    by_name = {m.name: m for m in evidence.metrics}
    verdicts = [judge(c, by_name.get(c.name, MetricValue(c.name, None, None))) for c in policy.metrics]
    requests = evidence.canary_requests or 0.0
    missing = [v.name for v in verdicts if v.passed is None]
    if requests < policy.min_requests or missing:
        holds = state.consecutive_holds + 1
        what = (
            f"{requests:.0f} canary requests < {policy.min_requests}"
            if requests < policy.min_requests
            else f"no data for {', '.join(missing)}"
        )
        if holds > policy.max_consecutive_holds:
            return rollback(
                f"insufficient evidence for {holds} consecutive intervals ({what}); limit "
                f"{policy.max_consecutive_holds}",
                verdicts,
            )
        return hold(
            f"insufficient evidence ({what}): hold {holds} of {policy.max_consecutive_holds}",
            replace(state, consecutive_holds=holds),
            verdicts,
        )

    failed = [v for v in verdicts if v.passed is False]
    if failed:
        failures = state.failures + 1
        why = "; ".join(f"{v.name}: {', '.join(v.reasons)}" for v in failed)
        if failures >= policy.failure_limit:
            return rollback(
                f"analysis failed {failures} time(s) at {weight} % (limit {policy.failure_limit}): {why}", verdicts
            )
        return hold(
            f"analysis failed ({failures} of {policy.failure_limit}): {why}",
            replace(state, failures=failures, consecutive_holds=0),
            verdicts,
        )

    if state.step_index >= len(policy.steps) - 1:
        return Decision(
            COMPLETE,
            f"all metrics passed at {weight} %: rollout complete",
            weight,
            weight,
            replace(state, status=PROMOTED, consecutive_holds=0),
            tuple(verdicts),
        )
    gate = policy.budget_gate
    if gate is not None:
        if evidence.budget_remaining is None:
            return hold(f"error budget of {gate.slo} unknown: not promoting past {weight} %", state, verdicts)
        if evidence.budget_remaining < gate.min_remaining:
            return hold(
                f"error budget of {gate.slo} at {evidence.budget_remaining:.1%} < {gate.min_remaining:.0%}: "
                f"not promoting past {weight} %",
                state,
                verdicts,
            )
    next_index = state.step_index + 1
    return Decision(
        PROMOTE,
        f"all metrics passed on {requests:.0f} canary requests: {weight} % -> {policy.steps[next_index]} %",
        weight,
        policy.steps[next_index],
        RolloutState(step_index=next_index),
        tuple(verdicts),
    )
