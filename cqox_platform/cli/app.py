"""The ``cqox-platform`` click group: assembles one group or command per module.

The command modules never import this one back, so there is no import cycle.
"""

from __future__ import annotations

import click

from cqox_platform.cli import alerts, backup, canary, dashboards, datasets, encryption, ha, slo, stack
from cqox_platform.cli.group import ErrorGroup


@click.group(cls=ErrorGroup)
# The installed distribution's version (importlib.metadata), so a host or an image says which release it runs.
@click.version_option(package_name="cqox-platform", prog_name="cqox-platform", message="%(prog)s %(version)s")
def main() -> None:
    """Reliability platform for CQOx: local stack, encryption, datasets, SLOs, alerts."""


for _command in (
    stack.stack,
    encryption.encrypt_cmd,
    encryption.decrypt_cmd,
    datasets.datasets,
    slo.slo,
    backup.wal_push,
    backup.wal_push_daemon,
    backup.wal_fetch,
    backup.wal_prefetch_daemon,
    backup.backup,
    backup.restore,
    canary.canary,
    ha.ha,
    alerts.alerts,
    dashboards.dashboards,
):
    main.add_command(_command)

__all__ = ["main"]
