"""The second region: copy backups and WAL to the DR bucket, verify both sides, report the lag.

Objects are streamed through this process (as a copy to another region's endpoint would be) while hashing;
the DR object carries the source's SHA-256 in its metadata and is read back and hashed to verify (sizes prove
nothing: a flipped bit keeps the size). It also carries the source object's own user metadata: a WAL
manifest's holds the raw file's SHA-256 (``wal.segment.SHA_META``), which a fetch from the DR bucket checks
after decryption and which lets an archiver re-pointed at the DR bucket push the same file again without a
conflict. ``reverify`` re-copies a unit whose DR metadata lacks any of the source's.

A backup (data, manifest, record) and a WAL file (data, manifest) are copied as a unit, in that order, and the
unit stops at the first object whose read-back hash differs: the bad copy is deleted and the unit's manifest
and record are not written, so the DR bucket never lists a backup or WAL file whose data did not arrive
intact, and the next run (which sees the unit incomplete) copies it again. ``reverify`` also re-reads every
complete unit in the DR bucket and re-copies any whose bytes no longer match the hash recorded at copy time.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from cqox_platform.backup.archive.multipart import MultipartWriter
from cqox_platform.backup.archive.store import Archive, ArchiveError
from cqox_platform.crypto.envelope import MANIFEST_SUFFIX

SHA_META = "sha256"
SMALL = 16 * 1024 * 1024 + 65536  # a WAL segment with its envelope overhead goes in one PUT

Progress = Callable[[str], None]


def unit_of(key: str) -> str:
    """What is copied together: a backup's directory, a WAL file with its manifest, else the object itself."""
    parts = key.split("/")
    if len(parts) >= 5 and parts[-3] == "base":
        return "/".join(parts[:-1]) + "/"
    return key.removesuffix(".sha256").removesuffix(MANIFEST_SUFFIX)


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
    """Stream ``key`` from ``src`` to ``dst`` with its user metadata; returns the SHA-256 of the bytes sent."""
    head = src.head(key)
    body = src.get_stream(key) if head is not None else None
    if head is None or body is None:
        raise ArchiveError(f"{src.where(key)} disappeared before it could be copied.")
    metadata = dict(head.get("Metadata") or {})
    digest = hashlib.sha256()
    if size <= SMALL:
        data = body.read()
        digest.update(data)
        dst.put_bytes(key, data, metadata={**metadata, SHA_META: digest.hexdigest()})
        return digest.hexdigest()
    with MultipartWriter(dst, key, metadata=metadata) as writer:
        for chunk in iter(lambda: body.read(8 * 1024 * 1024), b""):
            digest.update(chunk)
            writer.write(chunk)
    # Multipart uploads cannot set metadata afterwards without a copy; record the hash beside the object.
    dst.put_bytes(key + ".sha256", digest.hexdigest().encode())
    return digest.hexdigest()


def _recorded_hash(dr: Archive, key: str) -> str | None:
    """The SHA-256 recorded when ``key`` was copied (object metadata, or the side object of a multipart copy)."""
    head = dr.head(key)
    if head is None:
        return None
    recorded = (head.get("Metadata") or {}).get(SHA_META)
    if recorded:
        return recorded
    side = dr.get_bytes(key + ".sha256")
    return side.decode().strip() if side else None


def _intact(primary: Archive, dr: Archive, key: str) -> bool:
    """The DR copy still hashes to what was recorded at copy time and carries the source's user metadata."""
    if (recorded := _recorded_hash(dr, key)) is None or _hash_stream(dr, key) != recorded:
        return False
    source = (primary.head(key) or {}).get("Metadata") or {}
    copied = (dr.head(key) or {}).get("Metadata") or {}
    return all(copied.get(name) == value for name, value in source.items() if name != SHA_META)


def copy_to_dr(
    primary: Archive, dr: Archive, progress: Progress = lambda _m: None, *, reverify: bool = False
) -> DrCopyResult:
    result = DrCopyResult()
    prefix = f"{primary.root}/"
    source = {o["Key"]: o for o in primary.list(prefix)}
    target = {o["Key"]: o for o in dr.list(prefix)}
    result.primary_objects = len(source)
    units: dict[str, list[str]] = {}
    for key in source:
        units.setdefault(unit_of(key), []).append(key)
    pending_units = set()
    for unit, keys in units.items():
        if any(k not in target or int(target[k]["Size"]) != int(source[k]["Size"]) for k in keys):
            pending_units.add(unit)
        elif reverify and not all(_intact(primary, dr, k) for k in keys):
            progress(
                f"DR copy: {unit} no longer matches the hash recorded when it was copied, or lacks the source's "
                "metadata; copying it again"
            )
            pending_units.add(unit)
    missing = [k for u in pending_units for k in units[u]]
    result.pending_before = len(missing)
    if missing:
        oldest = min(source[k]["LastModified"] for k in missing)
        result.lag_seconds = (datetime.now(UTC) - oldest).total_seconds()
    for unit in sorted(pending_units):
        for key in sorted(units[unit], key=lambda k: (_order(k), k)):
            size = int(source[key]["Size"])
            try:
                sent = copy_object(primary, dr, key, size)
                got = _hash_stream(dr, key)
            except ArchiveError as exc:
                progress(f"DR copy: {key} not copied ({exc}); the next run tries {unit} again")
                result.mismatched.append(key)
                break
            if got != sent:
                # Never leave bytes that differ under the name, nor write what would make them look complete.
                dr.delete(key)
                progress(f"DR copy: {dr.where(key)} differs from what was sent (SHA-256); {unit} copied next run")
                result.mismatched.append(key)
                break
            result.verified += 1
            result.copied.append(key)
            result.copied_bytes += size
            if size > SMALL:
                progress(f"DR copy: {key} ({size / 2**20:.1f} MiB) copied and verified")
    result.dr_objects = len(set(target) | set(result.copied))
    return result
