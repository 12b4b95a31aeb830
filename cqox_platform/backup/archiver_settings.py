"""What ``wal-push`` and ``wal-fetch`` need, from one file PostgreSQL's OS user can read, and light clients.

PostgreSQL runs ``archive_command`` as its own OS user, which must not read the platform's secrets directory.
``vault_config`` therefore issues a separate AppRole (``cqox-wal-archiver``, allowed only to create and unwrap
data keys of ``transit/cqox-backups`` and to read the S3 credentials in ``secret/cqox/backups/s3``) and writes
its credentials to a 0600 file owned by that user. The S3 credentials themselves live in Vault, not on disk.

Nothing here imports Dagster: one archiver process starts per WAL segment and must start fast.
"""

from __future__ import annotations

import base64
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import hvac

from cqox_platform.crypto.keys import DataKey
from cqox_platform.errors import CqoxError
from cqox_platform.secrets.vault_errors import vault_call

BACKUPS_KEY = "cqox-backups"
ARCHIVER_APPROLE = "cqox-wal-archiver"
S3_SECRET_PATH = "cqox/backups/s3"


class ArchiverConfigError(CqoxError):
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


class LightVault:
    """AppRole login, one KV read and Transit data keys, with the platform's error messages."""

    def __init__(self, addr: str, cacert: str | None, role_id: str, secret_id: str, timeout: float = 10) -> None:
        self.addr, self.cacert = addr, cacert
        self._creds = (role_id, secret_id)
        self._client: hvac.Client | None = None
        self.timeout = timeout

    def _call(self, what: str, fn):
        return vault_call(self.addr, self.cacert, what, fn)

    def client(self) -> hvac.Client:
        if self._client is None:
            client = hvac.Client(url=self.addr, verify=self.cacert or True, timeout=self.timeout)
            role_id, secret_id = self._creds
            self._call(
                "logging in with AppRole", lambda: client.auth.approle.login(role_id=role_id, secret_id=secret_id)
            )
            self._client = client
        return self._client

    def read_secret(self, path: str) -> dict[str, Any]:
        c = self.client()
        response = self._call(
            f"reading secret secret/{path}",
            lambda: c.secrets.kv.v2.read_secret_version(path=path, mount_point="secret", raise_on_deleted_version=True),
        )
        return response["data"]["data"]

    def key_provider(self, key: str) -> LightKeyProvider:
        return LightKeyProvider(self, key)


class LightKeyProvider:
    """``DataKeyProvider`` over ``LightVault``."""

    def __init__(self, vault: LightVault, key_name: str) -> None:
        self.vault, self.key_name = vault, key_name

    def generate_data_key(self) -> DataKey:
        c = self.vault.client()
        data = self.vault._call(
            f"creating a data key under transit/{self.key_name}",
            lambda: c.secrets.transit.generate_data_key(name=self.key_name, key_type="plaintext"),
        )["data"]
        return DataKey(
            plaintext=base64.b64decode(data["plaintext"]), wrapped=data["ciphertext"], key_name=self.key_name
        )

    def unwrap(self, wrapped: str) -> bytes:
        c = self.vault.client()
        data = self.vault._call(
            f"decrypting with transit/{self.key_name}",
            lambda: c.secrets.transit.decrypt_data(name=self.key_name, ciphertext=wrapped),
        )["data"]
        return base64.b64decode(data["plaintext"])


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
    provider: LightKeyProvider
    bucket: str


def archiver_clients(settings: ArchiverSettings) -> ArchiverClients:
    vault = LightVault(settings.vault_addr, settings.vault_cacert, settings.role_id, settings.secret_id)
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
