"""Small file helpers for the stack's local-only secrets."""

from __future__ import annotations

import os
from pathlib import Path


def write_private(path: Path, content: str | bytes) -> None:
    """Write ``content`` to ``path`` readable by the owner only (0600), created that way, never widened."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    data = content.encode() if isinstance(content, str) else content
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
