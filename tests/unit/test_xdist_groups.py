"""The suite relies on pytest-xdist's ``--dist loadgroup`` keeping a group on one worker: the HA stack's modules
share one three-node cluster and run their failovers in order. pytest 9.2 moved ``Node.nodeid`` off ``_nodeid``,
where xdist 3.8 writes the group suffix, so groups were silently ignored (every worker started its own HA stack,
and a module's tests ran on both workers, out of order). This runs a tiny suite the way ``scripts/test.sh`` does
and fails if the installed pytest and xdist stop honouring groups."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

CONFTEST = """
import pytest

@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items):
    for item in items:
        group = "shared" if item.path.name.startswith("test_shared") else item.path.name
        item.add_marker(pytest.mark.xdist_group(group))
"""

MODULE = """
import os, time

def _record(name):
    time.sleep(0.05)
    with open(os.environ["ORDER_FILE"], "a") as f:
        f.write(f"{os.environ['PYTEST_XDIST_WORKER']} {name}\\n")
"""


def test_tests_of_one_xdist_group_run_on_one_worker_in_collection_order(tmp_path: Path) -> None:
    (tmp_path / "conftest.py").write_text(CONFTEST)
    for module in ("test_shared_a", "test_shared_b", "test_other_c", "test_other_d"):
        body = MODULE + "".join(f"\n\ndef test_{i}():\n    _record('{module}::{i}')\n" for i in range(4))
        (tmp_path / f"{module}.py").write_text(body)
    order = tmp_path / "order.txt"
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "2", "--dist", "loadgroup", "."],
        cwd=tmp_path,
        env={"ORDER_FILE": str(order), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    runs = [line.split(" ", 1) for line in order.read_text().splitlines()]
    shared = [(worker, name) for worker, name in runs if name.startswith("test_shared")]
    assert len(shared) == 8
    workers = {worker for worker, _ in shared}
    assert len(workers) == 1, f"the group 'shared' ran on {sorted(workers)}: {shared}"
    assert [name for _, name in shared] == [f"test_shared_{m}::{i}" for m in "ab" for i in range(4)]
