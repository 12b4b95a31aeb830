"""The second region: copy backups and WAL to the DR bucket, verify both sides, report the lag.

Objects are streamed through this process (as a copy to another region's endpoint would be) while hashing;
the DR object carries the source's SHA-256 in its metadata and is read back and hashed to verify. Order
matters as in the primary: data objects first, then manifests, then backup records, so the DR bucket never
lists a backup or a WAL file whose data has not arrived.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from cqox_platform.backup.archive import Archive, ArchiveError
from cqox_platform.backup.multipart import MultipartWriter
from cqox_platform.crypto.envelope import MANIFEST_SUFFIX

SHA_META = "sha256"
SMALL = 16 * 1024 * 1024 + 65536  # a WAL segment with its envelope overhead goes in one PUT

Progress = Callable[[str], None]


@dataclass
class DrCopyResult:
    copied: list[str] = field(default_factory=list)
    copied_bytes: int = 0
    verified: int = 0
    mismatched: list[str] = field(default_factory=list)
    pending_before: int = 0
    lag_seconds: float = 0.0  # age of the oldest primary object that was missing from DR before this run
    primary_objects: int = 0
    dr_objects: int = 0


def _order(key: str) -> int:
    if key.endswith("/backup.json"):
        return 2
    if key.endswith(MANIFEST_SUFFIX):
        return 1
    return 0


def _hash_stream(archive: Archive, key: str) -> str:
    body = archive.get_stream(key)
    if body is None:
        raise ArchiveError(f"{archive.where(key)} disappeared while verifying the DR copy.")
    digest = hashlib.sha256()
    for chunk in iter(lambda: body.read(8 * 1024 * 1024), b""):
        digest.update(chunk)
    return digest.hexdigest()


def copy_object(src: Archive, dst: Archive, key: str, size: int) -> str:
    """Stream ``key`` from ``src`` to ``dst``; returns the SHA-256 of the bytes sent."""
    body = src.get_stream(key)
    if body is None:
        raise ArchiveError(f"{src.where(key)} disappeared before it could be copied.")
    digest = hashlib.sha256()
    if size <= SMALL:
        data = body.read()
        digest.update(data)
        dst.put_bytes(key, data, metadata={SHA_META: digest.hexdigest()})
        return digest.hexdigest()
    with MultipartWriter(dst, key) as writer:
        for chunk in iter(lambda: body.read(8 * 1024 * 1024), b""):
            digest.update(chunk)
            writer.write(chunk)
    # Multipart uploads cannot set metadata afterwards without a copy; record the hash beside the object.
    dst.put_bytes(key + ".sha256", digest.hexdigest().encode())
    return digest.hexdigest()


def copy_to_dr(primary: Archive, dr: Archive, progress: Progress = lambda _m: None) -> DrCopyResult:
    result = DrCopyResult()
    prefix = f"{primary.root}/"
    source = {o["Key"]: o for o in primary.list(prefix)}
    target = {o["Key"]: o for o in dr.list(prefix)}
    result.primary_objects = len(source)
    missing = [k for k, o in source.items() if k not in target or int(target[k]["Size"]) != int(o["Size"])]
    result.pending_before = len(missing)
    if missing:
        oldest = min(source[k]["LastModified"] for k in missing)
        result.lag_seconds = (datetime.now(UTC) - oldest).total_seconds()
    for key in sorted(missing, key=lambda k: (_order(k), k)):
        size = int(source[key]["Size"])
        sent = copy_object(primary, dr, key, size)
        got = _hash_stream(dr, key)
        if got != sent:
            result.mismatched.append(key)
            continue
        result.verified += 1
        result.copied.append(key)
        result.copied_bytes += size
        if size > SMALL:
            progress(f"DR copy: {key} ({size / 2**20:.1f} MiB) copied and verified")
    result.dr_objects = len(target) + len(result.copied)
    return result
