"""Shell completion as docs/cli.md documents it: click's ``_CQOX_PLATFORM_COMPLETE`` through the console script."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

#: The console script of this installation (``[project.scripts]`` in pyproject.toml), beside the interpreter.
SCRIPT = Path(sys.executable).parent / "cqox-platform"


def _complete(**env: str) -> str:
    result = subprocess.run(
        [str(SCRIPT)], env={**os.environ, **env}, capture_output=True, text=True, timeout=120, check=True
    )
    return result.stdout


def test_bash_source_prints_the_completion_function_for_the_console_script() -> None:
    script = _complete(_CQOX_PLATFORM_COMPLETE="bash_source")
    assert "_cqox_platform_completion()" in script and "complete -o nosort -F _cqox_platform_completion" in script


def test_bash_completes_commands_and_options() -> None:
    commands = _complete(_CQOX_PLATFORM_COMPLETE="bash_complete", COMP_WORDS="cqox-platform stack st", COMP_CWORD="2")
    assert commands.splitlines() == ["plain,status"]
    options = _complete(
        _CQOX_PLATFORM_COMPLETE="bash_complete", COMP_WORDS="cqox-platform canary status --j", COMP_CWORD="3"
    )
    assert options.splitlines() == ["plain,--json"]
