"""Encrypted datasets in S3 and PostgreSQL: ingest an upload, read one back, list them.

Layout in the bucket:
    landing/<name>/<file>.csv|.parquet      uploads waiting for ingestion (the sensor watches this prefix)
    quarantine/<name>/<stamp>-<file>         rejected uploads, with <...>.error.json beside them
    datasets/<id>/data.parquet.enc           the encrypted Parquet (streaming AES-256-GCM format)
    datasets/<id>/data.parquet.enc.manifest.json   wrapped DEK and checksums; written last

Nothing half-written looks finished: the manifest is written after the data object, the database row and its
audit entry commit together after both, and the landing object is deleted only after that. A failure on the
way deletes what this attempt wrote.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from cqox_platform.crypto.envelope import MANIFEST_SUFFIX, Manifest, decrypt_from, encrypt_to
from cqox_platform.crypto.keys import DataKeyProvider
from cqox_platform.datasets.key_lock import transit_key_lock
from cqox_platform.datasets.validation import (
    SUPPORTED_SUFFIXES,
    DatasetSchema,
    read_upload,
    validate_frame,
    validate_name,
)
from cqox_platform.errors import DatasetError, DatasetValidationError, InvalidDatasetNameError

LANDING = "landing/"
QUARANTINE = "quarantine/"
DATASETS = "datasets/"

Log = Callable[[str], None]


@dataclass(frozen=True)
class LandingObject:
    key: str
    name: str
    filename: str
    suffix: str


def parse_landing_key(key: str) -> LandingObject:
    """``landing/<name>/<file>.(csv|parquet)`` or an error naming what is wrong with the key."""
    parts = PurePosixPath(key).parts
    if len(parts) != 3 or parts[0] != LANDING.rstrip("/"):
        raise InvalidDatasetNameError(f"{key!r} is not landing/<name>/<file>.")
    name, filename = validate_name(parts[1]), parts[2]
    suffix = PurePosixPath(filename).suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES or filename.startswith(".") or ".." in filename:
        raise InvalidDatasetNameError(f"{key!r}: uploads must be .csv or .parquet files.")
    return LandingObject(key, name, filename, suffix)


def landing_key(name: str, source: Path) -> str:
    suffix = source.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise InvalidDatasetNameError(f"{source.name}: only .csv and .parquet files can be uploaded.")
    return f"{LANDING}{validate_name(name)}/{uuid.uuid4().hex[:12]}{suffix}"


@dataclass
class IngestResult:
    dataset_id: str
    name: str
    status: str  # "ready" or "rejected"
    source_key: str
    source_etag: str
    source_bytes: int
    problems: list[str] = field(default_factory=list)
    profile: dict[str, Any] = field(default_factory=dict)
    object_key: str | None = None
    manifest: Manifest | None = None
    quarantine_key: str | None = None
    seconds: float = 0.0


def _audit(conn: psycopg.Connection, action: str, resource: str, details: dict[str, Any]) -> None:
    conn.execute(
        "INSERT INTO audit_log (user_id, action, resource, details) VALUES (%s, %s, %s, %s)",
        ("cqox-platform", action, resource, Jsonb(details)),
    )


def ingest_upload(
    *,
    s3: Any,
    bucket: str,
    key: str,
    conn: psycopg.Connection,
    provider: DataKeyProvider,
    path_key: str,
    schema: DatasetSchema,
    log: Log = lambda _m: None,
) -> IngestResult:
    """Validate, profile, encrypt and store one upload, or quarantine it. ``conn`` must be autocommit."""
    started = time.monotonic()
    landing = parse_landing_key(key)
    head = s3.head_object(Bucket=bucket, Key=key)
    result = IngestResult(
        str(uuid.uuid4()), landing.name, "ready", key, head["ETag"].strip('"'), int(head["ContentLength"])
    )
    with tempfile.TemporaryDirectory(prefix="cqox-ingest-") as tmp:
        try:
            if result.source_bytes > schema.max_bytes:
                raise DatasetValidationError(
                    f"upload is {result.source_bytes} bytes, over the {schema.max_bytes}-byte limit",
                    [f"size {result.source_bytes} bytes exceeds the limit of {schema.max_bytes}"],
                )
            source = Path(tmp) / f"upload{landing.suffix}"
            # A plain streamed GET: nanio rejects the ranged GETs of boto3's download_file past the object's end.
            with open(source, "wb") as handle:
                shutil.copyfileobj(s3.get_object(Bucket=bucket, Key=key)["Body"], handle, 1 << 20)
            frame = read_upload(source, landing.suffix, schema)
            profile = validate_frame(frame, schema)
        except DatasetValidationError as exc:
            return _reject(s3, bucket, landing, conn, result, exc.problems, log, started)
        result.profile = profile.as_metadata()
        parquet = Path(tmp) / "data.parquet"
        frame.to_parquet(parquet, index=False)
        del frame
        encrypted = Path(tmp) / "data.parquet.enc"
        result.object_key = f"{DATASETS}{result.dataset_id}/data.parquet.enc"
        # From the data key to the committed row, a rotation of this key waits (and this waits for one).
        with transit_key_lock(conn, provider.key_name, exclusive=False):
            with open(parquet, "rb") as src, open(encrypted, "wb") as dst:
                result.manifest = encrypt_to(src, dst, provider, object_id=result.object_key)
            log(
                f"{landing.name}: {profile.rows} rows, {result.manifest.plaintext_bytes} bytes of Parquet encrypted "
                f"under {provider.key_name} v{result.manifest.key_version}"
            )
            try:
                s3.upload_file(str(encrypted), bucket, result.object_key)  # multipart above 8 MiB, bounded memory
                s3.put_object(
                    Bucket=bucket,
                    Key=result.object_key + MANIFEST_SUFFIX,
                    Body=result.manifest.to_json().encode(),
                    ContentType="application/json",
                )
                _insert_ready(conn, result, path_key)
            except BaseException:
                for leftover in (result.object_key + MANIFEST_SUFFIX, result.object_key):
                    with contextlib.suppress(Exception):
                        s3.delete_object(Bucket=bucket, Key=leftover)
                raise
    s3.delete_object(Bucket=bucket, Key=key)
    result.seconds = time.monotonic() - started
    return result


def _insert_ready(conn: psycopg.Connection, result: IngestResult, path_key: str) -> None:
    manifest = result.manifest
    assert manifest is not None and result.object_key is not None
    metadata = {
        **result.profile,
        "source_key": result.source_key,
        "source_etag": result.source_etag,
        "source_bytes": result.source_bytes,
        "encrypted_bytes": manifest.ciphertext_bytes,
        "parquet_bytes": manifest.plaintext_bytes,
        "chunks": manifest.chunks,
        "format": manifest.format,
        "format_version": manifest.format_version,
    }
    with conn.transaction():
        conn.execute(
            """
            INSERT INTO datasets (id, name, rows, columns, status, metadata, encrypted_data_path,
                                  wrapped_dek, key_name, key_version, plaintext_sha256)
            VALUES (%s, %s, %s, %s, 'ready', %s, pgp_sym_encrypt(%s, %s, 'cipher-algo=aes256'), %s, %s, %s, %s)
            """,
            (
                result.dataset_id,
                result.name,
                result.profile["rows"],
                result.profile["columns"],
                Jsonb(metadata),
                result.object_key,
                path_key,
                manifest.wrapped_dek,
                manifest.key_name,
                manifest.key_version,
                manifest.plaintext_sha256,
            ),
        )
        _audit(
            conn,
            "dataset.ingested",
            result.dataset_id,
            {
                "name": result.name,
                "rows": result.profile["rows"],
                "key_name": manifest.key_name,
                "key_version": manifest.key_version,
                "plaintext_sha256": manifest.plaintext_sha256,
                "source_key": result.source_key,
                "source_etag": result.source_etag,
            },
        )


def _reject(
    s3, bucket: str, landing: LandingObject, conn, result: IngestResult, problems: list[str], log: Log, started: float
) -> IngestResult:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    result.status, result.problems = "rejected", problems
    result.quarantine_key = f"{QUARANTINE}{landing.name}/{stamp}-{landing.filename}"
    report = {
        "dataset": landing.name,
        "source_key": landing.key,
        "source_etag": result.source_etag,
        "rejected_at": stamp,
        "problems": problems,
    }
    s3.copy_object(Bucket=bucket, Key=result.quarantine_key, CopySource={"Bucket": bucket, "Key": landing.key})
    s3.put_object(
        Bucket=bucket,
        Key=result.quarantine_key + ".error.json",
        Body=json.dumps(report, indent=2).encode(),
        ContentType="application/json",
    )
    with conn.transaction():
        conn.execute(
            "INSERT INTO datasets (id, name, status, metadata) VALUES (%s, %s, 'rejected', %s)",
            (result.dataset_id, landing.name, Jsonb({**report, "quarantine_key": result.quarantine_key})),
        )
        _audit(conn, "dataset.rejected", result.dataset_id, report)
    s3.delete_object(Bucket=bucket, Key=landing.key)
    log(f"{landing.name}: rejected ({'; '.join(problems)}); moved to {result.quarantine_key}")
    result.seconds = time.monotonic() - started
    return result


@dataclass(frozen=True)
class DatasetRow:
    id: str
    name: str
    status: str
    rows: int | None
    columns: int | None
    created_at: datetime
    key_name: str | None
    key_version: int | None
    plaintext_sha256: str | None


_ROW_COLUMNS = "id::text, name, status, rows, columns, created_at, key_name, key_version, plaintext_sha256"


def list_datasets(conn: psycopg.Connection, limit: int = 100) -> list[DatasetRow]:
    rows = conn.execute(f"SELECT {_ROW_COLUMNS} FROM datasets ORDER BY created_at DESC LIMIT %s", (limit,))
    return [DatasetRow(*r) for r in rows.fetchall()]


def get_dataset(
    *,
    s3: Any,
    bucket: str,
    conn: psycopg.Connection,
    dataset_id: str,
    provider_for: Callable[[str], DataKeyProvider],
    path_key: str,
    out: Path,
) -> DatasetRow:
    """Decrypt a ready dataset to ``out`` (Parquet) and verify it against the row's SHA-256."""
    try:
        uuid.UUID(dataset_id)
    except ValueError:
        raise DatasetError(f"{dataset_id!r} is not a dataset id (a UUID); see `cqox-platform datasets list`.") from None
    row = conn.execute(
        f"SELECT {_ROW_COLUMNS}, pgp_sym_decrypt(encrypted_data_path, %s), wrapped_dek FROM datasets WHERE id = %s",
        (path_key, dataset_id),
    ).fetchone()
    if row is None:
        raise DatasetError(f"no dataset with id {dataset_id}.")
    dataset, object_key, wrapped = DatasetRow(*row[:9]), row[9], row[10]
    if dataset.status != "ready":
        raise DatasetError(f"dataset {dataset_id} is {dataset.status}, not ready; nothing to read.")
    body = s3.get_object(Bucket=bucket, Key=object_key + MANIFEST_SUFFIX)["Body"].read()
    manifest = Manifest.from_json(body, where=f"s3://{bucket}/{object_key}{MANIFEST_SUFFIX}")
    if manifest.wrapped_dek != wrapped or manifest.plaintext_sha256 != dataset.plaintext_sha256:
        raise DatasetError(f"dataset {dataset_id}: the manifest in S3 and the database row disagree.")
    with tempfile.NamedTemporaryFile(dir=out.parent, prefix=f".{out.name}.", delete=False) as tmp:
        tmp_path = Path(tmp.name)
        try:
            stream = s3.get_object(Bucket=bucket, Key=object_key)["Body"]
            decrypt_from(stream, tmp, manifest, provider_for(manifest.key_name))
        except BaseException:
            tmp.close()
            tmp_path.unlink(missing_ok=True)
            raise
    tmp_path.replace(out)
    return dataset
