"""pgBackRest 2.45 (Debian) configured for speed on this machine, storing in the stack's S3 over verified TLS.

The anchor of ``backup_vs_pgbackrest``: zstd, ``process-max`` 2 (the machine's cores), and asynchronous
archiving both ways (``archive-async`` with a spool, deep ``archive-push-queue-max`` and
``archive-get-queue-max`` queues) so its ``archive_command`` and ``restore_command`` are its fastest.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from cqox_platform.backup.archive.archiver_settings import ArchiverSettings
from cqox_platform.resources.vault import VaultResource

PG = "postgres"
STANZA = "cqox"


def as_pg(argv: list[str], **kwargs) -> subprocess.CompletedProcess:
    """Run ``argv`` as the postgres OS user (pgBackRest and PostgreSQL's commands run as it)."""
    return subprocess.run(
        ["runuser", "-u", PG, "--", *argv], capture_output=True, text=True, errors="replace", **kwargs
    )


def stack_vault() -> VaultResource:
    return VaultResource(
        addr=os.environ["VAULT_ADDR"],
        cacert=os.environ["VAULT_CACERT"],
        approle_file=os.environ["CQOX_VAULT_APPROLE_FILE"],
    )


@dataclass(frozen=True)
class PgBackRest:
    """One stanza of a pgBackRest repository under ``s3://<bucket>/<work.name>``."""

    conf: Path

    def argv(self, *args: str) -> list[str]:
        """A pgBackRest command line run as postgres (for callers that start and time it themselves)."""
        return ["runuser", "-u", PG, "--", "pgbackrest", f"--config={self.conf}", f"--stanza={STANZA}", *args]

    def run(self, *args: str) -> None:
        result = subprocess.run(self.argv(*args), capture_output=True, text=True, errors="replace")
        if result.returncode != 0:
            raise SystemExit(f"pgbackrest {' '.join(args)} failed: {result.stdout}{result.stderr}")

    def archive_push(self, pgdata: Path | None = None) -> str:
        """Its ``archive_command`` (``%p``); async because the configuration says so."""
        where = f" --pg1-path={pgdata}" if pgdata else ""
        return f"pgbackrest --config={self.conf} --stanza={STANZA}{where} archive-push %p"

    def archive_get(self, pgdata: Path) -> str:
        """Its ``restore_command``: served from the async archive-get queue (``archive-get-queue-max``)."""
        return f'pgbackrest --config={self.conf} --stanza={STANZA} --pg1-path={pgdata} archive-get %f "%p"'


def configure(work: Path, pgdata: Path, port: int, socket_dir: str) -> PgBackRest:
    """Write ``work/pgbackrest.conf`` (readable by postgres only) with the stack's S3 credentials from Vault."""
    creds = ArchiverSettings.load(Path(os.environ["CQOX_WAL_ARCHIVER_CONFIG"]))
    s3 = stack_vault().read_secret("cqox/backups/s3")
    host, s3_port = os.environ["CQOX_S3_ENDPOINT"].removeprefix("https://").split(":")
    # pgBackRest matches only DNS names of the certificate, so it reaches the server as localhost.
    ca = work / "ca.crt"
    shutil.copyfile(creds.s3_cacert, ca)
    conf = work / "pgbackrest.conf"
    conf.write_text(
        f"""[global]
repo1-type=s3
repo1-path=/{work.name}
repo1-s3-bucket={os.environ["CQOX_S3_BUCKET"]}
repo1-s3-endpoint={"localhost" if host == "127.0.0.1" else host}
repo1-storage-port={s3_port}
repo1-s3-region=us-east-1
repo1-s3-uri-style=path
repo1-s3-key={s3["access_key_id"]}
repo1-s3-key-secret={s3["secret_access_key"]}
repo1-storage-ca-file={ca}
repo1-storage-verify-tls=y
repo1-cipher-type=aes-256-cbc
repo1-cipher-pass={secrets.token_urlsafe(32)}
repo1-retention-full=2
compress-type=zst
process-max=2
start-fast=y
archive-check=n
archive-async=y
archive-push-queue-max=16GiB
archive-get-queue-max=1GiB
spool-path={work}/spool
log-level-console=warn
log-level-file=off
lock-path={work}/lock

[{STANZA}]
pg1-path={pgdata}
pg1-port={port}
pg1-socket-path={socket_dir}
pg1-user={PG}
"""
    )
    entry = pwd.getpwnam(PG)
    for path in (work, ca, conf):
        os.chown(path, entry.pw_uid, entry.pw_gid)
    conf.chmod(0o600)
    return PgBackRest(conf)
