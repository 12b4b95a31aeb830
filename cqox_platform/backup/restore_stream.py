"""Streamed restore of a base backup: ranged GETs -> decrypt -> zstd -> tar, one pipeline, no staging copy.

Why: the staged restore downloaded the whole object before extracting it, so a restore needed the database's
size twice on disk and its phases ran one after the other. Here the object is read with several ranged GETs in
flight (the encrypted format is a header plus fixed-size sealed chunks, so any byte range can be fetched
independently; the AES-GCM STREAM check still runs in order over the reassembled stream), decrypted and
decompressed in one thread and extracted in another. Memory is bounded by ``workers + 1`` ranges; disk holds
only the data directory. The object format is unchanged, so every backup ever taken restores this way.

Nothing half-extracted looks like a data directory: a marker file (``INCOMPLETE_MARKER``) is written before the
first byte and removed only after ``pg_verifybackup`` passed, and ``global/pg_control`` (without which
PostgreSQL refuses to start on a directory) is held in memory and written after every other file. A restore
killed with SIGKILL therefore leaves a directory that says what it is and that no server starts on.
"""

from __future__ import annotations

import collections
import contextlib
import os
import tarfile
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import zstandard

from cqox_platform.backup.archive import Archive
from cqox_platform.backup.manifest_checksums import MANIFEST_NAME, ChecksumLedger
from cqox_platform.crypto.envelope import Manifest, decrypt_from
from cqox_platform.crypto.keys import DataKeyProvider
from cqox_platform.errors import CqoxError

INCOMPLETE_MARKER = "CQOX_RESTORE_INCOMPLETE"
PG_CONTROL = "global/pg_control"
RANGE_BYTES = 8 * 1024 * 1024
RANGE_WORKERS = 4
PROGRESS_EVERY = 5.0


class StreamRestoreError(CqoxError):
    """The streamed restore failed; the message names the object."""


class RangedObjectReader:
    """A read-only file object over one S3 object, fetched as ``workers`` ranged GETs ahead of the reader.

    Ranges are requested in order and handed out in order, at most ``workers + 1`` of them held in memory, so
    the consumer sees one ordered byte stream while the network keeps several requests busy. ``waited`` is the
    time the consumer spent blocked on the network (the restore's "download" share of the wall time).
    """

    def __init__(
        self,
        archive: Archive,
        key: str,
        size: int,
        *,
        range_bytes: int = RANGE_BYTES,
        workers: int = RANGE_WORKERS,
        progress=None,
    ) -> None:
        self.archive, self.key, self.size, self.range_bytes = archive, key, size, range_bytes
        self._offsets = iter(range(0, size, range_bytes))
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="restore-range")
        self._pending: collections.deque[Future[bytes]] = collections.deque()
        self._current, self._pos = b"", 0
        self.consumed, self.waited = 0, 0.0
        self._progress = progress
        self._started = self._last_note = time.monotonic()
        for _ in range(workers + 1):
            self._submit()

    def readable(self) -> bool:
        return True

    def _submit(self) -> None:
        start = next(self._offsets, None)
        if start is not None:
            self._pending.append(self._pool.submit(self._get, start, min(start + self.range_bytes, self.size) - 1))

    def _get(self, first: int, last: int) -> bytes:
        response: Any = self.archive.call(
            "downloading",
            self.key,
            self.archive.s3.get_object,
            Bucket=self.archive.bucket,
            Key=self.key,
            Range=f"bytes={first}-{last}",
        )
        if response is None:
            raise StreamRestoreError(f"{self.archive.where(self.key)} disappeared during the restore.")
        data = self.archive.call("downloading", self.key, response["Body"].read)
        if len(data) != last - first + 1:
            raise StreamRestoreError(
                f"{self.archive.where(self.key)}: bytes {first}-{last} came back as {len(data)} bytes (truncated)."
            )
        return data

    def _next_range(self) -> bool:
        if not self._pending:
            return False
        started = time.monotonic()
        data = self._pending.popleft().result()
        self.waited += time.monotonic() - started
        self._submit()
        self._current, self._pos = data, 0
        return True

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            size = self.size
        parts: list[bytes] = []
        while size > 0:
            if self._pos >= len(self._current) and not self._next_range():
                break
            piece = self._current[self._pos : self._pos + size]
            self._pos += len(piece)
            size -= len(piece)
            parts.append(piece)
        out = b"".join(parts)
        self.consumed += len(out)
        self._note()
        return out

    def _note(self) -> None:
        now = time.monotonic()
        if self._progress is None or now - self._last_note < PROGRESS_EVERY:
            return
        self._last_note = now
        rate = self.consumed / max(now - self._started, 1e-9) / 2**20
        share = 100 * self.consumed / max(self.size, 1)
        self._progress(
            f"restore: {self.consumed / 2**20:.0f} of {self.size / 2**20:.0f} MiB streamed ({share:.0f} %), "
            f"{rate:.1f} MiB/s"
        )

    def close(self) -> None:
        for future in self._pending:
            future.cancel()
        self._pending.clear()
        self._pool.shutdown(wait=False, cancel_futures=True)


class TimedSink:
    """Counts the time spent writing downstream (decompression and extraction pushing back)."""

    def __init__(self, inner) -> None:
        self.inner, self.seconds = inner, 0.0

    def write(self, data: bytes) -> int:
        started = time.monotonic()
        self.inner.write(data)
        self.seconds += time.monotonic() - started
        return len(data)


def mark_incomplete(pgdata: Path, what: str) -> Path:
    """Write the marker that says ``pgdata`` is a restore in progress (or one that was killed)."""
    marker = pgdata / INCOMPLETE_MARKER
    marker.write_text(
        f"This directory is an INCOMPLETE restore of {what}; it is not a usable PostgreSQL data directory.\n"
        "The restore was interrupted (or is still running). Remove this directory and restore again.\n"
    )
    marker.chmod(0o600)
    return marker


def is_incomplete_restore(pgdata: Path) -> bool:
    return (Path(pgdata) / INCOMPLETE_MARKER).exists()


def safe_member(member: tarfile.TarInfo, where: str) -> tarfile.TarInfo:
    """Only plain files and directories under the target, owner-only modes: what a data directory holds."""
    path = PurePosixPath(member.name)
    if path.is_absolute() or ".." in path.parts:
        raise StreamRestoreError(f"{where} holds an unsafe path {member.name!r}; refusing to extract it.")
    if not (member.isfile() or member.isdir()):
        raise StreamRestoreError(f"{where} holds {member.name!r} of a type a data directory never has; refusing.")
    member.mode &= 0o700
    return member


def stream_restore(
    archive: Archive,
    key: str,
    stored_bytes: int,
    manifest: Manifest,
    provider: DataKeyProvider,
    pgdata: Path,
    progress=lambda _m: None,
    *,
    workers: int = RANGE_WORKERS,
) -> StreamedRestore:
    """Stream the backup object ``key`` into ``pgdata`` (already created, empty, with the marker written).

    Seconds add up to the wall time: ``download`` (blocked on the network), ``decrypt`` (AES-GCM and the
    manifest's checks) and ``extract`` (decompression, file writes and their CRC32C against backup_manifest).
    """
    where = archive.where(key)
    head = archive.head(key)
    if head is None:
        raise StreamRestoreError(f"{where} is missing: the backup is incomplete or was deleted.")
    size = int(head.get("ContentLength", 0))
    if stored_bytes and size != stored_bytes:
        raise StreamRestoreError(f"{where} is {size} bytes, the backup record says {stored_bytes}: truncated.")
    started = time.monotonic()
    reader = RangedObjectReader(archive, key, size, workers=workers, progress=progress)
    read_fd, write_fd = os.pipe()
    errors: list[BaseException] = []
    producer_seconds = [0.0, 0.0]  # total, writing downstream

    def produce() -> None:
        t0 = time.monotonic()
        sink = TimedSink(None)
        try:
            with (
                open(write_fd, "wb", buffering=1 << 20) as pipe_out,
                zstandard.ZstdDecompressor().stream_writer(pipe_out, closefd=False) as unzstd,
            ):
                sink.inner = unzstd
                decrypt_from(reader, sink, manifest, provider)
        except BaseException as exc:  # BrokenPipeError when extraction stopped first: its error is the one raised
            errors.append(exc)
        producer_seconds[0], producer_seconds[1] = time.monotonic() - t0, sink.seconds

    ledger = ChecksumLedger()
    manifest_bytes: bytes | None = None
    producer = threading.Thread(target=produce, name="restore-decrypt", daemon=True)
    producer.start()
    pg_control: tuple[tarfile.TarInfo, bytes] | None = None
    files = ParallelFileWriter()
    try:
        with open(read_fd, "rb", buffering=1 << 20) as pipe_in, tarfile.open(fileobj=pipe_in, mode="r|") as tar:
            for member in tar:
                member = safe_member(member, where)
                if member.isdir():
                    tar.extract(member, pgdata, set_attrs=True)
                    continue
                handle = tar.extractfile(member)
                if member.name == PG_CONTROL:
                    pg_control = (member, handle.read() if handle else b"")
                    ledger.start(member.name)
                    ledger.add(member.name, pg_control[1])
                elif member.name == MANIFEST_NAME:
                    manifest_bytes = handle.read() if handle else b""
                    files.write(pgdata / member.name, member.mode, [manifest_bytes])
                else:
                    ledger.start(member.name)
                    files.write(pgdata / member.name, member.mode, _chunks(handle, member.name, ledger))
        files.finish()  # every byte written (or the write error, e.g. a full disk, raised here)
    except tarfile.TarError as exc:
        producer.join()
        if errors:
            raise _explain(errors[0], where) from None
        raise StreamRestoreError(f"{where} is not a valid tar stream after decryption: {exc}") from None
    except BaseException:
        reader.close()
        raise
    finally:
        files.abandon()
        producer.join()
        reader.close()
    if errors:
        raise _explain(errors[0], where) from None
    if pg_control is None:
        raise StreamRestoreError(f"{where} holds no {PG_CONTROL}: not a base backup of a data directory.")
    if manifest_bytes is None:
        raise StreamRestoreError(f"{where} holds no {MANIFEST_NAME}: its files cannot be verified.")
    checksums_verified = ledger.verify(manifest_bytes, where)  # before pg_control: a mismatch leaves no server
    _write_last(pgdata, *pg_control)
    total = time.monotonic() - started
    decrypt = max(producer_seconds[0] - producer_seconds[1] - reader.waited, 0.0)
    extract = max(total - decrypt - reader.waited, 0.0)
    rate = size / max(total, 1e-9) / 2**20
    progress(f"restore: {size / 2**20:.0f} MiB streamed and extracted in {total:.1f} s ({rate:.1f} MiB/s)")
    return StreamedRestore(
        {"download": reader.waited, "decrypt": decrypt, "extract": extract}, checksums_verified, len(ledger.files)
    )


@dataclass(frozen=True)
class StreamedRestore:
    """Phase seconds, and whether every file's CRC32C was checked against the manifest on the way in."""

    seconds: dict[str, float]
    checksums_verified: bool
    files: int


def _chunks(handle, name: str, ledger: ChecksumLedger, size: int = 1 << 20) -> Iterator[bytes]:
    while chunk := handle.read(size) if handle else b"":
        ledger.add(name, chunk)
        yield chunk


class ParallelFileWriter:
    """Writes restored files' chunks on ``writers`` threads, at most ``in_flight`` chunks queued.

    Why: once checksums are verified on the way in, a 10 GB restore is bound by copying into the page cache
    (about 530 MiB/s for one thread here); ``os.pwrite`` releases the GIL, so two writers use both cores while
    the main thread reads the tar stream. Files are created by the caller's thread (``O_EXCL | O_NOFOLLOW``,
    owner-only mode, never through a link) and closed once all of their chunks are written; memory is bounded by
    ``in_flight`` chunks of 1 MiB.
    """

    def __init__(self, writers: int = 2, in_flight: int = 32) -> None:
        self._pool = ThreadPoolExecutor(max_workers=writers, thread_name_prefix="restore-write")
        self._slots = threading.BoundedSemaphore(in_flight)
        self._open: list[tuple[int, list[Future]]] = []

    def write(self, path: Path, mode: int, chunks: Iterable[bytes]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode & 0o700 or 0o600)
        futures: list[Future] = []
        self._open.append((fd, futures))
        offset = 0
        for chunk in chunks:
            self._slots.acquire()
            futures.append(self._pool.submit(self._pwrite, fd, chunk, offset))
            offset += len(chunk)
        self._reap(wait=False)

    def _pwrite(self, fd: int, chunk: bytes, offset: int) -> None:
        try:
            view = memoryview(chunk)
            while view:
                written = os.pwrite(fd, view, offset)
                view, offset = view[written:], offset + written
        finally:
            self._slots.release()

    def _reap(self, wait: bool) -> None:
        """Close files whose chunks are all written; raise the first write error (ENOSPC, EIO)."""
        for entry in list(self._open):
            fd, futures = entry
            if not wait and not all(f.done() for f in futures):
                continue
            self._open.remove(entry)  # before closing: an fd number is closed once, never again after reuse
            try:
                for future in futures:
                    future.result()
            finally:
                os.close(fd)

    def finish(self) -> None:
        try:
            self._reap(wait=True)
        finally:
            self._pool.shutdown(wait=True)

    def abandon(self) -> None:
        """After a failure (or after ``finish``): stop writing and close every file still open."""
        self._pool.shutdown(wait=True, cancel_futures=True)
        for fd, _futures in self._open:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._open = []


def _write_last(pgdata: Path, member: tarfile.TarInfo, data: bytes) -> None:
    """``global/pg_control`` last, synced: its presence means every other file is in place."""
    path = pgdata / PG_CONTROL
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, member.mode & 0o700 or 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def _explain(exc: BaseException, where: str) -> CqoxError:
    if isinstance(exc, zstandard.ZstdError):
        return StreamRestoreError(f"{where} does not decompress: {exc}")
    if isinstance(exc, StreamRestoreError):
        return exc
    return StreamRestoreError(f"{where} failed verification: {exc}")
