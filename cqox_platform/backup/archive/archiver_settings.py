"""What ``wal-push`` and ``wal-fetch`` need, from one file PostgreSQL's OS user can read, and their clients.

PostgreSQL runs ``archive_command`` as its own OS user, which must not read the platform's secrets directory.
``vault_config`` therefore issues a separate AppRole (``cqox-wal-archiver``, allowed only to create and unwrap
data keys of ``transit/cqox-backups`` and to read the S3 credentials in ``secret/cqox/backups/s3``) and writes
its credentials to a 0600 file owned by that user. The S3 credentials themselves live in Vault, not on disk.

Nothing here imports Dagster or the settings contract: one archiver process starts per WAL segment and must
start fast. Vault is reached through the platform's one ``VaultClient``, which is light for that reason.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cqox_platform.errors import BackupError
from cqox_platform.secrets.vault_client import TransitKeyProvider, VaultClient

BACKUPS_KEY = "cqox-backups"
ARCHIVER_APPROLE = "cqox-wal-archiver"
S3_SECRET_PATH = "cqox/backups/s3"


class ArchiverConfigError(BackupError):
    """The archiver's settings file is missing or unreadable."""


@dataclass(frozen=True)
class ArchiverSettings:
    vault_addr: str
    vault_cacert: str
    role_id: str
    secret_id: str = field(repr=False)
    s3_endpoint: str
    s3_cacert: str
    bucket: str
    region: str = "us-east-1"
    transit_key: str = BACKUPS_KEY
    s3_secret_path: str = S3_SECRET_PATH

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def load(cls, path: Path) -> ArchiverSettings:
        try:
            data = json.loads(Path(path).read_text())
            return cls(**data)
        except FileNotFoundError:
            raise ArchiverConfigError(
                f"archiver settings {path} do not exist yet: materialize the `vault_config` asset (it issues the "
                f"archiver's AppRole and writes this file). PostgreSQL keeps the WAL until then."
            ) from None
        except PermissionError:
            raise ArchiverConfigError(
                f"cannot read archiver settings {path} as OS user uid {os.getuid()}: it must belong to the "
                f"user PostgreSQL runs as."
            ) from None
        except (ValueError, TypeError) as exc:
            raise ArchiverConfigError(f"archiver settings {path} are not valid: {exc}.") from None


def s3_client(endpoint: str, cacert: str | None, access_key: str, secret_key: str, region: str = "us-east-1"):
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


@dataclass
class ArchiverClients:
    """The S3 client and key provider one archiver process uses."""

    s3: Any
    provider: TransitKeyProvider
    bucket: str


def archiver_clients(settings: ArchiverSettings) -> ArchiverClients:
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
    return ArchiverClients(s3, vault.key_provider(settings.transit_key), settings.bucket)
