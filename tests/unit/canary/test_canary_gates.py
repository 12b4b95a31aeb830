"""Approval gates (issue 16 item 3), the pure part: a `confirm: true` step holds a passing promotion until a
person approves it, and its timeout rolls back or holds as the policy says. On the real stack (the approve
command, the stored approval) in tests/integration/test_canary.py."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import yaml

from cqox_platform.canary.decision import HOLD, PROMOTE, ROLLBACK, ROLLED_BACK, RolloutState, decide
from cqox_platform.canary.gates import gate
from cqox_platform.canary.policy import POLICY_DIR, PolicyError, parse_policy, policy_document
from tests.helpers import good_evidence

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def policy(timeout=0, on_timeout="hold", steps=(10, {"weight": 50, "confirm": True}, 100)):
    raw = yaml.safe_load((POLICY_DIR / "cqox-engine.yaml").read_text())
    raw.update(steps=list(steps), confirm_timeout_seconds=timeout, on_confirm_timeout=on_timeout)
    return parse_policy(raw, where="gated.yaml")


def ago(seconds):
    return NOW - timedelta(seconds=seconds)


GATES = [
    # (name, policy, state, evidence, approved_step, awaiting since, action, weight after, since after, fragment)
    (
        "into a confirm step, not approved: hold",
        policy(),
        RolloutState(0),
        good_evidence(),
        -1,
        None,
        HOLD,
        10,
        NOW,
        "step 1 (50 %) needs a person's approval",
    ),
    (
        "still waiting: the wait counts from the first hold",
        policy(),
        RolloutState(0),
        good_evidence(),
        -1,
        ago(90),
        HOLD,
        10,
        ago(90),
        "waiting since",
    ),
    (
        "approved: promote, wait cleared",
        policy(),
        RolloutState(0),
        good_evidence(),
        1,
        ago(90),
        PROMOTE,
        50,
        None,
        "10 % -> 50 %",
    ),
    (
        "into a step without confirm: not gated",
        policy(),
        RolloutState(1),
        good_evidence(),
        1,
        None,
        PROMOTE,
        100,
        None,
        "-> 100",
    ),
    (
        "analysis failed: the gate does not matter",
        policy(),
        RolloutState(0),
        good_evidence(err=0.2),
        -1,
        ago(5),
        HOLD,
        10,
        ago(5),
        "analysis failed",
    ),
    (
        "timeout, policy says rollback",
        policy(60, "rollback"),
        RolloutState(0),
        good_evidence(),
        -1,
        ago(61),
        ROLLBACK,
        0,
        ago(61),
        "no approval for 50 % within 60 s",
    ),
    (
        "timeout, policy says hold",
        policy(60, "hold"),
        RolloutState(0),
        good_evidence(),
        -1,
        ago(61),
        HOLD,
        10,
        ago(61),
        "on_confirm_timeout: hold",
    ),
    (
        "no timeout (0): waits forever",
        policy(0, "rollback"),
        RolloutState(0),
        good_evidence(),
        -1,
        ago(10**6),
        HOLD,
        10,
        ago(10**6),
        "needs a person's approval",
    ),
    (
        "budget gate still applies before the person's",
        policy(),
        RolloutState(0),
        good_evidence(budget=0.1),
        1,
        None,
        HOLD,
        10,
        None,
        "error budget",
    ),
]


@pytest.mark.parametrize(
    ("name", "pol", "state", "evidence", "approved", "since", "action", "weight", "since_after", "fragment"),
    GATES,
    ids=[g[0] for g in GATES],
)
def test_gate(name, pol, state, evidence, approved, since, action, weight, since_after, fragment) -> None:
    gated = gate(pol, state, decide(pol, state, evidence), approved, since, NOW)
    d = gated.decision
    assert (d.action, d.weight_after, gated.awaiting_since) == (action, weight, since_after), d.reason
    assert fragment in d.reason
    if action == HOLD and "approv" in d.reason:
        assert d.state == state  # a hold for approval is not counted against the canary
    if action == ROLLBACK:
        assert d.state.status == ROLLED_BACK


def test_confirm_steps_round_trip_through_the_stored_policy() -> None:
    p = policy(60, "rollback")
    assert p.steps == (10, 50, 100) and p.confirm_steps == (1,)
    again = parse_policy(policy_document(p))
    assert (again.steps, again.confirm_steps, again.confirm_timeout_seconds, again.on_confirm_timeout) == (
        (10, 50, 100),
        (1,),
        60,
        "rollback",
    )


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"steps": ({"weight": 10, "confirm": True}, 100)}, "steps[0] cannot need `confirm`"),
        ({"on_timeout": "panic"}, "on_confirm_timeout must be"),
        ({"steps": (10, {"confirm": True}, 100)}, "`weight` is missing"),
    ],
)
def test_bad_gates_are_refused(kwargs, fragment) -> None:
    with pytest.raises(PolicyError, match=r"gated\.yaml") as raised:
        policy(**kwargs)
    assert fragment in str(raised.value)
