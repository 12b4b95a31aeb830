"""Rollouts in the database: the state the decision function reads and the canary job moves forward.

Each rollout row carries the policy it started with and a ``state_version`` that every recorded decision bumps;
``lock_rollout`` takes the row lock a decision run holds while it decides and applies, ``record_decision`` is a
compare-and-set on that version, and ``canary_decisions`` keeps every run's outcome, applied or stale.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import class_row
from psycopg.types.json import Jsonb

from cqox_platform.canary.decision import ACTIVE, PROGRESSING, Decision, Evidence, RolloutState
from cqox_platform.canary.policy import CanaryPolicy, PolicyError, parse_policy, policy_dir, policy_document, policy_for
from cqox_platform.canary.transition import LockedState
from cqox_platform.errors import CanaryError


class RolloutError(CanaryError):
    """A rollout cannot be started or changed."""


@dataclass
class Rollout:
    rollout_id: str
    service: str
    image: str
    previous_image: str | None
    policy_version: int
    step_index: int
    weight: int
    failures: int
    consecutive_holds: int
    status: str
    started_at: datetime
    updated_at: datetime
    last_decision_at: datetime | None
    last_decision: str | None
    last_reason: str | None
    state_version: int = 0
    policy: dict[str, Any] | None = None
    promotion_phase: str | None = None
    approved_step: int = -1
    awaiting_approval_since: datetime | None = None

    @property
    def state(self) -> RolloutState:
        return RolloutState(self.step_index, self.failures, self.consecutive_holds, self.status)

    @property
    def locked_state(self) -> LockedState:
        return LockedState(self.state_version, self.status, self.last_decision_at or self.started_at)


class StaleDecisionError(RolloutError):
    """The rollout moved on between the row lock and the write (should not happen under the lock)."""


def rollout_policy(rollout: Rollout) -> CanaryPolicy:
    """The policy the rollout started with; for a rollout from before policies were stored, the policy file
    only if it still has the version the rollout started with."""
    if rollout.policy is not None:
        source = rollout.policy.get("source") or "policy"
        return parse_policy(rollout.policy, where=f"{source} (stored with {rollout.rollout_id})")
    policy = policy_for(rollout.service)
    if policy.version != rollout.policy_version:
        raise PolicyError(
            f"{rollout.rollout_id} started with policy v{rollout.policy_version} (not stored), {policy_dir()} has "
            f"v{policy.version}: not deciding with a different policy; roll the rollout back and start it again."
        )
    return policy


_SELECT = "SELECT * FROM canary_rollouts"


def new_rollout_id(service: str, now: datetime | None = None) -> str:
    """``<service>-<UTC time to the millisecond>``: a rollback and a new start within one second get two ids."""
    now = now or datetime.now(UTC)
    return f"{service}-{now:%Y%m%dt%H%M%S}{now.microsecond // 1000:03d}"


def insert_rollout(
    conn: psycopg.Connection,
    rollout_id: str,
    service: str,
    image: str,
    previous_image: str | None,
    policy: CanaryPolicy,
    weight: int,
) -> Rollout:
    try:
        conn.execute(
            "INSERT INTO canary_rollouts "
            "(rollout_id, service, image, previous_image, policy_version, policy, weight, status) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
            [
                rollout_id,
                service,
                image,
                previous_image,
                policy.version,
                Jsonb(policy_document(policy)),
                weight,
                PROGRESSING,
            ],
        )
    except psycopg.errors.UniqueViolation as exc:
        if exc.diag.constraint_name != "idx_canary_one_active":
            raise RolloutError(f"a rollout {rollout_id!r} exists already; start again.") from None
        raise RolloutError(
            f"{service} already has a rollout in progress (`cqox-platform canary status`); "
            "finish or roll it back first."
        ) from None
    return get_rollout(conn, rollout_id)


def get_rollout(conn: psycopg.Connection, rollout_id: str) -> Rollout:
    with conn.cursor(row_factory=class_row(Rollout)) as cur:
        row = cur.execute(f"{_SELECT} WHERE rollout_id = %s", [rollout_id]).fetchone()
    if row is None:
        raise RolloutError(f"no rollout {rollout_id!r}.")
    return row


def lock_rollout(conn: psycopg.Connection, rollout_id: str) -> Rollout:
    """The rollout's row, locked until the caller's transaction ends: one decision at a time per rollout."""
    with conn.cursor(row_factory=class_row(Rollout)) as cur:
        row = cur.execute(f"{_SELECT} WHERE rollout_id = %s FOR UPDATE", [rollout_id]).fetchone()
    if row is None:
        raise RolloutError(f"no rollout {rollout_id!r}.")
    return row


def active_rollouts(conn: psycopg.Connection) -> list[Rollout]:
    """Rollouts that still own their service: progressing, promoting (a promotion to finish) or paused."""
    with conn.cursor(row_factory=class_row(Rollout)) as cur:
        return cur.execute(f"{_SELECT} WHERE status = ANY(%s) ORDER BY started_at", [list(ACTIVE)]).fetchall()


def all_rollouts(conn: psycopg.Connection, limit: int = 50) -> list[Rollout]:
    with conn.cursor(row_factory=class_row(Rollout)) as cur:
        return cur.execute(f"{_SELECT} ORDER BY started_at DESC LIMIT %s", [limit]).fetchall()


def rollouts_overlapping(conn: psycopg.Connection, start: datetime, end: datetime) -> list[Rollout]:
    """Rollouts whose window (``started_at`` to their last change, or still open while active) overlaps
    ``[start, end)``, oldest first."""
    with conn.cursor(row_factory=class_row(Rollout)) as cur:
        return cur.execute(
            f"{_SELECT} WHERE started_at < %s AND (status = ANY(%s) OR updated_at > %s) ORDER BY started_at",
            [end, list(ACTIVE), start],
        ).fetchall()


#: Columns a transition may set (``record_state``); identifiers never come from anywhere else.
STATE_COLUMNS = frozenset(
    {
        "step_index",
        "weight",
        "failures",
        "consecutive_holds",
        "status",
        "promotion_phase",
        "approved_step",
        "awaiting_approval_since",
    }
)


def record_state(conn: psycopg.Connection, rollout: Rollout, action: str, reason: str, **changes: Any) -> int:
    """Every transition's write (decisions and operators alike): set ``changes`` if the rollout is still at
    ``rollout.state_version`` (compare-and-set, under the row lock the caller holds); the new version."""
    unknown = set(changes) - STATE_COLUMNS
    if unknown:
        raise ValueError(f"not a rollout state column: {sorted(unknown)}")
    assignments = [sql.SQL("{} = %s").format(sql.Identifier(c)) for c in changes]
    query = sql.SQL(
        "UPDATE canary_rollouts SET {}updated_at = now(), last_decision_at = now(), last_decision = %s, "
        "last_reason = %s, state_version = state_version + 1 WHERE rollout_id = %s AND state_version = %s "
        "RETURNING state_version"
    ).format(sql.SQL("").join(sql.SQL("{}, ").format(a) for a in assignments))
    row = conn.execute(query, [*changes.values(), action, reason, rollout.rollout_id, rollout.state_version]).fetchone()
    if row is None:
        raise StaleDecisionError(
            f"{rollout.rollout_id} moved past state version {rollout.state_version} while a decision held its lock."
        )
    return row[0]


def record_decision(conn: psycopg.Connection, rollout: Rollout, decision: Decision, **changes: Any) -> int:
    """Write the decision's new state (``changes`` override or add columns); the new version."""
    s = decision.state
    columns = {
        "step_index": s.step_index,
        "weight": decision.weight_after,
        "failures": s.failures,
        "consecutive_holds": s.consecutive_holds,
        "status": s.status,
        **changes,
    }
    return record_state(conn, rollout, decision.action, decision.reason, **columns)


def log_decision(
    conn: psycopg.Connection,
    rollout: Rollout,
    *,
    run_id: str | None,
    outcome: str,
    action: str,
    reason: str,
    weight_after: int,
    evidence: Evidence | None,
) -> None:
    """One row of ``canary_decisions``: what a decision run did with the rollout, applied or stale."""
    conn.execute(
        "INSERT INTO canary_decisions (rollout_id, run_id, state_version, step_index, action, outcome, reason, "
        "weight_before, weight_after, evidence) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
        [
            rollout.rollout_id,
            run_id,
            rollout.state_version,
            rollout.step_index,
            action,
            outcome,
            reason,
            rollout.weight,
            weight_after,
            Jsonb(asdict(evidence)) if evidence is not None else None,
        ],
    )
