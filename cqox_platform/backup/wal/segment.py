"""``wal-push`` and ``wal-fetch``: one WAL file to and from the archive, compressed and envelope-encrypted.

Push is idempotent the way PostgreSQL needs: the same file pushed twice succeeds (the archiver may retry after
a crash between upload and its own bookkeeping); a different file under an existing name is refused, because
overwriting archived WAL silently would corrupt every restore that reads it. The manifest object, written
after the data object, carries the raw file's SHA-256 in its metadata: that is what "same content" means.

Fetch verifies everything before the file appears under its final name, and distinguishes "not in the
archive" (PostgreSQL's normal end-of-archive probe) from "present but unusable" (corrupt, wrong key, server
down): recovery must stop on the second, never treat it as the end of WAL and promote early.
"""

from __future__ import annotations

import hashlib
import io
import os
import struct
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import zstandard

from cqox_platform.backup.archive.store import Archive, ArchiveError
from cqox_platform.backup.archive.wal_names import check_wal_name
from cqox_platform.crypto.envelope import Manifest, decrypt_from, encrypt_to
from cqox_platform.crypto.keys import DataKeyProvider
from cqox_platform.errors import BackupError, CqoxError

SHA_META = "wal-sha256"
ZSTD_LEVEL = 3


class WalConflictError(BackupError):
    """A different file is already archived under this name."""


class WalMissingError(BackupError):
    """The archive has no such WAL file (a normal answer to PostgreSQL's probes)."""


def system_identifier(pgdata: Path) -> str:
    """The cluster's system identifier: the first 8 bytes of ``global/pg_control`` (little-endian uint64)."""
    control = Path(pgdata) / "global" / "pg_control"
    try:
        with open(control, "rb") as fh:
            raw = fh.read(8)
    except OSError as exc:
        raise CqoxError(f"cannot read {control} to find the cluster's system identifier: {exc.strerror}.") from None
    if len(raw) != 8:
        raise CqoxError(f"{control} is too short to hold a system identifier.")
    return str(struct.unpack("<Q", raw)[0])


@dataclass(frozen=True)
class PushResult:
    name: str
    uploaded: bool  # False: the same content was already archived
    raw_bytes: int
    stored_bytes: int
    seconds: float


def push_wal(archive: Archive, provider: DataKeyProvider, path: Path) -> PushResult:
    """Archive one WAL file (segment, history, backup history or partial)."""
    started = time.perf_counter()
    path = Path(path)
    name = check_wal_name(path.name)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise CqoxError(f"cannot read WAL file {path}: {exc.strerror}.") from None
    return push_wal_content(archive, provider, name, raw, hashlib.sha256(raw).hexdigest(), started)


def push_wal_content(
    archive: Archive, provider: DataKeyProvider, name: str, raw: bytes, digest: str, started: float | None = None
) -> PushResult:
    """Archive ``raw`` (already read, ``digest`` its SHA-256) under ``name``: idempotent, refuses other content.

    The asynchronous pusher reads the file itself so it can bind its marker to the exact file it uploaded.
    """
    started = time.perf_counter() if started is None else started
    name = check_wal_name(name)
    existing = archive.head(archive.wal_manifest_key(name))
    if existing is not None:
        archived = existing.get("Metadata", {}).get(SHA_META)
        if archived == digest:
            return PushResult(name, False, len(raw), 0, time.perf_counter() - started)
        raise WalConflictError(
            f"{archive.where(archive.wal_key(name))} already holds different content (sha256 {archived or 'unknown'}"
            f", this file {digest}); refusing to overwrite archived WAL. Two clusters with the same system "
            f"identifier may be archiving to one place: investigate before anything is deleted."
        )
    compressed = zstandard.ZstdCompressor(level=ZSTD_LEVEL).compress(raw)
    sealed = io.BytesIO()
    manifest = encrypt_to(io.BytesIO(compressed), sealed, provider, object_id=archive.wal_key(name))
    del compressed  # at most raw + sealed held at once: the pusher's memory bound counts on it
    body = sealed.getvalue()
    sealed.close()
    stored = len(body)
    archive.put_bytes(archive.wal_key(name), body)
    del body
    archive.put_bytes(archive.wal_manifest_key(name), manifest.to_json().encode(), metadata={SHA_META: digest})
    return PushResult(name, True, len(raw), stored, time.perf_counter() - started)


def read_wal(archive: Archive, provider: DataKeyProvider, name: str) -> bytes:
    """The verified plaintext of one archived WAL file.

    Raises ``WalMissingError`` only when S3 proves the manifest absent (``NoSuchKey`` on its exact key): that is
    what ends recovery, so anything short of proof (a missing bucket, a dropped connection) is another error.
    """
    return read_wal_with_digest(archive, provider, name)[0]


def read_wal_with_digest(archive: Archive, provider: DataKeyProvider, name: str) -> tuple[bytes, str]:
    """``read_wal``'s plaintext and its SHA-256 (the one compared with the archive's digest), so a caller that
    records the digest does not hash 16 MiB a second time."""
    check_wal_name(name)
    found = archive.get_proven(archive.wal_manifest_key(name))
    if found is None:
        raise WalMissingError(f"{archive.where(archive.wal_key(name))} is not in the archive.")
    manifest_bytes, metadata = found
    data = archive.get_bytes(archive.wal_key(name))
    if data is None:
        raise ArchiveError(f"{archive.where(archive.wal_key(name))} has a manifest but its data object is missing.")
    manifest = Manifest.from_json(manifest_bytes, where=archive.where(archive.wal_manifest_key(name)))
    compressed = io.BytesIO()
    try:
        decrypt_from(io.BytesIO(data), compressed, manifest, provider)
    except CqoxError as exc:
        raise ArchiveError(f"{archive.where(archive.wal_key(name))} failed verification: {exc}") from None
    try:
        raw = zstandard.ZstdDecompressor().decompress(compressed.getvalue())
    except zstandard.ZstdError as exc:
        raise ArchiveError(f"{archive.where(archive.wal_key(name))} does not decompress: {exc}.") from None
    expected = metadata.get(SHA_META)
    digest = hashlib.sha256(raw).hexdigest()
    if expected and digest != expected:
        raise ArchiveError(f"{archive.where(archive.wal_key(name))} decompressed to content whose SHA-256 differs.")
    return raw, digest


def fetch_wal(archive: Archive, provider: DataKeyProvider, name: str, destination: Path) -> int:
    """Write an archived WAL file to ``destination`` atomically; returns its size."""
    raw = read_wal(archive, provider, name)
    destination = Path(destination)
    tmp: str | None = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{destination.name}.", dir=destination.parent)
        with os.fdopen(fd, "wb") as fh:
            fh.write(raw)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, destination)
    except OSError as exc:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise CqoxError(f"cannot write {name} to {destination}: {exc.strerror or exc}.") from None
    except BaseException:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise
    return len(raw)
