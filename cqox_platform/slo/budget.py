"""Error budget arithmetic (Google SRE): the allowed share of bad events, how much of it is spent, how fast.

``burn_rate`` is the error ratio over a window divided by the budget: 1 spends exactly the budget over the SLO
period, 14.4 spends a 30-day budget in ~2 days. The roadmap averaged the 1 h and 24 h burn rates; the rules and
the sensor use the Workbook's multiwindow conditions instead (``rules.py``).
"""

from __future__ import annotations


def error_budget(objective: float) -> float:
    """Allowed share of bad events: 0.0001 for 99.99 %."""
    if not 0 < objective < 1:
        raise ValueError(f"objective must be between 0 and 1 exclusive, got {objective}")
    return 1 - objective


def budget_minutes(objective: float, period_days: float) -> float:
    """The budget as downtime: 99.99 % over 30 days allows 4.32 minutes."""
    return error_budget(objective) * period_days * 24 * 60


def burn_rate(error_ratio: float, objective: float) -> float:
    return error_ratio / error_budget(objective)


def budget_consumed(error_ratio: float, objective: float, window_share: float = 1.0) -> float:
    """Share of the period's budget spent by ``error_ratio`` sustained over ``window_share`` of the period."""
    return burn_rate(error_ratio, objective) * window_share


def budget_remaining(error_ratio: float, objective: float, window_share: float = 1.0) -> float:
    """1 - consumed; negative when the budget is overspent (reports show it; gauges clamp at 0)."""
    return 1 - budget_consumed(error_ratio, objective, window_share)
