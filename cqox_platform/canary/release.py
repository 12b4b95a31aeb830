"""What a release cost: per-version SLIs over a rollout's window and the error budget the canary spent.

Computed when a rollout ends (promoted or rolled back) for its final materialization: every
SLO of the SLO spec that can be split by version, for the canary and stable versions the policy names, over
the rollout's window (``slo/versions.py``), and the share of the period's budget of the policy's budget-gate
SLO (``availability`` without a gate) the canary's bad requests spent. Reporting only: it never changes the
rollout, and Prometheus failing leaves the numbers unknown, saying why.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

import psycopg

from cqox_platform.canary.decision import ACTIVE
from cqox_platform.canary.policy import CanaryPolicy, parse_policy, policy_for
from cqox_platform.canary.store import Rollout, rollouts_overlapping
from cqox_platform.errors import CqoxError
from cqox_platform.slo.spec import SloSpec, load_spec, spec_path
from cqox_platform.slo.versions import Query, VersionSli, VersionWindow, WindowReport, day_breakdown, per_version


@dataclass(frozen=True)
class ReleaseBudget:
    slo: str
    window_seconds: int
    consumed: float | None  # share of the SLO period's budget the canary spent in the window
    rows: tuple[VersionSli, ...] = field(default_factory=tuple)
    error: str = ""


def release_budget(policy: CanaryPolicy, started_at: datetime, now: datetime, query: Query) -> ReleaseBudget:
    slo = policy.budget_gate.slo if policy.budget_gate else "availability"
    window = max(int((now - started_at).total_seconds()), 1)
    p = policy.prometheus
    try:
        rows = tuple(per_version(load_spec(spec_path()), [p.canary_version, p.stable_version], window, query))
    except CqoxError as exc:
        return ReleaseBudget(slo, window, None, (), f"per-version SLIs unavailable: {exc}"[:300])
    consumed = next((r.budget_consumed for r in rows if r.version == p.canary_version and r.slo == slo), None)
    return ReleaseBudget(slo, window, consumed, rows)


# --- the per-version view of a day (``slo_version_report``) ----------------------------------------------------


def rollout_window(rollout: Rollout, now: datetime) -> VersionWindow:
    """A rollout's window: from its start to its last change (when it ended), or to ``now`` while it is active;
    the canary and stable versions are those of the policy it started with."""
    policy = parse_policy(rollout.policy) if rollout.policy else policy_for(rollout.service)
    end = now if rollout.status in ACTIVE else rollout.updated_at
    p = policy.prometheus
    return VersionWindow(rollout.rollout_id, p.canary_version, p.stable_version, rollout.started_at, end)


def budget_slo(rollout: Rollout) -> str:
    """The SLO whose budget a release is judged by: its policy's budget-gate SLO, ``availability`` without."""
    policy = parse_policy(rollout.policy) if rollout.policy else policy_for(rollout.service)
    return policy.budget_gate.slo if policy.budget_gate else "availability"


@dataclass(frozen=True)
class DayReport:
    """Each rollout window overlapping a day, broken down by version; ``budget_slo`` per rollout."""

    day_start: datetime
    day_end: datetime
    windows: tuple[WindowReport, ...]
    budget_slo: dict[str, str] = field(default_factory=dict)
    rollouts: dict[str, Rollout] = field(default_factory=dict)


def version_day_report(
    conn: psycopg.Connection, spec: SloSpec, day_start: datetime, day_end: datetime, query: Query, now: datetime
) -> DayReport:
    rollouts = rollouts_overlapping(conn, day_start, day_end)
    windows = [rollout_window(r, now) for r in rollouts]
    reports = tuple(day_breakdown(spec, windows, day_start, min(day_end, now), query))
    return DayReport(
        day_start,
        day_end,
        reports,
        {r.rollout_id: budget_slo(r) for r in rollouts},
        {r.rollout_id: r for r in rollouts},
    )
