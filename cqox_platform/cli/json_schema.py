"""The JSON Schemas of what ``--json`` prints, shipped in the package (``cli/schemas/<command>.schema.json``).

Scripts can validate against them, and the tests validate every command's output against them, so the schema a
reader holds and the output cannot drift apart unnoticed. A change a reader could trip over raises the
command's ``schema_version`` (the schema pins it with ``const``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cqox_platform.package_data import package_path


def schema_path(command: str) -> Path:
    """The schema file of ``command`` (``"backup-info"`` for ``backup info --json``)."""
    path = package_path("cqox_platform.cli", "schemas", f"{command}.schema.json")
    if not path.is_file():
        raise FileNotFoundError(f"no JSON Schema for {command!r} at {path}; is the package installed completely?")
    return path


def load_schema(command: str) -> dict[str, Any]:
    return json.loads(schema_path(command).read_text())
