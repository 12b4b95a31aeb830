"""Operator controls: abort, pause, resume, force-promote and approve a rollout.

Every action is a transition like a decision's and goes through the same guard: it locks the rollout's row (a
decision run holding it finishes first; the action then sees the state that run left), checks that the action
is allowed in the state it finds (``plan``, a pure function with a table test), changes the cluster, and writes
the new state with the compare-and-set on ``state_version`` that decisions use. Bumping the version makes any
decision run requested for the old state stale. There is no second path that could race a decision.

Every attempt leaves one ``audit_log`` row (``canary.<action>``: who, why, the state before and after; a refused
attempt too, with why it was refused) and one ``canary_decisions`` row when it changed something.

- ``pause``: progressing -> paused; the sensor skips the rollout with the reason, traffic stays where it is.
- ``resume``: paused -> progressing; the next analysis is one full interval after the resume.
- ``abort``: progressing or paused -> rolled_back, exactly as a failed analysis rolls back (stable 100 /
  canary 0, the canary Deployment back on its previous image, the rollback webhooks called).
- ``promote``: progressing, paused or promoting -> promoting -> promoted without further analysis (Flagger's
  skip-analysis; also how an operator finishes a promotion that failed midway, once its cause is fixed).
- ``approve``: lets the rollout go to the next step when that step has ``confirm: true`` (``gates.py``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from cqox_platform.canary.decision import PAUSED, PROGRESSING, PROMOTING, ROLLED_BACK
from cqox_platform.canary.promotion import PromotionResult
from cqox_platform.canary.rollout import ended, finish_promotion, roll_back
from cqox_platform.canary.store import (
    Rollout,
    RolloutError,
    get_rollout,
    lock_rollout,
    log_decision,
    record_state,
    rollout_policy,
)

ABORT, PAUSE, RESUME, PROMOTE, APPROVE = "abort", "pause", "resume", "promote", "approve"
ACTIONS = (ABORT, PAUSE, RESUME, PROMOTE, APPROVE)
#: Which statuses each action may start from, and the status it leaves (``None``: unchanged).
ALLOWED: dict[str, tuple[tuple[str, ...], str | None]] = {
    PAUSE: ((PROGRESSING,), PAUSED),
    RESUME: ((PAUSED,), PROGRESSING),
    ABORT: ((PROGRESSING, PAUSED), ROLLED_BACK),
    PROMOTE: ((PROGRESSING, PAUSED, PROMOTING), PROMOTING),
    APPROVE: ((PROGRESSING, PAUSED), None),
}
LOCK_TIMEOUT = "120s"


class OperatorError(RolloutError):
    """An operator action is not allowed in the rollout's state, or could not be applied; nothing changed."""


def plan(action: str, status: str) -> str:
    """The status ``action`` leaves a rollout in ``status`` at; ``OperatorError`` saying why when not allowed."""
    if action not in ALLOWED:
        raise OperatorError(f"unknown action {action!r}; one of {', '.join(ACTIONS)}.")
    sources, target = ALLOWED[action]
    if status not in sources:
        if status == PROMOTING and action == ABORT:
            why = (
                "it is promoting: the stable Deployment is being moved to the canary's version, so there is "
                "nothing left to roll back to; finish it with `canary promote`, or start a rollout of the old image"
            )
        else:
            why = f"it is {status} (allowed from {', '.join(sources)})"
        raise OperatorError(f"cannot {action} the rollout: {why}. Nothing was changed.")
    return target or status


@dataclass(frozen=True)
class OperatorResult:
    action: str
    rollout_id: str
    who: str
    reason: str
    before: dict[str, Any]
    after: dict[str, Any]
    message: str
    promotion: PromotionResult | None = None
    webhooks: tuple = ()


def snapshot(rollout: Rollout) -> dict[str, Any]:
    """The state an audit row records before and after."""
    return {
        "status": rollout.status,
        "step_index": rollout.step_index,
        "weight": rollout.weight,
        "state_version": rollout.state_version,
        "image": rollout.image,
        "approved_step": rollout.approved_step,
    }


def audit(conn: psycopg.Connection, who: str, action: str, rollout_id: str, details: dict[str, Any]) -> None:
    conn.execute(
        "INSERT INTO audit_log (user_id, action, resource, details) VALUES (%s, %s, %s, %s)",
        [who, f"canary.{action}", rollout_id, Jsonb(details)],
    )


def operate(
    conn: psycopg.Connection,
    kube: Any,
    rollout_id: str,
    action: str,
    *,
    who: str,
    reason: str,
    ready: str | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> OperatorResult:
    """Apply one operator action under the row lock with compare-and-set (see the module docstring)."""
    who, reason = who.strip(), reason.strip()
    if not who or not reason:
        raise OperatorError(f"{action} needs who does it and a reason (--reason TEXT); nothing was changed.")
    try:
        with conn.transaction():
            conn.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
            rollout = lock_rollout(conn, rollout_id)
            policy = rollout_policy(rollout)
            found = rollout
            target = plan(action, rollout.status)
            label = f"{action} by {who}: {reason}"
            promotion, hooks = None, ()
            if action in (PAUSE, RESUME):
                record_state(conn, rollout, f"operator_{action}", label, status=target)
            elif action == APPROVE:
                step = rollout.step_index + 1
                if step >= len(policy.steps):
                    raise OperatorError(
                        f"cannot approve: {rollout_id} is at its last step ({rollout.weight} %); nothing was changed."
                    )
                record_state(
                    conn,
                    rollout,
                    f"operator_{action}",
                    f"{label} (step {step}, {policy.steps[step]} %)",
                    approved_step=max(step, rollout.approved_step),
                    awaiting_approval_since=None,
                )
            elif action == ABORT:
                roll_back(kube, policy, rollout, reason=label)
                record_state(conn, rollout, f"operator_{action}", label, status=ROLLED_BACK, weight=0)
                hooks = ended(policy, rollout, f"operator_{action}", label, rolled_back=True)
            else:  # PROMOTE
                if rollout.status != PROMOTING:
                    record_state(conn, rollout, f"operator_{action}", label, status=PROMOTING)
                    rollout = get_rollout(conn, rollout_id)
                promotion, _ = finish_promotion(conn, kube, rollout, policy, ready=ready, sleep=sleep)
                hooks = promotion.webhooks
            after = get_rollout(conn, rollout_id)
            if action != PROMOTE:  # finish_promotion logs its own row
                log_decision(
                    conn,
                    rollout,
                    run_id=None,
                    outcome="applied",
                    action=f"operator_{action}",
                    reason=label,
                    weight_after=after.weight,
                    evidence=None,
                )
            message = f"{rollout_id}: {action} ({found.status} -> {after.status}, {found.weight} % -> {after.weight} %)"
            if promotion is not None:
                message += f"; {promotion.message}"
            result = OperatorResult(
                action, rollout_id, who, reason, snapshot(found), snapshot(after), message, promotion, hooks
            )
            audit(
                conn,
                who,
                action,
                rollout_id,
                {
                    "reason": reason,
                    "outcome": "applied",
                    "before": result.before,
                    "after": result.after,
                    "message": message,
                },
            )
            return result
    except psycopg.errors.LockNotAvailable:
        refused = f"another run held {rollout_id} for over {LOCK_TIMEOUT}; try again"
        _audit_refused(conn, who, action, rollout_id, reason, refused)
        raise OperatorError(f"cannot {action} {rollout_id}: {refused}. Nothing was changed.") from None
    except RolloutError as exc:
        _audit_refused(conn, who, action, rollout_id, reason, str(exc))
        raise


def _audit_refused(conn: psycopg.Connection, who: str, action: str, rollout_id: str, reason: str, why: str) -> None:
    with conn.transaction():
        try:
            state = snapshot(get_rollout(conn, rollout_id))
        except RolloutError:
            state = None
        audit(
            conn,
            who,
            action,
            rollout_id,
            {"reason": reason, "outcome": "refused", "refused": why, "before": state, "after": state},
        )
