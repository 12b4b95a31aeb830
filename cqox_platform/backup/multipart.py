"""A write-only file object over an S3 multipart upload, so a stream of unknown length uploads in bounded memory.

Parts are uploaded by one background thread while the producer keeps writing; at most ``max_pending`` parts
wait in memory. ``close()`` completes the upload; ``abort()`` (or any exception inside ``with``) aborts it, so
a failed backup leaves no object and no orphaned parts. A process killed with SIGKILL cannot abort: for that,
``abort_stale_uploads`` removes uploads that no running backup owns (callers hold the backup lock).
"""

from __future__ import annotations

import queue
import threading
from typing import Any

from cqox_platform.backup.archive import Archive, ArchiveError

MIN_PART = 5 * 1024 * 1024


class MultipartWriter:
    def __init__(self, archive: Archive, key: str, part_size: int = 32 * 1024 * 1024, max_pending: int = 2) -> None:
        if part_size < MIN_PART:
            raise ValueError(f"S3 parts must be at least {MIN_PART} bytes")
        self.archive, self.key, self.part_size = archive, key, part_size
        created = archive.call(
            "starting a multipart upload of", key, archive.s3.create_multipart_upload, Bucket=archive.bucket, Key=key
        )
        self.upload_id: str = created["UploadId"]
        self._buffer = bytearray()
        self._parts: list[dict[str, Any]] = []
        self._queue: queue.Queue[tuple[int, bytes] | None] = queue.Queue(maxsize=max_pending)
        self._error: BaseException | None = None
        self._next_part = 1
        self.bytes_written = 0
        self.closed = False
        self._worker = threading.Thread(target=self._upload_loop, name="s3-multipart", daemon=True)
        self._worker.start()

    # --- file-object protocol ------------------------------------------------------------------------------

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:
        if self._error is not None:
            raise ArchiveError(f"uploading {self.archive.where(self.key)} failed: {self._error}")
        self._buffer += data
        self.bytes_written += len(data)
        while len(self._buffer) >= self.part_size:
            self._enqueue(bytes(self._buffer[: self.part_size]))
            del self._buffer[: self.part_size]
        return len(data)

    def flush(self) -> None:
        pass

    # --- completion ----------------------------------------------------------------------------------------

    def _enqueue(self, body: bytes) -> None:
        self._queue.put((self._next_part, body))
        self._next_part += 1

    def _upload_loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            if self._error is not None:
                continue  # drain so the producer never blocks forever
            number, body = item
            try:
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
                self._parts.append({"PartNumber": number, "ETag": response["ETag"]})
            except BaseException as exc:
                self._error = exc

    def close(self) -> None:
        """Upload what is buffered and complete the upload; the object appears only now."""
        if self.closed:
            return
        if self._buffer or self._next_part == 1:
            self._enqueue(bytes(self._buffer))
            self._buffer.clear()
        self._queue.put(None)
        self._worker.join()
        if self._error is not None:
            self.abort()
            raise ArchiveError(f"uploading {self.archive.where(self.key)} failed: {self._error}")
        parts = sorted(self._parts, key=lambda p: p["PartNumber"])
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

    def abort(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self._worker.is_alive():
            self._error = self._error or ArchiveError("aborted")
            self._queue.put(None)
            self._worker.join(timeout=60)
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
