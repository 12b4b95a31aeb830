"""`cqox-platform wal-push | wal-fetch | backup | restore`: the backup commands.

``wal-push`` and ``wal-fetch`` are PostgreSQL's ``archive_command`` and ``restore_command``. They import
nothing heavy (no Dagster), print one line per file to PostgreSQL's log, and use the exit codes PostgreSQL
expects: 0 done; 1 try again later (push) or "not in the archive" (fetch); 255 from fetch on every other
outcome (corrupt, unreadable, S3 down, disk full, a bug), which stops recovery instead of letting it end early
and promote at the wrong point. Only S3 answering ``NoSuchKey`` for the manifest proves a file absent.
"""

from __future__ import annotations

import functools
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click

from cqox_platform.cli.completion import backup_ids
from cqox_platform.cli.json_output import echo_json, json_option
from cqox_platform.errors import CqoxError

if TYPE_CHECKING:
    from cqox_platform.backup.archive.store import ArchiveClients
    from cqox_platform.backup.restore.workspace import BackupCatalog, RestoredCluster
    from cqox_platform.backup.verify.info import CopyInfo
    from cqox_platform.secrets.vault_client import TransitKeyProvider

FETCH_FATAL = 255
SEGMENT_NAME = re.compile(r"^[0-9A-F]{24}$")


def _one_line(text: str) -> str:
    return " ".join(text.split())


_archiver_config = click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path),
    default=None,
    help="Archiver settings file (written by `vault_config`; env CQOX_WAL_ARCHIVER_CONFIG).",
)
_pgdata = click.option(
    "--pgdata",
    type=click.Path(path_type=Path),
    default=Path("."),
    show_default=True,
    help="Data directory (PostgreSQL runs archive and restore commands inside it).",
)


def _config(config_path: Path | None) -> Path:
    """``--config``, or the settings' ``CQOX_WAL_ARCHIVER_CONFIG`` (PostgreSQL always passes ``--config``, so the
    archiving path never loads the settings)."""
    if config_path is not None:
        return config_path
    import cqox_platform.cli.context as context

    return Path(context.settings().require("wal_archiver_config"))


def _archiver_process() -> None:
    """An archiver process trusts only its settings file: a profile or CA bundle inherited from whoever started
    PostgreSQL points at files this OS user cannot read (boto3 would fail on them before using the explicit
    credentials). Done here, per process, never in the library (a Dagster run or a test keeps its variables)."""
    from cqox_platform.settings import forget_inherited

    forget_inherited("AWS_")


def _archive_for(config_path: Path | None, pgdata: Path, bucket: str | None = None):
    _archiver_process()
    from cqox_platform.archiver_clients import load_archiver_clients
    from cqox_platform.backup.archive.store import Archive
    from cqox_platform.backup.wal.segment import system_identifier

    clients = load_archiver_clients(_config(config_path))
    return Archive(clients.s3, bucket or clients.bucket, system_identifier(pgdata)), clients.provider


def _archiver_connector(settings_path: Path) -> Callable[[], ArchiveClients]:
    """How a daemon logs in (again) from the archiver settings file: after a failure, or once the file changed."""
    from cqox_platform.archiver_clients import load_archiver_clients

    return functools.partial(load_archiver_clients, settings_path)


@click.command("wal-push")
@click.argument("path", type=click.Path(path_type=Path))
@_archiver_config
@_pgdata
@click.option(
    "--async",
    "asynchronous",
    is_flag=True,
    help="Hand the file to the background pusher (started on demand) and report its result.",
)
def wal_push(path: Path, config_path: Path | None, pgdata: Path, asynchronous: bool) -> None:
    """Archive one WAL file (PostgreSQL's archive_command: `cqox-platform wal-push %p`)."""
    if asynchronous:
        from cqox_platform.backup.wal.push_client import push_async
        from cqox_platform.installation import platform_cli

        try:
            push_async(_config(config_path), pgdata.resolve(), path, platform_cli())
        except CqoxError as exc:
            click.echo(f"wal-push: {path.name} NOT archived: {exc}", err=True)
            sys.exit(1)
        return

    from cqox_platform.backup.wal.catchup import catch_up_after
    from cqox_platform.backup.wal.segment import push_wal

    full_path = pgdata / path if not path.is_absolute() else path
    try:
        archive, provider = _archive_for(config_path, pgdata)
        result = push_wal(archive, provider, full_path)
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
    try:
        catch_up_after(archive, provider, full_path, log=lambda m: click.echo(f"wal-push: {m}", err=True))
    except CqoxError as exc:
        click.echo(f"wal-push: {result.name} NOT done, its parent timeline is not caught up: {exc}", err=True)
        sys.exit(1)


@click.command("wal-push-daemon", hidden=True)
@_archiver_config
@_pgdata
def wal_push_daemon(config_path: Path | None, pgdata: Path) -> None:
    """The background pusher behind `wal-push --async` (started by it; exits when idle)."""
    from cqox_platform.backup.wal.pusher import run_daemon

    _archiver_process()
    settings_path = _config(config_path)
    connect = _archiver_connector(settings_path)
    run_daemon(settings_path, pgdata.resolve(), connect, log=lambda m: click.echo(m, err=True))


@click.command("wal-fetch")
@click.argument("name")
@click.argument("destination", type=click.Path(path_type=Path))
@_archiver_config
@_pgdata
@click.option("--bucket", default=None, help="Read from this bucket instead (a drill from the DR copy).")
@click.option(
    "--standby",
    is_flag=True,
    help="For a streaming standby (Patroni): any failure means 'not available', never stop the server.",
)
@click.option(
    "--prefetch",
    type=click.IntRange(min=0, max=64),
    default=0,
    show_default=True,
    help="Serve from a background prefetcher that verifies the next N segments ahead of replay (0: off).",
)
def wal_fetch(
    name: str,
    destination: Path,
    config_path: Path | None,
    pgdata: Path,
    bucket: str | None,
    standby: bool,
    prefetch: int,
) -> None:
    """Restore one WAL file (PostgreSQL's restore_command: `cqox-platform wal-fetch %f %p`).

    A standby never ends recovery on its own, so an archive it cannot use yet (settings not written, S3 down)
    only means "stream it instead"; stopping it there would take a healthy replica down with the archive.
    With ``--prefetch N`` (what `restore` and drills write) a segment the prefetcher already verified is
    handed over at once; anything else is fetched directly, so the exit codes are the same.
    """
    target = pgdata / destination if not destination.is_absolute() else destination
    if prefetch and not standby:
        served = _serve_prefetched(name, target, config_path, pgdata, bucket, prefetch)
        if served is not None:
            click.echo(f"wal-fetch: restored {name} ({served / 2**20:.1f} MiB, prefetched)", err=True)
            return

    try:
        from cqox_platform.backup.wal.segment import WalMissingError, fetch_wal
    except Exception as exc:  # a broken installation is not "absent": stop, or (standby) stream instead
        _cannot_fetch(name, exc, standby)
    try:
        archive, provider = _archive_for(config_path, pgdata, bucket)
        size = fetch_wal(archive, provider, name, target)
    except WalMissingError:
        # S3 proved the file absent: PostgreSQL probes past the end of the archive; not an error.
        raise SegmentUnavailable(f"{name} is not in the archive") from None
    except Exception as exc:  # anything short of proven absence must not end recovery
        _cannot_fetch(name, exc, standby)
    click.echo(f"wal-fetch: restored {name} ({size / 2**20:.1f} MiB)", err=True)


class SegmentUnavailable(Exception):
    """The one outcome that may exit 1: the archive proved the segment absent, or a standby streams it instead.

    Raised rather than ``sys.exit(1)`` so that ``entrypoint`` can tell it from every other way out of the
    command (a usage error, an import error, a bug), all of which must exit 255.
    """


def _cannot_fetch(name: str, exc: BaseException, standby: bool) -> NoReturn:
    reason = str(exc) if isinstance(exc, CqoxError) else f"unexpected {type(exc).__name__}: {exc}"
    if standby:
        click.echo(f"wal-fetch: {name} not fetched, the standby streams it instead: {_one_line(reason)}", err=True)
        raise SegmentUnavailable(reason) from None
    click.echo(f"wal-fetch: {name} could not be restored, stopping recovery: {_one_line(reason)}", err=True)
    sys.exit(FETCH_FATAL)


def _serve_prefetched(
    name: str, target: Path, config_path: Path | None, pgdata: Path, bucket: str | None, depth: int
) -> int | None:
    """The size served from the prefetch spool, or None to fetch directly; exits 255 on a refused segment.

    The spool is an optimisation: whatever goes wrong with it (an import, the spool directory, the daemon, a bug)
    falls back to a direct fetch, which decides the exit code on its own evidence.
    """
    try:
        from cqox_platform.backup.wal.prefetch_client import PrefetchClient, PrefetchRefused
    except Exception as exc:
        click.echo(f"wal-fetch: prefetch unavailable for {name} ({_one_line(str(exc))}); fetching directly", err=True)
        return None
    try:
        client = PrefetchClient(_config(config_path), pgdata.resolve(), bucket, depth)
        if SEGMENT_NAME.match(name):
            client.request(name)
            client.ensure_daemon(_this_cli())
        return client.serve(name, target)
    except PrefetchRefused as exc:
        click.echo(f"wal-fetch: {name} could not be restored, stopping recovery: {_one_line(str(exc))}", err=True)
        sys.exit(FETCH_FATAL)
    except Exception as exc:
        click.echo(f"wal-fetch: prefetch unavailable for {name} ({_one_line(str(exc))}); fetching directly", err=True)
        return None


def _this_cli() -> Path:
    """The executable PostgreSQL ran (no settings load on the per-segment path), else the installation's."""
    ran = Path(sys.argv[0])
    if ran.name == "cqox-platform" and ran.is_file():
        return ran.resolve()
    from cqox_platform.installation import platform_cli

    return platform_cli()


@click.command("wal-prefetch-daemon", hidden=True)
@_archiver_config
@click.option(
    "--pgdata",
    # Not checked for readability: started with --system-id, it runs while the data directory is still root's.
    type=click.Path(path_type=Path, readable=False),
    default=Path("."),
    show_default=True,
    help="Data directory of the cluster to prefetch for.",
)
@click.option("--bucket", default=None)
@click.option("--depth", type=click.IntRange(min=1, max=64), default=8)
@click.option("--start-at", default=None, help="Prefetch from this segment before any request (a restore's first).")
@click.option("--system-id", type=int, default=None, help="The cluster's, while its pg_control is not restored yet.")
@click.option("--restore-pid", type=int, default=None, help="With --system-id: the restore writing the data directory.")
def wal_prefetch_daemon(
    config_path: Path | None,
    pgdata: Path,
    bucket: str | None,
    depth: int,
    start_at: str | None,
    system_id: int | None,
    restore_pid: int | None,
) -> None:
    """The background prefetcher behind `wal-fetch --prefetch` (started by it or by `restore`; exits when idle)."""
    from cqox_platform.backup.wal.prefetcher import run_daemon

    _archiver_process()
    settings_path = _config(config_path)
    connect = _archiver_connector(settings_path)
    run_daemon(
        settings_path,
        pgdata.resolve(),
        bucket,
        depth,
        connect,
        log=lambda m: click.echo(f"{time.strftime('%H:%M:%S')} {m}", err=True),
        start_at=start_at,
        system_id=system_id,
        restore_pid=restore_pid,
    )


# --- backups -------------------------------------------------------------------------------------------------


_BACKUP_EXAMPLES = """
\b
Examples:
  # a base backup now, its id and where it went as JSON
  cqox-platform backup create --json
  # every copy, its window and a verdict; exit 3 when the newest backup is unverified or the window is behind
  cqox-platform backup info
  # for cron: exit 3 when the newest backup has no passing drill
  cqox-platform backup list --require-verified --json
  # what retention would delete, deleting nothing
  cqox-platform backup expire --dry-run --keep-days 30
"""


@click.group("backup", epilog=_BACKUP_EXAMPLES)
def backup() -> None:
    """Base backups of the stack's PostgreSQL in S3."""


@dataclass(frozen=True)
class BackupContext:
    """What the backup commands connect with, built from the settings: the admin login, S3 and the backup key."""

    conninfo: dict[str, Any]  # psycopg.connect(**conninfo)
    dsn: str  # the same login as one string, for pg_basebackup
    s3: Any
    provider: TransitKeyProvider
    bucket: str  # the primary bucket, unless a command is told another


def _backup_context() -> BackupContext:
    import psycopg

    import cqox_platform.cli.context as context

    conninfo = context.postgres_admin().conninfo()
    dsn = psycopg.conninfo.make_conninfo(**{k: str(v) for k, v in conninfo.items()})
    return BackupContext(conninfo, dsn, context.s3(), context.backup_key_provider(), context.bucket())


#: ``backup create --json`` and ``restore --json``: raised when a reader could trip over a change.
CREATE_SCHEMA_VERSION = 1
RESTORE_SCHEMA_VERSION = 1


def created_json(record: Any, where: str, point: Any) -> dict[str, Any]:
    """What ``backup create --json`` prints: the new backup (as ``backup list`` shows it) and its restore point."""
    from cqox_platform.backup.verify.info import backup_json

    return {
        "schema_version": CREATE_SCHEMA_VERSION,
        "where": where,
        "backup": backup_json(record, verified_by=None, last_drill=None),
        "restore_point": {"name": point.name, "lsn": point.lsn, "timeline": point.timeline},
    }


@backup.command("create")
@json_option
def backup_create(as_json: bool) -> None:
    """Take a base backup now (the same as materializing postgres_basebackup)."""
    import psycopg

    from cqox_platform.backup.archive.cluster import cluster_archive
    from cqox_platform.backup.base.take import take_backup
    from cqox_platform.pgserver import pg_bindir

    ctx = _backup_context()
    with psycopg.connect(**ctx.conninfo, autocommit=True) as conn:
        archive = cluster_archive(conn, ctx.s3, ctx.bucket)
        record, point = take_backup(
            conn,
            archive,
            ctx.provider,
            ctx.dsn,
            pg_basebackup=str(pg_bindir() / "pg_basebackup"),
            progress=lambda m: click.echo(m, err=True),
        )
    created = created_json(record, archive.where(record.object_key), point)
    _record_in_dagster(created)
    if as_json:
        echo_json(created)
        return
    click.echo(f"{record.backup_id}  {archive.where(record.object_key)}  restore point {point.name}")


#: How long recording a backup in Dagster may take (loading Dagster and its instance) before the CLI gives up on it.
RECORD_TIMEOUT_SECONDS = 120


def _record_in_dagster(created: dict[str, Any]) -> None:
    """Record a finished backup on ``postgres_basebackup`` in the Dagster instance (``DAGSTER_HOME``), so the asset
    shows the real newest backup; a warning, never a failure, when that is not possible: the backup is complete.

    A separate program does it (``cqox_platform.instance_events``): the CLI never imports Dagster.
    """
    import json
    import subprocess

    from cqox_platform.settings import child_env

    backup_id = created["backup"]["backup_id"]
    argv = [sys.executable, "-m", "cqox_platform.instance_events", "backup-created", "--made-by", "CLI"]
    try:
        done = subprocess.run(
            argv,
            input=json.dumps(created),
            env=child_env(),
            capture_output=True,
            text=True,
            timeout=RECORD_TIMEOUT_SECONDS,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        why = _one_line(str(exc)) or type(exc).__name__
    else:
        if done.returncode == 0:
            click.echo(f"backup create: {done.stdout.strip()}", err=True)
            return
        lines = done.stderr.strip().splitlines()
        why = _one_line(lines[-1]) if lines else f"the recorder exited {done.returncode} without a reason"
    click.echo(
        f"warning: backup {backup_id} is complete, but it is not recorded on postgres_basebackup in Dagster: {why}",
        err=True,
    )


#: ``backup info`` and ``backup list --require-verified``: the command ran, and the verdict failed (as ``ha status``
#: and ``stack status`` exit when something is unhealthy). 1 stays "could not find out" (an error), 2 a usage error.
VERDICT_FAILED = 3


def _drill_text(drill: dict[str, Any] | None) -> str:
    if drill is None:
        return "-"
    status = drill["status"] if drill["passed"] else drill["status"].upper()
    return f"{status} {drill['rto_seconds']} s"


@backup.command("list")
@click.option("--bucket", default=None, help="List another bucket (e.g. the DR copy).")
@json_option
@click.option(
    "--require-verified",
    is_flag=True,
    help=f"Exit {VERDICT_FAILED} when the newest backup has no passing drill (or there is no backup), for cron.",
)
def backup_list(bucket: str | None, as_json: bool, require_verified: bool) -> None:
    """Backups of this cluster in S3, oldest first, with whether a drill verified them."""
    import json

    import psycopg

    import cqox_platform.cli.context as context
    from cqox_platform.backup.archive.cluster import cluster_archive
    from cqox_platform.backup.archive.records import list_backups
    from cqox_platform.backup.verify.drill import latest_drill, verified_backup_ids
    from cqox_platform.backup.verify.info import LIST_SCHEMA_VERSION, backup_json

    ctx = _backup_context()
    with psycopg.connect(**ctx.conninfo, autocommit=True) as conn:
        archive = cluster_archive(conn, context.s3_for(bucket) if bucket else ctx.s3, bucket or ctx.bucket)
        records = list_backups(archive)
        verified = verified_backup_ids(conn)
        drills = {r.backup_id: latest_drill(conn, r.backup_id) for r in records}
        proofs = {i: latest_drill(conn, i, passed_only=True) for i in verified & set(drills)}
    newest = records[-1].backup_id if records else None
    if as_json:
        listing = {
            "schema_version": LIST_SCHEMA_VERSION,
            "where": archive.where(archive.root + "/"),
            "newest_backup_id": newest,
            "newest_verified": newest in verified,
            "backups": [
                backup_json(r, verified_by=proofs.get(r.backup_id), last_drill=drills[r.backup_id]) for r in records
            ],
        }
        click.echo(json.dumps(listing, indent=2))
    else:
        click.echo(
            f"{'BACKUP':<18}{'TL':<4}{'START LSN':<14}{'STOP LSN':<14}{'READ MiB':>10}{'STORED MiB':>12}  LAST DRILL"
        )
        for r in records:
            click.echo(
                f"{r.backup_id:<18}{r.timeline:<4}{r.start_lsn:<14}{r.stop_lsn:<14}"
                f"{r.database_bytes / 2**20:>10.1f}{r.stored_bytes / 2**20:>12.1f}  {_drill_text(drills[r.backup_id])}"
            )
        if not records:
            click.echo(f"(no backups in {archive.where(archive.root + '/base/')})")
    if require_verified and newest not in verified:
        why = f"newest backup {newest} has no passing drill" if newest else "there is no backup"
        click.echo(f"backup list: {why} ({archive.where(archive.root + '/')})", err=True)
        sys.exit(VERDICT_FAILED)


def _copy_lines(copy: CopyInfo, rpo_target_seconds: float) -> list[str]:
    """The human table of one copy: its backups, then its window and the WAL behind it."""
    w = copy.window
    lines = [
        f"{copy.name} copy  {copy.where}  ({copy.segments_in_archive} WAL segment(s))",
        f"  {'BACKUP':<18}{'TL':<4}{'START (UTC)':<21}{'END (UTC)':<21}{'STORED MiB':>11}  {'STOP LSN':<13}"
        f"{'WAL NEEDED':<52}VERIFIED",
    ]
    for b in copy.backups:
        r = b.record
        wal = f"{r.start_wal}..{r.stop_wal}"
        missing = f"  ({len(b.wal_missing)} WAL segment(s) MISSING)" if b.wal_missing else ""
        if b.verified_by:
            verified = f"yes, drill {b.verified_by['drill_id']}"
        else:
            verified = "NO" + (f" (last drill {b.last_drill['status']})" if b.last_drill else "")
        lines.append(
            f"  {r.backup_id:<18}{r.timeline:<4}{r.start_datetime:%Y-%m-%d %H:%M:%S}  "
            f"{r.stop_datetime:%Y-%m-%d %H:%M:%S}  {r.stored_bytes / 2**20:>11.1f}  {r.stop_lsn:<13}"
            f"{wal:<52}{verified}{missing}"
        )
    if not copy.backups:
        lines.append("  (no backups)")
    if w.latest is None:
        end = "no end (nothing of the current timeline archived)"
    else:
        end = f"{w.latest.isoformat()} ({w.lag_seconds:.0f} s ago; RPO target {rpo_target_seconds:.0f} s)"
    start = w.earliest.isoformat() if w.earliest else "-"
    proven = f"proven from {w.earliest_verified.isoformat()}" if w.earliest_verified else "no verified backup here"
    lines.append(f"  recovery window: {start} .. {end}; {proven}")
    if w.continuity_error:
        lines.append(f"  WAL from the oldest backup: cannot be walked: {w.continuity_error}")
    elif w.wal_from:
        gaps = f"{len(w.gaps)} MISSING (first {w.gaps[0]})" if w.gaps else "no gap"
        lines.append(f"  WAL from the oldest backup: {w.wal_from}..{w.wal_to}, {gaps}")
    return lines


def _repository_summaries(conninfo: dict, rpo_target_seconds: float) -> tuple[list[dict], list[str]]:
    """Each repository of another engine (``CQOX_BACKUP_REPOSITORIES``) summed up, and the ones that could not be
    read (named, never shown as empty)."""
    import psycopg

    import cqox_platform.cli.context as context
    from cqox_platform.backup.repository.config import load_repositories
    from cqox_platform.backup.verify.repositories import repository_summary
    from cqox_platform.errors import CqoxError

    summaries: list[dict] = []
    errors: list[str] = []
    specs = load_repositories(context.settings().backup_repositories)
    if not specs:
        return summaries, errors
    with psycopg.connect(**conninfo, autocommit=True) as ledger:
        for spec in specs:
            try:
                with psycopg.connect(spec.source, autocommit=True, connect_timeout=10) as source:
                    summaries.append(repository_summary(spec.build(), source, ledger, spec.rpo_target_seconds))
            except (CqoxError, psycopg.Error) as exc:
                errors.append(f"repository {spec.name} ({spec.engine}) could not be read: {exc}")
                summaries.append({"name": spec.name, "engine": spec.engine, "error": str(exc)})
    return summaries, errors


def _repository_lines(summary: dict) -> list[str]:
    """A repository of another engine, in the same shape as a copy of the platform's own."""
    if "error" in summary:
        return [f"repository {summary['name']} ({summary['engine']}): UNREADABLE"]
    drill = summary["latest_drill"]
    if drill is None:
        drilled = "never drilled"
    else:
        rto = f"RTO {drill['rto_seconds']:.1f} s" if drill["rto_seconds"] is not None else "no RTO"
        drilled = f"last drill {drill['status']} {drill['finished_at']} ({drill['backup_id']}, {rto})"
    rpo = "unbounded" if summary["rpo_seconds"] is None else f"{summary['rpo_seconds']:.0f} s"
    window = summary["recovery_window"]
    gaps = f"{len(summary['wal_gaps'])} MISSING (first {summary['wal_gaps'][0]})" if summary["wal_gaps"] else "no gap"
    return [
        f"repository {summary['name']} ({summary['engine']}, {summary['where']})",
        f"  backups: {summary['backups']}, newest {summary['newest_backup'] or '-'}; {drilled}",
        f"  RPO {rpo}, {summary['rpo_bytes']} bytes; WAL from the oldest backup: {gaps}",
        f"  recovery window: {window['start'] or '-'} .. {window['end'] or 'unbounded'}",
    ]


@backup.command("info")
@json_option
def backup_info(as_json: bool) -> None:
    """Each copy (the primary bucket, and the DR bucket when set) with its backups, the WAL they need, whether a
    drill verified them, and the recovery window, then a verdict. Repositories of other engines
    (``CQOX_BACKUP_REPOSITORIES``: Barman Cloud, pgBackRest) follow, side by side: latest drill and RTO, RPO, WAL
    gaps and window, and count in the verdict.

    Exit codes: 0 every copy's newest backup is verified and restorable, its WAL has no gap, and its window ends
    within the RPO target (1 hour); 3 the verdict failed (the reasons go to stderr, and into the JSON); 1 a copy
    could not be read (S3 down, wrong credentials, a missing bucket: the copy is named, never shown as empty)
    or another error.
    """
    import json
    from datetime import UTC, datetime

    import psycopg

    import cqox_platform.cli.context as context
    from cqox_platform.backup.verify.checks import RPO_TARGET_SECONDS
    from cqox_platform.backup.verify.info import (
        INFO_SCHEMA_VERSION,
        copy_json,
        info_verdict,
        position_json,
        read_copies,
        unreadable_copy_json,
    )

    ctx = _backup_context()
    # Each copy is read with its own region's client: the DR copy with the DR region's read-only key.
    buckets: list[tuple[str, Any, str]] = [("primary", ctx.s3, ctx.bucket)]
    if dr := context.settings().s3_dr_bucket:
        buckets.append(("dr", context.dr_s3(), dr))
    as_of = datetime.now(UTC)
    with psycopg.connect(**ctx.conninfo, autocommit=True) as conn:
        position, read, unreadable = read_copies(conn, buckets, ctx.provider, as_of=as_of)
    errors = [u.error for u in unreadable]
    repositories, repository_errors = _repository_summaries(ctx.conninfo, RPO_TARGET_SECONDS)
    errors += repository_errors
    by_name = {c.name: copy_json(c) for c in read} | {
        u.name: unreadable_copy_json(u.name, u.where, u.error) for u in unreadable
    }
    shown = [by_name[name] for name, _s3, _bucket in buckets]
    own = info_verdict(read, RPO_TARGET_SECONDS)
    reasons = [*own.reasons, *(r for summary in repositories for r in summary.get("reasons", []))]
    verdict_passed = own.passed and len(reasons) == len(own.reasons)
    passed = verdict_passed and not errors
    if as_json:
        report = {
            "schema_version": INFO_SCHEMA_VERSION,
            "as_of": as_of.isoformat(),
            "cluster": position_json(position),
            "rpo_target_seconds": RPO_TARGET_SECONDS,
            "copies": shown,
            "repositories": repositories,
            "verdict": {"passed": passed, "errors": errors, "reasons": reasons},
        }
        click.echo(json.dumps(report, indent=2))
    else:
        for copy in read:
            for line in _copy_lines(copy, RPO_TARGET_SECONDS):
                click.echo(line)
            click.echo("")
        for summary in repositories:
            for line in _repository_lines(summary):
                click.echo(line)
            click.echo("")
        click.echo("verdict: " + ("OK" if passed else "FAILED"))
    for message in errors:
        click.secho(f"error: {message}", fg="red", err=True)
    for reason in reasons:
        click.echo(f"backup info: {reason}", err=True)
    if errors:
        sys.exit(1)
    if not verdict_passed:
        sys.exit(VERDICT_FAILED)


@backup.command("expire")
@click.option("--dry-run", is_flag=True, help="Print the plan; delete nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON (one object) instead of a table.")
@click.option(
    "--keep-days", type=click.IntRange(min=1), default=None, help="Retention window in days (default 30; >= 1)."
)
@click.option(
    "--keep-full",
    type=click.IntRange(min=1),
    default=None,
    help="The newest N complete backups always stay (default 2; >= 1; pgBackRest repo-retention-full).",
)
def backup_expire(dry_run: bool, as_json: bool, keep_days: int | None, keep_full: int | None) -> None:
    """Apply retention (what `backup_retention` does): delete backups and WAL no kept backup needs.

    Prints one line per backup, oldest first: keep or delete, and why. Always kept: the newest KEEP_FULL
    backups, those inside the window and the newest one before it, and the newest verified backup.
    """
    import json

    import psycopg

    import cqox_platform.cli.context as context
    from cqox_platform.backup.retention import DEFAULT_KEEP_DAYS, DEFAULT_KEEP_FULL, expire

    with psycopg.connect(**context.postgres_admin().conninfo(), autocommit=True) as conn:
        expiry = expire(
            conn,
            context.s3(),
            context.bucket(),
            keep_days=keep_days or DEFAULT_KEEP_DAYS,
            keep_full=keep_full or DEFAULT_KEEP_FULL,
            dry_run=dry_run,
        )
    plan = expiry.plan
    if as_json:
        summary = {**plan.summary(), "dry_run": dry_run, "objects_deleted": expiry.objects_deleted}
        click.echo(json.dumps(summary, indent=2))
        return
    click.echo(f"{'BACKUP':<18}{'ACTION':<8}REASON")
    for row in plan.rows():
        click.echo(f"{row['backup_id']:<18}{row['action']:<8}{row['reason']}")
    verb = "would delete" if dry_run else "deleted"
    click.echo(
        f"{verb} {len(plan.delete)} backup(s) and {len(plan.wal_delete)} WAL file(s); WAL kept from "
        f"{plan.wal_keep_from or '-'} ({expiry.where})",
        err=True,
    )


class _RestoreSources:
    """What `restore` reads from, built from the settings when the restore asks (after its own input checks)."""

    def archiver_config(self) -> Path:
        return _config(None)

    def archive_clients(self, bucket: str | None) -> ArchiveClients:
        import cqox_platform.cli.context as context
        from cqox_platform.backup.archive.store import ArchiveClients

        ctx = _backup_context()
        return ArchiveClients(context.s3_for(bucket) if bucket else ctx.s3, ctx.provider, ctx.bucket)

    def fetch_config(self, archiver_config: Path, bucket: str, directory: Path) -> Path:
        import cqox_platform.cli.context as context
        from cqox_platform.archiver_clients import write_dr_fetch_settings

        s = context.settings()
        if not bucket or bucket != s.s3_dr_bucket:
            return archiver_config
        return write_dr_fetch_settings(
            archiver_config,
            directory,
            endpoint=s.require("s3_dr_endpoint"),
            cacert=str(s.s3_dr_cacert or ""),
            bucket=bucket,
            reader_credentials_file=Path(s.require("s3_dr_reader_credentials_file")),
        )

    def backup_catalog(self, clients: ArchiveClients, bucket: str) -> BackupCatalog:
        """The cluster's backups and the drills' verdicts: both need the platform's PostgreSQL (its system id
        names the archive, ``restore_drills`` holds the verdicts)."""
        import psycopg

        import cqox_platform.cli.context as context
        from cqox_platform.backup.archive.cluster import cluster_archive
        from cqox_platform.backup.archive.records import list_backups
        from cqox_platform.backup.restore.workspace import BackupCatalog, RestoreInputError
        from cqox_platform.backup.verify.drill import verified_backup_ids

        try:
            with psycopg.connect(**context.postgres_admin().conninfo(), autocommit=True) as conn:
                archive = cluster_archive(conn, clients.s3, bucket)
                verified = verified_backup_ids(conn)
        except (psycopg.Error, CqoxError) as exc:
            raise RestoreInputError(
                f"choosing the backup needs the drills' verdicts in the platform's PostgreSQL, which did not answer "
                f"({_one_line(str(exc))}); nothing was downloaded. Give --backup ID (a backup a drill verified, "
                f"from `cqox-platform backup list`) to restore without it."
            ) from None
        return BackupCatalog(list_backups(archive), verified, archive.where(archive.root + "/base/"))

    def xid_status(self, system_id: str, xid: int) -> str | None:
        """What the live cluster says of ``xid`` (``pg_xact_status``, or "future"), when it is the backed-up
        cluster and answers; None otherwise (a restore works with the database gone, so this only adds a check)."""
        import psycopg

        import cqox_platform.cli.context as context
        from cqox_platform.backup.archive.cluster import system_id as live_system_id

        try:
            with psycopg.connect(**context.postgres_admin().conninfo(), autocommit=True) as conn:
                if live_system_id(conn) != system_id:
                    return None
                next_xid = int(conn.execute("SELECT pg_snapshot_xmax(pg_current_snapshot())::text").fetchone()[0])
                full = (next_xid >> 32 << 32) | xid  # the xid in the current epoch, or the previous one
                if full >= next_xid and next_xid >> 32:
                    full -= 2**32
                if full >= next_xid:
                    return "future"
                status = conn.execute("SELECT pg_xact_status(%s::text::xid8)", [str(full)]).fetchone()[0]
                return status or "unknown"
        except (psycopg.Error, CqoxError):
            return None


_RESTORE_EXAMPLES = """
\b
Examples:
  # the newest verified backup, replayed to the end of the archive, promoted
  cqox-platform restore --pgdata /srv/restore/pg
  # up to and including the commit of transaction 73110, from a backup taken before it
  cqox-platform restore --backup 20261126T030000Z --target-xid 73110 --pgdata /srv/restore/pg
  # the newest verified backup that ends before this LSN, paused at it for a look (pg_wal_replay_resume() promotes)
  cqox-platform restore --target-lsn 16/B374D848 --target-action pause --pgdata /srv/restore/pg
"""


@click.command("restore", epilog=_RESTORE_EXAMPLES)
@click.option(
    "--backup",
    "backup_id",
    default=None,
    shell_complete=backup_ids,
    help="Backup id (`cqox-platform backup list`); default: the newest verified backup that precedes the target.",
)
@click.option("--target-time", default=None, help="Recover to this time (e.g. '2026-11-26 06:30:00+00').")
@click.option("--target-name", default=None, help="Recover to this named restore point (needs --backup).")
@click.option("--target-lsn", default=None, help="Recover to this WAL position, inclusive (e.g. '16/B374D848').")
@click.option(
    "--target-xid", default=None, help="Recover up to and including the commit of this transaction (needs --backup)."
)
@click.option("--target-immediate", is_flag=True, help="Stop as soon as the backup is consistent (its end).")
@click.option(
    "--target-action",
    type=click.Choice(["pause", "promote", "shutdown"]),
    default="promote",
    show_default=True,
    help="At the target: pause (inspect, then resume or stop), promote, or shut down.",
)
@click.option(
    "--target-timeline",
    default="latest",
    show_default=True,
    help="Timeline to recover along: latest, current (the backup's) or a timeline id.",
)
@click.option("--pgdata", type=click.Path(path_type=Path), required=True, help="New, empty data directory.")
@click.option("--bucket", default=None, help="Restore from another bucket (e.g. the DR copy).")
@click.option("--port", type=int, default=None, help="Port of the restored server (default: a free one).")
@click.option("--start/--no-start", default=True, help="Start it and wait until recovery has reached its target.")
@click.option(
    "--wal-prefetch",
    type=click.IntRange(min=0, max=64),
    default=None,
    help="WAL segments the restore_command prefetches ahead of replay (default 8; 0 turns prefetch off).",
)
@json_option
def restore(
    backup_id: str | None,
    target_time: str | None,
    target_name: str | None,
    target_lsn: str | None,
    target_xid: str | None,
    target_immediate: bool,
    target_action: str,
    target_timeline: str,
    pgdata: Path,
    bucket: str | None,
    port: int | None,
    start: bool,
    wal_prefetch: int | None,
    as_json: bool,
) -> None:
    """Restore a backup into PGDATA and recover it (to the end of the archive, or to a target).

    One target at most: --target-time, --target-name, --target-lsn, --target-xid or --target-immediate (time,
    LSN and xid are inclusive). Without --backup the newest backup a drill verified that precedes the target is
    chosen (time: ended at or before it; LSN: end LSN at or before it; immediate or none: the newest), and the
    choice is printed; an unverified backup is never chosen. An xid or a name needs --backup.

    Everything that can be checked is checked before the download (which may take hours): the target, PGDATA,
    that the postgres OS user can reach it, the archiver settings, the backup's record. The backup streams
    straight into PGDATA (no staging copy); side files (the server's socket directory and log) go into a fresh
    private directory beside PGDATA, never under predictable names. A failed, interrupted (SIGINT, SIGTERM) or
    killed restore leaves nothing half-open: the first two remove what they created and nothing else; a
    SIGKILL leaves PGDATA marked CQOX_RESTORE_INCOMPLETE, without global/pg_control (no server starts on it),
    and this command refuses it until it is removed.

    The restored server listens on a private unix socket and does not archive, so no client or archive mixes
    it up with the primary; open it by editing listen_addresses when you decide to.
    """
    from cqox_platform.backup.restore.workspace import RestoreInterrupted, RestoreRequest, restore_backup

    request = RestoreRequest(
        backup_id,
        pgdata,
        target_time=target_time,
        target_name=target_name,
        target_lsn=target_lsn,
        target_xid=target_xid,
        target_immediate=target_immediate,
        target_action=target_action,
        target_timeline=target_timeline,
        bucket=bucket,
        port=port,
        start=start,
        wal_prefetch=wal_prefetch,
    )
    try:
        restored = restore_backup(request, _RestoreSources(), say=lambda m: click.echo(m, err=True))
    except RestoreInterrupted as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(143)
    if as_json:
        echo_json(restored_json(restored))
        return
    pgdata = restored.pgdata
    if not restored.started:
        click.echo(
            f"restored backup {restored.backup_id} into {pgdata}; start it with: "
            f"runuser -u postgres -- pg_ctl -D {pgdata} start"
        )
        return
    where = f"recovery stopping {restored.stopped_at}" if restored.stopped_at else "at the end of the archive"
    psql = f"psql -h {restored.socket_dir} -p {restored.port} -U postgres"
    if restored.outcome == "paused":
        click.echo(
            f"restored backup {restored.backup_id}; recovery PAUSED at the target ({where}), not promoted: {psql}   "
            f"(SELECT pg_wal_replay_resume() promotes it; log: {restored.log})"
        )
    elif restored.outcome == "shut down":
        click.echo(
            f"restored backup {restored.backup_id}; the server SHUT DOWN at the target ({where}), not promoted. "
            f"Change recovery_target_* in {pgdata}/postgresql.auto.conf and start it again: "
            f"runuser -u postgres -- pg_ctl -D {pgdata} -l {restored.log} start"
        )
    else:
        click.echo(f"restored backup {restored.backup_id} and promoted ({where}): {psql}   (log: {restored.log})")


def restored_json(restored: RestoredCluster) -> dict[str, Any]:
    """What ``restore --json`` prints: the restored cluster and, when it was started, how to reach it."""
    started = restored.started
    return {
        "schema_version": RESTORE_SCHEMA_VERSION,
        "backup_id": restored.backup_id,
        "pgdata": str(restored.pgdata),
        "started": started,
        "outcome": restored.outcome,
        "stopped_at": restored.stopped_at or None,
        "socket_dir": str(restored.socket_dir) if started else None,
        "port": restored.port if started else None,
        "log": str(restored.log) if started else None,
        "psql": f"psql -h {restored.socket_dir} -p {restored.port} -U postgres" if started else None,
    }
