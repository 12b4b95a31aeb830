"""Which decision run may change a rollout: the guard on every transition, as a pure function.

A decision is for one state of a rollout. The sensor requests it for the rollout's ``state_version`` (bumped by
every recorded decision) with one run key per rollout and analysis interval, whatever the decision turns out to
be. The run then locks the rollout's row and applies its decision only if the row is still in that state, the
rollout still progressing and the policy's observation window since the last change over; otherwise the run is
stale: it records why and changes nothing. A ``promoting`` rollout (a promotion to stable that failed midway)
is taken up again by the next run; a ``paused`` one by none. Flagger and Argo Rollouts guard their transitions
the same way, by the object's version. That is what stops two runs of one interval (a retry, a second daemon, a
launch from the UI) from both applying, and a promote meant for the 10 % step from landing on the 50 % step
before its window.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from cqox_platform.canary.decision import PAUSED, PROGRESSING, PROMOTING


@dataclass(frozen=True)
class LockedState:
    """What the run finds in the rollout's row once it holds the row lock."""

    state_version: int
    status: str
    last_change_at: datetime  # the last recorded decision, else the start


def stale_reason(found: LockedState, requested_version: int, interval_seconds: int, now: datetime) -> str | None:
    """``None`` when the run may decide and apply; else why it must not (recorded as a stale decision)."""
    if found.status == PAUSED:
        return "rollout paused by an operator (`cqox-platform canary resume`)"
    if found.status not in (PROGRESSING, PROMOTING):
        return f"rollout already {found.status}"
    if found.state_version != requested_version:
        return (
            f"stale: the run was requested for state version {requested_version}, the rollout is at "
            f"{found.state_version} (another decision applied first)"
        )
    waited = (now - found.last_change_at).total_seconds()
    if waited < interval_seconds:
        return (
            f"stale: {waited:.0f} s since the last change, inside the {interval_seconds} s observation window; "
            "the next interval decides"
        )
    return None


def decision_run_key(rollout_id: str, started_at: datetime, now: datetime, interval_seconds: int) -> str:
    """One decision run per rollout per analysis interval, whatever its action: the key has no action in it."""
    return f"{rollout_id}:{int((now - started_at).total_seconds() // interval_seconds)}"
