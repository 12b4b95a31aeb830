"""SLIs and error budget per version over a window: "did this release burn budget?".

The SLO spec's queries select the whole service; here each budgeted SLO's bad and total events are counted
(``increase``) over one window for one value of the spec's version label (``canary``, ``stable``), and a
version's bad events are set against the service's error budget for the SLO period: the share of the period's
budget that version spent in the window. The canary's share over a rollout's window is the budget the release
consumed. Only SLOs the spec can split by label are broken down (ratio and latency SLOs over the standard
metrics; OpenSLO SLOs with their own queries and threshold SLOs are left out, and the table says which).

``day_breakdown`` is the same per day: for each rollout window overlapping the day, the SLIs of both versions
over the overlap (the ``slo_version_report`` asset).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from cqox_platform.errors import CqoxError
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


# --- per-version view of a day (``slo_version_report``) --------------------------------------------------------


@dataclass(frozen=True)
class VersionWindow:
    """Where two versions ran side by side: a rollout (``label``), its canary and stable versions, its window."""

    label: str
    canary: str
    stable: str
    start: datetime
    end: datetime


@dataclass(frozen=True)
class WindowReport:
    """Per-version SLIs over the part of a window inside one day (``start``..``end``)."""

    window: VersionWindow
    start: datetime
    end: datetime
    rows: tuple[VersionSli, ...] = ()
    error: str = ""

    @property
    def seconds(self) -> int:
        return int((self.end - self.start).total_seconds())

    def consumed(self, slo: str, version: str | None = None) -> float | None:
        """The share of ``slo``'s period budget ``version`` (default: the canary) spent in this part."""
        version = version or self.window.canary
        return next((r.budget_consumed for r in self.rows if r.version == version and r.slo == slo), None)


def day_breakdown(
    spec: SloSpec, windows: list[VersionWindow], day_start: datetime, day_end: datetime, query: Query
) -> list[WindowReport]:
    """For each window overlapping ``[day_start, day_end)``: every splittable SLO for its canary and stable over
    the overlap, evaluated at the overlap's end. A Prometheus failure leaves that window's numbers unknown and
    says why; the other windows are still reported."""
    out = []
    for w in windows:
        start, end = max(w.start, day_start), min(w.end, day_end)
        if end <= start:
            continue
        seconds = (end - start).total_seconds()
        try:
            rows = tuple(per_version(spec, [w.canary, w.stable], math.ceil(seconds), query, at=end.timestamp()))
        except CqoxError as exc:
            out.append(WindowReport(w, start, end, (), f"per-version SLIs unavailable: {exc}"[:300]))
            continue
        out.append(WindowReport(w, start, end, rows))
    return out
