"""A write-only file object over an S3 multipart upload, so a stream of unknown length uploads in bounded memory.

Parts are cut in order from the stream and uploaded by a pool of ``parallel`` threads while the producer keeps
writing (boto3 clients are thread-safe; sockets, TLS and hashing release the GIL), so a backup is bounded by
compression or the network, not by one request at a time. A semaphore holds the producer once ``parallel``
parts are being uploaded: memory is at most ``(parallel + 1) x part_size`` (the parts in flight plus the one
being filled; 5 x 32 MiB = 160 MiB by default). Part numbers follow stream order and ``complete`` lists them
sorted, so the object's bytes are exactly what was written, whatever order the parts finish in.

``close()`` completes the upload; ``abort()`` (or any exception inside ``with``, or a failed part) waits for
the parts in flight and aborts it, so a failed backup leaves no object and no orphaned parts. A process killed
with SIGKILL cannot abort: for that, ``abort_stale_uploads`` removes uploads that no running backup owns
(callers hold the backup lock).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from cqox_platform.backup.archive.store import Archive, ArchiveError

MIN_PART = 5 * 1024 * 1024
DEFAULT_PART = 32 * 1024 * 1024
DEFAULT_PARALLEL = 4


@dataclass(frozen=True)
class UploadStats:
    """What an upload did, for logs and backup records."""

    parts: int
    bytes: int
    seconds: float
    parallel: int
    peak_in_flight: int

    @property
    def mib_s(self) -> float:
        return self.bytes / 2**20 / max(self.seconds, 1e-9)

    def describe(self) -> str:
        return (
            f"{self.parts} part(s), {self.bytes / 2**20:.1f} MiB in {self.seconds:.1f} s ({self.mib_s:.1f} MiB/s), "
            f"up to {self.peak_in_flight} of {self.parallel} in flight"
        )


class MultipartWriter:
    def __init__(
        self,
        archive: Archive,
        key: str,
        part_size: int = DEFAULT_PART,
        parallel: int = DEFAULT_PARALLEL,
        progress: Callable[[str], None] | None = None,
        metadata: dict[str, str] | None = None,
    ) -> None:
        if part_size < MIN_PART:
            raise ValueError(f"S3 parts must be at least {MIN_PART} bytes")
        if parallel < 1:
            raise ValueError("at least one part must be allowed in flight")
        self.archive, self.key, self.part_size, self.parallel = archive, key, part_size, parallel
        self.progress = progress
        created = archive.call(
            "starting a multipart upload of",
            key,
            archive.s3.create_multipart_upload,
            Bucket=archive.bucket,
            Key=key,
            Metadata=metadata or {},
        )
        self.upload_id: str = created["UploadId"]
        self._buffer = bytearray()
        self._parts: dict[int, str] = {}
        self._futures: list[Future[None]] = []
        self._slots = threading.BoundedSemaphore(parallel)
        self._lock = threading.Lock()
        self._in_flight = 0
        self.peak_in_flight = 0
        self._error: BaseException | None = None
        self._next_part = 1
        self.bytes_written = 0
        self.bytes_uploaded = 0
        self.closed = False
        self.stats: UploadStats | None = None
        self._started = time.monotonic()
        self._last_report = self._started
        self._pool = ThreadPoolExecutor(max_workers=parallel, thread_name_prefix="s3-multipart")

    # --- file-object protocol ------------------------------------------------------------------------------

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:
        self._raise_if_failed()
        self._buffer += data
        self.bytes_written += len(data)
        while len(self._buffer) >= self.part_size:
            self._submit(bytes(self._buffer[: self.part_size]))
            del self._buffer[: self.part_size]
        return len(data)

    def flush(self) -> None:
        pass

    # --- parts ---------------------------------------------------------------------------------------------

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise ArchiveError(f"uploading {self.archive.where(self.key)} failed: {self._error}")

    def _submit(self, body: bytes) -> None:
        while not self._slots.acquire(timeout=1.0):  # memory bound: wait for a part in flight to finish
            self._raise_if_failed()
        self._raise_if_failed()
        number = self._next_part
        self._next_part += 1
        with self._lock:
            self._in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self._in_flight)
        try:
            self._futures.append(self._pool.submit(self._upload, number, body))
        except BaseException:
            self._slots.release()
            raise

    def _upload(self, number: int, body: bytes) -> None:
        try:
            if self._error is not None:
                return  # the upload is being abandoned: send nothing more
            response = self.archive.call(
                f"uploading part {number} of",
                self.key,
                self.archive.s3.upload_part,
                Bucket=self.archive.bucket,
                Key=self.key,
                UploadId=self.upload_id,
                PartNumber=number,
                Body=body,
            )
            with self._lock:
                self._parts[number] = response["ETag"]
                self.bytes_uploaded += len(body)
            self._report()
        except BaseException as exc:
            self._error = self._error or exc
        finally:
            with self._lock:
                self._in_flight -= 1
            self._slots.release()

    def _report(self, interval: float = 5.0) -> None:
        now = time.monotonic()
        if self.progress is None or now - self._last_report < interval:
            return
        self._last_report = now
        rate = self.bytes_uploaded / 2**20 / max(now - self._started, 1e-9)
        self.progress(
            f"upload of {self.archive.where(self.key)}: {len(self._parts)} part(s), "
            f"{self.bytes_uploaded / 2**20:.0f} MiB at {rate:.1f} MiB/s, {self._in_flight} in flight"
        )

    def _wait_parts(self) -> None:
        for future in self._futures:
            future.result()  # _upload never raises; its failure is in self._error
        self._pool.shutdown(wait=True)

    # --- completion ----------------------------------------------------------------------------------------

    def close(self) -> None:
        """Upload what is buffered and complete the upload; the object appears only now."""
        if self.closed:
            return
        try:
            if self._buffer or self._next_part == 1:
                self._submit(bytes(self._buffer))
                self._buffer.clear()
        except BaseException:
            self.abort()
            raise
        self._wait_parts()
        if self._error is not None:
            self.abort()
            raise ArchiveError(f"uploading {self.archive.where(self.key)} failed: {self._error}")
        missing = [n for n in range(1, self._next_part) if n not in self._parts]
        if missing:
            self.abort()
            raise ArchiveError(f"uploading {self.archive.where(self.key)} failed: parts {missing} have no ETag.")
        parts = [{"PartNumber": n, "ETag": self._parts[n]} for n in range(1, self._next_part)]
        self.archive.call(
            "completing the multipart upload of",
            self.key,
            self.archive.s3.complete_multipart_upload,
            Bucket=self.archive.bucket,
            Key=self.key,
            UploadId=self.upload_id,
            MultipartUpload={"Parts": parts},
        )
        self.closed = True
        self.stats = UploadStats(
            len(parts), self.bytes_uploaded, time.monotonic() - self._started, self.parallel, self.peak_in_flight
        )

    def abort(self) -> None:
        """Stop sending parts, wait for those in flight, and abort the upload (S3 drops its parts)."""
        if self.closed:
            return
        self.closed = True
        self._error = self._error or ArchiveError("aborted")
        self._buffer.clear()
        self._wait_parts()
        self.archive.call(
            "aborting the multipart upload of",
            self.key,
            self.archive.s3.abort_multipart_upload,
            Bucket=self.archive.bucket,
            Key=self.key,
            UploadId=self.upload_id,
        )

    def __enter__(self) -> MultipartWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def abort_stale_uploads(archive: Archive, prefix: str) -> list[str]:
    """Abort every multipart upload under ``prefix``; only call while holding the lock that owns them."""
    aborted: list[str] = []
    listing = archive.call(
        "listing multipart uploads under",
        prefix,
        archive.s3.list_multipart_uploads,
        Bucket=archive.bucket,
        Prefix=prefix,
    )
    for upload in (listing or {}).get("Uploads", []) or []:
        archive.call(
            "aborting the stale multipart upload of",
            upload["Key"],
            archive.s3.abort_multipart_upload,
            Bucket=archive.bucket,
            Key=upload["Key"],
            UploadId=upload["UploadId"],
        )
        aborted.append(upload["Key"])
    return aborted
