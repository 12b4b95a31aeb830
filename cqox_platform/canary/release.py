"""What a release cost: per-version SLIs over a rollout's window and the error budget the canary spent.

Computed when a rollout ends (promoted or rolled back) for its final materialization (issue 16 item 6): every
SLO of the SLO spec that can be split by version, for the canary and stable versions the policy names, over
the rollout's window (``slo/versions.py``), and the share of the period's budget of the policy's budget-gate
SLO (``availability`` without a gate) the canary's bad requests spent. Reporting only: it never changes the
rollout, and Prometheus failing leaves the numbers unknown, saying why.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from cqox_platform.canary.policy import CanaryPolicy
from cqox_platform.errors import CqoxError
from cqox_platform.slo.spec import load_spec, spec_path
from cqox_platform.slo.versions import Query, VersionSli, per_version


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
