"""``cqox-platform --version``: which release a host or an image runs, from the installed distribution."""

from __future__ import annotations

from importlib.metadata import version

from click.testing import CliRunner

from cqox_platform.cli.app import main


def test_version_names_the_installed_distribution():
    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"cqox-platform {version('cqox-platform')}"
