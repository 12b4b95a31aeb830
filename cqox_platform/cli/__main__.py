"""``python -m cqox_platform.cli``: the same command line as the ``cqox-platform`` executable (same entry)."""

from cqox_platform.cli.entrypoint import run

run()
