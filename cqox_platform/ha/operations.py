"""Planned HA operations, shared by the Dagster jobs and the CLI: do it, wait until it shows, audit it.

Patroni answers a switchover as soon as the candidate holds the leader key and a reinitialisation as soon as it
has started, which is not when the cluster is protected again: the old leader still has to rewind, restart and
stream from the new one; a re-cloned replica has to catch up. So each operation waits for that, through the
leader's own view of its replication connections, and only then reports success.

Every attempt leaves one ``audit_log`` row (``ha.switchover`` / ``ha.reinit``), failures included, with who
asked (a Dagster run id or the OS user of the CLI), what was seen before and after, the seconds it took and the
outcome. The table is checked before anything is changed, so no operation runs that could not be audited.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from cqox_platform.errors import CqoxError, HaError
from cqox_platform.ha.cluster_checks import UP_STATES
from cqox_platform.ha.patroni_client import ClusterState, PatroniClient, PatroniError

Log = Callable[[str], None]
#: An autocommit connection to the CQOX database (``lambda: postgres_admin.connect(autocommit=True)``).
Connect = Callable[[], AbstractContextManager[psycopg.Connection]]

SWITCHOVER_TIMEOUT = 120.0
REINIT_TIMEOUT = 300.0
#: How long a reinit request is repeated while the member's Patroni is busy (starting a broken server).
BUSY_RETRY_SECONDS = 60.0
#: How long an audit write keeps retrying while the endpoint moves to the new leader.
AUDIT_RETRY_SECONDS = 30.0


class HaOperationError(HaError):
    """An HA operation failed, timed out or could not be audited; the message says which and what was seen."""


@dataclass(frozen=True)
class OperationResult:
    action: str
    target: str
    outcome: str
    seconds: float
    details: dict[str, Any]


def _quiet(_message: str) -> None:
    pass


# --- audit ---------------------------------------------------------------------------------------------------


def ensure_audit_table(connect: Connect) -> None:
    """Refuse to start an operation whose audit row could not be written."""
    try:
        with connect() as conn:
            exists = conn.execute("SELECT to_regclass('audit_log') IS NOT NULL").fetchone()[0]
    except psycopg.Error as exc:
        message = f"cannot reach the database to audit the operation; nothing was changed: {exc}"
        raise HaOperationError(message) from None
    if not exists:
        raise HaOperationError(
            "audit_log does not exist: materialize cqox_schema (the migrations) first; nothing was changed."
        )


def write_audit(
    connect: Connect,
    *,
    who: str,
    action: str,
    resource: str,
    details: dict[str, Any],
    retry_seconds: float = AUDIT_RETRY_SECONDS,
) -> None:
    """Insert one ``audit_log`` row, retrying while the endpoint still points at a demoted or restarting leader."""
    deadline = time.monotonic() + retry_seconds
    while True:
        try:
            with connect() as conn:
                conn.execute(
                    "INSERT INTO audit_log (user_id, action, resource, details) VALUES (%s, %s, %s, %s)",
                    (who, action, resource, Jsonb(details)),
                )
            return
        except (psycopg.OperationalError, psycopg.errors.ReadOnlySqlTransaction) as exc:
            if time.monotonic() >= deadline:
                raise HaOperationError(f"could not write the audit row for {action} {resource}: {exc}") from None
            time.sleep(1.0)


# --- observing the cluster -----------------------------------------------------------------------------------


def leader_replication(client: PatroniClient, state: ClusterState) -> dict[str, str]:
    """``application_name -> state`` of the leader's replication connections, as its Patroni reports them."""
    leaders = state.leaders
    if len(leaders) != 1:
        return {}
    status = client.node_status(leaders[0].api_url)
    return {str(r.get("application_name")): str(r.get("state")) for r in status.get("replication") or []}


def replica_caught_up(client: PatroniClient, state: ClusterState, name: str) -> tuple[bool, str]:
    """Whether ``name`` is an up replica on the leader's timeline and streaming from it, and what was seen."""
    member = state.member(name)
    if state.leader is None:
        return False, "no leader"
    if member is None:
        return False, f"{name} is not registered"
    if member.is_leader:
        return False, f"{name} is still the leader"
    streaming = leader_replication(client, state).get(name, "not connected")
    seen = (
        f"{name} {member.state} on timeline {member.timeline}, {streaming} from {state.leader} "
        f"(timeline {state.timeline})"
    )
    done = member.state in UP_STATES and member.timeline == state.timeline and streaming == "streaming"
    return done, seen


def wait_for(
    probe: Callable[[], tuple[bool, str]], *, what: str, timeout: float, poll: float = 1.0, log: Log = _quiet
) -> None:
    """Poll ``probe`` until it reports done; log each new observation; time out with the last one."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        try:
            done, seen = probe()
        except (PatroniError, ValueError) as exc:  # a node restarting answers nothing (or no JSON) for a moment
            done, seen = False, str(exc)
        if seen != last:
            log(f"waiting for {what}: {seen}")
            last = seen
        if done:
            return
        if time.monotonic() >= deadline:
            raise HaOperationError(f"timed out after {timeout:.0f} s waiting for {what}; last seen: {seen}")
        time.sleep(poll)


# --- the operations ------------------------------------------------------------------------------------------


def _audited(
    action: str,
    target: str,
    *,
    who: str,
    via: str,
    connect: Connect,
    body: Callable[[dict[str, Any]], None],
) -> OperationResult:
    """Run ``body`` (which fills in the details) and audit the attempt whatever happens."""
    ensure_audit_table(connect)
    details: dict[str, Any] = {"via": via}
    started = time.monotonic()
    try:
        body(details)
    except Exception as exc:
        details.update(outcome="failed", error=str(exc), seconds=round(time.monotonic() - started, 2))
        try:
            write_audit(connect, who=who, action=action, resource=target, details=details)
        except HaOperationError as audit_error:
            raise HaOperationError(f"{action} {target} failed: {exc} (and {audit_error})") from None
        if isinstance(exc, CqoxError):
            raise HaOperationError(f"{action} {target} failed: {exc}") from None
        raise
    details.update(outcome="succeeded", seconds=round(time.monotonic() - started, 2))
    write_audit(connect, who=who, action=action, resource=target, details=details)
    return OperationResult(action, target, "succeeded", details["seconds"], details)


def switchover(
    client: PatroniClient,
    candidate: str,
    *,
    who: str,
    via: str,
    connect: Connect,
    timeout: float = SWITCHOVER_TIMEOUT,
    poll: float = 1.0,
    log: Log = _quiet,
) -> OperationResult:
    """Make ``candidate`` the leader; done when the old leader streams from it on the new timeline."""

    def body(details: dict[str, Any]) -> None:
        state = client.cluster()
        old = state.leader
        details.update({"from": old, "to": candidate, "timeline_before": state.timeline})
        log(f"switchover {old} -> {candidate} (timeline {state.timeline})")
        details["patroni"] = client.switchover(candidate)
        log(f"Patroni: {details['patroni']}")
        assert old is not None  # client.switchover refuses a cluster without a leader

        def probe() -> tuple[bool, str]:
            now = client.cluster()
            if now.leader != candidate:
                return False, f"leader is {now.leader or 'nobody'}"
            return replica_caught_up(client, now, old)

        wait_for(probe, what=f"{candidate} to lead and {old} to stream from it", timeout=timeout, poll=poll, log=log)
        details["timeline_after"] = client.cluster().timeline
        log(f"{candidate} leads timeline {details['timeline_after']}; {old} streams from it")

    return _audited("ha.switchover", candidate, who=who, via=via, connect=connect, body=body)


def _checkpoint_leader(connect: Connect, log: Log) -> None:
    """A CHECKPOINT on the leader first, so the clone's own checkpoint has almost nothing left to write.

    Patroni clones with pg_basebackup, which starts with a spread checkpoint: paced to finish within
    ``checkpoint_completion_target`` of ``checkpoint_timeout``, about 100 ms per dirty buffer, so minutes
    after a busy spell. An explicit CHECKPOINT runs at full speed. It is only a speed-up: failing it is logged.
    """
    try:
        with connect() as conn:
            conn.execute("CHECKPOINT")
        log("checkpoint on the leader done (the clone's checkpoint will be quick)")
    except psycopg.Error as exc:
        log(f"checkpoint on the leader failed, the clone waits for a spread checkpoint: {exc}")


def _request_reinit(client: PatroniClient, member: str, *, timeout: float, log: Log) -> str:
    """POST /reinitialize, again while the member's Patroni is busy with its own action.

    A member that cannot start keeps Patroni trying to start it; while an attempt runs, its REST API may answer
    late (a timeout here) or "<action> already in progress". If an earlier, timed-out request of ours went
    through after all, Patroni says "reinitialize already in progress", which is what was asked for.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            return client.reinitialize(member)
        except PatroniError as exc:
            text = str(exc)
            if "reinitialize already in progress" in text:
                return text
            busy = "already in progress" in text or "unreachable" in text
            if not busy or time.monotonic() >= deadline:
                raise
            log(f"Patroni is busy, asking again: {text}")
            time.sleep(2.0)


def reinitialize(
    client: PatroniClient,
    member: str,
    *,
    who: str,
    via: str,
    connect: Connect,
    timeout: float = REINIT_TIMEOUT,
    poll: float = 1.0,
    log: Log = _quiet,
) -> OperationResult:
    """Re-clone replica ``member`` from the leader; done when a new postmaster of it streams again."""

    def body(details: dict[str, Any]) -> None:
        state = client.cluster()
        target = state.member(member)
        details.update(
            {
                "member": member,
                "leader": state.leader,
                "state_before": target.state if target else None,
                "timeline_before": target.timeline if target else None,
            }
        )
        started_before = None
        if target is not None:
            with contextlib.suppress(PatroniError):  # a broken node may not say
                started_before = client.node_status(target.api_url).get("postmaster_start_time")
        _checkpoint_leader(connect, log)
        log(f"reinitialising {member} ({details['state_before']}) from {state.leader}")
        details["patroni"] = _request_reinit(client, member, timeout=min(timeout, BUSY_RETRY_SECONDS), log=log)
        log(f"Patroni: {details['patroni']}")
        assert target is not None  # client.reinitialize refuses a non-member

        def probe() -> tuple[bool, str]:
            now = client.cluster()
            started = client.node_status(target.api_url).get("postmaster_start_time")
            if started is None or started == started_before:
                current = now.member(member)
                return False, f"{member} is {current.state if current else 'not registered'} (no new postmaster yet)"
            return replica_caught_up(client, now, member)

        wait_for(probe, what=f"{member} to stream again after re-cloning", timeout=timeout, poll=poll, log=log)
        after = client.cluster()
        details["timeline_after"] = after.member(member).timeline if after.member(member) else None
        log(f"{member} re-cloned and streaming from {after.leader} on timeline {details['timeline_after']}")

    return _audited("ha.reinit", member, who=who, via=via, connect=connect, body=body)
