"""Where backups and WAL live in S3, and the small S3 operations every part of the backup code shares.

Layout, per PostgreSQL cluster (its system identifier, so restored scratch clusters and other clusters never
mix their WAL)::

    postgres/<system-id>/wal/<wal file name>                  zstd + envelope-encrypted WAL file
    postgres/<system-id>/wal/<wal file name>.manifest.json    its manifest, written last: only this makes it real
    postgres/<system-id>/base/<backup id>/base.tar.zst.enc    the base backup (tar of the data directory)
    postgres/<system-id>/base/<backup id>/base.tar.zst.enc.manifest.json
    postgres/<system-id>/base/<backup id>/backup.json         the backup record, written last

Readers trust only what a manifest (WAL) or a record (base backup) lists; an object without one is a
half-written upload that the next push overwrites or retention removes.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError

from cqox_platform.backup.archive.wal_names import check_wal_name
from cqox_platform.crypto.envelope import MANIFEST_SUFFIX
from cqox_platform.crypto.key_cache import KeyCachePolicy
from cqox_platform.crypto.keys import DataKeyProvider
from cqox_platform.errors import BackupError

ROOT = "postgres"
BACKUP_ID_RE = re.compile(r"^\d{8}T\d{6}Z(-[0-9a-f]{4})?$")


class ArchiveError(BackupError):
    """The backup archive in S3 could not be read or written; the message names the object."""


class ArchiveUnreachableError(ArchiveError):
    """The S3 server did not answer."""


def _reraise(exc: BaseException):
    raise exc


def check_backup_id(backup_id: str) -> str:
    if not BACKUP_ID_RE.match(backup_id):
        raise ArchiveError(f"{backup_id!r} is not a backup id (expected YYYYMMDDTHHMMSSZ, e.g. 20261126T030000Z).")
    return backup_id


@dataclass(frozen=True)
class ArchiveClients:
    """What reading or writing an archive needs, built above ``backup/`` (the CLI, the resources) and handed
    down: a boto3 S3 client, the data key provider, and the bucket to use unless told another."""

    s3: Any
    provider: DataKeyProvider
    bucket: str
    #: How long one data key may serve the WAL pusher (``None``: a fresh key per object, as everything else).
    key_cache: KeyCachePolicy | None = None


@dataclass(frozen=True)
class Archive:
    """One cluster's area of one bucket; ``s3`` is a boto3 S3 client."""

    s3: Any
    bucket: str
    system_id: str

    @property
    def root(self) -> str:
        return f"{ROOT}/{self.system_id}"

    # --- keys ----------------------------------------------------------------------------------------------

    def wal_key(self, name: str) -> str:
        return f"{self.root}/wal/{check_wal_name(name)}"

    def wal_manifest_key(self, name: str) -> str:
        return self.wal_key(name) + MANIFEST_SUFFIX

    def backup_prefix(self, backup_id: str) -> str:
        return f"{self.root}/base/{check_backup_id(backup_id)}/"

    def backup_data_key(self, backup_id: str) -> str:
        return self.backup_prefix(backup_id) + "base.tar.zst.enc"

    def backup_manifest_key(self, backup_id: str) -> str:
        return self.backup_data_key(backup_id) + MANIFEST_SUFFIX

    def backup_record_key(self, backup_id: str) -> str:
        return self.backup_prefix(backup_id) + "backup.json"

    def with_bucket(self, bucket: str) -> Archive:
        return Archive(self.s3, bucket, self.system_id)

    # --- operations ----------------------------------------------------------------------------------------

    def where(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    def call(self, what: str, key: str, fn, *args, **kwargs):
        """One S3 request with errors that name the object; 404 is returned as ``None``."""
        try:
            return fn(*args, **kwargs)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in {"404", "NoSuchKey", "NotFound"}:
                return None
            raise ArchiveError(f"S3 refused {what} {self.where(key)}: {code or exc}.") from None
        except EndpointConnectionError:
            raise ArchiveUnreachableError(
                f"the S3 server is unreachable while {what} {self.where(key)}; is it running? "
                f"(`cqox-platform stack status`)"
            ) from None
        except BotoCoreError as exc:
            raise ArchiveUnreachableError(f"S3 failed while {what} {self.where(key)}: {exc}.") from None

    def head(self, key: str) -> dict[str, Any] | None:
        return self.call("reading the metadata of", key, self.s3.head_object, Bucket=self.bucket, Key=key)

    def get_bytes(self, key: str) -> bytes | None:
        response = self.call("downloading", key, self.s3.get_object, Bucket=self.bucket, Key=key)
        if response is None:
            return None
        return self.call("downloading", key, response["Body"].read)

    def get_proven(self, key: str) -> tuple[bytes, dict[str, str]] | None:
        """An object's bytes and user metadata; ``None`` only when S3 proves the object is absent.

        A HEAD answers a missing bucket with the same bare 404 as a missing key, so absence is decided on a GET,
        whose error body names the cause: only ``NoSuchKey`` is "absent", a ``NoSuchBucket`` is an error.
        """
        try:
            response = self.s3.get_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code == "NoSuchKey":
                return None
            if code == "NoSuchBucket":
                raise ArchiveError(f"bucket {self.bucket} does not exist (reading {self.where(key)}).") from None
            raise ArchiveError(f"S3 refused downloading {self.where(key)}: {code or exc}.") from None
        except BotoCoreError as exc:
            return self.call("downloading", key, _reraise, exc)
        body = self.call("downloading", key, response["Body"].read)
        return body, dict(response.get("Metadata") or {})

    def get_stream(self, key: str):
        """The streaming body of an object (``None`` if absent); ranged GETs are avoided on purpose."""
        response = self.call("downloading", key, self.s3.get_object, Bucket=self.bucket, Key=key)
        return None if response is None else response["Body"]

    def put_bytes(self, key: str, body: bytes, metadata: dict[str, str] | None = None) -> None:
        self.call("uploading", key, self.s3.put_object, Bucket=self.bucket, Key=key, Body=body, Metadata=metadata or {})

    def delete(self, key: str) -> None:
        self.call("deleting", key, self.s3.delete_object, Bucket=self.bucket, Key=key)

    def list(self, prefix: str, *, start_after: str = "") -> Iterator[dict[str, Any]]:
        """Every object under ``prefix`` (Key, Size, LastModified, ETag), paging through the listing; with
        ``start_after``, only the keys that sort after it (S3 lists in key order)."""
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix}
            if start_after:
                kwargs["StartAfter"] = start_after
            if token:
                kwargs["ContinuationToken"] = token
            page = self.call("listing", prefix, self.s3.list_objects_v2, **kwargs) or {}
            yield from page.get("Contents", [])
            if not page.get("IsTruncated"):
                return
            token = page.get("NextContinuationToken")

    def archived_wal(self) -> dict[str, int]:
        """WAL file name -> stored size, for files whose manifest exists (the only ones a reader trusts)."""
        prefix = f"{self.root}/wal/"
        sizes: dict[str, int] = {}
        manifests: set[str] = set()
        for obj in self.list(prefix):
            name = obj["Key"][len(prefix) :]
            if name.endswith(MANIFEST_SUFFIX):
                manifests.add(name[: -len(MANIFEST_SUFFIX)])
            else:
                sizes[name] = int(obj["Size"])
        return {name: size for name, size in sizes.items() if name in manifests}

    def purge(self, prefix: str) -> int:
        """Delete every object under ``prefix`` (benchmarks and tests clean up after themselves)."""
        keys = [o["Key"] for o in self.list(prefix)]
        for key in keys:
            self.delete(key)
        return len(keys)
