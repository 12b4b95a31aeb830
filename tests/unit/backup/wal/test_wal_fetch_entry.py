"""wal-fetch's exit code when its own code cannot even load: never 1, which PostgreSQL reads as "not in the
archive" and, in a restore without a target, takes as the end of WAL (it would promote early).

Each case runs the installed ``cqox-platform`` executable (what restore_command runs) and the ``python -m
cqox_platform.cli`` form with a module on ``PYTHONPATH`` that fails to import, the way a broken upgrade of a
dependency would.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SEGMENT = "000000010000000000000003"
EXECUTABLE = Path(sys.executable).parent / "cqox-platform"


def _broken(tmp_path: Path, module: str) -> Path:
    shadow = tmp_path / "shadow"
    (shadow / module).mkdir(parents=True)
    (shadow / module / "__init__.py").write_text(f"raise ImportError('{module} is broken on purpose')\n")
    return shadow


def _fetch(tmp_path: Path, shadow: Path, *extra: str, module_form: bool = False) -> subprocess.CompletedProcess:
    config = tmp_path / "archiver.json"
    # Well-formed settings pointing nowhere: loading them succeeds, so the clients' imports are reached.
    config.write_text(
        json.dumps(
            {
                "vault_addr": "https://127.0.0.1:9",
                "vault_cacert": str(tmp_path / "ca.crt"),
                "role_id": "r",
                "secret_id": "s",
                "s3_endpoint": "https://127.0.0.1:9",
                "s3_cacert": str(tmp_path / "ca.crt"),
                "bucket": "b",
            }
        )
    )
    command = [sys.executable, "-m", "cqox_platform.cli"] if module_form else [str(EXECUTABLE)]
    env = {**os.environ, "PYTHONPATH": str(shadow)}
    return subprocess.run(
        [*command, "wal-fetch", SEGMENT, str(tmp_path / "RECOVERYXLOG"), "--config", str(config), *extra],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize("module", ["zstandard", "click", "hvac"])
@pytest.mark.parametrize("module_form", [False, True], ids=["executable", "python-m"])
def test_a_broken_import_stops_recovery_instead_of_ending_it(tmp_path, module, module_form):
    result = _fetch(tmp_path, _broken(tmp_path, module), module_form=module_form)
    assert result.returncode == 255, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    assert f"{module} is broken on purpose" in result.stderr
    assert SEGMENT in result.stderr


@pytest.mark.parametrize("module", ["zstandard", "hvac"])
def test_a_broken_prefetch_falls_back_to_a_direct_fetch_that_still_stops_recovery(tmp_path, module):
    result = _fetch(tmp_path, _broken(tmp_path, module), "--prefetch", "4")
    assert result.returncode == 255, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr


def test_usage_errors_are_not_taken_for_the_end_of_the_archive(tmp_path):
    result = _fetch(tmp_path, tmp_path, "--no-such-option")
    assert result.returncode == 255, (result.returncode, result.stderr)
