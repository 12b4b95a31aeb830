"""Backfilling Prometheus with history: ``promtool tsdb create-blocks-from openmetrics`` into its data dir.

Prometheus picks new blocks up on its next block reload (about once a minute), so callers that need the data
wait with ``wait_for_series``.
"""

from __future__ import annotations

import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from cqox_platform.errors import CqoxError


def backfill(openmetrics: str, data_dir: Path) -> str:
    """Write blocks for ``openmetrics`` into ``data_dir``; returns promtool's summary."""
    with tempfile.NamedTemporaryFile("w", suffix=".om", delete=False) as handle:
        handle.write(openmetrics)
        source = handle.name
    try:
        proc = subprocess.run(
            ["promtool", "tsdb", "create-blocks-from", "openmetrics", source, str(data_dir)],
            capture_output=True,
            text=True,
            timeout=1800,
            check=False,
        )
    finally:
        Path(source).unlink(missing_ok=True)
    if proc.returncode != 0:
        raise CqoxError(f"promtool could not backfill into {data_dir}: {(proc.stderr or proc.stdout)[-2000:]}")
    return proc.stdout


def wait_for_series(has_data: Callable[[], bool], timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if has_data():
            return
        time.sleep(3)
    raise CqoxError(f"backfilled series did not appear in Prometheus within {timeout:.0f} s.")
