"""The WAL archiver's clients, built from its settings file above ``backup/`` and handed down to it.

``wal-push``, ``wal-fetch`` and their daemons run as PostgreSQL's OS user with nothing but the file
``vault_config`` writes (``ArchiverSettings``): an AppRole allowed to use the backup Transit key and to read the
S3 credentials in Vault. This module logs in with it (lazily, on the first request), reads those credentials
and builds the S3 client; ``backup/`` receives the result as ``ArchiveClients`` and never reaches into
``secrets/`` itself. Nothing heavy is imported here: the CLI imports it once per archiver process.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cqox_platform.backup.archive.archiver_settings import ArchiverConfigError, ArchiverSettings
from cqox_platform.backup.archive.store import ArchiveClients
from cqox_platform.secrets.vault_client import VaultClient


def s3_client(endpoint: str, cacert: str | None, access_key: str, secret_key: str, region: str = "us-east-1") -> Any:
    """A boto3 S3 client with verified TLS; checksums only when required (the local S3 server needs that)."""
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name=region,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        verify=cacert or True,
        config=Config(
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            retries={"max_attempts": 3, "mode": "standard"},
            connect_timeout=5,
            read_timeout=60,
            s3={"addressing_style": "path"},
        ),
    )


def archiver_clients(settings: ArchiverSettings) -> ArchiveClients:
    """The S3 client, the backup key provider and the bucket of one archiver process."""
    vault = VaultClient(
        settings.vault_addr, settings.vault_cacert, role_id=settings.role_id, secret_id=settings.secret_id
    )
    creds = vault.read_secret(settings.s3_secret_path)
    try:
        s3 = s3_client(
            settings.s3_endpoint,
            settings.s3_cacert,
            creds["access_key_id"],
            creds["secret_access_key"],
            settings.region,
        )
    except KeyError:
        raise ArchiverConfigError(
            f"secret/{settings.s3_secret_path} lacks access_key_id/secret_access_key; re-run `vault_config`."
        ) from None
    return ArchiveClients(s3, vault.key_provider(settings.transit_key), settings.bucket, settings.key_cache)


def load_archiver_clients(settings_path: Path) -> ArchiveClients:
    """``archiver_clients`` of the file as it is now: what the daemons call to log in (again)."""
    return archiver_clients(ArchiverSettings.load(settings_path))
