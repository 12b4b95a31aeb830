"""The click group class every command group of the CLI uses: the platform's errors as one line, exit 1."""

from __future__ import annotations

import sys

import click

from cqox_platform.errors import CqoxError


class ErrorGroup(click.Group):
    """Turns the platform's own errors into one clear line and exit code 1 instead of a traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except CqoxError as exc:
            click.secho(f"error: {exc}", fg="red", err=True)
            sys.exit(1)
