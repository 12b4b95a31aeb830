"""Current burn rates and remaining error budget per SLO, for the error-budget sensor and the canary gate.

The page and ticket decisions use the same multiwindow conditions as the generated alert rules, evaluated
now; a window without data counts as "unknown", never as zero burn.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from cqox_platform.pushgateway import (
    SLO_PUSH_PERIOD_SECONDS,
    SLO_STALE_SEVERITY,
    Pushgateway,
    Sample,
    expected_period_sample,
    push,
)
from cqox_platform.slo.budget import error_budget
from cqox_platform.slo.rules import PAGE, TICKET, WINDOWS
from cqox_platform.slo.spec import SloSpec

InstantQuery = Callable[[str], list[dict]]

#: The gauges ``push_gauges`` sets (labels ``service``, ``slo``; the burn rate also ``window``), charted by
#: ``cqox_platform/dashboards``. The budget over the whole SLO period has no recording rule (a 30-day rate per
#: evaluation would be the most expensive rule of all), so the sensor's gauge is where it is read.
BUDGET_REMAINING_METRIC = "slo_error_budget_remaining"
BURN_RATE_METRIC = "slo_burn_rate"
#: The Pushgateway job of those gauges.
SLO_JOB = "cqox-slo"


@dataclass
class BurnStatus:
    slo: str
    objective: float
    burn_rates: dict[str, float | None] = field(default_factory=dict)
    budget_remaining: float | None = None  # over the SLO period, 1 = untouched, < 0 = overspent

    def _over(self, pair, period_days: int) -> bool:
        def high(window: str, factor: float) -> bool:
            rate = self.burn_rates.get(window)
            return rate is not None and rate > factor

        return any(high(a.long, a.factor(period_days)) and high(a.short, a.factor(period_days)) for a in pair)

    def page(self, period_days: int) -> bool:
        return self._over(PAGE, period_days)

    def ticket(self, period_days: int) -> bool:
        return self._over(TICKET, period_days)

    @property
    def has_data(self) -> bool:
        return any(v is not None for v in self.burn_rates.values())


def _scalar(result: list[dict]) -> float | None:
    if not result:
        return None
    value = float(result[0]["value"][1])
    return value if value == value and abs(value) != float("inf") else None


def current_burn(spec: SloSpec, query: InstantQuery) -> list[BurnStatus]:
    out = []
    for slo in spec.budgeted:
        budget = error_budget(slo.objective)
        status = BurnStatus(slo.name, slo.objective)
        for window in WINDOWS:
            ratio = _scalar(query(spec.error_ratio_query(slo, window)))
            status.burn_rates[window] = None if ratio is None else ratio / budget
        period_ratio = _scalar(query(spec.error_ratio_query(slo, f"{spec.period_days}d")))
        status.budget_remaining = None if period_ratio is None else 1 - period_ratio / budget
        out.append(status)
    return out


def push_gauges(gateway: Pushgateway, service: str, statuses: list[BurnStatus], timeout: float = 10) -> int:
    """Replace the ``cqox-slo`` group on the Pushgateway with the roadmap's SLOMonitor gauges."""
    samples: list[Sample] = []
    for s in statuses:
        if s.budget_remaining is not None:
            samples.append((BUDGET_REMAINING_METRIC, {"service": service, "slo": s.slo}, s.budget_remaining))
        for window, rate in s.burn_rates.items():
            if rate is not None:
                samples.append((BURN_RATE_METRIC, {"service": service, "slo": s.slo, "window": window}, rate))
    # The group's declared period: CqoxPushedMetricsStale tickets when the sensor stops pushing.
    samples.append(expected_period_sample(SLO_PUSH_PERIOD_SECONDS, SLO_STALE_SEVERITY))
    return push(gateway, SLO_JOB, {"service": service}, samples, replace=True, timeout=timeout)
