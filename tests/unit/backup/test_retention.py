"""Retention decides what to delete: count and time like pgBackRest, never the last backups, keys from ids.

Issue 13 item 1. Every case here failed on the plan before it counted backups: with nothing inside the window
and nothing verified it deleted every backup, it deleted the newest backup when an older one was the verified
one, it took ``keep_days`` 0 or negative, and it deleted whatever object keys a record named.
"""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from cqox_platform.backup.archive.records import BackupRecord, list_backups
from cqox_platform.backup.archive.store import Archive, ArchiveError
from cqox_platform.backup.archive.wal_names import segment_name
from cqox_platform.backup.retention import RetentionError, apply_retention, plan_retention

NOW = datetime(2026, 11, 26, 12, tzinfo=UTC)
SYSTEM = "7001"


def backup(day: int, start_segno: int, *, age_days: float) -> BackupRecord:
    """A backup ``age_days`` old; ids sort by ``day`` (the id is the start time)."""
    backup_id = f"202611{day:02d}T030000Z"
    archive = Archive(None, "b", SYSTEM)
    stopped = NOW - timedelta(days=age_days)
    return BackupRecord(
        backup_id=backup_id,
        system_id=SYSTEM,
        bucket="b",
        label=backup_id,
        timeline=1,
        start_lsn="0/0",
        stop_lsn="0/0",
        start_wal=segment_name(1, start_segno),
        stop_wal=segment_name(1, start_segno),
        start_time=stopped.isoformat(),
        stop_time=stopped.isoformat(),
        database_bytes=1,
        compressed_bytes=1,
        stored_bytes=1,
        duration_seconds=1,
        throughput_mib_s=1,
        key_name="k",
        key_version=1,
        object_key=archive.backup_data_key(backup_id),
        manifest_key=archive.backup_manifest_key(backup_id),
        pg_version="15",
    )


def ids(records) -> list[str]:
    return [r.backup_id for r in records]


A = backup(1, 10, age_days=300)
B = backup(2, 20, age_days=200)
C = backup(3, 30, age_days=100)


@pytest.mark.parametrize(
    ("records", "verified", "keep_days", "keep_full", "kept", "why"),
    [
        # Nothing inside the window, nothing verified: the newest N stay (pgBackRest repo-retention-full).
        ([A, B, C], set(), 30, 2, [B, C], {B.backup_id: "newest 2", C.backup_id: "newest 2"}),
        ([C], set(), 30, 2, [C], {C.backup_id: "newest 2"}),
        ([A, B, C], set(), 30, 1, [C], {C.backup_id: "newest 1"}),
        # An older verified backup never costs the newest one its place.
        ([A, B, C], {A.backup_id}, 30, 1, [A, C], {A.backup_id: "newest verified", C.backup_id: "newest 1"}),
        # Only the newest verified backup is protected as such.
        ([A, B, C], {A.backup_id, B.backup_id}, 30, 1, [B, C], {B.backup_id: "newest verified"}),
    ],
)
def test_the_newest_backups_and_the_newest_verified_one_always_stay(records, verified, keep_days, keep_full, kept, why):
    plan = plan_retention(records, verified, [], now=NOW, keep_days=keep_days, keep_full=keep_full)
    assert ids(plan.keep) == ids(kept)
    assert ids(plan.delete) == [r.backup_id for r in records if r not in kept]
    for backup_id, reason in why.items():
        assert reason in plan.reasons[backup_id]
    assert set(plan.reasons) == {r.backup_id for r in records}  # a reason for every backup, kept or deleted


def test_time_retention_keeps_what_a_restore_into_the_whole_window_needs():
    """pgBackRest's time retention: the newest backup that finished before the window starts stays, since a
    point in time at the window's start can only be restored from it."""
    old = backup(1, 10, age_days=56)
    before_window = backup(2, 20, age_days=40)
    mid = backup(3, 30, age_days=16)
    new = backup(4, 40, age_days=1)
    wal = [segment_name(1, n) for n in range(8, 44)] + ["00000002.history", segment_name(1, 12) + ".00000028.backup"]
    plan = plan_retention([old, before_window, mid, new], set(), wal, now=NOW, keep_days=30, keep_full=1)
    assert ids(plan.delete) == [old.backup_id]
    assert "window" in plan.reasons[before_window.backup_id]
    assert plan.wal_keep_from == before_window.start_wal
    assert segment_name(1, 19) in plan.wal_delete and segment_name(1, 20) not in plan.wal_delete
    assert "00000002.history" not in plan.wal_delete


def test_wal_of_every_kept_backup_stays_even_when_all_are_old():
    plan = plan_retention([A], set(), [segment_name(1, n) for n in range(5, 12)], now=NOW, keep_days=30)
    assert ids(plan.keep) == [A.backup_id]
    assert plan.wal_delete == [segment_name(1, n) for n in range(5, 10)]


@pytest.mark.parametrize(("keep_days", "keep_full"), [(0, 2), (-1, 2), (30, 0), (30, -3)])
def test_retention_refuses_a_window_or_count_below_one(keep_days, keep_full):
    with pytest.raises(RetentionError, match="at least 1"):
        plan_retention([A, B, C], set(), [], now=NOW, keep_days=keep_days, keep_full=keep_full)


class RecordingArchive(Archive):
    def __init__(self):
        super().__init__(None, "b", SYSTEM)
        object.__setattr__(self, "deleted", [])

    def delete(self, key: str) -> None:
        self.deleted.append(key)


def test_apply_deletes_the_keys_of_the_backup_id_not_those_a_record_names():
    archive = RecordingArchive()
    lying = replace(A, object_key=C.object_key, manifest_key=C.manifest_key)  # a bad backup.json
    plan = plan_retention([lying, B, C], set(), [], now=NOW, keep_days=30, keep_full=2)
    apply_retention(archive, plan)
    assert archive.deleted == [
        archive.backup_record_key(A.backup_id),  # record first: the backup stops being listed
        archive.backup_manifest_key(A.backup_id),
        archive.backup_data_key(A.backup_id),
    ]
    assert not any(C.backup_id in key for key in archive.deleted)


class ListingArchive(Archive):
    def __init__(self, objects: dict[str, bytes]):
        super().__init__(None, "b", SYSTEM)
        object.__setattr__(self, "objects", objects)

    def list(self, prefix):
        return [{"Key": k} for k in sorted(self.objects) if k.startswith(prefix)]

    def get_bytes(self, key):
        return self.objects.get(key)


@pytest.mark.parametrize(
    "lie",
    [
        {"backup_id": C.backup_id},
        {"object_key": C.object_key},
        {"manifest_key": C.manifest_key},
    ],
)
def test_a_record_that_points_at_another_backup_is_refused_when_listed(lie):
    archive = ListingArchive({})
    data = json.loads(A.to_json())
    data.update(lie)
    archive.objects[archive.backup_record_key(A.backup_id)] = json.dumps(data).encode()
    archive.objects[archive.backup_record_key(C.backup_id)] = C.to_json().encode()
    with pytest.raises(ArchiveError, match=A.backup_id):
        list_backups(archive)


def test_plan_summary_is_the_expire_commands_json():
    plan = plan_retention([A, B, C], set(), [], now=NOW, keep_days=30, keep_full=2)
    rows = plan.rows()
    assert [(r["backup_id"], r["action"]) for r in rows] == [
        (A.backup_id, "delete"),
        (B.backup_id, "keep"),
        (C.backup_id, "keep"),
    ]
    assert all(r["reason"] for r in rows) and json.dumps(plan.summary())
