"""A ``barman-cloud`` repository: what ``barman-cloud-backup`` and ``barman-cloud-wal-archive`` write, which is
what CloudNativePG's Barman Cloud plugin writes (``<destination>/<server name>/{base,wals}/``).

Backups are listed by ``barman-cloud-backup-list`` and restored by ``barman-cloud-restore``; WAL is fetched by
``barman-cloud-wal-restore``. Barman has no command that lists archived WAL, so the segment *names* are read
from the object listing under ``wals/`` (a compression suffix dropped); no object is opened.

Barman keeps no PostgreSQL ``backup_manifest``: a restored Barman backup cannot be checked by pg_verifybackup,
only by starting it, replaying to a captured point, comparing rows and running amcheck.
"""

from __future__ import annotations

import json
import shlex
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlparse

from cqox_platform.backup.archive.wal_names import HISTORY_RE, SEGMENT_RE
from cqox_platform.backup.repository.base import RepositoryBackup, RepositoryError, run_tool
from cqox_platform.backup.repository.s3creds import S3Access
from cqox_platform.pgserver import as_pg_user, chown_tree
from cqox_platform.settings import child_env

#: What ``barman-cloud-wal-archive`` appends to a compressed segment's name.
COMPRESSION_SUFFIXES = (".gz", ".bz2", ".snappy", ".xz", ".lz4", ".zst")


@dataclass(frozen=True)
class BarmanCloudRepository:
    name: str
    destination: str  # s3://bucket/path/
    server_name: str
    s3: S3Access
    engine: str = "barman-cloud"
    has_backup_manifest: bool = False

    @property
    def where(self) -> str:
        return f"{self.destination.rstrip('/')}/{self.server_name}"

    def _cloud_args(self) -> list[str]:
        return ["--cloud-provider", "aws-s3", "--endpoint-url", self.s3.endpoint_url]

    def _run(self, tool: str, *args: str) -> str:
        argv = [tool, *self._cloud_args(), *args]
        return run_tool(argv, repository=self.name, env=child_env(self.s3.env(), drop_prefixes=("AWS_",)))

    def list_backups(self) -> list[RepositoryBackup]:
        out = self._run("barman-cloud-backup-list", "--format", "json", self.destination, self.server_name)
        try:
            listed = json.loads(out)["backups_list"]
            backups = [
                RepositoryBackup(
                    backup_id=entry["backup_id"],
                    timeline=int(entry["timeline"]),
                    begin_wal=entry["begin_wal"],
                    end_wal=entry["end_wal"],
                    begin_lsn=entry["begin_xlog"],
                    end_time=_barman_time(entry["end_time"]),
                )
                for entry in listed
                if entry.get("status") == "DONE"
            ]
        except (ValueError, KeyError, TypeError) as exc:
            raise RepositoryError(
                f"repository {self.name}: barman-cloud-backup-list answered {out[:300]!r}: {exc!r}"
            ) from None
        return sorted(backups, key=lambda b: b.end_time)

    def archived_wal(self) -> dict[str, datetime]:
        url = urlparse(self.destination)
        prefix = "/".join(p for p in (url.path.strip("/"), self.server_name, "wals") if p) + "/"
        client = self.s3.client()
        found: dict[str, datetime] = {}
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=url.netloc, Prefix=prefix):
            for obj in page.get("Contents", []):
                name = obj["Key"].rsplit("/", 1)[-1]
                for suffix in COMPRESSION_SUFFIXES:
                    name = name.removesuffix(suffix)
                if SEGMENT_RE.match(name) or HISTORY_RE.match(name):
                    found[name] = obj["LastModified"]
        return found

    def restore(self, backup_id: str, pgdata: Path, workdir: Path) -> None:
        self._run("barman-cloud-restore", self.destination, self.server_name, backup_id, str(pgdata))
        chown_tree(pgdata)

    def verify_restored(self, backup_id: str, pgdata: Path, workdir: Path) -> str | None:
        return None  # no backup_manifest, no checksums of its own to check

    def read_history(self, name: str) -> str:
        with tempfile.TemporaryDirectory(prefix="cqox-history-") as tmp:
            target = Path(tmp) / name
            self._run("barman-cloud-wal-restore", self.destination, self.server_name, name, str(target))
            return target.read_text()

    def restore_command(self, workdir: Path, pgdata: Path) -> str:
        credentials = self.s3.private_copy(workdir)
        args = " ".join(shlex.quote(a) for a in self._cloud_args())
        return (
            f"{self.s3.env_prefix(str(credentials))} barman-cloud-wal-restore {args} "
            f"{shlex.quote(self.destination)} {shlex.quote(self.server_name)} %f %p"
        )

    def archive_command(self, workdir: Path, *, compression: str = "bzip2", encryption: str = "AES256") -> str:
        """``barman-cloud-wal-archive`` as the Barman Cloud plugin runs it, for a cluster archiving here."""
        credentials = self.s3.private_copy(workdir)
        args = " ".join(shlex.quote(a) for a in self._cloud_args())
        options = " ".join(shlex.quote(a) for a in _store_options(compression, encryption))
        return (
            f"{self.s3.env_prefix(str(credentials))} barman-cloud-wal-archive {args} {options} "
            f"{shlex.quote(self.destination)} {shlex.quote(self.server_name)} %p"
        )

    def take_backup(
        self, conninfo: str, workdir: Path, *, compression: str = "bzip2", encryption: str = "AES256"
    ) -> str:
        """A base backup of the cluster at ``conninfo`` by ``barman-cloud-backup`` (what CloudNativePG's
        ScheduledBackup runs), as the postgres OS user; the new backup's id."""
        credentials = self.s3.private_copy(workdir)
        argv = [
            "barman-cloud-backup",
            *self._cloud_args(),
            *_store_options(compression, encryption),
            "--immediate-checkpoint",
            "-d",
            conninfo,
            self.destination,
            self.server_name,
        ]
        before = {b.backup_id for b in self.list_backups()}
        env = child_env(self.s3.env(str(credentials)), drop_prefixes=("AWS_", "PG"))
        run_tool(as_pg_user(argv), repository=self.name, env=env)
        new = [b.backup_id for b in self.list_backups() if b.backup_id not in before]
        if not new:
            raise RepositoryError(
                f"repository {self.name}: barman-cloud-backup exited 0 but {self.where} lists no new backup"
            )
        return new[-1]


def _store_options(compression: str, encryption: str) -> list[str]:
    """The compression and server-side encryption options of Barman's upload tools (empty: none)."""
    return ([f"--{compression}"] if compression else []) + (["--encryption", encryption] if encryption else [])


def _barman_time(text: str) -> datetime:
    """Barman's ``end_time`` (``Fri Dec  4 08:41:46 2026``, or ISO) as an aware datetime.

    Barman writes the backup host's local time without a zone; the platform's hosts and CloudNativePG's
    instances run in UTC.
    """
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        when = datetime.strptime(" ".join(text.split()), "%a %b %d %H:%M:%S %Y")
    return when if when.tzinfo else when.replace(tzinfo=UTC)
