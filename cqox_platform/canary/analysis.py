"""Evidence for a canary decision: the policy's PromQL for canary and stable, and the SLO's error budget.

``query`` is any instant-query function (``PrometheusResource.query``); ``at`` evaluates in the past, which
is how the backtest replays history through the same code. A failed query makes the whole evidence
"Prometheus unavailable", and a query answering several series (which one would be the canary?) makes it
"ambiguous": never a partial picture that could promote by accident.

The decision run gathers its evidence itself (``collect_evidence``), at the moment it holds the rollout's row:
evidence handed in as run config could be fabricated by anyone who can launch a run.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from cqox_platform.canary.decision import Evidence, MetricValue
from cqox_platform.canary.policy import CanaryPolicy
from cqox_platform.errors import CanaryError, CqoxError
from cqox_platform.slo.budget import error_budget
from cqox_platform.slo.spec import SloSpec, load_spec, spec_path

Query = Callable[..., list[dict]]


class AmbiguousEvidenceError(CanaryError):
    """A query meant to give one number answered several series."""


def scalar(result: list[dict], expr: str = "") -> float | None:
    """The single value of an instant vector; None for no series or NaN (0/0 on an idle version).

    Several series are an error, not "the first one": the order is arbitrary, so the verdict would be too.
    """
    if not result:
        return None
    if len(result) > 1:
        labels = "; ".join(str(r.get("metric", {})) for r in result[:3])
        raise AmbiguousEvidenceError(
            f"`{expr[:120]}` answered {len(result)} series ({labels}), expected one: aggregate it in the policy "
            "(sum, or `by (le)` only)"
        )
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
        canary_requests = scalar(query(canary_q, at=at), canary_q)
        stable_requests = scalar(query(stable_q, at=at), stable_q)
        queries["requests"] = canary_q
        metrics = []
        for check in policy.metrics:
            cq, sq = policy.render(check.query, p.canary_version), policy.render(check.query, p.stable_version)
            metrics.append(MetricValue(check.name, scalar(query(cq, at=at), cq), scalar(query(sq, at=at), sq), cq, sq))
        budget = budget_remaining() if budget_remaining else None
    except AmbiguousEvidenceError as exc:
        return Evidence(None, None, prometheus_ok=False, error=f"ambiguous evidence: {exc}"[:400])
    except CqoxError as exc:
        return Evidence(None, None, prometheus_ok=False, error=f"Prometheus unavailable: {exc}"[:400])
    return Evidence(canary_requests, stable_requests, tuple(metrics), budget)


def slo_budget_remaining(spec: SloSpec, slo_name: str, query: Query, at: float | None = None) -> float | None:
    """Share of the SLO's error budget left over its period (1 = untouched, below 0 = overspent)."""
    slo = next((s for s in spec.budgeted if s.name == slo_name), None)
    if slo is None:
        raise CqoxError(f"the budget gate names SLO {slo_name!r}, which {spec.service}'s SLO file does not define.")
    expr = spec.error_ratio_query(slo, f"{spec.period_days}d")
    ratio = scalar(query(expr, at=at), expr)
    return None if ratio is None else 1 - ratio / error_budget(slo.objective)


def budget_gate_remaining(policy: CanaryPolicy, query: Query, at: float | None = None) -> float | None:
    """The remaining budget of the SLO the policy's gate names (``None`` without a gate), from the SLO file."""
    if policy.budget_gate is None:
        return None
    return slo_budget_remaining(load_spec(spec_path()), policy.budget_gate.slo, query, at=at)


def collect_evidence(policy: CanaryPolicy, query: Query) -> Evidence:
    """Evidence for a decision now: the policy's queries over the last interval and its budget gate's SLO."""
    return gather_evidence(policy, query, budget_remaining=lambda: budget_gate_remaining(policy, query))
