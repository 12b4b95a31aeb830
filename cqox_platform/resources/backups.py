"""``BackupStorageResource``: where backups go and how restores reach them (buckets, archiver settings, key)."""

from __future__ import annotations

import dagster as dg


class BackupStorageResource(dg.ConfigurableResource):
    """The backup buckets (primary and second region), the Transit key, and the WAL archiver's settings file.

    The settings file is what scratch clusters' ``restore_command`` (``wal-fetch``) reads, as the postgres
    OS user; the platform itself reaches S3 through the ``s3`` resource and Vault through ``vault``.
    """

    bucket: str
    dr_bucket: str
    archiver_settings: str
    transit_key: str = "cqox-backups"
    #: Parent directory of drill scratch clusters (must be traversable by the postgres OS user).
    drill_dir: str = "/tmp"

    @classmethod
    def from_env(cls) -> BackupStorageResource:
        return cls(
            bucket=dg.EnvVar("CQOX_S3_BUCKET"),
            dr_bucket=dg.EnvVar("CQOX_S3_DR_BUCKET"),
            archiver_settings=dg.EnvVar("CQOX_WAL_ARCHIVER_CONFIG"),
        )
