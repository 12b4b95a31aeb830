"""Which decision run may change a rollout: one per rollout state, and only once its observation window passed.

Issue 13 item 2. The run locks the rollout's row and compares it with the state the sensor requested the
decision for (Flagger and Argo Rollouts guard each transition by the object's version the same way); a run for
an older state is stale and changes nothing, so two runs in one interval cannot both apply and a stale promote
cannot skip the 50 % observation window.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from cqox_platform.canary.transition import LockedState, decision_run_key, stale_reason

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
INTERVAL = 600


def locked(version=3, status="progressing", ago=INTERVAL + 5) -> LockedState:
    return LockedState(state_version=version, status=status, last_change_at=NOW - timedelta(seconds=ago))


GUARD = [
    # (name, state found under the row lock, version the run was requested for, reason fragment or None)
    ("the state it was requested for, window passed: apply", locked(), 3, None),
    ("another decision applied first: stale", locked(version=4), 3, "stale"),
    ("requested for a future version (forged config): stale", locked(version=3), 7, "stale"),
    ("rollout finished meanwhile", locked(status="promoted"), 3, "already promoted"),
    ("rolled back meanwhile", locked(status="rolled_back"), 3, "already rolled_back"),
    # A run launched by hand right after a promote would judge the 50 % step on the 10 % step's traffic.
    ("observation window not over", locked(ago=30), 3, "observation window"),
    ("window ends exactly now: apply", locked(ago=INTERVAL), 3, None),
]


@pytest.mark.parametrize(("name", "state", "expected", "fragment"), GUARD, ids=[g[0] for g in GUARD])
def test_stale_reason(name, state, expected, fragment):
    reason = stale_reason(state, expected, INTERVAL, NOW)
    if fragment is None:
        assert reason is None
    else:
        assert reason is not None and fragment in reason


STARTED = NOW - timedelta(hours=1)


@pytest.mark.parametrize(
    ("now", "key"),
    [
        (STARTED + timedelta(seconds=600), "r1:1"),
        (STARTED + timedelta(seconds=1199), "r1:1"),  # same interval, whatever the evidence says: same key
        (STARTED + timedelta(seconds=1200), "r1:2"),
    ],
)
def test_one_run_key_per_rollout_and_interval(now, key):
    assert decision_run_key("r1", STARTED, now, INTERVAL) == key
