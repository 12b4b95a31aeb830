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

A completed analysis does not end the rollout: it becomes ``promoting`` (compare-and-set) and the same run
promotes the canary to stable (``canary/promotion.py``), then records ``promoted`` (compare-and-set again). A
promotion that fails midway is recorded as such, with traffic on a version known to be good; the rollout stays
``promoting`` and the next decision run (the sensor keeps requesting them) runs the idempotent phases again
instead of an analysis.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime

import psycopg

from cqox_platform.canary.analysis import Query, collect_evidence, gather_evidence
from cqox_platform.canary.decision import (
    COMPLETE,
    NONE,
    PROGRESSING,
    PROMOTE,
    PROMOTED,
    PROMOTING,
    ROLLBACK,
    Decision,
    Evidence,
    RolloutState,
    decide,
)
from cqox_platform.canary.gates import gate
from cqox_platform.canary.policy import POST_ROLLOUT, PRE_ROLLOUT, PRE_STEP, ROLLBACK_HOOK, CanaryPolicy
from cqox_platform.canary.promotion import (
    TRAFFIC_ON_STABLE,
    PromotionResult,
    follow_stable,
    promote_to_stable,
    restore_canary_replicas,
)
from cqox_platform.canary.router import KubeClient, WeightChange, set_canary_image, shift_weights
from cqox_platform.canary.store import (
    Rollout,
    RolloutError,
    get_rollout,
    insert_rollout,
    lock_rollout,
    log_decision,
    new_rollout_id,
    record_decision,
    record_state,
    rollout_policy,
)
from cqox_platform.canary.transition import stale_reason
from cqox_platform.canary.webhooks import WebhookResult, after_pre_step, run_hooks
from cqox_platform.settings import get_settings

APPLIED, STALE = "applied", "stale"
PROMOTE_TO_STABLE = "promote_to_stable"  # the action recorded for a promotion's phases
#: How long a decision run waits for another one holding the same rollout (its Prometheus queries and
#: Kubernetes writes take seconds); past it the run is stale rather than queued behind a stuck one.
LOCK_TIMEOUT = "120s"


def start_rollout(
    conn: psycopg.Connection, kube: KubeClient, policy: CanaryPolicy, image: str
) -> tuple[Rollout, WeightChange]:
    """Set the canary's image and the first step's weight, and record the rollout with its policy."""
    rollout_id = new_rollout_id(policy.service)
    payload = {
        "rollout": rollout_id,
        "service": policy.service,
        "image": image,
        "step_index": 0,
        "weight": policy.steps[0],
        "decision": "start",
        "reason": "canary start",
    }
    failed = [r for r in run_hooks(policy.webhooks, PRE_ROLLOUT, payload) if not r.ok]
    if failed:
        raise RolloutError(
            f"not starting {policy.service} with {image}: {'; '.join(r.line() for r in failed)}. Nothing was changed."
        )
    with conn.transaction():
        # Insert first (inside the transaction) so a second concurrent start fails before touching the cluster.
        rollout = insert_rollout(conn, rollout_id, policy.service, image, None, policy, policy.steps[0])
        # The last promotion scaled the canary to 0: give it back its replicas before it gets traffic.
        restore_canary_replicas(kube, policy.kubernetes, policy.promotion.canary_hpa if policy.promotion else "")
        follow_stable(kube, policy, policy.steps[0])
        previous = set_canary_image(kube, policy.kubernetes, image)
        change = shift_weights(kube, policy.kubernetes, policy.steps[0])
        conn.execute("UPDATE canary_rollouts SET previous_image = %s WHERE rollout_id = %s", [previous, rollout_id])
    return get_rollout(conn, rollout.rollout_id), change


def roll_back(kube: KubeClient, policy: CanaryPolicy, rollout: Rollout, *, reason: str) -> WeightChange:
    """Stable 100 / canary 0, and the canary Deployment back on the image it had: a failed analysis and an
    operator's abort alike. The rollback and post-rollout webhooks run afterwards (``ended``), never before:
    a failing webhook must not block a rollback."""
    change = shift_weights(kube, policy.kubernetes, 0)
    if rollout.previous_image:
        set_canary_image(kube, policy.kubernetes, rollout.previous_image)
    return change


def hook_payload(rollout: Rollout, action: str, reason: str, weight: int, step_index: int | None = None) -> dict:
    """What every webhook receives: the rollout, the step and the decision."""
    return {
        "rollout": rollout.rollout_id,
        "service": rollout.service,
        "image": rollout.image,
        "step_index": rollout.step_index if step_index is None else step_index,
        "weight": weight,
        "decision": action,
        "reason": reason,
    }


def ended(policy: CanaryPolicy, rollout: Rollout, action: str, reason: str, *, rolled_back: bool) -> tuple:
    """The webhooks of a rollout that just ended (rollback ones first when it rolled back); results only."""
    payload = hook_payload(rollout, action, reason, 0)
    results = run_hooks(policy.webhooks, ROLLBACK_HOOK, payload) if rolled_back else ()
    return (*results, *run_hooks(policy.webhooks, POST_ROLLOUT, payload))


def apply_decision(
    conn: psycopg.Connection,
    kube: KubeClient,
    policy: CanaryPolicy,
    rollout: Rollout,
    decision: Decision,
    **changes: object,
) -> tuple[WeightChange | None, int]:
    """Change the cluster as the decision says, then record it (compare-and-set, ``changes`` on top of the
    decision's state); the new state version."""
    change = None
    if decision.action == ROLLBACK:
        change = roll_back(kube, policy, rollout, reason=decision.reason)
    elif decision.action in (PROMOTE, COMPLETE):
        # Pods first, then traffic: the canary has its share of replicas before it gets its share of requests.
        follow_stable(kube, policy, decision.weight_after)
        change = shift_weights(kube, policy.kubernetes, decision.weight_after)
    version = rollout.state_version
    if decision.action != NONE:
        version = record_decision(conn, rollout, decision, **changes)
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
    status_after: str = ""
    promotion: PromotionResult | None = None
    webhooks: tuple[WebhookResult, ...] = ()


def finish_promotion(
    conn: psycopg.Connection,
    kube: KubeClient,
    rollout: Rollout,
    policy: CanaryPolicy,
    *,
    ready: str | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> tuple[PromotionResult, Rollout]:
    """Promote a locked ``promoting`` rollout to stable and record the outcome (compare-and-set): ``promoted``
    with the canary at 0 %, or still ``promoting`` with the phase reached and where the traffic is."""
    result = promote_to_stable(
        kube, policy, ready or get_settings().canary_stable_ready, canary_weight=rollout.weight, sleep=sleep
    )
    if result.ok:
        hooks = ended(policy, rollout, PROMOTED, result.message, rolled_back=False)
        if hooks:
            result = replace(result, webhooks=hooks)
    on_stable = any(p.name == TRAFFIC_ON_STABLE for p in result.phases)
    status = PROMOTED if result.ok else PROMOTING
    record_state(
        conn,
        rollout,
        PROMOTE_TO_STABLE,
        result.message,
        status=status,
        weight=0 if on_stable else rollout.weight,
        promotion_phase=result.last_phase,
    )
    after = get_rollout(conn, rollout.rollout_id)
    log_decision(
        conn,
        rollout,
        run_id=None,
        outcome=APPLIED,
        action=PROMOTE_TO_STABLE,
        reason=result.message,
        weight_after=after.weight,
        evidence=None,
    )
    return result, after


def run_decision(
    conn: psycopg.Connection,
    kube: KubeClient,
    query: Query,
    rollout_id: str,
    requested_version: int,
    *,
    run_id: str | None = None,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ready: str | None = None,
    sleep: Callable[[float], None] = time.sleep,
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
            if rollout.status == PROMOTING:  # a promotion that failed midway: run its phases again
                result, after = finish_promotion(conn, kube, rollout, policy, ready=ready, sleep=sleep)
                return DecisionRun(
                    APPLIED,
                    rollout,
                    policy,
                    PROMOTE_TO_STABLE,
                    result.message,
                    after.weight,
                    after.state_version,
                    status_after=after.status,
                    promotion=result,
                    webhooks=result.webhooks,
                )
            evidence = collect_evidence(policy, query)
            decision = decide(policy, rollout.state, evidence)
            gated = gate(policy, rollout.state, decision, rollout.approved_step, rollout.awaiting_approval_since, now())
            decision, hooks = gated.decision, ()
            if decision.action == PROMOTE:
                payload = hook_payload(
                    rollout, decision.action, decision.reason, decision.weight_after, decision.state.step_index
                )
                hooks = run_hooks(policy.webhooks, PRE_STEP, payload)
                decision = after_pre_step(policy.webhooks, rollout.state, decision, hooks)
            promoting = decision.action == COMPLETE and policy.promotion is not None
            changes: dict[str, object] = {"awaiting_approval_since": gated.awaiting_since}
            if promoting:
                changes["status"] = PROMOTING
            change, version = apply_decision(conn, kube, policy, rollout, decision, **changes)
            if decision.action == ROLLBACK:
                hooks = (*hooks, *ended(policy, rollout, decision.action, decision.reason, rolled_back=True))
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
            run = DecisionRun(
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
                status_after=decision.state.status,
                webhooks=hooks,
            )
            if not promoting:
                return run
            result, after = finish_promotion(
                conn, kube, get_rollout(conn, rollout_id), policy, ready=ready, sleep=sleep
            )
            return replace(
                run,
                reason=f"{decision.reason}; {result.message}",
                weight_after=after.weight,
                state_version_after=after.state_version,
                status_after=after.status,
                promotion=result,
                webhooks=(*run.webhooks, *result.webhooks),
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
    return DecisionRun(
        STALE, rollout, policy, NONE, why, rollout.weight, rollout.state_version, status_after=rollout.status
    )


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
