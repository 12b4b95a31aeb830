"""The staged restore path (download the whole object to a file, then decrypt and extract it).

Not used by the platform: the streamed restore (``cqox_platform.backup.restore.stream``) replaced it. Kept here
so ``benchmarks/restore_stream.py`` can measure what streaming saves against the obvious alternative.
"""

from __future__ import annotations

import os
import tarfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import zstandard

from cqox_platform.backup.archive.store import Archive
from cqox_platform.backup.restore.stream import TimedSink
from cqox_platform.backup.restore.stream import safe_member as _safe_member
from cqox_platform.crypto.envelope import Manifest, decrypt_from
from cqox_platform.crypto.keys import DataKeyProvider
from cqox_platform.errors import RestoreError

Progress = Callable[[str], None]


def download_object(archive: Archive, key: str, dest: Path, size: int, progress: Progress) -> float:
    """Stream one object to a local file (no ranged GETs); returns seconds."""
    started = time.monotonic()
    body = archive.get_stream(key)
    if body is None:
        raise RestoreError(f"{archive.where(key)} is missing: the backup is incomplete or was deleted.")
    done, last = 0, started
    with open(dest, "wb") as fh:
        while True:
            chunk = archive.call("downloading", key, body.read, 8 * 1024 * 1024)
            if not chunk:
                break
            fh.write(chunk)
            done += len(chunk)
            if time.monotonic() - last > 5:
                last = time.monotonic()
                rate = done / (last - started) / 2**20
                progress(f"download: {done / 2**20:.0f} of {size / 2**20:.0f} MiB ({rate:.1f} MiB/s)")
    if size and done != size:
        raise RestoreError(f"{archive.where(key)} is {done} bytes, the backup record says {size}: truncated.")
    return time.monotonic() - started


def unpack_backup(
    encrypted: Path, manifest: Manifest, provider: DataKeyProvider, pgdata: Path, where: str
) -> tuple[float, float]:
    """Decrypt, decompress and extract into ``pgdata``; returns (decrypt seconds, extract seconds)."""
    started = time.monotonic()
    read_fd, write_fd = os.pipe()
    errors: list[BaseException] = []
    decrypt_seconds = [0.0]

    def produce() -> None:
        t0 = time.monotonic()
        with open(write_fd, "wb", buffering=1 << 20) as pipe_out:
            timed = TimedSink(None)
            try:
                with (
                    open(encrypted, "rb") as src,
                    zstandard.ZstdDecompressor().stream_writer(pipe_out, closefd=False) as unzstd,
                ):
                    timed.inner = unzstd
                    decrypt_from(src, timed, manifest, provider)
            except BaseException as exc:
                errors.append(exc)
        decrypt_seconds[0] = time.monotonic() - t0 - timed.seconds

    producer = threading.Thread(target=produce, name="restore-decrypt", daemon=True)
    producer.start()
    try:
        # ignore_zeros: a backup is the server's tar, then a tar holding backup_manifest (see basebackup). A header
        # skipped as invalid cannot pass unnoticed: AES-GCM authenticated the bytes and the manifest names every file.
        with (
            open(read_fd, "rb", buffering=1 << 20) as pipe_in,
            tarfile.open(fileobj=pipe_in, mode="r|", ignore_zeros=True) as tar,
        ):
            for member in tar:
                tar.extract(_safe_member(member, where), pgdata, set_attrs=True)
    except tarfile.TarError as exc:
        producer.join()
        if errors:
            raise _explain(errors[0], where) from None
        raise RestoreError(f"{where} is not a valid tar stream after decryption: {exc}") from None
    producer.join()
    if errors:
        raise _explain(errors[0], where) from None
    total = time.monotonic() - started
    return decrypt_seconds[0], max(total - decrypt_seconds[0], 0.0)


def _explain(exc: BaseException, where: str) -> RestoreError:
    if isinstance(exc, zstandard.ZstdError):
        return RestoreError(f"{where} does not decompress: {exc}")
    return RestoreError(f"{where} failed verification: {exc}")
