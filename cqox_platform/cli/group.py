"""The click group class every command group of the CLI uses: any error as one line and exit 1, no traceback."""

from __future__ import annotations

import sys

import click

from cqox_platform.errors import CqoxError


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def describe(exc: BaseException) -> str:
    """One line for an error: the platform's own say what to do; others name their kind and their system."""
    if isinstance(exc, CqoxError):
        return _one_line(str(exc))
    module = type(exc).__module__.split(".")[0]
    if module == "psycopg":
        return f"PostgreSQL: {_one_line(str(exc))}"
    if module in ("botocore", "boto3"):
        return f"S3: {_one_line(str(exc))}"
    if isinstance(exc, OSError) and exc.filename:
        return f"{exc.strerror or type(exc).__name__}: {exc.filename}"
    return f"unexpected {type(exc).__name__}: {_one_line(str(exc))}"


class ErrorGroup(click.Group):
    """Turns every error but click's own (usage, abort, exit) into one line and exit code 1, never a traceback:
    an operator reads what failed and where; a traceback in the middle of a restore reads like a crash."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except Exception as exc:
            message = str(exc) if isinstance(exc, CqoxError) else describe(exc)
            first, *rest = message.splitlines() or [""]
            click.secho(f"error: {first}", fg="red", err=True)
            for line in rest:  # a CqoxError may carry a log tail after its one line
                click.echo(f"  {line}", err=True)
            sys.exit(1)
