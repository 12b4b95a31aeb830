"""Rollout operations: start one, run one guarded decision against the cluster and the database, replay history.

``run_decision`` is the decision run's whole transaction. It locks the rollout's row (a second run for the same
rollout waits there, then finds the state moved on), checks that the row is still in the state the run was
requested for (``transition.stale_reason``), gathers the evidence from Prometheus itself, decides, changes the
cluster, and records the new state with a compare-and-set on ``state_version``, all before the lock is released.
A stale run records why and changes nothing. The row lock, not a Dagster pool or a run-queue limit, is the
guarantee: it holds however the run was launched (sensor, UI, a re-execution, a second daemon, a test).

The cluster changes before the database: if the weight change fails, the transaction rolls back, the rollout
keeps its old state and the next interval decides again. Promotions and completions set the next step's
weight; a rollback sets stable 100 / canary 0 and puts the canary Deployment back on the image it had before.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import psycopg

from cqox_platform.canary.analysis import Query, collect_evidence, gather_evidence
from cqox_platform.canary.decision import (
    COMPLETE,
    NONE,
    PROGRESSING,
    PROMOTE,
    ROLLBACK,
    Decision,
    Evidence,
    RolloutState,
    decide,
)
from cqox_platform.canary.policy import CanaryPolicy
from cqox_platform.canary.router import KubeClient, WeightChange, set_canary_image, shift_weights
from cqox_platform.canary.store import (
    Rollout,
    get_rollout,
    insert_rollout,
    lock_rollout,
    log_decision,
    new_rollout_id,
    record_decision,
    rollout_policy,
)
from cqox_platform.canary.transition import stale_reason

APPLIED, STALE = "applied", "stale"
#: How long a decision run waits for another one holding the same rollout (its Prometheus queries and
#: Kubernetes writes take seconds); past it the run is stale rather than queued behind a stuck one.
LOCK_TIMEOUT = "120s"


def start_rollout(
    conn: psycopg.Connection, kube: KubeClient, policy: CanaryPolicy, image: str
) -> tuple[Rollout, WeightChange]:
    """Set the canary's image and the first step's weight, and record the rollout with its policy."""
    rollout_id = new_rollout_id(policy.service)
    with conn.transaction():
        # Insert first (inside the transaction) so a second concurrent start fails before touching the cluster.
        rollout = insert_rollout(conn, rollout_id, policy.service, image, None, policy, policy.steps[0])
        previous = set_canary_image(kube, policy.kubernetes, image)
        change = shift_weights(kube, policy.kubernetes, policy.steps[0])
        conn.execute("UPDATE canary_rollouts SET previous_image = %s WHERE rollout_id = %s", [previous, rollout_id])
    return get_rollout(conn, rollout.rollout_id), change


def apply_decision(
    conn: psycopg.Connection, kube: KubeClient, policy: CanaryPolicy, rollout: Rollout, decision: Decision
) -> tuple[WeightChange | None, int]:
    """Change the cluster as the decision says, then record it (compare-and-set); the new state version."""
    change = None
    if decision.action in (PROMOTE, COMPLETE, ROLLBACK):
        change = shift_weights(kube, policy.kubernetes, decision.weight_after)
    if decision.action == ROLLBACK and rollout.previous_image:
        set_canary_image(kube, policy.kubernetes, rollout.previous_image)
    version = rollout.state_version
    if decision.action != NONE:
        version = record_decision(conn, rollout, decision)
    return change, version


@dataclass(frozen=True)
class DecisionRun:
    """What one decision run did: ``applied`` with its decision, or ``stale`` with the reason and no change."""

    outcome: str
    rollout: Rollout  # as found under the lock
    policy: CanaryPolicy
    action: str
    reason: str
    weight_after: int
    state_version_after: int
    decision: Decision | None = None
    evidence: Evidence | None = None
    change: WeightChange | None = None


def run_decision(
    conn: psycopg.Connection,
    kube: KubeClient,
    query: Query,
    rollout_id: str,
    requested_version: int,
    *,
    run_id: str | None = None,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> DecisionRun:
    """One guarded decision for ``rollout_id`` in the state ``requested_version`` (see the module docstring)."""
    try:
        with conn.transaction():
            conn.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
            rollout = lock_rollout(conn, rollout_id)
            policy = rollout_policy(rollout)
            why = stale_reason(rollout.locked_state, requested_version, policy.interval_seconds, now())
            if why is not None:
                return _stale(conn, rollout, policy, why, run_id)
            evidence = collect_evidence(policy, query)
            decision = decide(policy, rollout.state, evidence)
            change, version = apply_decision(conn, kube, policy, rollout, decision)
            log_decision(
                conn,
                rollout,
                run_id=run_id,
                outcome=APPLIED,
                action=decision.action,
                reason=decision.reason,
                weight_after=decision.weight_after,
                evidence=evidence,
            )
            return DecisionRun(
                APPLIED,
                rollout,
                policy,
                decision.action,
                decision.reason,
                decision.weight_after,
                version,
                decision,
                evidence,
                change,
            )
    except psycopg.errors.LockNotAvailable:
        with conn.transaction():
            rollout = get_rollout(conn, rollout_id)
            why = f"stale: another decision run held {rollout_id} for over {LOCK_TIMEOUT}"
            return _stale(conn, rollout, rollout_policy(rollout), why, run_id)


def _stale(conn: psycopg.Connection, rollout: Rollout, policy: CanaryPolicy, why: str, run_id: str | None):
    log_decision(
        conn, rollout, run_id=run_id, outcome=STALE, action=NONE, reason=why, weight_after=rollout.weight, evidence=None
    )
    return DecisionRun(STALE, rollout, policy, NONE, why, rollout.weight, rollout.state_version)


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
