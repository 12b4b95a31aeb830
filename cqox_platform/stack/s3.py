"""The S3 server of the local stack (PyPI ``nanio``) over verified TLS, with the backup and DR buckets.

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

import boto3
import requests
from botocore.config import Config

from cqox_platform.fsutil import write_private
from cqox_platform.stack.certs import tls_files
from cqox_platform.stack.config import BACKUP_BUCKET, DR_BUCKET
from cqox_platform.stack.process import spawn, wait_until
from cqox_platform.stack.service import Service

PROFILE = "cqox-local"


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
            access_key, secret_key = "cqox-" + secrets.token_hex(8), secrets.token_urlsafe(30)
            write_private(self.options_file, f'[[users]]\naccess_key = "{access_key}"\nsecret_key = "{secret_key}"\n')
            write_private(
                self.credentials_file,
                f"[{PROFILE}]\naws_access_key_id = {access_key}\naws_secret_access_key = {secret_key}\n",
            )
        access_key = secret_key = ""
        for line in self.credentials_file.read_text().splitlines():
            if line.startswith("aws_access_key_id"):
                access_key = line.split("=", 1)[1].strip()
            elif line.startswith("aws_secret_access_key"):
                secret_key = line.split("=", 1)[1].strip()
        return access_key, secret_key

    def start(self) -> None:
        self._credentials()
        data_dir = self.home / "data"
        data_dir.mkdir(parents=True, exist_ok=True)
        tls = tls_files(self.stack.tls_dir)
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
                str(tls.server_cert),
                str(tls.server_key),
            ],
            log_path=self.log_path,
            env=env,
        )
        self.write_pid(pid)
        wait_until(
            self._listening,
            timeout=self.start_timeout,
            what="S3 server (nanio)",
            log_path=self.log_path,
            alive=self.running,
        )

    def after_start(self) -> None:
        client = self.client()
        existing = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
        for bucket in (BACKUP_BUCKET, DR_BUCKET):
            if bucket not in existing:
                client.create_bucket(Bucket=bucket)

    def env(self) -> dict[str, str]:
        return {
            "CQOX_S3_ENDPOINT": self.url,
            "CQOX_S3_BUCKET": BACKUP_BUCKET,
            "CQOX_S3_DR_BUCKET": DR_BUCKET,
            "AWS_ENDPOINT_URL_S3": self.url,
            "AWS_CA_BUNDLE": self.ca_cert,
            "AWS_SHARED_CREDENTIALS_FILE": str(self.credentials_file),
            "AWS_PROFILE": PROFILE,
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_REQUEST_CHECKSUM_CALCULATION": "when_required",
            "AWS_RESPONSE_CHECKSUM_VALIDATION": "when_required",
        }


def client_config() -> Config:
    """boto3 settings every client of the stack's S3 uses (see the module docstring)."""
    return Config(
        s3={"addressing_style": "path"},
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        retries={"max_attempts": 5, "mode": "standard"},
    )
