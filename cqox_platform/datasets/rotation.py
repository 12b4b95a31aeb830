"""Key rotation for datasets: rotate the Transit key, rewrap every DEK in manifests and rows, record it.

Data objects are never rewritten: a rewrap changes only the small manifest and the row. The manifest is
rewritten first and the row second, so a crash in between leaves a manifest newer than its row, which both
still decrypt (old versions stay decryptable until ``min_decryption_version`` is raised, and that happens only
after every DEK was rewrapped).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import psycopg

from cqox_platform.crypto.envelope import MANIFEST_SUFFIX, Manifest


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
    """Rotate ``key_name`` and rewrap every ready dataset's DEK under the new version. ``conn``: autocommit."""
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
        vault.set_min_decryption_version(key_name, new_version)
        report.min_decryption_version = new_version
    log(f"{key_name}: v{report.old_version} -> v{new_version}, {report.rewrapped} DEKs rewrapped")
    return report
