"""Rollouts in the database: the state the decision function reads and the canary job moves forward."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import psycopg
from psycopg.rows import class_row

from cqox_platform.canary.decision import PROGRESSING, Decision, RolloutState
from cqox_platform.errors import CqoxError


class RolloutError(CqoxError):
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

    @property
    def state(self) -> RolloutState:
        return RolloutState(self.step_index, self.failures, self.consecutive_holds, self.status)


_SELECT = "SELECT * FROM canary_rollouts"


def new_rollout_id(service: str, now: datetime | None = None) -> str:
    return f"{service}-{(now or datetime.now(UTC)).strftime('%Y%m%dt%H%M%S')}"


def insert_rollout(
    conn: psycopg.Connection,
    rollout_id: str,
    service: str,
    image: str,
    previous_image: str | None,
    policy_version: int,
    weight: int,
) -> Rollout:
    try:
        conn.execute(
            "INSERT INTO canary_rollouts (rollout_id, service, image, previous_image, policy_version, weight, status) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s)",
            [rollout_id, service, image, previous_image, policy_version, weight, PROGRESSING],
        )
    except psycopg.errors.UniqueViolation:
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


def active_rollouts(conn: psycopg.Connection) -> list[Rollout]:
    with conn.cursor(row_factory=class_row(Rollout)) as cur:
        return cur.execute(f"{_SELECT} WHERE status = %s ORDER BY started_at", [PROGRESSING]).fetchall()


def all_rollouts(conn: psycopg.Connection, limit: int = 50) -> list[Rollout]:
    with conn.cursor(row_factory=class_row(Rollout)) as cur:
        return cur.execute(f"{_SELECT} ORDER BY started_at DESC LIMIT %s", [limit]).fetchall()


def record_decision(conn: psycopg.Connection, rollout_id: str, decision: Decision) -> None:
    s = decision.state
    conn.execute(
        "UPDATE canary_rollouts SET step_index = %s, weight = %s, failures = %s, consecutive_holds = %s, status = %s, "
        "updated_at = now(), last_decision_at = now(), last_decision = %s, last_reason = %s WHERE rollout_id = %s",
        [
            s.step_index,
            decision.weight_after,
            s.failures,
            s.consecutive_holds,
            s.status,
            decision.action,
            decision.reason,
            rollout_id,
        ],
    )
