"""Every test in this directory is marked ``e2e`` (it drives the Dagster CLI and webserver against the stack)."""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).parent


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Marked by where it lives, so ``-m e2e`` and ``-m 'not e2e'`` select by directory."""
    for item in items:
        if item.path.is_relative_to(HERE):
            item.add_marker(pytest.mark.e2e)
