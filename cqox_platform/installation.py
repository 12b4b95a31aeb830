"""Where this installation's ``cqox-platform`` executable is (light: used on the WAL archiving fast path)."""

from __future__ import annotations

import os
import sys
from pathlib import Path


def platform_cli() -> Path:
    """The ``cqox-platform`` executable beside the running interpreter (override: CQOX_PLATFORM_CLI)."""
    override = os.environ.get("CQOX_PLATFORM_CLI")
    return Path(override) if override else Path(sys.executable).parent / "cqox-platform"
