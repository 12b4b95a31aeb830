"""S3 access for the engines' tools: an AWS shared-credentials file, a profile, an endpoint and its CA.

Tools run as the postgres OS user (``archive_command``, ``restore_command``) cannot read root's credentials
file, so ``private_copy`` writes a copy owned by postgres, mode 0600, into a directory of the run. Credentials
reach the tools through that file and ``AWS_*`` variables, never a command line.
"""

from __future__ import annotations

import configparser
import shlex
from dataclasses import dataclass
from pathlib import Path

import boto3
from botocore.config import Config

from cqox_platform.backup.repository.base import RepositoryError
from cqox_platform.fsutil import read_file, write_file
from cqox_platform.pgserver import PG_OS_USER


@dataclass(frozen=True)
class S3Access:
    endpoint_url: str
    ca_bundle: str
    credentials_file: str
    profile: str = "default"
    region: str = "us-east-1"

    def env(self, credentials_file: str | None = None) -> dict[str, str]:
        """What boto3 (inside Barman's tools) reads: credentials, profile, region and the CA it trusts."""
        return {
            "AWS_SHARED_CREDENTIALS_FILE": credentials_file or self.credentials_file,
            "AWS_PROFILE": self.profile,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_CA_BUNDLE": self.ca_bundle,
        }

    def env_prefix(self, credentials_file: str) -> str:
        """``env NAME=value ...`` for a command line PostgreSQL runs (its own environment is not ours)."""
        return "env " + " ".join(f"{k}={shlex.quote(v)}" for k, v in self.env(credentials_file).items())

    def private_copy(self, directory: Path) -> Path:
        """The credentials file copied for the postgres OS user (0600, owned by it) into ``directory``."""
        target = directory / "aws-credentials"
        write_file(target, read_file(self.credentials_file), mode=0o600, owner=PG_OS_USER)
        return target

    def client(self):
        """A boto3 S3 client with these credentials (path-style, checksums only when required)."""
        parser = configparser.ConfigParser()
        parser.read_string(read_file(self.credentials_file).decode())
        if not parser.has_section(self.profile):
            raise RepositoryError(
                f"S3 credentials file {self.credentials_file} has no profile [{self.profile}]: set the repository's "
                "profile to one it has."
            )
        section = parser[self.profile]
        session = boto3.session.Session(
            aws_access_key_id=section.get("aws_access_key_id"),
            aws_secret_access_key=section.get("aws_secret_access_key"),
            region_name=self.region,
        )
        config = Config(
            s3={"addressing_style": "path"},
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            retries={"max_attempts": 5, "mode": "standard"},
        )
        return session.client("s3", endpoint_url=self.endpoint_url, verify=self.ca_bundle, config=config)
