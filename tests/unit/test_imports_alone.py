"""Every module imports on its own in a fresh interpreter.

An import cycle through a package ``__init__`` only bites in the order a particular command loads modules (seen:
`cqox-platform datasets get` failed with "partially initialized module vault_setup" while the test process,
which had imported the stack first, was fine). Importing each module first, alone, finds every such order.
"""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _modules() -> list[str]:
    out = []
    for package in ("cqox_platform", "assets", "sensors"):
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            if parts[-1] == "__main__" or "node_modules" in parts:
                continue
            out.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return out


def _import_alone(module: str) -> tuple[str, int, str]:
    proc = subprocess.run(
        [sys.executable, "-c", f"import {module}"], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    return module, proc.returncode, proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else ""


def test_every_module_imports_first_and_alone():
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(_import_alone, _modules()))
    failures = {module: err for module, code, err in results if code != 0}
    assert len(results) > 50
    assert not failures, failures
