"""`cqox-platform ha status | switchover --to NODE | reinit NODE`: the Patroni cluster from the command line.

Switchover and reinit run the same code as ``ha_switchover_job`` and ``ha_reinit_job``
(``cqox_platform.ha.operations``): they wait until the cluster streams again and write an ``audit_log`` row
with the OS user as who, failures included.
"""

from __future__ import annotations

import getpass
import sys
from collections.abc import Iterable
from typing import Any

import click

import cqox_platform.cli.context as context
from cqox_platform.cli.json_output import echo_json, json_option
from cqox_platform.ha.patroni_client import ClusterState, PatroniClient, PatroniError

#: ``ha status --json``: raised when a reader could trip over a change.
STATUS_SCHEMA_VERSION = 1


@click.group("ha")
def ha() -> None:
    """The Patroni cluster of an HA stack: status, planned switchover, reinitialise a replica."""


def _missing(state: ClusterState, expected: Iterable[str], url_count: int) -> list[str]:
    """Members that should be registered and are not: by name, else a count against the REST URLs."""
    registered = {m.name for m in state.members}
    expected = list(expected)
    if expected:
        return sorted(set(expected) - registered)
    return [f"{url_count - len(registered)} unnamed"] if len(registered) < url_count else []


def _healthy(state: ClusterState, missing: list[str]) -> bool:
    running = all(m.state in ("running", "streaming") for m in state.members)
    return state.leader is not None and not missing and running


def cluster_json(client: PatroniClient, expected: Iterable[str] = ()) -> dict[str, Any]:
    """The Patroni cluster as ``ha status --json`` (and ``stack status --json``) show it; ``healthy`` is the
    verdict ``ha status`` exits 3 on. A cluster that does not answer is an ``error`` and not healthy."""
    try:
        state = client.cluster()
    except PatroniError as exc:
        return {"healthy": False, "error": str(exc), "leader": None, "timeline": None, "paused": None,
                "answered_by": None, "members": [], "missing": []}  # fmt: skip
    return state_json(state, expected, len(client.urls))


def state_json(state: ClusterState, expected: Iterable[str], url_count: int) -> dict[str, Any]:
    """``cluster_json`` of a cluster that answered (pure: what the tests validate against the schema)."""
    missing = _missing(state, expected, url_count)
    return {
        "healthy": _healthy(state, missing),
        "error": None,
        "leader": state.leader,
        "timeline": state.timeline,
        "paused": state.paused,
        "answered_by": state.answered_by,
        "members": [
            {
                "name": m.name,
                "role": m.role,
                "state": m.state,
                "timeline": m.timeline,
                "lag_bytes": m.lag,
                "host": m.host,
                "port": m.port,
            }
            for m in state.members
        ],
        "missing": missing,
    }


def print_cluster(client: PatroniClient, expected: Iterable[str] = ()) -> bool:
    """Leader, members, roles, states, timeline and lag as Patroni reports them. False when it is unhealthy.

    ``expected`` names the members that should be registered (a stopped Patroni's key expires, and the member
    would silently vanish from the list); without names, one member per REST URL is expected.
    """
    try:
        state = client.cluster()
    except PatroniError as exc:
        click.echo(click.style(f"\nPatroni cluster: {exc}", fg="red"))
        return False
    click.echo(f"\nPatroni cluster cqox-cluster (timeline {state.timeline or '?'}, answered by {state.answered_by})")
    click.echo(f"{'MEMBER':<10}{'ROLE':<15}{'STATE':<20}{'TL':<5}{'LAG BYTES':<11}ENDPOINT")
    for m in state.members:
        lag = "-" if m.is_leader else ("unknown" if m.lag is None else str(m.lag))
        color = "green" if m.state in ("running", "streaming") else "red"
        click.echo(
            f"{m.name:<10}{m.role:<15}{click.style(f'{m.state:<20}', fg=color)}{m.timeline or '-'!s:<5}"
            f"{lag:<11}{m.host}:{m.port}"
        )
    registered = {m.name for m in state.members}
    missing = _missing(state, expected, len(client.urls))
    if expected:
        for name in missing:
            click.echo(f"{name:<10}{'-':<15}" + click.style(f"{'not registered':<20}", fg="red"))
    elif missing:
        click.echo(click.style(f"only {len(registered)} of {len(client.urls)} members registered", fg="red"))
    return _healthy(state, missing)


@ha.command("status")
@json_option
def ha_status(as_json: bool) -> None:
    """Members with role, state, timeline and lag. Exit 3 when there is no leader or a member is not running."""
    if as_json:
        cluster = cluster_json(context.patroni())
        echo_json({"schema_version": STATUS_SCHEMA_VERSION, **cluster})
        healthy = cluster["healthy"]
    else:
        healthy = print_cluster(context.patroni())
    if not healthy:
        sys.exit(3)


def _run(operation, target: str, timeout: float) -> None:
    admin = context.postgres_admin()
    result = operation(
        context.patroni(),
        target,
        who=getpass.getuser(),
        via="cli",
        connect=lambda: admin.connect(autocommit=True),
        timeout=timeout,
        log=lambda message: click.echo(f"  {message}", err=True),
    )
    details = result.details
    click.echo(
        f"{result.action} {target}: {result.outcome} in {result.seconds} s "
        f"(timeline {details.get('timeline_before')} -> {details.get('timeline_after')}); recorded in audit_log"
    )


@ha.command("switchover")
@click.option("--to", "candidate", required=True, help="The replica to make the leader (e.g. node2).")
@click.option("--timeout", default=120.0, show_default=True, help="Seconds to wait for the cluster to stream.")
def ha_switchover(candidate: str, timeout: float) -> None:
    """Planned switchover to a replica; waits until the old leader streams from it, then audits it."""
    from cqox_platform.ha.operations import switchover

    _run(switchover, candidate, timeout)


@ha.command("reinit")
@click.argument("member")
@click.option("--timeout", default=300.0, show_default=True, help="Seconds to wait for it to stream again.")
def ha_reinit(member: str, timeout: float) -> None:
    """Wipe replica MEMBER and clone it again from the leader; waits until it streams, then audits it."""
    from cqox_platform.ha.operations import reinitialize

    _run(reinitialize, member, timeout)
