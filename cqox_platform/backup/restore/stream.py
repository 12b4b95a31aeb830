"""Streamed restore of a base backup: ranged GETs -> decrypt -> zstd -> tar, one pipeline, no staging copy.

Why: the staged restore downloaded the whole object before extracting it, so a restore needed the database's
size twice on disk and its phases ran one after the other. Here the object is read with several ranged GETs in
flight (the encrypted format is a header plus fixed-size sealed chunks, so any byte range can be fetched
independently; the AES-GCM STREAM check still runs in order over the reassembled stream), decrypted and
decompressed in one thread and extracted in another. Memory is bounded by ``workers + 1`` ranges; disk holds
only the data directory. Backups from before server-side compression (one tar with the manifest inside) restore
the same way.

Nothing half-extracted looks like a data directory: a marker file (``INCOMPLETE_MARKER``) is written before the
first byte and removed only after ``pg_verifybackup`` passed, and ``global/pg_control`` (without which
PostgreSQL refuses to start on a directory) is held in memory and written after every other file. A restore
killed with SIGKILL therefore leaves a directory that says what it is and that no server starts on.
"""

from __future__ import annotations

import collections
import contextlib
import os
import queue
import tarfile
import threading
import time
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import zstandard

from cqox_platform.backup.archive.store import Archive
from cqox_platform.backup.restore.checksums import MANIFEST_NAME, ChecksumLedger
from cqox_platform.backup.restore.writeback import start_writeback
from cqox_platform.crypto.envelope import Manifest, decrypt_from
from cqox_platform.crypto.keys import DataKeyProvider
from cqox_platform.errors import CqoxError, RestoreError

INCOMPLETE_MARKER = "CQOX_RESTORE_INCOMPLETE"
PG_CONTROL = "global/pg_control"
RANGE_BYTES = 8 * 1024 * 1024
RANGE_WORKERS = 4
PROGRESS_EVERY = 5.0
QUEUED_CHUNKS = 32  # decompressed chunks of up to 1 MiB between the decrypting and the extracting thread
BLOCK = tarfile.BLOCKSIZE
ZERO_BLOCK = bytes(BLOCK)


class StreamRestoreError(RestoreError):
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
    chunks: queue.Queue[bytes | None] = queue.Queue(maxsize=QUEUED_CHUNKS)
    stop = threading.Event()
    errors: list[BaseException] = []
    producer_seconds = [0.0, 0.0]  # total, handing chunks downstream

    def produce() -> None:
        t0 = time.monotonic()
        sink = TimedSink(_QueueSink(chunks, stop))
        try:
            with zstandard.ZstdDecompressor().stream_writer(sink, write_size=1 << 20, closefd=False) as unzstd:
                decrypt_from(reader, unzstd, manifest, provider)
        except BaseException as exc:  # _Stopped when extraction failed first: its error is the one raised
            errors.append(exc)
        finally:
            producer_seconds[0], producer_seconds[1] = time.monotonic() - t0, sink.seconds
            with contextlib.suppress(_Stopped):
                _put(chunks, None, stop)

    producer = threading.Thread(target=produce, name="restore-decrypt", daemon=True)
    files = ParallelFileWriter()
    extractor = TarExtractor(pgdata, where, files)
    producer.start()
    try:
        while (chunk := chunks.get()) is not None:
            extractor.feed(chunk)
        if not errors:
            extractor.finish()
        files.finish()  # every byte written (or the write error, e.g. a full disk, raised here)
    finally:
        stop.set()  # the producer stops at its next hand-over instead of blocking on a full queue
        files.abandon()
        reader.close()  # and at its next read, if it is waiting on a ranged GET
        producer.join()
    ledger, pg_control, manifest_bytes = extractor.ledger, extractor.pg_control, extractor.manifest
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


class _Stopped(Exception):
    """Extraction stopped (it failed): the producer stops too instead of blocking on a full queue."""


def _put(chunks: queue.Queue, item: bytes | None, stop: threading.Event) -> None:
    while True:
        try:
            chunks.put(item, timeout=0.1)
            return
        except queue.Full:
            if stop.is_set():
                raise _Stopped() from None


class _QueueSink:
    """Where zstd writes decompressed chunks: a bounded queue the extracting thread reads (no pipe, no copy)."""

    def __init__(self, chunks: queue.Queue, stop: threading.Event) -> None:
        self.chunks, self.stop = chunks, stop

    def write(self, data: bytes) -> int:
        _put(self.chunks, data, self.stop)
        return len(data)


class TarExtractor:
    """Extracts a tar stream fed in chunks: headers parsed by ``tarfile.TarInfo.frombuf``, data written as is.

    Why not ``tarfile.open(mode="r|")``: its stream reader copied every byte through a buffer, after a pipe had
    copied it once already; at 3 GB the extraction ran at 365 MiB/s. Here a decompressed chunk goes to
    ``os.pwrite`` (on the writer threads) and CRC32C without a copy when it lies within one file, which is
    nearly every byte of a data directory. Zero blocks are skipped (a backup is the server's tar, then a tar
    holding ``backup_manifest``, see ``basebackup``); a header whose checksum fails stops the restore.
    """

    def __init__(self, pgdata: Path, where: str, files: ParallelFileWriter) -> None:
        self.pgdata, self.where, self.files = pgdata, where, files
        self.ledger = ChecksumLedger()
        self.pg_control: tuple[tarfile.TarInfo, bytes] | None = None
        self.manifest: bytes | None = None
        self._header = bytearray()
        self._member: tarfile.TarInfo | None = None
        self._handle: int | None = None  # ParallelFileWriter handle of the member being written
        self._memory: bytearray | None = None  # pg_control and backup_manifest are kept, not written now
        self._remaining = self._padding = self._offset = 0

    def feed(self, chunk: bytes) -> None:
        view, pos, end = memoryview(chunk), 0, len(chunk)
        while pos < end:
            if self._remaining:
                take = min(self._remaining, end - pos)
                self._data(chunk if take == end else bytes(view[pos : pos + take]))
                pos += take
                self._remaining -= take
                if not self._remaining:
                    self._end_member()
            elif self._padding:
                take = min(self._padding, end - pos)
                pos += take
                self._padding -= take
            else:
                take = min(BLOCK - len(self._header), end - pos)
                self._header += view[pos : pos + take]
                pos += take
                if len(self._header) == BLOCK:
                    block = bytes(self._header)
                    self._header.clear()
                    self._start_member(block)

    def finish(self) -> None:
        """The stream ended: raise if it ended inside a header or a member (a truncated backup)."""
        if self._header or self._remaining:
            name = self._member.name if self._member else "a header"
            raise StreamRestoreError(f"{self.where} ends inside {name}: the backup is truncated.")

    def _start_member(self, block: bytes) -> None:
        if block == ZERO_BLOCK:
            return
        try:
            info = tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
        except tarfile.HeaderError as exc:
            raise StreamRestoreError(f"{self.where} is not a valid tar stream after decryption: {exc}") from None
        member = safe_member(info, self.where)
        if member.isdir():
            path = self.pgdata / member.name
            path.mkdir(parents=True, exist_ok=True)
            path.chmod(member.mode or 0o700)
            return
        self._member, self._offset = member, 0
        self._remaining, self._padding = member.size, -member.size % BLOCK
        if member.name in (PG_CONTROL, MANIFEST_NAME):
            self._memory = bytearray()
        else:
            self._handle = self.files.open(self.pgdata / member.name, member.mode)
        if member.name != MANIFEST_NAME:
            self.ledger.start(member.name)
        if not member.size:
            self._end_member()

    def _data(self, data: bytes) -> None:
        member = self._member
        assert member is not None
        if member.name != MANIFEST_NAME:
            self.ledger.add(member.name, data)
        if self._memory is not None:
            self._memory += data
        else:
            self.files.submit(self._handle, data, self._offset)  # type: ignore[arg-type]
        self._offset += len(data)

    def _end_member(self) -> None:
        member = self._member
        assert member is not None
        if self._memory is not None:
            if member.name == PG_CONTROL:
                self.pg_control = (member, bytes(self._memory))
            else:
                self.manifest = bytes(self._memory)
                self.files.write(self.pgdata / member.name, member.mode, [self.manifest])
        else:
            self.files.close(self._handle)  # type: ignore[arg-type]
        self._member, self._handle, self._memory = None, None, None


@dataclass(frozen=True)
class StreamedRestore:
    """Phase seconds, and whether every file's CRC32C was checked against the manifest on the way in."""

    seconds: dict[str, float]
    checksums_verified: bool
    files: int


class ParallelFileWriter:
    """Writes restored files' chunks on ``writers`` threads, at most ``in_flight`` chunks queued.

    Why: once checksums are verified on the way in, a 10 GB restore is bound by copying into the page cache
    (about 530 MiB/s for one thread here); ``os.pwrite`` releases the GIL, so two writers use both cores while
    the main thread reads the tar stream. Files are created by the caller's thread (``O_EXCL | O_NOFOLLOW``,
    owner-only mode, never through a link) and closed once all of their chunks are written; memory is bounded by
    ``in_flight`` chunks of 1 MiB. Each chunk's writeback to disk is started as it is written (``writeback``).
    """

    def __init__(self, writers: int = 2, in_flight: int = 32, *, writeback: bool = True) -> None:
        self._writeback = writeback
        self._pool = ThreadPoolExecutor(max_workers=writers, thread_name_prefix="restore-write")
        self._slots = threading.BoundedSemaphore(in_flight)
        self._open: collections.deque[tuple[int, list[Future]]] = (
            collections.deque()
        )  # handle h is self._open[h - self._closed]
        self._closed = 0  # files closed from the front of ``_open``
        self._done: set[int] = set()  # handles with no more data coming

    def open(self, path: Path, mode: int) -> int:
        """Create ``path`` (never through a link, never over a file); returns the handle for ``submit``."""
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode & 0o700 or 0o600)
        self._open.append((fd, []))
        return len(self._open) - 1 + self._closed

    def submit(self, handle: int, data: bytes, offset: int) -> None:
        """Queue ``data`` at ``offset``; blocks while ``in_flight`` chunks wait (memory stays bounded)."""
        fd, futures = self._open[handle - self._closed]
        self._slots.acquire()
        futures.append(self._pool.submit(self._pwrite, fd, data, offset))

    def close(self, handle: int) -> None:
        """No more data for ``handle``; its file is closed once its chunks are written."""
        self._done.add(handle)
        self._reap(wait=False)

    def write(self, path: Path, mode: int, chunks: Iterable[bytes]) -> None:
        handle, offset = self.open(path, mode), 0
        for chunk in chunks:
            self.submit(handle, chunk, offset)
            offset += len(chunk)
        self.close(handle)

    def _pwrite(self, fd: int, chunk: bytes, offset: int) -> None:
        try:
            view, start = memoryview(chunk), offset
            while view:
                written = os.pwrite(fd, view, offset)
                view, offset = view[written:], offset + written
            if self._writeback:
                start_writeback(fd, start, offset - start)  # the server's start-up sync then has little to write
        finally:
            self._slots.release()

    def _reap(self, wait: bool) -> None:
        """Close files (oldest first) whose chunks are all written; raise the first write error (ENOSPC, EIO)."""
        while self._open:
            handle = self._closed
            fd, futures = self._open[0]
            if not wait and (handle not in self._done or not all(f.done() for f in futures)):
                return
            self._open.popleft()  # before closing: an fd number is closed once, never again after reuse
            self._closed += 1
            self._done.discard(handle)
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
        self._open.clear()


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
