"""Every module imports on its own in a fresh interpreter.

An import cycle through a package ``__init__`` only bites in the order a particular command loads modules (seen:
`cqox-platform datasets get` failed with "partially initialized module vault_setup" while the test process,
which had imported the stack first, was fine). Importing each module first, alone, finds every such order.

A fresh interpreter per module cost ~2 s each (Dagster, pandas and boto3 are imported again every time: 150-290 s
for ~250 modules). So one interpreter imports the third-party packages our code names (never a module of ours)
and forks a child per module: each child starts with none of our modules loaded, which is what the order of our
own imports depends on.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OURS = ("cqox_platform", "assets", "sensors")

#: Runs in the forking interpreter: argv = third-party names to preload, then "--", then our modules.
_FORKER = r"""
import importlib, json, os, sys
args = sys.argv[1:]
split = args.index("--")
for name in args[:split]:
    try:
        importlib.import_module(name)
    except Exception:
        pass  # a package that fails to import is our modules' problem, reported by the child that needs it
ours = [m for m in sys.modules if m.split(".")[0] in ("cqox_platform", "assets", "sensors")]
assert not ours, f"a preloaded package imported our modules: {ours}"
results = {}
for module in args[split + 1:]:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        try:
            importlib.import_module(module)
            message = ""
        except BaseException as exc:
            message = f"{type(exc).__name__}: {exc}"
        os.write(write, message.encode()[:4000])
        os._exit(1 if message else 0)
    os.close(write)
    chunks = []
    while chunk := os.read(read, 4096):
        chunks.append(chunk)
    os.close(read)
    _, status = os.waitpid(pid, 0)
    results[module] = [os.waitstatus_to_exitcode(status), b"".join(chunks).decode(errors="replace")]
print(json.dumps(results))
"""


def _module_files() -> list[tuple[str, Path]]:
    out = []
    for package in OURS:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            if parts[-1] == "__main__" or "node_modules" in parts:
                continue
            out.append((".".join(parts[:-1] if parts[-1] == "__init__" else parts), path))
    return out


def _third_party(files: list[tuple[str, Path]]) -> list[str]:
    """Top-level names our modules import that are neither ours nor the standard library's."""
    names: set[str] = set()
    for _module, path in files:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return sorted(n for n in names if n not in OURS and n not in sys.stdlib_module_names and n != "__future__")


def test_every_module_imports_first_and_alone():
    files = _module_files()
    modules = [module for module, _path in files]
    proc = subprocess.run(
        [sys.executable, "-c", _FORKER, *_third_party(files), "--", *modules],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    assert sorted(results) == sorted(modules)
    assert len(results) > 50
    failures = {module: err for module, (code, err) in results.items() if code != 0}
    assert not failures, failures


def test_the_check_catches_an_import_cycle_through_a_package_init(tmp_path):
    """The forked children still see a cycle that only bites when one module is imported first."""
    package = tmp_path / "cyc"
    package.mkdir()
    (package / "__init__.py").write_text("from cyc.a import A\n")
    (package / "a.py").write_text("from cyc.b import B\nA = 1\n")
    (package / "b.py").write_text("from cyc import A\nB = 2\n")
    proc = subprocess.run(
        [sys.executable, "-c", _FORKER, "--", "cyc.b", "cyc"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    assert results["cyc.b"][0] != 0 and "partially initialized" in results["cyc.b"][1]
