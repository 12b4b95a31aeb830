"""`cqox-platform wal-push | wal-fetch | backup | restore`: the backup commands.

``wal-push`` and ``wal-fetch`` are PostgreSQL's ``archive_command`` and ``restore_command``. They import
nothing heavy (no Dagster), print one line per file to PostgreSQL's log, and use the exit codes PostgreSQL
expects: 0 done; 1 try again later (push) or "not in the archive" (fetch); 255 from fetch when the file
exists but cannot be used, which stops recovery instead of letting it end early and promote at the wrong point.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from cqox_platform.errors import CqoxError

FETCH_FATAL = 255

_archiver_config = click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path),
    envvar="CQOX_WAL_ARCHIVER_CONFIG",
    required=True,
    help="Archiver settings file (written by `vault_config`; env CQOX_WAL_ARCHIVER_CONFIG).",
)
_pgdata = click.option(
    "--pgdata",
    type=click.Path(path_type=Path),
    default=Path("."),
    show_default=True,
    help="Data directory (PostgreSQL runs archive and restore commands inside it).",
)


def _archive_for(config_path: Path, pgdata: Path, bucket: str | None = None):
    import os

    # Only the settings file counts: a profile or CA bundle inherited from whoever started PostgreSQL points at
    # files this OS user cannot read (boto3 would fail on them before using the explicit credentials).
    for name in [n for n in os.environ if n.startswith("AWS_")]:
        del os.environ[name]
    from cqox_platform.backup.archive import Archive
    from cqox_platform.backup.archiver_settings import ArchiverSettings, archiver_clients
    from cqox_platform.backup.wal import system_identifier

    settings = ArchiverSettings.load(config_path)
    clients = archiver_clients(settings)
    return Archive(clients.s3, bucket or clients.bucket, system_identifier(pgdata)), clients.provider


@click.command("wal-push")
@click.argument("path", type=click.Path(path_type=Path))
@_archiver_config
@_pgdata
def wal_push(path: Path, config_path: Path, pgdata: Path) -> None:
    """Archive one WAL file (PostgreSQL's archive_command: `cqox-platform wal-push %p`)."""
    from cqox_platform.backup.wal import push_wal

    try:
        archive, provider = _archive_for(config_path, pgdata)
        result = push_wal(archive, provider, pgdata / path if not path.is_absolute() else path)
    except CqoxError as exc:
        click.echo(f"wal-push: {path.name} NOT archived: {exc}", err=True)
        sys.exit(1)
    if result.uploaded:
        click.echo(
            f"wal-push: archived {result.name} ({result.raw_bytes / 2**20:.1f} MiB -> "
            f"{result.stored_bytes / 2**20:.2f} MiB in {result.seconds:.2f} s)",
            err=True,
        )
    else:
        click.echo(f"wal-push: {result.name} was already archived with the same content", err=True)


@click.command("wal-fetch")
@click.argument("name")
@click.argument("destination", type=click.Path(path_type=Path))
@_archiver_config
@_pgdata
@click.option("--bucket", default=None, help="Read from this bucket instead (a drill from the DR copy).")
def wal_fetch(name: str, destination: Path, config_path: Path, pgdata: Path, bucket: str | None) -> None:
    """Restore one WAL file (PostgreSQL's restore_command: `cqox-platform wal-fetch %f %p`)."""
    from cqox_platform.backup.wal import WalMissingError, fetch_wal

    try:
        archive, provider = _archive_for(config_path, pgdata, bucket)
        size = fetch_wal(
            archive, provider, name, pgdata / destination if not destination.is_absolute() else destination
        )
    except WalMissingError:
        sys.exit(1)  # PostgreSQL probes for files past the end of the archive; not an error
    except CqoxError as exc:
        click.echo(f"wal-fetch: {name} is in the archive but UNUSABLE, stopping recovery: {exc}", err=True)
        sys.exit(FETCH_FATAL)
    click.echo(f"wal-fetch: restored {name} ({size / 2**20:.1f} MiB)", err=True)


def register(main: click.Group) -> None:
    for command in (wal_push, wal_fetch):
        main.add_command(command)
