"""The DR copy's units and its verification by hash, on in-memory buckets (issue 13 item 5).

The real-S3 version (a corrupting copy, a copy corrupted at rest) is in tests/integration/test_backups.py.
"""

from __future__ import annotations

import io
from datetime import UTC, datetime

from cqox_platform.backup import dr_copy
from cqox_platform.backup.archive.store import Archive

ROOT = "postgres/7"
BACKUP = f"{ROOT}/base/20261126T030000Z/"
WAL = f"{ROOT}/wal/000000010000000000000002"


class MemoryArchive(Archive):
    def __init__(self, bucket: str, objects: dict[str, bytes] | None = None):
        super().__init__(None, bucket, "7")
        object.__setattr__(self, "objects", dict(objects or {}))
        object.__setattr__(self, "meta", {})

    def list(self, prefix):
        now = datetime.now(UTC)
        return [{"Key": k, "Size": len(v), "LastModified": now} for k, v in sorted(self.objects.items())]

    def head(self, key):
        return None if key not in self.objects else {"Metadata": self.meta.get(key, {})}

    def get_stream(self, key):
        return io.BytesIO(self.objects[key]) if key in self.objects else None

    def get_bytes(self, key):
        return self.objects.get(key)

    def put_bytes(self, key, body, metadata=None):
        self.objects[key] = body
        self.meta[key] = metadata or {}

    def delete(self, key):
        self.objects.pop(key, None)


def primary() -> MemoryArchive:
    return MemoryArchive(
        "primary",
        {
            BACKUP + "base.tar.zst.enc": b"D" * 100,
            BACKUP + "base.tar.zst.enc.manifest.json": b"{}",
            BACKUP + "backup.json": b"{}",
            WAL: b"W" * 50,
            WAL + ".manifest.json": b"{}",
        },
    )


def test_units_group_a_backup_and_a_wal_file_with_their_manifests():
    assert dr_copy.unit_of(BACKUP + "backup.json") == dr_copy.unit_of(BACKUP + "base.tar.zst.enc") == BACKUP
    assert dr_copy.unit_of(WAL + ".manifest.json") == dr_copy.unit_of(WAL) == WAL


def test_a_copy_that_arrives_different_stops_its_unit_and_is_retried(monkeypatch):
    src, dst = primary(), MemoryArchive("dr")
    real = dr_copy.copy_object

    def corrupting(s, d, key, size):
        sent = real(s, d, key, size)
        if key.endswith("base.tar.zst.enc"):
            d.objects[key] = b"X" + d.objects[key][1:]  # same size, other bytes
        return sent

    monkeypatch.setattr(dr_copy, "copy_object", corrupting)
    result = dr_copy.copy_to_dr(src, dst)
    assert result.mismatched == [BACKUP + "base.tar.zst.enc"]
    assert not any(k.startswith(BACKUP) for k in dst.objects)  # nothing of the backup, not even the bad data
    assert WAL + ".manifest.json" in dst.objects  # other units go on
    monkeypatch.setattr(dr_copy, "copy_object", real)
    again = dr_copy.copy_to_dr(src, dst)
    assert again.mismatched == [] and dst.objects == src.objects


def test_reverify_finds_a_copy_corrupted_at_rest():
    src, dst = primary(), MemoryArchive("dr")
    dr_copy.copy_to_dr(src, dst)
    dst.objects[WAL] = b"w" + dst.objects[WAL][1:]
    assert dr_copy.copy_to_dr(src, dst).copied == []  # sizes match: a plain run cannot tell
    healed = dr_copy.copy_to_dr(src, dst, reverify=True)
    assert WAL in healed.copied and dst.objects == src.objects


def test_a_copy_keeps_the_source_objects_metadata_and_reverify_restores_it():
    src, dst = primary(), MemoryArchive("dr")
    src.meta[WAL + ".manifest.json"] = {"wal-sha256": "ab" * 32}
    dr_copy.copy_to_dr(src, dst)
    assert dst.meta[WAL + ".manifest.json"]["wal-sha256"] == "ab" * 32
    dst.meta[WAL + ".manifest.json"] = {dr_copy.SHA_META: dst.meta[WAL + ".manifest.json"][dr_copy.SHA_META]}
    healed = dr_copy.copy_to_dr(src, dst, reverify=True)  # a copy made without it is made again
    assert WAL + ".manifest.json" in healed.copied
    assert dst.meta[WAL + ".manifest.json"]["wal-sha256"] == "ab" * 32
