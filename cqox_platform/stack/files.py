"""Small file helpers for the stack's local-only secrets."""

from __future__ import annotations

from pathlib import Path

from cqox_platform.fsutil import write_file


def write_private(path: Path, content: str | bytes) -> None:
    """Write ``content`` to ``path`` readable by the owner only (0600), created that way, never widened."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_file(path, content, mode=0o600)
