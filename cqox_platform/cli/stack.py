"""`cqox-platform stack up | down | status | env`: the local stack of real services."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from cqox_platform.cli.group import ErrorGroup
from cqox_platform.cli.json_output import echo_json, json_option

#: ``stack status --json``: raised when a reader could trip over a change.
STATUS_SCHEMA_VERSION = 1

# Without --dir the stack reads CQOX_STACK_DIR itself (``StackConfig.load``), default .cqox.
_dir_option = click.option(
    "--dir",
    "stack_dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Stack directory (default .cqox, env CQOX_STACK_DIR).",
)


@click.group("stack", cls=ErrorGroup)
def stack() -> None:
    """Start, inspect and stop the local stack of real services."""


@stack.command("up")
@_dir_option
@click.option("--port-base", type=int, default=None, help="Use consecutive ports from this one (new stacks).")
@click.option("--no-dagster", is_flag=True, help="Do not start the Dagster webserver and daemon.")
@click.option("--traffic", is_flag=True, help="Also run the synthetic CQOx traffic exporter (stable, canary).")
@click.option("--ha", is_flag=True, help="New stacks: etcd and three Patroni nodes behind HAProxy, not one node.")
@click.option("--sync", "ha_sync", is_flag=True, help="With --ha: Patroni synchronous mode (no loss on failover).")
@click.option(
    "--kube-node",
    is_flag=True,
    help="Also run a Kubernetes node (containerd, kubelet, kube-scheduler; ./scripts/build-node.sh first) so pods run.",
)
def stack_up(
    stack_dir: Path | None,
    port_base: int | None,
    no_dagster: bool,
    traffic: bool,
    ha: bool,
    ha_sync: bool,
    kube_node: bool,
) -> None:
    """Start every service (a no-op for those already running) and wait until each is healthy."""
    from cqox_platform.stack import Stack

    if ha_sync and not ha:
        raise click.UsageError("--sync is a mode of the HA cluster: use it with --ha.")
    st = Stack.from_dir(
        stack_dir,
        port_base=port_base,
        with_dagster=False if no_dagster else None,
        with_traffic=traffic or None,
        ha=ha or None,
        ha_sync=ha_sync or None,
        with_kube_node=kube_node or None,
    )
    statuses = st.up(progress=lambda msg: click.echo(f"  {msg}", err=True))
    _print_status(statuses)
    _print_ha(st)


@stack.command("down")
@_dir_option
def stack_down(stack_dir: Path | None) -> None:
    """Stop every service of the stack by its PID; data stays for the next `up`."""
    from cqox_platform.stack import Stack

    Stack.from_dir(stack_dir).down(progress=lambda msg: click.echo(f"  {msg}", err=True))
    click.echo("stack stopped")


@stack.command("status")
@_dir_option
@json_option
def stack_status(stack_dir: Path | None, as_json: bool) -> None:
    """What runs, on which port, with which PID. Exit 3 when something is not running and healthy."""
    from cqox_platform.stack import Stack

    st = Stack.from_dir(stack_dir)
    statuses = st.status()
    if as_json:
        report = status_json(statuses, _ha_json(st))
        echo_json(report)
        if not report["healthy"]:
            sys.exit(3)
        return
    _print_status(statuses)
    healthy_cluster = _print_ha(st)
    if any(s.state != "running" for s in statuses) or not healthy_cluster:
        sys.exit(3)


@stack.command("env")
@_dir_option
def stack_env(stack_dir: Path | None) -> None:
    """Print `export` lines for the resources and clients: `eval "$(cqox-platform stack env)"`."""
    from cqox_platform.stack import Stack

    click.echo(Stack.from_dir(stack_dir).env_script(), nl=False)


def status_json(statuses, ha: dict[str, Any] | None) -> dict[str, Any]:
    """What ``stack status --json`` prints; ``healthy`` is the verdict the command exits 3 on (as without
    ``--json``): every service running, and on an HA stack a healthy Patroni cluster. ``ha`` is null without HA."""
    services = [
        {"name": s.name, "state": s.state, "port": s.port, "pid": s.pid, "url": s.url, "log": str(s.log)}
        for s in statuses
    ]
    healthy = all(s["state"] == "running" for s in services) and (ha is None or ha["cluster"]["healthy"])
    return {"schema_version": STATUS_SCHEMA_VERSION, "healthy": healthy, "services": services, "ha": ha}


def _ha_json(st) -> dict[str, Any] | None:
    """The Patroni cluster and HAProxy's routing of an HA stack (what `_print_ha` prints), None without HA."""
    if not st.config.ha:
        return None
    from cqox_platform.cli.ha import cluster_json

    cluster = st.service("patroni")
    ha: dict[str, Any] = {
        "cluster": cluster_json(cluster.client(), expected=[node.name for node in cluster.nodes]),
        "haproxy": None,
        "haproxy_error": None,
    }
    try:
        backends = st.service("postgres").backends()
    except Exception as exc:  # HAProxy down: the service list already says so
        ha["haproxy_error"] = type(exc).__name__
        return ha
    ha["haproxy"] = {
        listener: [
            name.split("/", 1)[1]
            for name, state in sorted(backends.items())
            if name.startswith(f"{listener}/") and state == "UP"
        ]
        for listener in ("postgres_primary", "postgres_replicas")
    }
    return ha


def _print_status(statuses) -> None:
    click.echo(f"{'SERVICE':<25}{'STATE':<11}{'PORT':<7}{'PID':<9}{'URL':<48}LOG")
    for s in statuses:
        color = {"running": "green", "unhealthy": "yellow"}.get(s.state, "red")
        state = click.style(f"{s.state:<11}", fg=color)
        click.echo(f"{s.name:<25}{state}{s.port or '-'!s:<7}{s.pid or '-'!s:<9}{s.url:<48}{s.log}")


def _print_ha(st) -> bool:
    """The Patroni cluster of an HA stack (see `ha status`). False when it is unhealthy."""
    if not st.config.ha:
        return True
    from cqox_platform.cli.ha import print_cluster

    cluster = st.service("patroni")
    healthy = print_cluster(cluster.client(), expected=[node.name for node in cluster.nodes])
    try:
        backends = st.service("postgres").backends()
    except Exception as exc:  # HAProxy down: the service table above already says so
        click.echo(f"HAProxy routing unknown: {type(exc).__name__}")
        return healthy
    for listener in ("postgres_primary", "postgres_replicas"):
        up = [
            name.split("/", 1)[1]
            for name, state in sorted(backends.items())
            if name.startswith(f"{listener}/") and state == "UP"
        ]
        click.echo(f"HAProxy {listener}: {', '.join(up) or click.style('no server UP', fg='red')}")
    return healthy
