"""``BackupStorageResource``: where backups go and how restores reach them (buckets, archiver settings, key)."""

from __future__ import annotations

import tempfile
from pathlib import Path

from cqox_platform.resources.settings_backed import SettingsBackedResource, unset
from cqox_platform.settings import Settings, get_settings


class BackupStorageResource(SettingsBackedResource):
    """The backup buckets (primary and second region), the Transit key, and the WAL archiver's settings file.

    The settings file is what scratch clusters' ``restore_command`` (``wal-fetch``) reads, as the postgres
    OS user; the platform itself reaches S3 through the ``s3`` resource and Vault through ``vault``.
    """

    bucket: str = ""
    dr_bucket: str = ""
    archiver_settings: str = ""
    #: The Transit key that wraps backup and WAL data keys: ``settings.backup_transit_key``, as the CLI uses.
    transit_key: str = "cqox-backups"
    #: Parent directory of drill scratch clusters (must be traversable by the postgres OS user). Empty: the
    #: temporary directory (``TMPDIR``), where a run pod mounts its scratch volume (deploy/helm/values.yaml).
    drill_dir: str = ""

    def drill_parent(self) -> Path:
        """Where a drill's scratch cluster goes: ``drill_dir``, else ``TMPDIR`` (read now, not at import)."""
        return Path(self.drill_dir or tempfile.gettempdir())

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> BackupStorageResource:
        s = settings or get_settings()
        return cls(
            bucket=s.s3_bucket or "",
            dr_bucket=s.s3_dr_bucket or "",
            archiver_settings=str(s.wal_archiver_config or ""),
            transit_key=s.backup_transit_key,
            unset_settings=unset(s, "s3_bucket", "s3_dr_bucket", "wal_archiver_config"),
        )
