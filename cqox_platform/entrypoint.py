"""The ``cqox-platform`` executable: the asynchronous WAL push fast path first, everything else through click.

PostgreSQL runs ``cqox-platform wal-push %p --async ...`` once per segment; when the pusher has already sent
the segment, reporting that is the whole job, so it must not pay for importing click and the CLI modules.
Any other command line (or anything this parser does not recognise) goes to the full CLI unchanged.
"""

from __future__ import annotations

import sys


def _fast_async_push(argv: list[str]) -> int | None:
    """Exit code for ``wal-push PATH --async --config F [--pgdata D]``, or None to use the full CLI."""
    if len(argv) < 2 or argv[0] != "wal-push" or "--async" not in argv:
        return None
    options: dict[str, str] = {}
    positional: list[str] = []
    rest = iter(a for a in argv[1:] if a != "--async")
    for arg in rest:
        if arg in ("--config", "--pgdata"):
            value = next(rest, None)
            if value is None:
                return None
            options[arg] = value
        elif arg.startswith("-"):
            return None  # --help, --config=... and the like: let click handle them
        else:
            positional.append(arg)
    if len(positional) != 1 or "--config" not in options:
        return None
    from pathlib import Path

    from cqox_platform.backup.wal.push_client import push_async
    from cqox_platform.errors import CqoxError

    path = Path(positional[0])
    # The executable PostgreSQL ran is the one to start the pusher with: no settings to load on this path.
    executable = Path(sys.argv[0]).absolute()
    try:
        push_async(Path(options["--config"]), Path(options.get("--pgdata", ".")).resolve(), path, executable)
    except CqoxError as exc:
        print(f"wal-push: {path.name} NOT archived: {exc}", file=sys.stderr)
        return 1
    return 0


def run() -> None:
    code = _fast_async_push(sys.argv[1:])
    if code is not None:
        sys.exit(code)
    from cqox_platform.cli import main

    main()
