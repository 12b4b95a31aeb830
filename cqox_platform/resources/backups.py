"""``BackupStorageResource``: where backups go and how restores reach them (buckets, archiver settings, key)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Literal

from cqox_platform.archiver_clients import s3_client_from_file
from cqox_platform.resources.settings_backed import SettingsBackedResource, require_set, unset
from cqox_platform.settings import Settings, get_settings


class BackupStorageResource(SettingsBackedResource):
    """The backup buckets (primary and second region), the Transit key, and the WAL archiver's settings file.

    The settings file is what scratch clusters' ``restore_command`` (``wal-fetch``) reads, as the postgres
    OS user; the platform itself reaches the primary's S3 through the ``s3`` resource and Vault through ``vault``.
    The DR region is another endpoint with other keys (``dr_client``): the writer's for the DR copy and its
    retention, the read-only reader's for everything that only reads it (drills, reports).
    """

    bucket: str = ""
    dr_bucket: str = ""
    dr_endpoint: str = ""
    dr_cacert: str = ""
    #: AWS shared-credentials files (0600): the DR copy's writer, and a key that may only read the DR copy.
    dr_credentials_file: str = ""
    dr_reader_credentials_file: str = ""
    archiver_settings: str = ""
    #: The Transit key that wraps backup and WAL data keys: ``settings.backup_transit_key``, as the CLI uses.
    transit_key: str = "cqox-backups"
    #: Parent directory of drill scratch clusters (must be traversable by the postgres OS user). Empty: the
    #: temporary directory (``TMPDIR``), where a run pod mounts its scratch volume (deploy/helm/values.yaml).
    drill_dir: str = ""

    def dr_client(self, role: Literal["writer", "reader"]) -> Any:
        """A boto3 client of the DR region's endpoint with the writer's or the read-only reader's key."""
        writer = role == "writer"
        credentials = self.dr_credentials_file if writer else self.dr_reader_credentials_file
        field = "s3_dr_credentials_file" if writer else "s3_dr_reader_credentials_file"
        require_set([f for f, value in (("s3_dr_endpoint", self.dr_endpoint), (field, credentials)) if not value])
        return s3_client_from_file(self.dr_endpoint, self.dr_cacert or None, Path(credentials))

    def drill_parent(self) -> Path:
        """Where a drill's scratch cluster goes: ``drill_dir``, else ``TMPDIR`` (read now, not at import)."""
        return Path(self.drill_dir or tempfile.gettempdir())

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> BackupStorageResource:
        s = settings or get_settings()
        return cls(
            bucket=s.s3_bucket or "",
            dr_bucket=s.s3_dr_bucket or "",
            dr_endpoint=s.s3_dr_endpoint or "",
            dr_cacert=str(s.s3_dr_cacert or ""),
            dr_credentials_file=str(s.s3_dr_credentials_file or ""),
            dr_reader_credentials_file=str(s.s3_dr_reader_credentials_file or ""),
            archiver_settings=str(s.wal_archiver_config or ""),
            transit_key=s.backup_transit_key,
            unset_settings=unset(
                s,
                "s3_bucket",
                "s3_dr_bucket",
                "s3_dr_endpoint",
                "s3_dr_credentials_file",
                "s3_dr_reader_credentials_file",
                "wal_archiver_config",
            ),
        )
