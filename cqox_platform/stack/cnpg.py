"""A PostgreSQL cluster archived the way CloudNativePG's Barman Cloud plugin archives production's, on demand.

Its ``archive_command`` is ``barman-cloud-wal-archive`` and its base backups are ``barman-cloud-backup``, both
to the destination and server name of the shipped manifest (``deploy/k8s/postgres-cluster.yaml``: the
``ObjectStore``'s ``destinationPath`` and the ``Cluster``'s name, which the plugin uses as the server name),
with the manifest's compression and server-side encryption. The platform then verifies that copy as a
``barman-cloud`` repository, exactly as it would verify production's.

Started on demand (the tests' fixture), not by ``stack up``: every stack start would pay an ``initdb``, a
second server and a first barman-cloud-backup for what only the repository drills need. It listens on a unix
socket only.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import yaml

from cqox_platform.backup.repository.barman_cloud import BarmanCloudRepository
from cqox_platform.backup.repository.s3creds import S3Access
from cqox_platform.deploy.manifests import MANIFEST_DIR
from cqox_platform.errors import StackError
from cqox_platform.fsutil import make_dir, write_file
from cqox_platform.pgserver import PG_OS_USER, ScratchCluster, as_pg_user, free_port, pg_bindir

CLUSTER_MANIFEST = "postgres-cluster.yaml"


@dataclass(frozen=True)
class BarmanTarget:
    """Where and how the shipped manifest sends the cluster's backups."""

    destination: str
    server_name: str
    wal_compression: str
    data_compression: str
    wal_encryption: str
    data_encryption: str


def manifest_target(manifest: Path | None = None) -> BarmanTarget:
    """The ObjectStore's destination, compression and encryption, and the Cluster's name, from the manifest."""
    docs = [d for d in yaml.safe_load_all((manifest or MANIFEST_DIR / CLUSTER_MANIFEST).read_text()) if d]
    store = next(d for d in docs if d["kind"] == "ObjectStore")["spec"]["configuration"]
    cluster = next(d for d in docs if d["kind"] == "Cluster")["metadata"]["name"]
    wal: dict[str, Any] = store.get("wal", {})
    data: dict[str, Any] = store.get("data", {})
    return BarmanTarget(
        destination=store["destinationPath"],
        server_name=cluster,
        wal_compression=wal.get("compression", ""),
        data_compression=data.get("compression", ""),
        wal_encryption=wal.get("encryption", ""),
        data_encryption=data.get("encryption", ""),
    )


class CnpgLikeCluster:
    """initdb, start with Barman Cloud archiving, take a base backup, stop; everything under ``root``."""

    def __init__(self, root: Path, s3: S3Access, *, name: str = "cnpg-barman", target: BarmanTarget | None = None):
        self.root = root
        self.target = target or manifest_target()
        self.repository = BarmanCloudRepository(name, self.target.destination, self.target.server_name, s3)
        self.pgdata = root / "pgdata"
        self.cluster = ScratchCluster(self.pgdata, root / "sock", free_port(), root / "server.log", pg_bindir())

    @property
    def socket_dir(self) -> Path:
        return self.cluster.socket_dir

    @property
    def port(self) -> int:
        return self.cluster.port

    def archive_command(self) -> str:
        return self.repository.archive_command(
            self.root,
            compression=self.target.wal_compression or "gzip",
            encryption=self.target.wal_encryption or "",
        )

    def init(self) -> None:
        make_dir(self.root, mode=0o755)
        make_dir(self.pgdata, mode=0o700, owner=PG_OS_USER)
        proc = subprocess.run(
            as_pg_user([str(pg_bindir() / "initdb"), "-D", str(self.pgdata), "-A", "trust", "--no-instructions"]),
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            raise StackError(f"initdb of {self.pgdata} failed: {proc.stderr.strip()[-500:]}")
        self.set_archive_command(self.archive_command(), reload=False)

    def set_archive_command(self, command: str, *, reload: bool = True) -> None:
        """Write the server's settings with ``command`` as archive_command (reloaded when running)."""
        settings = {
            "port": str(self.port),
            "listen_addresses": "",
            "unix_socket_directories": str(self.socket_dir),
            "wal_level": "replica",
            "archive_mode": "on",
            "archive_command": command,
            "archive_timeout": "60s",
            "lc_messages": "C",
        }
        lines = [f"{k} = '{v.replace(chr(39), chr(39) * 2)}'" for k, v in settings.items()]
        write_file(self.pgdata / "postgresql.auto.conf", "\n".join(lines) + "\n", mode=0o600, owner=PG_OS_USER)
        if reload and self.cluster.postmaster_alive():
            with self.cluster.connect() as conn:
                conn.execute("SELECT pg_reload_conf()")

    def start(self, timeout: float = 60.0) -> None:
        """Start the server and wait until it accepts connections (pg_ctl is told not to wait)."""
        self.cluster.start()
        deadline = time.monotonic() + timeout
        while True:
            try:
                with self.cluster.connect():
                    return
            except psycopg.OperationalError as exc:
                if time.monotonic() > deadline:
                    raise StackError(
                        f"the CloudNativePG-like cluster in {self.pgdata} did not accept connections within "
                        f"{timeout:.0f} s ({exc}). Its log ends with:\n{self.cluster.log_tail()}"
                    ) from None
                time.sleep(0.2)

    def connect(self, dbname: str = "postgres"):
        return self.cluster.connect(dbname)

    def base_backup(self) -> str:
        """Take a base backup with ``barman-cloud-backup`` (as CloudNativePG's ScheduledBackup does); its id."""
        return self.repository.take_backup(
            self.conninfo,
            self.root,
            compression=self.target.data_compression,
            encryption=self.target.data_encryption,
        )

    @property
    def conninfo(self) -> str:
        """How the platform reaches it: the private socket, as postgres (peer login)."""
        return f"host={self.socket_dir} port={self.port} user=postgres dbname=postgres"

    def stop(self) -> None:
        self.cluster.stop()

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)
