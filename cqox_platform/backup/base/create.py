"""Base backups: compressed by the server, streamed through envelope encryption into an S3 multipart upload.

``pg_basebackup --compress=server-zstd`` makes the walsender compress (with ``server_workers`` threads), so
the replication protocol and pg_basebackup carry a fraction of the bytes: at 10 GB, the uncompressed stream
cost pg_basebackup and the walsender 21 s of CPU and our zstd another 14 s. PostgreSQL 15 compresses on the
server only when pg_basebackup writes into a directory, so it writes ``base.tar.zst`` into a private work
directory and ``growing_file`` follows it as it grows, punching holes behind the reader: the local disk holds
the read lag, never the backup. The object is that compressed tar, then one zstd frame holding a tar of
``backup_manifest`` (see ``_BackupStream``); encrypted with AES-256-GCM and uploaded as multipart parts,
``upload_parallel`` at a time (memory ``upload_parallel + 1`` parts, see ``multipart``). Order of writes, so
nothing half-done looks finished: data object (multipart completes only at the end), then its envelope
manifest, then the backup record. WAL is not included (``-X none``): PostgreSQL waits until the backup's WAL
is archived by ``wal-push`` before pg_basebackup returns, and restores read it from the archive.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

import zstandard

from cqox_platform.backup.archive.multipart import DEFAULT_PARALLEL, MultipartWriter, UploadStats, abort_stale_uploads
from cqox_platform.backup.archive.records import MAX_WAL_SIZE_KEY, BackupRecord
from cqox_platform.backup.archive.store import Archive
from cqox_platform.backup.archive.wal_names import Segment, format_lsn, parse_lsn, segment_name, segment_number
from cqox_platform.backup.base.growing_file import GrowingFileReader, WriterFailedError
from cqox_platform.backup.base.tarsniff import ZstdTarHeadSniffer
from cqox_platform.backup.restore.checksums import MANIFEST_NAME
from cqox_platform.crypto.envelope import Manifest, encrypt_to
from cqox_platform.crypto.keys import DataKeyProvider
from cqox_platform.errors import BackupError

Progress = Callable[[str], None]
ZSTD_LEVEL = 3
SERVER_ZSTD_WORKERS = 2
ARCHIVE_NAME = "base.tar.zst"
WORKDIR_PREFIX = "cqox-basebackup-"
#: A backup killed with SIGKILL runs no ``finally``: pg_basebackup must not go on writing into the work directory.
DIE_WITH_PARENT = ("setpriv", "--pdeathsig", "KILL", "--")


class BaseBackupError(BackupError):
    """A base backup failed; nothing was recorded and its upload was aborted."""


def new_backup_id(now: datetime | None = None) -> str:
    return (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")


def parse_backup_label(text: str) -> dict[str, str]:
    """``backup_label`` lines ``KEY: value`` -> dict."""
    out = {}
    for line in text.splitlines():
        if ": " in line:
            key, value = line.split(": ", 1)
            out[key.strip()] = value.strip()
    return out


class _RateReporter:
    """Calls ``progress`` at most every ``interval`` seconds with bytes and rates."""

    def __init__(self, progress: Progress, estimate: int, interval: float = 5.0) -> None:
        self.progress, self.estimate, self.interval = progress, estimate, interval
        self.started = self.last = time.monotonic()

    def tick(self, read: int, total: int, stored: int) -> None:
        now = time.monotonic()
        if now - self.last < self.interval:
            return
        self.last = now
        rate = read / max(now - self.started, 1e-9) / 2**20
        estimate = total or self.estimate
        share = f" ({100 * read / estimate:.0f} % of ~{estimate / 2**20:.0f} MiB)" if estimate else ""
        self.progress(
            f"base backup: read {read / 2**20:.0f} MiB{share}, stored {stored / 2**20:.0f} MiB, {rate:.1f} MiB/s"
        )


class _Stderr:
    """pg_basebackup's stderr, read as it comes: ``--progress`` counters (uncompressed kB) and everything else."""

    PROGRESS = re.compile(rb"(\d+)/(\d+) kB")

    def __init__(self, stream: BinaryIO) -> None:
        self.done_bytes = self.total_bytes = 0
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._drain, args=(stream,), name="pg_basebackup-stderr", daemon=True)
        self._thread.start()

    def _drain(self, stream: BinaryIO) -> None:
        pending = b""
        while chunk := os.read(stream.fileno(), 65536):
            *pieces, pending = re.split(rb"[\r\n]", pending + chunk)
            for piece in pieces:
                self._take(piece)
        self._take(pending)

    def _take(self, piece: bytes) -> None:
        match = self.PROGRESS.search(piece)
        if match:
            self.done_bytes, self.total_bytes = int(match[1]) * 1024, int(match[2]) * 1024
        elif piece.strip():
            self.lines.append(piece.decode(errors="replace").strip())

    def text(self) -> str:
        self._thread.join(timeout=5)
        return "\n".join(self.lines)[-2000:]


class _BackupStream:
    """The object's plaintext: the server-compressed tar as pg_basebackup writes it, then one more zstd frame.

    The extra frame is a tar holding ``backup_manifest``, which pg_basebackup writes beside the archive when the
    server compresses (it cannot inject it into a compressed tar): decompressed, the object is the server's tar
    followed by the manifest's, which the restore reads as one stream (``restore_stream.TarExtractor`` skips the
    zero blocks between them; older backups, one tar with the manifest inside, read the same way).
    """

    def __init__(self, archive: GrowingFileReader, out_dir: Path, on_read: Callable[[], None]) -> None:
        self.archive, self.out_dir, self.on_read = archive, out_dir, on_read
        self.head = ZstdTarHeadSniffer({"backup_label"})
        self.manifest: bytes | None = None
        self.archive_bytes = 0
        self._tail: memoryview | None = None

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        if self._tail is None:
            data = self.archive.read(size)
            if data:
                self.archive_bytes += len(data)
                self.head.feed(data)
                self.on_read()
                return data
            self._tail = memoryview(self._manifest_frame())
        size = size if size and size > 0 else len(self._tail)
        data, self._tail = bytes(self._tail[:size]), self._tail[size:]
        return data

    def _manifest_frame(self) -> bytes:
        produced = sorted(p.name for p in self.out_dir.iterdir())
        if produced != [MANIFEST_NAME, ARCHIVE_NAME]:
            raise BaseBackupError(
                f"pg_basebackup wrote {produced}, expected {[MANIFEST_NAME, ARCHIVE_NAME]}: a cluster with "
                "tablespaces outside the data directory cannot be backed up by this format."
            )
        self.manifest = (self.out_dir / MANIFEST_NAME).read_bytes()
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            info = tarfile.TarInfo(MANIFEST_NAME)
            info.size, info.mode, info.mtime = len(self.manifest), 0o600, int(time.time())
            tar.addfile(info, io.BytesIO(self.manifest))
        return zstandard.ZstdCompressor(level=ZSTD_LEVEL).compress(buf.getvalue())


def _remove_abandoned_workdirs(parent: Path, progress: Progress) -> None:
    """Delete work directories of backups whose process is gone (killed with SIGKILL: no ``finally`` ran)."""
    for path in parent.glob(f"{WORKDIR_PREFIX}*"):
        try:
            pid = int(path.name.removeprefix(WORKDIR_PREFIX).split("-", 1)[0])
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)
            progress(f"removed {path}, left by a backup that was killed")
        except (ValueError, PermissionError):
            continue


def create_base_backup(
    archive: Archive,
    provider: DataKeyProvider,
    *,
    dsn: str,
    pg_basebackup: str = "pg_basebackup",
    pg_version: str = "",
    estimate_bytes: int = 0,
    max_wal_size_bytes: int | None = None,
    progress: Progress = lambda _m: None,
    part_size: int = 32 * 1024 * 1024,
    upload_parallel: int = DEFAULT_PARALLEL,
    backup_id: str | None = None,
    server_workers: int = SERVER_ZSTD_WORKERS,
    workdir_parent: Path | None = None,
) -> BackupRecord:
    """Take a base backup of the cluster at ``dsn`` into ``archive``; return the record (already in S3).

    The caller holds the backup lock (one backup per cluster at a time): stale multipart uploads under the
    base prefix are aborted first, which is what cleans up after a backup killed with SIGKILL, and so are the
    work directories such a backup left.
    """
    backup_id = backup_id or new_backup_id()
    parent = workdir_parent or Path(tempfile.gettempdir())
    aborted = _clean_up_after_killed_backups(archive, parent, progress)
    data_key = archive.backup_data_key(backup_id)
    started_wall, started = datetime.now(UTC), time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix=f"{WORKDIR_PREFIX}{os.getpid()}-", dir=parent))
    argv = _pg_basebackup_argv(pg_basebackup, dsn, workdir / "out", backup_id, server_workers)
    streamed = _stream_into_archive(
        argv, workdir, archive, provider, data_key, estimate_bytes, progress, part_size, upload_parallel
    )
    end = _read_backup_end(archive, data_key, streamed)
    stopped_wall, duration = datetime.now(UTC), time.monotonic() - started
    if streamed.upload is not None:
        progress(f"base backup {backup_id}: uploaded {streamed.upload.describe()}")
    archive.put_bytes(archive.backup_manifest_key(backup_id), streamed.envelope.to_json().encode())
    record = _backup_record(
        archive,
        backup_id,
        data_key,
        streamed,
        end,
        started_wall,
        stopped_wall,
        duration,
        pg_version,
        extra={
            "aborted_stale_uploads": aborted,
            "compression": f"server-zstd level {ZSTD_LEVEL}, {server_workers} workers",
            **({MAX_WAL_SIZE_KEY: max_wal_size_bytes} if max_wal_size_bytes else {}),
        },
    )
    archive.put_bytes(archive.backup_record_key(backup_id), record.to_json().encode())
    progress(
        f"base backup {backup_id}: {record.database_bytes / 2**20:.0f} MiB -> {record.stored_bytes / 2**20:.1f} MiB "
        f"stored in {duration:.1f} s ({record.throughput_mib_s:.1f} MiB/s)"
    )
    return record


def _clean_up_after_killed_backups(archive: Archive, workdir_parent: Path, progress: Progress) -> list[str]:
    """What a backup killed with SIGKILL left (it ran no ``finally``): its multipart uploads, its work directory.
    Returns the keys of the aborted uploads."""
    aborted = abort_stale_uploads(archive, f"{archive.root}/base/")
    for key in aborted:
        progress(f"aborted a stale multipart upload of {archive.where(key)} (a backup that was killed)")
    _remove_abandoned_workdirs(workdir_parent, progress)
    return aborted


def _pg_basebackup_argv(pg_basebackup: str, dsn: str, out_dir: Path, backup_id: str, server_workers: int) -> list[str]:
    """A server-compressed tar and its manifest into ``out_dir`` (see the module docstring), without WAL, dying
    with this process."""
    return [
        *DIE_WITH_PARENT,
        pg_basebackup,
        "-d",
        dsn,
        "-D",
        str(out_dir),
        "-F",
        "t",
        "-X",
        "none",
        "--checkpoint=fast",
        "-l",
        backup_id,
        "--manifest-checksums=CRC32C",
        f"--compress=server-zstd:level={ZSTD_LEVEL},workers={server_workers}",
        "--progress",
    ]


@dataclass
class _Streamed:
    """What streaming pg_basebackup's output into the archive produced."""

    envelope: Manifest  # the data object's envelope manifest
    label: bytes | None  # backup_label, sniffed from the tar's head
    backup_manifest: bytes | None  # PostgreSQL's backup_manifest, appended as the object's last frame
    upload: UploadStats | None


def _stream_into_archive(
    argv: list[str],
    workdir: Path,
    archive: Archive,
    provider: DataKeyProvider,
    data_key: str,
    estimate_bytes: int,
    progress: Progress,
    part_size: int,
    upload_parallel: int,
) -> _Streamed:
    """Run pg_basebackup (writing into ``workdir/out``) and follow its archive file into an encrypted multipart
    upload as it grows; the work directory is gone when this returns, whatever happened."""
    out_dir = workdir / "out"
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    stderr = _Stderr(proc.stderr)  # type: ignore[arg-type]
    followed = GrowingFileReader(
        out_dir / ARCHIVE_NAME, proc, lambda rc: f"pg_basebackup exited with {rc}: {stderr.text()}", progress=progress
    )
    try:
        with MultipartWriter(
            archive, data_key, part_size=part_size, parallel=upload_parallel, progress=progress
        ) as writer:
            reporter = _RateReporter(progress, estimate_bytes)
            stream = _BackupStream(
                followed, out_dir, lambda: reporter.tick(stderr.done_bytes, stderr.total_bytes, writer.bytes_written)
            )
            envelope = encrypt_to(stream, writer, provider, object_id=data_key)
    except WriterFailedError as exc:
        raise BaseBackupError(str(exc)) from None
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        followed.close()
        shutil.rmtree(workdir, ignore_errors=True)
    return _Streamed(envelope, stream.head.captured.get("backup_label"), stream.manifest, writer.stats)


@dataclass(frozen=True)
class _BackupEnd:
    """Where the backup starts and stops in WAL, and how much it read, from backup_label and backup_manifest."""

    label: dict[str, str]
    timeline: int
    start_lsn: int
    stop_lsn: int
    stop_timeline: int
    database_bytes: int


def _read_backup_end(archive: Archive, data_key: str, streamed: _Streamed) -> _BackupEnd:
    """Parse the label and the manifest; without either the object restores nothing, so it is deleted."""
    if streamed.label is None or streamed.backup_manifest is None:
        archive.delete(data_key)
        raise BaseBackupError(
            "the tar stream from pg_basebackup lacked backup_label or backup_manifest; nothing recorded."
        )
    label = parse_backup_label(streamed.label.decode())
    manifest = json.loads(streamed.backup_manifest)
    # Newest timeline first in the manifest; the range that ends last is where the backup stopped.
    wal_range = max(manifest["WAL-Ranges"], key=lambda r: parse_lsn(r["End-LSN"]))
    return _BackupEnd(
        label=label,
        timeline=int(label["START TIMELINE"]),
        start_lsn=parse_lsn(label["START WAL LOCATION"].split()[0]),
        stop_lsn=parse_lsn(wal_range["End-LSN"]),
        stop_timeline=int(wal_range["Timeline"]),
        database_bytes=sum(int(entry.get("Size", 0)) for entry in manifest["Files"]),
    )


def _backup_record(
    archive: Archive,
    backup_id: str,
    data_key: str,
    streamed: _Streamed,
    end: _BackupEnd,
    started: datetime,
    stopped: datetime,
    duration: float,  # monotonic: the wall clock may be stepped while a backup runs
    pg_version: str,
    extra: dict[str, object],
) -> BackupRecord:
    """The record the backup is listed by, written last; ``extra`` joins what the upload measured."""
    upload = streamed.upload
    return BackupRecord(
        backup_id=backup_id,
        system_id=archive.system_id,
        bucket=archive.bucket,
        label=end.label.get("LABEL", backup_id),
        timeline=end.timeline,
        start_lsn=format_lsn(end.start_lsn),
        stop_lsn=format_lsn(end.stop_lsn),
        start_wal=segment_name(end.timeline, segment_number(end.start_lsn)),
        stop_wal=Segment(end.stop_timeline, segment_number(end.stop_lsn)).name,
        start_time=started.isoformat(),
        stop_time=stopped.isoformat(),
        database_bytes=end.database_bytes,
        compressed_bytes=streamed.envelope.plaintext_bytes,
        stored_bytes=streamed.envelope.ciphertext_bytes,
        duration_seconds=round(duration, 3),
        throughput_mib_s=round(end.database_bytes / 2**20 / max(duration, 1e-9), 2),
        key_name=streamed.envelope.key_name,
        key_version=streamed.envelope.key_version,
        object_key=data_key,
        manifest_key=archive.backup_manifest_key(backup_id),
        pg_version=pg_version,
        extra={
            "label_start_time": end.label.get("START TIME", ""),
            "upload_parts": upload.parts if upload else 0,
            "upload_parallel": upload.parallel if upload else 0,
            "upload_mib_s": round(upload.mib_s, 2) if upload else 0.0,
            **extra,
        },
    )
