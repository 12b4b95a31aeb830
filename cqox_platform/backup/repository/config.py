"""The repositories of other engines the platform verifies, from the YAML file ``CQOX_BACKUP_REPOSITORIES`` names.

Each entry is one backup copy with its engine, where it lives, and the cluster that archives there (``source``,
a libpq conninfo without a password: a passfile or the socket's peer login), which the RPO and the restore points
are measured on. The platform's own archive is not listed: it is always the repository ``cqox``.

.. code-block:: yaml

    repositories:
      - name: cnpg-dr
        engine: barman-cloud
        destination: s3://cqox-backups-dr/postgres/
        server_name: cqox-postgres-cluster
        s3: {endpoint_url: "https://s3.example:9000", ca_bundle: /etc/ssl/s3-ca.crt,
             credentials_file: /etc/cqox/aws-credentials, profile: backups}
        source: "host=cqox-postgres-cluster-rw port=5432 dbname=app user=cqox_verifier"
      - name: legacy
        engine: pgbackrest
        config: /etc/pgbackrest/pgbackrest.conf
        stanza: main
        source: "host=/run/postgresql dbname=app user=postgres"
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cqox_platform.backup.repository.barman_cloud import BarmanCloudRepository
from cqox_platform.backup.repository.base import Repository, RepositoryError
from cqox_platform.backup.repository.pgbackrest import PgBackRestRepository
from cqox_platform.backup.repository.s3creds import S3Access


class S3Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    endpoint_url: str
    ca_bundle: str
    credentials_file: str
    profile: str = "default"
    region: str = "us-east-1"


class RepositorySpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    #: Lower-case letters, digits and dashes: it becomes part of asset names and a gauge label.
    name: str = Field(pattern=r"^[a-z][a-z0-9-]{0,40}$")
    engine: Literal["barman-cloud", "pgbackrest"]
    #: libpq conninfo of the cluster archiving to this repository (no password in it).
    source: str
    rpo_target_seconds: float = 900.0
    # barman-cloud
    destination: str = ""
    server_name: str = ""
    s3: S3Settings | None = None
    #: Dagster takes the base backups with barman-cloud-backup (the local stack; CloudNativePG takes its own).
    take_base_backups: bool = False
    # pgbackrest
    config: str = ""
    stanza: str = ""

    @property
    def asset_prefix(self) -> str:
        return "repository_" + self.name.replace("-", "_")

    def build(self) -> Repository:
        if self.engine == "barman-cloud":
            if not (self.destination and self.server_name and self.s3):
                raise RepositoryError(
                    f"repository {self.name}: a barman-cloud repository needs destination, server_name and s3"
                )
            s3 = S3Access(
                self.s3.endpoint_url, self.s3.ca_bundle, self.s3.credentials_file, self.s3.profile, self.s3.region
            )
            return BarmanCloudRepository(self.name, self.destination, self.server_name, s3)
        if not (self.config and self.stanza):
            raise RepositoryError(f"repository {self.name}: a pgbackrest repository needs config and stanza")
        return PgBackRestRepository(self.name, Path(self.config), self.stanza)


def load_repositories(path: Path | None) -> list[RepositorySpec]:
    """The repositories listed in ``path`` (none when unset); a bad file is an error naming the entry."""
    if path is None:
        return []
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
        specs = [RepositorySpec.model_validate(entry) for entry in data.get("repositories", [])]
    except (OSError, yaml.YAMLError, ValidationError, AttributeError) as exc:
        raise RepositoryError(
            f"backup repositories file {path} (CQOX_BACKUP_REPOSITORIES) is not usable: {exc}. Fix it or unset the "
            "variable."
        ) from None
    names = [s.name for s in specs]
    if len(set(names)) != len(names) or "cqox" in names:
        raise RepositoryError(f"backup repositories file {path}: names must be unique and not 'cqox': {names}")
    return specs
