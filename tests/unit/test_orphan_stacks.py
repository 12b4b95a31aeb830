"""A test run that is killed leaves its stack running; the next run reaps stacks whose owner is gone.

Only a stack directory that names its owner is ever touched: a stack whose owner runs (another xdist worker,
another checkout's run) is left alone, and so is a directory without an owner file (a developer's kept stack).
"""

from __future__ import annotations

import os
import subprocess
import sys

from cqox_platform.stack import StackConfig
from tests.helpers import OWNER_FILE, make_world_traversable_tmpdir, reap_orphan_stacks


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _stack_dir(prefix: str, owner: int | None):
    root = make_world_traversable_tmpdir(prefix)
    StackConfig(root=root).save()
    if owner is not None:
        (root / OWNER_FILE).write_text(f"{owner}\n")
    return root


def test_only_stacks_whose_owner_is_gone_are_reaped() -> None:
    orphan = _stack_dir("cqox-test-orphan-", _dead_pid())
    mine = _stack_dir("cqox-test-mine-", os.getpid())
    unowned = _stack_dir("cqox-test-unowned-", None)
    try:
        reaped = reap_orphan_stacks()
        assert orphan in reaped
        assert not orphan.exists()
        assert mine.exists() and mine not in reaped
        assert unowned.exists() and unowned not in reaped
    finally:
        for root in (orphan, mine, unowned):
            subprocess.run(["rm", "-rf", str(root)], check=False)
