"""``python -m cqox_platform.cli``: the same command line as the ``cqox-platform`` executable."""

from cqox_platform.cli import main

main()
