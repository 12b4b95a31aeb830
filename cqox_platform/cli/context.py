"""The one place the CLI builds clients: core clients (no Dagster) from the settings contract.

Every builder reads ``get_settings()`` (once per process) and fails with the settings' one-line error when a
value it needs is not set. Imports are lazy: ``wal-push`` and ``--help`` pay only for what they use.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cqox_platform.alerts.client import AlertmanagerClient, ReceiverClient
    from cqox_platform.db.client import PostgresClient
    from cqox_platform.ha.patroni_client import PatroniClient
    from cqox_platform.kube.client import KubernetesClient
    from cqox_platform.metrics.prometheus import PrometheusClient
    from cqox_platform.secrets.vault_client import TransitKeyProvider, VaultClient
    from cqox_platform.settings import Settings


@functools.cache
def settings() -> Settings:
    from cqox_platform.settings import get_settings

    return get_settings()


def _path(value: object) -> str | None:
    return str(value) if value else None


def vault() -> VaultClient:
    """The platform's Vault identity (AppRole credentials written by ``vault_config``)."""
    from cqox_platform.secrets.vault_client import VaultClient

    s = settings()
    return VaultClient(
        s.require("vault_addr"), _path(s.vault_cacert), approle_file=str(s.require("vault_approle_file"))
    )


def _postgres_server() -> dict[str, Any]:
    s = settings()
    return {
        "host": s.require("pg_host"),
        "port": s.require("pg_port"),
        "dbname": s.require("pg_db"),
        "sslrootcert": str(s.require("pg_sslrootcert")),
    }


def postgres() -> PostgresClient:
    """The platform's login: a Vault-issued user when ``CQOX_PG_VAULT_ROLE`` is set, else the admin login."""
    from cqox_platform.db.client import PostgresClient

    role = settings().pg_vault_role
    if role:
        return PostgresClient(**_postgres_server(), user="vault-issued", vault=vault(), vault_db_role=role)
    return postgres_admin()


def postgres_admin() -> PostgresClient:
    """The admin login (passfile): backups need a superuser for pg_basebackup and restore points."""
    from cqox_platform.db.client import PostgresClient

    s = settings()
    return PostgresClient(**_postgres_server(), user=s.require("pg_user"), passfile=str(s.require("pg_passfile")))


def s3() -> Any:
    """A boto3 S3 client of the configured endpoint (CA, credentials and checksum mode from `stack env`).

    Built from a session of its own, not boto3's process-wide default one: that caches the credentials file it read
    first, so a process that ran under another environment (in-process CLI calls, tests of other stacks) would sign
    with stale keys or miss the profile."""
    import boto3

    from cqox_platform.stack.s3 import client_config

    session = boto3.session.Session()
    return session.client("s3", endpoint_url=settings().require("s3_endpoint"), config=client_config())


def dr_s3() -> Any:
    """A boto3 S3 client of the DR region's endpoint with its read-only key (``CQOX_S3_DR_*``): what reads the DR
    copy from the CLI. The writer's key is the DR copy's alone; no command here uses it."""
    from cqox_platform.archiver_clients import s3_client_from_file

    s = settings()
    return s3_client_from_file(
        s.require("s3_dr_endpoint"),
        str(s.s3_dr_cacert) if s.s3_dr_cacert else None,
        s.require("s3_dr_reader_credentials_file"),
    )


def s3_for(bucket: str) -> Any:
    """The client that reads ``bucket``: the DR region's (read-only) for the DR bucket, else the primary's."""
    return dr_s3() if bucket and bucket == settings().s3_dr_bucket else s3()


def bucket() -> str:
    return settings().require("s3_bucket")


def backup_key_provider() -> TransitKeyProvider:
    """Data keys of backups under ``CQOX_BACKUP_TRANSIT_KEY``, the key the code location uses too."""
    return vault().key_provider(settings().backup_transit_key)


def prometheus() -> PrometheusClient:
    from cqox_platform.metrics.prometheus import PrometheusClient

    return PrometheusClient(settings().require("prometheus_url"))


def kubernetes() -> KubernetesClient:
    from cqox_platform.kube.client import KubernetesClient

    return KubernetesClient(kubeconfig=str(settings().require("kubeconfig")))


def patroni() -> PatroniClient:
    """The HA stack's Patroni REST API; a usage error on a single-node stack."""
    import click

    from cqox_platform.ha.patroni_client import NO_CLUSTER_MESSAGE, connect_patroni

    s = settings()
    if not s.patroni_urls:
        raise click.UsageError(
            f'{NO_CLUSTER_MESSAGE}; or CQOX_PATRONI_URLS is not set: run `eval "$(cqox-platform stack env)"`.'
        )
    return connect_patroni(
        s.patroni_urls,
        str(s.require("patroni_cacert")),
        s.require("patroni_user"),
        str(s.require("patroni_password_file")),
    )


def alertmanager() -> AlertmanagerClient:
    """Alertmanager's API with the stack's CA and basic-auth user (``CQOX_ALERTMANAGER_*``)."""
    from cqox_platform.alerts.client import AlertmanagerClient

    s = settings()
    return AlertmanagerClient(
        s.require("alertmanager_url"),
        _path(s.alertmanager_cacert),
        s.alertmanager_user,
        _path(s.alertmanager_password_file),
    )


def alert_receiver() -> ReceiverClient:
    """The local stack's alert receiver (``CQOX_ALERT_RECEIVER_URL``)."""
    from cqox_platform.alerts.client import ReceiverClient

    return ReceiverClient(settings().require("alert_receiver_url"))
