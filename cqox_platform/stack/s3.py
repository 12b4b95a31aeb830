"""The S3 servers of the local stack (PyPI ``nanio``) over verified TLS: the primary's and the DR region's.

The primary server holds the backup bucket and knows one access key, the platform's (the WAL archiver's Vault
entry holds the same). The DR server (``S3DrService``) stands in for another region and another account: its own
port, data directory, certificate authority and keys, the DR bucket, and two keys the primary server does not
know: the DR copy's writer and a read-only reader for drills that restore from the DR copy (``read_only`` in its
options file, enforced by ``s3_server.ReadOnlyKeys``: nanio has no policies of its own).

nanio's ``serve`` command has no TLS flags, so the stack runs its ASGI app under uvicorn with the stack's
certificate and TLS 1.3 as the floor (``s3_server.py``).
Credentials live in a 0600 options file and reach clients through an AWS shared-credentials
file, never the environment or a command line. Two quirks of nanio shape the client settings:
boto3's default streaming checksums are stored verbatim by nanio over HTTPS, so clients set
``request_checksum_calculation=when_required``; and conditional writes (If-None-Match) are ignored, so code
that needs create-if-absent must check before writing.
"""

from __future__ import annotations

import secrets
import sys
from pathlib import Path

import boto3
import requests
from botocore.config import Config

from cqox_platform.fsutil import write_private
from cqox_platform.stack.certs import ensure_ca, ensure_leaf, tls_files
from cqox_platform.stack.config import BACKUP_BUCKET, DR_BUCKET
from cqox_platform.stack.process import spawn, wait_until
from cqox_platform.stack.service import Service

PROFILE = "cqox-local"
DR_WRITER_PROFILE = "cqox-dr-writer"
DR_READER_PROFILE = "cqox-dr-reader"


def _new_key_pair() -> tuple[str, str]:
    return "cqox-" + secrets.token_hex(8), secrets.token_urlsafe(30)


def _profile_text(profile: str, access_key: str, secret_key: str) -> str:
    return f"[{profile}]\naws_access_key_id = {access_key}\naws_secret_access_key = {secret_key}\n"


def _read_profile(path: Path) -> tuple[str, str]:
    access_key = secret_key = ""
    for line in path.read_text().splitlines():
        if line.startswith("aws_access_key_id"):
            access_key = line.split("=", 1)[1].strip()
        elif line.startswith("aws_secret_access_key"):
            secret_key = line.split("=", 1)[1].strip()
    return access_key, secret_key


class S3Service(Service):
    name = "s3"
    binaries = ("nanio",)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def options_file(self):
        return self.stack.secrets_dir / "nanio.toml"

    @property
    def credentials_file(self):
        return self.stack.secrets_dir / "aws-credentials"

    @property
    def ca_cert(self) -> str:
        return str(tls_files(self.stack.tls_dir).ca_cert)

    @property
    def buckets(self) -> tuple[str, ...]:
        return (BACKUP_BUCKET,)

    def server_tls(self) -> tuple[Path, Path]:
        """``(certificate, key)`` the server presents."""
        tls = tls_files(self.stack.tls_dir)
        return tls.server_cert, tls.server_key

    def healthy(self) -> bool:
        # nanio has no health endpoint and wants auth everywhere; a signed request proves it works.
        self.client().list_buckets()
        return True

    def _listening(self) -> bool:
        requests.get(self.url, verify=self.ca_cert, timeout=2)
        return True

    def client(self):
        access_key, secret_key = self._credentials()
        session = boto3.session.Session(
            aws_access_key_id=access_key, aws_secret_access_key=secret_key, region_name="us-east-1"
        )
        return session.client("s3", endpoint_url=self.url, verify=self.ca_cert, config=client_config())

    def credentials(self) -> tuple[str, str]:
        """The stack's S3 access key pair (the stack gives the WAL archiver's Vault entry the same)."""
        return self._credentials()

    def _credentials(self) -> tuple[str, str]:
        if not self.credentials_file.exists():
            access_key, secret_key = _new_key_pair()
            write_private(self.options_file, f'[[users]]\naccess_key = "{access_key}"\nsecret_key = "{secret_key}"\n')
            write_private(self.credentials_file, _profile_text(PROFILE, access_key, secret_key))
        return _read_profile(self.credentials_file)

    def start(self) -> None:
        self._credentials()
        data_dir = self.home / "data"
        data_dir.mkdir(parents=True, exist_ok=True)
        cert, key = self.server_tls()
        env = {
            "PATH": "/usr/bin:/bin",
            "NANIO_DATA_DIR": str(data_dir),
            "NANIO_OPTIONS_FILE": str(self.options_file),
            "NANIO_REGION": "us-east-1",
        }
        pid = spawn(
            [
                sys.executable,
                "-m",
                "cqox_platform.stack.s3_server",
                "127.0.0.1",
                str(self.port),
                str(cert),
                str(key),
            ],
            log_path=self.log_path,
            env=env,
        )
        self.write_pid(pid)
        wait_until(
            self._listening,
            timeout=self.start_timeout,
            what=f"S3 server (nanio, {self.name})",
            log_path=self.log_path,
            alive=self.running,
        )

    def after_start(self) -> None:
        client = self.client()
        existing = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
        for bucket in self.buckets:
            if bucket not in existing:
                client.create_bucket(Bucket=bucket)

    def env(self) -> dict[str, str]:
        return {
            "CQOX_S3_ENDPOINT": self.url,
            "CQOX_S3_BUCKET": BACKUP_BUCKET,
            "AWS_ENDPOINT_URL_S3": self.url,
            "AWS_CA_BUNDLE": self.ca_cert,
            "AWS_SHARED_CREDENTIALS_FILE": str(self.credentials_file),
            "AWS_PROFILE": PROFILE,
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_REQUEST_CHECKSUM_CALCULATION": "when_required",
            "AWS_RESPONSE_CHECKSUM_VALIDATION": "when_required",
        }


class S3DrService(S3Service):
    """The DR region's S3 server: another port, data directory, CA and keys; the primary side holds none of them.

    Its keys: the DR copy's writer (``writer_credentials_file``) and a read-only reader
    (``reader_credentials_file``), each in its own 0600 AWS shared-credentials file, exported only as paths
    (``CQOX_S3_DR_CREDENTIALS_FILE``, ``CQOX_S3_DR_READER_CREDENTIALS_FILE``), never as ``AWS_*`` variables, so no
    client picks them up by default and the WAL archiver (which reads only its own settings file) never sees them.
    """

    name = "s3-dr"

    @property
    def port(self) -> int | None:
        return self.stack.ports.get("s3_dr")

    @property
    def options_file(self):
        return self.stack.secrets_dir / "nanio-dr.toml"

    @property
    def credentials_file(self):
        return self.writer_credentials_file

    @property
    def writer_credentials_file(self) -> Path:
        return self.stack.secrets_dir / "s3-dr-writer-credentials"

    @property
    def reader_credentials_file(self) -> Path:
        return self.stack.secrets_dir / "s3-dr-reader-credentials"

    @property
    def tls_dir(self) -> Path:
        return self.home / "tls"

    @property
    def ca_cert(self) -> str:
        return str(self.tls_dir / "ca.crt")

    @property
    def buckets(self) -> tuple[str, ...]:
        return (DR_BUCKET,)

    def server_tls(self) -> tuple[Path, Path]:
        """A certificate from the DR region's own CA: the primary's CA bundle does not trust it."""
        self.tls_dir.mkdir(parents=True, exist_ok=True)
        ca = ensure_ca(self.tls_dir / "ca.crt", self.tls_dir / "ca.key", "cqox-platform local DR region CA")
        cert, key = self.tls_dir / "server.crt", self.tls_dir / "server.key"
        names = {"dns_names": ("localhost",), "ip_addresses": ("127.0.0.1",)}
        ensure_leaf(cert, key, ca, common_name="localhost", server=True, **names)
        return cert, key

    def reader_credentials(self) -> tuple[str, str]:
        """The read-only key pair of the DR copy (drills that restore from it)."""
        self._credentials()
        return _read_profile(self.reader_credentials_file)

    def _credentials(self) -> tuple[str, str]:
        if not (self.writer_credentials_file.exists() and self.reader_credentials_file.exists()):
            writer, reader = _new_key_pair(), _new_key_pair()
            write_private(
                self.options_file,
                f'[[users]]\naccess_key = "{writer[0]}"\nsecret_key = "{writer[1]}"\n\n'
                f'[[users]]\naccess_key = "{reader[0]}"\nsecret_key = "{reader[1]}"\nread_only = true\n',
            )
            write_private(self.writer_credentials_file, _profile_text(DR_WRITER_PROFILE, *writer))
            write_private(self.reader_credentials_file, _profile_text(DR_READER_PROFILE, *reader))
        return _read_profile(self.writer_credentials_file)

    def env(self) -> dict[str, str]:
        return {
            "CQOX_S3_DR_ENDPOINT": self.url,
            "CQOX_S3_DR_BUCKET": DR_BUCKET,
            "CQOX_S3_DR_CACERT": self.ca_cert,
            "CQOX_S3_DR_CREDENTIALS_FILE": str(self.writer_credentials_file),
            "CQOX_S3_DR_READER_CREDENTIALS_FILE": str(self.reader_credentials_file),
        }


def client_config() -> Config:
    """boto3 settings every client of the stack's S3 uses (see the module docstring)."""
    return Config(
        s3={"addressing_style": "path"},
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        retries={"max_attempts": 5, "mode": "standard"},
    )
