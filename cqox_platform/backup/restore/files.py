"""Turn a base backup in S3 back into files: stream them in, hand them to postgres, verify them.

The files arrive through ``restore.stream`` (parallel ranged GETs -> decrypt -> zstd -> tar, no staging copy).
Each phase is timed because the RTO a drill reports is their sum, and knowing which phase dominates is what
lets an operator shrink it; in the streamed pipeline the phases overlap, so ``download`` is the time the
pipeline waited on the network, ``decrypt`` the AES-GCM work and ``extract`` the rest of its wall time.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cqox_platform.backup.archive.records import BackupRecord
from cqox_platform.backup.archive.store import Archive, ArchiveError
from cqox_platform.backup.restore.stream import INCOMPLETE_MARKER, mark_incomplete, stream_restore
from cqox_platform.crypto.envelope import Manifest
from cqox_platform.crypto.keys import DataKeyProvider
from cqox_platform.errors import RestoreError
from cqox_platform.pgserver import as_pg_user, chown_tree, pg_bindir

Progress = Callable[[str], None]


def verify_backup(pgdata: Path, pg_bindir: Path, *, checksums: bool = True) -> float:
    """``pg_verifybackup`` against the backup_manifest that came inside the tar (WAL is checked by replay).

    ``checksums=False`` when the stream already compared every file's CRC32C (``manifest_checksums``): it then
    checks the manifest's own checksum, missing and extra files and sizes without re-reading every byte.
    """
    started = time.monotonic()
    verify = [str(pg_bindir / "pg_verifybackup"), "--no-parse-wal", "--quiet", "--ignore", INCOMPLETE_MARKER]
    if not checksums:
        verify.append("--skip-checksums")
    result = subprocess.run(
        as_pg_user([*verify, str(pgdata)]),
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise RestoreError(f"pg_verifybackup found problems in {pgdata}: {(result.stderr or result.stdout).strip()}")
    return time.monotonic() - started


def fetch_backup_manifest(archive: Archive, record: BackupRecord) -> Manifest:
    text = archive.get_bytes(record.manifest_key)
    if text is None:
        raise ArchiveError(f"{archive.where(record.manifest_key)} is missing: the backup cannot be decrypted.")
    return Manifest.from_json(text, where=archive.where(record.manifest_key))


@dataclass(frozen=True)
class RestoredFiles:
    """Seconds per phase of putting a backup's files in place, and the key version that decrypted them."""

    seconds: dict[str, float]
    key_version: int


def restore_files(
    archive: Archive,
    provider: DataKeyProvider,
    record: BackupRecord,
    pgdata: Path,
    progress: Progress,
    bindir: Path | None = None,
) -> RestoredFiles:
    """Stream the backup into ``pgdata`` (no staging copy), hand it to postgres, pg_verifybackup it.

    ``pgdata`` carries ``INCOMPLETE_MARKER`` from before the first byte until the verification passed: a restore
    killed in between leaves a directory that names itself incomplete and has no ``global/pg_control``.
    """
    manifest = fetch_backup_manifest(archive, record)
    mark_incomplete(pgdata, f"backup {record.backup_id} ({archive.where(record.object_key)})")
    streamed = stream_restore(archive, record.object_key, record.stored_bytes, manifest, provider, pgdata, progress)
    seconds = dict(streamed.seconds)
    if streamed.checksums_verified:
        progress(f"restore: {streamed.files} files match backup_manifest's CRC32C (checked while extracting)")
    chown_tree(pgdata)
    seconds["verify"] = verify_backup(pgdata, bindir or pg_bindir(), checksums=not streamed.checksums_verified)
    (pgdata / INCOMPLETE_MARKER).unlink()
    return RestoredFiles(seconds, manifest.key_version)
