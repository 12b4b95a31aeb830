"""Operator controls, the pure guard (issue 16 item 2): which action is allowed from which state, and where it
leaves the rollout. The actions themselves (row lock, compare-and-set, cluster, audit_log) run against the real
stack in tests/integration/test_canary.py."""

from __future__ import annotations

import pytest

from cqox_platform.canary.operator import OperatorError, plan

PLAN = [
    # (action, status found under the row lock, status after or error fragment)
    ("pause", "progressing", "paused"),
    ("pause", "paused", "it is paused"),
    ("pause", "promoting", "it is promoting"),
    ("resume", "paused", "progressing"),
    ("resume", "progressing", "it is progressing"),
    ("abort", "progressing", "rolled_back"),
    ("abort", "paused", "rolled_back"),
    ("abort", "promoting", "nothing left to roll back to"),
    ("abort", "promoted", "it is promoted"),
    ("abort", "rolled_back", "it is rolled_back"),
    ("promote", "progressing", "promoting"),
    ("promote", "paused", "promoting"),
    ("promote", "promoting", "promoting"),  # finishes a promotion that failed midway
    ("promote", "promoted", "it is promoted"),
    ("approve", "progressing", "progressing"),
    ("approve", "paused", "paused"),
    ("approve", "rolled_back", "it is rolled_back"),
    ("restart", "progressing", "unknown action"),
]


@pytest.mark.parametrize(("action", "status", "expected"), PLAN, ids=[f"{a}-{s}" for a, s, _ in PLAN])
def test_plan(action: str, status: str, expected: str) -> None:
    if " " in expected:
        with pytest.raises(OperatorError, match=expected) as raised:
            plan(action, status)
        assert "Nothing was changed" in str(raised.value) or "unknown action" in expected
    else:
        assert plan(action, status) == expected
