"""Base backups: ``pg_basebackup`` streamed through zstd and envelope encryption into an S3 multipart upload.

No full local copy is ever made: the tar stream flows pg_basebackup -> (tar sniffer) -> zstd -> AES-256-GCM
-> multipart parts uploaded ``upload_parallel`` at a time, with memory bounded by ``upload_parallel + 1`` parts
(see ``multipart``) plus zstd's window. Order of writes, so nothing half-done looks
finished: data object (multipart completes only at the end), then its envelope manifest, then the backup
record. WAL is not included (``-X none``): PostgreSQL waits until the backup's WAL is archived by
``wal-push`` before pg_basebackup returns, and restores read it from the archive.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import BinaryIO

import zstandard

from cqox_platform.backup.archive import Archive
from cqox_platform.backup.multipart import DEFAULT_PARALLEL, MultipartWriter, abort_stale_uploads
from cqox_platform.backup.records import BackupRecord
from cqox_platform.backup.tarsniff import TarSniffer
from cqox_platform.backup.walnames import Segment, format_lsn, parse_lsn, segment_name, segment_number
from cqox_platform.crypto.envelope import encrypt_to
from cqox_platform.crypto.keys import DataKeyProvider
from cqox_platform.errors import CqoxError

Progress = Callable[[str], None]
ZSTD_LEVEL = 3


class BackupError(CqoxError):
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

    def tick(self, read: int, stored: int) -> None:
        now = time.monotonic()
        if now - self.last < self.interval:
            return
        self.last = now
        rate = read / max(now - self.started, 1e-9) / 2**20
        share = f" ({100 * read / self.estimate:.0f} % of ~{self.estimate / 2**20:.0f} MiB)" if self.estimate else ""
        self.progress(
            f"base backup: read {read / 2**20:.0f} MiB{share}, stored {stored / 2**20:.0f} MiB, {rate:.1f} MiB/s"
        )


class _CountingReader:
    def __init__(self, src: BinaryIO, on_read: Callable[[], None]) -> None:
        self.src, self.on_read = src, on_read

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        data = self.src.read(size)
        self.on_read()
        return data


def create_base_backup(
    archive: Archive,
    provider: DataKeyProvider,
    *,
    dsn: str,
    pg_basebackup: str = "pg_basebackup",
    pg_version: str = "",
    estimate_bytes: int = 0,
    progress: Progress = lambda _m: None,
    part_size: int = 32 * 1024 * 1024,
    upload_parallel: int = DEFAULT_PARALLEL,
    backup_id: str | None = None,
) -> BackupRecord:
    """Take a base backup of the cluster at ``dsn`` into ``archive``; return the record (already in S3).

    The caller holds the backup lock (one backup per cluster at a time): stale multipart uploads under the
    base prefix are aborted first, which is what cleans up after a backup killed with SIGKILL.
    """
    backup_id = backup_id or new_backup_id()
    aborted = abort_stale_uploads(archive, f"{archive.root}/base/")
    for key in aborted:
        progress(f"aborted a stale multipart upload of {archive.where(key)} (a backup that was killed)")
    data_key = archive.backup_data_key(backup_id)
    started_wall = datetime.now(UTC)
    started = time.monotonic()
    argv = [
        pg_basebackup,
        "-d",
        dsn,
        "-D",
        "-",
        "-F",
        "t",
        "-X",
        "none",
        "--checkpoint=fast",
        "-l",
        backup_id,
        "--manifest-checksums=CRC32C",
    ]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    stderr_chunks: list[bytes] = []
    drain = threading.Thread(target=lambda: stderr_chunks.append(proc.stderr.read()), daemon=True)  # type: ignore[union-attr]
    drain.start()
    sniffer = TarSniffer(proc.stdout, {"backup_label", "backup_manifest"})  # type: ignore[arg-type]
    try:
        with MultipartWriter(
            archive, data_key, part_size=part_size, parallel=upload_parallel, progress=progress
        ) as writer:
            reporter = _RateReporter(progress, estimate_bytes)
            counted = _CountingReader(sniffer, lambda: reporter.tick(sniffer.bytes_read, writer.bytes_written))
            compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL, threads=-1)
            with compressor.stream_reader(counted, read_size=1 << 20) as compressed:
                manifest = encrypt_to(compressed, writer, provider, object_id=data_key)
            rc = proc.wait()
            drain.join()
            if rc != 0:
                message = b"".join(stderr_chunks).decode(errors="replace").strip()
                raise BackupError(f"pg_basebackup exited with {rc}: {message[-2000:]}")
    except BaseException:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        raise
    label_text = sniffer.captured.get("backup_label")
    manifest_text = sniffer.captured.get("backup_manifest")
    if label_text is None or manifest_text is None:
        archive.delete(data_key)
        raise BackupError("the tar stream from pg_basebackup lacked backup_label or backup_manifest; nothing recorded.")
    label = parse_backup_label(label_text.decode())
    wal_range = json.loads(manifest_text)["WAL-Ranges"][-1]
    timeline = int(label["START TIMELINE"])
    start_lsn = parse_lsn(label["START WAL LOCATION"].split()[0])
    stop_lsn = parse_lsn(wal_range["End-LSN"])
    stop_timeline = int(wal_range["Timeline"])
    stopped_wall = datetime.now(UTC)
    duration = time.monotonic() - started
    upload = writer.stats
    if upload is not None:
        progress(f"base backup {backup_id}: uploaded {upload.describe()}")
    archive.put_bytes(archive.backup_manifest_key(backup_id), manifest.to_json().encode())
    record = BackupRecord(
        backup_id=backup_id,
        system_id=archive.system_id,
        bucket=archive.bucket,
        label=label.get("LABEL", backup_id),
        timeline=timeline,
        start_lsn=format_lsn(start_lsn),
        stop_lsn=format_lsn(stop_lsn),
        start_wal=segment_name(timeline, segment_number(start_lsn)),
        stop_wal=Segment(stop_timeline, segment_number(stop_lsn)).name,
        start_time=started_wall.isoformat(),
        stop_time=stopped_wall.isoformat(),
        database_bytes=sniffer.bytes_read,
        compressed_bytes=manifest.plaintext_bytes,
        stored_bytes=manifest.ciphertext_bytes,
        duration_seconds=round(duration, 3),
        throughput_mib_s=round(sniffer.bytes_read / 2**20 / max(duration, 1e-9), 2),
        key_name=manifest.key_name,
        key_version=manifest.key_version,
        object_key=data_key,
        manifest_key=archive.backup_manifest_key(backup_id),
        pg_version=pg_version,
        extra={
            "label_start_time": label.get("START TIME", ""),
            "aborted_stale_uploads": aborted,
            "upload_parts": upload.parts if upload else 0,
            "upload_parallel": upload.parallel if upload else 0,
            "upload_mib_s": round(upload.mib_s, 2) if upload else 0.0,
        },
    )
    archive.put_bytes(archive.backup_record_key(backup_id), record.to_json().encode())
    progress(
        f"base backup {backup_id}: {record.database_bytes / 2**20:.0f} MiB -> {record.stored_bytes / 2**20:.1f} MiB "
        f"stored in {duration:.1f} s ({record.throughput_mib_s:.1f} MiB/s)"
    )
    return record
