"""Rollout operations: start one, apply a decision to the cluster and the database, replay history.

``apply_decision`` changes the cluster before the database: if the weight change fails, the rollout keeps its
old state and the next interval decides again; a weight change that landed is then recorded. Promotions and
completions set the next step's weight; a rollback sets stable 100 / canary 0 and puts the canary Deployment
back on the image it had before the rollout.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import psycopg

from cqox_platform.canary.analysis import Query, gather_evidence
from cqox_platform.canary.decision import (
    COMPLETE,
    NONE,
    PROGRESSING,
    PROMOTE,
    ROLLBACK,
    Decision,
    RolloutState,
    decide,
)
from cqox_platform.canary.policy import CanaryPolicy
from cqox_platform.canary.router import KubeClient, WeightChange, set_canary_image, shift_weights
from cqox_platform.canary.store import Rollout, get_rollout, insert_rollout, new_rollout_id, record_decision


def start_rollout(
    conn: psycopg.Connection, kube: KubeClient, policy: CanaryPolicy, image: str
) -> tuple[Rollout, WeightChange]:
    """Set the canary's image and the first step's weight, and record the rollout."""
    rollout_id = new_rollout_id(policy.service)
    with conn.transaction():
        # Insert first (inside the transaction) so a second concurrent start fails before touching the cluster.
        rollout = insert_rollout(conn, rollout_id, policy.service, image, None, policy.version, policy.steps[0])
        previous = set_canary_image(kube, policy.kubernetes, image)
        change = shift_weights(kube, policy.kubernetes, policy.steps[0])
        conn.execute("UPDATE canary_rollouts SET previous_image = %s WHERE rollout_id = %s", [previous, rollout_id])
    return get_rollout(conn, rollout.rollout_id), change


def apply_decision(
    conn: psycopg.Connection, kube: KubeClient, policy: CanaryPolicy, rollout: Rollout, decision: Decision
) -> WeightChange | None:
    change = None
    if decision.action in (PROMOTE, COMPLETE, ROLLBACK):
        change = shift_weights(kube, policy.kubernetes, decision.weight_after)
    if decision.action == ROLLBACK and rollout.previous_image:
        set_canary_image(kube, policy.kubernetes, rollout.previous_image)
    if decision.action != NONE:
        record_decision(conn, rollout.rollout_id, decision)
    return change


@dataclass(frozen=True)
class BacktestStep:
    at: float
    decision: Decision


def backtest(
    policy: CanaryPolicy,
    query: Query,
    start: float,
    end: float,
    budget_at: Callable[[float], float | None] | None = None,
) -> list[BacktestStep]:
    """Replay ``[start, end]`` one interval at a time through the policy, as the sensor would have."""
    state = RolloutState()
    steps: list[BacktestStep] = []
    at = start + policy.interval_seconds
    while at <= end and state.status == PROGRESSING:
        evidence = gather_evidence(
            policy, query, at=at, budget_remaining=(lambda t=at: budget_at(t)) if budget_at else None
        )
        decision = decide(policy, state, evidence)
        steps.append(BacktestStep(at, decision))
        state = decision.state
        at += policy.interval_seconds
    return steps
