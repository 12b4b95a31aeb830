"""What ``wal-push`` and ``wal-fetch`` need, from one file PostgreSQL's OS user can read: its format.

PostgreSQL runs ``archive_command`` as its own OS user, which must not read the platform's secrets directory.
``vault_config`` therefore issues a separate AppRole (``cqox-wal-archiver``, allowed only to create and unwrap
data keys of ``transit/cqox-backups`` and to read the S3 credentials in ``secret/cqox/backups/s3``) and writes
its credentials to a 0600 file owned by that user. The S3 credentials themselves live in Vault, not on disk.

The clients are built from this file above ``backup/`` (``cqox_platform.archiver_clients``) and handed down.
Nothing here imports Dagster or the settings contract: one archiver process starts per WAL segment and must
start fast.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from cqox_platform.crypto.key_cache import KeyCachePolicy
from cqox_platform.errors import BackupError

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
    #: The pusher's data-key cache window (``crypto.key_cache``): a Vault outage shorter than this costs no
    #: archiving while the pusher runs; 0 gives every segment a fresh key. ``vault_config`` keeps an edited value.
    data_key_max_age_seconds: float = KeyCachePolicy.max_age
    data_key_max_uses: int = KeyCachePolicy.max_uses
    #: S3 keys given in the file itself instead of read from Vault (``s3_secret_path``): only in the short-lived
    #: settings a drill from the DR copy hands its scratch cluster (``for_dr_reader``), holding the DR region's
    #: read-only key, which the archiver's Vault entry must never hold.
    s3_access_key_id: str = ""
    s3_secret_access_key: str = field(default="", repr=False)

    @property
    def key_cache(self) -> KeyCachePolicy:
        return KeyCachePolicy(max_age=self.data_key_max_age_seconds, max_uses=self.data_key_max_uses)

    def for_dr_reader(
        self, *, endpoint: str, cacert: str, bucket: str, access_key_id: str, secret_access_key: str
    ) -> ArchiverSettings:
        """These settings pointed at the DR region with its read-only key: Vault (for the data keys) stays, S3
        changes to the DR endpoint, CA, bucket and key."""
        return replace(
            self,
            s3_endpoint=endpoint,
            s3_cacert=cacert,
            bucket=bucket,
            s3_access_key_id=access_key_id,
            s3_secret_access_key=secret_access_key,
        )

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def load(cls, path: Path) -> ArchiverSettings:
        try:
            data = json.loads(Path(path).read_text())
            settings = cls(**data)
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
        try:
            settings.key_cache  # noqa: B018 - the check of the window's two fields
        except ValueError as exc:
            field = "data_key_max_age_seconds" if "max_age" in str(exc) else "data_key_max_uses"
            raise ArchiverConfigError(f"archiver settings {path}: {field} is not valid: {exc}.") from None
        return settings
