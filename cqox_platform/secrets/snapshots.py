"""Vault (OpenBao) raft snapshots: take one through the API, store it in both buckets, find, verify and expire them.

Every backup and dataset is wrapped by Transit keys that never leave Vault, so a lost Vault makes both buckets
unreadable; a snapshot of Vault's raft storage, kept beside the backups, is what makes them readable again. The
snapshot itself is encrypted by Vault's barrier: it is useless without the unseal material, which is kept
elsewhere (docs/vault-recovery.md).

The snapshot is streamed from Vault to a private temporary file while it is hashed (never held in memory), then
uploaded to each bucket with its SHA-256 and size in the object's metadata and read back and hashed, so a copy
that did not arrive intact fails the run. A restore downloads the same way and refuses an object whose bytes do
not match what was recorded at upload, naming the object.

Objects live under ``vault/snapshots/<UTC time>.snap``; the name sorts by time, so the newest is the last.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from cqox_platform.errors import SnapshotIntegrityError, VaultRecoveryError

PREFIX = "vault/snapshots/"
SUFFIX = ".snap"
SHA_META = "sha256"
SIZE_META = "size"
TAKEN_META = "taken-at"
#: The Transit keys' versions when the snapshot was taken (JSON), what a restore drill expects to find in it.
KEYS_META = "transit-keys"
CHUNK = 1 << 20
_NAME = re.compile(r"([0-9]{8}T[0-9]{6}\.[0-9]{6}Z)" + re.escape(SUFFIX))

Progress = Callable[[str], None]
#: Transit key name -> {"latest_version": n, "min_decryption_version": m}
KeyVersions = dict[str, dict[str, int]]


@dataclass(frozen=True)
class LocalSnapshot:
    """A snapshot on local disk with what was measured while it streamed in."""

    path: Path
    sha256: str
    size: int
    seconds: float
    taken_at: datetime


@dataclass(frozen=True)
class StoredSnapshot:
    """A snapshot object in a bucket, as listed (``sha256`` and the rest come from its metadata, when read)."""

    bucket: str
    key: str
    taken_at: datetime
    size: int
    sha256: str = ""
    key_versions: KeyVersions = field(default_factory=dict)

    @property
    def where(self) -> str:
        return f"s3://{self.bucket}/{self.key}"

    def age_seconds(self, now: datetime) -> float:
        return (now - self.taken_at).total_seconds()


def object_key(taken_at: datetime) -> str:
    """Where a snapshot taken at ``taken_at`` is stored (UTC, microseconds: names sort by time)."""
    return f"{PREFIX}{taken_at.astimezone(UTC):%Y%m%dT%H%M%S.%fZ}{SUFFIX}"


def taken_at_of(key: str) -> datetime | None:
    """The time in a snapshot object's name; ``None`` for anything else under the prefix."""
    match = _NAME.fullmatch(key.removeprefix(PREFIX))
    if match is None:
        return None
    return datetime.strptime(match[1], "%Y%m%dT%H%M%S.%fZ").replace(tzinfo=UTC)


def take_snapshot(response: Any, directory: Path, taken_at: datetime | None = None) -> LocalSnapshot:
    """Stream Vault's snapshot response (``hvac``'s ``take_raft_snapshot()``, a streamed ``requests`` response) to
    a file in ``directory`` (owner-only), hashing as it goes. An empty or non-gzip body is refused: Vault
    answers some errors with 200 and a body that is not a snapshot."""
    started = time.monotonic()
    taken = taken_at or datetime.now(UTC)
    fd, name = tempfile.mkstemp(prefix="vault-", suffix=SUFFIX, dir=directory)
    path = Path(name)
    digest, size, head = hashlib.sha256(), 0, b""
    try:
        with os.fdopen(fd, "wb") as out:
            for chunk in response.iter_content(CHUNK):
                if not head:
                    head = chunk[:2]
                digest.update(chunk)
                size += len(chunk)
                out.write(chunk)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    finally:
        response.close()
    if size == 0 or head != b"\x1f\x8b":
        path.unlink(missing_ok=True)
        raise VaultRecoveryError(
            f"Vault returned {size} bytes that are not a raft snapshot (no gzip header); is its storage raft "
            '(`storage "raft"` in its config)?'
        )
    return LocalSnapshot(path, digest.hexdigest(), size, time.monotonic() - started, taken)


def snapshot_metadata(local: LocalSnapshot, key_versions: KeyVersions) -> dict[str, str]:
    """The S3 user metadata a snapshot object carries: what a restore checks, and what it should find."""
    return {
        SHA_META: local.sha256,
        SIZE_META: str(local.size),
        TAKEN_META: local.taken_at.astimezone(UTC).isoformat(),
        KEYS_META: json.dumps(key_versions, sort_keys=True, separators=(",", ":")),
    }


def _s3(what: str, where: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    try:
        return fn(*args, **kwargs)
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "") or str(exc)
        raise VaultRecoveryError(f"S3 refused {what} {where}: {code}.") from None
    except BotoCoreError as exc:
        raise VaultRecoveryError(f"S3 failed while {what} {where}: {exc}; is the S3 server reachable?") from None


def upload(s3: Any, bucket: str, key: str, local: LocalSnapshot, metadata: dict[str, str]) -> StoredSnapshot:
    """Upload ``local`` to ``bucket`` with ``metadata`` (boto3's managed transfer: multipart for big files), then
    read it back and hash it; a copy that differs is deleted and the run fails naming it."""
    where = f"s3://{bucket}/{key}"
    _s3("uploading", where, s3.upload_file, str(local.path), bucket, key, ExtraArgs={"Metadata": metadata})
    try:
        return verify_stored(s3, bucket, key)
    except SnapshotIntegrityError:
        _s3("deleting the bad copy", where, s3.delete_object, Bucket=bucket, Key=key)
        raise


def _recorded(head: dict[str, Any], where: str) -> tuple[str, int]:
    meta = head.get("Metadata") or {}
    sha, size = meta.get(SHA_META, ""), meta.get(SIZE_META, "")
    if not re.fullmatch(r"[0-9a-f]{64}", sha) or not size.isdigit():
        raise SnapshotIntegrityError(
            f"{where} has no SHA-256 and size recorded at upload (metadata {SHA_META!r}, {SIZE_META!r}); it was "
            "not written by vault_snapshot and is not restored. Use another snapshot, or take a new one."
        )
    return sha, int(size)


def _stored(bucket: str, key: str, head: dict[str, Any], sha: str) -> StoredSnapshot:
    meta = head.get("Metadata") or {}
    try:
        versions = json.loads(meta.get(KEYS_META) or "{}")
    except ValueError:
        versions = {}
    taken = taken_at_of(key) or head.get("LastModified") or datetime.now(UTC)
    return StoredSnapshot(bucket, key, taken, int(head.get("ContentLength", 0)), sha, versions)


def _hash_into(body: Any, out: Any | None) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    for chunk in iter(lambda: body.read(CHUNK), b""):
        digest.update(chunk)
        size += len(chunk)
        if out is not None:
            out.write(chunk)
    return digest.hexdigest(), size


def _check(where: str, recorded: tuple[str, int], got: tuple[str, int]) -> None:
    (sha, size), (got_sha, got_size) = recorded, got
    if (got_sha, got_size) != (sha, size):
        raise SnapshotIntegrityError(
            f"{where} is corrupt: {got_size} bytes with SHA-256 {got_sha}, but {size} bytes with SHA-256 {sha} were "
            "recorded at upload. It is not restored; restore the other bucket's copy of the same snapshot, or an "
            "older snapshot, and find out what changed this object."
        )


def verify_stored(s3: Any, bucket: str, key: str) -> StoredSnapshot:
    """Read a stored snapshot back and check it against the SHA-256 and size recorded at upload."""
    where = f"s3://{bucket}/{key}"
    head = _s3("reading the metadata of", where, s3.head_object, Bucket=bucket, Key=key)
    recorded = _recorded(head, where)
    body = _s3("downloading", where, s3.get_object, Bucket=bucket, Key=key)["Body"]
    try:
        got = _s3("downloading", where, _hash_into, body, None)
    finally:
        body.close()
    _check(where, recorded, got)
    return _stored(bucket, key, head, recorded[0])


@contextmanager
def downloaded(s3: Any, snapshot: StoredSnapshot, directory: Path) -> Iterator[tuple[Path, StoredSnapshot]]:
    """Download a snapshot to an owner-only file in ``directory``, verified against its recorded SHA-256 and size
    before the caller sees it; the file is removed afterwards."""
    where = snapshot.where
    head = _s3("reading the metadata of", where, s3.head_object, Bucket=snapshot.bucket, Key=snapshot.key)
    recorded = _recorded(head, where)
    fd, name = tempfile.mkstemp(prefix="restore-", suffix=SUFFIX, dir=directory)
    path = Path(name)
    try:
        body = _s3("downloading", where, s3.get_object, Bucket=snapshot.bucket, Key=snapshot.key)["Body"]
        try:
            with os.fdopen(fd, "wb") as out:
                got = _s3("downloading", where, _hash_into, body, out)
        finally:
            body.close()
        _check(where, recorded, got)
        yield path, _stored(snapshot.bucket, snapshot.key, head, recorded[0])
    finally:
        path.unlink(missing_ok=True)


def list_snapshots(s3: Any, bucket: str) -> list[StoredSnapshot]:
    """The snapshot objects in ``bucket``, oldest first (from the listing: no metadata read)."""
    found: list[StoredSnapshot] = []
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=PREFIX)
    for page in _s3("listing", f"s3://{bucket}/{PREFIX}", list, pages):
        for item in page.get("Contents", []):
            taken = taken_at_of(item["Key"])
            if taken is not None:
                found.append(StoredSnapshot(bucket, item["Key"], taken, int(item.get("Size", 0))))
    return sorted(found, key=lambda s: s.taken_at)


def newest(s3: Any, bucket: str) -> StoredSnapshot | None:
    """The newest snapshot in ``bucket`` with its recorded metadata, or ``None`` when there is none."""
    snapshots = list_snapshots(s3, bucket)
    if not snapshots:
        return None
    last = snapshots[-1]
    head = _s3("reading the metadata of", last.where, s3.head_object, Bucket=bucket, Key=last.key)
    sha = (head.get("Metadata") or {}).get(SHA_META, "")
    return _stored(bucket, last.key, head, sha)


def expired(snapshots: list[StoredSnapshot], keep: int, max_age: timedelta, now: datetime) -> list[StoredSnapshot]:
    """What retention deletes: snapshots older than ``max_age``, except the newest ``keep``, which always stay
    (a stopped schedule must never age the last good snapshots away)."""
    ordered = sorted(snapshots, key=lambda s: s.taken_at)
    candidates = ordered[: max(len(ordered) - keep, 0)]
    return [s for s in candidates if now - s.taken_at > max_age]


def delete(s3: Any, snapshots: list[StoredSnapshot]) -> None:
    for snapshot in snapshots:
        _s3("deleting", snapshot.where, s3.delete_object, Bucket=snapshot.bucket, Key=snapshot.key)


@dataclass(frozen=True)
class FreshnessVerdict:
    passed: bool
    description: str
    age_seconds: float | None


def freshness(
    newest_by_bucket: dict[str, StoredSnapshot | None], target_seconds: float, now: datetime
) -> FreshnessVerdict:
    """Whether every bucket's newest snapshot is younger than ``target_seconds``; fails closed on a bucket without
    any snapshot. The age reported is the oldest of the newest ones (what a site loss would cost)."""
    if not newest_by_bucket:
        return FreshnessVerdict(False, "no bucket is configured for Vault snapshots (CQOX_S3_BUCKET).", None)
    problems, ages = [], []
    for bucket, snap in newest_by_bucket.items():
        if snap is None:
            problems.append(f"s3://{bucket}/{PREFIX} holds no Vault snapshot")
            continue
        age = snap.age_seconds(now)
        ages.append(age)
        if age > target_seconds:
            problems.append(
                f"the newest snapshot {snap.where} is {age / 60:.0f} min old (target {target_seconds / 60:.0f} min)"
            )
    worst = max(ages) if ages else None
    if problems:
        return FreshnessVerdict(False, "; ".join(problems) + "; materialize vault_snapshot.", worst)
    buckets = ", ".join(newest_by_bucket)
    return FreshnessVerdict(True, f"the newest snapshot in {buckets} is at most {worst / 60:.0f} min old", worst)
