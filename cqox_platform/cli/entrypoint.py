"""The ``cqox-platform`` executable: PostgreSQL's two commands first, everything else through click.

PostgreSQL runs ``cqox-platform wal-push %p --async ...`` once per segment; when the pusher has already sent
the segment, reporting that is the whole job, so it must not pay for importing click and the CLI modules.

``wal-fetch`` (restore_command) gets its own entry with a catch-all around everything, imports included:
PostgreSQL reads exit code 1 (and any other code below 126) as "not in the archive", which ends a restore
without a target early and promotes it at the wrong point. Only the command's proven absence exits 1;
every other way out (an import that fails, a usage error, a bug) exits 255 and stops recovery.
Any other command line goes to the full CLI unchanged.
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


#: restore_command's exit code that stops recovery instead of ending it.
FETCH_FATAL = 255


def _wal_fetch(args: list[str]) -> int:
    """``wal-fetch ARGS`` with every outcome mapped to PostgreSQL's contract: 0, 1 (proven absent), else 255."""
    name = args[0] if args and not args[0].startswith("-") else "the requested WAL file"
    try:
        from cqox_platform.cli.backup import SegmentUnavailable, wal_fetch
    except BaseException as exc:
        return _fetch_fatal(name, exc)
    try:
        wal_fetch.main(args=args, prog_name="cqox-platform wal-fetch", standalone_mode=False)
    except SegmentUnavailable:
        return 1
    except SystemExit as exc:  # the command's own exits: 0, or 255 after saying why
        return 0 if exc.code in (0, None) else FETCH_FATAL
    except BaseException as exc:
        return _fetch_fatal(name, exc)
    return 0


def _fetch_fatal(name: str, exc: BaseException) -> int:
    """One line in PostgreSQL's log naming the segment and the cause, then the exit code that stops recovery."""
    reason = getattr(exc, "format_message", lambda: str(exc))()
    print(
        f"wal-fetch: {name} could not be restored, stopping recovery: {type(exc).__name__}: "
        + " ".join(str(reason).split()),
        file=sys.stderr,
    )
    return FETCH_FATAL


def run() -> None:
    argv = sys.argv[1:]
    code = _fast_async_push(argv)
    if code is not None:
        sys.exit(code)
    if argv and argv[0] == "wal-fetch" and not {"--help", "-h"} & set(argv[1:]):
        sys.exit(_wal_fetch(argv[1:]))
    from cqox_platform.cli.app import main

    main()
