"""The WAL archiver's clients, built from its settings file above ``backup/`` and handed down to it.

``wal-push``, ``wal-fetch`` and their daemons run as PostgreSQL's OS user with nothing but the file
``vault_config`` writes (``ArchiverSettings``): an AppRole allowed to use the backup Transit key and to read the
S3 credentials in Vault. This module logs in with it (lazily, on the first request), reads those credentials
and builds the S3 client; ``backup/`` receives the result as ``ArchiveClients`` and never reaches into
``secrets/`` itself. Nothing heavy is imported here: the CLI imports it once per archiver process.
"""

from __future__ import annotations

import configparser
from pathlib import Path
from typing import Any

from cqox_platform.backup.archive.archiver_settings import ArchiverConfigError, ArchiverSettings
from cqox_platform.backup.archive.store import ArchiveClients
from cqox_platform.secrets.vault_client import VaultClient


def s3_client(endpoint: str, cacert: str | None, access_key: str, secret_key: str, region: str = "us-east-1") -> Any:
    """A boto3 S3 client with verified TLS; checksums only when required (the local S3 server needs that).

    Built from a session of its own that ignores ``AWS_PROFILE``: the keys are given, and a process that also
    talks to another region (the DR copy) must not have a profile meant for that one resolved into this client
    (nor fail because the profile lives in a file this process was not given).
    """
    import boto3
    import botocore.session
    from botocore.config import Config

    core = botocore.session.Session(session_vars={"profile": (None, None, None, None)})
    return boto3.session.Session(botocore_session=core).client(
        "s3",
        endpoint_url=endpoint,
        region_name=region,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        verify=cacert or True,
        config=Config(
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            retries={"max_attempts": 3, "mode": "standard"},
            connect_timeout=5,
            read_timeout=60,
            s3={"addressing_style": "path"},
        ),
    )


def read_key_pair(path: Path) -> tuple[str, str]:
    """``(access key, secret key)`` from an AWS shared-credentials file holding one profile.

    The DR copy's keys (its writer's and its readers') travel in such files, mode 0600, so they reach only the
    process that is given the path; the error names the file and never its content.
    """
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read_string(Path(path).read_text())
    except OSError as exc:
        raise ArchiverConfigError(f"cannot read the S3 credentials file {path}: {exc.strerror}.") from None
    except configparser.Error:
        raise ArchiverConfigError(f"the S3 credentials file {path} is not an AWS shared-credentials file.") from None
    for section in parser.sections():
        access = parser.get(section, "aws_access_key_id", fallback="").strip()
        secret = parser.get(section, "aws_secret_access_key", fallback="").strip()
        if access and secret:
            return access, secret
    raise ArchiverConfigError(
        f"the S3 credentials file {path} holds no profile with aws_access_key_id and aws_secret_access_key."
    )


def s3_client_from_file(endpoint: str, cacert: str | None, credentials_file: Path, region: str = "us-east-1") -> Any:
    """``s3_client`` with the key pair of ``credentials_file`` (``read_key_pair``)."""
    access, secret = read_key_pair(credentials_file)
    return s3_client(endpoint, cacert, access, secret, region)


def archiver_clients(settings: ArchiverSettings) -> ArchiveClients:
    """The S3 client, the backup key provider and the bucket of one archiver process."""
    vault = VaultClient(
        settings.vault_addr, settings.vault_cacert, role_id=settings.role_id, secret_id=settings.secret_id
    )
    if settings.s3_access_key_id and settings.s3_secret_access_key:
        # A drill from the DR copy: the DR region's read-only key is in the (short-lived) file, not in Vault.
        s3 = s3_client(
            settings.s3_endpoint,
            settings.s3_cacert,
            settings.s3_access_key_id,
            settings.s3_secret_access_key,
            settings.region,
        )
        return ArchiveClients(s3, vault.key_provider(settings.transit_key), settings.bucket, settings.key_cache)
    creds = vault.read_secret(settings.s3_secret_path)
    try:
        s3 = s3_client(
            settings.s3_endpoint,
            settings.s3_cacert,
            creds["access_key_id"],
            creds["secret_access_key"],
            settings.region,
        )
    except KeyError:
        raise ArchiverConfigError(
            f"secret/{settings.s3_secret_path} lacks access_key_id/secret_access_key; re-run `vault_config`."
        ) from None
    return ArchiveClients(s3, vault.key_provider(settings.transit_key), settings.bucket, settings.key_cache)


def load_archiver_clients(settings_path: Path) -> ArchiveClients:
    """``archiver_clients`` of the file as it is now: what the daemons call to log in (again)."""
    return archiver_clients(ArchiverSettings.load(settings_path))


#: The file name of a restored server's WAL-fetch settings for the DR copy (beside its data directory).
DR_FETCH_SETTINGS = "archiver-dr.json"


def write_dr_fetch_settings(
    archiver_settings: Path,
    directory: Path,
    *,
    endpoint: str,
    cacert: str,
    bucket: str,
    reader_credentials_file: Path,
) -> Path:
    """Write, into ``directory``, the settings a server restored from the DR copy fetches its WAL with.

    The archiver's Vault login stays (the data keys); S3 becomes the DR region's endpoint, CA, bucket and
    read-only key, since the DR server knows no primary key. The file is the postgres OS user's, mode 0600: its
    restore_command runs as that user, for as long as the restored server recovers (a paused target resumed
    tomorrow still fetches), so the caller keeps ``directory`` as long as that server.
    """
    from cqox_platform.fsutil import write_file
    from cqox_platform.pgserver import PG_OS_USER

    access, secret = read_key_pair(reader_credentials_file)
    settings = ArchiverSettings.load(archiver_settings).for_dr_reader(
        endpoint=endpoint, cacert=cacert, bucket=bucket, access_key_id=access, secret_access_key=secret
    )
    path = directory / DR_FETCH_SETTINGS
    write_file(path, settings.to_json(), mode=0o600, owner=PG_OS_USER)
    return path
