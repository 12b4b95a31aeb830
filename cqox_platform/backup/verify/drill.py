"""Restore drills: prove a backup restores, to a point whose contents were captured, and measure the RTO.

A drill never raises for a failed restore: it returns a result with ``passed=False`` and the error, so the
failure is recorded (``restore_drills``), charted and alerted on like a success.

Only a drill that replayed to a captured restore point and compared the CQOX database's tables with what was
captured there verifies a backup (``status`` "passed"). Without a captured point the scratch cluster is only
started and amcheck-ed (in the ``postgres`` database): that proves the files extract and the server starts, not
that the backup holds the data, so it is recorded as "partial" and verifies nothing (``passed`` stays false).

Scratch clusters listen on a private unix socket only, never archive, and are removed afterwards unless
``keep`` is set.
"""

from __future__ import annotations

import shutil
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from cqox_platform.backup.archive.records import BackupRecord
from cqox_platform.backup.archive.store import Archive
from cqox_platform.backup.repository.base import Repository, RepositoryBackup
from cqox_platform.backup.restore.files import Progress, restore_files
from cqox_platform.backup.restore.recovery import (
    DEFAULT_WAL_PREFETCH,
    RecoveryTarget,
    configure_recovery,
    restore_command_for,
)
from cqox_platform.backup.restore.space import check_room_to_restore
from cqox_platform.backup.verify.proof import RestorePoint, compare_checksums, table_checksums
from cqox_platform.crypto.keys import DataKeyProvider
from cqox_platform.pgserver import ScratchCluster, free_port, pg_bindir

PHASES = ("download", "decrypt", "extract", "verify", "replay", "checks")
#: ``restore_drills.status``: only "passed" verifies a backup (migration 0010).
PASSED, PARTIAL, FAILED = "passed", "partial", "failed"


@dataclass
class DrillResult:
    drill_id: str
    backup_id: str
    bucket: str
    target: RecoveryTarget
    started_at: datetime
    finished_at: datetime | None = None
    #: True only when ``status`` is "passed": this drill verified the backup.
    passed: bool = False
    error: str | None = None
    status: str = FAILED
    seconds: dict[str, float] = field(default_factory=dict)
    tables_checked: int = 0
    indexes_checked: int = 0
    mismatches: list[dict[str, Any]] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    #: The repository the backup belongs to: "cqox" for the platform's own archive.
    repository: str = "cqox"

    @property
    def rto_seconds(self) -> float:
        return round(sum(self.seconds.values()), 3)


def run_drill(
    archive: Archive,
    provider: DataKeyProvider,
    record: BackupRecord,
    target: RecoveryTarget,
    *,
    expected: RestorePoint | None,
    cli: Path,
    settings_file: Path,
    workdir: Path | None = None,
    progress: Progress = lambda _m: None,
    keep: bool = False,
    replay_timeout: float = 3600,
    wal_prefetch: int = DEFAULT_WAL_PREFETCH,
) -> DrillResult:
    result = DrillResult(
        drill_id=f"{record.backup_id}-{uuid.uuid4().hex[:8]}",
        backup_id=record.backup_id,
        bucket=archive.bucket,
        target=target,
        started_at=datetime.now(UTC),
    )

    def restore(pgdata: Path, scratch: Path) -> str:
        check_room_to_restore(archive, record, target, scratch, "the drill's scratch directory", prefetch=wal_prefetch)
        where = archive.where(record.object_key)
        progress(f"drill {result.drill_id}: downloading {where} ({record.stored_bytes / 2**20:.1f} MiB)")
        files = restore_files(archive, provider, record, pgdata, progress, pg_bindir())
        result.seconds.update(files.seconds)
        result.details["key_version"] = files.key_version
        return restore_command_for(cli, settings_file, archive.bucket, wal_prefetch, pgdata)

    return drill_in_scratch(
        result, restore, expected, PHASES, workdir=workdir, progress=progress, keep=keep, replay_timeout=replay_timeout
    )


#: The phases of a drill of another engine's repository: its own restore tool does download to extract in one.
REPOSITORY_PHASES = ("restore", "verify", "replay", "checks")


def run_repository_drill(
    repository: Repository,
    backup: RepositoryBackup,
    target: RecoveryTarget,
    *,
    expected: RestorePoint | None,
    workdir: Path | None = None,
    progress: Progress = lambda _m: None,
    keep: bool = False,
    replay_timeout: float = 3600,
) -> DrillResult:
    """A drill of a backup kept by another engine (Barman Cloud, pgBackRest): restored by the engine's own tool,
    checked by the engine's own integrity check where it has one, replayed through its own ``restore_command``
    to a captured point, then proven like the platform's own backups (row checksums, amcheck)."""
    result = DrillResult(
        drill_id=f"{repository.name}-{backup.backup_id}-{uuid.uuid4().hex[:8]}",
        backup_id=backup.backup_id,
        bucket=repository.where,
        target=target,
        started_at=datetime.now(UTC),
        repository=repository.name,
    )
    result.details["engine"] = repository.engine

    def restore(pgdata: Path, scratch: Path) -> str:
        progress(f"drill {result.drill_id}: restoring {backup.backup_id} from {repository.where}")
        started = time.monotonic()
        repository.restore(backup.backup_id, pgdata, scratch)
        result.seconds["restore"] = time.monotonic() - started
        started = time.monotonic()
        verified = repository.verify_restored(backup.backup_id, pgdata, scratch)
        result.seconds["verify"] = time.monotonic() - started
        result.details["integrity_check"] = verified or (
            f"none: {repository.engine} keeps no backup_manifest, so pg_verifybackup cannot check the restored "
            "files; only replay, row checksums and amcheck prove them"
        )
        return repository.restore_command(scratch, pgdata)

    return drill_in_scratch(
        result,
        restore,
        expected,
        REPOSITORY_PHASES,
        workdir=workdir,
        progress=progress,
        keep=keep,
        replay_timeout=replay_timeout,
    )


def drill_in_scratch(
    result: DrillResult,
    restore: Callable[[Path, Path], str],
    expected: RestorePoint | None,
    phases: tuple[str, ...],
    *,
    workdir: Path | None,
    progress: Progress,
    keep: bool,
    replay_timeout: float,
) -> DrillResult:
    """The part every drill shares: a scratch directory, ``restore(pgdata, scratch)`` filling ``pgdata`` and
    returning its restore_command, recovery to ``result.target``, the checks, the verdict and the cleanup."""
    scratch = Path(tempfile.mkdtemp(prefix="cqox-drill-", dir=workdir))
    scratch.chmod(0o755)  # the postgres OS user traverses it to its data directory
    pgdata = scratch / "pgdata"
    pgdata.mkdir(mode=0o700)
    cluster = ScratchCluster(pgdata, scratch / "sock", free_port(), scratch / "server.log", pg_bindir())
    target = result.target
    try:
        restore_command = restore(pgdata, scratch)
        configure_recovery(
            pgdata,
            port=cluster.port,
            socket_dir=cluster.socket_dir,
            restore_command=restore_command,
            target=target,
        )
        progress(f"drill {result.drill_id}: recovering to {target.kind} {target.value!r}")
        started = time.monotonic()
        cluster.start()
        cluster.wait_promoted(replay_timeout, progress)
        result.seconds["replay"] = time.monotonic() - started
        started = time.monotonic()
        _check_restored(cluster, expected, result)
        result.seconds["checks"] = time.monotonic() - started
        result.status, result.error = drill_verdict(
            expected, result.tables_checked, result.mismatches, result.details.get("amcheck_errors")
        )
        result.passed = result.status == PASSED
    except Exception as exc:
        result.passed = False
        result.status = FAILED
        result.error = str(exc)
        result.details["server_log_tail"] = cluster.log_tail(15)
    finally:
        cluster.stop()
        result.finished_at = datetime.now(UTC)
        if keep:
            result.details["scratch_dir"] = str(scratch)
        else:
            shutil.rmtree(scratch, ignore_errors=True)
    for phase in phases:
        result.seconds.setdefault(phase, 0.0)
        result.seconds[phase] = round(result.seconds[phase], 3)
    return result


def drill_verdict(
    expected: RestorePoint | None,
    tables_checked: int,
    mismatches: list[dict[str, Any]],
    amcheck_errors: list[str] | None,
) -> tuple[str, str | None]:
    """(status, error) of a drill whose restore finished: "passed" only when tables were compared with a
    captured point and all matched, "partial" when nothing was compared, "failed" when anything differed."""
    if mismatches:
        return FAILED, f"{len(mismatches)} table(s) differ from the captured restore point"
    if amcheck_errors:
        return FAILED, f"amcheck found corrupt indexes: {amcheck_errors}"
    if expected is None or tables_checked == 0:
        what = (
            "no restore point was captured after this backup"
            if expected is None
            else (f"restore point {expected.name} captured no tables")
        )
        return PARTIAL, (
            f"partial: {what}, so the restore was only started and amcheck-ed, no data compared; it verifies "
            "nothing. Capture a point (materialize wal_archive_status, or take backups with `backup create` / "
            "postgres_basebackup, which capture one) and drill again."
        )
    return PASSED, None


def _check_restored(cluster: ScratchCluster, expected: RestorePoint | None, result: DrillResult) -> None:
    database = expected.database if expected else "postgres"
    with cluster.connect(database) as conn:
        if expected is not None:
            compare_with_point(conn, expected, result)
        amcheck_indexes(conn, result)


def compare_with_point(conn: psycopg.Connection, expected: RestorePoint, result: DrillResult) -> None:
    """The restored tables' checksums against what was captured at ``expected``, into ``result`` (read-only: a
    server paused at the point answers it too)."""
    actual = table_checksums(conn, sorted(expected.tables))
    result.mismatches = compare_checksums(expected.tables, actual)
    result.tables_checked = len(expected.tables)
    result.details["rows_checked"] = sum(t["rows"] for t in actual.values() if t)


def amcheck_indexes(conn: psycopg.Connection, result: DrillResult) -> None:
    """``bt_index_check`` of every valid B-tree index of the connected database, into ``result`` (a promoted
    server: it may have to create the extension)."""
    conn.execute("CREATE EXTENSION IF NOT EXISTS amcheck")
    indexes = conn.execute(
        """
        SELECT c.oid::regclass::text FROM pg_index i
          JOIN pg_class c ON c.oid = i.indexrelid
          JOIN pg_am am ON am.oid = c.relam
         WHERE am.amname = 'btree' AND c.relkind = 'i' AND i.indisvalid AND c.relpersistence <> 't'
        """
    ).fetchall()
    errors = []
    for (index,) in indexes:
        try:
            conn.execute("SELECT bt_index_check(%s::regclass, true)", [index])
        except psycopg.Error as exc:
            errors.append(f"{index}: {exc.diag.message_primary or exc}")
    result.indexes_checked = len(indexes)
    if errors:
        result.details["amcheck_errors"] = errors


def record_drill(conn: psycopg.Connection, result: DrillResult) -> None:
    s = result.seconds
    conn.execute(
        """
        INSERT INTO restore_drills (drill_id, backup_id, bucket, target_kind, target, started_at, finished_at,
            passed, status, error, rto_seconds, download_seconds, decrypt_seconds, extract_seconds, verify_seconds,
            replay_seconds, checks_seconds, tables_checked, indexes_checked, details, repository)
        VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
        """,
        [
            result.drill_id,
            result.backup_id,
            result.bucket,
            result.target.kind,
            result.target.value,
            result.started_at,
            result.finished_at,
            result.passed,
            result.status,
            result.error,
            result.rto_seconds,
            s.get("download"),
            s.get("decrypt"),
            s.get("extract"),
            s.get("verify"),
            s.get("replay"),
            s.get("checks"),
            result.tables_checked,
            result.indexes_checked,
            Jsonb(
                {
                    **result.details,
                    "mismatches": result.mismatches,
                    "target": asdict(result.target),
                    "seconds": result.seconds,
                }
            ),
            result.repository,
        ],
    )


def verified_backup_ids(conn: psycopg.Connection, repository: str = "cqox") -> set[str]:
    """Backups of ``repository`` a drill verified: replayed to a captured point and compared ("partial" drills do
    not count)."""
    rows = conn.execute(
        "SELECT DISTINCT backup_id FROM restore_drills WHERE status = 'passed' AND repository = %s", [repository]
    ).fetchall()
    return {r[0] for r in rows}


def latest_drill(
    conn: psycopg.Connection, backup_id: str, *, passed_only: bool = False, repository: str = "cqox"
) -> dict[str, Any] | None:
    """The newest drill of ``backup_id`` in ``repository`` (with ``passed_only``, the newest that verified it)."""
    row = conn.execute(
        "SELECT drill_id, passed, status, error, rto_seconds, finished_at FROM restore_drills WHERE backup_id = %s "
        "AND repository = %s "
        + ("AND status = 'passed' " if passed_only else "")
        + "ORDER BY finished_at DESC LIMIT 1",
        [backup_id, repository],
    ).fetchone()
    if row is None:
        return None
    return dict(zip(["drill_id", "passed", "status", "error", "rto_seconds", "finished_at"], row, strict=True))
