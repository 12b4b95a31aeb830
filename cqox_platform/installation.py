"""Where this installation's ``cqox-platform`` executable is (what PostgreSQL's archive and restore run)."""

from __future__ import annotations

import sys
from pathlib import Path


def platform_cli() -> Path:
    """The ``cqox-platform`` executable beside the running interpreter (override: ``CQOX_PLATFORM_CLI``).

    The WAL archiving fast path does not call this (it uses the executable PostgreSQL ran), so loading the
    settings here costs nothing where start-up time matters.
    """
    from cqox_platform.settings import get_settings

    override = get_settings().platform_cli
    return Path(override) if override else Path(sys.executable).parent / "cqox-platform"
