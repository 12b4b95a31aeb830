"""``--json`` for every command that reads state: the option, and how the one JSON object is printed.

Kept to click and the standard library: ``cli.backup`` imports it, and ``wal-fetch`` imports ``cli.backup`` on
PostgreSQL's per-segment path. What ``--json`` prints is one object with a ``schema_version``, described by the
JSON Schema shipped as ``cli/schemas/<command>.schema.json`` (``cqox_platform.cli.json_schema``); human tables
stay the default. Exit codes do not depend on ``--json``: a verdict that fails exits 3 either way.
"""

from __future__ import annotations

import json
from datetime import date, datetime
from pathlib import Path
from typing import Any

import click

json_option = click.option(
    "--json", "as_json", is_flag=True, help="Print one JSON object (with a schema_version) instead of a table."
)


def _default(value: Any) -> Any:
    """The few non-JSON types the result objects hold: times as ISO 8601, paths as strings."""
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def echo_json(document: dict[str, Any]) -> None:
    """Print ``document`` as one indented JSON object on stdout (messages go to stderr, so it stays parseable)."""
    click.echo(json.dumps(document, indent=2, default=_default))
