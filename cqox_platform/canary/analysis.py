"""Evidence for a canary decision: the policy's PromQL for canary and stable, and the SLO's error budget.

``query`` is any instant-query function (``PrometheusResource.query``); ``at`` evaluates in the past, which
is how the backtest replays history through the same code. A failed query makes the whole evidence
"Prometheus unavailable", never a partial picture that could promote by accident.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from cqox_platform.canary.decision import Evidence, MetricValue
from cqox_platform.canary.policy import CanaryPolicy
from cqox_platform.errors import CqoxError
from cqox_platform.slo.budget import error_budget
from cqox_platform.slo.spec import SloSpec, load_spec, spec_path

Query = Callable[..., list[dict]]


def scalar(result: list[dict]) -> float | None:
    """The single value of an instant vector; None for no series or NaN (0/0 on an idle version)."""
    if not result:
        return None
    value = float(result[0]["value"][1])
    return None if math.isnan(value) or math.isinf(value) else value


def gather_evidence(
    policy: CanaryPolicy,
    query: Query,
    *,
    at: float | None = None,
    budget_remaining: Callable[[], float | None] | None = None,
) -> Evidence:
    p = policy.prometheus
    queries: dict[str, str] = {}
    try:
        canary_q = policy.render(policy.requests_query, p.canary_version)
        stable_q = policy.render(policy.requests_query, p.stable_version)
        canary_requests = scalar(query(canary_q, at=at))
        stable_requests = scalar(query(stable_q, at=at))
        queries["requests"] = canary_q
        metrics = []
        for check in policy.metrics:
            cq, sq = policy.render(check.query, p.canary_version), policy.render(check.query, p.stable_version)
            metrics.append(MetricValue(check.name, scalar(query(cq, at=at)), scalar(query(sq, at=at)), cq, sq))
        budget = budget_remaining() if budget_remaining else None
    except CqoxError as exc:
        return Evidence(None, None, prometheus_ok=False, error=str(exc)[:300])
    return Evidence(canary_requests, stable_requests, tuple(metrics), budget)


def slo_budget_remaining(spec: SloSpec, slo_name: str, query: Query, at: float | None = None) -> float | None:
    """Share of the SLO's error budget left over its period (1 = untouched, below 0 = overspent)."""
    slo = next((s for s in spec.budgeted if s.name == slo_name), None)
    if slo is None:
        raise CqoxError(f"the budget gate names SLO {slo_name!r}, which {spec.service}'s SLO file does not define.")
    ratio = scalar(query(spec.error_ratio_query(slo, f"{spec.period_days}d"), at=at))
    return None if ratio is None else 1 - ratio / error_budget(slo.objective)


def budget_gate_remaining(policy: CanaryPolicy, query: Query, at: float | None = None) -> float | None:
    """The remaining budget of the SLO the policy's gate names (``None`` without a gate), from the SLO file."""
    if policy.budget_gate is None:
        return None
    return slo_budget_remaining(load_spec(spec_path()), policy.budget_gate.slo, query, at=at)
