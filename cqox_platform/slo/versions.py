"""SLIs and error budget per version over a window: "did this release burn budget?" (issue 16 item 6).

The SLO spec's queries select the whole service; here each budgeted SLO's bad and total events are counted
(``increase``) over one window for one value of the spec's version label (``canary``, ``stable``), and a
version's bad events are set against the service's error budget for the SLO period: the share of the period's
budget that version spent in the window. The canary's share over a rollout's window is the budget the release
consumed. Only SLOs the spec can split by label are broken down (ratio and latency SLOs over the standard
metrics; OpenSLO SLOs with their own queries and threshold SLOs are left out, and the table says which).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from cqox_platform.slo.budget import error_budget
from cqox_platform.slo.spec import LatencySlo, RatioSlo, SloSpec

Query = Callable[..., list[dict]]


@dataclass(frozen=True)
class VersionSli:
    version: str
    slo: str
    bad: float | None
    total: float | None
    objective: float
    period_total: float | None  # all the service's events over the SLO period

    @property
    def error_ratio(self) -> float | None:
        if self.bad is None or not self.total:
            return None
        return self.bad / self.total

    @property
    def budget_consumed(self) -> float | None:
        """Share of the period's error budget this version's bad events spent (1 = all of it)."""
        if self.bad is None or not self.period_total:
            return None
        return self.bad / (self.period_total * error_budget(self.objective))


def splittable(spec: SloSpec) -> list[RatioSlo | LatencySlo]:
    return [
        s
        for s in spec.budgeted
        if isinstance(s, LatencySlo) or (isinstance(s, RatioSlo) and not (s.bad_query and s.total_query))
    ]


def _value(query: Query, expr: str, at: float | None) -> float | None:
    result = query(expr, at=at)
    if len(result) != 1:
        return None
    value = float(result[0]["value"][1])
    return None if math.isnan(value) or math.isinf(value) else value


def per_version(
    spec: SloSpec, versions: list[str], window_seconds: int, query: Query, at: float | None = None
) -> list[VersionSli]:
    """Each splittable SLO for each version over the ``window_seconds`` before ``at`` (default now)."""
    window = f"{max(int(window_seconds), 1)}s"
    out = []
    for version in versions:
        scoped = spec.model_copy(update={"selector": {**spec.selector, spec.metrics.version_label: version}})
        for slo in splittable(spec):
            bad, total = scoped.event_queries(slo, window, fn="increase")
            _, period_total = spec.event_queries(slo, f"{spec.period_days}d", fn="increase")
            out.append(
                VersionSli(
                    version,
                    slo.name,
                    _value(query, bad, at),
                    _value(query, total, at),
                    slo.objective,
                    _value(query, period_total, at),
                )
            )
    return out
