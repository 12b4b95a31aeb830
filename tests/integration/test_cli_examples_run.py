"""The help examples run as written against a real stack: each one exits without a usage error (2) or a
traceback, and prints something. ``restore``'s examples are only parsed (tests/unit/cli/test_cli_examples.py):
they name an operator's backup id, transaction and WAL position. The silence an example adds is expired here, so
the session stack keeps paging for the modules after this one."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest

from cqox_platform.schema import MigrationRunner
from cqox_platform.slo.spec import DEFAULT_SPEC
from tests.helpers import alertmanager_client, cli_examples, materialize_vault_config, postgres_admin

SCRIPT = Path(sys.executable).parent / "cqox-platform"
RUNNABLE = [(where, example) for where, example in cli_examples() if where != "restore"]


@pytest.fixture(scope="module")
def env(stack):
    with mock.patch.dict(os.environ, stack.env()):
        assert materialize_vault_config(stack).success
        with postgres_admin(stack).connect(autocommit=True) as conn:
            MigrationRunner().migrate(conn)
        yield stack.env()


@pytest.mark.parametrize(("where", "example"), RUNNABLE, ids=[e for _, e in RUNNABLE])
def test_every_help_example_runs_as_written_on_the_stack(stack, env, where, example, tmp_path):
    shutil.copy(DEFAULT_SPEC, tmp_path / "my-slos.yaml")  # the example's own SLO spec, in the cwd
    argv = shlex.split(example, comments=True)
    if argv[1:3] == ["dashboards", "render"] and "--out" not in argv and "--check" not in argv:
        argv += ["--out", str(tmp_path / "out")]  # never rewrite the package's shipped files from a test
    result = subprocess.run(
        [str(SCRIPT), *argv[1:]], env={**os.environ, **env}, cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    try:
        assert result.returncode != 2, f"`{example}` (in `{where} --help`) is a usage error: {result.stderr[-1500:]}"
        assert "Traceback" not in result.stderr, result.stderr[-3000:]
        assert result.stdout.strip() or result.stderr.strip(), f"`{example}` printed nothing"
    finally:
        if argv[1:4] == ["alerts", "silence", "add"] and result.returncode == 0:
            alertmanager_client(env).expire_silence(result.stdout.strip())
