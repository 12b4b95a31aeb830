"""Shell completion of the ids people otherwise copy from another command's output: backup and rollout ids.

They are read from the tables the platform keeps in PostgreSQL (``backups``, ``canary_rollouts``), with a
2-second connect timeout and nothing at all on any error: a completion runs on every Tab, so it must never hang
the shell or print a traceback into it, and offering no id is better than offering a wrong one.
"""

from __future__ import annotations

from typing import Any

import click
from click.shell_completion import CompletionItem


def _like_prefix(incomplete: str) -> str:
    """``incomplete`` as a LIKE prefix, its own ``%``, ``_`` and backslashes taken literally."""
    return incomplete.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def _rows(sql: str, incomplete: str) -> list[tuple[Any, ...]]:
    try:
        import psycopg

        from cqox_platform.cli import context

        conninfo = {**context.postgres_admin().conninfo(), "connect_timeout": 2}
        with psycopg.connect(**conninfo) as conn:
            return conn.execute(sql, (_like_prefix(incomplete),)).fetchall()
    except Exception:  # see the module docstring: a completion offers nothing rather than fail
        return []


def backup_ids(_ctx: click.Context, _param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """Backups not deleted by retention, newest first, with when each ended."""
    rows = _rows(
        "SELECT backup_id, stop_time FROM backups WHERE deleted_at IS NULL AND backup_id LIKE %s "
        "ORDER BY backup_id DESC LIMIT 100",
        incomplete,
    )
    return [CompletionItem(backup_id, help=f"ended {stop:%Y-%m-%d %H:%M %Z}") for backup_id, stop in rows]


def rollout_ids(_ctx: click.Context, _param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """Rollouts, newest first, with their service and status."""
    rows = _rows(
        "SELECT rollout_id, service, status FROM canary_rollouts WHERE rollout_id LIKE %s "
        "ORDER BY started_at DESC LIMIT 100",
        incomplete,
    )
    return [CompletionItem(rollout_id, help=f"{service}, {status}") for rollout_id, service, status in rows]
