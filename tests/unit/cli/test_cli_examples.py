"""Every example in a ``--help`` is an invocation the CLI accepts as written: each line after "Examples:" that
starts with ``cqox-platform`` is split as a shell would and parsed by the real command tree (its commands,
options, choices and required arguments), so a renamed option or a typo in an example fails here, not in an
operator's terminal."""

from __future__ import annotations

import shlex
import shutil

import click
import pytest

from cqox_platform.cli.app import main
from cqox_platform.slo.spec import DEFAULT_SPEC
from tests.helpers import cli_examples

PROGRAM = "cqox-platform"


def _parse(argv: list[str]) -> click.Context:
    """Resolve and parse ``argv`` the way ``main`` would run it, without running anything."""
    command: click.Command = main
    ctx = main.make_context(PROGRAM, argv)
    while isinstance(command, click.Group):
        # Click 8.2+ keeps the subcommand's name apart (``protected_args`` is deprecated); Click 9 puts it in args.
        rest = [*getattr(ctx, "_protected_args", []), *ctx.args]
        assert rest, f"{argv}: names no command under {ctx.command_path}"
        _name, command, args = command.resolve_command(ctx, rest)
        assert command is not None
        ctx = command.make_context(_name, args, parent=ctx)
    return ctx


EXAMPLES = cli_examples()


def test_the_commands_people_reach_for_first_have_examples() -> None:
    documented = {where for where, _ in EXAMPLES}
    assert {"backup", "restore", "canary", "alerts", "dashboards render"} <= documented, documented


@pytest.mark.parametrize(("where", "example"), EXAMPLES, ids=[e for _, e in EXAMPLES])
def test_every_example_parses_as_written(where: str, example: str, tmp_path, monkeypatch) -> None:
    # The files an example names exist where a user would have them: an SLO spec of their own in the cwd.
    shutil.copy(DEFAULT_SPEC, tmp_path / "my-slos.yaml")
    monkeypatch.chdir(tmp_path)
    argv = shlex.split(example, comments=True)[1:]
    try:
        _parse(argv)
    except click.UsageError as exc:
        pytest.fail(f"the example in `{where} --help` is refused: {example!r}: {exc.format_message()}")


def test_a_broken_example_would_be_caught() -> None:
    with pytest.raises(click.UsageError):
        _parse(shlex.split("backup list --no-such-option"))
