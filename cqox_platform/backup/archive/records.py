"""Backup records: the JSON written last beside each base backup, and the ``backups`` table that mirrors it.

S3 is the source of truth (a restore must work with the database gone); the table is for queries, the UI
and retention bookkeeping, and is refilled from S3 by ``sync_backups_table``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from cqox_platform.backup.archive.store import ROOT, Archive, ArchiveError

#: The key of the primary's ``max_wal_size`` (bytes) in a backup record's ``extra``.
MAX_WAL_SIZE_KEY = "max_wal_size_bytes"


@dataclass(frozen=True)
class BackupRecord:
    backup_id: str
    system_id: str
    bucket: str
    label: str
    timeline: int
    start_lsn: str
    stop_lsn: str
    start_wal: str
    stop_wal: str
    start_time: str  # ISO 8601, UTC
    stop_time: str
    database_bytes: int  # tar bytes streamed from pg_basebackup
    compressed_bytes: int
    stored_bytes: int  # ciphertext in S3
    duration_seconds: float
    throughput_mib_s: float
    key_name: str
    key_version: int
    object_key: str
    manifest_key: str
    pg_version: str
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str | bytes, *, where: str) -> BackupRecord:
        try:
            data = json.loads(text)
            known = {f.name for f in fields(cls)}
            return cls(**{k: v for k, v in data.items() if k in known})
        except (ValueError, TypeError) as exc:
            raise ArchiveError(f"{where} is not a valid backup record: {exc}") from None

    @property
    def max_wal_size_bytes(self) -> int | None:
        """The primary's ``max_wal_size`` when the backup was taken, which a restored copy inherits with its
        configuration (None in records from before it was captured)."""
        value = self.extra.get(MAX_WAL_SIZE_KEY)
        return int(value) if value else None

    @property
    def stop_datetime(self) -> datetime:
        return datetime.fromisoformat(self.stop_time)

    @property
    def start_datetime(self) -> datetime:
        return datetime.fromisoformat(self.start_time)


def list_backups(archive: Archive) -> list[BackupRecord]:
    """Every complete backup of this cluster in the bucket (those with a record), oldest first."""
    prefix = f"{archive.root}/base/"
    records = []
    for obj in archive.list(prefix):
        if obj["Key"].endswith("/backup.json"):
            text = archive.get_bytes(obj["Key"])
            if text is not None:
                record = BackupRecord.from_json(text, where=archive.where(obj["Key"]))
                check_record_location(archive, obj["Key"], record)
                records.append(record)
    return sorted(records, key=lambda r: r.backup_id)


def check_record_location(archive: Archive, key: str, record: BackupRecord) -> None:
    """A record describes the backup it sits beside, nothing else: its id is its directory's, and the objects it
    names are that backup's. A damaged or forged ``backup.json`` would otherwise point a restore at another
    backup's data, or retention at another backup's objects; it is refused, naming where it is."""
    backup_id = key.rsplit("/", 2)[-2]
    expected = {
        "backup_id": backup_id,
        "object_key": archive.backup_data_key(backup_id),
        "manifest_key": archive.backup_manifest_key(backup_id),
    }
    wrong = [
        f"{name} is {getattr(record, name)!r}" for name, value in expected.items() if getattr(record, name) != value
    ]
    if wrong:
        raise ArchiveError(
            f"{archive.where(key)} does not describe backup {backup_id}: {', '.join(wrong)}. Nothing trusts it; "
            f"restore the record from the DR copy or move it aside (`cqox-platform backup list` shows the rest)."
        )


def find_backup(s3: Any, bucket: str, backup_id: str) -> BackupRecord:
    """A backup by id, whichever cluster it belongs to (restores start from an id, not a system id)."""
    from cqox_platform.backup.archive.store import check_backup_id

    check_backup_id(backup_id)
    probe = Archive(s3, bucket, "-")
    for page_obj in probe.list(f"{ROOT}/"):
        key = page_obj["Key"]
        if key.endswith(f"/base/{backup_id}/backup.json"):
            text = probe.get_bytes(key)
            if text is not None:
                record = BackupRecord.from_json(text, where=probe.where(key))
                check_record_location(Archive(s3, bucket, key.split("/")[1]), key, record)
                return record
    raise ArchiveError(f"no backup {backup_id} in s3://{bucket}/{ROOT}/ (`cqox-platform backup list` shows them).")


_COLUMNS = [
    "backup_id",
    "system_id",
    "bucket",
    "label",
    "timeline",
    "start_lsn",
    "stop_lsn",
    "start_wal",
    "stop_wal",
    "start_time",
    "stop_time",
    "database_bytes",
    "compressed_bytes",
    "stored_bytes",
    "duration_seconds",
    "throughput_mib_s",
    "key_name",
    "key_version",
    "object_key",
    "pg_version",
]


def upsert_backup(conn: psycopg.Connection, record: BackupRecord) -> None:
    values = [getattr(record, c) for c in _COLUMNS]
    placeholders = ", ".join(["%s"] * (len(_COLUMNS) + 1))
    updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in _COLUMNS[1:])
    conn.execute(
        f"INSERT INTO backups ({', '.join(_COLUMNS)}, record) VALUES ({placeholders}) "
        f"ON CONFLICT (backup_id) DO UPDATE SET {updates}, record = EXCLUDED.record, deleted_at = NULL",
        [*values, Jsonb(asdict(record))],
    )


def sync_backups_table(conn: psycopg.Connection, records: list[BackupRecord]) -> None:
    """Make the table match S3 for this cluster: add what S3 has, mark what S3 lost as deleted."""
    for record in records:
        upsert_backup(conn, record)
    if records:
        conn.execute(
            "UPDATE backups SET deleted_at = now() WHERE system_id = %s AND bucket = %s AND deleted_at IS NULL "
            "AND NOT (backup_id = ANY(%s))",
            [records[0].system_id, records[0].bucket, [r.backup_id for r in records]],
        )
