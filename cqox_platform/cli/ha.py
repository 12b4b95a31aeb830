"""`cqox-platform ha status | switchover --to NODE | reinit NODE`: the Patroni cluster from the command line.

Switchover and reinit run the same code as ``ha_switchover_job`` and ``ha_reinit_job``
(``cqox_platform.ha.operations``): they wait until the cluster streams again and write an ``audit_log`` row
with the OS user as who, failures included.
"""

from __future__ import annotations

import getpass
import sys
from collections.abc import Iterable

import click

import cqox_platform.cli.context as context
from cqox_platform.ha.patroni_client import PatroniClient, PatroniError


@click.group("ha")
def ha() -> None:
    """The Patroni cluster of an HA stack: status, planned switchover, reinitialise a replica."""


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
    missing = sorted(set(expected) - registered)
    for name in missing:
        click.echo(f"{name:<10}{'-':<15}" + click.style(f"{'not registered':<20}", fg="red"))
    if not expected and len(registered) < len(client.urls):
        missing = [f"{len(client.urls) - len(registered)} unnamed"]
        click.echo(click.style(f"only {len(registered)} of {len(client.urls)} members registered", fg="red"))
    running = all(m.state in ("running", "streaming") for m in state.members)
    return state.leader is not None and not missing and running


@ha.command("status")
def ha_status() -> None:
    """Members with role, state, timeline and lag. Exit 3 when there is no leader or a member is not running."""
    if not print_cluster(context.patroni()):
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
