"""Key rotation for datasets: rotate the Transit key, rewrap every DEK in manifests and rows, record it.

Data objects are never rewritten: a rewrap changes only the small manifest and the row. The manifest is
rewritten first and the row second, so a crash in between leaves a manifest newer than its row, which both
still decrypt (old versions stay decryptable until ``min_decryption_version`` is raised, and that happens only
after every DEK was rewrapped).

Rotation holds the key's lock exclusively (``key_lock``) while ingests hold it shared from data key to row, so no
DEK of the old version can reach the table after the scan. Retiring old versions follows Vault's own procedure
for Transit: rotate, rewrap everything, and raise ``min_decryption_version`` only once a re-count of the rows
finds nothing on an older version; if it finds any (a writer that bypassed the lock), the minimum stays where
it is and the rotation fails naming them, because a retired version that a row still uses is data loss.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import psycopg

from cqox_platform.crypto.envelope import MANIFEST_SUFFIX, Manifest
from cqox_platform.datasets.key_lock import transit_key_lock
from cqox_platform.errors import DatasetError


class TransitKeys(Protocol):
    def rotate(self, key: str) -> int: ...
    def rewrap(self, key: str, ciphertext: str) -> str: ...
    def set_min_decryption_version(self, key: str, version: int) -> None: ...


@dataclass
class RotationReport:
    key_name: str
    old_version: int | None
    new_version: int
    rewrapped: int = 0
    already_current: int = 0
    min_decryption_version: int | None = None
    by_version_before: dict[int, int] = field(default_factory=dict)


def rotate_dataset_keys(
    *,
    conn: psycopg.Connection,
    s3: Any,
    bucket: str,
    vault: TransitKeys,
    key_name: str,
    raise_min_decryption_version: bool = False,
    log: Callable[[str], None] = lambda _m: None,
) -> RotationReport:
    """Rotate ``key_name`` and rewrap every ready dataset's DEK under the new version. ``conn``: autocommit.

    Waits for ingests holding data keys of ``key_name`` to commit, and holds new ones back until it is done.
    """
    with transit_key_lock(conn, key_name, exclusive=True):
        return _rotate_locked(conn, s3, bucket, vault, key_name, raise_min_decryption_version, log)


def _rotate_locked(
    conn: psycopg.Connection,
    s3: Any,
    bucket: str,
    vault: TransitKeys,
    key_name: str,
    raise_min_decryption_version: bool,
    log: Callable[[str], None],
) -> RotationReport:
    before = dict(
        conn.execute(
            "SELECT key_version, count(*) FROM datasets WHERE status = 'ready' AND key_name = %s GROUP BY 1",
            (key_name,),
        ).fetchall()
    )
    old = conn.execute("SELECT key_version FROM encryption_keys WHERE key_name = %s", (key_name,)).fetchone()
    new_version = vault.rotate(key_name)
    report = RotationReport(key_name, old[0] if old else None, new_version, by_version_before=before)
    rows = conn.execute(
        "SELECT id::text, wrapped_dek, key_version FROM datasets "
        "WHERE status = 'ready' AND key_name = %s ORDER BY created_at",
        (key_name,),
    ).fetchall()
    for dataset_id, wrapped, version in rows:
        if version == new_version:
            report.already_current += 1
            continue
        object_key = f"datasets/{dataset_id}/data.parquet.enc"
        manifest_key = object_key + MANIFEST_SUFFIX
        manifest = Manifest.from_json(
            s3.get_object(Bucket=bucket, Key=manifest_key)["Body"].read(), where=f"s3://{bucket}/{manifest_key}"
        )
        rewrapped = vault.rewrap(key_name, wrapped)
        updated = manifest.with_wrapped_dek(rewrapped)
        s3.put_object(Bucket=bucket, Key=manifest_key, Body=updated.to_json().encode(), ContentType="application/json")
        with conn.transaction():
            conn.execute(
                "UPDATE datasets SET wrapped_dek = %s, key_version = %s, updated_at = now() WHERE id = %s",
                (rewrapped, updated.key_version, dataset_id),
            )
        report.rewrapped += 1
    with conn.transaction():
        conn.execute(
            """
            INSERT INTO encryption_keys (key_name, key_version, rotated_at) VALUES (%s, %s, now())
            ON CONFLICT (key_name) DO UPDATE SET key_version = EXCLUDED.key_version, rotated_at = now()
            """,
            (key_name, new_version),
        )
        conn.execute(
            "INSERT INTO audit_log (user_id, action, resource, details) VALUES ('cqox-platform', 'key.rotated', %s,"
            " jsonb_build_object('new_version', %s::int, 'rewrapped', %s::int))",
            (key_name, new_version, report.rewrapped),
        )
    if raise_min_decryption_version:
        stale = conn.execute(
            "SELECT id::text, key_version FROM datasets WHERE status = 'ready' AND key_name = %s "
            "AND (key_version IS NULL OR key_version < %s) ORDER BY created_at LIMIT 20",
            (key_name, new_version),
        ).fetchall()
        if stale:
            listed = ", ".join(f"{i} (v{v})" for i, v in stale)
            raise DatasetError(
                f"{key_name} rotated to v{new_version}, but datasets are still on an older key version ({listed}), "
                "so min_decryption_version was NOT raised (that would make them unreadable). Find what wrote "
                "them without the rotation lock, then run the rotation again."
            )
        vault.set_min_decryption_version(key_name, new_version)
        report.min_decryption_version = new_version
    log(f"{key_name}: v{report.old_version} -> v{new_version}, {report.rewrapped} DEKs rewrapped")
    return report
