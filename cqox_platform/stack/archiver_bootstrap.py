"""The WAL archiver's identity, configured by ``stack up`` before PostgreSQL starts.

PostgreSQL archives from its first completed segment on, and before this every segment failed until someone
materialized ``vault_config`` ("archiver settings ... do not exist yet"), and again after each restart while
OpenBao was still coming up ("Vault ... unreachable"). So the stack starts OpenBao and S3 first, then, with the
bootstrap (root) token it already holds, configures exactly what the archiver needs (the same
``configure_archiver`` steps ``vault_config`` runs, with the same values the stack exports, so a later
``vault_config`` finds them in place and changes nothing), and only then starts PostgreSQL.
"""

from __future__ import annotations

import json

import hvac

from cqox_platform.pgserver import PG_OS_USER
from cqox_platform.secrets.vault_setup import AppRoleLimits, ArchiverSetup, configure_archiver
from cqox_platform.settings import get_settings
from cqox_platform.stack.openbao import OpenBaoService
from cqox_platform.stack.postgres import PostgresService
from cqox_platform.stack.s3 import BACKUP_BUCKET, S3Service


def configure_stack_archiver(openbao: OpenBaoService, s3: S3Service, postgres: PostgresService) -> list[str]:
    """Write the archiver's AppRole, S3 credentials (into Vault) and settings file; returns what changed."""
    postgres.prepare_archiver_dir()
    token = json.loads(openbao.init_file.read_text())["root_token"]
    client = hvac.Client(url=openbao.url, token=token, verify=openbao.ca_cert)
    access_key, secret_key = s3.credentials()
    setup = ArchiverSetup(
        settings_file=postgres.archiver_settings,
        os_user=PG_OS_USER,
        s3_endpoint=s3.url,
        s3_cacert=s3.ca_cert,
        bucket=BACKUP_BUCKET,
        access_key_id=access_key,
        secret_access_key=secret_key,
        vault_cacert=openbao.ca_cert,
    )
    state = configure_archiver(
        client,
        verify=openbao.ca_cert,
        archiver=setup,
        approle_limits=AppRoleLimits.from_settings(get_settings()),
    )
    return state.changed
